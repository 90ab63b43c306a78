"""PostgreSQL's TLS and the roles of least privilege (migration 0003), against the local stack's
real server: the login users and their passwords are the ones `make up` made."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from libs.common.db import connect, create_pool, migrate, migration_files
from libs.common.errors import ConfigurationError
from libs.common.settings import PipelineSettings
from libs.common.tls import local_ca_file
from services.enrich.registry import DeviceRegistry
from services.enrich.settings import EnrichSettings
from services.store.settings import StoreSettings
from services.store.silence import count_silent_devices
from services.store.writer import prepare_connection, to_row, write_rows
from tests.conftest import DATABASE_URL, PG, Names, connect_to_schema
from tools.db_accounts import dsn_for
from tools.setup import SetupSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PERMISSION_DENIED = "42501"
TLS_VERSIONS = {"TLSv1.2", "TLSv1.3"}
OWNER_VERIFY_FULL = (
    f"postgresql://{PG.username}:{PG.password}@127.0.0.1:{PG.port or 5432}{PG.path}"
    "?sslmode=verify-full"
)

Connect = Callable[[str], Awaitable[asyncpg.Connection]]


async def tls_of(conn: asyncpg.Connection) -> tuple[bool, str | None]:
    row = await conn.fetchrow("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert row is not None
    return row["ssl"], row["version"]


@pytest.fixture
async def as_role(schema: str) -> AsyncIterator[Connect]:
    """Connections as a role's login user (its DSN from tools.db_accounts) in the test's schema."""
    opened: list[asyncpg.Connection] = []

    async def open_as(role: str) -> asyncpg.Connection:
        conn = await connect_to_schema(schema, dsn_for(role))
        opened.append(conn)
        return conn

    yield open_as
    for conn in opened:
        await conn.close()


async def refused(conn: asyncpg.Connection, sql: str, *args: object) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as caught:
        await conn.execute(sql, *args)
    assert caught.value.sqlstate == PERMISSION_DENIED


def reading(device: str, minute: int) -> tuple[object, ...]:
    return (datetime(2026, 11, 27, 5, minute, tzinfo=UTC), device, "mqtt", datetime.now(UTC))


INSERT_READING = (
    "INSERT INTO sensor_readings (time, device_id, source, received_at) VALUES ($1, $2, $3, $4)"
)


async def test_a_connection_verified_against_the_local_ca_runs_over_tls_1_2_or_newer(
    names: Names, schema: str
) -> None:
    # sslrootcert in the DSN: asyncpg's own verify-full.
    conn = await asyncpg.connect(f"{OWNER_VERIFY_FULL}&sslrootcert={local_ca_file()}")
    try:
        ssl_on, version = await tls_of(conn)
    finally:
        await conn.close()
    assert ssl_on and version in TLS_VERSIONS
    # No sslrootcert: libs.common.db verifies against TLS_CA_FILE (the local CA by default).
    conn = await connect(names.settings(database_url=OWNER_VERIFY_FULL))
    try:
        ssl_on, version = await tls_of(conn)
    finally:
        await conn.close()
    assert ssl_on and version in TLS_VERSIONS


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """A CA that did not sign the server's certificate."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-subj", "/CN=another CA", "-days", "1"]
        + ["-keyout", str(tmp_path / "ca.key"), "-out", str(tmp_path / "ca.crt")],
        check=True,
        capture_output=True,
    )
    return tmp_path / "ca.crt"


async def test_a_client_trusting_another_ca_is_refused_before_it_logs_in(
    names: Names, other_ca: Path
) -> None:
    with pytest.raises(ConfigurationError, match="certificate does not verify"):
        await connect(names.settings(database_url=OWNER_VERIFY_FULL, tls_ca_file=other_ca))
    with pytest.raises(ConfigurationError, match="certificate does not verify"):
        await connect(names.settings(database_url=f"{OWNER_VERIFY_FULL}&sslrootcert={other_ca}"))


async def test_the_roles_of_least_privilege_cannot_connect_over_plain_tcp(schema: str) -> None:
    plain = dsn_for("reader").split("?")[0] + "?sslmode=disable"
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(plain)


async def test_a_wrong_password_is_refused_over_tls(schema: str) -> None:
    dsn = dsn_for("reader")
    user_and_password, _, rest = dsn.removeprefix("postgresql://").partition("@")
    wrong = f"postgresql://reader:not-{user_and_password.partition(':')[2]}@{rest}"
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong)


async def test_the_store_role_writes_readings_with_the_stores_writer_and_nothing_else(
    names: Names, schema: str, as_role: Connect
) -> None:
    settings = names.settings(database_url=dsn_for("store"))
    pool = await create_pool(settings, size=1, init=prepare_connection)
    rows = [
        to_row({"device_id": "dev-1", "time": t, "source": "mqtt", "received_at": t})
        for t in ("2026-11-27T05:00:00+00:00", "2026-11-27T05:01:00+00:00")
    ]
    try:
        assert await write_rows(pool, rows) == 2
        # Again: the merge path (a temporary table, INSERT ... ON CONFLICT DO NOTHING).
        assert await write_rows(pool, rows) == 0
        assert await count_silent_devices(pool, 60.0) == 0
    finally:
        await pool.close()
    store = await as_role("store")
    assert await store.fetchval("SELECT count(*) FROM sensor_readings") == 2
    ssl_on, _ = await tls_of(store)
    assert ssl_on
    await refused(store, "CREATE TABLE stolen (x int)")
    await refused(store, "UPDATE sensor_readings SET temperature = 99")
    await refused(store, "DELETE FROM sensor_readings")
    await refused(store, "TRUNCATE sensor_readings")
    await refused(store, "ALTER TABLE sensor_readings ADD COLUMN x int")
    await refused(store, "SELECT owner FROM devices")
    await refused(store, "INSERT INTO devices (device_id) VALUES ('dev-x')")


@pytest.mark.parametrize(
    ("settings_class", "role"),
    [(StoreSettings, "store"), (EnrichSettings, "enrich"), (SetupSettings, "migrator")]
    + [(PipelineSettings, "reader")],
)
async def test_with_no_database_settings_each_client_is_its_own_role_over_verified_tls(
    schema: str,
    settings_class: type[PipelineSettings],
    role: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("DATABASE_URL", "DATABASE_URL_FILE", "DATABASE_ROLE"):
        monkeypatch.delenv(variable, raising=False)
    # The service's own pool, from its settings class alone (python -m services.store).
    pool = await create_pool(settings_class(database_schema=schema), size=1)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_user") == role
            ssl_on, version = await tls_of(conn)
            assert ssl_on and version in TLS_VERSIONS
            if role == "store":
                await refused(conn, "UPDATE sensor_readings SET temperature = 99")
                await refused(conn, "ALTER TABLE sensor_readings ADD COLUMN x int")
    finally:
        await pool.close()


async def test_the_reader_role_reads_every_table_and_writes_none(
    schema: str, db: asyncpg.Connection, as_role: Connect
) -> None:
    await db.execute(INSERT_READING, *reading("dev-1", 0))
    await db.execute("INSERT INTO devices (device_id, site) VALUES ('dev-1', 'roof')")
    reader = await as_role("reader")
    assert await reader.fetchval("SELECT count(*) FROM sensor_readings") == 1
    assert await reader.fetchval("SELECT site FROM devices") == "roof"
    assert await reader.fetchval("SELECT count(*) FROM schema_migrations") == len(migration_files())
    await refused(reader, "SELECT count(*) FROM audit_log")
    await refused(reader, INSERT_READING, *reading("dev-2", 0))
    await refused(reader, "UPDATE devices SET site = 'cellar'")
    await refused(reader, "DELETE FROM sensor_readings")
    await refused(reader, "CREATE TABLE mine (x int)")


async def test_the_enrich_role_reads_the_registry_and_cannot_touch_readings(
    names: Names, schema: str, db: asyncpg.Connection, as_role: Connect
) -> None:
    await db.execute("INSERT INTO devices (device_id, model) VALUES ('dev-1', 'TH-1')")
    pool = await create_pool(names.settings(database_url=dsn_for("enrich")), size=1)
    try:
        registry = DeviceRegistry()
        await registry.load(pool)
        assert registry.get("dev-1") is not None
    finally:
        await pool.close()
    enrich = await as_role("enrich")
    await refused(enrich, INSERT_READING, *reading("dev-1", 0))
    await refused(enrich, "SELECT count(*) FROM sensor_readings")
    await refused(enrich, "UPDATE devices SET model = 'TH-2'")


async def test_the_admin_api_role_manages_devices_but_deletes_nothing(
    schema: str, as_role: Connect
) -> None:
    admin = await as_role("admin_api")
    await admin.execute("INSERT INTO devices (device_id, site) VALUES ('dev-1', 'roof')")
    await admin.execute("UPDATE devices SET site = 'cellar' WHERE device_id = 'dev-1'")
    assert await admin.fetchval("SELECT site FROM devices") == "cellar"
    await refused(admin, "DELETE FROM devices")
    await refused(admin, INSERT_READING, *reading("dev-1", 0))
    await refused(admin, "SELECT count(*) FROM sensor_readings")


AUDIT_ROW = (
    "INSERT INTO audit_log (actor, actor_kind, action, target, outcome, reason, recorded_by) "
    "VALUES ('dev-1', 'device', 'mqtt.publish', 'sensors/dev-2/readings', 'refused', "
    "'not authorised', 'mosquitto')"
)


@pytest.mark.parametrize("role", ["store", "enrich", "reader", "admin_api", "audit_writer"])
async def test_no_service_role_may_change_or_remove_an_audit_row(
    role: str, db: asyncpg.Connection, as_role: Connect
) -> None:
    await db.execute(AUDIT_ROW)
    conn = await as_role(role)
    for statement in (
        "UPDATE audit_log SET outcome = 'allowed'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        await refused(conn, statement)
    # Not even the table's owner: the triggers refuse it in the database itself.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE audit_log SET outcome = 'allowed'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM audit_log")
    assert await db.fetchval("SELECT outcome FROM audit_log") == "refused"


async def test_only_the_writers_append_to_the_audit_log_and_only_the_admin_api_reads_it(
    db: asyncpg.Connection, as_role: Connect
) -> None:
    writer = await as_role("audit_writer")
    await writer.execute(AUDIT_ROW)
    await refused(writer, "SELECT count(*) FROM audit_log")
    admin_api = await as_role("admin_api")
    await admin_api.execute(AUDIT_ROW)
    assert await admin_api.fetchval("SELECT count(*) FROM audit_log") == 2
    for role in ("store", "enrich", "reader"):
        conn = await as_role(role)
        await refused(conn, AUDIT_ROW)
        await refused(conn, "SELECT count(*) FROM audit_log")


async def test_the_migrator_role_migrates_a_new_schema_from_nothing(names: Names) -> None:
    fresh = names.schema("bymigrator")
    owner = await asyncpg.connect(DATABASE_URL)
    try:
        conn = await connect(names.settings(database_url=dsn_for("migrator")))
        try:
            applied = await migrate(conn, fresh)
            await conn.execute(f'CREATE TABLE "{fresh}".scratch (x int)')
            await conn.execute(f'DROP TABLE "{fresh}".scratch')
        finally:
            await conn.close()
        assert applied == [path.stem for path in migration_files()]
        owners = await owner.fetch(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = $1", fresh
        )
        assert {r["tableowner"] for r in owners} == {"pipeline_migrator"}
        assert {r["tablename"] for r in owners} >= {"devices", "sensor_readings"}
    finally:
        await owner.execute(f'DROP SCHEMA IF EXISTS "{fresh}" CASCADE')
        await owner.close()


async def test_the_credentials_command_prints_a_reader_dsn_that_connects(schema: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.credentials", "database", "--role", "reader"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    dsn = done.stdout.strip()
    assert dsn.startswith("postgresql://reader:") and "sslmode=verify-full" in dsn
    conn = await connect_to_schema(schema, dsn)
    try:
        assert await conn.fetchval("SELECT current_user") == "reader"
        assert await conn.fetchval("SELECT count(*) FROM sensor_readings") == 0
        ssl_on, version = await tls_of(conn)
        assert ssl_on and version in TLS_VERSIONS
    finally:
        await conn.close()
