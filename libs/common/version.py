"""The project's one version source: the installed package's metadata (pyproject's `version`)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed_version

DISTRIBUTION = "sensor-pipeline"

try:
    __version__ = _installed_version(DISTRIBUTION)
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
