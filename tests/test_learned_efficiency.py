"""The learned efficiency end to end over real sockets: two simulated S19j Pro on the simulated
APC PDU (SNMP over UDP), one drawing 20 % more than its model for the same hashrate. The control
loop learns each rig's J/TH from its metered outlet, the durable store keeps it across a
restart, and the breakeven policy then orders and decides by it: the worse rig sleeps first
and stays asleep at a price that wakes the better one, where the catalogue alone (a fresh
store) treats the two alike."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from conftest import SimFleet

from daemon import efficiency
from daemon.audit import AuditLog
from daemon.loop import ControlLoop, TickReport
from daemon.observer import Observer, ObserverSettings
from daemon.persist import Persistence
from daemon.power import PowerSwitches, build_switch
from daemon.reconciler import Actuator, Reconciler
from daemon.store import DB_NAME, Store
from daemon.switch_config import SwitchConfig
from drivers.inventory import Inventory
from market.hashprice import PushedHashprice
from market.power import PushedPrice
from market.service import Market
from policies.api import Intent, MarketView, RigView, Site
from policies.breakeven import BreakevenPolicy
from policies.economics import Economics
from policies.guards import GuardConfig
from policies.values import Mode, Observation, QuoteKind, RigId
from simulator.client import ControlError

APC = "127.2.0.1"
TERMS = Economics(pool_fee=0.02, overhead=1.0)
POWER_PRICE = 0.05
WORSE_BY = 1.2
TICK_S = 60.0


class Ordered(BreakevenPolicy):
    """The breakeven policy, keeping the order of its last intents (worst rig first)."""

    def __init__(self) -> None:
        self.order: list[RigId] = []

    def decide(
        self, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
    ) -> Mapping[RigId, Intent]:
        intents = super().decide(market, fleet, site, now)
        self.order = list(intents)
        return intents


class Daemon:
    """A control loop over the two rigs and the PDU, saving to ``state`` as the daemon does."""

    def __init__(
        self, sim: SimFleet, rigs: Mapping[RigId, int], state: Path, *, dry_run: bool, t: float
    ) -> None:
        self.sim, self.t = sim, t
        inventory = Inventory()
        self.inventory = inventory
        self.observer = Observer(inventory, ObserverSettings(timeout_s=3.0), clock=self.now)
        pdu = build_switch(SwitchConfig(name="apc", kind="apc", address=APC), (1, 2))
        power = PowerSwitches(
            {"apc": pdu}, {r: [("apc", o)] for r, o in rigs.items()}, {"apc": 2.0}
        )
        self.hashprice, self.price = PushedHashprice(ttl_s=600), PushedPrice(ttl_s=600)
        self.policy = Ordered()
        self.loop = ControlLoop(
            observer=self.observer,
            market=Market(
                {QuoteKind.HASHPRICE: [self.hashprice], QuoteKind.POWER_PRICE: [self.price]}
            ),
            policies=[self.policy],
            site=Site(economics=TERMS),
            guard_config=GuardConfig(
                min_dwell_s=0.0,
                hysteresis_usd_per_day=0.05,
                ramp_kw_per_min=1000.0,
                ramp_rigs_per_s=10,
                economics=TERMS,
            ),
            reconciler=Reconciler(confirm_deadline_s=600, max_attempts=3),
            actuator=Actuator(self.observer.drivers, dry_run=dry_run, clock=self.now),
            audit=AuditLog(state / "audit.jsonl"),
            market_refresh_s=0.0,
            clock=self.now,
            power=power,
        )
        self.store = Store(state / DB_NAME)
        self.persistence = Persistence(self.store, self.loop)

    def now(self) -> float:
        return self.t

    async def start(self, addresses: Sequence[RigId]) -> None:
        await self.inventory.ensure(list(addresses))
        self.observer.sync_drivers()
        self.persistence.restore(self.t)

    async def tick(self, hashprice: float) -> TickReport:
        self.hashprice.push(hashprice, self.t, "test")
        self.price.push(POWER_PRICE, self.t, "test")
        report = await self.loop.tick()
        self.persistence.save_tick(report)
        self.t += TICK_S
        await asyncio.to_thread(self.sim.control.advance_clock, TICK_S)
        return report


def outlets_of(sim: SimFleet, rigs: Sequence[RigId]) -> dict[RigId, int]:
    state = sim.control.switch(APC)
    fed = {rig: o["outlet"] for o in state["outlets"] for rig in o["rigs"]}
    return {rig: int(fed[rig]) for rig in rigs}


def asleep(report: TickReport, rig: RigId) -> bool:
    reading = report.readings.get(rig)
    return isinstance(reading, Observation) and reading.mode is Mode.SLEEP and not reading.mining


@pytest.mark.slow
async def test_the_meter_teaches_efficiency_which_survives_a_restart_and_orders_curtailment(
    sim: SimFleet, tmp_path: Path
) -> None:
    # The worse rig sorts last by id, so an order by id (equal figures) puts it last.
    better, worse = sorted(sim.addresses("s19jpro"))
    rigs = await asyncio.to_thread(outlets_of, sim, [better, worse])
    await asyncio.to_thread(sim.control.set_power_factor, worse, WORSE_BY)
    state = tmp_path / "state"
    first = Daemon(sim, rigs, state, dry_run=False, t=1_800_000_000.0)
    await first.start([better, worse])

    # Both pay at 80 USD/PH/day: they hash in normal, each metered sample taken in, until
    # both estimates are trusted (20 samples over 15 minutes: 20 ticks if every read works).
    learned = first.loop.efficiency
    for _ in range(3 * efficiency.TRUST_SAMPLES):
        await first.tick(80.0)
        if all(r in learned and learned[r].reference is not None for r in (better, worse)):
            break
    assert learned[better].reference is Mode.NORMAL and learned[worse].reference is Mode.NORMAL
    assert learned[worse].modes[Mode.NORMAL].samples >= efficiency.TRUST_SAMPLES
    good, bad = learned[better].j_per_th[Mode.NORMAL], learned[worse].j_per_th[Mode.NORMAL]
    assert bad / good == pytest.approx(WORSE_BY, rel=0.03)
    truth = await asyncio.to_thread(first.sim.control.rig, worse)
    assert bad == pytest.approx(truth["power_w"] / truth["hashrate_ths"], rel=0.03)

    # Neither pays at 20: both go to sleep, the worse one first in the policy's order.
    for _ in range(10):
        report = await first.tick(20.0)
        if asleep(report, better) and asleep(report, worse):
            break
    assert asleep(report, better) and asleep(report, worse), report.readings
    assert first.policy.order == [worse, better]
    first.store.close()

    # A restart: the learned figures come back from the store, and with both rigs asleep
    # (nothing measured now) they alone tell the two apart. At 33 USD/PH/day low mode pays
    # for the better rig (24 J/TH rated) and not for the worse (about 29 J/TH).
    again = Daemon(sim, rigs, state, dry_run=True, t=first.t)
    await again.start([better, worse])
    restored = again.loop.efficiency
    assert restored[worse].ratio == pytest.approx(learned[worse].ratio, rel=0.01)
    assert restored[worse].modes[Mode.NORMAL].samples >= efficiency.TRUST_SAMPLES
    report = await again.tick(33.0)
    assert again.policy.order == [worse, better]
    assert (report.desired[better].mode, report.desired[worse].mode) == (Mode.LOW, Mode.SLEEP)
    again.store.close()

    # The same restart from a fresh store: the catalogue's figures, the two rigs alike.
    fresh = Daemon(sim, rigs, tmp_path / "fresh", dry_run=True, t=first.t)
    await fresh.start([better, worse])
    report = await fresh.tick(33.0)
    assert fresh.policy.order == [better, worse]  # equal figures: by id
    assert report.desired[better].mode is report.desired[worse].mode is Mode.LOW
    fresh.store.close()


def test_the_simulators_power_factor_is_set_over_its_control_api(sim: SimFleet) -> None:
    rig = sim.address("s19jpro")
    assert sim.control.set_power_factor(rig, 1.1)["power_factor"] == 1.1
    with pytest.raises(ControlError, match=r"power_factor must be between 0\.5 and 2\.0, got 5"):
        sim.control.set_power_factor(rig, 5.0)
    with pytest.raises(ControlError, match="expected"):
        sim.control.request("PUT", f"/rigs/{rig}/power_factor", {"power_factor": "high"})
    assert sim.control.reset(rig)["power_factor"] == 1.0
