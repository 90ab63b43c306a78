"""The local stack's certificates (deploy/local/certs.sh, run by `stack.sh up` before the servers
start): made with the real openssl in a temporary STACK_DIR, checked with openssl and with a real
TLS handshake through libs.common.tls. Starts no server of the stack."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import stat
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from libs.common import tls

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CERTS_SH = ROOT / "deploy" / "local" / "certs.sh"
STACK_SH = ROOT / "deploy" / "local" / "stack.sh"
OPENSSL = "/usr/bin/openssl"
SERVERS = {
    "kafka": {"DNS:kafka"},
    "mosquitto": {"DNS:mosquitto"},
    "postgres": {"DNS:timescaledb", "DNS:postgres"},
    "ingest": {"DNS:ingest"},
    "keycloak": {"DNS:keycloak"},
    "admin": {"DNS:admin"},
}
FILES = ["ca.crt", "ca.key"] + [f"{n}.{ext}" for n in SERVERS for ext in ("crt", "key")]


def run(*args: str | Path, stack: Path, script: Path = CERTS_SH) -> str:
    answer = subprocess.run(
        ["bash", str(script), *map(str, args)],
        env={**os.environ, "STACK_DIR": str(stack)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert answer.returncode == 0, answer.stdout + answer.stderr
    return answer.stdout


def openssl(*args: str | Path) -> str:
    answer = subprocess.run(
        [OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )
    assert answer.returncode == 0, answer.stderr
    return answer.stdout


def fingerprint(path: Path) -> str:
    return openssl("x509", "-in", path, "-noout", "-fingerprint", "-sha256").strip()


def snapshot(certs: Path) -> dict[str, tuple[str, int]]:
    """Each file's content hash and modification time."""
    return {
        name: (
            hashlib.sha256((certs / name).read_bytes()).hexdigest(),
            (certs / name).stat().st_mtime_ns,
        )
        for name in FILES
    }


def sans(path: Path) -> set[str]:
    text = openssl("x509", "-in", path, "-noout", "-ext", "subjectAltName")
    return {s.strip().replace("IP Address:", "IP:") for s in text.splitlines()[1].split(",")}


def make_ca(directory: Path) -> tuple[Path, Path]:
    """Another CA, not the stack's."""
    key, crt = directory / "other-ca.key", directory / "other-ca.crt"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    openssl(
        "req", "-x509", "-new", "-key", key, "-days", "30", "-subj", "/CN=another CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign",
        "-out", crt,
    )  # fmt: skip
    return crt, key


def sign(
    directory: Path,
    name: str,
    ca: tuple[Path, Path],
    days: int,
    key: Path | None = None,
    names: Iterable[str] = (),
) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1, localhost and NAMES signed by CA, valid DAYS days."""
    if key is None:
        key = directory / f"{name}.key"
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    csr, ext, crt = directory / f"{name}.csr", directory / f"{name}.ext", directory / f"{name}.crt"
    openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", csr)
    ext.write_text(
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(['IP:127.0.0.1', 'DNS:localhost', *sorted(names)])}\n"
    )
    openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", "7",
        "-days", str(days), "-extfile", ext, "-out", crt,
    )  # fmt: skip
    return crt, key


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Path]:
    run(stack=tmp_path)
    yield tmp_path


def test_every_server_certificate_verifies_against_the_ca_with_its_names(stack):
    certs = stack / "certs"
    for name, dns in SERVERS.items():
        out = openssl(
            "verify", "-CAfile", certs / "ca.crt", "-purpose", "sslserver", certs / f"{name}.crt"
        )
        assert out.strip().endswith(": OK")
        assert sans(certs / f"{name}.crt") == {"IP:127.0.0.1", "DNS:localhost"} | dns


def test_private_keys_are_0600_and_the_folder_0700(stack):
    certs = stack / "certs"
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    for key in certs.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert len(list(certs.glob("*.key"))) == len(SERVERS) + 1


def test_the_ca_is_a_ca_for_about_ten_years_and_the_servers_for_about_one(stack):
    certs = stack / "certs"
    ca = openssl("x509", "-in", certs / "ca.crt", "-noout", "-text")
    assert "CA:TRUE" in ca
    for path, days in ((certs / "ca.crt", 3650), (certs / "kafka.crt", 365)):
        openssl("x509", "-in", path, "-noout", "-checkend", str((days - 1) * 86400))
        late = subprocess.run(
            [OPENSSL, "x509", "-in", path, "-noout", "-checkend", str((days + 1) * 86400)],
            capture_output=True,
            check=False,
        )
        assert late.returncode == 1  # expires by then


def test_a_second_run_changes_nothing(stack):
    before = snapshot(stack / "certs")
    out = run(stack=stack)
    assert snapshot(stack / "certs") == before
    assert "renewed" not in out


def test_rotation_gives_new_server_certificates_from_the_same_ca(stack):
    certs = stack / "certs"
    before = {name: fingerprint(certs / f"{name}.crt") for name in SERVERS}
    ca_before = fingerprint(certs / "ca.crt")
    out = run("rotate-certs", stack=stack, script=STACK_SH)
    assert fingerprint(certs / "ca.crt") == ca_before
    for name in SERVERS:
        assert fingerprint(certs / f"{name}.crt") != before[name]
        openssl("verify", "-CAfile", certs / "ca.crt", certs / f"{name}.crt")
        assert stat.S_IMODE((certs / f"{name}.key").stat().st_mode) == 0o600
    assert f"restart these servers to load them: {' '.join(SERVERS)}" in out


def test_rotation_with_ca_renews_the_ca_and_signs_the_servers_with_it(stack):
    certs = stack / "certs"
    ca_before = fingerprint(certs / "ca.crt")
    old_ca = stack / "old-ca.crt"
    old_ca.write_bytes((certs / "ca.crt").read_bytes())
    run("rotate-certs", "--ca", stack=stack, script=STACK_SH)
    assert fingerprint(certs / "ca.crt") != ca_before
    for name in SERVERS:
        openssl("verify", "-CAfile", certs / "ca.crt", certs / f"{name}.crt")
        stale = subprocess.run(
            [OPENSSL, "verify", "-CAfile", old_ca, certs / f"{name}.crt"],
            capture_output=True,
            check=False,
        )
        assert stale.returncode != 0


def test_a_certificate_20_days_from_expiry_is_renewed_and_the_others_left(stack):
    certs = stack / "certs"
    ca = (certs / "ca.crt", certs / "ca.key")
    # All else as the step makes it (the same key and names): only the expiry is due.
    sign(certs, "kafka", ca, days=20, key=certs / "kafka.key", names=SERVERS["kafka"])
    short = fingerprint(certs / "kafka.crt")
    before = snapshot(certs)
    out = run(stack=stack)
    assert fingerprint(certs / "kafka.crt") != short
    openssl("x509", "-in", certs / "kafka.crt", "-noout", "-checkend", str(300 * 86400))
    after = snapshot(certs)
    assert {n for n in FILES if after[n] != before[n]} == {"kafka.crt", "kafka.key"}
    assert "restart these servers to load them: kafka" in out


def test_a_certificate_from_another_ca_or_a_missing_one_is_replaced(stack, tmp_path_factory):
    certs = stack / "certs"
    other_ca = make_ca(tmp_path_factory.mktemp("other"))
    sign(certs, "mosquitto", other_ca, days=300, names=SERVERS["mosquitto"])
    (certs / "ingest.crt").unlink()
    run(stack=stack)
    for name in ("mosquitto", "ingest"):
        openssl("verify", "-CAfile", certs / "ca.crt", certs / f"{name}.crt")


async def handshake(cert: Path, key: Path, context: ssl.SSLContext, hostname: str) -> bytes:
    """Connect through CONTEXT to a TLS server on a free port that presents CERT."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello over TLS\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        async with server:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=hostname),
                timeout=10,
            )
            line = await reader.readline()
            writer.close()
            return line
    finally:
        server.close()


async def test_the_client_context_accepts_a_server_certificate_from_our_ca(stack):
    certs = stack / "certs"
    context = tls.client_context(certs / "ca.crt")
    for hostname in ("localhost", "127.0.0.1"):
        line = await handshake(certs / "ingest.crt", certs / "ingest.key", context, hostname)
        assert line == b"hello over TLS\n"


async def test_the_client_context_refuses_a_certificate_from_another_ca(stack, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    crt, key = sign(other, "impostor", make_ca(other), days=300)
    context = tls.client_context(stack / "certs" / "ca.crt")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        await handshake(crt, key, context, "localhost")


async def test_the_client_context_refuses_a_name_the_certificate_does_not_carry(stack):
    certs = stack / "certs"
    context = tls.client_context(certs / "ca.crt")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await handshake(certs / "ingest.crt", certs / "ingest.key", context, "example.com")


def test_a_certificate_without_its_compose_name_is_replaced(stack):
    certs = stack / "certs"
    ca = (certs / "ca.crt", certs / "ca.key")
    sign(certs, "kafka", ca, days=300, key=certs / "kafka.key")  # localhost and 127.0.0.1 only
    out = run(stack=stack)
    assert "DNS:kafka" in sans(certs / "kafka.crt")
    assert "restart these servers to load them: kafka" in out


def test_a_loosened_key_mode_is_tightened_again(stack):
    key = stack / "certs" / "postgres.key"
    key.chmod(0o644)
    run(stack=stack)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
