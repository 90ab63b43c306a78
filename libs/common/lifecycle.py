"""How a service process starts and stops: SIGTERM/SIGINT set a stop event, nothing more."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import structlog
import uvloop

log = structlog.get_logger(__name__)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    # SIGUSR1 logs what every task is waiting on: the first thing to look at when a service
    # does not stop or does not move.
    loop.add_signal_handler(signal.SIGUSR1, _log_tasks)


def _log_tasks() -> None:
    for task in asyncio.all_tasks():
        stack = io.StringIO()
        task.print_stack(limit=12, file=stack)
        log.warning("task", name=task.get_name(), stack=stack.getvalue())


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("stop requested", signal=sig.name)
    stop.set()


def run(main: Callable[[asyncio.Event], Awaitable[None]], shutdown_timeout_s: float = 20.0) -> None:
    """Run a service's main coroutine with signal handling; returns when it has drained.

    A watchdog bounds the drain: if the service has not finished `shutdown_timeout_s` after
    the stop request, it logs every task's stack (to find what hung) and the process exits.
    Nothing is lost by that: what was not committed is read again by the next owner.
    """

    async def _main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        watchdog = asyncio.create_task(_watchdog(stop, shutdown_timeout_s))
        try:
            await main(stop)
        finally:
            watchdog.cancel()

    uvloop.run(_main())


async def _watchdog(stop: asyncio.Event, timeout_s: float) -> None:
    await stop.wait()
    await asyncio.sleep(timeout_s)
    log.error(
        "shutdown took longer than its bound; leaving with work unfinished, it will be done again",
        timeout_s=timeout_s,
    )
    _log_tasks()
    # The uncommitted work is redone by the next owner, so this is still an orderly exit.
    sys.stderr.flush()
    os._exit(0)


async def sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    """Sleep `delay` seconds, or less when `stop` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        pass
