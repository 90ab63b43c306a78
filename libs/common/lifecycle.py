"""How a service process starts and stops: SIGTERM/SIGINT set a stop event, nothing more."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog
import uvloop

log = structlog.get_logger(__name__)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop, sig)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("stop requested", signal=sig.name)
    stop.set()


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a service's main coroutine with signal handling; returns when it has drained."""

    async def _main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await main(stop)

    uvloop.run(_main())


async def sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    """Sleep `delay` seconds, or less when `stop` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        pass
