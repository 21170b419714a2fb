"""Models from 2023 on and models the catalogue does not know: read as reported, never guessed.

A real S21 XP Hydro RPC ``stats`` capture (``fixtures/captures/antminer/v2023_07``) is served
verbatim over a real socket; the expected values below are written by hand from the capture.
Simulated rigs of models the catalogue lacks (an S21 XP Hyd., which pyasic 0.79 does not list
either, and an M66S on API v3, which pyasic lists) are identified and observed end to end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import SimFleet
from structlog.testing import capture_logs
from webrig import Rig, web_rig

from daemon.observer import Observer, ObserverSettings
from drivers.generic import PyasicGeneric
from drivers.identify import driver_for, identify
from drivers.inventory import Inventory
from drivers.parse import antminer_stats
from drivers.stock import AntminerStock
from drivers.transport import DriverError
from policies.values import (
    FailureKind,
    Identity,
    Make,
    Mode,
    Observation,
    PowerSource,
)


@pytest.fixture
async def web() -> AsyncIterator[tuple[Rig, AntminerStock]]:
    async with web_rig() as pair:
        yield pair


S21XPHYD = Path(__file__).parent / "fixtures/captures/antminer/v2023_07/s21_xp_hydro_rpc_stats.json"


async def test_s21_xp_hydro_capture_is_read_as_reported() -> None:
    async with web_rig("S21 XP Hyd.", "71.0.1.3") as (rig, driver):
        assert driver.entry is None  # the catalogue has no S21 XP Hyd.
        rig.rpc_capture = S21XPHYD
        rig.work_mode = "0"
        obs = await driver.observe(5.0, 1_800_000_000.0)
    assert obs.errors == ()
    assert obs.model_unknown
    assert obs.mode is Mode.NORMAL and obs.mining
    assert obs.hashrate_ths == pytest.approx(483.97925)  # "GHS 5s": 483979.25 GH/s
    assert [b.index for b in obs.boards] == [0, 1, 2]  # the fourth chain is empty
    assert [b.hashrate_ths for b in obs.boards] == pytest.approx([161.79468, 159.22652, 162.95805])
    assert [b.chips for b in obs.boards] == [160, 160, 160]
    assert [b.chip_temp_c for b in obs.boards] == [63, 63, 63]  # temp_chipN "63-59-56-61"...
    assert [b.board_temp_c for b in obs.boards] == [52, 51, 51]  # temp_pcbN "38-48-47-52"...
    assert all(b.alive for b in obs.boards)
    assert obs.max_chip_temp_c == 63
    assert obs.fan_rpm == ()  # hydro: fan1..4 are 0
    assert obs.uptime_s == 602534
    # no watts reported, no catalogue entry: no power at all, never another model's estimate
    assert obs.power_w is None and obs.power_source is None
    assert not driver.capabilities.reports_power


async def test_reported_watts_win() -> None:
    # a catalogued model (which would be estimated otherwise) whose range takes the
    # capture's 484 TH/s: an S21 XP (270 TH/s nameplate)
    async with web_rig("S21 XP", "71.0.1.3") as (rig, driver):
        rig.rpc_capture = S21XPHYD
        rig.watt = 5525
        assert driver.entry is not None  # a catalogued model, which would be estimated otherwise
        obs = await driver.observe(5.0, time.time())
        assert (obs.power_w, obs.power_source) == (5525.0, PowerSource.REPORTED)
        assert driver.capabilities.reports_power
        # later cycles read the watts again (one web request), without the configuration
        rig.watt, before = 5400, len(rig.requests)
        obs = await driver.observe(5.0, time.time())
        assert (obs.power_w, obs.power_source) == (5400.0, PowerSource.REPORTED)
        assert rig.requests[before:] == ["GET /cgi-bin/stats.cgi"]
        # a firmware that stops reporting them: estimated again, and said why
        rig.watt = None
        obs = await driver.observe(5.0, time.time())
        assert obs.power_source is PowerSource.ESTIMATED
        assert "power not read: stats without watt" in obs.errors


async def test_a_configuration_pyasic_cannot_parse_is_a_driver_error(
    web: tuple[Rig, AntminerStock],
) -> None:
    rig, driver = web
    rig.work_mode = "turbo"  # int("turbo") raises inside pyasic's config parser
    with pytest.raises(DriverError) as caught:
        await driver.apply(Mode.LOW, None, 5.0)
    assert caught.value.kind is FailureKind.BAD_REPLY
    assert "ValueError" in caught.value.detail


async def test_a_rig_without_pyasic_classification_is_a_driver_error() -> None:
    identity = Identity("127.1.255.1", Make.OTHER, "S23 Hyd.", "x", "pyasic")
    with pytest.raises(DriverError) as caught:
        await PyasicGeneric(identity).observe(1.0, time.time())
    assert caught.value.kind is FailureKind.UNKNOWN_MINER
    assert "no cached pyasic classification: re-identify it" in caught.value.detail


def test_rate_units() -> None:
    dev = {"GHS 5s": 200.5, "chain_acn1": 1, "chain_acs1": " o", "chain_rate1": "200.5"}
    reply = {"STATS": [{"Type": "Antminer X"}, {**dev, "rate_unit": "TH"}]}
    assert antminer_stats(reply).hashrate_ths == 200.5
    reply["STATS"][1]["rate_unit"] = "PH"  # type: ignore[index]
    with pytest.raises(DriverError, match=r"STATS\[1\].rate_unit: unknown unit 'PH'"):
        antminer_stats(reply)


@pytest.mark.parametrize(
    ("key", "model", "driver_name"),
    [("s21xphyd", "S21 XP Hyd.", "antminer-stock"), ("m66s-v3", "M66S VK30", "whatsminer-v3")],
)
async def test_uncatalogued_models_are_identified_observed_and_commanded(
    sim: SimFleet, key: str, model: str, driver_name: str
) -> None:
    address = sim.address(key)
    identity = await identify(address)
    assert (identity.model, identity.driver) == (model, driver_name)
    inventory = Inventory()
    inventory.put(identity)
    observer = Observer(inventory, ObserverSettings(timeout_s=5.0))
    with capture_logs() as logs:
        cycle = await observer.cycle()
    assert not [e for e in logs if e["event"] == "rig.observe_crashed"]
    obs = cycle.readings[address]
    assert isinstance(obs, Observation), obs
    assert obs.model_unknown
    assert obs.hashrate_ths > 250 and len(obs.boards) == 3
    assert obs.max_chip_temp_c is not None
    assert obs.power_source is PowerSource.REPORTED  # web stats "watt" / btminer power
    true = await asyncio.to_thread(sim.control.rig, address)
    assert obs.power_w == pytest.approx(true["power_w"], rel=0.05)
    # and commanded: sleep, confirmed by the simulator's true state
    await driver_for(identity).apply(Mode.SLEEP, None, 5.0)
    assert (await asyncio.to_thread(sim.control.rig, address))["mode"] == "sleep"


async def test_an_uncatalogued_stock_antminer_is_never_estimated(sim: SimFleet) -> None:
    # an S21 that calls itself a model the catalogue lacks: its stock firmware reports no
    # watts, so there is no power figure, rather than the S21's
    real = await identify(sim.address("s21"))
    renamed = Identity(real.address, real.make, "S23 Hyd.", real.firmware, real.driver)
    obs = await driver_for(renamed).observe(5.0, time.time())
    assert obs.model_unknown and obs.hashrate_ths > 0
    assert obs.power_w is None and obs.power_source is None
