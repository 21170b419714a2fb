"""Stock Whatsminer firmware (btminer and its API daemon), as pyasic 0.79 sees it on the wire.

Port 4028, API v2 (``api_ver`` 2.0.5). Two kinds of reply, as on real firmware:

- The cgminer-style commands ``summary``, ``devs``/``edevs``, ``pools``, ``devdetails`` and
  ``version`` are forwarded by the API daemon to btminer and come back in the cgminer envelope
  (``{"STATUS":[{...}],"SUMMARY":[...],"id":1}``). Several may be joined with ``+``; the reply then
  holds one list per command (``{"summary":[{...}],"devs":[{...}],"id":1}``), which is what
  pyasic's ``BTMinerRPCAPI.multicommand`` sends for everything except ``get_*``/``status``.
  ``devdetails`` names the ``bitmicro`` driver, which is how pyasic's detection recognises a
  Whatsminer, and carries ``Model`` (``M30S+V40``, ``M60S_VK40``).
- The daemon's own commands (``status``, ``get_version``, ``get_psu``, ``get_miner_info``,
  ``get_error_code``, ``get_token``) answer in the btminer envelope
  (``{"STATUS":"S","When":...,"Code":131,"Msg":{...},"Description":""}``).

Mining off. ``power_off`` runs the firmware's power-off script: the hashboards lose power and
btminer itself is stopped (the log says "Suspend btminer ... by whatsminer API"; on old firmware
``status`` literally reports ``pidof btminer`` as ``btmineroff``, and pyasic's own ``_is_mining``
probes ``devdetails`` expecting it to FAIL while btminer is off). The daemon then cannot forward:
``summary``, ``devs``, ``edevs`` and ``pools`` (alone or ``+``-joined) answer the forwarder's
``Socket connect failed: Connection refused`` line, which pyasic turns into an ``APIError``.
Consequences, as on real hardware: pyasic's ``multicommand`` gives up on the whole joined read,
so ``get_data()`` of a sleeping rig reports ``is_mining=False`` (from ``status``, whose
``Msg.mineroff`` is ``"true"``) and no hashrate, wattage or boards. A driver that wants the
sleeping draw must assume it (control board and a slow fan, a few tens of watts).
Deliberate deviation: ``devdetails`` and ``version`` keep answering while mining is off, so a
sleeping rig is still identified (a real one is found through its HTTPS web UI, which this
simulator does not serve).

Privileged (write) commands are encrypted: ``get_token`` gives ``time``/``salt``/``newsalt``;
the client sends ``{"enc":1,"data":base64(AES-256-ECB(json))}`` with key
``sha256(md5_crypt(password, salt) body)`` and ``token = md5_crypt(pwd_md5 + time, newsalt)``
body; a successful reply is ``{"enc": base64(AES(json))}``. As the firmware does, the daemon
keeps a table of 32 issued tokens, each valid for 30 minutes (wall time, since clients cache
tokens by wall clock whatever the simulation's time scale); a 33rd live token is refused with
code 136. Errors are sent in plain text (so pyasic raises ``APIError`` with the message):

- 23 ``json cmd err``: the request does not decrypt to JSON (a wrong password gives a wrong
  AES key, so this is what a wrong password looks like),
- 135 ``check token err``: decrypts, but the token is unknown or expired,
- 45 ``can't access write cmd``: the write API is disabled (``Fault.WRITES_LOCKED``) or a write
  command was sent in plain text,
- 14 ``invalid cmd``: unknown command or bad parameter.

Port 4433, API v3 (firmware dated after 2024-11 only: the server resets 4433 for older rigs,
the nearest a handler gets to "not listening"): ``get.device.info`` (with the ``salt``),
``get.miner.status`` (``summary``/``edevs``/``pools``, ``+``-joined allowed) and the writes
``set.miner.service`` (start/stop/restart), ``set.miner.power_limit``, ``set.system.reboot``,
``set.system.led`` with ``token = base64(sha256(cmd + password + salt + str(ts)))[:8]``, account
``super`` (pyasic's default password ``super``). Codes: 0 ok, -1 fail (bad token), -2 invalid
command, -3 invalid json item, -4 no permission (writes locked).

Port 80: ``307`` to ``https://<ip>/cgi-bin/luci`` for every path, as the real web UI.

Counters on ``rig.counters``: one request is one read or one write; ``by_command`` counts each
command by name (each part of a ``+``-joined read; the decrypted name of an encrypted write;
``web`` for port 80); ``rejected`` counts auth failures, locked writes, unknown commands and
malformed requests. ``Fault.IGNORE_WRITES``: writes answer OK and change nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from passlib.hash import md5_crypt

from simulator.physics import Mode, Phase
from simulator.protocol import HttpRequest, HttpResponse, MakeHandlers
from simulator.rig import Fault, SimRig, Snapshot

__all__ = [
    "HANDLERS",
    "SOCKET_FAILED",
    "aes_decrypt",
    "aes_encrypt",
    "handle_http",
    "handle_rpc",
    "handle_v3",
    "is_v3_firmware",
    "md5_crypt_body",
    "v3_token",
]

API_VERSION = "2.0.5"
V3_API_VERSION = "3.0.2"
CGMINER_DESCRIPTION = "cgminer 4.9.2"
FACTORY_SALT = "BQ5hoXV9"  # the salt of the factory admin password's md5-crypt hash
TOKEN_SLOTS = 32
TOKEN_TTL_S = 1800.0
V3_ACCOUNT = "super"
V3_DEFAULT_PASSWORD = "super"
SOCKET_FAILED = b"Socket connect failed: Connection refused\n"

# btminer API daemon codes
CODE_INVALID = 14
CODE_JSON = 23
CODE_DENIED = 45
CODE_OK = 131
CODE_TOKEN = 134
CODE_TOKEN_CHECK = 135
CODE_TOKEN_MAX = 136
CODE_BASE64 = 137

_CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_POWER_MODE = {Mode.LOW: "Low", Mode.NORMAL: "Normal", Mode.HIGH: "High"}
_PSU = {"m30s+": ("P221B", "P221B"), "m30s": ("P221", "P221")}
_POOLS = (
    "stratum+tcp://btc.example.pool:3333",
    "stratum+tcp://btc2.example.pool:3333",
    "stratum+tcp://btc3.example.pool:3333",
)


# ---- crypto ---------------------------------------------------------------------------------
def md5_crypt_body(secret: str, salt: str) -> str:
    """The third ``$`` field of ``md5_crypt(secret, salt)`` (``$1$<salt>$<body>``)."""
    full: str = md5_crypt.using(salt=salt).hash(secret)
    return full.split("$")[3]


def _cipher(pwd_md5: str) -> Cipher[modes.ECB]:
    return Cipher(algorithms.AES(hashlib.sha256(pwd_md5.encode()).digest()), modes.ECB())


def aes_encrypt(pwd_md5: str, plaintext: str) -> str:
    """base64(AES-256-ECB(plaintext zero-padded to 16)), key sha256(pwd_md5)."""
    raw = plaintext.encode()
    raw += b"\0" * (-len(raw) % 16)
    enc = _cipher(pwd_md5).encryptor()
    return base64.b64encode(enc.update(raw) + enc.finalize()).decode()


def aes_decrypt(pwd_md5: str, data: str) -> bytes:
    """Inverse of :func:`aes_encrypt` (trailing NULs stripped). ValueError on bad input."""
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("base64") from exc
    if not raw or len(raw) % 16:
        raise ValueError("length")
    dec = _cipher(pwd_md5).decryptor()
    return (dec.update(raw) + dec.finalize()).rstrip(b"\0")


def v3_token(cmd: str, password: str, salt: str, ts: int) -> str:
    """API v3 write token: the first 8 characters of base64(sha256(cmd+password+salt+ts))."""
    digest = hashlib.sha256(f"{cmd}{password}{salt}{ts}".encode()).digest()
    return base64.b64encode(digest).decode()[:8]


def is_v3_firmware(firmware: str) -> bool:
    """True for firmware dated after 2024-11 (pyasic then picks its API v3 class)."""
    try:
        return (int(firmware[0:4]), int(firmware[4:6]), int(firmware[6:8])) > (2024, 11, 0)
    except ValueError:
        return False


# ---- per-rig firmware state the rig itself does not model ----------------------------------
@dataclass(slots=True)
class _State:
    salt: str
    password: str
    _pwd_md5: str = ""
    tokens: dict[str, float] = field(default_factory=dict)  # sign -> wall expiry
    led: str = "auto"
    resume_mode: Mode = Mode.NORMAL  # power mode to come back in after power_on
    miner_start_t: float = -1.0  # sim time btminer last (re)started by power_on
    off_since: str = ""  # mineroff_time
    error_seen: dict[int, str] = field(default_factory=dict)
    v3_salt: str = ""

    @property
    def pwd_md5(self) -> str:
        # md5_crypt costs ~50 us: pay it only when a privileged command needs it, not on reads
        if not self._pwd_md5:
            self._pwd_md5 = md5_crypt_body(self.password, self.salt)
        return self._pwd_md5


def _salt_for(rig: SimRig, password: str, tag: str) -> str:
    if password == "admin" and tag == "v2":
        return FACTORY_SALT
    digest = hashlib.sha256(f"{tag}/{rig.serial}/{password}".encode()).digest()
    return "".join(_CRYPT_ALPHABET[b % 64] for b in digest[:8])


def state_of(rig: SimRig) -> _State:
    st = rig.firmware_state
    if not isinstance(st, _State) or st.password != rig.api_password:
        salt = _salt_for(rig, rig.api_password, "v2")
        st = _State(
            salt=salt,
            password=rig.api_password,
            v3_salt=_salt_for(rig, V3_DEFAULT_PASSWORD, "v3"),
        )
        rig.firmware_state = st
    return st


def _v3_password(rig: SimRig) -> str:
    pwd = getattr(rig, "api_v3_password", V3_DEFAULT_PASSWORD)
    return str(pwd)


def _mining_off(rig: SimRig) -> bool:
    return rig.mode is Mode.SLEEP


def _stamp(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() if t is None else t))


def _errors(rig: SimRig, snap: Snapshot) -> list[tuple[int, str]]:
    """Active error codes with the time each was first seen."""
    st = state_of(rig)
    seen = st.error_seen
    for code in list(seen):
        if code not in snap.errors:
            del seen[code]
    for code in snap.errors:
        if code not in seen:
            seen[code] = _stamp()
    return [(code, seen[code]) for code in snap.errors]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---- cgminer-forwarded sections -------------------------------------------------------------
def _cg_status(code: int, msg: str, when: int) -> list[dict[str, Any]]:
    return [
        {"STATUS": "S", "When": when, "Code": code, "Msg": msg, "Description": CGMINER_DESCRIPTION}
    ]


def _elapsed(rig: SimRig, snap: Snapshot) -> int:
    started = max(rig.boot_t, state_of(rig).miner_start_t)
    return max(0, min(snap.uptime_s, int(snap.t - started)))


def _shares(elapsed: int, snap: Snapshot, scale: float = 1.0) -> int:
    return int(elapsed * snap.hashrate_ths * scale / 450.0)


def _summary(rig: SimRig, snap: Snapshot, when: int) -> dict[str, Any]:
    spec = rig.spec
    elapsed = _elapsed(rig, snap)
    mhs = round(snap.hashrate_ths * 1e6, 2)
    alive = [b for b in snap.boards if b.alive]
    chip_avg = round(sum(b.chip_temp_c for b in alive) / len(alive), 2) if alive else 0.0
    chip_max = round(max((b.chip_temp_c for b in alive), default=0.0) + 6.0, 2) if alive else 0.0
    chip_min = round(min((b.chip_temp_c for b in alive), default=0.0) - 9.0, 2) if alive else 0.0
    freq_avg = int(sum(b.freq_mhz for b in alive) / len(alive)) if alive else 0
    accepted = _shares(elapsed, snap)
    power = round(snap.power_w)
    summary: dict[str, Any] = {
        "Elapsed": elapsed,
        "MHS av": mhs,
        "MHS 5s": mhs,
        "MHS 1m": mhs,
        "MHS 5m": mhs,
        "MHS 15m": mhs,
        "HS RT": mhs,
        "Found Blocks": 0,
        "Getworks": elapsed // 30,
        "Accepted": accepted,
        "Rejected": 0,
        "Hardware Errors": accepted // 40,
        "Utility": round(accepted * 60 / elapsed, 2) if elapsed else 0.0,
        "Discarded": accepted * 260,
        "Stale": 0,
        "Get Failures": 0,
        "Local Work": accepted * 34000,
        "Remote Failures": 0,
        "Network Blocks": elapsed // 600,
        "Total MH": round(mhs * elapsed, 1),
        "Work Utility": round(snap.hashrate_ths * 37.0, 2),
        "Difficulty Accepted": float(accepted * 65536),
        "Difficulty Rejected": 0.0,
        "Difficulty Stale": 0.0,
        "Best Share": accepted * 17000,
        "Temperature": max((b.board_temp_c for b in alive), default=snap.inlet_c),
        "freq_avg": freq_avg,
        "Fan Speed In": snap.fan_rpm,
        "Fan Speed Out": int(snap.fan_rpm * 0.98),
        "Voltage": 1180 if freq_avg else 0,
        "Power": power,
        "Power_RT": power,
        "Device Hardware%": 0.011,
        "Device Rejected%": 0.0,
        "Pool Rejected%": 0.0,
        "Pool Stale%": 0.0,
        "Last getwork": 0,
        "Uptime": snap.uptime_s,
        "Chip Data": "HP5A01-19101436   BINV04-192101D",
        "Power Current": int(power / 12.5),
        "Power Fanspeed": _psu_fan(rig, snap),
        "Error Code Count": 0,
        "Factory Error Code Count": 0,
        "Security Mode": 0,
        "Liquid Cooling": False,
        "Hash Stable": snap.phase is Phase.RUNNING,
        "Hash Stable Cost Seconds": min(elapsed, 1538),
        "Hash Deviation%": 0.1061 if mhs else 0.0,
        "Target Freq": int(spec.board_freq_mhz * _target_share(rig)),
        "Target MHS": int(spec.hashrate_ths * 1e6 * _target_share(rig)),
        "Env Temp": snap.inlet_c,
        "Power Mode": _POWER_MODE.get(rig.mode, "Normal"),
        "Firmware Version": f"'{rig.firmware}'",
        "CB Platform": "H616",
        "CB Version": "V10",
        "MAC": rig.mac,
        "Factory GHS": int(spec.hashrate_ths * 1000),
        "Power Limit": snap.power_limit_w,
        "Chip Temp Min": chip_min,
        "Chip Temp Max": chip_max,
        "Chip Temp Avg": chip_avg,
    }
    errors = _errors(rig, snap)
    summary["Error Code Count"] = len(errors)
    for i, (code, _) in enumerate(errors):
        summary[f"Error Code {i}"] = code
    return summary


def _target_share(rig: SimRig) -> float:
    return {Mode.LOW: 0.7, Mode.HIGH: 1.12}.get(rig.mode, 1.0) * (1.0 + rig.freq_pct / 100.0)


def _psu_fan(rig: SimRig, snap: Snapshot) -> int:
    return int(2400 + 5000 * min(1.0, snap.power_w / rig.spec.power_w))


def _pcb_sn(rig: SimRig, index: int) -> str:
    return f"HHM{rig.serial[4:]}K3{index:04d}"


def _devs(rig: SimRig, snap: Snapshot, when: int) -> dict[str, Any]:
    spec = rig.spec
    elapsed = _elapsed(rig, snap)
    devs: list[dict[str, Any]] = []
    for b in snap.boards:
        if not b.alive:
            continue  # a lost board is not detected, so btminer does not list it
        mhs = round(b.hashrate_ths * 1e6, 2)
        accepted = int(elapsed * b.hashrate_ths / 450.0)
        devs.append(
            {
                "ASC": b.index,
                "Name": "SM",
                "ID": b.index,
                "Slot": b.index,
                "Enabled": "Y",
                "Status": "Alive",
                "Temperature": b.board_temp_c,
                "Chip Frequency": int(b.freq_mhz),
                "Frequency": b.freq_mhz,
                "Fan Speed In": snap.fan_rpm,
                "Fan Speed Out": int(snap.fan_rpm * 0.98),
                "MHS av": mhs,
                "MHS 5s": mhs,
                "MHS 1m": mhs,
                "MHS 5m": mhs,
                "MHS 15m": mhs,
                "Accepted": accepted,
                "Rejected": 0,
                "Hardware Errors": accepted // 40,
                "Utility": round(accepted * 60 / elapsed, 2) if elapsed else 0.0,
                "Last Share Pool": 0,
                "Last Share Time": when if accepted else 0,
                "Total MH": round(mhs * elapsed, 1),
                "Diff1 Work": accepted * 260,
                "Difficulty Accepted": float(accepted * 65536),
                "Difficulty Rejected": 0.0,
                "Last Share Difficulty": 65536.0 if accepted else 0.0,
                "Last Valid Work": when if mhs else 0,
                "Device Hardware%": 0.0072,
                "Device Rejected%": 0.0,
                "Device Elapsed": elapsed,
                "Upfreq Complete": 1 if snap.phase is Phase.RUNNING else 0,
                "Effective Chips": b.chips,
                "PCB SN": _pcb_sn(rig, b.index),
                "Factory GHS": int(spec.hashrate_ths * 1000 / spec.boards),
                "Chip Temp Min": round(b.chip_temp_c - 9.0, 2),
                "Chip Temp Max": round(b.chip_temp_c + 6.0, 2),
                "Chip Temp Avg": b.chip_temp_c,
            }
        )
    return {"STATUS": _cg_status(9, f"{len(devs)} ASC(s)", when), "DEVS": devs, "id": 1}


def _pools(rig: SimRig, snap: Snapshot, when: int) -> dict[str, Any]:
    elapsed = _elapsed(rig, snap)
    accepted = _shares(elapsed, snap)
    user = f"rigpilot.{rig.serial[-6:].lower()}"
    pools = []
    for i, url in enumerate(_POOLS):
        active = i == 0
        pools.append(
            {
                "POOL": i + 1,
                "URL": url,
                "Status": "Alive",
                "Priority": i,
                "Quota": 1,
                "Long Poll": "N",
                "Getworks": elapsed // 30 if active else 0,
                "Accepted": accepted if active else 0,
                "Rejected": 0,
                "Works": accepted * 34000 if active else 0,
                "Discarded": accepted * 260 if active else 0,
                "Stale": 0,
                "Get Failures": 0,
                "Remote Failures": 0,
                "User": user,
                "Last Share Time": when if active and accepted else 0,
                "Diff1 Shares": accepted * 260 if active else 0,
                "Proxy Type": "",
                "Proxy": "",
                "Difficulty Accepted": float(accepted * 65536) if active else 0.0,
                "Difficulty Rejected": 0.0,
                "Difficulty Stale": 0.0,
                "Last Share Difficulty": 65536.0 if active and accepted else 0.0,
                "Work Difficulty": 0.0,
                "Has Stratum": True,
                "Stratum Active": active,
                "Stratum URL": url.split("//")[1].split(":")[0] if active else "",
                "Stratum Difficulty": 65536.0 if active else 0.0,
                "Has GBT": False,
                "Best Share": accepted * 17000 if active else 0,
                "Pool Rejected%": 0.0,
                "Pool Stale%": 0.0,
                "Bad Work": 0,
                "Current Block Height": 920127 if active else 0,
                "Current Block Version": 536870912 if active else 0,
            }
        )
    return {"STATUS": _cg_status(7, f"{len(pools)} Pool(s)", when), "POOLS": pools, "id": 1}


def _devdetails(rig: SimRig, snap: Snapshot, when: int) -> dict[str, Any]:
    details = [
        {
            "DEVDETAILS": i,
            "Name": "SM",
            "ID": i,
            "Driver": "bitmicro",
            "Kernel": "",
            "Model": rig.spec.rpc_type,
        }
        for i in range(rig.spec.boards)
    ]
    return {"STATUS": _cg_status(69, "Device Details", when), "DEVDETAILS": details, "id": 1}


def _version(rig: SimRig, snap: Snapshot, when: int) -> dict[str, Any]:
    return {
        "STATUS": _cg_status(22, "CGMiner versions", when),
        "VERSION": [{"CGMiner": "4.9.2", "API": "3.7"}],
        "id": 1,
    }


_Section = Callable[[SimRig, Snapshot, int], dict[str, Any]]
_CG_COMMANDS: dict[str, tuple[_Section, bool]] = {
    # name -> (builder, needs btminer running)
    "summary": (
        lambda r, s, w: {
            "STATUS": _cg_status(11, "Summary", w),
            "SUMMARY": [_summary(r, s, w)],
            "id": 1,
        },
        True,
    ),
    "devs": (_devs, True),
    "edevs": (_devs, True),
    "pools": (_pools, True),
    "devdetails": (_devdetails, False),
    "version": (_version, False),
}


# ---- the daemon's own commands ----------------------------------------------------------------
def _bt_reply(msg: Any, when: int, code: int = CODE_OK, status: str = "S") -> dict[str, Any]:
    return {"STATUS": status, "When": when, "Code": code, "Msg": msg, "Description": ""}


def _bt_error(code: int, msg: str) -> bytes:
    return _dumps(_bt_reply(msg, int(time.time()), code, "E"))


def _status_msg(rig: SimRig) -> dict[str, Any]:
    off = _mining_off(rig)
    st = state_of(rig)
    mode = st.resume_mode if off else rig.mode
    return {
        "mineroff": "true" if off else "false",
        "mineroff_reason": "by whatsminer api" if off else "",
        "mineroff_time": st.off_since if off else "",
        "FirmwareVersion": rig.firmware,
        "power_mode": mode.value if mode is not Mode.SLEEP else "normal",
        "power_limit_set": str(rig.power_limit_w or rig.default_power_limit()),
        "hash_percent": str(rig.freq_pct),
    }


def _get_version(rig: SimRig) -> dict[str, Any]:
    return {"api_ver": API_VERSION, "fw_ver": rig.firmware, "platform": "H616"}


def _get_psu(rig: SimRig) -> dict[str, Any]:
    snap = rig.snapshot()
    name, model = _PSU.get(rig.spec.key, ("P222B", "P222B"))
    return {
        "name": name,
        "model": model,
        "hw_version": "",
        "sw_version": "230208.220429",
        "fan_speed": str(_psu_fan(rig, snap)),
    }


def _get_miner_info(rig: SimRig) -> dict[str, Any]:
    return {
        "hostname": rig.hostname,
        "ledstat": state_of(rig).led,
        "mac": rig.mac,
        "minersn": rig.serial,
        "ip": rig.address,
    }


def _get_error_code(rig: SimRig) -> dict[str, Any]:
    errors = _errors(rig, rig.snapshot())
    return {"error_code": [{str(code): since} for code, since in errors]}


_BT_COMMANDS: dict[str, Callable[[SimRig], Any]] = {
    "status": _status_msg,
    "get_version": _get_version,
    "get_psu": _get_psu,
    "get_miner_info": _get_miner_info,
    "get_error_code": _get_error_code,
}


def _get_token(rig: SimRig) -> bytes:
    st = state_of(rig)
    now = time.monotonic()
    for sign, expiry in list(st.tokens.items()):
        if expiry <= now:
            del st.tokens[sign]
    if len(st.tokens) >= TOKEN_SLOTS:
        rig.counters.rejected += 1
        return _bt_error(CODE_TOKEN_MAX, "token over max times")
    wall = int(time.time())
    stamp = f"{wall % 10000:04d}"
    digest = hashlib.sha256(f"{rig.serial}/{now}/{len(st.tokens)}".encode()).digest()
    newsalt = "".join(_CRYPT_ALPHABET[b % 64] for b in digest[:8])
    st.tokens[md5_crypt_body(st.pwd_md5 + stamp, newsalt)] = now + TOKEN_TTL_S
    msg = {"time": stamp, "salt": st.salt, "newsalt": newsalt}
    return _dumps(_bt_reply(msg, wall, CODE_TOKEN))


# ---- privileged commands -------------------------------------------------------------------
_WRITE_COMMANDS = frozenset(
    {
        "power_off",
        "power_on",
        "adjust_power_limit",
        "set_low_power",
        "set_normal_power",
        "set_high_power",
        "set_target_freq",
        "set_led",
        "reboot",
        "update_pools",
        "restart_btminer",
    }
)


def _do_write(rig: SimRig, cmd: str, req: dict[str, Any]) -> str | None:  # noqa: C901, PLR0912  one case per privileged command, as the firmware's table
    """Apply a privileged command; returns an error message for a bad parameter, else None."""
    st = state_of(rig)
    ignore = rig.has(Fault.IGNORE_WRITES)
    if cmd == "power_off":
        if not _mining_off(rig):
            resume = rig.mode
            if rig.set_mode(Mode.SLEEP):
                st.resume_mode, st.off_since = resume, _stamp()
    elif cmd == "power_on":
        if _mining_off(rig) and rig.set_mode(st.resume_mode):
            st.miner_start_t = rig.clock.now()
    elif cmd in ("set_low_power", "set_normal_power", "set_high_power"):
        mode = {
            "set_low_power": Mode.LOW,
            "set_normal_power": Mode.NORMAL,
            "set_high_power": Mode.HIGH,
        }[cmd]
        if _mining_off(rig):
            if not ignore:
                st.resume_mode = mode  # applies when mining is switched back on
        else:
            rig.set_mode(mode)
    elif cmd == "adjust_power_limit":
        try:
            watts = int(str(req.get("power_limit", "")).strip())
        except ValueError:
            return "invalid cmd"
        if watts <= 0:
            return "invalid cmd"
        rig.set_power_limit(None if watts >= 99999 else watts)  # 99999 resets the limit
    elif cmd == "set_target_freq":
        try:
            percent = int(str(req.get("percent", "")).strip())
        except ValueError:
            return "invalid cmd"
        if not -100 <= percent <= 100:
            return "invalid cmd"
        rig.set_freq_pct(percent)
    elif cmd == "set_led":
        if not ignore:
            st.led = "auto" if req.get("param") == "auto" else str(req.get("color", "red"))
    elif cmd == "reboot":
        if not ignore:
            rig.reboot()
    elif cmd == "restart_btminer" and not ignore and not _mining_off(rig):
        st.miner_start_t = rig.clock.now()
    # update_pools: accepted and ignored
    return None


def _privileged(rig: SimRig, req: dict[str, Any]) -> bytes:
    counters = rig.counters
    st = state_of(rig)
    data = req.get("data")
    if not isinstance(data, str):
        counters.rejected += 1
        counters.by_command["enc"] += 1
        return _bt_error(CODE_JSON, "json cmd err")
    try:
        plain = aes_decrypt(st.pwd_md5, data)
        inner = json.loads(plain.decode())
        if not isinstance(inner, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        counters.rejected += 1
        counters.by_command["enc"] += 1
        if str(exc) == "base64":
            return _bt_error(CODE_BASE64, "base64 decode error")
        return _bt_error(CODE_JSON, "json cmd err")
    cmd = str(inner.get("cmd", inner.get("command", "")))
    counters.by_command[cmd or "enc"] += 1
    if rig.has(Fault.WRITES_LOCKED) and cmd in _WRITE_COMMANDS:
        counters.rejected += 1
        return _bt_error(CODE_DENIED, "can't access write cmd")
    expiry = st.tokens.get(str(inner.get("token", "")))
    if expiry is None or expiry <= time.monotonic():
        counters.rejected += 1
        return _bt_error(CODE_TOKEN_CHECK, "check token err")
    when = int(time.time())
    if cmd in _WRITE_COMMANDS:
        err = _do_write(rig, cmd, inner)
        if err is not None:
            counters.rejected += 1
            return _bt_error(CODE_INVALID, err)
        counters.writes += 1
        reply = _bt_reply("API command OK", when)
    elif cmd in _BT_COMMANDS:  # the readable API also works encrypted
        counters.reads += 1
        reply = _bt_reply(_BT_COMMANDS[cmd](rig), when)
    else:
        counters.rejected += 1
        return _bt_error(CODE_INVALID, "invalid cmd")
    return _dumps({"enc": aes_encrypt(st.pwd_md5, json.dumps(reply))})


# ---- port 4028 entry point -------------------------------------------------------------------
def handle_rpc(rig: SimRig, request: Any) -> bytes:
    """Answer one request on port 4028 (btminer API v2)."""
    counters = rig.counters
    if not isinstance(request, dict):
        counters.rejected += 1
        return _bt_error(CODE_JSON, "json cmd err")
    if request.get("enc") == 1:
        return _privileged(rig, request)
    command = request.get("command", request.get("cmd"))
    if not isinstance(command, str) or not command:
        counters.rejected += 1
        return _bt_error(CODE_JSON, "json cmd err")
    if command in _BT_COMMANDS:
        counters.reads += 1
        counters.by_command[command] += 1
        return _dumps(_bt_reply(_BT_COMMANDS[command](rig), int(time.time())))
    if command == "get_token":
        counters.reads += 1
        counters.by_command[command] += 1
        return _get_token(rig)
    if command in _WRITE_COMMANDS:
        counters.rejected += 1
        counters.by_command[command] += 1
        return _bt_error(CODE_DENIED, "can't access write cmd")
    return _cg_request(rig, command)


def _cg_request(rig: SimRig, command: str) -> bytes:
    counters = rig.counters
    names = command.split("+")
    for name in names:
        counters.by_command[name] += 1
    if not all(name in _CG_COMMANDS for name in names):
        counters.rejected += 1
        if len(names) == 1:
            return _bt_error(CODE_INVALID, "invalid cmd")
    counters.reads += 1
    if _mining_off(rig) and any(_CG_COMMANDS[n][1] for n in names if n in _CG_COMMANDS):
        return SOCKET_FAILED  # btminer is stopped: the daemon cannot forward
    when = int(time.time())
    snap = rig.snapshot()
    if len(names) == 1:
        return _dumps(_CG_COMMANDS[command][0](rig, snap, when))
    reply: dict[str, Any] = {}
    for name in names:
        entry = _CG_COMMANDS.get(name)
        if entry is None:
            section: dict[str, Any] = {
                "STATUS": [
                    {
                        "STATUS": "E",
                        "When": when,
                        "Code": CODE_INVALID,
                        "Msg": "Invalid command",
                        "Description": CGMINER_DESCRIPTION,
                    }
                ],
                "id": 1,
            }
        else:
            section = entry[0](rig, snap, when)
        section.pop("id", None)
        reply[name] = [section]
    reply["id"] = 1
    return _dumps(reply)


# ---- port 80 ---------------------------------------------------------------------------------
def handle_http(rig: SimRig, request: HttpRequest) -> HttpResponse:
    """The web UI lives on HTTPS under LuCI: every plain-HTTP path redirects there."""
    rig.counters.reads += 1
    rig.counters.by_command["web"] += 1
    location = f"https://{rig.address}/cgi-bin/luci"
    body = (
        f'<html><head><meta http-equiv="refresh" content="0; url={location}"/></head>'
        f'<body><a href="{location}">LuCI - Lua Configuration Interface</a></body></html>'
    )
    return HttpResponse(
        307,
        body.encode(),
        {"Location": location, "Content-Type": "text/html"},
        "Temporary Redirect",
    )


# ---- port 4433, API v3 ------------------------------------------------------------------------
def _v3_reply(desc: str, msg: Any, code: int = 0) -> bytes:
    return _dumps({"code": code, "when": int(time.time()), "msg": msg, "desc": desc})


def _device_info(rig: SimRig) -> dict[str, Any]:
    snap = rig.snapshot()
    spec = rig.spec
    st = state_of(rig)
    per_board = int(spec.hashrate_ths * 1000 / spec.boards)
    miner: dict[str, Any] = {
        "board-num": str(spec.boards),
        "detect-hash-rate": ":".join(str(per_board) for _ in range(spec.boards)),
        "fast-boot": "disable",
        "hash-board": spec.rpc_type.rsplit("V", 1)[-1],
        "hash-percent": str(rig.freq_pct),
        "miner-sn": f"{rig.serial}{'0' * 21}"[:33],
        "pool-strategy": "FAILOVER",
        "type": spec.rpc_type,
        "working": "false" if _mining_off(rig) else "true",
    }
    for i in range(spec.boards):
        miner[f"chipdata{i}"] = "K8EC374-2426 BINVE6-197806A"
        miner[f"pcbsn{i}"] = _pcb_sn(rig, i)
    info: dict[str, Any] = {
        "miner": miner,
        "network": {
            "dns": "10.0.0.1",
            "gateway": "10.0.0.1",
            "hostname": rig.hostname,
            "ip": rig.address,
            "mac": rig.mac,
            "netmask": "255.255.255.0",
            "proto": "dhcp",
        },
        "power": {
            "fanspeed": _psu_fan(rig, snap),
            "hwversion": "RT0159",
            "mode": "1",
            "model": "P221B",
            "sn": f"1436{rig.serial[4:]}",
            "swversion": "230224.220429",
            "type": "P221B",
            "vendor": "1",
        },
        "salt": st.v3_salt,
        "system": {
            "api": V3_API_VERSION,
            "apiswitch": "0" if rig.has(Fault.WRITES_LOCKED) else "1",
            "control-board-version": "CB6V10",
            "fwversion": rig.firmware,
            "ledstatus": st.led,
            "platform": "H616",
        },
    }
    errors = _errors(rig, snap)
    if errors:
        info["error-code"] = [
            {str(code): since, "reason": f"error {code}"} for code, since in errors
        ]
    return info


def _v3_summary(rig: SimRig, snap: Snapshot) -> dict[str, Any]:
    alive = [b for b in snap.boards if b.alive]
    chips = [b.chip_temp_c for b in alive] or [snap.inlet_c]
    ths = round(snap.hashrate_ths, 3)
    return {
        "Debug": "",
        "board-temperature": [b.board_temp_c for b in snap.boards],
        "bootup-time": snap.uptime_s,
        "chip-temp-avg": round(sum(chips) / len(chips), 1),
        "chip-temp-max": round(max(chips) + 6.0, 1),
        "chip-temp-min": round(min(chips) - 9.0, 1),
        "elapsed": _elapsed(rig, snap) if not _mining_off(rig) else 0,
        "environment-temperature": snap.inlet_c,
        "factory-hash": round(float(rig.spec.hashrate_ths), 3),
        "fan-speed-in": snap.fan_rpm,
        "fan-speed-out": int(snap.fan_rpm * 0.98),
        "freq-avg": int(sum(b.freq_mhz for b in alive) / len(alive)) if alive else 0,
        "hash-15min": ths,
        "hash-1min": ths,
        "hash-average": ths,
        "hash-realtime": ths,
        "power-5min": snap.power_w,
        "power-limit": snap.power_limit_w,
        "power-rate": round(snap.power_w / snap.hashrate_ths, 1) if ths else 0.0,
        "power-realtime": snap.power_w,
        "up-freq-finish": 1 if snap.phase is Phase.RUNNING else 0,
    }


def _v3_edevs(rig: SimRig, snap: Snapshot) -> list[dict[str, Any]]:
    per_board = round(rig.spec.hashrate_ths / rig.spec.boards, 2)
    return [
        {
            "chip-temp-avg": b.chip_temp_c,
            "chip-temp-max": round(b.chip_temp_c + 6.0, 1),
            "chip-temp-min": round(b.chip_temp_c - 9.0, 1),
            "effective-chips": b.chips,
            "factory-hash": per_board,
            "freq": b.freq_mhz,
            "hash-average": round(b.hashrate_ths, 2),
            "hash-realtime": round(b.hashrate_ths, 2),
            "id": b.index,
            "status": "alive" if b.alive else "dead",
        }
        for b in snap.boards
    ]


def _v3_pools(rig: SimRig) -> list[dict[str, Any]]:
    user = f"rigpilot.{rig.serial[-6:].lower()}"
    return [
        {
            "account": user,
            "pool-priority": i,
            "status": "alive",
            "stratum-active": i == 0,
            "id": i,  # pyasic's get_config sorts the pools by it
            "url": url,
        }
        for i, url in enumerate(_POOLS)
    ]


def _miner_setting(rig: SimRig) -> dict[str, Any]:
    st = state_of(rig)
    mode = st.resume_mode if _mining_off(rig) else rig.mode
    return {
        "power-mode": mode.value if mode is not Mode.SLEEP else "normal",
        "power-limit": rig.power_limit_w or rig.default_power_limit(),
        "hash-percent": rig.freq_pct,
        "fast-boot": "disable",
        "upfreq-speed": 0,
        "heat-mode": "normal",
    }


def _system_setting(rig: SimRig) -> dict[str, Any]:
    return {
        "web-pool": 1,
        "timezone": "UTC",
        "zonename": "UTC",
        "hostname": rig.hostname,
        "time-randomized": {"start": 0, "stop": 0},
        "ntp-server": ["0.pool.ntp.org"],
    }


_V3_SETTINGS: dict[str, Callable[[SimRig], dict[str, Any]]] = {
    "get.miner.setting": _miner_setting,
    "get.system.setting": _system_setting,
}


def _v3_write(rig: SimRig, cmd: str, param: Any) -> tuple[int, str]:  # noqa: C901, PLR0912  one case per v3 write command, as the firmware's table
    """Apply a v3 write; returns (code, msg)."""
    st = state_of(rig)
    ignore = rig.has(Fault.IGNORE_WRITES)
    if cmd == "set.miner.service":
        if param == "stop":
            _do_write(rig, "power_off", {})
        elif param == "start":
            _do_write(rig, "power_on", {})
        elif param == "restart":
            _do_write(rig, "restart_btminer", {})
        elif param not in ("enable", "disable"):
            return -3, "invalid param"
    elif cmd == "set.miner.power_limit":
        try:
            watts = int(param)
        except (TypeError, ValueError):
            return -3, "invalid param"
        if watts <= 0:
            return -3, "invalid param"
        rig.set_power_limit(None if watts >= 99999 else watts)
    elif cmd == "set.system.reboot":
        if not ignore:
            rig.reboot()
    elif cmd == "set.system.led":
        if not ignore:
            st.led = "auto" if param == "auto" else "manual"
    else:
        return -2, "invalid command"
    return 0, "ok"


def handle_v3(rig: SimRig, request: Any) -> bytes:  # noqa: C901, PLR0911, PLR0912  the v3 framing's checks, one reply each
    """Answer one framed request on port 4433 (btminer API v3); returns the JSON payload."""
    counters = rig.counters
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        counters.rejected += 1
        return _v3_reply("", "invalid json", -2)
    cmd: str = request["cmd"]
    param = request.get("param")
    counters.by_command[cmd] += 1
    if cmd == "get.device.info":
        counters.reads += 1
        info = _device_info(rig)
        if isinstance(param, str) and param in info:
            info = {param: info[param]}
        return _v3_reply(cmd, info)
    if cmd in _V3_SETTINGS:
        counters.reads += 1
        return _v3_reply(cmd, _V3_SETTINGS[cmd](rig))
    if cmd == "get.miner.status":
        parts = param.split("+") if isinstance(param, str) else []
        if not parts or any(p not in ("summary", "edevs", "pools") for p in parts):
            counters.rejected += 1
            return _v3_reply(cmd, "invalid param", -3)
        counters.reads += 1
        snap = rig.snapshot()
        msg: dict[str, Any] = {}
        for part in parts:
            if part == "summary":
                msg["summary"] = _v3_summary(rig, snap)
            elif part == "edevs":
                msg["edevs"] = _v3_edevs(rig, snap)
            else:
                msg["pools"] = _v3_pools(rig)
        return _v3_reply(cmd, msg)
    if not cmd.startswith("set."):
        counters.rejected += 1
        return _v3_reply(cmd, "invalid command", -2)
    if rig.has(Fault.WRITES_LOCKED):
        counters.rejected += 1
        return _v3_reply(cmd, "no permission", -4)
    ts = request.get("ts")
    token = request.get("token")
    expected = (
        v3_token(cmd, _v3_password(rig), state_of(rig).v3_salt, ts) if isinstance(ts, int) else None
    )
    if request.get("account") != V3_ACCOUNT or expected is None or token != expected:
        counters.rejected += 1
        return _v3_reply(cmd, "token error", -1)
    code, result = _v3_write(rig, cmd, param)
    if code == 0:
        counters.writes += 1
    else:
        counters.rejected += 1
    return _v3_reply(cmd, result, code)


HANDLERS = MakeHandlers(
    rpc=handle_rpc,
    http=handle_http,
    framed=handle_v3,
    framed_for=lambda rig: is_v3_firmware(rig.firmware),
)
