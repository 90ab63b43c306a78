"""The benchmark's arithmetic, free of I/O: rates from progress samples, percentiles, ratios,
whether a backlog stayed bounded, and whether a target was met."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at a running measurement: records done so far and the process's cost so far."""

    t: float  # monotonic seconds
    done: int
    cpu_s: float = 0.0  # user + system CPU seconds of the measured process(es)
    rss: int = 0  # resident bytes


@dataclass(frozen=True, slots=True)
class Throughput:
    rate: float  # records a second over the steady window
    cpu_per_1k: float | None  # CPU seconds per 1,000 records over the same window
    peak_rss_mb: float
    records: int  # records in the steady window
    window_s: float


def steady_throughput(
    samples: Sequence[Sample], total: int, *, warmup_share: float = 0.1
) -> Throughput:
    """Rate and CPU cost between `warmup_share` of `total` done and all of it done.

    Start-up (imports, joining the consumer group, loading data sets) and the first batches
    fall before the window: what is left is the rate at saturation, which is what a stage
    sustains once it runs. The peak RSS is over every sample, start-up included.
    """
    if total <= 0:
        raise ValueError("total must be positive")
    peak = max((s.rss for s in samples), default=0) / MB
    start = next((s for s in samples if s.done >= warmup_share * total), None)
    end = next((s for s in samples if s.done >= total), None)
    if start is None or end is None or end.t <= start.t or end.done <= start.done:
        return Throughput(math.nan, None, peak, 0, 0.0)
    records = end.done - start.done
    window = end.t - start.t
    cpu = end.cpu_s - start.cpu_s
    cpu_per_1k = cpu / records * 1000 if cpu > 0 else None
    return Throughput(records / window, cpu_per_1k, peak, records, window)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing or the reference is not positive."""
    if value is None or reference is None:
        return None
    if math.isnan(value) or math.isnan(reference) or reference <= 0:
        return None
    return value / reference


@dataclass(frozen=True, slots=True)
class LagVerdict:
    bounded: bool
    final_backlog: float
    growth_per_s: float  # least-squares slope of the backlog over the second half
    reason: str


def lag_verdict(
    points: Sequence[tuple[float, float]],
    rate: float,
    *,
    max_backlog_s: float = 3.0,
    max_growth_share: float = 0.05,
) -> LagVerdict:
    """Whether a backlog (published but not yet stored) stayed bounded at an offered `rate`.

    Bounded means: at the end it holds at most `max_backlog_s` seconds' worth of readings, and
    over the second half of the run it did not keep growing by more than `max_growth_share` of
    the offered rate (a pipeline that keeps up holds a steady in-flight backlog, one that does
    not falls behind at the difference of the rates).
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    if len(points) < 4:
        return LagVerdict(False, math.nan, math.nan, "too few samples")
    half = points[len(points) // 2 :]
    slope = _slope(half)
    final = points[-1][1]
    if final > max_backlog_s * rate:
        reason = f"backlog {final:.0f} > {max_backlog_s:g} s of readings"
        return LagVerdict(False, final, slope, reason)
    if slope > max_growth_share * rate:
        reason = f"backlog growing {slope:.0f}/s > {max_growth_share:.0%} of the rate"
        return LagVerdict(False, final, slope, reason)
    return LagVerdict(True, final, slope, "bounded")


def _slope(points: Sequence[tuple[float, float]]) -> float:
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


@dataclass(frozen=True, slots=True)
class Judgement:
    met: bool
    # How far the value is from the goal, as a share of the goal (0.2 = 20 % short); 0 when met.
    shortfall: float


def judge(value: float | None, goal: float, *, higher_is_better: bool = True) -> Judgement:
    """Whether `value` meets `goal`; a missing value misses by 100 %."""
    if value is None or math.isnan(value):
        return Judgement(False, 1.0)
    if higher_is_better:
        met = value >= goal
        shortfall = 0.0 if met else (goal - value) / goal
    else:
        met = value < goal
        shortfall = 0.0 if met else (value - goal) / goal
    return Judgement(met, shortfall)


def fmt_rate(value: float | None) -> str:
    """Readings a second as a table shows them: 12,345/s, or a dash when unknown."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.0f}/s"


def fmt_ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2f}x"


def fmt_num(value: float | None, digits: int = 2, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}{unit}"
