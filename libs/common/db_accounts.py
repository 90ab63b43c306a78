"""The database accounts of least privilege (migration 0003) and the DSN of each: a login user
of the local stack, its password from the stack's secrets folder, TLS verified against the CA.

Role NAME logs in as user NAME, a member of the group role pipeline_NAME; `stack.sh up`
creates the users and writes their passwords once to <stack>/secrets/postgres-NAME.password.
Each client's settings name its role (DATABASE_ROLE); without DATABASE_URL, its DSN is that
role's here, resolved at run time, so no password is ever a committed default.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode, urlsplit

from libs.common.errors import ConfigurationError
from libs.common.stack import local_ca_file, local_secrets_dir, read_secret

if TYPE_CHECKING:
    from libs.common.settings import PipelineSettings

# What each role may do, for --help and the docs; the grants themselves are in 0003_roles.sql
# and 0004_audit.sql.
ROLES: dict[str, str] = {
    "migrator": "owns the tables: DDL and migrations",
    "store": "INSERT, SELECT on sensor_readings",
    "enrich": "SELECT on devices",
    "reader": "SELECT on the tables but the audit log (Grafana, analysts)",
    "admin_api": "SELECT, INSERT, UPDATE on devices; INSERT, SELECT on audit_log",
    "audit_writer": "INSERT on audit_log (ingest, the audit collector)",
}

# Where the local stack's PostgreSQL listens (deploy/local/common.sh's PG_PORT and DB_NAME).
LOCAL_HOST = "127.0.0.1"
LOCAL_PORT = 5432
LOCAL_DATABASE = "sensors"


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigurationError(f"unknown database role {role!r}: one of {', '.join(ROLES)}")
    return role


def password_file(role: str, secrets_dir: Path | None = None) -> Path:
    return (secrets_dir or local_secrets_dir()) / f"postgres-{role}.password"


def read_password(role: str, secrets_dir: Path | None = None) -> str:
    path = password_file(role, secrets_dir)
    return read_secret(path, f"the password of database role {role!r}").get_secret_value()


def role_dsn(
    role: str,
    *,
    host: str = LOCAL_HOST,
    port: int = LOCAL_PORT,
    database: str = LOCAL_DATABASE,
    ca_file: Path | None = None,
    secrets_dir: Path | None = None,
) -> str:
    """`postgresql://ROLE:PASSWORD@HOST:PORT/DB?sslmode=verify-full&sslrootcert=CA`: the
    password from `secrets_dir` (the local stack's by default), the CA the local stack's unless
    given. A stack in another STACK_DIR passes its own secrets folder and CA."""
    check_role(role)
    netloc_host = f"[{host}]" if ":" in host else host
    query = urlencode(
        {"sslmode": "verify-full", "sslrootcert": str(ca_file or local_ca_file())}, safe="/"
    )
    user = quote(role, safe="")
    password = quote(read_password(role, secrets_dir), safe="")
    return f"postgresql://{user}:{password}@{netloc_host}:{port}/{database}?{query}"


def dsn_for(
    role: str, settings: PipelineSettings | None = None, secrets_dir: Path | None = None
) -> str:
    """role_dsn for a role of ROLES: host, port and database are DATABASE_URL's when it is set
    (else the local stack's), the CA is TLS_CA_FILE's."""
    if settings is None:
        from libs.common.settings import PipelineSettings

        settings = PipelineSettings()
    host, port, database = LOCAL_HOST, LOCAL_PORT, LOCAL_DATABASE
    if settings.database_url is not None:
        url = urlsplit(settings.database_url.get_secret_value())
        host = url.hostname or LOCAL_HOST
        port = url.port or LOCAL_PORT
        database = url.path.lstrip("/") or LOCAL_DATABASE
    return role_dsn(
        role,
        host=host,
        port=port,
        database=database,
        ca_file=settings.tls_ca_file,
        secrets_dir=secrets_dir,
    )
