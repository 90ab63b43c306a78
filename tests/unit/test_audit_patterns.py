"""The audit collector's patterns on lines captured from the real servers (tests/unit/data/audit:
Mosquitto 2.0.11 with log_type all, Kafka 4's StandardAuthorizer through
deploy/local/kafka/log4j2.properties, PostgreSQL 15 with stack.sh's log_line_prefix)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from libs.common.audit import AuditEvent
from tools.audit_collector.follow import Follower
from tools.audit_collector.patterns import KafkaParser, MosquittoParser, PostgresParser

DATA = Path(__file__).parent / "data" / "audit"


def parse(parser: MosquittoParser | KafkaParser | PostgresParser, name: str) -> list[AuditEvent]:
    lines = (DATA / name).read_text().splitlines()
    return [e for line in lines for e in parser.feed(line)] + parser.flush()


def test_mosquitto_refused_connects_denied_publish_and_subscribe_are_found() -> None:
    events = parse(MosquittoParser(), "mosquitto-debug.log")
    # stack.sh's anonymous probe of the TLS listener at start-up, then the capture's: anonymous,
    # a wrong password, an unknown user, A to B's topic, A subscribing to every device's topic,
    # then B's connect after B was revoked.
    assert [(e.action, e.actor, e.target) for e in events] == [
        ("mqtt.connect", "unknown", None),
        ("mqtt.connect", "unknown", None),
        ("mqtt.connect", "unknown", None),
        ("mqtt.connect", "unknown", None),
        ("mqtt.publish", "probe-dev-a", "sensors/probe-dev-b/readings"),
        ("mqtt.subscribe", "probe-dev-a", "sensors/+/readings"),
        ("mqtt.connect", "unknown", None),
    ]
    connect, publish = events[1], events[4]
    assert (connect.outcome, connect.actor_kind, connect.source_address) == (
        "refused",
        "anonymous",
        "127.0.0.1",
    )
    assert "not authorised (CONNACK 0x87" in (connect.reason or "")
    assert (publish.actor_kind, publish.source_address) == ("device", "127.0.0.1:44637")
    assert publish.reason == (
        "not authorised to publish to sensors/probe-dev-b/readings (ACL; MQTT v5 reason 0x87), "
        "client cid-a"
    )
    assert publish.at == datetime(2026, 12, 2, 18, 27, 39, tzinfo=UTC)
    assert {e.recorded_by for e in events} == {"mosquitto"}


def test_a_granted_subscription_is_no_refusal() -> None:
    parser = MosquittoParser()
    lines = [
        "2026-12-02T18:27:35: Received SUBSCRIBE from c1",
        "2026-12-02T18:27:35: \tsensors/d/readings (QoS 1)",
        "2026-12-02T18:27:35: c1 1 sensors/d/readings",
        "2026-12-02T18:27:35: Sending SUBACK to c1",
    ]
    assert [e for line in lines for e in parser.feed(line)] == []


def test_kafka_denials_name_the_principal_operation_and_resource() -> None:
    events = parse(KafkaParser(), "kafka-authorizer.log")
    assert [(e.actor, e.action, e.target) for e in events] == [
        ("ingest", "kafka.describe", "topic:sensor-data-validated"),
        ("ingest", "kafka.describe", "topic:sensor-data-enriched"),
        ("validate", "kafka.write", "topic:sensor-data"),
        ("validate", "kafka.describe", "topic:sensor-data-enriched"),
        ("store", "kafka.write", "topic:sensor-data-enriched"),
        ("store", "kafka.describe", "group:probe-g"),
    ]
    write = events[2]
    assert (write.actor_kind, write.outcome, write.source_address) == (
        "service",
        "refused",
        "127.0.0.1",
    )
    assert write.reason == "WRITE on Topic sensor-data denied (Produce request, rule DefaultDeny)"
    assert write.at == datetime(2026, 12, 2, 18, 30, 18, 136000, tzinfo=UTC)


def test_postgres_refused_statements_and_logins_name_role_verb_and_target() -> None:
    events = parse(PostgresParser(), "postgres.log")
    assert [(e.actor, e.action, e.target) for e in events] == [
        ("store", "db.ddl", "public"),
        ("store", "db.update", "sensor_readings"),
        ("store", "db.ddl", "sensor_readings"),
        ("admin_api", "db.update", "audit_log"),
        ("audit_writer", "db.delete", "audit_log"),
        ("migrator", "db.truncate", "audit_log"),
        ("store", "db.login", "sensors"),
        ("nobody", "db.login", "sensors"),
        ("store", "db.login", "sensors"),
    ]
    assert events[0].reason == "permission denied for schema public"
    assert events[5].reason == "audit_log is append-only: TRUNCATE refused"
    assert events[6].reason == 'password authentication failed for user "store"'
    assert events[8].reason.startswith("no pg_hba.conf entry for host")  # type: ignore[union-attr]
    assert {e.source_address for e in events} == {"127.0.0.1"}
    assert {e.actor_kind for e in events} == {"service"}


def test_unknown_lines_are_ignored() -> None:
    for parser in (MosquittoParser(), KafkaParser(), PostgresParser()):
        assert parser.feed("something else entirely") == []
        assert parser.feed("") == []


def test_the_follower_reads_whole_lines_and_resumes_from_its_saved_offset(tmp_path: Path) -> None:
    log, state = tmp_path / "x.log", tmp_path / "state" / "x.offset"
    log.write_text("one\ntwo\nthr")
    follower = Follower(log, state)
    assert follower.read() == ["one", "two"]
    follower.commit()
    with log.open("a") as f:
        f.write("ee\n")
    # A new follower (a restart) goes on after the committed lines.
    again = Follower(log, state)
    assert again.read() == ["three"]
    # Not committed: read again after another restart, not lost.
    assert Follower(log, state).read() == ["three"]


def test_the_follower_starts_over_after_truncation_and_finishes_a_rotated_file(
    tmp_path: Path,
) -> None:
    log, state = tmp_path / "x.log", tmp_path / "x.offset"
    log.write_text("a\nb\n")
    follower = Follower(log, state)
    assert follower.read() == ["a", "b"]
    follower.commit()
    log.write_text("c\n")  # truncated and written again, same file
    assert follower.read() == ["c"]
    follower.commit()
    with log.open("a") as f:
        f.write("d\n")
    log.rename(tmp_path / "x.log.1")  # rotated with a line not read yet
    log.write_text("e\n")
    assert follower.read() == ["d"]
    follower.commit()
    assert follower.read() == ["e"]
