"""What a benchmark run found, and its three renderings: the console table, the JSON file and
the markdown that docs/performance.md quotes. The PNG plot lives in `bench.harness.plot`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from bench.harness.stats import fmt_num, fmt_rate, fmt_ratio, judge, ratio


@dataclass(slots=True)
class Row:
    """One measured figure, with the reference it is read against."""

    key: str  # stable id, e.g. "stage.validate", "limit.kafka_consumer"
    section: str  # limit | pure step | stage | peer | end to end
    name: str
    rate: float | None  # readings (or rows, or messages) a second
    cpu_per_1k: float | None = None
    peak_rss_mb: float | None = None
    reference: str | None = None  # key of the row this one is compared with
    note: str = ""
    # Share of the whole machine's CPU in use while this was measured, whoever used it.
    machine_busy: float | None = None


@dataclass(slots=True)
class LatencyRow:
    load_share: float  # of the sustained rate
    offered_rate: float
    stored_rate: float
    readings: int
    p50_s: float
    p95_s: float
    p99_s: float


@dataclass(slots=True)
class TargetRow:
    name: str
    goal: str
    value: str
    met: bool
    shortfall: float  # share of the goal; 0 when met


@dataclass(slots=True)
class Results:
    meta: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    latency: list[LatencyRow] = field(default_factory=list)
    e2e_steps: list[dict[str, Any]] = field(default_factory=list)
    # Peak RSS (MB) of each service over every run it took part in.
    service_rss_mb: dict[str, float] = field(default_factory=dict)
    targets: list[TargetRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)

    def rate(self, key: str) -> float | None:
        row = self.row(key)
        return row.rate if row is not None else None

    def ratio_of(self, row: Row) -> float | None:
        if row.reference is None:
            return None
        return ratio(row.rate, self.rate(row.reference))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for row_data, row in zip(data["rows"], self.rows, strict=True):
            reference = self.row(row.reference) if row.reference else None
            row_data["reference_name"] = reference.name if reference else None
            row_data["reference_rate"] = reference.rate if reference else None
            row_data["ratio"] = self.ratio_of(row)
        return _finite(data)


def _finite(value: Any) -> Any:
    # JSON has no NaN: an unmeasured figure is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def evaluate_targets(results: Results) -> list[TargetRow]:
    """The issue's targets, judged against this run's figures and same-run ratios."""
    out: list[TargetRow] = []

    def rate_target(name: str, key: str, goal: float) -> None:
        value = results.rate(key)
        verdict = judge(value, goal)
        out.append(TargetRow(name, f">= {goal:,.0f}/s", fmt_rate(value), *_v(verdict)))

    def ratio_target(name: str, key: str, ref_key: str, goal: float) -> None:
        value = ratio(results.rate(key), results.rate(ref_key))
        verdict = judge(value, goal)
        out.append(TargetRow(name, f">= {goal:g}x", fmt_ratio(value), *_v(verdict)))

    rate_target("validate, one process", "stage.validate", 50_000)
    ratio_target("validate vs Quix Streams validate", "stage.validate", "peer.quix_validate", 1.5)
    rate_target("enrich, one process", "stage.enrich", 50_000)
    rate_target("store", "stage.store", 100_000)
    ratio_target("store vs binary COPY", "stage.store", "limit.pg_copy", 0.5)
    rate_target("ingest over MQTT", "stage.ingest_mqtt", 30_000)
    rate_target("ingest over HTTP (NDJSON)", "stage.ingest_http", 50_000)
    rate_target("end to end, sustained", "e2e.sustained", 10_000)
    half = next((r for r in results.latency if r.load_share == 0.5), None)
    p95 = half.p95_s if half else None
    verdict = judge(p95, 1.0, higher_is_better=False)
    at = f" at {half.offered_rate:,.0f}/s" if half else ""
    out.append(
        TargetRow(
            "end to end p95, publish to stored, at half the sustained rate",
            "< 1 s",
            fmt_num(p95, 3, " s") + at,
            *_v(verdict),
        )
    )
    for service, mb in sorted(results.service_rss_mb.items()):
        verdict = judge(mb, 150.0, higher_is_better=False)
        out.append(
            TargetRow(f"{service} peak RSS", "< 150 MB", fmt_num(mb, 0, " MB"), *_v(verdict))
        )
    return out


def _v(verdict: Any) -> tuple[bool, float]:
    return verdict.met, verdict.shortfall


def throughput_table(results: Results) -> Table:
    table = Table(title="Throughput (same run; ratio = rate / reference rate)")
    columns = ("section", "what", "rate", "reference", "ref. rate", "ratio", "CPU s/1k", "RSS")
    for column in (*columns, "box busy"):
        table.add_column(column, justify="left" if column in ("section", "what") else "right")
    for row in results.rows:
        table.add_row(*_throughput_cells(results, row, with_note=False))
    return table


def _throughput_cells(results: Results, row: Row, *, with_note: bool) -> list[str]:
    """One throughput row, the same for the terminal and for markdown."""
    reference = results.row(row.reference) if row.reference else None
    return [
        row.section,
        row.name + (f" ({row.note})" if with_note and row.note else ""),
        fmt_rate(row.rate),
        reference.name if reference else "-",
        fmt_rate(reference.rate) if reference else "-",
        fmt_ratio(results.ratio_of(row)),
        fmt_num(row.cpu_per_1k, 3),
        fmt_num(row.peak_rss_mb, 0, " MB"),
        _pct(row.machine_busy),
    ]


def _latency_cells(r: LatencyRow) -> list[str]:
    return [
        f"{r.load_share:.0%}",
        fmt_rate(r.offered_rate),
        fmt_rate(r.stored_rate),
        f"{r.readings:,}",
        fmt_num(r.p50_s, 3, " s"),
        fmt_num(r.p95_s, 3, " s"),
        fmt_num(r.p99_s, 3, " s"),
    ]


def _pct(share: float | None) -> str:
    return "-" if share is None or math.isnan(share) else f"{share:.0%}"


def latency_table(results: Results) -> Table:
    table = Table(title="End to end, MQTT publish to row stored")
    for column in ("load", "offered", "stored", "readings", "p50", "p95", "p99"):
        table.add_column(column, justify="right")
    for r in results.latency:
        table.add_row(*_latency_cells(r))
    return table


def targets_table(results: Results) -> Table:
    table = Table(title="Targets")
    for column in ("target", "goal", "measured", "met", "short by"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for t in results.targets:
        table.add_row(
            t.name,
            t.goal,
            t.value,
            "yes" if t.met else "NO",
            "-" if t.met else f"{t.shortfall:.0%}",
        )
    return table


def to_markdown(results: Results) -> str:
    """The three tables as GitHub markdown, for docs/performance.md."""
    lines = [
        "| section | what | rate | reference | ref. rate | ratio | CPU s / 1k | peak RSS "
        "| box busy |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results.rows:
        cells = _throughput_cells(results, row, with_note=True)
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| load | offered | stored | readings | p50 | p95 | p99 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results.latency:
        lines.append("| " + " | ".join(_latency_cells(r)) + " |")
    lines += [
        "",
        "| target | goal | measured | met | short by |",
        "| --- | ---: | ---: | :-: | ---: |",
    ]
    for t in results.targets:
        short = "-" if t.met else f"{t.shortfall:.0%}"
        met = "yes" if t.met else "**no**"
        lines.append(f"| {t.name} | {t.goal} | {t.value} | {met} | {short} |")
    return "\n".join(lines) + "\n"
