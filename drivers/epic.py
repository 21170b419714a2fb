"""ePIC (ePIC Blockchain's PowerPlay firmware for Antminers, ``umcOS``): its HTTP API on port
4028, read and driven directly.

Read: one ``GET /summary`` per cycle (pyasic's ``get_data`` sends ``/summary``,
``/capabilities`` and ``/network``, each on a new HTTP client): hashrate and boards from
``HBs`` (MH/s; a board listed in ``HBStatus`` but not in ``HBs`` is dead), one temperature per
board (``HBs[].Temperature``, the board's hottest sensor: the board temperature and the rig's
hottest reading), fans from ``Fans Rpm``, reported watts from ``Power Supply Stats.Input
Power``, uptime from ``Session.Uptime``, the last error from ``Status.Last Error``, and the
mode from ``Status.Operating State`` and ``PerpetualTune``.

Modes: ``sleep`` is ``POST /miner {"param": "Stop"}`` (``Operating State`` ``Idling``), and
waking is ``{"param": "Autostart"}``. ePIC tunes to a hashrate target (``PerpetualTune``, in
TH/s): ``normal`` is the model's ``Default Hashrate`` (``/capabilities``), ``low`` and ``high``
that target x ``policies.timing.MODE_FREQ`` (0.7 and 1.12), kept within the tuner's ``min`` ..
``max``; they are sent as ``POST /perpetualtune/algo`` with the algorithm the rig runs (and
``POST /perpetualtune true`` if the tuner is off). Observed, a target equal to the default is
normal, below it low, above it high; with the tuner off, the boards' clock against the
``Default Clock`` says the same. ePIC offers no power target (neither pyasic nor asic-rs sends
one; ``PresetInfo.Target Power`` is reported, not set), so ``limit`` is not offered.

Every POST carries the password (pyasic's ``default_epic_web_password``) in its JSON body;
ePIC answers ``{"result": bool, "error": ...}``, and a ``false`` result or an HTTP error is a
DriverError with the rig's own words.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pyasic import settings as pyasic_settings

from drivers.base import ApplyResult, RigDriver
from drivers.http1 import Http1, Request
from drivers.parse import Status, pad_boards
from drivers.stock import status_observation
from drivers.transport import DriverError
from drivers.webdigest import json_object
from policies import timing
from policies.values import Board, Capabilities, FailureKind, Mode, Observation, rig_text

API_PORT = 4028
MAX_FANS = 12
DETAIL_CHARS = 64  # a serial or MAC longer than this is cut (as identification does)


def password() -> str:
    """The password every POST carries: pyasic's setting, so both clients agree."""
    return str(pyasic_settings.get("default_epic_web_password", "letmein"))


@dataclass(frozen=True, slots=True)
class Tuning:
    """What ``/capabilities`` says about tuning: the default target and clock, the range."""

    default_ths: float
    default_clock: float
    min_ths: float
    max_ths: float

    def target(self, mode: Mode) -> int:
        """The hashrate target (TH/s, whole) that is ``mode`` (low / normal / high)."""
        goal = self.default_ths * timing.MODE_FREQ[mode.value]
        return round(min(self.max_ths, max(self.min_ths, goal)))


@dataclass(frozen=True, slots=True)
class EpicState:
    """What one ``/summary`` says: the status, the tuner (on, algorithm, target), the clock."""

    status: Status
    idle: bool
    tuner: bool
    algorithm: str | None
    target_ths: float | None
    clock_mhz: float | None

    def mode(self, tuning: Tuning) -> Mode:
        if self.idle:
            return Mode.SLEEP
        if self.tuner and self.target_ths is not None:
            ref, now = round(tuning.default_ths), round(self.target_ths)
        elif self.clock_mhz is not None:
            ref, now = round(tuning.default_clock), round(self.clock_mhz)
        else:
            return Mode.UNKNOWN
        return Mode.NORMAL if now == ref else Mode.LOW if now < ref else Mode.HIGH


def _bad(field: str, detail: str = "missing") -> DriverError:
    return DriverError(FailureKind.BAD_REPLY, f"summary {field}: {detail}")


def _obj(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(field, "not an object" if value is not None else "missing")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(field, f"not a number: {value!r}")
    return float(value)


def _opt_number(value: Any, field: str) -> float | None:
    return None if value is None else _number(value, field)


def tuning_of(capabilities: dict[str, Any]) -> Tuning:
    """The tuning facts of a ``/capabilities`` reply (BAD_REPLY if they are not there)."""
    where = "capabilities"
    default = capabilities.get("Default Hashrate")
    clock = capabilities.get("Default Clock")
    if isinstance(default, bool) or not isinstance(default, int | float) or default <= 0:
        raise DriverError(FailureKind.BAD_REPLY, f"{where} Default Hashrate: {default!r}")
    if isinstance(clock, bool) or not isinstance(clock, int | float) or clock <= 0:
        raise DriverError(FailureKind.BAD_REPLY, f"{where} Default Clock: {clock!r}")
    ranges = [
        (t.get("min"), t.get("max"))
        for t in capabilities.get("PerpetualTune") or []
        if isinstance(t, dict)
    ]
    lows = [float(lo) for lo, _ in ranges if isinstance(lo, int | float)]
    highs = [float(hi) for _, hi in ranges if isinstance(hi, int | float)]
    return Tuning(
        float(default),
        float(clock),
        max(lows) if lows else 0.0,
        min(highs) if highs else float("inf"),
    )


def epic_summary(reply: dict[str, Any], expected_boards: int | None = None) -> EpicState:
    """Parse a ``GET /summary`` reply."""
    status_obj = _obj(reply.get("Status"), "Status")
    state = status_obj.get("Operating State")
    if not isinstance(state, str):
        raise _bad("Status.Operating State", f"not a state: {state!r}")
    idle = state == "Idling"
    hbs = reply.get("HBs")
    if hbs is None:
        hbs = []
    if not isinstance(hbs, list):
        raise _bad("HBs", "not a list")
    boards: list[Board] = []
    for i, raw in enumerate(hbs):
        hb = _obj(raw, f"HBs[{i}]")
        index = hb.get("Index")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise _bad(f"HBs[{i}].Index", f"not an index: {index!r}")
        rate = hb.get("Hashrate")
        if not isinstance(rate, list) or not rate:
            raise _bad(f"HBs[{i}].Hashrate", "not a list")
        mhs = _number(rate[0], f"HBs[{i}].Hashrate[0]")
        temp = _opt_number(hb.get("Temperature"), f"HBs[{i}].Temperature")
        boards.append(Board(index, mhs / 1e6, temp, None, None, alive=True))
    listed = {b.index for b in boards}
    for i, raw in enumerate(reply.get("HBStatus") or []):
        index = _obj(raw, f"HBStatus[{i}]").get("Index")
        if isinstance(index, int) and not isinstance(index, bool) and index not in listed:
            boards.append(Board(index, 0.0, None, None, 0, alive=False))
            listed.add(index)
    boards = pad_boards(boards, expected_boards)
    hashrate = sum(b.hashrate_ths for b in boards)
    fans_obj = _obj(reply.get("Fans Rpm", {}), "Fans Rpm")
    fans = tuple(
        int(_number(fans_obj[f"Fans Speed {n}"], f"Fans Rpm.Fans Speed {n}"))
        for n in range(1, MAX_FANS + 1)
        if fans_obj.get(f"Fans Speed {n}") is not None
    )
    psu = _obj(reply.get("Power Supply Stats"), "Power Supply Stats")
    watts = _opt_number(psu.get("Input Power"), "Power Supply Stats.Input Power")
    session = reply.get("Session")
    uptime = (
        _opt_number(session.get("Uptime"), "Session.Uptime") if isinstance(session, dict) else None
    )
    tune = _obj(reply.get("PerpetualTune"), "PerpetualTune")
    running = tune.get("Running") is True
    algorithms = tune.get("Algorithm")
    algorithm: str | None = None
    target: float | None = None
    if isinstance(algorithms, dict) and algorithms:
        algorithm, algo = next(iter(algorithms.items()))
        if isinstance(algo, dict):
            target = _opt_number(algo.get("Target"), f"PerpetualTune.Algorithm.{algorithm}.Target")
    clocks = [
        c.get("Data")
        for c in _obj(reply.get("HwConfig", {}), "HwConfig").get("Boards Target Clock") or []
        if isinstance(c, dict)
    ]
    clock = _opt_number(clocks[0], "HwConfig.Boards Target Clock[0].Data") if clocks else None
    error = status_obj.get("Last Error")
    temps = [b.board_temp_c for b in boards if b.board_temp_c is not None]
    status = Status(
        hashrate_ths=hashrate,
        boards=tuple(boards),
        max_chip_temp_c=max(temps) if temps else None,
        fan_rpm=fans,
        uptime_s=None if uptime is None else int(uptime),
        power_w=watts if watts is not None and watts > 0 else None,
        mode=Mode.SLEEP if idle else None,
        mining=not idle and hashrate > 0,
        errors=(rig_text(error),) if error not in (None, "") else (),
        fingerprint=rig_text(reply.get("Software", "")),
    )
    name = rig_text(algorithm) if algorithm else None
    return EpicState(status, idle, running, name, target, clock)


def epic_details(
    capabilities: dict[str, Any], network: dict[str, Any] | None
) -> tuple[str | None, str | None]:
    """(serial, MAC) of an ePIC rig: the control board's ``cpuSerial`` from ``/capabilities``
    (as asic-rs reads it), the first interface's ``mac_address`` from ``/network`` (``dhcp`` or
    ``static``, as pyasic and asic-rs read it); None where absent. Short text, made safe."""

    def text(value: Any) -> str | None:
        if value is None or isinstance(value, dict | list) or value == "":
            return None
        return rig_text(value, DETAIL_CHARS)

    board = capabilities.get("Control Board Version")
    serial = text(board.get("cpuSerial")) if isinstance(board, dict) else None
    nics = [v for v in (network or {}).values() if isinstance(v, dict)]
    return serial, text(nics[0].get("mac_address")) if nics else None


class EPic(RigDriver):
    """ePIC PowerPlay on an Antminer: one HTTP read per cycle, commands as its API's POSTs."""

    name = "epic"
    _CAPS = Capabilities(
        modes=frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH}),
        reports_power=True,
        notes=(
            "low/normal/high are PerpetualTune hashrate targets: 0.7, 1.0 and 1.12 x the "
            "model's Default Hashrate",
            "no power target: ePIC tunes to a hashrate, not to watts",
        ),
    )

    def __init__(self, identity: Any, port: int = API_PORT) -> None:
        super().__init__(identity)
        self.web = Http1(identity.address, port, "web UI")
        self.tuning: Tuning | None = None
        self.last: EpicState | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self._CAPS

    async def _get(self, path: str, timeout_s: float) -> dict[str, Any]:
        [reply] = await self.web.fetch([Request("GET", path)], timeout_s)
        if reply.status != 200:
            raise DriverError(
                FailureKind.BAD_REPLY, f"GET {path}: HTTP {reply.status}{_said(reply.body)}"
            )
        return json_object(reply.body, f"GET {path}")

    async def _post(self, path: str, param: Any, timeout_s: float) -> None:
        payload = json.dumps({"param": param, "password": password()}).encode()
        [reply] = await self.web.fetch([Request("POST", path, payload)], timeout_s)
        status, body = reply.status, reply.body
        if status == 401:
            raise DriverError(
                FailureKind.BAD_REPLY, f"POST {path}: the rig refused the password{_said(body)}"
            )
        if status != 200:
            raise DriverError(FailureKind.BAD_REPLY, f"POST {path}: HTTP {status}{_said(body)}")
        reply_json = json_object(body, f"POST {path}")
        if reply_json.get("result") is not True:
            raise DriverError(FailureKind.BAD_REPLY, f"POST {path}: rig answered{_said(body)}")

    async def _tuning(self, timeout_s: float) -> Tuning:
        if self.tuning is None:
            self.tuning = tuning_of(await self._get("/capabilities", timeout_s))
        return self.tuning

    async def observe(self, timeout_s: float, now: float) -> Observation:
        # One kept-alive connection per rig, across cycles: a new one per read costs more than
        # the read (connect + close: 0.38 against 0.23 ms of CPU per rig, docs/benchmarks.md).
        # A connection the rig dropped meanwhile is noticed and the request sent on a new one.
        tuning = await self._tuning(timeout_s)
        state = epic_summary(await self._get("/summary", timeout_s), self.expected_boards)
        self.check_fingerprint(state.status.fingerprint)
        self.last = state
        return status_observation(self, state.status, state.mode(tuning), now)

    async def apply(self, mode: Mode, power_limit_w: int | None, timeout_s: float) -> ApplyResult:
        self.check_supported(mode, power_limit_w)
        try:
            if mode is Mode.SLEEP:
                await self._post("/miner", "Stop", timeout_s)
            else:
                tuning = await self._tuning(timeout_s)
                state = epic_summary(await self._get("/summary", timeout_s), self.expected_boards)
                target = tuning.target(mode)
                algorithm = state.algorithm or "VoltageOptimizer"
                if state.target_ths is None or round(state.target_ths) != target:
                    await self._post(
                        "/perpetualtune/algo", {"algo": algorithm, "target": target}, timeout_s
                    )
                if not state.tuner:
                    await self._post("/perpetualtune", True, timeout_s)
                if state.idle:
                    await self._post("/miner", "Autostart", timeout_s)
        finally:
            self.web.release()
        return ApplyResult(True, mode, None, "sent; confirm by observation")


def _said(body: bytes) -> str:
    """``: <the rig's error text>`` from an ePIC reply body, or nothing."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        value = None
    error = value.get("error") if isinstance(value, dict) else None
    if error not in (None, ""):
        return f": {rig_text(error)}"
    return f": {rig_text(body[:60].decode('utf-8', errors='replace'))}" if body else ""
