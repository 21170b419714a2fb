"""The audit log: one JSON line per decision and per command, in the state directory, rotated.

Every line carries ``ts`` (POSIX seconds), ``kind`` (``decision``, ``command_intent``,
``command`` or ``confirmed``), ``rig``, ``dry_run``, and the inputs that mattered. A live command
is written twice: ``command_intent`` just before it is sent, ``command`` with its result after;
``confirmed`` is a rig seen in the state it was commanded to (after how many attempts). Lines are
written whole and flushed, so a crash leaves at most the line being written incomplete; the log
rotates by size, keeping ``backups`` older files (``audit.jsonl.1`` is the newest of them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO


class AuditLog:
    """Append-only JSON lines with size-based rotation."""

    def __init__(self, path: Path, max_bytes: int = 50 * 1024 * 1024, backups: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._size = self._file.tell()

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line (keys sorted for diffable logs)."""
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        if self._size + len(line) > self.max_bytes and self._size > 0:
            self._rotate()
        self._file.write(line)
        self._file.flush()
        self._size += len(line.encode("utf-8"))

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        self._file.close()
