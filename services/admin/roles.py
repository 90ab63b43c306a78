"""The admin API's roles, from a token's realm roles (Keycloak's realm_access.roles): each
includes the ones below it, as the realm's composite roles do."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

from libs.common.audit import ActorKind
from libs.common.auth import Principal


class Role(IntEnum):
    """viewer reads; operator also registers, updates and revokes devices and replays dead
    letters; admin also reads the audit log."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


def highest_role(roles: Iterable[str]) -> Role | None:
    """The highest admin API role among a token's realm roles; None when it has none of them."""
    known = [Role[name.upper()] for name in roles if name.upper() in Role.__members__]
    return max(known, default=None)


def may(roles: Iterable[str], needed: Role) -> bool:
    held = highest_role(roles)
    return held is not None and held >= needed


def actor_of(principal: Principal) -> tuple[str, ActorKind]:
    """Who the audit log names for a verified token: a user by their user name (the token's
    subject when it has none), a client's service account as a client."""
    name = principal.username
    if name and not name.startswith("service-account-"):
        return name, "user"
    return name or principal.subject, "client"
