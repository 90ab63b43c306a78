"""The servers' refusals as they write them to their logs, as audit events: one named pattern
per line kind, each tested on lines captured from the real servers (tests/unit/data/audit).
A line no pattern knows is ignored.

Each parser is fed one line at a time and returns the events that line completes; a server
that spreads one refusal over several lines (Mosquitto, PostgreSQL) is followed with a little
state, and `flush` gives what is still pending when the file has no more lines.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from datetime import UTC, datetime

from libs.common.audit import ActorKind, AuditEvent

# ---------------------------------------------------------------- Mosquitto 2.0.11
# log_timestamp_format %Y-%m-%dT%H:%M:%S (deploy/mosquitto/mosquitto.conf), in the broker's
# local time (UTC on the local stack's machines: naive times are taken as UTC).
MOSQ_LINE = re.compile(r"^(?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d): (?P<text>.*)$")
# notice (connection_messages true): who a client id is.
MOSQ_CONNECTED = re.compile(
    r"^New client connected from (?P<address>\S+) as (?P<client>\S+) "
    r"\(p\d+, c\d+, k\d+(?:, u'(?P<username>[^']*)')?\)\.$"
)
# debug: the CONNACK of a refused CONNECT names only the peer's host; the next line says why.
MOSQ_CONNACK_REFUSED = re.compile(r"^Sending CONNACK to (?P<host>\S+) \(\d+, (?P<code>1[3-9]\d)\)$")
# notice: a CONNECT refused for its credentials (none, wrong, or a revoked account: Mosquitto
# 2.0.11 logs neither the user name nor the client id of a refused login).
MOSQ_NOT_AUTHORISED = re.compile(r"^Client <unknown> disconnected, not authorised\.$")
# debug: a PUBLISH the ACL refused.
MOSQ_DENIED_PUBLISH = re.compile(
    r"^Denied PUBLISH from (?P<client>\S+) \(d\d, q\d, r\d, m\d+, '(?P<topic>.*)', "
    r"\.\.\. \(\d+ bytes\)\)$"
)
# debug: a SUBSCRIBE, its topics one a line (tab-indented), then the SUBACK. A topic granted
# gets a `subscribe` line "<client> <qos> <topic>" before the SUBACK; a denied one none.
MOSQ_SUBSCRIBE = re.compile(r"^Received SUBSCRIBE from (?P<client>\S+)$")
MOSQ_SUBSCRIBE_TOPIC = re.compile(r"^\t(?P<topic>.+) \(QoS \d\)$")
MOSQ_SUBACK = re.compile(r"^Sending SUBACK to (?P<client>\S+)$")
MOSQ_CLIENT_GONE = re.compile(r"^Client (?P<client>\S+) (?:disconnected|closed its connection)")
NOT_AUTHORISED_CONNECT = (
    "Mosquitto refused the connection: not authorised (CONNACK {code}: no credentials, a wrong "
    "password or an unknown or revoked account; Mosquitto 2.0.11 logs no user name for it)"
)
KNOWN_CLIENTS = 10_000


def _mosquitto_time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class MosquittoParser:
    """Refused connects, denied publishes and denied subscriptions of Mosquitto's log."""

    recorded_by = "mosquitto"

    def __init__(self) -> None:
        # client id -> (user name, address), from the connect lines: the actor of a denial.
        self._clients: OrderedDict[str, tuple[str | None, str]] = OrderedDict()
        self._refused_host: str | None = None
        self._refused_code = "0x87"
        # client id -> (time, topics asked, topics granted) of a SUBSCRIBE not yet answered.
        self._subscribing: dict[str, tuple[datetime, list[str], set[str]]] = {}
        self._subscriber: str | None = None

    def feed(self, line: str) -> list[AuditEvent]:
        match = MOSQ_LINE.match(line.rstrip("\n"))
        if match is None:
            return []
        at, text = _mosquitto_time(match["at"]), match["text"]
        if topic := MOSQ_SUBSCRIBE_TOPIC.match(text):
            if self._subscriber in self._subscribing:
                self._subscribing[self._subscriber][1].append(topic["topic"])
            return []
        self._subscriber = None
        return self._line(at, text)

    def _line(self, at: datetime, text: str) -> list[AuditEvent]:
        if m := MOSQ_CONNECTED.match(text):
            self._remember(m["client"], m["username"], m["address"])
        elif m := MOSQ_CONNACK_REFUSED.match(text):
            self._refused_host, self._refused_code = m["host"], f"0x{int(m['code']):02x}"
        elif MOSQ_NOT_AUTHORISED.match(text):
            return [self._refused_connect(at)]
        elif m := MOSQ_DENIED_PUBLISH.match(text):
            return [self._denied(at, m["client"], "mqtt.publish", m["topic"])]
        elif m := MOSQ_SUBSCRIBE.match(text):
            self._subscriber = m["client"]
            self._subscribing[m["client"]] = (at, [], set())
        elif m := MOSQ_SUBACK.match(text):
            return self._answered(m["client"])
        elif m := MOSQ_CLIENT_GONE.match(text):
            self._subscribing.pop(m["client"], None)
        else:
            self._granted(text)
        return []

    def _remember(self, client: str, username: str | None, address: str) -> None:
        self._clients[client] = (username, address)
        self._clients.move_to_end(client)
        while len(self._clients) > KNOWN_CLIENTS:
            self._clients.popitem(last=False)

    def _granted(self, text: str) -> None:
        # The `subscribe` log type's line: "<client> <qos> <topic>".
        client, _, rest = text.partition(" ")
        if client in self._subscribing:
            qos, _, topic = rest.partition(" ")
            if qos.isdigit():
                self._subscribing[client][2].add(topic)

    def _refused_connect(self, at: datetime) -> AuditEvent:
        host, self._refused_host = self._refused_host, None
        return AuditEvent(
            actor="unknown",
            actor_kind="anonymous",
            action="mqtt.connect",
            outcome="refused",
            recorded_by=self.recorded_by,
            reason=NOT_AUTHORISED_CONNECT.format(code=self._refused_code),
            source_address=host,
            at=at,
        )

    def _denied(self, at: datetime, client: str, action: str, topic: str) -> AuditEvent:
        username, address = self._clients.get(client, (None, None))
        what = "publish to" if action == "mqtt.publish" else "subscribe to"
        return AuditEvent(
            actor=username or client,
            actor_kind="device" if username else "anonymous",
            action=action,
            outcome="refused",
            recorded_by=self.recorded_by,
            target=topic,
            reason=f"not authorised to {what} {topic} (ACL; MQTT v5 reason 0x87), client {client}",
            source_address=address,
            at=at,
        )

    def _answered(self, client: str) -> list[AuditEvent]:
        asked = self._subscribing.pop(client, None)
        if asked is None:
            return []
        at, topics, granted = asked
        return [
            self._denied(at, client, "mqtt.subscribe", topic)
            for topic in topics
            if topic not in granted
        ]

    def flush(self) -> list[AuditEvent]:
        return []


# ---------------------------------------------------------------- Kafka's StandardAuthorizer
# deploy/local/kafka/log4j2.properties: "[%d{ISO8601}{UTC}] %p %m (%c)", logger
# kafka.authorizer.logger (denials at INFO).
KAFKA_DENIED = re.compile(
    r"^\[(?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d),(?P<ms>\d{3})\] INFO "
    r"Principal = (?P<principal>\S+) is Denied operation = (?P<operation>[A-Z_]+) "
    r"from host = (?P<host>\S+) on resource = (?P<type>[A-Za-z]+):(?P<pattern>[A-Z]+):"
    r"(?P<name>.*) for request = (?P<request>\S+) with resourceRefCount = \d+ "
    r"based on rule (?P<rule>.*) \(kafka\.authorizer\.logger\)$"
)


class KafkaParser:
    """The authorizer's denials: a principal's operation on a topic, group or transactional
    id that no ACL allows."""

    recorded_by = "kafka"

    def feed(self, line: str) -> list[AuditEvent]:
        m = KAFKA_DENIED.match(line.rstrip("\n"))
        if m is None:
            return []
        kind, _, name = m["principal"].partition(":")
        actor_kind: ActorKind = "anonymous" if name == "ANONYMOUS" else "service"
        at = datetime.fromisoformat(f"{m['at']}.{m['ms']}").replace(tzinfo=UTC)
        resource = f"{m['type'].lower()}:{m['name']}"
        return [
            AuditEvent(
                actor=name or kind,
                actor_kind=actor_kind,
                action=f"kafka.{m['operation'].lower()}",
                outcome="refused",
                recorded_by=self.recorded_by,
                target=resource,
                reason=f"{m['operation']} on {m['type']} {m['name']} denied ({m['request']} "
                f"request, rule {m['rule']})",
                source_address=m["host"],
                at=at,
            )
        ]

    def flush(self) -> list[AuditEvent]:
        return []


# ---------------------------------------------------------------- PostgreSQL 15
# stack.sh's log_line_prefix '%m [%p] %q%u@%d %h %e ': time, pid, then for a session's lines
# user@database, the client's host and the SQLSTATE.
PG_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC \[(?P<pid>\d+)\] "
    r"(?P<user>[^@\s]*)@(?P<db>\S*) (?P<host>\S+) (?P<state>[0-9A-Z]{5}) "
    r"(?P<level>[A-Z]+):  (?P<message>.*)$"
)
# 42501 insufficient_privilege: "permission denied for table ...", "must be owner of ...",
# the audit log's own "audit_log is append-only: UPDATE refused".
PG_DENIED = "42501"
# 28P01 invalid_password, 28000 invalid_authorization_specification (no pg_hba.conf line).
PG_LOGIN_REFUSED = {"28P01", "28000"}
AT_CHARACTER = re.compile(r" at character \d+$")
STATEMENT_VERB = re.compile(r"^\s*(?P<verb>[A-Za-z]+)")
DDL = {"create", "alter", "drop", "truncate", "grant", "revoke", "comment"}


def _db_action(statement: str | None) -> str:
    verb = (m["verb"].lower() if (m := STATEMENT_VERB.match(statement or "")) else "") or "query"
    return "db.ddl" if verb in DDL and verb != "truncate" else f"db.{verb}"


class PostgresParser:
    """Refused logins and statements refused for want of privilege; the statement's verb
    (from the STATEMENT line that follows an ERROR) names the action, its text is not kept
    (it may hold data or a password)."""

    recorded_by = "postgres"

    def __init__(self) -> None:
        # pid -> the refused statement's line, until its STATEMENT line (or the next line).
        self._pending: dict[str, re.Match[str]] = {}

    def feed(self, line: str) -> list[AuditEvent]:
        m = PG_LINE.match(line.rstrip("\n"))
        if m is None:
            return []
        if m["level"] == "STATEMENT":
            denied = self._pending.pop(m["pid"], None)
            return [self._denied(denied, m["message"])] if denied is not None else []
        if m["level"] in {"DETAIL", "HINT", "CONTEXT"}:
            return []
        events = self._take(m["pid"])
        if m["state"] == PG_DENIED and m["level"] == "ERROR":
            self._pending[m["pid"]] = m
        elif m["state"] in PG_LOGIN_REFUSED and m["level"] == "FATAL":
            events.append(self._event(m, "db.login", m["db"], m["message"]))
        return events

    def _take(self, pid: str) -> list[AuditEvent]:
        denied = self._pending.pop(pid, None)
        return [self._denied(denied, None)] if denied is not None else []

    def _denied(self, m: re.Match[str], statement: str | None) -> AuditEvent:
        message = AT_CHARACTER.sub("", m["message"])
        target = re.search(r" (?:for|of) (?:\w+ )?(?P<name>\S+)$", message)
        name = target["name"] if target else None
        if name is None and m["message"].startswith("audit_log "):
            name = "audit_log"
        return self._event(m, _db_action(statement), name, message)

    def _event(self, m: re.Match[str], action: str, target: str | None, reason: str) -> AuditEvent:
        return AuditEvent(
            actor=m["user"] or "unknown",
            actor_kind="service" if m["user"] else "anonymous",
            action=action,
            outcome="refused",
            recorded_by=self.recorded_by,
            target=target,
            reason=reason,
            source_address=None if m["host"] == "[local]" else m["host"],
            at=datetime.fromisoformat(m["at"]).replace(tzinfo=UTC),
        )

    def flush(self) -> list[AuditEvent]:
        events = [self._denied(m, None) for m in self._pending.values()]
        self._pending.clear()
        return events
