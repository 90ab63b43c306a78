"""`python -m bench.research.profile_service [validate|enrich|store] [--records N] [--seconds S]`:
where the running service spends its time at saturation, pure step and Kafka loop together.

Pre-fills a private topic, starts the real service on it, and once it is past start-up samples
it with py-spy (sampling from outside, so the service runs unmodified). Prints the functions
with the most self time and the share of time under a few landmarks (the pure step, producing,
polling, committing), and writes the collapsed stacks to bench/results/profiles/pyspy-<stage>.txt
(git ignores that folder: dumps are not results).
Needs the local stack (make up); cleans up its topics, schema and group.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.harness.data import make_dataset
from bench.infra import (
    KAFKA,
    REPO_ROOT,
    Names,
    Offsets,
    Proc,
    connect_db,
    create_schema,
    create_topics,
    delete_groups,
    delete_topics,
    drop_schemas,
    free_port,
    produce,
)

# Profile dumps: read once, then stale; git ignores the folder and keeps only the run results.
PROFILES_DIR = REPO_ROOT / "bench" / "results" / "profiles"
INPUT = {"validate": "raw", "enrich": "validated", "store": "enriched"}
# Substrings of a frame that mark a part of the loop; a sample counts once per landmark.
LANDMARKS = {
    "pure step (make_step's step, Store.step)": ("make_step.<locals>.step", "Store.step"),
    "producing: batching, compression, sending": (
        "send_records",
        "AIOKafkaProducer.send",
        "message_accumulator",
        "lz4_encode",
        "zstd_encode",
        "Sender.",
    ),
    "  of which choosing the partition": ("AIOKafkaProducer._partition",),
    "transaction and offsets (_transact, _commit)": ("_transact", "StageRunner._commit"),
    "fetching and unpacking records (getmany)": ("getmany", "consumer/fetcher.py"),
    "lag metric (position per partition)": ("_record_lag",),
    "database write (write_rows)": ("write_rows",),
}


def _function(frame: str) -> str:
    """'name (path:line)' -> 'name (path)': py-spy names a frame by line; sum a function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def self_time_table(title: str, total: int, leaves: list[tuple[str, int]]) -> Table:
    """The functions with the most samples of their own, as shares of all samples."""
    table = Table(title=title)
    table.add_column("function (self time, C callees included)")
    table.add_column("share", justify="right")
    for frame, count in leaves:
        table.add_row(frame, f"{count / max(total, 1):.1%}")
    return table


def summarise(collapsed: str, top: int = 20) -> tuple[int, list[tuple[str, int]], dict[str, int]]:
    """(samples, [(function, samples)] by self time, {landmark: samples under it}).

    Time in C code (orjson, lz4, the event loop) is charged to the Python line that called it:
    py-spy samples Python stacks only.
    """
    total = 0
    leaves: dict[str, int] = defaultdict(int)
    marks: dict[str, int] = defaultdict(int)
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaves[_function(frames[-1])] += count
        for name, needles in LANDMARKS.items():
            if any(needle in frame for frame in frames for needle in needles):
                marks[name] += count
    ranked = sorted(leaves.items(), key=lambda item: item[1], reverse=True)[:top]
    return total, ranked, dict(marks)


async def run(stage: str, records: int, seconds: float, console: Console, out: Path) -> None:
    names = Names(uuid.uuid4().hex[:8])
    console.print(f"making {records:,} readings ...")
    data = await asyncio.to_thread(make_dataset, records)
    topic = names.topic(INPUT[stage])
    output = names.topic("out")
    dlq = names.topic("dlq")
    schema = names.schema("store")
    group = names.group(stage)
    await create_topics([topic, output, dlq])
    await create_schema(schema)
    offsets = Offsets()
    await offsets.start()
    proc: Proc | None = None
    try:
        conn = await connect_db(schema, role="admin_api")  # the registry's writer
        try:
            await conn.executemany(
                "INSERT INTO devices (device_id, model, site, owner) VALUES ($1, $2, $3, $4)",
                [(d, v.model, v.site, v.owner) for d, v in data.devices.items()],
            )
        finally:
            await conn.close()
        records_in = {"raw": data.raw, "validated": data.validated, "enriched": data.enriched}
        await produce(topic, records_in[INPUT[stage]])
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": KAFKA,
            "TOPIC_RAW": names.topic("raw") if stage != "validate" else topic,
            "TOPIC_VALIDATED": topic if stage == "enrich" else output,
            "TOPIC_ENRICHED": topic if stage == "store" else output,
            "TOPIC_DLQ": dlq,
            "DATABASE_SCHEMA": schema,
            "CONSUMER_GROUP": group,
        }
        proc = Proc(stage, f"services.{stage}", env, Path("/tmp"), port=free_port()).start()
        await proc.wait_ready()
        while await offsets.committed(group, topic) < records * 0.05:
            await asyncio.sleep(0.05)
        assert proc.process is not None
        out.mkdir(parents=True, exist_ok=True)
        raw_path = out / f"pyspy-{stage}.txt"
        console.print(f"sampling {stage} (pid {proc.process.pid}) for {seconds:.0f} s ...")
        done = await asyncio.to_thread(
            subprocess.run,
            [_py_spy(), "record", "--pid", str(proc.process.pid), "--duration", str(int(seconds))]
            + ["--rate", "250", "--format", "raw", "--nonblocking", "-o", str(raw_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"py-spy failed: {done.stderr[-500:]}")
        processed = await offsets.committed(group, topic)
        total, leaves, marks = summarise(raw_path.read_text())
        console.print(
            self_time_table(
                f"{stage} service: {total:,} samples, {processed:,} records by the end",
                total,
                leaves,
            )
        )
        landmarks = Table(title="time under each part of the loop (inclusive)")
        landmarks.add_column("part")
        landmarks.add_column("share", justify="right")
        for name in LANDMARKS:
            landmarks.add_row(name, f"{marks.get(name, 0) / max(total, 1):.1%}")
        console.print(landmarks)
    finally:
        if proc is not None:
            proc.stop()
        await offsets.close()
        await delete_topics([topic, output, dlq])
        await drop_schemas([schema])
        await asyncio.to_thread(delete_groups, [group])


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.research.profile_service", description=__doc__
    )
    parser.add_argument("stage", choices=sorted(INPUT))
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=PROFILES_DIR, help="where the dump goes")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    asyncio.run(run(args.stage, args.records, args.seconds, console, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
