"""The WWW-Authenticate challenges of ingest's HTTPS readings API, as RFC 6750 section 3 words
them (tests/integration/test_ingest_auth.py sends them through a live ingest)."""

from __future__ import annotations

from libs.common.errors import Forbidden, Unauthenticated
from services.ingest.http_api import challenge


def test_no_token_is_challenged_without_an_error_code():
    assert challenge(Unauthenticated("no bearer token", missing=True)) == (
        'Bearer realm="sensor-pipeline"'
    )


def test_an_invalid_token_is_challenged_with_invalid_token_and_the_reason():
    assert challenge(Unauthenticated("token expired")) == (
        'Bearer realm="sensor-pipeline", error="invalid_token", error_description="token expired"'
    )


def test_a_token_without_the_scope_is_challenged_with_insufficient_scope_and_the_scope():
    assert challenge(Forbidden("token lacks scope readings:write", scope="readings:write")) == (
        'Bearer realm="sensor-pipeline", error="insufficient_scope", '
        'error_description="token lacks scope readings:write", scope="readings:write"'
    )


def test_a_reason_cannot_break_out_of_its_quoted_string():
    value = challenge(Unauthenticated('bad "alg" \\ here\n, error="x"'))
    assert value.endswith('error_description="bad ?alg? ? here?, error=?x?"')
