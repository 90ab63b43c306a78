"""Settings of the enrich stage."""

from __future__ import annotations

from pydantic import Field

from libs.common.settings import ConsumerSettings


class EnrichSettings(ConsumerSettings):
    service_name: str = "enrich"
    http_port: int = Field(default=8082, ge=1, le=65535)
    consumer_group: str = "enrich"
    # Its login user of least privilege: SELECT on devices (migration 0003).
    database_role: str = "enrich"
    registry_refresh_s: float = Field(default=60.0, gt=0)
    geohash_precision: int = Field(default=7, ge=1, le=12)
