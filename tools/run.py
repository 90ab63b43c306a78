"""`python -m tools.run`: the four services as child processes, the simulator, and a live view.

What `make run` calls once the stack is up and `python -m tools.setup` ran. Each service writes
to .stack/logs/<stage>.log; the view shows readings/s in and out per stage (from /metrics),
DLQ records, consumer lag, rows in sensor_readings and the simulator's counts. Ctrl-C stops
the simulator, lets the pipeline drain briefly, stops each service with SIGTERM and prints a
summary. The view is tools/run_view.py, the processes tools/processes.py and run_stages.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import asyncpg
import httpx
import structlog

try:
    import rich  # noqa: F401  (the live view; in the `tools` extra, which the service image lacks)
except ModuleNotFoundError as missing:
    raise SystemExit(
        "tools.run draws its live view with rich, from the tools extra: "
        "pip install 'sensor-pipeline[tools]'"
    ) from missing
from rich.console import Console
from rich.text import Text

from libs.common.cli import argument_parser
from libs.common.db import connect
from libs.common.settings import PipelineSettings
from tools.fleet import Counts, Transport
from tools.processes import ProcessError, ServiceProcess, wait_all_ready
from tools.run_stages import preflight, stage_services
from tools.run_view import (
    RATE_WINDOW_S,
    REPO_ROOT,
    DbStatus,
    Display,
    Scrape,
    SimStatus,
    StageRow,
    Startup,
    ViewState,
    baseline,
    parse_metrics,
    rates,
    relative,
    render_summary,
)
from tools.simulate import SimConfig, SimulatorError, SimulatorSettings, simulate

LOG_DIR = REPO_ROOT / ".stack" / "logs"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
REFRESH_S = 0.5
DB_EVERY_S = 2.0
LOG_TAIL_LINES = 15
# Drained: no stage's counters moved for this long (store writes at least every 0.5 s).
DRAIN_QUIET_S = 2.0


@dataclass
class Options:
    devices: int = 50
    rate: float = 100.0
    duration_s: float | None = None
    simulator: bool = True
    seed: int | None = None
    transport: Transport = Transport.BOTH
    drain_s: float = 10.0
    log_dir: Path = LOG_DIR


class Monitor:
    """Scrapes the services and the table; turns them into a `ViewState`."""

    def __init__(self, services: Sequence[ServiceProcess], client: httpx.AsyncClient) -> None:
        self.services = services
        self.client = client
        self.history: dict[str, deque[Scrape]] = {
            s.name: deque(maxlen=int(RATE_WINDOW_S / REFRESH_S) * 3) for s in services
        }
        self.reachable: dict[str, bool] = {s.name: False for s in services}
        self.first: dict[str, Scrape] = {}
        # The last scrape at which the stage's counters moved: the end of its busy time, so
        # the averages in the summary do not count the drain and shutdown.
        self.last_moved: dict[str, Scrape] = {}
        self.db = DbStatus()
        self._conn: asyncpg.Connection | None = None
        self._db_lock = asyncio.Lock()  # one query at a time on the one connection

    async def scrape(self) -> None:
        await asyncio.gather(*(self._scrape_one(s) for s in self.services))

    async def _scrape_one(self, service: ServiceProcess) -> None:
        name = service.name
        try:
            text = await service.metrics(self.client, timeout_s=1.0)
            scrape = parse_metrics(text, name, time.monotonic())
        except (httpx.HTTPError, ValueError):
            self.reachable[name] = False
            return
        self.reachable[name] = True
        history = self.history[name]
        if history and (history[-1].messages_in, history[-1].messages_out) != (
            scrape.messages_in,
            scrape.messages_out,
        ):
            self.last_moved[name] = scrape
        history.append(scrape)
        self.first.setdefault(name, scrape)

    def rows(self, *, average: bool = False) -> list[StageRow]:
        """The stages as the view shows them; `average`: rates over the whole run."""
        rows = []
        for service in self.services:
            name = service.name
            history = self.history[name]
            latest = history[-1] if history else None
            state = _process_state(service)
            if state is None:
                if not self.reachable[name]:
                    state = "no metrics"
                elif latest is not None and latest.ready is False:
                    state = "not ready"
                else:
                    state = "ready"
            rows.append(
                StageRow(
                    name=name,
                    metrics_url=service.metrics_url,
                    log_path=service.log_path,
                    state=state,
                    rates=(
                        rates(self.first.get(name), self.last_moved.get(name, latest))
                        if average
                        else rates(baseline(history), latest)
                    ),
                    latest=latest,
                )
            )
        return rows

    def totals(self) -> tuple[float, ...]:
        """Every stage's in and out counters: unchanged for a while means drained."""
        out: list[float] = []
        for history in self.history.values():
            latest = history[-1] if history else None
            out.extend((latest.messages_in, latest.messages_out) if latest else (-1.0, -1.0))
        return tuple(out)

    async def count_rows(self) -> None:
        async with self._db_lock:
            await self._count_rows()

    async def _count_rows(self) -> None:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await connect(PipelineSettings(service_name="run"))
            rows = int(await self._conn.fetchval("SELECT count(*) FROM sensor_readings", timeout=5))
        except Exception as error:  # the view shows any database trouble, never dies of it
            self.db = DbStatus(self.db.rows, self.db.rows_at_start, _short(error))
            await self.close_db()
            return
        start = self.db.rows_at_start if self.db.rows_at_start is not None else rows
        self.db = DbStatus(rows, start)

    async def count_rows_forever(self) -> None:
        while True:
            await self.count_rows()
            await asyncio.sleep(DB_EVERY_S)

    async def close_db(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


def _process_state(service: ServiceProcess) -> str | None:
    """`exited N` when the process is gone, else None (the metrics tell the rest)."""
    code = service.returncode
    if code is None:
        return None
    return "stopped" if service.stopping and code == 0 else f"exited {code}"


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:160]


class Runner:
    def __init__(self, options: Options, console: Console) -> None:
        self.options = options
        self.console = console
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        self.sim_stop = asyncio.Event()
        self.counts = Counts()
        self.sim_error: str | None = None
        self.sim_task: asyncio.Task[Counts] | None = None
        self.services: list[ServiceProcess] = []
        self.started_at = time.monotonic()

    def on_signal(self) -> None:
        if self.stop.is_set():
            self.hurry.set()  # a second Ctrl-C: skip the drain
        self.stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal)
        self.services = stage_services(self.options.log_dir)
        problems = await preflight(self.services)
        if problems:
            for problem in problems:
                self.console.print(Text(f"✗ {problem}", style="red"))
            return 1
        self.options.log_dir.mkdir(parents=True, exist_ok=True)
        async with httpx.AsyncClient() as client:
            try:
                return await self._run(client)
            finally:
                # Also on an error: the simulator first, or MQTT readings queue up for the
                # next run and HTTP ones fail.
                await self._stop_simulator()
                await self._stop_services()

    async def _run(self, client: httpx.AsyncClient) -> int:
        # Unbuffered: each line in the log as it happens, for the tail shown when one fails.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for service in self.services:
            service.start(env)
        self.console.print(
            f"Started {', '.join(s.name for s in self.services)}; "
            f"logs in {relative(self.options.log_dir)}/"
        )
        try:
            if not await self._wait_ready(client):
                self.console.print("Stopped before the services were ready.")
                return 0
        except ProcessError as error:
            self.console.print(Text(f"✗ {error}", style="red"))
            tail = error.process.log_tail(LOG_TAIL_LINES)
            if tail:
                self.console.print(f"[dim]last lines of {relative(error.process.log_path)}:[/dim]")
                self.console.print(Text(tail, style="dim"))
            return 1
        monitor = Monitor(self.services, client)
        await monitor.count_rows()  # the count at start, so the view can show what is new
        db_task = asyncio.create_task(monitor.count_rows_forever())
        try:
            if self.options.simulator:
                self._start_simulator(self.services[0])
            await self._watch(monitor)
            await self._stop_simulator()
            await self._drain(monitor)
            await self._stop_services()
        finally:
            db_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await db_task
            await monitor.close_db()
        await monitor.count_rows()  # after store stopped: every row it committed
        await monitor.close_db()
        final = self._state(monitor, "stopped")
        ended = [(s.name, s.ended.how if s.ended else "?") for s in self.services]
        self.console.print(render_summary(final, ended))
        failed = any(s.ended is None or s.ended.code != 0 for s in self.services)
        return 1 if failed or self.sim_error else 0

    async def _wait_ready(self, client: httpx.AsyncClient) -> bool:
        with Display(self.console) as display:
            ready = await wait_all_ready(
                self.services,
                client,
                self.stop,
                lambda status, waited: display.update(Startup(dict(status), waited)),
                READY_TIMEOUT_S,
            )
        if ready:
            self.console.print("[green]All four services are ready.[/green]")
            # Also without a terminal, where the live view (which lists them) is not drawn.
            urls = "  ".join(s.metrics_url for s in self.services)
            self.console.print(f"metrics: {urls}", style="dim", markup=False, soft_wrap=True)
            self.console.print(
                "Prometheus alert rules and Grafana dashboards: docs/observability.md",
                style="dim",
            )
        return ready

    def _start_simulator(self, ingest: ServiceProcess) -> None:
        config = SimConfig(
            devices=self.options.devices,
            rate=self.options.rate,
            transport=self.options.transport,
            seed=self.options.seed,
            # ingest's HTTPS port (the fleet's token), or its plain port when SIM_PLAINTEXT.
            ingest_url=ingest.url
            if SimulatorSettings().sim_plaintext or ingest.https_port is None
            else ingest.https_url,
            progress_every_s=None,  # the view shows the counts
        )
        self.sim_task = asyncio.create_task(simulate(config, self.sim_stop, self.counts))
        self.sim_task.add_done_callback(self._sim_done)

    def _sim_done(self, task: asyncio.Task[Counts]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.sim_error = _short(error) if isinstance(error, SimulatorError) else repr(error)

    async def _stop_simulator(self) -> None:
        self.sim_stop.set()
        if self.sim_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.sim_task), 15)
            if not self.sim_task.done():
                self.sim_task.cancel()

    def _state(self, monitor: Monitor, phase: str) -> ViewState:
        sim = None
        if self.options.simulator:
            running = self.sim_task is not None and not self.sim_task.done()
            sim = SimStatus(
                self.counts, self.options.rate, self.options.devices, self.sim_error, running
            )
        return ViewState(
            elapsed_s=time.monotonic() - self.started_at,
            stages=monitor.rows(average=phase == "stopped"),
            db=monitor.db,
            sim=sim,
            log_dir=self.options.log_dir,
            phase=phase,
            duration_s=self.options.duration_s,
        )

    async def _watch(self, monitor: Monitor) -> None:
        self.started_at = time.monotonic()
        deadline = (
            self.started_at + self.options.duration_s if self.options.duration_s else math.inf
        )
        with Display(self.console) as display:
            while not self.stop.is_set() and time.monotonic() < deadline:
                await monitor.scrape()
                display.update(self._state(monitor, "running"))
                timeout = min(REFRESH_S, max(0.0, deadline - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout)

    async def _drain(self, monitor: Monitor) -> None:
        """Give the pipeline a moment to pass on what is in flight, so the summary adds up."""
        if self.hurry.is_set() or self.options.drain_s <= 0:
            return
        self.console.print(
            f"Draining the pipeline (up to {self.options.drain_s:g} s; Ctrl-C skips)"
        )
        started = time.monotonic()
        until = started + self.options.drain_s
        stable_since = started
        last = None
        while time.monotonic() < until and not self.hurry.is_set():
            await monitor.scrape()
            totals = monitor.totals()
            if totals != last:
                last, stable_since = totals, time.monotonic()
            elif time.monotonic() - stable_since >= DRAIN_QUIET_S:
                self.console.print(f"Drained: counters still for {DRAIN_QUIET_S:g} s.")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hurry.wait(), REFRESH_S)
        self.console.print(
            Text("Not drained: readings still moving; the summary may not add up.", style="yellow")
        )

    async def _stop_services(self) -> None:
        for service in self.services:
            if service.ended is not None or service.popen is None:
                continue
            ended = await service.stop(STOP_TIMEOUT_S)
            self.console.print(f"{service.name}: {ended.how}", markup=False)


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argument_parser(
        prog="python -m tools.run",
        description="Run the four services, the device simulator and a live view of it all.",
    )
    parser.add_argument("--devices", type=int, default=50, help="simulated devices (50)")
    parser.add_argument("--rate", type=float, default=100.0, help="readings/s in all (100)")
    parser.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    parser.add_argument("--no-simulator", action="store_true", help="services and view only")
    parser.add_argument("--seed", type=int, help="simulator seed, for reproducible readings")
    parser.add_argument(
        "--transport", choices=[t.value for t in Transport], default=Transport.BOTH.value
    )
    parser.add_argument(
        "--drain", type=float, default=10.0, help="at most this long to let the pipeline drain"
    )
    args = parser.parse_args(argv)
    if args.devices < 1 or args.rate <= 0:
        parser.error("--devices must be >= 1 and --rate > 0")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be > 0")
    return Options(
        devices=args.devices,
        rate=args.rate,
        duration_s=args.duration,
        simulator=not args.no_simulator,
        seed=args.seed,
        transport=Transport(args.transport),
        drain_s=max(0.0, args.drain),
    )


def _log_to_file(path: Path) -> IO[str]:
    # The in-process simulator logs with structlog; to its own file, not over the live view.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a", encoding="utf-8")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=handle),
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handle


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    # Not a terminal (CI, a pipe): wide lines rather than rich's default of 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    with _log_to_file(options.log_dir / "simulator.log"):
        return asyncio.run(Runner(options, console).run())


if __name__ == "__main__":
    sys.exit(main())
