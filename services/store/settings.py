"""Settings of the store stage."""

from __future__ import annotations

from pydantic import Field

from libs.common.settings import ConsumerSettings


class StoreSettings(ConsumerSettings):
    service_name: str = "store"
    http_port: int = Field(default=8083, ge=1, le=65535)
    consumer_group: str = "store"
    # Its login user of least privilege: INSERT, SELECT on sensor_readings (migration 0003).
    database_role: str = "store"
    # A batch is written when it holds this many rows or its oldest waited this long. Under
    # load a batch fills from what the consumer fetched while the previous one was written, so
    # the wait only matters when store has caught up: then it is the store leg's latency
    # (500 ms was most of the chain's p95; at saturation 50 ms stores as fast, bench.research.ab).
    batch_max_rows: int = Field(default=5000, ge=1)
    batch_max_wait_ms: int = Field(default=50, ge=0, le=10_000)
    db_pool_size: int = Field(default=4, ge=1, le=64)
    # A registered device with no reading for this long counts in pipeline_devices_silent.
    silent_device_after_s: float = Field(default=900.0, gt=0)
    silent_check_interval_s: float = Field(default=60.0, gt=0)
