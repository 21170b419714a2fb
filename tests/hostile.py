"""Hostile rigs for the tests: servers that speak just enough of the miner protocols to be
taken for a rig, then misbehave. Written for the tests (the simulator models honest rigs).

Each rig listens on its own loopback address on port 4028, and optionally on 4433 (the same
behaviour) and 80. The simulator holds 0.0.0.0:4028 for every 127.x address, so the tests put
hostile rigs on the IPv6 loopback ``::1``. Behaviours:

- ``endless``: after the request, bytes forever (until the client hangs up);
- ``huge``: a 50 MB reply, then close;
- ``trickle``: one byte a second, never finishing;
- ``reply``: a fixed reply per command (a dict command -> bytes; ``*`` for any other), then close
  (a reply that lies: absurd numbers, ANSI sequences, wrong types...).

The servers run on their own event loop in a thread, so blocking CLI entry points and daemon
subprocesses can be pointed at them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

CHUNK = b"A" * 65536


@dataclass
class HostileRig:
    address: str
    behaviour: str
    replies: dict[str, bytes] = field(default_factory=dict)
    web: bytes | None = None  # a whole HTTP response for port 80, or None for no web UI
    v3: bool = False  # also on 4433 (btminer API v3), with the same behaviour


async def _read_command(reader: asyncio.StreamReader) -> str:
    try:
        data = await asyncio.wait_for(reader.read(4096), 2.0)
    except (TimeoutError, ConnectionError):
        return ""
    try:
        value = json.loads(data)
    except ValueError:
        return ""
    return str(value.get("command", value.get("cmd", ""))) if isinstance(value, dict) else ""


class HostileServer:
    """Runs hostile rigs on a background event loop."""

    def __init__(self, rigs: list[HostileRig]) -> None:
        self.rigs = rigs
        self.loop = asyncio.new_event_loop()
        self.servers: list[asyncio.Server] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.bytes_sent = 0

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        for rig in self.rigs:
            self.servers.append(
                await asyncio.start_server(functools.partial(self._rpc, rig), rig.address, 4028)
            )
            if rig.v3:
                self.servers.append(
                    await asyncio.start_server(functools.partial(self._rpc, rig), rig.address, 4433)
                )
            if rig.web is not None:
                self.servers.append(
                    await asyncio.start_server(functools.partial(self._web, rig), rig.address, 80)
                )

    def stop(self) -> None:
        async def _stop() -> None:
            for server in self.servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for server in self.servers:
                await server.wait_closed()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.bytes_sent += len(data)

    async def _rpc(
        self, rig: HostileRig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            command = await _read_command(reader)
            if rig.behaviour == "endless":
                while True:
                    await self._send(writer, CHUNK)
            elif rig.behaviour == "huge":
                for _ in range(50 * 1024 * 1024 // len(CHUNK)):
                    await self._send(writer, CHUNK)
            elif rig.behaviour == "trickle":
                while True:
                    await self._send(writer, b"{")
                    await asyncio.sleep(1.0)
            else:
                reply = rig.replies.get(command, rig.replies.get("*"))
                if reply is not None:
                    await self._send(writer, reply)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    async def _web(
        self, rig: HostileRig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
            assert rig.web is not None
            await self._send(writer, rig.web)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()


@contextmanager
def hostile(*rigs: HostileRig) -> Iterator[HostileServer]:
    server = HostileServer(list(rigs))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def cgminer(section: str, body: list[dict[str, Any]], status: str = "S") -> bytes:
    """A cgminer-style reply: ``{"STATUS": [...], section: body, "id": 1}`` with its NUL."""
    reply = {"STATUS": [{"STATUS": status, "Msg": section}], section: body, "id": 1}
    return json.dumps(reply).encode() + b"\x00"
