"""Validation rules: which fields are required and which ranges numeric fields must keep."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from libs.common.errors import ConfigurationError

DEFAULT_RULES_FILE = Path(__file__).with_name("default_rules.yaml")


@dataclass(frozen=True, slots=True)
class Range:
    min: float
    max: float


@dataclass(frozen=True, slots=True)
class Rules:
    required: tuple[str, ...] = ("device_id", "timestamp")
    ranges: dict[str, Range] = field(default_factory=dict)


def load_rules(path: Path | None = None) -> Rules:
    """Read a rules file; a wrong file stops the service at start-up with the reason."""
    path = path or DEFAULT_RULES_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigurationError(f"rules file {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigurationError(f"rules file {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigurationError(f"rules file {path}: expected a mapping at the top")
    unknown = set(data) - {"required", "ranges"}
    if unknown:
        raise ConfigurationError(f"rules file {path}: unknown keys {sorted(unknown)}")
    required = data.get("required", ["device_id", "timestamp"])
    if not isinstance(required, list) or not all(isinstance(f, str) for f in required):
        raise ConfigurationError(f"rules file {path}: 'required' must be a list of field names")
    ranges: dict[str, Range] = {}
    for name, bounds in (data.get("ranges") or {}).items():
        if not isinstance(bounds, dict) or set(bounds) != {"min", "max"}:
            raise ConfigurationError(f"rules file {path}: range of {name} needs min and max")
        low, high = bounds["min"], bounds["max"]
        if not all(_is_finite_number(v) for v in (low, high)) or low > high:
            raise ConfigurationError(
                f"rules file {path}: range of {name} needs numbers with min <= max"
            )
        ranges[str(name)] = Range(float(low), float(high))
    return Rules(required=tuple(required), ranges=ranges)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
