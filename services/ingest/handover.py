"""Handing records to Kafka: readings to the raw topic, rejects to the DLQ, acknowledged both."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from libs.common import metrics
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
from libs.common.settings import PipelineSettings
from services.ingest.intake import Rejected


class Handover:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        settings: PipelineSettings,
        readiness: Readiness | None = None,
    ) -> None:
        self.producer = producer
        self.raw_topic = settings.topic_raw
        self.dlq_topic = settings.topic_dlq
        self.readiness = readiness

    async def send(
        self, accepted: Sequence[Outgoing], rejected: Sequence[Rejected], source: Source
    ) -> None:
        """Return only once Kafka (acks=all) has every record; raises BrokerUnavailable."""
        try:
            await self._send(accepted, rejected, source)
        except BrokerUnavailable:
            if self.readiness is not None:
                self.readiness.set("kafka", False)
            raise
        if self.readiness is not None:
            self.readiness.set("kafka", True)

    async def _send(
        self, accepted: Sequence[Outgoing], rejected: Sequence[Rejected], source: Source
    ) -> None:
        """Each record gets the lineage headers (source, receive time, a trace id of its own)
        that follow it to the table.
        """
        stage = Stage.INGEST.value
        received_at = datetime.now(UTC).isoformat().encode()
        source_header = (HEADER_SOURCE, source.value.encode())
        if accepted:
            for record in accepted:
                record.headers = [
                    source_header,
                    (HEADER_RECEIVED_AT, received_at),
                    (HEADER_TRACE_ID, uuid.uuid4().hex.encode()),
                ]
            await produce_all(self.producer, self.raw_topic, accepted)
            metrics.MESSAGES_OUT.labels(stage).inc(len(accepted))
        if rejected:
            letters = [
                Outgoing(
                    encode_json(
                        dead_letter(
                            r.payload,
                            stage=Stage.INGEST,
                            error_type=r.error.error_type,
                            reasons=r.error.reasons,
                            trace_id=uuid.uuid4().hex,
                        )
                    ),
                    headers=[source_header, (HEADER_RECEIVED_AT, received_at)],
                )
                for r in rejected
            ]
            await produce_all(self.producer, self.dlq_topic, letters)
            for r in rejected:
                metrics.DLQ_RECORDS.labels(stage, r.error.error_type).inc()
