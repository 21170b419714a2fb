"""VNish (an Antminer firmware with autotune presets): its REST API on port 80, read and driven
directly.

Read, every cycle, two requests pipelined on one kept-alive connection (``drivers.http1``): ``GET
/api/v1/summary`` (with the token): hashrate (``miner.hr_realtime``, GH/s), boards
(``miner.chains``: ``id`` from 1, ``hashrate_rt`` GH/s, ``pcb_temp`` / ``chip_temp`` max,
``status.state``; a board missing or in ``failure`` is dead), fans (``cooling.fans[].rpm``),
reported watts (``power_consumption``), the state (``miner_status.miner_state``: ``stopped`` is
asleep) and the model + firmware fingerprint (``miner_type``); and ``GET /api/v1/perf-summary`` (no
token) for the active preset (``current_preset.name``), which ``summary`` does not carry.

Modes: ``sleep`` is ``POST /api/v1/mining/stop``, waking ``mining/start``. VNish sets power by
autotune preset, each named by its watts (``"2950"``): ``limit W`` selects the preset of exactly
W watts (``POST /api/v1/settings`` ``{"miner": {"overclock": {"preset": "W"}}}``) and is refused,
naming the rig's presets, for watts no preset has (a nearby preset would never be observed as
W); ``normal`` is the preset ``disabled`` (stock clocks). Observed: ``stopped`` is sleep, preset
``disabled`` normal, a preset of W watts ``limit`` with power limit W. ``low`` / ``high`` are not
offered: a preset is a power level, not a mode, and which one would be "low" is the operator's
choice (``limit``).

Auth: ``POST /api/v1/unlock`` ``{"pw": password}`` (pyasic's ``default_vnish_web_password``)
returns a token, sent as ``Authorization: Bearer <token>``, kept per rig and renewed once when
the rig answers 401. Every failure is a DriverError with the rig's ``err`` text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pyasic import settings as pyasic_settings

from drivers.base import ApplyResult, RigDriver, UnsupportedMode
from drivers.http1 import Http1, Reply, Request
from drivers.parse import Status, pad_boards
from drivers.stock import status_observation
from drivers.transport import DriverError
from drivers.webdigest import WEB_PORT, json_object
from policies.values import Board, Capabilities, FailureKind, Mode, Observation, rig_text

API = "/api/v1"
STOPPED = frozenset({"stopped", "shutting-down"})


def password() -> str:
    """The unlock password: pyasic's setting, so both clients agree."""
    return str(pyasic_settings.get("default_vnish_web_password", "admin"))


@dataclass(frozen=True, slots=True)
class VnishState:
    """What one summary + perf-summary say: the status, the miner state, the active preset."""

    status: Status
    state: str
    preset: str | None

    @property
    def mode(self) -> Mode:
        if self.state in STOPPED:
            return Mode.SLEEP
        if self.preset == "disabled":
            return Mode.NORMAL
        return Mode.LIMIT if self.preset_watts is not None else Mode.UNKNOWN

    @property
    def preset_watts(self) -> int | None:
        return int(self.preset) if self.preset is not None and self.preset.isdigit() else None


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


def _max_temp(value: Any, field: str) -> float | None:
    if not isinstance(value, dict) or value.get("max") is None:
        return None
    temp = _number(value["max"], f"{field}.max")
    return temp if temp > 0 else None


def vnish_read(
    summary: dict[str, Any],
    perf: dict[str, Any] | None = None,
    expected_boards: int | None = None,
) -> VnishState:
    """Parse ``GET /api/v1/summary`` (and ``perf-summary`` for the preset)."""
    miner = _obj(summary.get("miner"), "miner")
    status_obj = _obj(miner.get("miner_status"), "miner.miner_status")
    state = status_obj.get("miner_state")
    if not isinstance(state, str):
        raise _bad("miner.miner_status.miner_state", f"not a state: {state!r}")
    hashrate = _number(miner.get("hr_realtime"), "miner.hr_realtime") / 1000.0
    chains = miner.get("chains")
    if chains is None:
        chains = []
    if not isinstance(chains, list):
        raise _bad("miner.chains", "not a list")
    boards: list[Board] = []
    for i, raw in enumerate(chains):
        chain = _obj(raw, f"miner.chains[{i}]")
        ident = chain.get("id")
        if isinstance(ident, bool) or not isinstance(ident, int) or ident < 1:
            raise _bad(f"miner.chains[{i}].id", f"not a chain id: {ident!r}")
        rate = _number(chain.get("hashrate_rt", 0.0), f"miner.chains[{i}].hashrate_rt") / 1000.0
        chain_status = chain.get("status")
        alive = not isinstance(chain_status, dict) or chain_status.get("state") != "failure"
        boards.append(
            Board(
                ident - 1,
                rate if alive else 0.0,
                _max_temp(chain.get("pcb_temp"), f"miner.chains[{i}].pcb_temp"),
                _max_temp(chain.get("chip_temp"), f"miner.chains[{i}].chip_temp"),
                None,
                alive,
            )
        )
    boards = pad_boards(boards, expected_boards)
    cooling = miner.get("cooling")
    fans_raw = cooling.get("fans") if isinstance(cooling, dict) else None
    fans = tuple(
        int(_number(f.get("rpm"), f"miner.cooling.fans[{i}].rpm"))
        for i, f in enumerate(fans_raw or [])
        if isinstance(f, dict) and f.get("rpm") is not None
    )
    watts_raw = miner.get("power_consumption", miner.get("power_usage"))
    watts = None if watts_raw is None else _number(watts_raw, "miner.power_consumption")
    chip_temps = [b.chip_temp_c for b in boards if b.chip_temp_c is not None]
    errors = tuple(
        rig_text(f"chain {c.get('id')}: {c['status'].get('description') or 'failure'}")
        for c in chains
        if isinstance(c, dict)
        and isinstance(c.get("status"), dict)
        and c["status"].get("state") == "failure"
    )
    if state == "failure":
        errors += (rig_text(status_obj.get("description") or "miner failure"),)
    preset = None
    if perf is not None:
        current = perf.get("current_preset")
        name = current.get("name") if isinstance(current, dict) else None
        preset = rig_text(name) if isinstance(name, str) and name else None
    status = Status(
        hashrate_ths=hashrate,
        boards=tuple(boards),
        max_chip_temp_c=max(chip_temps) if chip_temps else None,
        fan_rpm=fans,
        uptime_s=None,
        power_w=watts if watts is not None and watts > 0 else None,
        power_limit_w=int(preset) if preset is not None and preset.isdigit() else None,
        mode=Mode.SLEEP if state in STOPPED else None,
        mining=state not in STOPPED and state != "failure" and hashrate > 0,
        errors=errors,
        fingerprint=rig_text(miner.get("miner_type", "")),
    )
    return VnishState(status, rig_text(state), preset)


def preset_names(body: bytes) -> list[str]:
    """The preset names of ``GET /api/v1/autotune/presets`` (a list, or ``{"presets": [...]}``)."""
    try:
        reply = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DriverError(FailureKind.BAD_REPLY, "autotune/presets: not JSON") from None
    items = reply.get("presets") if isinstance(reply, dict) else reply
    if not isinstance(items, list):
        raise DriverError(FailureKind.BAD_REPLY, "autotune/presets: not a list of presets")
    return [str(p["name"]) for p in items if isinstance(p, dict) and isinstance(p.get("name"), str)]


EXTRA_PRESETS = "vnish_presets_w"
"""Identity.extra key: the rig's watt presets, comma-separated (read at identification)."""


def preset_watts(names: list[str]) -> tuple[int, ...]:
    """The watt presets among ``names`` (``disabled`` and any non-numeric name left out),
    ascending."""
    return tuple(sorted({int(n) for n in names if n.isdigit() and 0 < int(n) < 100_000}))


def cached_presets(text: str) -> tuple[int, ...]:
    """Inverse of the identity's ``vnish_presets_w`` (empty when missing or damaged)."""
    try:
        return tuple(sorted({int(w) for w in text.split(",") if w}))
    except ValueError:
        return ()


class VNish(RigDriver):
    """VNish on an Antminer: summary + perf-summary per cycle, presets as power limits."""

    name = "vnish"

    def __init__(self, identity: Any, port: int = WEB_PORT) -> None:
        super().__init__(identity)
        self.web = Http1(identity.address, port, "web UI")
        self.token: str | None = None
        self.last: VnishState | None = None
        self.presets_w = cached_presets(identity.extra.get(EXTRA_PRESETS, ""))
        limit = {Mode.LIMIT} if self.presets_w else set()
        self._caps = Capabilities(
            modes=frozenset({Mode.SLEEP, Mode.NORMAL} | limit),
            power_limit=bool(self.presets_w),
            power_limit_range_w=(self.presets_w[0], self.presets_w[-1]) if self.presets_w else None,
            power_limit_presets_w=self.presets_w or None,
            reports_power=True,
            notes=(
                "limit W selects the autotune preset of exactly W watts: the presets the rig "
                "listed at identification, and no other watts"
                if self.presets_w
                else "the rig listed no watt presets at identification, so limit is not offered",
                "normal is the preset 'disabled' (stock clocks); no low/high: presets are watts",
            ),
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def _request(self, method: str, path: str, body: bytes | None, auth: bool) -> Request:
        headers: tuple[tuple[bytes, bytes], ...] = ()
        if auth and self.token is not None:
            headers = ((b"Authorization", f"Bearer {self.token}".encode()),)
        return Request(method, API + path, body, headers)

    async def _unlock(self) -> None:
        body = json.dumps({"pw": password()}).encode()
        [reply] = await self.web.exchange([self._request("POST", "/unlock", body, False)])
        if reply.status == 401:
            raise DriverError(
                FailureKind.BAD_REPLY, f"unlock: the rig refused the password{_said(reply.body)}"
            )
        if reply.status != 200:
            raise DriverError(
                FailureKind.BAD_REPLY, f"unlock: HTTP {reply.status}{_said(reply.body)}"
            )
        token = json_object(reply.body, "unlock").get("token")
        if not isinstance(token, str) or not token:
            raise DriverError(FailureKind.BAD_REPLY, "unlock: no token in the reply")
        self.token = token

    async def call(
        self, method: str, path: str, payload: Any, timeout_s: float, auth: bool = True
    ) -> bytes:
        """One API request, within ``timeout_s``; with ``auth``, the token (unlocking first,
        and once more on a 401). Returns the body of a 200; DriverError otherwise."""
        body = None if payload is None else json.dumps(payload).encode()
        return await self.web.guarded(self._call(method, path, body, auth), timeout_s, API + path)

    async def get_json(self, path: str, timeout_s: float, auth: bool = True) -> dict[str, Any]:
        """``GET /api/v1<path>``'s JSON object; errors as :meth:`call`."""
        return json_object(await self.call("GET", path, None, timeout_s, auth), path[1:])

    async def _call(
        self, method: str, path: str, body: bytes | None, auth: bool, renew: bool = True
    ) -> bytes:
        """:meth:`call` without its deadline; ``renew``: unlock again on a 401, once."""
        if auth and self.token is None:
            await self._unlock()
        [reply] = await self.web.exchange([self._request(method, path, body, auth)])
        if reply.status == 401 and auth and renew:
            self.token = None  # expired or forgotten (a reboot): unlock again
            return await self._call(method, path, body, auth, renew=False)
        return _ok(method, path, reply)

    async def _read(self, timeout_s: float) -> VnishState:
        summary, perf = await self.web.guarded(self._read_bodies(), timeout_s, f"{API}/summary")
        return vnish_read(
            json_object(summary, "summary"), json_object(perf, "perf-summary"), self.expected_boards
        )

    async def _read_bodies(self) -> tuple[bytes, bytes]:
        """``summary`` and ``perf-summary``: pipelined on the kept connection with the kept
        token (every cycle but the first); right after an unlock, one by one (a rig that
        refuses its fresh token is asked nothing more)."""
        if self.token is None:
            summary = await self._call("GET", "/summary", None, True)
            return summary, await self._call("GET", "/perf-summary", None, False)
        first, second = await self.web.exchange(
            [
                self._request("GET", "/summary", None, True),
                self._request("GET", "/perf-summary", None, False),
            ]
        )
        if first.status == 401:  # the kept token expired (a reboot): unlock, summary again
            self.token = None
            summary = await self._call("GET", "/summary", None, True, renew=False)
        else:
            summary = _ok("GET", "/summary", first)
        return summary, _ok("GET", "/perf-summary", second)

    async def observe(self, timeout_s: float, now: float) -> Observation:
        # One kept-alive connection per rig, across cycles (as the ePIC driver; a connection
        # the rig dropped meanwhile is noticed and the request sent on a new one).
        state = await self._read(timeout_s)
        self.check_fingerprint(state.status.fingerprint)
        self.last = state
        return status_observation(self, state.status, state.mode, now)

    async def apply(self, mode: Mode, power_limit_w: int | None, timeout_s: float) -> ApplyResult:
        self.check_supported(mode, power_limit_w)
        try:
            if mode is Mode.SLEEP:
                await self.call("POST", "/mining/stop", None, timeout_s)
            else:
                state = await self._read(timeout_s)
                preset = "disabled"
                if mode is Mode.LIMIT:
                    names = preset_names(
                        await self.call("GET", "/autotune/presets", None, timeout_s)
                    )
                    preset = str(power_limit_w)
                    if preset not in names:
                        watts = ", ".join(n for n in names if n.isdigit())
                        raise UnsupportedMode(
                            f"{self.identity.address}: VNish sets power by preset; "
                            f"{power_limit_w} W is not one (presets: {watts} W)"
                        )
                if state.preset != preset:
                    settings = {"miner": {"overclock": {"preset": preset}}}
                    await self.call("POST", "/settings", settings, timeout_s)
                if state.mode is Mode.SLEEP:
                    await self.call("POST", "/mining/start", None, timeout_s)
        finally:
            self.web.release()
        return ApplyResult(True, mode, power_limit_w, "sent; confirm by observation")


def _ok(method: str, path: str, reply: Reply) -> bytes:
    """The body of a 200; DriverError naming the request and the rig's text otherwise."""
    if reply.status != 200:
        raise DriverError(
            FailureKind.BAD_REPLY, f"{method} {path}: HTTP {reply.status}{_said(reply.body)}"
        )
    return reply.body


def _said(body: bytes) -> str:
    """``: <the rig's err text>`` from a VNish reply body, or nothing."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        value = None
    error = value.get("err") if isinstance(value, dict) else None
    if error not in (None, ""):
        return f": {rig_text(error)}"
    return f": {rig_text(body[:60].decode('utf-8', errors='replace'))}" if body else ""
