"""Observer worker processes (daemon/workers.py) against the simulated fleet, over real sockets.

- readings through workers equal readings in-process for the same rigs (differential);
- a worker killed mid-cycle: its rigs are unread (``worker_lost``) for that cycle, it comes
  back, and nothing else changes;
- commands go through the workers and are confirmed by observation; dry-run sends none;
- the binary layout of readings (daemon/readings.py) and ``workers = "auto"``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from conftest import SIM_TIME_SCALE, SimFleet

from daemon import readings as codec
from daemon.config import ConfigError, load_settings
from daemon.observe_worker import FRAME, MAX_FRAME, FrameError, read_frame
from daemon.observer import Observer, ObserverSettings
from daemon.reconciler import Actuator, Outcome, Reconciler, Target
from daemon.workers import ObserverPool, owner, worker_count
from drivers.inventory import Inventory
from policies.values import (
    Board,
    FailureKind,
    Identity,
    Make,
    Mode,
    Observation,
    ObservationFailure,
    PowerSource,
    Reading,
)

IDENTITY = Identity("127.9.0.1", Make.ANTMINER, "S19j Pro", "stock-2023", "antminer-stock")


async def test_a_frame_that_breaks_the_protocol_is_refused() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(FRAME.pack(MAX_FRAME + 1, ord("C")))
    with pytest.raises(FrameError, match=f"longer than {MAX_FRAME}"):
        await read_frame(reader)
    reader = asyncio.StreamReader()
    reader.feed_data(FRAME.pack(2, ord("C")) + b"{}")
    reader.feed_eof()
    assert await read_frame(reader) == (b"C", b"{}")
    with pytest.raises(asyncio.IncompleteReadError):  # the other end closed
        await read_frame(reader)


def test_readings_round_trip_through_the_binary_layout() -> None:
    obs = Observation(
        IDENTITY,
        1_800_000_000.25,
        104.5,
        3068.0,
        PowerSource.ESTIMATED,
        Mode.LOW,
        True,
        (
            Board(0, 34.75, 61.0, 75.5, 126, True),
            Board(1, 0.0, None, None, None, False),
        ),
        75.5,
        None,
        41.0,
        None,
        (5400, 5520, 0),
        2800,
        ("R:fan lost", "implausible board_temp_c: -300 (plausible -40..150 °C)"),
        86_400,
        True,
    )
    bare = Observation(IDENTITY, 5.0, 0.0, None, None, Mode.SLEEP, False)
    failed = ObservationFailure(
        "127.9.0.2", FailureKind.WORKER_LOST, "observer worker 1 died: ünïcode", 7.5, None, 1
    )
    failed_known = ObservationFailure(
        "127.9.0.1", FailureKind.CIRCUIT_OPEN, "3 failures in a row", 8.0, IDENTITY, 4
    )
    pairs: list[tuple[str, Reading]] = [
        ("127.9.0.1", obs),
        ("127.9.0.1", bare),
        ("127.9.0.2", failed),
        ("127.9.0.1", failed_known),
    ]
    buffer = codec.encode(pairs)
    back = codec.decode(buffer, lambda a: IDENTITY if a == "127.9.0.1" else None)
    assert back == pairs
    decoded = back[0][1]
    assert isinstance(decoded, Observation)
    assert decoded.boards[1].chips is None and decoded.inlet_c is None
    assert decoded.power_limit_w == 2800 and decoded.fan_rpm == (5400, 5520, 0)


def test_a_broken_readings_buffer_is_a_clear_error() -> None:
    obs = Observation(IDENTITY, 5.0, 1.0, None, None, Mode.NORMAL, True)
    buffer = codec.encode([("127.9.0.1", obs)])
    with pytest.raises(codec.LayoutError, match=r"offset \d+"):
        codec.decode(buffer[:-3], lambda a: IDENTITY)
    with pytest.raises(codec.LayoutError, match="unknown record tag 7"):
        codec.decode(bytes([9, 7]) + b"127.9.0.1", lambda a: IDENTITY)
    with pytest.raises(codec.LayoutError, match=re.escape("127.9.0.1, a rig without an identity")):
        codec.decode(buffer, lambda a: None)


@pytest.mark.parametrize(
    ("setting", "rigs", "cores", "expected"),
    [
        (3, 10, 2, 3),  # a number is taken as it is
        ("auto", 14, 2, 1),
        ("auto", 1_000, 8, 1),
        ("auto", 1_001, 2, 2),
        ("auto", 100_000, 2, 2),  # two or three cores: none reserved
        ("auto", 100_000, 3, 3),
        ("auto", 100_000, 4, 3),  # from four: one core left to the controller
        ("auto", 100_000, 16, 15),
        ("auto", 2_500, 16, 3),  # not more workers than thousands of rigs
    ],
)
def test_auto_worker_count(setting: int | str, rigs: int, cores: int, expected: int) -> None:
    assert worker_count(setting, rigs, cores) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ['"many"', "0", "-1", "1.5"])
def test_a_bad_workers_setting_is_named(tmp_path: Path, value: str) -> None:
    path = tmp_path / "rigpilot.toml"
    path.write_text(f"[control]\nworkers = {value}\n")
    with pytest.raises(ConfigError, match=re.escape("control.workers")):
        load_settings(path, {})


def test_workers_default_to_auto(tmp_path: Path) -> None:
    path = tmp_path / "rigpilot.toml"
    path.write_text("[control]\nworkers = 2\n")
    assert load_settings(path, {}).control.workers == 2
    path.write_text("")
    assert load_settings(path, {}).control.workers == "auto"


@pytest.fixture(scope="module")
def identified(sim_fleet: SimFleet) -> Inventory:
    inventory = Inventory()
    failures = asyncio.run(inventory.ensure([r["address"] for r in sim_fleet.rigs]))
    assert not failures
    return inventory


@pytest.fixture
async def pool(sim: SimFleet, identified: Inventory) -> AsyncIterator[ObserverPool]:
    pool = ObserverPool(identified, ObserverSettings(timeout_s=2.0, open_after=100), workers=2)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def still(sim_fleet: SimFleet) -> Iterator[None]:
    """Simulated time all but stopped: two reads a moment apart see the same rig."""
    sim_fleet.control.set_time_scale(1e-6)
    yield
    sim_fleet.control.set_time_scale(SIM_TIME_SCALE)


def _unstamped(reading: Reading) -> Reading:
    return dataclasses.replace(reading, observed_at=0.0)


async def test_readings_through_workers_equal_readings_in_process(
    sim: SimFleet, identified: Inventory, pool: ObserverPool, still: None
) -> None:
    in_process = Observer(identified, ObserverSettings(timeout_s=2.0))
    direct = await in_process.cycle()
    through = await pool.cycle()
    assert pool.size == 2
    assert set(through.readings) == set(direct.readings) == {r["address"] for r in sim.rigs}
    assert through.ok == len(sim.rigs)  # every make and firmware of the fleet, LuxOS included
    for address, reading in direct.readings.items():
        assert _unstamped(through.readings[address]) == _unstamped(reading), address
    shares = {owner(a, 2) for a in through.readings}
    assert shares == {0, 1}  # both workers read some of them


async def test_a_worker_killed_mid_cycle_leaves_its_rigs_unread_for_that_cycle(
    sim: SimFleet, pool: ObserverPool
) -> None:
    await pool.cycle()
    victim = pool.procs[0]
    mine = {a for a in pool.drivers if owner(a, 2) == 0}
    others = set(pool.drivers) - mine
    survivor_pid = pool.procs[1].pid
    hung = sorted(mine)[0]
    sim.control.set_fault(hung, "hang")  # keeps worker 0 busy for its 2 s deadline
    cycle = asyncio.ensure_future(pool.cycle())
    for _ in range(1000):  # until the cycle request is out
        if victim.pending:
            break
        await asyncio.sleep(0.01)
    assert victim.pending
    await asyncio.sleep(0.3)
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    result = await cycle
    for address in mine:
        reading = result.readings[address]
        assert isinstance(reading, ObservationFailure), address
        assert reading.kind is FailureKind.WORKER_LOST
        assert "observer worker 0" in reading.detail and "killed by signal 9" in reading.detail
        assert reading.identity == pool.drivers[address].identity
    assert all(isinstance(result.readings[a], Observation) for a in others)
    sim.control.clear_faults(hung)
    after = await pool.cycle()
    assert after.ok == len(pool.drivers)  # the worker is back and reads its rigs again
    assert pool.procs[0].pid not in (None, victim.pid)
    assert pool.procs[1].pid == survivor_pid  # the other worker was left alone


async def test_a_hung_worker_is_killed_after_its_silence_and_its_rigs_are_unread(
    sim: SimFleet, identified: Inventory
) -> None:
    """A stopped worker (SIGSTOP) says nothing: after ``silent_after_s`` the cycle gets its
    rigs as unread, the worker is replaced, and the next cycle reads every rig."""
    pool = ObserverPool(
        identified, ObserverSettings(timeout_s=2.0, open_after=100), workers=2, silent_after_s=1.5
    )
    try:
        first = await pool.cycle()
        assert first.ok == len(pool.drivers)
        victim = pool.procs[0]
        mine = {a for a in pool.drivers if owner(a, 2) == 0}
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGSTOP)
        result = await pool.cycle()
        for address in mine:
            reading = result.readings[address]
            assert isinstance(reading, ObservationFailure), address
            assert reading.kind is FailureKind.WORKER_LOST
            assert "observer worker 0" in reading.detail and "(hung)" in reading.detail
        assert all(isinstance(result.readings[a], Observation) for a in set(pool.drivers) - mine)
        after = await pool.cycle()
        assert after.ok == len(pool.drivers)
        assert pool.procs[0].pid not in (None, victim.pid)
    finally:
        await pool.close()


async def test_commands_go_through_the_workers_and_are_confirmed_by_observation(
    sim: SimFleet, pool: ObserverPool
) -> None:
    address = sim.address("m30s+")
    writes = sim.control.rig(address)["counters"]["writes"]
    reconciler = Reconciler(confirm_deadline_s=300)
    actuator = Actuator(pool.drivers, dry_run=False)
    target = {address: Target(address, Mode.SLEEP, None, "test", "test")}
    cycle = await pool.cycle()
    commands = reconciler.plan(target, cycle.readings, 1.0)
    assert [c.rig_id for c in commands] == [address]
    results = await actuator.send(commands)
    assert [r.outcome for r in results] == [Outcome.SENT], results
    assert pool.commands_sent == 1
    reconciler.record(results)
    for _ in range(30):
        cycle = await pool.cycle()
        assert reconciler.plan(target, cycle.readings, 2.0) == []  # waiting, not resending
        if reconciler.confirmed:
            break
        await asyncio.sleep(0.5)
    assert [c.rig_id for c in reconciler.confirmed] == [address]
    truth = sim.control.rig(address)
    assert truth["mode"] == "sleep"
    assert truth["counters"]["writes"] > writes


async def test_dry_run_sends_nothing_through_the_workers(sim: SimFleet, pool: ObserverPool) -> None:
    addresses = [sim.address(k) for k in ("m30s+", "s19jpro", "m60s-v3")]
    writes = {a: sim.control.rig(a)["counters"]["writes"] for a in addresses}
    actuator = Actuator(pool.drivers, dry_run=True)
    reconciler = Reconciler()
    cycle = await pool.cycle()
    targets = {a: Target(a, Mode.SLEEP, None, "test", "test") for a in addresses}
    results = await actuator.send(reconciler.plan(targets, cycle.readings, 1.0))
    assert len(results) == 3 and all(r.outcome is Outcome.DRY_RUN for r in results)
    assert pool.commands_sent == 0
    await pool.cycle()
    for a in addresses:
        truth = sim.control.rig(a)
        assert truth["counters"]["writes"] == writes[a], a
        assert truth["mode"] == "normal"


async def test_a_worker_sent_a_broken_frame_exits_and_is_replaced_before_the_next_cycle(
    sim: SimFleet, pool: ObserverPool
) -> None:
    await pool.cycle()
    first = pool.procs[0]
    await first.send(b"Z", b"{}")  # not a frame kind the worker knows: it stops
    for _ in range(3000):
        if first.lost:
            break
        await asyncio.sleep(0.01)
    assert not first.alive and "exit 1" in first.lost
    cycle = await pool.cycle()
    assert cycle.ok == len(pool.drivers)
    assert pool.procs[0] is not first and pool.procs[0].alive


async def test_a_worker_reply_that_breaks_the_layout_leaves_its_rigs_unread(
    sim: SimFleet, identified: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    tests = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    pool = ObserverPool(identified, ObserverSettings(timeout_s=2.0), workers=1)
    pool.worker_module = "broken_worker"
    try:
        cycle = await pool.cycle()
        first = pool.procs[0]
        assert cycle.ok == 0 and len(cycle.readings) == len(sim.rigs)
        for reading in cycle.readings.values():
            assert isinstance(reading, ObservationFailure)
            assert reading.kind is FailureKind.WORKER_LOST
            assert "observer worker 0 sent a broken reply" in reading.detail
            assert "unknown record tag 7" in reading.detail
        await pool.cycle()  # the worker was replaced (by another broken one)
        assert pool.procs[0] is not first
    finally:
        await pool.close()
