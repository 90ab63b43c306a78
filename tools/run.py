"""`python -m tools.run`: the four services as child processes, the simulator, and a live view.

What `make run` calls once the stack is up and `python -m tools.setup` ran. Each service writes
to .stack/logs/<stage>.log; the view shows readings/s in and out per stage (from /metrics),
DLQ records, consumer lag, rows in sensor_readings and the simulator's counts. Ctrl-C stops
the simulator, lets the pipeline drain briefly, stops each service with SIGTERM and prints a
summary. The scrape-to-table code is pure (tests/unit/test_run_view.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import asyncpg
import httpx
import structlog
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from libs.common.cli import argument_parser
from libs.common.db import connect
from libs.common.settings import PipelineSettings
from tools.fleet import Counts, Transport
from tools.simulate import SimConfig, SimulatorError, simulate

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG_DIR = REPO_ROOT / ".stack" / "logs"
STAGES = ("ingest", "validate", "enrich", "store")
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
REFRESH_S = 0.5
DB_EVERY_S = 2.0
# Rates are averaged over this window: per-scrape differences jitter with batch boundaries.
RATE_WINDOW_S = 5.0
# Without a terminal (CI, a pipe) a status line this often instead of the live table.
PLAIN_EVERY_S = 5.0
LOG_TAIL_LINES = 15
# Drained: no stage's counters moved for this long (store writes at least every 0.5 s).
DRAIN_QUIET_S = 2.0


# =========================================================================== pure: metrics


@dataclass(frozen=True, slots=True)
class Scrape:
    """One stage's counters from one /metrics scrape, taken at `at` (monotonic seconds)."""

    at: float
    messages_in: float = 0.0
    messages_out: float = 0.0
    dlq: float = 0.0
    duplicates: float = 0.0
    lag: float | None = None  # summed over partitions; None before the stage consumed anything
    ready: bool | None = None


def parse_metrics(text: str, stage: str, at: float) -> Scrape:
    """The pipeline counters of `stage` in a Prometheus text exposition."""
    totals = {"in": 0.0, "out": 0.0, "dlq": 0.0, "duplicates": 0.0}
    lag: float | None = None
    ready: bool | None = None
    names = {
        "pipeline_messages_in_total": "in",
        "pipeline_messages_out_total": "out",
        "pipeline_dlq_records_total": "dlq",
        "pipeline_duplicates_dropped_total": "duplicates",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("stage") != stage:
                continue
            if sample.name in names:
                totals[names[sample.name]] += sample.value
            elif sample.name == "pipeline_consumer_lag":
                lag = (lag or 0.0) + sample.value
            elif sample.name == "pipeline_ready":
                ready = sample.value >= 1
    return Scrape(
        at=at,
        messages_in=totals["in"],
        messages_out=totals["out"],
        dlq=totals["dlq"],
        duplicates=totals["duplicates"],
        lag=lag,
        ready=ready,
    )


def per_second(older: float, newer: float, seconds: float) -> float | None:
    """A counter's rate between two readings; a counter that went down restarted from zero."""
    if seconds <= 0:
        return None
    delta = newer - older if newer >= older else newer
    return delta / seconds


@dataclass(frozen=True, slots=True)
class Rates:
    in_per_s: float | None = None
    out_per_s: float | None = None


def rates(older: Scrape | None, newer: Scrape | None) -> Rates:
    """Readings/s in and out between two scrapes of one stage (None when unknown)."""
    if older is None or newer is None:
        return Rates()
    seconds = newer.at - older.at
    return Rates(
        per_second(older.messages_in, newer.messages_in, seconds),
        per_second(older.messages_out, newer.messages_out, seconds),
    )


def baseline(history: Sequence[Scrape], window_s: float = RATE_WINDOW_S) -> Scrape | None:
    """The oldest scrape within `window_s` of the newest one, to take a rate against."""
    if len(history) < 2:
        return None
    newest = history[-1]
    for index in range(len(history) - 1):  # by index: a deque cannot be sliced
        if newest.at - history[index].at <= window_s:
            return history[index]
    return history[-2]


# =========================================================================== pure: the view


@dataclass(frozen=True, slots=True)
class StageRow:
    name: str
    metrics_url: str
    log_path: Path
    state: str  # ready, not ready, starting, no metrics, exited 1, stopped
    rates: Rates = field(default_factory=Rates)
    latest: Scrape | None = None


@dataclass(frozen=True, slots=True)
class DbStatus:
    rows: int | None = None
    rows_at_start: int | None = None
    error: str | None = None

    @property
    def added(self) -> int | None:
        if self.rows is None or self.rows_at_start is None:
            return None
        return self.rows - self.rows_at_start


@dataclass(frozen=True, slots=True)
class SimStatus:
    counts: Counts
    target_rate: float
    devices: int
    error: str | None = None
    running: bool = True


@dataclass(frozen=True, slots=True)
class ViewState:
    elapsed_s: float
    stages: Sequence[StageRow]
    db: DbStatus
    sim: SimStatus | None
    log_dir: Path
    phase: str = "running"  # or "stopped", for the summary
    duration_s: float | None = None


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _state_style(state: str) -> str:
    if state == "ready":
        return "green"
    if state.startswith("exited") or state == "no metrics":
        return "red"
    return "yellow"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def stage_table(stages: Sequence[StageRow]) -> Table:
    table = Table(title="Pipeline stages", title_justify="left", expand=False)
    table.add_column("stage")
    table.add_column("state")
    for column in ("in/s", "out/s", "in", "out", "DLQ", "dupes", "lag"):
        table.add_column(column, justify="right")
    for row in stages:
        latest = row.latest
        table.add_row(
            row.name,
            Text(row.state, style=_state_style(row.state)),
            _num(row.rates.in_per_s, 1),
            _num(row.rates.out_per_s, 1),
            _num(latest.messages_in if latest else None),
            _num(latest.messages_out if latest else None),
            Text(
                _num(latest.dlq if latest else None), style="red" if latest and latest.dlq else ""
            ),
            _num(latest.duplicates if latest else None),
            _num(latest.lag if latest else None),
        )
    return table


def sim_table(sim: SimStatus) -> RenderableType:
    c = sim.counts
    rate = c.sent / c.elapsed_s if c.elapsed_s > 0 else None
    state = "running" if sim.running else "stopped"
    # A line of its own rather than the table's title, which rich wraps to the table's width.
    title = Text(
        f"Simulator ({state}): {sim.devices} devices, target {sim.target_rate:g}/s, "
        f"actual {_num(rate, 1)}/s",
        style="italic",
    )
    table = Table()
    table.add_column("transport")
    for column in ("sent", "valid", "late", "bad", "dupes", "failed"):
        table.add_column(column, justify="right")
    for name, t in (("mqtt", c.mqtt), ("http", c.http)):
        table.add_row(
            name,
            *(_num(v) for v in (t.sent, t.valid, t.late, t.bad, t.duplicates)),
            Text(_num(t.failed), style="red" if t.failed else ""),
        )
    table.add_row(
        Text("total", style="bold"),
        *(_num(v) for v in (c.sent, c.valid, c.late, c.bad, c.duplicates)),
        Text(_num(c.failed), style="red" if c.failed else ""),
    )
    return Group(title, table)


def db_text(db: DbStatus) -> Text:
    text = Text("Rows in sensor_readings: ", style="bold")
    if db.rows is None:
        text.append("–")
    else:
        text.append(f"{db.rows:,}")
        if db.added is not None:
            text.append(f"  (+{db.added:,} this run)")
    if db.error:
        text.append(f"  database: {db.error}", style="red")
    return text


def render_view(state: ViewState) -> RenderableType:
    """The live view: stages, database, simulator, and where metrics and logs are."""
    header = Text(f"Sensor pipeline — {state.phase}, {state.elapsed_s:,.0f} s", style="bold")
    if state.duration_s is not None and state.phase == "running":
        header.append(f" of {state.duration_s:g} s", style="bold")
    if state.phase == "running":
        header.append("   (Ctrl-C to stop)", style="dim")
    elif state.phase == "stopped":
        header.append("   (rates: averages over the run)", style="dim")
    parts: list[RenderableType] = [header, stage_table(state.stages), db_text(state.db)]
    if state.sim is not None:
        parts.append(sim_table(state.sim))
        if state.sim.error:
            parts.append(Text(f"simulator: {state.sim.error}", style="red"))
    where = Text("metrics: ", style="dim")
    where.append("  ".join(row.metrics_url for row in state.stages), style="dim")
    where.append(f"\nlogs:    {_relative(state.log_dir)}/<stage>.log", style="dim")
    parts.append(where)
    return Group(*parts)


def status_line(state: ViewState) -> str:
    """One line of the view, for when output is not a terminal."""
    stages = "  ".join(
        f"{row.name}[{row.state}] in {_num(row.rates.in_per_s, 1)}/s "
        f"out {_num(row.rates.out_per_s, 1)}/s dlq {_num(row.latest.dlq if row.latest else None)}"
        f" lag {_num(row.latest.lag if row.latest else None)}"
        for row in state.stages
    )
    line = f"t={state.elapsed_s:.0f}s {stages}  rows {_num(state.db.rows)}"
    if state.sim is not None:
        c = state.sim.counts
        line += f"  sim sent {c.sent} (mqtt {c.mqtt.sent}, http {c.http.sent}) bad {c.bad}"
        line += f" dupes {c.duplicates} failed {c.failed}"
    return line


@dataclass(frozen=True, slots=True)
class Check:
    what: str
    expected: int
    observed: int | None

    @property
    def ok(self) -> bool:
        return self.observed == self.expected


def end_checks(state: ViewState) -> list[Check]:
    """What the simulator sent against what the pipeline counted (only after a drain)."""
    if state.sim is None:
        return []
    c = state.sim.counts
    by_name = {row.name: row.latest for row in state.stages}
    dlq = sum(s.dlq for s in by_name.values() if s is not None)
    validate = by_name.get("validate")
    return [
        Check("valid readings sent -> rows added", c.valid, state.db.added),
        Check("bad readings sent -> DLQ records", c.bad, int(dlq) if by_name else None),
        Check(
            "duplicates sent -> dropped by validate",
            c.duplicates,
            int(validate.duplicates) if validate else None,
        ),
    ]


def render_summary(state: ViewState, services: Iterable[tuple[str, str]]) -> RenderableType:
    """The final summary: the last view, how each service ended, sent against counted."""
    table = Table(title="Sent and counted", title_justify="left")
    table.add_column("check")
    table.add_column("sent", justify="right")
    table.add_column("counted", justify="right")
    table.add_column("")
    for check in end_checks(state):
        mark = Text("ok", style="green") if check.ok else Text("differs", style="yellow")
        table.add_row(check.what, _num(check.expected), _num(check.observed), mark)
    ended = Table(title="Services", title_justify="left")
    ended.add_column("stage")
    ended.add_column("ended")
    ended.add_column("log")
    logs = {row.name: row.log_path for row in state.stages}
    for name, how in services:
        style = "green" if how.startswith("exit 0") else "red"
        ended.add_row(name, Text(how, style=style), _relative(logs[name]) if name in logs else "")
    parts: list[RenderableType] = [render_view(state), ended]
    if state.sim is not None:
        parts.append(table)
        if not all(check.ok for check in end_checks(state)):
            parts.append(
                Text(
                    "Counted more than sent: readings of an earlier run still queued (the MQTT "
                    "session, Kafka) or another writer. Fewer: readings still in flight at the "
                    "end, or lost: see the logs.",
                    style="dim",
                )
            )
    return Group(*parts)


# =========================================================================== processes


@dataclass(frozen=True, slots=True)
class StageSpec:
    name: str
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"

    def log_path(self, log_dir: Path = LOG_DIR) -> Path:
        return log_dir / f"{self.name}.log"


def stage_specs() -> list[StageSpec]:
    """Each service's address, from its own settings (so HTTP_PORT and friends agree)."""
    from services.enrich.settings import EnrichSettings
    from services.ingest.settings import IngestSettings
    from services.store.settings import StoreSettings
    from services.validate.settings import ValidateSettings

    specs = []
    for name, settings in (
        ("ingest", IngestSettings()),
        ("validate", ValidateSettings()),
        ("enrich", EnrichSettings()),
        ("store", StoreSettings()),
    ):
        host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "", "::") else settings.http_host
        specs.append(StageSpec(name, host, settings.http_port))
    return specs


# Loaded here, not in the child: between fork and exec the child should do as little as can be.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the service gets SIGTERM when tools.run dies, even by SIGKILL, so no orphan keeps
    # its port. Runs in the child between fork and exec.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Service:
    """One stage as a child process, its output in its log file."""

    def __init__(self, spec: StageSpec, log_dir: Path) -> None:
        self.spec = spec
        self.log_path = spec.log_path(log_dir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.ended: str | None = None

    def start(self, env: dict[str, str]) -> None:
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.spec.name}"],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches tools.run only, which then
                # stops the services in order instead of all at once.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def state(self) -> str | None:
        """`exited N` when the process is gone, else None (the metrics tell the rest)."""
        code = self.returncode
        if code is None:
            return None
        return "stopped" if self.stopping and code == 0 else f"exited {code}"

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> str:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL; returns how it ended."""
        proc = self.proc
        if proc is None:
            return "not started"
        if proc.poll() is not None:
            self.ended = f"exit {proc.returncode} (before shutdown)"
            return self.ended
        self.stopping = True
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None and time.monotonic() - started < timeout_s:
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait)
            self.ended = f"killed after {timeout_s:.0f} s"
        else:
            self.ended = f"exit {proc.returncode} in {took:.1f} s"
        return self.ended

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class StartupError(Exception):
    def __init__(self, service: Service, what: str) -> None:
        super().__init__(f"{service.spec.name} {what}; see its log: {_relative(service.log_path)}")
        self.service = service


async def _probe_ready(client: httpx.AsyncClient, spec: StageSpec) -> tuple[bool, str]:
    try:
        response = await client.get(f"{spec.base_url}/readyz", timeout=1.0)
    except httpx.HTTPError as error:
        return False, f"no answer ({type(error).__name__})"
    if response.status_code == 200:
        return True, "ready"
    return False, f"/readyz {response.status_code}: {response.text[:120]}"


async def wait_ready(
    services: Sequence[Service],
    client: httpx.AsyncClient,
    stop: asyncio.Event,
    show: Callable[[dict[str, str], float], None],
    timeout_s: float = READY_TIMEOUT_S,
) -> bool:
    """Wait until every service answers /readyz 200; False when stopped meanwhile."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    status = {s.spec.name: "starting" for s in services}
    while not stop.is_set():
        pending = [s for s in services if status[s.spec.name] != "ready"]
        if not pending:
            show(status, loop.time() - started)
            return True
        for service in pending:
            code = service.returncode
            if code is not None:
                raise StartupError(service, f"exited with code {code} while starting")
        answers = await asyncio.gather(*(_probe_ready(client, s.spec) for s in pending))
        for service, (ok, why) in zip(pending, answers, strict=True):
            status[service.spec.name] = "ready" if ok else why
        waited = loop.time() - started
        show(status, waited)
        if waited > timeout_s:
            late = next(s for s in services if status[s.spec.name] != "ready")
            raise StartupError(
                late, f"is not ready after {timeout_s:g} s (last: {status[late.spec.name]})"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    return False


def startup_table(status: dict[str, str], waited: float) -> RenderableType:
    table = Table(title=f"Starting the services ({waited:.0f} s)", title_justify="left")
    table.add_column("stage")
    table.add_column("state")
    for name, state in status.items():
        table.add_row(name, Text(state, style="green" if state == "ready" else "yellow"))
    return table


async def _reachable(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def preflight(specs: Sequence[StageSpec]) -> list[str]:
    """Problems that would make start-up fail slowly and vaguely: say them at once."""
    problems: list[str] = []
    for spec in specs:
        if await _reachable(spec.host, spec.port):
            problems.append(
                f"port {spec.port} ({spec.name}) is already in use: is another "
                "`make run` (or a service) still running?"
            )
    settings = PipelineSettings()
    needs = [("Kafka", settings.kafka_bootstrap_servers.split(",")[0].strip())]
    db = urlsplit(settings.database_url.get_secret_value())
    needs.append(("PostgreSQL", f"{db.hostname or '127.0.0.1'}:{db.port or 5432}"))
    from services.ingest.settings import IngestSettings

    mqtt = urlsplit(IngestSettings().mqtt_url)
    needs.append(("Mosquitto", f"{mqtt.hostname or '127.0.0.1'}:{mqtt.port or 1883}"))
    for what, address in needs:
        host, _, port = address.rpartition(":")
        if not await _reachable(host, int(port)):
            problems.append(f"{what} at {address} is not reachable: start the stack (`make up`)")
    return problems


# =========================================================================== the run


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

    def __init__(self, services: Sequence[Service], client: httpx.AsyncClient) -> None:
        self.services = services
        self.client = client
        self.history: dict[str, deque[Scrape]] = {
            s.spec.name: deque(maxlen=int(RATE_WINDOW_S / REFRESH_S) * 3) for s in services
        }
        self.reachable: dict[str, bool] = {s.spec.name: False for s in services}
        self.first: dict[str, Scrape] = {}
        # The last scrape at which the stage's counters moved: the end of its busy time, so
        # the averages in the summary do not count the drain and shutdown.
        self.last_moved: dict[str, Scrape] = {}
        self.db = DbStatus()
        self._conn: asyncpg.Connection | None = None
        self._db_lock = asyncio.Lock()  # one query at a time on the one connection

    async def scrape(self) -> None:
        await asyncio.gather(*(self._scrape_one(s) for s in self.services))

    async def _scrape_one(self, service: Service) -> None:
        name = service.spec.name
        try:
            response = await self.client.get(service.spec.metrics_url, timeout=1.0)
            response.raise_for_status()
            scrape = parse_metrics(response.text, name, time.monotonic())
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
            name = service.spec.name
            history = self.history[name]
            latest = history[-1] if history else None
            state = service.state()
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
                    metrics_url=service.spec.metrics_url,
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
        self.services: list[Service] = []
        self.started_at = time.monotonic()

    def on_signal(self) -> None:
        if self.stop.is_set():
            self.hurry.set()  # a second Ctrl-C: skip the drain
        self.stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal)
        specs = stage_specs()
        problems = await preflight(specs)
        if problems:
            for problem in problems:
                self.console.print(Text(f"✗ {problem}", style="red"))
            return 1
        self.options.log_dir.mkdir(parents=True, exist_ok=True)
        self.services = [Service(spec, self.options.log_dir) for spec in specs]
        async with httpx.AsyncClient() as client:
            try:
                return await self._run(client)
            finally:
                # Also on an error: the simulator first, or MQTT readings queue up for the
                # next run and HTTP ones fail.
                await self._stop_simulator()
                await self._stop_services()

    async def _run(self, client: httpx.AsyncClient) -> int:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for service in self.services:
            service.start(env)
        self.console.print(
            f"Started {', '.join(s.spec.name for s in self.services)}; "
            f"logs in {_relative(self.options.log_dir)}/"
        )
        try:
            if not await self._wait_ready(client):
                self.console.print("Stopped before the services were ready.")
                return 0
        except StartupError as error:
            self.console.print(Text(f"✗ {error}", style="red"))
            tail = error.service.tail()
            if tail:
                self.console.print(f"[dim]last lines of {_relative(error.service.log_path)}:[/dim]")
                self.console.print(Text(tail, style="dim"))
            return 1
        monitor = Monitor(self.services, client)
        await monitor.count_rows()  # the count at start, so the view can show what is new
        db_task = asyncio.create_task(monitor.count_rows_forever())
        try:
            if self.options.simulator:
                self._start_simulator(self.services[0].spec)
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
        self.console.print(
            render_summary(final, ((s.spec.name, s.ended or "?") for s in self.services))
        )
        failed = any(not (s.ended or "").startswith("exit 0") for s in self.services)
        return 1 if failed or self.sim_error else 0

    async def _wait_ready(self, client: httpx.AsyncClient) -> bool:
        if self.console.is_terminal:
            with Live(console=self.console, auto_refresh=False, transient=True) as live:

                def show(status: dict[str, str], waited: float) -> None:
                    live.update(startup_table(status, waited), refresh=True)

                ready = await wait_ready(self.services, client, self.stop, show)
        else:
            seen: dict[str, str] = {}

            def show(status: dict[str, str], waited: float) -> None:
                for name, state in status.items():
                    if state == "ready" and seen.get(name) != "ready":
                        self.console.print(f"{name} ready after {waited:.1f} s")
                    seen[name] = state

            ready = await wait_ready(self.services, client, self.stop, show)
        if ready:
            self.console.print("[green]All four services are ready.[/green]")
            # Also without a terminal, where the live view (which lists them) is not drawn.
            urls = "  ".join(s.spec.metrics_url for s in self.services)
            self.console.print(f"metrics: {urls}", style="dim", markup=False, soft_wrap=True)
            self.console.print(
                "Prometheus alert rules and Grafana dashboards: docs/observability.md",
                style="dim",
            )
        return ready

    def _start_simulator(self, ingest: StageSpec) -> None:
        config = SimConfig(
            devices=self.options.devices,
            rate=self.options.rate,
            transport=self.options.transport,
            seed=self.options.seed,
            ingest_url=ingest.base_url,
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

        async def tick(show: Callable[[ViewState, float], float]) -> None:
            last_plain = -math.inf
            while not self.stop.is_set() and time.monotonic() < deadline:
                await monitor.scrape()
                state = self._state(monitor, "running")
                last_plain = show(state, last_plain)
                timeout = min(REFRESH_S, max(0.0, deadline - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout)

        if self.console.is_terminal:
            # Transient: the summary at the end shows the final state of the same view.
            with Live(console=self.console, auto_refresh=False, transient=True) as live:

                def show_live(state: ViewState, last: float) -> float:
                    live.update(render_view(state), refresh=True)
                    return last

                await tick(show_live)
        else:

            def show_plain(state: ViewState, last: float) -> float:
                if time.monotonic() - last >= PLAIN_EVERY_S:
                    self.console.print(status_line(state), markup=False, soft_wrap=True)
                    return time.monotonic()
                return last

            await tick(show_plain)

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
            if service.ended is not None or service.proc is None:
                continue
            ended = await service.stop()
            self.console.print(f"{service.spec.name}: {ended}", markup=False)


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
