"""Stock Antminer firmware (bmminer + the lighttpd web UI), as pyasic 0.79 sees it on the wire.

Port 4028 speaks the cgminer API of bmminer: ``version``, ``summary``, ``stats``, ``pools`` and
``devs``, several at once as ``"summary+stats"``. Stock firmware has no write commands there, and
``devdetails`` is not among its commands: it answers ``Invalid command`` (code 14), which is also
what lets pyasic's detection pick "Antminer" (it refuses a reply that holds a DEVDETAILS section).
Replies carry cgminer's trailing NUL.

Port 80 is the web UI behind HTTP digest auth (realm ``antMiner Configuration``, MD5,
``qop="auth"``, user ``root``, password ``rig.web_password``). Every path needs auth, as with the
real lighttpd; authenticated unknown paths answer an HTML 404 (pyasic decides "Marathon" on any
JSON body at ``/kaonsu/v1/brief``). The CGIs under ``/cgi-bin/`` are the ones pyasic uses:
``get_system_info``, ``get_network_info``, ``summary``, ``stats``, ``get_miner_conf``,
``get_blink_status`` (reads) and ``set_miner_conf``, ``blink``, ``reboot`` (writes).

Shapes follow the real firmware replies in ``tests/fixtures/captures/antminer/v2020``; values from
:meth:`SimRig.snapshot`. Counters on ``rig.counters``:

- one RPC request is one read (however many ``+``-joined commands it holds);
  ``by_command`` counts each command by name (``"stats"``);
- one authenticated CGI request is one read or one write; ``by_command`` counts it by file
  name (``"stats.cgi"``), so RPC and web calls stay apart;
- ``rejected``: unknown RPC commands, malformed RPC requests, web requests with wrong
  credentials and authenticated requests for unknown paths. The bare 401 challenge every
  digest client triggers first (no ``Authorization`` header at all) is not counted.

A rig with the ``ignore_writes`` fault answers writes with the usual success and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from simulator.physics import MODE_FREQ, Mode, Phase
from simulator.protocol import (
    HttpRequest,
    HttpResponse,
    MakeHandlers,
    SectionBuilder,
    joined,
    read_sections,
)
from simulator.rig import Fault, SimRig, Snapshot

__all__ = ["HANDLERS", "REALM", "handle_http", "handle_rpc", "make_nonce"]

REALM = "antMiner Configuration"
WEB_USER = "root"
CGMINER_DESCRIPTION = "cgminer 1.0.0"
BMMINER_VERSION = "1.0.0"
API_VERSION = "3.1"
MINER_VERSION = "49.0.1.3"  # bmminer's "Miner" string on current stock firmware
SLOTS = 4  # bmminer always reports four chain slots; unused ones are empty/zero

# cgminer API status codes (api.c)
CODE_POOL = 7
CODE_DEVS = 9
CODE_SUMMARY = 11
CODE_INVALID_COMMAND = 14
CODE_VERSION = 22
CODE_INVALID_JSON = 23
CODE_MISSING_COMMAND = 24
CODE_STATS = 70

# set_miner_conf "miner-mode" / get_miner_conf "bitmain-work-mode"
MODE_CODE: dict[Mode, int] = {Mode.NORMAL: 0, Mode.SLEEP: 1, Mode.LOW: 3, Mode.HIGH: 0}
CODE_MODE: dict[int, Mode] = {0: Mode.NORMAL, 1: Mode.SLEEP, 3: Mode.LOW}
# bmminer's stats "Mode" field (2 on a normally running machine in the capture)
STATS_MODE: dict[Mode, int] = {Mode.NORMAL: 2, Mode.SLEEP: 1, Mode.LOW: 3, Mode.HIGH: 2}

_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

# Board sensor layout: four sensors per board whose mean is the board's reading.
_SENSOR_OFFSETS = (3, -3, 1, -1)
_FAN_OFFSETS = (60, -60, 30, -30)


def _dumps(obj: object) -> bytes:
    return _encode(obj).encode()


# ---- per-rig web-UI settings --------------------------------------------------------------------


@dataclass(slots=True)
class _AmState:
    """What the stock firmware keeps in its config file and that SimRig has no field for."""

    pools: list[dict[str, str]]
    board_serials: tuple[str, ...]
    miner_id: str
    fan_ctrl: bool = False
    fan_pwm: str = "100"
    freq_level: str = "100"
    blink: bool = False
    system_info: bytes = b""
    network_info: bytes = b""


def _state(rig: SimRig) -> _AmState:
    st = rig.firmware_state
    if not isinstance(st, _AmState):  # new rig, or factory reset since
        st = _new_state(rig)
        rig.firmware_state = st
    return st


def _new_state(rig: SimRig) -> _AmState:
    seed = hashlib.sha256(f"{rig.serial}/{rig.address}".encode()).hexdigest()
    worker = f"rigpilot.{rig.serial[-6:].lower()}"
    pools = [
        {"url": "stratum+tcp://btc.global.luxor.tech:700", "user": worker, "pass": "x"},
        {"url": "stratum+tcp://btc.global.luxor.tech:7700", "user": worker, "pass": "x"},
        {"url": "", "user": "", "pass": ""},
    ]
    serials = tuple(
        hashlib.sha256(f"{rig.serial}/board{i}".encode()).hexdigest()[:13].upper()
        for i in range(rig.spec.boards)
    )
    board_sns = tuple(f"{rig.serial[:4]}{s}" for s in serials)
    st = _AmState(pools=pools, board_serials=board_sns, miner_id=seed[:16])
    st.system_info, st.network_info = _identity_pages(rig)
    return st


def _identity_pages(rig: SimRig) -> tuple[bytes, bytes]:
    address = rig.address
    try:
        net = ipaddress.IPv4Network(f"{address}/24", strict=False)
        gateway = str(net.network_address + 1)
    except ValueError:
        gateway = ""
    fs_date, kernel = _firmware_strings(rig.firmware)
    code = rig.spec.model.replace(" ", "")
    system_info = {
        "dnsservers": "",
        "firmware_type": "Release",
        "gateway": gateway,
        "hostname": rig.hostname,
        "ipaddress": address,
        "macaddr": rig.mac,
        "minertype": rig.spec.rpc_type,
        "netdevice": "eth0",
        "netmask": "255.255.255.0",
        "nettype": "DHCP",
        "serinum": rig.serial,
        "system_filesystem_version": f"FR-1.12({fs_date}-{code})",
        "system_kernel_version": kernel,
        "system_mode": "GNU/Linux",
    }
    network_info = {
        "nettype": "DHCP",
        "netdevice": "eth0",
        "macaddr": rig.mac,
        "ipaddress": address,
        "netmask": "255.255.255.0",
        "conf_nettype": "DHCP",
        "conf_hostname": rig.hostname,
        "conf_ipaddress": "",
        "conf_netmask": "",
        "conf_gateway": "",
        "conf_dnsservers": "",
    }
    return _dumps(system_info), _dumps(network_info)


_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


@lru_cache(maxsize=64)
def _firmware_strings(firmware: str) -> tuple[str, str]:
    """(yymmdd, kernel version string) for a bmminer CompileTime such as
    ``Thu Oct  9 18:55:45 CST 2025``."""
    parts = firmware.split()
    try:
        yymmdd = f"{int(parts[-1]) % 100:02d}{_MONTHS[parts[1]]:02d}{int(parts[2]):02d}"
    except (IndexError, KeyError, ValueError):
        yymmdd = "000000"
    return yymmdd, f"Linux 4.9.113 #1 SMP PREEMPT {firmware}"


@lru_cache(maxsize=32)
def _acs(chips: int) -> str:
    """bmminer's per-chip status string: `` ooo ooo ...`` (one ``o`` per healthy chip)."""
    if chips <= 0:
        return ""
    groups = [" " + "o" * min(3, chips - i) for i in range(0, chips, 3)]
    return "".join(groups)


# ---- readings shared by RPC and web --------------------------------------------------------------


def _sensors(value: float) -> tuple[int, int, int, int]:
    base = round(value)
    o = _SENSOR_OFFSETS
    return (base + o[0], base + o[1], base + o[2], base + o[3])


def _fans(rig: SimRig, rpm: int) -> list[int]:
    fans: list[int] = []
    for i in range(SLOTS):
        if i < rig.spec.fans and rpm > 0:
            fans.append(max(0, rpm + _FAN_OFFSETS[i]))
        else:
            fans.append(0)
    return fans


def _ideal_ghs(rig: SimRig, mode: Mode) -> float:
    """What the firmware expects from the current mode, GH/s (sleep keeps the nameplate)."""
    factor = 1.0 if mode is Mode.SLEEP else MODE_FREQ[mode]
    return round(rig.spec.hashrate_ths * 1000.0 * factor, 2)


def _shares(elapsed: int, ghs: float) -> int:
    """A plausible accepted-share count for ``elapsed`` seconds at ``ghs``."""
    return int(elapsed * ghs * 7.2e-7)


def _status(code: int, msg: str, when: int, status: str = "S") -> dict[str, Any]:
    return {
        "STATUS": status,
        "When": when,
        "Code": code,
        "Msg": msg,
        "Description": CGMINER_DESCRIPTION,
    }


# ---- RPC (port 4028) -----------------------------------------------------------------------------


def _rpc_version(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    return {
        "STATUS": [_status(CODE_VERSION, "CGMiner versions", when)],
        "VERSION": [
            {
                "API": API_VERSION,
                "BMMiner": BMMINER_VERSION,
                "CompileTime": rig.firmware,
                "Miner": MINER_VERSION,
                "Type": rig.spec.rpc_type,
            }
        ],
        "id": 1,
    }


def _rpc_summary(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    assert snap is not None
    ghs = round(snap.hashrate_ths * 1000.0, 2)
    elapsed = snap.uptime_s
    accepted = _shares(elapsed, ghs)
    rejected = accepted // 370
    return {
        "STATUS": [_status(CODE_SUMMARY, "Summary", when)],
        "SUMMARY": [
            {
                "Elapsed": elapsed,
                "GHS 5s": ghs,
                "GHS av": ghs,
                "GHS 30m": ghs,
                "Found Blocks": 0,
                "Getwork": elapsed // 13,
                "Accepted": accepted,
                "Rejected": rejected,
                "Hardware Errors": accepted // 7,
                "Utility": round(accepted * 60.0 / elapsed, 2) if elapsed else 0.0,
                "Discarded": elapsed * 90,
                "Stale": 0,
                "Get Failures": 0,
                "Local Work": elapsed * 90,
                "Remote Failures": 0,
                "Network Blocks": elapsed // 600,
                "Total MH": round(ghs * 1000.0 * elapsed, 1),
                "Work Utility": round(ghs * 13.9, 2),
                "Difficulty Accepted": float(accepted * 321687),
                "Difficulty Rejected": float(rejected * 321687),
                "Difficulty Stale": 0.0,
                "Best Share": accepted * 3180000,
                "Device Hardware%": 0.0,
                "Device Rejected%": 0.0,
                "Pool Rejected%": round(100.0 * rejected / accepted, 4) if accepted else 0.0,
                "Pool Stale%": 0.0,
                "Last getwork": when,
            }
        ],
        "id": 1,
    }


def _rpc_stats(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:  # noqa: PLR0915  the stats reply: one statement per field the firmware sends
    assert snap is not None
    ghs = round(snap.hashrate_ths * 1000.0, 2)
    st = _state(rig)
    fans = _fans(rig, snap.fan_rpm)
    info: dict[str, Any] = {
        "STATS": 0,
        "ID": "BTM_SOC0",
        "Elapsed": snap.uptime_s,
        "Calls": 0,
        "Wait": 0,
        "Max": 0,
        "Min": 99999999,
        "GHS 5s": ghs,
        "GHS av": ghs,
        "rate_30m": ghs,
        "Mode": STATS_MODE[snap.mode],
        "miner_count": 0,
        "frequency": 0,
        "fan_num": rig.spec.fans,
    }
    for i in range(SLOTS):
        info[f"fan{i + 1}"] = fans[i]
    info["temp_num"] = rig.spec.boards
    boards = snap.boards
    nslots = max(SLOTS, len(boards))
    working = 0
    freq_sum = 0.0
    total_acn = 0
    chip_max = 0
    hw_total = 0
    for i in range(nslots):
        n = i + 1
        board = boards[i] if i < len(boards) else None
        if board is not None and board.alive:
            pcb = _sensors(board.board_temp_c)
            chip = _sensors(board.chip_temp_c)
            info[f"temp{n}"] = max(pcb)
            info[f"temp2_{n}"] = max(chip)
            info[f"temp_pcb{n}"] = f"{pcb[0]}-{pcb[1]}-{pcb[2]}-{pcb[3]}"
            info[f"temp_chip{n}"] = f"{chip[0]}-{chip[1]}-{chip[2]}-{chip[3]}"
            info[f"temp_pic{n}"] = f"{pcb[0] - 10}-{pcb[1] - 10}-{pcb[2] - 10}-{pcb[3] - 10}"
            info[f"chain_acn{n}"] = board.chips
            info[f"chain_acs{n}"] = _acs(board.chips)
            hw = _shares(snap.uptime_s, board.hashrate_ths * 1000.0) // 20
            info[f"chain_hw{n}"] = hw
            info[f"chain_rate{n}"] = f"{board.hashrate_ths * 1000.0:.2f}"
            freq = round(board.freq_mhz)
            info[f"freq{n}"] = freq
            working += 1
            freq_sum += board.freq_mhz
            total_acn += board.chips
            chip_max = max(chip_max, *chip)
            hw_total += hw
        else:
            if board is not None:  # tempN/temp2_N exist for fitted boards only (temp_num)
                info[f"temp{n}"] = 0
                info[f"temp2_{n}"] = 0
            info[f"temp_pcb{n}"] = "0-0-0-0"
            info[f"temp_chip{n}"] = "0-0-0-0"
            info[f"temp_pic{n}"] = "0-0-0-0"
            info[f"chain_acn{n}"] = 0
            info[f"chain_acs{n}"] = ""
            info[f"chain_hw{n}"] = 0
            info[f"chain_rate{n}"] = ""
            info[f"freq{n}"] = 0
    freq_avg = round(freq_sum / working) if working else 0
    info["miner_count"] = working
    info["frequency"] = freq_avg
    info["temp_max"] = chip_max
    info["total_acn"] = total_acn
    info["total_freqavg"] = freq_avg
    info["total rate"] = ghs
    info["total_rateideal"] = _ideal_ghs(rig, snap.mode)
    info["rate_unit"] = "GH"
    info["no_matching_work"] = hw_total
    info["miner_version"] = MINER_VERSION
    info["miner_id"] = st.miner_id
    return {
        "STATUS": [_status(CODE_STATS, "CGMiner stats", when)],
        "STATS": [
            {
                "BMMiner": BMMINER_VERSION,
                "Miner": MINER_VERSION,
                "CompileTime": rig.firmware,
                "Type": rig.spec.rpc_type,
            },
            info,
        ],
        "id": 1,
    }


def _rpc_pools(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    assert snap is not None
    st = _state(rig)
    ghs = snap.hashrate_ths * 1000.0
    elapsed = snap.uptime_s
    pools: list[dict[str, Any]] = []
    active = True
    for i, conf in enumerate(st.pools):
        url = conf.get("url", "")
        if not url:
            continue
        accepted = _shares(elapsed, ghs) if active else 0
        pools.append(
            {
                "POOL": i,
                "URL": url,
                "Status": "Alive",
                "Priority": i,
                "Quota": 1,
                "Long Poll": "N",
                "Getworks": elapsed // 13 if active else 3,
                "Accepted": accepted,
                "Rejected": accepted // 370,
                "Discarded": elapsed * 90 if active else 0,
                "Stale": 0,
                "Get Failures": 0,
                "Remote Failures": 0,
                "User": conf.get("user", ""),
                "Last Share Time": "0:00:03" if active and ghs > 0 else "0",
                "Diff": "524K" if active else "",
                "Diff1 Shares": 0,
                "Proxy Type": "",
                "Proxy": "",
                "Difficulty Accepted": float(accepted * 321687),
                "Difficulty Rejected": float((accepted // 370) * 321687),
                "Difficulty Stale": 0.0,
                "Last Share Difficulty": 524288.0 if active else 0.0,
                "Has Stratum": True,
                "Stratum Active": active,
                "Stratum URL": url.split("://", 1)[-1].rsplit(":", 1)[0] if active else "",
                "Has GBT": False,
                "Best Share": float(accepted * 3180000),
                "Pool Rejected%": 0.0,
                "Pool Stale%%": 0.0,
            }
        )
        active = False
    return {
        "STATUS": [_status(CODE_POOL, f"{len(pools)} Pool(s)", when)],
        "POOLS": pools,
        "id": 1,
    }


def _rpc_devs(rig: SimRig, snap: Snapshot | None, when: int) -> dict[str, Any]:
    assert snap is not None
    elapsed = snap.uptime_s
    accepted = _shares(elapsed, snap.hashrate_ths * 1000.0)
    return {
        "STATUS": [_status(CODE_DEVS, "1 ASC(s)", when)],
        "DEVS": [
            {
                "ASC": 0,
                "Name": "BTM_SOC",
                "ID": 0,
                "Enabled": "Y",
                "Status": "Alive",
                "Tenperature": 0.0,
                "MHS av": 0.0,
                "MHS 5s": 0.0,
                "Accepted": accepted,
                "Rejected": accepted // 370,
                "Hardware Errors": 0,
                "Utility": 0.0,
                "Last Share Pool": 0,
                "Last Share Time": when,
                "Total MH": 0.0,
                "Diff1 Work": 0,
                "Difficulty Accepted": accepted * 321687,
                "Difficulty Rejected": (accepted // 370) * 321687,
                "Last Share Difficulty": 524288,
                "Last Valid Work": when,
                "Device Hardware%": 0.0,
                "Device Rejected%": 0.0,
                "Device Elapsed": elapsed,
            }
        ],
        "id": 1,
    }


# command -> (builder, needs a snapshot)
_RPC: dict[str, tuple[SectionBuilder, bool]] = {
    "version": (_rpc_version, False),
    "summary": (_rpc_summary, True),
    "stats": (_rpc_stats, True),
    "pools": (_rpc_pools, True),
    "devs": (_rpc_devs, True),
}


def _rpc_error(code: int, msg: str, when: int) -> dict[str, Any]:
    return {"STATUS": [_status(code, msg, when, "E")], "id": 1}


def handle_rpc(
    rig: SimRig, request: Any, reads: dict[str, tuple[SectionBuilder, bool]] = _RPC
) -> bytes:
    """Answer one cgminer API request (JSON, or cgminer's plain-text ``cmd|param`` form) from
    ``reads`` (stock bmminer's; VNish's cgminer answers the same way with its own)."""
    when = int(time.time())
    counters = rig.counters
    plain = False
    if isinstance(request, dict):
        command = request.get("command")
        if not isinstance(command, str) or not command:
            counters.rejected += 1
            return (
                _dumps(_rpc_error(CODE_MISSING_COMMAND, "Missing JSON 'command'", when)) + b"\x00"
            )
    elif isinstance(request, bytes | str):
        text = request.decode("utf-8", "replace") if isinstance(request, bytes) else request
        text = text.strip().strip("\x00")
        if text.startswith(("{", "[")):
            counters.rejected += 1
            return _dumps(_rpc_error(CODE_INVALID_JSON, "Invalid JSON", when)) + b"\x00"
        command = text.partition("|")[0]
        plain = True
    else:
        counters.rejected += 1
        return _dumps(_rpc_error(CODE_INVALID_JSON, "Invalid JSON", when)) + b"\x00"

    names = command.split("+") if "+" in command else [command]
    sections = read_sections(
        rig, names, reads, lambda: _rpc_error(CODE_INVALID_COMMAND, "Invalid command", when), when
    )
    if plain:
        return _plain(sections.values()).encode() + b"\x00"
    if len(names) == 1:
        return _dumps(sections[names[0]]) + b"\x00"
    return _dumps(joined(sections)) + b"\x00"


def _plain(bodies: Any) -> str:
    """cgminer's non-JSON reply format: ``SECTION,key=value,...|`` per item."""
    out: list[str] = []
    for body in bodies:
        for key, items in body.items():
            if key == "id":
                continue
            for j, item in enumerate(items):
                fields = [f"{k}={v}" for k, v in item.items()]
                if key != "STATUS":
                    fields.insert(0, f"{key}={j}" if len(items) > 1 else key)
                out.append(",".join(fields) + "|")
    return "".join(out)


# ---- digest auth ---------------------------------------------------------------------------------

_SECRET = os.urandom(32)
_AUTH_FIELD = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]*))')


def make_nonce(rig: SimRig, now: float | None = None) -> str:
    """A stateless nonce: the issue time in hex plus an HMAC binding it to this rig."""
    stamp = f"{int(time.time() if now is None else now):08x}"
    mac = hmac.new(_SECRET, f"{stamp}/{rig.address}".encode(), hashlib.sha256).hexdigest()
    return stamp + mac[:24]


def _nonce_ok(rig: SimRig, nonce: str) -> bool:
    if len(nonce) != 32:
        return False
    stamp = nonce[:8]
    mac = hmac.new(_SECRET, f"{stamp}/{rig.address}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac[:24], nonce[8:])


def _challenge(rig: SimRig) -> str:
    return f'Digest realm="{REALM}", nonce="{make_nonce(rig)}", qop="auth"'


@lru_cache(maxsize=16)
def _ha1(user: str, password: str) -> str:
    return hashlib.md5(f"{user}:{REALM}:{password}".encode()).hexdigest()


def _authorized(rig: SimRig, req: HttpRequest, header: str) -> bool:
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "digest":
        return False
    fields = {m[0].lower(): (m[1] if m[1] else m[2]) for m in _AUTH_FIELD.findall(rest)}
    nonce = fields.get("nonce", "")
    uri = fields.get("uri", "")
    response = fields.get("response", "").lower()
    if (
        fields.get("username") != WEB_USER
        or fields.get("realm") != REALM
        or fields.get("algorithm", "MD5").upper() != "MD5"
        or not _nonce_ok(rig, nonce)
    ):
        return False
    if uri.partition("?")[0] != req.path:
        return False
    ha1 = _ha1(WEB_USER, rig.web_password)
    ha2 = hashlib.md5(f"{req.method}:{uri}".encode()).hexdigest()
    qop = fields.get("qop")
    if qop is None:
        expected = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    elif qop == "auth":
        nc, cnonce = fields.get("nc", ""), fields.get("cnonce", "")
        if not nc or not cnonce:
            return False
        expected = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode()).hexdigest()
    else:
        return False
    return hmac.compare_digest(expected, response)


# ---- web UI (port 80) ----------------------------------------------------------------------------

SERVER = "lighttpd/1.4.48"  # a 1.4.x as stock firmware ships; the exact release is not captured
_JSON = {"Content-Type": "application/json", "Server": SERVER}
_HTML = {"Content-Type": "text/html", "Server": SERVER}
_UNAUTHORIZED_BODY = (
    b"<!DOCTYPE html>\n<html><head><title>401 Unauthorized</title></head>"
    b"<body><h1>401 Unauthorized</h1></body></html>\n"
)
_NOT_FOUND_BODY = (
    b'<?xml version="1.0" encoding="iso-8859-1"?>\n<!DOCTYPE html>\n'
    b"<html><head><title>404 Not Found</title></head>"
    b"<body><h1>404 Not Found</h1></body></html>\n"
)
_INDEX_BODY = (
    b'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Antminer</title>'
    b'</head><body><div id="app"></div></body></html>\n'
)


def _json(obj: object) -> HttpResponse:
    return HttpResponse(200, _dumps(obj), dict(_JSON), "OK", dynamic=True)


def _raw_json(body: bytes) -> HttpResponse:
    return HttpResponse(200, body, dict(_JSON), "OK", dynamic=True)


def _web_status(msg: str, when: int) -> dict[str, Any]:
    return {"STATUS": "S", "when": when, "Msg": msg, "api_version": "1.0.0"}


def _web_info(rig: SimRig) -> dict[str, Any]:
    return {"miner_version": MINER_VERSION, "CompileTime": rig.firmware, "type": rig.spec.rpc_type}


def _web_rates(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    ghs = round(snap.hashrate_ths * 1000.0, 2)
    return {
        "elapsed": snap.uptime_s,
        "rate_5s": ghs,
        "rate_30m": ghs,
        "rate_avg": ghs,
        "rate_ideal": _ideal_ghs(rig, snap.mode),
        "rate_unit": "GH/s",
    }


def _cgi_get_system_info(rig: SimRig, req: HttpRequest) -> HttpResponse:
    return _raw_json(_state(rig).system_info)


def _cgi_get_network_info(rig: SimRig, req: HttpRequest) -> HttpResponse:
    return _raw_json(_state(rig).network_info)


def _cgi_summary(rig: SimRig, req: HttpRequest) -> HttpResponse:
    snap = rig.snapshot()
    when = int(time.time())
    errors = set(snap.errors)
    hot = 2010 in errors or snap.phase is Phase.PROTECTED
    lost = 2030 in errors
    hashing = snap.phase is Phase.RUNNING
    status = [
        {
            "type": "rate",
            "status": "e" if lost else "s",
            "code": 2030 if lost else 0,
            "msg": "Some hashboards are lost (chain lost)" if lost else "",
        },
        {"type": "network", "status": "s", "code": 0, "msg": ""},
        {"type": "fans", "status": "s", "code": 0, "msg": ""},
        {
            "type": "temp",
            "status": "e" if hot else "s",
            "code": 2010 if hot else 0,
            "msg": "Temperature too high, mining stopped (overheat protection)" if hot else "",
        },
    ]
    accepted = _shares(snap.uptime_s, snap.hashrate_ths * 1000.0)
    summary = {
        **_web_rates(rig, snap),
        "hw_all": accepted // 7 if hashing else 0,
        "bestshare": accepted * 3180000,
        "status": status,
    }
    return _json(
        {
            "STATUS": _web_status("summary", when),
            "INFO": _web_info(rig),
            "SUMMARY": [summary],
        }
    )


def _cgi_stats(rig: SimRig, req: HttpRequest) -> HttpResponse:
    snap = rig.snapshot()
    st = _state(rig)
    when = int(time.time())
    ideal_board = _ideal_ghs(rig, snap.mode) / max(1, rig.spec.boards)
    chains: list[dict[str, Any]] = []
    for board in snap.boards:
        if not board.alive:
            continue  # a lost chain is not listed
        pcb = _sensors(board.board_temp_c)
        chip = _sensors(board.chip_temp_c)
        chains.append(
            {
                "index": board.index,
                "freq_avg": round(board.freq_mhz),
                "rate_ideal": round(ideal_board, 2),
                "rate_real": round(board.hashrate_ths * 1000.0, 2),
                "asic_num": board.chips,
                "asic": _acs(board.chips),
                "temp_pic": [t - 10 for t in pcb],
                "temp_pcb": list(pcb),
                "temp_chip": list(chip),
                "hw": 0,
                "eeprom_loaded": True,
                "sn": st.board_serials[board.index],
                "hwp": 0.0,
            }
        )
    stats = {
        **_web_rates(rig, snap),
        "chain_num": len(chains),
        "fan_num": rig.spec.fans,
        "fan": _fans(rig, snap.fan_rpm)[: rig.spec.fans],
        "hwp_total": 0.0,
        "miner-mode": MODE_CODE[snap.mode],
        "freq-level": int(st.freq_level) if st.freq_level.isdigit() else 100,
        "chain": chains,
    }
    if rig.spec.web_watt:
        stats["watt"] = round(snap.power_w)
    return _json({"STATUS": _web_status("stats", when), "INFO": _web_info(rig), "STATS": [stats]})


def _cgi_get_miner_conf(rig: SimRig, req: HttpRequest) -> HttpResponse:
    st = _state(rig)
    code = MODE_CODE[rig.mode]
    return _json(
        {
            "pools": st.pools,
            "api-listen": True,
            "api-network": True,
            "api-groups": "A:stats:pools:devs:summary:version",
            "api-allow": "A:0/0,W:*",
            "bitmain-fan-ctrl": st.fan_ctrl,
            "bitmain-fan-pwm": st.fan_pwm,
            "bitmain-use-vil": True,
            "bitmain-freq": str(round(rig.spec.board_freq_mhz)),
            "bitmain-voltage": "1320",
            "bitmain-ccdelay": "0",
            "bitmain-pwth": "0",
            "bitmain-work-mode": str(code),
            "bitmain-freq-level": st.freq_level,
            "freq-level": st.freq_level,
            "miner-mode": code,
        }
    )


def _cgi_get_blink_status(rig: SimRig, req: HttpRequest) -> HttpResponse:
    return _json({"blink": _state(rig).blink})


def _body_json(req: HttpRequest) -> dict[str, Any] | None:
    if not req.body:
        return None
    try:
        data = json.loads(req.body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _mode_from(conf: dict[str, Any]) -> Mode | None:
    """The mode a set_miner_conf body asks for: ``miner-mode`` (int or digit string), else the
    older ``bitmain-work-mode``; None when absent or not a stock mode."""
    for key in ("miner-mode", "bitmain-work-mode"):
        value = conf.get(key)
        if value is None or isinstance(value, bool):
            continue
        text = str(value).strip()
        if text.isdigit():
            return CODE_MODE.get(int(text))
        return None
    return None


_CONF_ERROR = {"stats": "error", "code": "M001", "msg": "Invalid parameter!"}
_CONF_OK = {"stats": "success", "code": "M000", "msg": "OK!"}


def _cgi_set_miner_conf(rig: SimRig, req: HttpRequest) -> HttpResponse:
    conf = _body_json(req)
    if conf is None:
        return _json(_CONF_ERROR)
    mode = _mode_from(conf)
    if rig.has(Fault.IGNORE_WRITES):
        if mode is not None:
            rig.set_mode(mode)  # reports False and changes nothing
        return _json(_CONF_OK)
    if mode is not None:
        rig.set_mode(mode)
    st = _state(rig)
    pools = conf.get("pools")
    if isinstance(pools, list):
        cleaned = [
            {
                "url": str(p.get("url", "")),
                "user": str(p.get("user", "")),
                "pass": str(p.get("pass", "")),
            }
            for p in pools[:3]
            if isinstance(p, dict)
        ]
        while len(cleaned) < 3:
            cleaned.append({"url": "", "user": "", "pass": ""})
        st.pools = cleaned
    fan_ctrl = conf.get("bitmain-fan-ctrl")
    if isinstance(fan_ctrl, bool):
        st.fan_ctrl = fan_ctrl
    pwm = conf.get("bitmain-fan-pwm")
    if pwm is not None and str(pwm).isdigit():
        st.fan_pwm = str(pwm)
    level = conf.get("freq-level", conf.get("bitmain-freq-level"))
    if level is not None and str(level).isdigit():
        st.freq_level = str(level)
    return _json(_CONF_OK)


def _cgi_blink(rig: SimRig, req: HttpRequest) -> HttpResponse:
    conf = _body_json(req) or {}
    on = str(conf.get("blink", "false")).lower() == "true"
    if not rig.has(Fault.IGNORE_WRITES):
        _state(rig).blink = on
    if on:
        return _json({"code": "B000", "msg": "Start blinking!"})
    return _json({"code": "B100", "msg": "Stop blinking!"})


def _cgi_reboot(rig: SimRig, req: HttpRequest) -> HttpResponse:
    if not rig.has(Fault.IGNORE_WRITES):
        rig.reboot()
    return _json({"code": "R000", "msg": "Rebooting!"})


_WebHandler = Callable[[SimRig, HttpRequest], HttpResponse]

# path -> (handler, is a write)
_CGI: dict[str, tuple[str, _WebHandler, bool]] = {
    f"/cgi-bin/{name}.cgi": (f"{name}.cgi", fn, write)
    for name, fn, write in (
        ("get_system_info", _cgi_get_system_info, False),
        ("get_network_info", _cgi_get_network_info, False),
        ("summary", _cgi_summary, False),
        ("stats", _cgi_stats, False),
        ("get_miner_conf", _cgi_get_miner_conf, False),
        ("get_blink_status", _cgi_get_blink_status, False),
        ("set_miner_conf", _cgi_set_miner_conf, True),
        ("blink", _cgi_blink, True),
        ("reboot", _cgi_reboot, True),
    )
}


def _unauthorized(rig: SimRig) -> HttpResponse:
    headers = {"WWW-Authenticate": _challenge(rig), **_HTML}
    return HttpResponse(401, _UNAUTHORIZED_BODY, headers, "Unauthorized")


def handle_http(rig: SimRig, req: HttpRequest) -> HttpResponse:
    """Answer one request to the web UI on port 80."""
    counters = rig.counters
    header = req.headers.get("authorization")
    if header is None:
        return _unauthorized(rig)  # the challenge every digest client asks for first
    if not _authorized(rig, req, header):
        counters.rejected += 1
        return _unauthorized(rig)
    path = req.path
    route = _CGI.get(path)
    if route is None:
        if path in ("/", "/index.html"):
            counters.reads += 1
            counters.by_command["index.html"] += 1
            return HttpResponse(200, _INDEX_BODY, dict(_HTML), "OK")
        counters.rejected += 1
        return HttpResponse(404, _NOT_FOUND_BODY, dict(_HTML), "Not Found")
    name, fn, write = route
    if write:
        counters.writes += 1
    else:
        counters.reads += 1
    counters.by_command[name] += 1
    return fn(rig, req)


HANDLERS = MakeHandlers(rpc=handle_rpc, http=handle_http, framed=None)
