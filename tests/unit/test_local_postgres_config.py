"""What stack.sh renders for the local PostgreSQL (stack.sh sourced: it only defines): TLS on,
pg_hba's order, and nothing changed (no reload) by a second `up`. The running server's answer to
these files is tests/integration/test_db_security.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACK_SH = ROOT / "deploy" / "local" / "stack.sh"


def configure(state: Path, times: int = 1, **env: str) -> list[str]:
    """Runs pg_configure on a data folder under `state` (with `env` for stack.sh); the
    PG_CHANGED of each run."""
    script = '. "$1"; for ((i = 0; i < $2; i++)); do pg_configure "$3"; echo "$PG_CHANGED"; done'
    done = subprocess.run(
        ["bash", "-c", script, "configure", str(STACK_SH), str(times), str(state / "pg")],
        env=os.environ | {"STACK_DIR": str(state), "PG_PORT": "35432"} | env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def fake_certs(state: Path) -> None:
    (state / "certs").mkdir(parents=True)
    (state / "pg" / "data").mkdir(parents=True)
    for ext in ("crt", "key"):
        (state / "certs" / f"postgres.{ext}").write_text(f"not really a {ext}\n")


def rules(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    return [line.split() for line in lines if line.strip() and not line.startswith("#")]


def test_tls_is_on_with_the_copied_certificate_and_tls_1_2_at_least(tmp_path: Path) -> None:
    fake_certs(tmp_path)
    configure(tmp_path)
    data = tmp_path / "pg" / "data"
    conf = (data / "stack.conf").read_text()
    for line in (
        "ssl = on",
        "ssl_cert_file = 'stack-server.crt'",
        "ssl_key_file = 'stack-server.key'",
        "ssl_min_protocol_version = 'TLSv1.2'",
        "port = 35432",
    ):
        assert line in conf.splitlines()
    for ext in ("crt", "key"):
        copy = data / f"stack-server.{ext}"
        assert copy.read_text() == f"not really a {ext}\n"
        assert copy.stat().st_mode & 0o777 == 0o600


def test_tcp_is_tls_only_for_every_role_by_default(tmp_path: Path) -> None:
    fake_certs(tmp_path)
    configure(tmp_path, PG_PLAINTEXT="")
    hba = rules(tmp_path / "pg" / "data" / "pg_hba.conf")
    # No `host` (it matches both) and no `hostnossl`: plain TCP matches no line, refused.
    assert {rule[0] for rule in hba} == {"local", "hostssl"}
    assert {rule[-1] for rule in hba if rule[0] != "local"} == {"scram-sha-256"}
    assert {rule[3] for rule in hba if rule[0] == "hostssl"} == {"127.0.0.1/32", "::1/128"}


def test_pg_plaintext_on_lets_only_the_owner_role_in_over_plain_tcp(tmp_path: Path) -> None:
    fake_certs(tmp_path)
    configure(tmp_path, PG_PLAINTEXT="on")
    hba = rules(tmp_path / "pg" / "data" / "pg_hba.conf")
    kinds = [rule[0] for rule in hba]
    assert set(kinds) == {"local", "hostssl", "hostnossl"}
    # The first match wins: every TLS line comes before the plain ones.
    assert max(i for i, k in enumerate(kinds) if k == "hostssl") < kinds.index("hostnossl")
    assert {rule[2] for rule in hba if rule[0] == "hostnossl"} == {"sensors"}
    assert {rule[-1] for rule in hba if rule[0] != "local"} == {"scram-sha-256"}


def test_a_second_run_changes_nothing_and_a_new_certificate_is_a_change(tmp_path: Path) -> None:
    fake_certs(tmp_path)
    assert configure(tmp_path, times=2) == ["1", "0"]
    (tmp_path / "certs" / "postgres.crt").write_text("a renewed one\n")
    assert configure(tmp_path) == ["1"]
    assert (tmp_path / "pg" / "data" / "stack-server.crt").read_text() == "a renewed one\n"


def test_every_server_of_the_stack_has_its_start_wait_and_port_functions() -> None:
    script = (
        '. "$1"; for s in "${SERVERS[@]}"; do '
        'for f in start wait conf_port; do declare -F "${s}_$f" >/dev/null || echo "${s}_$f"; '
        "done; done"
    )
    done = subprocess.run(
        ["bash", "-c", script, "functions", str(STACK_SH)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []
