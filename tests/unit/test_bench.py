"""The benchmark harness's arithmetic and rendering: rates from samples, percentiles, ratios,
the bounded-lag verdict, the targets, the tables, and reading Kafka's tools' output."""

from __future__ import annotations

import math

import pytest

from bench.harness.parsing import parse_consumer_perf, parse_producer_perf, runs_from_stack
from bench.harness.report import LatencyRow, Results, Row, evaluate_targets, to_markdown
from bench.harness.stats import (
    Sample,
    judge,
    lag_verdict,
    percentile,
    ratio,
    steady_throughput,
)


def test_the_rate_leaves_out_start_up_and_counts_from_a_tenth_done() -> None:
    samples = [
        Sample(0.0, 0, cpu_s=0.0, rss=50 << 20),
        Sample(5.0, 0, cpu_s=2.0, rss=80 << 20),  # imports, group join: nothing done yet
        Sample(6.0, 1000, cpu_s=2.5, rss=90 << 20),
        Sample(10.0, 5000, cpu_s=4.5, rss=120 << 20),
        Sample(15.0, 10_000, cpu_s=7.0, rss=100 << 20),
    ]
    measured = steady_throughput(samples, 10_000)
    assert measured.rate == pytest.approx(9000 / 9.0)
    assert measured.cpu_per_1k == pytest.approx(4.5 / 9000 * 1000)
    assert measured.peak_rss_mb == pytest.approx(120)
    assert measured.records == 9000


def test_a_run_that_never_finished_has_no_rate_but_keeps_its_peak_memory() -> None:
    samples = [Sample(0.0, 0, rss=10 << 20), Sample(1.0, 500, rss=20 << 20)]
    measured = steady_throughput(samples, 10_000)
    assert math.isnan(measured.rate)
    assert measured.peak_rss_mb == pytest.approx(20)


def test_percentiles_interpolate_between_ranks_like_numpy() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_a_percentile_outside_0_to_100_is_refused() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_a_ratio_needs_a_positive_reference() -> None:
    assert ratio(50.0, 100.0) == pytest.approx(0.5)
    assert ratio(50.0, 0.0) is None
    assert ratio(None, 100.0) is None
    assert ratio(math.nan, 100.0) is None


def test_a_steady_backlog_is_bounded() -> None:
    points = [(t / 2, 900.0 + (50 if t % 2 else -50)) for t in range(40)]
    verdict = lag_verdict(points, rate=1000.0)
    assert verdict.bounded, verdict.reason


def test_a_backlog_that_keeps_growing_is_not_bounded() -> None:
    points = [(t / 2, 200.0 * t / 2) for t in range(40)]  # falls behind by 200 readings a second
    verdict = lag_verdict(points, rate=1000.0)
    assert not verdict.bounded
    assert verdict.growth_per_s == pytest.approx(200.0)


def test_a_backlog_of_many_seconds_is_not_bounded_even_when_flat() -> None:
    points = [(t / 2, 10_000.0) for t in range(40)]
    assert not lag_verdict(points, rate=1000.0).bounded


def test_targets_are_judged_in_their_direction() -> None:
    assert judge(60_000, 50_000).met
    short = judge(40_000, 50_000)
    assert not short.met and short.shortfall == pytest.approx(0.2)
    assert judge(0.8, 1.0, higher_is_better=False).met
    over = judge(300.0, 150.0, higher_is_better=False)
    assert not over.met and over.shortfall == pytest.approx(1.0)
    assert judge(None, 10.0) == judge(math.nan, 10.0)


def _results() -> Results:
    results = Results(meta={"date": "2026-11-27", "mode": "full", "cores": 2})
    results.rows = [
        Row("limit.pg_copy", "limit", "COPY", 200_000.0),
        Row("stage.validate", "stage", "validate", 60_000.0, 0.02, 90.0),
        Row("peer.quix_validate", "peer", "Quix validate", 30_000.0),
        Row("stage.enrich", "stage", "enrich", 40_000.0),
        Row("stage.store", "stage", "store", 120_000.0, reference="limit.pg_copy"),
        Row("stage.ingest_mqtt", "stage", "ingest mqtt", math.nan),
    ]
    results.latency = [LatencyRow(0.5, 5000.0, 4990.0, 100_000, 0.3, 0.8, 1.2)]
    results.service_rss_mb = {"enrich": 240.0, "validate": 90.0}
    return results


def test_the_targets_of_the_issue_come_out_met_or_short_by_how_much() -> None:
    results = _results()
    targets = {t.name: t for t in evaluate_targets(results)}
    assert targets["validate, one process"].met
    assert targets["validate vs Quix Streams validate"].met  # 2.0x >= 1.5x
    assert not targets["enrich, one process"].met
    assert targets["enrich, one process"].shortfall == pytest.approx(0.2)
    assert targets["store vs binary COPY"].met  # 0.6x >= 0.5x
    assert not targets["ingest over MQTT"].met  # not measured counts as missed
    assert targets["end to end p95, publish to stored, at half the sustained rate"].met
    assert not targets["enrich peak RSS"].met
    assert targets["validate peak RSS"].met


def test_the_json_has_ratios_and_no_nan() -> None:
    data = _results().to_json()
    store = next(r for r in data["rows"] if r["key"] == "stage.store")
    assert store["ratio"] == pytest.approx(0.6)
    assert store["reference_rate"] == 200_000.0
    mqtt = next(r for r in data["rows"] if r["key"] == "stage.ingest_mqtt")
    assert mqtt["rate"] is None


def test_the_markdown_holds_every_row_and_the_targets() -> None:
    results = _results()
    results.targets = evaluate_targets(results)
    text = to_markdown(results)
    assert "| stage | store | 120,000/s | COPY | 200,000/s | 0.60x |" in text
    assert "| 50% | 5,000/s | 4,990/s | 100,000 | 0.300 s | 0.800 s | 1.200 s |" in text
    assert "| enrich peak RSS | < 150 MB | 240 MB | **no** | 60% |" in text


PRODUCER_OUTPUT = """\
Number of records read: 50000
12345 records sent, 2469.0 records/sec (0.50 MB/sec), 1.2 ms avg latency, 30.0 ms max latency.
1000000 records sent, 172711.571675 records/sec (34.89 MB/sec), 10.62 ms avg latency, \
376.00 ms max latency, 8 ms 50th, 29 ms 95th, 40 ms 99th, 67 ms 99.9th.
"""

CONSUMER_OUTPUT = """\
start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, \
rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
2026-11-27 08:11:35:137, 2026-11-27 08:11:35:851, 60.6043, 84.8800, 300000, 420168.0672, \
300, 414, 146.3873, 724637.6812
"""


def test_kafka_producer_perf_gives_its_final_summary_rate() -> None:
    assert parse_producer_perf(PRODUCER_OUTPUT) == pytest.approx(172711.571675)


def test_kafka_consumer_perf_gives_the_overall_and_the_fetching_rate() -> None:
    overall, fetching = parse_consumer_perf(CONSUMER_OUTPUT)
    assert overall == pytest.approx(420168.0672)
    assert fetching == pytest.approx(724637.6812)


def test_tool_output_without_a_summary_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_producer_perf("Exception in thread main")
    with pytest.raises(ValueError):
        parse_consumer_perf("WARN nothing consumed")


@pytest.mark.parametrize(
    ("cmdline", "ours"),
    [
        (
            "java -cp S/kafka/libs/* -Dkafka.logs.dir=S/logs kafka.Kafka S/run/kafka.properties",
            True,
        ),
        (
            "java -cp S/kafka/libs/* -Dkafka.logs.dir=S/fault/logs kafka.Kafka S/fault/run/k.p",
            False,
        ),
        ("/usr/sbin/mosquitto -c S/mosquitto/mosquitto.conf", True),
        ("/usr/sbin/mosquitto -c S/fault/mosquitto/mosquitto.conf", False),
        ("/usr/lib/postgresql/15/bin/postgres -D S/pg/data", True),
        ("/usr/lib/postgresql/15/bin/postgres -D S/fault/pg/data", False),
        ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", False),
    ],
)
def test_only_this_stacks_servers_are_charged_their_cpu(cmdline: str, ours: bool) -> None:
    assert runs_from_stack(cmdline.replace("S/", "/r/.stack/"), "/r/.stack") is ours
