"""What every step of a run shares: the plan (quick or full), the names, the data, the console
that shows progress, the results so far, and what must be cleaned up at the end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from rich.console import Console

from bench.harness import mqtt
from bench.harness.data import Dataset
from bench.harness.report import Results, Row
from bench.harness.stats import Throughput, fmt_num, fmt_rate
from bench.infra import (
    MachineLoad,
    Names,
    Offsets,
    Proc,
    delete_groups,
    delete_topics,
    drop_schemas,
)

log = structlog.get_logger("bench")


@dataclass(frozen=True, slots=True)
class Plan:
    quick: bool
    stage_records: int  # validate, enrich, store, ingest over HTTP, the Quix peer
    mqtt_records: int  # Mosquitto queues at most max_queued_messages (100,000) per session
    naive_records: int
    kafka_perf_records: int
    stage_timeout_s: float
    e2e_probe_s: float
    e2e_verify_s: float
    e2e_latency_s: float
    e2e_tries: int
    drain_timeout_s: float
    # The whole run's bound: a step that would start later is skipped and reported, and a
    # stage's wait is cut to what is left, so a stuck service cannot stretch the run.
    budget_s: float


FULL = Plan(
    quick=False,
    stage_records=300_000,
    mqtt_records=100_000,
    naive_records=15_000,
    kafka_perf_records=1_000_000,
    stage_timeout_s=150.0,
    e2e_probe_s=20.0,
    e2e_verify_s=30.0,
    e2e_latency_s=20.0,
    e2e_tries=3,
    drain_timeout_s=60.0,
    budget_s=13 * 60.0,
)
QUICK = Plan(
    quick=True,
    stage_records=40_000,
    mqtt_records=20_000,
    naive_records=2_000,
    kafka_perf_records=200_000,
    stage_timeout_s=45.0,
    e2e_probe_s=6.0,
    e2e_verify_s=8.0,
    e2e_latency_s=5.0,
    e2e_tries=2,
    drain_timeout_s=20.0,
    budget_s=4 * 60.0,
)


@dataclass
class Bench:
    plan: Plan
    names: Names
    console: Console
    log_dir: Path
    offsets: Offsets
    data: Dataset
    results: Results
    started: float = field(default_factory=time.monotonic)
    topics: list[str] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    mqtt_sessions: list[str] = field(default_factory=list)

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        self.console.print(f"[dim]{elapsed:6.1f}s[/dim]  {message}", highlight=False)

    def tick(self, what: str, total: int) -> Callable[[int, float], None]:
        def on_tick(done: int, seconds: float) -> None:
            self.say(f"    {what}: {done:,} of {total:,} after {seconds:.1f} s")

        return on_tick

    def remaining_s(self) -> float:
        return self.plan.budget_s - (time.monotonic() - self.started)

    def stage_timeout_s(self) -> float:
        return max(5.0, min(self.plan.stage_timeout_s, self.remaining_s()))

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[bool]:
        """A step of the run: announced, timed, and when it fails, recorded and skipped.

        Yields False (and the caller skips its work) once the run's time budget is spent.
        """
        if self.remaining_s() <= 0:
            self.results.errors.append(f"{title}: skipped, the run's time budget was spent")
            self.say(f"[yellow]{title}: skipped (time budget)[/yellow]")
            yield False
            return
        self.say(f"[bold]{title}[/bold]")
        started = time.monotonic()
        machine = MachineLoad()
        first_row = len(self.results.rows)
        try:
            yield True
        except Exception as error:  # one broken step must not lose the others
            self.results.errors.append(f"{title}: {error!r}")
            self.say(f"[red]  failed: {error!r}[/red]")
            log.warning("bench step failed", step=title, exc_info=True)
        else:
            self.say(f"  done in {time.monotonic() - started:.1f} s")
        finally:
            busy = machine.busy_share()
            for row in self.results.rows[first_row:]:
                if row.machine_busy is None:
                    row.machine_busy = busy

    def add(self, row: Row) -> Row:
        self.results.rows.append(row)
        rss = fmt_num(row.peak_rss_mb, 0, " MB") if row.peak_rss_mb else ""
        cpu = f", {row.cpu_per_1k:.3f} CPU s/1k" if row.cpu_per_1k else ""
        busy = f", machine {row.machine_busy:.0%} busy" if row.machine_busy is not None else ""
        self.say(f"  -> {row.name}: [bold]{fmt_rate(row.rate)}[/bold]{cpu} {rss}{busy} {row.note}")
        return row

    def note_rss(self, service: str, proc: Proc) -> None:
        mb = proc.peak_rss / (1024 * 1024)
        previous = self.results.service_rss_mb.get(service, 0.0)
        self.results.service_rss_mb[service] = round(max(previous, mb), 1)

    async def cleanup(self) -> None:
        """Delete what the run made on the shared servers: topics, schemas, groups, sessions."""
        await delete_topics(self.topics)
        await drop_schemas(self.schemas)
        await asyncio.to_thread(delete_groups, self.groups)
        for client_id in self.mqtt_sessions:
            await asyncio.to_thread(mqtt.close_session, client_id)


def throughput_row(
    key: str,
    section: str,
    name: str,
    measured: Throughput,
    *,
    reference: str | None,
    done: int,
    total: int,
    note: str = "",
) -> Row:
    if done < total:
        note = f"{note}; incomplete: {done:,} of {total:,}".strip("; ")
    return Row(
        key,
        section,
        name,
        measured.rate,
        measured.cpu_per_1k,
        measured.peak_rss_mb,
        reference,
        note,
    )
