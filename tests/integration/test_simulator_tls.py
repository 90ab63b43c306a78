"""The simulator's secure default against the real servers: its MQTT devices on Mosquitto's TLS
listener, each with its own account, and its HTTP half on ingest's HTTPS port with the fleet's
token from the identity provider (Keycloak), into a real ingest on this module's topics.

The devices have this module's own prefix, so their accounts are not `make run`'s; they are
revoked at the end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from libs.common.kafka import ensure_topics
from tests.e2e.processes import Service, start
from tests.integration.kafka_helpers import settle_and_read
from tools import mqtt_run_accounts as run_accounts
from tools import simulate as sim
from tools.fleet import Transport
from tools.mqtt_accounts import MqttAccountsSettings, register_device, revoke_device
from tools.mqtt_run_accounts import blocking
from tools.names import Names
from tools.processes import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def names(stack: None) -> Names:
    names = Names(uuid.uuid4().hex[:12])
    asyncio.run(ensure_topics(names.settings(topic_partitions=1)))
    return names


@pytest.fixture(scope="module")
def prefix(names: Names) -> Iterator[str]:
    """This module's device prefix; every account made under it is revoked at the end."""
    prefix = f"tsim{names.run_id[:8]}"
    yield prefix
    accounts = MqttAccountsSettings()

    async def revoke_all() -> None:
        for path in sorted(accounts.devices_dir.glob(f"{prefix}*.password")):
            await revoke_device(accounts, path.name.removesuffix(".password"))

    asyncio.run(revoke_all())


@pytest.fixture(scope="module")
def ingest(names: Names, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """ingest as a process on the module's topics and its own free HTTP and HTTPS ports,
    subscribed over TLS with an account of this module's own to the real devices' topics,
    in a share group of its own (the real `ingest` group has `make run`'s session in it)."""
    run = f"sim-{names.run_id}"
    accounts = blocking(run_accounts.create(run, "", group=f"t-{names.run_id}"))
    client_id = f"ingest-{names.run_id}"
    env = names.env() | accounts.ingest_env() | {"MQTT_CLIENT_ID": client_id}
    service = start("ingest", free_port(), env, tmp_path_factory.mktemp("ingest"))
    assert service.proc.https_port is not None
    service.wait_ready()
    try:
        yield service
    finally:
        service.terminate()
        blocking(run_accounts.forget_session(accounts, client_id))
        blocking(run_accounts.delete(run))


def config(ingest: Service, prefix: str, **overrides: object) -> sim.SimConfig:
    values: dict[str, object] = {
        "devices": 3,
        "rate": 30.0,
        "duration_s": 4.0,
        "transport": Transport.BOTH,
        "bad_share": 0.0,
        "duplicate_share": 0.0,
        "late_share": 0.0,
        "seed": 5,
        "device_prefix": prefix,
        "mqtt_url": MqttAccountsSettings().mqtt_url,
        "ingest_url": ingest.proc.https_url,
        "progress_every_s": None,
    } | overrides
    return sim.SimConfig(**values)  # type: ignore[arg-type]


async def test_readings_over_mqtts_and_https_reach_the_raw_topic(
    names: Names, prefix: str, ingest: Service
) -> None:
    setup = config(ingest, prefix)
    assert setup.mqtt_url.startswith("mqtts://") and setup.ingest_url.startswith("https://")
    counts = await sim.simulate(setup, asyncio.Event())
    assert counts.failed == 0
    assert counts.mqtt.sent > 0 and counts.http.sent > 0
    assert counts.sent == counts.mqtt.sent + counts.http.sent >= 100
    await asyncio.sleep(2)  # the MQTT readings' hand-over to Kafka
    raw = [orjson.loads(r.value) for r in await settle_and_read(names.raw)]
    ours = [r for r in raw if str(r.get("device_id", "")).startswith(f"{prefix}-")]
    assert len(ours) == counts.sent
    assert {r["device_id"] for r in ours} == {f"{prefix}-000{i}" for i in (1, 2, 3)}
    # The MQTT devices (1 and 3) came with accounts of their own, kept in the stack's folder.
    kept = MqttAccountsSettings().devices_dir
    assert (kept / f"{prefix}-0001.password").is_file()
    assert (kept / f"{prefix}-0003.password").is_file()
    assert not (kept / f"{prefix}-0002.password").exists()  # the HTTP device needs none


async def test_fifty_devices_start_within_a_few_seconds(prefix: str, ingest: Service) -> None:
    """50 MQTT devices, registered for the first time and each connected with its own account."""
    setup = config(
        ingest, f"{prefix}x", devices=50, transport=Transport.MQTT, duration_s=None, count=50
    )
    started = time.monotonic()
    counts = await sim.simulate(setup, asyncio.Event())
    took = time.monotonic() - started
    assert counts.mqtt.sent == 50 and counts.failed == 0
    assert took < 10, f"50 devices took {took:.1f} s to start and send one reading each"


async def test_a_wrong_device_password_stops_the_start_naming_the_device(
    prefix: str, ingest: Service, tmp_path: Path
) -> None:
    # A stack folder of the test's own: its kept password is the one made wrong.
    shared = MqttAccountsSettings()
    accounts = MqttAccountsSettings(
        stack_dir=tmp_path,
        mqtt_admin_password=SecretStr(shared.admin_password()),
        tls_ca_file=shared.ca_file,
    )
    device = f"{prefix}w-0001"
    try:
        await register_device(accounts, device)
        (accounts.devices_dir / f"{device}.password").write_text("not-the-password")
        setup = config(ingest, f"{prefix}w", devices=1, transport=Transport.MQTT, accounts=accounts)
        with pytest.raises(sim.SimulatorError, match=f"refused device {device}'s credentials"):
            await sim.simulate(setup, asyncio.Event())
    finally:
        await revoke_device(accounts, device)
