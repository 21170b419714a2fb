"""Durable state in SQLite (``<state_dir>/rigpilot.db``): what a restart must not forget.

- the inventory cache (identities, so a restart observes at once instead of re-identifying);
- operator pins, the site target, hand-set prices, and the control-room commands still waiting
  for their final answer;
- the ids of processed commands (a redelivery after a restart is still recognised);
- the guards' state (dwell timers, thermal cool-downs, the ramp's log): a row per rig, written
  only when that rig's state changed (a 10,000-rig site rewrites a few rows a tick, not all);
- each rig's efficiency learned from measured watts (daemon/efficiency.py): a row per rig,
  rewritten at most every few minutes (daemon/persist.py);
- the power cycles of the last 24 h and the rigs needing hands (daemon/power.py), written
  before a cycle is switched, so a restart never grants a rig a fresh day of cycles;
- the reconciler's in-flight commands: written **before** a command is sent, so a daemon killed
  mid-send does not send it again after the restart, but waits for the observation;
- the last tick's status for ``rigpilot status``.

At start the file is checked (``PRAGMA quick_check``) and brought to the current schema by the
ordered steps of ``MIGRATIONS`` (``PRAGMA user_version``); a damaged file, or any SQLite error
while it is opened and read at start, is one line (StoreError) naming the file and what to do.

Every write is one transaction in WAL mode with ``synchronous=FULL``: after ``commit`` returns
it survives SIGKILL and power loss, and a crash mid-write leaves the previous version. Control
room answers are published only after the state they acknowledge is committed.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import structlog

from drivers.inventory import CACHE_VERSION, Inventory
from policies.values import Identity

log = structlog.get_logger("store")

DB_NAME: Final = "rigpilot.db"
_SCHEMA_V1: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS docs ("
    " key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS guard_rigs (rig TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS seen ("
    " command TEXT NOT NULL, id TEXT NOT NULL, at REAL NOT NULL, answer TEXT,"
    " PRIMARY KEY (command, id))",
    "CREATE INDEX IF NOT EXISTS seen_at ON seen (at)",
    "CREATE TABLE IF NOT EXISTS commands ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, rig TEXT NOT NULL,"
    " mode TEXT NOT NULL, power_limit_w INTEGER, attempt INTEGER NOT NULL,"
    " outcome TEXT NOT NULL, detail TEXT NOT NULL, decided_by TEXT NOT NULL)",
)

_SCHEMA_V2: Final = (
    # what each processed request asked (the desk's fingerprint): a transaction id reused for
    # another request is a conflict, also after a restart
    "ALTER TABLE seen ADD COLUMN request TEXT",
)

_SCHEMA_V3: Final = (
    # the recent command results were written every tick and never read (the audit log has
    # every command and its result)
    "DROP TABLE IF EXISTS commands",
)

_SCHEMA_V4: Final = (
    # each rig's efficiency learned from measured watts (daemon/efficiency.py)
    "CREATE TABLE IF NOT EXISTS efficiency (rig TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4)
"""The schema's steps, in order: ``MIGRATIONS[i]`` takes a file from ``PRAGMA user_version``
``i`` to ``i + 1``. A new schema adds a step (never edits one), so every older file is brought
up to date. Version 0 is a new, empty file."""

SCHEMA_VERSION: Final = len(MIGRATIONS)

LOST_WITH_THE_FILE: Final = (
    "what the rigs cannot tell it: the operator pins, the site target, hand-set prices, "
    "control-room commands still awaiting their answer and the day's power-cycle counts"
)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class StoreError(ValueError):
    """The state database cannot be used; the message is one line naming the file, the
    problem and what to do."""


def unusable(path: Path, problem: str) -> StoreError:
    """The one-line error for a state database that cannot be used, saying what to do."""
    problem = " ".join(problem.replace("*** in database main ***", "").split())
    return StoreError(
        f"state database {path} cannot be used ({problem}): move it aside with its -wal and "
        f"-shm files (e.g. `mv {path} {path}.damaged`) and start again: rigpilot then starts "
        f"fresh and re-learns the fleet from the rigs, losing only {LOST_WITH_THE_FILE}"
    )


def failed(path: Path, exc: sqlite3.Error) -> StoreError:
    """The one-line error for an SQLite error on the state database: a file SQLite cannot
    open or write (permissions, a directory in its place, a full disk) is not damage, and
    moving it aside would not help."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "malformed" not in text:
        return StoreError(
            f"state database {path} cannot be opened or written ({text}): check that it is a "
            f"file the daemon's user can read and write, in a directory it can write "
            f"({path.parent}), on a disk with room"
        )
    return unusable(path, text)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"state directory {path.parent} cannot be created: {exc}") from None
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise failed(path, exc) from None
        try:
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self._check()
            self._migrate()
        except sqlite3.Error as exc:
            self.db.close()
            raise failed(path, exc) from None
        except StoreError:
            self.db.close()
            raise

    def _check(self) -> None:
        """``PRAGMA quick_check``: a damaged file is refused at start, not found out later."""
        problems = [str(r[0]) for r in self.db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            more = f" and {len(problems) - 1} more problems" if len(problems) > 1 else ""
            raise unusable(self.path, f"damaged: {problems[0]}{more}")

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION, one step per transaction (see MIGRATIONS)."""
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema {version}, written by a newer rigpilot "
                f"(this one knows up to {SCHEMA_VERSION}): run the newer rigpilot, or move the "
                f"file aside to start fresh, losing {LOST_WITH_THE_FILE}"
            )
        for step in range(version, SCHEMA_VERSION):
            with self._tx():
                for statement in MIGRATIONS[step]:
                    self.db.execute(statement)
                self.db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(step + 1),)
                )
                self.db.execute(f"PRAGMA user_version={step + 1}")
            log.info("store.schema", path=str(self.path), version=step + 1, was=version)

    def close(self) -> None:
        self.db.close()

    # -- documents ---------------------------------------------------------------------------

    def get(self, key: str) -> Any | None:
        """The JSON document stored under ``key`` (None if absent or unreadable, logged)."""
        with self._reading():
            row = self.db.execute("SELECT value FROM docs WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError as exc:
            log.warning("store.document_unreadable", path=str(self.path), key=key, error=str(exc))
            return None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """An SQLite error while reading (damage the start-up check could not see) becomes the
        one-line StoreError naming the file and what to do."""
        try:
            yield
        except sqlite3.Error as exc:
            raise failed(self.path, exc) from None

    def put(
        self,
        docs: Mapping[str, Any],
        *,
        seen: Iterable[tuple[str, str, float, Mapping[str, Any] | None, str | None]] = (),
        guard_rigs: Mapping[str, Mapping[str, Any]] | None = None,
        guard_rigs_gone: Iterable[str] = (),
        efficiency: Mapping[str, Mapping[str, Any]] | None = None,
        efficiency_gone: Iterable[str] = (),
    ) -> None:
        """Write ``docs``, new processed-command ids, the rigs' guard states that changed
        (``guard_rigs``; the ones in ``guard_rigs_gone`` are deleted) and the rigs' learned
        efficiencies to save (``efficiency``; ``efficiency_gone`` deleted), in one
        transaction."""
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
            if efficiency:
                self.db.executemany(
                    "INSERT OR REPLACE INTO efficiency VALUES (?, ?)",
                    [(r, _dumps(v)) for r, v in efficiency.items()],
                )
            self.db.executemany(
                "DELETE FROM efficiency WHERE rig=?", [(r,) for r in efficiency_gone]
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
        return self._rig_rows("guard_rigs", "store.guard_row_unreadable")

    def efficiency(self) -> dict[str, dict[str, Any]]:
        """Every rig's stored learned efficiency (a row that is not JSON is skipped, and
        logged)."""
        return self._rig_rows("efficiency", "store.efficiency_row_unreadable")

    def _rig_rows(self, table: str, event: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        with self._reading():
            rows = self.db.execute(f"SELECT rig, value FROM {table}").fetchall()
        for rig, value in rows:
            try:
                out[str(rig)] = json.loads(value)
            except ValueError as exc:
                log.warning(event, path=str(self.path), rig=rig, error=str(exc))
        return out

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)

    # -- processed command ids ---------------------------------------------------------------

    def seen(
        self, since: float
    ) -> dict[tuple[str, str], tuple[float, dict[str, Any] | None, str | None]]:
        """Processed request ids since ``since``, with their final answers where given, and
        what each request asked (the desk's fingerprint, to tell a redelivery from a reuse)."""
        with self._reading():
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


def read_efficiency(state_dir: Path) -> dict[str, dict[str, Any]]:
    """The rigs' learned efficiencies as last saved (read-only, for ``rigpilot status``); an
    empty mapping when there is no database or it predates them. Rows that are not JSON are
    left out."""
    path = state_dir / DB_NAME
    if not path.exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            rows = (
                db.execute("SELECT rig, value FROM efficiency").fetchall()
                if ("efficiency" in tables)
                else []
            )
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"state database {path} cannot be read: {exc}") from None
    out: dict[str, dict[str, Any]] = {}
    for rig, value in rows:
        with contextlib.suppress(ValueError):
            out[str(rig)] = json.loads(value)
    return out


def read_status(state_dir: Path, key: str = "status") -> tuple[dict[str, Any] | None, float | None]:
    """The last status document (or the document ``key``) the daemon wrote, and when
    (read-only; (None, None) if none)."""
    path = state_dir / DB_NAME
    if not path.exists():
        return None, None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value, updated_at FROM docs WHERE key=?", (key,)).fetchone()
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

    def __init__(self, store: Store) -> None:
        super().__init__(None)
        self.store = store

    def load(self) -> int:
        data = self.store.get(self.KEY)
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
