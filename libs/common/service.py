"""The shared life of a Kafka stage: wait for what it needs, serve health, run, drain, close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

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


@contextlib.asynccontextmanager
async def kafka_producer(settings: PipelineSettings) -> AsyncIterator[AIOKafkaProducer]:
    producer = make_producer(settings)
    await start_kafka_client(producer, f"producer to {settings.kafka_bootstrap_servers}")
    try:
        yield producer
    finally:
        # stop() flushes what is still queued before it returns.
        await producer.stop()


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
    """Consume `input_topic`, run `step` on each batch, produce, commit, until `stop`."""
    async with serve_http(health_app(readiness), settings.http_host, settings.http_port):
        async with kafka_producer(settings) as producer:
            consumer = make_consumer(settings, input_topic)
            await start_kafka_client(consumer, f"consumer of {input_topic}")
            readiness.set("kafka", True)
            log.info("consuming", topic=input_topic, group=settings.consumer_group)
            runner = StageRunner(
                RunnerConfig(
                    stage=settings.service_name,
                    output_topic=output_topic,
                    dlq_topic=settings.topic_dlq,
                    max_records=max_records or settings.consumer_max_records,
                    poll_timeout_ms=settings.consumer_poll_timeout_ms,
                    batch_max_wait_ms=batch_max_wait_ms,
                    backoff_max_s=settings.retry_max_wait_s,
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
                await consumer.stop()
    log.info("stopped")
