"""Hung rigs brought back by a power cycle, within their limits (daemon/power.py), over real
sockets against the simulated fleet and its Raritan PDU (tests/test_true_off.py's harness)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from conftest import SimFleet
from test_true_off import PDU, harness

from daemon.metrics import Metrics
from daemon.power import CyclePlan, CycleRules, plan_cycles
from policies.guards.model import Override
from policies.values import Mode, Observation

RULES = CycleRules(enabled=True, after_s=120.0, max_per_rig_per_day=2, max_outlets_per_minute=4)


def test_plan_cycles_keeps_every_limit() -> None:
    now = 10_000.0
    silent = {"a": now - 200, "b": now - 500, "c": now - 60, "d": now - 900, "e": now - 300}
    powered = {"a": True, "b": True, "c": True, "d": True, "e": False}
    outlets = {"a": 1, "b": 2, "c": 1, "d": 1, "e": 1}
    history = {"d": [now - 3600, now - 7200]}  # two cycles today already

    def plan(
        recent: list[float],
        held: dict[str, str] | None = None,
        rules: CycleRules = RULES,
        requested: tuple[str, ...] = (),
    ) -> CyclePlan:
        return plan_cycles(
            silent, powered, history, recent, outlets, held or {}, rules, now, requested
        )

    def due(
        recent: list[float], held: dict[str, str] | None = None, rules: CycleRules = RULES
    ) -> list[str]:
        return plan(recent, held, rules).due

    # c: not silent long enough; d: out of cycles today; e: its outlet is not on
    assert due([]) == ["b", "a"]  # longest silent first
    assert due([now - 30] * 3) == []  # the site's budget: 4 outlets a minute, 3 used
    assert due([now - 30] * 2) == ["b"]  # b's two outlets fit, a waits its turn
    assert due([now - 90] * 4) == ["b", "a"]  # older than a minute: not counted
    assert due([], held={"b": "pinned"}) == ["a"]
    assert due([], rules=CycleRules(True, 120.0, 2, 4, frozenset({"a"}))) == ["b"]
    assert due([], rules=CycleRules(False, 120.0, 2, 4)) == []
    # Asked for: first, silent or not, even with automatic cycling off, within the same
    # limits; a refusal is named with its reason, the budget only makes it wait.
    off = CycleRules(False, 120.0, 2, 4, frozenset({"a"}))
    asked = plan([], {"b": "pinned to sleep"}, off, ("c", "d", "e", "a", "b"))
    assert asked.due == ["c"]
    assert asked.refused == {
        "d": "power-cycled 2 time(s) in the last 24 h (max_per_rig_per_day = 2)",
        "e": "its outlets did not all read on (and drawing power) at the last sweep",
        "a": "excluded from power cycling (power_cycle = false, or its group is in "
        "[power_cycle] exclude_groups)",
        "b": "pinned to sleep",
    }
    assert plan([], rules=RULES, requested=("c",)).due == ["c", "b", "a"]
    assert plan([now - 30] * 4, rules=RULES, requested=("c",)) == CyclePlan([], {})


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


def switched(sim: SimFleet, outlet: int) -> int:
    state = sim.control.switch(PDU)
    return int(next(o for o in state["outlets"] if o["outlet"] == outlet)["switched"])


async def test_a_hung_rig_is_power_cycled_and_comes_back(sim: SimFleet, tmp_path: Path) -> None:
    h, xp, _ = await harness(sim, tmp_path, cycle_rules=RULES)
    await h.tick()
    await asyncio.to_thread(sim.control.set_fault, xp, "hang")  # answers nothing, draws power
    start = await asyncio.to_thread(switched, sim, 1)  # relays count for the whole session
    for _ in range(40):
        report = await h.tick()
        reading = report.readings.get(xp)
        if await asyncio.to_thread(switched, sim, 1) >= start + 2 and (
            isinstance(reading, Observation) and reading.mining
        ):
            break
    assert isinstance(reading, Observation) and reading.mining, "back and hashing"
    assert reading.mode is Mode.NORMAL
    cycles = [x for x in audit(tmp_path) if x["kind"] == "power_cycle"]
    assert len(cycles) == 1 and cycles[0]["rig"] == xp and cycles[0]["dry_run"] is False
    assert cycles[0]["silent_s"] >= 120 and cycles[0]["outlets"] == "outlets px3:1 off"
    assert await asyncio.to_thread(switched, sim, 1) == start + 2  # off, then on: one cycle
    metrics = Metrics(process=False)
    metrics.record_tick(report, h.loop, h.clock.t)
    text = metrics.render().decode()
    assert 'rigpilot_power_cycles_total{outcome="switched"} 1.0' in text
    assert "rigpilot_fleet_rigs_needing_hands 0.0" in text


async def test_a_rig_that_stays_dead_is_left_for_hands(sim: SimFleet, tmp_path: Path) -> None:
    rules = CycleRules(True, 120.0, 1, 4)
    h, xp, _ = await harness(sim, tmp_path, cycle_rules=rules)
    await h.tick()
    await asyncio.to_thread(sim.control.set_fault, xp, "offline")  # survives a power cycle
    for _ in range(16):
        await h.tick()
    kinds = [
        (x["kind"], x["rig"])
        for x in audit(tmp_path)
        if x["kind"] in ("power_cycle", "needs_hands")
    ]
    assert kinds == [("power_cycle", xp), ("needs_hands", xp)]
    assert h.loop.power is not None and h.loop.power.needs_hands == {xp}


async def test_dry_run_and_pins_cycle_nothing(sim: SimFleet, tmp_path: Path) -> None:
    h, xp, s21 = await harness(sim, tmp_path, dry_run=True, cycle_rules=RULES)
    await h.tick()
    h.loop.operator.pin(Override(Mode.NORMAL, h.clock.t + 3600, "op", "test", frozenset({s21})))
    for rig in (xp, s21):
        await asyncio.to_thread(sim.control.set_fault, rig, "hang")
    before = (await asyncio.to_thread(switched, sim, 1), await asyncio.to_thread(switched, sim, 2))
    for _ in range(7):
        await h.tick()
    after = (await asyncio.to_thread(switched, sim, 1), await asyncio.to_thread(switched, sim, 2))
    assert after == before
    cycles = [x for x in audit(tmp_path) if x["kind"] == "power_cycle"]
    assert [(x["rig"], x["dry_run"]) for x in cycles] == [(xp, True)]  # the pinned S21: none
