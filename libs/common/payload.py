"""Decoding a reading's bytes, with a reason a device owner can act on when it fails."""

from __future__ import annotations

import json
from typing import Any

import orjson

from libs.common.errors import NotJson


def parse_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise NotJson(_why_not_json(payload, error)) from None


def _why_not_json(payload: bytes, error: orjson.JSONDecodeError) -> str:
    # orjson refuses NaN and Infinity as bare words; say so by name, since that is a device
    # bug worth naming, not a garbled message. The slow parser runs only on this error path.
    constants: list[str] = []
    try:
        json.loads(payload, parse_constant=constants.append)
    except (ValueError, RecursionError):
        pass
    if constants:
        return f"not valid JSON: {', '.join(sorted(set(constants)))} is not a JSON number"
    return f"not valid JSON: {error.msg} at position {error.pos}"
