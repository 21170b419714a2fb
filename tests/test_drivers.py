"""Drivers and the observer against the simulated fleet: every model, every fault, real sockets.

The simulator's control API (the rig's true physical state) is the referee.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SimFleet
from helpers import eventually

from daemon.fleet_cli import main_observe
from daemon.observer import Observer, ObserverSettings
from drivers.base import UnsupportedMode
from drivers.identify import driver_for, identify
from drivers.inventory import Inventory, InventoryError, expand, scan
from drivers.transport import DriverError
from policies.values import (
    FailureKind,
    Identity,
    Mode,
    Observation,
    ObservationFailure,
    PowerSource,
)

EXPECTED = {
    "s19jpro": ("antminer", "S19j Pro", "antminer-stock"),
    "s19xp": ("antminer", "S19 XP", "antminer-stock"),
    "s21": ("antminer", "S21", "antminer-stock"),
    "s21pro": ("antminer", "S21 Pro", "antminer-stock"),
    "m30s+": ("whatsminer", "M30S+ V40", "whatsminer-v2"),
    "m30s": ("whatsminer", "M30S V50", "whatsminer-v2"),
    "m50s": ("whatsminer", "M50S VH50", "whatsminer-v2"),
    "m60s": ("whatsminer", "M60S VK40", "whatsminer-v2"),
    "m60s-v3": ("whatsminer", "M60S VK40", "whatsminer-v3"),
}


async def truth(sim: SimFleet, address: str) -> dict[str, Any]:
    return await asyncio.to_thread(sim.control.rig, address)


async def observe(
    address: str, identity: Identity | None = None, timeout_s: float = 5.0
) -> Observation:
    identity = identity or await identify(address)
    return await driver_for(identity).observe(timeout_s, time.time())


@pytest.mark.parametrize("key", sorted(EXPECTED))
async def test_identify_every_model(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    identity = await identify(address)
    make, model, driver = EXPECTED[key]
    assert (identity.make.value, identity.model, identity.driver) == (make, model, driver)
    rig = await truth(sim, address)
    assert identity.firmware == rig["firmware"]
    assert identity.serial
    assert identity.extra["pyasic_type"]


@pytest.mark.parametrize("key", sorted(EXPECTED))
async def test_observation_matches_true_state(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    obs = await observe(address)
    rig = await truth(sim, address)
    assert obs.mode is Mode.NORMAL
    assert obs.mining
    assert obs.hashrate_ths == pytest.approx(rig["hashrate_ths"], rel=0.03)
    assert obs.power_w == pytest.approx(rig["power_w"], rel=0.05)
    expected_source = PowerSource.ESTIMATED if key.startswith("s") else PowerSource.REPORTED
    assert obs.power_source is expected_source
    assert len(obs.boards) == len(rig["boards"])
    assert obs.max_chip_temp_c is not None
    assert rig["chip_temp_c"] - 1 <= obs.max_chip_temp_c <= rig["chip_temp_c"] + 10
    assert obs.fan_rpm


async def apply_and_wait(
    sim: SimFleet,
    address: str,
    mode: Mode,
    limit: int | None = None,
) -> None:
    identity = await identify(address)
    driver = driver_for(identity)
    result = await driver.apply(mode, limit, 10.0)
    assert result.sent

    async def seen() -> bool:
        obs = await driver.observe(5.0, time.time())
        return obs.mode is mode and (mode is not Mode.SLEEP or not obs.mining)

    await eventually(seen, sim=sim)
    assert (await truth(sim, address))["mode"] == ("normal" if mode is Mode.LIMIT else mode.value)


@pytest.mark.parametrize("key", ["s19jpro", "m30s+"])
async def test_sleep_low_normal_round_trip(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    for mode in (Mode.SLEEP, Mode.LOW, Mode.NORMAL):
        await apply_and_wait(sim, address, mode)
    obs = await observe(address)
    assert obs.mode is Mode.NORMAL


async def test_whatsminer_power_limit_changes_physics(sim: SimFleet) -> None:
    address = sim.address("m50s")
    driver = driver_for(await identify(address))
    await driver.apply(Mode.LIMIT, 2500, 10.0)

    async def capped() -> bool:
        obs = await driver.observe(5.0, time.time())
        return obs.power_limit_w == 2500 and obs.power_w is not None and obs.power_w <= 2550

    await eventually(capped, sim=sim)
    assert (await truth(sim, address))["power_w"] <= 2550


async def test_whatsminer_v3_sleep_and_wake(sim: SimFleet) -> None:
    address = sim.address("m60s-v3")
    driver = driver_for(await identify(address))
    await driver.apply(Mode.SLEEP, None, 10.0)

    async def asleep() -> bool:
        obs = await driver.observe(5.0, time.time())
        return obs.mode is Mode.SLEEP and not obs.mining

    await eventually(asleep, sim=sim)
    await driver.apply(Mode.NORMAL, None, 10.0)

    async def hashing() -> bool:
        return (await driver.observe(5.0, time.time())).mining

    await eventually(hashing, 30, sim=sim)


async def test_unsupported_mode_is_refused_by_name(sim: SimFleet) -> None:
    driver = driver_for(await identify(sim.address("s21")))
    with pytest.raises(UnsupportedMode, match=r"cannot do high; it supports: low, normal, sleep"):
        await driver.apply(Mode.HIGH, None, 5.0)
    v3 = driver_for(await identify(sim.address("m60s-v3")))
    with pytest.raises(UnsupportedMode, match="cannot do low"):
        await v3.apply(Mode.LOW, None, 5.0)


async def test_ignored_write_is_not_reported_as_done(sim: SimFleet) -> None:
    address = sim.address("s19jpro")
    driver = driver_for(await identify(address))
    await asyncio.to_thread(sim.control.set_fault, address, "ignore_writes")
    result = await driver.apply(Mode.SLEEP, None, 10.0)
    assert result.sent  # the rig said OK ...
    await asyncio.to_thread(sim.control.advance_clock, 60)  # a minute later
    obs = await driver.observe(5.0, time.time())
    assert obs.mode is Mode.NORMAL  # ... and the next observation shows it did nothing
    assert obs.mining


async def test_locked_writes_fail_with_the_firmware_reason(sim: SimFleet) -> None:
    address = sim.address("m30s")
    driver = driver_for(await identify(address))
    await asyncio.to_thread(sim.control.set_fault, address, "writes_locked")
    with pytest.raises(DriverError, match="can't access write cmd"):
        await driver.apply(Mode.SLEEP, None, 10.0)


FAULT_KINDS = {
    "offline": FailureKind.TIMEOUT,
    "hang": FailureKind.TIMEOUT,
    "refuse": FailureKind.UNREACHABLE,
    "reset": FailureKind.UNREACHABLE,
    "malformed": FailureKind.BAD_REPLY,
}


@pytest.mark.parametrize("key", ["s21", "m30s+", "m60s-v3"])
async def test_faulty_rigs_are_reported_with_the_reason_and_the_cycle_is_on_time(
    sim: SimFleet, key: str
) -> None:
    inventory = Inventory()
    await inventory.ensure([r["address"] for r in sim.rigs])
    observer = Observer(inventory, ObserverSettings(timeout_s=1.5))
    faulty = (
        [a for k, a in zip(sim.keys, (r["address"] for r in sim.rigs), strict=True) if k == key]
        + sim.addresses("s19jpro")
        + sim.addresses("m30s+")
    )
    faults = dict(zip(faulty, FAULT_KINDS, strict=False))
    for address, fault in faults.items():
        await asyncio.to_thread(sim.control.set_fault, address, fault)
    slow = sim.address("s19xp")
    await asyncio.to_thread(sim.control.set_fault, slow, "slow", delay_s=0.5)
    cycle = await observer.cycle()
    assert cycle.duration_s < 1.5 + 1.0, "a hung rig delayed the cycle"
    for address, fault in faults.items():
        reading = cycle.readings[address]
        assert isinstance(reading, ObservationFailure), (address, fault)
        assert reading.kind is FAULT_KINDS[fault], (address, fault, reading.detail)
        assert reading.detail
    assert isinstance(cycle.readings[slow], Observation)  # slow, but inside its deadline
    healthy = set(cycle.readings) - set(faults)
    assert all(isinstance(cycle.readings[a], Observation) for a in healthy)


async def test_circuit_breaker_skips_dead_rigs_and_retries_after_backoff(
    sim: SimFleet,
) -> None:
    address = sim.address("s21pro")
    inventory = Inventory()
    await inventory.ensure([address])
    now = [1_000_000.0]
    observer = Observer(
        inventory,
        ObserverSettings(timeout_s=0.5, open_after=3, base_backoff_s=30),
        clock=lambda: now[0],
    )
    await asyncio.to_thread(sim.control.set_fault, address, "offline")
    kinds = []
    for _ in range(4):
        cycle = await observer.cycle()
        reading = cycle.readings[address]
        assert isinstance(reading, ObservationFailure)
        kinds.append(reading.kind)
        now[0] += 10
    assert kinds == [FailureKind.TIMEOUT] * 3 + [FailureKind.CIRCUIT_OPEN]
    assert cycle.duration_s < 0.1  # skipped: costs nothing
    await asyncio.to_thread(sim.control.clear_fault, address, "offline")
    now[0] += 30  # past the backoff
    cycle = await observer.cycle()
    assert isinstance(cycle.readings[address], Observation)


async def test_rebooting_rig_fails_then_recovers(sim: SimFleet) -> None:
    address = sim.address("m50s")
    identity = await identify(address)
    await asyncio.to_thread(sim.control.reboot, address)
    with pytest.raises(DriverError) as err:
        await observe(address, identity, timeout_s=0.5)
    assert err.value.kind is FailureKind.TIMEOUT

    async def back() -> bool:
        try:
            await observe(address, identity, timeout_s=0.5)
        except DriverError:
            return False
        return True

    await eventually(back, 20, sim=sim, sim_step_s=30)


async def test_changed_rig_is_reidentified(sim: SimFleet, tmp_path: Path) -> None:
    address = sim.address("s19xp")
    real = await identify(address)
    stale = Identity(
        address,
        real.make,
        "S19j Pro",
        "old firmware",
        real.driver,
        "X",
        None,
        {**real.extra, "fingerprint": "Antminer S19j Pro|old firmware"},
    )
    inventory = Inventory(tmp_path / "inventory.json")
    inventory.put(stale)
    observer = Observer(inventory)
    cycle = await observer.cycle()
    reading = cycle.readings[address]
    assert isinstance(reading, Observation)
    assert reading.identity.model == "S19 XP"
    reloaded = Inventory(tmp_path / "inventory.json")
    assert reloaded.load() == 1
    assert reloaded.rigs[address].model == "S19 XP"


async def test_scan_finds_the_fleet_and_caches_it(sim: SimFleet, tmp_path: Path) -> None:
    results = await scan(["127.1.0.0/27"], identify_timeout_s=10)  # the fleet: 17 rigs
    found = {r.address for r in results if isinstance(r, Identity)}
    assert found == {r["address"] for r in sim.rigs}
    inventory = Inventory(tmp_path / "inv.json")
    for r in results:
        if isinstance(r, Identity):
            inventory.put(r)
    inventory.save()
    again = Inventory(tmp_path / "inv.json")
    assert again.load() == len(found)
    assert again.rigs == inventory.rigs


def test_expand_rejects_typos_and_huge_ranges() -> None:
    assert expand(["10.0.0.0/30", "10.0.0.1"]) == ["10.0.0.1", "10.0.0.2"]
    with pytest.raises(InventoryError, match="not an address or CIDR"):
        expand(["10.0.0.300/24"])
    with pytest.raises(InventoryError, match="more than the 262144 one scan takes"):
        expand(["10.0.0.0/8"])
    split = [f"10.{4 * i}.0.0/14" for i in range(64)]  # the same /8, in pieces
    with pytest.raises(InventoryError, match="64 ranges: 16777216 addresses is more than"):
        expand(split)
    assert len(expand(split[:1])) == (1 << 18) - 2


def test_corrupt_cache_is_ignored_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "inventory.json"
    path.write_text("{not json")
    inventory = Inventory(path)
    assert inventory.load() == 0
    path.write_text(json.dumps({"version": 1, "rigs": [{"address": "1.2.3.4"}]}))
    assert inventory.load() == 0


async def test_observe_cli_json_lines(
    sim: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    addresses = [sim.address("s19jpro"), sim.address("m60s-v3"), "127.1.9.9"]
    await asyncio.to_thread(
        main_observe, [*addresses, "--json", "--timeout", "2", "--state-dir", str(tmp_path)]
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["address"] for x in lines] == addresses
    required = {
        "address",
        "make",
        "model",
        "firmware",
        "hashrate_ths",
        "power_w",
        "power_source",
        "max_chip_temp_c",
        "mode",
        "mining",
        "errors",
    }
    for line in lines:
        assert required <= set(line)
    assert lines[0]["power_source"] == "estimated"
    assert lines[1]["power_source"] == "reported"
    assert lines[2]["ok"] is False
    assert lines[2]["error"] == "unreachable"
    assert (tmp_path / "inventory.json").exists()


async def test_web_digest_client_reads_what_pyasic_reads(sim: SimFleet) -> None:
    from drivers import webdigest
    from drivers.pyasic_miner import miner_for

    address = sim.address("s19jpro")
    identity = await identify(address)
    ours = await webdigest.get_json(address, "/cgi-bin/get_miner_conf.cgi", "root", "root", 5)
    theirs = await miner_for(identity).web.get_miner_conf()
    assert ours == theirs
    again = await webdigest.get_json(address, "/cgi-bin/get_miner_conf.cgi", "root", "root", 5)
    assert again == ours  # the remembered nonce is accepted
    with pytest.raises(DriverError, match="refused the credentials"):
        await webdigest.get_json(address, "/cgi-bin/get_miner_conf.cgi", "root", "wrong", 5)
    with pytest.raises(DriverError, match="HTTP 404"):
        await webdigest.get_json(address, "/cgi-bin/nope.cgi", "root", "root", 5)


@pytest.mark.parametrize("key", ["s19xp", "m50s", "m60s-v3"])
async def test_dead_board_and_overheat_are_visible(sim: SimFleet, key: str) -> None:
    address = sim.address(key)
    identity = await identify(address)
    await asyncio.to_thread(sim.control.set_fault, address, "dead_board", board=1)
    obs = await observe(address, identity)
    assert [b.alive for b in obs.boards] == [True, False, True]
    assert obs.hashrate_ths == pytest.approx((await truth(sim, address))["hashrate_ths"], rel=0.03)
    await asyncio.to_thread(sim.control.set_fault, address, "overheat", extra_c=60)
    driver = driver_for(identity)

    async def protected() -> bool:
        reading = await driver.observe(5.0, time.time())
        return not reading.mining and (await truth(sim, address))["phase"] == "protected"

    await eventually(protected, 30, sim=sim)
    hot = await driver.observe(5.0, time.time())
    assert hot.hashrate_ths == 0
    if key != "m60s-v3":  # API v3 status carries no error codes; get.device.info does
        assert hot.errors or hot.mode is Mode.UNKNOWN


@pytest.mark.parametrize("key", ["s19jpro", "m30s", "m60s-v3"])
async def test_a_rig_answering_garbage_to_a_command_is_a_bad_reply(sim: SimFleet, key: str) -> None:
    """pyasic trips over malformed replies (AttributeError, KeyError, ...): the driver turns
    that into a clear DriverError naming the command, never a crash of ours."""
    address = sim.address(key)
    driver = driver_for(await identify(address))
    await asyncio.to_thread(sim.control.set_fault, address, "malformed")
    with pytest.raises(DriverError) as info:
        await driver.apply(Mode.SLEEP, None, 2.0)
    # Depending on the protocol, garbage is refused at once or read until the deadline.
    assert info.value.kind in (FailureKind.BAD_REPLY, FailureKind.TIMEOUT)
    assert "set mode sleep" in str(info.value)


@pytest.mark.parametrize("key", ["s19jpro", "s19xp"])
async def test_a_slow_stock_antminer_has_its_mode_read_within_the_deadline(
    sim: SimFleet, key: str
) -> None:
    """Each reply 0.9 s late, a 1.5 s deadline: the RPC status and the web configuration one
    after the other (1.8 s) would never fit, so the mode would stay unknown for ever. Read side
    by side they do, from the second cycle on (the first also fetches the digest challenge)."""
    address = sim.address(key)
    inventory = Inventory()
    await inventory.ensure([address])
    await asyncio.to_thread(sim.control.set_fault, address, "slow", delay_s=0.9)
    observer = Observer(inventory, ObserverSettings(timeout_s=1.5))
    modes = []
    for _ in range(3):
        reading = (await observer.cycle()).readings[address]
        assert isinstance(reading, Observation), reading
        modes.append(reading.mode)
    assert modes[-1] is Mode(sim.control.rig(address)["mode"]), modes
    assert Mode.UNKNOWN not in modes[1:], modes
