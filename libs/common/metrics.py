"""Every Prometheus metric of the pipeline, defined once with a `stage` label.

All four services export the same names, so one dashboard and one set of alert rules serve all
(deploy/grafana, deploy/prometheus; docs/observability.md says what each one means). Process CPU
and memory come from prometheus-client's default process collector.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from libs.common.models import Stage
from libs.common.version import __version__

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

MESSAGES_IN = Counter("pipeline_messages_in_total", "Records a stage took in.", ["stage"])
MESSAGES_OUT = Counter(
    "pipeline_messages_out_total", "Records a stage passed on (produced or stored).", ["stage"]
)
DLQ_RECORDS = Counter(
    "pipeline_dlq_records_total",
    "Records sent to the dead-letter topic, by stage and error type.",
    ["stage", "error_type"],
)
ERRORS = Counter(
    "pipeline_errors_total", "Errors met while processing, by type.", ["stage", "error_type"]
)
DUPLICATES = Counter(
    "pipeline_duplicates_dropped_total",
    "Readings dropped as duplicates of an earlier (device_id, timestamp).",
    ["stage"],
)
RETRIES = Counter(
    "pipeline_retries_total", "Transient failures that were retried.", ["stage", "operation"]
)
PROCESSING_SECONDS = Histogram(
    "pipeline_processing_seconds",
    "Time to process one batch, from poll to commit.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "pipeline_batch_size", "Records per processed batch.", ["stage"], buckets=BATCH_BUCKETS
)
CONSUMER_LAG = Gauge(
    "pipeline_consumer_lag",
    "Records between the committed position and the end of the partition.",
    ["stage", "topic", "partition"],
)
DB_WRITE_SECONDS = Histogram(
    "pipeline_db_write_seconds",
    "Time of one database write of a batch.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
END_TO_END_SECONDS = Histogram(
    "pipeline_end_to_end_seconds",
    "From a reading's clock (device timestamp or receive time) to stored.",
    ["stage", "since"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS = Counter(
    "pipeline_ingest_requests_total",
    "MQTT messages and HTTP requests taken by ingest, by transport and outcome.",
    ["stage", "transport", "outcome"],
)
READY = Gauge("pipeline_ready", "1 when the stage is connected to all it needs.", ["stage"])
DEVICES_SILENT = Gauge(
    "pipeline_devices_silent",
    "Registered devices whose newest stored reading is older than the silence threshold.",
    ["stage"],
)
SILENCE_THRESHOLD = Gauge(
    "pipeline_device_silence_threshold_seconds",
    "How long a device may send nothing before it counts in pipeline_devices_silent.",
    ["stage"],
)

BUILD_INFO = Gauge(
    "pipeline_build_info",
    "Always 1; the labels say which release (version) and source commit is running.",
    ["stage", "version", "commit"],
)


def build_commit() -> str:
    """The source commit: PIPELINE_COMMIT (set by the image build), else git, else "unknown".

    The image has no .git, so the Dockerfile bakes the commit in as PIPELINE_COMMIT (the same
    value as its org.opencontainers.image.revision label); a checkout asks git once.
    """
    commit = os.environ.get("PIPELINE_COMMIT", "").strip()
    if commit:
        return commit
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"  # no git, or not a checkout (an installed wheel)
    return answer.stdout.strip() or "unknown"


# The label values each stage can have before anything happened. A series that only appears at
# its first increment hides that increment from rate() and is missing from alerts that compare
# stages, so every series whose labels are known up front starts at zero.
_REQUEST_OUTCOMES = {
    # unavailable: 503, Kafka (or the identity provider's keys) is down; busy: 503, past the
    # concurrency limit (Retry-After); unauthenticated: 401; forbidden: 403.
    "http": (
        "accepted",
        "rejected",
        "too_large",
        "unavailable",
        "busy",
        "unauthenticated",
        "forbidden",
    ),
    "mqtt": ("accepted", "rejected"),
}


def initialise(stage: str) -> None:
    """Create the zero-valued series of `stage`; call once at start-up."""
    BUILD_INFO.labels(stage, __version__, build_commit()).set(1)
    for metric in (MESSAGES_IN, MESSAGES_OUT, PROCESSING_SECONDS, BATCH_SIZE, READY):
        metric.labels(stage)
    # Kafka stages retry whole batches; ingest retries handing a batch over to Kafka.
    RETRIES.labels(stage, "handover" if stage == Stage.INGEST else "batch")
    if stage == Stage.INGEST:
        for transport, outcomes in _REQUEST_OUTCOMES.items():
            for outcome in outcomes:
                REQUESTS.labels(stage, transport, outcome)
    if stage == Stage.VALIDATE:
        DUPLICATES.labels(stage)
    if stage == Stage.STORE:
        DB_WRITE_SECONDS.labels(stage)
        for since in ("device_timestamp", "received_at"):
            END_TO_END_SECONDS.labels(stage, since)


def sample_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, in a scraped /metrics text."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
