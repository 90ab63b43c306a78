"""`python -m tools.setup`: wait for Kafka and PostgreSQL, create the topics, apply migrations.

Idempotent: run it as often as you like (make up runs it every time, Kubernetes as a Job).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import structlog

from libs.common.cli import argument_parser
from libs.common.db import connect, migrate
from libs.common.kafka import ensure_topics
from libs.common.logs import configure_logging
from libs.common.retry import call_with_retry
from libs.common.settings import PipelineSettings

log = structlog.get_logger("setup")


class SetupSettings(PipelineSettings):
    service_name: str = "setup"
    # The migrations run as the role that owns the tables (DDL); the services' roles only
    # get their grants from them.
    database_role: str = "migrator"
    # How long to wait for Kafka and the database to come up before giving up.
    setup_wait_s: float = 120.0


async def setup(settings: SetupSettings) -> None:
    created = await call_with_retry(
        lambda: ensure_topics(settings), settings.setup_wait_s, name="ensure_topics"
    )
    log.info("topics ready", created=created, partitions=settings.topic_partitions)
    conn = await call_with_retry(
        lambda: connect(settings), settings.setup_wait_s, name="database_connect"
    )
    try:
        applied = await migrate(conn, settings.database_schema)
    finally:
        await conn.close()
    log.info("database ready", applied=applied, schema=settings.database_schema)


def main(argv: Sequence[str] | None = None) -> int:
    # No options of its own: the settings come from the environment, as the services' do.
    argument_parser(
        "python -m tools.setup",
        "Wait for Kafka and PostgreSQL, create the topics and apply the migrations (idempotent).",
    ).parse_args(argv)
    settings = SetupSettings()
    configure_logging(settings.service_name, settings.log_level)
    try:
        asyncio.run(setup(settings))
    except Exception as error:
        log.error("setup failed", error=repr(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
