"""Every simulated fault, seen from unmodified pyasic's side, as it looks on real hardware.

Real rigs fail in a handful of ways: gone (no answer at all), refusing or resetting
connections, accepting and never answering (pyasic then waits its 100 s socket timeout),
answering slowly, answering garbage, rebooting, overheating, losing a hashboard.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pyasic
import pytest
from conftest import SimFleet
from pyasic.errors import APIError

MAKES = ["s19jpro", "m30s+"]


async def found(address: str) -> Any:
    return await asyncio.wait_for(pyasic.get_miner(address), 30)


async def set_fault(sim: SimFleet, address: str, fault: str, **params: Any) -> None:
    await asyncio.to_thread(sim.control.set_fault, address, fault, **params)


@pytest.mark.parametrize("key", MAKES)
@pytest.mark.parametrize("fault", ["offline", "refuse", "hang", "reset"])
async def test_unanswering_rig_is_not_detected(sim: SimFleet, key: str, fault: str) -> None:
    address = sim.address(key)
    await set_fault(sim, address, fault)
    assert await found(address) is None


@pytest.mark.parametrize("key", MAKES)
async def test_hung_rig_stalls_a_naive_read_beyond_any_cycle(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    miner = await found(address)
    await set_fault(sim, address, "hang")
    # pyasic's own socket timeout is 100 s: a caller must bound it, as the observer does.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(miner.get_data(), 3)


@pytest.mark.parametrize("key", MAKES)
async def test_slow_rig_answers_late_but_right(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    miner = await found(address)
    await set_fault(sim, address, "slow", delay_s=1.0)
    start = time.monotonic()
    data = await asyncio.wait_for(miner.get_data(include=["hashrate"]), 30)
    assert time.monotonic() - start >= 1.0
    truth = await asyncio.to_thread(sim.control.rig, address)
    assert float(data.hashrate) == pytest.approx(truth["hashrate_ths"], rel=0.05)


@pytest.mark.parametrize("key", MAKES)
async def test_malformed_reply_is_an_api_error_not_data(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    miner = await found(address)
    await set_fault(sim, address, "malformed")
    with pytest.raises(APIError):
        await asyncio.wait_for(miner.rpc.summary(), 10)
    data = await asyncio.wait_for(miner.get_data(include=["hashrate"]), 30)
    assert data.hashrate is None  # pyasic swallows the error: no number, not a wrong one


@pytest.mark.parametrize("key", MAKES)
async def test_reset_connection_is_an_error(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    miner = await found(address)
    await set_fault(sim, address, "reset")
    with pytest.raises((APIError, ConnectionError, OSError)):
        await asyncio.wait_for(miner.rpc.summary(), 10)


@pytest.mark.parametrize("key", MAKES)
async def test_reboot_disappears_then_returns_in_default_mode(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    miner = await found(address)
    assert await miner.stop_mining()
    await asyncio.to_thread(sim.control.reboot, address)
    assert await found(address) is None
    # A reboot takes 90 simulated seconds: jump them, then it is back hashing in normal mode
    await asyncio.to_thread(sim.control.advance_clock, 90)
    deadline = time.monotonic() + 20
    while (again := await found(address)) is None:
        assert time.monotonic() < deadline, "rig did not come back after its reboot"
        await asyncio.sleep(0.2)
    assert type(again).__name__ == type(miner).__name__
    truth = await asyncio.to_thread(sim.control.rig, address)
    assert truth["mode"] == "normal"


@pytest.mark.parametrize("key", MAKES)
async def test_dead_board_shows_in_hashboards(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    miner = await found(address)
    await set_fault(sim, address, "dead_board", board=1)
    data = await asyncio.wait_for(miner.get_data(include=["hashrate", "hashboards"]), 30)
    truth = await asyncio.to_thread(sim.control.rig, address)
    assert float(data.hashrate) == pytest.approx(truth["hashrate_ths"], rel=0.05)
    live = [b for b in data.hashboards if b.hashrate is not None and float(b.hashrate) > 0]
    assert len(live) == 2


@pytest.mark.parametrize("key", MAKES)
async def test_overheat_trips_protection_visible_to_pyasic(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    miner = await found(address)
    await set_fault(sim, address, "overheat", extra_c=60)
    deadline = time.monotonic() + 30
    while (await asyncio.to_thread(sim.control.rig, address))["phase"] != "protected":
        assert time.monotonic() < deadline, "firmware protection never tripped"
        await asyncio.to_thread(sim.control.advance_clock, 10)  # the chips heat up
    data = await asyncio.wait_for(miner.get_data(include=["hashrate", "hashboards", "errors"]), 30)
    assert not data.hashrate or float(data.hashrate) == 0
    assert data.errors, "an over-temperature rig reports an error code"
