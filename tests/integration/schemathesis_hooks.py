"""Schemathesis hooks for tests/integration/test_ingest_openapi.py (SCHEMATHESIS_HOOKS names
this module): how to put an application/x-ndjson body on the wire.

ingest's document gives NDJSON the schema of an array of readings, each item one line of the body
(no schema language describes a stream of lines); schemathesis has no NDJSON serializer of its
own and would skip that content type.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    # Negative cases bring values that are not arrays: one line of whatever they are.
    items = value if isinstance(value, list) else [value]
    # json, not orjson: generated integers can be wider than the 64 bits orjson writes.
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)
