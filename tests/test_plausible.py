"""Plausibility is part of parsing: lying rigs (tests/hostile.py, over real sockets) give unknown
fields named ``implausible``, never figures that drive decisions for other rigs; a lying sensor
cannot hide a hot board from the thermal guard."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conftest import FrozenClock
from helpers import observation, rig_view
from hostile import HostileRig, hostile

from drivers.identify import driver_for
from drivers.parse import MAX_TEMP_C, Bounds, plausible, whatsminer_summary
from drivers.transport import DriverError, decode
from policies.api import Intent, MarketView, RigView, Site
from policies.economics import ModePoint
from policies.guards import THERMAL, GuardConfig, GuardState, apply_guards
from policies.power_cap import PowerCapPolicy, counted_power_w, fleet_fallback_w
from policies.values import FailureKind, Identity, Make, Mode, Observation, PowerSource
from simulator import antminer as sim_am
from simulator import whatsminer as sim_wm
from simulator.models import lookup
from simulator.rig import SimRig

RIG = "::1"  # the simulator holds 0.0.0.0:4028 for every 127.x address; IPv6 loopback is free


def whatsminer_reply(**summary: Any) -> dict[str, Any]:
    clock = FrozenClock()
    rig = SimRig("127.1.0.1", lookup("m30s+"), clock, 0)
    clock.t += 900
    reply = decode(sim_wm.handle_rpc(rig, {"command": "summary+devs"}))
    reply["summary"][0]["SUMMARY"][0].update(summary)
    return reply


def antminer_reply(**dev: Any) -> dict[str, Any]:
    clock = FrozenClock()
    rig = SimRig("127.1.0.1", lookup("s19jpro"), clock, 0)
    clock.t += 900
    reply = decode(sim_am.handle_rpc(rig, {"command": "stats"}))
    reply["STATS"][1].update(dev)
    return reply


def wire(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply).encode() + b"\x00"


async def observe_liar(
    make: Make, model: str, driver: str, replies: dict[str, bytes]
) -> Observation:
    identity = Identity(RIG, make, model, "fw", driver)
    with hostile(HostileRig(RIG, "reply", replies)):
        return await driver_for(identity).observe(3.0, time.time())


async def test_an_absurd_antminer_hashrate_is_refused_as_implausible() -> None:
    with pytest.raises(DriverError) as refused:
        await observe_liar(
            Make.ANTMINER,
            "S19j Pro",
            "antminer-stock",
            {"stats": wire(antminer_reply(**{"GHS 5s": 1e33}))},
        )
    assert refused.value.kind is FailureKind.IMPLAUSIBLE
    assert "implausible hashrate_ths: 1e+30" in refused.value.detail


async def test_a_negative_whatsminer_hashrate_is_refused_as_implausible() -> None:
    with pytest.raises(DriverError) as refused:
        await observe_liar(
            Make.WHATSMINER, "M30S+ V40", "whatsminer-v2",
            {"summary+devs": wire(whatsminer_reply(**{"MHS 1m": -5e9}))},
        )  # fmt: skip
    assert refused.value.kind is FailureKind.IMPLAUSIBLE
    assert "implausible hashrate_ths: -5000 " in refused.value.detail


async def test_an_absurd_whatsminer_power_is_unknown_and_the_rest_is_kept() -> None:
    obs = await observe_liar(
        Make.WHATSMINER, "M30S+ V40", "whatsminer-v2",
        {"summary+devs": wire(whatsminer_reply(Power=1e30))},
    )  # fmt: skip
    assert any(e.startswith("implausible power_w: 1e+30") for e in obs.errors)
    assert obs.hashrate_ths > 50 and obs.max_chip_temp_c is not None
    # the watts fall back to the catalogue's estimate for the mode and hashrate
    assert obs.power_source is PowerSource.ESTIMATED
    assert obs.power_w is not None and obs.power_w < 5000


def test_temperatures_outside_a_sensors_range_are_unknown_and_named() -> None:
    reply = whatsminer_reply(**{"Env Temp": 1e6, "Chip Temp Max": -300})
    status = plausible(whatsminer_summary(reply), Bounds())
    assert status.ambient_c is None
    assert "implausible ambient_c: 1e+06 (plausible -40..150 °C)" in status.errors
    assert "implausible max_chip_temp_c: -300 (plausible -40..150 °C)" in status.errors
    assert status.max_chip_temp_c is not None and status.max_chip_temp_c <= MAX_TEMP_C


def view(obs: Observation) -> RigView:
    modes = frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH})
    pts = (
        ModePoint(Mode.SLEEP, 0.0, 15.0, PowerSource.ESTIMATED),
        ModePoint(Mode.LOW, 80.0, 2500.0, PowerSource.ESTIMATED),
        ModePoint(Mode.NORMAL, 100.0, 3250.0, PowerSource.ESTIMATED),
        ModePoint(Mode.HIGH, 115.0, 4000.0, PowerSource.ESTIMATED),
    )
    return rig_view(obs, modes, pts)


def guarded(obs: Observation, want: Mode) -> tuple[Mode, str]:
    config = GuardConfig(min_dwell_s=0.0, hysteresis_usd_per_day=0.0, ramp_kw_per_min=1e6)
    intent = Intent(obs.rig_id, want, "test", "test")
    market = MarketView(hashprice_usd_per_ph_day=50.0, power_price_usd_per_kwh=0.04)
    out, _ = apply_guards(
        {obs.rig_id: intent}, [view(obs)], market, GuardState(), config, (), obs.observed_at, 7
    )
    return out[obs.rig_id].mode, out[obs.rig_id].decided_by


async def test_a_lying_summary_sensor_does_not_hide_hot_boards_from_the_thermal_guard() -> None:
    reply = whatsminer_reply(**{"Chip Temp Max": -300})
    for board in reply["devs"][0]["DEVS"]:
        board["Chip Temp Max"] = 92.0
    obs = await observe_liar(
        Make.WHATSMINER, "M30S+ V40", "whatsminer-v2", {"summary+devs": wire(reply)}
    )
    assert obs.max_chip_temp_c == 92.0
    assert guarded(obs, Mode.HIGH) == (Mode.LOW, THERMAL)  # 92 °C: over the 90 °C limit


async def test_a_cold_summary_sensor_is_flagged_as_disagreeing_with_the_boards() -> None:
    reply = whatsminer_reply(**{"Chip Temp Max": 20.0})
    for board in reply["devs"][0]["DEVS"]:
        board["Chip Temp Max"] = 80.0
    status = plausible(whatsminer_summary(reply), Bounds())
    assert status.max_chip_temp_c == 80.0
    assert any(e.startswith("sensor disagrees: summary chip 20 °C") for e in status.errors)


async def test_a_hashing_rig_with_no_plausible_temperature_is_unknown_heat_not_cool() -> None:
    reply = whatsminer_reply(**{"Chip Temp Max": 1e6})
    for board in reply["devs"][0]["DEVS"]:
        board["Chip Temp Max"] = -1e6
        board["Chip Temp Avg"] = -1e6
    obs = await observe_liar(
        Make.WHATSMINER, "M30S+ V40", "whatsminer-v2", {"summary+devs": wire(reply)}
    )
    assert obs.mining and obs.max_chip_temp_c is None
    assert guarded(obs, Mode.HIGH) == (obs.mode, THERMAL)  # held: not raised on unknown heat


def read(rid: str, watts: float) -> RigView:
    return view(observation(rid, watts=watts, source=PowerSource.REPORTED))


def test_an_unread_rig_counts_at_catalogue_points_never_at_another_rigs_reading() -> None:
    liar = read("liar", 2.95e31)
    unread = rig_view(None, {Mode.SLEEP, Mode.NORMAL}, rig_id="u")  # no catalogue points
    fleet = [read("h0", 3250.0), liar, unread]
    assert counted_power_w(unread, fleet_fallback_w(fleet)) == 4000.0  # the fleet's top point


async def test_a_power_capped_site_keeps_its_healthy_rigs_running_beside_a_liar() -> None:
    """Three healthy rigs, a Whatsminer claiming 1e30 W and a rig that could not be read, under
    a 20 kW cap: the liar's watts are unknown (estimated from the catalogue instead), the unread
    rig counts at a catalogue point, and nothing is shed. The old code shed every healthy rig
    ("site at 1e27 kW")."""
    liar = await observe_liar(
        Make.WHATSMINER, "M30S+ V40", "whatsminer-v2",
        {"summary+devs": wire(whatsminer_reply(Power=1e30))},
    )  # fmt: skip
    healthy = [read(f"h{i}", 3250.0) for i in range(3)]
    unread = rig_view(None, {Mode.SLEEP, Mode.NORMAL}, rig_id="u")
    fleet = [*healthy, view(liar), unread]
    intents = PowerCapPolicy().decide(MarketView(50.0, 0.04), fleet, Site(power_cap_kw=20.0), 0.0)
    assert intents == {}, [i.reason for i in intents.values()]
