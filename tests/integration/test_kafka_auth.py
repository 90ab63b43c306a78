"""Kafka's SASL_SSL listener, its SCRAM users and their ACLs, against a real broker started for
this module.

The broker is started the way `make up` starts it (deploy/local/stack.sh sourced: certs.sh's
certs_ensure, then kafka_start and kafka_wait, which creates the users and ACLs), with a
private STACK_DIR and free ports: its own CA and certificate, its own passwords. The topics
are the pipeline's default names, since the ACLs name those (the broker is this module's
alone). The clients are aiokafka, the project's, over SASL_SSL with SCRAM-SHA-512 and the TLS
context of libs.common.tls.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from libs.common.tls import client_context
from tools.kafka_accounts import (
    KafkaAccountsSettings,
    aiokafka_options,
    credentials_for,
    parse_properties,
)
from tools.processes import free_ports

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STACK_SH = ROOT / "deploy" / "local" / "stack.sh"
TOPICS = ("sensor-data", "sensor-data-validated", "sensor-data-enriched", "sensor-data-errors")
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Broker:
    stack_dir: Path
    port: int  # PLAINTEXT (User:ANONYMOUS, a super user for now)
    sasl_port: int
    env: dict[str, str]

    @property
    def settings(self) -> KafkaAccountsSettings:
        return KafkaAccountsSettings(stack_dir=self.stack_dir, kafka_sasl_port=self.sasl_port)

    def options(self, user: str, **overrides: Any) -> dict[str, Any]:
        """aiokafka's arguments for that SCRAM user, from its generated password file."""
        properties = credentials_for(user, self.settings).librdkafka()
        return aiokafka_options(properties) | overrides


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


async def create_topics(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1) for name in TOPICS])
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    if shutil.which("java") is None or shutil.which("openssl") is None:
        pytest.fail("java or openssl not installed: run `make up` first", pytrace=False)
    stack_dir = Path(tempfile.mkdtemp(prefix="test-kafka-auth-"))
    port, sasl_port, controller_port = free_ports(3)
    env = {
        "STACK_DIR": str(stack_dir),
        "KAFKA_PORT": str(port),
        "KAFKA_SASL_PORT": str(sasl_port),
        "KAFKA_CONTROLLER_PORT": str(controller_port),
        "STACK_START_TIMEOUT": "120",
        "KAFKA_HEAP_OPTS": "-Xmx256m -Xms128m",
    }
    try:
        started = stack_sh(
            env,
            'trap \'on_error $? "$BASH_COMMAND"\' ERR; mkdir -p "$STACK" "$LOGS" "$RUN"; '
            "certs_ensure; server_start kafka; kafka_wait",
            timeout=400,
        )
        if started.returncode != 0:
            pytest.fail(f"kafka did not start:\n{started.stdout}\n{started.stderr}")
        asyncio.run(create_topics(f"127.0.0.1:{port}"))
        yield Broker(stack_dir, port, sasl_port, env)
    finally:
        stack_sh(env, "server_stop kafka || true", timeout=120)
        shutil.rmtree(stack_dir, ignore_errors=True)


async def produce(
    options: dict[str, Any], topic: str, value: bytes, *, idempotent: bool = True
) -> None:
    producer = AIOKafkaProducer(acks="all", enable_idempotence=idempotent, **options)
    try:
        await asyncio.wait_for(producer.start(), TIMEOUT_S)
        await asyncio.wait_for(producer.send_and_wait(topic, value), TIMEOUT_S)
    finally:
        await producer.stop()


async def consume_one(options: dict[str, Any], topic: str, value: bytes) -> bool:
    """Whether the consumer (a group of the operator's) reads `value` from `topic`."""
    consumer = AIOKafkaConsumer(
        topic,
        group_id=f"operator-test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        **options,
    )
    try:
        await asyncio.wait_for(consumer.start(), TIMEOUT_S)
        deadline = asyncio.get_running_loop().time() + TIMEOUT_S
        while asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            if any(r.value == value for records in batches.values() for r in records):
                return True
        return False
    finally:
        await consumer.stop()


def test_users_have_generated_passwords_of_their_own(broker: Broker) -> None:
    secrets = broker.stack_dir / "secrets"
    files = sorted(secrets.glob("kafka-*.password"))
    users = ("admin", "admin-api", "ingest", "validate", "enrich", "store", "operator")
    assert [f.name for f in files] == sorted(f"kafka-{u}.password" for u in users)
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert len({f.read_text() for f in files}) == len(files)


def test_a_second_up_keeps_the_passwords_and_skips_the_commands(broker: Broker) -> None:
    secrets = broker.stack_dir / "secrets"
    before = {f.name: f.read_text() for f in secrets.glob("kafka-*.password")}
    again = stack_sh(broker.env, "kafka_accounts", timeout=120)
    assert again.returncode == 0, again.stderr
    assert "users and ACLs current" in again.stdout
    assert {f.name: f.read_text() for f in secrets.glob("kafka-*.password")} == before


def test_ingest_writes_sensor_data_and_is_refused_the_validated_topic(broker: Broker) -> None:
    value = uuid.uuid4().hex.encode()
    asyncio.run(produce(broker.options("ingest"), "sensor-data", value))
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(produce(broker.options("ingest"), "sensor-data-validated", value))


def test_a_wrong_password_is_refused(broker: Broker) -> None:
    options = broker.options("ingest", sasl_plain_password="not-the-password")
    with pytest.raises(KafkaError):
        asyncio.run(produce(options, "sensor-data", b"x"))


def test_a_client_trusting_another_ca_does_not_connect(broker: Broker, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp_path / "other-ca.key"), "-out", str(other_ca),
         "-days", "1", "-subj", "/CN=another CA"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    options = broker.options("ingest", ssl_context=client_context(other_ca))
    with pytest.raises(KafkaError):
        asyncio.run(produce(options, "sensor-data", b"x"))


def test_operator_reads_every_pipeline_topic_and_writes_none(broker: Broker) -> None:
    for topic in TOPICS:
        value = f"{topic}-{uuid.uuid4().hex}".encode()
        # written by the PLAINTEXT listener's principal, a super user for now
        asyncio.run(produce({"bootstrap_servers": f"127.0.0.1:{broker.port}"}, topic, value))
        assert asyncio.run(consume_one(broker.options("operator"), topic, value)), topic
    # an idempotent producer is refused its producer id (it may write no topic at all) ...
    with pytest.raises(ClusterAuthorizationFailedError):
        asyncio.run(produce(broker.options("operator"), "sensor-data", b"x"))
    # ... and a plain one the topic
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(produce(broker.options("operator"), "sensor-data", b"x", idempotent=False))


def test_a_stage_uses_its_own_transactional_ids_only(broker: Broker) -> None:
    async def transaction(transactional_id: str) -> None:
        producer = AIOKafkaProducer(
            transactional_id=transactional_id, acks="all", **broker.options("validate")
        )
        try:
            await asyncio.wait_for(producer.start(), TIMEOUT_S)
            async with producer.transaction():
                await producer.send("sensor-data-validated", b"v")
        finally:
            await producer.stop()

    asyncio.run(transaction(f"validate-test-{uuid.uuid4().hex[:8]}"))
    with pytest.raises(KafkaError):
        asyncio.run(transaction(f"enrich-test-{uuid.uuid4().hex[:8]}"))


def test_the_credentials_tool_output_connects_as_operator(broker: Broker) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tools.credentials", "kafka"],
        cwd=ROOT,
        env=os.environ
        | {"STACK_DIR": str(broker.stack_dir), "KAFKA_SASL_PORT": str(broker.sasl_port)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    properties = parse_properties(result.stdout)
    assert properties["bootstrap.servers"] == f"127.0.0.1:{broker.sasl_port}"
    assert properties["security.protocol"] == "SASL_SSL"
    assert properties["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert properties["sasl.username"] == "operator"
    assert properties["ssl.ca.location"] == str(broker.stack_dir / "certs" / "ca.crt")
    value = uuid.uuid4().hex.encode()
    asyncio.run(produce({"bootstrap_servers": f"127.0.0.1:{broker.port}"}, "sensor-data", value))
    assert asyncio.run(consume_one(aiokafka_options(properties), "sensor-data", value))
