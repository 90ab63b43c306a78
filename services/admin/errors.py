"""The admin API's refusals, under the project's one hierarchy (libs/common/errors.py)."""

from __future__ import annotations

from libs.common.errors import AccessRefused, PipelineError


class RoleTooLow(AccessRefused):
    """A valid token whose roles do not include the one the call needs (HTTP 403)."""

    def __init__(self, reason: str, *, needed: str) -> None:
        self.needed = needed
        super().__init__(reason)


class NotFound(PipelineError):
    """What the call names does not exist (HTTP 404): a device, dead letters."""

    def __init__(self, reason: str, *, missing: list[str] | None = None) -> None:
        self.reason = reason
        self.missing = missing or []
        super().__init__(reason)


class BadRequest(PipelineError):
    """A request the API understood but will not carry out as asked (HTTP 422)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
