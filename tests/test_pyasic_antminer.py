"""Unmodified pyasic 0.79 against the simulated stock Antminers, over real sockets.

pyasic must detect, read and control the simulated rigs as it does real ones; the simulator's
control API (the rig's true state) is the referee.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pyasic
import pytest
from conftest import SimFleet
from helpers import eventually
from pyasic.config import MiningModeConfig
from pyasic.miners.backends.antminer import AntminerModern

from simulator.models import MODELS

EXPECTED_CLASS = {
    "s19jpro": "BMMinerS19jPro",
    "s19xp": "BMMinerS19XP",
    "s21": "BMMinerS21",
    "s21pro": "BMMinerS21Pro",
}


async def true_state(sim: SimFleet, address: str) -> dict[str, Any]:
    return await asyncio.to_thread(sim.control.rig, address)


async def antminer(address: str) -> AntminerModern:
    miner = await pyasic.get_miner(address)
    assert isinstance(miner, AntminerModern), type(miner)
    return miner


@pytest.mark.parametrize("key", sorted(EXPECTED_CLASS))
async def test_get_miner_identifies_make_model_and_firmware(sim: SimFleet, key: str) -> None:
    miner = await pyasic.get_miner(sim.address(key))
    assert type(miner).__name__ == EXPECTED_CLASS[key]
    assert isinstance(miner, AntminerModern)
    assert str(miner.make) == "AntMiner"
    assert str(miner.raw_model) == MODELS[key].model
    assert str(miner.firmware) == "Stock"


@pytest.mark.parametrize("key", sorted(EXPECTED_CLASS))
async def test_get_data_matches_true_state(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    spec = MODELS[key]
    miner = await antminer(address)
    before = await true_state(sim, address)
    data = await miner.get_data()
    after = await true_state(sim, address)

    assert data.hashrate is not None and data.expected_hashrate is not None
    low = min(before["hashrate_ths"], after["hashrate_ths"]) * 0.97
    high = max(before["hashrate_ths"], after["hashrate_ths"]) * 1.03
    assert low <= float(data.hashrate) <= high
    assert float(data.expected_hashrate) == pytest.approx(spec.hashrate_ths)
    assert data.is_mining is True
    assert data.fw_ver == before["firmware"]
    assert data.serial_number == before["serial"]
    assert data.mac == before["mac"]
    assert data.hostname == "Antminer"
    assert data.errors == []
    assert data.uptime is not None and data.uptime >= 0
    assert len(data.fans) == spec.fans and all(f.speed and f.speed > 0 for f in data.fans)

    assert len(data.hashboards) == spec.boards
    for board, truth in zip(data.hashboards, after["boards"], strict=True):
        assert board.missing is False
        assert board.chips == spec.chips_per_board
        assert board.hashrate is not None
        assert float(board.hashrate) == pytest.approx(truth["hashrate_ths"], rel=0.03)
        assert board.temp == pytest.approx(truth["board_temp_c"], abs=2.0)
        assert board.chip_temp == pytest.approx(truth["chip_temp_c"], abs=2.0)
    board_sum = sum(float(b.hashrate) for b in data.hashboards if b.hashrate is not None)
    assert board_sum == pytest.approx(float(data.hashrate), rel=0.03)


async def test_stop_and_resume_mining(sim: SimFleet) -> None:
    address = sim.address("s19jpro")
    miner = await antminer(address)

    assert await miner.stop_mining() is True
    state = await true_state(sim, address)
    assert state["mode"] == "sleep"
    assert state["counters"]["writes"] == 1
    assert state["counters"]["by_command"]["set_miner_conf.cgi"] == 1
    data = await miner.get_data()
    assert data.is_mining is False

    async def stopped() -> bool:
        data = await miner.get_data()
        state = await true_state(sim, address)
        return (
            data.hashrate is not None
            and float(data.hashrate) == 0.0
            and (state["hashrate_ths"] == 0.0)
        )

    await eventually(stopped, sim=sim)
    data = await miner.get_data()
    assert len(data.hashboards) == MODELS["s19jpro"].boards  # idle boards are still listed

    assert await miner.resume_mining() is True
    state = await true_state(sim, address)
    assert state["mode"] == "normal"
    assert (await miner.get_data()).is_mining is True

    async def hashing() -> bool:
        data = await miner.get_data()
        return data.hashrate is not None and float(data.hashrate) > 0.0

    await eventually(hashing, sim=sim)
    assert (await true_state(sim, address))["hashrate_ths"] > 0.0


async def test_low_power_through_send_config(sim: SimFleet) -> None:
    address = sim.address("s21")
    nameplate = MODELS["s21"].hashrate_ths
    miner = await antminer(address)
    config = await miner.get_config()
    assert config.mining_mode == MiningModeConfig.normal()

    config.mining_mode = MiningModeConfig.low()
    await miner.send_config(config)
    assert (await true_state(sim, address))["mode"] == "low"
    assert (await miner.get_config()).mining_mode == MiningModeConfig.low()

    async def reduced() -> bool:
        data = await miner.get_data()
        state = await true_state(sim, address)
        return (
            data.hashrate is not None
            and float(data.hashrate) == pytest.approx(0.7 * nameplate, rel=0.03)
            and state["hashrate_ths"] == pytest.approx(0.7 * nameplate, rel=0.03)
        )

    await eventually(reduced, sim=sim)
    data = await miner.get_data()
    assert data.is_mining is True
    assert data.expected_hashrate is not None
    assert float(data.expected_hashrate) == pytest.approx(0.7 * nameplate)


async def test_ignore_writes_fools_pyasic_but_not_the_true_state(sim: SimFleet) -> None:
    address = sim.address("s19xp")
    await asyncio.to_thread(sim.control.set_fault, address, "ignore_writes")
    miner = await antminer(address)
    assert await miner.stop_mining() is True  # pyasic never checks the reply
    state = await true_state(sim, address)
    assert state["mode"] == "normal"
    assert state["counters"]["writes"] == 1
    assert (await miner.get_data()).is_mining is True
