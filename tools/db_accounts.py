"""The database accounts of least privilege, for the command line (tools.credentials, tests):
the one implementation is libs.common.db_accounts, which the services use as well."""

from __future__ import annotations

from libs.common.db_accounts import ROLES, dsn_for, password_file, read_password, role_dsn

__all__ = ["ROLES", "dsn_for", "password_file", "read_password", "role_dsn"]
