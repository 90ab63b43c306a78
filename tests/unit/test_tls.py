"""The clients' TLS context (libs.common.tls): TLS 1.2 at least, verification and host-name
checks on, and the local CA found from the checkout at run time."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi
import pytest

from libs.common import tls
from libs.common.errors import ConfigurationError
from libs.common.settings import PipelineSettings

ROOT = Path(__file__).resolve().parents[2]
SOME_CA_BUNDLE = Path(certifi.where())


def test_the_client_context_refuses_anything_older_than_tls_1_2():
    context = tls.client_context(SOME_CA_BUNDLE)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_client_context_verifies_the_certificate_and_the_host_name():
    context = tls.client_context(SOME_CA_BUNDLE)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_the_default_ca_is_the_local_stacks_under_the_checkout():
    assert PipelineSettings().tls_ca_file is None  # no machine path as a default
    assert tls.ca_file(None) == ROOT / ".stack" / "certs" / "ca.crt"


def test_a_configured_ca_file_wins_over_the_local_stacks(tmp_path):
    assert tls.ca_file(tmp_path / "ca.pem") == tmp_path / "ca.pem"


def test_a_missing_ca_file_is_a_configuration_error_that_says_what_to_do(tmp_path):
    with pytest.raises(ConfigurationError, match="TLS_CA_FILE"):
        tls.client_context(tmp_path / "missing.crt")


def test_a_ca_file_that_is_not_pem_is_a_configuration_error(tmp_path):
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match="PEM"):
        tls.client_context(junk)
