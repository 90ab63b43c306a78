"""Mosquitto's TLS listener and its accounts, against a real broker started for this module.

The broker is started the way `make up` starts it (deploy/local/stack.sh sourced: certs.sh's
certs_ensure, then mosquitto_start and mosquitto_wait), with a private STACK_DIR and free
ports: its own CA and server certificate, the rendered config of deploy/mosquitto/, the
accounts file of the dynamic security plugin. Devices are registered and revoked through
tools.mqtt_accounts and `python -m tools.credentials`, as operators do. The clients are
paho-mqtt (MQTT v5), so that the broker's reason codes (CONNACK, PUBACK, SUBACK) are what the
tests read.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from libs.common.errors import ConfigurationError, MqttUnavailable
from libs.common.health import Readiness
from libs.common.tls import client_context
from services.ingest.mqtt import MqttIngest, MqttLogin
from services.ingest.mqtt_client import Delivery, MqttSession
from services.ingest.settings import IngestSettings
from tools.mqtt_accounts import (
    DeviceCredentials,
    MqttAccountsSettings,
    register_device,
    revoke_device,
)
from tools.processes import free_ports

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STACK_SH = ROOT / "deploy" / "local" / "stack.sh"
HOST = "127.0.0.1"
NOT_AUTHORIZED = 0x87
BAD_USERNAME_OR_PASSWORD = 0x86
WAIT_S = 10.0
# An MQTT v5 CONNECT (clean start, keep-alive 60 s, no properties, client id "plain").
PLAIN_CONNECT = bytes.fromhex("1012 00044d515454 05 02 003c 00 0005") + b"plain"


@dataclass(frozen=True)
class Broker:
    stack_dir: Path
    port: int  # the anonymous plaintext listener
    tls_port: int
    env: dict[str, str]

    @property
    def ca_file(self) -> Path:
        return self.stack_dir / "certs" / "ca.crt"

    @property
    def settings(self) -> MqttAccountsSettings:
        return MqttAccountsSettings(stack_dir=self.stack_dir, mqtt_tls_port=self.tls_port)

    def pid(self) -> int:
        return int((self.stack_dir / "run" / "mosquitto.pid").read_text().split()[0])

    def ingest_password(self) -> str:
        return (self.stack_dir / "secrets" / "mqtt-ingest.password").read_text().strip()


def stack_sh(env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    """stack.sh sourced (it only defines), then `script`, under the private stack's settings."""
    return subprocess.run(
        ["bash", "-c", f'. "$1"; set -Eeuo pipefail; {script}', "stack", str(STACK_SH)],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    missing = [name for name in ("mosquitto", "mosquitto_ctrl", "openssl") if not which(name)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run `make up` first", pytrace=False)
    # Not pytest's tmp_path: its folders are 0700, and the broker runs as the user `mosquitto`
    # when the stack's folder lets it, as `make up` does.
    stack_dir = Path(tempfile.mkdtemp(prefix="test-mqtt-auth-"))
    stack_dir.chmod(0o755)
    port, tls_port = free_ports(2)
    env = {
        "STACK_DIR": str(stack_dir),
        "MQTT_PORT": str(port),
        "MQTT_TLS_PORT": str(tls_port),
        "STACK_START_TIMEOUT": "30",
    }
    try:
        started = stack_sh(
            env,
            'trap \'on_error $? "$BASH_COMMAND"\' ERR; mkdir -p "$STACK" "$LOGS" "$RUN"; '
            "certs_ensure; server_start mosquitto; mosquitto_wait",
        )
        if started.returncode != 0:
            pytest.fail(f"mosquitto did not start:\n{started.stdout}\n{started.stderr}")
        yield Broker(stack_dir, port, tls_port, env)
    finally:
        stack_sh(env, "server_stop mosquitto || true")
        shutil.rmtree(stack_dir, ignore_errors=True)


def which(name: str) -> bool:
    return shutil.which(name) is not None or Path("/usr/sbin", name).exists()


def device_id() -> str:
    return f"test-dev-{uuid.uuid4().hex[:10]}"


def register(broker: Broker, device: str) -> DeviceCredentials:
    return asyncio.run(register_device(broker.settings, device))


def trusting(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


class Peer:
    """A paho MQTT v5 client that reports the broker's reason codes."""

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-mqtt-auth-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connacks: queue.Queue[int] = queue.Queue()
        self.acks: queue.Queue[tuple[int, int]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.disconnects: queue.Queue[int] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.on_disconnect = lambda _c, _u, _f, reason, _p: self.disconnects.put(
            reason.value
        )

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connacks.put(reason.value)

    def _on_ack(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self.acks.put((mid, reason.value))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        self.acks.put((mid, reasons[0].value))

    def connect(self, port: int, context: ssl.SSLContext) -> int:
        """The CONNACK's reason code (0: accepted)."""
        self.client.tls_set_context(context)
        self.client.connect(HOST, port, keepalive=30)
        self.client.loop_start()
        return self.connacks.get(timeout=WAIT_S)

    def _ack_of(self, mid: int) -> int:
        while True:
            got, reason = self.acks.get(timeout=WAIT_S)
            if got == mid:
                return reason

    def publish(self, topic: str, payload: bytes) -> int:
        """The PUBACK's reason code of a QoS 1 publish (below 0x80: accepted)."""
        return self._ack_of(self.client.publish(topic, payload, qos=1).mid)

    def subscribe(self, topic: str) -> int:
        """The SUBACK's reason code (the QoS granted, or an error at 0x80 and above)."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        return self._ack_of(mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connected(broker: Broker, username: str, password: str) -> Peer:
    peer = Peer(username, password)
    assert peer.connect(broker.tls_port, trusting(broker.ca_file)) == 0
    return peer


# --- who may connect ---------------------------------------------------------------------------


def test_an_anonymous_client_is_refused_on_the_tls_listener(broker: Broker) -> None:
    peer = Peer()
    try:
        assert peer.connect(broker.tls_port, trusting(broker.ca_file)) == NOT_AUTHORIZED
    finally:
        peer.close()


def test_a_wrong_password_is_refused(broker: Broker) -> None:
    device = register(broker, device_id())
    wrong = Peer(device.username, device.password + "x")
    right = Peer(device.username, device.password)
    try:
        # Mosquitto 2.0.11's plugin answers a bad password with "not authorized".
        assert wrong.connect(broker.tls_port, trusting(broker.ca_file)) in (
            NOT_AUTHORIZED,
            BAD_USERNAME_OR_PASSWORD,
        )
        assert right.connect(broker.tls_port, trusting(broker.ca_file)) == 0
    finally:
        wrong.close()
        right.close()


def test_a_plaintext_client_gets_no_answer_from_the_tls_listener(broker: Broker) -> None:
    def first_byte(port: int) -> bytes:
        """The first byte of the answer; b"" when the broker closed or reset the connection."""
        with socket.create_connection((HOST, port), timeout=WAIT_S) as sock:
            sock.sendall(PLAIN_CONNECT)
            try:
                return sock.recv(1)
            except ConnectionResetError:
                return b""

    assert first_byte(broker.port) == b"\x20"  # the plaintext listener answers with a CONNACK
    # The TLS one drops the connection (at most after a TLS alert record, 0x15).
    assert first_byte(broker.tls_port) in (b"", b"\x15")


def test_a_client_trusting_another_ca_fails_the_handshake(broker: Broker, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=another CA", "-keyout", str(tmp_path / "k"), "-out", str(other_ca)],
        check=True,
        capture_output=True,
    )
    device = register(broker, device_id())
    peer = Peer(device.username, device.password)
    with pytest.raises(ssl.SSLCertVerificationError):
        peer.connect(broker.tls_port, trusting(other_ca))
    peer.client.loop_stop()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_below_1_2_is_refused_by_the_broker_and_1_2_is_accepted(broker: Broker) -> None:
    old = trusting(broker.ca_file)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # this client would speak it; the broker may not
    with socket.create_connection((HOST, broker.tls_port), timeout=WAIT_S) as sock:
        with pytest.raises(ssl.SSLError) as refused:
            old.wrap_socket(sock, server_hostname=HOST)
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"  # the broker's alert
    tls12 = trusting(broker.ca_file)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((HOST, broker.tls_port), timeout=WAIT_S) as sock:
        with tls12.wrap_socket(sock, server_hostname=HOST) as tls:
            assert tls.version() == "TLSv1.2"


# --- what each account may do ------------------------------------------------------------------


def test_a_device_publishes_only_to_its_own_topic_which_ingest_receives(broker: Broker) -> None:
    a, b = register(broker, device_id()), register(broker, device_id())
    ingest = connected(broker, "ingest", broker.ingest_password())
    device = connected(broker, a.username, a.password)
    try:
        assert ingest.subscribe("$share/ingest/sensors/+/readings") == 1
        assert device.publish(f"sensors/{b.device_id}/readings", b"not mine") == NOT_AUTHORIZED
        assert device.publish(f"sensors/{a.device_id}/readings", b"mine") < 0x80
        assert device.publish("sensors/other", b"elsewhere") == NOT_AUTHORIZED
        message = ingest.messages.get(timeout=WAIT_S)
        assert (message.topic, message.payload) == (f"sensors/{a.device_id}/readings", b"mine")
        with pytest.raises(queue.Empty):
            ingest.messages.get(timeout=0.5)  # the refused ones never arrived
    finally:
        device.close()
        ingest.close()


def test_ingest_may_not_publish_and_a_device_may_not_read_the_readings(broker: Broker) -> None:
    a = register(broker, device_id())
    ingest = connected(broker, "ingest", broker.ingest_password())
    device = connected(broker, a.username, a.password)
    try:
        assert ingest.publish(f"sensors/{a.device_id}/readings", b"forged") == NOT_AUTHORIZED
        assert ingest.subscribe("sensors/+/readings") == NOT_AUTHORIZED  # only the shared one
        assert device.subscribe("$share/ingest/sensors/+/readings") == NOT_AUTHORIZED
        assert device.subscribe(f"sensors/{a.device_id}/readings") == NOT_AUTHORIZED
    finally:
        device.close()
        ingest.close()


# --- registering and revoking, without a restart ------------------------------------------------


def credentials_cli(broker: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.credentials", *args],
        cwd=ROOT,
        env=os.environ | broker.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_credentials_device_twice_gives_the_same_working_credentials(broker: Broker) -> None:
    device = device_id()
    first, second = (
        credentials_cli(broker, "device", device),
        credentials_cli(broker, "device", device),
    )
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one == two
    assert set(one) == {"device_id", "mqtt_url", "username", "password", "ca_file"}
    assert one["device_id"] == device
    assert one["mqtt_url"] == f"mqtts://127.0.0.1:{broker.tls_port}"
    assert Path(one["ca_file"]) == broker.ca_file
    kept = broker.stack_dir / "secrets" / "devices" / f"{device}.password"
    assert kept.stat().st_mode & 0o777 == 0o600
    for _ in range(2):  # the second call did not cut or change the first's account
        peer = connected(broker, one["username"], one["password"])
        try:
            assert peer.publish(f"sensors/{device}/readings", b"{}") < 0x80
        finally:
            peer.close()


def test_a_revoked_device_is_cut_and_refused_at_its_next_connect_without_a_restart(
    broker: Broker,
) -> None:
    pid = broker.pid()
    device = register(broker, device_id())
    peer = connected(broker, device.username, device.password)
    revoked = credentials_cli(broker, "revoke", device.device_id)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout) == {"device_id": device.device_id, "revoked": True}
    peer.disconnects.get(timeout=WAIT_S)  # its open session was cut
    peer.client.loop_stop()
    again = Peer(device.username, device.password)
    try:
        assert again.connect(broker.tls_port, trusting(broker.ca_file)) == NOT_AUTHORIZED
    finally:
        again.close()
    assert broker.pid() == pid  # the same broker process throughout
    assert not (broker.stack_dir / "secrets" / "devices" / f"{device.device_id}.password").exists()
    # Registered again, it gets a new password and may publish again.
    renewed = register(broker, device.device_id)
    assert renewed.password != device.password
    peer = connected(broker, renewed.username, renewed.password)
    try:
        assert peer.publish(f"sensors/{device.device_id}/readings", b"{}") < 0x80
    finally:
        peer.close()


def test_a_service_account_or_a_topic_breaking_id_is_no_device(broker: Broker) -> None:
    for name in ("ingest", "admin", "a/b", "+", "#", ""):
        done = credentials_cli(broker, "device", name)
        assert done.returncode == 2, (name, done.stdout)
        assert done.stdout == ""
    assert not (broker.stack_dir / "secrets" / "devices" / "ingest.password").exists()
    assert asyncio.run(revoke_device(broker.settings, device_id())) is False
    ingest = connected(broker, "ingest", broker.ingest_password())  # still ingest's own
    ingest.close()


def test_accounts_survive_a_broker_restart_and_a_second_start_keeps_them(broker: Broker) -> None:
    device = register(broker, device_id())
    accounts = broker.stack_dir / "mosquitto" / "dynamic-security.json"
    assert accounts.stat().st_mode & 0o777 == 0o600
    assert device.device_id in accounts.read_text()  # saved by the plugin, no restart needed
    restarted = stack_sh(
        broker.env,
        "trap 'on_error $? \"$BASH_COMMAND\"' ERR; server_stop mosquitto; "
        "server_start mosquitto; mosquitto_wait",
    )
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "the accounts of the TLS listener" not in restarted.stdout  # made once, not again
    peer = connected(broker, device.username, device.password)
    try:
        assert peer.publish(f"sensors/{device.device_id}/readings", b"{}") < 0x80
    finally:
        peer.close()
    assert register(broker, device.device_id) == device


def test_the_plaintext_listener_cannot_drive_the_accounts(broker: Broker) -> None:
    """The plugin is loaded on the TLS listener only: a control command sent anonymously on
    1883 creates nothing."""
    name, password = device_id(), "chosen-by-an-intruder"
    intruder = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    intruder.connect(HOST, broker.port)
    intruder.loop_start()
    command = {"commands": [{"command": "createClient", "username": name, "password": password}]}
    intruder.publish("$CONTROL/dynamic-security/v1", json.dumps(command), qos=1).wait_for_publish(
        WAIT_S
    )
    intruder.disconnect()
    intruder.loop_stop()
    peer = Peer(name, password)
    try:
        assert peer.connect(broker.tls_port, trusting(broker.ca_file)) == NOT_AUTHORIZED
    finally:
        peer.close()
    assert name not in (broker.stack_dir / "mosquitto" / "dynamic-security.json").read_text()


# --- ingest's own client (services/ingest/mqtt_client.py) on the TLS listener -----------------

INGEST_TOPIC = "$share/ingest/sensors/+/readings"


def ingest_session(
    broker: Broker, password: str, ca_file: Path | None = None, port: int | None = None
) -> MqttSession:
    return MqttSession(
        HOST,
        port or broker.tls_port,
        f"test-ingest-{uuid.uuid4().hex[:8]}",
        receive_maximum=10,
        session_expiry_s=0,
        tls=client_context(ca_file or broker.ca_file),
        credentials=("ingest", password),
    )


def test_ingest_subscribes_over_tls_with_its_account_and_gets_a_devices_reading(
    broker: Broker,
) -> None:
    device = register(broker, device_id())

    async def scenario() -> list[Delivery]:
        session = ingest_session(broker, broker.ingest_password())
        try:
            await session.open(INGEST_TOPIC)
            peer = connected(broker, device.username, device.password)
            try:
                assert peer.publish(f"sensors/{device.device_id}/readings", b"over tls") < 0x80
            finally:
                peer.close()
            async with asyncio.timeout(WAIT_S):
                return await session.take(10, 0)
        finally:
            await session.close()

    [delivery] = asyncio.run(scenario())
    assert (delivery.topic, delivery.payload) == (
        f"sensors/{device.device_id}/readings",
        b"over tls",
    )


def test_ingest_with_a_wrong_password_stops_with_a_configuration_error(broker: Broker) -> None:
    url = f"mqtts://{HOST}:{broker.tls_port}"
    settings = IngestSettings(mqtt_url=url, mqtt_reconnect_max_s=0.05)
    login = MqttLogin(client_context(broker.ca_file), ("ingest", "not-the-password"))
    # No hand-over: nothing is delivered before the login.
    no_handover: Any = None
    ingest = MqttIngest(settings, no_handover, Readiness("ingest", "mqtt"), login=login)

    async def scenario() -> None:
        async with asyncio.timeout(WAIT_S):  # not retried: raised at the first refusal
            await ingest.run(asyncio.Event())

    with pytest.raises(ConfigurationError, match="refused the login .*MQTT_PASSWORD"):
        asyncio.run(scenario())


def test_ingest_subscribing_outside_its_accounts_role_stops_with_a_configuration_error(
    broker: Broker,
) -> None:
    session = ingest_session(broker, broker.ingest_password())

    async def scenario() -> None:
        try:
            await session.open("$share/ingest/t-private/sensors/+/readings")
        finally:
            await session.close()

    with pytest.raises(ConfigurationError, match="not authorized.*MQTT_TOPIC"):
        asyncio.run(scenario())


def test_ingest_trusting_another_ca_stops_with_a_configuration_error(
    broker: Broker, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=another CA", "-keyout", str(tmp_path / "k"), "-out", str(other_ca)],
        check=True,
        capture_output=True,
    )
    session = ingest_session(broker, broker.ingest_password(), ca_file=other_ca)
    with pytest.raises(ConfigurationError, match="does not verify against TLS_CA_FILE"):
        asyncio.run(session.open(INGEST_TOPIC))


def test_ingest_finding_no_tls_listener_is_a_transient_outage(broker: Broker) -> None:
    [port] = free_ports(1)
    session = ingest_session(broker, broker.ingest_password(), port=port)
    with pytest.raises(MqttUnavailable):
        asyncio.run(session.open(INGEST_TOPIC))
