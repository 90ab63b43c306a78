"""Duplicate detection keeps a bounded memory and forgets the oldest keys first."""

from services.validate.dedup import Deduplicator


def test_a_remembered_key_is_a_duplicate() -> None:
    dedup = Deduplicator(capacity=1000)
    dedup.remember([("dev", "t1")])
    assert ("dev", "t1") in dedup
    assert ("dev", "t2") not in dedup


def test_memory_stays_bounded_and_the_oldest_keys_go_first() -> None:
    dedup = Deduplicator(capacity=1000)
    dedup.remember((f"dev-{i}", "t") for i in range(5000))
    assert len(dedup) == 1000
    assert ("dev-3999", "t") not in dedup
    assert ("dev-4000", "t") in dedup and ("dev-4999", "t") in dedup
