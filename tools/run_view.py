"""tools.run's view: /metrics text to counters, two scrapes to rates, the state of the run to
rich tables or a plain status line (all pure, tests/unit/test_run_view.py), and `Display`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from prometheus_client import Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from libs.common import metrics
from tools.fleet import Counts

REPO_ROOT = Path(__file__).resolve().parents[1]
# Rates are averaged over this window: per-scrape differences jitter with batch boundaries.
RATE_WINDOW_S = 5.0
# Without a terminal (CI, a pipe) a status line this often instead of the live table.
PLAIN_EVERY_S = 5.0


# =========================================================================== metrics


def sample_name(metric: Counter | Gauge) -> str:
    """The name of `metric`'s samples in a scrape: a counter's carry `_total`."""
    family = next(iter(metric.describe()))
    return f"{family.name}_total" if family.type == "counter" else family.name


# The names come from the metric objects the services export, never retyped here.
_TOTALS = {
    sample_name(metrics.MESSAGES_IN): "in",
    sample_name(metrics.MESSAGES_OUT): "out",
    sample_name(metrics.DLQ_RECORDS): "dlq",
    sample_name(metrics.DUPLICATES): "duplicates",
}
_LAG = sample_name(metrics.CONSUMER_LAG)
_READY = sample_name(metrics.READY)


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
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("stage") != stage:
                continue
            if sample.name in _TOTALS:
                totals[_TOTALS[sample.name]] += sample.value
            elif sample.name == _LAG:
                lag = (lag or 0.0) + sample.value
            elif sample.name == _READY:
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


# =========================================================================== the view


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


def relative(path: Path) -> str:
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
    where.append(f"\nlogs:    {relative(state.log_dir)}/<stage>.log", style="dim")
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
        ended.add_row(name, Text(how, style=style), relative(logs[name]) if name in logs else "")
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


@dataclass(frozen=True, slots=True)
class Startup:
    """While the services start: each one's state (ready, or why not yet) after `waited_s`."""

    status: Mapping[str, str]
    waited_s: float


def startup_table(startup: Startup) -> RenderableType:
    table = Table(title=f"Starting the services ({startup.waited_s:.0f} s)", title_justify="left")
    table.add_column("stage")
    table.add_column("state")
    for name, state in startup.status.items():
        table.add_row(name, Text(state, style="green" if state == "ready" else "yellow"))
    return table


def startup_line(startup: Startup) -> str:
    states = "  ".join(f"{name}[{state}]" for name, state in startup.status.items())
    return f"starting, {startup.waited_s:.1f} s: {states}"


class Display:
    """What tools.run shows while it works. On a terminal a live view redrawn at each `update`
    (transient: the summary at the end shows the final state); otherwise (CI, a pipe) a plain
    status line, at most one every `plain_every_s`."""

    def __init__(self, console: Console, plain_every_s: float = PLAIN_EVERY_S) -> None:
        self.console = console
        self.plain_every_s = plain_every_s
        self._live: Live | None = None
        self._last_plain = -float("inf")

    def __enter__(self) -> Display:
        if self.console.is_terminal:
            self._live = Live(console=self.console, auto_refresh=False, transient=True)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.__exit__(kind, error, traceback)

    def update(self, state: ViewState | Startup) -> None:
        if self._live is not None:
            view = startup_table(state) if isinstance(state, Startup) else render_view(state)
            self._live.update(view, refresh=True)
            return
        now = time.monotonic()
        if now - self._last_plain < self.plain_every_s:
            return
        self._last_plain = now
        line = startup_line(state) if isinstance(state, Startup) else status_line(state)
        self.console.print(line, markup=False, soft_wrap=True)
