"""The simulator's control API: JSON over HTTP on a unix socket.

A unix socket lives in the file system, so the API is reachable from outside the simulator's
network namespace. Routes (all bodies and replies JSON):

- ``GET /health``                                -> ``{"ok": true}``
- ``GET /rigs``                                  -> identities of all rigs
- ``GET /rigs/{address}``                        -> the rig's true physical state and counters
- ``PUT /rigs/{address}/faults/{fault}``         -> give the rig a fault (body: its parameters)
- ``DELETE /rigs/{address}/faults/{fault}``      -> clear one fault
- ``DELETE /rigs/{address}/faults``              -> clear all faults
- ``POST /rigs/{address}/reboot``                -> reboot the rig
- ``POST /rigs/{address}/reset``                 -> back to factory state: normal mode, no faults,
  counters zeroed (tests use it to isolate themselves)
- ``PUT /rigs/{address}/ambient``                -> ``{"ambient_c": 35}``
- ``GET /stats``                                 -> process CPU, request counters, clock
- ``POST /counters/reset``                       -> zero every rig's and the server's counters
- ``PUT /clock``                                 -> ``{"time_scale": 10}`` to change the scale,
  ``{"advance_s": 30}`` to jump simulated time ahead at once (a test's "30 s later" without
  waiting 30 s / scale of wall time); either or both
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import time
from pathlib import Path
from typing import Any, cast

from simulator.fleet import Fleet
from simulator.httpwire import HttpError, format_response, parse_request
from simulator.protocol import HttpRequest, HttpResponse
from simulator.rig import Counters, Fault, SimRig
from simulator.server import FleetServer, ServerStats
from simulator.switches import SimSwitch, SwitchFault, reset_outlets


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(status: int, value: Any) -> HttpResponse:
    return HttpResponse(status, json.dumps(value).encode(), {"Content-Type": "application/json"})


class ControlApi:
    """Routes control requests to the fleet and its server."""

    def __init__(self, fleet: Fleet, server: FleetServer) -> None:
        self.fleet = fleet
        self.server = server

    def handle(self, req: HttpRequest) -> HttpResponse:
        try:
            return _json(200, self._route(req))
        except ApiError as exc:
            return _json(exc.status, {"error": str(exc)})

    def _body(self, req: HttpRequest) -> dict[str, Any]:
        if not req.body:
            return {}
        try:
            value = json.loads(req.body)
        except ValueError as exc:
            raise ApiError(400, f"body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ApiError(400, "body must be a JSON object")
        return value

    def _rig(self, address: str) -> SimRig:
        rig = self.fleet.by_address.get(address)
        if rig is None:
            raise ApiError(404, f"no simulated rig at {address}")
        return rig

    def _switch(self, address: str) -> SimSwitch:
        sw = self.fleet.switches.by_address.get(address)
        if sw is None:
            raise ApiError(404, f"no simulated switch at {address}")
        return sw

    def _route(self, req: HttpRequest) -> Any:  # noqa: C901, PLR0911, PLR0912, PLR0915  the control API's routes, one case each
        parts = [p for p in req.path.split("/") if p]
        method = req.method
        match parts:
            case ["health"] if method == "GET":
                return {"ok": True}
            case ["rigs"] if method == "GET":
                return [r.identity() for r in self.fleet.rigs]
            case ["rigs", address] if method == "GET":
                return self._rig(address).true_state()
            case ["rigs", address, "faults", name] if method in ("PUT", "DELETE"):
                rig = self._rig(address)
                try:
                    fault = Fault(name)
                except ValueError:
                    known = ", ".join(f.value for f in Fault)
                    raise ApiError(400, f"unknown fault {name!r}; known: {known}") from None
                if method == "PUT":
                    try:
                        rig.set_fault(fault, self._body(req))
                    except (TypeError, ValueError) as exc:
                        raise ApiError(400, f"fault {name}: {exc}") from None
                else:
                    rig.clear_fault(fault)
                return rig.true_state()
            case ["rigs", address, "faults"] if method == "DELETE":
                rig = self._rig(address)
                rig.clear_faults()
                return rig.true_state()
            case ["rigs", address, "reboot"] if method == "POST":
                rig = self._rig(address)
                rig.reboot()
                return rig.true_state()
            case ["rigs", address, "reset"] if method == "POST":
                rig = self._rig(address)
                rig.factory_reset()
                reset_outlets(rig)
                for outlet in rig.outlets:
                    for sw in self.fleet.switches.switches:
                        if outlet in sw.outlets.values():
                            sw.unreachable = False
                return rig.true_state()
            case ["switches"] if method == "GET":
                return [sw.state() for sw in self.fleet.switches.switches]
            case ["switches", address] if method == "GET":
                state = self._switch(address).state()
                agent = self.fleet.switches.agents.get(address)
                if agent is not None:  # what the SNMP agent answered, for tests and benchmarks
                    state["snmp"] = {"requests": agent.requests, "sets": agent.sets}
                return state
            case ["switches", address, "outlets", number] if method == "PUT":
                sw = self._switch(address)
                on = self._body(req).get("on")
                if not isinstance(on, bool) or not number.isdigit():
                    raise ApiError(400, 'expected PUT /switches/ADDR/outlets/N {"on": true|false}')
                if int(number) not in sw.outlets:
                    raise ApiError(404, f"switch {address} has no outlet {number}")
                sw.switch(int(number), on)
                return sw.state()
            case ["switches", address, "faults", name] if method in ("PUT", "DELETE"):
                sw = self._switch(address)
                try:
                    switch_fault = SwitchFault(name)
                except ValueError:
                    known = ", ".join(f.value for f in SwitchFault)
                    raise ApiError(400, f"unknown switch fault {name!r}; known: {known}") from None
                try:
                    if method == "PUT":
                        sw.set_fault(switch_fault, self._body(req))
                    else:
                        sw.clear_fault(switch_fault, self._body(req))
                except ValueError as exc:
                    raise ApiError(400, str(exc)) from None
                return sw.state()
            case ["rigs", address, "ambient"] if method == "PUT":
                rig = self._rig(address)
                body = self._body(req)
                try:
                    rig.set_ambient(float(body["ambient_c"]))
                except (KeyError, TypeError, ValueError):
                    raise ApiError(400, 'expected {"ambient_c": <number>}') from None
                return rig.true_state()
            case ["rigs", address, "power_factor"] if method == "PUT":
                rig = self._rig(address)
                factor = self._body(req).get("power_factor")
                if not isinstance(factor, int | float) or not _is_number(factor):
                    raise ApiError(400, 'expected {"power_factor": <number between 0.5 and 2>}')
                try:
                    rig.set_power_factor(float(factor))
                except ValueError as exc:
                    raise ApiError(400, str(exc)) from None
                return rig.true_state()
            case ["stats"] if method == "GET":
                return self.stats()
            case ["counters", "reset"] if method == "POST":
                for rig in self.fleet.rigs:
                    rig.counters = Counters()
                self.server.stats = ServerStats()
                return self.stats()
            case ["clock"] if method == "PUT":
                return self._clock(self._body(req))
        raise ApiError(404, f"no route {method} {req.path}")

    def _clock(self, body: dict[str, Any]) -> dict[str, Any]:
        """PUT /clock: a new scale, a jump ahead, or both."""
        scale = body.get("time_scale")
        advance = body.get("advance_s")
        usage = 'expected {"time_scale": <positive number>, "advance_s": <seconds >= 0>}'
        if scale is None and advance is None:
            raise ApiError(400, usage)
        if scale is not None and (not _is_number(scale) or scale <= 0):
            raise ApiError(400, f"time_scale must be a positive number: {usage}")
        if advance is not None and (not _is_number(advance) or advance < 0):
            raise ApiError(400, f"advance_s must be a number >= 0: {usage}")
        if scale is not None:
            self.fleet.clock.set_scale(float(scale))
        if advance is not None:
            self.fleet.clock.advance(float(advance))
        return self.stats()

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        s = self.server.stats
        return {
            "pid": os.getpid(),
            "rigs": len(self.fleet),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 4),
            "rss_mb": round(usage.ru_maxrss / 1024.0, 1),
            "uptime_s": round(time.monotonic() - s.started_wall, 3),
            "connections": s.connections,
            "requests": s.requests,
            "requests_by_port": {str(k): v for k, v in s.by_port.items()},
            "handler_errors": s.errors,
            "open_connections": len(self.server.open_conns),
            "time_scale": self.fleet.clock.scale,
            "sim_time_s": round(self.fleet.clock.now(), 3),
            "reads": sum(r.counters.reads for r in self.fleet.rigs),
            "writes": sum(r.counters.writes for r in self.fleet.rigs),
        }


class _ControlConn(asyncio.Protocol):
    def __init__(self, api: ControlApi) -> None:
        self.api = api
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None:
            try:
                parsed = parse_request(self.buf)
            except HttpError as exc:
                resp = _json(exc.status, {"error": str(exc)})
                self.transport.write(format_response(resp, False)[0])
                self.transport.close()
                return
            if parsed is None:
                return
            req, keep_alive = parsed
            self.transport.write(format_response(self.api.handle(req), keep_alive)[0])
            if not keep_alive:
                self.transport.close()
                return


async def serve_control(api: ControlApi, path: Path) -> asyncio.Server:
    """Serve ``api`` on the unix socket ``path`` (replacing a stale socket file)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: _ControlConn(api), str(path))
    path.chmod(0o600)
    return server
