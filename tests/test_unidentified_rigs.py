"""A configured rig that never answered is still one of the fleet: read as failing every tick,
counted in ``rigs``, shown by ``rigpilot status``, exported by the metrics (the documented
``RigpilotRigsUnreadable`` alert fires), published over MQTT, counted by power-cap, and never
commanded. The daemon and its simulated rigs, a real Mosquitto and a real metrics endpoint."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from broker import Broker, free_port
from conftest import SimFleet
from mqtt_client import Collector, daemon_settings, start_daemon
from prometheus_client.parser import text_string_to_metric_families

from daemon.admin_cli import main_status
from daemon.loop import ControlLoop
from daemon.mqtt.topics import Topics
from daemon.observer import Observer, ObserverSettings
from daemon.reconciler import Actuator, Reconciler
from drivers.inventory import Inventory
from market.hashprice import PushedHashprice
from market.power import PushedPrice
from market.service import Market
from policies.api import Site
from policies.guards import GuardConfig
from policies.power_cap import PowerCapPolicy
from policies.values import FailureKind, Mode, Observation, ObservationFailure, QuoteKind

DEAD = "127.1.9.99"  # nothing listens there: connection refused from the first try


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name} {labels}")


async def test_a_rig_dead_from_the_start_is_counted_shown_exported_and_published(
    broker: Broker, sim: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = [sim.address("s19jpro"), sim.address("m50s"), sim.address("s21")]
    port = free_port()
    settings = daemon_settings(
        tmp_path,
        broker,
        "deadrig",
        {**dict.fromkeys(live, "row-a"), DEAD: "row-a"},
        dry_run=True,
        extra=f'[metrics]\nenabled = true\naddress = "127.0.0.1"\nport = {port}\n',
    )
    topics = Topics("rigpilot", "deadrig")
    async with Collector(broker, "viewer", [f"{topics.root}/#"], "deadrig-w") as col:
        daemon = await start_daemon(settings)
        try:
            while len(daemon.reports) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            rig_doc = (
                await col.wait_for(lambda m: m.topic == topics.rig_state(DEAD), timeout=15)
            ).json()
            fleet_doc = (await col.wait_for(lambda m: m.topic == topics.fleet, timeout=15)).json()
            fault = (
                await col.wait_for(
                    lambda m: m.topic == topics.event("fault") and m.json()["rig"] == DEAD,
                    timeout=15,
                )
            ).json()
        finally:
            assert await daemon.close() == 0
    report = daemon.reports[-1]
    assert (report.rigs, report.observed) == (4, 3)
    dead = report.readings[DEAD]
    assert isinstance(dead, ObservationFailure)
    assert dead.kind is FailureKind.UNREACHABLE
    assert "never identified (since " in dead.detail
    assert DEAD in report.desired  # the guards decided for it (to leave it alone) ...
    assert all(r.command.rig_id != DEAD for rep in daemon.reports for r in rep.results)  # ...
    assert "3/4 rigs read" in report.summary()

    # Metrics: the series the documented alert reads, and the alert expression itself.
    rigs = sample(text, "rigpilot_fleet_rigs")
    observed = sample(text, "rigpilot_fleet_rigs_observed")
    assert (rigs, observed) == (4, 3)
    assert sample(text, "rigpilot_fleet_rigs_unreadable", reason="unreachable") == 1
    assert rigs - observed > 0.05 * rigs  # RigpilotRigsUnreadable (docs/metrics.md)

    # MQTT: the rig's own retained state, the fleet summary and a fault event.
    assert rig_doc["online"] is False and rig_doc["model"] is None
    assert rig_doc["error"].startswith("unreachable: never identified")
    assert (fleet_doc["rigs"], fleet_doc["online"]) == (4, 3)
    assert fault["problem"].startswith("unreachable: never identified")

    # rigpilot status, from the state database the daemon wrote.
    # (the daemon was stopped cleanly above: exit 3, with its last fleet summary)
    assert main_status(["--state-dir", str(settings.state_dir)]) == 3
    assert "3/4 rigs read" in capsys.readouterr().out


async def test_power_cap_counts_a_never_identified_rig_and_it_is_never_commanded(
    sim: SimFleet,
) -> None:
    """Three rigs fit under the cap; with the dead fourth counted at the most any rig draws
    (power-cap's rule for an unread rig without mode points), they no longer do."""
    live = [sim.address("s19jpro"), sim.address("m50s"), sim.address("s21")]
    inventory = Inventory()
    failures = await inventory.ensure([*live, DEAD], timeout_s=3.0)
    assert [f.address for f in failures] == [DEAD]
    observer = Observer(inventory, ObserverSettings(timeout_s=3.0))
    probe = await observer.cycle()
    drawn_kw = sum(r.power_w or 0.0 for r in probe.readings.values() if isinstance(r, Observation))
    cap_kw = drawn_kw / 1000 + 1.0  # room for the three, not for a fourth
    hashprice, power = PushedHashprice(ttl_s=600), PushedPrice(ttl_s=600)
    hashprice.push(80.0, time.time(), "test")
    power.push(0.05, time.time(), "test")
    loop = ControlLoop(
        observer=observer,
        market=Market({QuoteKind.HASHPRICE: [hashprice], QuoteKind.POWER_PRICE: [power]}),
        policies=[PowerCapPolicy()],
        site=Site(power_cap_kw=cap_kw),
        guard_config=GuardConfig(min_dwell_s=0, ramp_kw_per_min=1000.0, ramp_rigs_per_s=10),
        reconciler=Reconciler(confirm_deadline_s=120, max_attempts=3),
        actuator=Actuator(observer.drivers, dry_run=True),
        market_refresh_s=0.0,
    )
    report = await loop.tick()
    assert report.rigs == 4
    shed = [r for r in live if report.desired[r].mode in (Mode.SLEEP, Mode.LOW, Mode.LIMIT)]
    assert shed, f"nothing shed under {cap_kw:.1f} kW"
    assert "unread rigs counted at" in report.desired[shed[0]].reason
    assert report.desired[DEAD].mode is Mode.UNKNOWN  # left alone: it cannot be commanded
    assert all(r.command.rig_id != DEAD for r in report.results)


async def test_an_unidentified_rig_that_comes_up_joins_as_an_identified_rig(
    sim: SimFleet,
) -> None:
    address = sim.address("m50s")
    await asyncio.to_thread(sim.control.set_fault, address, "refuse")
    inventory = Inventory()
    assert [f.address for f in await inventory.ensure([address], timeout_s=3.0)] == [address]
    observer = Observer(inventory, ObserverSettings(timeout_s=3.0))
    first = await observer.cycle()
    assert isinstance(first.readings[address], ObservationFailure)
    assert inventory.unidentified[address].attempts == 1
    await inventory.ensure([address], timeout_s=3.0)  # still down: the first failure is kept
    assert inventory.unidentified[address].attempts == 2
    since = inventory.unidentified[address].since
    assert since <= first.readings[address].observed_at
    await asyncio.to_thread(sim.control.clear_faults, address)
    assert await inventory.ensure([address]) == []  # re-identification (daemon/run.py)
    assert address not in inventory.unidentified
    second = await observer.cycle()
    assert isinstance(second.readings[address], Observation)
    await inventory.ensure([DEAD], timeout_s=3.0)
    assert inventory.addresses() == [address, DEAD]
    inventory.forget(DEAD)  # no longer configured (a reload): out of the fleet
    assert inventory.addresses() == [address]
