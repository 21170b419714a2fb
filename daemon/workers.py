"""The observer on every core: worker processes read the rigs, the controller decides.

``rigpilot run`` always observes through this pool (one path, however small the fleet):

- Each worker process (daemon/observe_worker.py) owns a fixed share of the rigs, chosen by a
  hash of the address, with their drivers and connections, and reads them with the same
  :class:`~daemon.observer.Observer` as anywhere else (deadlines, retries, circuit breakers,
  re-identification).
- A cycle sends each worker one request and gets back one buffer of struct-packed readings
  (daemon/readings.py), decoded here into the usual :class:`~daemon.observer.Cycle`.
- Commands fan out through the same workers: the actuator's drivers are :class:`RemoteDriver`
  stand-ins whose ``apply`` is sent to the worker that owns the rig, so a driver's per-rig
  state (what it last set, its web session) stays with the rig's reads. The controller keeps
  a local driver per rig only for what the loop asks without I/O (capabilities, catalogue
  entry, identity); it never speaks to a rig.
- A worker that dies is restarted; the rigs it owned are read as ``worker_lost`` failures for
  that cycle (never dropped), and a command it was sending fails (retried as any failed send,
  confirmed by observation). A worker that hangs (stopped, or its event loop stuck) is found
  by its silence: it says it is alive every second, and one silent for ``SILENT_AFTER_S`` is
  killed and restarted the same way; a cycle that is only slow is never cut short.

``workers = "auto"`` (the default) chooses with :func:`worker_count`. See docs/control-loop.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from daemon import readings as codec
from daemon.observe_worker import (
    ALIVE,
    APPLIED,
    APPLY,
    ASSIGN,
    CYCLE,
    READINGS,
    READINGS_HEAD,
    frame,
    read_frame,
    settings_doc,
)
from daemon.observer import Cycle, ObserverSettings, unidentified_reading
from drivers.base import ApplyResult, RigDriver, UnsupportedMode
from drivers.identify import driver_for
from drivers.inventory import Inventory
from drivers.transport import DriverError
from policies.values import (
    Capabilities,
    FailureKind,
    Identity,
    Mode,
    Observation,
    ObservationFailure,
    Reading,
)

log = structlog.get_logger("workers")

WorkersSetting = int | Literal["auto"]

AUTO_ONE_WORKER_UP_TO = 1_000
"""``auto`` runs one worker for a fleet up to this size (it reads 1,000 rigs in about 0.3 s
of CPU; more processes would only cost memory)."""
AUTO_RIGS_PER_WORKER = 1_000
AUTO_RESERVE_FROM_CORES = 4
"""``auto`` leaves one core to the controller from this many cores on."""
START_TIMEOUT_S = 60.0
SILENT_AFTER_S = 30.0
"""A worker that sends nothing, not even its once-a-second ``ALIVE`` frame, for this long is
hung (stopped, or its event loop stuck): it is killed and restarted, and the rigs it owned are
unread for that cycle. A slow cycle keeps saying it is alive and is never cut short."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_count(setting: WorkersSetting, rigs: int, cores: int) -> int:
    """How many worker processes observe ``rigs`` rigs on ``cores`` cores.

    A number is taken as it is. ``auto``: one worker up to AUTO_ONE_WORKER_UP_TO rigs; above,
    one per core (at most one per AUTO_RIGS_PER_WORKER rigs), less one core left to the
    controller from AUTO_RESERVE_FROM_CORES cores on. With two or three cores no core is
    reserved: the controller decides while the workers are idle (after the cycle) and spends
    only the decoding of their replies during it, so a reserved core would mostly idle.
    """
    if setting != "auto":
        return max(1, int(setting))
    if rigs <= AUTO_ONE_WORKER_UP_TO:
        return 1
    usable = cores - 1 if cores >= AUTO_RESERVE_FROM_CORES else cores
    return max(1, min(usable, math.ceil(rigs / AUTO_RIGS_PER_WORKER)))


def owner(address: str, workers: int) -> int:
    """The worker that owns ``address``: fixed for a given number of workers."""
    return zlib.crc32(address.encode()) % workers


class WorkerLost(Exception):
    """The worker process died (or could not be started) before answering."""


class _Proc:
    """One worker process and the socket the controller speaks to it over."""

    def __init__(self, index: int, silent_after_s: float = SILENT_AFTER_S) -> None:
        self.index = index
        self.silent_after_s = silent_after_s
        self.heard_at = time.monotonic()
        self.hung = ""  # why it was killed as hung, if it was
        self.watch_task: asyncio.Task[None] | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.reader_task: asyncio.Task[None] | None = None
        self.alive = False
        self.lost: str = ""
        self.on_death: Callable[[_Proc], None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, log_level: str, log_json: bool | None, module: str) -> None:
        parent, child = socket.socketpair()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                "--fd",
                str(child.fileno()),
                "--index",
                str(self.index),
                "--log-level",
                log_level,
                "--log-json",
                {None: "auto", True: "yes", False: "no"}[log_json],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                pass_fds=(child.fileno(),),
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        reader, self.writer = await asyncio.open_connection(sock=parent, limit=1 << 20)
        self.alive = True
        self.heard_at = time.monotonic()
        self.reader_task = asyncio.create_task(self._read(reader), name=f"worker-{self.index}")
        self.watch_task = asyncio.create_task(self._watch(), name=f"worker-{self.index}-watch")

    async def _watch(self) -> None:
        """Kill the worker once it has been silent for ``silent_after_s`` (it is hung)."""
        started = self.heard_at
        while self.alive:
            silent = time.monotonic() - self.heard_at
            # Until its first frame the worker is importing: it has START_TIMEOUT_S for that.
            allowed = self.silent_after_s if self.heard_at > started else START_TIMEOUT_S
            if silent >= allowed and self.proc is not None:
                self.hung = (
                    f"observer worker {self.index} (pid {self.pid}) sent nothing for "
                    f"{silent:.0f} s (hung): killed and restarted"
                )
                log.error("observe_worker.hung", worker=self.index, pid=self.pid, silent_s=silent)
                if self.proc.returncode is None:
                    self.proc.kill()
                return
            await asyncio.sleep(min(1.0, self.silent_after_s / 4))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, payload = await read_frame(reader)
                self.heard_at = time.monotonic()
                if kind == ALIVE:
                    continue
                if kind == READINGS:
                    request_id, _ = READINGS_HEAD.unpack_from(payload)
                elif kind == APPLIED:
                    request_id = int(json.loads(payload)["id"])
                else:
                    raise ValueError(f"unknown frame kind {kind!r} from observer worker")
                future = self.pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result(payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as exc:  # a broken frame: the worker cannot be trusted, end it
            log.error("observe_worker.broken_reply", worker=self.index, error=repr(exc))
            if self.proc is not None and self.proc.returncode is None:
                self.proc.kill()
        await self._died()

    async def _died(self) -> None:
        self.alive = False
        code: int | None = None
        if self.proc is not None:
            try:
                code = await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:  # its socket closed but it lives on: end it
                self.proc.kill()
                code = await self.proc.wait()
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        self.lost = self.hung or f"observer worker {self.index} (pid {self.pid}) died: {how}"
        for future in self.pending.values():
            if not future.done():
                future.set_exception(WorkerLost(self.lost))
        self.pending.clear()
        if self.writer is not None:
            self.writer.close()
        if self.on_death is not None:
            self.on_death(self)

    async def call(self, kind: bytes, request_id: int, payload: bytes) -> bytes:
        """Send one request and wait for its reply; WorkerLost if the worker dies first."""
        if not self.alive or self.writer is None:
            raise WorkerLost(self.lost or f"observer worker {self.index} is not running")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            self.writer.write(frame(kind, payload))
            await self.writer.drain()
        except ConnectionError:
            pass  # the reader notices the death and fails the future
        return await future

    async def send(self, kind: bytes, payload: bytes) -> None:
        if not self.alive or self.writer is None:
            return
        with contextlib.suppress(ConnectionError):
            self.writer.write(frame(kind, payload))
            await self.writer.drain()

    async def stop(self) -> None:
        self.on_death = None
        if self.watch_task is not None:
            self.watch_task.cancel()
        if self.writer is not None:
            self.writer.close()  # the worker exits when its end closes
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader_task


class RemoteDriver(RigDriver):
    """A rig's driver as the controller holds it: what the loop asks without I/O comes from a
    local driver of the same identity; reads and commands go to the worker that owns the rig."""

    def __init__(self, local: RigDriver, pool: ObserverPool) -> None:
        # The local driver did the catalogue lookups; share them rather than repeat them.
        self.identity = local.identity
        self.entry = local.entry
        self.expected_boards = local.expected_boards
        self.bounds = local.bounds
        self.local = local
        self.pool = pool
        self.name = local.name

    @property
    def capabilities(self) -> Capabilities:
        return self.local.capabilities

    async def observe(self, timeout_s: float, now: float) -> Observation:
        reading = (await self.pool.cycle([self.identity.address])).readings[self.identity.address]
        if isinstance(reading, ObservationFailure):
            raise DriverError(reading.kind, reading.detail)
        return reading

    async def apply(self, mode: Mode, power_limit_w: int | None, timeout_s: float) -> ApplyResult:
        return await self.pool.apply(self.identity.address, mode, power_limit_w, timeout_s)


@dataclass
class ObserverPool:
    """Reads every rig of an inventory once per :meth:`cycle`, through worker processes.

    The interface is :class:`~daemon.observer.Observer`'s (``drivers``, ``sync_drivers``,
    ``cycle``, ``settings``), plus :meth:`close`. Workers start at the first cycle.
    """

    inventory: Inventory
    settings: ObserverSettings = field(default_factory=ObserverSettings)
    workers: WorkersSetting = "auto"
    clock: Callable[[], float] = time.time
    log_level: str = "info"
    log_json: bool | None = None
    worker_module: str = "daemon.observe_worker"
    """What each worker runs (``python -m``); tests give a worker that breaks the protocol."""
    silent_after_s: float = SILENT_AFTER_S
    drivers: dict[str, RigDriver] = field(default_factory=dict)
    procs: list[_Proc] = field(default_factory=list)
    _given: list[dict[str, Identity]] = field(default_factory=list)
    _restarts: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    _next_id: int = 0
    _owners: dict[str, int] = field(default_factory=dict)  # address -> worker, cached
    _dirty: bool = True  # drivers changed since the workers were last told
    commands_sent: int = 0
    """Commands handed to a worker since the start (dry-run hands none)."""

    @property
    def size(self) -> int:
        return len(self.procs)

    def sync_drivers(self) -> None:
        """Create drivers for new inventory entries and drop those no longer listed (the
        workers are told at the next cycle or command)."""
        for address, identity in self.inventory.rigs.items():
            driver = self.drivers.get(address)
            if driver is None or driver.identity != identity:
                self.drivers[address] = RemoteDriver(driver_for(identity), self)
                self._dirty = True
        for address in [a for a in self.drivers if a not in self.inventory.rigs]:
            del self.drivers[address]
            self._dirty = True

    def owner_of(self, address: str) -> int:
        """The worker that owns ``address`` (:func:`owner`, cached)."""
        index = self._owners.get(address)
        if index is None:
            index = self._owners[address] = owner(address, self.size)
        return index

    async def start(self) -> None:
        """Start the workers (done by the first cycle; idempotent)."""
        if self.procs:
            return
        self.sync_drivers()
        rigs = len(self.inventory.addresses())
        n = worker_count(self.workers, rigs, usable_cores())
        self.procs = [_Proc(i) for i in range(n)]
        self._given = [{} for _ in range(n)]
        await asyncio.gather(*(self._start_one(i) for i in range(n)))
        log.info("observe_workers.started", workers=n, rigs=rigs, pids=[p.pid for p in self.procs])

    async def _start_one(self, index: int) -> None:
        old = self.procs[index]
        if old.alive:  # never two processes for one share
            await old.stop()
        proc = _Proc(index, self.silent_after_s)
        proc.on_death = self._on_death
        self.procs[index] = proc
        self._given[index] = {}
        try:
            await asyncio.wait_for(
                proc.start(self.log_level, self.log_json, self.worker_module), START_TIMEOUT_S
            )
        except Exception as exc:
            proc.lost = f"observer worker {index} could not be started: {exc!r}"
            log.error("observe_worker.start_failed", worker=index, error=repr(exc))
            await proc.stop()
            return
        await self._flush_one(index)

    def _on_death(self, proc: _Proc) -> None:
        if self.procs[proc.index] is not proc:
            return
        log.error("observe_worker.died", worker=proc.index, detail=proc.lost)
        running = self._restarts.get(proc.index)
        if running is None or running.done():
            self._restarts[proc.index] = asyncio.create_task(self._restart(proc.index))

    async def _restart(self, index: int) -> None:
        await self._start_one(index)
        if self.procs[index].alive:
            log.info("observe_worker.restarted", worker=index, pid=self.procs[index].pid)

    async def _ready(self) -> None:
        """Workers started, restarts finished (a worker that could not be started is tried
        once more), and every worker told about its rigs."""
        await self.start()
        for index in range(self.size):
            task = self._restarts.pop(index, None)
            if task is not None:
                with contextlib.suppress(Exception):
                    await task
            if not self.procs[index].alive and index not in self._restarts:
                await self._start_one(index)
        if self._dirty:
            self._dirty = False
            await asyncio.gather(*(self._flush_one(i) for i in range(self.size)))

    async def _flush_one(self, index: int) -> None:
        """Tell worker ``index`` which of its rigs were added, changed or dropped."""
        proc, given = self.procs[index], self._given[index]
        if not proc.alive:
            return
        mine = {a: d.identity for a, d in self.drivers.items() if self.owner_of(a) == index}
        put = [i for a, i in mine.items() if given.get(a) is not i]
        drop = [a for a in given if a not in mine]
        if not put and not drop:
            return
        doc = {"put": [i.as_dict() for i in put], "drop": drop}
        await proc.send(ASSIGN, json.dumps(doc).encode())
        for address in drop:
            del given[address]
        for identity in put:
            given[identity.address] = identity

    def _request_id(self) -> int:
        self._next_id = (self._next_id + 1) % (1 << 32)
        return self._next_id

    async def cycle(self, addresses: Iterable[str] | None = None) -> Cycle:
        """Observe every rig (or ``addresses``): each worker reads its share, at once."""
        await self._ready()
        if addresses is None:
            unknown = self.inventory.unidentified
            targets = [*self.drivers, *(a for a in unknown if a not in self.drivers)]
        else:
            targets = list(addresses)
        started = self.clock()
        t0 = time.monotonic()
        n = self.size
        shares: list[list[str]] = [[] for _ in range(n)]
        for address in targets:
            if address in self.drivers:
                shares[self.owner_of(address)].append(address)
        per_worker = ObserverSettings(
            **{
                **settings_doc(self.settings),
                "concurrency": math.ceil(self.settings.concurrency / n),
            }
        )
        settings = settings_doc(per_worker)
        results = await asyncio.gather(
            *(
                self._cycle_one(i, shares[i], addresses is None, started, settings)
                for i in range(n)
                if shares[i]
            )
        )
        got: dict[str, Reading] = {}
        for part in results:
            got.update(part)
        readings: dict[str, Reading] = {}
        for address in targets:
            reading = got.get(address)
            if reading is None:
                if address in self.drivers:  # its worker did not say: unread, never dropped
                    reading = ObservationFailure(
                        address,
                        FailureKind.WORKER_LOST,
                        "missing from its observer worker's reply",
                        started,
                        self.drivers[address].identity,
                    )
                else:
                    reading = unidentified_reading(self.inventory, address, started)
            readings[address] = reading
        return Cycle(readings, started, time.monotonic() - t0)

    async def _cycle_one(
        self, index: int, share: list[str], everything: bool, now: float, settings: dict[str, Any]
    ) -> dict[str, Reading]:
        proc = self.procs[index]
        request_id = self._request_id()
        doc = {
            "id": request_id,
            "now": now,
            "settings": settings,
            "addresses": None if everything else share,
        }
        try:
            payload = await proc.call(CYCLE, request_id, json.dumps(doc).encode())
        except WorkerLost as exc:
            detail = f"{exc}; its rigs are read again next cycle"
            return {
                a: ObservationFailure(
                    a, FailureKind.WORKER_LOST, detail, now, self.drivers[a].identity
                )
                for a in share
                if a in self.drivers
            }
        try:
            return self._decoded(index, payload)
        except (codec.LayoutError, ValueError, KeyError, struct.error) as exc:
            # A reply that breaks the protocol: the worker cannot be trusted; replace it.
            log.error("observe_worker.broken_reply", worker=index, error=str(exc))
            if proc.proc is not None and proc.proc.returncode is None:
                proc.proc.kill()
            detail = f"observer worker {index} sent a broken reply ({exc}); it is restarted"
            return {
                a: ObservationFailure(
                    a, FailureKind.WORKER_LOST, detail, now, self.drivers[a].identity
                )
                for a in share
                if a in self.drivers
            }

    def _decoded(self, index: int, payload: bytes) -> dict[str, Reading]:
        """A readings frame's readings (LayoutError, ValueError, KeyError if it is broken).
        A rig dropped from the configuration since the worker read it keeps the identity the
        worker had; the cycle then leaves it out."""
        _, meta_len = READINGS_HEAD.unpack_from(payload)
        start = READINGS_HEAD.size
        meta = json.loads(payload[start : start + meta_len])
        changed = [Identity.from_dict(raw) for raw in meta.get("identities", [])]
        if changed:
            self._reidentified(index, changed)
        drivers, given = self.drivers, self._given[index]

        def identity_of(address: str) -> Identity | None:
            driver = drivers.get(address)
            return driver.identity if driver is not None else given.get(address)

        return dict(codec.decode(payload[start + meta_len :], identity_of))

    def _reidentified(self, index: int, identities: list[Identity]) -> None:
        """A worker re-identified rigs (their replies said they changed): keep the new
        identities, as the in-process observer does."""
        for identity in identities:
            self.inventory.put(identity)
            self.drivers[identity.address] = RemoteDriver(driver_for(identity), self)
            self._given[index][identity.address] = identity  # the worker has it already
        self.inventory.save()

    async def apply(
        self, address: str, mode: Mode, power_limit_w: int | None, timeout_s: float
    ) -> ApplyResult:
        """Send a command through the worker that owns ``address``; DriverError or
        UnsupportedMode as the driver raised them there."""
        await self._ready()
        index = self.owner_of(address)
        request_id = self._request_id()
        doc = {
            "id": request_id,
            "address": address,
            "mode": mode.value,
            "power_limit_w": power_limit_w,
            "timeout_s": timeout_s,
        }
        self.commands_sent += 1
        try:
            payload = await self.procs[index].call(APPLY, request_id, json.dumps(doc).encode())
        except WorkerLost as exc:
            raise DriverError(
                FailureKind.WORKER_LOST, f"{exc}; the command may not have gone"
            ) from None
        reply = json.loads(payload)
        if "unsupported" in reply:
            raise UnsupportedMode(str(reply["unsupported"]))
        if "error" in reply:
            raise DriverError(FailureKind(reply["error"]), str(reply["detail"]))
        if "crash" in reply:
            raise RuntimeError(str(reply["crash"]))
        limit = reply.get("power_limit_w")
        return ApplyResult(
            bool(reply["sent"]),
            Mode(reply["mode"]),
            None if limit is None else int(limit),
            str(reply.get("detail", "")),
        )

    async def close(self) -> None:
        """Stop every worker (they also stop by themselves if the controller dies)."""
        for task in self._restarts.values():
            task.cancel()
        self._restarts.clear()
        await asyncio.gather(*(p.stop() for p in self.procs), return_exceptions=True)
