"""`python -m bench.research.mqtt_ab [--base REF] [--env NAME=VALUE ...] [--reps N] [--records N]`:
only the MQTT part of `make bench`, interleaved so a noisy machine weighs on every figure alike.

Each repetition runs, one after the other on fresh persistent sessions holding the same
`--records` queued readings: Mosquitto's bare C subscriber draining it (the reference), then
ingest over MQTT as A (the work tree, or with `--base` the code of an earlier commit, checked
out in a temporary git worktree) and as B (the work tree with the settings of `--env`). It
prints each run's rate, its ratio to the C subscriber of the same repetition, CPU and peak RSS.

e.g. `python -m bench.research.mqtt_ab --base HEAD~1`   (before/after a change to ingest's MQTT)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.harness import mqtt
from bench.harness.context import FULL, Bench
from bench.harness.data import make_dataset
from bench.harness.report import Results, Row
from bench.infra import MQTT_PLAIN_URL, Names, Offsets, Proc, checkout_of, create_topics, free_port
from bench.steps.stages import env_for, measure


async def _c_subscriber(bench: Bench, label: str, lines: list[bytes]) -> float:
    prefix = f"bench-{bench.names.run_id}-{label}"
    client_id = f"{prefix}-c"
    mqtt.open_session(client_id, f"{prefix}/#")
    bench.mqtt_sessions.append(client_id)
    await mqtt.publish_all(f"{prefix}/readings", lines)
    seconds = await asyncio.to_thread(
        mqtt.drain_session_c, client_id, f"{prefix}/#", len(lines), bench.plan.stage_timeout_s
    )
    return len(lines) / seconds


async def _ingest(
    bench: Bench, label: str, lines: list[bytes], extra: dict[str, str], cwd: Path | None
) -> Row:
    """ingest draining its own persistent session, filled while it was away."""
    prefix = f"bench-{bench.names.run_id}-{label}"
    client_id = f"{prefix}-client"
    out = f"out-{label}"
    topic = bench.names.topic(out)
    await create_topics([topic])
    bench.topics.append(topic)
    env = env_for(bench, label, raw=out) | extra
    # A private topic prefix, which ingest's TLS account may not subscribe to: plaintext.
    env |= {
        "MQTT_CLIENT_ID": client_id,
        "MQTT_TOPIC": f"$share/ingest/{prefix}/sensors/+/readings",
        "MQTT_URL": MQTT_PLAIN_URL,
    }
    bench.mqtt_sessions.append(client_id)
    first = Proc(f"{label}-subscribe", "services.ingest", env, bench.log_dir, port=free_port())
    if cwd is not None:
        first.cwd = cwd
    first.start()
    try:
        await first.wait_ready()
    finally:
        first.stop()
    await mqtt.publish_all(f"{prefix}/sensors/sim/readings", lines)
    proc = Proc(label, "services.ingest", env, bench.log_dir, port=free_port())
    if cwd is not None:
        proc.cwd = cwd
    return await measure(
        bench,
        proc,
        lambda: bench.offsets.end(topic),
        len(lines),
        key=f"stage.{label}",
        section="stage",
        name=f"ingest over MQTT ({label})",
        reference="limit.mqtt_sub",
        service="ingest",
    )


async def run(
    env: dict[str, str], reps: int, records: int, console: Console, base: Path | None
) -> list[dict[str, Any]]:
    names = Names(uuid.uuid4().hex[:8])
    plan = replace(FULL, stage_records=records, mqtt_records=records)
    data = await asyncio.to_thread(make_dataset, records)
    lines = [value for _, value, _ in data.raw[:records]]
    offsets = Offsets()
    await offsets.start()
    log_dir = Path(tempfile.mkdtemp(prefix=f"bench-mqtt-{names.run_id}-"))
    bench = Bench(plan, names, console, log_dir, offsets, data, Results(meta={}))
    bench.say(f"logs in {log_dir}")
    runs: list[dict[str, Any]] = []
    try:
        dlq = names.topic("dlq")
        await create_topics([dlq])
        bench.topics.append(dlq)
        for rep in range(reps):
            c_rate = await _c_subscriber(bench, f"c{rep}", lines)
            bench.say(f"  -> C subscriber: {c_rate:,.0f}/s")
            for variant, extra, cwd in (("A", {}, base), ("B", env, None)):
                row = await _ingest(bench, f"ingest-{variant.lower()}{rep}", lines, extra, cwd)
                runs.append(
                    {
                        "variant": variant,
                        "rate": row.rate or float("nan"),
                        "c_rate": c_rate,
                        "cpu_per_1k": row.cpu_per_1k or float("nan"),
                        "rss_mb": row.peak_rss_mb or float("nan"),
                    }
                )
    finally:
        await offsets.close()
        await bench.cleanup()
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.research.mqtt_ab", description=__doc__)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--base", metavar="REF", help="run A from this commit")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    console = Console(width=None if sys.stdout.isatty() else 160)
    with checkout_of(args.base) as base:
        runs = asyncio.run(run(env, args.reps, args.records, console, base))
    a_is = f"commit {args.base}" if args.base else "work tree"
    table = Table(
        title=f"ingest over MQTT, {args.records:,} queued: A = {a_is}, B = work tree {env}"
    )
    columns = ("variant", "rate", "C subscriber", "ratio to C", "CPU s/1k", "peak RSS")
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for r in runs:
        table.add_row(
            r["variant"],
            f"{r['rate']:,.0f}/s",
            f"{r['c_rate']:,.0f}/s",
            f"{r['rate'] / r['c_rate']:.2f}x",
            f"{r['cpu_per_1k']:.3f}",
            f"{r['rss_mb']:.0f} MB",
        )
    for variant in ("A", "B"):
        ratios = [r["rate"] / r["c_rate"] for r in runs if r["variant"] == variant]
        table.add_row(f"{variant} median", "", "", f"{statistics.median(ratios):.2f}x", "", "")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
