"""Braiins OS 25.x (BOS+, its miner daemon ``BOSer``) on an Antminer, as its three APIs speak.

Real BOS 25.x answers on three ports, and this module simulates each of them:

- **The public REST API on 80** (``/api/v1/...``, what asic-rs reads and the captures in
  ``tests/fixtures/captures/braiins/v25_07`` hold): ``POST /api/v1/auth/login`` with
  ``{"username", "password"}`` answers ``{"token", "timeout_s"}``; every other call carries that
  token as its ``Authorization`` header (401 without it). Reads: ``GET miner/details``,
  ``miner/stats``, ``miner/hw/hashboards``, ``miner/errors``, ``performance/tuner-state``,
  ``cooling/state``, ``configuration/miner``, ``configuration/constraints``, ``actions/locate``,
  ``pools``, ``network``, ``version``. Writes: ``PUT performance/power-target`` ``{"watt": W}``,
  ``PUT actions/pause``, ``PUT actions/resume``. Replies are JSON with Content-Length (field
  names, nesting and enum numbers as captured: ``status`` 2 is mining, 3 paused). ``GET /`` is
  the web UI's page (``<title>Braiins OS</title>``, which pyasic's web probe looks for).
- **The gRPC API on 50051** (HTTP/2, ``braiins.bos.v1.*``, Braiins' public bos-plus-api, which
  pyasic's ``BOSer`` class uses for details, hashboards, power, tuner, cooling, pools and every
  command): served with grpclib, the messages being the betterproto classes pyasic ships for
  that schema. ``AuthenticationService/Login`` returns the token in the reply and in the
  ``authorization`` initial metadata; every other call but ``GetApiVersion`` needs it as its
  ``authorization`` metadata (``UNAUTHENTICATED`` otherwise, as pyasic expects, which logs in
  and retries).
- **The cgminer-compatible API on 4028** (``version`` naming ``BOSer``, which is how pyasic
  detects the firmware; ``devdetails`` for the model; ``summary``, ``devs``, ``tunerstatus``
  for pyasic's hashrate, is-mining and errors), several commands joined with ``+``; ``version``
  has the shape of the real one in ``tests/fixtures/captures/braiins/v21_09`` (a BOS 22.08 rig).

The firmware's controls map onto the one rig physics: a power target is the rig's power limit
(a target above the default lets the tuner clock up, simulated as high mode under that limit),
``pause`` is sleep and ``resume`` mining again at the target. The default target is the model's
nominal power; the allowed range (``configuration/constraints``) is 50 %-130 % of it. Shapes not
in the captures (error bodies, the cgminer replies, ``configuration/constraints``) are this
module's own, modelled on the gRPC schema: REST errors are ``{"code", "message", "details"}``
with the gRPC status code, as a gRPC-gateway answers them.

Counters: one REST or gRPC call, or one cgminer request, is one read or one write; auth
failures, bad requests and unknown paths count as ``rejected``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream
from pyasic.web.braiins_os.proto.braiins import bos as pb_bos
from pyasic.web.braiins_os.proto.braiins.bos import v1 as pb

from simulator.models import BOS_FIRMWARE
from simulator.physics import Mode, Phase
from simulator.protocol import (
    HttpRequest,
    HttpResponse,
    MakeHandlers,
    SectionBuilder,
    joined,
    read_sections,
)
from simulator.rig import Fault, SimRig, Snapshot

__all__ = ["BOS_FIRMWARE", "GRPC_PORT", "HANDLERS", "constraints", "serve_grpc"]

BOS_MAJOR = "2022-09-13-0-11012d53-22.08-plus"
BOSER_VERSION = (
    "boser-buildroot 0.1.0-3881c51d"  # the v21_09 capture: "boser-openwrt 0.1.0-11012d53"
)
GRPC_PORT = 50051
USER = "root"
PASSWORD = "root"
TOKEN_TIMEOUT_S = 3600
MIN_SHARE, MAX_SHARE = 0.5, 1.3  # power target range, as a share of the default target

STATUS_NOT_STARTED, STATUS_NORMAL, STATUS_PAUSED = 1, 2, 3
TUNER_STABLE = 2

# gRPC status codes (REST error bodies carry them too)
G_INVALID_ARGUMENT, G_NOT_FOUND, G_UNAUTHENTICATED, G_UNIMPLEMENTED = 3, 5, 16, 12

_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


@dataclass(slots=True)
class _BosState:
    """What BOS keeps that SimRig has no field for."""

    target_w: int
    paused: bool = False
    locate: bool = False
    tokens_issued: int = 0
    token: str = ""


def _state(rig: SimRig) -> _BosState:
    st = rig.firmware_state
    if not isinstance(st, _BosState):  # new rig, or factory reset / reboot since
        st = _BosState(target_w=default_target(rig))
        rig.firmware_state = st
    if rig.power_limit_w is None and rig.mode is Mode.NORMAL and st.target_w != default_target(rig):
        # a reboot restored the physics' defaults: BOS comes back at its saved target
        _apply(rig, st)
    return st


def default_target(rig: SimRig) -> int:
    return round(rig.spec.power_w)


def constraints(rig: SimRig) -> tuple[int, int, int]:
    """(min, default, max) power target in W."""
    default = default_target(rig)
    return (
        int(round(default * MIN_SHARE / 10) * 10),
        default,
        int(round(default * MAX_SHARE / 10) * 10),
    )


def _apply(rig: SimRig, st: _BosState) -> bool:
    """Put the physics where BOS's settings say: paused, or tuning to the target."""
    if st.paused:
        return rig.set_mode(Mode.SLEEP)
    mode = Mode.HIGH if st.target_w > default_target(rig) else Mode.NORMAL
    return rig.set_mode(mode) and rig.set_power_limit(st.target_w)


def _set_target(rig: SimRig, watts: int) -> str | None:
    """Set the power target; the refusal's text when ``watts`` is outside the constraints."""
    lo, _, hi = constraints(rig)
    if not lo <= watts <= hi:
        return f"power target {watts} W is out of range {lo}..{hi} W"
    st = _state(rig)
    if rig.has(Fault.IGNORE_WRITES):
        return None  # answers OK, changes nothing
    st.target_w = watts
    _apply(rig, st)
    return None


def _pause(rig: SimRig, paused: bool) -> bool:
    """Pause or resume; True when it already was so."""
    st = _state(rig)
    already = st.paused == paused
    if not rig.has(Fault.IGNORE_WRITES):
        st.paused = paused
        _apply(rig, st)
    return already


def _status(rig: SimRig, snap: Snapshot) -> int:
    if _state(rig).paused or snap.mode is Mode.SLEEP:
        return STATUS_PAUSED
    if snap.phase is Phase.BOOTING:
        return STATUS_NOT_STARTED
    return STATUS_NORMAL


def _login(rig: SimRig, username: str, password: str) -> str | None:
    if username != USER or password != PASSWORD:
        return None
    st = _state(rig)
    st.tokens_issued += 1
    st.token = hashlib.sha256(f"{rig.serial}/{st.tokens_issued}".encode()).hexdigest()[:24]
    return st.token


def _authorised(rig: SimRig, token: str | None) -> bool:
    st = _state(rig)
    return bool(token) and token == st.token


def _gh(ths: float) -> dict[str, float]:
    return {"gigahash_per_second": ths * 1000.0}


# ---- REST API (port 80) -------------------------------------------------------------------------


def _real(ths: float) -> dict[str, Any]:
    return {
        name: _gh(ths)
        for name in (
            "last_15m",
            "last_15s",
            "last_1h",
            "last_1m",
            "last_24h",
            "last_30m",
            "last_30s",
            "last_5m",
            "last_5s",
            "since_restart",
        )
    }


def _solver(ths: float, nominal_ths: float) -> dict[str, Any]:
    return {
        "best_share": 0,
        "error_hashrate": {"megahash_per_second": 0.0},
        "found_blocks": 0,
        "nominal_hashrate": _gh(nominal_ths),
        "real_hashrate": _real(ths),
    }


def _shares(snap: Snapshot) -> int:
    """Shares accepted since start (about one every 30 s; a real pool's rate varies)."""
    return max(1, snap.uptime_s // 30)


def _pool_stats(snap: Snapshot) -> dict[str, Any]:
    return {
        "accepted_shares": _shares(snap),
        "best_share": 0,
        "generated_work": 0,
        "last_difficulty": 262144,
        "last_share_time": {"nanos": 0, "seconds": int(snap.t)},
        "rejected_shares": 0,
        "stale_shares": 0,
    }


def _details(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    return {
        "bos_mode": 4,
        "bos_version": {"bos_plus": True, "current": rig.firmware, "major": BOS_MAJOR},
        "bosminer_uptime_s": snap.uptime_s,
        "control_board_soc_family": 3,
        "hostname": rig.hostname,
        "kernel_version": "4.9.113",
        "mac_address": rig.mac.lower(),
        "miner_identity": {
            "brand": 1,
            "miner_model": rig.spec.rpc_type,
            "model": 0,
            "name": rig.spec.rpc_type,
        },
        "platform": 4,
        "psu_info": {
            "fw_version": None,
            "max_voltage": {"volt": 15.2},
            "min_voltage": {"volt": 11.96},
            "model_name": "APW121215d/e",
            "serial_number": None,
            "version": 117,
        },
        "serial_number": rig.serial,
        "status": _status(rig, snap),
        "sticker_hashrate": _gh(rig.spec.hashrate_ths),
        "system_uptime": snap.uptime_s,
        "system_uptime_s": snap.uptime_s,
        "uid": rig.serial[-16:],
    }


def _stats(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    watts = round(snap.power_w)
    return {
        "miner_stats": _solver(snap.hashrate_ths, rig.spec.hashrate_ths),
        "pool_stats": _pool_stats(snap),
        "power_stats": {
            "approximated_consumption": {"watt": watts},
            "efficiency": {
                "joule_per_terahash": watts / snap.hashrate_ths if snap.hashrate_ths else 0.0
            },
        },
    }


def _hashboards(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    nominal = rig.spec.hashrate_ths / rig.spec.boards
    boards = []
    for b in snap.boards:
        boards.append(
            {
                "board_name": "BHB42601",
                "board_temp": {"degree_c": b.board_temp_c},
                "chip_type": "BM1362",
                "chips_count": b.chips,
                "current_frequency": {"hertz": b.freq_mhz * 1e6},
                "current_voltage": {"volt": 13.2 if b.alive else 0.0},
                "enabled": True,
                "highest_chip_temp": {
                    "id": b.index + 1,
                    "location": 1,
                    "temperature": {"degree_c": b.chip_temp_c},
                },
                "highest_outlet_temp": {"degree_c": b.board_temp_c},
                "id": str(b.index + 1),
                "lowest_inlet_temp": {"degree_c": snap.inlet_c},
                "model": "BHB42601",
                "serial_number": f"{rig.serial}B{b.index + 1}",
                "stats": _solver(b.hashrate_ths, nominal if b.alive else 0.0),
            }
        )
    return {"hashboards": boards}


def _tuner(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    target = _state(rig).target_w
    return {
        "mode_state": {
            "powertargetmodestate": {
                "current_target": {"watt": target},
                "profile": {
                    "created": {"nanos": 0, "seconds": int(rig.boot_t)},
                    "estimated_power_consumption": {"watt": target},
                    "measured_hashrate": _gh(rig.spec.hashrate_ths),
                    "target": {"watt": target},
                },
            }
        },
        "overall_tuner_state": TUNER_STABLE,
    }


def _cooling(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    return {
        "fans": [
            {"position": i, "rpm": snap.fan_rpm, "target_speed_ratio": 1.0}
            for i in range(rig.spec.fans)
        ],
        "highest_temperature": {
            "id": None,
            "location": 1,
            "temperature": {"degree_c": snap.chip_temp_c},
        },
    }


def _configuration(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    return {
        "pool_groups": [],
        "tuner": {
            "enabled": True,
            "hashrate_target": None,
            "power_target": {"watt": _state(rig).target_w},
            "tuner_mode": 1,
        },
    }


def _constraints(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    lo, default, hi = constraints(rig)
    return {
        "tuner_constraints": {
            "power_target": {
                "default": {"watt": default},
                "min": {"watt": lo},
                "max": {"watt": hi},
            },
            "enabled": {"default": True},
            "default_mode": 1,
        }
    }


def _pools(rig: SimRig, snap: Snapshot) -> list[dict[str, Any]]:
    return [
        {
            "name": "default",
            "pools": [
                {
                    "active": snap.mining,
                    "alive": True,
                    "enabled": True,
                    "stats": _pool_stats(snap),
                    "uid": rig.serial[-16:],
                    "url": "stratum+tcp://pool.example:3333",
                    "user": "rigpilot.sim",
                }
            ],
            "strategy": {"quota": {"value": 1}},
        }
    ]


def _network(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    return {
        "default_gateway": "",
        "dns_servers": ["127.0.0.1"],
        "hostname": rig.hostname,
        "mac_address": rig.mac.lower(),
        "name": "eth0",
        "networks": [{"address": rig.address, "netmask": "255.0.0.0"}],
        "protocol": 1,
    }


_REST_READS: dict[str, Callable[[SimRig, Snapshot], Any]] = {
    "miner/details": _details,
    "miner/stats": _stats,
    "miner/hw/hashboards": _hashboards,
    "miner/errors": lambda rig, snap: {"errors": []},
    "performance/tuner-state": _tuner,
    "cooling/state": _cooling,
    "configuration/miner": _configuration,
    "configuration/constraints": _constraints,
    "actions/locate": lambda rig, snap: _state(rig).locate,
    "pools": _pools,
    "network": _network,
    "version": lambda rig, snap: {"major": 1, "minor": 0, "patch": 0},
}
_REST_WRITES = frozenset({"performance/power-target", "actions/pause", "actions/resume"})

INDEX = (
    b'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Braiins OS</title></head>'
    b'<body><div id="root"></div></body></html>'
)


def _json_reply(status: int, value: Any) -> HttpResponse:
    return HttpResponse(status, _encode(value).encode(), {"Content-Type": "application/json"})


def _rest_error(rig: SimRig, status: int, code: int, message: str) -> HttpResponse:
    rig.counters.rejected += 1
    return _json_reply(status, {"code": code, "message": message, "details": []})


def handle_http(rig: SimRig, request: HttpRequest) -> HttpResponse:  # noqa: C901, PLR0911, PLR0912  one case per path of the firmware's REST API
    """Answer one request to port 80: the web UI's page or the REST API."""
    path = request.path
    if path in ("/", "/index.html") and request.method == "GET":
        rig.counters.by_command["web_index"] += 1
        return HttpResponse(200, INDEX, {"Content-Type": "text/html"})
    if not path.startswith("/api/v1/"):
        return _rest_error(rig, 404, G_NOT_FOUND, "Not Found")
    name = path.removeprefix("/api/v1/")
    counters = rig.counters
    if name == "auth/login":
        if request.method != "POST":
            return _rest_error(rig, 405, G_UNIMPLEMENTED, "Method Not Allowed")
        try:
            body = json.loads(request.body)
            user, password = str(body["username"]), str(body["password"])
        except (ValueError, UnicodeDecodeError, TypeError, KeyError):
            return _rest_error(rig, 400, G_INVALID_ARGUMENT, "invalid login request")
        token = _login(rig, user, password)
        if token is None:
            return _rest_error(rig, 401, G_UNAUTHENTICATED, "invalid username or password")
        counters.by_command["auth/login"] += 1
        return _json_reply(200, {"token": token, "timeout_s": TOKEN_TIMEOUT_S})
    known = name in _REST_READS or name in _REST_WRITES
    if not known:
        return _rest_error(rig, 404, G_NOT_FOUND, f"unknown API path {path!r}")
    if not _authorised(rig, request.headers.get("authorization")):
        return _rest_error(rig, 401, G_UNAUTHENTICATED, "missing or invalid token")
    if name in _REST_READS:
        if request.method != "GET":
            return _rest_error(rig, 405, G_UNIMPLEMENTED, "Method Not Allowed")
        counters.reads += 1
        counters.by_command[name] += 1
        return _json_reply(200, _REST_READS[name](rig, rig.snapshot()))
    if request.method not in ("PUT", "PATCH"):
        return _rest_error(rig, 405, G_UNIMPLEMENTED, "Method Not Allowed")
    if name == "performance/power-target":
        try:
            watt = json.loads(request.body)["watt"]
        except (ValueError, UnicodeDecodeError, TypeError, KeyError):
            return _rest_error(rig, 400, G_INVALID_ARGUMENT, 'expected {"watt": N}')
        if not isinstance(watt, int) or isinstance(watt, bool):
            return _rest_error(rig, 400, G_INVALID_ARGUMENT, f"watt: not an integer: {watt!r}")
        refusal = _set_target(rig, watt)
        if refusal is not None:
            return _rest_error(rig, 400, G_INVALID_ARGUMENT, refusal)
        reply: dict[str, Any] = {"power_target": {"watt": watt}}
    else:
        already = _pause(rig, name == "actions/pause")
        reply = {"already_paused" if name == "actions/pause" else "already_mining": already}
    counters.writes += 1
    counters.by_command[name] += 1
    return _json_reply(200, reply)


# ---- cgminer-compatible API (port 4028) --------------------------------------------------------

CODE_INVALID_COMMAND = 14
CODE_INVALID_JSON = 23


def _cg_status(code: int, msg: str, when: int, ok: bool = True) -> list[dict[str, Any]]:
    return [
        {
            "STATUS": "S" if ok else "E",
            "When": when,
            "Code": code,
            "Msg": msg,
            "Description": f"BOSer {BOSER_VERSION}",
        }
    ]


def _cg_error(code: int, msg: str, when: int) -> dict[str, Any]:
    return {"STATUS": _cg_status(code, msg, when, ok=False), "id": 1}


def _cg_version(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    return {
        "STATUS": _cg_status(22, "BOSer versions", when),
        "VERSION": [{"BOSer": BOSER_VERSION, "API": "3.7"}],
        "id": 1,
    }


def _cg_devdetails(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    return {
        "STATUS": _cg_status(69, "Device Details", when),
        "DEVDETAILS": [
            {
                "DEVDETAILS": i,
                "Name": "",
                "ID": i + 1,
                "Driver": "",
                "Kernel": "",
                "Model": rig.spec.rpc_type,
                "Device Path": "",
                "Chips": rig.spec.chips_per_board,
                "Frequency": float(rig.spec.board_freq_mhz),
                "Voltage": 13.2,
            }
            for i in range(rig.spec.boards)
        ],
        "id": 1,
    }


def _cg_summary(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    assert snap is not None
    mhs = snap.hashrate_ths * 1e6
    return {
        "STATUS": _cg_status(11, "Summary", when),
        "SUMMARY": [
            {
                "Elapsed": snap.uptime_s,
                "MHS av": mhs,
                "MHS 5s": mhs,
                "MHS 1m": mhs,
                "MHS 5m": mhs,
                "MHS 15m": mhs,
                "Accepted": 0,
                "Rejected": 0,
                "Hardware Errors": 0,
            }
        ],
        "id": 1,
    }


def _cg_devs(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    assert snap is not None
    return {
        "STATUS": _cg_status(9, f"{len(snap.boards)} ASC(s)", when),
        "DEVS": [
            {
                "ASC": b.index,
                "Name": "",
                "ID": b.index + 1,
                "Enabled": "Y",
                "Status": "Alive" if b.alive else "Dead",
                "Temperature": b.board_temp_c,
                "MHS av": b.hashrate_ths * 1e6,
                "MHS 5s": b.hashrate_ths * 1e6,
                "MHS 1m": b.hashrate_ths * 1e6,
                "Nominal MHS": rig.spec.hashrate_ths / rig.spec.boards * 1e6,
            }
            for b in snap.boards
        ],
        "id": 1,
    }


def _cg_tunerstatus(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    assert snap is not None
    return {
        "STATUS": _cg_status(12, "Tuner Status", when),
        "TUNERSTATUS": [
            {
                "PowerLimit": _state(rig).target_w,
                "ApproximateMinerPowerConsumption": round(snap.power_w),
                "ApproximateChainPowerConsumption": round(snap.power_w * 0.93),
                "DynamicPowerScaling": "Disabled",
                "TunerChainStatus": [
                    {
                        "HashchainIndex": b.index + 1,
                        "Iteration": 0,
                        "LoadedProfile": True,
                        "PowerLimit": _state(rig).target_w // rig.spec.boards,
                        "Stage": "Stable",
                        "Status": "Stable",
                        "StatusCode": 2,
                    }
                    for b in snap.boards
                ],
                "TunerMode": "PowerTarget",
            }
        ],
        "id": 1,
    }


_RPC_READS: dict[str, tuple[SectionBuilder, bool]] = {
    "version": (_cg_version, False),
    "devdetails": (_cg_devdetails, False),
    "summary": (_cg_summary, True),
    "devs": (_cg_devs, True),
    "tunerstatus": (_cg_tunerstatus, True),
}


def handle_rpc(rig: SimRig, request: Any) -> bytes:
    """Answer one request on 4028 (JSON ``{"command": ...}``, reads only)."""
    when = int(time.time())
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        rig.counters.rejected += 1
        return _encode(_cg_error(CODE_INVALID_JSON, "Invalid JSON", when)).encode()
    names = request["command"].split("+")
    sections = read_sections(
        rig,
        names,
        _RPC_READS,
        lambda: _cg_error(CODE_INVALID_COMMAND, "Invalid command", when),
        when,
    )
    if len(names) == 1:
        return _encode(sections[names[0]]).encode()
    return _encode(joined(sections)).encode()


HANDLERS = MakeHandlers(rpc=handle_rpc, http=handle_http, framed=None)


# ---- gRPC API (port 50051) ---------------------------------------------------------------------


def _pb_gh(ths: float) -> pb.GigaHashrate:
    return pb.GigaHashrate(gigahash_per_second=ths * 1000.0)


def _pb_solver(ths: float, nominal_ths: float) -> pb.WorkSolverStats:
    g = _pb_gh(ths)
    return pb.WorkSolverStats(
        real_hashrate=pb.RealHashrate(
            last_5_s=g,
            last_15_s=g,
            last_30_s=g,
            last_1_m=g,
            last_5_m=g,
            last_15_m=g,
            last_30_m=g,
            last_1_h=g,
            last_24_h=g,
            since_restart=g,
        ),
        nominal_hashrate=_pb_gh(nominal_ths),
        error_hashrate=pb.MegaHashrate(megahash_per_second=0.0),
    )


def _g_details(rig: SimRig, req: Any) -> Any:
    snap = rig.snapshot()
    return pb.GetMinerDetailsResponse(
        uid=rig.serial[-16:],
        miner_identity=pb.MinerIdentity(
            brand=pb.MinerBrand.ANTMINER, name=rig.spec.rpc_type, miner_model=rig.spec.rpc_type
        ),
        bos_version=pb.BosVersion(current=rig.firmware, major=BOS_MAJOR, bos_plus=True),
        hostname=rig.hostname,
        mac_address=rig.mac.lower(),
        system_uptime=snap.uptime_s,
        system_uptime_s=snap.uptime_s,
        bosminer_uptime_s=snap.uptime_s,
        sticker_hashrate=_pb_gh(rig.spec.hashrate_ths),
        status=pb.MinerStatus(_status(rig, snap)),
        kernel_version="4.9.113",
        psu_info=pb.PsuInfo(model_name="APW121215d/e"),
        serial_number=rig.serial,
    )


def _g_stats(rig: SimRig, req: Any) -> Any:
    snap = rig.snapshot()
    return pb.GetMinerStatsResponse(
        pool_stats=pb.PoolStats(),
        miner_stats=_pb_solver(snap.hashrate_ths, rig.spec.hashrate_ths),
        power_stats=pb.MinerPowerStats(approximated_consumption=pb.Power(watt=round(snap.power_w))),
    )


def _g_hashboards(rig: SimRig, req: Any) -> Any:
    snap = rig.snapshot()
    nominal = rig.spec.hashrate_ths / rig.spec.boards
    return pb.GetHashboardsResponse(
        hashboards=[
            pb.Hashboard(
                id=str(b.index + 1),
                enabled=True,
                chips_count=b.chips,
                current_frequency=pb.Frequency(hertz=b.freq_mhz * 1e6),
                current_voltage=pb.Voltage(volt=13.2 if b.alive else 0.0),
                highest_chip_temp=pb.TemperatureSensor(
                    location=pb.SensorLocation.CHIP,
                    temperature=pb.Temperature(degree_c=b.chip_temp_c),
                ),
                board_temp=pb.Temperature(degree_c=b.board_temp_c),
                stats=_pb_solver(b.hashrate_ths, nominal if b.alive else 0.0),
                serial_number=f"{rig.serial}B{b.index + 1}",
            )
            for b in snap.boards
        ]
    )


def _g_tuner_state(rig: SimRig, req: Any) -> Any:
    target = pb.Power(watt=_state(rig).target_w)
    return pb.GetTunerStateResponse(
        overall_tuner_state=pb.TunerState.STABLE,
        power_target_mode_state=pb.PowerTargetModeState(current_target=target),
    )


def _g_active_mode(rig: SimRig, req: Any) -> Any:
    target = pb.Power(watt=_state(rig).target_w)
    return pb.PerformanceMode(
        tuner_mode=pb.TunerPerformanceMode(power_target=pb.PowerTargetMode(power_target=target))
    )


def _g_cooling(rig: SimRig, req: Any) -> Any:
    snap = rig.snapshot()
    return pb.GetCoolingStateResponse(
        fans=[pb.FanState(position=i, rpm=snap.fan_rpm) for i in range(rig.spec.fans)],
        highest_temperature=pb.TemperatureSensor(
            location=pb.SensorLocation.CHIP,
            temperature=pb.Temperature(degree_c=snap.chip_temp_c),
        ),
    )


def _g_locate(rig: SimRig, req: Any) -> Any:
    return pb.LocateDeviceStatusResponse(enabled=_state(rig).locate)


def _g_pools(rig: SimRig, req: Any) -> Any:
    snap = rig.snapshot()
    return pb.GetPoolGroupsResponse(
        pool_groups=[
            pb.PoolGroup(
                name="default",
                quota=pb.Quota(value=1),
                pools=[
                    pb.Pool(
                        uid=rig.serial[-16:],
                        url="stratum+tcp://pool.example:3333",
                        user="rigpilot.sim",
                        enabled=True,
                        alive=True,
                        active=snap.mining,
                        stats=pb.PoolStats(accepted_shares=_shares(snap)),
                    )
                ],
            )
        ]
    )


def _g_constraints(rig: SimRig, req: Any) -> Any:
    lo, default, hi = constraints(rig)
    return pb.GetConstraintsResponse(
        tuner_constraints=pb.TunerConstraints(
            power_target=pb.PowerConstraints(
                default=pb.Power(watt=default), min=pb.Power(watt=lo), max=pb.Power(watt=hi)
            )
        )
    )


def _g_configuration(rig: SimRig, req: Any) -> Any:
    return pb.GetMinerConfigurationResponse(
        pool_groups=[
            pb.PoolGroupConfiguration(
                uid="default",
                name="default",
                quota=pb.Quota(value=1),
                pools=[
                    pb.PoolConfiguration(
                        uid=rig.serial[-16:],
                        url="stratum+tcp://pool.example:3333",
                        user="rigpilot.sim",
                        enabled=True,
                    )
                ],
            )
        ],
        tuner=pb.TunerConfiguration(
            enabled=True,
            tuner_mode=pb.TunerMode.POWER_TARGET,
            power_target=pb.Power(watt=_state(rig).target_w),
        ),
    )


def _g_set_target(rig: SimRig, req: Any) -> Any:
    watt = int(req.power_target.watt)
    refusal = _set_target(rig, watt)
    if refusal is not None:
        raise GRPCError(Status.INVALID_ARGUMENT, refusal)
    return pb.SetPowerTargetResponse(power_target=pb.Power(watt=watt))


def _g_pause(rig: SimRig, req: Any) -> Any:
    return pb.PauseMiningResponse(already_paused=_pause(rig, True))


def _g_resume(rig: SimRig, req: Any) -> Any:
    return pb.ResumeMiningResponse(already_mining=_pause(rig, False))


_GRPC: dict[str, tuple[Callable[[SimRig, Any], Any], bool]] = {
    # path: (answer, is a write)
    "/braiins.bos.v1.MinerService/GetMinerDetails": (_g_details, False),
    "/braiins.bos.v1.MinerService/GetMinerStats": (_g_stats, False),
    "/braiins.bos.v1.MinerService/GetHashboards": (_g_hashboards, False),
    "/braiins.bos.v1.PerformanceService/GetTunerState": (_g_tuner_state, False),
    "/braiins.bos.v1.PerformanceService/GetActivePerformanceMode": (_g_active_mode, False),
    "/braiins.bos.v1.PerformanceService/SetPowerTarget": (_g_set_target, True),
    "/braiins.bos.v1.CoolingService/GetCoolingState": (_g_cooling, False),
    "/braiins.bos.v1.ActionsService/GetLocateDeviceStatus": (_g_locate, False),
    "/braiins.bos.v1.ActionsService/PauseMining": (_g_pause, True),
    "/braiins.bos.v1.ActionsService/ResumeMining": (_g_resume, True),
    "/braiins.bos.v1.PoolService/GetPoolGroups": (_g_pools, False),
    "/braiins.bos.v1.ConfigurationService/GetConstraints": (_g_constraints, False),
    "/braiins.bos.v1.ConfigurationService/GetMinerConfiguration": (_g_configuration, False),
}
_LOGIN = "/braiins.bos.v1.AuthenticationService/Login"
_API_VERSION = "/braiins.bos.ApiVersionService/GetApiVersion"


def _schema() -> dict[str, tuple[type, type]]:
    """Request and reply types of every method, from the schema's service definitions."""
    bases = (
        pb.MinerServiceBase,
        pb.PerformanceServiceBase,
        pb.CoolingServiceBase,
        pb.ActionsServiceBase,
        pb.PoolServiceBase,
        pb.ConfigurationServiceBase,
        pb.AuthenticationServiceBase,
        pb_bos.ApiVersionServiceBase,
    )
    out: dict[str, tuple[type, type]] = {}
    for base in bases:
        for path, handler in base().__mapping__().items():
            out[path] = (handler.request_type, handler.reply_type)
    return out


class BosGrpc:
    """One rig's gRPC services (grpclib takes any object with ``__mapping__``)."""

    def __init__(self, rig: SimRig) -> None:
        self.rig = rig

    def _check(self) -> None:
        rig = self.rig
        if not rig.reachable() or rig.has(Fault.REFUSE) or rig.has(Fault.HANG):
            raise GRPCError(Status.UNAVAILABLE, "miner unavailable")

    def _unary(
        self, path: str, answer: Callable[[SimRig, Any], Any], write: bool
    ) -> Callable[[Stream[Any, Any]], Awaitable[None]]:
        async def handle(stream: Stream[Any, Any]) -> None:
            request = await stream.recv_message()
            self._check()
            rig = self.rig
            token = stream.metadata.get("authorization") if stream.metadata else None
            if not _authorised(rig, str(token) if token is not None else None):
                rig.counters.rejected += 1
                raise GRPCError(Status.UNAUTHENTICATED, "missing or invalid token")
            try:
                reply = answer(rig, request)
            except GRPCError:
                rig.counters.rejected += 1
                raise
            if write:
                rig.counters.writes += 1
            else:
                rig.counters.reads += 1
            rig.counters.by_command["grpc:" + path.rsplit("/", 1)[1]] += 1
            await stream.send_message(reply)

        return handle

    async def _login(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        self._check()
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "no login request")
        token = _login(self.rig, request.username, request.password)
        if token is None:
            self.rig.counters.rejected += 1
            raise GRPCError(Status.UNAUTHENTICATED, "invalid username or password")
        self.rig.counters.by_command["grpc:Login"] += 1
        await stream.send_initial_metadata(metadata={"authorization": token})
        await stream.send_message(pb.LoginResponse(token=token, timeout_s=TOKEN_TIMEOUT_S))

    async def _api_version(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        self._check()
        self.rig.counters.by_command["grpc:GetApiVersion"] += 1
        await stream.send_message(pb_bos.ApiVersion(major=1, minor=0, patch=0))

    def __mapping__(self) -> dict[str, Handler]:
        types = _schema()
        mapping: dict[str, Handler] = {}
        for path, (answer, write) in _GRPC.items():
            req, rep = types[path]
            mapping[path] = Handler(
                self._unary(path, answer, write), Cardinality.UNARY_UNARY, req, rep
            )
        req, rep = types[_LOGIN]
        mapping[_LOGIN] = Handler(self._login, Cardinality.UNARY_UNARY, req, rep)
        req, rep = types[_API_VERSION]
        mapping[_API_VERSION] = Handler(self._api_version, Cardinality.UNARY_UNARY, req, rep)
        return mapping


async def serve_grpc(rigs: list[SimRig], port: int = GRPC_PORT) -> list[Server]:
    """Start one gRPC server per Braiins OS rig, on the rig's address."""
    servers: list[Server] = []
    for rig in rigs:
        server = Server([BosGrpc(rig)])
        await server.start(rig.address, port)
        servers.append(server)
    return servers
