"""`python -m bench.research.profile [validate|enrich|store ...] [--records N] [--sampler S]`:
where a stage's pure step spends its time, over the benchmark's own readings (no Kafka, no
database).

With pyinstrument (the default) it prints the call tree and the functions with the most self
time, into bench/results/profiles/profile-<stage>.txt. pyinstrument hooks every call, so C
built-ins called per record (orjson, round) look dearer than they are; `--sampler py-spy`
samples from outside instead (C callees charged to their Python caller), into
bench/results/profiles/pyspy-step-<stage>.txt. Git ignores that folder: dumps are not results.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pyinstrument import Profiler
from pyinstrument.frame import Frame
from rich.console import Console
from rich.table import Table

from bench.harness.data import (
    STEP_BATCH,
    consumer_records,
    fleet_devices,
    lineage_headers,
    raw_payloads,
)
from bench.infra import REPO_ROOT
from bench.research.profile_service import PROFILES_DIR, _py_spy, self_time_table, summarise
from services.enrich import geo
from services.enrich.registry import DeviceRegistry
from services.enrich.service import make_step as make_enrich_step
from services.store.writer import to_row
from services.validate.dedup import Deduplicator
from services.validate.rules import load_rules
from services.validate.service import make_step as make_validate_step

STAGES = ("validate", "enrich", "store")


@dataclass(frozen=True, slots=True)
class Hotspot:
    function: str
    where: str
    self_s: float
    share: float  # of the step's total time


def hotspots(root: Frame, top: int = 15) -> list[Hotspot]:
    """Functions by self time, summed over every place in the tree they were called from."""
    totals: dict[tuple[str, str], float] = defaultdict(float)
    stack = [root]
    while stack:
        frame = stack.pop()
        stack.extend(frame.children)
        if frame.is_synthetic:
            # pyinstrument's [self] and [await] leaves: their time belongs to the parent.
            continue
        own = frame.time - sum(child.time for child in frame.children if not child.is_synthetic)
        key = (frame.function or "?", f"{frame.file_path_short}:{frame.line_no}")
        totals[key] += max(0.0, own)
    whole = root.time or 1.0
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)[:top]
    return [Hotspot(f, where, t, t / whole) for (f, where), t in ranked]


def _steps(
    records: int, state: dict[str, Any] | None = None
) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """For each stage: (prepare its input, the call to profile)."""
    state = {} if state is None else state

    def raw() -> None:
        payloads = raw_payloads(records)
        received_at = b"2026-11-27T05:00:00+00:00"
        state["raw"] = consumer_records(
            "raw", [(d.encode(), p, lineage_headers(received_at)) for d, p in payloads]
        )

    def validate_step() -> Callable[[Any], Any]:
        return make_validate_step(load_rules(), Deduplicator(10 * records), max_future_skew_s=300)

    def validated() -> None:
        raw()
        result = make_validate_step(
            load_rules(), Deduplicator(10 * records), max_future_skew_s=300
        )(state["raw"])
        state["validated"] = consumer_records(
            "validated", [(o.key, o.value, list(o.headers)) for o in result.outputs]
        )
        geo.preload()

    def enriched() -> None:
        validated()
        step = make_enrich_step(DeviceRegistry(fleet_devices()), geo.DEFAULT_PRECISION)
        state["enriched"] = [o.value for o in step(state["validated"]).outputs]

    enrich = make_enrich_step(DeviceRegistry(fleet_devices()), geo.DEFAULT_PRECISION)

    def batched(step: Callable[[Any], Any], what: str) -> Callable[[], None]:
        # A runner's batch at a time, each batch's outputs dropped: what a service does.
        def run() -> None:
            inputs = state[what]
            for i in range(0, len(inputs), STEP_BATCH):
                step(inputs[i : i + STEP_BATCH])

        return run

    def store_rows(values: Any) -> list[Any]:
        return [to_row(orjson.loads(v)) for v in values]

    return {
        "validate": (raw, lambda: batched(validate_step(), "raw")()),
        "enrich": (validated, batched(enrich, "validated")),
        "store": (enriched, batched(store_rows, "enriched")),
    }


def _profiled(call: Callable[[], Any]) -> None:
    # A named frame that py-spy's stacks can be filtered on: preparing the data is not counted.
    call()


def bare(stage: str, records: int) -> None:
    """Prepare, then run the step a few times, for a sampler watching from outside."""
    prepare, call = _steps(records)[stage]
    prepare()
    for _ in range(3):
        _profiled(call)


def sample(stage: str, records: int, console: Console, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"pyspy-step-{stage}.txt"
    command = [
        sys.executable,
        "-m",
        "bench.research.profile",
        stage,
        "--records",
        str(records),
        "--bare",
    ]
    subprocess.run(
        [_py_spy(), "record", "--rate", "500", "--format", "raw", "-o", str(raw), "--", *command],
        check=True,
        capture_output=True,
    )
    kept = [line for line in raw.read_text().splitlines() if "_profiled (" in line]
    raw.write_text("\n".join(kept) + "\n")
    total, leaves, _marks = summarise(raw.read_text())
    title = f"{stage} step, sampled by py-spy: {total:,} samples"
    console.print(self_time_table(title, total, leaves))


def profile(stage: str, records: int, console: Console, out_dir: Path) -> list[Hotspot]:
    prepare, call = _steps(records)[stage]
    prepare()
    call()  # once unprofiled: warm caches (geo places, imports) as a running service has them
    profiler = Profiler(interval=0.0005)
    profiler.start()
    call()
    session = profiler.stop()
    # Paths relative to the checkout: no machine paths in the results.
    tree = profiler.output_text(unicode=True, color=False, show_all=False).replace(
        f"{REPO_ROOT}/", ""
    )
    root = session.root_frame()
    found = hotspots(root) if root is not None else []
    duration = session.duration
    table = Table(
        title=f"{stage}: {records:,} readings in {duration:.2f} s = "
        f"{records / duration:,.0f}/s under the profiler; top self time"
    )
    for column in ("function", "where", "self s", "share"):
        table.add_column(column, justify="right" if column in ("self s", "share") else "left")
    for h in found:
        table.add_row(h.function, h.where, f"{h.self_s:.3f}", f"{h.share:.1%}")
    console.print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{h.share:6.1%} {h.self_s:8.3f} s  {h.function}  ({h.where})" for h in found]
    (out_dir / f"profile-{stage}.txt").write_text(
        f"{stage}: {records} readings, {duration:.3f} s\n\nTop self time:\n"
        + "\n".join(lines)
        + "\n\nCall tree:\n"
        + tree
    )
    return found


# Each ablation swaps one part of a step for a near-free stand-in (only here, in the profiling
# process) and times the step again: the difference is what that part costs in place. Sampling
# profilers disagree on C calls made per record (pyinstrument inflates them, py-spy charged
# orjson.loads with half of validate's time, yet pre-parsed input saves nothing); a difference
# of timings does not depend on how a profiler attributes time.
def _ablations(stage: str, state: dict[str, Any]) -> dict[str, Callable[[], Callable[[], None]]]:
    import services.enrich.enricher as enricher_module
    import services.enrich.service as enrich_service
    import services.validate.service as validate_service
    import services.validate.validator as validator

    def swap(module: Any, name: str, value: Any) -> Callable[[], None]:
        original = getattr(module, name)
        setattr(module, name, value)
        return lambda: setattr(module, name, original)

    if stage == "validate":
        parsed = {r.value: orjson.loads(r.value) for r in state["raw"]}
        prebuilt: dict[str, Any] = {}

        def one_lineage(*args: Any) -> Any:
            if "lineage" not in prebuilt:
                prebuilt["lineage"] = validator.Lineage(*args)
            return prebuilt["lineage"]

        # Pre-parsed, one per reading: a single fixed time would turn readings into duplicates
        # and skip the rest of the step.
        times = {
            data["timestamp"]: datetime.fromisoformat(data["timestamp"]).astimezone(UTC)
            for data in parsed.values()
        }
        return {
            "JSON decode (parse_json)": lambda: swap(validator, "parse_json", parsed.__getitem__),
            "JSON encode of the output": lambda: swap(validate_service, "encode_json", _const),
            "Lineage built per record": lambda: swap(validate_service, "Lineage", one_lineage),
            "timestamp parse and checks": lambda: swap(
                validator, "_timestamp", lambda value, *_a: times[value]
            ),
            "number checks (_number)": lambda: swap(validator, "_number", lambda _n, v, _e: v),
        }
    if stage == "enrich":
        parsed = {r.value: orjson.loads(r.value) for r in state["validated"]}

        class FastJson:
            JSONDecodeError = orjson.JSONDecodeError

            @staticmethod
            def loads(value: bytes) -> Any:
                return parsed[value].copy()

        return {
            "JSON decode (orjson.loads)": lambda: swap(enrich_service, "orjson", FastJson),
            "JSON encode of the output": lambda: swap(enrich_service, "encode_json", _const),
            "rounding (_round, round(x, 2))": lambda: swap(enricher_module, "_round", lambda v: v),
            "place lookup (locate, cached)": lambda: swap(
                enricher_module, "locate", lambda *_a: None
            ),
            "heat index and dew point": _swap_physics(enricher_module, swap),
        }
    return {}


def _swap_physics(module: Any, swap: Callable[..., Callable[[], None]]) -> Callable[[], Any]:
    def apply() -> Callable[[], None]:
        undo_a = swap(module, "heat_index_c", lambda _t, _h: 20.0)
        undo_b = swap(module, "dew_point_c", lambda _t, _h: 10.0)

        def undo() -> None:
            undo_a()
            undo_b()

        return undo

    return apply


def _const(_obj: Any) -> bytes:
    return b"{}"


def ablate(stage: str, records: int, console: Console, repeats: int = 3) -> None:
    """µs per reading of the step as is, and with each part swapped out in turn."""
    import gc

    state: dict[str, Any] = {}
    prepare, call = _steps(records, state)[stage]
    prepare()
    call()
    gc.freeze()  # the prepared inputs stand for one batch in a service: not the GC's work

    def best() -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return min(times) / records * 1e6

    base = best()
    table = Table(
        title=f"{stage} step: {base:.2f} µs a reading = {1e6 / base:,.0f}/s "
        f"(best of {repeats}, batches of {STEP_BATCH:,}); what each part costs"
    )
    for column in ("part swapped out", "µs a reading without it", "the part costs", "share"):
        table.add_column(column, justify="left" if column == "part swapped out" else "right")
    for name, apply in _ablations(stage, state).items():
        undo = apply()
        try:
            without = best()
        finally:
            undo()
        cost = base - without
        table.add_row(name, f"{without:.2f}", f"{cost:.2f} µs", f"{cost / base:.0%}")
    gc.unfreeze()
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.research.profile", description=__doc__)
    parser.add_argument("stages", nargs="*", default=list(STAGES), choices=STAGES)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=PROFILES_DIR, help="where the dumps go")
    parser.add_argument(
        "--sampler", choices=("pyinstrument", "py-spy", "ablation"), default="pyinstrument"
    )
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    for stage in args.stages:
        if args.bare:
            bare(stage, args.records)
        elif args.sampler == "ablation":
            ablate(stage, args.records, console)
        elif args.sampler == "py-spy":
            sample(stage, args.records, console, args.out)
        else:
            profile(stage, args.records, console, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
