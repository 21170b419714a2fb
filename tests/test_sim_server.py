"""The socket front end: dispatch by destination address, framing, connection faults, control API.

Runs a FleetServer in-process on spare ports with trivial handlers, so what is tested here is
the server alone; the makes' protocols have their own tests.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from simulator.client import ControlError, SimControl
from simulator.control import ControlApi, serve_control
from simulator.fleet import Fleet, GroupSpec
from simulator.physics import Mode
from simulator.protocol import HttpRequest, HttpResponse, MakeHandlers
from simulator.rig import Fault, SimClock, SimRig
from simulator.server import FleetServer, FramedConn, HttpConn, RpcConn

RPC, WEB, V3 = 14028, 10080, 14433


def rpc_echo(rig: SimRig, request: Any) -> bytes:
    if isinstance(request, bytes):
        if request == b"boom":
            raise RuntimeError("handler bug")
        return b'{"STATUS":"E","Msg":"garbage"}\x00'
    return json.dumps({"rig": rig.address, "echo": request}).encode() + b"\x00"


def http_echo(rig: SimRig, req: HttpRequest) -> HttpResponse:
    return HttpResponse(200, json.dumps({"rig": rig.address, "path": req.path}).encode())


def framed_echo(rig: SimRig, request: Any) -> bytes:
    return json.dumps({"rig": rig.address, "echo": request}).encode()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Fleet, FleetServer, SimControl]]:
    fleet = Fleet([GroupSpec("s19jpro", 3)], SimClock(scale=1000.0))
    handlers = {"antminer": MakeHandlers(rpc_echo, http_echo, framed_echo)}
    server = FleetServer(fleet, handlers)
    await server.start(ports={RPC: RpcConn, WEB: HttpConn, V3: FramedConn})
    sock = tmp_path / "ctl.sock"
    api = await serve_control(ControlApi(fleet, server), sock)
    yield fleet, server, SimControl(sock)
    api.close()
    await server.close()


async def rpc(address: str, *chunks: bytes, timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection(address, RPC)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.01)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def control(ctl: SimControl, method: str, *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(getattr(ctl, method), *args, **kw)


async def test_dispatch_by_destination_address(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    fleet, server, _ = served
    for rig in fleet.rigs:
        reply = await rpc(rig.address, b'{"command":"summary"}')
        assert json.loads(reply.rstrip(b"\x00"))["rig"] == rig.address
    assert server.stats.requests == 3
    assert fleet.rigs[0].counters.connections == 1


async def test_request_split_across_packets_is_reassembled(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    fleet, _, _ = served
    reply = await rpc(fleet.rigs[0].address, b'{"command":', b'"sum}mary"', b"}")
    assert json.loads(reply.rstrip(b"\x00"))["echo"] == {"command": "sum}mary"}


async def test_non_json_goes_to_the_handler_as_bytes(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    fleet, _, _ = served
    reply = await rpc(fleet.rigs[0].address, b"summary|0")
    assert b"garbage" in reply


async def test_address_without_a_rig_is_reset(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    with pytest.raises((ConnectionResetError, ConnectionRefusedError)):
        reply = await rpc("127.9.9.9", b'{"command":"summary"}')
        assert reply == b""  # some kernels report the RST as EOF
        raise ConnectionResetError


async def test_refuse_fault_resets(served: tuple[Fleet, FleetServer, SimControl]) -> None:
    fleet, _, ctl = served
    address = fleet.rigs[0].address
    await control(ctl, "set_fault", address, "refuse")
    with pytest.raises(ConnectionResetError):
        reply = await rpc(address, b'{"command":"summary"}')
        assert reply == b""
        raise ConnectionResetError


@pytest.mark.parametrize("fault", ["hang", "offline"])
async def test_hang_and_offline_never_answer(
    served: tuple[Fleet, FleetServer, SimControl], fault: str
) -> None:
    fleet, _, ctl = served
    address = fleet.rigs[1].address
    await control(ctl, "set_fault", address, fault)
    with pytest.raises(TimeoutError):
        await rpc(address, b'{"command":"summary"}', timeout=0.5)
    await control(ctl, "clear_fault", address, fault)
    assert await rpc(address, b'{"command":"summary"}')


async def test_slow_answers_late(served: tuple[Fleet, FleetServer, SimControl]) -> None:
    fleet, _, ctl = served
    address = fleet.rigs[0].address
    await control(ctl, "set_fault", address, "slow", delay_s=0.4)
    start = time.monotonic()
    reply = await rpc(address, b'{"command":"summary"}')
    assert time.monotonic() - start >= 0.35
    assert json.loads(reply.rstrip(b"\x00"))["rig"] == address


async def test_malformed_answers_broken_json(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    fleet, _, ctl = served
    address = fleet.rigs[0].address
    await control(ctl, "set_fault", address, "malformed")
    reply = await rpc(address, b'{"command":"summary"}')
    assert reply
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.rstrip(b"\x00"))


async def test_reset_fault_resets_after_the_request(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    fleet, _, ctl = served
    address = fleet.rigs[0].address
    await control(ctl, "set_fault", address, "reset")
    with pytest.raises(ConnectionResetError):
        reply = await rpc(address, b'{"command":"summary"}')
        assert reply == b""
        raise ConnectionResetError


async def test_reboot_goes_away_and_comes_back(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    fleet, _, ctl = served
    address = fleet.rigs[2].address
    await control(ctl, "reboot", address)
    with pytest.raises(TimeoutError):
        await rpc(address, b'{"command":"summary"}', timeout=0.05)
    await asyncio.sleep(0.15)  # 90 simulated seconds at time scale 1000
    assert await rpc(address, b'{"command":"summary"}')


async def test_handler_exception_resets_and_server_survives(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    fleet, server, _ = served
    address = fleet.rigs[0].address
    with pytest.raises(ConnectionResetError):
        reply = await rpc(address, b"boom")
        assert reply == b""
        raise ConnectionResetError
    assert server.stats.errors == 1
    assert await rpc(address, b'{"command":"summary"}')


async def test_http_keep_alive_and_bad_request(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    fleet, _, _ = served
    address = fleet.rigs[0].address
    reader, writer = await asyncio.open_connection(address, WEB)
    for path in ("/a", "/b"):
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert json.loads(await reader.readexactly(length))["path"] == path
    writer.write(b"NONSENSE\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 400")
    writer.close()


async def test_framed_port_keeps_the_connection(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    fleet, _, _ = served
    reader, writer = await asyncio.open_connection(fleet.rigs[0].address, V3)
    for n in range(2):
        payload = json.dumps({"cmd": f"c{n}"}).encode()
        writer.write(len(payload).to_bytes(4, "little") + payload)
        size = int.from_bytes(await reader.readexactly(4), "little")
        assert json.loads(await reader.readexactly(size))["echo"] == {"cmd": f"c{n}"}
    writer.close()


async def test_control_api_errors_name_the_problem(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    fleet, _, ctl = served
    with pytest.raises(ControlError, match=r"404: no simulated rig at 127\.9\.9\.9"):
        await control(ctl, "rig", "127.9.9.9")
    with pytest.raises(ControlError, match=r"400: unknown fault 'melt'; known: offline"):
        await control(ctl, "set_fault", fleet.rigs[0].address, "melt")
    with pytest.raises(ControlError, match=r"board must be 0\.\.2"):
        await control(ctl, "set_fault", fleet.rigs[0].address, "dead_board", board=5)
    with pytest.raises(ControlError, match="time_scale must be a positive number"):
        await control(ctl, "request", "PUT", "/clock", {"time_scale": -1})
    with pytest.raises(ControlError, match="advance_s must be a number >= 0"):
        await control(ctl, "request", "PUT", "/clock", {"advance_s": -30})
    with pytest.raises(ControlError, match="advance_s must be a number >= 0"):
        await control(ctl, "request", "PUT", "/clock", {"advance_s": "30"})
    with pytest.raises(ControlError, match=r"400: expected \{"):
        await control(ctl, "request", "PUT", "/clock", {})


async def test_advancing_the_clock_moves_simulated_time_and_physics_at_once(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    fleet, _, ctl = served
    rig = fleet.rigs[0]
    await control(ctl, "set_time_scale", 1.0)  # so wall time adds next to nothing
    before = (await control(ctl, "stats"))["sim_time_s"]
    await rpc(rig.address, b'{"command":"summary"}')
    rig.set_mode(Mode.SLEEP)
    assert (await control(ctl, "rig", rig.address))["hashrate_ths"] > 0  # still winding down
    stats = await control(ctl, "advance_clock", 600)
    assert 600 <= stats["sim_time_s"] - before < 610
    # Ten simulated minutes after the sleep command: the hashboards are off.
    state = await control(ctl, "rig", rig.address)
    assert state["mode"] == "sleep"
    assert not state["mining"]
    assert state["hashrate_ths"] == 0


async def test_control_api_reports_true_state_and_counters(
    served: tuple[Fleet, FleetServer, SimControl],
) -> None:
    fleet, _, ctl = served
    address = fleet.rigs[0].address
    await rpc(address, b'{"command":"summary"}')
    state = await control(ctl, "rig", address)
    assert state["address"] == address
    assert state["mode"] == "normal"
    assert state["counters"]["connections"] == 1
    stats = await control(ctl, "stats")
    assert stats["requests"] == 1
    assert stats["rigs"] == 3
    await control(ctl, "set_fault", address, "dead_board", board=2)
    assert (await control(ctl, "rig", address))["boards"][2]["alive"] is False
    assert (await control(ctl, "reset", address))["faults"] == {}
    fleet.get(address).set_fault(Fault.SLOW, {})
    assert fleet.get(address).faults[Fault.SLOW]["delay_s"] == 5.0
