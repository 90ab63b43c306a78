"""libs/common/retry.py, the one retry policy, with real tenacity and short waits: jittered
waits within their cap, the caller's own idea of transient, a retry that waits until stopped,
one "retrying" log line and the retries counted."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from libs.common import metrics, retry
from libs.common.errors import BrokerUnavailable, RuleViolation
from libs.common.retry import Stopped, backoff_s, call_with_retry, retrying, until_stopped


class Lines:
    """Stands in for the module's logger: the warnings it was given, as dicts."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, **fields})

    def retrying(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == "retrying"]


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Lines:
    lines = Lines()
    monkeypatch.setattr(retry, "log", lines)
    return lines


def test_waits_double_up_to_the_cap_and_are_jittered_below_it() -> None:
    waits = {attempt: [backoff_s(attempt, 0.1, 1.0) for _ in range(200)] for attempt in (1, 3, 9)}
    assert all(0.075 <= w <= 0.1 for w in waits[1])
    assert all(0.3 <= w <= 0.4 for w in waits[3])
    assert all(0.75 <= w <= 1.0 for w in waits[9])
    # Jitter: replicas that failed together do not come back at the same moment, at the cap too.
    assert len(set(waits[1])) > 100 and len(set(waits[9])) > 100


def test_a_wait_after_very_many_attempts_stays_at_the_cap() -> None:
    assert 7.5 <= backoff_s(100_000, 0.2, 10.0) <= 10.0


async def test_the_caller_decides_which_errors_are_transient() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("not yet")
        return "ok"

    def resets(error: BaseException) -> bool:
        return isinstance(error, ConnectionResetError)

    result = await call_with_retry(flaky, 10, max_wait_s=0.001, initial_s=0.001, retry_on=resets)
    assert result == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionResetError):
        # Not transient by the default policy: tried once.
        await call_with_retry(flaky, 10, max_wait_s=0.001)
    assert len(calls) == 1


async def test_retries_stop_after_the_given_attempts_with_the_last_error() -> None:
    calls: list[int] = []
    with pytest.raises(BrokerUnavailable, match="away 3"):
        async for attempt in retrying(attempts=3, initial_s=0.001, max_wait_s=0.001):
            with attempt:
                calls.append(1)
                raise BrokerUnavailable(f"away {len(calls)}")
    assert len(calls) == 3


async def test_until_stopped_keeps_trying_past_any_time_budget_until_it_works() -> None:
    calls: list[int] = []

    async def away_for_a_while() -> str:
        calls.append(1)
        if len(calls) < 20:
            raise BrokerUnavailable("away")
        return "handed over"

    stop = asyncio.Event()
    result = await until_stopped(
        away_for_a_while, stop, name="t", initial_s=0.001, max_wait_s=0.002
    )
    assert result == "handed over" and len(calls) == 20


async def test_until_stopped_gives_up_at_once_when_stopped_during_a_wait() -> None:
    calls: list[int] = []
    stop = asyncio.Event()

    async def away() -> str:
        calls.append(1)
        asyncio.get_running_loop().call_later(0.05, stop.set)
        raise BrokerUnavailable("away")

    started = time.monotonic()
    assert await until_stopped(away, stop, name="t", initial_s=30, max_wait_s=30) is None
    # Not the 30 s wait, and no attempt after the stop.
    assert time.monotonic() - started < 5
    assert len(calls) == 1


async def test_a_stop_during_a_wait_is_raised_as_stopped_from_retrying() -> None:
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(Stopped):
        async for attempt in retrying(initial_s=30, max_wait_s=30, stop=stop):
            with attempt:
                raise BrokerUnavailable("away")


async def test_until_stopped_raises_a_permanent_error_without_retrying() -> None:
    calls: list[int] = []

    async def wrong() -> None:
        calls.append(1)
        raise RuleViolation("wrong")

    with pytest.raises(RuleViolation):
        await until_stopped(wrong, asyncio.Event(), name="t", initial_s=0.001)
    assert len(calls) == 1


async def test_each_retry_logs_one_retrying_line_and_counts_in_the_retries_metric(
    logs: Lines,
) -> None:
    operation = "test_counted"
    counter = metrics.RETRIES.labels("ingest", operation)
    before = counter._value.get()
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise BrokerUnavailable(f"away {len(calls)}")

    await until_stopped(
        flaky, asyncio.Event(), name=operation, initial_s=0.001, max_wait_s=0.001, stage="ingest"
    )
    retries = logs.retrying()
    assert [(r["operation"], r["attempt"]) for r in retries] == [(operation, 1), (operation, 2)]
    assert retries[0]["error"] == repr(BrokerUnavailable("away 1"))
    assert all(0 <= r["sleep_s"] <= 0.001 for r in retries)
    assert counter._value.get() - before == 2


async def test_call_with_retry_names_the_operation_by_its_function(logs: Lines) -> None:
    calls: list[int] = []

    async def connect_to_the_database() -> None:
        calls.append(1)
        if len(calls) < 2:
            raise BrokerUnavailable("away")

    await call_with_retry(connect_to_the_database, 10, max_wait_s=0.001, initial_s=0.001)
    assert [line["operation"] for line in logs.retrying()] == [connect_to_the_database.__qualname__]
