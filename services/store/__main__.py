"""`python -m services.store` (or `sensor-store`): --help, --version, or run until SIGTERM."""

from libs.common.cli import serve
from services.store.service import run as run_store
from services.store.settings import StoreSettings


def main() -> None:
    serve("the store stage: write enriched readings to TimescaleDB.", StoreSettings, run_store)


if __name__ == "__main__":
    main()
