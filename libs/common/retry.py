"""The retry policy for I/O edges: exponential backoff with jitter, transient errors only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from libs.common.errors import PipelineError

T = TypeVar("T")
log = structlog.get_logger(__name__)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, PipelineError) and error.retriable


def _log_before_sleep(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "retrying",
        operation=getattr(state.fn, "__qualname__", str(state.fn)),
        attempt=state.attempt_number,
        sleep_s=round(state.next_action.sleep, 2) if state.next_action else None,
        error=repr(error),
    )


def retrying(
    max_delay_s: float, *, initial_s: float = 0.1, max_wait_s: float = 5.0
) -> AsyncRetrying:
    """An `AsyncRetrying` that retries transient `PipelineError`s until `max_delay_s` passed."""
    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(multiplier=initial_s, max=max_wait_s, jitter=initial_s),
        stop=stop_after_delay(max_delay_s),
        before_sleep=_log_before_sleep,
        reraise=True,
    )


async def call_with_retry(
    operation: Callable[[], Awaitable[T]], max_delay_s: float, *, max_wait_s: float = 5.0
) -> T:
    """Run `operation`, retrying transient errors with backoff; the last error is re-raised."""
    async for attempt in retrying(max_delay_s, max_wait_s=max_wait_s):
        with attempt:
            return await operation()
    raise AssertionError("unreachable: tenacity re-raises the last error")
