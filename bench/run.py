"""`python -m bench.run [--quick]` (`make bench`): the whole benchmark against the local stack.

Prints progress and a table, and writes bench/results/<date>.json, .md and .png. Every figure
is measured in this run beside its reference (Kafka's own tools, binary COPY, bare Mosquitto
clients, the peers), so ratios hold on a shared, noisy machine where absolute numbers do not.
The full run takes about six minutes (each step is bounded, the whole well under fifteen);
--quick (or BENCH_QUICK=1) about two, with small counts; --only TEXT runs only the steps whose
title holds TEXT (files named <date>-partial).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import psutil
from rich.console import Console

from bench.harness.context import FULL, QUICK, Bench, Plan
from bench.harness.data import make_dataset
from bench.harness.plot import plot
from bench.harness.report import (
    Results,
    evaluate_targets,
    latency_table,
    targets_table,
    throughput_table,
    to_markdown,
)
from bench.infra import (
    DATABASE_ADDRESS,
    KAFKA,
    MQTT_HOST,
    MQTT_PORT,
    REPO_ROOT,
    MachineLoad,
    Names,
    Offsets,
    connect_db,
)
from bench.steps import e2e, limits, stages
from libs.common.logs import configure_logging

RESULTS_DIR = REPO_ROOT / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, about two minutes")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="where the JSON, markdown and PNG go"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="TEXT",
        help="run only the steps whose title holds TEXT (e.g. 'end to end', 'stage: enrich'); "
        "the files are then named <date>-partial",
    )
    return parser.parse_args(argv)


def stack_missing() -> list[str]:
    kafka_host, _, kafka_port = KAFKA.split(",")[0].rpartition(":")
    db_host, db_port = DATABASE_ADDRESS
    missing = []
    for name, host, port in (
        ("Kafka", kafka_host, int(kafka_port)),
        ("Mosquitto", MQTT_HOST, MQTT_PORT),
        ("PostgreSQL", db_host, db_port),
    ):
        try:
            with socket.create_connection((host, port), timeout=2):
                pass
        except OSError:
            missing.append(name)
    return missing


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def machine(plan: Plan) -> dict[str, Any]:
    kafka_jars = sorted((REPO_ROOT / ".stack" / "kafka" / "libs").glob("kafka-clients-*.jar"))
    conn = await connect_db()
    try:
        postgres = await conn.fetchval("SHOW server_version")
        timescaledb = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        )
    finally:
        await conn.close()
    mosquitto = subprocess.run(
        ["mosquitto", "-h"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if plan.quick else "full",
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty_files": len(_git("status", "--porcelain").splitlines()),
        "kafka_clients_jar": kafka_jars[-1].name if kafka_jars else None,
        "postgresql": postgres,
        "timescaledb": timescaledb,
        "mosquitto": mosquitto[0] if mosquitto else None,
        # Settings the services inherit from this environment change what is measured.
        "environment": {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("MALLOC_", "PRODUCER_", "CONSUMER_", "BATCH_", "PYTHON"))
        },
        "packages": {
            p: _version(p)
            for p in ("aiokafka", "asyncpg", "orjson", "aiomqtt", "paho-mqtt", "gmqtt")
            + ("quixstreams", "confluent-kafka", "pydantic")
        },
    }


def _plan_dict(plan: Plan) -> dict[str, Any]:
    return {name: getattr(plan, name) for name in plan.__dataclass_fields__}


async def run(
    plan: Plan, out_dir: Path, console: Console, only: list[str] | None = None
) -> Results:
    names = Names(uuid.uuid4().hex[:8])
    log_dir = Path(tempfile.mkdtemp(prefix=f"bench-{names.run_id}-"))
    meta = await machine(plan)
    meta["plan"] = _plan_dict(plan)
    meta["logs"] = f"{log_dir.name} (in the temp directory)"  # no machine paths in results
    results = Results(meta=meta)
    console.print(
        f"[bold]benchmark {meta['mode']}[/bold], run {names.run_id}: {meta['cores']} cores "
        f"({meta['cpu_model']}), load {meta['load_average_at_start']}, logs in {log_dir}"
    )
    started = time.monotonic()
    console.print(f"making {plan.stage_records:,} readings through the pure steps ...")
    load = MachineLoad()
    data = await asyncio.to_thread(make_dataset, plan.stage_records)
    dataset_busy = load.busy_share()
    offsets = Offsets()
    await offsets.start()
    bench = Bench(plan, names, console, log_dir, offsets, data, results, started)

    async def pure() -> None:
        stages.pure_steps(bench, dataset_busy)

    steps: list[tuple[str, Callable[[Bench], Awaitable[None]]]] = [
        ("prepare: topics pre-filled, schemas", stages.prepare),
        ("pure steps in process (the ceiling of the Python step)", lambda _b: pure()),
        ("limit: Kafka's producer-perf and consumer-perf", limits.kafka_tools),
        ("limit: binary COPY into the hypertable", limits.pg_copy),
        ("limit: Mosquitto bare clients, and the Python MQTT clients", limits.mosquitto),
        ("stage: validate", stages.validate),
        ("stage: enrich", stages.enrich),
        ("stage: store", stages.store),
        ("stage: ingest over HTTP", stages.ingest_http),
        ("stage: ingest over MQTT", stages.ingest_mqtt),
        ("peer: Quix Streams validate", stages.quix_validate),
        ("peer: naive per-record", stages.naive),
        ("end to end: sustained rate, then latency at 25/50/90 %", e2e.run),
    ]
    if only:
        meta["only"] = only
        steps = [s for s in steps if s[0].startswith("prepare") or any(t in s[0] for t in only)]
    try:
        for title, action in steps:
            with bench.step(title) as go:
                if go:
                    await action(bench)
    finally:
        await offsets.close()
        # Clean-up runs whatever the budget: it keeps the shared servers tidy for others.
        bench.say("[bold]clean-up: topics, schemas, consumer groups, MQTT sessions[/bold]")
        try:
            await bench.cleanup()
        except Exception as error:  # reported; the results are still written
            results.errors.append(f"clean-up: {error!r}")
    results.targets = evaluate_targets(results)
    meta["duration_s"] = round(time.monotonic() - started, 1)
    return results


def write(results: Results, out_dir: Path, console: Console) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = datetime.now(UTC).strftime("%Y-%m-%d") + (
        "-quick" if results.meta["mode"] == "quick" else ""
    )
    if results.meta.get("only"):
        stem += "-partial"
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    paths[0].write_bytes(orjson.dumps(results.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    header = (
        f"Benchmark {results.meta['date']} ({results.meta['mode']}), {results.meta['cores']} "
        f"cores ({results.meta['cpu_model']}), commit {results.meta['git_commit']}\n\n"
    )
    paths[1].write_text(header + to_markdown(results))
    try:
        plot(results, paths[2])
    except ImportError as error:
        console.print(f"[yellow]no plot: {error} (install the bench extra)[/yellow]")
        paths.pop()
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quick = args.quick or os.environ.get("BENCH_QUICK", "").lower() in {"1", "true", "yes"}
    plan = QUICK if quick else FULL
    configure_logging("bench", "WARNING")
    # Wide enough for the table when the output is a pipe or a log (80 columns would wrap it).
    console = Console(width=None if sys.stdout.isatty() else 180)
    missing = stack_missing()
    if missing:
        console.print(f"[red]{', '.join(missing)} not reachable: start the stack with `make up`")
        return 2
    results = asyncio.run(run(plan, args.out, console, args.only))
    console.print(throughput_table(results))
    console.print(latency_table(results))
    console.print(targets_table(results))
    for error in results.errors:
        console.print(f"[red]step failed: {error}[/red]")
    for path in write(results, args.out, console):
        console.print(
            f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}"
        )
    console.print(f"took {results.meta['duration_s']:.0f} s")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
