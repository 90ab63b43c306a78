"""Settings of the admin API."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from libs.common.auth import jwks_url_of
from libs.common.settings import ConsumerSettings
from libs.common.tls import local_server_files


class AdminSettings(ConsumerSettings):
    service_name: str = "admin-api"
    # Its login user admin_api (group role pipeline_admin_api: SELECT, INSERT, UPDATE on
    # devices; INSERT, SELECT on audit_log), unless DATABASE_URL says otherwise.
    database_role: str = "admin_api"
    # The plain port: /healthz, /readyz and /metrics only, for probes.
    http_port: int = Field(default=8084, ge=1, le=65535)
    # The admin API itself: HTTPS only, on HTTP_HOST.
    https_port: int = Field(default=8444, ge=1, le=65535)
    # Off only where no certificate is mounted yet (docker-compose.yml, deploy/k8s, until they
    # get theirs): then the service answers its probes and serves no API at all.
    https_enabled: bool = True
    # None: the local stack's <repo>/.stack/certs/admin.crt and .key (deploy/local/certs.sh).
    https_cert_file: Path | None = None
    https_key_file: Path | None = None
    # The DLQ's consumer group (assigned partitions, read from the start, nothing committed).
    consumer_group: str = "admin-api"
    # The identity provider whose tokens the API accepts (as ingest's IDP_* settings): tokens
    # must name audience IDP_AUDIENCE; roles come from their realm_access.roles.
    idp_issuer: str = "http://127.0.0.1:8180/realms/sensor-pipeline"
    idp_audience: str = "admin-api"
    idp_jwks_url: str | None = None
    idp_jwks_refetch_s: float = Field(default=10.0, gt=0)
    # Mosquitto's TLS listener and its dynamic security admin, for the devices' accounts
    # (libs.common.mqtt_accounts). None: the local stack's secrets/mqtt-admin.password.
    mqtt_tls_host: str = "127.0.0.1"
    mqtt_tls_port: int = Field(default=8883, ge=1, le=65535)
    mqtt_admin_username: str = "admin"
    mqtt_admin_password: SecretStr | None = None
    # Where each device's generated MQTT password is kept (0600), so that registering again
    # answers the same one. None: the local stack's secrets/devices.
    device_passwords_dir: Path | None = None
    # A DLQ browse or replay reads at most this many records of the topic (from its start).
    dlq_scan_max_records: int = Field(default=100_000, ge=1)
    # The most rows one list answers (devices, dead letters, audit events).
    max_page: int = Field(default=1000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _separate_ports(self) -> AdminSettings:
        if self.https_enabled and self.https_port == self.http_port:
            raise ValueError(f"https_port and http_port are both {self.http_port}: two servers")
        return self

    def tls_files(self) -> tuple[Path, Path]:
        """The HTTPS certificate and key: the ones set, else the local stack's."""
        cert, key = local_server_files("admin")
        return self.https_cert_file or cert, self.https_key_file or key

    def jwks_url(self) -> str:
        return self.idp_jwks_url or jwks_url_of(self.idp_issuer)
