"""Reading the figures out of Kafka's performance tools' output (pure, so it is unit-tested)."""

from __future__ import annotations

import re


def parse_producer_perf(output: str) -> float:
    """Records a second from ProducerPerformance's summary line (the last one it prints)."""
    found = re.findall(r"records sent, ([\d.]+) records/sec", output)
    if not found:
        raise ValueError(f"no summary in producer-perf output: {output[-300:]!r}")
    return float(found[-1])


def parse_consumer_perf(output: str) -> tuple[float, float]:
    """(records/s over the whole run, records/s while fetching) from ConsumerPerformance.

    The second leaves out joining the group (rebalance.time.ms), as the stages' windows do.
    """
    lines = [line for line in output.splitlines() if line.strip()]
    header = next((i for i, line in enumerate(lines) if line.startswith("start.time")), None)
    if header is None or header + 1 >= len(lines):
        raise ValueError(f"no summary in consumer-perf output: {output[-300:]!r}")
    names = [n.strip() for n in lines[header].split(",")]
    values = [v.strip() for v in lines[header + 1].split(",")]
    row = dict(zip(names, values, strict=True))
    return float(row["nMsg.sec"]), float(row["fetch.nMsg.sec"])


def runs_from_stack(cmdline: str, stack: str) -> bool:
    """Whether a server's command line uses `stack`'s own directories. A second stack nested in
    it (the fault tests' own, under .stack/fault) is not the one measured, and may stop in the
    middle of a step."""
    dirs = "(kafka|pg|mosquitto|run|logs)"
    own = re.search(re.escape(stack) + "/" + dirs + r"\b", cmdline)
    nested = re.search(re.escape(stack) + r"/[^/\s]+/" + dirs + r"(/|\s|$)", cmdline)
    return own is not None and nested is None
