"""`python -m services.validate` (or `sensor-validate`): --help, --version, or run until SIGTERM."""

from libs.common.cli import serve
from services.validate.service import run as run_validate
from services.validate.settings import ValidateSettings


def main() -> None:
    serve("the validate stage: validate raw readings.", ValidateSettings, run_validate)


if __name__ == "__main__":
    main()
