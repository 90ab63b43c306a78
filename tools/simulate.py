"""`python -m tools.simulate`: a fleet of simulated devices sending readings over MQTT and HTTP.

The readings come from the seeded generator in `tools.fleet`; this module paces them, sends
them (MQTT v5 QoS 1 to sensors/<device_id>/readings, NDJSON batches to POST /v1/readings) and
counts exactly what was delivered. `simulate()` is the entry point for other code (tools.run,
end-to-end tests); `main()` is the command line.

By default both transports are secure: each MQTT device is registered once at start
(tools.mqtt_accounts, its password kept in the stack's secrets folder) and connects with its
own account to Mosquitto's TLS listener (mqtts://, one connection per device); the HTTP half
posts to ingest's HTTPS port with the fleet's bearer token (tools.credentials), fetched again
before it expires. The scheme of each URL decides: mqtt:// and http:// are the old plaintext
ways (one anonymous MQTT connection, no token), which SIM_PLAINTEXT=true picks as defaults for
development, with a warning.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import logging
import math
import os
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import httpx
import orjson
import structlog
from aiomqtt.exceptions import MqttConnectError

from libs.common.cli import argument_parser
from libs.common.errors import PipelineError, TransientError
from libs.common.logs import configure_logging
from libs.common.retry import retrying
from libs.common.tls import client_context
from services.ingest.settings import IngestSettings
from tools.credentials import CredentialsSettings, access_token
from tools.fleet import Counts, Emitted, FleetConfig, Pacer, ReadingGenerator, Transport
from tools.mqtt_accounts import DeviceCredentials, MqttAccountsSettings, register_device

log = structlog.get_logger("simulate")

# Lines per HTTP request at most; far below ingest's 10 MiB body limit.
HTTP_MAX_BATCH = 5000
# A batch is sent at most this often (the first time and the retries) while ingest is away,
# busy or failing; the waits double from the first to the longest, with jitter.
HTTP_ATTEMPTS = 4
HTTP_RETRY_INITIAL_S = 0.2
HTTP_RETRY_MAX_WAIT_S = 1.0
# A lost MQTT connection is tried again at most this often while readings keep falling due.
MQTT_RECONNECT_EVERY_S = 2.0
# At start, devices registered (each an admin connection to the broker) and device connections
# opened at the same time, at most.
REGISTER_CONCURRENCY = 8
CONNECT_CONCURRENCY = 16
# The fleet's token is fetched again once this share of its lifetime (exp - iat) has passed,
# and at once when ingest answers 401 to it.
TOKEN_SCOPE = "readings:write"
TOKEN_RENEW_SHARE = 0.8
# The lifetime assumed for a token whose claims cannot be read (ingest still checks it).
TOKEN_FALLBACK_LIFETIME_S = 60.0


class SimulatorSettings(IngestSettings):
    """Where the simulator sends. Default: each device's account on Mosquitto's TLS listener
    (MQTT_TLS_HOST, MQTT_TLS_PORT of tools.mqtt_accounts) and ingest's HTTPS_PORT with the
    fleet's token; SIM_PLAINTEXT=true: ingest's own MQTT_URL and its plain HTTP_PORT."""

    service_name: str = "simulate"
    # With SIM_PLAINTEXT=true only: the anonymous plaintext listener (ingest's own default is
    # the TLS one, which takes accounts only); MQTT_URL still sets it.
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    # None: ingest's address from its own HTTP_HOST and HTTPS_PORT (HTTP_PORT when plaintext).
    ingest_url: str | None = None
    # Development only: anonymous plaintext MQTT and HTTP without a token, as before TLS.
    sim_plaintext: bool = False

    def ingest_base_url(self) -> str:
        if self.ingest_url:
            return self.ingest_url
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "", "::") else self.http_host
        if self.sim_plaintext:
            return f"http://{host}:{self.http_port}"
        return f"https://{host}:{self.https_port}"

    def simulator_mqtt_url(self) -> str:
        return self.mqtt_url if self.sim_plaintext else MqttAccountsSettings().mqtt_url


def _env_mqtt_url() -> str:
    return SimulatorSettings().simulator_mqtt_url()


def _env_ingest_url() -> str:
    return SimulatorSettings().ingest_base_url()


def _env_ca_file() -> Path | None:
    return SimulatorSettings().tls_ca_file


@dataclass(frozen=True, slots=True)
class SimConfig:
    devices: int = 50
    rate: float = 100.0  # readings per second, all devices together
    duration_s: float | None = None  # None with count None: until stopped
    count: int | None = None
    transport: Transport = Transport.BOTH
    bad_share: float = 0.02
    duplicate_share: float = 0.01
    late_share: float = 0.01
    seed: int | None = None
    mqtt_url: str = field(default_factory=_env_mqtt_url)
    ingest_url: str = field(default_factory=_env_ingest_url)
    tick_s: float = 0.05  # readings due within a tick go out together (one HTTP request)
    progress_every_s: float | None = 5.0  # None: no progress lines (the caller shows counts)
    device_prefix: str = "sim"
    # The CA an https INGEST_URL must verify against (None: the local stack's); an mqtts
    # connection trusts the CA its device's credentials name.
    ca_file: Path | None = field(default_factory=_env_ca_file)
    # Who registers the mqtts devices and who gives the fleet's token (None: from the
    # environment, as tools.credentials reads them).
    accounts: MqttAccountsSettings | None = None
    idp: CredentialsSettings | None = None

    def fleet(self) -> FleetConfig:
        return FleetConfig(
            devices=self.devices,
            transport=self.transport,
            bad_share=self.bad_share,
            duplicate_share=self.duplicate_share,
            late_share=self.late_share,
            seed=self.seed,
            device_prefix=self.device_prefix,
        )

    def plaintext(self) -> list[str]:
        """The URLs that are not secure (mqtt://, http://)."""
        return [
            url
            for url, scheme in ((self.mqtt_url, "mqtt"), (self.ingest_url, "http"))
            if urlsplit(url).scheme == scheme
        ]

    def total(self) -> int | None:
        """How many readings in all, when the run is bounded."""
        bounds = [self.count] if self.count is not None else []
        if self.duration_s is not None:
            bounds.append(math.floor(self.rate * self.duration_s + 1e-9))
        return min(bounds) if bounds else None


class SimulatorError(Exception):
    """The simulator cannot start: say what is missing."""


class IngestBusy(TransientError):
    """Ingest did not take a batch now (unreachable, 5xx, 429); sending it again may work."""


class IngestRefused(PipelineError):
    """Ingest refused a batch for good (a 4xx other than 429): the request itself is wrong."""


def _quiet_logger(name: str) -> logging.Logger:
    # paho and aiomqtt warn through stdlib logging; with no handler configured that lands on
    # stderr and garbles a live view. Failures reach us as exceptions anyway.
    logger = logging.getLogger(name)
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


class MqttSender:
    """One MQTT v5 connection publishing QoS 1: a device's own over TLS (mqtts://, with its
    credentials), or one anonymous plaintext connection shared by the MQTT devices (mqtt://)."""

    def __init__(
        self,
        url: str,
        credentials: DeviceCredentials | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise SimulatorError(f"MQTT URL must look like mqtts://host:port, got {url!r}")
        self.tls = parts.scheme == "mqtts"
        if self.tls and (credentials is None or tls_context is None):
            raise SimulatorError(f"{url}: a TLS connection needs a device's credentials and CA")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (8883 if self.tls else 1883)
        self.credentials = credentials if self.tls else None
        self._tls_context = tls_context if self.tls else None
        self._client: aiomqtt.Client | None = None
        self._last_attempt = -math.inf

    @property
    def who(self) -> str:
        return f"device {self.credentials.device_id}" if self.credentials else "anonymous"

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_attempt = loop.time()
        own = self.credentials
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=own.username if own else None,
            password=own.password if own else None,
            tls_context=self._tls_context,
            protocol=aiomqtt.ProtocolVersion.V5,
            identifier=f"{own.device_id if own else 'simulator'}-{os.getpid()}",
            logger=_quiet_logger("tools.simulate.mqtt"),
            timeout=10,
        )
        # Many publishes wait for their PUBACK at once by design; aiomqtt warns above 10.
        client.pending_calls_threshold = 1_000_000
        await client.__aenter__()
        self._client = client

    async def send(self, batch: Sequence[Emitted]) -> list[bool]:
        if not batch:
            return []
        if self._client is None:
            if asyncio.get_running_loop().time() - self._last_attempt < MQTT_RECONNECT_EVERY_S:
                return [False] * len(batch)
            try:
                await self.connect()
                log.info("MQTT reconnected", url=self.url, client=self.who)
            except aiomqtt.MqttError as error:
                log.warning(
                    "MQTT broker unreachable", url=self.url, client=self.who, error=str(error)
                )
                return [False] * len(batch)
        client = self._client
        assert client is not None
        results = await asyncio.gather(
            *(client.publish(f"sensors/{e.device_id}/readings", e.payload, qos=1) for e in batch),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            log.warning(
                "MQTT publish failed", client=self.who, failed=len(errors), error=str(errors[0])
            )
            await self.close()
        return [not isinstance(r, BaseException) for r in results]

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


class MqttFleet:
    """The MQTT devices' connections: device id -> its sender (all the same one when plaintext)."""

    def __init__(self, senders: dict[str, MqttSender]) -> None:
        self.senders = senders

    @property
    def connections(self) -> list[MqttSender]:
        return list({id(s): s for s in self.senders.values()}.values())

    async def connect_all(self) -> None:
        """Open every connection, a bounded number at once; a refusal is a SimulatorError."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(sender: MqttSender) -> None:
            async with gate:
                await sender.connect()

        senders = self.connections
        results = await asyncio.gather(*(one(s) for s in senders), return_exceptions=True)
        for sender, result in zip(senders, results, strict=True):
            if isinstance(result, MqttConnectError) and sender.credentials is not None:
                raise SimulatorError(
                    f"the MQTT broker at {sender.url} refused {sender.who}'s credentials "
                    f"({result}): the password kept for it no longer matches its account; "
                    f"`python -m tools.credentials revoke {sender.credentials.device_id}` "
                    "deletes both, and the next start registers it anew"
                ) from result
            if isinstance(result, aiomqtt.MqttError):
                raise SimulatorError(
                    f"cannot connect to the MQTT broker at {sender.url} as {sender.who}: {result}"
                ) from result
            if isinstance(result, BaseException):
                raise result

    async def send(self, batch: Sequence[Emitted]) -> list[bool]:
        by_sender: dict[int, list[int]] = {}
        for index, emitted in enumerate(batch):
            by_sender.setdefault(id(self.senders[emitted.device_id]), []).append(index)
        groups = list(by_sender.values())
        answers = await asyncio.gather(
            *(self.senders[batch[g[0]].device_id].send([batch[i] for i in g]) for g in groups)
        )
        results = [False] * len(batch)
        for group, answer in zip(groups, answers, strict=True):
            for index, ok in zip(group, answer, strict=True):
                results[index] = ok
        return results

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.connections))


async def register_all(
    settings: MqttAccountsSettings, device_ids: Sequence[str]
) -> list[DeviceCredentials]:
    """Each device's MQTT account (registered if new), a bounded number at once."""
    gate = asyncio.Semaphore(REGISTER_CONCURRENCY)

    async def one(device_id: str) -> DeviceCredentials:
        async with gate:
            return await register_device(settings, device_id)

    results = await asyncio.gather(*(one(d) for d in device_ids), return_exceptions=True)
    for device_id, result in zip(device_ids, results, strict=True):
        if isinstance(result, PipelineError):
            raise SimulatorError(f"cannot register device {device_id}'s MQTT account: {result}")
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, DeviceCredentials)]


async def open_mqtt(config: SimConfig, device_ids: Sequence[str]) -> MqttFleet:
    """Connected senders for the MQTT devices: their own accounts over mqtts://, or one
    anonymous connection over mqtt://."""
    if urlsplit(config.mqtt_url).scheme != "mqtts":
        shared = MqttSender(config.mqtt_url)
        fleet = MqttFleet(dict.fromkeys(device_ids, shared))
    else:
        accounts = config.accounts or MqttAccountsSettings()
        credentials = await register_all(accounts, device_ids)
        contexts: dict[str, ssl.SSLContext] = {}
        try:
            for own in credentials:
                if own.ca_file not in contexts:
                    contexts[own.ca_file] = client_context(Path(own.ca_file))
        except PipelineError as error:
            raise SimulatorError(str(error)) from error
        fleet = MqttFleet(
            {
                own.device_id: MqttSender(config.mqtt_url, own, contexts[own.ca_file])
                for own in credentials
            }
        )
    try:
        await fleet.connect_all()
    except BaseException:
        await fleet.close()
        raise
    return fleet


def token_lifetime_s(token: str) -> float:
    """A JWT's exp - iat, read without checking its signature: only to know when to fetch the
    next one (ingest checks the token)."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return max(0.0, float(claims["exp"]) - float(claims["iat"]))
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):
        return TOKEN_FALLBACK_LIFETIME_S


class BearerToken:
    """The fleet's access token, fetched when first needed, again once TOKEN_RENEW_SHARE of its
    lifetime has passed, and again after ingest refused it (`reject`)."""

    def __init__(
        self, fetch: Callable[[], Awaitable[str]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self.token: str | None = None
        self._renew_at = -math.inf
        self._lock = asyncio.Lock()  # concurrent requests wait for one fetch

    async def get(self) -> str:
        async with self._lock:
            if self.token is None or self._clock() >= self._renew_at:
                asked_at = self._clock()
                token = await self._fetch()
                self.token = token
                self._renew_at = asked_at + TOKEN_RENEW_SHARE * token_lifetime_s(token)
            return self.token

    def reject(self, token: str) -> None:
        if self.token == token:
            self.token = None


def fleet_token_fetch(settings: CredentialsSettings | None) -> Callable[[], Awaitable[str]]:
    """The fleet's token from the identity provider (tools.credentials, in a thread)."""

    async def fetch() -> str:
        return await asyncio.to_thread(access_token, settings or CredentialsSettings(), TOKEN_SCOPE)

    return fetch


class HttpSender:
    """NDJSON batches to ingest's POST /v1/readings; a batch is delivered whole or not at all.
    With a `token`, each request carries it as a bearer token."""

    def __init__(
        self,
        base_url: str,
        stop: asyncio.Event,
        transport: httpx.AsyncBaseTransport | None = None,
        token: BearerToken | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._stop = stop
        self.token = token
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=10.0, transport=transport, verify=verify
        )

    async def send(self, batch: Sequence[Emitted]) -> list[bool]:
        results: list[bool] = []
        for start in range(0, len(batch), HTTP_MAX_BATCH):
            chunk = batch[start : start + HTTP_MAX_BATCH]
            ok = await self._post(b"\n".join(e.payload for e in chunk) + b"\n")
            results.extend([ok] * len(chunk))
        return results

    async def _post(self, body: bytes) -> bool:
        try:
            async for attempt in retrying(
                attempts=HTTP_ATTEMPTS,
                initial_s=HTTP_RETRY_INITIAL_S,
                max_wait_s=HTTP_RETRY_MAX_WAIT_S,
                name="http_post",
                stop=self._stop,
            ):
                with attempt:
                    await self._post_once(body)
        except PipelineError as error:  # IngestBusy, IngestRefused, Stopped, the token's
            log.warning(
                "HTTP batch not delivered", url=f"{self.base_url}/v1/readings", error=str(error)
            )
            return False
        return True

    async def _post_once(self, body: bytes) -> None:
        """One POST (two when ingest refuses a token it had: with a new one); IngestBusy when
        sending again later may work, IngestRefused when not."""
        for renewed in (False, True):
            headers = {"content-type": "application/x-ndjson"}
            token = await self.token.get() if self.token is not None else None
            if token is not None:
                headers["authorization"] = f"Bearer {token}"
            try:
                response = await self._client.post("/v1/readings", content=body, headers=headers)
            except httpx.TransportError as error:
                raise IngestBusy(repr(error)) from error
            if response.status_code == 401 and token is not None and not renewed:
                assert self.token is not None
                self.token.reject(token)
                continue
            break
        # 202: taken (bad lines went to the DLQ); 400: every line was bad, which is the DLQ's
        # business too. Both mean ingest has the batch.
        if response.status_code in (202, 400):
            return
        problem = f"HTTP {response.status_code}: {response.text[:200]}"
        if response.status_code >= 500 or response.status_code == 429:
            raise IngestBusy(problem)
        raise IngestRefused(problem)  # our request is wrong; sending it again will not help

    async def close(self) -> None:
        await self._client.aclose()


async def _wait(stop: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, timeout))


async def simulate(
    config: SimConfig,
    stop: asyncio.Event,
    counts: Counts | None = None,
    *,
    http_transport: httpx.AsyncBaseTransport | None = None,
    fetch_token: Callable[[], Awaitable[str]] | None = None,
) -> Counts:
    """Send readings until `stop` is set or the duration or count is reached.

    `counts` (a fresh one when None) is updated as batches are delivered, so a caller can show
    it live; the same object is returned. `http_transport` replaces the network and
    `fetch_token` the identity provider (tests).
    """
    counts = counts if counts is not None else Counts()
    generator = ReadingGenerator(config.fleet())
    transports = {d.transport for d in generator.devices}
    mqtt_ids = [d.device_id for d in generator.devices if d.transport is Transport.MQTT]
    uses_http = Transport.HTTP in transports
    used = ([config.mqtt_url] if mqtt_ids else []) + ([config.ingest_url] if uses_http else [])
    plaintext = [url for url in config.plaintext() if url in used]
    if plaintext:
        log.warning(
            "plaintext: no TLS and no credentials (SIM_PLAINTEXT is for development only)",
            urls=plaintext,
        )
    mqtt: MqttFleet | None = None
    http = _http_sender(config, stop, http_transport, fetch_token) if uses_http else None
    try:
        if http is not None and http.token is not None:
            await _first_token(http.token)
        if mqtt_ids:
            mqtt = await open_mqtt(config, mqtt_ids)
        await _run(config, stop, counts, generator, mqtt, http)
    finally:
        if mqtt is not None:
            await mqtt.close()
        if http is not None:
            await http.close()
    return counts


def _http_sender(
    config: SimConfig,
    stop: asyncio.Event,
    transport: httpx.AsyncBaseTransport | None,
    fetch_token: Callable[[], Awaitable[str]] | None,
) -> HttpSender:
    """Over https://: the fleet's token, and only the configured CA trusted."""
    if urlsplit(config.ingest_url).scheme != "https":
        return HttpSender(config.ingest_url, stop, transport)
    verify: ssl.SSLContext | bool = True
    if transport is None:
        try:
            verify = client_context(config.ca_file)
        except PipelineError as error:
            raise SimulatorError(str(error)) from error
    token = BearerToken(fetch_token or fleet_token_fetch(config.idp))
    return HttpSender(config.ingest_url, stop, transport, token, verify)


async def _first_token(token: BearerToken) -> None:
    """Fetch the fleet's token before the first reading: a refusal stops the start."""
    try:
        await token.get()
    except PipelineError as error:
        raise SimulatorError(f"cannot get the fleet's access token: {error}") from error


async def _run(
    config: SimConfig,
    stop: asyncio.Event,
    counts: Counts,
    generator: ReadingGenerator,
    mqtt: MqttFleet | None,
    http: HttpSender | None,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    pacer = Pacer(config.rate, started, limit=config.total())
    # Bounded by duration: end on time even when sending could not keep up.
    deadline = started + config.duration_s + config.tick_s if config.duration_s else math.inf
    progress = _Progress(config.progress_every_s, started)
    while not stop.is_set() and not pacer.done:
        now = loop.time()
        if now >= deadline:
            break
        due = pacer.take(now)
        if due:
            batch = generator.batch(due, datetime.now(UTC))
            await _deliver(batch, counts, generator, mqtt, http)
        counts.elapsed_s = loop.time() - started
        progress.maybe_report(counts, loop.time())
        if pacer.done:
            break
        wake = max(pacer.next_due(), now + config.tick_s)
        await _wait(stop, min(wake, deadline) - loop.time())
    counts.elapsed_s = loop.time() - started
    progress.report(counts, loop.time())


async def _deliver(
    batch: list[Emitted],
    counts: Counts,
    generator: ReadingGenerator,
    mqtt: MqttFleet | None,
    http: HttpSender | None,
) -> None:
    by_mqtt = [e for e in batch if e.transport is Transport.MQTT]
    by_http = [e for e in batch if e.transport is not Transport.MQTT]
    mqtt_ok, http_ok = await asyncio.gather(
        mqtt.send(by_mqtt) if mqtt else _none(by_mqtt),
        http.send(by_http) if http else _none(by_http),
    )
    lost: list[Emitted] = []
    for emitted, ok in (*zip(by_mqtt, mqtt_ok, strict=True), *zip(by_http, http_ok, strict=True)):
        counts.record(emitted, ok)
        if not ok:
            lost.append(emitted)
    generator.forget(lost)


async def _none(batch: Sequence[Emitted]) -> list[bool]:
    return [False] * len(batch)


class _Progress:
    """A progress line every few seconds: what went out per transport, and at what rate."""

    def __init__(self, every_s: float | None, started: float) -> None:
        self.every_s = every_s
        self._last_at = started
        self._last_sent = 0

    def maybe_report(self, counts: Counts, now: float) -> None:
        if self.every_s is not None and now - self._last_at >= self.every_s:
            self.report(counts, now)

    def report(self, counts: Counts, now: float) -> None:
        if self.every_s is None:
            return
        interval = now - self._last_at
        rate = (counts.sent - self._last_sent) / interval if interval > 0 else 0.0
        self._last_at, self._last_sent = now, counts.sent
        log.info(
            "progress",
            sent=counts.sent,
            mqtt=counts.mqtt.sent,
            http=counts.http.sent,
            bad=counts.bad,
            duplicates=counts.duplicates,
            late=counts.late,
            failed=counts.failed,
            rate_per_s=round(rate, 1),
        )


def _parser() -> argparse.ArgumentParser:
    parser = argument_parser(
        prog="python -m tools.simulate",
        description="Simulate a fleet of sensor devices sending readings over MQTT and HTTP.",
    )
    parser.add_argument("--devices", type=int, default=50, help="number of devices (50)")
    parser.add_argument("--rate", type=float, default=100.0, help="readings/s in all (100)")
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    bound.add_argument("--count", type=int, help="readings to send, then stop")
    parser.add_argument(
        "--transport",
        choices=[t.value for t in Transport],
        default=Transport.BOTH.value,
        help="both (default) splits the devices between MQTT and HTTP",
    )
    parser.add_argument("--bad-share", type=float, default=0.02, help="malformed share (0.02)")
    parser.add_argument(
        "--duplicate-share", type=float, default=0.01, help="re-sent readings share (0.01)"
    )
    parser.add_argument("--late-share", type=float, default=0.01, help="late readings (0.01)")
    parser.add_argument("--seed", type=int, help="seed for reproducible readings")
    parser.add_argument(
        "--mqtt-url",
        default=_env_mqtt_url(),
        help="mqtts:// (each device its own account) or mqtt:// (anonymous, plaintext); "
        "default: Mosquitto's TLS listener, or $MQTT_URL when SIM_PLAINTEXT=true",
    )
    parser.add_argument(
        "--ingest-url",
        default=_env_ingest_url(),
        help="https:// (the fleet's bearer token) or http:// (none); default: $INGEST_URL, else "
        "ingest's HTTP_HOST and HTTPS_PORT (HTTP_PORT when SIM_PLAINTEXT=true)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> SimConfig:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.devices < 1 or args.rate <= 0:
        parser.error("--devices must be >= 1 and --rate > 0")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be > 0")
    if args.count is not None and args.count < 1:
        parser.error("--count must be >= 1")
    try:
        FleetConfig(
            bad_share=args.bad_share,
            duplicate_share=args.duplicate_share,
            late_share=args.late_share,
        )
    except ValueError as error:
        parser.error(str(error))
    return SimConfig(
        devices=args.devices,
        rate=args.rate,
        duration_s=args.duration,
        count=args.count,
        transport=Transport(args.transport),
        bad_share=args.bad_share,
        duplicate_share=args.duplicate_share,
        late_share=args.late_share,
        seed=args.seed,
        mqtt_url=args.mqtt_url,
        ingest_url=args.ingest_url,
    )


def _configure_cli_logging() -> None:
    if sys.stderr.isatty():
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="%H:%M:%S"),
                structlog.dev.ConsoleRenderer(),
            ],
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        )
    else:
        configure_logging("simulate")
    # httpx logs each request at INFO: at 20 batches a second that drowns the progress lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def _main(config: SimConfig) -> Counts:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "simulating",
        devices=config.devices,
        rate=config.rate,
        transport=config.transport.value,
        mqtt=config.mqtt_url,
        http=config.ingest_url,
    )
    return await simulate(config, stop)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    _configure_cli_logging()
    try:
        counts = asyncio.run(_main(config))
    except SimulatorError as error:
        log.error("simulator cannot start", error=str(error))
        return 1
    log.info("finished", **counts.as_dict())
    # Nothing got through at all is a failure (a wrong URL, ingest down); some losses are not.
    return 1 if counts.failed and not counts.sent else 0


if __name__ == "__main__":
    sys.exit(main())
