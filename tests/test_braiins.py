"""Braiins OS 25.x: the real captures served verbatim to the driver, the simulated rig's REST
replies against the captures' shapes, and the driver and unmodified pyasic on the same simulated
rig over real sockets (detect, read, sleep, wake, a power target), each confirmed by
observation; garbage and refusals as clear DriverErrors.

The simulated rigs run in a simulator of this module's own, in a network namespace of its own
(the session fleet holds ports 80 and 4028 in the tests' namespace): the tests' clients run on
an event loop in a thread that joined that namespace (:class:`NsLoop`).

Expected values from the captures are written by hand from
tests/fixtures/captures/braiins/v25_07.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyasic import get_miner
from pyasic.miners.backends.braiins_os import BOSer

from drivers.base import UnsupportedMode
from drivers.braiins import (
    EXTRA_DEFAULT,
    EXTRA_MAX,
    EXTRA_MIN,
    TUNER_RECHECK_S,
    TUNER_REFRESH_S,
    BosSession,
    BraiinsOS,
    Tuner,
    bos_read,
    braiins_identity,
    tuner_state,
)
from drivers.identify import driver_for, identify
from drivers.transport import DriverError
from policies.values import FailureKind, Identity, Make, Mode, Observation, PowerSource
from simulator import braiins as sim_bos
from simulator import launch
from simulator.client import SimControl
from simulator.fleet import Fleet, GroupSpec, load_fleet_file
from simulator.models import BOS_FIRMWARE
from simulator.protocol import HttpRequest
from simulator.rig import SimClock, SimRig

CAPTURES = Path(__file__).parent / "fixtures" / "captures" / "braiins" / "v25_07"
T = TypeVar("T")

# the REST path each capture answers (asic-rs names its files after the paths)
PATHS = {
    "miner/details": "miner_details",
    "miner/stats": "miner_stats",
    "miner/hw/hashboards": "miner_hw_hashboards",
    "performance/tuner-state": "performance_tuner_state",
    "cooling/state": "cooling_state",
    "configuration/miner": "configuration_miner",
    "actions/locate": "actions_locate",
    "miner/errors": "miner_errors",
    "network": "network",
    "pools": "pools",
    "version": "version",
}


def capture_bytes(name: str) -> bytes:
    return (CAPTURES / f"{name}.json").read_bytes()


def capture(name: str) -> Any:
    return json.loads(capture_bytes(name))


# ---- a test server that replays the captures verbatim -----------------------------------------


class Replay:
    """An HTTP/1.1 server answering ``/api/v1/<path>`` with the capture for that path, byte for
    byte (Content-Length, keep-alive), ``auth/login`` with a token, anything else 404.
    ``override`` replaces a path's reply: (status, body) or ``"hang"``."""

    def __init__(self) -> None:
        self.override: dict[str, tuple[int, bytes] | str] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.token = "t0k3n"
        self.refuse_tokens = False
        self.close_each = False  # answer one request per connection, with Connection: close
        self.framing = "length"  # or "chunked", or "http10" (HTTP/1.0, close-delimited)
        self.connections = 0
        self.open: set[asyncio.StreamWriter] = set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self.stopped.set()
        self._server.close()

    def reply(self, method: str, path: str, auth: str | None) -> tuple[int, bytes] | str:
        name = path.removeprefix("/api/v1/")
        if name in self.override:
            return self.override[name]
        if name == "auth/login" and method == "POST":
            return 200, json.dumps({"token": self.token, "timeout_s": 3600}).encode()
        if auth != self.token or self.refuse_tokens:
            return 401, b'{"code":16,"message":"Unauthenticated","details":[]}'
        if name in PATHS and method == "GET":
            return 200, capture_bytes(PATHS[name])
        if name == "performance/power-target" and method == "PUT":  # not captured: the schema's
            return 200, b'{"power_target":{"watt":2500}}'
        if name in ("actions/pause", "actions/resume") and method == "PUT":
            return 200, b"{}"
        return 404, b'{"code":5,"message":"Not Found","details":[]}'

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {
                    k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
                }
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((method, path, headers.get("authorization")))
                answer = self.reply(method, path, headers.get("authorization"))
                if answer == "hang":
                    await self.stopped.wait()  # answers nothing, until the test ends
                    return
                assert not isinstance(answer, str)
                status, body = answer
                close = "Connection: close\r\n" if self.close_each else ""
                if self.framing == "http10":
                    writer.write(b"HTTP/1.0 %d X\r\n\r\n" % status + body)
                    await writer.drain()
                    return  # the end of the body is the end of the connection
                if self.framing == "chunked":
                    half = len(body) // 2
                    framed = b"".join(
                        b"%x;ext=1\r\n%s\r\n" % (len(part), part)
                        for part in (body[:half], body[half:])
                        if part
                    )
                    writer.write(
                        f"HTTP/1.1 {status} X\r\n{close}Transfer-Encoding: chunked\r\n\r\n".encode()
                        + framed
                        + b"0\r\nX-Trailer: 1\r\n\r\n"
                    )
                else:
                    writer.write(
                        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{close}"
                        f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                await writer.drain()
                if self.close_each:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open.discard(writer)
            writer.close()

    async def drop_idle(self) -> None:
        """Close every kept-alive connection, as a server's idle timeout does."""
        for writer in list(self.open):
            writer.close()
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def replay() -> AsyncIterator[Replay]:
    server = Replay()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def replay_driver(server: Replay) -> BraiinsOS:
    identity = await braiins_identity("127.0.0.1", "S19 XP", {}, 3.0, port=server.port)
    assert identity is not None
    driver = BraiinsOS(identity)
    driver.session = BosSession("127.0.0.1", "root", port=server.port)
    return driver


# ---- the captures, verbatim, over a socket, through the driver ---------------------------------


async def test_capture_identity() -> None:
    async with replay() as server:
        identity = await braiins_identity("127.0.0.1", "S19 XP", {}, 3.0, port=server.port)
    assert identity is not None
    assert identity.make is Make.BRAIINS and identity.driver == "braiins-os"
    assert identity.firmware == "2025-08-06-0-3881c51d-25.07-plus"
    assert identity.serial is None  # "serial_number": null
    assert identity.mac == "02:EE:DA:A9:B6:4A"
    assert identity.extra["fingerprint"] == "Antminer S19 XP|2025-08-06-0-3881c51d-25.07-plus"
    # the captured firmware was not asked for its constraints: none are known
    assert EXTRA_DEFAULT not in identity.extra


async def test_capture_read() -> None:
    async with replay() as server:
        driver = await replay_driver(server)
        obs = await driver.observe(3.0, 1000.0)
        first_login = server.requests[0]
        reads = [r for r in server.requests if r[1] != "/api/v1/auth/login"]
    assert first_login[:2] == ("POST", "/api/v1/auth/login")
    assert [r[1] for r in reads[-4:]] == [
        "/api/v1/miner/details",
        "/api/v1/miner/stats",
        "/api/v1/miner/hw/hashboards",
        "/api/v1/performance/tuner-state",
    ]
    assert all(r[2] == "t0k3n" for r in reads)
    assert obs.hashrate_ths == pytest.approx(141.46356540072063)  # last_5s, GH/s
    assert obs.power_w == 3137.0 and obs.power_source is PowerSource.REPORTED
    assert obs.power_limit_w == 3031  # mode_state.powertargetmodestate.current_target
    assert obs.mining
    # no default target known: any target in force is a limit
    assert obs.mode is Mode.LIMIT
    assert [b.hashrate_ths for b in obs.boards] == pytest.approx(
        [50.13772942148807, 47.859278339866236, 50.362690141466795]
    )
    assert [b.board_temp_c for b in obs.boards] == [55.5, 52.0, 54.0]
    assert [b.chip_temp_c for b in obs.boards] == [70.5, 67.0, 69.0]
    assert [b.chips for b in obs.boards] == [110, 110, 110]
    assert all(b.alive for b in obs.boards)
    assert obs.max_chip_temp_c == 70.5
    assert (obs.inlet_c, obs.outlet_c) == (40.0, 55.5)
    assert obs.uptime_s == 69685
    assert not obs.model_unknown


def _reads(server: Replay) -> list[str]:
    """The paths the server was asked for since the last call (logins left out)."""
    paths = [r[1].removeprefix("/api/v1/") for r in server.requests if r[0] == "GET"]
    server.requests.clear()
    return paths


CYCLE = ["miner/details", "miner/stats", "miner/hw/hashboards"]


async def test_the_power_target_is_read_first_after_a_command_and_every_ten_minutes() -> None:
    """Three GETs a cycle; the tuner's state (the target in force) with them at the first
    read, after a command (whatever it answered), and TUNER_REFRESH_S after the last look."""
    async with replay() as server:
        driver = await replay_driver(server)
        server.requests.clear()
        await driver.observe(3.0, 1000.0)
        assert _reads(server) == [*CYCLE, "performance/tuner-state"]
        await driver.observe(3.0, 1030.0)
        assert _reads(server) == CYCLE
        await driver.apply(Mode.LIMIT, 2500, 3.0)
        server.requests.clear()
        await driver.observe(3.0, 1060.0)
        assert _reads(server) == [*CYCLE, "performance/tuner-state"]
        await driver.observe(3.0, 1060.0 + TUNER_REFRESH_S - 1)
        assert _reads(server) == CYCLE
        obs = await driver.observe(3.0, 1060.0 + TUNER_REFRESH_S)
        assert _reads(server) == [*CYCLE, "performance/tuner-state"]
    assert obs.power_limit_w == 3031  # the captured target: the replay ignores the PUT


async def test_watts_far_from_the_known_target_ask_for_it_again_within_a_minute() -> None:
    """A target set elsewhere (the rig's own web UI) shows as watts away from the one known:
    3137 W reported against a target the driver believes is 2500 W."""
    async with replay() as server:
        driver = await replay_driver(server)
        await driver.observe(3.0, 1000.0)
        driver.tuner = Tuner(2500, ())  # as if read so, before someone set 3031 W
        server.requests.clear()
        obs = await driver.observe(3.0, 1000.0 + TUNER_RECHECK_S - 1)
        assert _reads(server) == CYCLE and obs.power_limit_w == 2500
        obs = await driver.observe(3.0, 1000.0 + TUNER_RECHECK_S)
        assert _reads(server) == [*CYCLE, "performance/tuner-state"]
        assert obs.power_limit_w == 3031
        # 3137 W against 3031 W is within TUNER_STRAY: not asked again
        await driver.observe(3.0, 1000.0 + 3 * TUNER_RECHECK_S)
        assert _reads(server) == CYCLE


async def test_a_failed_read_asks_for_the_tuner_again() -> None:
    async with replay() as server:
        driver = await replay_driver(server)
        server.override["performance/tuner-state"] = (500, b'{"message":"busy"}')
        with pytest.raises(DriverError, match="tuner-state: HTTP 500: busy"):
            await driver.observe(3.0, 1000.0)
        del server.override["performance/tuner-state"]
        server.requests.clear()
        obs = await driver.observe(3.0, 1001.0)
        assert _reads(server) == [*CYCLE, "performance/tuner-state"]
    assert obs.power_limit_w == 3031


async def test_a_tuner_in_error_is_reported_until_read_otherwise() -> None:
    tuner = capture("performance_tuner_state")
    async with replay() as server:
        driver = await replay_driver(server)
        server.override["performance/tuner-state"] = (
            200,
            json.dumps({**tuner, "overall_tuner_state": 4}).encode(),
        )
        first = await driver.observe(3.0, 1000.0)
        second = await driver.observe(3.0, 1030.0)  # not read again: the error as last seen
        del server.override["performance/tuner-state"]
        third = await driver.observe(3.0, 1000.0 + TUNER_REFRESH_S)
    assert "tuner: error" in first.errors and "tuner: error" in second.errors
    assert "tuner: error" not in third.errors


async def test_read_is_pipelined_on_one_connection() -> None:
    async with replay() as server:
        driver = await replay_driver(server)
        before = server.connections
        await driver.observe(3.0, 1000.0)
        assert server.connections == before + 1  # four GETs, one connection, written at once


async def test_connection_kept_for_the_next_read_and_reopened_when_dropped() -> None:
    async with replay() as server:
        driver = await replay_driver(server)
        await driver.observe(3.0, 1000.0)
        before = server.connections
        await driver.observe(3.0, 1001.0)
        assert server.connections == before  # the next cycle reuses the connection
        await server.drop_idle()
        obs = await driver.observe(3.0, 1002.0)
        assert server.connections == before + 1  # dropped while idle: read again on a new one
    assert obs.power_limit_w == 3031


async def test_read_survives_a_server_that_closes_after_each_reply() -> None:
    """The pipelined requests a closing server left unanswered go again, each on a new
    connection: the read is the same."""
    async with replay() as server:
        driver = await replay_driver(server)
        server.close_each = True
        before = server.connections
        obs = await driver.observe(3.0, 1000.0)
        assert server.connections == before + 5  # the login, then each GET on its own
    assert obs.hashrate_ths == pytest.approx(141.46356540072063) and obs.power_limit_w == 3031


@pytest.mark.parametrize("framing", ["chunked", "http10"])
async def test_read_in_every_framing(framing: str) -> None:
    async with replay() as server:
        driver = await replay_driver(server)
        server.framing = framing
        obs = await driver.observe(3.0, 1000.0)
    assert obs.hashrate_ths == pytest.approx(141.46356540072063) and obs.power_w == 3137.0


async def test_a_command_during_a_read_waits_for_it() -> None:
    """One connection, one exchange at a time: a command sent while a read is under way."""
    async with replay() as server:
        driver = await replay_driver(server)
        obs, sent = await asyncio.gather(
            driver.observe(3.0, 1000.0), driver.apply(Mode.LIMIT, 2500, 3.0)
        )
        puts = [r[1] for r in server.requests if r[0] == "PUT"]
    assert obs.power_limit_w == 3031 and sent.power_limit_w == 2500
    assert puts == ["/api/v1/performance/power-target", "/api/v1/actions/resume"]


async def test_a_target_set_to_other_watts_is_an_error() -> None:
    async with replay() as server:
        driver = await replay_driver(server)
        with pytest.raises(DriverError) as err:
            await driver.apply(Mode.LIMIT, 2400, 3.0)
    assert err.value.detail == "Braiins OS set the power target to 2500 W, not 2400 W"


async def test_capture_read_at_the_default_target_is_normal() -> None:
    async with replay() as server:
        driver = await replay_driver(server)
        extra = {
            **driver.identity.extra,
            EXTRA_MIN: "1500",
            EXTRA_DEFAULT: "3031",
            EXTRA_MAX: "4000",
        }
        driver = BraiinsOS(dataclasses.replace(driver.identity, extra=extra))
        driver.session = BosSession("127.0.0.1", "root", port=server.port)
        obs = await driver.observe(3.0, 1000.0)
    assert obs.mode is Mode.NORMAL and obs.power_limit_w == 3031
    assert driver.capabilities.modes == {Mode.SLEEP, Mode.NORMAL, Mode.LIMIT}
    assert driver.capabilities.power_limit_range_w == (1500, 4000)


async def test_capture_without_constraints_offers_sleep_and_limit_only() -> None:
    async with replay() as server:
        driver = await replay_driver(server)
    caps = driver.capabilities
    assert caps.modes == {Mode.SLEEP, Mode.LIMIT} and caps.power_limit_range_w is None
    with pytest.raises(UnsupportedMode, match="cannot do normal"):
        await driver.apply(Mode.NORMAL, None, 3.0)
    with pytest.raises(UnsupportedMode, match="cannot do low"):
        await driver.apply(Mode.LOW, None, 3.0)


# ---- Braiins OS before 25.07 (BOSer, GraphQL and gRPC, no REST API) ------------------------------

CAPTURES_22 = Path(__file__).parent / "fixtures" / "captures" / "braiins" / "v21_09"


def test_older_boser_version_capture_is_braiins_to_pyasic() -> None:
    """The v21_09 capture set is a BOS 22.08 rig (``bos.info.version.full``
    2022-09-13-0-11012d53-22.08-plus): its ``version`` reply, verbatim, is what pyasic's
    detection takes for Braiins OS, and the simulator's ``version`` has its shape."""
    from pyasic.miners.factory import MinerFactory, MinerTypes

    raw = (CAPTURES_22 / "version.json").read_text()
    assert MinerFactory._parse_socket_type(raw) is MinerTypes.BRAIINS_OS
    real = json.loads(raw)
    ours = json.loads(sim_bos.handle_rpc(_sim_rig(), {"command": "version"}))
    _same_shape(ours, real, "version")
    system = json.loads((CAPTURES_22 / "gql_system.json").read_text())
    assert system["data"]["bos"]["info"]["version"]["full"] == "2022-09-13-0-11012d53-22.08-plus"


async def test_older_boser_without_the_rest_api_is_left_to_pyasic() -> None:
    """Such a rig answers ``/api/v1`` with 404 (here) or its web page: not this driver's."""
    async with replay() as server:
        server.override["auth/login"] = (404, b"<html>Not Found</html>")
        assert await braiins_identity("127.0.0.1", "S19j Pro", {}, 3.0, port=server.port) is None
        server.override["auth/login"] = (200, b"<!DOCTYPE html><title>Braiins OS</title>")
        assert await braiins_identity("127.0.0.1", "S19j Pro", {}, 3.0, port=server.port) is None
        # the API is there, but its reply is garbage: an error naming it, not "another firmware"
        server.override["auth/login"] = (200, b'{"token": "t0k3n"}')
        server.override["miner/details"] = (200, b'{"status": 2}')
        with pytest.raises(DriverError, match=r"miner/details.miner_identity: missing"):
            await braiins_identity("127.0.0.1", "S19j Pro", {}, 3.0, port=server.port)
    # and a rig that does not answer at all is an error too
    with pytest.raises(DriverError) as err:
        await braiins_identity("127.0.0.1", "S19j Pro", {}, 2.0, port=server.port)
    assert err.value.kind is FailureKind.UNREACHABLE


# ---- garbage and refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reply", "kind", "detail"),
    [
        (
            "miner/stats",
            (200, b"<html>oops</html>"),
            FailureKind.BAD_REPLY,
            "miner/stats: not JSON",
        ),
        (
            "miner/stats",
            (200, b'{"pool_stats": {}}'),
            FailureKind.BAD_REPLY,
            "miner/stats.miner_stats: missing",
        ),
        (
            "miner/details",
            (200, capture_bytes("miner_details").replace(b'"status": 2', b'"status": 9')),
            FailureKind.BAD_REPLY,
            "miner/details.status: unknown status '9'",
        ),
        (
            "performance/tuner-state",
            (200, b'{"mode_state": {"powertargetmodestate": {"current_target": {"watt": "x"}}}}'),
            FailureKind.BAD_REPLY,
            "current_target.watt: not a number: 'x'",
        ),
        (
            "miner/hw/hashboards",
            (500, b'{"code":13,"message":"hashboards unavailable"}'),
            FailureKind.BAD_REPLY,
            "Braiins OS API miner/hw/hashboards: HTTP 500: hashboards unavailable",
        ),
        (
            "miner/stats",
            (200, b'{"x": "' + b"y" * (2 * 1024 * 1024) + b'"}'),
            FailureKind.BAD_REPLY,
            "reply over 1048576 bytes",
        ),
        ("miner/stats", "hang", FailureKind.TIMEOUT, "no answer within 1.0 s"),
    ],
)
async def test_garbage_is_a_clear_error(
    path: str, reply: tuple[int, bytes] | str, kind: FailureKind, detail: str
) -> None:
    async with replay() as server:
        driver = await replay_driver(server)
        server.override[path] = reply
        with pytest.raises(DriverError) as err:
            await driver.observe(1.0, 1000.0)
    assert err.value.kind is kind
    assert detail in err.value.detail


async def test_refused_credentials_and_tokens() -> None:
    async with replay() as server:
        server.override["auth/login"] = (401, b'{"code":16,"message":"bad password"}')
        session = BosSession("127.0.0.1", "wrong", port=server.port)
        with pytest.raises(DriverError) as err:
            await session.call("GET", "miner/details", None, 2.0)
        assert err.value.kind is FailureKind.BAD_REPLY
        assert err.value.detail == "Braiins OS API refused the credentials for user 'root'"
        del server.override["auth/login"]
        server.refuse_tokens = True
        with pytest.raises(DriverError, match="miner/details: token refused after login"):
            await session.call("GET", "miner/details", None, 2.0)
        server.override["auth/login"] = (200, b'{"timeout_s": 5}')
        session.token = None
        with pytest.raises(DriverError, match="auth/login: no token"):
            await session.call("GET", "miner/details", None, 2.0)


async def test_nothing_listening_is_unreachable() -> None:
    async with replay() as server:
        port = server.port
    session = BosSession("127.0.0.1", "root", port=port)
    with pytest.raises(DriverError) as err:
        await session.call("GET", "miner/details", None, 2.0)
    assert err.value.kind is FailureKind.UNREACHABLE


def test_parser_on_the_captures_directly() -> None:
    state = bos_read(
        capture("miner_details"),
        capture("miner_stats"),
        capture("miner_hw_hashboards"),
        tuner_state(capture("performance_tuner_state")),
        expected_boards=3,
    )
    assert (state.paused, state.target_w) == (False, 3031)
    assert state.status.errors == ()  # overall_tuner_state 2: stable
    assert state.mode(3031) is Mode.NORMAL and state.mode(None) is Mode.LIMIT
    assert state.status.fingerprint == "Antminer S19 XP|2025-08-06-0-3881c51d-25.07-plus"


# ---- the simulated rig's REST replies have the captures' shapes --------------------------------


def _sim_rig() -> SimRig:
    return Fleet([GroupSpec("s19jpro", 1, os="braiins")], SimClock(scale=1.0)).rigs[0]


def _rest(rig: SimRig, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"authorization": token} if token else {}
    raw = b"" if body is None else json.dumps(body).encode()
    response = sim_bos.handle_http(rig, HttpRequest(method, "/api/v1/" + path, "", headers, raw))
    return response.status, json.loads(response.body)


def _login(rig: SimRig) -> str:
    status, reply = _rest(rig, "POST", "auth/login", {"username": "root", "password": "root"})
    assert status == 200
    token: str = reply["token"]
    return token


def _same_shape(ours: Any, real: Any, where: str) -> None:
    if isinstance(real, dict):
        assert isinstance(ours, dict), where
        assert set(ours) == set(real), where
        for key, value in real.items():
            if value is not None:
                _same_shape(ours[key], value, f"{where}.{key}")
    elif isinstance(real, list):
        assert isinstance(ours, list) and (ours or not real), where
        for item in real[:1]:
            _same_shape(ours[0], item, f"{where}[0]")
    else:
        assert type(ours) is type(real) or {type(ours), type(real)} <= {int, float}, where


@pytest.mark.parametrize("path", sorted(set(PATHS) - {"miner/errors"}))
def test_sim_reply_has_the_captures_shape(path: str) -> None:
    rig = _sim_rig()
    status, ours = _rest(rig, "GET", path, token=_login(rig))
    assert status == 200
    _same_shape(ours, capture(PATHS[path]), path)


def test_sim_rest_auth_and_refusals() -> None:
    rig = _sim_rig()
    assert _rest(rig, "GET", "miner/details")[0] == 401
    bad = _rest(rig, "POST", "auth/login", {"username": "root", "password": "nope"})
    assert bad == (401, {"code": 16, "message": "invalid username or password", "details": []})
    token = _login(rig)
    assert _rest(rig, "GET", "miner/nothing", token=token)[0] == 404
    assert _rest(rig, "POST", "miner/details", token=token)[0] == 405
    status, reply = _rest(rig, "PUT", "performance/power-target", {"watt": 99999}, token)
    assert status == 400 and reply["message"] == "power target 99999 W is out of range 1530..3990 W"
    assert _rest(rig, "PUT", "performance/power-target", {"watt": "2500"}, token)[0] == 400
    assert _rest(rig, "PUT", "performance/power-target", {"watt": 2500}, token) == (
        200,
        {"power_target": {"watt": 2500}},
    )
    assert rig.power_limit_w == 2500
    assert _rest(rig, "PUT", "actions/pause", None, token) == (200, {"already_paused": False})
    assert rig.mode.value == "sleep"
    assert _rest(rig, "PUT", "actions/resume", None, token) == (200, {"already_mining": False})
    assert rig.mode.value == "normal" and rig.power_limit_w == 2500
    assert rig.counters.rejected == 6


def test_fleet_file_os_braiins(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[[rigs]]\nmodel = "s19jpro"\nos = "braiins"\n')
    groups, _ = load_fleet_file(good)
    assert Fleet(groups, SimClock()).rigs[0].spec.make == "braiins"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rigs]]\nmodel = "m30s+"\nos = "braiins"\n')
    with pytest.raises(ValueError, match="Braiins OS runs on Antminers here"):
        load_fleet_file(bad)


def test_sim_cli_refuses_braiins_on_a_whatsminer(capsys: pytest.CaptureFixture[str]) -> None:
    from simulator.cli import main

    assert main(["--braiins", "m30s+:1"]) == 2
    assert "m30s+ is a whatsminer, not a antminer" in capsys.readouterr().err


# ---- driver and pyasic on the simulated rig, over real sockets ----------------------------------

CLONE_NEWNET = 0x40000000


class NsLoop:
    """An event loop on a thread that joined the network namespace of process ``pid``."""

    def __init__(self, pid: int) -> None:
        self.loop = asyncio.new_event_loop()
        ready: Future[None] = Future()

        def run() -> None:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    ready.set_exception(OSError(ctypes.get_errno(), "setns failed"))
                    return
            finally:
                os.close(fd)
            asyncio.set_event_loop(self.loop)
            ready.set_result(None)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="braiins-netns", daemon=True)
        self.thread.start()
        ready.result(timeout=10)

    def run(self, call: Callable[[], Awaitable[T]], timeout_s: float = 90.0) -> T:
        async def wrapped() -> T:
            return await call()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class BosFleet:
    def __init__(self, address: str, control: SimControl, ns: NsLoop) -> None:
        self.address = address
        self.control = control
        self.ns = ns

    def truth(self) -> dict[str, Any]:
        state: dict[str, Any] = self.control.rig(self.address)
        return state


@pytest.fixture(scope="module")
def bos_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BosFleet]:
    folder = tmp_path_factory.mktemp("bos-sim")
    running = launch.start(
        ["--braiins", "s19jpro:1", "--time-scale", "30", "--base-address", "127.7.0.1"],
        folder / "control.sock",
        folder / "sim.log",
        netns="new",
    )
    ns = NsLoop(running.proc.pid)
    try:
        yield BosFleet(running.rigs[0]["address"], running.control, ns)
    finally:
        ns.close()
        running.stop()


@pytest.fixture
def bos(bos_fleet: BosFleet) -> Iterator[BosFleet]:
    bos_fleet.control.reset(bos_fleet.address)
    yield bos_fleet
    bos_fleet.control.reset(bos_fleet.address)


async def until(
    driver: BraiinsOS, want: Callable[[Observation], bool], limit_s: float = 30.0
) -> Observation:
    deadline = time.monotonic() + limit_s
    while True:
        obs = await driver.observe(3.0, time.time())
        if want(obs):
            return obs
        assert time.monotonic() < deadline, (
            f"not observed: last {obs.mode} {obs.hashrate_ths} {obs.power_w} {obs.power_limit_w}"
        )
        await asyncio.sleep(0.3)


async def _driver(address: str) -> BraiinsOS:
    driver = driver_for(await identify(address))
    assert isinstance(driver, BraiinsOS)
    return driver


def test_detect(bos: BosFleet) -> None:
    async def body() -> tuple[Identity, Any]:
        return await identify(bos.address), await get_miner(bos.address)

    identity, miner = bos.ns.run(body)
    rig = bos.truth()
    assert (identity.make, identity.model, identity.driver) == (
        Make.BRAIINS,
        "S19j Pro",
        "braiins-os",
    )
    assert identity.firmware == rig["firmware"] == BOS_FIRMWARE
    assert identity.serial == rig["serial"] and identity.mac == rig["mac"]
    assert (
        identity.extra[EXTRA_MIN],
        identity.extra[EXTRA_DEFAULT],
        identity.extra[EXTRA_MAX],
    ) == (
        "1530",
        "3068",
        "3990",
    )
    assert isinstance(miner, BOSer) and type(miner).__name__ == "BOSMinerS19jPro"
    assert str(miner).startswith("S19j Pro (BOS+)")


def test_read_agrees_with_truth_and_pyasic(bos: BosFleet) -> None:
    async def body() -> tuple[Observation, Any]:
        driver = await _driver(bos.address)
        obs = await driver.observe(3.0, time.time())
        data = await (await get_miner(bos.address)).get_data()
        return obs, data

    obs, data = bos.ns.run(body)
    rig = bos.truth()
    assert obs.mode is Mode.NORMAL and obs.mining and obs.power_limit_w == 3068
    assert not obs.model_unknown and obs.power_source is PowerSource.REPORTED
    assert obs.hashrate_ths == pytest.approx(rig["hashrate_ths"], rel=0.05)
    assert obs.power_w == pytest.approx(rig["power_w"], rel=0.05)
    assert obs.max_chip_temp_c == pytest.approx(rig["chip_temp_c"], abs=2.0)
    assert len(obs.boards) == 3 and all(b.alive for b in obs.boards)
    assert float(data.hashrate) == pytest.approx(obs.hashrate_ths, rel=0.05)
    assert data.wattage == pytest.approx(obs.power_w, rel=0.05)
    assert data.wattage_limit == obs.power_limit_w == 3068
    assert data.is_mining is True
    assert [b.chips for b in data.hashboards] == [b.chips for b in obs.boards]


def test_sleep_and_wake_confirmed_by_observation(bos: BosFleet) -> None:
    async def body() -> tuple[Observation, Observation, Any]:
        driver = await _driver(bos.address)
        await driver.apply(Mode.SLEEP, None, 3.0)
        asleep = await until(driver, lambda o: o.mode is Mode.SLEEP and o.hashrate_ths == 0)
        data = await (await get_miner(bos.address)).get_data()
        await driver.apply(Mode.NORMAL, None, 3.0)
        awake = await until(driver, lambda o: o.mode is Mode.NORMAL and o.hashrate_ths > 90, 60)
        return asleep, awake, data

    asleep, awake, data = bos.ns.run(body)
    assert not asleep.mining and asleep.power_w is not None and asleep.power_w < 100
    assert data.is_mining is False and float(data.hashrate or 0) == 0.0
    assert awake.mining and awake.power_limit_w == 3068
    assert bos.truth()["mode"] == "normal"


def test_power_target_confirmed_by_observation(bos: BosFleet) -> None:
    async def body() -> tuple[Observation, Observation, Any]:
        driver = await _driver(bos.address)
        before = await driver.observe(3.0, time.time())
        await driver.apply(Mode.LIMIT, 2300, 3.0)
        after = await until(
            driver,
            lambda o: (
                o.mode is Mode.LIMIT
                and o.power_limit_w == 2300
                and o.power_w is not None
                and o.power_w <= 2300 * 1.02
                and o.hashrate_ths < 0.95 * before.hashrate_ths
            ),
        )
        data = await (await get_miner(bos.address)).get_data()
        return before, after, data

    before, after, data = bos.ns.run(body)
    assert before.power_w is not None and after.power_w is not None
    assert after.power_w < before.power_w - 500
    assert bos.truth()["power_limit_w"] == 2300
    assert data.wattage_limit == 2300  # pyasic reads the same target over gRPC


def test_pyasic_controls_the_same_rig(bos: BosFleet) -> None:
    async def body() -> Observation:
        miner = await get_miner(bos.address)
        driver = await _driver(bos.address)
        assert await miner.set_power_limit(2600)
        await until(driver, lambda o: o.mode is Mode.LIMIT and o.power_limit_w == 2600)
        assert await miner.stop_mining()
        await until(driver, lambda o: o.mode is Mode.SLEEP and o.hashrate_ths == 0)
        assert await miner.resume_mining()
        return await until(
            driver, lambda o: o.mode is Mode.LIMIT and o.power_limit_w == 2600 and o.mining, 60
        )

    obs = bos.ns.run(body)
    assert obs.hashrate_ths > 0


def test_out_of_range_target_is_refused_clearly(bos: BosFleet) -> None:
    async def body() -> tuple[BaseException, BaseException]:
        driver = await _driver(bos.address)
        with pytest.raises(UnsupportedMode) as ours:
            await driver.apply(Mode.LIMIT, 9000, 3.0)
        # a driver that knows no range sends it: the rig's own refusal, in its words
        blind = BraiinsOS(
            Identity(bos.address, Make.BRAIINS, "S19j Pro", BOS_FIRMWARE, BraiinsOS.name)
        )
        with pytest.raises(DriverError) as theirs:
            await blind.apply(Mode.LIMIT, 9000, 3.0)
        return ours.value, theirs.value

    ours, theirs = bos.ns.run(body)
    assert "power limit 9000 W is outside 1530..3990 W" in str(ours)
    assert isinstance(theirs, DriverError) and theirs.kind is FailureKind.BAD_REPLY
    assert theirs.detail == (
        "Braiins OS API performance/power-target: HTTP 400: "
        "power target 9000 W is out of range 1530..3990 W"
    )
    assert bos.truth()["power_limit_w"] is None  # nothing changed


def test_a_rig_that_answers_ok_and_ignores_the_target_is_not_confirmed(bos: BosFleet) -> None:
    """ "It said OK" is not success: the observation shows the target still in force."""
    bos.control.set_fault(bos.address, "ignore_writes")

    async def body() -> tuple[Any, Observation]:
        driver = await _driver(bos.address)
        sent = await driver.apply(Mode.LIMIT, 2300, 3.0)
        return sent, await driver.observe(3.0, time.time())

    sent, obs = bos.ns.run(body)
    assert sent.sent and sent.power_limit_w == 2300
    assert obs.mode is Mode.NORMAL and obs.power_limit_w == 3068
