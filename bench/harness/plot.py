"""The run as one PNG: throughput of each stage beside its reference, end-to-end latency at each
load, and where the time goes per stage."""

from __future__ import annotations

import math
from pathlib import Path

from bench.harness.report import Results

_SECTIONS = ("stage", "peer", "end to end", "pure step", "MQTT client")


def plot(results: Results, path: Path) -> None:
    # Imported here: matplotlib is a benchmark dependency only, and slow to import.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_lat, ax_stage) = plt.subplots(
        1, 3, figsize=(20, 7), gridspec_kw={"width_ratios": [2.2, 1, 1]}
    )
    meta = results.meta
    fig.suptitle(
        f"sensor pipeline benchmark {meta.get('date', '')} ({meta.get('mode', '')}), "
        f"{meta.get('cores', '?')} cores, everything on one machine"
    )

    rows = [r for r in results.rows if r.section in _SECTIONS and _ok(r.rate)]
    labels = [f"{r.name}" for r in rows]
    ys = list(range(len(rows)))
    ax_rate.barh(ys, [r.rate or 0 for r in rows], height=0.4, label="measured", color="tab:blue")
    ref_rates = [results.rate(r.reference) if r.reference else None for r in rows]
    ax_rate.barh(
        [y + 0.4 for y in ys],
        [v if _ok(v) else 0 for v in ref_rates],
        height=0.4,
        label="its reference, same run",
        color="tab:gray",
        alpha=0.6,
    )
    for y, row in zip(ys, rows, strict=True):
        ratio = results.ratio_of(row)
        text = f"{row.rate:,.0f}/s" + (f"  ({ratio:.2f}x ref.)" if ratio else "")
        ax_rate.text(row.rate or 0, y, " " + text, va="center", fontsize=7)
    ax_rate.set_yticks([y + 0.2 for y in ys], labels, fontsize=7)
    ax_rate.invert_yaxis()
    ax_rate.set_xscale("log")
    ax_rate.set_xlabel("readings a second (log scale)")
    ax_rate.set_title("Throughput at saturation")
    ax_rate.legend(loc="lower right", fontsize=8)

    lat = results.latency
    if lat:
        xs = [r.offered_rate for r in lat]
        for attr, label in (("p50_s", "p50"), ("p95_s", "p95"), ("p99_s", "p99")):
            ax_lat.plot(xs, [getattr(r, attr) for r in lat], marker="o", label=label)
        for r in lat:
            ax_lat.annotate(f"{r.load_share:.0%}", (r.offered_rate, r.p50_s), fontsize=7)
        ax_lat.axhline(1.0, color="red", linestyle=":", linewidth=1, label="target p95 < 1 s")
        ax_lat.legend(fontsize=8)
    ax_lat.set_xlabel("offered readings a second")
    ax_lat.set_ylabel("seconds, MQTT publish to stored")
    ax_lat.set_title("End-to-end latency")

    steps = [s for s in results.e2e_steps if "leg_latency_s" in s]
    if steps:
        legs = list(steps[0]["leg_latency_s"])
        width = 0.8 / len(steps)
        for i, step in enumerate(steps):
            found = step["leg_latency_s"]
            xs = [p + i * width for p in range(len(legs))]
            p50 = [found[leg]["p50"] if _ok(found[leg]["p50"]) else 0 for leg in legs]
            p95 = [found[leg]["p95"] if _ok(found[leg]["p95"]) else 0 for leg in legs]
            bars = ax_stage.bar(xs, p50, width=width, label=f"{step['offered_rate']:,.0f}/s")
            ax_stage.scatter(xs, p95, marker="_", s=120, color=bars.patches[0].get_facecolor())
        ax_stage.set_xticks([p + 0.4 - width / 2 for p in range(len(legs))], legs, fontsize=8)
        ax_stage.legend(fontsize=8, title="offered (bar p50, dash p95)")
    ax_stage.set_ylabel("seconds a reading spends in each leg")
    ax_stage.set_title("Latency per stage")

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ok(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and value > 0
