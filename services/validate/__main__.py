"""`python -m services.validate`: build the settings, run the stage until SIGTERM."""

from libs.common.lifecycle import run
from libs.common.logs import configure_logging
from services.validate.service import run as run_validate
from services.validate.settings import ValidateSettings

settings = ValidateSettings()
configure_logging(settings.service_name, settings.log_level)
run(lambda stop: run_validate(settings, stop), settings.shutdown_timeout_s)
