"""The simulated stock Antminer web UI frames replies as its lighttpd does, over real sockets.

By default a CGI reply goes out chunked on HTTP/1.1 and close-delimited on HTTP/1.0, with
``Server: lighttpd/1.4.x``; the challenge, the 404 and static pages with Content-Length. The
``http_framing`` fault selects the other framings, and the stock driver and unmodified pyasic
read the mode and set it through each.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from conftest import SimFleet

from drivers.identify import driver_for, identify
from policies.values import Mode
from simulator.httpwire import format_response
from simulator.models import MODELS
from simulator.protocol import HttpResponse
from simulator.rig import HTTP_FRAMINGS, Fault, SimClock, SimRig

CONF = "/cgi-bin/get_miner_conf.cgi"


async def _raw(address: str, request: bytes) -> bytes:
    """Send ``request`` and read until the server closes (or 2 s of silence)."""
    reader, writer = await asyncio.open_connection(address, 80)
    writer.write(request)
    out = b""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 2.0)
            if not data:
                break
            out += data
    except TimeoutError:
        out += b"<still open>"
    writer.close()
    return out


async def _authorization(address: str, uri: str) -> str:
    """The Authorization header for ``uri``, from the rig's own challenge (httpx computes it)."""
    reply = await _raw(
        address, f"GET {uri} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    head = reply.split(b"\r\n\r\n", 1)[0].decode()
    challenge = next(
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("www-authenticate:")
    )
    auth = httpx.DigestAuth("root", "root")
    request = httpx.Request("GET", f"http://{address}{uri}")
    flow = auth.sync_auth_flow(request)
    next(flow)
    again = flow.send(httpx.Response(401, headers={"WWW-Authenticate": challenge}, request=request))
    return again.headers["Authorization"]


def _head(reply: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return status, headers, body


async def test_lighttpd_framing_by_default(sim: SimFleet) -> None:
    address = sim.address("s19jpro")
    auth = await _authorization(address, CONF)

    # HTTP/1.1: chunked, kept alive (the connection stays open after the last chunk)
    reply = await _raw(
        address, f"GET {CONF} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode()
    )
    status, headers, body = _head(reply)
    assert status == "HTTP/1.1 200 OK"
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers
    assert headers["server"].startswith("lighttpd/1.4.")
    assert "date" in headers
    assert body.endswith(b"\r\n0\r\n\r\n<still open>")
    size, _, rest = body.partition(b"\r\n")
    assert rest[: int(size, 16)].startswith(b'{"pools"')

    # HTTP/1.0: no length, the connection closed after the body
    auth = await _authorization(address, CONF)
    reply = await _raw(address, f"GET {CONF} HTTP/1.0\r\nAuthorization: {auth}\r\n\r\n".encode())
    status, headers, body = _head(reply)
    assert status == "HTTP/1.0 200 OK"
    assert "content-length" not in headers and "transfer-encoding" not in headers
    assert body.startswith(b'{"pools"') and body.endswith(b"}")

    # the challenge itself (lighttpd's own page) carries its length
    reply = await _raw(address, f"GET {CONF} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, headers, body = _head(reply)
    assert status == "HTTP/1.1 401 Unauthorized"
    assert int(headers["content-length"]) == len(body.removesuffix(b"<still open>"))


@pytest.mark.parametrize(
    ("framing", "version", "status_line", "has_length", "closes"),
    [
        ("length", "HTTP/1.1", "HTTP/1.1", True, False),
        ("close", "HTTP/1.1", "HTTP/1.1", False, True),
        ("http10", "HTTP/1.1", "HTTP/1.0", False, True),
        ("chunked", "HTTP/1.0", "HTTP/1.0", False, True),
    ],
)
def test_framings_on_the_wire(
    framing: str, version: str, status_line: str, has_length: bool, closes: bool
) -> None:
    cgi = HttpResponse(200, b'{"a": 1}', {"Content-Type": "application/json"}, dynamic=True)
    payload, keep = format_response(cgi, True, version, framing)
    head = payload.split(b"\r\n\r\n")[0].decode()
    assert head.startswith(status_line + " 200 OK")
    assert ("Content-Length: 8" in head) is has_length
    assert "Transfer-Encoding" not in head
    assert payload.endswith(b'{"a": 1}')
    assert keep is not closes
    static = HttpResponse(200, b"<html/>")
    payload, keep = format_response(static, True, "HTTP/1.1", framing)
    assert b"Content-Length: 7" in payload and keep


def test_unknown_framing_is_named() -> None:
    rig = SimRig("127.1.0.10", MODELS["s19jpro"], SimClock(), 0)
    with pytest.raises(ValueError, match="framing must be one of chunked, length, close, http10"):
        rig.set_fault(Fault.HTTP_FRAMING, {"framing": "gzip"})


@pytest.mark.parametrize("framing", HTTP_FRAMINGS)
async def test_driver_and_pyasic_read_and_set_the_mode_in_every_framing(
    sim: SimFleet, framing: str
) -> None:
    from drivers.pyasic_miner import miner_for

    address = sim.address("s19jpro")
    await asyncio.to_thread(sim.control.set_fault, address, "http_framing", framing=framing)
    identity = await identify(address)
    driver = driver_for(identity)
    obs = await driver.observe(5.0, time.time())
    assert obs.mode is Mode.NORMAL, obs.errors
    await driver.apply(Mode.LOW, None, 5.0)
    assert (await asyncio.to_thread(sim.control.rig, address))["mode"] == "low"
    obs = await driver.observe(5.0, time.time())
    assert obs.mode is Mode.LOW, obs.errors
    # unmodified pyasic on the same rig, the same framing
    miner = miner_for(identity)
    config = await miner.get_config()
    assert str(config.mining_mode.mode) == "low"
    assert await miner.stop_mining()
    assert (await asyncio.to_thread(sim.control.rig, address))["mode"] == "sleep"
