"""A library without the private parts we rely on stops the service with a clear error."""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform
from types import SimpleNamespace

import pytest
from gmqtt.mqtt.handler import MqttPackageHandler
from prometheus_client import CollectorRegistry, Histogram

from libs.common.errors import PrivateHookMissing
from services.ingest.mqtt_client import MqttSession, check_connection_hooks
from services.store.latency import check_histogram_hooks


def _session() -> MqttSession:
    return MqttSession("127.0.0.1", 1883, "hook-test", receive_maximum=10, session_expiry_s=60)


def test_a_gmqtt_without_its_qos_1_handler_refuses_to_make_a_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(MqttPackageHandler, "_handle_qos_1_publish_packet")
    with pytest.raises(PrivateHookMissing) as caught:
        _session()
    message = str(caught.value)
    assert f"gmqtt {importlib.metadata.version('gmqtt')}" in message
    assert "_handle_qos_1_publish_packet" in message


def test_the_installed_gmqtt_has_what_a_session_needs() -> None:
    assert _session().lost.is_set() is False


def _connection(reader: object) -> SimpleNamespace:
    transport = SimpleNamespace(pause_reading=lambda: None)
    return SimpleNamespace(_transport=transport, _protocol=SimpleNamespace(_hard_reader=reader))


async def test_a_stream_reader_without_paused_stops_flow_control_loudly() -> None:
    check_connection_hooks(_connection(asyncio.StreamReader()))
    with pytest.raises(PrivateHookMissing, match=f"python {platform.python_version()}"):
        check_connection_hooks(_connection(SimpleNamespace()))


def test_a_connection_without_a_transport_is_refused() -> None:
    with pytest.raises(PrivateHookMissing, match="MQTTConnection._transport"):
        check_connection_hooks(SimpleNamespace(_protocol=None))


def test_a_prometheus_histogram_without_its_buckets_is_refused() -> None:
    histogram = Histogram("h", "h", registry=CollectorRegistry())
    check_histogram_hooks(histogram)
    del histogram._sum
    version = importlib.metadata.version("prometheus-client")
    with pytest.raises(
        PrivateHookMissing, match=f"prometheus-client {version} has no Histogram._sum"
    ):
        check_histogram_hooks(histogram)
