"""Kafka's SCRAM users (tools.kafka_accounts, `tools.credentials kafka`) and what stack.sh
renders for them (sourced: it only defines): the SASL_SSL listener, the authorizer, the ACL
rows. No server needed; the broker's answer to them is tests/integration/test_kafka_auth.py."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import certifi
import pytest

from libs.common.errors import ConfigurationError
from tools.credentials import main
from tools.kafka_accounts import (
    USERS,
    KafkaAccountsSettings,
    aiokafka_options,
    credentials_for,
    parse_properties,
)

ROOT = Path(__file__).resolve().parents[2]
STACK_SH = ROOT / "deploy" / "local" / "stack.sh"
SOME_CA_BUNDLE = Path(certifi.where())


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    for user in USERS:
        (tmp_path / "secrets" / f"kafka-{user}.password").write_text(f"pw-of-{user}\n")
    return tmp_path


def test_a_users_settings_are_librdkafkas_names_in_order(stack: Path) -> None:
    settings = KafkaAccountsSettings(stack_dir=stack, kafka_sasl_port=19094)
    lines = credentials_for("operator", settings).properties().splitlines()
    assert lines == [
        "bootstrap.servers=127.0.0.1:19094",
        "security.protocol=SASL_SSL",
        "sasl.mechanisms=SCRAM-SHA-512",
        "sasl.username=operator",
        "sasl.password=pw-of-operator",
        f"ssl.ca.location={stack / 'certs' / 'ca.crt'}",
    ]


def test_an_unknown_user_or_a_missing_password_is_a_configuration_error(tmp_path: Path) -> None:
    settings = KafkaAccountsSettings(stack_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="unknown Kafka user"):
        credentials_for("root", settings)
    with pytest.raises(ConfigurationError, match="make up"):
        credentials_for("operator", settings)


def test_the_credentials_command_prints_the_settings_or_exits_2_with_why(
    stack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STACK_DIR", str(stack))
    monkeypatch.setenv("TLS_CA_FILE", str(SOME_CA_BUNDLE))
    assert main(["kafka"]) == 0
    printed = parse_properties(capsys.readouterr().out)
    assert printed["sasl.username"] == "operator"
    assert printed["ssl.ca.location"] == str(SOME_CA_BUNDLE)
    assert main(["kafka", "--user", "ingest"]) == 0
    assert parse_properties(capsys.readouterr().out)["sasl.password"] == "pw-of-ingest"
    monkeypatch.setenv("STACK_DIR", str(tmp_path / "nowhere"))
    assert main(["kafka"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "kafka-operator.password" in captured.err


def test_the_printed_lines_become_aiokafka_arguments_with_a_verifying_context(
    stack: Path,
) -> None:
    settings = KafkaAccountsSettings(stack_dir=stack, tls_ca_file=SOME_CA_BUNDLE)
    properties = parse_properties(credentials_for("store", settings).properties())
    options = aiokafka_options(properties)
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "127.0.0.1:9094",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "store",
        "sasl_plain_password": "pw-of-store",
    }
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    del properties["sasl.password"]
    with pytest.raises(ConfigurationError, match="sasl.password"):
        aiokafka_options(properties)
    with pytest.raises(ConfigurationError, match="line 2"):
        parse_properties("a=b\nno equals sign\n")


def stack_sh(state: Path, script: str) -> str:
    done = subprocess.run(
        ["bash", "-c", f'. "$1"; {script}', "stack", str(STACK_SH)],
        env=os.environ
        | {
            "STACK_DIR": str(state),
            "KAFKA_PORT": "39092",
            "KAFKA_SASL_PORT": "39094",
            "KAFKA_CONTROLLER_PORT": "39093",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_broker_config_has_the_sasl_ssl_listener_and_the_authorizer(tmp_path: Path) -> None:
    (tmp_path / "kafka").mkdir()
    conf = stack_sh(tmp_path, 'kafka_render_config; cat "$KAFKA_CONF"').splitlines()
    for line in (
        "listeners=PLAINTEXT://127.0.0.1:39092,SASL_SSL://127.0.0.1:39094,CONTROLLER://127.0.0.1:39093",
        "advertised.listeners=PLAINTEXT://127.0.0.1:39092,SASL_SSL://127.0.0.1:39094",
        "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.sasl_ssl.ssl.keystore.type=PEM",
        f"listener.name.sasl_ssl.ssl.keystore.location={tmp_path}/kafka/tls/kafka-keystore.pem",
        "listener.name.sasl_ssl.ssl.enabled.protocols=TLSv1.3,TLSv1.2",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        "super.users=User:ANONYMOUS;User:admin",
    ):
        assert line in conf
    # the port `status` reads back is still the PLAINTEXT one
    assert stack_sh(tmp_path, "kafka_conf_port").strip() == "39092"


def acl_args(state: Path) -> list[list[str]]:
    script = (
        'while read -r row; do kafka_acl_args "$row"; printf "%s\\n" "${KAFKA_ACL_ARGS[*]}"; '
        'done <<<"$KAFKA_ACLS"'
    )
    return [line.split() for line in stack_sh(state, script).splitlines()]


def test_the_acl_rows_give_each_user_only_its_topics(tmp_path: Path) -> None:
    rows = acl_args(tmp_path)
    ingest = [r for r in rows if "User:ingest" in r]
    assert ingest == [
        "--add --allow-principal User:ingest --resource-pattern-type literal --operation WRITE "
        "--topic sensor-data --topic sensor-data-errors".split()
    ]
    # prefixed only for the transactional ids and the operator's own groups
    for row in rows:
        if "prefixed" in row:
            assert "--transactional-id" in row or row[row.index("--group") + 1] == "operator"
    written = {
        (row[2], row[i + 1])
        for row in rows
        if "WRITE" in row
        for i, arg in enumerate(row)
        if arg == "--topic"
    }
    assert written == {
        ("User:ingest", "sensor-data"),
        ("User:ingest", "sensor-data-errors"),
        ("User:validate", "sensor-data-validated"),
        ("User:validate", "sensor-data-errors"),
        ("User:enrich", "sensor-data-enriched"),
        ("User:enrich", "sensor-data-errors"),
        ("User:store", "sensor-data-errors"),
        # the admin API's replays go back to each stage's input
        ("User:admin-api", "sensor-data"),
        ("User:admin-api", "sensor-data-validated"),
        ("User:admin-api", "sensor-data-enriched"),
    }
    users = {row[2].removeprefix("User:") for row in rows}
    assert users == set(USERS) - {"admin"}
