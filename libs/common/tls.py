"""TLS for the pipeline's clients: where the local stack's CA is, and the one client context
(TLS 1.2 or newer, the server's certificate and host name verified) every connection uses."""

from __future__ import annotations

import ssl
from pathlib import Path

from libs.common.errors import ConfigurationError
from libs.common.stack import local_ca_file, local_certs_dir


def ca_file(configured: Path | None = None) -> Path:
    """The CA file to trust: the one configured (TLS_CA_FILE), else the local stack's."""
    return configured if configured is not None else local_ca_file()


def client_context(configured_ca: Path | None = None) -> ssl.SSLContext:
    """A client context that trusts only that CA, refuses anything older than TLS 1.2, and
    checks the server's certificate and that it names the host connected to."""
    path = ca_file(configured_ca)
    if not path.is_file():
        raise ConfigurationError(
            f"TLS CA file {path} does not exist: set TLS_CA_FILE, or run `make up` to create "
            "the local stack's CA"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    try:
        context.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"TLS CA file {path} cannot be read as PEM: {exc}") from exc
    return context


def local_server_files(name: str) -> tuple[Path, Path]:
    """The certificate and key `make up` made for server `name` (deploy/local/certs.sh)."""
    folder = local_certs_dir()
    return folder / f"{name}.crt", folder / f"{name}.key"


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context with that certificate and key, refusing anything older than TLS 1.2."""
    for what, path in (("certificate", cert_file), ("key", key_file)):
        if not path.is_file():
            raise ConfigurationError(
                f"TLS {what} file {path} does not exist: set it, or run `make up` to create the "
                "local stack's certificates"
            )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            f"TLS certificate {cert_file} and key {key_file} cannot be loaded: {exc}"
        ) from exc
    return context
