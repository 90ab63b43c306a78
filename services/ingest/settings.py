"""Settings of the ingest service (MQTT subscriber and HTTP API)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from libs.common.settings import PipelineSettings


class IngestSettings(PipelineSettings):
    service_name: str = "ingest"
    http_port: int = Field(default=8080, ge=1, le=65535)
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    # A shared subscription: replicas of ingest split the messages between them.
    mqtt_topic: str = "$share/ingest/sensors/+/readings"
    # Fixed per replica so the broker keeps its session (and queued QoS 1 messages) across
    # restarts; replicas must each set their own (the pod name, in Kubernetes).
    mqtt_client_id: str = "ingest-1"
    mqtt_enabled: bool = True
    # Unacknowledged QoS 1 messages the broker may have in flight to us (MQTT v5 Receive
    # Maximum): the bound on what MQTT holds in our memory, and our backpressure.
    mqtt_receive_maximum: int = Field(default=2000, ge=1, le=65535)
    # Messages handed to Kafka in one go, and batches handed over at the same time.
    mqtt_batch_max: int = Field(default=500, ge=1)
    mqtt_handovers_in_flight: int = Field(default=4, ge=1)
    # Reconnect backoff cap. Short on purpose: Mosquitto 2.0 does not keep shared
    # subscriptions across its own restart, so until we subscribe again, readings published
    # to it reach no one (docs/reliability.md).
    mqtt_reconnect_max_s: float = Field(default=1.0, gt=0)
    # Concurrent HTTP connections; past it, 503 (bounds the memory a burst of requests takes).
    http_max_concurrency: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_message_bytes: int = Field(default=256 * 1024, ge=256)

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
            raise ValueError("mqtt_url must look like mqtt://host:port")
        return value
