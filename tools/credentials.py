"""`python -m tools.credentials`: the credentials an operator, a script or a test needs for the
local stack, one subcommand per kind (docs/security.md).

    python -m tools.credentials database --role reader    a DSN for that database role
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from libs.common.cli import argument_parser
from libs.common.errors import ConfigurationError
from libs.common.settings import PipelineSettings
from tools.db_accounts import ROLES, dsn_for


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(
        "python -m tools.credentials", "Print credentials for the local stack."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    database = commands.add_parser(
        "database",
        help="a PostgreSQL DSN for a role of least privilege (TLS, verify-full)",
        description="Print postgresql://ROLE:PASSWORD@HOST:PORT/DB?sslmode=verify-full&... "
        "for one role: "
        + "; ".join(f"{name}: {what}" for name, what in ROLES.items())
        + ". Host, port and database come from DATABASE_URL, the CA from TLS_CA_FILE.",
    )
    database.add_argument("--role", required=True, choices=sorted(ROLES))
    database.add_argument(
        "--secrets-dir",
        type=Path,
        default=None,
        help="the stack's secrets folder (default: <repo>/.stack/secrets, as `make up` writes)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        dsn = dsn_for(args.role, PipelineSettings(service_name="credentials"), args.secrets_dir)
    except ConfigurationError as error:
        sys.stderr.write(f"credentials: {error}\n")
        return 1
    sys.stdout.write(dsn + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
