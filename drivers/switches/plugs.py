"""Smart plugs over HTTP: Shelly Gen2+ (RPC) and Tasmota (``/cm?cmnd=``).

Shelly Gen2+ (Plus, Pro and Gen3 devices): ``POST /rpc`` with a JSON-RPC 2.0 frame,
``Switch.GetStatus`` (``output``, ``apower`` in W on metering models) and ``Switch.Set``
(``on``); switches are numbered from 0; an error reply carries ``error.code`` and
``error.message``. Digest auth (user ``admin``) when the device has a password.

Tasmota: ``GET /cm?cmnd=Power<n>`` answers ``{"POWER<n>": "ON"}`` (``{"POWER": ...}`` on a
single-relay device), ``Power<n> On|Off`` switches; ``Status 8`` (``Status 10`` on newer
releases) reports ``StatusSNS.ENERGY.Power`` in W on metering models (a list with one entry per
channel on multi-channel ones). Relays are numbered from 1. A web password goes in the query
(``user``/``password``), as Tasmota expects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from drivers.switches.base import OutletReading, PowerSwitch
from drivers.transport import DriverError
from policies.values import FailureKind

MAX_REPLY = 64 * 1024


class _HttpSwitch(PowerSwitch):
    metered = True

    def __init__(
        self,
        name: str,
        address: str,
        outlets: tuple[int, ...],
        password: str | None = None,
        port: int = 80,
        metered: bool = True,
    ) -> None:
        super().__init__(name, address, outlets)
        self.password = password
        self.port = port
        self.metered = metered
        host = f"[{address}]" if ":" in address else address
        self.base = f"http://{host}:{port}"

    async def _get_json(
        self,
        method: str,
        path: str,
        timeout_s: float,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        auth: httpx.Auth | None = None,
    ) -> Any:
        try:
            async with httpx.AsyncClient(timeout=timeout_s, auth=auth) as client:
                resp = await client.request(
                    method,
                    self.base + path,
                    params=params,
                    content=None if body is None else json.dumps(body),
                )
        except httpx.TimeoutException:
            raise DriverError(
                FailureKind.TIMEOUT, f"{self.label}: no answer within {timeout_s:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise DriverError(
                FailureKind.UNREACHABLE, f"{self.label}: {type(exc).__name__}: {exc}"
            ) from None
        if resp.status_code == 401:
            raise DriverError(
                FailureKind.BAD_REPLY, f"{self.label}: HTTP 401: the password is wrong or missing"
            )
        if resp.status_code != 200:
            raise DriverError(
                FailureKind.BAD_REPLY, f"{self.label}: HTTP {resp.status_code} for {path}"
            )
        if len(resp.content) > MAX_REPLY:
            raise DriverError(FailureKind.BAD_REPLY, f"{self.label}: reply larger than 64 KiB")
        try:
            return json.loads(resp.content)
        except ValueError:
            raise DriverError(
                FailureKind.BAD_REPLY,
                f"{self.label}: reply to {path} is not JSON: {resp.content[:80]!r}",
            ) from None

    def bad(self, what: str) -> DriverError:
        return DriverError(FailureKind.BAD_REPLY, f"{self.label}: {what}")


class ShellyGen2(_HttpSwitch):
    kind = "shelly"

    async def _rpc(self, method: str, params: dict[str, Any], timeout_s: float) -> Any:
        auth = httpx.DigestAuth("admin", self.password) if self.password else None
        frame = {"id": 1, "method": method, "params": params}
        reply = await self._get_json("POST", "/rpc", timeout_s, body=frame, auth=auth)
        if not isinstance(reply, dict):
            raise self.bad(f"{method}: reply is not a JSON object")
        if "error" in reply:
            err = reply["error"]
            code = err.get("code") if isinstance(err, dict) else None
            message = err.get("message") if isinstance(err, dict) else err
            raise self.bad(f"{method} refused: error {code}: {message}")
        if "result" not in reply:
            raise self.bad(f"{method}: reply has neither result nor error")
        return reply["result"]

    async def read_outlets(self, *, timeout_s: float) -> Mapping[int, OutletReading]:
        readings: dict[int, OutletReading] = {}
        for n in self.outlets:
            status = await self._rpc("Switch.GetStatus", {"id": n}, timeout_s)
            if not isinstance(status, dict) or not isinstance(status.get("output"), bool):
                raise self.bad(f"Switch.GetStatus id {n}: no boolean 'output' in {status!r:.80}")
            power: float | None = None
            if self.metered:
                raw = status.get("apower")
                if not isinstance(raw, int | float) or isinstance(raw, bool) or raw < 0:
                    raise self.bad(f"Switch.GetStatus id {n}: 'apower' is {raw!r}, not watts")
                power = float(raw)
            readings[n] = OutletReading(n, status["output"], power)
        return readings

    async def set_outlet(self, outlet: int, on: bool, *, timeout_s: float) -> None:
        self.check_outlet(outlet)
        result = await self._rpc("Switch.Set", {"id": outlet, "on": on}, timeout_s)
        if not isinstance(result, dict) or "was_on" not in result:
            raise self.bad(f"Switch.Set id {outlet}: unexpected result {result!r:.80}")


class Tasmota(_HttpSwitch):
    kind = "tasmota"

    async def _cmnd(self, command: str, timeout_s: float) -> dict[str, Any]:
        params = {"cmnd": command}
        if self.password:
            params |= {"user": "admin", "password": self.password}
        reply = await self._get_json("GET", "/cm", timeout_s, params=params)
        if not isinstance(reply, dict):
            raise self.bad(f"{command}: reply is not a JSON object")
        if "WARNING" in reply:
            raise self.bad(f"{command} refused: {reply['WARNING']}")
        if reply.get("Command") in ("Error", "Unknown"):
            raise self.bad(f"{command} refused: Command {reply['Command']}")
        return reply

    def _state(self, reply: dict[str, Any], outlet: int) -> bool:
        for key in (f"POWER{outlet}", "POWER") if outlet == 1 else (f"POWER{outlet}",):
            value = reply.get(key)
            if value in ("ON", "OFF"):
                return bool(value == "ON")
        raise self.bad(f"Power{outlet}: no ON/OFF for relay {outlet} in {reply!r:.80}")

    async def read_outlets(self, *, timeout_s: float) -> Mapping[int, OutletReading]:
        energy: dict[str, Any] | None = None
        if self.metered:
            status = await self._cmnd("Status 8", timeout_s)
            sns = status.get("StatusSNS")
            energy = sns.get("ENERGY") if isinstance(sns, dict) else None
            if not isinstance(energy, dict):
                raise self.bad("Status 8: no StatusSNS.ENERGY (is this a metering plug?)")
        readings: dict[int, OutletReading] = {}
        for n in self.outlets:
            on = self._state(await self._cmnd(f"Power{n}", timeout_s), n)
            power: float | None = None
            if energy is not None:
                raw = energy.get("Power")
                if isinstance(raw, list):
                    raw = raw[n - 1] if 0 < n <= len(raw) else None
                if not isinstance(raw, int | float) or isinstance(raw, bool) or raw < 0:
                    raise self.bad(f"Status 8: ENERGY.Power for relay {n} is {raw!r}, not watts")
                power = float(raw)
            readings[n] = OutletReading(n, on, power)
        return readings

    async def set_outlet(self, outlet: int, on: bool, *, timeout_s: float) -> None:
        self.check_outlet(outlet)
        reply = await self._cmnd(f"Power{outlet} {'On' if on else 'Off'}", timeout_s)
        self._state(reply, outlet)  # the relay's state after the command, or a clear error
