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
    await h.tick()
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
    await h.tick()
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


_ = CycleRules  # used by the power_cycle tests below
