"""ePIC: the real captures served verbatim and read by the driver, the simulated ePIC rig's
replies against the captures' shapes, and the driver and unmodified pyasic on the same simulated
rig over real sockets (detect, read, sleep, wake, low / high targets), each confirmed by
observation.

Expected values from the captures are written by hand from tests/fixtures/captures/epic/v1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SimFleet
from pyasic import get_miner
from pyasic import settings as pyasic_settings
from pyasic.miners.antminer.epic.X19.S19 import ePICS19jPro
from replayhttp import ReplayServer, Route

from daemon.reconciler import Target, satisfied
from drivers.base import UnsupportedMode
from drivers.epic import EPic, Tuning, epic_details, epic_summary, tuning_of
from drivers.identify import driver_for, identify, own_model
from drivers.transport import DriverError
from policies.values import FailureKind, Identity, Make, Mode, Observation, PowerSource
from simulator import epic as sim_epic
from simulator.fleet import Fleet, GroupSpec, load_fleet_file
from simulator.protocol import HttpRequest
from simulator.rig import SimClock

CAPTURES = Path(__file__).parent / "fixtures" / "captures" / "epic" / "v1"
KEY = "s19jpro-epic"


def capture(name: str) -> Any:
    return json.loads((CAPTURES / f"{name}.json").read_text())


# ---- the captures, verbatim, from a test server, read by the driver ------------------------------


@contextlib.asynccontextmanager
async def replayed(
    routes: dict[tuple[str, str], Route], model: str = "S19 XP"
) -> AsyncIterator[tuple[ReplayServer, EPic]]:
    server = ReplayServer(routes)
    server.server = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    identity = Identity("127.0.0.1", Make.EPIC, model, "PowerPlay-BMS v1.5.13", EPic.name)
    try:
        yield server, EPic(identity, port=server.port)
    finally:
        server.server.close()


def verbatim(*names: str) -> dict[tuple[str, str], Route]:
    return {("GET", f"/{n}"): (200, (CAPTURES / f"{n}.json").read_bytes()) for n in names}


async def test_capture_read_through_the_driver() -> None:
    async with replayed(verbatim("summary", "capabilities")) as (server, driver):
        obs = await driver.observe(3.0, 1000.0)
    # summary.json: HBs 1 and 2 hash, board 0 is detected but not enabled (not in HBs)
    assert obs.hashrate_ths == pytest.approx(99.365848)  # 49440724 + 49925124 MH/s
    assert [b.index for b in obs.boards] == [0, 1, 2]
    assert [b.alive for b in obs.boards] == [False, True, True]
    assert [b.hashrate_ths for b in obs.boards] == pytest.approx([0.0, 49.440724, 49.925124])
    assert [b.board_temp_c for b in obs.boards] == [None, 67.0, 64.312]
    assert obs.max_chip_temp_c == 67.0
    assert obs.fan_rpm == (5971, 0, 5942, 5745)  # Fans Speed 1..4; 5..12 are null
    assert obs.power_w == pytest.approx(2166.6174)  # Power Supply Stats.Input Power
    assert obs.power_source is PowerSource.REPORTED
    assert obs.uptime_s == 23170
    assert obs.mining and obs.errors == ()
    # VoltageOptimizer target 143 TH/s = capabilities' Default Hashrate 143
    assert obs.mode is Mode.NORMAL
    assert not obs.model_unknown  # the catalogue's S19 XP
    # one request per cycle once the capabilities are known
    assert [(m, p) for m, p, _ in server.requests] == [
        ("GET", "/capabilities"),
        ("GET", "/summary"),
    ]


async def test_uncatalogued_model_is_read_with_its_reported_power() -> None:
    async with replayed(verbatim("summary", "capabilities"), model="S23 Hyd.") as (_, driver):
        obs = await driver.observe(3.0, 1000.0)
    assert obs.model_unknown
    assert obs.hashrate_ths == pytest.approx(99.365848)
    assert obs.power_w == pytest.approx(2166.6174)  # reported, never another model's estimate
    assert obs.power_source is PowerSource.REPORTED
    assert [b.alive for b in obs.boards] == [False, True, True]  # from HBStatus, no catalogue


def test_the_rigs_own_model_name() -> None:
    """What identification names a model pyasic does not know, from the rig's own words."""
    assert own_model("AntMiner S19 XP") == "S19 XP"  # capabilities.json "Model"
    assert own_model("Antminer S21 XP Hyd.") == "S21 XP Hyd."  # VNish info "miner"
    assert own_model(None) is None and own_model("") is None


async def test_one_kept_alive_connection_across_cycles() -> None:
    """Reads reuse one connection; one the rig dropped in between is replaced, unseen."""
    async with replayed(verbatim("summary", "capabilities")) as (server, driver):
        for _ in range(3):
            await driver.observe(3.0, 1000.0)
        assert server.connections == 1
        server.drop = True  # the next reply is the first connection's last
        for _ in range(3):
            assert (await driver.observe(3.0, 1000.0)).mode is Mode.NORMAL
        assert server.connections == 3  # the 5th and 6th reads each found theirs closed
    assert len(server.requests) == 7  # capabilities once, then one summary per cycle


def test_capture_tuning_and_modes() -> None:
    tuning = tuning_of(capture("capabilities"))
    assert tuning == Tuning(default_ths=143.0, default_clock=485.0, min_ths=60.0, max_ths=300.0)
    assert tuning.target(Mode.NORMAL) == 143
    assert tuning.target(Mode.LOW) == 100  # 0.7 x 143 = 100.1
    assert tuning.target(Mode.HIGH) == 160  # 1.12 x 143 = 160.16
    state = epic_summary(capture("summary"), expected_boards=3)
    assert (state.tuner, state.algorithm, state.target_ths) == (True, "VoltageOptimizer", 143)
    assert state.clock_mhz == 485.0
    assert state.status.fingerprint == "PowerPlay-BMS v1.5.13"


def test_capture_identity_details() -> None:
    """What identification takes from the captures' capabilities.json and network.json."""
    serial, mac = epic_details(capture("capabilities"), capture("network"))
    assert serial == "002000353232510933363631"  # Control Board Version.cpuSerial
    assert mac == "E6:D4:41:51:64:28"  # dhcp.mac_address
    assert epic_details({}, None) == (None, None)


def test_capture_mode_from_target_and_clock() -> None:
    tuning = tuning_of(capture("capabilities"))
    summary = capture("summary")
    summary["PerpetualTune"]["Algorithm"]["VoltageOptimizer"]["Target"] = 100
    assert epic_summary(summary).mode(tuning) is Mode.LOW
    summary["PerpetualTune"]["Running"] = False  # manual clocks: 485 MHz is the default clock
    assert epic_summary(summary).mode(tuning) is Mode.NORMAL
    summary["HwConfig"]["Boards Target Clock"][0]["Data"] = 525.0
    assert epic_summary(summary).mode(tuning) is Mode.HIGH
    summary["Status"]["Operating State"] = "Idling"
    assert epic_summary(summary).mode(tuning) is Mode.SLEEP


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda s: s.pop("Status"), "summary Status: missing"),
        (lambda s: s["Status"].update({"Operating State": 3}), "Status.Operating State"),
        (lambda s: s["HBs"][0].update({"Hashrate": "fast"}), "HBs[0].Hashrate: not a list"),
        (lambda s: s["HBs"][1].update({"Hashrate": [None]}), "HBs[1].Hashrate[0]: not a number"),
        (lambda s: s["HBs"][0].update({"Index": -1}), "HBs[0].Index"),
        (lambda s: s.update({"HBs": {}}), "HBs: not a list"),
        (lambda s: s["Fans Rpm"].update({"Fans Speed 2": "x"}), "Fans Speed 2: not a number"),
        (lambda s: s.pop("Power Supply Stats"), "Power Supply Stats: missing"),
        (lambda s: s.pop("PerpetualTune"), "PerpetualTune: missing"),
    ],
)
def test_broken_summary_is_a_clear_error(change: Any, detail: str) -> None:
    summary = capture("summary")
    change(summary)
    with pytest.raises(DriverError) as err:
        epic_summary(summary)
    assert err.value.kind is FailureKind.BAD_REPLY
    assert detail in err.value.detail


@pytest.mark.parametrize(
    ("routes", "detail"),
    [
        ({("GET", "/summary"): (200, b"<html>oops</html>")}, "GET /summary: not JSON"),
        ({("GET", "/summary"): (200, b"[1, 2]")}, "GET /summary: not a JSON object"),
        (
            {("GET", "/summary"): (500, b'{"result":false,"error":"miner busy"}')},
            "GET /summary: HTTP 500: miner busy",
        ),
        ({("GET", "/capabilities"): (200, b'{"Model":"x"}')}, "Default Hashrate: None"),
    ],
)
async def test_garbage_replies_are_clear_errors(
    routes: dict[tuple[str, str], Route], detail: str
) -> None:
    async with replayed({**verbatim("summary", "capabilities"), **routes}) as (_, driver):
        with pytest.raises(DriverError) as err:
            await driver.observe(3.0, 1000.0)
    assert err.value.kind is FailureKind.BAD_REPLY
    assert err.value.detail.endswith(detail)


async def test_commands_as_the_api_takes_them() -> None:
    """low: the tuner's target at 0.7 x Default Hashrate, in the algorithm the rig runs; a
    ``false`` result or an HTTP error is an error with the rig's words."""
    ok = (200, b'{"result":true,"error":null}')
    routes = {**verbatim("summary", "capabilities"), ("POST", "/perpetualtune/algo"): ok}
    routes[("POST", "/miner")] = (200, b'{"result":false,"error":"Miner is updating"}')
    async with replayed(routes) as (server, driver):
        await driver.apply(Mode.LOW, None, 3.0)
        posted = [(p, json.loads(b)) for m, p, b in server.requests if m == "POST"]
        assert posted == [
            (
                "/perpetualtune/algo",
                {"param": {"algo": "VoltageOptimizer", "target": 100}, "password": "letmein"},
            )
        ]
        with pytest.raises(DriverError) as err:
            await driver.apply(Mode.SLEEP, None, 3.0)
        assert err.value.detail == "POST /miner: rig answered: Miner is updating"
        server.routes[("POST", "/miner")] = (401, b'{"result":false,"error":"Bad password"}')
        with pytest.raises(DriverError) as err:
            await driver.apply(Mode.SLEEP, None, 3.0)
        assert err.value.detail == "POST /miner: the rig refused the password: Bad password"
        server.routes[("POST", "/miner")] = (200, b"OK")
        with pytest.raises(DriverError) as err:
            await driver.apply(Mode.SLEEP, None, 3.0)
        assert err.value.detail == "POST /miner: not JSON"


async def test_limit_is_not_offered() -> None:
    async with replayed(verbatim("summary", "capabilities")) as (server, driver):
        assert Mode.LIMIT not in driver.capabilities.modes
        assert not driver.capabilities.power_limit
        with pytest.raises(UnsupportedMode) as err:
            await driver.apply(Mode.LIMIT, 2500, 3.0)
        assert "cannot do limit" in str(err.value)
        assert server.requests == []


# ---- the simulated rig's replies have the captures' shapes --------------------------------------


def _sim_rig() -> Any:
    fleet = Fleet([GroupSpec("s19jpro", 1, os="epic")], SimClock(scale=1.0))
    return fleet.rigs[0]


def _shape(value: Any) -> Any:
    """Keys and value types, recursively (lists by their first element; int and float are
    both numbers, null matches anything)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _same_shape(sim: Any, real: Any, where: str = "") -> None:
    if real is None or sim is None:
        return
    if isinstance(real, dict):
        assert isinstance(sim, dict), where
        assert set(sim) == set(real), (where, set(sim) ^ set(real))
        for key in real:
            _same_shape(sim[key], real[key], f"{where}.{key}")
    elif isinstance(real, list):
        assert isinstance(sim, list), where
        if real and sim and not isinstance(real[0], dict | list):
            assert _shape(sim[0]) == _shape(real[0]), where
        elif real and sim:
            _same_shape(sim[0], real[0], f"{where}[0]")
    else:
        assert _shape(sim) == _shape(real), (where, sim, real)


@pytest.mark.parametrize("name", ["summary", "capabilities", "network", "temps"])
def test_sim_reply_has_the_captures_shape(name: str) -> None:
    rig = _sim_rig()
    reply = sim_epic.handle_api(rig, HttpRequest("GET", f"/{name}", "", {}, b""))
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    _same_shape(json.loads(reply.body), capture(name), name)


def test_sim_posts_need_the_password_and_a_proper_param() -> None:
    rig = _sim_rig()

    def post(path: str, body: bytes) -> tuple[int, Any]:
        reply = sim_epic.handle_api(rig, HttpRequest("POST", path, "", {}, body))
        return reply.status, json.loads(reply.body)

    stop = json.dumps({"param": "Stop", "password": "nope"}).encode()
    assert post("/miner", stop) == (401, {"result": False, "error": "Incorrect password"})
    assert post("/miner", b"{not json") == (400, {"result": False, "error": "Invalid JSON body"})
    status, reply = post("/miner", json.dumps({"param": "Halt", "password": "letmein"}).encode())
    assert status == 400 and "expected Stop or Autostart" in reply["error"]
    algo = {"algo": "VoltageOptimizer", "target": 500}
    status, reply = post(
        "/perpetualtune/algo", json.dumps({"param": algo, "password": "letmein"}).encode()
    )
    assert status == 400 and reply["error"] == "Invalid target 500: outside 42..135 TH/s"
    assert rig.mode.value == "normal" and rig.freq_pct == 0  # nothing refused was applied
    assert post("/nothing", b"{}")[0] == 404
    assert rig.counters.rejected == 5 and rig.counters.writes == 0


def test_sim_target_survives_a_reboot() -> None:
    rig = _sim_rig()
    algo = {"param": {"algo": "BoardTune", "target": 73}, "password": "letmein"}
    body = json.dumps(algo).encode()
    assert (
        sim_epic.handle_api(rig, HttpRequest("POST", "/perpetualtune/algo", "", {}, body)).status
        == 200
    )
    assert rig.freq_pct == -30
    rig.reboot()
    assert rig.freq_pct == 0  # the physics starts from nominal
    reply = sim_epic.handle_api(rig, HttpRequest("GET", "/summary", "", {}, b""))
    tune = json.loads(reply.body)["PerpetualTune"]
    assert tune["Algorithm"]["BoardTune"]["Target"] == 73 and tune["Running"] is True
    assert rig.freq_pct == -30  # ePIC applies its saved target again


def test_fleet_file_os_key(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[[rigs]]\nmodel = "s19jpro"\nos = "epic"\n')
    groups, _ = load_fleet_file(path)
    assert groups[0].os == "epic"
    path.write_text('[[rigs]]\nmodel = "m30s+"\nos = "epic"\n')
    with pytest.raises(ValueError, match="ePIC runs on Antminers only"):
        load_fleet_file(path)


def test_sim_cli_refuses_epic_on_a_whatsminer(capsys: pytest.CaptureFixture[str]) -> None:
    from simulator.cli import main

    assert main(["--epic", "m30s+:1"]) == 2
    assert "m30s+ is a whatsminer, not a antminer" in capsys.readouterr().err


# ---- driver and pyasic on the simulated rig, over real sockets ----------------------------------


async def truth(sim: SimFleet, address: str) -> dict[str, Any]:
    state: dict[str, Any] = await asyncio.to_thread(sim.control.rig, address)
    return state


async def until(driver: EPic, want: Any, limit_s: float = 20.0) -> Observation:
    deadline = time.monotonic() + limit_s
    while True:
        obs = await driver.observe(3.0, time.time())
        if want(obs):
            return obs
        assert time.monotonic() < deadline, f"not observed: last {obs.mode} {obs.hashrate_ths}"
        await asyncio.sleep(0.3)


async def epic_driver(address: str) -> EPic:
    driver = driver_for(await identify(address))
    assert isinstance(driver, EPic)
    return driver


async def test_detect(sim: SimFleet) -> None:
    address = sim.address(KEY)
    identity = await identify(address)
    rig = await truth(sim, address)
    assert (identity.make, identity.model, identity.driver) == (Make.EPIC, "S19j Pro", "epic")
    assert identity.firmware == rig["firmware"] == "PowerPlay-BMS v1.5.13"
    assert identity.serial == rig["serial"]
    assert identity.mac == rig["mac"]
    miner = await get_miner(address)
    assert isinstance(miner, ePICS19jPro)
    assert str(miner).startswith("S19j Pro (ePIC)")


async def test_read_agrees_with_truth_and_pyasic(sim: SimFleet) -> None:
    address = sim.address(KEY)
    driver = await epic_driver(address)
    obs = await driver.observe(3.0, time.time())
    rig = await truth(sim, address)
    data = await (await get_miner(address)).get_data()
    assert obs.mode is Mode.NORMAL and obs.mining
    assert not obs.model_unknown
    assert obs.power_source is PowerSource.REPORTED
    assert obs.hashrate_ths == pytest.approx(rig["hashrate_ths"], rel=0.05)
    assert obs.power_w == pytest.approx(rig["power_w"], rel=0.05)
    assert len(obs.boards) == 3 and all(b.alive for b in obs.boards)
    assert float(data.hashrate) == pytest.approx(obs.hashrate_ths, rel=0.05)
    assert data.wattage == pytest.approx(obs.power_w, rel=0.05)
    assert data.mac == rig["mac"]
    assert data.is_mining


async def test_sleep_and_wake_confirmed_by_observation(sim: SimFleet) -> None:
    address = sim.address(KEY)
    driver = await epic_driver(address)
    await driver.apply(Mode.SLEEP, None, 3.0)
    obs = await until(driver, lambda o: o.mode is Mode.SLEEP and o.hashrate_ths == 0)
    assert obs.power_w is not None and obs.power_w < 100 and not obs.mining
    assert (await truth(sim, address))["mode"] == "sleep"
    data = await (await get_miner(address)).get_data()
    assert data.is_mining is False and float(data.hashrate or 0) == 0.0
    await driver.apply(Mode.NORMAL, None, 3.0)
    await until(driver, lambda o: o.mode is Mode.NORMAL and o.hashrate_ths > 90, 30.0)
    assert (await truth(sim, address))["mode"] == "normal"


async def test_targets_confirmed_by_observation(sim: SimFleet) -> None:
    address = sim.address(KEY)
    driver = await epic_driver(address)
    before = await driver.observe(3.0, time.time())
    await driver.apply(Mode.LOW, None, 3.0)
    low = await until(
        driver, lambda o: o.mode is Mode.LOW and o.hashrate_ths < 0.8 * before.hashrate_ths
    )
    assert low.power_w is not None and before.power_w is not None
    assert low.power_w < 0.8 * before.power_w
    assert satisfied(Target(address, Mode.LOW, None, "test", "test"), low)  # "done" for low
    assert (await truth(sim, address))["freq_pct"] == -30  # target 73 of 104 TH/s
    config = await (await get_miner(address)).get_config()
    assert config.mining_mode.hashrate == 73  # pyasic reads the same tuner target
    await driver.apply(Mode.HIGH, None, 3.0)
    high = await until(driver, lambda o: o.mode is Mode.HIGH and o.hashrate_ths > 110)
    assert high.power_w is not None and high.power_w > before.power_w
    assert (await truth(sim, address))["freq_pct"] == 12  # target 116 of 104 TH/s


async def test_pyasic_controls_the_same_rig(sim: SimFleet) -> None:
    """pyasic's stop and resume reach the rig (the driver observes them), but pyasic reports
    them as failed: it looks for ``success`` in the reply, and ePIC answers ``result``.
    pyasic has no power limit for ePIC: ``set_power_limit`` sends nothing and says False."""
    address = sim.address(KEY)
    miner = await get_miner(address)
    driver = await epic_driver(address)
    assert await miner.stop_mining() is False
    await until(driver, lambda o: o.mode is Mode.SLEEP and o.hashrate_ths == 0)
    assert await miner.resume_mining() is False
    await until(driver, lambda o: o.mode is Mode.NORMAL and o.hashrate_ths > 0, 10.0)
    writes = (await truth(sim, address))["counters"]["writes"]
    assert await miner.set_power_limit(2000) is False
    assert (await truth(sim, address))["counters"]["writes"] == writes
    assert (await driver.observe(3.0, time.time())).mode is Mode.NORMAL


async def test_wrong_password_is_a_clear_error(sim: SimFleet, epic_password: None) -> None:
    address = sim.address(KEY)
    driver = await epic_driver(address)
    with pytest.raises(DriverError) as err:
        await driver.apply(Mode.SLEEP, None, 3.0)
    assert err.value.kind is FailureKind.BAD_REPLY
    assert err.value.detail == "POST /miner: the rig refused the password: Incorrect password"
    assert (await truth(sim, address))["mode"] == "normal"


@pytest.fixture
def epic_password() -> Iterator[None]:
    """pyasic's ePIC password set to a wrong one (the driver uses the same setting)."""
    saved = pyasic_settings.get("default_epic_web_password", "letmein")
    pyasic_settings.update("default_epic_web_password", "wrong")
    yield
    pyasic_settings.update("default_epic_web_password", saved)


async def test_cut_short_reply_is_a_clear_error(sim: SimFleet) -> None:
    """The ``malformed`` fault cuts the HTTP reply short of its Content-Length on a kept-alive
    connection: it never completes, and the driver says so at its deadline."""
    address = sim.address(KEY)
    driver = await epic_driver(address)
    await asyncio.to_thread(sim.control.set_fault, address, "malformed")
    with pytest.raises(DriverError) as err:
        await driver.observe(1.0, time.time())
    assert err.value.kind is FailureKind.TIMEOUT
    assert err.value.detail == "web UI: no answer within 1.0 s"
    await asyncio.to_thread(sim.control.clear_fault, address, "malformed")
    assert (await driver.observe(3.0, time.time())).mode is Mode.NORMAL  # and then reads again
