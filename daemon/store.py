"""Durable state in SQLite (``<state_dir>/rigpilot.db``): what a restart must not forget.

- the inventory cache (identities, so a restart observes at once instead of re-identifying);
- operator pins, the site target, hand-set prices, and the control-room commands still waiting
  for their final answer;
- the ids of processed commands (a redelivery after a restart is still recognised);
- the guards' state (dwell timers, thermal cool-downs, the ramp's log): a row per rig, written
  only when that rig's state changed (a 10,000-rig site rewrites a few rows a tick, not all);
- the reconciler's in-flight commands: written **before** a command is sent, so a daemon killed
  mid-send does not send it again after the restart, but waits for the observation;
- recent commands, and the last tick's status for ``rigpilot status``.

Every write is one transaction in WAL mode with ``synchronous=FULL``: after ``commit`` returns
it survives SIGKILL and power loss, and a crash mid-write leaves the previous version. Control
room answers are published only after the state they acknowledge is committed.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import structlog

from drivers.inventory import CACHE_VERSION, Inventory
from policies.values import Identity

log = structlog.get_logger("store")

SCHEMA_VERSION: Final = 1
DB_NAME: Final = "rigpilot.db"
RECENT_COMMANDS: Final = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS guard_rigs (rig TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (
    command TEXT NOT NULL, id TEXT NOT NULL, at REAL NOT NULL, answer TEXT, request TEXT,
    PRIMARY KEY (command, id)
);
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
CREATE TABLE IF NOT EXISTS commands (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, rig TEXT NOT NULL,
    mode TEXT NOT NULL, power_limit_w INTEGER, attempt INTEGER NOT NULL, outcome TEXT NOT NULL,
    detail TEXT NOT NULL, decided_by TEXT NOT NULL
);
"""


def _add_seen_request(db: sqlite3.Connection) -> None:
    """A database from before the ``seen.request`` column gets it (empty for old rows)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(seen)")}
    if "request" not in columns:
        db.execute("ALTER TABLE seen ADD COLUMN request TEXT")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class StoreError(Exception):
    """The state database cannot be used; the message names the file and the problem."""


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.executescript(_SCHEMA)
            _add_seen_request(self.db)
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"state database {path} has schema {row[0]}, this rigpilot expects "
                    f"{SCHEMA_VERSION}"
                )
        except sqlite3.Error as exc:
            raise StoreError(f"state database {path} cannot be used: {exc}") from None

    def close(self) -> None:
        self.db.close()

    # -- documents ---------------------------------------------------------------------------

    def get(self, key: str) -> Any | None:
        """The JSON document stored under ``key`` (None if absent or unreadable, logged)."""
        row = self.db.execute("SELECT value FROM docs WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError as exc:
            log.warning("store.document_unreadable", key=key, error=str(exc))
            return None

    def put(
        self,
        docs: Mapping[str, Any],
        *,
        seen: Iterable[tuple[str, str, float, Mapping[str, Any] | None, str | None]] = (),
        guard_rigs: Mapping[str, Mapping[str, Any]] | None = None,
        guard_rigs_gone: Iterable[str] = (),
    ) -> None:
        """Write ``docs``, new processed-command ids, and the rigs' guard states that changed
        (``guard_rigs``; the ones in ``guard_rigs_gone`` are deleted), in one transaction."""
        now = time.time()
        rows = [(k, _dumps(v), now) for k, v in docs.items()]
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO docs VALUES (?, ?, ?)", rows)
            if guard_rigs:
                self.db.executemany(
                    "INSERT OR REPLACE INTO guard_rigs VALUES (?, ?)",
                    [(r, _dumps(v)) for r, v in guard_rigs.items()],
                )
            self.db.executemany(
                "DELETE FROM guard_rigs WHERE rig=?", [(r,) for r in guard_rigs_gone]
            )
            self.db.executemany(
                "INSERT INTO seen (command, id, at, answer, request) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (command, id) DO UPDATE "
                "SET answer = COALESCE(excluded.answer, seen.answer), "
                "request = COALESCE(excluded.request, seen.request)",
                [(c, i, at, None if a is None else _dumps(a), r) for c, i, at, a, r in seen],
            )

    def guard_rigs(self) -> dict[str, dict[str, Any]]:
        """Every rig's stored guard state (a row that is not JSON is skipped, and logged)."""
        out: dict[str, dict[str, Any]] = {}
        for rig, value in self.db.execute("SELECT rig, value FROM guard_rigs"):
            try:
                out[str(rig)] = json.loads(value)
            except ValueError as exc:
                log.warning("store.guard_row_unreadable", rig=rig, error=str(exc))
        return out

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)

    # -- processed command ids ---------------------------------------------------------------

    def seen(
        self, since: float
    ) -> dict[tuple[str, str], tuple[float, dict[str, Any] | None, str | None]]:
        """Processed request ids since ``since``, with their final answers where given, and
        what each request asked (the desk's fingerprint, to tell a redelivery from a reuse)."""
        rows = self.db.execute(
            "SELECT command, id, at, answer, request FROM seen WHERE at >= ? ORDER BY at",
            (since,),
        ).fetchall()
        out: dict[tuple[str, str], tuple[float, dict[str, Any] | None, str | None]] = {}
        for c, i, at, answer, request in rows:
            final = None
            if answer is not None:
                with contextlib.suppress(ValueError):
                    final = json.loads(answer)
            out[(str(c), str(i))] = (float(at), final, None if request is None else str(request))
        return out

    def prune_seen(self, before: float) -> None:
        with self._tx():
            self.db.execute("DELETE FROM seen WHERE at < ?", (before,))

    # -- recent commands ---------------------------------------------------------------------

    def add_commands(
        self, rows: Iterable[tuple[float, str, str, int | None, int, str, str, str]]
    ) -> None:
        with self._tx():
            self.db.executemany(
                "INSERT INTO commands (at, rig, mode, power_limit_w, attempt, outcome, detail, "
                "decided_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                list(rows),
            )
            self.db.execute(
                "DELETE FROM commands WHERE seq <= (SELECT MAX(seq) FROM commands) - ?",
                (RECENT_COMMANDS,),
            )

    def recent_commands(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT at, rig, mode, power_limit_w, attempt, outcome, detail, decided_by "
            "FROM commands ORDER BY seq DESC LIMIT ?",
            (limit,),
        ).fetchall()
        keys = ("at", "rig", "mode", "power_limit_w", "attempt", "outcome", "detail", "by")
        return [dict(zip(keys, r, strict=True)) for r in rows]


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")


def read_status(state_dir: Path) -> tuple[dict[str, Any] | None, float | None]:
    """The last status document the daemon wrote, and when (read-only; (None, None) if none)."""
    path = state_dir / DB_NAME
    if not path.exists():
        return None, None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value, updated_at FROM docs WHERE key='status'").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"state database {path} cannot be read: {exc}") from None
    if row is None:
        return None, None
    return json.loads(row[0]), float(row[1])


class StoredInventory(Inventory):
    """The inventory cache in the state database instead of a JSON file."""

    KEY: Final = "inventory"

    def __init__(self, store: Store, legacy_file: Path | None = None) -> None:
        super().__init__(None)
        self.store = store
        self.legacy_file = legacy_file

    def load(self) -> int:
        data = self.store.get(self.KEY)
        if data is None and self.legacy_file is not None and self.legacy_file.exists():
            legacy = Inventory(self.legacy_file)  # an older rigpilot's JSON cache: adopt it
            count = legacy.load()
            self.rigs.update(legacy.rigs)
            if count:
                self.save()
            return count
        if data is None:
            return 0
        try:
            if data.get("version") != CACHE_VERSION:
                raise ValueError(f"cache version {data.get('version')!r}, expected {CACHE_VERSION}")
            rigs = {r["address"]: Identity.from_dict(r) for r in data["rigs"]}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("inventory.cache_unusable", path=str(self.store.path), error=str(exc))
            return 0
        self.rigs.update(rigs)
        return len(rigs)

    def save(self) -> None:
        doc = {"version": CACHE_VERSION, "rigs": [r.as_dict() for r in self.rigs.values()]}
        self.store.put({self.KEY: doc})
