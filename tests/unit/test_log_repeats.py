"""A library's log line that repeats (aiokafka's "Unable connect to node" while Kafka is away,
thousands a second) is written once per interval, with how often it came meanwhile."""

from __future__ import annotations

import io
import logging

import orjson

from libs.common.logs import RepeatFilter, configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_a_repeated_line_passes_once_per_interval_with_its_count() -> None:
    clock = Clock()
    repeats = RepeatFilter(every_s=10, clock=clock)
    template = "Unable connect to node with id %s: %s"
    passed = [repeats.filter(record(template, 1, f"refused {i}")) for i in range(1000)]
    assert passed == [True] + [False] * 999
    clock.now = 10.5
    again = record(template, 1, "refused")
    assert repeats.filter(again)
    assert again.repeated == 999  # type: ignore[attr-defined]


def test_different_lines_and_loggers_are_not_held_back() -> None:
    repeats = RepeatFilter(every_s=10, clock=Clock())
    assert repeats.filter(record("Unable connect to node with id %s", 1))
    assert repeats.filter(record("Unable to update metadata from %s", [1]))
    assert repeats.filter(record("Unable connect to node with id %s", 1, name="asyncpg"))


def test_the_count_reaches_the_json_line() -> None:
    configure_logging("test")
    log = logging.getLogger("aiokafka.test")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[-1]
    handler.setStream(stream)  # type: ignore[attr-defined]
    repeats = next(f for f in handler.filters if isinstance(f, RepeatFilter))
    clock = Clock()
    repeats.clock = clock
    for _ in range(5):
        log.error("broker away %s", 1)
    clock.now = 11.0
    log.error("broker away %s", 2)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("repeated") for line in lines] == [None, 4]
    assert lines[1]["event"] == "broker away 2"
