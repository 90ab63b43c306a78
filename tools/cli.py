"""The tools' one argparse start: every tool's --help and --version name the project's version."""

from __future__ import annotations

import argparse
from typing import Any

from libs.common.version import __version__


def argument_parser(prog: str, description: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """An `ArgumentParser` whose help ends with the version and that answers `--version`."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=f"version {__version__}", **kwargs
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser
