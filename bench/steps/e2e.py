"""End to end: MQTT publish to row in the table, the four services and the servers on this box.

First the highest rate at which the backlog (published but not yet stored) stays bounded, then
publish-to-stored latency at 25 %, 50 % and 90 % of that rate. Each reading is stamped with the
wall-clock time it is handed to the publisher, so `stored_at - time` in the table is its
latency from publish to stored (stored_at is the store transaction's start, a few ms early).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psutil

from bench.harness.context import Bench
from bench.harness.data import DEVICES, raw_payloads
from bench.harness.mqtt import BarePublisher
from bench.harness.report import LatencyRow, Row
from bench.harness.stats import lag_verdict, percentile
from bench.infra import (
    KAFKA,
    MQTT_PLAIN_URL,
    MachineLoad,
    Proc,
    connect_db,
    cpu_seconds,
    create_schema,
    create_topics,
    free_port,
    read_timestamps,
    server_processes,
)
from bench.steps.stages import register_devices
from libs.common.metrics import sample_sum
from tools.fleet import Pacer

STAGES = ("ingest", "validate", "enrich", "store")
# Where a reading's time goes, from the marks it leaves: the device stamp (publish), the
# CreateTime of its record in each topic (when a stage handed it on), stored_at in the table.
LEGS = (
    ("publish to ingest", "time", "raw"),
    ("validate", "raw", "validated"),
    ("enrich", "validated", "enriched"),
    ("store", "enriched", "stored"),
)
LOAD_SHARES = (0.25, 0.5, 0.9)
_MARK = "@@timestamp@@"
SAMPLE_S = 0.5
MAX_PROBE_RATE = 60_000.0


def templates(count: int) -> list[tuple[bytes, bytes]]:
    """Readings split around their timestamp, which is filled in at publish time."""
    out = []
    for _, payload in raw_payloads(count):
        reading = orjson.loads(payload)
        reading["timestamp"] = _MARK
        head, tail = orjson.dumps(reading).split(f'"{_MARK}"'.encode())
        out.append((head + b'"', b'"' + tail))
    return out


class Feeder:
    """Paced readings into a bare publisher, each stamped (UTC, microseconds) as it is handed
    over; stamps strictly increase, so no two readings share a (device_id, timestamp)."""

    def __init__(self, publisher: BarePublisher, parts: list[tuple[bytes, bytes]]) -> None:
        self.publisher = publisher
        self.parts = parts
        self.sent = 0
        self._next = 0
        self._last_us = 0
        self._second = -1
        self._second_text = ""

    def lines(self, n: int) -> bytes:
        first = max(time.time_ns() // 1000, self._last_us + 1)
        out = []
        parts = self.parts
        for k in range(n):
            second, micro = divmod(first + k, 1_000_000)
            if second != self._second:
                self._second = second
                self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            head, tail = parts[(self._next + k) % len(parts)]
            out.append(head + f"{self._second_text}.{micro:06d}Z".encode() + tail)
        self._next += n
        self._last_us = first + n - 1
        return b"\n".join(out) + b"\n"

    async def feed(self, rate: float, seconds: float) -> tuple[float, float, int]:
        """Publish at `rate` for `seconds`; returns (wall start, wall end, readings handed over)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        pacer = Pacer(rate, start, limit=int(rate * seconds))
        wall_start = time.time()
        handed = 0
        while not pacer.done and loop.time() < start + seconds + 1.0:
            due = pacer.take(loop.time())
            if due:
                await self.publisher.write(self.lines(due))
                handed += due
            await asyncio.sleep(0.005)
        self.sent += handed
        return wall_start, time.time(), handed


@dataclass
class Chain:
    bench: Bench
    procs: dict[str, Proc]
    publisher: BarePublisher
    feeder: Feeder
    schema: str
    topics: dict[str, str]
    servers: dict[str, list[psutil.Process]] = field(default_factory=server_processes)
    lost: int = 0  # published but never stored (e.g. dropped by a broker queue in overload)
    steps: list[dict[str, Any]] = field(default_factory=list)

    async def stored(self) -> int:
        text = await self.procs["store"].metrics()
        return int(sample_sum(text, "pipeline_messages_out_total", stage="store"))

    async def backlog(self) -> int:
        return self.publisher.acked - self.lost - await self.stored()

    async def batches(self) -> dict[str, tuple[float, float]]:
        """(batches, records) each Kafka stage has processed so far: one transaction a batch."""
        out = {}
        for stage in ("validate", "enrich", "store"):
            text = await self.procs[stage].metrics()
            out[stage] = (
                sample_sum(text, "pipeline_batch_size_count", stage=stage),
                sample_sum(text, "pipeline_batch_size_sum", stage=stage),
            )
        return out

    def cpu_breakdown(self) -> dict[str, float]:
        """CPU seconds so far of each service, each server, the publisher and the harness."""
        out = {stage: proc.usage()[0] for stage, proc in self.procs.items()}
        # Looked up again each time: PostgreSQL starts a backend for each connection store
        # opens after the chain started (a process that ended since is not counted).
        self.servers = server_processes()
        for name, processes in self.servers.items():
            out[name] = cpu_seconds(processes)
        pid = self.publisher.pid
        out["publisher (mosquitto_pub)"] = cpu_seconds([psutil.Process(pid)]) if pid else 0.0
        out["harness"] = cpu_seconds([psutil.Process()])
        return out

    async def drain(self) -> float:
        """Wait until everything published is stored, or stored stops moving; seconds taken."""
        started = time.monotonic()
        last, still_since = -1, time.monotonic()
        while time.monotonic() - started < self.bench.plan.drain_timeout_s:
            if self.publisher.acked < self.feeder.sent:
                await asyncio.sleep(SAMPLE_S)
                continue
            stored = await self.stored()
            if stored >= self.publisher.acked - self.lost:
                return time.monotonic() - started
            if stored != last:
                last, still_since = stored, time.monotonic()
            elif time.monotonic() - still_since > 3.0:
                break
            await asyncio.sleep(SAMPLE_S)
        # What never arrived is not backlog of the next step.
        self.lost = self.publisher.acked - await self.stored()
        self.bench.say(f"    drain gave up; {self.lost:,} readings never stored so far")
        return time.monotonic() - started

    async def step(self, rate: float, seconds: float, label: str) -> dict[str, Any]:
        """Publish at `rate` for `seconds`, sampling the backlog and the stored count."""
        points: list[tuple[float, float]] = []
        stored_points: list[tuple[float, float]] = []
        cpu_before = self.cpu_breakdown()
        batches_before = await self.batches()
        machine = MachineLoad()
        rss: dict[str, int] = dict.fromkeys(self.procs, 0)
        sent_before, acked_before = self.feeder.sent, self.publisher.acked
        feeding = asyncio.create_task(self.feeder.feed(rate, seconds))
        t0 = time.monotonic()
        while not feeding.done():
            await asyncio.sleep(SAMPLE_S)
            now = time.monotonic() - t0
            stored = await self.stored()
            points.append((now, float(self.publisher.acked - self.lost - stored)))
            for stage, proc in self.procs.items():
                rss[stage] = max(rss[stage], proc.usage()[1])
            stored_points.append((now, float(stored)))
        wall_start, wall_end, handed = await feeding
        elapsed = wall_end - wall_start
        acked = self.publisher.acked - acked_before
        half = stored_points[len(stored_points) // 2 :]
        stored_rate = (
            (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0])
            if len(half) >= 2 and half[-1][0] > half[0][0]
            else math.nan
        )
        verdict = lag_verdict(points, rate) if points else None
        cpu_after = self.cpu_breakdown()
        cpu = {k: round(cpu_after[k] - cpu_before.get(k, 0.0), 3) for k in cpu_after}
        busy = machine.busy_share()
        batches_after = await self.batches()
        batching = {
            stage: {
                "batches_per_s": (batches_after[stage][0] - batches_before[stage][0])
                / max(elapsed, 1e-9),
                "mean_batch": (batches_after[stage][1] - batches_before[stage][1])
                / max(1.0, batches_after[stage][0] - batches_before[stage][0]),
            }
            for stage in batches_after
        }
        result: dict[str, Any] = {
            "label": label,
            "offered_rate": rate,
            "published_rate": handed / elapsed if elapsed > 0 else math.nan,
            "acked": acked,
            "handed": self.feeder.sent - sent_before,
            "stored_rate": stored_rate,
            "seconds": elapsed,
            "wall_start": wall_start,
            "wall_end": wall_end,
            "cpu_s": sum(cpu[stage] for stage in self.procs),
            "cpu_by_component_s": cpu,
            "cpu_share_of_machine": sum(cpu.values()) / (elapsed * (os.cpu_count() or 1))
            if elapsed > 0
            else math.nan,
            # Everything that ran, ours or not: with cpu_share_of_machine, what others took.
            "machine_busy_share": busy,
            # Each batch of a Kafka stage is one transaction: its fixed cost is paid this often.
            "batching": batching,
            "peak_rss_mb": {k: round(v / 2**20, 1) for k, v in rss.items()},
            "bounded": verdict.bounded if verdict else False,
            "verdict": verdict.reason if verdict else "no samples",
            "final_backlog": verdict.final_backlog if verdict else math.nan,
            "backlog": points,
        }
        self.steps.append(result)
        self.bench.say(
            f"    {label}: offered {rate:,.0f}/s, published {result['published_rate']:,.0f}/s, "
            f"stored {stored_rate:,.0f}/s, {result['verdict']}; transactions/s (mean batch): "
            + ", ".join(
                f"{stage} {b['batches_per_s']:.0f} ({b['mean_batch']:.0f})"
                for stage, b in batching.items()
            )
        )
        return result

    async def latencies(self, wall_start: float, wall_end: float) -> dict[str, list[float]]:
        """Seconds from publish to stored of each reading published in the window, and of each
        leg between the marks it left on the way."""
        conn = await connect_db(self.schema)
        try:
            rows = await conn.fetch(
                "SELECT trace_id, EXTRACT(EPOCH FROM time)::float8 AS time, "
                "EXTRACT(EPOCH FROM stored_at)::float8 AS stored "
                "FROM sensor_readings WHERE time >= $1 AND time <= $2",
                datetime.fromtimestamp(wall_start, UTC),
                datetime.fromtimestamp(wall_end + 1.0, UTC),
            )
        finally:
            await conn.close()
        since_ms = int(wall_start * 1000) - 1000
        marks = {
            what: await read_timestamps(self.topics[what], since_ms)
            for what in ("raw", "validated", "enriched")
        }
        out: dict[str, list[float]] = {"total": [], **{leg: [] for leg, _, _ in LEGS}}
        for row in rows:
            out["total"].append(row["stored"] - row["time"])
            trace = (row["trace_id"] or "").encode()
            at = {"time": row["time"], "stored": row["stored"]}
            for what, found in marks.items():
                if trace in found:
                    at[what] = found[trace] / 1000
            for leg, start, end in LEGS:
                if start in at and end in at:
                    out[leg].append(at[end] - at[start])
        return out


async def start_chain(bench: Bench) -> Chain:
    names = bench.names
    topics = {what: names.topic(f"e2e-{what}") for what in ("raw", "validated", "enriched", "dlq")}
    await create_topics(topics.values())
    bench.topics.extend(topics.values())
    schema = names.schema("e2e")
    bench.schemas.append(schema)
    await create_schema(schema)
    await register_devices(bench, schema)
    prefix = f"bench-{names.run_id}-e2e"
    client_id = f"{prefix}-ingest"
    bench.mqtt_sessions.append(client_id)
    procs: dict[str, Proc] = {}
    for stage in STAGES:
        group = names.group(f"e2e-{stage}")
        bench.groups.append(group)
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": KAFKA,
            "TOPIC_RAW": topics["raw"],
            "TOPIC_VALIDATED": topics["validated"],
            "TOPIC_ENRICHED": topics["enriched"],
            "TOPIC_DLQ": topics["dlq"],
            "DATABASE_SCHEMA": schema,
            "CONSUMER_GROUP": group,
            "MQTT_CLIENT_ID": client_id,
            "MQTT_TOPIC": f"$share/ingest/{prefix}/sensors/+/readings",
            # A private topic prefix, which ingest's TLS account may not subscribe to.
            "MQTT_URL": MQTT_PLAIN_URL,
            "LOG_LEVEL": "INFO",
        }
        procs[stage] = Proc(f"e2e-{stage}", f"services.{stage}", env, bench.log_dir, free_port())
    for proc in procs.values():
        proc.start()
    await asyncio.gather(*(p.wait_ready() for p in procs.values()))
    publisher = BarePublisher(f"{prefix}/sensors/sim/readings")
    await publisher.start()
    feeder = Feeder(publisher, templates(2 * DEVICES))
    return Chain(bench, procs, publisher, feeder, schema, topics)


async def stop_chain(chain: Chain) -> None:
    await chain.publisher.close()
    for stage, proc in chain.procs.items():
        proc.stop()
        chain.bench.note_rss(stage, proc)


def probe_rate(bench: Bench) -> float:
    """An offered rate above what the co-located chain can take: the slowest stage alone."""
    rates = [
        bench.results.rate(f"stage.{s}") for s in ("ingest_mqtt", "validate", "enrich", "store")
    ]
    known = [r for r in rates if r is not None and not math.isnan(r)]
    return min(min(known) if known else 20_000.0, MAX_PROBE_RATE)


async def run(bench: Bench) -> None:
    plan = bench.plan
    chain = await start_chain(bench)
    try:
        offered = probe_rate(bench)
        probe = await chain.step(offered, plan.e2e_probe_s, "probe (overload)")
        await chain.drain()
        capacity = probe["stored_rate"]
        if math.isnan(capacity) or capacity <= 0:
            raise RuntimeError("nothing was stored during the probe")
        rate = 0.9 * capacity
        sustained: dict[str, Any] | None = None
        for attempt in range(plan.e2e_tries):
            step = await chain.step(rate, plan.e2e_verify_s, f"sustain try {attempt + 1}")
            await chain.drain()
            if step["bounded"]:
                sustained = step
                break
            rate *= 0.75
        if sustained is None:
            bench.say("[yellow]    no tried rate kept the backlog bounded[/yellow]")
        base = sustained["published_rate"] if sustained else rate
        row = Row(
            "e2e.sustained",
            "end to end",
            "end to end, MQTT to row (all co-located)",
            base if sustained else math.nan,
            cpu_per_1k=(sustained["cpu_s"] / max(1, sustained["acked"]) * 1000)
            if sustained
            else None,
            reference="peer.naive",
            note=f"backlog {sustained['verdict']}" if sustained else "not sustained",
            machine_busy=sustained["machine_busy_share"] if sustained else None,
        )
        bench.add(row)
        for share in LOAD_SHARES:
            await latency_step(chain, share, share * base)
    finally:
        await stop_chain(chain)
        bench.results.e2e_steps = [
            {k: v for k, v in s.items() if k != "backlog"} | {"backlog": s["backlog"][::2]}
            for s in chain.steps
        ]


async def latency_step(chain: Chain, share: float, rate: float) -> None:
    bench = chain.bench
    step = await chain.step(rate, bench.plan.e2e_latency_s, f"latency at {share:.0%}")
    await chain.drain()
    found = await chain.latencies(step["wall_start"], step["wall_end"])
    totals = found["total"]
    step["leg_latency_s"] = {
        leg: {"p50": percentile(found[leg], 50), "p95": percentile(found[leg], 95)}
        for leg, _, _ in LEGS
    }
    row = LatencyRow(
        load_share=share,
        offered_rate=rate,
        stored_rate=step["stored_rate"],
        readings=len(totals),
        p50_s=percentile(totals, 50),
        p95_s=percentile(totals, 95),
        p99_s=percentile(totals, 99),
    )
    bench.results.latency.append(row)
    legs = ", ".join(f"{leg} {v['p50']:.3f}" for leg, v in step["leg_latency_s"].items())
    bench.say(
        f"    {share:.0%}: {len(totals):,} readings, p50 {row.p50_s:.3f} s, "
        f"p95 {row.p95_s:.3f} s, p99 {row.p99_s:.3f} s; p50 by leg: {legs}"
    )
