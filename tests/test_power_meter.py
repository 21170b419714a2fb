"""Measured watts: a metered outlet's power is its rig's power, ``power_source = meter``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import SimFleet

from daemon.loop import TickReport
from daemon.power import with_switches
from drivers.switches.base import OutletReading
from policies.values import (
    FailureKind,
    Identity,
    Make,
    Mode,
    Observation,
    ObservationFailure,
    PowerSource,
    Reading,
)


def obs(address: str, watts: float | None, source: PowerSource | None) -> Observation:
    identity = Identity(address, Make.ANTMINER, "S19j Pro", "x", "antminer-stock")
    return Observation(identity, 1.0, 104.0, watts, source, Mode.NORMAL, True)


def test_meters_replace_estimates_and_reports_only_when_every_outlet_is_read() -> None:
    readings: dict[str, Reading] = {
        "a": obs("a", 3050.0, PowerSource.ESTIMATED),
        "b": obs("b", 3300.0, PowerSource.REPORTED),
        "c": obs("c", 3050.0, PowerSource.ESTIMATED),
        "d": obs("d", None, None),
        "e": ObservationFailure("e", FailureKind.TIMEOUT, "no answer", 1.0),
    }
    outlets = {
        ("pdu", 1): OutletReading(1, True, 2987.0),
        ("pdu", 2): OutletReading(2, True, 1700.0),
        ("pdu", 3): OutletReading(3, True, 1712.0),
        ("pdu", 4): OutletReading(4, True, None),  # an unmetered outlet
        ("plug", 0): OutletReading(0, True, 18.0),
        ("plug2", 0): OutletReading(0, True, 3000.0),
    }
    wiring = {
        "a": [("pdu", 1)],
        "b": [("pdu", 2), ("pdu", 3)],  # dual PSU: the sum of both
        "c": [("pdu", 4)],
        "d": [("pdu", 9)],  # not read this tick
        "e": [("plug2", 0)],
    }
    out = with_switches(readings, outlets, wiring, {}, 2.0)
    a, b, c, d = (out[k] for k in "abcd")
    assert isinstance(a, Observation) and isinstance(b, Observation)
    assert (a.power_w, a.power_source) == (2987.0, PowerSource.METER)
    assert (b.power_w, b.power_source) == (3412.0, PowerSource.METER)
    assert c == readings["c"] and d == readings["d"]
    assert out["e"] == readings["e"]  # an unobserved rig stays unobserved, whatever it draws


async def test_metered_rigs_show_meter_watts_in_the_loop(sim: SimFleet, tmp_path: Path) -> None:
    from daemon.config import load_settings
    from daemon.run import serve

    s19, s21, m50s = sim.address("s19jpro"), sim.address("s21"), sim.address("m50s")
    config = tmp_path / "rigpilot.toml"
    config.write_text(f"""
state_dir = "{tmp_path / "state"}"
dry_run = true
[control]
tick_s = 1
[[market.hashprice]]
type = "fixed"
value = 60.0
[[market.power]]
type = "fixed"
value_per_kwh = 0.01
[[switches]]
name = "apc"
kind = "apc"
address = "127.2.0.1"
[[switches]]
name = "px3"
kind = "raritan"
address = "127.2.0.2"
[[rigs]]
address = "{s19}"
outlets = ["apc:1"]
[[rigs]]
address = "{s21}"
outlets = ["px3:2"]
[[rigs]]
address = "{m50s}"
""")
    settings = load_settings(config)
    reports: list[TickReport] = []
    assert await serve(settings, settings.dry_run, ticks=2, on_tick=reports.append) == 0
    readings = reports[-1].readings
    for rig in (s19, s21):
        reading = readings[rig]
        assert isinstance(reading, Observation)
        assert reading.power_source is PowerSource.METER
        truth = float((await asyncio.to_thread(sim.control.rig, rig))["power_w"])
        assert reading.power_w is not None and abs(reading.power_w - truth) < 60
    unwired = readings[m50s]
    assert isinstance(unwired, Observation)
    assert unwired.power_source is PowerSource.REPORTED  # a Whatsminer's own figure


async def test_an_unreachable_switch_is_left_out_of_the_sweep(
    sim: SimFleet, tmp_path: Path
) -> None:
    from daemon.config import Settings
    from daemon.power import PowerSwitches

    s19 = sim.address("s19jpro")
    settings = Settings.model_validate(
        {
            "switches": [{"name": "apc", "kind": "apc", "address": "127.2.0.1"}],
            "rigs": [{"address": s19, "outlets": ["apc:1"]}],
        }
    )
    power = PowerSwitches.from_settings(settings)
    assert power is not None
    sweep = await power.read(0.0)
    assert sweep.readings[("apc", 1)].on is True and not sweep.failures
    await asyncio.to_thread(sim.control.set_switch_fault, "127.2.0.1", "unreachable")
    sweep = await power.read(1.0)
    assert sweep.readings == {}
    assert "apc" in sweep.failures and "127.2.0.1" in sweep.failures["apc"].detail
