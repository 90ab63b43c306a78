"""The SCRAM users of Kafka's SASL_SSL listener and the client settings of each.

`stack.sh up` (deploy/local/stack.sh, kafka_accounts) creates the users over the PLAINTEXT
listener and writes each one's password once to ``<stack>/secrets/kafka-<user>.password``
(0600); their ACLs are the table KAFKA_ACLS there. This module reads those files back and
turns them into client settings: librdkafka's ``key=value`` names (what
``python -m tools.credentials kafka`` prints) and the same as aiokafka's keyword arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.errors import ConfigurationError
from libs.common.stack import local_stack_dir, read_secret
from libs.common.tls import client_context

MECHANISM = "SCRAM-SHA-512"
PROTOCOL = "SASL_SSL"
# What each user may do; the ACLs themselves are KAFKA_ACLS in deploy/local/stack.sh.
USERS: dict[str, str] = {
    "admin": "super user: set-up and operators",
    "ingest": "writes sensor-data and the DLQ",
    "validate": "reads sensor-data (group validate), writes sensor-data-validated and the DLQ",
    "enrich": "reads sensor-data-validated (group enrich), writes sensor-data-enriched and the DLQ",
    "store": "reads sensor-data-enriched (group store), writes the DLQ",
    "operator": "reads and describes every pipeline topic and its groups",
    "admin-api": "reads the DLQ (group admin-api), writes the topics a replay sends to",
}


class KafkaAccountsSettings(BaseSettings):
    """Where the SASL_SSL listener and the stack's files are; the defaults find `make up`'s."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    stack_dir: Path = Field(
        default_factory=local_stack_dir,
        description="The local stack's state folder (as stack.sh's).",
    )
    kafka_sasl_host: str = "127.0.0.1"
    kafka_sasl_port: int = Field(9094, ge=1, le=65535, description="Kafka's SASL_SSL listener.")
    # None: the stack's secrets/kafka-<user>.password.
    kafka_password: SecretStr | None = None
    # As PipelineSettings.tls_ca_file, but the default follows STACK_DIR (a stack elsewhere has
    # its own CA).
    tls_ca_file: Path | None = Field(None, description="Default: the stack's certs/ca.crt.")

    @property
    def ca_file(self) -> Path:
        return self.tls_ca_file or self.stack_dir / "certs" / "ca.crt"

    @property
    def bootstrap_servers(self) -> str:
        host = f"[{self.kafka_sasl_host}]" if ":" in self.kafka_sasl_host else self.kafka_sasl_host
        return f"{host}:{self.kafka_sasl_port}"

    def password_file(self, user: str) -> Path:
        return self.stack_dir / "secrets" / f"kafka-{user}.password"


@dataclass(frozen=True, slots=True)
class KafkaCredentials:
    bootstrap_servers: str
    username: str
    password: SecretStr
    ca_file: Path

    def librdkafka(self) -> dict[str, str]:
        """librdkafka's names, in the order `tools.credentials kafka` prints them."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": PROTOCOL,
            "sasl.mechanisms": MECHANISM,
            "sasl.username": self.username,
            "sasl.password": self.password.get_secret_value(),
            "ssl.ca.location": str(self.ca_file),
        }

    def properties(self) -> str:
        return "".join(f"{key}={value}\n" for key, value in self.librdkafka().items())


def check_user(user: str) -> None:
    if user not in USERS:
        raise ConfigurationError(f"unknown Kafka user {user!r}: one of {', '.join(USERS)}")


def read_password(settings: KafkaAccountsSettings, user: str) -> SecretStr:
    if settings.kafka_password is not None:
        return settings.kafka_password
    return read_secret(settings.password_file(user), f"the password of Kafka user {user!r}")


def credentials_for(user: str, settings: KafkaAccountsSettings | None = None) -> KafkaCredentials:
    """The SASL_SSL settings of one of USERS, its password from the stack's secrets folder."""
    check_user(user)
    settings = settings or KafkaAccountsSettings()
    return KafkaCredentials(
        settings.bootstrap_servers, user, read_password(settings, user), settings.ca_file
    )


def parse_properties(text: str) -> dict[str, str]:
    """`key=value` lines (librdkafka's, as `tools.credentials kafka` prints them) to a dict."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"line {number} is not key=value: {line!r}")
        values[key.strip()] = value.strip()
    return values


def aiokafka_options(properties: Mapping[str, str]) -> dict[str, Any]:
    """aiokafka's keyword arguments for librdkafka-style SASL_SSL settings: the same server,
    protocol, mechanism and user, and a TLS context trusting only ssl.ca.location (TLS 1.2+,
    the host name checked)."""
    wanted = (
        "bootstrap.servers",
        "security.protocol",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
    )
    missing = [key for key in wanted if not properties.get(key)]
    if missing:
        raise ConfigurationError(f"Kafka client settings without {', '.join(missing)}")
    return {
        "bootstrap_servers": properties["bootstrap.servers"],
        "security_protocol": properties["security.protocol"],
        "sasl_mechanism": properties["sasl.mechanisms"],
        "sasl_plain_username": properties["sasl.username"],
        "sasl_plain_password": properties["sasl.password"],
        "ssl_context": client_context(Path(properties["ssl.ca.location"])),
    }
