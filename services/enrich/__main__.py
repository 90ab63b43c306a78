"""`python -m services.enrich`: build the settings, run the stage until SIGTERM."""

from libs.common.lifecycle import run
from libs.common.logs import configure_logging
from services.enrich.service import run as run_enrich
from services.enrich.settings import EnrichSettings

settings = EnrichSettings()
configure_logging(settings.service_name, settings.log_level)
run(lambda stop: run_enrich(settings, stop), settings.shutdown_timeout_s)
