"""Duplicate detection keeps a bounded memory and forgets the oldest keys first."""

from services.validate.dedup import Deduplicator, reading_key


def test_a_remembered_key_is_a_duplicate() -> None:
    dedup = Deduplicator(capacity=1000)
    dedup.remember([reading_key("dev", "t1")])
    assert reading_key("dev", "t1") in dedup
    assert reading_key("dev", "t2") not in dedup


def test_memory_stays_bounded_and_the_oldest_keys_go_first() -> None:
    dedup = Deduplicator(capacity=1000)
    dedup.remember(reading_key(f"dev-{i}", "t") for i in range(5000))
    assert len(dedup) == 1000
    assert reading_key("dev-3999", "t") not in dedup
    assert reading_key("dev-4000", "t") in dedup and reading_key("dev-4999", "t") in dedup


def test_keys_of_different_readings_never_collide() -> None:
    # Joined with a separator neither part can contain (NUL), so where one ends is never lost.
    assert reading_key("ab", "c") != reading_key("a", "bc")
    assert reading_key("dev-1", "2026-11-27T05:00:00+00:00") == reading_key(
        "dev-1", "2026-11-27T05:00:00+00:00"
    )
