"""The guards' state in the state database: a row per rig, written only when it changed.

Real SQLite files; the loop is a real ControlLoop over an empty inventory (nothing is observed:
only its state is saved and restored here).
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
from helpers import make_loop, tick_report

from daemon.loop import ControlLoop, TickReport
from daemon.persist import Persistence
from daemon.store import DB_NAME, Store
from policies.guards import GuardState, RampGrant, RigGuardState, Setting
from policies.values import Mode

T0 = 1_800_000_000.0


def report() -> TickReport:
    return tick_report(T0)


def state_of(rigs: int) -> GuardState:
    return GuardState(
        rigs={
            f"10.0.{i // 256}.{i % 256}": RigGuardState(
                Setting(Mode.NORMAL if i % 3 else Mode.SLEEP),
                changed_at=T0 - i,
                previous=Setting(Mode.LOW),
                changed_by="breakeven",
            )
            for i in range(rigs)
        },
        ramp_log=(RampGrant(T0, "10.0.0.1", 3.25),),
    )


def saver(path: Path, state: GuardState) -> tuple[Store, ControlLoop, Persistence]:
    """A store, a loop holding ``state``, and the persistence between them."""
    store = Store(path)
    loop = make_loop()
    loop.guard_state = state
    return store, loop, Persistence(store, loop)


def restored(path: Path) -> GuardState:
    store = Store(path)
    try:
        loop = make_loop()
        Persistence(store, loop).restore(T0)
        return loop.guard_state
    finally:
        store.close()


def test_only_changed_rigs_are_written_and_a_restart_gets_the_same_state(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    store, loop, persistence = saver(path, state_of(1000))
    persistence.save_tick(report())
    assert restored(path) == loop.guard_state
    # A tick changes three rigs and forgets one; the other 996 keep the very same objects.
    rigs = dict(loop.guard_state.rigs)
    ids = list(rigs)
    for rid in ids[:3]:
        rigs[rid] = replace(rigs[rid], setting=Setting(Mode.LOW), changed_at=T0 + 30)
    del rigs[ids[3]]
    loop.guard_state = GuardState(rigs=rigs, ramp_log=())
    _, changed, gone = persistence._guard_changes()
    assert sorted(changed) == sorted(ids[:3]) and gone == [ids[3]]
    persistence.save_tick(report())
    store.close()
    assert restored(path) == loop.guard_state
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM guard_rigs").fetchone() == (999,)


def test_a_save_that_fails_is_written_in_full_by_the_next(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    store, loop, persistence = saver(path, state_of(50))
    persistence.save_tick(report())
    changed = {
        rid: replace(r, setting=Setting(Mode.HIGH)) for rid, r in loop.guard_state.rigs.items()
    }
    loop.guard_state = GuardState(rigs=changed)
    store.db.execute("PRAGMA query_only=1")  # the disk refuses writes for one tick
    with pytest.raises(sqlite3.OperationalError):
        persistence.save_tick(report())
    store.db.execute("PRAGMA query_only=0")
    persistence.save_tick(report())  # nothing changed since: still every rig is written
    store.close()
    assert restored(path) == loop.guard_state


def test_unreadable_rows_are_named_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    store, _, persistence = saver(path, state_of(5))
    persistence.save_tick(report())
    store.db.execute("UPDATE guard_rigs SET value='{not json' WHERE rig='10.0.0.2'")
    store.db.execute("""UPDATE guard_rigs SET value='{"mode": "warp"}' WHERE rig='10.0.0.3'""")
    store.close()
    with structlog.testing.capture_logs() as logs:
        state = restored(path)
    events = {e["event"]: e for e in logs}
    assert events["store.guard_row_unreadable"]["rig"] == "10.0.0.2"
    assert "warp" in events["store.guard_row_unusable"]["error"]
    assert events["store.guard_row_unusable"]["rig"] == "10.0.0.3"
    # Only those two rigs start afresh (from what they are observed doing).
    assert state.rigs == {
        r: s for r, s in state_of(5).rigs.items() if r not in ("10.0.0.2", "10.0.0.3")
    }
