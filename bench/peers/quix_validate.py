"""PEER, not the product: the validate stage written with Quix Streams, as a user who picks that
library instead would write it.

Same work as services/validate: the same rules and checks (`validate` of
services/validate/validator.py), the same duplicate memory, the lineage headers carried over,
rejects to the DLQ. What differs is the loop: Quix Streams' Application (confluent-kafka
underneath) polls, runs the function per message, produces and commits, instead of our
batched runner. `python -m bench.peers.quix_validate`; settings from the same environment
variables as the service (KAFKA_BOOTSTRAP_SERVERS, TOPIC_RAW, TOPIC_VALIDATED, TOPIC_DLQ,
CONSUMER_GROUP).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from quixstreams import Application

from libs.common.errors import RecordError
from libs.common.models import (
    HEADER_RECEIVED_AT,
    HEADER_SOURCE,
    HEADER_TRACE_ID,
    Stage,
    dead_letter,
)
from services.validate.dedup import Deduplicator, reading_key
from services.validate.rules import load_rules
from services.validate.service import MIN_TIME
from services.validate.settings import ValidateSettings
from services.validate.validator import Context, Lineage, validate


def build(settings: ValidateSettings) -> Application:
    app = Application(
        broker_address=settings.kafka_bootstrap_servers,
        consumer_group=settings.consumer_group,
        auto_offset_reset="earliest",
        # Quix's default is 5 s; 1 s keeps its committed progress (what the harness watches)
        # close to what it has processed, without a commit per message.
        commit_interval=1.0,
        processing_guarantee="at-least-once",
        loglevel="WARNING",
    )
    raw = app.topic(settings.topic_raw, key_deserializer="bytes", value_deserializer="bytes")
    validated = app.topic(
        settings.topic_validated, key_serializer="bytes", value_serializer="bytes"
    )
    dlq = app.topic(settings.topic_dlq, key_serializer="bytes", value_serializer="bytes")
    rules = load_rules(settings.rules_file)
    dedup = Deduplicator(settings.dedup_capacity)

    def check(value: bytes, key: bytes | None, _ts: int, headers: Any) -> dict[str, bytes]:
        found = dict(headers or ())
        now = datetime.now(UTC)
        ctx = Context(
            rules=rules, now=now, max_future_skew_s=settings.max_future_skew_s, min_time=MIN_TIME
        )
        lineage = Lineage(
            _text(found.get(HEADER_SOURCE)) or "batch",
            _text(found.get(HEADER_RECEIVED_AT)) or now.isoformat(),
            _text(found.get(HEADER_TRACE_ID)) or "",
        )
        try:
            reading = validate(value, ctx, lineage)
        except RecordError as error:
            letter = dead_letter(
                error,
                stage=Stage.VALIDATE,
                payload=value,
                trace_id=lineage.trace_id,
                device_id=_text(key),
            )
            return {"dlq": orjson.dumps(letter)}
        seen = reading_key(reading["device_id"], reading["time"])
        if seen in dedup:
            return {}
        dedup.remember([seen])
        return {"out": orjson.dumps(reading)}

    sdf = app.dataframe(raw).apply(check, metadata=True)
    sdf.filter(lambda r: "out" in r).apply(lambda r: r["out"]).to_topic(validated)
    sdf.filter(lambda r: "dlq" in r).apply(lambda r: r["dlq"]).to_topic(dlq)
    return app


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value else None


def main() -> None:
    settings = ValidateSettings(service_name="quix-validate")
    # Application.run() stops cleanly on SIGTERM and commits what it processed.
    build(settings).run()


if __name__ == "__main__":
    main()
