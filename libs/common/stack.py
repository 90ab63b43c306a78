"""The local stack's files as `make up` leaves them (deploy/local): where they are, and the one
way a generated secret is read back from them.

Paths are resolved at run time from the checkout, so that no machine's path is ever written
into a default or a generated file.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from libs.common.errors import ConfigurationError

# The checkout's root: libs/common/stack.py -> the repo.
REPO_ROOT = Path(__file__).resolve().parents[2]

# What to do about a missing local secret, unless the caller knows better.
RUN_MAKE_UP = "run `make up` (it generates the local stack's secrets), as the user who ran it"


def local_stack_dir() -> Path:
    """The local stack's state folder, `<repo>/.stack` (deploy/local/common.sh's STACK_DIR)."""
    return REPO_ROOT / ".stack"


def local_certs_dir() -> Path:
    return local_stack_dir() / "certs"


def local_secrets_dir() -> Path:
    return local_stack_dir() / "secrets"


def local_ca_file() -> Path:
    """The CA that `make up` creates for the local stack (deploy/local/certs.sh)."""
    return local_certs_dir() / "ca.crt"


def read_secret(path: Path, what: str, fix: str = RUN_MAKE_UP) -> SecretStr:
    """The stripped content of a generated secret file. ConfigurationError naming WHAT, the
    path and FIX when it cannot be read or is empty; the content never appears in one."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} from {path} ({exc.strerror}): {fix}") from exc
    if not text:
        raise ConfigurationError(f"{what}: {path} is empty: {fix}")
    return SecretStr(text)
