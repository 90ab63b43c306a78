"""`python -m services.enrich` (or `sensor-enrich`): --help, --version, or run until SIGTERM."""

from libs.common.cli import serve
from services.enrich.service import run as run_enrich
from services.enrich.settings import EnrichSettings


def main() -> None:
    serve("the enrich stage: enrich validated readings.", EnrichSettings, run_enrich)


if __name__ == "__main__":
    main()
