"""`python -m services.ingest` (or `sensor-ingest`): --help, --version, or run until SIGTERM."""

from libs.common.cli import serve
from services.ingest.service import run as run_ingest
from services.ingest.settings import IngestSettings


def main() -> None:
    serve(
        "the ingest stage: take readings over MQTT and HTTP into Kafka.", IngestSettings, run_ingest
    )


if __name__ == "__main__":
    main()
