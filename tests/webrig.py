"""A stock Antminer as small as it can be, written for the tests (not the simulator).

Its web UI (digest auth, ``get_miner_conf``, ``summary``, ``stats``, ``set_miner_conf``) frames
its replies as the test asks: Content-Length, chunked (with chunk extensions and a trailer),
close-delimited on HTTP/1.1, HTTP/1.0, ``Connection: close`` on a keep-alive request, a server
that drops the kept-alive connection after each reply, and 401s with and without a body. Its
RPC port answers any command with a real capture, verbatim. :func:`web_rig` starts both on
loopback ports and hands back the rig and a stock driver pointed at them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from drivers.stock import AntminerStock
from policies.values import Identity, Make

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
    rpc_capture: Path = CAPTURE  # what port 4028 answers to any command, verbatim
    watt: int | None = None  # web stats reports "watt" (2023+ firmware) when set
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


async def _serve_web(rig: Rig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:  # noqa: C901, PLR0912  a firmware's web server: one case per request it answers
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
            elif uri == "/cgi-bin/stats.cgi":
                stat: dict[str, object] = {"rate_unit": "GH/s", "chain_num": 3}
                if rig.watt is not None:
                    stat["watt"] = rig.watt
                reply = {"STATUS": {"STATUS": "S"}, "STATS": [stat]}
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


async def _serve_rpc(rig: Rig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(4096)
    writer.write(rig.rpc_capture.read_bytes() + b"\x00")
    await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def web_rig(
    model: str = "S19 Pro", firmware: str = "stock"
) -> AsyncIterator[tuple[Rig, AntminerStock]]:
    """A test rig and a stock Antminer driver built for it as identification would build it
    (``model`` decides the catalogue entry and the plausible ranges)."""
    rig = Rig()
    web_server = await asyncio.start_server(lambda r, w: _serve_web(rig, r, w), "127.0.0.1", 0)
    rpc_server = await asyncio.start_server(lambda r, w: _serve_rpc(rig, r, w), "127.0.0.1", 0)
    identity = Identity("127.0.0.1", Make.ANTMINER, model, firmware, "antminer-stock")
    driver = AntminerStock(identity)
    driver.web_port = web_server.sockets[0].getsockname()[1]
    driver.rpc_port = rpc_server.sockets[0].getsockname()[1]
    try:
        yield rig, driver
    finally:
        await _stop(web_server, rpc_server)


async def _stop(*servers: asyncio.Server) -> None:
    for server in servers:
        server.close()
    # the stalled and endless handlers never end by themselves
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task() and "_serve_web" in repr(task.get_coro()):
            task.cancel()
