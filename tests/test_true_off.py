"""A true ``off``, end to end over real sockets: the control loop, the simulated rigs and the
simulated Raritan PDU (SNMP over UDP) feeding the S19 XP (outlet 1) and the S21 (outlet 2).

Off is firmware sleep first; the outlet goes off only once the rig is observed asleep (or,
for a rig that went silent after being told to sleep, after a bounded wait), never while it is
observed hashing; on is the outlet first, through the site ramp, then the mode once the rig
answers. Dry-run sends nothing to the switch.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conftest import SimFleet
from helpers import observation

from daemon.audit import AuditLog
from daemon.loop import ControlLoop, TickReport
from daemon.metrics import Metrics
from daemon.observer import Observer, ObserverSettings
from daemon.power import CycleRules, OutletSweep, PowerSwitches, build_switch
from daemon.reconciler import Actuator, Command, CommandResult, Outcome, Reconciler, Target
from daemon.switch_config import SwitchConfig
from drivers.inventory import Inventory
from drivers.switches.base import OutletReading
from market.hashprice import PushedHashprice
from market.power import PushedPrice
from market.service import Market
from policies.api import Intent, MarketView, RigView, Site
from policies.economics import Economics
from policies.guards import GuardConfig
from policies.guards.model import THERMAL_EMERGENCY
from policies.off import OffRule, off_after_s, off_case
from policies.timing import STOCK
from policies.values import Mode, Observation, QuoteKind, RigId

PDU = "127.2.0.2"
TERMS = Economics(pool_fee=0.02, overhead=1.0)


class Asked:
    """A policy that asks each rig for the mode the test sets (normal by default)."""

    name = "asked"

    def __init__(self) -> None:
        self.modes: dict[RigId, Mode] = {}

    def decide(
        self, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
    ) -> dict[RigId, Intent]:
        return {
            r.rig_id: Intent(r.rig_id, self.modes.get(r.rig_id, Mode.NORMAL), "asked", self.name)
            for r in fleet
        }


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


class Harness:
    def __init__(
        self, loop: ControlLoop, policy: Asked, clock: Clock, prices: Any, sim: SimFleet
    ) -> None:
        self.loop, self.policy, self.clock, self.prices = loop, policy, clock, prices
        self.sim = sim

    async def tick(self, step_s: float = 30.0) -> TickReport:
        """One tick, then ``step_s`` of time: 30 s of physics (1 s at the fleet's scale), the
        rest as a jump of the simulated clock and the loop's."""
        for feed, value in self.prices:
            feed.push(value, self.clock.t, "test")
        report = await self.loop.tick()
        self.clock.t += step_s
        if step_s > 30.0:
            await asyncio.to_thread(self.sim.control.advance_clock, step_s - 30.0)
        await asyncio.sleep(1.0)  # 30 simulated seconds of physics
        return report


async def harness(
    sim: SimFleet,
    tmp_path: Path,
    dry_run: bool = False,
    ramp_kw_per_min: float = 1000.0,
    off_wait_s: float = 600.0,
    cycle_rules: CycleRules | None = None,
    off: OffRule | None = None,
    power_price: float = 0.05,
) -> tuple[Harness, str, str]:
    xp, s21 = sim.address("s19xp"), sim.address("s21")
    inventory = Inventory()
    await inventory.ensure([xp, s21])
    clock = Clock()
    observer = Observer(inventory, ObserverSettings(timeout_s=3.0), clock=clock)
    observer.sync_drivers()
    pdu = build_switch(SwitchConfig(name="px3", kind="raritan", address=PDU), (1, 2))
    power = PowerSwitches(
        {"px3": pdu},
        {xp: [("px3", 1)], s21: [("px3", 2)]},
        {"px3": 2.0},
        off_wait_s=off_wait_s,
        cycle_rules=cycle_rules,
    )
    hashprice, price = PushedHashprice(ttl_s=600), PushedPrice(ttl_s=600)
    policy = Asked()
    loop = ControlLoop(
        observer=observer,
        market=Market({QuoteKind.HASHPRICE: [hashprice], QuoteKind.POWER_PRICE: [price]}),
        policies=[policy],
        site=Site(economics=TERMS),
        guard_config=GuardConfig(
            min_dwell_s=0.0,
            hysteresis_usd_per_day=0.25,
            ramp_kw_per_min=ramp_kw_per_min,
            ramp_rigs_per_s=10,
            economics=TERMS,
            thermal_cut_after_s=120.0,
            off=off or OffRule(enabled=False),
        ),
        reconciler=Reconciler(confirm_deadline_s=120, max_attempts=3),
        actuator=Actuator(observer.drivers, dry_run=dry_run, clock=clock, switch=power.switch_rig),
        audit=AuditLog(tmp_path / "audit.jsonl"),
        market_refresh_s=0.0,
        clock=clock,
        power=power,
    )
    prices = [(hashprice, 80.0), (price, power_price)]
    return Harness(loop, policy, clock, prices, sim), xp, s21


def outlet_on(sim: SimFleet, outlet: int) -> bool:
    state = sim.control.switch(PDU)
    return bool(next(o for o in state["outlets"] if o["outlet"] == outlet)["on"])


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


async def test_off_sleeps_first_cuts_once_asleep_and_wakes_under_the_ramp(
    sim: SimFleet, tmp_path: Path
) -> None:
    h, xp, s21 = await harness(sim, tmp_path, ramp_kw_per_min=4.0)
    await h.tick()
    h.policy.modes = {xp: Mode.OFF, s21: Mode.OFF}
    seen: list[tuple[Mode, bool, bool]] = []  # (observed this tick, hashing, outlet after it)
    for _ in range(12):
        report = await h.tick()
        reading = report.readings[xp]
        assert isinstance(reading, Observation)
        seen.append((reading.mode, reading.mining, await asyncio.to_thread(outlet_on, sim, 1)))
        other = report.readings[s21]
        if reading.mode is Mode.OFF and isinstance(other, Observation) and other.mode is Mode.OFF:
            break
    assert seen[0][2] is True, "the first step is firmware sleep, not the outlet"
    cut = next(i for i, s in enumerate(seen) if not s[2])
    assert seen[cut][:2] == (Mode.SLEEP, False), f"cut only once seen asleep: {seen}"
    assert all(s[2] for s in seen[:cut] if s[1]), "never cut while observed hashing"
    assert seen[-1][0] is Mode.OFF  # observed off: unreachable with its outlet read off
    truth = await asyncio.to_thread(sim.control.rig, xp)
    assert (truth["powered"], truth["reachable"]) == (False, False)
    final = report.readings[xp]
    assert isinstance(final, Observation) and final.power_w == 0.0

    start = h.clock.t
    h.policy.modes = {}
    for _ in range(30):
        report = await h.tick()
        modes = [report.readings.get(r) for r in (xp, s21)]
        if all(isinstance(m, Observation) and m.mode is Mode.NORMAL for m in modes):
            break
    assert all(isinstance(m, Observation) and m.mode is Mode.NORMAL for m in modes)
    ups = [
        x
        for x in audit(tmp_path)
        if x["kind"] == "command" and x["ts"] >= start and x["action"].get("outlets") == "on"
    ]
    assert sorted(x["rig"] for x in ups) == sorted([xp, s21])
    starts = sorted(x["action"].get("not_before", x["ts"]) for x in ups)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 45.0, f"outlet power-ups not spaced by the 4 kW/min ramp: {gaps}"


async def test_dry_run_sends_nothing_to_the_switch(sim: SimFleet, tmp_path: Path) -> None:
    h, xp, _ = await harness(sim, tmp_path, dry_run=True)
    before = sim.control.switch(PDU)
    h.policy.modes = {xp: Mode.OFF}
    for _ in range(4):
        await h.tick()
    after = sim.control.switch(PDU)
    assert after["snmp"]["sets"] == before["snmp"]["sets"]  # not one SNMP SET reached the PDU
    assert after["snmp"]["requests"] > before["snmp"]["requests"]  # while it was read each tick
    assert [o["switched"] for o in after["outlets"]] == [o["switched"] for o in before["outlets"]]
    assert all(o["on"] for o in after["outlets"])
    assert (await asyncio.to_thread(sim.control.rig, xp))["mode"] == "normal"


async def test_a_rig_observed_hashing_is_never_cut(sim: SimFleet, tmp_path: Path) -> None:
    h, xp, _ = await harness(sim, tmp_path, off_wait_s=30.0)
    await h.tick()
    await asyncio.to_thread(sim.control.set_fault, xp, "ignore_writes")  # says OK, hashes on
    h.policy.modes = {xp: Mode.OFF}
    for _ in range(8):
        report = await h.tick()
        reading = report.readings[xp]
        assert isinstance(reading, Observation) and reading.mining
        assert await asyncio.to_thread(outlet_on, sim, 1)


async def test_a_rig_silent_after_sleep_is_cut_after_the_bounded_wait(
    sim: SimFleet, tmp_path: Path
) -> None:
    h, xp, _ = await harness(sim, tmp_path, off_wait_s=90.0)
    await h.tick()
    await asyncio.to_thread(sim.control.set_fault, xp, "ignore_writes")
    h.policy.modes = {xp: Mode.OFF}
    await h.tick()  # told to sleep (ignored), still seen hashing
    await asyncio.to_thread(sim.control.clear_fault, xp, "ignore_writes")
    await h.tick()  # told to sleep again: obeys
    await asyncio.to_thread(sim.control.set_fault, xp, "offline")  # and goes silent
    cut_after = None
    for i in range(8):
        await h.tick()
        if not await asyncio.to_thread(outlet_on, sim, 1):
            cut_after = i
            break
    assert cut_after is not None, "the outlet is cut once the wait is over"
    assert cut_after >= 2, "not before the bounded wait (90 s = 3 ticks of 30 s)"
    lines = [x for x in audit(tmp_path) if x["kind"] == "command" and x["rig"] == xp]
    assert any("silent since and not seen hashing" in str(x) for x in lines)


def asleep_at(reading: object) -> bool:
    return isinstance(reading, Observation) and reading.mode is Mode.SLEEP and not reading.mining


async def test_a_rig_asleep_long_enough_goes_off_and_a_shorter_curtailment_stays_asleep(
    sim: SimFleet, tmp_path: Path
) -> None:
    """The policy asks both rigs to sleep; neither asks for off. At $2/kWh the S19 XP's sleep
    draw pays for its cold boot after about 28 minutes asleep, the S21's after about 35
    (policies/off.py). The S19 XP is switched off then, not before; the S21's curtailment ends
    (the price falls back) before its own break-even: it is woken from sleep, its outlet never
    touched, while the S19 XP, still asked to sleep, stays off."""
    rule = OffRule(min_asleep_s=600.0)
    h, xp, s21 = await harness(sim, tmp_path, off=rule, power_price=2.0)
    report = await h.tick()
    waits: dict[str, float] = {}
    for rig in h.loop._fleet(report.readings, h.clock.t):
        case = off_case(rig, STOCK, 80.0, 2.0, TERMS, rule)
        assert case is not None
        waits[rig.rig_id] = off_after_s(case, rule)
    assert 600.0 < waits[xp] < waits[s21] - 300.0 < 3600.0, waits
    h.policy.modes = {xp: Mode.SLEEP, s21: Mode.SLEEP}
    slept_at = h.clock.t
    for _ in range(6):
        report = await h.tick()
        if asleep_at(report.readings[xp]) and asleep_at(report.readings[s21]):
            break
    assert asleep_at(report.readings[xp]) and asleep_at(report.readings[s21])
    off_at = None
    for _ in range(40):
        now = h.clock.t
        report = await h.tick(step_s=60.0)
        assert await asyncio.to_thread(outlet_on, sim, 2), "the S21 is never switched off"
        if not await asyncio.to_thread(outlet_on, sim, 1):
            off_at = now
            break
    assert off_at is not None, "the S19 XP goes off once it has been asleep long enough"
    assert waits[xp] <= off_at - slept_at <= waits[xp] + 2 * 60.0, "at its break-even"
    assert asleep_at(report.readings[s21]) and h.clock.t - slept_at < waits[s21]

    h.prices = [(feed, 80.0 if value == 80.0 else 0.05) for feed, value in h.prices]
    h.policy.modes = {xp: Mode.SLEEP}  # the S21's curtailment is over
    for _ in range(20):
        report = await h.tick()
        assert await asyncio.to_thread(outlet_on, sim, 2), "the S21 is never switched off"
        assert not await asyncio.to_thread(outlet_on, sim, 1), "the S19 XP stays off"
        reading = report.readings[s21]
        if isinstance(reading, Observation) and reading.mode is Mode.NORMAL:
            break
    assert isinstance(reading, Observation) and reading.mode is Mode.NORMAL
    decisions = [x for x in audit(tmp_path) if x["kind"] == "decision"]
    off = [x for x in decisions if x["desired"]["mode"] == "off"]
    assert [x["rig"] for x in off] == [xp] and off[0]["policy"] == "asked"
    assert "off: asleep" in off[0]["reason"] and "to pay for a cold boot" in off[0]["reason"]


async def test_a_hot_rig_ignoring_sleep_is_cut_and_a_hashing_one_never(
    sim: SimFleet, tmp_path: Path
) -> None:
    """The S19 XP's airflow is blocked (chips near 100 °C at full power) and its firmware says
    OK to every command and hashes on: the thermal guard sets it to sleep, then, once it has
    hashed at or above 95 °C for 120 s since, declares a thermal emergency and its outlet is
    cut. The S21 beside it hashes at its normal temperature throughout and keeps its power."""
    h, xp, s21 = await harness(sim, tmp_path)
    await h.tick()
    await asyncio.to_thread(sim.control.set_fault, xp, "overheat", extra_c=33)
    await asyncio.to_thread(sim.control.set_fault, xp, "ignore_writes")
    cut = None
    for i in range(20):
        report = await h.tick()
        other = report.readings[s21]
        assert isinstance(other, Observation) and other.mining
        assert await asyncio.to_thread(outlet_on, sim, 2), "a normal hashing rig is never cut"
        if not await asyncio.to_thread(outlet_on, sim, 1):
            cut = i
            break
        reading = report.readings[xp]
        assert isinstance(reading, Observation) and reading.mining  # it ignores every command
    assert cut is not None, "the hot rig that ignores sleep has its outlet cut"
    assert report.desired[xp].decided_by == "thermal-emergency"
    lines = audit(tmp_path)
    told = [
        x["ts"]
        for x in lines
        if x["kind"] == "decision" and x["rig"] == xp and x["desired"]["mode"] == "sleep"
    ]
    cuts = [x for x in lines if x["kind"] == "thermal_cut"]
    assert [c["rig"] for c in cuts] == [xp] and cuts[0]["outcome"] == "switched"
    assert "thermal emergency: max chip" in cuts[0]["reason"]
    assert told and cuts[0]["ts"] - told[0] >= 120.0
    assert h.loop.power is not None and h.loop.power.thermal_cut_counts == {"switched": 1}
    from daemon.mqtt.state import power_event

    published = [power_event(e, False) for e in report.power_events]  # MQTT's event/power
    assert [(p["rig"], p["kind"]) for p in published] == [(xp, "thermal_cut")]
    assert "off" in str(published[0]["outlets"]) and published[0]["error"] is None
    metrics = Metrics(process=False)
    metrics.record_tick(report, h.loop, h.clock.t)
    assert 'rigpilot_thermal_cuts_total{outcome="switched"} 1.0' in metrics.render().decode()
    truth = await asyncio.to_thread(sim.control.rig, xp)
    assert not truth["powered"]


def test_an_emergency_cut_goes_out_at_once_even_while_the_reconciler_waits() -> None:
    """daemon/power.py without sockets: a rig in a thermal emergency is cut without the sleep
    first, also when the reconciler planned nothing (an earlier off still awaits its
    confirmation); a policy's off on a hashing rig is still sleep first; nothing more once the
    outlets read off. Dry-run cuts are counted as such."""
    pdu = build_switch(SwitchConfig(name="px3", kind="raritan", address=PDU), (1, 2))
    power = PowerSwitches({"px3": pdu}, {"a": [("px3", 1)], "b": [("px3", 2)]}, {"px3": 2.0})
    power.last = OutletSweep({("px3", n): OutletReading(n, True) for n in (1, 2)}, {}, 0.0)
    targets = {
        "a": Target("a", Mode.OFF, None, "thermal emergency: hot", THERMAL_EMERGENCY),
        "b": Target("b", Mode.OFF, None, "asked", "asked"),
    }
    hashing = {r: observation(r, Mode.NORMAL) for r in ("a", "b")}
    waiting = power.steps([], targets, hashing, 10.0)
    assert [(c.rig_id, c.mode, c.switch) for c in waiting] == [("a", Mode.OFF, False)]
    assert waiting[0].reason == "thermal emergency: hot; outlets off at once"
    planned = [
        Command("a", Mode.OFF, None, "hot", THERMAL_EMERGENCY, 1),
        Command("b", Mode.OFF, None, "asked", "asked", 1),
    ]
    steps = power.steps(planned, targets, hashing, 10.0)
    assert [(c.rig_id, c.mode, c.switch) for c in steps] == [
        ("a", Mode.OFF, False),
        ("b", Mode.SLEEP, None),
    ]
    events = power.record([CommandResult(steps[0], Outcome.DRY_RUN, "dry-run", 11.0)])
    assert [(e["kind"], e["rig"], e["outcome"], e["dry_run"]) for e in events] == [
        ("thermal_cut", "a", "dry_run", True)
    ]
    assert power.thermal_cut_counts == {"dry_run": 1}
    power.last = OutletSweep({("px3", n): OutletReading(n, False) for n in (1, 2)}, {}, 20.0)
    assert power.steps([], targets, hashing, 20.0) == []
