"""ePIC (ePIC Blockchain's PowerPlay firmware for Antminers, ``umcOS``), as pyasic 0.79 sees it.

ePIC answers an HTTP API on port 4028, not the cgminer API: ``GET /summary``, ``/capabilities``,
``/network`` and ``/temps`` return JSON objects, and every command is a ``POST`` of a JSON body
``{"param": ..., "password": ...}`` answered ``{"result": true|false, "error": null|"..."}``
(the shape in ePIC's own API notes, epicblockchain/epic-dashboard ``docs/API.md``). The web
dashboard on port 80 is a page titled ``Miner Web Dashboard``, which is what pyasic's detection
looks for; it then reads the model from ``GET :4028/capabilities`` (``Model``).

Commands simulated (the ones pyasic and asic-rs send):

- ``POST /miner`` ``{"param": "Stop"}`` stops mining (``Status.Operating State`` becomes
  ``Idling``: :data:`Mode.SLEEP`), ``{"param": "Autostart"}`` starts it again (normal mode, at the
  tuner's target);
- ``POST /perpetualtune`` ``{"param": true|false}`` switches the tuner on or off (off: the
  boards run at the model's default clock);
- ``POST /perpetualtune/algo`` ``{"param": {"algo": "VoltageOptimizer", "target": TH/s}}`` sets
  the tuner's hashrate target, within the ``min``..``max`` of ``/capabilities``.

The rig physics runs the target as the rig's frequency percent (target / default hashrate), so
a target really changes hashrate, watts and temperature; the tuner reports ``Optimized`` once
the boards have reached it. The settings survive a reboot (the target is applied again when the
rig is back); a factory reset returns to the default target.

Shapes follow the captures in ``tests/fixtures/captures/epic/v1`` (same keys, types and
nesting); values come from :meth:`SimRig.snapshot`. Not in the captures, so this module's own
choices: a wrong or missing password is answered ``401`` with
``{"result": false, "error": "..."}``; a body that is not JSON, or a ``param`` of the wrong type,
``400`` with the same shape; an unknown path ``404``; every reply carries a Content-Length.

Counters: one GET is one read, one accepted POST one write; ``rejected`` counts refused POSTs
(password, parameter) and unknown paths.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from simulator.models import EPIC_FIRMWARE
from simulator.physics import Mode, Phase
from simulator.protocol import HttpRequest, HttpResponse, MakeHandlers
from simulator.rig import Fault, SimRig, Snapshot

__all__ = ["DEFAULT_PASSWORD", "EPIC_FIRMWARE", "HANDLERS", "handle_api", "handle_web"]

DEFAULT_PASSWORD = "letmein"  # pyasic's default_epic_web_password
ALGORITHMS = ("VoltageOptimizer", "ChipTune", "BoardTune")
MIN_FRACTION = 0.4  # the tuner's lowest target, of the default hashrate
MAX_FRACTION = 1.3  # and its highest (the physics' frequency range is 0.3 .. 1.3)
THROTTLE_STEP = 5
JSON_HEADERS = {"Content-Type": "application/json"}

_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

DASHBOARD = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Miner Web Dashboard</title></head>
<body><div id="root"></div><script src="/static/js/main.js"></script></body>
</html>
"""


@dataclass(slots=True)
class _EpicState:
    """What ePIC keeps that SimRig has no field for."""

    tuner: bool = True
    algorithm: str = "VoltageOptimizer"
    target_ths: int = 0  # 0: the default hashrate


def _state(rig: SimRig) -> _EpicState:
    st = rig.firmware_state
    if not isinstance(st, _EpicState):  # new rig, or factory reset since
        st = _EpicState(target_ths=default_hashrate(rig))
        rig.firmware_state = st
    elif st.tuner and rig.freq_pct != _freq_pct(rig, st.target_ths) and rig.freq_pct == 0:
        rig.set_freq_pct(_freq_pct(rig, st.target_ths))  # rebooted: its saved target again
    return st


def default_hashrate(rig: SimRig) -> int:
    """``Default Hashrate`` of ``/capabilities``: the model's nameplate TH/s, whole."""
    return round(rig.spec.hashrate_ths)


def target_range(rig: SimRig) -> tuple[int, int]:
    """The tuner's ``min`` and ``max`` target (TH/s)."""
    default = default_hashrate(rig)
    return round(default * MIN_FRACTION), int(default * MAX_FRACTION)


def _freq_pct(rig: SimRig, target_ths: int) -> int:
    return round((target_ths / default_hashrate(rig) - 1.0) * 100.0)


def _json(status: int, value: Any) -> HttpResponse:
    return HttpResponse(status, _encode(value).encode(), dict(JSON_HEADERS))


def _result(status: int, error: str | None) -> HttpResponse:
    return _json(status, {"result": error is None, "error": error})


def _model(rig: SimRig) -> str:
    """ePIC's ``Model``: the stock model name with its ``AntMiner`` spelling (capture:
    ``AntMiner S19 XP``)."""
    return rig.spec.rpc_type.replace("Antminer", "AntMiner", 1)


# ---- reads ---------------------------------------------------------------------------------------


def _summary(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    st = _state(rig)
    spec = rig.spec
    running = snap.phase is Phase.RUNNING and snap.mode is not Mode.SLEEP
    default_clock = float(spec.board_freq_mhz)
    hbs = []
    for board in snap.boards:
        if not board.alive:
            continue
        ideal = spec.hashrate_ths / spec.boards * (1.0 + rig.freq_pct / 100.0)
        pct = round(board.hashrate_ths / ideal * 100.0, 1) if ideal > 0 else 0.0
        hbs.append(
            {
                "Core Clock": [],
                "Core Clock Avg": round(board.freq_mhz, 1),
                "Hashrate": [round(board.hashrate_ths * 1e6, 1), pct, 0.8 if running else 0.0],
                "Index": board.index,
                "Input Current": 0.0,
                "Input Power": 0.0,
                "Input Voltage": 12.6,
                "Output Current": 0.0,
                "Output Power": 0.0,
                "Output Voltage": 0.0,
                "Temperature": round(board.chip_temp_c, 3),
            }
        )
    fans: dict[str, int | None] = {}
    for i in range(12):
        rpm = snap.fan_rpm + (60 if i % 2 else -60) if snap.fan_rpm else 0
        fans[f"Fans Speed {i + 1}"] = rpm if i < spec.fans else None
    target = st.target_ths
    clock = default_clock * (1.0 + rig.freq_pct / 100.0)
    optimized = running and abs(snap.hashrate_ths - target) <= 0.03 * target
    accepted = snap.uptime_s // 12
    return {
        "Disable Board On Failure": True,
        "Enable Boards On Idle": False,
        "Fans": {
            "Fan Mode": {"Auto": {"Idle Speed": 20, "Target Temperature": 60}},
            "Fans Speed": 100,
            "Minimum Working Fans": 0,
        },
        "Fans Rpm": dict(sorted(fans.items())),
        "HBStatus": [{"Detected": True, "Enabled": b.alive, "Index": b.index} for b in snap.boards],
        "HBs": hbs,
        "Hostname": rig.hostname,
        "HwConfig": {
            "Boards Target Clock": [
                {"Data": round(clock, 1), "Index": b.index} for b in snap.boards if b.alive
            ]
        },
        "IdleOnConnectionLost": True,
        "Last License Error": None,
        "Mining": {"Algorithm": "SHA-256", "Coin": "BTC"},
        "Misc": {"Critical Temp": 100.0, "Locate Miner State": False, "Shutdown Temp": 85.0},
        "OS Type": "umcOS",
        "Overdrive": False,
        "PerpetualTune": {
            "Algorithm": {
                st.algorithm: {
                    "Min Throttle Target": target_range(rig)[0],
                    "Optimized": optimized,
                    "Target": target,
                    "Throttle Step": THROTTLE_STEP,
                    "Throttle Target": None,
                    "Unit": "TH/s",
                }
            },
            "Running": st.tuner,
        },
        "Power Supply Stats": {
            "Input Current": 0.0,
            "Input Power": round(snap.power_w, 4),
            "Input Voltage": 0.0,
            "Output Current": 0.0,
            "Output Power": 0.0,
            "Output Voltage": 12.595 if running else 0.0,
            "Target Voltage": 12600,
        },
        "PresetInfo": {"Target Power": round(rig.spec.power_w / 100.0) * 100},
        "Session": {
            "Accepted": accepted,
            "Active HBs": len(hbs) if running else 0,
            "Average MHs": round(snap.hashrate_ths * 1e6, 1),
            "Difficulty": 262144.0,
            "Last Accepted Share Timer": 25,
            "Last Accepted Share Timestamp": int(time.time()) - 25,
            "Last Work Timer": 34,
            "Last Work Timestamp": int(time.time()) - 34,
            "LastAverageMHs": {
                "Hashrate": round(snap.hashrate_ths * 1e6, 1),
                "Timestamp": int(time.time()) // 900 * 900,
            },
            "Rejected": 0,
            "Startup String": time.strftime(
                "%a, %d %b %Y %H:%M:%S +0000", time.gmtime(time.time() - snap.uptime_s)
            ),
            "Startup Timestamp": int(time.time()) - snap.uptime_s,
            "Submitted": accepted,
            "Uptime": snap.uptime_s,
            "WorkReceived": snap.uptime_s // 36,
        },
        "Software": rig.firmware,
        "Status": {
            "Last Command": None,
            "Last Command Result": None,
            "Last Error": None,
            "Operating State": "Mining" if rig.mode is not Mode.SLEEP else "Idling",
        },
        "Stratum": {
            "Average Latency": 0.038,
            "Config Id": 0,
            "Current Pool": "mine.ocean.xyz:3334",
            "Current User": f"rigpilot.{rig.serial[-6:].lower()}",
            "IsPoolConnected": running,
            "Worker Unique Id": False,
            "Worker Unique Id Variant": "IpAddress",
        },
        "StratumConfigs": [
            {
                "login": f"rigpilot.{rig.serial[-6:].lower()}",
                "password": "x",
                "pool": "stratum+tcp://mine.ocean.xyz:3334",
            }
        ],
    }


def _capabilities(rig: SimRig) -> dict[str, Any]:
    spec = rig.spec
    default = default_hashrate(rig)
    low, high = target_range(rig)
    per_chip = spec.hashrate_ths * 1e6 / (spec.boards * spec.chips_per_board) / spec.board_freq_mhz
    presets = []
    for fraction in (0.6, 0.75, 0.9, 1.0, 1.1, 1.2):
        presets.append(
            {
                "clk": round(spec.board_freq_mhz * fraction),
                "hashrate": round(default * fraction, 1),
                "power": round(spec.power_w * fraction**1.6 / 50) * 50,
                "voltage": round(12300 + 1200 * (fraction - 0.6) / 0.6),
            }
        )
    names = ("Voltage Optimizer", "Chip Tune", "Board Tune")
    tune = [
        {"algorithm": a, "description": f"{n} (simulated)", "max": high, "min": low, "name": n}
        for a, n in zip(ALGORITHMS, names, strict=True)
    ]
    return {
        "Board Serial Numbers": [f"{rig.serial[:5]}{i:012d}" for i in range(spec.boards)],
        "Chip Type": "BM1362",
        "Chips Per Bank": 10,
        "Coins": ["BTC"],
        "Control Board Version": {
            "carrierBoardVersion": "4.1.0",
            "cpuHardware": "STM32 (Device Tree Support)",
            "cpuSerial": rig.serial,
            "somBoardVersion": "7.1.0",
        },
        "Default Clock": round(spec.board_freq_mhz),
        "Default Hashrate": default,
        "Default Voltage": 12900,
        "Display": ["ClksAndVoltage", "ShutdownTemp", "PerpetualTune"],
        "Max Clock Configs": 1,
        "Max HBs": spec.boards,
        "Model": _model(rig),
        "Model Subtype": "BHB42601",
        "Performance Estimator": {
            "Chip Count": spec.chips_per_board,
            "Hashes Per Second Per Chip": round(per_chip, 1),
        },
        "PerpetualTune": tune,
        "Psu Info": {"FW": 25, "Max Vout": 15182, "Min Vout": 11877, "PSU Type": 118},
        "Temp Sensor Info": {"Count": spec.boards, "Type": "Board"},
        "Tune Presets": presets,
        "Voltage Estimator": {"Slope": 0.0041, "Y Intercept": 11.0},
    }


def _network(rig: SimRig) -> dict[str, Any]:
    prefix = rig.address.rpartition(".")[0]
    return {
        "dhcp": {
            "address": rig.address,
            "dns": f"{prefix}.1",
            "gateway": f"{prefix}.1",
            "mac_address": rig.mac,
            "netmask": "255.255.255.0",
        }
    }


def _temps(rig: SimRig, snap: Snapshot) -> list[dict[str, Any]]:
    return [
        {
            "Data": [round(b.board_temp_c, 3), round(b.chip_temp_c, 3)] if b.alive else [0.0, 0.0],
            "Index": b.index,
            "Total": 0.0,
        }
        for b in snap.boards
    ]


# ---- writes --------------------------------------------------------------------------------------


def _miner(rig: SimRig, param: Any) -> str | None:
    if param not in ("Stop", "Autostart"):
        return f"Invalid param {param!r}: expected Stop or Autostart"
    rig.set_mode(Mode.SLEEP if param == "Stop" else Mode.NORMAL)
    return None


def _perpetualtune(rig: SimRig, param: Any) -> str | None:
    if not isinstance(param, bool):
        return f"Invalid param {param!r}: expected true or false"
    st = _state(rig)
    if rig.set_freq_pct(_freq_pct(rig, st.target_ths) if param else 0):
        st.tuner = param
    return None


def _algo(rig: SimRig, param: Any) -> str | None:
    if not isinstance(param, dict):
        return 'Invalid param: expected {"algo": ..., "target": ...}'
    algo, target = param.get("algo"), param.get("target")
    if algo not in ALGORITHMS:
        return f"Invalid algo {algo!r}: expected one of {', '.join(ALGORITHMS)}"
    low, high = target_range(rig)
    if not isinstance(target, int | float) or isinstance(target, bool):
        return f"Invalid target {target!r}: expected a number of TH/s"
    if not low <= target <= high:
        return f"Invalid target {target}: outside {low}..{high} TH/s"
    st = _state(rig)
    if rig.has(Fault.IGNORE_WRITES):
        return None
    st.algorithm, st.target_ths = str(algo), round(target)
    if st.tuner:
        rig.set_freq_pct(_freq_pct(rig, st.target_ths))
    return None


_WRITES = {"/miner": _miner, "/perpetualtune": _perpetualtune, "/perpetualtune/algo": _algo}


def handle_api(rig: SimRig, request: HttpRequest) -> HttpResponse:  # noqa: PLR0911  one reply per path and refusal, as the firmware
    """Answer one request to ePIC's HTTP API on port 4028."""
    counters = rig.counters
    path = request.path.rstrip("/") or "/"
    if request.method == "GET":
        reads = {"/summary", "/capabilities", "/network", "/temps"}
        if path not in reads:
            counters.rejected += 1
            return _result(404, f"Unknown endpoint {path}")
        counters.reads += 1
        counters.by_command[path.lstrip("/")] += 1
        if path == "/capabilities":
            return _json(200, _capabilities(rig))
        if path == "/network":
            return _json(200, _network(rig))
        snap = rig.snapshot()
        return _json(200, _summary(rig, snap) if path == "/summary" else _temps(rig, snap))
    if request.method != "POST":
        counters.rejected += 1
        return _result(405, f"Method {request.method} not allowed")
    write = _WRITES.get(path)
    if write is None:
        counters.rejected += 1
        return _result(404, f"Unknown endpoint {path}")
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        counters.rejected += 1
        return _result(400, "Invalid JSON body")
    if not isinstance(body, dict):
        counters.rejected += 1
        return _result(400, "Invalid JSON body: expected an object")
    if body.get("password") != DEFAULT_PASSWORD:
        counters.rejected += 1
        return _result(401, "Incorrect password")
    counters.by_command[path.lstrip("/")] += 1
    error = write(rig, body.get("param"))
    if error is not None:
        counters.rejected += 1
        return _result(400, error)
    counters.writes += 1
    return _result(200, None)


def handle_web(rig: SimRig, request: HttpRequest) -> HttpResponse:
    """Port 80: the dashboard's page (what pyasic's detection reads), nothing else."""
    if request.method == "GET" and request.path in ("/", "/index.html"):
        return HttpResponse(200, DASHBOARD, {"Content-Type": "text/html"})
    return HttpResponse(404, b"<html><body><h1>404 Not Found</h1></body></html>")


HANDLERS = MakeHandlers(rpc=None, http=handle_web, framed=None, api_http=handle_api)
