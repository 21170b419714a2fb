"""LuxOS: the real captures through the driver's parser, the simulated LuxOS rig's replies against
the captures' shapes, and the driver and unmodified pyasic on the same simulated rig over real
sockets (detect, read, sleep, wake, a profile change), each confirmed by observation.

Expected values from the captures are written by hand from tests/fixtures/captures/luxminer/v1.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SimFleet
from pyasic import get_miner
from pyasic.miners.backends.luxminer import LUXMiner

from drivers.generic import PyasicGeneric
from drivers.identify import driver_for, identify
from drivers.luxos import LuxOS, luxos_read, profile_for
from drivers.transport import DriverError
from policies.values import FailureKind, Identity, Make, Mode, Observation, PowerSource
from simulator import luxos as sim_luxos
from simulator.fleet import Fleet, GroupSpec, load_fleet_file
from simulator.rig import SimClock

CAPTURES = Path(__file__).parent / "fixtures" / "captures" / "luxminer" / "v1"
KEY = "s19jpro-luxos"


def capture(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((CAPTURES / f"{name}.json").read_text())
    return value


def joined(*names: str) -> dict[str, Any]:
    """The captures as LuxOS answers them joined with ``+``: each reply verbatim in a list."""
    out: dict[str, Any] = {name: [capture(name)] for name in names}
    out["id"] = 1
    return out


# ---- the captures, verbatim, through the parser ------------------------------------------------


def test_capture_read_joined() -> None:
    state = luxos_read(joined("summary", "stats", "power", "config"), expected_boards=3)
    status = state.status
    assert status.hashrate_ths == pytest.approx(59.75606)  # stats "GHS 5s": 59756.06 GH/s
    assert [b.hashrate_ths for b in status.boards] == pytest.approx([18.91028, 18.93995, 19.06767])
    assert [b.chips for b in status.boards] == [77, 77, 77]
    assert [b.chip_temp_c for b in status.boards] == [47.0, 47.0, 47.0]
    assert all(b.alive for b in status.boards)
    assert status.fan_rpm == (1920, 1920, 2340, 2340)
    assert status.uptime_s == 3453
    assert status.power_w == 1051.0  # power: "Watts": 1051
    assert status.fingerprint == "Antminer S19k Pro|Tue Apr  8 22:05:35 UTC 2025"
    assert (state.profile, state.step, state.curtailed, state.atm) == ("290MHz", -12, False, True)
    assert state.mode is Mode.LOW  # a profile 12 steps below the default


def test_capture_read_single_replies() -> None:
    """Each reply as a rig answers it alone (no joining) reads the same."""
    reply = {**capture("stats"), **capture("power"), **capture("config")}
    state = luxos_read(reply)
    assert state.status.power_w == 1051.0
    assert state.profile == "290MHz"


def test_capture_profiles_map_onto_modes() -> None:
    profiles = capture("profiles")
    # default: 590 MHz; low: nearest to 0.7 x 590 = 413 MHz below it; high: nearest 1.12 x 590
    assert profile_for(profiles, Mode.NORMAL) == "default"
    assert profile_for(profiles, Mode.LOW) == "415MHz"
    assert profile_for(profiles, Mode.HIGH) == "665MHz"


def test_capture_version_names_the_firmware() -> None:
    version = capture("version")
    assert version["VERSION"][0]["LUXminer"] == "2025.4.8.220305-57b389c7"
    assert "LUXMINER" in json.dumps(version).upper()  # what pyasic's detection looks for


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"ProfileStep": "twelve"}, "CONFIG.ProfileStep"),
        ({"STATUS": "E"}, "CONFIG"),
    ],
)
def test_bad_config_is_a_clear_error(change: dict[str, Any], detail: str) -> None:
    reply = joined("summary", "stats", "power", "config")
    config = reply["config"][0]
    if "STATUS" in change:
        config["STATUS"][0]["STATUS"] = "E"
    else:
        config["CONFIG"][0].update(change)
    with pytest.raises(DriverError) as err:
        luxos_read(reply)
    assert err.value.kind is FailureKind.BAD_REPLY
    assert detail in err.value.detail


def test_profiles_without_default_is_a_clear_error() -> None:
    profiles = capture("profiles")
    profiles["PROFILES"] = [p for p in profiles["PROFILES"] if p["Step"] != "0"]
    with pytest.raises(DriverError, match="no default profile"):
        profile_for(profiles, Mode.LOW)


# ---- the simulated rig's replies have the captures' shapes --------------------------------------


def _sim_rig() -> Any:
    fleet = Fleet([GroupSpec("s19jpro", 1, os="luxos")], SimClock(scale=1.0))
    return fleet.rigs[0]


@pytest.mark.parametrize(
    "name",
    [
        "version",
        "config",
        "devs",
        "summary",
        "stats",
        "pools",
        "fans",
        "temps",
        "power",
        "profiles",
    ],
)
def test_sim_reply_has_the_captures_shape(name: str) -> None:
    rig = _sim_rig()
    ours = json.loads(sim_luxos.handle_rpc(rig, {"command": name}))
    real = capture(name)
    assert set(ours) == set(real)
    for section, items in real.items():
        if not isinstance(items, list):
            continue
        for mine, theirs in zip(ours[section], items, strict=False):
            assert set(mine) == set(theirs), (name, section)
            for key, value in theirs.items():
                assert type(mine[key]) is type(value), (name, section, key)


def test_sim_privileged_commands_need_the_session() -> None:
    rig = _sim_rig()

    def rpc(command: str, parameter: str = "") -> dict[str, Any]:
        body = {"command": command, "parameter": parameter} if parameter else {"command": command}
        reply: dict[str, Any] = json.loads(sim_luxos.handle_rpc(rig, body))
        return reply

    assert rpc("curtail", "sleep")["STATUS"][0]["STATUS"] == "E"
    assert rpc("curtail", "nope,sleep")["STATUS"][0]["STATUS"] == "E"
    token = rpc("logon")["SESSION"][0]["SessionID"]
    assert token and rpc("session")["SESSION"][0]["SessionID"] == token
    assert rpc("logon")["STATUS"][0]["STATUS"] == "E"  # one session at a time
    refused = rpc("profileset", f"{token},500MHz")  # ATM is on: LuxOS refuses
    assert refused["STATUS"][0]["STATUS"] == "E"
    assert rpc("atmset", f"{token},enabled=false")["STATUS"][0]["STATUS"] == "S"
    assert rpc("profileset", f"{token},500MHz")["PROFILE"][0]["Profile"] == "500MHz"
    assert rpc("profileset", f"{token},12MHz")["STATUS"][0]["STATUS"] == "E"
    assert rig.freq_pct == -5  # 500 / 525 MHz
    assert rpc("curtail", f"{token},sleep")["STATUS"][0]["STATUS"] == "S"
    assert rig.mode.value == "sleep"
    assert rpc("logoff", token)["STATUS"][0]["STATUS"] == "S"
    assert rpc("curtail", f"{token},wakeup")["STATUS"][0]["STATUS"] == "E"
    assert rig.counters.rejected == 6
    assert rpc("config")["CONFIG"][0]["Profile"] == "500MHz"
    rig.reboot()  # back to nominal: the default profile
    assert rpc("config")["CONFIG"][0]["Profile"] == "default"


def test_fleet_file_os_key(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[[rigs]]\nmodel = "s19jpro"\ncount = 2\nos = "luxos"\n')
    groups, _ = load_fleet_file(good)
    assert groups[0].os == "luxos"
    assert Fleet(groups, SimClock()).rigs[0].spec.make == "luxos"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rigs]]\nmodel = "m30s+"\nos = "luxos"\n')
    with pytest.raises(ValueError, match="LuxOS runs on Antminers only"):
        load_fleet_file(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text('[[rigs]]\nmodel = "s19jpro"\nos = "luxor"\n')
    with pytest.raises(ValueError, match="os must be one of stock, luxos"):
        load_fleet_file(typo)


# ---- driver and pyasic on the simulated rig, over real sockets ----------------------------------


async def truth(sim: SimFleet, address: str) -> dict[str, Any]:
    state: dict[str, Any] = await asyncio.to_thread(sim.control.rig, address)
    return state


async def until(driver: LuxOS, want: Any, limit_s: float = 20.0) -> Observation:
    deadline = time.monotonic() + limit_s
    while True:
        obs = await driver.observe(3.0, time.time())
        if want(obs):
            return obs
        assert time.monotonic() < deadline, f"not observed: last {obs.mode} {obs.hashrate_ths}"
        await asyncio.sleep(0.3)


async def test_detect(sim: SimFleet) -> None:
    address = sim.address(KEY)
    identity = await identify(address)
    rig = await truth(sim, address)
    assert (identity.make, identity.model, identity.driver) == (Make.LUXOS, "S19j Pro", "luxos")
    assert identity.firmware == rig["firmware"] == "2025.4.8.220305-57b389c7"
    assert identity.serial == rig["serial"]
    miner = await get_miner(address)
    assert isinstance(miner, LUXMiner)
    assert str(miner).startswith("S19j Pro (LuxOS)")


async def test_read_agrees_with_truth_and_pyasic(sim: SimFleet) -> None:
    address = sim.address(KEY)
    driver = driver_for(await identify(address))
    obs = await driver.observe(3.0, time.time())
    rig = await truth(sim, address)
    data = await (await get_miner(address)).get_data()
    assert obs.mode is Mode.NORMAL and obs.mining
    assert not obs.model_unknown  # the catalogue's S19j Pro: LuxOS runs on Antminers
    assert obs.power_source is PowerSource.REPORTED
    assert obs.hashrate_ths == pytest.approx(rig["hashrate_ths"], rel=0.05)
    assert obs.power_w == pytest.approx(rig["power_w"], rel=0.05)
    assert obs.max_chip_temp_c == pytest.approx(rig["chip_temp_c"], abs=2.0)
    assert len(obs.boards) == 3
    assert float(data.hashrate) == pytest.approx(obs.hashrate_ths, rel=0.05)
    assert data.wattage == pytest.approx(obs.power_w, rel=0.05)


async def test_sleep_and_wake_confirmed_by_observation(sim: SimFleet) -> None:
    address = sim.address(KEY)
    driver = driver_for(await identify(address))
    assert isinstance(driver, LuxOS)
    await driver.apply(Mode.SLEEP, None, 3.0)
    obs = await until(driver, lambda o: o.mode is Mode.SLEEP and o.hashrate_ths == 0)
    assert obs.power_w is not None and obs.power_w < 100
    assert (await truth(sim, address))["mode"] == "sleep"
    data = await (await get_miner(address)).get_data()
    assert float(data.hashrate or 0) == 0.0
    await driver.apply(Mode.NORMAL, None, 3.0)
    obs = await until(driver, lambda o: o.mode is Mode.NORMAL and o.hashrate_ths > 50, 30.0)
    assert (await truth(sim, address))["mode"] == "normal"


async def test_profile_change_confirmed_by_observation(sim: SimFleet) -> None:
    address = sim.address(KEY)
    driver = driver_for(await identify(address))
    assert isinstance(driver, LuxOS)
    before = await driver.observe(3.0, time.time())
    await driver.apply(Mode.LOW, None, 3.0)
    low = await until(
        driver, lambda o: o.mode is Mode.LOW and o.hashrate_ths < 0.8 * before.hashrate_ths
    )
    assert low.power_w is not None and before.power_w is not None
    assert low.power_w < 0.8 * before.power_w
    rig = await truth(sim, address)
    assert rig["freq_pct"] == -29  # 375 MHz of 525: the profile nearest 0.7 x default
    miner = await get_miner(address)
    data = await miner.get_data()
    assert data.wattage_limit == sim_profile_watts("375MHz")  # pyasic: the active profile's W
    await driver.apply(Mode.HIGH, None, 3.0)
    high = await until(driver, lambda o: o.mode is Mode.HIGH and o.hashrate_ths > 110)
    assert high.power_w is not None and high.power_w > before.power_w


def sim_profile_watts(name: str) -> int:
    table = sim_luxos.profile_table(_sim_rig())
    return int(next(p["Watts"] for p in table if p["Profile Name"] == name))


async def test_refused_profile_change_is_an_error_naming_the_rig_reply(sim: SimFleet) -> None:
    """A rig that ignores writes keeps ATM on, so LuxOS refuses the profile: the driver says so
    with the rig's words, and leaves no session open behind it."""
    address = sim.address(KEY)
    driver = driver_for(await identify(address))
    await asyncio.to_thread(sim.control.set_fault, address, "ignore_writes")
    with pytest.raises(DriverError) as err:
        await driver.apply(Mode.LOW, None, 3.0)
    assert err.value.kind is FailureKind.BAD_REPLY
    assert err.value.detail == (
        "profileset: rig answered E: Cannot set profile while ATM is enabled"
    )
    miner = await get_miner(address)
    assert (await miner.rpc.session())["SESSION"][0]["SessionID"] == ""


async def test_pyasic_controls_the_same_rig(sim: SimFleet) -> None:
    address = sim.address(KEY)
    miner = await get_miner(address)
    driver = driver_for(await identify(address))
    assert isinstance(driver, LuxOS)
    assert await miner.stop_mining()
    await until(driver, lambda o: o.mode is Mode.SLEEP and o.hashrate_ths == 0)
    assert await miner.resume_mining()
    await until(driver, lambda o: o.mode is Mode.NORMAL, 5.0)
    # pyasic's power limit: the highest profile at or under the watts, ATM off and on again
    assert await miner.set_power_limit(2000)
    obs = await until(driver, lambda o: o.mode is Mode.LOW)
    config = (await miner.rpc.config())["CONFIG"][0]
    assert config["IsAtmEnabled"] is True
    assert sim_profile_watts(config["Profile"]) <= 2000
    # the driver works with pyasic's session open, and leaves it open
    await driver.apply(Mode.NORMAL, None, 3.0)
    obs = await until(driver, lambda o: o.mode is Mode.NORMAL)
    assert obs.mode is Mode.NORMAL
    assert await miner.stop_mining()


def test_sim_cli_refuses_luxos_on_a_whatsminer(capsys: pytest.CaptureFixture[str]) -> None:
    from simulator.cli import main

    assert main(["--luxos", "m30s+:1"]) == 2
    assert "m30s+ is a whatsminer, not a antminer" in capsys.readouterr().err


def test_a_luxos_rig_routed_through_pyasic_is_offered_no_limit() -> None:
    """pyasic's LuxOS set_power_limit sets the highest profile at or under the watts, and its
    reading is that profile's watts, never W: a rig reached through the generic pyasic driver
    (an inventory cached before the LuxOS driver) declares no limit, as the LuxOS driver."""
    identity = Identity(
        "127.0.0.1",
        Make.LUXOS,
        "S19j Pro",
        "LuxOS",
        PyasicGeneric.name,
        extra={"pyasic_firmware": "LuxOS"},
    )
    caps = PyasicGeneric(identity).capabilities
    assert caps.modes == {Mode.SLEEP, Mode.NORMAL}
    assert not caps.power_limit
    assert Mode.LIMIT not in LuxOS(identity).capabilities.modes
