"""`python -m tools.replay`: send chosen dead letters back into the chain once their cause is
fixed (rules widened, a device registered, a bug deployed away).

Each record goes back to the input of the stage that refused it: ingest's and validate's to the
raw topic (the start of the chain), enrich's to the validated topic, store's to the enriched
topic. Replaying a record twice is harmless: validate drops the duplicate and the table's
unique key keeps one row. The reading and the replaying are libs.common.dlq's (the admin API's
DLQ endpoints use the same).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from datetime import datetime

import structlog

from libs.common.cli import argument_parser
from libs.common.dlq import Selection, replay_batches, scan_dead_letters, send_replays
from libs.common.logs import configure_logging
from libs.common.models import Stage
from libs.common.service import kafka_producer
from libs.common.settings import ConsumerSettings

log = structlog.get_logger("replay")


async def replay(
    settings: ConsumerSettings, selection: Selection, *, dry_run: bool
) -> Counter[str]:
    letters = [stored.letter for stored in await scan_dead_letters(settings, selection)]
    by_topic = replay_batches(letters, settings)
    counts = Counter({topic: len(records) for topic, records in by_topic.items()})
    log.info("selected", records=len(letters), by_topic=dict(counts), dry_run=dry_run)
    if dry_run or not letters:
        return counts
    async with kafka_producer(settings) as producers:
        return await send_replays(producers, by_topic)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argument_parser(
        prog="python -m tools.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stage",
        action="append",
        default=[],
        choices=[s.value for s in Stage],
        help="only records this stage refused",
    )
    parser.add_argument(
        "--error-type",
        action="append",
        default=[],
        help="only this error type, e.g. RuleViolation (repeatable)",
    )
    parser.add_argument("--device", action="append", default=[], help="only this device_id")
    parser.add_argument(
        "--since",
        type=datetime.fromisoformat,
        help="only records dead-lettered at or after this ISO 8601 instant",
    )
    parser.add_argument("--limit", type=int, help="at most this many records")
    parser.add_argument("--dry-run", action="store_true", help="count, send nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # The consumer only reads the DLQ from its start (assigned partitions, nothing committed).
    settings = ConsumerSettings(service_name="replay", consumer_group="replay")
    configure_logging(settings.service_name, settings.log_level)
    since = args.since
    if since is not None and since.tzinfo is None:
        log.error("--since needs a UTC offset, e.g. 2026-11-27T05:00:00+00:00")
        return 2
    selection = Selection(
        frozenset(args.stage), frozenset(args.error_type), frozenset(args.device), since, args.limit
    )
    asyncio.run(replay(settings, selection, dry_run=args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
