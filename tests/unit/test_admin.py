"""The admin API's pure parts (services.admin): roles, the audit row of a call, the replay's
selection, its settings and their refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from libs.common import stack
from libs.common.auth import Principal, realm_roles
from libs.common.dlq import Selection, StoredLetter, missing_ids
from libs.common.errors import ConfigurationError, Unauthenticated
from libs.common.models import DeadLetter, Stage
from services.admin.audit_trail import AuditedCall, outcome_of, request_id_of
from services.admin.errors import BadRequest
from services.admin.http_api import challenge
from services.admin.models import ReplayRequest
from services.admin.operations import selection_of
from services.admin.roles import Role, actor_of, highest_role, may
from services.admin.settings import AdminSettings

ROOT = Path(__file__).resolve().parents[2]
OWNER_URL = "postgresql://sensors:sensors@127.0.0.1:5432/sensors"


def principal(username: str | None, *roles: str) -> Principal:
    return Principal(
        "sub-1", "pipeline-cli", frozenset(), username=username, roles=frozenset(roles)
    )


@pytest.mark.parametrize(
    ("roles", "highest"),
    [
        ((), None),
        (("offline_access", "uma_authorization"), None),
        (("viewer",), Role.VIEWER),
        (("viewer", "operator"), Role.OPERATOR),
        (("admin",), Role.ADMIN),  # a token with the composite alone still counts as admin
    ],
)
def test_the_highest_known_realm_role_is_the_callers(
    roles: tuple[str, ...], highest: Role | None
) -> None:
    assert highest_role(roles) == highest


def test_each_role_includes_the_ones_below_it_and_no_more() -> None:
    assert may(["operator"], Role.VIEWER) and may(["operator"], Role.OPERATOR)
    assert not may(["operator"], Role.ADMIN)
    assert not may(["viewer"], Role.OPERATOR)
    assert not may([], Role.VIEWER)
    assert may(["admin"], Role.ADMIN)


def test_the_actor_is_the_user_name_and_a_service_account_is_a_client() -> None:
    assert actor_of(principal("operator", "operator")) == ("operator", "user")
    assert actor_of(principal("service-account-x")) == ("service-account-x", "client")
    assert actor_of(principal(None)) == ("sub-1", "client")


def test_realm_roles_come_from_realm_access_and_ignore_anything_else() -> None:
    assert realm_roles({"realm_access": {"roles": ["viewer", 3, "admin"]}}) == {"viewer", "admin"}
    assert realm_roles({"realm_access": {"roles": "admin"}}) == frozenset()
    assert realm_roles({"roles": ["admin"]}) == frozenset()


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "allowed"),
        (201, "allowed"),
        (401, "refused"),
        (403, "refused"),
        (404, "refused"),
        (422, "refused"),
        (503, "failed"),
        (500, "failed"),
    ],
)
def test_the_answers_status_is_the_audit_outcome(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome


def test_a_usable_request_id_is_kept_and_any_other_replaced() -> None:
    assert request_id_of("abc-123:x.y_z") == "abc-123:x.y_z"
    for bad in (None, "", "has space", "x" * 129, "semi;colon", "new\nline"):
        made = request_id_of(bad)
        assert made != bad and len(made) == 32


def test_an_allowed_call_has_no_reason_in_its_row_and_a_refused_one_keeps_it() -> None:
    call = AuditedCall("r-1", action="devices.register", target="dev-1", reason="stale")
    allowed = call.event(201, "127.0.0.1")
    assert (allowed.outcome, allowed.reason, allowed.request_id) == ("allowed", None, "r-1")
    refused = call.event(403, "127.0.0.1")
    assert (refused.outcome, refused.reason, refused.actor_kind) == (
        "refused",
        "stale",
        "anonymous",
    )
    assert refused.recorded_by == "admin-api"


def test_a_401_challenge_has_no_error_code_without_a_token_and_quotes_nothing_raw() -> None:
    assert (
        challenge(Unauthenticated("no bearer token", missing=True))
        == 'Bearer realm="sensor-pipeline"'
    )
    answer = challenge(Unauthenticated('bad "token"\\'))
    assert answer == (
        'Bearer realm="sensor-pipeline", error="invalid_token", error_description="bad ?token??"'
    )


def test_a_replay_must_name_its_letters() -> None:
    with pytest.raises(BadRequest, match="name the letters"):
        selection_of(ReplayRequest())
    with pytest.raises(BadRequest, match="partition:offset"):
        selection_of(ReplayRequest(ids=["0:1", "zero:1"]))
    chosen = selection_of(ReplayRequest(ids=["0:1"], stages=[Stage.ENRICH], limit=2))
    assert chosen == Selection(stages=frozenset({"enrich"}), limit=2, ids=frozenset({"0:1"}))
    assert selection_of(ReplayRequest(since=datetime(2026, 1, 1, tzinfo=UTC))).since is not None


def stored(partition: int, offset: int, device: str) -> StoredLetter:
    letter = DeadLetter(
        original_record="{}",
        error_message="m",
        error_type="RuleViolation",
        error_timestamp=datetime(2026, 11, 27, tzinfo=UTC),
        processing_stage=Stage.VALIDATE,
        device_id=device,
    )
    return StoredLetter(partition, offset, letter)


def test_a_selection_by_ids_matches_only_those_places_and_names_the_missing() -> None:
    letters = [stored(0, 5, "a"), stored(1, 5, "a"), stored(0, 6, "b")]
    chosen = [s for s in letters if Selection(ids=frozenset({"1:5", "0:6"})).matches(s)]
    assert [s.id for s in chosen] == ["1:5", "0:6"]
    assert [s.id for s in letters if Selection(devices=frozenset({"a"})).matches(s)] == [
        "0:5",
        "1:5",
    ]
    assert missing_ids(["0:6", "9:9", "1:5"], chosen) == ["9:9"]


def test_without_database_url_the_admin_api_logs_in_as_the_local_admin_api_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr(stack, "REPO_ROOT", tmp_path)
    secrets = tmp_path / ".stack" / "secrets"
    with pytest.raises(ConfigurationError, match="admin_api"):
        AdminSettings().database_dsn()
    secrets.mkdir(parents=True)
    (secrets / "postgres-admin_api.password").write_text("p@ss/word\n")
    settings = AdminSettings(tls_ca_file=tmp_path / "ca.crt")
    url = urlsplit(settings.database_dsn().get_secret_value())
    assert (url.username, url.password, url.hostname, url.port) == (
        "admin_api",
        "p%40ss%2Fword",
        "127.0.0.1",
        5432,
    )
    assert parse_qs(url.query)["sslmode"] == ["verify-full"]
    kept = AdminSettings(database_url=OWNER_URL).database_dsn().get_secret_value()
    assert kept == OWNER_URL


def test_bad_admin_settings_exit_2_with_one_line_each() -> None:
    env = os.environ | {
        "DATABASE_URL": OWNER_URL,
        "HTTP_PORT": "8444",
        "HTTPS_PORT": "8444",
        "MAX_PAGE": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.admin"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "MAX_PAGE: Input should be greater than or equal to 1" in done.stderr
