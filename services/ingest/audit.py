"""ingest's refusals as audit events (docs/security.md, "Audit log"): a request refused for its
token (401, 403), a device-bound token's reading of another device, an MQTT reading of another
device than its topic's. Accepted readings are not recorded: they are the pipeline's data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jwt
from starlette.requests import Request

from libs.common.audit import ActorKind, AuditEvent
from libs.common.auth import DEVICE_CLAIM
from libs.common.errors import DeviceMismatch, DeviceNotAllowed, Forbidden, Unauthenticated
from services.ingest.intake import Rejected

RECORDED_BY = "ingest"
HTTP_ACTION = "readings.post"
MQTT_ACTION = "mqtt.publish"


def _claims(request: Request) -> dict[str, Any]:
    """The bearer token's claims, unverified: for a 403 they were verified already; for a 401
    they are only what the token claims (the reason says why it did not hold)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return {}
    try:
        claims = jwt.decode(token.strip(), options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def _text(claims: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def http_actor(claims: dict[str, Any]) -> tuple[str, ActorKind, str | None]:
    """Who a token speaks for: its device (a device-bound token), else its client (azp) or
    subject; `anonymous` without a readable token. The third item: the bound device."""
    device = _text(claims, DEVICE_CLAIM)
    if device is not None:
        return device, "device", device
    client = _text(claims, "azp", "client_id", "sub")
    if client is not None:
        return client, "client", None
    return "anonymous", "anonymous", None


def source_of(request: Request) -> str | None:
    client = request.client
    return f"{client.host}:{client.port}" if client is not None else None


def refused_request(
    request: Request, error: Unauthenticated | Forbidden, request_id: str
) -> AuditEvent:
    """A 401 or 403: the reason is the words the client got."""
    actor, kind, device = http_actor(_claims(request))
    return AuditEvent(
        actor=actor,
        actor_kind=kind,
        action=HTTP_ACTION,
        outcome="refused",
        recorded_by=RECORDED_BY,
        target=device,
        reason=error.reason,
        source_address=source_of(request),
        request_id=request_id,
    )


def refused_devices(
    request: Request, bound_device: str, rejected: Iterable[Rejected], request_id: str
) -> list[AuditEvent]:
    """One event per other device whose readings a device-bound token sent (the reason of its
    first reading: the words of the 202's reject); not one per reading, so that a body of
    many cannot flood the log."""
    first: dict[str, str] = {}
    for reject in rejected:
        error = reject.error
        if isinstance(error, DeviceNotAllowed):
            first.setdefault(error.device_id, "; ".join(error.reasons))
    return [
        AuditEvent(
            actor=bound_device,
            actor_kind="device",
            action=HTTP_ACTION,
            outcome="refused",
            recorded_by=RECORDED_BY,
            target=device,
            reason=reason,
            source_address=source_of(request),
            request_id=request_id,
        )
        for device, reason in first.items()
    ]


def mismatched_readings(rejected: Iterable[Rejected]) -> list[AuditEvent]:
    """An MQTT reading of another device than its topic's (it went to the DLQ): the topic's
    device is the actor, since the broker let only that account publish there."""
    return [
        AuditEvent(
            actor=reject.device_id or "unknown",
            actor_kind="device",
            action=MQTT_ACTION,
            outcome="refused",
            recorded_by=RECORDED_BY,
            target=reject.error.device_id,
            reason="; ".join(reject.error.reasons),
        )
        for reject in rejected
        if isinstance(reject.error, DeviceMismatch)
    ]
