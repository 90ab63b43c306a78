"""How the runner gathers a batch (the first poll waits for records, later ones top the batch
up without waiting past `batch_max_wait_ms`) and drops the lag of partitions it lost. A
scripted consumer stands in for the consumer's answers; the runner against the real broker is
tested in tests/integration/test_runner.py."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from libs.common import metrics
from libs.common.health import Readiness
from libs.common.runner import RunnerConfig, StageRunner, StepResult

TP = TopicPartition("raw", 0)


def records(start: int, count: int) -> list[ConsumerRecord]:
    return [
        ConsumerRecord("raw", 0, start + i, 0, 0, None, b"v", None, 1, -1, ()) for i in range(count)
    ]


class ScriptedConsumer:
    """Answers getmany from a script and notes the timeout and limit it was asked with."""

    def __init__(self, answers: list[dict[TopicPartition, list[ConsumerRecord]]]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, int]] = []
        self.assigned: set[TopicPartition] = {TP}

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def getmany(self, *, timeout_ms: int, max_records: int) -> Any:
        self.calls.append((timeout_ms, max_records))
        return self.answers.pop(0) if self.answers else {}


def runner(consumer: ScriptedConsumer, **config: Any) -> StageRunner:
    async def step(_records: Any) -> StepResult:
        return StepResult()

    cfg = RunnerConfig("validate", "out", "dlq", "g", **config)
    return StageRunner(cfg, consumer, None, step, Readiness("validate"))


async def test_the_batch_is_topped_up_and_never_waits_longer_than_the_batch_wait() -> None:
    consumer = ScriptedConsumer([{TP: records(0, 3)}, {TP: records(3, 2)}, {}, {}, {}])
    got = await runner(consumer, max_records=100, poll_timeout_ms=5000, batch_max_wait_ms=50)._poll(
        asyncio.Event()
    )
    assert [r.offset for r in got[TP]] == [0, 1, 2, 3, 4]
    first, *later = consumer.calls
    assert first == (5000, 100)
    assert later and all(timeout <= 50 for timeout, _ in later)
    assert later[0][1] == 97  # only what still fits in the batch


async def test_a_full_batch_returns_at_once() -> None:
    consumer = ScriptedConsumer([{TP: records(0, 10)}, {TP: records(10, 5)}])
    got = await runner(consumer, max_records=10, batch_max_wait_ms=10_000)._poll(asyncio.Event())
    assert len(got[TP]) == 10
    assert len(consumer.calls) == 1


async def test_nothing_fetched_returns_an_empty_batch_after_one_poll() -> None:
    consumer = ScriptedConsumer([])
    got = await runner(consumer, batch_max_wait_ms=10_000)._poll(asyncio.Event())
    assert got == {}
    assert len(consumer.calls) == 1


async def test_without_a_batch_wait_the_first_records_are_the_batch() -> None:
    consumer = ScriptedConsumer([{TP: records(0, 3)}, {TP: records(3, 2)}])
    got = await runner(consumer, batch_max_wait_ms=0)._poll(asyncio.Event())
    assert len(got[TP]) == 3


def lag_labels(stage: str) -> set[str]:
    return {
        s.labels["partition"]
        for metric in metrics.CONSUMER_LAG.collect()
        for s in metric.samples
        if s.labels["stage"] == stage
    }


def test_a_partition_taken_away_by_a_rebalance_stops_reporting_its_lag() -> None:
    consumer = ScriptedConsumer([])
    stage_runner = runner(consumer)
    stage = "lag-test"
    stage_runner.config.stage = stage
    kept, lost = TopicPartition("raw", 0), TopicPartition("raw", 1)
    for tp in (kept, lost):
        metrics.CONSUMER_LAG.labels(stage, tp.topic, str(tp.partition)).set(42)
        stage_runner._lag_reported.add(tp)
    consumer.assigned = {kept}
    stage_runner._forget_lost_partitions()
    assert lag_labels(stage) == {"0"}
    assert stage_runner._lag_reported == {kept}
