"""The ingest service wired up: MQTT subscriber and HTTP API, both handing over to Kafka."""

from __future__ import annotations

import asyncio

import structlog

from libs.common.health import Readiness, health_app, serve_http
from libs.common.service import background, kafka_producer, watch_kafka
from services.ingest.handover import Handover
from services.ingest.http_api import ingest_app
from services.ingest.mqtt import MqttIngest
from services.ingest.settings import IngestSettings

log = structlog.get_logger(__name__)


async def run(settings: IngestSettings, stop: asyncio.Event) -> None:
    needs = ("kafka", "mqtt") if settings.mqtt_enabled else ("kafka",)
    readiness = Readiness(settings.service_name, *needs)
    async with kafka_producer(settings) as producers:
        readiness.set("kafka", True)
        handover = Handover(producers, settings, stop, readiness)
        # The concurrency limit is the app's own (ConcurrencyLimit), for its Retry-After.
        app = health_app(readiness, ingest_app(handover, settings))
        async with serve_http(app, settings.http_host, settings.http_port):
            log.info("accepting readings", http_port=settings.http_port)

            async def metadata() -> object:
                return await producers.producer.client.fetch_all_metadata()

            async with background(watch_kafka(metadata, readiness)):
                if settings.mqtt_enabled:
                    await MqttIngest(settings, handover, readiness).run(stop)
                else:
                    await stop.wait()
        # Leaving serve_http stops taking HTTP requests (in-flight ones finish); leaving the
        # producer flushes what is queued.
    log.info("stopped")
