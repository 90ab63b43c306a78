"""The device simulator: seeded readings that keep to (or break) the rules, pacing, counting.

The rule check below is written from docs/architecture.md's default rules on purpose, not taken
from services/validate, so the simulator and the validator are checked against the contract
rather than against each other.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tools import simulate as sim
from tools.credentials import CredentialsError
from tools.fleet import (
    CITIES,
    Counts,
    Emitted,
    FleetConfig,
    Kind,
    Pacer,
    Problem,
    ReadingGenerator,
    Transport,
    local_solar_hour,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(minutes=5)
RANGES = {"temperature": (-50.0, 100.0), "humidity": (0.0, 100.0), "pressure": (800.0, 1200.0)}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def rule_breaks(payload: bytes, now: datetime = NOW) -> list[str]:
    """Every way `payload` breaks docs/architecture.md's format or default rules (empty: valid)."""
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as error:
        return [f"not JSON: {error}"]
    if not isinstance(data, dict):
        return ["not an object"]
    reasons = []
    device_id = data.get("device_id")
    if not isinstance(device_id, str) or not device_id.strip():
        reasons.append("device_id missing or empty")
    stamp = data.get("timestamp")
    if not isinstance(stamp, str):
        reasons.append("timestamp missing")
    else:
        try:
            when = datetime.fromisoformat(stamp)
        except ValueError:
            reasons.append("timestamp not ISO 8601")
        else:
            if when.tzinfo is None:
                reasons.append("timestamp without offset")
            elif not MIN_TIME <= when <= now + MAX_FUTURE:
                reasons.append("timestamp out of range")
    for name, (low, high) in RANGES.items():
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            reasons.append(f"{name} is not a number")
            continue
        try:
            number = float(value)
        except ValueError:
            reasons.append(f"{name} is not a number")
            continue
        if not math.isfinite(number):
            reasons.append(f"{name} is not finite")
        elif not low <= number <= high:
            reasons.append(f"{name} out of range")
    location = data.get("location")
    if location is not None and not (
        -90 <= location["latitude"] <= 90 and -180 <= location["longitude"] <= 180
    ):
        reasons.append("location out of range")
    return reasons


def generate(
    n: int, config: FleetConfig, *, start: datetime = NOW, step: timedelta = timedelta(0)
) -> list[Emitted]:
    gen = ReadingGenerator(config)
    out: list[Emitted] = []
    when = start
    batch = 10
    while len(out) < n:
        out.extend(gen.batch(min(batch, n - len(out)), when))
        when += step * batch
    return out


def test_the_same_seed_gives_the_same_readings_byte_for_byte():
    config = FleetConfig(seed=42)
    first = [e.payload for e in generate(2000, config, step=timedelta(seconds=1))]
    again = [e.payload for e in generate(2000, config, step=timedelta(seconds=1))]
    other = [e.payload for e in generate(2000, FleetConfig(seed=43), step=timedelta(seconds=1))]
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    ("bad", "duplicate", "late"), [(0.02, 0.01, 0.01), (0.2, 0.1, 0.05), (0.0, 0.0, 0.0)]
)
def test_bad_duplicate_and_late_shares_are_close_to_the_settings(bad, duplicate, late):
    n = 10_000
    config = FleetConfig(seed=7, bad_share=bad, duplicate_share=duplicate, late_share=late)
    kinds = Counter(e.kind for e in generate(n, config))
    # Binomial standard deviation at n=10 000 is at most 0.005; allow about three of them.
    assert kinds[Kind.BAD] / n == pytest.approx(bad, abs=0.015)
    assert kinds[Kind.DUPLICATE] / n == pytest.approx(duplicate, abs=0.015)
    assert kinds[Kind.LATE] / n == pytest.approx(late, abs=0.015)


def test_every_valid_or_late_reading_passes_the_default_rules():
    config = FleetConfig(seed=1, bad_share=0.1, duplicate_share=0.05, late_share=0.1)
    readings = generate(10_000, config, step=timedelta(seconds=30))
    now = NOW + timedelta(seconds=30) * 10_000
    good = [e for e in readings if e.kind in (Kind.VALID, Kind.LATE)]
    assert len(good) > 7000
    for emitted in good:
        assert rule_breaks(emitted.payload, now) == [], emitted.payload


def test_every_bad_reading_breaks_at_least_one_rule_and_every_kind_of_bad_occurs():
    config = FleetConfig(seed=2, bad_share=0.5)
    bad = [e for e in generate(10_000, config) if e.kind is Kind.BAD]
    for emitted in bad:
        assert rule_breaks(emitted.payload), emitted.payload
    assert {e.problem for e in bad} == set(Problem)
    payloads = b"".join(e.payload for e in bad)
    assert b"NaN" in payloads and b'"abc"' in payloads and b"true" in payloads


def test_no_payload_holds_a_newline_so_ndjson_batches_split_cleanly():
    config = FleetConfig(seed=3, bad_share=0.5)
    assert all(b"\n" not in e.payload for e in generate(5000, config))


def test_a_duplicate_resends_an_earlier_valid_reading_unchanged():
    config = FleetConfig(seed=4, bad_share=0.1, duplicate_share=0.1, late_share=0.05)
    seen: dict[bytes, Emitted] = {}
    duplicates = 0
    for emitted in generate(5000, config, step=timedelta(milliseconds=10)):
        if emitted.kind is Kind.DUPLICATE:
            original = seen[emitted.payload]
            assert original.kind in (Kind.VALID, Kind.LATE)
            assert (original.device_id, original.transport) == (
                emitted.device_id,
                emitted.transport,
            )
            duplicates += 1
        else:
            assert emitted.payload not in seen
            seen[emitted.payload] = emitted
    assert duplicates > 300


def test_valid_readings_never_share_a_device_and_timestamp_even_within_one_tick():
    # Everything generated at one instant: timestamps must still differ per device.
    config = FleetConfig(devices=5, seed=5, late_share=0.05)
    keys = []
    for emitted in generate(3000, config):
        if emitted.kind in (Kind.VALID, Kind.LATE):
            data = json.loads(emitted.payload)
            keys.append((data["device_id"], data["timestamp"]))
    assert len(keys) == len(set(keys))


def test_late_readings_are_minutes_to_hours_old_and_fresh_ones_are_not():
    config = FleetConfig(seed=6, late_share=0.2)
    for emitted in generate(3000, config):
        if emitted.kind not in (Kind.VALID, Kind.LATE):
            continue
        age = NOW - datetime.fromisoformat(json.loads(emitted.payload)["timestamp"])
        if emitted.kind is Kind.LATE:
            assert timedelta(minutes=2) <= age <= timedelta(hours=6)
        else:
            assert timedelta(0) >= age > -timedelta(seconds=1)


def test_devices_are_numbered_placed_near_real_cities_and_count_their_messages():
    config = FleetConfig(devices=12, seed=8)
    gen = ReadingGenerator(config)
    assert [d.device_id for d in gen.devices][:3] == ["sim-0001", "sim-0002", "sim-0003"]
    for device in gen.devices:
        city = next(c for c in CITIES if c.name == device.city)
        assert abs(device.latitude - city.latitude) < 1
        assert abs(device.longitude - city.longitude) < 1
    last_id: dict[str, int] = defaultdict(int)
    for emitted in generate(2000, config):
        if emitted.kind is Kind.DUPLICATE:
            continue
        text = emitted.payload.decode("utf-8", "replace")
        if emitted.kind is Kind.BAD and not text.startswith("{"):
            continue
        try:
            message_id = int(json.loads(text)["message_id"])
        except (ValueError, KeyError):
            continue  # a bad reading cut off before its message_id
        assert message_id > last_id[emitted.device_id]
        last_id[emitted.device_id] = message_id


def test_both_transports_split_the_devices_and_one_transport_takes_them_all():
    both = ReadingGenerator(FleetConfig(devices=10, seed=1)).devices
    assert Counter(d.transport for d in both) == {Transport.MQTT: 5, Transport.HTTP: 5}
    only = ReadingGenerator(FleetConfig(devices=10, transport=Transport.HTTP, seed=1)).devices
    assert {d.transport for d in only} == {Transport.HTTP}


def _valid_series(days: float, devices: int = 8) -> list[tuple[float, dict[str, Any]]]:
    """(local solar hour, reading) for the valid readings of a fleet over `days`."""
    config = FleetConfig(devices=devices, seed=9, bad_share=0, duplicate_share=0, late_share=0)
    n = 12_000
    readings = generate(n, config, step=timedelta(days=days) / n)
    series = []
    for emitted in readings:
        data = json.loads(emitted.payload)
        when = datetime.fromisoformat(data["timestamp"])
        series.append((local_solar_hour(when, data["location"]["longitude"]), data))
    return series


def test_afternoons_are_warmer_than_nights_on_average():
    series = _valid_series(days=3)
    afternoon = [d["temperature"] for hour, d in series if 13 <= hour < 17]
    night = [d["temperature"] for hour, d in series if 1 <= hour < 5]
    assert len(afternoon) > 500 and len(night) > 500
    assert statistics.mean(afternoon) > statistics.mean(night) + 5


def test_each_device_is_warmest_in_the_afternoon_of_its_own_time_zone():
    by_device: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for hour, data in _valid_series(days=3):
        part = "afternoon" if 13 <= hour < 17 else "night" if 1 <= hour < 5 else None
        if part:
            by_device[data["device_id"]][part].append(data["temperature"])
    assert len(by_device) == 8
    for parts in by_device.values():
        assert statistics.mean(parts["afternoon"]) > statistics.mean(parts["night"])


def test_humidity_falls_as_temperature_rises_and_pressure_stays_near_sea_level():
    series = _valid_series(days=3)
    per_device: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, data in series:
        per_device[data["device_id"]].append((data["temperature"], data["humidity"]))
        assert 0 <= data["humidity"] <= 100
        assert 975 <= data["pressure"] <= 1050
    for pairs in per_device.values():
        temps, hums = zip(*pairs, strict=True)
        assert statistics.correlation(temps, hums) < -0.5


# --------------------------------------------------------------------------- pacing


def test_pacing_sends_rate_times_elapsed_without_drift_over_an_hour_of_jittery_ticks():
    rng = random.Random(0)
    pacer = Pacer(rate=100.0, start=1000.0)
    now = 1000.0
    while now < 1000.0 + 3600:
        now += rng.uniform(0.01, 0.09)  # the loop never wakes exactly on time
        pacer.take(now)
    assert pacer.taken == math.floor(100.0 * (now - 1000.0))


def test_pacing_with_a_fractional_rate_sends_whole_readings_on_schedule():
    pacer = Pacer(rate=0.5, start=0.0)
    assert pacer.take(1.9) == 0
    assert pacer.next_due() == pytest.approx(2.0)
    assert pacer.take(2.0) == 1
    assert pacer.take(7.0) == 2
    assert pacer.taken == 3


def test_pacing_forgives_a_stall_longer_than_a_burst_instead_of_flooding():
    pacer = Pacer(rate=100.0, start=0.0, burst=50)
    assert pacer.take(1.0) == 50  # 100 were due: only a burst goes out
    assert pacer.take(1.5) == 50  # and from then on the schedule is the usual one
    assert pacer.take(2.0) == 50


def test_pacing_stops_at_the_limit():
    pacer = Pacer(rate=1000.0, start=0.0, limit=25)
    assert pacer.take(10.0) == 25
    assert pacer.done
    assert pacer.take(20.0) == 0


def test_a_duration_bounds_the_total_at_rate_times_duration_and_count_can_lower_it():
    assert sim.SimConfig(rate=100, duration_s=2.5).total() == 250
    assert sim.SimConfig(rate=100, duration_s=2.5, count=30).total() == 30
    assert sim.SimConfig(rate=100).total() is None


# --------------------------------------------------------------------------- counting


def test_counts_put_late_readings_among_the_valid_and_failed_ones_in_no_other_count():
    counts = Counts()
    mqtt, http = Transport.MQTT, Transport.HTTP
    counts.record(Emitted("d", mqtt, Kind.VALID, b"{}"), delivered=True)
    counts.record(Emitted("d", mqtt, Kind.LATE, b"{}"), delivered=True)
    counts.record(Emitted("d", http, Kind.BAD, b"x", Problem.NOT_JSON), delivered=True)
    counts.record(Emitted("d", http, Kind.DUPLICATE, b"{}"), delivered=True)
    counts.record(Emitted("d", http, Kind.VALID, b"{}"), delivered=False)
    assert (counts.mqtt.valid, counts.mqtt.late, counts.mqtt.sent) == (2, 1, 2)
    assert (counts.http.bad, counts.http.duplicates, counts.http.failed) == (1, 1, 1)
    assert (counts.valid, counts.sent, counts.failed) == (2, 4, 1)
    assert counts.as_dict()["http"]["sent"] == 2


def test_a_reading_that_could_not_be_delivered_is_never_sent_again_as_a_duplicate():
    gen = ReadingGenerator(FleetConfig(devices=3, seed=1, duplicate_share=0.5))
    first = gen.batch(20, NOW)
    gen.forget(first)
    later = gen.batch(200, NOW + timedelta(seconds=1))
    lost = {e.payload for e in first}
    assert not any(e.kind is Kind.DUPLICATE and e.payload in lost for e in later)


# --------------------------------------------------------------------------- simulate()


class FakeIngest:
    """POST /v1/readings answered in memory: the NDJSON lines it received, or a failure."""

    def __init__(self, status: int = 202) -> None:
        self.status = status
        self.lines: list[bytes] = []
        self.requests = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/readings"
        self.requests += 1
        if self.status != 202:
            return httpx.Response(self.status, json={"error": "unavailable"})
        lines = [line for line in request.content.split(b"\n") if line]
        self.lines.extend(lines)
        return httpx.Response(202, json={"accepted": len(lines), "rejected": []})


def _http_config(**overrides: Any) -> sim.SimConfig:
    base: dict[str, Any] = {
        "devices": 10,
        "rate": 20_000.0,
        "transport": Transport.HTTP,
        "seed": 11,
        "bad_share": 0.1,
        "duplicate_share": 0.05,
        "late_share": 0.05,
        "ingest_url": "http://ingest.test",
        "tick_s": 0.005,
        "progress_every_s": None,
    }
    base.update(overrides)
    return sim.SimConfig(**base)


async def test_simulate_sends_exactly_count_readings_and_counts_what_ingest_received():
    ingest = FakeIngest()
    counts = await sim.simulate(
        _http_config(count=1000),
        asyncio.Event(),
        http_transport=httpx.MockTransport(ingest.handler),
    )
    assert len(ingest.lines) == counts.sent == 1000
    assert ingest.requests > 1  # batched per tick, not one request for everything
    assert sum(1 for line in ingest.lines if rule_breaks(line, datetime.now(UTC))) == counts.bad
    assert len(ingest.lines) - len(set(ingest.lines)) == counts.duplicates
    assert counts.valid == 1000 - counts.bad - counts.duplicates
    assert counts.mqtt.sent == 0 and counts.failed == 0


def _fast_retries(monkeypatch: pytest.MonkeyPatch, attempts: int = 2) -> None:
    monkeypatch.setattr(sim, "HTTP_ATTEMPTS", attempts)
    monkeypatch.setattr(sim, "HTTP_RETRY_INITIAL_S", 0.001)
    monkeypatch.setattr(sim, "HTTP_RETRY_MAX_WAIT_S", 0.002)


async def test_simulate_counts_batches_ingest_refused_as_failed_not_sent(monkeypatch):
    _fast_retries(monkeypatch)
    ingest = FakeIngest(status=503)
    counts = await sim.simulate(
        _http_config(count=300),
        asyncio.Event(),
        http_transport=httpx.MockTransport(ingest.handler),
    )
    assert counts.sent == 0
    assert counts.failed == 300
    assert counts.duplicates == 0  # nothing delivered, so nothing to duplicate


async def test_simulate_runs_until_stopped_when_unbounded():
    ingest = FakeIngest()
    stop = asyncio.Event()
    task = asyncio.create_task(
        sim.simulate(
            _http_config(rate=500.0, tick_s=0.02),
            stop,
            http_transport=httpx.MockTransport(ingest.handler),
        )
    )
    await asyncio.sleep(0.3)
    assert not task.done()
    stop.set()
    counts = await asyncio.wait_for(task, timeout=2)
    assert 50 <= counts.sent <= 250
    assert counts.sent == len(ingest.lines)


def test_the_command_line_reads_flags_into_the_config():
    config = sim.parse_args(
        ["--devices", "7", "--rate", "12.5", "--count", "99", "--transport", "mqtt", "--seed", "3"]
    )
    assert (config.devices, config.rate, config.count, config.seed) == (7, 12.5, 99, 3)
    assert config.transport is Transport.MQTT
    assert config.duration_s is None
    with pytest.raises(SystemExit):
        sim.parse_args(["--bad-share", "0.9", "--late-share", "0.5"])


async def _post_answered(
    monkeypatch: pytest.MonkeyPatch, answers: list[int | Exception]
) -> tuple[bool, int]:
    """What `HttpSender._post` makes of ingest answering `answers` in turn (the last one
    again when they run out): delivered or not, and how many requests it sent."""
    _fast_retries(monkeypatch, attempts=4)
    sent: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers[min(len(sent), len(answers) - 1)]
        sent.append(1)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, json={})

    sender = sim.HttpSender("http://ingest.test", asyncio.Event(), httpx.MockTransport(handler))
    try:
        delivered = await sender._post(b"{}\n")
    finally:
        await sender.close()
    return delivered, len(sent)


async def test_an_http_batch_is_sent_again_after_5xx_429_and_a_lost_connection(monkeypatch):
    lost = httpx.ConnectError("connection refused")
    assert await _post_answered(monkeypatch, [503, 429, lost, 202]) == (True, 4)


async def test_an_http_batch_ingest_keeps_failing_is_given_up_after_its_attempts(monkeypatch):
    assert await _post_answered(monkeypatch, [500]) == (False, 4)


async def test_an_http_batch_refused_with_a_4xx_is_not_sent_again(monkeypatch):
    assert await _post_answered(monkeypatch, [404, 202]) == (False, 1)


# --------------------------------------------------------------------------- TLS and credentials


def _jwt(lifetime_s: int, mark: str = "") -> str:
    """A token with iat and exp claims (unsigned: the simulator only schedules by them)."""
    claims = base64.urlsafe_b64encode(
        json.dumps({"iat": 1000, "exp": 1000 + lifetime_s, "mark": mark}).encode()
    )
    return f"e30.{claims.decode().rstrip('=')}.sig"


class FakeIdp:
    """Hands out tokens of `lifetime_s`, numbered, and counts the fetches."""

    def __init__(self, lifetime_s: int = 300) -> None:
        self.lifetime_s = lifetime_s
        self.issued: list[str] = []

    async def fetch(self) -> str:
        token = _jwt(self.lifetime_s, str(len(self.issued)))
        self.issued.append(token)
        return token


def test_a_tokens_lifetime_is_read_from_its_claims():
    assert sim.token_lifetime_s(_jwt(300)) == 300
    assert sim.token_lifetime_s("not-a-jwt") == sim.TOKEN_FALLBACK_LIFETIME_S
    assert sim.token_lifetime_s("a.!!!.c") == sim.TOKEN_FALLBACK_LIFETIME_S


async def test_the_token_is_fetched_again_at_80_percent_of_its_lifetime():
    idp, now = FakeIdp(lifetime_s=300), [0.0]
    token = sim.BearerToken(idp.fetch, clock=lambda: now[0])
    first = await token.get()
    now[0] = 239.9  # just before 80 % of 300 s
    assert await token.get() == first
    assert len(idp.issued) == 1
    now[0] = 240.0
    second = await token.get()
    assert second != first and len(idp.issued) == 2
    now[0] = 240.0 + 239.0
    assert await token.get() == second  # the next renewal counts from the second fetch


async def test_concurrent_requests_share_one_fetch_and_a_rejected_token_is_replaced():
    idp = FakeIdp()
    token = sim.BearerToken(idp.fetch, clock=lambda: 0.0)
    tokens = await asyncio.gather(*(token.get() for _ in range(10)))
    assert len(set(tokens)) == 1 and len(idp.issued) == 1
    token.reject("some older token")  # not the current one: kept
    assert await token.get() == tokens[0]
    token.reject(tokens[0])
    assert await token.get() != tokens[0]


class FakeHttpsIngest(FakeIngest):
    """Takes a batch only with a bearer token it has not revoked; 401 otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.revoked: set[str] = set()
        self.seen: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        self.seen.append(token)
        if scheme != "Bearer" or not token or token in self.revoked:
            return httpx.Response(401, json={"error": "invalid_token"})
        return super().handler(request)


async def test_over_https_every_batch_carries_the_fleet_token_and_a_401_gets_a_new_one():
    ingest, idp = FakeHttpsIngest(), FakeIdp()
    config = _http_config(count=200, ingest_url="https://ingest.test")
    counts = await sim.simulate(
        config,
        asyncio.Event(),
        http_transport=httpx.MockTransport(ingest.handler),
        fetch_token=idp.fetch,
    )
    assert counts.sent == len(ingest.lines) == 200
    assert set(ingest.seen) == {idp.issued[0]} and len(idp.issued) == 1
    # ingest stops taking that token (it expired early, keys rotated): one 401, a new token,
    # the same batch sent again and taken.
    ingest.revoked.add(idp.issued[0])
    sender = sim.HttpSender(
        "https://ingest.test",
        asyncio.Event(),
        httpx.MockTransport(ingest.handler),
        sim.BearerToken(idp.fetch),
    )
    try:
        await sender.token.get()  # type: ignore[union-attr]
        ingest.revoked.add(idp.issued[-1])
        assert await sender._post(b"{}\n") is True
    finally:
        await sender.close()
    assert ingest.seen[-2:] == [idp.issued[-2], idp.issued[-1]]


async def test_a_token_ingest_keeps_refusing_is_not_delivered_after_one_renewal(monkeypatch):
    _fast_retries(monkeypatch, attempts=4)
    idp = FakeIdp()
    refused: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        refused.append(request.headers["authorization"])
        return httpx.Response(401, json={"error": "invalid_token"})

    sender = sim.HttpSender(
        "https://ingest.test",
        asyncio.Event(),
        httpx.MockTransport(handler),
        sim.BearerToken(idp.fetch),
    )
    try:
        assert await sender._post(b"{}\n") is False
    finally:
        await sender.close()
    assert len(refused) == 2 and len(idp.issued) == 2  # a 401 is not retried beyond that


async def test_no_token_from_the_identity_provider_stops_the_start_saying_so():
    async def refuse() -> str:
        raise CredentialsError("the identity provider refused a token: unauthorized_client")

    with pytest.raises(sim.SimulatorError, match="fleet's access token.*unauthorized_client"):
        await sim.simulate(
            _http_config(count=10, ingest_url="https://ingest.test"),
            asyncio.Event(),
            http_transport=httpx.MockTransport(FakeIngest().handler),
            fetch_token=refuse,
        )


def test_secure_by_default_and_sim_plaintext_gives_the_old_addresses(monkeypatch):
    for name in ("SIM_PLAINTEXT", "INGEST_URL", "MQTT_URL", "MQTT_TLS_PORT", "HTTPS_PORT"):
        monkeypatch.delenv(name, raising=False)
    config = sim.SimConfig()
    assert (config.mqtt_url, config.ingest_url) == (
        "mqtts://127.0.0.1:8883",
        "https://127.0.0.1:8443",
    )
    assert config.plaintext() == []
    monkeypatch.setenv("SIM_PLAINTEXT", "true")
    config = sim.SimConfig()
    assert (config.mqtt_url, config.ingest_url) == (
        "mqtt://127.0.0.1:1883",
        "http://127.0.0.1:8080",
    )
    assert config.plaintext() == ["mqtt://127.0.0.1:1883", "http://127.0.0.1:8080"]


def test_a_tls_mqtt_connection_without_credentials_is_refused_at_once():
    with pytest.raises(sim.SimulatorError, match="credentials"):
        sim.MqttSender("mqtts://127.0.0.1:8883")
    with pytest.raises(sim.SimulatorError, match="mqtts://host:port"):
        sim.MqttSender("http://127.0.0.1:8883")


async def test_plaintext_warns_once_naming_the_urls(capsys):
    await sim.simulate(
        _http_config(count=10),
        asyncio.Event(),
        http_transport=httpx.MockTransport(FakeIngest().handler),
    )
    out = capsys.readouterr().out
    assert "plaintext" in out and "http://ingest.test" in out


class FakeConnection:
    """Stands in for one device's MqttSender: records what it was given, fails its `bad` ids."""

    def __init__(self, bad: frozenset[str] = frozenset()) -> None:
        self.got: list[list[str]] = []
        self.bad = bad

    async def send(self, batch: list[Emitted]) -> list[bool]:
        self.got.append([e.device_id for e in batch])
        return [e.device_id not in self.bad for e in batch]

    async def close(self) -> None:
        pass


async def test_each_mqtt_reading_goes_over_its_own_devices_connection_in_order():
    a, b = FakeConnection(), FakeConnection(bad=frozenset({"d-b"}))
    fleet = sim.MqttFleet({"d-a": a, "d-b": b})  # type: ignore[dict-item]
    batch = [Emitted(device, Transport.MQTT, Kind.VALID, b"{}") for device in ("d-a", "d-b", "d-a")]
    assert await fleet.send(batch) == [True, False, True]
    assert (a.got, b.got) == ([["d-a", "d-a"]], [["d-b"]])
    shared = FakeConnection()
    plain = sim.MqttFleet(dict.fromkeys(("d-a", "d-b"), shared))  # type: ignore[arg-type]
    assert len(plain.connections) == 1
    assert await plain.send(batch) == [True, True, True]
    assert shared.got == [["d-a", "d-b", "d-a"]]  # one connection: one publish round
