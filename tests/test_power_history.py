"""The power cycles' limits survive a restart (daemon/power.py's history in the state
database, daemon/persist.py), over real sockets against the simulated fleet and its PDU (the
harness of tests/test_true_off.py) and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import SimFleet
from structlog.testing import capture_logs
from test_power_cycle import switched
from test_true_off import Harness, harness

from daemon.persist import Persistence
from daemon.power import CycleRules, PowerSwitches
from daemon.store import DB_NAME, Store

RULES = CycleRules(enabled=True, after_s=120.0, max_per_rig_per_day=1, max_outlets_per_minute=4)


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def persisted(
    sim: SimFleet, run: Path, state: Path, at: float | None = None
) -> tuple[Harness, str, Persistence]:
    """A loop as `rigpilot run` wires it to its store: restored at start, the cycles journaled
    before they are switched (daemon/run.py's _wire); its clock at ``at`` if given."""
    h, xp, _ = await harness(sim, run, cycle_rules=RULES)
    if at is not None:
        h.clock.t = at
    persistence = Persistence(Store(state / DB_NAME), h.loop)
    persistence.restore(h.clock.t)
    h.loop.cycle_journal = persistence.journal_cycles
    return h, xp, persistence


async def test_a_restart_grants_no_fresh_day_of_cycles(sim: SimFleet, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    h, xp, persistence = await persisted(sim, first, state)
    await h.tick()
    await asyncio.to_thread(sim.control.set_fault, xp, "offline")  # survives a power cycle
    start = await asyncio.to_thread(switched, sim, 1)
    for _ in range(16):
        await h.tick()  # no save_tick: only the journal written before the cycle
        if any(x["kind"] == "needs_hands" for x in audit(first)):
            break
    kinds = [x["kind"] for x in audit(first) if x["kind"] in ("power_cycle", "needs_hands")]
    assert kinds == ["power_cycle", "needs_hands"]
    cycled_at = next(x["ts"] for x in audit(first) if x["kind"] == "power_cycle")
    persistence.store.close()

    # What the file holds: the cycle, written before its outlets were switched (the journal).
    db = sqlite3.connect(state / DB_NAME)
    [(raw,)] = db.execute("SELECT value FROM docs WHERE key = 'power'").fetchall()
    db.close()
    assert json.loads(raw)["cycles"] == {xp: [cycled_at]}

    # The daemon restarts (a crash: the tick's save never ran) and the rig is still dead:
    # its one cycle of the day is used, so it is not cycled again.
    h2, xp2, persistence2 = await persisted(sim, second, state, at=h.clock.t + 30.0)
    assert xp2 == xp
    assert h2.loop.power is not None
    for _ in range(12):
        await h2.tick()
    assert [x["kind"] for x in audit(second) if x["kind"] == "power_cycle"] == []
    refusal = h2.loop.power.refusal(xp, {}, h2.clock.t)
    assert refusal == "power-cycled 1 time(s) in the last 24 h (max_per_rig_per_day = 1)"
    assert await asyncio.to_thread(switched, sim, 1) == start + 2  # the one cycle: off, on
    # A day later the rig has its cycle again.
    h2.clock.t = cycled_at + 86400.0 + 1.0
    assert h2.loop.power.refusal(xp, {}, h2.clock.t) is None
    persistence2.store.close()


def test_history_round_trip_and_a_broken_row(tmp_path: Path) -> None:
    power = PowerSwitches({}, {"a": [("p", 1)], "b": [("p", 2), ("p", 3)]}, {})
    now = 100_000.0
    power._cycles = {"a": [now - 90_000.0, now - 3600.0], "b": [now - 30.0], "gone": [now]}
    power._cycled_outlets = [now - 120.0, now - 30.0, now - 30.0]
    power.needs_hands = {"b"}
    doc = power.history(now)
    assert doc == {
        "version": 1,
        "cycles": {"a": [now - 3600.0], "b": [now - 30.0], "gone": [now]},
        "cycled_outlets": [now - 30.0, now - 30.0],
        "needs_hands": ["b"],
    }
    fresh = PowerSwitches({}, {"a": [("p", 1)], "b": [("p", 2), ("p", 3)]}, {})
    assert fresh.restore_history(json.loads(json.dumps(doc)), now + 10.0) == 2
    assert fresh._cycles == {"a": [now - 3600.0], "b": [now - 30.0]}  # "gone" is unwired now
    assert fresh._cycled_outlets == [now - 30.0, now - 30.0]
    assert fresh.needs_hands == {"b"}
    later = PowerSwitches({}, {"a": [("p", 1)]}, {})
    assert later.restore_history(doc, now + 86_400.0) == 0  # every cycle older than 24 h now
    assert later._cycles == {} and later._cycled_outlets == []

    for broken, named in [
        ({"version": 2}, "not a version 1 document"),
        ({**doc, "cycles": []}, "'cycles' is not a mapping"),
        ({**doc, "cycles": {"a": ["yesterday"]}}, "rig a's cycles is not a list of times"),
        ({**doc, "cycled_outlets": None}, "'cycled_outlets' or 'needs_hands' is not a list"),
    ]:
        untouched = PowerSwitches({}, {"a": [("p", 1)]}, {})
        with pytest.raises(ValueError, match=named):
            untouched.restore_history(broken, now)
        assert untouched._cycles == {} and untouched.needs_hands == set()


async def test_an_unusable_history_row_is_named_and_skipped(sim: SimFleet, tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = Store(state / DB_NAME)
    store.put({"power": {"version": 1, "cycles": {"x": "often"}}})
    store.close()
    with capture_logs() as logs:
        h, _, persistence = await persisted(sim, tmp_path, state)
    assert h.loop.power is not None and h.loop.power._cycles == {}
    [warned] = [x for x in logs if x["event"] == "store.power_history_unusable"]
    assert "'cycled_outlets' or 'needs_hands' is not a list" in warned["error"]
    persistence.store.close()


async def test_a_cycle_that_cannot_be_recorded_is_not_made(sim: SimFleet, tmp_path: Path) -> None:
    h, xp, _ = await harness(sim, tmp_path, cycle_rules=RULES)

    def full_disk(history: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    h.loop.cycle_journal = full_disk
    await h.tick()
    await asyncio.to_thread(sim.control.set_fault, xp, "hang")
    start = await asyncio.to_thread(switched, sim, 1)
    for _ in range(8):
        await h.tick()
    cycles = [x for x in audit(tmp_path) if x["kind"] == "power_cycle"]
    assert cycles and cycles[0]["rig"] == xp
    assert "could not be recorded" in cycles[0]["error"]
    assert "database or disk is full" in cycles[0]["error"]
    assert await asyncio.to_thread(switched, sim, 1) == start  # never switched
