"""Socket front end: one wildcard listener per port answers for every rig.

The rig a connection is for is the connection's destination address (``getsockname``), so
10,000 rigs need three listening sockets, not 20,000. Faults that act on the connection
(offline, refuse, hang, slow, malformed, reset, reboot) are applied here, the same way for
every make and port; command semantics live in the per-make handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import structlog

from simulator.fleet import Fleet
from simulator.httpwire import HttpError, format_response, parse_request
from simulator.protocol import HttpHandler, HttpRequest, HttpResponse, MakeHandlers
from simulator.rig import Fault, SimRig

log = structlog.get_logger("simulator")

RPC_PORT = 4028
WEB_PORT = 80
V3_PORT = 4433
MAX_REQUEST = 64 * 1024
IDLE_TIMEOUT_S = 60.0


@dataclass(slots=True)
class ServerStats:
    """Process-wide request counters for the control API and the benchmark."""

    connections: int = 0
    requests: int = 0
    by_port: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    started_wall: float = field(default_factory=time.monotonic)


class _Conn(asyncio.Protocol):
    """Common connection plumbing: rig lookup, connection faults, idle sweep."""

    port = 0

    def __init__(self, server: FleetServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.rig: SimRig | None = None
        self.host: HostHandler | None = None  # a device that is not a rig (HttpConn only)
        self.buf = bytearray()
        self.dead = False  # hanging or offline: swallow everything
        self.last_active = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self.server.stats.connections += 1
        self.server.open_conns.add(self)
        address = transport.get_extra_info("sockname")[0]
        rig = self.server.fleet.by_address.get(address)
        handlers = self.server.handlers.get(rig.spec.make) if rig else None
        if rig is None or handlers is None or not self.serves(handlers, rig):
            # Nobody lives at this address/port: the nearest a shared listener gets to refusing.
            self.reset()
            return
        self.rig = rig
        rig.counters.connections += 1
        if rig.has(Fault.REFUSE):
            self.reset()
        elif not rig.reachable():
            self.dead = True

    def serves(self, handlers: MakeHandlers, rig: SimRig) -> bool:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open_conns.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.dead or (self.rig is None and self.host is None):
            return
        self.buf += data
        if len(self.buf) > MAX_REQUEST:
            self.reset()
            return
        try:
            self.process()
        except Exception:  # a handler bug must never take the simulator down
            self.server.stats.errors += 1
            where = self.rig.address if self.rig is not None else "switch"
            log.exception("sim.handler_failed", address=where, port=self.port)
            self.reset()

    def process(self) -> None:
        raise NotImplementedError

    def deliver(self, payload: bytes, close: bool, count: bool = True) -> None:
        """Send ``payload`` subject to the rig's faults, then close if asked."""
        rig = self.rig
        assert rig is not None
        if count:
            self.server.stats.requests += 1
            self.server.stats.by_port[self.port] = self.server.stats.by_port.get(self.port, 0) + 1
        if not rig.reachable() or rig.has(Fault.HANG):
            self.dead = True
            return
        if rig.has(Fault.RESET):
            self.reset()
            return
        if rig.has(Fault.MALFORMED):
            payload = _garble(payload)
        slow = rig.faults.get(Fault.SLOW)
        if slow:
            asyncio.get_running_loop().call_later(
                float(slow["delay_s"]), self._send, payload, close
            )
        else:
            self._send(payload, close)

    def _send(self, payload: bytes, close: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(payload)
        if close:
            self.transport.close()

    def serve_http(self, handler: HttpHandler) -> None:
        """Answer every complete HTTP request in the buffer (keep-alive, pipelined requests)."""
        rig = self.rig
        assert rig is not None
        while not self.dead and self.transport is not None:
            try:
                parsed = parse_request(self.buf)
            except HttpError as exc:
                body = f"<html><body><h1>{exc.status}</h1>{exc}</body></html>".encode()
                payload, _ = format_response(HttpResponse(exc.status, body), False)
                self.deliver(payload, close=True)
                self.dead = True
                return
            if parsed is None:
                return
            request, keep_alive = parsed
            response = handler(rig, request)
            framing = rig.faults.get(Fault.HTTP_FRAMING, {}).get("framing", "chunked")
            payload, keep_alive = format_response(response, keep_alive, request.version, framing)
            self.deliver(payload, close=not keep_alive)

    def reset(self) -> None:
        """Close with RST, as a peer that aborts does."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        self.dead = True


class RpcConn(_Conn):
    """cgminer-style API on 4028: one JSON request, one reply, then close."""

    port = RPC_PORT

    def serves(self, handlers: MakeHandlers, rig: SimRig) -> bool:
        return True

    def process(self) -> None:
        rig = self.rig
        assert rig is not None
        handlers = self.server.handlers[rig.spec.make]
        if handlers.api_http is not None:  # ePIC: an HTTP API on 4028
            self.serve_http(handlers.api_http)
            return
        assert handlers.rpc is not None
        state = _json_complete(self.buf)
        if state is None:
            return  # wait for the rest of the object
        raw = bytes(self.buf).rstrip(b"\x00 \r\n\t")
        self.buf.clear()
        request: object
        if state:
            try:
                request = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                request = raw
        else:
            request = raw
        reply = handlers.rpc(rig, request)
        self.dead = True  # one request per connection: ignore anything after it
        self.deliver(reply, close=True)


class HttpConn(_Conn):
    """Port 80 web UI: HTTP/1.1 with keep-alive."""

    port = WEB_PORT

    def serves(self, handlers: MakeHandlers, rig: SimRig) -> bool:
        return handlers.http is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        host = self.server.http_hosts.get(transport.get_extra_info("sockname")[0])
        if host is None:
            super().connection_made(transport)
            return
        # A smart plug (simulator/switches.py) at this address, not a rig.
        self.transport = cast(asyncio.Transport, transport)
        self.server.stats.connections += 1
        self.server.open_conns.add(self)
        self.host = host

    def process(self) -> None:
        if self.host is not None:
            self._process_host(self.host)
            return
        rig = self.rig
        assert rig is not None
        handler = self.server.handlers[rig.spec.make].http
        assert handler is not None
        self.serve_http(handler)

    def _process_host(self, host: HostHandler) -> None:
        while not self.dead and self.transport is not None:
            try:
                parsed = parse_request(self.buf)
            except HttpError as exc:
                payload, _ = format_response(HttpResponse(exc.status, str(exc).encode()), False)
                self._send(payload, close=True)
                self.dead = True
                return
            if parsed is None:
                return
            request, keep_alive = parsed
            self.server.stats.requests += 1
            response = host(request)
            if response is None:  # the device is unreachable: hang like a host that is down
                self.dead = True
                return
            payload, keep_alive = format_response(response, keep_alive, request.version)
            self._send(payload, close=not keep_alive)


class FramedConn(_Conn):
    """Whatsminer API v3 on 4433: 4-byte little-endian length, then JSON, both ways."""

    port = V3_PORT

    def serves(self, handlers: MakeHandlers, rig: SimRig) -> bool:
        return handlers.framed is not None and handlers.framed_for(rig)

    def process(self) -> None:
        rig = self.rig
        assert rig is not None
        handler = self.server.handlers[rig.spec.make].framed
        assert handler is not None
        while not self.dead and len(self.buf) >= 4:
            length = int.from_bytes(self.buf[:4], "little")
            if length > MAX_REQUEST:
                self.reset()
                return
            if len(self.buf) < 4 + length:
                return
            raw = bytes(self.buf[4 : 4 + length])
            del self.buf[: 4 + length]
            request: object
            try:
                request = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                request = raw
            payload = handler(rig, request)
            self.deliver(len(payload).to_bytes(4, "little") + payload, close=False)


def _json_complete(buf: bytearray) -> bool | None:
    """True when ``buf`` holds a complete JSON object/array, None if it may still be arriving,
    False when it can never become JSON (so the handler answers it as garbage)."""
    text = bytes(buf).lstrip()
    if not text:
        return None
    if text[:1] not in (b"{", b"["):
        return False
    depth = 0
    in_str = escape = False
    for byte in text:
        if in_str:
            if escape:
                escape = False
            elif byte == 0x5C:  # backslash
                escape = True
            elif byte == 0x22:
                in_str = False
        elif byte == 0x22:
            in_str = True
        elif byte in (0x7B, 0x5B):
            depth += 1
        elif byte in (0x7D, 0x5D):
            depth -= 1
            if depth == 0:
                return True
    return None


def _garble(payload: bytes) -> bytes:
    """What a firmware with a broken JSON writer sends: cut short, with a stray brace."""
    cut = max(1, len(payload) // 2)
    return payload[:cut] + b',"}\x00'


HostHandler = Callable[[HttpRequest], HttpResponse | None]
"""Port 80 of a device that is not a rig (a smart plug); None = do not answer."""

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>; not in Python's socket module
_SKF_NET_OFF = -0x100000  # classic BPF: loads relative to the network (IPv4) header
MAX_BLOCKS = 254
BLOCK_RIGS = 256 * 254  # loopback addresses in 127.N.0.0/16 without .0 and .255 host bytes


def block_base(block: int) -> str:
    """The first rig address of address block ``block``: 127.(block + 1).0.1."""
    if not 0 <= block < MAX_BLOCKS:
        raise ValueError(f"block must be 0..{MAX_BLOCKS - 1}, got {block}")
    return f"127.{block + 1}.0.1"


def _steer_by_block() -> bytes:
    """A classic BPF program for a SO_REUSEPORT group: a connection to 127.N.x.y goes to the
    group's socket number N - 1, i.e. the simulator process of block N - 1 (sockets join the
    group in the order their processes start listening)."""

    def insn(code: int, k: int) -> bytes:
        return struct.pack("HBBI", code, 0, 0, k & 0xFFFFFFFF)

    return b"".join(
        [
            insn(0x20, _SKF_NET_OFF + 16),  # ld [net + 16]: the IPv4 destination address
            insn(0x74, 16),  # rsh #16
            insn(0x54, 0xFF),  # and #0xff: its second byte, N
            insn(0x14, 1),  # sub #1
            insn(0x16, 0),  # ret a
        ]
    )


def _attach_steering(sock: socket.socket) -> None:
    program = _steer_by_block()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


class FleetServer:
    """Owns the listening sockets of one simulated fleet."""

    def __init__(self, fleet: Fleet, handlers: Mapping[str, MakeHandlers]) -> None:
        self.fleet = fleet
        self.handlers = dict(handlers)
        self.stats = ServerStats()
        self.open_conns: set[_Conn] = set()
        self.http_hosts: dict[str, HostHandler] = {}
        """Devices other than rigs answering on the web port, by address (smart plugs)."""
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None

    async def start(
        self,
        host: str = "0.0.0.0",
        ports: Mapping[int, type[_Conn]] | None = None,
        block: int | None = None,
    ) -> None:
        """Listen on every port (4028, 80, 4433 by default) on ``host``.

        ``block`` set: this is one of several simulator processes sharing the ports, each
        serving the address block 127.(block + 1).0.0/16; the listening sockets join a
        SO_REUSEPORT group whose filter hands each connection to its block's process.
        Processes must start listening in block order (simulator/launch.py does).
        """
        loop = asyncio.get_running_loop()
        classes = ports or {RPC_PORT: RpcConn, WEB_PORT: HttpConn, V3_PORT: FramedConn}
        for port, cls in classes.items():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if block is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(4096)
            if block is not None:
                _attach_steering(sock)
            sock.setblocking(False)

            def factory(cls: type[_Conn] = cls) -> asyncio.Protocol:
                return cls(self)

            self._servers.append(await loop.create_server(factory, sock=sock, backlog=4096))
        self._sweeper = asyncio.create_task(self._sweep_idle())

    async def _sweep_idle(self) -> None:
        # Clients that vanish without closing would otherwise pin file descriptors forever.
        while True:
            await asyncio.sleep(5.0)
            cutoff = time.monotonic() - IDLE_TIMEOUT_S
            for conn in [c for c in self.open_conns if c.last_active < cutoff]:
                if conn.transport is not None:
                    conn.transport.abort()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        for conn in list(self.open_conns):
            if conn.transport is not None:
                conn.transport.abort()
        for server in self._servers:
            await server.wait_closed()
