"""The learned efficiencies in the state database: a row per rig, written when it changed but
at most every EFFICIENCY_SAVE_S (at once when it becomes trusted), restored at start; a file of
schema 3 gains the table; a row that is not one is named and that rig learns afresh.

Real SQLite files; the loop is a real ControlLoop over an empty inventory.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import structlog
from helpers import make_loop, observation, tick_report

from daemon import store as store_module
from daemon.efficiency import RigEfficiency, learn
from daemon.persist import EFFICIENCY_SAVE_S, Persistence
from daemon.store import DB_NAME, SCHEMA_VERSION, Store, read_efficiency
from drivers import catalogue
from policies.values import Mode, PowerSource

T0 = 1_800_000_000.0
ENTRY = catalogue.lookup("antminer", "S19j Pro")


def learnt(samples: int, rig: RigEfficiency | None = None, start: float = T0) -> RigEfficiency:
    for i in range(samples):
        obs = observation(ths=100.0, watts=3300.0, source=PowerSource.METER, at=start + 60 * i)
        rig = learn(rig, obs, ENTRY, settling=False)
    assert rig is not None
    return rig


def rows(path: Path) -> dict[str, Any]:
    db = sqlite3.connect(path)
    try:
        return {r: json.loads(v) for r, v in db.execute("SELECT rig, value FROM efficiency")}
    finally:
        db.close()


def test_rows_are_written_when_new_when_trusted_and_then_at_most_every_interval(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB_NAME
    store, loop = Store(path), make_loop()
    saver = Persistence(store, loop)
    saver.restore(T0)
    loop.efficiency["r1"] = learnt(1)
    saver.save_tick(tick_report(T0))
    assert rows(path)["r1"]["modes"]["normal"]["samples"] == 1  # new: written at once
    loop.efficiency["r1"] = learnt(5, loop.efficiency["r1"], T0 + 60)
    saver.save_tick(tick_report(T0 + 360))
    assert rows(path)["r1"]["modes"]["normal"]["samples"] == 1  # changed, too soon
    loop.efficiency["r1"] = learnt(20, loop.efficiency["r1"], T0 + 400)  # now trusted
    assert loop.efficiency["r1"].reference is Mode.NORMAL
    saver.save_tick(tick_report(T0 + 420))
    assert rows(path)["r1"]["modes"]["normal"]["samples"] == 26  # trusted: written at once
    loop.efficiency["r1"] = learnt(1, loop.efficiency["r1"], T0 + 2000)
    saver.save_tick(tick_report(T0 + 420 + EFFICIENCY_SAVE_S - 1))
    assert rows(path)["r1"]["modes"]["normal"]["samples"] == 26
    saver.save_tick(tick_report(T0 + 420 + EFFICIENCY_SAVE_S))
    assert rows(path)["r1"]["modes"]["normal"]["samples"] == 27
    del loop.efficiency["r1"]  # another rig at that address: learning restarted
    saver.save_tick(tick_report(T0 + 5000))
    assert rows(path) == {}
    store.close()


def test_a_restart_restores_them_and_status_reads_them(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    store, loop = Store(path), make_loop()
    saver = Persistence(store, loop)
    saver.restore(T0)
    loop.efficiency = {"r1": learnt(25), "r2": learnt(3)}
    saver.save_tick(tick_report(T0))
    assert saver.status(tick_report(T0))["efficiency"] == {
        "learned_meter": 1,
        "learned_reported": 0,
        "learning": 1,
    }
    store.close()
    again, fresh = Store(path), make_loop()
    counts = Persistence(again, fresh).restore(T0 + 60)
    again.close()
    assert counts["learned_efficiency"] == 2
    assert fresh.efficiency == loop.efficiency
    assert set(read_efficiency(tmp_path)) == {"r1", "r2"}
    assert read_efficiency(tmp_path / "nowhere") == {}


def test_a_row_that_is_not_one_is_named_and_that_rig_learns_afresh(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    store = Store(path)
    good = learnt(25).to_dict()
    bad = {**good, "modes": {"normal": {**good["modes"]["normal"], "hashrate_ths": 0}}}
    store.put({}, efficiency={"good": good, "bad": bad})
    store.db.execute("INSERT INTO efficiency VALUES ('torn', '{not json')")
    loop = make_loop()
    with structlog.testing.capture_logs() as logs:
        Persistence(store, loop).restore(T0)
    store.close()
    assert set(loop.efficiency) == {"good"}
    named = {e.get("rig") for e in logs if e["event"].startswith("store.efficiency_row")}
    assert named == {"bad", "torn"}


def test_a_schema_3_file_gains_the_table_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    old = sqlite3.connect(path)  # as rigpilot with schema 3 wrote it
    for step in store_module.MIGRATIONS[:3]:
        for statement in step:
            old.execute(statement)
    old.execute("""INSERT INTO docs VALUES ('loop', '{"site_target": {"kw": 500}}', 1.0)""")
    old.execute("PRAGMA user_version=3")
    old.commit()
    old.close()
    assert read_efficiency(tmp_path) == {}  # status reads an older file without failing
    store = Store(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert store.efficiency() == {}
        assert store.get("loop") == {"site_target": {"kw": 500}}
    finally:
        store.close()


def test_the_status_document_counts_nothing_learned_on_a_fresh_start(tmp_path: Path) -> None:
    store, loop = Store(tmp_path / DB_NAME), make_loop()
    saver = Persistence(store, loop)
    saver.restore(T0)
    assert saver.status(tick_report(T0))["efficiency"] == {
        "learned_meter": 0,
        "learned_reported": 0,
        "learning": 0,
    }
    store.close()
