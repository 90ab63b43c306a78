"""Settings of the validate stage."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from libs.common.settings import ConsumerSettings


class ValidateSettings(ConsumerSettings):
    service_name: str = "validate"
    http_port: int = Field(default=8081, ge=1, le=65535)
    consumer_group: str = "validate"
    # None: the default rules of docs/architecture.md (services/validate/default_rules.yaml).
    rules_file: Path | None = None
    # Readings stamped further ahead than this are rejected: a device clock gone wrong.
    max_future_skew_s: float = Field(default=300.0, ge=0)
    # Bounded memory for duplicate detection: keys remembered per validate replica (about
    # 160 bytes each, so the default holds some 32 MB).

    dedup_capacity: int = Field(default=200_000, ge=1000)
