"""VNish (an Antminer firmware with autotune presets, web UI "AnthillOS"), as pyasic 0.79 sees it.

VNish answers two APIs, both simulated here:

- **port 4028**, a cgminer-compatible RPC, the stock Antminer's (``simulator/antminer.py``'s
  builders): ``summary``, ``stats``, ``pools``, ``devs``, ``version``, joined with ``+``; the
  model string (``STATS[0].Type``) carries the firmware, ``Antminer S19j Pro (Vnish 1.2.6)``,
  which is where pyasic reads the model. The ``version`` reply names VNish and not the Antminer
  (no ``Type``): pyasic's socket detection takes any reply naming an Antminer for stock firmware
  before it looks for VNish, and a real rig's ``version`` reply is not captured.
- **port 80**, the web UI and its REST API under ``/api/v1``: the page at ``/`` names
  ``AnthillOS`` (what pyasic's web detection looks for). ``POST /api/v1/unlock``
  ``{"pw": "admin"}`` returns ``{"token": ...}``; the token goes in ``Authorization`` (pyasic
  sends it bare, asic-rs and VNish's own documentation as ``Bearer <token>``: both are
  accepted). Reads without a token: ``info``, ``status``, ``perf-summary``; with one:
  ``summary``, ``settings``, ``autotune/presets``. Writes, all with a token:
  ``mining/stop`` / ``mining/pause`` (sleep), ``mining/start`` / ``mining/resume`` (normal
  mode), answered ``200`` with an empty body; ``POST settings``, whose
  ``miner.overclock.preset`` selects an autotune preset (``disabled``: stock clocks), answered
  ``{"restart_required": false, "reboot_required": false}``; ``find-miner`` toggles the LED.

Presets: ``disabled`` and one per frequency step of 0.5 .. 1.1 x nominal, named by their
watts (``"2150"``, ``pretty`` ``"2150 watt ~ 73 TH"``, ``status`` ``tuned``), as VNish lists
them. A preset runs the rig at the highest frequency whose power fits its watts (the physics'
power limit), so it really changes hashrate, watts and temperature; ``disabled`` returns it to
nominal. The preset survives a reboot (applied again when the rig is back); a factory reset
returns to ``disabled``.

Sources of the shapes (no VNish capture is public in the reference set): the fields pyasic 0.79
and asic-rs (``asic-rs-firmwares/vnish``, v1_2_0) read, and a public VNish 1.2.6 API reference
(sample replies of ``unlock``, ``info``, ``status``, ``summary``, ``perf-summary``,
``autotune/presets`` and the mining endpoints). This module's own choices: a wrong password
is answered ``401 {"err": "Wrong password"}``, a missing or unknown token
``401 {"err": "Unauthorized"}``, an unknown preset or a body that is not JSON
``400 {"err": ...}``, an unknown path ``404``; the chain fields no client reads.

Counters: one API request is one read or one write; ``rejected`` counts refused requests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from simulator import antminer
from simulator.models import VNISH_FIRMWARE
from simulator.physics import CHIP_TARGET_C, Mode, Phase, power_at
from simulator.protocol import HttpRequest, HttpResponse, MakeHandlers, SectionBuilder
from simulator.rig import Fault, SimRig, Snapshot

__all__ = ["DEFAULT_PASSWORD", "HANDLERS", "VNISH_FIRMWARE", "handle_rpc", "handle_web", "presets"]

DEFAULT_PASSWORD = "admin"  # pyasic's default_vnish_web_password
PRESET_STEPS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)  # of the nominal frequency
TOKEN_BYTES = 16
MAX_TOKENS = 16  # unlocks remembered at once; the oldest token is forgotten first
JSON_HEADERS = {"Content-Type": "application/json"}

_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>AnthillOS</title></head>
<body><div id="app"></div><script src="/assets/index.js"></script></body>
</html>
"""


@dataclass(slots=True)
class _VnState(antminer._AmState):
    """What VNish keeps: the stock RPC's state (pools, serials) and its own."""

    preset: str = "disabled"
    tokens: list[str] = field(default_factory=list)
    unlocks: int = 0
    find_miner: bool = False


def _state(rig: SimRig) -> _VnState:
    st = rig.firmware_state
    if not isinstance(st, _VnState):  # new rig, or factory reset since
        base = antminer._new_state(rig)
        st = _VnState(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
        rig.firmware_state = st
    elif st.preset != "disabled" and rig.power_limit_w is None:
        _run_preset(rig, st.preset)  # rebooted: its saved preset again
    return st


def _version() -> str:
    return VNISH_FIRMWARE.removeprefix("Vnish ")


def _miner_type(rig: SimRig) -> str:
    return f"{rig.spec.rpc_type} ({VNISH_FIRMWARE})"


def presets(rig: SimRig) -> list[dict[str, Any]]:
    """The autotune presets as ``GET /api/v1/autotune/presets`` lists them."""
    spec = rig.spec
    out: list[dict[str, Any]] = [
        {
            "name": "disabled",
            "pretty": "Disabled",
            "status": "untuned",
            "modded_psu_required": False,
        }
    ]
    for f in PRESET_STEPS:
        watts = int(round(power_at(spec, f, spec.boards, CHIP_TARGET_C) / 10.0) * 10)
        out.append(
            {
                "name": str(watts),
                "pretty": f"{watts} watt ~ {round(spec.hashrate_ths * f)} TH",
                "status": "tuned",
                "modded_psu_required": False,
            }
        )
    return out


def _run_preset(rig: SimRig, name: str) -> bool:
    """The physics of preset ``name``: nominal for ``disabled``, else the highest frequency
    whose power fits its watts (the physics' power limit). False if the rig ignores writes."""
    if name == "disabled":
        return rig.set_power_limit(None) and rig.set_freq_pct(0)
    return rig.set_freq_pct(30) and rig.set_power_limit(int(name))


def _apply_preset(rig: SimRig, name: str) -> None:
    st = _state(rig)
    if _run_preset(rig, name):
        st.preset = name


# ---- RPC (port 4028): the stock cgminer API, VNish's strings ------------------------------------


def _rpc_version(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    return {
        "STATUS": [antminer._status(antminer.CODE_VERSION, "CGMiner versions", when)],
        "VERSION": [{"API": antminer.API_VERSION, "CGMiner": "4.11.1", "Miner": VNISH_FIRMWARE}],
        "id": 1,
    }


def _rpc_stats(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    reply = antminer._rpc_stats(rig, snap, when)
    reply["STATS"][0] = {"CGMiner": "4.11.1", "Miner": VNISH_FIRMWARE, "Type": _miner_type(rig)}
    return reply


_RPC: dict[str, tuple[SectionBuilder, bool]] = {
    **antminer._RPC,
    "version": (_rpc_version, False),
    "stats": (_rpc_stats, True),
}


def handle_rpc(rig: SimRig, request: Any) -> bytes:
    """Answer one cgminer API request on 4028, as VNish's cgminer does."""
    _state(rig)
    return antminer.handle_rpc(rig, request, _RPC)


# ---- web API (port 80) ---------------------------------------------------------------------------


def _json(status: int, value: Any) -> HttpResponse:
    return HttpResponse(status, _encode(value).encode(), dict(JSON_HEADERS))


def _err(status: int, text: str) -> HttpResponse:
    return _json(status, {"err": text})


def _authorized(rig: SimRig, req: HttpRequest) -> bool:
    token = req.headers.get("authorization", "").strip()
    token = token.removeprefix("Bearer ").strip()
    return bool(token) and token in _state(rig).tokens


def _temps(value: float, alive: bool) -> dict[str, int]:
    if not alive:
        return {"min": 0, "max": 0}
    return {"min": round(value) - 4, "max": round(value) + 3}


def _summary(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    spec = rig.spec
    stopped = rig.mode is Mode.SLEEP
    state = (
        "stopped" if stopped else ("initializing" if snap.phase is not Phase.RUNNING else "mining")
    )
    ghs = round(snap.hashrate_ths * 1000.0, 2)
    nominal = round(spec.hashrate_ths * 1000.0, 2)
    chains: list[dict[str, Any]] = []
    pcb: list[dict[str, int]] = []
    chip: list[dict[str, int]] = []
    for board in snap.boards:
        board_ghs = round(board.hashrate_ths * 1000.0, 2)
        ideal = nominal / spec.boards
        chains.append(
            {
                "id": board.index + 1,
                "frequency": round(board.freq_mhz, 1),
                "voltage": 13800 if board.alive and not stopped else 0,
                "power_consumption": round(snap.power_w / spec.boards) if board.alive else 0,
                "hashrate_ideal": round(ideal, 2),
                "hashrate_rt": board_ghs,
                "hashrate_percentage": round(100.0 * board_ghs / ideal, 2) if ideal else 0.0,
                "hr_error": 0.0,
                "hw_errors": 0,
                "pcb_temp": _temps(board.board_temp_c, board.alive),
                "chip_temp": _temps(board.chip_temp_c, board.alive),
                "chip_statuses": {"red": 0, "orange": 0, "grey": 0 if board.alive else board.chips},
                "status": {
                    "state": "failure" if not board.alive else ("stopped" if stopped else state)
                },
            }
        )
        if board.alive:
            pcb.append(_temps(board.board_temp_c, True))
            chip.append(_temps(board.chip_temp_c, True))
    fans = [
        {
            "id": i,
            "rpm": snap.fan_rpm + (60 if i % 2 else -60) if snap.fan_rpm else 0,
            "status": "ok",
            "max_rpm": 6600,
        }
        for i in range(spec.fans)
    ]
    worker = f"rigpilot.{rig.serial[-6:].lower()}"
    return {
        "miner": {
            "miner_status": {"miner_state": state, "miner_state_time": snap.uptime_s},
            "miner_type": _miner_type(rig),
            "hr_stock": nominal,
            "average_hashrate": round(snap.hashrate_ths, 2),
            "instant_hashrate": round(snap.hashrate_ths, 2),
            "hr_realtime": ghs,
            "hr_nominal": nominal,
            "hr_average": ghs,
            "pcb_temp": {
                "min": min((t["min"] for t in pcb), default=0),
                "max": max((t["max"] for t in pcb), default=0),
            },
            "chip_temp": {
                "min": min((t["min"] for t in chip), default=0),
                "max": max((t["max"] for t in chip), default=0),
            },
            "power_consumption": round(snap.power_w),
            "power_usage": round(snap.power_w),
            "power_efficiency": round(snap.power_w / snap.hashrate_ths, 2)
            if snap.hashrate_ths
            else 0.0,
            "hw_errors_percent": 0.0,
            "hr_error": 0.0,
            "hw_errors": 0,
            "devfee_percent": 2.8,
            "devfee": round(ghs * 0.028, 2),
            "pools": [
                {
                    "id": 0,
                    "url": "btc.global.luxor.tech:700",
                    "pool_type": "UserPool",
                    "user": worker,
                    "status": "active" if not stopped else "offline",
                    "asic_boost": True,
                    "diff": "524K",
                    "accepted": snap.uptime_s // 9,
                    "rejected": 0,
                    "stale": 0,
                    "ls_diff": 524288.0,
                    "ls_time": "0:00:03",
                    "diffa": 524288.0,
                    "ping": 12,
                }
            ],
            "cooling": {
                "fan_num": spec.fans,
                "fans": fans,
                "settings": {"mode": {"name": "auto"}},
                "fan_duty": max(10, min(100, round(snap.fan_rpm * 100 / 6600))),
            },
            "chains": chains,
            "found_blocks": 0,
            "best_share": snap.uptime_s * 3180,
        }
    }


def _preset_entry(rig: SimRig, name: str) -> dict[str, Any]:
    entry = next((p for p in presets(rig) if p["name"] == name), None)
    return (
        dict(entry)
        if entry
        else {"name": name, "pretty": name, "status": "untuned", "modded_psu_required": False}
    )


def _perf_summary(rig: SimRig) -> dict[str, Any]:
    current = _preset_entry(rig, _state(rig).preset)
    current["globals"] = {"volt": 1380, "freq": round(rig.spec.board_freq_mhz)}
    return {
        "current_preset": current,
        "preset_switcher": {
            "enabled": False,
            "top_preset": None,
            "decrease_temp": 75,
            "rise_temp": 55,
            "check_time": 300,
            "autochange_top_preset": False,
            "ignore_fan_speed": False,
            "min_preset": None,
            "power_delta": 0,
        },
    }


def _settings(rig: SimRig) -> dict[str, Any]:
    st = _state(rig)
    freq = round(rig.spec.board_freq_mhz)
    pools = []
    for i, pool in enumerate(p for p in st.pools if p.get("url")):
        pools.append(
            {
                "url": pool["url"].split("://", 1)[-1],
                "user": pool["user"],
                "pass": pool["pass"],
                "order": i,
                "id": i,
            }
        )
    return {
        "miner": {
            "overclock": {
                "preset": st.preset,
                "globals": {"volt": 1380, "freq": freq},
                "chains": [{"freq": 0, "chips": []} for _ in range(rig.spec.boards)],
            },
            "pools": pools,
            "cooling": {
                "mode": {"name": "auto", "param": 75},
                "fan_min_count": rig.spec.fans,
                "fan_min_duty": 10,
            },
            "misc": {"restart_temp": 95, "quiet_mode": False},
        },
        "regional": {"timezone": {"current": "GMT+0"}},
    }


def _info(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    prefix = rig.address.rpartition(".")[0]
    minutes = snap.uptime_s // 60
    days, rest = divmod(minutes, 1440)
    clock = f"{rest // 60}:{rest % 60:02d}"
    return {
        "miner": rig.spec.rpc_type,
        "model": rig.spec.key,
        "fw_name": "Vnish",
        "fw_version": _version(),
        "build_uuid": hashlib.sha256(VNISH_FIRMWARE.encode()).hexdigest()[:32],
        "build_name": "vnishnet",
        "platform": "xil",
        "install_type": "nand",
        "build_time": "2025-05-29 19:22:26+00:00",
        "algorithm": "sha256d",
        "hr_measure": "GH/s",
        "system": {
            "os": "GNU/Linux",
            "miner_name": rig.spec.key,
            "file_system_version": "",
            "mem_total": 233712,
            "mem_free": 173956,
            "mem_free_percent": 74,
            "mem_buf": 31928,
            "mem_buf_percent": 13,
            "network_status": {
                "mac": rig.mac,
                "dhcp": True,
                "ip": rig.address,
                "netmask": "255.255.255.0",
                "gateway": f"{prefix}.1",
                "dns": [f"{prefix}.1"],
                "hostname": rig.hostname.lower(),
            },
            "uptime": f"{days} days, {clock}" if days else clock,
        },
        "serial": rig.serial,
    }


def _status(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    summary = _summary(rig, snap)["miner"]["miner_status"]
    return {
        **summary,
        "find_miner": _state(rig).find_miner,
        "restart_required": False,
        "reboot_required": False,
        "unlocked": bool(_state(rig).tokens),
    }


def _unlock(rig: SimRig, body: Any) -> HttpResponse:
    if not isinstance(body, dict) or body.get("pw") != DEFAULT_PASSWORD:
        rig.counters.rejected += 1
        return _err(401, "Wrong password")
    st = _state(rig)
    st.unlocks += 1
    token = hashlib.sha256(f"{rig.serial}/{st.unlocks}".encode()).hexdigest()[: TOKEN_BYTES * 2]
    st.tokens = [*st.tokens, token][-MAX_TOKENS:]
    rig.counters.writes += 1
    return _json(200, {"token": token})


def _post_settings(rig: SimRig, body: Any) -> HttpResponse:
    overclock = body.get("miner", {}).get("overclock") if isinstance(body, dict) else None
    if isinstance(overclock, dict) and "preset" in overclock:
        name = overclock["preset"]
        if not isinstance(name, str) or name not in {p["name"] for p in presets(rig)}:
            rig.counters.rejected += 1
            return _err(400, f"Unknown preset {name!r}")
        if not rig.has(Fault.IGNORE_WRITES):
            _apply_preset(rig, name)
    rig.counters.writes += 1
    return _json(200, {"restart_required": False, "reboot_required": False})


_MINING = {
    "/api/v1/mining/stop": Mode.SLEEP,
    "/api/v1/mining/pause": Mode.SLEEP,
    "/api/v1/mining/start": Mode.NORMAL,
    "/api/v1/mining/resume": Mode.NORMAL,
}
_OPEN_READS = {"/api/v1/info", "/api/v1/status", "/api/v1/perf-summary"}
_TOKEN_READS = {"/api/v1/summary", "/api/v1/settings", "/api/v1/autotune/presets"}


def handle_web(rig: SimRig, req: HttpRequest) -> HttpResponse:  # noqa: C901, PLR0911, PLR0912  one case per path of the firmware's REST API
    """Port 80: the web UI's page and VNish's REST API under ``/api/v1``."""
    counters = rig.counters
    path = req.path.rstrip("/") or "/"
    if req.method == "GET" and path in ("/", "/index.html"):
        return HttpResponse(200, PAGE, {"Content-Type": "text/html"})
    if not path.startswith("/api/v1/"):
        return HttpResponse(404, b"<html><body><h1>404 Not Found</h1></body></html>")
    body: Any = None
    if req.method == "POST" and req.body:
        try:
            body = json.loads(req.body)
        except (ValueError, UnicodeDecodeError):
            counters.rejected += 1
            return _err(400, "Invalid JSON body")
    name = path.removeprefix("/api/v1/")
    if req.method == "POST" and path == "/api/v1/unlock":
        counters.by_command[name] += 1
        return _unlock(rig, body)
    if req.method == "GET" and path in _OPEN_READS | _TOKEN_READS:
        if path in _TOKEN_READS and not _authorized(rig, req):
            counters.rejected += 1
            return _err(401, "Unauthorized")
        counters.reads += 1
        counters.by_command[name] += 1
        if path == "/api/v1/autotune/presets":
            return _json(200, presets(rig))
        if path == "/api/v1/settings":
            return _json(200, _settings(rig))
        if path == "/api/v1/perf-summary":
            return _json(200, _perf_summary(rig))
        snap = rig.snapshot()
        if path == "/api/v1/info":
            return _json(200, _info(rig, snap))
        if path == "/api/v1/status":
            return _json(200, _status(rig, snap))
        return _json(200, _summary(rig, snap))
    if req.method == "POST" and path == "/api/v1/find-miner":
        st = _state(rig)
        st.find_miner = not st.find_miner
        return _json(200, {"on": st.find_miner})
    if req.method == "POST" and (path in _MINING or path == "/api/v1/settings"):
        if not _authorized(rig, req):
            counters.rejected += 1
            return _err(401, "Unauthorized")
        counters.by_command[name] += 1
        if path == "/api/v1/settings":
            return _post_settings(rig, body)
        rig.set_mode(_MINING[path])
        counters.writes += 1
        return HttpResponse(200, b"", {})
    counters.rejected += 1
    return _err(404, f"Not found: {req.method} {path}")


HANDLERS = MakeHandlers(rpc=handle_rpc, http=handle_web, framed=None)
