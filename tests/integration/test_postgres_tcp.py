"""Who may reach PostgreSQL over TCP, against a real cluster started for this module the way
`make up` starts it (deploy/local/stack.sh sourced: certs_ensure, postgres_start and
postgres_wait, which renders pg_hba.conf and creates the owner, the login users and their
grants), with a private STACK_DIR: its own CA, certificate and passwords, on its own port (a
free one; PRIVATE_PG_PORT picks it). The shared stack's server is never reconfigured.

By default plain TCP is refused for every role, the owner's included; PG_PLAINTEXT=on (then
reloaded, as a second `up` does) lets only the owner in without TLS, with a warning.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from libs.common.db import connect, migrate, migration_files
from libs.common.db_accounts import role_dsn
from libs.common.errors import ConfigurationError
from libs.common.settings import PipelineSettings
from libs.common.stack import local_ca_file
from tools.processes import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STACK_SH = ROOT / "deploy" / "local" / "stack.sh"


@dataclass(frozen=True)
class Cluster:
    stack_dir: Path
    port: int
    env: dict[str, str]

    @property
    def ca(self) -> Path:
        return self.stack_dir / "certs" / "ca.crt"

    def owner(self, query: str) -> str:
        return f"postgresql://sensors:sensors@127.0.0.1:{self.port}/sensors{query}"

    def role(self, role: str) -> str:
        return role_dsn(
            role, port=self.port, ca_file=self.ca, secrets_dir=self.stack_dir / "secrets"
        )

    def settings(self, dsn: str, ca: Path | None = None) -> PipelineSettings:
        return PipelineSettings(database_url=dsn, tls_ca_file=ca or self.ca)


def stack_sh(env: dict[str, str], script: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """stack.sh sourced (it only defines), then `script`, under the private stack's settings."""
    return subprocess.run(
        ["bash", "-c", f'. "$1"; set -Eeuo pipefail; {script}', "stack", str(STACK_SH)],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed: run `make up` first", pytrace=False)
    stack_dir = Path(tempfile.mkdtemp(prefix="test-postgres-tcp-"))
    port = int(os.environ.get("PRIVATE_PG_PORT") or free_port())
    env = {"STACK_DIR": str(stack_dir), "PG_PORT": str(port), "PG_PLAINTEXT": "off"}
    try:
        started = stack_sh(
            env,
            'trap \'on_error $? "$BASH_COMMAND"\' ERR; mkdir -p "$STACK" "$LOGS" "$RUN"; '
            "certs_ensure; server_start postgres; postgres_wait",
            timeout=300,
        )
        if started.returncode != 0:
            pytest.fail(f"postgres did not start:\n{started.stdout}\n{started.stderr}")
        assert "plain TCP refused for every role" in started.stdout
        yield Cluster(stack_dir, port, env)
    finally:
        stack_sh(env, 'server_stop postgres || true; rm -rf "$(pg_base)"', timeout=120)
        shutil.rmtree(stack_dir, ignore_errors=True)


async def test_plain_tcp_is_refused_for_every_role_the_owner_included(cluster: Cluster) -> None:
    plain = [cluster.owner("?sslmode=disable")] + [
        cluster.role(role).split("?")[0] + "?sslmode=disable" for role in ("store", "reader")
    ]
    for dsn in plain:
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
            await asyncpg.connect(dsn, timeout=10)


async def test_the_owner_dsn_of_the_contract_still_connects_over_tls(cluster: Cluster) -> None:
    # postgresql://sensors:sensors@127.0.0.1:5432/sensors, no sslmode: asyncpg's `prefer`
    # negotiates TLS (unverified: hence libs.common.db's warning), and the hostssl line admits it.
    conn = await asyncpg.connect(cluster.owner(""), timeout=10)
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()


async def test_a_client_trusting_another_ca_is_refused(cluster: Cluster) -> None:
    # The shared stack's CA did not sign this cluster's certificate.
    other = local_ca_file()
    with pytest.raises(ConfigurationError, match="certificate does not verify"):
        await connect(cluster.settings(cluster.owner("?sslmode=verify-full"), ca=other))
    store = cluster.role("store").replace(str(cluster.ca), str(other))
    with pytest.raises(ConfigurationError, match="certificate does not verify"):
        await connect(cluster.settings(store))


async def test_the_migrator_migrates_public_and_the_store_writes_there(cluster: Cluster) -> None:
    # What tools.setup does on a fresh `make up`: public too belongs to the migrator's DDL
    # (stack.sh grants CREATE on it), the store gets its grants from the migrations.
    conn = await connect(cluster.settings(cluster.role("migrator")))
    try:
        assert await migrate(conn, "public") == [path.stem for path in migration_files()]
    finally:
        await conn.close()
    store = await connect(cluster.settings(cluster.role("store")))
    try:
        assert await store.fetchval("SELECT current_user") == "store"
        await store.execute(
            "INSERT INTO sensor_readings (time, device_id, source, received_at) "
            "VALUES (now(), 'dev-1', 'mqtt', now())"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await store.execute("UPDATE sensor_readings SET temperature = 1")
    finally:
        await store.close()


async def test_pg_plaintext_on_lets_only_the_owner_in_without_tls(cluster: Cluster) -> None:
    env = cluster.env | {"PG_PLAINTEXT": "on"}
    try:
        reloaded = stack_sh(env, "postgres_wait", timeout=120)
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        assert "WARNING: PG_PLAINTEXT=on" in reloaded.stdout
        conn = await asyncpg.connect(cluster.owner("?sslmode=disable"), timeout=10)
        try:
            assert not await conn.fetchval(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
        finally:
            await conn.close()
        reader = cluster.role("reader").split("?")[0] + "?sslmode=disable"
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
            await asyncpg.connect(reader, timeout=10)
    finally:
        restored = stack_sh(cluster.env, "postgres_wait", timeout=120)
        assert restored.returncode == 0, restored.stdout + restored.stderr
