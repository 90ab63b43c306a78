"""The simulated device fleet as pure code: seeded readings, the pacing schedule, the tallies.

No I/O here, so the generator and the pacing are unit-tested without a broker; the senders
(MQTT, HTTP) live in `tools.simulate`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson


class Transport(StrEnum):
    MQTT = "mqtt"
    HTTP = "http"
    BOTH = "both"


class Kind(StrEnum):
    """What a sent reading is, as the pipeline will judge it."""

    VALID = "valid"  # in range, a new (device_id, timestamp)
    LATE = "late"  # valid, but stamped minutes to hours ago (a device catching up)
    BAD = "bad"  # breaks a rule or the format: the pipeline sends it to the DLQ
    DUPLICATE = "duplicate"  # an earlier reading sent again unchanged: the pipeline drops it


class Problem(StrEnum):
    """How a bad reading is bad."""

    OUT_OF_RANGE = "out_of_range"
    WRONG_TYPE = "wrong_type"
    NAN_TEXT = "nan_text"
    NOT_JSON = "not_json"
    MISSING_DEVICE_ID = "missing_device_id"


@dataclass(frozen=True, slots=True)
class City:
    name: str
    latitude: float
    longitude: float
    mean_c: float  # a mild season's daily mean temperature
    amplitude_c: float  # half the day-night swing
    humidity: float  # mean relative humidity, %


CITIES = (
    City("Berlin", 52.52, 13.40, 11.0, 5.0, 72.0),
    City("Chicago", 41.88, -87.63, 10.5, 6.0, 68.0),
    City("Sydney", -33.87, 151.21, 18.5, 4.5, 65.0),
    City("Delhi", 28.61, 77.21, 25.0, 7.0, 55.0),
)

# The limits of docs/architecture.md's default rules, used to make bad readings bad enough.
TEMPERATURE_RANGE = (-50.0, 100.0)
HUMIDITY_RANGE = (0.0, 100.0)
PRESSURE_RANGE = (800.0, 1200.0)

# A late reading is this old: a device that was offline and sends what it buffered.
LATE_MIN_S = 120.0
LATE_MAX_S = 6 * 3600.0
# How many recent readings a duplicate is picked from.
DUPLICATE_MEMORY = 2000
_DAY_S = 86_400.0
_PEAK_HOUR = 15.0  # local solar time of the warmest hour
_NAN_MARK = "__nan_literal__"


@dataclass(frozen=True, slots=True)
class FleetConfig:
    devices: int = 50
    transport: Transport = Transport.BOTH
    bad_share: float = 0.02
    duplicate_share: float = 0.01
    late_share: float = 0.01
    seed: int | None = None
    # Devices are <prefix>-0001, <prefix>-0002, ...: a test's own prefix keeps its devices (and
    # their MQTT accounts) apart from `make run`'s.
    device_prefix: str = "sim"

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError("devices must be at least 1")
        shares = (self.bad_share, self.duplicate_share, self.late_share)
        if any(not 0.0 <= s <= 1.0 for s in shares) or sum(shares) > 1.0:
            raise ValueError("bad, duplicate and late shares must be in 0..1 and sum to <= 1")


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    city: str
    latitude: float
    longitude: float
    transport: Transport
    mean_c: float
    amplitude_c: float
    humidity: float
    drift_c: float  # amplitude of a slow drift (sensor ageing, a warm spell)
    drift_period_s: float
    drift_phase: float
    pressure_offset: float  # altitude and calibration
    weather_phase: float  # shared by a city: weather systems are regional


@dataclass(frozen=True, slots=True)
class Emitted:
    """One message to send: its bytes, the device and transport that send it, what it is."""

    device_id: str  # the sending device (the MQTT topic), even when the payload lacks it
    transport: Transport
    kind: Kind
    payload: bytes
    problem: Problem | None = None


def make_devices(config: FleetConfig, rng: random.Random) -> list[Device]:
    weather_phases = {c.name: rng.uniform(0, 2 * math.pi) for c in CITIES}
    devices = []
    for index in range(config.devices):
        city = CITIES[index % len(CITIES)]
        if config.transport is Transport.BOTH:
            transport = Transport.MQTT if index % 2 == 0 else Transport.HTTP
        else:
            transport = config.transport
        devices.append(
            Device(
                device_id=f"{config.device_prefix}-{index + 1:04d}",
                city=city.name,
                # Spread over a metropolitan area, some 10 km around the centre.
                latitude=round(city.latitude + rng.gauss(0, 0.08), 5),
                longitude=round(city.longitude + rng.gauss(0, 0.1), 5),
                transport=transport,
                mean_c=city.mean_c + rng.gauss(0, 1.5),
                amplitude_c=city.amplitude_c * rng.uniform(0.8, 1.2),
                humidity=city.humidity + rng.gauss(0, 5),
                drift_c=rng.uniform(0.3, 1.5),
                drift_period_s=rng.uniform(2, 10) * _DAY_S,
                drift_phase=rng.uniform(0, 2 * math.pi),
                pressure_offset=rng.gauss(0, 2),
                weather_phase=weather_phases[city.name],
            )
        )
    return devices


def local_solar_hour(when: datetime, longitude: float) -> float:
    """Hour of the day by the sun at `longitude` (15 degrees an hour east of Greenwich)."""
    utc = when.astimezone(UTC)
    hours = utc.hour + utc.minute / 60 + utc.second / 3600 + utc.microsecond / 3.6e9
    return (hours + longitude / 15.0) % 24.0


def measure(device: Device, when: datetime, rng: random.Random) -> dict[str, float]:
    """Temperature, humidity and pressure of `device` at `when`: smooth curves plus noise."""
    epoch = when.timestamp()
    hour = local_solar_hour(when, device.longitude)
    # Warmest at 15:00 local, coldest at 03:00.
    diurnal = math.sin(2 * math.pi * (hour - _PEAK_HOUR + 6) / 24)
    drift_angle = 2 * math.pi * epoch / device.drift_period_s + device.drift_phase
    drift = device.drift_c * math.sin(drift_angle)
    temperature = device.mean_c + device.amplitude_c * diurnal + drift + rng.gauss(0, 0.25)
    # Relative humidity falls as the air warms (same water content, higher saturation).
    humidity = device.humidity - 2.5 * (temperature - device.mean_c) + rng.gauss(0, 1.5)
    weather = 8.0 * math.sin(2 * math.pi * epoch / (4.3 * _DAY_S) + device.weather_phase)
    weather += 4.0 * math.sin(2 * math.pi * epoch / (1.7 * _DAY_S) + 2 * device.weather_phase)
    pressure = 1013.25 + device.pressure_offset + weather + rng.gauss(0, 0.3)
    return {
        "temperature": round(temperature, 2),
        "humidity": round(min(100.0, max(0.0, humidity)), 1),
        "pressure": round(pressure, 2),
    }


def iso_utc(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class ReadingGenerator:
    """Seeded readings of a fleet; the same seed and clock give the same bytes.

    Call `batch(n, now)` for the next `n` messages; `forget()` the ones that could not be
    delivered so that no later duplicate re-sends a reading the pipeline never saw.
    """

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self.devices = make_devices(config, self._rng)
        self._next_device = 0
        self._message_ids = [0] * len(self.devices)
        self._last_time: list[datetime | None] = [None] * len(self.devices)
        self._recent: list[Emitted] = []
        self._recent_pos = 0

    def batch(self, n: int, now: datetime) -> list[Emitted]:
        out = [self._one(now) for _ in range(n)]
        # A duplicate re-sends a reading of an earlier batch, one already on its way.
        for emitted in out:
            if emitted.kind in (Kind.VALID, Kind.LATE):
                self._remember(emitted)
        return out

    def forget(self, emitted: Iterable[Emitted]) -> None:
        lost = {id(e) for e in emitted}
        if lost:
            self._recent = [e for e in self._recent if id(e) not in lost]
            self._recent_pos %= max(1, len(self._recent))

    def _remember(self, emitted: Emitted) -> None:
        if len(self._recent) < DUPLICATE_MEMORY:
            self._recent.append(emitted)
        else:
            self._recent[self._recent_pos] = emitted
            self._recent_pos = (self._recent_pos + 1) % DUPLICATE_MEMORY

    def _one(self, now: datetime) -> Emitted:
        cfg = self.config
        draw = self._rng.random()
        if draw < cfg.duplicate_share:
            if self._recent:
                original = self._rng.choice(self._recent)
                return Emitted(
                    original.device_id, original.transport, Kind.DUPLICATE, original.payload
                )
            draw = 1.0  # nothing sent yet to duplicate: a valid reading instead
        index = self._next_device
        self._next_device = (index + 1) % len(self.devices)
        device = self.devices[index]
        self._message_ids[index] += 1
        message_id = self._message_ids[index]
        if draw < cfg.duplicate_share + cfg.late_share:
            age = timedelta(seconds=self._rng.uniform(LATE_MIN_S, LATE_MAX_S))
            reading = self._reading(device, message_id, now - age)
            return Emitted(device.device_id, device.transport, Kind.LATE, _dumps(reading))
        when = self._next_time(index, now)
        reading = self._reading(device, message_id, when)
        if draw < cfg.duplicate_share + cfg.late_share + cfg.bad_share:
            problem = self._rng.choice(list(Problem))
            payload = self._spoil(reading, problem)
            return Emitted(device.device_id, device.transport, Kind.BAD, payload, problem)
        return Emitted(device.device_id, device.transport, Kind.VALID, _dumps(reading))

    def _next_time(self, index: int, now: datetime) -> datetime:
        # Strictly increasing per device: two readings in one tick must not share a
        # (device_id, timestamp), or the pipeline would drop the second as a duplicate.
        last = self._last_time[index]
        when = now if last is None or now > last else last + timedelta(microseconds=1)
        self._last_time[index] = when
        return when

    def _reading(self, device: Device, message_id: int, when: datetime) -> dict[str, Any]:
        return {
            "device_id": device.device_id,
            "timestamp": iso_utc(when),
            "message_id": str(message_id),
            "schema_version": 1,
            **measure(device, when, self._rng),
            "location": {"latitude": device.latitude, "longitude": device.longitude},
        }

    def _spoil(self, reading: dict[str, Any], problem: Problem) -> bytes:
        rng = self._rng
        field_name = rng.choice(("temperature", "humidity", "pressure"))
        if problem is Problem.OUT_OF_RANGE:
            low, high = {
                "temperature": TEMPERATURE_RANGE,
                "humidity": HUMIDITY_RANGE,
                "pressure": PRESSURE_RANGE,
            }[field_name]
            span = high - low
            if rng.random() < 0.5:
                value = rng.uniform(high + 0.5, high + span)
            else:
                value = rng.uniform(low - span, low - 0.5)
            reading[field_name] = round(value, 2)
            return _dumps(reading)
        if problem is Problem.WRONG_TYPE:
            reading[field_name] = rng.choice(("abc", True, False, "21,5", [21.5], {"value": 21.5}))
            return _dumps(reading)
        if problem is Problem.NAN_TEXT:
            if rng.random() < 0.5:
                # A bare NaN token, as some JSON encoders write it: not JSON at all.
                reading[field_name] = _NAN_MARK
                return _dumps(reading).replace(f'"{_NAN_MARK}"'.encode(), b"NaN")
            reading[field_name] = rng.choice(("NaN", "nan", "Infinity", "-Infinity"))
            return _dumps(reading)
        if problem is Problem.NOT_JSON:
            text = _dumps(reading)
            choice = rng.random()
            if choice < 0.4:
                return text[: rng.randint(1, len(text) - 1)]  # cut off mid-message
            if choice < 0.7:
                return f"device_id={reading['device_id']};t={reading['temperature']}".encode()
            # Binary noise that is not even UTF-8 (and holds no newline, for NDJSON).
            return b"\xff\xfe" + bytes(rng.choice(_NOISE) for _ in range(rng.randint(4, 40)))
        del reading["device_id"]
        if rng.random() < 0.3:
            reading["device_id"] = ""
        return _dumps(reading)


_NOISE = bytes(b for b in range(256) if b not in (0x0A, 0x0D))


def _dumps(reading: dict[str, Any]) -> bytes:
    return orjson.dumps(reading)


class Pacer:
    """A token bucket anchored at the start, so rounding never accumulates into drift.

    After `t` seconds, `floor(rate * t)` readings are due in total; `take(now)` returns how
    many are due and not yet taken. A stall longer than `burst` readings (default: a second's
    worth, at least 10) is forgiven rather than made up in one flood. `limit` caps the total.
    """

    def __init__(
        self, rate: float, start: float, *, burst: float | None = None, limit: int | None = None
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.start = start
        self.burst = burst if burst is not None else max(10.0, rate)
        self.limit = limit
        self.taken = 0

    @property
    def done(self) -> bool:
        return self.limit is not None and self.taken >= self.limit

    def take(self, now: float) -> int:
        due = math.floor(self.rate * (now - self.start) + 1e-9) - self.taken
        if due > self.burst:
            # Behind by more than a burst: move the anchor instead of sending the backlog.
            self.start = now - (self.taken + self.burst) / self.rate
            due = math.floor(self.burst)
        if self.limit is not None:
            due = min(due, self.limit - self.taken)
        due = max(0, due)
        self.taken += due
        return due

    def next_due(self) -> float:
        """When the next reading falls due (loop time)."""
        return self.start + (self.taken + 1) / self.rate


@dataclass(slots=True)
class TransportCounts:
    """Delivered readings of one transport; `failed` ones are in no other count."""

    valid: int = 0  # unique, accepted-by-the-rules readings, late ones included
    late: int = 0
    bad: int = 0
    duplicates: int = 0
    failed: int = 0

    @property
    def sent(self) -> int:
        return self.valid + self.bad + self.duplicates


@dataclass(slots=True)
class Counts:
    """Exactly what the simulator delivered, per transport (it is live while it runs)."""

    mqtt: TransportCounts = field(default_factory=TransportCounts)
    http: TransportCounts = field(default_factory=TransportCounts)
    elapsed_s: float = 0.0

    def record(self, emitted: Emitted, delivered: bool) -> None:
        counts = self.mqtt if emitted.transport is Transport.MQTT else self.http
        if not delivered:
            counts.failed += 1
        elif emitted.kind is Kind.BAD:
            counts.bad += 1
        elif emitted.kind is Kind.DUPLICATE:
            counts.duplicates += 1
        else:
            counts.valid += 1
            if emitted.kind is Kind.LATE:
                counts.late += 1

    def _total(self, name: str) -> int:
        return int(getattr(self.mqtt, name)) + int(getattr(self.http, name))

    @property
    def valid(self) -> int:
        return self._total("valid")

    @property
    def late(self) -> int:
        return self._total("late")

    @property
    def bad(self) -> int:
        return self._total("bad")

    @property
    def duplicates(self) -> int:
        return self._total("duplicates")

    @property
    def failed(self) -> int:
        return self._total("failed")

    @property
    def sent(self) -> int:
        return self.mqtt.sent + self.http.sent

    def as_dict(self) -> dict[str, Any]:
        per = {
            name: {
                "sent": c.sent,
                "valid": c.valid,
                "late": c.late,
                "bad": c.bad,
                "duplicates": c.duplicates,
                "failed": c.failed,
            }
            for name, c in (("mqtt", self.mqtt), ("http", self.http))
        }
        return {
            "sent": self.sent,
            "valid": self.valid,
            "late": self.late,
            "bad": self.bad,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed_s, 3),
            **per,
        }
