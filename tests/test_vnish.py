"""VNish: the driver's parser on replies written here by hand in the shape of VNish 1.2.6's API
reference (no VNish capture is public in the reference set), the simulated VNish rig's API
(auth, presets, refusals), and the driver and unmodified pyasic on the same simulated rig over
real sockets (detect, read, sleep, wake, a preset as a power limit), each confirmed by
observation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import SimFleet
from pyasic import get_miner
from pyasic import settings as pyasic_settings
from pyasic.errors import APIError
from pyasic.miners.antminer.vnish.X19.S19 import VNishS19jPro
from replayhttp import ReplayServer, Route

from daemon.reconciler import Target, satisfied
from drivers.base import UnsupportedMode
from drivers.generic import PyasicGeneric
from drivers.identify import driver_for, identify
from drivers.transport import DriverError
from drivers.vnish import VNish, preset_names, vnish_read
from policies.values import FailureKind, Identity, Make, Mode, Observation, PowerSource
from simulator import vnish as sim_vnish
from simulator.fleet import Fleet, GroupSpec
from simulator.protocol import HttpRequest
from simulator.rig import SimClock

KEY = "s19jpro-vnish"


def summary_reply() -> dict[str, Any]:
    """A running S19j Pro's ``/api/v1/summary`` with a failed third chain, written here."""
    chain = {
        "id": 1,
        "frequency": 525.0,
        "voltage": 13800,
        "hashrate_ideal": 34666.67,
        "hashrate_rt": 34512.5,
        "pcb_temp": {"min": 55, "max": 62},
        "chip_temp": {"min": 68, "max": 75},
        "status": {"state": "mining"},
    }
    return {
        "miner": {
            "miner_status": {"miner_state": "mining", "miner_state_time": 5000},
            "miner_type": "Antminer S19j Pro (Vnish 1.2.6)",
            "hr_realtime": 69250.75,
            "power_consumption": 2140,
            "power_usage": 2140,
            "cooling": {
                "fan_num": 4,
                "fans": [
                    {"id": 0, "rpm": 4800, "status": "ok"},
                    {"id": 1, "rpm": 4860, "status": "ok"},
                    {"id": 2, "rpm": 4740, "status": "ok"},
                    {"id": 3, "rpm": 4920, "status": "ok"},
                ],
            },
            "chains": [
                chain,
                {**chain, "id": 2, "hashrate_rt": 34738.25, "chip_temp": {"min": 70, "max": 77}},
                {
                    **chain,
                    "id": 3,
                    "hashrate_rt": 0.0,
                    "pcb_temp": {"min": 0, "max": 0},
                    "chip_temp": {"min": 0, "max": 0},
                    "status": {"state": "failure", "description": "No chips found"},
                },
            ],
        }
    }


PERF = {"current_preset": {"name": "2140", "pretty": "2140 watt ~ 83 TH", "status": "tuned"}}


def test_read_summary_and_preset() -> None:
    state = vnish_read(summary_reply(), PERF, expected_boards=3)
    status = state.status
    assert status.hashrate_ths == pytest.approx(69.25075)  # hr_realtime 69250.75 GH/s
    assert [b.index for b in status.boards] == [0, 1, 2]  # chain ids 1..3
    assert [b.alive for b in status.boards] == [True, True, False]
    assert [b.hashrate_ths for b in status.boards] == pytest.approx([34.5125, 34.73825, 0.0])
    assert [b.chip_temp_c for b in status.boards] == [75.0, 77.0, None]
    assert [b.board_temp_c for b in status.boards] == [62.0, 62.0, None]
    assert status.max_chip_temp_c == 77.0
    assert status.fan_rpm == (4800, 4860, 4740, 4920)
    assert status.power_w == 2140.0
    assert status.power_limit_w == 2140  # the preset's watts
    assert status.errors == ("chain 3: No chips found",)
    assert status.fingerprint == "Antminer S19j Pro (Vnish 1.2.6)"
    assert (state.state, state.preset, state.mode) == ("mining", "2140", Mode.LIMIT)


def test_read_modes() -> None:
    stock = {"current_preset": {"name": "disabled", "pretty": "Disabled"}}
    assert vnish_read(summary_reply(), stock).mode is Mode.NORMAL
    assert vnish_read(summary_reply(), stock).status.power_limit_w is None
    stopped = summary_reply()
    stopped["miner"]["miner_status"]["miner_state"] = "stopped"
    state = vnish_read(stopped, PERF)
    assert state.mode is Mode.SLEEP and not state.status.mining
    odd = {"current_preset": {"name": "custom-1"}}
    assert vnish_read(summary_reply(), odd).mode is Mode.UNKNOWN


def test_failed_miner_reports_its_description() -> None:
    """VNish's reference reply of a miner that cannot start: no chains, no fans, a failure."""
    reply = {
        "miner": {
            "miner_status": {
                "miner_state": "failure",
                "miner_state_time": 1,
                "description": "Failed to parse miner configuration",
                "failure_code": 1002,
            },
            "miner_type": "Antminer S19 (Vnish 1.2.6)",
            "hr_realtime": 0.0,
            "power_consumption": 0,
            "cooling": {"fan_num": 0, "fans": []},
            "chains": [],
        }
    }
    state = vnish_read(reply, {"current_preset": {"name": "disabled"}}, expected_boards=3)
    assert state.status.errors == ("Failed to parse miner configuration",)
    assert not state.status.mining and state.status.power_w is None
    assert [b.alive for b in state.status.boards] == [False, False, False]


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda s: s.pop("miner"), "summary miner: missing"),
        (lambda s: s["miner"].pop("miner_status"), "miner.miner_status: missing"),
        (lambda s: s["miner"]["miner_status"].update({"miner_state": 1}), "miner_state"),
        (lambda s: s["miner"].update({"hr_realtime": "fast"}), "hr_realtime: not a number"),
        (lambda s: s["miner"].update({"chains": {}}), "miner.chains: not a list"),
        (lambda s: s["miner"]["chains"][0].update({"id": 0}), "chains[0].id"),
        (lambda s: s["miner"]["chains"][1].update({"hashrate_rt": None}), "chains[1].hashrate_rt"),
        (lambda s: s["miner"]["cooling"]["fans"][0].update({"rpm": "x"}), "fans[0].rpm"),
    ],
)
def test_broken_summary_is_a_clear_error(change: Any, detail: str) -> None:
    reply = summary_reply()
    change(reply)
    with pytest.raises(DriverError) as err:
        vnish_read(reply, PERF)
    assert err.value.kind is FailureKind.BAD_REPLY
    assert detail in err.value.detail


def test_preset_names() -> None:
    listed = [{"name": "disabled", "pretty": "Disabled"}, {"name": "2950", "pretty": "2950 watt"}]
    assert preset_names(json.dumps(listed).encode()) == ["disabled", "2950"]
    assert preset_names(json.dumps({"presets": listed}).encode()) == ["disabled", "2950"]
    with pytest.raises(DriverError, match="autotune/presets: not JSON"):
        preset_names(b"<html>")
    with pytest.raises(DriverError, match="not a list of presets"):
        preset_names(b'"none"')


# ---- garbage and refusals from a test server ----------------------------------------------------

OK_UNLOCK: Route = (200, b'{"token":"T0K3N"}')


def routes(**extra: Route) -> dict[tuple[str, str], Route]:
    base = {
        ("POST", "/api/v1/unlock"): OK_UNLOCK,
        ("GET", "/api/v1/summary"): (200, json.dumps(summary_reply()).encode()),
        ("GET", "/api/v1/perf-summary"): (200, json.dumps(PERF).encode()),
    }
    for key, route in extra.items():
        method, _, path = key.partition("_")
        base[(method.upper(), "/api/v1/" + path.replace("__", "/").replace("_", "-"))] = route
    return base


@contextlib.asynccontextmanager
async def replayed(
    table: dict[tuple[str, str], Route], presets: str = ""
) -> AsyncIterator[tuple[ReplayServer, VNish]]:
    server = ReplayServer(table)
    server.server = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    extra = {"vnish_presets_w": presets} if presets else {}
    identity = Identity("127.0.0.1", Make.VNISH, "S19j Pro", "Vnish 1.2.6", VNish.name, extra=extra)
    try:
        yield server, VNish(identity, port=server.port)
    finally:
        server.server.close()


async def test_read_sends_the_token_and_two_requests() -> None:
    async with replayed(routes()) as (server, driver):
        obs = await driver.observe(3.0, 1000.0)
        await driver.observe(3.0, 1000.0)
    assert obs.mode is Mode.LIMIT and obs.power_limit_w == 2140
    assert obs.power_source is PowerSource.REPORTED
    sent = [(m, p) for m, p, _ in server.requests]
    assert sent == [
        ("POST", "/api/v1/unlock"),
        ("GET", "/api/v1/summary"),
        ("GET", "/api/v1/perf-summary"),
        ("GET", "/api/v1/summary"),  # the token is kept: no second unlock
        ("GET", "/api/v1/perf-summary"),
    ]
    assert json.loads(server.requests[0][2]) == {"pw": "admin"}


@pytest.mark.parametrize(
    ("table", "detail"),
    [
        (
            routes(post_unlock=(401, b'{"err":"Wrong password"}')),
            "unlock: the rig refused the password: Wrong password",
        ),
        (routes(post_unlock=(200, b'{"tok":1}')), "unlock: no token in the reply"),
        (routes(get_summary=(200, b"<html>")), "summary: not JSON"),
        (routes(get_summary=(500, b'{"err":"busy"}')), "GET /summary: HTTP 500: busy"),
        (
            routes(get_summary=(401, b'{"err":"Unauthorized"}')),
            "GET /summary: HTTP 401: Unauthorized",
        ),
        (routes(get_perf_summary=(200, b"[]")), "perf-summary: not a JSON object"),
    ],
)
async def test_garbage_and_refusals_are_clear_errors(
    table: dict[tuple[str, str], Route], detail: str
) -> None:
    async with replayed(table) as (_, driver):
        with pytest.raises(DriverError) as err:
            await driver.observe(3.0, 1000.0)
    assert err.value.kind is FailureKind.BAD_REPLY
    assert err.value.detail == detail


async def test_a_refused_token_is_renewed_once() -> None:
    """A 401 on the token unlocks again and retries once; a second 401 is an error."""
    async with replayed(routes(get_summary=(401, b'{"err":"Unauthorized"}'))) as (server, d):
        with pytest.raises(DriverError):
            await d.observe(3.0, 1000.0)
    sent = [p for _, p, _ in server.requests]
    assert sent == ["/api/v1/unlock", "/api/v1/summary", "/api/v1/unlock", "/api/v1/summary"]


async def test_limit_needs_a_preset_of_exactly_those_watts() -> None:
    presets = [
        {"name": "disabled", "pretty": "Disabled", "status": "untuned"},
        {"name": "2140", "pretty": "2140 watt ~ 83 TH", "status": "tuned"},
        {"name": "2580", "pretty": "2580 watt ~ 94 TH", "status": "tuned"},
    ]
    table = routes(
        get_autotune__presets=(200, json.dumps(presets).encode()),
        post_settings=(200, b'{"restart_required":false,"reboot_required":false}'),
    )
    # The presets the rig listed at identification are its declared watts: others are
    # refused before anything is sent.
    async with replayed(table, "2140,2580") as (server, driver):
        assert driver.capabilities.power_limit_presets_w == (2140, 2580)
        assert driver.capabilities.power_limit_range_w == (2140, 2580)
        with pytest.raises(UnsupportedMode) as err:
            driver.check_supported(Mode.LIMIT, 2500)
        assert str(err.value) == (
            "127.0.0.1: power limit 2500 W is not one of the rig's presets (2140, 2580 W)"
        )
        with pytest.raises(UnsupportedMode):
            await driver.apply(Mode.LIMIT, 2500, 3.0)
        assert not server.requests
        await driver.apply(Mode.LIMIT, 2580, 3.0)
        posted = [json.loads(b) for _, p, b in server.requests if p == "/api/v1/settings"]
        assert posted == [{"miner": {"overclock": {"preset": "2580"}}}]
        assert Mode.LOW not in driver.capabilities.modes
        with pytest.raises(UnsupportedMode):
            await driver.apply(Mode.LOW, None, 3.0)
    # A preset listed at identification and gone from the rig since: the rig's list decides.
    async with replayed(table, "2140,2500,2580") as (server, driver):
        with pytest.raises(UnsupportedMode) as err:
            await driver.apply(Mode.LIMIT, 2500, 3.0)
        assert str(err.value) == (
            "127.0.0.1: VNish sets power by preset; 2500 W is not one (presets: 2140, 2580 W)"
        )
        assert not [r for r in server.requests if r[1] == "/api/v1/settings"]


async def test_a_rig_whose_presets_are_unknown_declares_no_limit() -> None:
    """An identity cached without the presets (or with a damaged list): no limit offered."""
    for presets in ("", "2140,abc"):
        async with replayed(routes(), presets) as (_, driver):
            caps = driver.capabilities
            assert caps.modes == {Mode.SLEEP, Mode.NORMAL}
            assert not caps.power_limit and caps.power_limit_range_w is None
            with pytest.raises(UnsupportedMode, match="cannot do limit; it supports: normal"):
                driver.check_supported(Mode.LIMIT, 2140)


# ---- the simulated rig's API ---------------------------------------------------------------------


def _sim_rig() -> Any:
    return Fleet([GroupSpec("s19jpro", 1, os="vnish")], SimClock(scale=1.0)).rigs[0]


def _call(rig: Any, method: str, path: str, body: Any = None, token: str = "") -> Any:
    headers = {"authorization": token} if token else {}
    raw = b"" if body is None else json.dumps(body).encode()
    reply = sim_vnish.handle_web(rig, HttpRequest(method, path, "", headers, raw))
    return reply.status, json.loads(reply.body) if reply.body else None


def test_sim_auth_and_refusals() -> None:
    rig = _sim_rig()
    assert _call(rig, "POST", "/api/v1/unlock", {"pw": "root"}) == (401, {"err": "Wrong password"})
    assert _call(rig, "GET", "/api/v1/summary") == (401, {"err": "Unauthorized"})
    status, reply = _call(rig, "POST", "/api/v1/unlock", {"pw": "admin"})
    token = reply["token"]
    assert status == 200 and len(token) == 32
    assert _call(rig, "GET", "/api/v1/summary", token=token)[0] == 200  # bare, as pyasic sends
    assert _call(rig, "GET", "/api/v1/summary", token=f"Bearer {token}")[0] == 200  # asic-rs
    assert _call(rig, "GET", "/api/v1/info")[0] == 200  # no token needed
    bad = {"miner": {"overclock": {"preset": "2000"}}}
    assert _call(rig, "POST", "/api/v1/settings", bad, token) == (
        400,
        {"err": "Unknown preset '2000'"},
    )
    assert _call(rig, "POST", "/api/v1/mining/stop")[0] == 401
    assert rig.mode.value == "normal" and rig.power_limit_w is None  # nothing refused applied
    assert _call(rig, "POST", "/api/v1/mining/stop", token=token) == (200, None)  # empty body
    assert rig.mode.value == "sleep"


def test_sim_preset_survives_a_reboot() -> None:
    rig = _sim_rig()
    token = _call(rig, "POST", "/api/v1/unlock", {"pw": "admin"})[1]["token"]
    preset = {"miner": {"overclock": {"preset": "2140"}}}
    assert _call(rig, "POST", "/api/v1/settings", preset, token)[0] == 200
    assert rig.power_limit_w == 2140
    rig.reboot()
    assert rig.power_limit_w is None  # the physics starts from nominal
    perf = _call(rig, "GET", "/api/v1/perf-summary")[1]
    assert perf["current_preset"]["name"] == "2140"
    assert rig.power_limit_w == 2140  # VNish applies its saved preset again


def test_sim_presets_are_named_by_watts() -> None:
    rig = _sim_rig()
    listed = sim_vnish.presets(rig)
    assert listed[0] == {
        "name": "disabled",
        "pretty": "Disabled",
        "status": "untuned",
        "modded_psu_required": False,
    }
    for preset in listed[1:]:
        watts, _, rate = preset["pretty"].partition(" watt ~ ")
        assert preset["name"] == watts and rate.endswith(" TH")
        assert preset["status"] == "tuned"
    watts = [int(p["name"]) for p in listed[1:]]
    # 0.5 .. 1.1 x the nominal frequency; at 1.0 the S19j Pro's nameplate 3068 W
    assert watts == [1150, 1410, 1750, 2140, 2580, 3070, 3620]


def test_sim_summary_has_the_reference_fields() -> None:
    """The keys of VNish 1.2.6's reference ``summary`` (written here by hand), all present."""
    rig = _sim_rig()
    token = _call(rig, "POST", "/api/v1/unlock", {"pw": "admin"})[1]["token"]
    miner = _call(rig, "GET", "/api/v1/summary", token=token)[1]["miner"]
    reference = {
        "miner_status", "miner_type", "hr_stock", "average_hashrate", "instant_hashrate",
        "hr_realtime", "hr_nominal", "hr_average", "pcb_temp", "chip_temp", "power_consumption",
        "power_usage", "power_efficiency", "hw_errors_percent", "hr_error", "hw_errors",
        "devfee_percent", "devfee", "pools", "cooling", "chains", "found_blocks", "best_share",
    }  # fmt: skip
    assert reference <= set(miner)
    assert set(miner["cooling"]) >= {"fan_num", "fans", "settings", "fan_duty"}
    assert miner["miner_type"] == "Antminer S19j Pro (Vnish 1.2.6)"
    info = _call(rig, "GET", "/api/v1/info")[1]
    assert (info["fw_name"], info["fw_version"], info["hr_measure"]) == ("Vnish", "1.2.6", "GH/s")


# ---- driver and pyasic on the simulated rig, over real sockets ----------------------------------


async def truth(sim: SimFleet, address: str) -> dict[str, Any]:
    state: dict[str, Any] = await asyncio.to_thread(sim.control.rig, address)
    return state


async def until(driver: VNish, want: Any, limit_s: float = 20.0) -> Observation:
    deadline = time.monotonic() + limit_s
    while True:
        obs = await driver.observe(3.0, time.time())
        if want(obs):
            return obs
        assert time.monotonic() < deadline, f"not observed: last {obs.mode} {obs.hashrate_ths}"
        await asyncio.sleep(0.3)


async def vnish_driver(address: str) -> VNish:
    driver = driver_for(await identify(address))
    assert isinstance(driver, VNish)
    return driver


async def sim_presets(address: str) -> list[int]:
    miner = await get_miner(address)
    listed = await miner.web.autotune_presets()
    return [int(p["name"]) for p in listed if p["name"].isdigit()]


async def test_detect(sim: SimFleet) -> None:
    address = sim.address(KEY)
    identity = await identify(address)
    rig = await truth(sim, address)
    assert (identity.make, identity.model, identity.driver) == (Make.VNISH, "S19j Pro", "vnish")
    assert identity.firmware == rig["firmware"] == "Vnish 1.2.6"
    assert identity.serial == rig["serial"]
    assert identity.mac == rig["mac"]
    assert identity.extra["fingerprint"] == "Antminer S19j Pro (Vnish 1.2.6)"
    # its watt presets, as pyasic (the independent client) lists them
    presets = sorted(await sim_presets(address))
    assert identity.extra["vnish_presets_w"] == ",".join(str(w) for w in presets)
    assert driver_for(identity).capabilities.power_limit_presets_w == tuple(presets)
    miner = await get_miner(address)
    assert isinstance(miner, VNishS19jPro)
    assert str(miner).startswith("S19j Pro (VNish)")


async def test_read_agrees_with_truth_and_pyasic(sim: SimFleet) -> None:
    address = sim.address(KEY)
    driver = await vnish_driver(address)
    obs = await driver.observe(3.0, time.time())
    rig = await truth(sim, address)
    data = await (await get_miner(address)).get_data()
    assert obs.mode is Mode.NORMAL and obs.mining and obs.power_limit_w is None
    assert not obs.model_unknown
    assert obs.power_source is PowerSource.REPORTED
    assert obs.hashrate_ths == pytest.approx(rig["hashrate_ths"], rel=0.05)
    assert obs.power_w == pytest.approx(rig["power_w"], rel=0.05)
    assert len(obs.boards) == 3 and all(b.alive for b in obs.boards)
    assert float(data.hashrate) == pytest.approx(obs.hashrate_ths, rel=0.05)  # pyasic: RPC
    assert data.wattage == pytest.approx(obs.power_w, rel=0.05)  # pyasic: web summary
    assert data.mac == rig["mac"] and data.fw_ver == "1.2.6"
    assert data.is_mining


async def test_sleep_and_wake_confirmed_by_observation(sim: SimFleet) -> None:
    address = sim.address(KEY)
    driver = await vnish_driver(address)
    await driver.apply(Mode.SLEEP, None, 3.0)
    obs = await until(driver, lambda o: o.mode is Mode.SLEEP and o.hashrate_ths == 0)
    assert obs.power_w is not None and obs.power_w < 100 and not obs.mining
    assert (await truth(sim, address))["mode"] == "sleep"
    data = await (await get_miner(address)).get_data()
    assert data.is_mining is False and float(data.hashrate or 0) == 0.0
    await driver.apply(Mode.NORMAL, None, 3.0)
    await until(driver, lambda o: o.mode is Mode.NORMAL and o.hashrate_ths > 90, 30.0)
    assert (await truth(sim, address))["mode"] == "normal"


async def test_preset_as_power_limit_confirmed_by_observation(sim: SimFleet) -> None:
    address = sim.address(KEY)
    driver = await vnish_driver(address)
    before = await driver.observe(3.0, time.time())
    watts = (await sim_presets(address))[3]  # 0.8 x nominal frequency: 2140 W on an S19j Pro
    await driver.apply(Mode.LIMIT, watts, 3.0)
    low = await until(
        driver,
        lambda o: o.power_limit_w == watts and o.power_w is not None and o.power_w <= watts + 30,
    )
    assert low.mode is Mode.LIMIT
    assert low.hashrate_ths < 0.9 * before.hashrate_ths
    # what the reconciler confirms a command by: this observation is "done" for limit W
    assert satisfied(Target(address, Mode.LIMIT, watts, "test", "test"), low)
    assert not satisfied(Target(address, Mode.NORMAL, None, "test", "test"), low)
    assert (await truth(sim, address))["power_limit_w"] == watts
    miner = await get_miner(address)
    assert (await miner.web.settings())["miner"]["overclock"]["preset"] == str(watts)
    data = await miner.get_data()
    assert data.wattage_limit == watts  # pyasic reads the same preset
    with pytest.raises(UnsupportedMode, match="is not one"):
        await driver.apply(Mode.LIMIT, watts + 1, 3.0)
    await driver.apply(Mode.NORMAL, None, 3.0)
    normal = await until(driver, lambda o: o.mode is Mode.NORMAL and o.hashrate_ths > 90)
    assert normal.power_limit_w is None
    assert satisfied(Target(address, Mode.NORMAL, None, "test", "test"), normal)
    assert not satisfied(Target(address, Mode.LIMIT, watts, "test", "test"), normal)


async def test_pyasic_controls_the_same_rig(sim: SimFleet) -> None:
    """pyasic's stop and resume reach the rig (the driver observes them), but raise: VNish
    answers them 200 with an empty body, which pyasic parses as JSON. pyasic 0.79 reads every
    VNish configuration as mode normal (its preset parser recurses into itself), so its
    ``set_power_limit`` returns False and sends nothing."""
    address = sim.address(KEY)
    miner = await get_miner(address)
    driver = await vnish_driver(address)
    with pytest.raises(APIError, match="JSON decode error for 'mining/stop'"):
        await miner.stop_mining()
    await until(driver, lambda o: o.mode is Mode.SLEEP and o.hashrate_ths == 0)
    with pytest.raises(APIError, match="JSON decode error for 'mining/resume'"):
        await miner.resume_mining()
    await until(driver, lambda o: o.mode is Mode.NORMAL and o.hashrate_ths > 0, 10.0)
    writes = (await truth(sim, address))["counters"]["writes"]
    assert await miner.set_power_limit(2600) is False
    assert (await truth(sim, address))["counters"]["writes"] == writes
    assert (await driver.observe(3.0, time.time())).power_limit_w is None


async def test_token_lost_on_the_rig_is_renewed(sim: SimFleet) -> None:
    address = sim.address(KEY)
    driver = await vnish_driver(address)
    await driver.observe(3.0, time.time())
    await asyncio.to_thread(sim.control.reset, address)  # factory state: tokens forgotten
    obs = await driver.observe(3.0, time.time())
    assert obs.mode is Mode.NORMAL
    assert (await truth(sim, address))["counters"]["by_command"]["unlock"] == 1


async def test_wrong_password_is_a_clear_error(sim: SimFleet, vnish_password: None) -> None:
    address = sim.address(KEY)
    driver = VNish(Identity(address, Make.VNISH, "S19j Pro", "Vnish 1.2.6", VNish.name))
    with pytest.raises(DriverError) as err:
        await driver.observe(3.0, time.time())
    assert err.value.kind is FailureKind.BAD_REPLY
    assert err.value.detail == "unlock: the rig refused the password: Wrong password"


@pytest.fixture
def vnish_password() -> Iterator[None]:
    """pyasic's VNish password set to a wrong one (the driver uses the same setting)."""
    saved = pyasic_settings.get("default_vnish_web_password", "admin")
    pyasic_settings.update("default_vnish_web_password", "wrong")
    yield
    pyasic_settings.update("default_vnish_web_password", saved)


def test_sim_cli_refuses_vnish_on_a_whatsminer(capsys: pytest.CaptureFixture[str]) -> None:
    from simulator.cli import main

    assert main(["--vnish", "m30s+:1"]) == 2
    assert "m30s+ is a whatsminer, not a antminer" in capsys.readouterr().err


def test_a_vnish_rig_routed_through_pyasic_is_offered_no_limit() -> None:
    """pyasic's VNish set_power_limit never takes effect: a rig reached through the generic
    pyasic driver (an inventory cached before the VNish driver) declares no limit."""
    identity = Identity(
        "127.0.0.1",
        Make.VNISH,
        "S19j Pro",
        "VNish",
        PyasicGeneric.name,
        extra={"pyasic_firmware": "VNish"},
    )
    caps = PyasicGeneric(identity).capabilities
    assert caps.modes == {Mode.SLEEP, Mode.NORMAL}
    assert not caps.power_limit


async def test_a_kept_token_refused_mid_run_is_renewed_once_for_the_summary_only() -> None:
    """With a kept token the read is one pipelined batch (summary + perf-summary); a 401 on
    the summary unlocks once and asks the summary again, not perf-summary."""
    async with replayed(routes()) as (server, driver):
        await driver.observe(3.0, 1000.0)
        server.routes[("GET", "/api/v1/summary")] = (401, b'{"err":"Unauthorized"}')
        with pytest.raises(DriverError) as err:
            await driver.observe(3.0, 1001.0)
    assert err.value.detail == "GET /summary: HTTP 401: Unauthorized"
    assert [p for _, p, _ in server.requests] == [
        "/api/v1/unlock",
        "/api/v1/summary",
        "/api/v1/perf-summary",
        "/api/v1/summary",  # the kept token, pipelined with...
        "/api/v1/perf-summary",
        "/api/v1/unlock",  # refused: unlocked once more
        "/api/v1/summary",
    ]
