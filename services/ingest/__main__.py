"""`python -m services.ingest`: build the settings, run the service until SIGTERM."""

from libs.common.lifecycle import run
from libs.common.logs import configure_logging
from services.ingest.service import run as run_ingest
from services.ingest.settings import IngestSettings

settings = IngestSettings()
configure_logging(settings.service_name, settings.log_level)
run(lambda stop: run_ingest(settings, stop), settings.shutdown_timeout_s)
