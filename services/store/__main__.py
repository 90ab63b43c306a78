"""`python -m services.store`: build the settings, run the stage until SIGTERM."""

from libs.common.lifecycle import run
from libs.common.logs import configure_logging
from services.store.service import run as run_store
from services.store.settings import StoreSettings

settings = StoreSettings()
configure_logging(settings.service_name, settings.log_level)
run(lambda stop: run_store(settings, stop), settings.shutdown_timeout_s)
