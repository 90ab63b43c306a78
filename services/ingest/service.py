"""The ingest service wired up: MQTT subscriber and HTTP APIs, all handing over to Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import structlog

from libs.common.audit import AuditWriter, audit_writer
from libs.common.auth import TokenVerifier
from libs.common.health import Readiness, health_app, serve_http
from libs.common.service import background, kafka_producer, watch_kafka
from libs.common.tls import client_context, server_context
from services.ingest.handover import Handover
from services.ingest.http_api import SCOPE, ingest_app, readings_app
from services.ingest.mqtt import MqttIngest, mqtt_login
from services.ingest.settings import IngestSettings

log = structlog.get_logger(__name__)


def token_verifier(settings: IngestSettings) -> TokenVerifier:
    jwks_url = settings.jwks_url()
    verify: ssl.SSLContext | bool = (
        client_context(settings.tls_ca_file) if jwks_url.startswith("https://") else True
    )
    return TokenVerifier(
        issuer=settings.idp_issuer,
        audience=settings.idp_audience,
        required_scope=SCOPE,
        jwks_url=jwks_url,
        verify=verify,
        refetch_interval_s=settings.idp_jwks_refetch_s,
    )


@contextlib.asynccontextmanager
async def http_servers(
    settings: IngestSettings,
    handover: Handover,
    readiness: Readiness,
    tls: ssl.SSLContext | None,
    verifier: TokenVerifier | None,
    audit: AuditWriter | None = None,
) -> AsyncIterator[None]:
    """The plain port (probes, metrics; the development readings API while it is on) and the
    HTTPS readings API (when `tls` and `verifier` are given)."""
    # The concurrency limit is the app's own (ConcurrencyLimit), for its Retry-After.
    plain = health_app(readiness, ingest_app(handover, settings))
    if settings.http_plain_readings:
        log.warning(
            f"plaintext, unauthenticated readings API on :{settings.http_port} (development only)",
            http_port=settings.http_port,
            hint="HTTP_PLAIN_READINGS=false serves readings on HTTPS only",
        )
    if tls is None or verifier is None:
        log.warning("HTTPS readings API off (HTTPS_ENABLED=false)")
    async with contextlib.AsyncExitStack() as servers:
        await servers.enter_async_context(serve_http(plain, settings.http_host, settings.http_port))
        if tls is not None and verifier is not None:
            secure = readings_app(handover, settings, verifier, audit)
            await servers.enter_async_context(
                serve_http(secure, settings.http_host, settings.https_port, tls)
            )
        log.info(
            "accepting readings",
            http_port=settings.http_port,
            https_port=settings.https_port if tls is not None else None,
            plain_readings=settings.http_plain_readings,
        )
        yield


@contextlib.asynccontextmanager
async def refusals_audit(settings: IngestSettings) -> AsyncIterator[AuditWriter | None]:
    """The audit log's writer of ingest's refusals, or None with AUDIT_ENABLED off.

    Not one of /readyz's needs: readings go on being taken while the audit database is away
    (the writer retries; its queue is bounded, what it drops is counted and logged), because
    refusing every device over the audit log's outage would make it the pipeline's weakest
    link, and the refusals themselves still happen.
    """
    if not settings.audit_enabled:
        log.warning(
            "audit log off (AUDIT_ENABLED=false): refusals are not recorded",
            hint="AUDIT_ENABLED=true needs migration 0004's audit_log table",
        )
        yield None
        return
    async with audit_writer(
        settings.audit_dsn(),
        schema=settings.database_schema,
        recorded_by="ingest",
        max_pending=settings.audit_max_pending,
    ) as writer:
        yield writer


async def run(settings: IngestSettings, stop: asyncio.Event) -> None:
    needs = ("kafka", "mqtt") if settings.mqtt_enabled else ("kafka",)
    readiness = Readiness(settings.service_name, *needs)
    # Read before connecting to anything: a missing certificate stops the service at once.
    tls = server_context(*settings.tls_files()) if settings.https_enabled else None
    verifier = token_verifier(settings) if settings.https_enabled else None
    # Likewise the broker's CA and ingest's MQTT password.
    login = mqtt_login(settings) if settings.mqtt_enabled else None
    async with refusals_audit(settings) as audit, kafka_producer(settings) as producers:
        readiness.set("kafka", True)
        handover = Handover(producers, settings, stop, readiness)
        async with http_servers(settings, handover, readiness, tls, verifier, audit):

            async def metadata() -> object:
                return await producers.producer.client.fetch_all_metadata()

            async with background(watch_kafka(metadata, readiness)):
                if settings.mqtt_enabled:
                    mqtt = MqttIngest(
                        settings, handover, readiness, login=login, audit_writer=audit
                    )
                    await mqtt.run(stop)
                else:
                    await stop.wait()
        # Leaving the servers stops taking HTTP requests (in-flight ones finish); leaving the
        # producer flushes what is queued.
    log.info("stopped")
