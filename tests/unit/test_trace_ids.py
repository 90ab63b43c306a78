"""ingest's trace ids: random 128-bit ids, one per record, never the same twice in a batch."""

from __future__ import annotations

import string

from services.ingest.handover import trace_ids


def test_trace_ids_are_32_hex_digits_and_distinct() -> None:
    ids = trace_ids(10_000)
    assert len(ids) == 10_000
    assert len(set(ids)) == 10_000
    assert all(len(i) == 32 and set(i.decode()) <= set(string.hexdigits.lower()) for i in ids)


def test_no_ids_for_no_records() -> None:
    assert trace_ids(0) == []
