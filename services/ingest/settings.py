"""Settings of the ingest service (MQTT subscriber and HTTP API)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from libs.common.auth import jwks_url_of
from libs.common.db_accounts import dsn_for
from libs.common.settings import PipelineSettings
from libs.common.stack import local_secrets_dir, read_secret
from libs.common.tls import local_server_files
from services.ingest.intake import MAX_RECORD_BYTES

# Settings renamed to the runner's names after 0.1.0: one still set in a deployment stops the
# service with the new name, instead of being ignored while the default applies.
RENAMED = {
    "MQTT_BATCH_MAX": "MQTT_MAX_RECORDS",
    "MQTT_HANDOVERS_IN_FLIGHT": "MQTT_MAX_CONCURRENCY",
}


def local_mqtt_password_file() -> Path:
    """ingest's broker password that `make up` generates (deploy/local/common.sh)."""
    return local_secrets_dir() / "mqtt-ingest.password"


AUDIT_ROLE = "audit_writer"


class IngestSettings(PipelineSettings):
    service_name: str = "ingest"
    http_port: int = Field(default=8080, ge=1, le=65535)
    # POST /v1/readings over HTTPS with an OAuth 2.0 bearer token (scope readings:write), on
    # HTTP_HOST; the plain HTTP_PORT keeps /healthz, /readyz and /metrics for probes.
    https_port: int = Field(default=8443, ge=1, le=65535)
    # Off only where no certificate is mounted yet (docker-compose.yml, deploy/k8s, until they
    # get theirs): then readings come only over MQTT and HTTP_PLAIN_READINGS.
    https_enabled: bool = True
    # None: the local stack's <repo>/.stack/certs/ingest.crt and .key (deploy/local/certs.sh),
    # resolved at run time so that no machine path is a committed default.
    https_cert_file: Path | None = None
    https_key_file: Path | None = None
    # The unauthenticated, plaintext POST /v1/readings on HTTP_PORT, for development (a warning
    # at start-up when on). True for now because the simulator, the benchmark and the tests
    # still post there; the default flips to False when they move to HTTPS_PORT.
    http_plain_readings: bool = True
    # The identity provider whose tokens the readings API accepts: the tokens' issuer (iss),
    # the audience (aud) they must name, and where its signing keys are (None: Keycloak's
    # <issuer>/protocol/openid-connect/certs). An https JWKS is checked against TLS_CA_FILE.
    idp_issuer: str = "http://127.0.0.1:8180/realms/sensor-pipeline"
    idp_audience: str = "ingest-api"
    idp_jwks_url: str | None = None
    # A token signed with a key the cache does not know refetches the keys (a rotation), at
    # most this often: forged key ids cannot make ingest fetch on every request.
    idp_jwks_refetch_s: float = Field(default=10.0, gt=0)
    # mqtts:// (TLS, checked against TLS_CA_FILE, logged in with MQTT_USERNAME): Mosquitto's
    # listener with accounts. A plain mqtt:// URL works for development (a warning at
    # start-up): no TLS, and no password sent unless MQTT_PASSWORD is set.
    mqtt_url: str = "mqtts://127.0.0.1:8883"
    # ingest's account on the broker (it alone may subscribe to MQTT_TOPIC).
    mqtt_username: str = "ingest"
    # None: the local stack's generated <repo>/.stack/secrets/mqtt-ingest.password (make up),
    # resolved at run time so that no machine path is a committed default.
    mqtt_password: SecretStr | None = None
    # A shared subscription: replicas of ingest split the messages between them.
    mqtt_topic: str = "$share/ingest/sensors/+/readings"
    # Fixed per replica so the broker keeps its session (and queued QoS 1 messages) across
    # restarts; replicas must each set their own (the pod name, in Kubernetes).
    mqtt_client_id: str = "ingest-1"
    mqtt_enabled: bool = True
    # Unacknowledged QoS 1 messages the broker may have in flight to us (MQTT v5 Receive
    # Maximum): the bound on what MQTT holds in our memory, and our backpressure.
    mqtt_receive_maximum: int = Field(default=2000, ge=1, le=65535)
    # Messages handed to Kafka in one go (the runner's CONSUMER_MAX_RECORDS), and batches
    # handed over at the same time (as HTTP_MAX_CONCURRENCY bounds requests).
    mqtt_max_records: int = Field(default=500, ge=1)
    mqtt_max_concurrency: int = Field(default=4, ge=1)
    # Reconnect backoff cap. Short on purpose: Mosquitto 2.0 does not keep shared
    # subscriptions across its own restart, so until we subscribe again, readings published
    # to it reach no one (docs/reliability.md).
    mqtt_reconnect_max_s: float = Field(default=1.0, gt=0)
    # Readings requests in flight; past it, 503 with Retry-After (bounds the memory a burst of
    # requests takes).
    http_max_concurrency: int = Field(default=256, ge=1)
    # A whole HTTP body past this is refused with 413 before it is read whole.
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # One record (an MQTT message, an HTTP reading) past this goes to the DLQ with its reason,
    # whichever transport brought it. Capped so that a record, or its dead letter (base64 for
    # binary: 4/3 of it), stays below Kafka's default message.max.bytes (1 MiB): one larger
    # would be refused by the broker on every try, and its hand-over never done.
    max_record_bytes: int = Field(default=MAX_RECORD_BYTES, ge=256, le=512 * 1024)
    # Every refusal (HTTP 401/403, a device-bound token's reading of another device, an MQTT
    # reading of another device than its topic's) is appended to the audit log
    # (docs/security.md, "Audit log"); accepted readings are not: they are the pipeline's data.
    # Off only for a database without migration 0004's table (a warning at start-up).
    audit_enabled: bool = True
    # The audit log's writer (INSERT only). None: the local stack's audit_writer login, its
    # generated password and sslmode=verify-full against TLS_CA_FILE, on DATABASE_URL's host,
    # port and database (resolved at run time: no committed password or machine path).
    audit_database_url: SecretStr | None = None
    # Refusals waiting for the database; past it (an outage under a flood of refusals) a new
    # one is dropped, counted in pipeline_audit_dropped_total and logged.
    audit_max_pending: int = Field(default=10_000, ge=1)

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("mqtt_url must look like mqtts://host:port (or mqtt://host:port)")
        return value

    @property
    def mqtt_tls(self) -> bool:
        return urlsplit(self.mqtt_url).scheme == "mqtts"

    def mqtt_credentials(self) -> tuple[str, str] | None:
        """The broker login: MQTT_USERNAME and MQTT_PASSWORD, else over TLS the local stack's
        generated password; None over plaintext without MQTT_PASSWORD (never a password sent
        in clear by default). ConfigurationError when the stack's file is missing."""
        if self.mqtt_password is not None:
            return self.mqtt_username, self.mqtt_password.get_secret_value()
        if not self.mqtt_tls:
            return None
        password = read_secret(
            local_mqtt_password_file(),
            "ingest's MQTT password",
            "set MQTT_PASSWORD or MQTT_PASSWORD_FILE, or run `make up` to create the local "
            "stack's accounts",
        )
        return self.mqtt_username, password.get_secret_value()

    def tls_files(self) -> tuple[Path, Path]:
        """The HTTPS certificate and key: the ones set, else the local stack's."""
        cert, key = local_server_files("ingest")
        return self.https_cert_file or cert, self.https_key_file or key

    def audit_dsn(self) -> str:
        """AUDIT_DATABASE_URL, else the local stack's audit_writer DSN (verify-full);
        ConfigurationError when its password file is missing."""
        if self.audit_database_url is not None:
            return self.audit_database_url.get_secret_value()
        return dsn_for(AUDIT_ROLE, self)

    def jwks_url(self) -> str:
        return self.idp_jwks_url or jwks_url_of(self.idp_issuer)

    @model_validator(mode="after")
    def _separate_ports(self) -> IngestSettings:
        if self.https_enabled and self.https_port == self.http_port:
            raise ValueError(f"https_port and http_port are both {self.http_port}: two servers")
        return self

    @model_validator(mode="after")
    def _no_renamed_settings(self) -> IngestSettings:
        old = [f"{name} is now {new}" for name, new in RENAMED.items() if name in os.environ]
        if old:
            raise ValueError("renamed settings: " + "; ".join(old))
        return self
