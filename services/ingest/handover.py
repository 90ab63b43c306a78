"""Handing records to Kafka: readings to the raw topic, rejects to the DLQ, acknowledged both."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from aiokafka import AIOKafkaProducer

from libs.common import logs, metrics
from libs.common.errors import BrokerUnavailable
from libs.common.health import Readiness
from libs.common.kafka import Outgoing, encode_json, produce_all
from libs.common.models import (
    HEADER_RECEIVED_AT,
    HEADER_SOURCE,
    HEADER_TRACE_ID,
    Source,
    Stage,
    dead_letter,
)
from libs.common.service import RenewableProducer
from libs.common.settings import PipelineSettings
from services.ingest.intake import Rejected

log = structlog.get_logger(__name__)


class Handover:
    def __init__(
        self,
        producers: RenewableProducer,
        settings: PipelineSettings,
        stop: asyncio.Event,
        readiness: Readiness | None = None,
    ) -> None:
        self.producers = producers
        self.raw_topic = settings.topic_raw
        self.dlq_topic = settings.topic_dlq
        self.stop = stop
        self.readiness = readiness
        self._renewal: asyncio.Task[object] | None = None

    async def send(
        self, accepted: Sequence[Outgoing], rejected: Sequence[Rejected], source: Source
    ) -> None:
        """Return only once Kafka (acks=all) has every record; raises BrokerUnavailable."""
        generation = self.producers.generation
        try:
            await self._send(self.producers.producer, accepted, rejected, source)
        except BrokerUnavailable:
            if self.readiness is not None:
                self.readiness.set("kafka", False)
            # The producer may be broken for good (see RenewableProducer): replace it in the
            # background, so this request is answered now and the device sends again later.
            if self._renewal is None or self._renewal.done():
                self._renewal = asyncio.create_task(self.producers.renew(self.stop, generation))
            raise
        if self.readiness is not None:
            self.readiness.set("kafka", True)

    async def _send(
        self,
        producer: AIOKafkaProducer,
        accepted: Sequence[Outgoing],
        rejected: Sequence[Rejected],
        source: Source,
    ) -> None:
        """Each record gets the lineage headers (source, receive time, a trace id of its own)
        that follow it to the table.
        """
        stage = Stage.INGEST.value
        started = time.perf_counter()
        received_at = datetime.now(UTC).isoformat().encode()
        source_header = (HEADER_SOURCE, source.value.encode())
        if accepted:
            received_header = (HEADER_RECEIVED_AT, received_at)
            ids = trace_ids(len(accepted))
            for index, record in enumerate(accepted):
                record.headers = [source_header, received_header, (HEADER_TRACE_ID, ids[index])]
            await produce_all(producer, self.raw_topic, accepted)
            metrics.MESSAGES_OUT.labels(stage).inc(len(accepted))
        if rejected:
            dead = [
                dead_letter(
                    r.error,
                    stage=Stage.INGEST,
                    payload=r.payload,
                    trace_id=trace_id.decode(),
                    device_id=r.device_id,
                )
                for r, trace_id in zip(rejected, trace_ids(len(rejected)), strict=True)
            ]
            letters = [
                Outgoing(encode_json(d), headers=[source_header, (HEADER_RECEIVED_AT, received_at)])
                for d in dead
            ]
            await produce_all(producer, self.dlq_topic, letters)
            for d in dead:
                metrics.DLQ_RECORDS.labels(stage, d["error_type"]).inc()
                metrics.ERRORS.labels(stage, d["error_type"]).inc()
            logs.log_dead_letters(log, dead)
        metrics.PROCESSING_SECONDS.labels(stage).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(stage).observe(len(accepted) + len(rejected))


def trace_ids(count: int) -> list[bytes]:
    """`count` random 128-bit ids as 32 hex digits (a uuid4's randomness without its format):
    one read of the system's random source for a whole batch, 20x cheaper than uuid4 each."""
    digits = os.urandom(16 * count).hex().encode()
    return [digits[i : i + 32] for i in range(0, 32 * count, 32)]
