"""`python -m bench.research.ab STAGE [--env NAME=VALUE ...] [--base REF] [--reps N]
[--records N]`: one stage alone, A and B interleaved A B A B on the same pre-filled topic, so a
noisy machine weighs on both alike. For trying a fix before and after: B is the work tree with
the settings of `--env`; A is the work tree as is, or with `--base` the code of an earlier commit
(checked out in a temporary git worktree).

e.g. `python -m bench.research.ab enrich --env PRODUCER_COMPRESSION=zstd`
     `python -m bench.research.ab validate --base HEAD`   (uncommitted changes against HEAD)
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

from rich.console import Console
from rich.table import Table

from bench.harness.context import FULL, Bench
from bench.harness.data import make_dataset
from bench.harness.report import Results
from bench.infra import Names, Offsets, checkout_of, create_schema
from bench.steps import stages

INPUTS = {"validate": ("raw", "out-validate"), "enrich": ("validated", "out-enrich")}
INPUTS["store"] = ("enriched", "")


async def run(
    stage: str,
    env: dict[str, str],
    reps: int,
    records: int,
    console: Console,
    base: Path | None = None,
) -> dict[str, list[float]]:
    names = Names(uuid.uuid4().hex[:8])
    plan = replace(FULL, stage_records=records)
    data = await asyncio.to_thread(make_dataset, records)
    offsets = Offsets()
    await offsets.start()
    log_dir = Path(tempfile.mkdtemp(prefix=f"bench-ab-{names.run_id}-"))
    bench = Bench(plan, names, console, log_dir, offsets, data, Results(meta={}))
    rates: dict[str, list[float]] = {"A": [], "B": []}
    try:
        await stages.prepare(bench)
        source, output = INPUTS[stage]
        topics = {"validated": output} if stage == "validate" else {}
        if stage == "enrich":
            topics = {"enriched": output}
        for rep in range(reps):
            for variant, extra, cwd in (("A", {}, base), ("B", env, None)):
                label = f"{stage}-{variant}{rep}"
                if stage == "store":
                    # A fresh table each time: rows already there would make the write cheaper.
                    schema = names.schema(f"ab{variant.lower()}{rep}")
                    bench.schemas.append(schema)
                    await create_schema(schema)
                    extra = extra | {"DATABASE_SCHEMA": schema}
                row = await stages.kafka_stage(
                    bench, stage, source, label=label, extra_env=extra, cwd=cwd, **topics
                )
                rates[variant].append(row.rate or float("nan"))
    finally:
        await offsets.close()
        await bench.cleanup()
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.research.ab", description=__doc__)
    parser.add_argument("stage", choices=sorted(INPUTS))
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--base", metavar="REF", help="run A from this commit")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    console = Console(width=None if sys.stdout.isatty() else 160)
    with checkout_of(args.base) as base:
        rates = asyncio.run(run(args.stage, env, args.reps, args.records, console, base))
    a_is = f"commit {args.base}" if args.base else "as is"
    table = Table(title=f"{args.stage}: A = {a_is}, B = work tree {env or 'as is'}")
    for column in ("variant", "runs (readings/s)", "median", "B / A"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    a, b = statistics.median(rates["A"]), statistics.median(rates["B"])
    for variant, values in rates.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        ratio = f"{b / a:.2f}x" if variant == "B" and a > 0 else "-"
        table.add_row(variant, runs, f"{statistics.median(values):,.0f}", ratio)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
