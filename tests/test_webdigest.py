"""The stock Antminer web client against every framing HTTP/1.1 allows, over real sockets.

The server here is written for these tests (not the simulator): a stock Antminer's web UI as
small as it can be (digest auth, ``get_miner_conf``, ``summary``, ``set_miner_conf``), whose
replies are framed as the test asks: Content-Length, chunked (with chunk extensions and a
trailer), close-delimited on HTTP/1.1, HTTP/1.0, ``Connection: close`` on a keep-alive
request, a server that drops the kept-alive connection after each reply, and 401s with and
without a body. The RPC port answers with a real S19 Pro ``stats`` capture. The stock driver
reads the mode (observe) and sets it (apply) through each.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers import webdigest
from drivers.stock import AntminerStock
from drivers.transport import DriverError
from policies.values import FailureKind, Identity, Make, Mode

CAPTURE = Path(__file__).parent / "fixtures/captures/antminer/v2020/stats.json"
REALM = "antMiner Configuration"
FRAMINGS = ["length", "chunked", "close", "http10", "conn_close", "drop"]


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


@dataclass
class Rig:
    """What the test web server serves, and how it frames it."""

    framing: str = "chunked"
    auth401: str = "body"  # "body" (an HTML page with Content-Length) or "empty"
    work_mode: str = "0"
    nonce: str = field(default_factory=lambda: os.urandom(8).hex())
    huge: bool = False  # get_miner_conf streams chunks without end
    stall: bool = False  # get_miner_conf sends its head and nothing more
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    posted: list[dict[str, object]] = field(default_factory=list)


def _authorized(rig: Rig, method: str, uri: str, header: str) -> bool:
    if not header.startswith("Digest "):
        return False
    fields: dict[str, str] = {}
    for part in header[7:].split(","):
        key, _, value = part.strip().partition("=")
        fields[key] = value.strip('"')
    if fields.get("nonce") != rig.nonce or fields.get("uri") != uri:
        return False
    ha1 = _md5(f"root:{REALM}:root")
    ha2 = _md5(f"{method}:{uri}")
    want = _md5(
        f"{ha1}:{rig.nonce}:{fields.get('nc')}:{fields.get('cnonce')}:{fields.get('qop')}:{ha2}"
    )
    return fields.get("response") == want


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, uri, version = lines[0].split(" ")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return method, uri, version, headers, body


def _chunked(body: bytes) -> bytes:
    out = b""
    for i, start in enumerate(range(0, len(body), 7)):
        piece = body[start : start + 7]
        ext = b';ext="a b";n=' + str(i).encode() if i % 2 == 0 else b""
        out += f"{len(piece):x}".encode() + ext + b"\r\n" + piece + b"\r\n"
    return out + b"0;last\r\nX-Checksum: 1\r\nX-Other: two\r\n\r\n"


async def _reply(
    writer: asyncio.StreamWriter, rig: Rig, status: str, body: bytes, request_version: str
) -> bool:
    """Write one reply framed as ``rig.framing``; True when the connection stays open."""
    head = [f"HTTP/1.1 {status}", "Server: lighttpd/1.4.69", "Content-Type: text/plain"]
    framing = rig.framing
    if request_version == "HTTP/1.0" and framing in ("chunked", "length", "drop"):
        framing = "close"
    keep = True
    if framing in {"length", "drop"}:
        head.append(f"Content-Length: {len(body)}")
        payload = body
        keep = framing == "length"
    elif framing == "chunked":
        head.append("Transfer-Encoding: chunked")
        head.append("Trailer: X-Checksum, X-Other")
        payload = _chunked(body)
    elif framing == "close":
        head.append("Connection: close")
        payload, keep = body, False
    elif framing == "http10":
        head[0] = f"HTTP/1.0 {status}"
        payload, keep = body, False
    elif framing == "conn_close":
        head += [f"Content-Length: {len(body)}", "Connection: close"]
        payload, keep = body, False
    else:
        raise AssertionError(framing)
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
    await writer.drain()
    return keep


async def _serve_web(rig: Rig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    rig.connections += 1
    try:
        while True:
            request = await _read_request(reader)
            if request is None:
                return
            method, uri, version, headers, body = request
            rig.requests.append(f"{method} {uri}")
            if not _authorized(rig, method, uri, headers.get("authorization", "")):
                challenge = f'Digest realm="{REALM}", nonce="{rig.nonce}", qop="auth"'
                page = (
                    b"<html><body>401 Unauthorized</body></html>" if rig.auth401 == "body" else b""
                )
                writer.write(
                    (
                        "HTTP/1.1 401 Unauthorized\r\nServer: lighttpd/1.4.69\r\n"
                        f"WWW-Authenticate: {challenge}\r\nContent-Type: text/html\r\n"
                        f"Content-Length: {len(page)}\r\n\r\n"
                    ).encode()
                    + page
                )
                await writer.drain()
                continue
            if uri == "/cgi-bin/get_miner_conf.cgi" and rig.stall:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(3600)
            if uri == "/cgi-bin/get_miner_conf.cgi" and rig.huge:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                while True:
                    writer.write(b"10000\r\n" + b" " * 0x10000 + b"\r\n")
                    await writer.drain()
            if uri == "/cgi-bin/get_miner_conf.cgi":
                reply: dict[str, object] = {"bitmain-work-mode": rig.work_mode, "pools": []}
            elif uri == "/cgi-bin/summary.cgi":
                reply = {"SUMMARY": [{"status": [{"type": "rate", "status": "s"}]}]}
            elif uri == "/cgi-bin/set_miner_conf.cgi" and method == "POST":
                posted = json.loads(body)
                rig.posted.append(posted)
                rig.work_mode = str(posted["miner-mode"])
                reply = {"stats": "success", "code": "M000", "msg": "OK!"}
            else:
                reply = {}
            if not await _reply(writer, rig, "200 OK", json.dumps(reply).encode(), version):
                return
    except ConnectionError:
        return
    finally:
        writer.close()


async def _serve_rpc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(4096)
    writer.write(CAPTURE.read_bytes() + b"\x00")
    await writer.drain()
    writer.close()


@pytest.fixture
async def web() -> AsyncIterator[tuple[Rig, AntminerStock]]:
    rig = Rig()
    web_server = await asyncio.start_server(lambda r, w: _serve_web(rig, r, w), "127.0.0.1", 0)
    rpc_server = await asyncio.start_server(_serve_rpc, "127.0.0.1", 0)
    identity = Identity("127.0.0.1", Make.ANTMINER, "S19 Pro", "stock", "antminer-stock")
    driver = AntminerStock(identity)
    driver.web_port = web_server.sockets[0].getsockname()[1]
    driver.rpc_port = rpc_server.sockets[0].getsockname()[1]
    yield rig, driver
    for server in (web_server, rpc_server):
        server.close()
    # the stalled and endless handlers never end by themselves
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task() and "_serve_web" in repr(task.get_coro()):
            task.cancel()


@pytest.mark.parametrize("auth401", ["body", "empty"])
@pytest.mark.parametrize("framing", FRAMINGS)
async def test_mode_read_and_set_in_every_framing(
    web: tuple[Rig, AntminerStock], framing: str, auth401: str
) -> None:
    rig, driver = web
    rig.framing, rig.auth401, rig.work_mode = framing, auth401, "1"
    obs = await driver.observe(5.0, time.time())
    assert obs.mode is Mode.SLEEP, obs.errors
    assert not any("mode not confirmed" in e for e in obs.errors), obs.errors
    assert obs.hashrate_ths == pytest.approx(110.56689, abs=0.01)  # the capture's GHS 5s

    result = await driver.apply(Mode.LOW, None, 5.0)
    assert result.sent
    assert rig.posted and rig.posted[-1]["miner-mode"] == 3
    assert rig.work_mode == "3"
    obs = await driver.observe(5.0, time.time())
    assert obs.mode is Mode.LOW, obs.errors


async def test_the_challenge_is_remembered_and_one_connection_carries_a_burst(
    web: tuple[Rig, AntminerStock],
) -> None:
    rig, driver = web
    rig.framing = "chunked"
    await driver.observe(5.0, time.time())
    # 401, get_miner_conf, summary: three requests on one connection
    assert rig.requests == [
        "GET /cgi-bin/get_miner_conf.cgi",
        "GET /cgi-bin/get_miner_conf.cgi",
        "GET /cgi-bin/summary.cgi",
    ]
    assert rig.connections == 1
    await driver.apply(Mode.NORMAL, None, 5.0)
    # the remembered challenge: no 401 this time; a new connection for the new burst
    assert rig.requests[3:] == [
        "GET /cgi-bin/get_miner_conf.cgi",
        "POST /cgi-bin/set_miner_conf.cgi",
    ]
    assert rig.connections == 2


async def test_a_new_nonce_earns_one_retry(web: tuple[Rig, AntminerStock]) -> None:
    rig, driver = web
    await driver.apply(Mode.LOW, None, 5.0)
    rig.nonce = "fresh"
    await driver.apply(Mode.SLEEP, None, 5.0)
    assert rig.work_mode == "1"


async def test_wrong_credentials_are_named(web: tuple[Rig, AntminerStock]) -> None:
    _rig, driver = web
    session = webdigest.WebSession("127.0.0.1", "root", "wrong", driver.web_port)
    with pytest.raises(DriverError, match="refused the credentials for user 'root'"):
        await session.get_json("/cgi-bin/get_miner_conf.cgi", 5.0)
    await session.release()


async def test_an_endless_body_is_an_error_not_a_hang(web: tuple[Rig, AntminerStock]) -> None:
    rig, driver = web
    rig.huge = True
    started = time.monotonic()
    with pytest.raises(DriverError) as caught:
        await driver.apply(Mode.LOW, None, 10.0)
    assert caught.value.kind is FailureKind.BAD_REPLY
    assert f"reply over {webdigest.MAX_BODY} bytes" in caught.value.detail
    assert time.monotonic() - started < 5.0
    obs = await driver.observe(10.0, time.time())  # the status read still stands
    assert any("reply over" in e for e in obs.errors)


async def test_a_stalled_body_keeps_the_deadline(web: tuple[Rig, AntminerStock]) -> None:
    rig, driver = web
    rig.stall = True
    with pytest.raises(DriverError) as caught:
        await driver.apply(Mode.LOW, None, 0.5)
    assert caught.value.kind is FailureKind.TIMEOUT


async def test_a_broken_chunked_body_is_a_bad_reply() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DriverError) as caught:
            await webdigest.get_json("127.0.0.1", "/cgi-bin/x.cgi", "root", "root", 5.0, port)
        assert caught.value.kind is FailureKind.BAD_REPLY
        assert "broken HTTP reply" in caught.value.detail
    finally:
        server.close()


async def test_basic_auth_is_named() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="x"\r\n'
            b"Content-Length: 0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DriverError, match="asks for 'Basic' auth, not digest"):
            await webdigest.get_json("127.0.0.1", "/cgi-bin/x.cgi", "root", "root", 5.0, port)
    finally:
        server.close()


async def test_nobody_listening_is_unreachable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(DriverError) as caught:
        await webdigest.get_json("127.0.0.1", "/", "root", "root", 5.0, port)
    assert caught.value.kind is FailureKind.UNREACHABLE
