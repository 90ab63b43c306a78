"""The admin API's requests and answers (pydantic v2), the OpenAPI document's schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from libs.common.models import Stage
from libs.common.mqtt_accounts import DEVICE_ID

DeviceId = Annotated[
    str,
    Field(
        pattern=f"^{DEVICE_ID.pattern}$",
        description="Letters, digits, '.', '_', ':', '-'; at most 128, starting with a letter "
        "or digit (it names the device's MQTT account and topic).",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceFields(_Strict):
    """The registry's descriptive columns (table devices); each optional."""

    model: str | None = Field(default=None, max_length=256)
    site: str | None = Field(default=None, max_length=256)
    owner: str | None = Field(default=None, max_length=256)
    installed_at: AwareDatetime | None = None
    metadata: dict[str, Any] | None = Field(
        default=None, description="Free-form JSON object; replaces the stored one when given."
    )


class DeviceRegistration(DeviceFields):
    device_id: DeviceId


class DeviceUpdate(DeviceFields):
    """PATCH: only the fields given change."""


class Device(BaseModel):
    device_id: str
    model: str | None
    site: str | None
    owner: str | None
    installed_at: datetime | None
    metadata: dict[str, Any]
    updated_at: datetime
    revoked_at: datetime | None = Field(
        description="When its MQTT account was revoked; null while it has one."
    )


class DeviceList(BaseModel):
    devices: list[Device]


class DeviceCredentialsAnswer(BaseModel):
    """The same object as `python -m tools.credentials device <id>` prints."""

    device_id: str
    mqtt_url: str
    username: str
    password: str
    ca_file: str


class Revocation(BaseModel):
    """As `python -m tools.credentials revoke <id>` prints: revoked is false when the device
    had no MQTT account left."""

    device_id: str
    revoked: bool


class Letter(BaseModel):
    """A dead letter and its place in the DLQ topic; `id` names it for a replay."""

    id: str = Field(description="partition:offset in the DLQ topic.")
    partition: int
    offset: int
    original_record: str
    original_encoding: str
    error_message: str
    error_type: str
    reasons: list[str]
    error_timestamp: datetime
    processing_stage: Stage
    attempts: int
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    trace_id: str | None
    device_id: str | None


class LetterList(BaseModel):
    letters: list[Letter]


class ReplayRequest(_Strict):
    """Which dead letters to send back into the chain: by `ids`, or by filters (at least one
    of them: an empty request replays nothing rather than the whole DLQ)."""

    ids: list[str] = Field(default_factory=list, max_length=10_000, description="partition:offset")
    devices: list[str] = Field(default_factory=list, max_length=1000)
    error_types: list[str] = Field(default_factory=list, max_length=100)
    stages: list[Stage] = Field(default_factory=list)
    since: AwareDatetime | None = None
    limit: int | None = Field(default=None, ge=1)
    dry_run: bool = Field(default=False, description="Select and count, send nothing.")


class ReplayAnswer(BaseModel):
    replayed: int = Field(description="Letters sent (or, with dry_run, that would be).")
    ids: list[str]
    by_topic: dict[str, int]
    dry_run: bool


class AuditRow(BaseModel):
    id: int
    at: datetime
    actor: str
    actor_kind: str
    action: str
    target: str | None
    outcome: Literal["allowed", "refused", "failed"]
    reason: str | None
    source_address: str | None
    request_id: str | None
    recorded_by: str


class AuditList(BaseModel):
    events: list[AuditRow]


class ErrorAnswer(BaseModel):
    error: str
    required_role: str | None = None
    missing: list[str] | None = None
