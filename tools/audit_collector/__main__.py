"""`python -m tools.audit_collector [--once]`: follow the local stack's server logs into the
audit log until SIGTERM (or one pass)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from libs.common.health import Readiness, health_app, serve_http
from libs.common.logs import configure_logging
from tools.audit_collector import CollectorSettings, run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.audit_collector",
        description="Append the refusals of Mosquitto, Kafka's authorizer and PostgreSQL, read "
        "from the local stack's logs (AUDIT_STACK_DIR, default .stack/logs), to the audit log "
        "(AUDIT_DATABASE_URL, default the stack's audit_writer). Offsets are kept in "
        "<stack>/audit-collector/, so a restart neither loses nor repeats a row. Progress: a "
        "log line per batch, /metrics on HTTP_PORT (8089; 0: none).",
    )
    parser.add_argument(
        "--once", action="store_true", help="one pass over what is there, then exit"
    )
    return parser.parse_args(argv)


async def _main(settings: CollectorSettings, once: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    readiness = Readiness(settings.service_name, "following")
    readiness.set("following", True)
    async with contextlib.AsyncExitStack() as servers:
        if settings.http_port and not once:
            app = health_app(readiness)
            await servers.enter_async_context(
                serve_http(app, settings.http_host, settings.http_port)
            )
        await run(settings, stop, once=once)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    settings = CollectorSettings()
    configure_logging(settings.service_name, settings.log_level)
    return asyncio.run(_main(settings, options.once))


if __name__ == "__main__":
    sys.exit(main())
