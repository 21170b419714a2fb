"""An observer worker: one process that owns a fixed share of the rigs and their connections.

The controller (daemon/workers.py) starts it as ``python -m daemon.observe_worker --fd N``
with one end of a socket pair as file descriptor N, and speaks to it in frames:

    frame = length:u32 kind:u8 payload          (length counts the payload only)

controller -> worker
    ``A`` assign   JSON {"put": [identity, ...], "drop": [address, ...]}: the rigs it owns
    ``C`` cycle    JSON {"id", "now", "settings", "addresses"}: read them (null: all it owns)
    ``X`` apply    JSON {"id", "address", "mode", "power_limit_w", "timeout_s"}: a command
worker -> controller
    ``R`` readings u32 id, u32 json_len, JSON {"identities": [...]}, readings buffer
                   (daemon/readings.py); the identities are rigs it re-identified this cycle
    ``Y`` applied  JSON {"id", "ok"|"unsupported"|"error", ...}: the command's outcome

Reads and commands use the same :class:`~daemon.observer.Observer` and drivers as everywhere
else: the worker holds an Observer over the identities it was given, so deadlines, retries,
the circuit breakers and a driver's per-rig state (what it last set) live with the rig's
connections. The worker decides nothing. It exits when the controller's end closes (the
controller stopped or died), so a worker never outlives its daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

import structlog

from daemon import readings as codec
from daemon.gctune import tune_gc
from daemon.observer import Observer, ObserverSettings
from drivers.base import UnsupportedMode
from drivers.inventory import Inventory
from drivers.transport import DriverError
from policies.values import FailureKind, Identity, Mode

log = structlog.get_logger("observe_worker")

FRAME = struct.Struct("<IB")
READINGS_HEAD = struct.Struct("<II")
MAX_FRAME = 1 << 30

ASSIGN, CYCLE, APPLY = b"A", b"C", b"X"
READINGS, APPLIED, ALIVE = b"R", b"Y", b"H"

ALIVE_EVERY_S = 1.0
"""A worker says it is alive this often (an empty ``ALIVE`` frame, written by its event loop),
so the controller tells a hung worker from a slow cycle (``daemon/workers.py``)."""


class FrameError(ValueError):
    """A frame that breaks the protocol (too long, unknown kind, bad JSON)."""


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The next frame's kind and payload; IncompleteReadError when the other end closed."""
    head = await reader.readexactly(FRAME.size)
    length, kind = FRAME.unpack(head)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes is longer than {MAX_FRAME}")
    return bytes([kind]), await reader.readexactly(length)


def frame(kind: bytes, payload: bytes) -> bytes:
    return FRAME.pack(len(payload), kind[0]) + payload


def settings_doc(settings: ObserverSettings) -> dict[str, Any]:
    return {
        "concurrency": settings.concurrency,
        "timeout_s": settings.timeout_s,
        "open_after": settings.open_after,
        "base_backoff_s": settings.base_backoff_s,
        "max_backoff_s": settings.max_backoff_s,
        "reidentify_timeout_s": settings.reidentify_timeout_s,
    }


class _Clock:
    """The controller's clock as of the last cycle request, advanced by this process's
    monotonic clock: readings are stamped on the controller's time scale."""

    def __init__(self) -> None:
        self.base, self.mono = time.time(), time.monotonic()

    def set(self, now: float) -> None:
        self.base, self.mono = now, time.monotonic()

    def __call__(self) -> float:
        return self.base + (time.monotonic() - self.mono)


class Worker:
    """The worker's state: its share of the rigs (an Observer over them)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.clock = _Clock()
        self.observer = Observer(Inventory(), clock=self.clock)
        self.assigned: dict[str, Identity] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def assign(self, doc: dict[str, Any]) -> None:
        inventory = self.observer.inventory
        for address in doc.get("drop", []):
            inventory.forget(str(address))
            self.assigned.pop(str(address), None)
        for raw in doc.get("put", []):
            identity = Identity.from_dict(raw)
            inventory.put(identity)
            self.assigned[identity.address] = identity
        self.observer.sync_drivers()
        tune_gc()  # as the daemon does: the drivers are the long-lived heap (daemon/gctune.py)

    async def cycle(self, doc: dict[str, Any]) -> None:
        self.clock.set(float(doc["now"]))
        self.observer.settings = ObserverSettings(**doc["settings"])
        addresses = doc.get("addresses")
        targets: Sequence[str] | None = None if addresses is None else [str(a) for a in addresses]
        result = await self.observer.cycle(targets)
        changed = []
        for address, driver in self.observer.drivers.items():
            if driver.identity is not self.assigned.get(address):
                self.assigned[address] = driver.identity
                changed.append(driver.identity.as_dict())
        meta = json.dumps({"identities": changed}).encode()
        body = codec.encode(result.readings.items())
        await self.send(READINGS, READINGS_HEAD.pack(int(doc["id"]), len(meta)) + meta + body)

    async def apply(self, doc: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": doc["id"]}
        driver = self.observer.drivers.get(str(doc["address"]))
        try:
            if driver is None:
                raise DriverError(
                    FailureKind.UNKNOWN_MINER,
                    f"observer worker has no driver for {doc['address']}",
                )
            limit = doc.get("power_limit_w")
            result = await driver.apply(
                Mode(doc["mode"]), None if limit is None else int(limit), float(doc["timeout_s"])
            )
            reply |= {
                "ok": True,
                "sent": result.sent,
                "mode": result.mode.value,
                "power_limit_w": result.power_limit_w,
                "detail": result.detail,
            }
        except UnsupportedMode as exc:
            reply |= {"unsupported": str(exc)}
        except DriverError as exc:
            reply |= {"error": exc.kind.value, "detail": exc.detail}
        except Exception as exc:  # a driver bug: the controller's actuator reports it
            log.exception("rig.command_crashed", rig=doc.get("address"))
            reply |= {"crash": f"{type(exc).__name__}: {exc}"}
        await self.send(APPLIED, json.dumps(reply).encode())

    async def send(self, kind: bytes, payload: bytes) -> None:
        self.writer.write(frame(kind, payload))
        await self.writer.drain()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("observe_worker.task_failed", error=repr(task.exception()))


async def serve(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    worker = Worker(writer)
    worker.spawn(_say_alive(writer))
    try:
        while True:
            try:
                kind, payload = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the controller closed its end: stop
            doc = json.loads(payload)
            if kind == ASSIGN:
                worker.assign(doc)
            elif kind == CYCLE:
                worker.spawn(worker.cycle(doc))
            elif kind == APPLY:
                worker.spawn(worker.apply(doc))
            else:
                raise FrameError(f"unknown frame kind {kind!r}")
    finally:
        for task in list(worker.tasks):
            task.cancel()
        writer.close()


async def _say_alive(writer: asyncio.StreamWriter) -> None:
    """An ``ALIVE`` frame every :data:`ALIVE_EVERY_S` while the event loop runs."""
    while True:
        writer.write(frame(ALIVE, b""))
        await writer.drain()
        await asyncio.sleep(ALIVE_EVERY_S)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m daemon.observe_worker", description=__doc__)
    p.add_argument("--fd", type=int, required=True, help="this worker's end of the socket pair")
    p.add_argument("--index", type=int, default=0, help="the worker's number (for its logs)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-json", choices=("auto", "yes", "no"), default="auto")
    args = p.parse_args(argv)
    from daemon.logsetup import configure_logging

    json_logs = {"auto": None, "yes": True, "no": False}[args.log_json]
    configure_logging(level=args.log_level, json=json_logs, stream=sys.stderr)
    structlog.contextvars.bind_contextvars(observer_worker=args.index)

    asyncio.run(serve(args.fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
