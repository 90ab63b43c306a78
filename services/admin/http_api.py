"""The admin API's routes (HTTPS, OAuth 2.0 bearer tokens), thin: each checks the caller's role,
calls the registry, the MQTT accounts or the DLQ code, and answers JSON.

Refusals are typed errors turned into answers here: 401 with WWW-Authenticate (RFC 6750) for a
missing, malformed, forged or expired token or one of another audience; 403 with the role the
call needs; 404, 409, 422 with the reason; 503 with Retry-After when a server it needs is away.
Every call is audited (services.admin.audit_trail).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.common.audit import AuditWriter
from libs.common.auth import Principal, TokenVerifier
from libs.common.errors import AccountError, TransientError, Unauthenticated
from libs.common.health import json_response
from libs.common.version import __version__
from services.admin import operations
from services.admin.audit_trail import AuditedCall, AuditTrail, audited_call
from services.admin.errors import BadRequest, NotFound, RoleTooLow
from services.admin.models import (
    AuditList,
    Device,
    DeviceCredentialsAnswer,
    DeviceList,
    DeviceRegistration,
    DeviceUpdate,
    ErrorAnswer,
    LetterList,
    ReplayAnswer,
    ReplayRequest,
    Revocation,
)
from services.admin.operations import Backends
from services.admin.registry import AuditFilter
from services.admin.roles import Role, actor_of, highest_role, may

REALM = "sensor-pipeline"
RETRY_AFTER_S = 5
# RFC 6750's error_description: printable ASCII without the double quote and the backslash.
_NOT_IN_DESCRIPTION = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")


def get_backends(request: Request) -> Backends:
    backends: Backends = request.app.state.backends
    return backends


_BEARER = HTTPBearer(
    bearerFormat="JWT",
    description="An OAuth 2.0 access token of the identity provider for audience admin-api, "
    "with realm roles viewer, operator or admin "
    "(`python -m tools.credentials token --user operator`).",
    auto_error=False,
)


def audited(action: str) -> Callable[[Request], None]:
    """Names the call's action (and, from the path, its device) in its audit row."""

    def mark(request: Request) -> None:
        call = audited_call(request)
        call.action = action
        call.target = request.path_params.get("device_id", call.target)

    return mark


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """The verified token's principal, if its roles include `role`: Unauthenticated (401) or
    RoleTooLow (403) otherwise."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> Principal:
        if credentials is None:
            raise Unauthenticated("no bearer token", missing=True)
        verifier: TokenVerifier = request.app.state.verifier
        principal = await verifier.verify_token(credentials.credentials)
        call = audited_call(request)
        call.actor, call.actor_kind = actor_of(principal)
        if not may(principal.roles, role):
            held = highest_role(principal.roles)
            raise RoleTooLow(
                f"{call.action} needs role {role.label}; the token has "
                + (f"role {held.label}" if held else "none of viewer, operator, admin"),
                needed=role.label,
            )
        return principal

    return check


def guarded(action: str, role: Role) -> list[Any]:
    return [Depends(audited(action)), Depends(require(role))]


BackendsDep = Annotated[Backends, Depends(get_backends)]
CallDep = Annotated[AuditedCall, Depends(audited_call)]
router = APIRouter(prefix="/v1")


def _refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "No bearer token, or one that is malformed, forged, expired, or of another issuer "
        "or audience.",
        403: "A valid token without the role the call needs.",
        404: "No such device, or dead letters that are not in the DLQ.",
        409: "The name is a service account of the broker, not a device.",
        422: "The request's parameters or body are not valid; the reason says which.",
        503: "A server the call needs (PostgreSQL, Mosquitto, Kafka, the identity provider's "
        "keys) is unavailable; try again after Retry-After.",
    }
    return {s: {"model": ErrorAnswer, "description": described[s]} for s in (401, 403, *statuses)}


Limit = Annotated[int, Query(ge=1, le=100_000, description="At most this many rows.")]


@router.get(
    "/devices",
    summary="List registered devices (viewer)",
    response_model=DeviceList,
    dependencies=guarded("devices.list", Role.VIEWER),
    responses=_refusals(422, 503),
)
async def list_devices(backends: BackendsDep, limit: Limit = 100, offset: int = 0) -> Any:
    return await operations.list_devices(backends, limit, max(offset, 0))


@router.get(
    "/devices/{device_id}",
    summary="One device (viewer)",
    response_model=Device,
    dependencies=guarded("devices.read", Role.VIEWER),
    responses=_refusals(404, 503),
)
async def get_device(device_id: str, backends: BackendsDep) -> Any:
    return await operations.get_device(backends, device_id)


@router.post(
    "/devices",
    summary="Register a device and create its MQTT account (operator); idempotent",
    response_model=DeviceCredentialsAnswer,
    status_code=201,
    dependencies=guarded("devices.register", Role.OPERATOR),
    responses={
        200: {
            "model": DeviceCredentialsAnswer,
            "description": "Registered already: the same credentials.",
        },
        201: {"description": "A new device: its credentials."},
        **_refusals(409, 422, 503),
    },
)
async def register_device(
    registration: DeviceRegistration, backends: BackendsDep, call: CallDep, response: Response
) -> Any:
    call.target = registration.device_id
    credentials, created = await operations.register(backends, registration)
    response.status_code = 201 if created else 200
    return credentials


@router.patch(
    "/devices/{device_id}",
    summary="Change a device's registry fields (operator)",
    response_model=Device,
    dependencies=guarded("devices.update", Role.OPERATOR),
    responses=_refusals(404, 422, 503),
)
async def update_device(device_id: str, changes: DeviceUpdate, backends: BackendsDep) -> Any:
    return await operations.update(backends, device_id, changes.model_dump(exclude_unset=True))


_REVOKE: dict[str, Any] = {
    "summary": "Revoke a device: delete its MQTT account, its session cut (operator)",
    "response_model": Revocation,
    "dependencies": guarded("devices.revoke", Role.OPERATOR),
    "responses": _refusals(404, 409, 503),
}


@router.delete("/devices/{device_id}", **_REVOKE)
async def delete_device(device_id: str, backends: BackendsDep) -> Any:
    return await operations.revoke(backends, device_id)


@router.post("/devices/{device_id}/revoke", **_REVOKE)
async def revoke_device(device_id: str, backends: BackendsDep) -> Any:
    return await operations.revoke(backends, device_id)


@router.get(
    "/dlq",
    summary="Browse the dead letters (viewer), oldest first",
    response_model=LetterList,
    dependencies=guarded("dlq.browse", Role.VIEWER),
    responses=_refusals(422, 503),
)
async def browse_dlq(
    backends: BackendsDep,
    device: Annotated[list[str] | None, Query(description="Only this device (repeatable).")] = None,
    error_type: Annotated[list[str] | None, Query(description="e.g. RuleViolation.")] = None,
    stage: Annotated[list[str] | None, Query(description="The stage that refused it.")] = None,
    since: AwareDatetime | None = None,
    limit: Limit = 100,
) -> Any:
    return await operations.browse(backends, device, error_type, stage, since, limit)


@router.post(
    "/dlq/replay",
    summary="Send chosen dead letters back into the chain (operator)",
    response_model=ReplayAnswer,
    dependencies=guarded("dlq.replay", Role.OPERATOR),
    responses=_refusals(404, 422, 503),
)
async def replay_dlq(request: ReplayRequest, backends: BackendsDep, call: CallDep) -> Any:
    call.target = backends.settings.topic_dlq
    return await operations.replay(backends, request)


@router.get(
    "/audit",
    summary="Read the audit log (admin), newest first",
    response_model=AuditList,
    dependencies=guarded("audit.read", Role.ADMIN),
    responses=_refusals(422, 503),
)
async def read_audit(
    backends: BackendsDep,
    actor: str | None = None,
    action: Annotated[str | None, Query(pattern=r"^[a-z_]+\.[a-z_]+$")] = None,
    outcome: Literal["allowed", "refused", "failed"] | None = None,
    since: AwareDatetime | None = None,
    request_id: str | None = None,
    limit: Limit = 100,
) -> Any:
    where = AuditFilter(actor, action, outcome, since, request_id, limit)
    return await operations.read_audit(backends, where)


def challenge(error: Unauthenticated) -> str:
    """The WWW-Authenticate value of a 401 (RFC 6750 section 3): no error code when no token
    was sent at all."""
    if error.missing:
        return f'Bearer realm="{REALM}"'
    description = _NOT_IN_DESCRIPTION.sub("?", error.reason)
    return f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'


def _refuse(request: Request, status: int, reason: str, **extra: Any) -> Response:
    call = getattr(request.state, "audit", None)
    if isinstance(call, AuditedCall):
        call.reason = reason
    headers = extra.pop("headers", None)
    return json_response({"error": reason, **extra}, status_code=status, headers=headers)


async def _unauthenticated(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Unauthenticated)
    return _refuse(request, 401, exc.reason, headers={"WWW-Authenticate": challenge(exc)})


async def _role_too_low(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RoleTooLow)
    return _refuse(request, 403, exc.reason, required_role=exc.needed)


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NotFound)
    return _refuse(request, 404, exc.reason, **({"missing": exc.missing} if exc.missing else {}))


async def _bad_request(request: Request, exc: Exception) -> Response:
    return _refuse(request, 422, getattr(exc, "reason", str(exc)))


async def _account_refused(request: Request, exc: Exception) -> Response:
    return _refuse(request, 409, str(exc))


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
        for e in exc.errors()
    ]
    return _refuse(
        request,
        422,
        "; ".join(problems) or "invalid request",
        detail=jsonable_encoder(exc.errors()),
    )


async def _unavailable(request: Request, exc: Exception) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return _refuse(request, 503, f"unavailable, try again: {exc}", headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return _refuse(request, exc.status_code, str(exc.detail), headers=exc.headers)


def admin_app(backends: Backends, verifier: TokenVerifier, writer: AuditWriter) -> FastAPI:
    """The HTTPS port's app: the API, its OpenAPI document (/openapi.json, /docs); each call
    under /v1/ audited through `writer`."""
    app = FastAPI(
        title="sensor pipeline: admin API",
        version=__version__,
        description="Devices and their MQTT accounts, the dead-letter queue, the audit log; "
        "OAuth 2.0 bearer tokens with the realm roles viewer < operator < admin "
        "(docs/security.md, Admin API). Every call is a row of the audit log.",
        docs_url="/docs",
    )
    app.state.backends = backends
    app.state.verifier = verifier
    app.include_router(router)
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        Unauthenticated: _unauthenticated,
        RoleTooLow: _role_too_low,
        NotFound: _not_found,
        BadRequest: _bad_request,
        AccountError: _account_refused,
        RequestValidationError: _invalid,
        TransientError: _unavailable,
        StarletteHTTPException: _http_error,
    }
    for error, handler in handlers.items():
        app.add_exception_handler(error, handler)
    app.add_middleware(AuditTrail, writer=writer)
    return app
