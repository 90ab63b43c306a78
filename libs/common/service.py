"""The shared life of a Kafka stage: wait for what it needs, serve health, run, drain, close."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from libs.common.errors import BrokerUnavailable
from libs.common.health import Readiness, health_app, serve_http
from libs.common.kafka import make_consumer, make_producer
from libs.common.retry import call_with_retry, until_stopped
from libs.common.runner import RunnerConfig, StageRunner, Step
from libs.common.settings import ConsumerSettings, PipelineSettings

log = structlog.get_logger(__name__)

# At start-up a stage waits this long for Kafka before it gives up and exits non-zero.
STARTUP_WAIT_S = 600.0
RENEW_RETRY_MIN_S = 0.2


async def start_kafka_client(client: AIOKafkaProducer | AIOKafkaConsumer, what: str) -> None:
    async def _start() -> None:
        try:
            await client.start()
        except KafkaError as error:
            raise BrokerUnavailable(f"{what}: {error!r}") from error

    await call_with_retry(_start, STARTUP_WAIT_S, name=f"start {what}")


async def close_quietly(closing: Awaitable[None], what: str, timeout_s: float) -> None:
    """Close a client within a bound; at shutdown an unreachable broker is no reason to fail.

    What was not committed is simply read again by the next owner of the partitions.
    """
    try:
        await asyncio.wait_for(closing, timeout_s)
    except (KafkaError, TimeoutError, OSError) as error:
        log.warning("closing did not finish cleanly", client=what, error=repr(error))
    except asyncio.CancelledError:
        # aiokafka's fetcher can surface the cancellation of its own task when the broker is
        # away; only a cancellation of this task (a hard stop) must go on.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        log.warning("closing was interrupted", client=what)


@contextlib.asynccontextmanager
async def kafka_producer(
    settings: PipelineSettings, **overrides: object
) -> AsyncIterator[RenewableProducer]:
    producer = RenewableProducer(settings, **overrides)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


class RenewableProducer:
    """A Kafka producer that is replaced by a fresh one after a failed write.

    aiokafka's idempotent producer gives up on batches that time out while the broker is away
    and goes on numbering the next ones; once the broker is back it refuses them all with
    OutOfOrderSequenceNumber and that producer never recovers. A new producer (with a
    transactional id: a new epoch of it) starts clean.
    """

    def __init__(self, settings: PipelineSettings, **overrides: object) -> None:
        self.settings = settings
        self.overrides = overrides
        self.producer = make_producer(settings, **overrides)
        self._lock = asyncio.Lock()
        self.generation = 0

    async def start(self) -> None:
        await start_kafka_client(
            self.producer, f"producer to {self.settings.kafka_bootstrap_servers}"
        )

    async def renew(
        self, stop: asyncio.Event, seen_generation: int | None = None
    ) -> AIOKafkaProducer | None:
        """Close the producer and start a new one, waiting while Kafka is away; None when
        `stop` is set first. Concurrent callers that saw the same failure renew once."""
        async with self._lock:
            if seen_generation is not None and seen_generation != self.generation:
                return self.producer
            await close_quietly(self.producer.stop(), "producer", self.settings.shutdown_timeout_s)
            if stop.is_set():
                return None
            producer = await until_stopped(
                self._start_new,
                stop,
                name="producer_renew",
                initial_s=RENEW_RETRY_MIN_S,
                max_wait_s=self.settings.retry_max_wait_s,
            )
            if producer is None:
                return None
            self.producer = producer
            self.generation += 1
            log.info("producer renewed", generation=self.generation)
            return producer

    async def _start_new(self) -> AIOKafkaProducer:
        producer = make_producer(self.settings, **self.overrides)
        try:
            await producer.start()
        except KafkaError as error:
            await close_quietly(producer.stop(), "producer", 5)
            raise BrokerUnavailable(f"new producer not started: {error!r}") from error
        return producer

    async def stop(self) -> None:
        # stop() flushes what is still queued before it returns.
        await close_quietly(self.producer.stop(), "producer", self.settings.shutdown_timeout_s)


async def watch_kafka(
    check: Callable[[], Awaitable[object]], readiness: Readiness, interval_s: float = 2.0
) -> None:
    """Keep readiness["kafka"] true to what the broker answers, even while no record flows
    (an idle stage would otherwise go on saying ready through an outage)."""
    while True:
        try:
            await asyncio.wait_for(check(), timeout=5)
        except (KafkaError, TimeoutError, OSError):
            readiness.set("kafka", False)
        else:
            readiness.set("kafka", True)
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def background(coro: Coroutine[object, object, None]) -> AsyncIterator[None]:
    """Run `coro` as a task for the duration of the block, then cancel it."""
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def transactional_id(settings: ConsumerSettings) -> str:
    return settings.transactional_id or (
        f"{settings.consumer_group}-{socket.gethostname()}-{settings.http_port}"
    )


async def run_kafka_stage(
    settings: ConsumerSettings,
    stop: asyncio.Event,
    *,
    input_topic: str,
    output_topic: str | None,
    step: Step,
    readiness: Readiness,
    batch_max_wait_ms: int | None = None,
    max_records: int | None = None,
) -> None:
    """Consume `input_topic`, run `step` on each batch, produce and commit, until `stop`."""
    async with (
        serve_http(health_app(readiness), settings.http_host, settings.http_port),
        kafka_producer(
            settings,
            transactional_id=transactional_id(settings),
            transaction_timeout_ms=settings.transaction_timeout_ms,
        ) as producers,
    ):
        consumer = make_consumer(settings, input_topic)
        await start_kafka_client(consumer, f"consumer of {input_topic}")
        readiness.set("kafka", True)
        log.info("consuming", topic=input_topic, group=settings.consumer_group)
        runner = StageRunner(
            RunnerConfig(
                stage=settings.service_name,
                output_topic=output_topic,
                dlq_topic=settings.topic_dlq,
                group_id=settings.consumer_group,
                max_records=max_records or settings.consumer_max_records,
                poll_timeout_ms=settings.consumer_poll_timeout_ms,
                batch_max_wait_ms=settings.batch_max_wait_ms
                if batch_max_wait_ms is None
                else batch_max_wait_ms,
                backoff_max_s=settings.retry_max_wait_s,
                poison_attempts=settings.poison_attempts,
            ),
            consumer,
            producers.producer,
            step,
            readiness,
            renew_producer=producers.renew,
        )
        try:
            async with background(watch_kafka(consumer.topics, readiness)):
                await runner.run(stop)
        finally:
            readiness.set("kafka", False)
            await close_quietly(consumer.stop(), "consumer", settings.shutdown_timeout_s)
    log.info("stopped")
