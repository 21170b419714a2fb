"""Unmodified pyasic 0.79 against simulated stock Whatsminers, over real sockets.

The fleet runs at 30x simulated time (see conftest), so a few wall seconds are minutes of
physics; checks against the control API's true state allow for the drift between the two reads.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import pytest
from pyasic import get_miner
from pyasic.config import MinerConfig, MiningModeConfig
from pyasic.errors import APIError
from pyasic.miners.backends.btminer import BTMinerV2, BTMinerV3

from simulator.client import SimControl


class SimFleet(Protocol):
    """What these tests use of conftest's ``sim`` fixture."""

    control: SimControl

    def address(self, key: str) -> str: ...


pytestmark = pytest.mark.slow


async def settle(sim: SimFleet, address: str, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
    """Poll the true state until ``pred(state)`` holds; return it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state: dict[str, Any] = sim.control.rig(address)
        if pred(state) or asyncio.get_running_loop().time() > deadline:
            return state
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("key", "model", "base"),
    [
        ("m30s+", "M30S+V40", BTMinerV2),
        ("m50s", "M50SVH50", BTMinerV2),
        ("m60s-v3", "M60SVK40", BTMinerV3),
    ],
)
async def test_detection(sim: SimFleet, key: str, model: str, base: type) -> None:
    miner = await get_miner(sim.address(key))
    assert miner is not None
    assert isinstance(miner, base)
    assert str(miner).replace(" ", "").startswith(model)  # e.g. "M30S+ V40 (Stock): ip"


@pytest.mark.parametrize("key", ["m30s+", "m50s", "m60s-v3"])
async def test_get_data_matches_true_state(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    miner = await get_miner(address)
    assert miner is not None
    data = await miner.get_data()
    truth = sim.control.rig(address)
    assert data.hashrate is not None
    assert float(data.hashrate) == pytest.approx(truth["hashrate_ths"], rel=0.05)
    assert data.wattage is not None
    assert data.wattage == pytest.approx(truth["power_w"], rel=0.05)
    assert len(data.hashboards) == 3
    for board, true_board in zip(data.hashboards, truth["boards"], strict=True):
        assert board.hashrate is not None
        assert float(board.hashrate) == pytest.approx(true_board["hashrate_ths"], rel=0.05)
        if isinstance(miner, BTMinerV2):  # v3 pyasic reports chip-temp-min as board temp
            assert board.temp == pytest.approx(true_board["board_temp_c"], abs=2)
            assert board.chip_temp == pytest.approx(true_board["chip_temp_c"], abs=2)
    assert data.mac == truth["mac"]
    if isinstance(miner, BTMinerV2):
        assert data.is_mining is True
        assert data.wattage_limit is not None
        assert data.wattage_limit >= truth["power_w"]  # the stock default limit


async def test_stop_and_resume_v2(sim: SimFleet) -> None:
    address = sim.address("m30s+")
    miner = await get_miner(address)
    assert isinstance(miner, BTMinerV2)
    assert await miner.stop_mining() is True
    state = await settle(sim, address, lambda s: s["phase"] == "sleeping")
    assert state["mode"] == "sleep"
    assert state["power_w"] < 50
    data = await miner.get_data()
    assert data.is_mining is False
    assert data.hashrate is None  # btminer is stopped: no summary, as on real firmware
    assert await miner.resume_mining() is True
    state = await settle(sim, address, lambda s: s["phase"] == "running")
    assert state["mode"] == "normal"
    data = await miner.get_data()
    assert data.is_mining is True
    assert data.wattage is not None and data.wattage > 100


async def test_power_limit_and_low_power_v2(sim: SimFleet) -> None:
    address = sim.address("m50s")
    miner = await get_miner(address)
    assert isinstance(miner, BTMinerV2)
    before = sim.control.rig(address)
    assert await miner.set_power_limit(2500) is True
    state = await settle(sim, address, lambda s: s["power_w"] <= 2550)
    assert state["power_limit_w"] == 2500
    assert state["power_w"] <= 2550
    data = await miner.get_data()
    assert data.wattage_limit == 2500
    assert data.wattage is not None and data.wattage <= 2600
    assert data.hashrate is not None
    assert float(data.hashrate) < before["hashrate_ths"]

    await miner.send_config(MinerConfig(mining_mode=MiningModeConfig.low()))
    state = await settle(sim, address, lambda s: s["mode"] == "low")
    assert state["mode"] == "low"
    cfg = await miner.get_config()
    assert cfg.mining_mode == MiningModeConfig.low()


async def test_wrong_password_and_locked_writes_v2(sim: SimFleet) -> None:
    address = sim.address("m30s+")
    miner = await get_miner(address)
    assert isinstance(miner, BTMinerV2)
    miner.rpc.pwd = "not-admin"
    assert await miner.stop_mining() is False
    with pytest.raises(APIError):
        await miner.rpc.power_off()
    assert sim.control.rig(address)["mode"] == "normal"

    sim.control.set_fault(address, "writes_locked")
    miner = await get_miner(address)
    assert isinstance(miner, BTMinerV2)
    with pytest.raises(APIError) as err:
        await miner.rpc.power_off()
    assert err.value.message == "can't access write cmd"
    assert await miner.set_power_limit(2000) is False
    state = sim.control.rig(address)
    assert state["mode"] == "normal"
    assert state["power_limit_w"] is None
    assert state["counters"]["rejected"] >= 4


async def test_v3_control(sim: SimFleet) -> None:
    address = sim.address("m60s-v3")
    miner = await get_miner(address)
    assert isinstance(miner, BTMinerV3)
    assert await miner.stop_mining() is True
    state = await settle(sim, address, lambda s: s["phase"] == "sleeping")
    assert state["mode"] == "sleep"
    assert await miner.resume_mining() is True
    assert sim.control.rig(address)["mode"] == "normal"
    assert await miner.set_power_limit(3000) is True
    state = await settle(sim, address, lambda s: s["power_w"] <= 3050)
    assert state["power_limit_w"] == 3000
    data = await miner.get_data()
    assert data.wattage_limit == 3000
