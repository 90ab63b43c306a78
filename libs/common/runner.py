"""The one consume -> step -> produce -> commit loop that every Kafka stage runs.

A stage supplies a `Step`: an async function from a batch of consumer records to a
`StepResult` (records for the next topic, dead letters, duplicates dropped). The runner owns
polling, delivery, committing and transient-failure handling, so no stage re-implements them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from libs.common import metrics
from libs.common.errors import PipelineError
from libs.common.health import Readiness
from libs.common.kafka import Outgoing, encode_json, produce_all
from libs.common.lifecycle import sleep_or_stop

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class StepResult:
    outputs: list[Outgoing] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    # Called once the outputs and dead letters are acknowledged, before the offsets are
    # committed: state such as "seen these keys" must not change for a batch that is retried.
    on_success: Callable[[], None] | None = None


Step = Callable[[Sequence[ConsumerRecord]], Awaitable[StepResult]]


@dataclass(slots=True)
class RunnerConfig:
    stage: str
    output_topic: str | None
    dlq_topic: str
    max_records: int = 2000
    poll_timeout_ms: int = 200
    # Keep polling until this many records or this long has passed: store wants big batches.
    batch_max_wait_ms: int = 0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0


class StageRunner:
    def __init__(
        self,
        config: RunnerConfig,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        step: Step,
        readiness: Readiness,
    ) -> None:
        self.config = config
        self.consumer = consumer
        self.producer = producer
        self.step = step
        self.readiness = readiness
        self._failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until `stop` is set; the batch in hand is finished and committed."""
        stage = self.config.stage
        self.readiness.set("pipeline", True)
        while not stop.is_set():
            batches = await self._poll(stop)
            if not batches:
                continue
            records = [r for rs in batches.values() for r in rs]
            started = time.perf_counter()
            try:
                await self._process(records)
            except PipelineError as error:
                if not error.retriable:
                    raise
                await self._rewind(batches, error, stop)
                continue
            await self._commit(batches)
            self._failures = 0
            self.readiness.set("pipeline", True)
            metrics.PROCESSING_SECONDS.labels(stage).observe(time.perf_counter() - started)
            metrics.BATCH_SIZE.labels(stage).observe(len(records))
            self._record_lag(batches)

    async def _poll(self, stop: asyncio.Event) -> dict[TopicPartition, list[ConsumerRecord]]:
        cfg = self.config
        batches: dict[TopicPartition, list[ConsumerRecord]] = {}
        count = 0
        deadline = time.monotonic() + cfg.batch_max_wait_ms / 1000
        while True:
            fetched = await self.consumer.getmany(
                timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_records - count
            )
            for tp, records in fetched.items():
                batches.setdefault(tp, []).extend(records)
                count += len(records)
            if count >= cfg.max_records or time.monotonic() >= deadline or stop.is_set():
                return batches
            if not fetched and not batches:
                return batches

    async def _process(self, records: list[ConsumerRecord]) -> None:
        stage = self.config.stage
        metrics.MESSAGES_IN.labels(stage).inc(len(records))
        result = await self.step(records)
        if result.outputs and self.config.output_topic:
            await produce_all(self.producer, self.config.output_topic, result.outputs)
        if result.dead_letters:
            await produce_all(
                self.producer,
                self.config.dlq_topic,
                [Outgoing(encode_json(d), _key(d)) for d in result.dead_letters],
            )
            for d in result.dead_letters:
                metrics.DLQ_RECORDS.labels(stage, d["error_type"]).inc()
        if result.on_success is not None:
            result.on_success()
        if result.duplicates:
            metrics.DUPLICATES.labels(stage).inc(result.duplicates)
        metrics.MESSAGES_OUT.labels(stage).inc(
            len(result.outputs)
            if self.config.output_topic
            else len(records) - len(result.dead_letters)
        )

    async def _rewind(
        self,
        batches: dict[TopicPartition, list[ConsumerRecord]],
        error: PipelineError,
        stop: asyncio.Event,
    ) -> None:
        # Nothing of this batch is committed: seek back and fetch it again after a pause, so
        # the consumer keeps polling (and stays in its group) while the outage lasts.
        self._failures += 1
        self.readiness.set("pipeline", False)
        metrics.RETRIES.labels(self.config.stage, "batch").inc()
        metrics.ERRORS.labels(self.config.stage, error.error_type).inc()
        for tp, records in batches.items():
            self.consumer.seek(tp, records[0].offset)
        delay = min(
            self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (self._failures - 1)
        )
        delay += random.uniform(0, self.config.backoff_initial_s)
        log.warning(
            "batch failed, will retry",
            error=repr(error),
            error_type=error.error_type,
            attempt=self._failures,
            sleep_s=round(delay, 2),
            partitions={f"{tp.topic}[{tp.partition}]": rs[0].offset for tp, rs in batches.items()},
        )
        await sleep_or_stop(stop, delay)

    async def _commit(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        offsets = {tp: rs[-1].offset + 1 for tp, rs in batches.items()}
        try:
            await self.consumer.commit(offsets)
        except CommitFailedError as error:
            # The group rebalanced while we worked: the new owner re-reads these records, and
            # the table's unique key makes that harmless.
            log.warning("commit failed after rebalance", error=repr(error))
        except KafkaError as error:
            log.warning("commit failed", error=repr(error))

    def _record_lag(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        for tp, records in batches.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(self.config.stage, tp.topic, str(tp.partition)).set(
                    max(0, highwater - (records[-1].offset + 1))
                )


def _key(dead_letter: dict[str, Any]) -> bytes | None:
    device_id = dead_letter.get("device_id")
    return device_id.encode() if isinstance(device_id, str) else None
