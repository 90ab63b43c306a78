"""The one retry policy: exponential backoff with jitter, transient errors only, one log line.

Every retry loop of the project waits `backoff_s` between attempts and logs `log_retry`'s
"retrying" line: through tenacity (`retrying`, `call_with_retry`, `until_stopped`) at the I/O
edges, and the runner's batch rewind, which must go back to polling between attempts and so
keeps its own loop over the same two pieces.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    stop_never,
)
from tenacity.stop import stop_base

from libs.common import metrics
from libs.common.errors import PipelineError
from libs.common.lifecycle import sleep_or_stop

T = TypeVar("T")
log = structlog.get_logger(__name__)

# Each wait is shortened by up to this share at random: replicas that failed together do not
# all try again at the same moment, even once their waits reached the cap.
JITTER = 0.25


class Stopped(PipelineError):
    """The stop event was set while waiting to try again: no further attempt was made."""


def is_transient(error: BaseException) -> bool:
    return isinstance(error, PipelineError) and error.retriable


def backoff_s(attempt: int, initial_s: float, max_wait_s: float) -> float:
    """The wait after failed attempt number `attempt` (1, 2, ...): `initial_s` doubling per
    attempt up to `max_wait_s`, less up to `JITTER` of it; never longer than `max_wait_s`."""
    # The exponent is bounded: a wait that never stops would overflow a float after ~1000.
    delay = min(max_wait_s, initial_s * 2 ** min(attempt - 1, 64))
    return delay * (1 - random.uniform(0, JITTER))


def log_retry(
    operation: str, attempt: int, sleep_s: float, error: BaseException | None, **context: Any
) -> None:
    """The one line every retry writes before it waits."""
    log.warning(
        "retrying",
        operation=operation,
        attempt=attempt,
        sleep_s=round(sleep_s, 2),
        error=repr(error),
        **context,
    )


def _before_sleep(name: str | None, stage: str | None) -> Callable[[RetryCallState], None]:
    def log_and_count(state: RetryCallState) -> None:
        # With `async for attempt in retrying(...)` tenacity does not know the function.
        operation = str(name or getattr(state.fn, "__qualname__", None) or "operation")
        if stage is not None:
            metrics.RETRIES.labels(stage, operation).inc()
        error = state.outcome.exception() if state.outcome else None
        sleep = state.next_action.sleep if state.next_action else 0.0
        log_retry(operation, state.attempt_number, sleep, error)

    return log_and_count


def _sleep_until(stop: asyncio.Event) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        await sleep_or_stop(stop, seconds)
        if stop.is_set():
            raise Stopped("stopped while waiting to try again")

    return sleep


def retrying(
    max_delay_s: float | None = None,
    *,
    attempts: int | None = None,
    initial_s: float = 0.1,
    max_wait_s: float = 5.0,
    retry_on: Callable[[BaseException], bool] = is_transient,
    name: str | None = None,
    stage: str | None = None,
    stop: asyncio.Event | None = None,
) -> AsyncRetrying:
    """An `AsyncRetrying` that retries errors `retry_on` accepts (transient `PipelineError`s
    by default) until `max_delay_s` passed or `attempts` were made; with neither, forever.

    `name` is the operation in the log line (and, with `stage`, counts each retry in
    `pipeline_retries_total{stage, operation}`). With `stop`, a wait ends when the event is set
    and `Stopped` is raised instead of another attempt. The last error is re-raised.
    """
    limits: list[stop_base] = []
    if max_delay_s is not None:
        limits.append(stop_after_delay(max_delay_s))
    if attempts is not None:
        limits.append(stop_after_attempt(attempts))
    options: dict[str, Any] = {"sleep": _sleep_until(stop)} if stop is not None else {}
    return AsyncRetrying(
        retry=retry_if_exception(retry_on),
        wait=lambda state: backoff_s(state.attempt_number, initial_s, max_wait_s),
        stop=stop_any(*limits) if limits else stop_never,
        before_sleep=_before_sleep(name, stage),
        reraise=True,
        **options,
    )


async def call_with_retry(
    operation: Callable[[], Awaitable[T]],
    max_delay_s: float | None,
    *,
    max_wait_s: float = 5.0,
    **options: Any,
) -> T:
    """Run `operation`, retrying transient errors with backoff; the last error is re-raised.
    `options` are `retrying`'s."""
    options.setdefault("name", getattr(operation, "__qualname__", None))
    async for attempt in retrying(max_delay_s, max_wait_s=max_wait_s, **options):
        with attempt:
            return await operation()
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def until_stopped(
    operation: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    *,
    name: str,
    initial_s: float = 0.1,
    max_wait_s: float = 5.0,
    retry_on: Callable[[BaseException], bool] = is_transient,
    stage: str | None = None,
) -> T | None:
    """Run `operation` (at least once), retrying its transient errors for as long as it takes;
    None when `stop` is set while waiting to try again (so `operation` should return something
    else). Permanent errors are raised."""
    try:
        return await call_with_retry(
            operation,
            None,
            max_wait_s=max_wait_s,
            initial_s=initial_s,
            retry_on=retry_on,
            name=name,
            stage=stage,
            stop=stop,
        )
    except Stopped:
        return None
