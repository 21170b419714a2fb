"""``off`` and ``power_cycle`` from the control room, through the command desk, against the
control loop, the simulated rigs and the simulated Raritan PDU over real sockets (SNMP over UDP;
tests/test_true_off.py's harness: the S19 XP on outlet 1, the S21 on outlet 2). The broker end
to end, with Home Assistant's entities, is in tests/test_mqtt_power_broker.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import SimFleet
from test_true_off import PDU, Harness, harness, outlet_on

from daemon.mqtt.desk import CommandDesk
from daemon.operator_state import Envelope
from daemon.power import CycleRules
from policies.values import Mode, Observation


def desk_for(h: Harness, rigs: list[str]) -> CommandDesk:
    return CommandDesk(
        loop=h.loop,
        site="site1",
        groups=dict.fromkeys(rigs, "row-a"),
        configured=frozenset(rigs),
        default_timeout_s=1800.0,
        clock=h.clock,
    )


def ask(desk: CommandDesk, command: str, body: dict[str, Any] | bytes) -> list[dict[str, Any]]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return [a.body for a in desk.handle(Envelope(command, payload, desk.clock()))]


async def until_final(
    h: Harness, desk: CommandDesk, ticks: int = 40
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Tick until the desk gives a final answer; the answers and every report."""
    reports = []
    for _ in range(ticks):
        report = await h.tick()
        reports.append(report)
        finals = [a.body for a in desk.after_tick(report)]
        if finals:
            return finals, reports
    return [], reports


async def test_set_off_is_done_once_the_outlet_reads_off_and_set_normal_once_hashing(
    sim: SimFleet, tmp_path: Path
) -> None:
    h, xp, s21 = await harness(sim, tmp_path)
    desk = desk_for(h, [xp, s21])
    desk.after_tick(await h.tick())  # the desk sees every tick, as the bridge has it
    first = ask(desk, "set", {"rig": xp, "mode": "off", "transaction": "off-1"})
    assert [a["status"] for a in first] == ["accepted"], first
    finals, reports = await until_final(h, desk)
    assert [f["status"] for f in finals] == ["done"], finals
    assert finals[0]["transaction"] == "off-1" and "observed in off" in finals[0]["reason"]
    last = reports[-1].readings[xp]
    assert isinstance(last, Observation) and last.mode is Mode.OFF
    assert not await asyncio.to_thread(outlet_on, sim, 1)  # the outlet really is off
    truth = await asyncio.to_thread(sim.control.rig, xp)
    assert (truth["powered"], truth["reachable"]) == (False, False)
    # Never cut before it was seen asleep: every tick before the last saw it answering.
    assert all(isinstance(r.readings[xp], Observation) for r in reports)
    assert [r.readings[xp].mode for r in reports[:-1]].count(Mode.OFF) == 0
    assert await asyncio.to_thread(outlet_on, sim, 2)  # the S21 was not touched

    ask(desk, "set", {"rig": xp, "mode": "normal", "transaction": "on-1"})
    finals, reports = await until_final(h, desk)
    assert [f["status"] for f in finals] == ["done"], finals
    back = reports[-1].readings[xp]
    assert isinstance(back, Observation) and back.mode is Mode.NORMAL and back.mining
    assert await asyncio.to_thread(outlet_on, sim, 1)


async def test_pin_off_and_off_for_a_rig_without_outlets_is_rejected_naming_why(
    sim: SimFleet, tmp_path: Path
) -> None:
    h, xp, s21 = await harness(sim, tmp_path)
    unwired = sim.address("s19jpro")
    await h.loop.observer.inventory.ensure([unwired])
    h.loop.observer.sync_drivers()
    desk = desk_for(h, [xp, s21, unwired])
    desk.after_tick(await h.tick())  # the desk sees every tick, as the bridge has it
    for command, extra in (("set", {}), ("pin", {"for_s": 600})):
        answers = ask(desk, command, {"rigs": [xp, unwired], "mode": "off", **extra})
        assert [a["status"] for a in answers] == ["rejected"], answers
        reason = answers[0]["reason"]
        assert f"{unwired} has no outlets" in reason and "cannot be switched off" in reason
        assert xp not in reason
    assert h.loop.operator.overrides() == []
    done = ask(desk, "pin", {"rig": s21, "mode": "off", "for_s": 600, "transaction": "p"})
    assert [a["status"] for a in done] == ["done"]
    assert [o.mode for o in h.loop.operator.overrides()] == [Mode.OFF]


async def test_dry_run_off_answers_from_the_decision_and_switches_nothing(
    sim: SimFleet, tmp_path: Path
) -> None:
    h, xp, s21 = await harness(sim, tmp_path, dry_run=True)
    desk = desk_for(h, [xp, s21])
    before = await asyncio.to_thread(sim.control.switch, PDU)
    ask(desk, "set", {"rig": xp, "mode": "off", "transaction": "dry"})
    finals, _ = await until_final(h, desk, 6)
    assert [f["status"] for f in finals] == ["done"], finals
    assert finals[0]["reason"].startswith("dry-run:") and finals[0]["result"]["would"] == 1
    after = await asyncio.to_thread(sim.control.switch, PDU)
    assert after["snmp"]["sets"] == before["snmp"]["sets"]
    assert (await asyncio.to_thread(sim.control.rig, xp))["mode"] == "normal"


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ({"rig": "{xp}", "mode": "off", "power_limit_w": 2000}, "power_limit_w goes with mode"),
        ({"rig": "{xp}", "mode": "Off"}, "mode: Input should be"),
        ({"rig": "{xp}", "mode": "off", "for_s": -1}, "for_s: Input should be greater than 0"),
    ],
)
async def test_malformed_off_requests_are_rejected(
    sim: SimFleet, tmp_path: Path, body: dict[str, Any], expect: str
) -> None:
    h, xp, s21 = await harness(sim, tmp_path)
    desk = desk_for(h, [xp, s21])
    body = {k: (xp if v == "{xp}" else v) for k, v in body.items()}
    answers = ask(desk, "set", body)
    assert [a["status"] for a in answers] == ["rejected"] and expect in answers[0]["reason"]
    assert h.loop.operator.overrides() == []


def switched(sim: SimFleet, outlet: int) -> int:
    state = sim.control.switch(PDU)
    return int(next(o for o in state["outlets"] if o["outlet"] == outlet)["switched"])


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


async def test_power_cycle_is_done_once_the_rig_is_back_and_hashing(
    sim: SimFleet, tmp_path: Path
) -> None:
    # [power_cycle] enabled = false (the default) only stops the automatic cycles.
    h, xp, s21 = await harness(sim, tmp_path)
    desk = desk_for(h, [xp, s21])
    desk.after_tick(await h.tick())  # the desk sees every tick, as the bridge has it
    before = await asyncio.to_thread(switched, sim, 1)
    first = ask(desk, "power_cycle", {"rig": xp, "transaction": "pc-1", "by": "alice"})
    assert [a["status"] for a in first] == ["accepted"], first
    assert first[0]["result"] == {"rigs": 1, "hashing": 1, "timeout_s": 1800.0}
    finals, reports = await until_final(h, desk)
    assert [f["status"] for f in finals] == ["done"], finals
    assert "1 rig(s) power-cycled and observed back (1 hashing again)" in finals[0]["reason"]
    assert finals[0]["result"]["back"] == 1
    back = reports[-1].readings[xp]
    assert isinstance(back, Observation) and back.mining
    # It really went: observed off (its outlet read off) between the cycle and its return.
    assert any(
        isinstance(r.readings[xp], Observation) and r.readings[xp].mode is Mode.OFF for r in reports
    )
    assert await asyncio.to_thread(switched, sim, 1) == before + 2  # off, then on
    cycles = [x for x in audit(tmp_path) if x["kind"] == "power_cycle"]
    assert [(x["rig"], x["cause"], x["dry_run"]) for x in cycles] == [(xp, "requested", False)]
    events = [e for r in reports for e in r.power_events]
    assert [(e["kind"], e["rig"]) for e in events] == [("power_cycle", xp)]


async def test_power_cycle_refusals_name_each_rig_and_why(sim: SimFleet, tmp_path: Path) -> None:
    rules = CycleRules(max_per_rig_per_day=1)
    h, xp, s21 = await harness(sim, tmp_path, cycle_rules=rules)
    unwired = sim.address("s19jpro")
    await h.loop.observer.inventory.ensure([unwired])
    h.loop.observer.sync_drivers()
    desk = desk_for(h, [xp, s21, unwired])
    desk.after_tick(await h.tick())  # the desk sees every tick, as the bridge has it
    ask(desk, "pin", {"rig": s21, "mode": "low", "for_s": 600, "by": "bob"})
    answers = ask(desk, "power_cycle", {"all": True, "transaction": "all"})
    assert [a["status"] for a in answers] == ["rejected"], answers
    reason = answers[0]["reason"]
    assert reason.startswith("2 rig(s) cannot be power-cycled now: ")
    assert f"{unwired}: no outlets feed it" in reason
    assert f"{s21}: pinned to low by bob" in reason and "unpin or resume" in reason
    assert xp not in reason
    assert h.loop.power is not None and h.loop.power._requested == {}
    # One cycle a day for this rig: the second request is refused before anything is done.
    ask(desk, "power_cycle", {"rig": xp})
    finals, _ = await until_final(h, desk)
    assert [f["status"] for f in finals] == ["done"], finals
    again = ask(desk, "power_cycle", {"rig": xp, "transaction": "again"})
    assert [a["status"] for a in again] == ["rejected"]
    assert "power-cycled 1 time(s) in the last 24 h (max_per_rig_per_day = 1)" in again[0]["reason"]
    # Pinned after it was asked, before its turn: refused at its turn, answered failed.
    ask(desk, "resume", {"rig": s21})
    assert [a["status"] for a in ask(desk, "power_cycle", {"rig": s21})] == ["accepted"]
    ask(desk, "pin", {"rig": s21, "mode": "normal", "for_s": 600})
    finals, _ = await until_final(h, desk, 3)
    assert [f["status"] for f in finals] == ["failed"], finals
    assert f"{s21}: refused: pinned to normal" in finals[0]["reason"]


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ({}, "exactly one of rig, rigs, group or all"),
        ({"rig": "{xp}", "timeout_s": 0}, "timeout_s: Input should be greater than 0"),
        ({"rig": "{xp}", "mode": "off"}, "mode: unknown field"),
        ({"rig": "10.9.9.9"}, "unknown rig(s): 10.9.9.9"),
        ({"all": 1}, "all: Input should be a valid boolean"),
    ],
)
async def test_malformed_power_cycle_requests_are_rejected(
    sim: SimFleet, tmp_path: Path, body: dict[str, Any], expect: str
) -> None:
    h, xp, s21 = await harness(sim, tmp_path)
    desk = desk_for(h, [xp, s21])
    body = {k: (xp if v == "{xp}" else v) for k, v in body.items()}
    answers = ask(desk, "power_cycle", body)
    assert [a["status"] for a in answers] == ["rejected"] and expect in answers[0]["reason"]
    assert h.loop.power is not None and h.loop.power._requested == {}


async def test_dry_run_power_cycle_answers_would_and_switches_nothing(
    sim: SimFleet, tmp_path: Path
) -> None:
    h, xp, s21 = await harness(sim, tmp_path, dry_run=True)
    desk = desk_for(h, [xp, s21])
    desk.after_tick(await h.tick())  # the desk sees every tick, as the bridge has it
    before = await asyncio.to_thread(sim.control.switch, PDU)
    ask(desk, "power_cycle", {"rigs": [xp, s21], "transaction": "dry"})
    finals, _ = await until_final(h, desk, 4)
    assert [f["status"] for f in finals] == ["done"], finals
    assert finals[0]["reason"] == "dry-run: 2 rig(s) would be power-cycled; nothing switched"
    assert finals[0]["result"]["would"] == 2
    after = await asyncio.to_thread(sim.control.switch, PDU)
    assert after["snmp"]["sets"] == before["snmp"]["sets"]
    assert all(o["on"] for o in after["outlets"])
    cycles = [x for x in audit(tmp_path) if x["kind"] == "power_cycle"]
    assert sorted((x["rig"], x["dry_run"]) for x in cycles) == sorted([(xp, True), (s21, True)])


def test_a_power_cycle_wait_survives_a_restart_with_its_progress() -> None:
    """Waits are saved with the operator state (daemon/persist.py): a power_cycle's progress
    rig by rig comes back as it was, so an answer after a restart says the same."""
    from daemon.operator_state import CycleWait, OperatorState, Wait

    env = Envelope("power_cycle", b'{"rigs": ["a", "b", "c"]}', 100.0, None, b"corr")
    progress = CycleWait(["a"], {"a": 130.0, "b": 130.0}, ["a"], {"c": "refused: pinned"})
    state = OperatorState()
    state.wait(Wait(env, "power_cycle", "t", 1900.0, 100.0, ["a", "b", "c"], cycle=progress))
    saved = json.loads(json.dumps(state.to_docs()))  # through JSON, as the store keeps it
    restored = OperatorState()
    restored.restore_pins(saved["desk"])
    assert restored.waits == state.waits
    assert restored.waits[0].cycle == progress and restored.waits[0].mode is None
