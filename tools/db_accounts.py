"""The database accounts of least privilege (migration 0003) and the DSN of each: a login user
of the local stack, its password from the stack's secrets folder, TLS verified against the CA.

Role NAME logs in as user NAME, a member of the group role pipeline_NAME; `stack.sh up`
creates the users and writes their passwords once to <stack>/secrets/postgres-NAME.password.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

from libs.common.errors import ConfigurationError
from libs.common.settings import PipelineSettings
from libs.common.stack import local_secrets_dir, read_secret
from libs.common.tls import ca_file

# What each role may do, for --help and the docs; the grants themselves are in 0003_roles.sql.
ROLES: dict[str, str] = {
    "migrator": "owns the tables: DDL and migrations",
    "store": "INSERT, SELECT on sensor_readings",
    "enrich": "SELECT on devices",
    "reader": "SELECT on the tables but the audit log (Grafana, analysts)",
    "admin_api": "SELECT, INSERT, UPDATE on devices; INSERT, SELECT on audit_log",
    "audit_writer": "INSERT on audit_log (ingest, the audit collector)",
}


def password_file(role: str, secrets_dir: Path | None = None) -> Path:
    return (secrets_dir or local_secrets_dir()) / f"postgres-{role}.password"


def read_password(role: str, secrets_dir: Path | None = None) -> str:
    path = password_file(role, secrets_dir)
    return read_secret(path, f"the password of database role {role!r}").get_secret_value()


def dsn_for(
    role: str, settings: PipelineSettings | None = None, secrets_dir: Path | None = None
) -> str:
    """`postgresql://ROLE:PASSWORD@HOST:PORT/DB?sslmode=verify-full&sslrootcert=CA` for a role
    of ROLES; host, port and database are DATABASE_URL's, the CA is TLS_CA_FILE's."""
    if role not in ROLES:
        raise ConfigurationError(f"unknown database role {role!r}: one of {', '.join(ROLES)}")
    settings = settings or PipelineSettings()
    url = urlsplit(settings.database_url.get_secret_value())
    host = url.hostname or "127.0.0.1"
    netloc_host = f"[{host}]" if ":" in host else host
    database = url.path.lstrip("/") or "sensors"
    query = urlencode(
        {"sslmode": "verify-full", "sslrootcert": str(ca_file(settings.tls_ca_file))},
        safe="/",
    )
    user = quote(role, safe="")
    password = quote(read_password(role, secrets_dir), safe="")
    return f"postgresql://{user}:{password}@{netloc_host}:{url.port or 5432}/{database}?{query}"
