"""Duplicate detection on (device_id, time) with a bounded memory.

Kafka keys readings by device_id, so one device's readings always reach the same validate
replica; a duplicate older than the window is still caught by the table's unique key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class Deduplicator:
    """Remembers the last `capacity` keys, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # OrderedDict pops its oldest key in O(1); a plain dict slows down as its front empties.
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, keys: Iterable[tuple[str, str]]) -> None:
        seen = self._seen
        for key in keys:
            if key in seen:
                continue
            if len(seen) >= self.capacity:
                seen.popitem(last=False)
            seen[key] = None
