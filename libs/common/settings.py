"""Settings shared by every service, read from the environment once in each `__main__`.

Each service subclasses `PipelineSettings` with its own port and consumer group; the defaults
point at the local stack of docs/architecture.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from libs.common.db_accounts import ROLES, dsn_for
from libs.common.errors import ConfigurationError

# The local stack's development owner of the database (deploy/local/common.sh's DB_USER, with
# its well-known password; docs/security.md): the DSN of docs/architecture.md's start-up table.
# No client's default: each one connects as its own role (database_role below).
DEFAULT_DATABASE_URL = "postgresql://sensors:sensors@127.0.0.1:5432/sensors"


def is_secret(field: FieldInfo) -> bool:
    return field.annotation in (SecretStr, SecretStr | None)


class SecretFiles(PydanticBaseSettingsSource):
    """`<NAME>_FILE` for every secret setting: its value is the file's content (one trailing
    newline dropped), as a Kubernetes Secret or a Docker secret mounts it. Setting both NAME and
    NAME_FILE, or naming a file that cannot be read, stops the service with the variable's name."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = f"{field_name.upper()}_FILE"
        environ = {key.upper(): value for key, value in os.environ.items()}
        if not is_secret(field) or variable not in environ:
            return None, field_name, False
        if field_name.upper() in environ:
            raise ConfigurationError(f"{field_name.upper()} and {variable} are both set: keep one")
        try:
            text = Path(environ[variable]).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigurationError(f"{variable}: {error.strerror}: {environ[variable]}") from None
        return text.removesuffix("\n").removesuffix("\r"), field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                found[key] = value
        return found


class PipelineSettings(BaseSettings):
    """What every stage needs: Kafka, topics, the database, logging, and its HTTP port."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    service_name: str = "pipeline"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    topic_raw: str = "sensor-data"
    topic_validated: str = "sensor-data-validated"
    topic_enriched: str = "sensor-data-enriched"
    topic_dlq: str = "sensor-data-errors"
    topic_partitions: int = Field(default=6, ge=1, le=1024)
    topic_replication_factor: int = Field(default=1, ge=1, le=16)
    # Set (or DATABASE_URL_FILE), it is the DSN, whatever database_role says; one without
    # sslmode=verify-full is warned about at start-up (libs.common.db). None: the DSN of
    # database_role's login user of the local stack, TLS verified against TLS_CA_FILE
    # (libs.common.db_accounts.dsn_for, resolved when connecting: no committed password).
    database_url: SecretStr | None = None
    # The role of least privilege this client connects as (migration 0003): each service class
    # names its own; reader (SELECT only) for the rest.
    database_role: str = "reader"
    # The schema holding the pipeline's tables (tests use one schema each).
    database_schema: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # The CA the clients trust for the servers' certificates. None: the local stack's CA,
    # <repo>/.stack/certs/ca.crt (libs.common.tls.local_ca_file, resolved at run time so that
    # no machine path is a committed default). A stack in another STACK_DIR has its own CA:
    # point this at $STACK_DIR/certs/ca.crt.
    tls_ca_file: Path | None = None
    log_level: str = "INFO"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=1, le=65535)

    # Producer tuning: acks=all with idempotence is fixed; these trade latency for throughput.
    producer_linger_ms: int = Field(default=5, ge=0, le=1000)
    producer_max_batch_bytes: int = Field(default=512 * 1024, ge=16 * 1024)
    # zstd: aiokafka compresses lz4 at level 9, which costs more CPU than the rest of enrich's
    # producing; zstd at its default level was 1.23x faster end to end of a stage, and smaller.
    producer_compression: str = "zstd"
    # aiokafka waits this long before retrying a refused produce request. Kafka 4 answers a
    # transactional write that races the end of the previous transaction with a retriable
    # NOT_ENOUGH_REPLICAS (KIP-890, for clients older than its protocol): at aiokafka's default
    # 100 ms, those waits were a large part of a loaded stage's time. 20 ms is what aiokafka
    # itself waits on the same race when adding partitions (BACKOFF_OVERRIDE).
    producer_retry_backoff_ms: int = Field(default=20, ge=1, le=10_000)

    # Consumer batch: getmany() bound per poll; also bounds memory (backpressure).
    consumer_max_records: int = Field(default=2000, ge=1, le=100_000)
    consumer_poll_timeout_ms: int = Field(default=200, ge=1, le=10_000)

    # The longest single wait between two attempts after a transient failure (broker,
    # database): a failed batch's rewind, a producer renewal, ingest's hand-over to Kafka. The
    # waits double up to it (with jitter) and the retries go on until they succeed or the
    # service is stopped; nothing of a batch is committed before.
    retry_max_wait_s: float = Field(default=10.0, gt=0)
    shutdown_timeout_s: float = Field(default=20.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # A secret's NAME_FILE beside the environment (both set is refused, so the order of the
        # two does not matter).
        return (
            init_settings,
            env_settings,
            SecretFiles(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    @field_validator("producer_compression")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        allowed = {"none", "gzip", "snappy", "lz4", "zstd"}
        if value not in allowed:
            raise ValueError(f"producer_compression must be one of {sorted(allowed)}")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in {"postgresql", "postgres"}:
            raise ValueError("database_url must be a postgresql:// URL")
        return value

    @field_validator("database_role")
    @classmethod
    def _known_role(cls, value: str) -> str:
        if value not in ROLES:
            raise ValueError(f"database_role must be one of {', '.join(ROLES)}")
        return value

    def database_dsn(self) -> SecretStr:
        """DATABASE_URL if set, else database_role's verify-full DSN of the local stack (its
        password read now from the stack's secrets; ConfigurationError if it is missing)."""
        if self.database_url is not None:
            return self.database_url
        return SecretStr(dsn_for(self.database_role, self))

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"kafka_bootstrap_servers: {server!r} is not host:port")
        return value


class ConsumerSettings(PipelineSettings):
    """A stage that consumes a topic with its own consumer group."""

    consumer_group: str = "pipeline"
    # Each replica's Kafka transactions need an id of their own that stays the same when the
    # replica restarts, so a restart aborts what the killed process left open at once. None:
    # "<group>-<hostname>-<http_port>", unique per replica on a host and per pod.
    transactional_id: str | None = None
    # A transaction left open by a process that died blocks downstream readers of those
    # partitions until it times out (when no replica with the same id restarts sooner).
    transaction_timeout_ms: int = Field(default=15_000, ge=1000, le=900_000)
    # A batch failing this often for a reason that is not an outage is searched for poison.
    poison_attempts: int = Field(default=3, ge=1, le=100)
    # Once a batch has its first records, keep polling this long for more (up to
    # consumer_max_records): each batch is one Kafka transaction, whose fixed cost (a few
    # round trips, commit markers in every partition written) dominates small batches.
    batch_max_wait_ms: int = Field(default=20, ge=0, le=10_000)
