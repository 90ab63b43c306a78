"""`python -m tools.simulate`: a fleet of simulated devices sending readings over MQTT and HTTP.

The readings come from the seeded generator in `tools.fleet`; this module paces them, sends
them (MQTT v5 QoS 1 to sensors/<device_id>/readings, NDJSON batches to POST /v1/readings) and
counts exactly what was delivered. `simulate()` is the entry point for other code (tools.run,
end-to-end tests); `main()` is the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiomqtt
import httpx
import structlog

from libs.common.cli import argument_parser
from libs.common.errors import PipelineError, TransientError
from libs.common.logs import configure_logging
from libs.common.retry import Stopped, retrying
from services.ingest.settings import IngestSettings
from tools.fleet import Counts, Emitted, FleetConfig, Pacer, ReadingGenerator, Transport

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


class SimulatorSettings(IngestSettings):
    """Where the simulator sends: ingest's own MQTT_URL, and ingest's HTTP address by default."""

    service_name: str = "simulate"
    # Devices publish on the anonymous plaintext listener until the simulator gets device
    # accounts (ingest itself subscribes on the TLS one by default): MQTT_URL still sets it.
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    # None: ingest's address from its own HTTP_HOST and HTTP_PORT.
    ingest_url: str | None = None

    def ingest_base_url(self) -> str:
        if self.ingest_url:
            return self.ingest_url
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "", "::") else self.http_host
        return f"http://{host}:{self.http_port}"


def _env_mqtt_url() -> str:
    return SimulatorSettings().mqtt_url


def _env_ingest_url() -> str:
    return SimulatorSettings().ingest_base_url()


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

    def fleet(self) -> FleetConfig:
        return FleetConfig(
            devices=self.devices,
            transport=self.transport,
            bad_share=self.bad_share,
            duplicate_share=self.duplicate_share,
            late_share=self.late_share,
            seed=self.seed,
        )

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
    """One MQTT v5 connection (a gateway for the MQTT devices), publishing QoS 1."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise SimulatorError(f"MQTT_URL must look like mqtt://host:port, got {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 1883
        self._client: aiomqtt.Client | None = None
        self._last_attempt = -math.inf

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_attempt = loop.time()
        client = aiomqtt.Client(
            self.host,
            self.port,
            protocol=aiomqtt.ProtocolVersion.V5,
            identifier=f"simulator-{os.getpid()}",
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
                log.info("MQTT reconnected", url=self.url)
            except aiomqtt.MqttError as error:
                log.warning("MQTT broker unreachable", url=self.url, error=str(error))
                return [False] * len(batch)
        client = self._client
        assert client is not None
        results = await asyncio.gather(
            *(client.publish(f"sensors/{e.device_id}/readings", e.payload, qos=1) for e in batch),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            log.warning("MQTT publish failed", failed=len(errors), error=str(errors[0]))
            await self.close()
        return [not isinstance(r, BaseException) for r in results]

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


class HttpSender:
    """NDJSON batches to ingest's POST /v1/readings; a batch is delivered whole or not at all."""

    def __init__(
        self,
        base_url: str,
        stop: asyncio.Event,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._stop = stop
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=10.0, transport=transport)

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
        except (IngestBusy, IngestRefused, Stopped) as error:
            log.warning(
                "HTTP batch not delivered", url=f"{self.base_url}/v1/readings", error=str(error)
            )
            return False
        return True

    async def _post_once(self, body: bytes) -> None:
        """One POST; IngestBusy when sending again later may work, IngestRefused when not."""
        try:
            response = await self._client.post(
                "/v1/readings", content=body, headers={"content-type": "application/x-ndjson"}
            )
        except httpx.TransportError as error:
            raise IngestBusy(repr(error)) from error
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
) -> Counts:
    """Send readings until `stop` is set or the duration or count is reached.

    `counts` (a fresh one when None) is updated as batches are delivered, so a caller can show
    it live; the same object is returned. `http_transport` replaces the network (tests).
    """
    counts = counts if counts is not None else Counts()
    generator = ReadingGenerator(config.fleet())
    transports = {d.transport for d in generator.devices}
    mqtt = MqttSender(config.mqtt_url) if Transport.MQTT in transports else None
    http = (
        HttpSender(config.ingest_url, stop, http_transport)
        if Transport.HTTP in transports
        else None
    )
    try:
        if mqtt is not None:
            try:
                await mqtt.connect()
            except aiomqtt.MqttError as error:
                raise SimulatorError(
                    f"cannot connect to the MQTT broker at {config.mqtt_url}: {error}"
                ) from error
        await _run(config, stop, counts, generator, mqtt, http)
    finally:
        if mqtt is not None:
            await mqtt.close()
        if http is not None:
            await http.close()
    return counts


async def _run(
    config: SimConfig,
    stop: asyncio.Event,
    counts: Counts,
    generator: ReadingGenerator,
    mqtt: MqttSender | None,
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
    mqtt: MqttSender | None,
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


def parse_args(argv: Sequence[str] | None = None) -> SimConfig:
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
    parser.add_argument("--mqtt-url", default=_env_mqtt_url(), help="default: $MQTT_URL")
    parser.add_argument(
        "--ingest-url",
        default=_env_ingest_url(),
        help="default: $INGEST_URL, else ingest's HTTP_HOST and HTTP_PORT",
    )
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
