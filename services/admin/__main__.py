"""`python -m services.admin` (or `sensor-admin`): --help, --version, or run until SIGTERM."""

from libs.common.cli import serve
from services.admin.service import run as run_admin
from services.admin.settings import AdminSettings


def main() -> None:
    serve(
        "the admin API: devices, the dead-letter queue and the audit log, over HTTPS.",
        AdminSettings,
        run_admin,
    )


if __name__ == "__main__":
    main()
