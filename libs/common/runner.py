"""The one consume -> step -> produce -> commit loop that every Kafka stage runs.

A stage supplies a `Step`: an async function from a batch of consumer records to a
`StepResult` (records for the next topic, dead letters, duplicates dropped). The runner owns
polling, delivery, committing and failure handling, so no stage re-implements them.

Each batch's outputs, dead letters and consumer offsets go to Kafka in one transaction: a stage
killed at any moment leaves either all of a batch's effects or none (downstream consumers read
committed records only), so the next owner of the partition redoes exactly the unfinished work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from libs.common import logs, metrics
from libs.common.errors import BrokerUnavailable, PipelineError, PoisonRecord
from libs.common.health import Readiness
from libs.common.kafka import Outgoing, encode_json, send_records
from libs.common.lifecycle import sleep_or_stop
from libs.common.models import Stage, dead_letter
from libs.common.retry import backoff_s, log_retry

log = structlog.get_logger(__name__)

Batches = dict[TopicPartition, list[ConsumerRecord]]


@dataclass(slots=True)
class StepResult:
    outputs: list[Outgoing] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    # Called once the batch's transaction committed: state such as "seen these keys" must not
    # change for a batch that is retried.
    on_success: Callable[[], None] | None = None


Step = Callable[[Sequence[ConsumerRecord]], Awaitable[StepResult]]


def pure_step(step: Callable[[Sequence[ConsumerRecord]], StepResult]) -> Step:
    """A Step from a plain function (validate, enrich): the runner awaits every step."""

    async def run(records: Sequence[ConsumerRecord]) -> StepResult:
        return step(records)

    return run


@dataclass(slots=True)
class RunnerConfig:
    stage: str
    output_topic: str | None
    dlq_topic: str
    group_id: str
    max_records: int = 2000
    poll_timeout_ms: int = 200
    # After the first records of a batch, keep polling until max_records or this long has
    # passed: fewer, larger transactions (and database writes) under load.
    batch_max_wait_ms: int = 0
    # The wait before a failed batch is tried again: doubling from the first to the longest.
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    # A batch failing this many times for a reason that is not an outage is searched for the
    # record(s) that cause it; those go to the DLQ and the rest pass (a poison message).
    poison_attempts: int = 3
    # A transaction not ended by then counts as failed (the broker is away).
    commit_timeout_s: float = 30.0
    # On SIGTERM a step in progress gets this long to finish before it is abandoned.
    stop_grace_s: float = 10.0


class StageRunner:
    def __init__(
        self,
        config: RunnerConfig,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        step: Step,
        readiness: Readiness,
        renew_producer: Callable[[asyncio.Event], Awaitable[AIOKafkaProducer | None]] | None = None,
    ) -> None:
        self.config = config
        self.consumer = consumer
        self.producer = producer
        self.step = step
        self.readiness = readiness
        # After a failed transaction the producer may be unusable (see RenewableProducer).
        self.renew_producer = renew_producer
        self._outages = 0
        # (first offsets of the failing batch, attempts so far) for poison detection.
        self._failing: tuple[dict[TopicPartition, int], int] | None = None
        # Partitions this replica reports a lag for: dropped when a rebalance takes them away,
        # or the gauge would keep its last value on two replicas at once.
        self._lag_reported: set[TopicPartition] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until `stop` is set; the batch in hand is finished and committed."""
        stage = self.config.stage
        self.readiness.set("pipeline", True)
        while not stop.is_set():
            batches = await self._poll(stop)
            self._forget_lost_partitions()
            if not batches:
                continue
            records = [r for rs in batches.values() for r in rs]
            started = time.perf_counter()
            try:
                step = await self._step_unless_stuck(batches, records, stop)
                if step is None:
                    return
                result = step
                await self._commit(batches, result)
            except PipelineError as error:
                if not error.retriable:
                    raise
                await self._rewind(batches, error, stop)
                if isinstance(error, BrokerUnavailable) and self.renew_producer is not None:
                    renewed = await self.renew_producer(stop)
                    if renewed is not None:
                        self.producer = renewed
                continue
            self._outages = 0
            self._failing = None
            self.readiness.set("pipeline", True)
            self._count(records, result)
            metrics.PROCESSING_SECONDS.labels(stage).observe(time.perf_counter() - started)
            metrics.BATCH_SIZE.labels(stage).observe(len(records))
            await self._record_lag(batches)

    async def _poll(self, stop: asyncio.Event) -> Batches:
        """The next batch: what the first poll brings, topped up until `max_records` or until
        `batch_max_wait_ms` after that first poll (fewer, larger transactions under load)."""
        cfg = self.config
        batches: Batches = {}
        count = 0
        timeout_ms = cfg.poll_timeout_ms
        deadline = 0.0
        while True:
            fetched = await self.consumer.getmany(
                timeout_ms=timeout_ms, max_records=cfg.max_records - count
            )
            for tp, records in fetched.items():
                batches.setdefault(tp, []).extend(records)
                count += len(records)
            if not batches or count >= cfg.max_records or stop.is_set():
                return batches
            if not deadline:
                deadline = time.monotonic() + cfg.batch_max_wait_ms / 1000
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return batches
            # Never wait past the deadline for more: a batch in hand is not held back by the
            # poll timeout.
            timeout_ms = min(cfg.poll_timeout_ms, remaining_ms)

    async def _step_unless_stuck(
        self, batches: Batches, records: list[ConsumerRecord], stop: asyncio.Event
    ) -> StepResult | None:
        """The step's result; None when told to stop while the step hangs on something away
        (a database that does not answer) past the grace period. Nothing of that batch was
        committed, so dropping it here only means the next owner does it again."""
        step = asyncio.create_task(self._run_step(batches, records))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                await asyncio.wait({step}, timeout=self.config.stop_grace_s)
            if not step.done():
                log.warning("stopping with a batch unfinished", records=len(records))
                step.cancel()
                await asyncio.wait({step})
                return None
            return step.result()
        finally:
            stopping.cancel()

    async def _run_step(self, batches: Batches, records: list[ConsumerRecord]) -> StepResult:
        try:
            return await self.step(records)
        except PipelineError as error:
            if error.retriable:
                raise
            failure: Exception = error
        except Exception as error:  # noqa: BLE001 - a bug or a poison record, handled below
            failure = error
        starts = {tp: rs[0].offset for tp, rs in batches.items()}
        attempts = self._failing[1] + 1 if self._failing and self._failing[0] == starts else 1
        self._failing = (starts, attempts)
        metrics.ERRORS.labels(self.config.stage, type(failure).__name__).inc()
        if attempts < self.config.poison_attempts:
            log.warning("step failed, will retry the batch", error=repr(failure), attempt=attempts)
            raise _StepFailed(repr(failure)) from failure
        log.error(
            "step keeps failing: isolating the records that cause it",
            error=repr(failure),
            attempts=attempts,
            records=len(records),
        )
        return await self._isolate(records, attempts)

    async def _isolate(self, records: list[ConsumerRecord], attempts: int) -> StepResult:
        # One record at a time: the ones that still fail are dead-lettered with their attempts,
        # the others pass, so one poison record never blocks its partition.
        merged = StepResult()
        callbacks: list[Callable[[], None]] = []
        for record in records:
            try:
                result = await self.step([record])
            except PipelineError as error:
                if error.retriable:
                    raise
                merged.dead_letters.append(self._poison(record, error, attempts))
                continue
            except Exception as error:  # noqa: BLE001 - same as above, one record at a time
                merged.dead_letters.append(self._poison(record, error, attempts))
                continue
            merged.outputs.extend(result.outputs)
            merged.dead_letters.extend(result.dead_letters)
            merged.duplicates += result.duplicates
            if result.on_success is not None:
                callbacks.append(result.on_success)

        def all_succeeded() -> None:
            for callback in callbacks:
                callback()

        merged.on_success = all_succeeded
        return merged

    def _poison(self, record: ConsumerRecord, error: Exception, attempts: int) -> dict[str, Any]:
        # A bug's own exception (a KeyError...) is named in the reason; the letter's type stays
        # a class of the project's hierarchy, as every other letter's.
        failure = error if isinstance(error, PipelineError) else PoisonRecord(repr(error))
        return dead_letter(
            failure,
            stage=Stage(self.config.stage),
            record=record,
            reasons=[f"processing failed {attempts} times: {error!r}"],
            attempts=attempts,
        )

    async def _commit(self, batches: Batches, result: StepResult) -> None:
        cfg = self.config
        offsets = {tp: rs[-1].offset + 1 for tp, rs in batches.items()}
        # aiokafka can wait for a transaction's end forever when the broker went away in the
        # middle of it; so it runs as a task of its own with a deadline, and a transaction
        # that misses it is left to the producer renewal (a new epoch aborts it).
        transaction = asyncio.create_task(self._transact(offsets, result))
        done, _ = await asyncio.wait({transaction}, timeout=cfg.commit_timeout_s)
        error: BaseException | None
        if transaction in done:
            error = transaction.exception()
        else:
            transaction.cancel()
            transaction.add_done_callback(lambda t: t.cancelled() or t.exception())
            error = TimeoutError(f"no transaction end after {cfg.commit_timeout_s} s")
        if error is not None:
            self.readiness.set("kafka", False)
            if not isinstance(error, KafkaError | TimeoutError):
                raise error
            raise BrokerUnavailable(f"transaction of {cfg.stage} failed: {error!r}") from error
        self.readiness.set("kafka", True)
        if result.on_success is not None:
            result.on_success()

    async def _transact(self, offsets: dict[TopicPartition, int], result: StepResult) -> None:
        cfg = self.config
        async with self.producer.transaction():
            if result.outputs and cfg.output_topic:
                await _send(self.producer, cfg.output_topic, result.outputs)
            if result.dead_letters:
                letters = [Outgoing(encode_json(d), _key(d)) for d in result.dead_letters]
                await _send(self.producer, cfg.dlq_topic, letters)
            await self.producer.send_offsets_to_transaction(offsets, cfg.group_id)

    def _count(self, records: list[ConsumerRecord], result: StepResult) -> None:
        stage = self.config.stage
        metrics.MESSAGES_IN.labels(stage).inc(len(records))
        passed = (
            len(result.outputs)
            if self.config.output_topic
            else len(records) - len(result.dead_letters) - result.duplicates
        )
        metrics.MESSAGES_OUT.labels(stage).inc(passed)
        for d in result.dead_letters:
            metrics.DLQ_RECORDS.labels(stage, d["error_type"]).inc()
            metrics.ERRORS.labels(stage, d["error_type"]).inc()
        logs.log_dead_letters(log, result.dead_letters)
        if result.duplicates:
            metrics.DUPLICATES.labels(stage).inc(result.duplicates)

    async def _rewind(self, batches: Batches, error: PipelineError, stop: asyncio.Event) -> None:
        # Nothing of this batch is committed: seek back and fetch it again after a pause, so
        # the consumer keeps polling (and stays in its group) while the outage lasts.
        # This is the one retry that does not go through tenacity (libs/common/retry.py): a
        # retry must return to `run`, which polls again (the group's max.poll.interval),
        # renews the producer and may get other partitions after a rebalance, so no single
        # call can be wrapped. It waits and logs with the same pieces (`backoff_s`,
        # `log_retry`) as every other retry.
        self._outages += 1
        self.readiness.set("pipeline", False)
        metrics.RETRIES.labels(self.config.stage, "batch").inc()
        if not isinstance(error, _StepFailed):
            metrics.ERRORS.labels(self.config.stage, error.error_type).inc()
        for tp, records in batches.items():
            self.consumer.seek(tp, records[0].offset)
        delay = backoff_s(self._outages, self.config.backoff_initial_s, self.config.backoff_max_s)
        log_retry(
            "batch",
            self._outages,
            delay,
            error,
            error_type=error.error_type,
            partitions={f"{tp.topic}[{tp.partition}]": rs[0].offset for tp, rs in batches.items()},
        )
        await sleep_or_stop(stop, delay)

    async def _record_lag(self, batches: Batches) -> None:
        # From the fetch position, not the last record: a transaction's commit marker takes an
        # offset of its own, which would read as a lag of 1 forever.
        for tp in batches:
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                position = await self.consumer.position(tp)
                metrics.CONSUMER_LAG.labels(self.config.stage, tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )
                self._lag_reported.add(tp)

    def _forget_lost_partitions(self) -> None:
        if not self._lag_reported:
            return
        lost = self._lag_reported - self.consumer.assignment()
        for tp in lost:
            try:
                metrics.CONSUMER_LAG.remove(self.config.stage, tp.topic, str(tp.partition))
            except KeyError:
                pass
        self._lag_reported -= lost


class _StepFailed(PipelineError):
    """The step raised; retried a few times before the batch is searched for poison."""

    retriable = True


async def _send(producer: AIOKafkaProducer, topic: str, records: Sequence[Outgoing]) -> None:
    # Inside a transaction the commit waits for every batch; no per-batch await needed.
    await send_records(producer, topic, records)


def _key(dead_letter: dict[str, Any]) -> bytes | None:
    device_id = dead_letter.get("device_id")
    return device_id.encode() if isinstance(device_id, str) else None
