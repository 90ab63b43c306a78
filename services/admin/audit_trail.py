"""One audit row for every call of the admin API, allowed or refused, whatever answered it
(a route, a refusal's handler, the router's 404): an ASGI middleware around the whole app.

The request's `AuditedCall` (in request.state.audit) is filled in on the way: the route's action
and target, the caller once the token is verified, the reason of a refusal; the middleware
turns it and the answer's status into a `libs.common.audit.AuditEvent` and hands it to the
AuditWriter, which appends it without making the answer wait. Each answer carries the call's
request id (X-Request-ID: the client's, when it sent a usable one).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common.audit import ActorKind, AuditEvent, AuditWriter, Outcome

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# A call no route answered (an unknown path or method).
UNROUTED = "api.unrouted"
RECORDED_BY = "admin-api"


@dataclass(slots=True)
class AuditedCall:
    request_id: str
    action: str = UNROUTED
    target: str | None = None
    actor: str = "anonymous"
    actor_kind: ActorKind = "anonymous"
    reason: str | None = None

    def event(self, status: int, source_address: str | None) -> AuditEvent:
        return AuditEvent(
            actor=self.actor,
            actor_kind=self.actor_kind,
            action=self.action,
            outcome=outcome_of(status),
            recorded_by=RECORDED_BY,
            target=self.target,
            reason=self.reason if status >= 400 else None,
            source_address=source_address,
            request_id=self.request_id,
        )


def outcome_of(status: int) -> Outcome:
    """2xx/3xx: done; 4xx: refused (not done, and the answer says why); 5xx: failed."""
    if status < 400:
        return "allowed"
    return "refused" if status < 500 else "failed"


def request_id_of(sent: str | None) -> str:
    """The client's X-Request-ID when it is a usable one, else a new one."""
    if sent is not None and REQUEST_ID.match(sent):
        return sent
    return uuid.uuid4().hex


def audited_call(request: Request) -> AuditedCall:
    call: AuditedCall = request.state.audit
    return call


class AuditTrail:
    """Audits every request under `prefix`; the docs and the OpenAPI document are not calls."""

    def __init__(self, app: ASGIApp, writer: AuditWriter, prefix: str = "/v1/") -> None:
        self.app = app
        self.writer = writer
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        call = AuditedCall(request_id_of(Headers(scope=scope).get(REQUEST_ID_HEADER)))
        scope.setdefault("state", {})["audit"] = call
        status = 500  # what an exception that escapes every handler becomes

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = call.request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            if status == 500 and call.reason is None:
                call.reason = "internal error"
            self.writer.record(call.event(status, client[0] if client else None))
