"""Following a server's log file by offset, safe across rotation and truncation, with the
offset kept in a file so that a restarted collector neither loses nor repeats a line.

Only whole lines are read: a line still being written stays for the next read. The caller
saves the offset (`commit`) only once the events of the lines read are in the audit log.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# One read's bound: a large backlog is taken in batches, each committed on its own.
MAX_READ_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Position:
    inode: int
    offset: int


class Follower:
    """The new lines of `path` since the position saved in `state_file`."""

    def __init__(self, path: Path, state_file: Path) -> None:
        self.path = path
        self.state_file = state_file
        self.position = self._load()
        self._next: Position | None = None

    def _load(self) -> Position | None:
        try:
            saved = json.loads(self.state_file.read_text(encoding="utf-8"))
            return Position(int(saved["inode"]), int(saved["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _rotated_file(self, inode: int) -> Path | None:
        """The file that had `inode` before a rotation renamed it (kafka-authorizer.log.1...)."""
        for sibling in sorted(self.path.parent.glob(f"{self.path.name}.*")):
            try:
                if sibling.stat().st_ino == inode:
                    return sibling
            except OSError:
                continue
        return None

    def read(self) -> list[str]:
        """The next whole lines (up to MAX_READ_BYTES); [] when there are none."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return []
        position = self.position
        if position is not None and position.inode != current.st_ino:
            # Rotated: first what is left of the old file, if it is still there.
            old = self._rotated_file(position.inode)
            if old is not None:
                lines = self._read_from(old, position)
                if lines:
                    return lines
            position = None
        if position is None or current.st_size < position.offset:
            # New file, or truncated: from its start.
            position = Position(current.st_ino, 0)
        self.position = position
        return self._read_from(self.path, position)

    def _read_from(self, path: Path, position: Position) -> list[str]:
        with path.open("rb") as file:
            file.seek(position.offset)
            chunk = file.read(MAX_READ_BYTES)
        end = chunk.rfind(b"\n")
        if end < 0:
            self._next = None
            return []
        whole = chunk[: end + 1]
        self._next = Position(position.inode, position.offset + len(whole))
        return whole.decode("utf-8", errors="replace").splitlines()

    def commit(self) -> None:
        """Save the position after the lines of the last `read`."""
        if self._next is None:
            return
        self.position = self._next
        self._next = None
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"inode": self.position.inode, "offset": self.position.offset}))
        tmp.replace(self.state_file)
