"""The shared consume -> step -> produce -> commit loop, against the real Kafka broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence

import orjson
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaTimeoutError

from libs.common.errors import DatabaseUnavailable, NotJson
from libs.common.health import Readiness
from libs.common.kafka import Outgoing, make_consumer, make_producer
from libs.common.models import DeadLetter, Stage, dead_letter
from libs.common.runner import RunnerConfig, StageRunner, Step, StepResult
from libs.common.settings import ConsumerSettings
from tests.conftest import Names
from tests.integration.kafka_helpers import committed_offsets, produce, read_topic, settle_and_read


def upper_step(fail: Callable[[Sequence[ConsumerRecord]], None]) -> Step:
    """Uppercases each value; b"bad" becomes a dead letter; `fail` may raise first."""

    async def step(records: Sequence[ConsumerRecord]) -> StepResult:
        fail(records)
        result = StepResult()
        for r in records:
            if r.value == b"bad":
                result.dead_letters.append(
                    dead_letter(NotJson("bad"), stage=Stage.VALIDATE, record=r)
                )
            else:
                result.outputs.append(Outgoing(r.value.upper(), r.key, r.headers))
        return result

    return step


async def run_stage(
    topics: Names, step: Step, expected_commits: int, *, break_first_commit: bool = False
) -> Readiness:
    """Run a StageRunner on topics.raw until `expected_commits` offsets are committed.

    `break_first_commit` makes the first transaction fail after its records were sent, as a
    broker failure at that moment would: the transaction is aborted.
    """
    settings = topics.settings_of(
        ConsumerSettings, consumer_group=f"g-{topics.run_id}", service_name="validate"
    )
    consumer = make_consumer(settings, topics.raw)
    producer = make_producer(settings, transactional_id=f"tx-{uuid.uuid4().hex[:8]}")
    await producer.start()
    await consumer.start()
    if break_first_commit:
        real = producer.send_offsets_to_transaction
        calls: list[int] = []

        async def fail_once(offsets: dict, group_id: str) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise KafkaTimeoutError("the broker went away mid-transaction (test)")
            await real(offsets, group_id)

        producer.send_offsets_to_transaction = fail_once
    readiness = Readiness("validate", "pipeline", "kafka")
    runner = StageRunner(
        RunnerConfig(
            "validate",
            topics.validated,
            topics.dlq,
            settings.consumer_group,
            backoff_initial_s=0.05,
        ),
        consumer,
        producer,
        step,
        readiness,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        async with asyncio.timeout(30):
            while (
                sum((await committed_offsets(settings.consumer_group, topics.raw)).values())
                < expected_commits
            ):
                assert not task.done(), task
                await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await consumer.stop()
        await producer.stop()
    return readiness


async def test_a_batch_is_produced_dead_lettered_and_committed_after_a_transient_failure(
    topics: Names,
) -> None:
    await produce(topics.raw, [b"a", b"bad", b"c", b"d"])
    calls: list[int] = []

    def fail_twice(records: Sequence[ConsumerRecord]) -> None:
        calls.append(len(records))
        if len(calls) <= 2:
            raise DatabaseUnavailable("the database is away (test)")

    readiness = await run_stage(topics, upper_step(fail_twice), expected_commits=4)

    assert len(calls) >= 3  # two failures, then success: the batch was fetched again
    outputs = await settle_and_read(topics.validated)
    assert sorted(r.value for r in outputs) == [b"A", b"C", b"D"]
    (dead,) = await read_topic(topics.dlq, 1)
    letter = DeadLetter.model_validate(orjson.loads(dead.value))
    assert letter.original_record == "bad" and letter.source_topic == topics.raw
    assert readiness.ready


async def test_a_poison_record_goes_to_the_dlq_after_the_retry_budget_and_the_rest_flows(
    topics: Names,
) -> None:
    await produce(topics.raw, [b"a", b"poison", b"c"], headers=[("trace_id", b"trace-p")])

    def choke_on_poison(records: Sequence[ConsumerRecord]) -> None:
        if any(r.value == b"poison" for r in records):
            raise KeyError("a bug that this record triggers")

    await run_stage(topics, upper_step(choke_on_poison), expected_commits=3)

    assert sorted(r.value for r in await settle_and_read(topics.validated)) == [b"A", b"C"]
    (dead,) = await read_topic(topics.dlq, 1)
    letter = DeadLetter.model_validate(orjson.loads(dead.value))
    # Its type is the project's PoisonRecord; the bug's own exception is in the reason.
    assert (letter.original_record, letter.error_type, letter.attempts) == (
        "poison",
        "PoisonRecord",
        3,
    )
    assert "KeyError('a bug that this record triggers')" in letter.error_message
    assert (letter.trace_id, letter.device_id) == ("trace-p", "dev-1")
    assert (letter.source_topic, letter.source_offset) == (topics.raw, 1)


async def test_records_of_an_aborted_transaction_are_never_seen_by_readers(
    topics: Names,
) -> None:
    await produce(topics.raw, [b"x", b"bad"])
    readiness = await run_stage(
        topics, upper_step(lambda _: None), expected_commits=2, break_first_commit=True
    )
    # The first transaction sent X and a dead letter, then failed: both were aborted and the
    # batch was done again, so readers see each exactly once.
    assert [r.value for r in await settle_and_read(topics.validated)] == [b"X"]
    assert len(await settle_and_read(topics.dlq)) == 1
    assert readiness.ready
