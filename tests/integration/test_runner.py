"""The shared consume -> step -> produce -> commit loop, against the real Kafka broker."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
from aiokafka import ConsumerRecord

from libs.common.errors import DatabaseUnavailable
from libs.common.health import Readiness
from libs.common.kafka import Outgoing, make_consumer, make_producer
from libs.common.models import DeadLetter, Stage, dead_letter
from libs.common.runner import RunnerConfig, StageRunner, StepResult
from libs.common.settings import ConsumerSettings
from tests.conftest import Names
from tests.integration.kafka_helpers import committed_offsets, produce, read_topic, settle_and_read


def step_that_fails_first(failures: int):
    calls = {"n": 0}

    async def step(records: Sequence[ConsumerRecord]) -> StepResult:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise DatabaseUnavailable("the database is away (test)")
        result = StepResult()
        for r in records:
            if r.value == b"bad":
                result.dead_letters.append(
                    dead_letter(
                        r.value,
                        stage=Stage.VALIDATE,
                        error_type="NotJson",
                        reasons=["bad"],
                        topic=r.topic,
                        partition=r.partition,
                        offset=r.offset,
                    )
                )
            else:
                result.outputs.append(Outgoing(r.value.upper(), r.key, r.headers))
        return result

    return step, calls


async def run_until(runner: StageRunner, done: asyncio.Event) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.wait_for(done.wait(), 30)
    stop.set()
    await asyncio.wait_for(task, 30)


async def test_a_batch_is_produced_dead_lettered_and_committed_after_a_transient_failure(
    topics: Names,
) -> None:
    settings = topics.settings_of(
        ConsumerSettings, consumer_group=f"g-{topics.suffix}", service_name="validate"
    )
    values = [b"a", b"bad", b"c", b"d"]
    await produce(topics.raw, values)
    step, calls = step_that_fails_first(failures=2)
    consumer = make_consumer(settings, topics.raw)
    producer = make_producer(settings)
    await producer.start()
    await consumer.start()
    readiness = Readiness("validate", "pipeline")
    committed = asyncio.Event()

    async def watch() -> None:
        while sum((await committed_offsets(settings.consumer_group, topics.raw)).values()) < 4:
            await asyncio.sleep(0.3)
        committed.set()

    runner = StageRunner(
        RunnerConfig("validate", topics.validated, topics.dlq, backoff_initial_s=0.05),
        consumer,
        producer,
        step,
        readiness,
    )
    try:
        watcher = asyncio.create_task(watch())
        await run_until(runner, committed)
        await watcher
    finally:
        await consumer.stop()
        await producer.stop()

    assert calls["n"] >= 3  # two failures, then success: the batch was fetched again
    outputs = await settle_and_read(topics.validated)
    assert sorted(r.value for r in outputs) == [b"A", b"C", b"D"]
    (dead,) = await read_topic(topics.dlq, 1)
    letter = DeadLetter.model_validate(orjson.loads(dead.value))
    assert letter.original_record == "bad" and letter.source_topic == topics.raw
    assert readiness.ready
