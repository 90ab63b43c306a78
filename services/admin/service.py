"""The admin API wired up: the database pool, the audit writer, the producer of replays, the
token verifier, and two servers (HTTPS for the API, plain HTTP for the probes)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import asyncpg
import structlog

from libs.common.audit import AuditWriter
from libs.common.auth import TokenVerifier
from libs.common.db import close_pool, create_pool
from libs.common.health import Readiness, health_app, serve_http
from libs.common.mqtt_accounts import MqttAccountsSettings
from libs.common.retry import call_with_retry
from libs.common.service import background, kafka_producer, watch_kafka
from libs.common.stack import local_stack_dir
from libs.common.tls import ca_file, client_context, server_context
from services.admin.audit_trail import RECORDED_BY
from services.admin.http_api import admin_app
from services.admin.operations import Backends
from services.admin.registry import init_connection
from services.admin.settings import AdminSettings

log = structlog.get_logger(__name__)
STARTUP_WAIT_S = 600.0


def token_verifier(settings: AdminSettings) -> TokenVerifier:
    jwks_url = settings.jwks_url()
    verify: ssl.SSLContext | bool = (
        client_context(settings.tls_ca_file) if jwks_url.startswith("https://") else True
    )
    return TokenVerifier(
        issuer=settings.idp_issuer,
        audience=settings.idp_audience,
        required_scope=None,
        jwks_url=jwks_url,
        verify=verify,
        refetch_interval_s=settings.idp_jwks_refetch_s,
    )


def mqtt_accounts(settings: AdminSettings) -> MqttAccountsSettings:
    """The dynamic security admin's settings, from the service's own."""
    return MqttAccountsSettings(
        stack_dir=local_stack_dir(),
        mqtt_tls_host=settings.mqtt_tls_host,
        mqtt_tls_port=settings.mqtt_tls_port,
        mqtt_admin_username=settings.mqtt_admin_username,
        mqtt_admin_password=settings.mqtt_admin_password,
        tls_ca_file=ca_file(settings.tls_ca_file),
        device_passwords_dir=settings.device_passwords_dir,
    )


@contextlib.asynccontextmanager
async def database(settings: AdminSettings, readiness: Readiness) -> AsyncIterator[asyncpg.Pool]:
    pool = await call_with_retry(
        lambda: create_pool(settings, init=init_connection), STARTUP_WAIT_S, name="database"
    )
    readiness.set("database", True)
    try:
        yield pool
    finally:
        readiness.set("database", False)
        await close_pool(pool, settings.shutdown_timeout_s)


async def run(settings: AdminSettings, stop: asyncio.Event) -> None:
    readiness = Readiness(settings.service_name, "database", "kafka")
    # Read before connecting to anything: a missing certificate or password stops it at once.
    tls = server_context(*settings.tls_files()) if settings.https_enabled else None
    verifier = token_verifier(settings)
    mqtt = mqtt_accounts(settings)
    if settings.https_enabled:
        mqtt.admin_password()
    async with (
        serve_http(health_app(readiness), settings.http_host, settings.http_port),
        database(settings, readiness) as pool,
        kafka_producer(settings) as producers,
    ):
        readiness.set("kafka", True)
        writer = AuditWriter(pool, recorded_by=RECORDED_BY)
        writer_stop = asyncio.Event()
        writing = asyncio.create_task(writer.run(writer_stop))
        backends = Backends(pool, mqtt, producers, settings)
        try:
            await _serve(settings, backends, verifier, writer, tls, readiness, stop)
        finally:
            # After the API stopped taking calls: the last ones' rows are written too.
            writer_stop.set()
            await writing
    log.info("stopped")


async def _serve(
    settings: AdminSettings,
    backends: Backends,
    verifier: TokenVerifier,
    writer: AuditWriter,
    tls: ssl.SSLContext | None,
    readiness: Readiness,
    stop: asyncio.Event,
) -> None:
    async def metadata() -> object:
        return await backends.producer.producer.client.fetch_all_metadata()

    async with contextlib.AsyncExitStack() as servers:
        if tls is None:
            log.warning("admin API off (HTTPS_ENABLED=false): probes only")
        else:
            app = admin_app(backends, verifier, writer)
            await servers.enter_async_context(
                serve_http(app, settings.http_host, settings.https_port, tls)
            )
        log.info("serving", https_port=settings.https_port if tls else None)
        async with background(watch_kafka(metadata, readiness)):
            await stop.wait()
