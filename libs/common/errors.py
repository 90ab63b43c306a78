"""The pipeline's one error hierarchy: `retriable` says whether waiting can fix it.

Tenacity retries only errors whose class says `retriable = True`; anything else is permanent and
the record goes straight to the dead-letter queue with the error's name as `error_type`.
"""

from __future__ import annotations

import importlib.metadata
import platform


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""

    retriable: bool = False

    @property
    def error_type(self) -> str:
        return type(self).__name__


# Transient: the thing we depend on is away; the same record will work later.
class TransientError(PipelineError):
    retriable = True


class BrokerUnavailable(TransientError):
    """Kafka did not acknowledge a write or could not be reached."""


class DatabaseUnavailable(TransientError):
    """PostgreSQL could not be reached or dropped the connection."""


class MqttUnavailable(TransientError):
    """The MQTT broker could not be reached."""


class KeysUnavailable(TransientError):
    """The identity provider's signing keys (its JWKS) could not be fetched: no token can be
    checked until they can."""


# Permanent: the record itself is wrong; retrying gives the same answer.
class RecordError(PipelineError):
    """A record that no amount of waiting will make acceptable."""

    def __init__(self, reasons: list[str] | str) -> None:
        self.reasons = [reasons] if isinstance(reasons, str) else list(reasons)
        super().__init__("; ".join(self.reasons))


class PayloadTooLarge(RecordError):
    """The message is larger than the configured limit."""


class NotJson(RecordError):
    """The payload is not UTF-8 JSON."""


class NotAnObject(RecordError):
    """The payload is JSON but not an object (or an array/NDJSON of them, over HTTP)."""


class MissingDeviceId(RecordError):
    """The reading carries no usable device_id."""


class SchemaViolation(RecordError):
    """A field has the wrong type: NaN, Infinity, a boolean, a non-numeric string..."""


class RuleViolation(RecordError):
    """A field breaks a validation rule (range, required)."""


class InvalidRecord(RecordError):
    """A reading with both type errors and rule violations; every reason is listed."""


class DeviceNotAllowed(RecordError):
    """A reading of a device that the sender may not speak for: a device-bound token's reading
    of another device (`device_id`, for the audit log)."""

    def __init__(self, reasons: list[str] | str, *, device_id: str) -> None:
        self.device_id = device_id
        super().__init__(reasons)


class DeviceMismatch(RecordError):
    """An MQTT reading whose device_id is not the device of the topic it was published to
    (`sensors/<device_id>/readings`): the broker's ACL vouches for the topic, not the payload.
    `device_id`: the reading's, for the audit log."""

    def __init__(self, reasons: list[str] | str, *, device_id: str) -> None:
        self.device_id = device_id
        super().__init__(reasons)


class MalformedValidatedRecord(RecordError):
    """enrich got a record that is not a validated reading: a bug or a foreign producer."""


class MalformedEnrichedRecord(RecordError):
    """store got a record that is not an enriched reading: a bug or a foreign producer."""


class StorageRejected(RecordError):
    """The database refused the row itself (not the connection)."""


class PoisonRecord(RecordError):
    """A stage's step kept failing on this record with an error outside this hierarchy (a bug
    the record triggers); the runner dead-letters it so its partition moves on."""


class ConfigurationError(PipelineError):
    """A setting or a rules file is wrong; the service refuses to start."""


class AccountError(PipelineError):
    """An MQTT account command was refused: a device id that cannot be an account, a name that
    belongs to a service account, the admin's login, or the broker's dynamic security plugin."""


class AccessRefused(PipelineError):
    """A request refused for who sent it, not for what it carries; `reason` says why in words
    fit for the answer (never the token itself)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Unauthenticated(AccessRefused):
    """No credentials, or ones that do not hold: a missing, malformed, forged or expired token,
    another issuer's or another audience's (HTTP 401)."""

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        # missing: no credentials at all, which RFC 6750 answers without an error code.
        self.missing = missing
        super().__init__(reason)


class Forbidden(AccessRefused):
    """A valid token that lacks the scope the call needs (HTTP 403, insufficient_scope)."""

    def __init__(self, reason: str, *, scope: str) -> None:
        self.scope = scope
        super().__init__(reason)


class BodyTooLarge(PipelineError):
    """An HTTP request body over the whole-body limit: refused (413) before it is read whole."""


class PrivateHookMissing(PipelineError):
    """A library lacks a private part this project relies on (a changed or untested version):
    the service refuses to start rather than run without it (e.g. without MQTT flow control)."""

    def __init__(self, library: str, hook: str) -> None:
        try:
            # asyncio's hooks are the standard library's: named by the Python version.
            version = (
                platform.python_version()
                if library == "python"
                else importlib.metadata.version(library)
            )
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        self.library = library
        self.hook = hook
        super().__init__(
            f"{library} {version} has no {hook}, which this service relies on; install the "
            f"version pinned in pyproject.toml"
        )
