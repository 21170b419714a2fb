"""LuxOS (Luxor's firmware for Antminers, ``LUXminer``), as pyasic 0.79 sees it on port 4028.

LuxOS answers a cgminer-compatible API on 4028 and nothing else here (no web UI is simulated:
port 80 resets, so pyasic's detection decides on the RPC ``version``, whose ``LUXminer`` makes it
a LuxOS rig). Reads: ``version``, ``config``, ``summary``, ``stats``, ``devs``, ``pools``,
``groups``, ``fans``, ``temps``, ``tempctrl``, ``power``, ``profiles``, ``atm``, ``session``,
several at once joined with ``+`` (``{"summary":[{...}],"power":[{...}],"id":1}``). Writes need a
session: ``logon`` opens one (``SESSION[0].SessionID``), and every privileged command takes the
session id as its first parameter (``curtail`` ``ID,sleep`` / ``ID,wakeup``, ``profileset``
``ID,NAME``, ``atmset`` ``ID,enabled=false``, ``logoff`` ``ID``). A privileged command without
the open session's id, and ``profileset`` while ATM is enabled, is refused (``STATUS`` ``E``).

Shapes follow the real replies in ``tests/fixtures/captures/luxminer/v1`` (same sections, field
names and types); values come from :meth:`SimRig.snapshot`. The firmware's own settings map onto
the one rig physics: ``curtail sleep`` is :data:`Mode.SLEEP`, ``wakeup`` is normal mode, and a
profile is a frequency step of 25 MHz from the model's nominal frequency, applied as the rig's
frequency percent (so a profile really changes hashrate, watts and temperature). The status codes
of error replies are not in the captures and are this module's own.

Counters: one request is one read or one write; ``by_command`` counts each command by name;
``rejected`` counts unknown commands, refused privileged commands and malformed requests.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from simulator.models import LUXOS_FIRMWARE
from simulator.physics import CHIP_TARGET_C, Mode, Phase, power_at
from simulator.protocol import MakeHandlers, SectionBuilder, joined, read_sections
from simulator.rig import Fault, SimRig, Snapshot

__all__ = ["HANDLERS", "LUXOS_FIRMWARE", "PROFILE_STEP_MHZ", "handle_rpc", "profile_table"]

COMPILE_TIME = "Tue Apr  8 22:05:35 UTC 2025"
API_VERSION = "3.7"
PROFILE_STEP_MHZ = 25  # LuxOS profiles are 25 MHz apart (capture: 190MHz ... 790MHz)
PROFILE_STEPS = range(-8, 5)  # default -8 .. default +4
SLOTS = 4

# cgminer-style codes of the captures; the error codes are this simulator's.
CODE_SUMMARY = 11
CODE_VERSION = 22
CODE_CONFIG = 33
CODE_POOLS = 7
CODE_DEVS = 9
CODE_STATS = 70
CODE_TEMPS = 201
CODE_FANS = 202
CODE_POWER = 311
CODE_PROFILES = 323
CODE_ATM = 339
CODE_ATMSET = 340
CODE_INVALID_COMMAND = 14
CODE_INVALID_JSON = 23
CODE_MISSING_COMMAND = 24
CODE_SESSION = 300
CODE_LOGON = 301
CODE_LOGOFF = 302
CODE_CURTAIL = 303
CODE_PROFILESET = 304
CODE_TEMPCTRL = 305
CODE_GROUPS = 306
CODE_BAD_SESSION = 400
CODE_SESSION_ACTIVE = 401
CODE_BAD_PARAMETER = 402

_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


@dataclass(slots=True)
class _LuxState:
    """What LuxOS keeps that SimRig has no field for."""

    atm: bool = True
    session: str = ""
    sessions_opened: int = 0


def _state(rig: SimRig) -> _LuxState:
    st = rig.firmware_state
    if not isinstance(st, _LuxState):  # new rig, or factory reset since
        st = _LuxState()
        rig.firmware_state = st
    return st


def _name(step: int, freq_mhz: int) -> str:
    return "default" if step == 0 else f"{freq_mhz}MHz"


def profile_table(rig: SimRig) -> list[dict[str, Any]]:
    """The rig's profiles as LuxOS lists them: name, step, frequency, TH/s and W at that step."""
    spec = rig.spec
    nominal = int(spec.board_freq_mhz)
    out: list[dict[str, Any]] = []
    for step in PROFILE_STEPS:
        freq = nominal + step * PROFILE_STEP_MHZ
        f = freq / spec.board_freq_mhz
        out.append(
            {
                "CanRestore": True,
                "Frequency": freq,
                "HasOverrides": False,
                "Hashrate": round(spec.hashrate_ths * f, 1),
                "IsDynamic": True,
                "IsTuned": False,
                "Profile Name": _name(step, freq),
                "Step": str(step),
                "Voltage": 12.0 if step >= 0 else 11.88,
                "Watts": round(power_at(spec, f, spec.boards, CHIP_TARGET_C)),
            }
        )
    return out


def _profile(rig: SimRig, name: str) -> dict[str, Any] | None:
    return next((p for p in profile_table(rig) if p["Profile Name"] == name), None)


def _freq_pct(rig: SimRig, profile: dict[str, Any]) -> int:
    return round((int(profile["Frequency"]) / rig.spec.board_freq_mhz - 1.0) * 100.0)


def _active(rig: SimRig) -> dict[str, Any]:
    """The profile the rig runs: the one its frequency percent is (``default`` after a reboot
    or a factory reset, which return the physics to nominal)."""
    table = profile_table(rig)
    match = next((p for p in table if _freq_pct(rig, p) == rig.freq_pct), None)
    return match or next(p for p in table if p["Step"] == "0")


def _status(rig: SimRig, code: int, msg: str, when: int, ok: bool = True) -> list[dict[str, Any]]:
    return [
        {
            "Code": code,
            "Description": f"LUXminer {rig.firmware}",
            "Msg": msg,
            "STATUS": "S" if ok else "E",
            "When": when,
        }
    ]


def _error(rig: SimRig, code: int, msg: str, when: int) -> dict[str, Any]:
    return {"STATUS": _status(rig, code, msg, when, ok=False), "id": 1}


def _miner_version(rig: SimRig) -> str:
    return rig.firmware.partition("-")[0]


# ---- reads ---------------------------------------------------------------------------------------


def _version(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    return {
        "STATUS": _status(rig, CODE_VERSION, "LUXminer versions", when),
        "VERSION": [
            {
                "API": API_VERSION,
                "CompileTime": COMPILE_TIME,
                "LUXminer": rig.firmware,
                "Miner": _miner_version(rig),
                "Type": rig.spec.rpc_type,
            }
        ],
        "id": 1,
    }


def _config(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    st = _state(rig)
    spec = rig.spec
    prefix = rig.address.rpartition(".")[0]
    profile = _active(rig)
    return {
        "CONFIG": [
            {
                "ASC Count": spec.boards,
                "BcastAddr": f"{prefix}.255",
                "ControlBoardType": "cvitek",
                "Cooling": "Air",
                "CurtailMode": "Sleep" if rig.mode is Mode.SLEEP else "None",
                "DHCP": True,
                "DNS Servers": "",
                "Device Code": "",
                "FPGABuildIdHex": "0x18351835",
                "FPGABuildIdStr": "2018-35-18 35:00",
                "FeeStatus": "Ok",
                "Gateway": f"{prefix}.1",
                "GreenLed": "auto",
                "Hostname": rig.hostname,
                "Hotplug": "None",
                "IPAddr": rig.address,
                "ImmersionMode": False,
                "IsAtmEnabled": st.atm,
                "IsPowerSupplyOn": True,
                "IsSingleVoltage": True,
                "IsTuning": False,
                "Log Interval": 0,
                "LogFileLevel": "info",
                "MACAddr": rig.mac.lower(),
                "Model": spec.rpc_type,
                "NameplateTHS": float(spec.hashrate_ths),
                "Netmask": "255.255.255.0",
                "OS": "LuxOS",
                "PGA Count": 0,
                "PSUHwVersion": "75",
                "PSULabel": "APW121215e",
                "Pool Count": 2,
                "Profile": profile["Profile Name"],
                "ProfileStep": profile["Step"],
                "RedLed": "auto",
                "SerialNumber": rig.serial,
                "Strategy": "Failover",
                "SystemStatus": "Normal",
                "UpdateOnStartup": "off",
                "UpdateOnTimeout": "off",
                "UpdateOnUser": "full",
                "UpdateSource": "https://storage.googleapis.com/luxor-firmware/stable",
                "UpdateTimeout": 60,
            }
        ],
        "STATUS": _status(rig, CODE_CONFIG, "LUXminer config", when),
        "id": 1,
    }


def _summary(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    assert snap is not None
    ghs = round(snap.hashrate_ths * 1000.0, 2)
    return {
        "STATUS": _status(rig, CODE_SUMMARY, "Summary", when),
        "SUMMARY": [
            {
                "Accepted": snap.uptime_s // 3,
                "Best Share": 32768,
                "Device Hardware%": 0.0,
                "Device Rejected%": 0.0,
                "Difficulty Accepted": snap.uptime_s // 3 * 32768,
                "Difficulty Rejected": 0,
                "Difficulty Stale": 0,
                "Discarded": 0,
                "Elapsed": snap.uptime_s,
                "Found Blocks": 0,
                "GHS 15m": ghs,
                "GHS 1m": ghs,
                "GHS 24h": ghs,
                "GHS 30m": ghs,
                "GHS 5m": ghs,
                "GHS 5s": ghs,
                "GHS av": ghs,
                "Get Failures": 0,
                "Getworks": snap.uptime_s // 5,
                "Hardware Errors": 0,
                "Last getwork": when,
                "Local Work": 0,
                "Network Blocks": 0,
                "Pool Rejected%": 0.0,
                "Pool Stale%": 0.0,
                "Rejected": 0,
                "Remote Failures": 0,
                "Stale": 0,
                "Total MH": ghs * 1000.0 * snap.uptime_s,
                "Utility": 0.0,
                "Work Utility": 0.0,
            }
        ],
        "id": 1,
    }


def _temp_quad(chip: float, board: float, alive: bool) -> str:
    """LuxOS's ``temp_chipN`` / ``temp_pcbN``: exhaust-intake-intake-exhaust, whole degrees."""
    if not alive:
        return "0-0-0-0"
    hot, cold = round(chip), round(board)
    return f"{hot}-{cold}-{cold}-{hot}"


def _stats(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    assert snap is not None
    spec = rig.spec
    body: dict[str, Any] = {
        "Calls": 0,
        "Elapsed": snap.uptime_s,
        "GHS 5s": round(snap.hashrate_ths * 1000.0, 2),
        "GHS av": round(snap.hashrate_ths * 1000.0, 2),
        "ID": "BTM_SOC0",
        "Max": 0,
        "Min": 99999999,
        "Mode": 2,
        "STATS": 0,
        "Wait": 0,
    }
    fans = [snap.fan_rpm + (60 if i < 2 else -60) if snap.fan_rpm else 0 for i in range(4)]
    for i in range(SLOTS):
        n = i + 1
        board = snap.boards[i] if i < len(snap.boards) else None
        alive = board is not None and board.alive
        chips = board.chips if board is not None and alive else 0
        body[f"chain_acn{n}"] = chips
        body[f"chain_acs{n}"] = (
            (" oooo" * (chips // 4) + (" o" if chips % 4 else "")) if chips else ""
        )
        body[f"chain_hw{n}"] = 0
        body[f"chain_rate{n}"] = f"{board.hashrate_ths * 1000.0:.2f}" if board and alive else "0"
    for i in range(SLOTS):
        body[f"fan{i + 1}"] = fans[i]
    body["fan_num"] = spec.fans
    for i in range(SLOTS):
        board = snap.boards[i] if i < len(snap.boards) else None
        body[f"freq{i + 1}"] = float(board.freq_mhz) if board and board.alive else 0.0
    running = snap.phase is Phase.RUNNING
    body["frequency"] = int(snap.boards[0].freq_mhz) if snap.boards and running else 0
    body["miner_count"] = spec.boards
    body["miner_id"] = rig.mac.replace(":", "").lower()
    body["miner_version"] = _miner_version(rig)
    body["no_matching_work"] = 0
    body["rate_30m"] = round(snap.hashrate_ths * 1000.0, 2)
    body["rate_unit"] = "GH"
    for i, board in enumerate(snap.boards[:3]):
        body[f"temp{i + 1}"] = float(round(board.chip_temp_c)) if board.alive else 0.0
        body[f"temp2_{i + 1}"] = float(round(board.chip_temp_c)) if board.alive else 0.0
    quads = []
    for i in range(SLOTS):
        board = snap.boards[i] if i < len(snap.boards) else None
        alive = board is not None and board.alive
        quads.append(
            _temp_quad(board.chip_temp_c, board.board_temp_c, alive) if board else "0-0-0-0"
        )
    for i in range(SLOTS):
        body[f"temp_chip{i + 1}"] = quads[i]
    body["temp_max"] = float(round(snap.chip_temp_c))
    body["temp_num"] = spec.boards
    for kind in ("pcb", "pic"):
        for i in range(SLOTS):
            body[f"temp_{kind}{i + 1}"] = quads[i]
    body["total rate"] = round(snap.hashrate_ths * 1000.0 / max(1, spec.boards), 2)
    body["total_acn"] = SLOTS
    body["total_freqavg"] = float(body["frequency"])
    body["total_rateideal"] = round(spec.hashrate_ths * 1000.0 * (1.0 + rig.freq_pct / 100.0), 1)
    return {
        "STATS": [
            {
                "CompileTime": COMPILE_TIME,
                "Miner": _miner_version(rig),
                "Type": spec.rpc_type,
            },
            body,
        ],
        "STATUS": _status(rig, CODE_STATS, "LUXminer stats", when),
        "id": 1,
    }


def _devs(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    assert snap is not None
    nominal = rig.spec.hashrate_ths * 1e6 / rig.spec.boards
    profile = _active(rig)["Profile Name"]
    devs = []
    for board in snap.boards:
        mhs = board.hashrate_ths * 1e6
        devs.append(
            {
                "ASC": board.index,
                "Accepted": snap.uptime_s // 9,
                "Board": "BHB42601",
                "Connector": f"J{board.index + 7}",
                "ControllerIPVersionHex": "0x18351835",
                "ControllerIPVersionStr": "N/A",
                "Device Elapsed": snap.uptime_s,
                "Device Hardware%": 0,
                "Device Rejected%": 0,
                "Diff1 Work": 0,
                "Difficulty Accepted": 0,
                "Difficulty Rejected": 0,
                "Enabled": "Y",
                "Hardware Error MHS 15m": 0,
                "Hardware Errors": 0,
                "ID": board.index,
                "IsRamping": False,
                "IsUserShutdown": rig.mode is Mode.SLEEP,
                "Last Share Difficulty": 32768,
                "Last Share Pool": 0,
                "Last Share Time": when,
                "Last Valid Work": when,
                "MHS 15m": mhs,
                "MHS 1m": mhs,
                "MHS 30m": mhs,
                "MHS 5m": mhs,
                "MHS 5s": mhs,
                "MHS 60m": mhs,
                "MHS av": mhs,
                "Name": "",
                "Nominal MHS": nominal,
                "Profile": profile,
                "Rejected": 0,
                "SerialNumber": f"{rig.serial[:4]}{board.index:013d}",
                "Status": "Alive" if board.alive else "Dead",
                "Temperature": float(round(board.chip_temp_c)),
                "Total MH": mhs * snap.uptime_s,
                "Utility": 0,
            }
        )
    return {
        "DEVS": devs,
        "STATUS": _status(rig, CODE_DEVS, f"{len(devs)} ASC(s)", when),
        "id": 1,
    }


def _pool(index: int, url: str, user: str, active: bool) -> dict[str, Any]:
    return {
        "Accepted": 0,
        "AsicBoost": True,
        "Bad Work": 0,
        "Best Share": 0,
        "Current Block Height": 0,
        "Current Block Version": 536870912,
        "Diff": "32K" if active else "0",
        "Diff1 Shares": 0,
        "Difficulty Accepted": 0,
        "Difficulty Rejected": 0,
        "Difficulty Stale": 0,
        "Discarded": 0,
        "GROUP": 0,
        "Get Failures": 0,
        "Getworks": 0,
        "Has GBT": False,
        "Has Stratum": True,
        "Has Vmask": True,
        "Last Share Difficulty": 0,
        "Last Share Time": "00:00:01",
        "Long Pool": "N",
        "POOL": index,
        "Pool Rejected%": 0.0,
        "Pool Stale%": 0.0,
        "Priority": index,
        "Proxy": "",
        "Proxy Type": "",
        "Quota": 1.0,
        "Rejected": 0,
        "Remote Failures": 0,
        "Stale": 0,
        "Status": "Alive",
        "Stratum Active": active,
        "Stratum Difficulty": 32768 if active else 0,
        "Stratum URL": url.removeprefix("stratum+tcp://"),
        "URL": url,
        "User": user,
        "Work Difficulty": 32768 if active else 0,
        "Works": 0,
    }


def _pools(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    user = f"rigpilot.{rig.serial[-6:].lower()}"
    pools = [
        _pool(0, "stratum+tcp://btc.global.luxor.tech:700", user, True),
        _pool(1, "stratum+tcp://btc.global.luxor.tech:7700", user, False),
    ]
    return {
        "POOLS": pools,
        "STATUS": _status(rig, CODE_POOLS, f"{len(pools)} Pool(s)", when),
        "id": 1,
    }


def _groups(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    return {
        "GROUPS": [{"GROUP": 0, "Name": "Default", "Quota": 1}],
        "STATUS": _status(rig, CODE_GROUPS, "1 Group(s)", when),
        "id": 1,
    }


def _fans(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    assert snap is not None
    pct = max(20, min(100, round(snap.fan_rpm * 100 / 6600))) if snap.fan_rpm else 20
    fans = [
        {
            "FAN": f"FAN{i + 1}",
            "ID": i,
            "RPM": snap.fan_rpm + (60 if i < 2 else -60) if snap.fan_rpm else 0,
            "Speed": pct,
        }
        for i in range(rig.spec.fans)
    ]
    return {
        "FANCTRL": [{"MinFans": 3, "PowerOffSpeed": 20}],
        "FANS": fans,
        "STATUS": _status(rig, CODE_FANS, f"{len(fans)} Fan(s)", when),
        "id": 1,
    }


def _temps(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    assert snap is not None
    temps = []
    for board in snap.boards:
        hot = float(round(board.chip_temp_c)) if board.alive else 0.0
        cold = float(round(board.board_temp_c)) if board.alive else 0.0
        temps.append(
            {
                "BottomLeft": hot,
                "BottomRight": cold,
                "ID": board.index,
                "TEMP": board.index,
                "TopLeft": hot,
                "TopRight": cold,
            }
        )
    place = {
        "BottomLeft": ("Board Exhaust (bottom)", [1, 0]),
        "BottomRight": ("Board Intake (bottom)", [1, 1]),
        "TopLeft": ("Board Exhaust (top)", [0, 0]),
        "TopRight": ("Board Intake (top)", [0, 1]),
    }
    return {
        "METADATA": [{k: {"Label": label, "Position": pos} for k, (label, pos) in place.items()}],
        "STATUS": _status(rig, CODE_TEMPS, f"{len(temps)} Temp(s)", when),
        "TEMPS": temps,
        "id": 1,
    }


def _tempctrl(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    return {
        "STATUS": _status(rig, CODE_TEMPCTRL, "Temperature control values", when),
        "TEMPCTRL": [{"Dangerous": 95, "Hot": 85, "Mode": "Auto", "Target": 75}],
        "id": 1,
    }


def _power(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    assert snap is not None
    return {
        "POWER": [{"PSU": False, "Watts": round(snap.power_w)}],
        "STATUS": _status(rig, CODE_POWER, "Power usage", when),
        "id": 1,
    }


def _profiles(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    return {
        "PROFILES": profile_table(rig),
        "STATUS": _status(rig, CODE_PROFILES, "List profiles", when),
        "id": 1,
    }


def _atm(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    table = profile_table(rig)
    return {
        "ATM": [
            {
                "Enabled": _state(rig).atm,
                "MaxProfile": table[-1]["Profile Name"],
                "MinProfile": table[0]["Profile Name"],
                "PostRampMinutes": 15,
                "StartupMinutes": 15,
                "TempWindow": 10,
            }
        ],
        "STATUS": _status(rig, CODE_ATM, "ATM configuration values", when),
        "id": 1,
    }


def _session(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    return {
        "SESSION": [{"SessionID": _state(rig).session}],
        "STATUS": _status(rig, CODE_SESSION, "Session", when),
        "id": 1,
    }


_READS: dict[str, tuple[SectionBuilder, bool]] = {
    "version": (_version, False),
    "config": (_config, False),
    "summary": (_summary, True),
    "stats": (_stats, True),
    "devs": (_devs, True),
    "pools": (_pools, False),
    "groups": (_groups, False),
    "fans": (_fans, True),
    "temps": (_temps, True),
    "tempctrl": (_tempctrl, False),
    "power": (_power, True),
    "profiles": (_profiles, False),
    "atm": (_atm, False),
    "session": (_session, False),
}


# ---- writes --------------------------------------------------------------------------------------


def _logon(rig: SimRig, args: list[str], when: int) -> dict[str, Any]:
    st = _state(rig)
    if st.session:
        return _error(rig, CODE_SESSION_ACTIVE, "Another session is active", when)
    st.sessions_opened += 1
    digest = hashlib.sha256(f"{rig.serial}/{st.sessions_opened}".encode()).hexdigest()
    st.session = digest[:8]
    return {
        "SESSION": [{"SessionID": st.session}],
        "STATUS": _status(rig, CODE_LOGON, "Session created", when),
        "id": 1,
    }


def _privileged(rig: SimRig, name: str, args: list[str], when: int) -> dict[str, Any]:  # noqa: PLR0911  one reply per privileged command
    st = _state(rig)
    if not args or not st.session or args[0] != st.session:
        return _error(rig, CODE_BAD_SESSION, "Invalid session id", when)
    rest = args[1:]
    if name == "logoff":
        st.session = ""
        return {"STATUS": _status(rig, CODE_LOGOFF, "Session closed", when), "id": 1}
    if name == "curtail":
        if rest not in (["sleep"], ["wakeup"]):
            return _error(rig, CODE_BAD_PARAMETER, f"Invalid curtail mode {rest!r}", when)
        rig.set_mode(Mode.SLEEP if rest[0] == "sleep" else Mode.NORMAL)
        return {"STATUS": _status(rig, CODE_CURTAIL, "Curtail " + rest[0], when), "id": 1}
    if name == "profileset":
        target = _profile(rig, rest[0]) if len(rest) == 1 else None
        if target is None:
            return _error(rig, CODE_BAD_PARAMETER, f"Invalid profile {rest!r}", when)
        if st.atm:
            return _error(rig, CODE_BAD_PARAMETER, "Cannot set profile while ATM is enabled", when)
        rig.set_freq_pct(_freq_pct(rig, target))
        return {
            "PROFILE": [{"Profile": target["Profile Name"]}],
            "STATUS": _status(rig, CODE_PROFILESET, "Profile set", when),
            "id": 1,
        }
    # atmset: key=value pairs; only "enabled" changes anything here
    for pair in rest:
        key, eq, value = pair.partition("=")
        if not eq:
            return _error(rig, CODE_BAD_PARAMETER, f"Invalid parameter {pair!r}", when)
        if key == "enabled" and not rig.has(Fault.IGNORE_WRITES):
            if value not in ("true", "false"):
                return _error(rig, CODE_BAD_PARAMETER, f"Invalid enabled {value!r}", when)
            st.atm = value == "true"
    return {
        "STATUS": _status(
            rig, CODE_ATMSET, "Advanced Thermal Management configuration updated", when
        ),
        "id": 1,
    }


_PRIVILEGED = frozenset({"logoff", "curtail", "profileset", "atmset"})


def handle_rpc(rig: SimRig, request: Any) -> bytes:
    """Answer one LuxOS API request (JSON ``{"command": ..., "parameter": ...}``)."""
    when = int(time.time())
    counters = rig.counters
    if not isinstance(request, dict):
        counters.rejected += 1
        return _encode(_error(rig, CODE_INVALID_JSON, "Invalid JSON", when)).encode()
    command = request.get("command")
    if not isinstance(command, str) or not command:
        counters.rejected += 1
        return _encode(_error(rig, CODE_MISSING_COMMAND, "Missing JSON 'command'", when)).encode()
    parameter = request.get("parameter", "")
    args = [a for a in str(parameter).split(",")] if parameter not in ("", None) else []
    if command == "logon" or command in _PRIVILEGED:
        counters.by_command[command] += 1
        reply = (
            _logon(rig, args, when) if command == "logon" else _privileged(rig, command, args, when)
        )
        if reply["STATUS"][0]["STATUS"] == "S":
            counters.writes += 1
        else:
            counters.rejected += 1
        return _encode(reply).encode()

    names = command.split("+")
    sections = read_sections(
        rig, names, _READS, lambda: _error(rig, CODE_INVALID_COMMAND, "Invalid command", when), when
    )
    if len(names) == 1:
        return _encode(sections[names[0]]).encode()
    return _encode(joined(sections)).encode()


HANDLERS = MakeHandlers(rpc=handle_rpc, http=None, framed=None)
