"""The shared life of a Kafka stage: wait for what it needs, serve health, run, drain, close."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from libs.common.errors import BrokerUnavailable
from libs.common.health import Readiness, health_app, serve_http
from libs.common.kafka import make_consumer, make_producer
from libs.common.retry import call_with_retry
from libs.common.runner import RunnerConfig, StageRunner, Step
from libs.common.settings import ConsumerSettings, PipelineSettings

log = structlog.get_logger(__name__)

# At start-up a stage waits this long for Kafka before it gives up and exits non-zero.
STARTUP_WAIT_S = 600.0


async def start_kafka_client(client: AIOKafkaProducer | AIOKafkaConsumer, what: str) -> None:
    async def _start() -> None:
        try:
            await client.start()
        except KafkaError as error:
            raise BrokerUnavailable(f"{what}: {error!r}") from error

    await call_with_retry(_start, STARTUP_WAIT_S)


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
) -> AsyncIterator[AIOKafkaProducer]:
    producer = make_producer(settings, **overrides)
    await start_kafka_client(producer, f"producer to {settings.kafka_bootstrap_servers}")
    try:
        yield producer
    finally:
        # stop() flushes what is still queued before it returns.
        await close_quietly(producer.stop(), "producer", settings.shutdown_timeout_s)


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
    batch_max_wait_ms: int = 0,
    max_records: int | None = None,
) -> None:
    """Consume `input_topic`, run `step` on each batch, produce and commit, until `stop`."""
    async with (
        serve_http(health_app(readiness), settings.http_host, settings.http_port),
        kafka_producer(
            settings,
            transactional_id=transactional_id(settings),
            transaction_timeout_ms=settings.transaction_timeout_ms,
        ) as producer,
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
                batch_max_wait_ms=batch_max_wait_ms,
                backoff_max_s=settings.retry_max_wait_s,
                poison_attempts=settings.poison_attempts,
            ),
            consumer,
            producer,
            step,
            readiness,
        )
        try:
            await runner.run(stop)
        finally:
            readiness.set("kafka", False)
            await close_quietly(consumer.stop(), "consumer", settings.shutdown_timeout_s)
    log.info("stopped")
