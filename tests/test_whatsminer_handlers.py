"""Direct tests of the stock Whatsminer handlers (no sockets): shapes against the real captures,
the privileged-API crypto, auth failures and the effects of writes on the rig."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pyasic.misc import validate_command_output
from pyasic.rpc.btminer import (
    TokenData,
    _crypt,
    create_privileged_cmd,
    parse_btminer_priviledge_data,
)

from simulator import whatsminer as wm
from simulator.models import lookup
from simulator.physics import Mode
from simulator.protocol import HttpRequest
from simulator.rig import Fault, SimClock, SimRig

CAPTURES = Path(__file__).resolve().parent / "fixtures" / "captures" / "whatsminer"
V3_FIRMWARE = "20251209.16.Rel2"


def capture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CAPTURES / name).read_text())
    return data


def make_rig(key: str = "m30s+", firmware: str | None = None, index: int = 0) -> SimRig:
    return SimRig(f"127.1.0.{index + 1}", lookup(key), SimClock(), index, firmware=firmware)


def mode(rig: SimRig) -> Mode:
    """The rig's mode, read through a call so mypy does not narrow it between writes."""
    return rig.mode


def rpc(rig: SimRig, command: str, **extra: Any) -> dict[str, Any]:
    raw = wm.handle_rpc(rig, {"command": command, **extra})
    out: dict[str, Any] = json.loads(raw)
    return out


def v3(rig: SimRig, request: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(wm.handle_v3(rig, request))
    return out


def same_kind(a: Any, b: Any) -> bool:
    """JSON type equality: bool, int, float, str, list, dict kept apart."""
    return type(a) is type(b)


def assert_shape(ours: dict[str, Any], real: dict[str, Any], where: str) -> None:
    missing = set(real) - set(ours)
    assert not missing, f"{where}: missing keys {sorted(missing)}"
    for key, value in real.items():
        assert same_kind(ours[key], value), (
            f"{where}[{key!r}]: {type(ours[key]).__name__} vs real {type(value).__name__}"
        )


# ---- shapes ---------------------------------------------------------------------------------
def test_summary_devs_pools_match_both_capture_generations() -> None:
    rig = make_rig()
    summary = rpc(rig, "summary")
    devs = rpc(rig, "devs")
    pools = rpc(rig, "pools")
    for gen in ("v1", "v2"):
        real_summary = capture(f"{gen}/summary.json")
        assert set(summary) == set(real_summary)
        assert_shape(summary["STATUS"][0], real_summary["STATUS"][0], f"{gen} summary STATUS")
        assert_shape(summary["SUMMARY"][0], real_summary["SUMMARY"][0], f"{gen} SUMMARY")
        real_devs = capture(f"{gen}/devs.json")
        assert set(devs) == set(real_devs)
        assert len(devs["DEVS"]) == len(real_devs["DEVS"])
        for ours, real in zip(devs["DEVS"], real_devs["DEVS"], strict=True):
            assert_shape(ours, real, f"{gen} DEVS")
        real_pools = capture(f"{gen}/pools.json")
        assert set(pools) == set(real_pools)
        for ours, real in zip(pools["POOLS"], real_pools["POOLS"], strict=True):
            assert_shape(ours, real, f"{gen} POOLS")


def test_btminer_envelope_commands_match_captures() -> None:
    rig = make_rig()
    for command in ("status", "get_version", "get_psu", "get_miner_info", "get_error_code"):
        ours = rpc(rig, command)
        real = capture(f"v2/{command}.json")
        assert set(ours) == set(real), command
        assert_shape(ours, real, command)
        assert_shape(ours["Msg"], real["Msg"], f"{command} Msg")
    assert rpc(rig, "status")["Msg"]["mineroff"] == "false"


def test_values_come_from_the_rig() -> None:
    rig = make_rig("m50s")
    snap = rig.snapshot()
    s = rpc(rig, "summary")["SUMMARY"][0]
    assert s["MHS 1m"] == pytest.approx(snap.hashrate_ths * 1e6, rel=0.01)
    assert s["Power"] == round(snap.power_w)
    assert s["Power Limit"] == snap.power_limit_w
    assert s["Power Mode"] == "Normal"
    assert s["Env Temp"] == snap.inlet_c
    assert s["MAC"] == rig.mac
    assert s["Factory GHS"] == 126000
    devs = rpc(rig, "devs")["DEVS"]
    assert [d["Temperature"] for d in devs] == [b.board_temp_c for b in snap.boards]
    assert [d["Chip Temp Avg"] for d in devs] == [b.chip_temp_c for b in snap.boards]
    assert sum(d["MHS 1m"] for d in devs) == pytest.approx(s["MHS 1m"], rel=0.01)
    assert all(d["Effective Chips"] == rig.spec.chips_per_board == 135 for d in devs)
    details = rpc(rig, "devdetails")
    assert details["DEVDETAILS"][0]["Model"] == "M50SVH50"
    assert "BITMICRO" in json.dumps(details).upper()  # what pyasic's detection looks for
    assert rpc(rig, "get_version")["Msg"]["fw_ver"] == rig.firmware


def test_errors_reach_summary_and_get_error_code() -> None:
    rig = make_rig()
    rig.set_fault(Fault.DEAD_BOARD, {"board": 1})
    s = rpc(rig, "summary")["SUMMARY"][0]
    real = capture("v1/summary_with_errors.json")["SUMMARY"][0]
    assert s["Error Code Count"] == 1
    assert s["Error Code 0"] == 541
    assert same_kind(s["Error Code 0"], real["Error Code 0"])
    codes = rpc(rig, "get_error_code")["Msg"]["error_code"]
    real_codes = capture("v2/get_error_code_with_errors.json")["Msg"]["error_code"]
    assert [list(c) for c in codes] == [["541"]]
    assert same_kind(next(iter(codes[0].values())), next(iter(real_codes[0].values())))
    assert [d["ASC"] for d in rpc(rig, "devs")["DEVS"]] == [0, 2]  # the lost board is gone


def test_multicommand_shape_and_pyasic_validation() -> None:
    rig = make_rig()
    reply = rpc(rig, "pools+devs+summary")
    assert set(reply) == {"pools", "devs", "summary", "id"}
    assert reply["summary"][0]["SUMMARY"][0]["MHS 1m"] > 0
    assert validate_command_output(reply) == (True, None)
    bad = rpc(rig, "summary+nonsense")
    assert validate_command_output(bad)[0] is False
    assert rig.counters.by_command["summary"] == 2


def test_sleeping_rig_stops_forwarding_cgminer_commands() -> None:
    rig = make_rig()
    rig.set_mode(Mode.SLEEP)
    for command in ("summary", "devs", "edevs", "pools", "pools+devs+summary"):
        assert wm.handle_rpc(rig, {"command": command}) == wm.SOCKET_FAILED
    status = rpc(rig, "status")["Msg"]
    assert status["mineroff"] == "true"
    assert rpc(rig, "devdetails")["DEVDETAILS"][0]["Model"] == "M30S+V40"
    assert rpc(rig, "get_version")["STATUS"] == "S"


def test_v3_shapes_match_captures() -> None:
    rig = make_rig("m60s", firmware=V3_FIRMWARE)
    info = v3(rig, {"cmd": "get.device.info"})
    real = capture("v3/get_device_info.json")
    assert set(info) == set(real)
    assert set(info["msg"]) == set(real["msg"])
    for section in ("miner", "network", "power", "system"):
        assert_shape(info["msg"][section], real["msg"][section], f"device.info {section}")
    assert info["msg"]["miner"]["type"] == "M60S_VK40"
    assert info["msg"]["system"]["fwversion"] == V3_FIRMWARE
    for part in ("summary", "edevs", "pools"):
        ours = v3(rig, {"cmd": "get.miner.status", "param": part})
        real = capture(f"v3/get_miner_status_{part}.json")
        assert set(ours) == set(real)
        assert set(ours["msg"]) == set(real["msg"])
        if part == "summary":
            assert_shape(ours["msg"]["summary"], real["msg"]["summary"], "v3 summary")
        else:
            for o, r in zip(ours["msg"][part], real["msg"][part], strict=True):
                assert set(o) >= set(r), part
    rig.set_fault(Fault.DEAD_BOARD, {"board": 0})
    errs = v3(rig, {"cmd": "get.device.info"})["msg"]
    real_err = capture("v3/get_device_info_with_errors.json")["msg"]["error-code"][0]
    assert len(errs["error-code"]) == 1
    assert set(errs["error-code"][0]) - {"541"} == set(real_err) - {"264"}


def test_v3_only_on_new_firmware_and_http_redirect() -> None:
    assert not wm.HANDLERS.framed_for(make_rig("m30s+"))
    assert wm.HANDLERS.framed_for(make_rig("m60s", firmware=V3_FIRMWARE))
    rig = make_rig()
    resp = wm.handle_http(rig, HttpRequest("GET", "/", "", {}, b""))
    assert resp.status == 307
    assert resp.headers["Location"] == f"https://{rig.address}/cgi-bin/luci"
    assert wm.handle_http(rig, HttpRequest("GET", "/x", "", {}, b"")).status == 307


# ---- crypto ---------------------------------------------------------------------------------
def test_protocols_md_test_vector() -> None:
    pwd_md5 = wm.md5_crypt_body("admin", "BQ5hoXV9")
    assert pwd_md5 == "RxmaDUO33TS7O26yeMHZ81"
    assert wm.md5_crypt_body(pwd_md5 + "1234", "4hWWYqEf") == "sXsExc.OmHI5XaSxpolTh0"


def test_token_reply_shape() -> None:
    rig = make_rig()
    reply = rpc(rig, "get_token")
    assert reply["STATUS"] == "S"
    assert reply["Code"] == 134
    assert set(reply["Msg"]) == {"time", "salt", "newsalt"}
    assert reply["Msg"]["salt"] == "BQ5hoXV9"  # factory admin password's salt


class OwnClient:
    """An independent client-side implementation of the btminer privileged API."""

    def __init__(self, rig: SimRig, password: str) -> None:
        self.rig = rig
        token = rpc(rig, "get_token")["Msg"]
        self.pwd_md5 = wm.md5_crypt_body(password, token["salt"])
        self.sign = wm.md5_crypt_body(self.pwd_md5 + token["time"], token["newsalt"])
        self.key = hashlib.sha256(self.pwd_md5.encode()).digest()

    def send(self, cmd: str, **params: Any) -> dict[str, Any]:
        plain = json.dumps({"cmd": cmd, **params, "token": self.sign}).encode()
        plain += b"\0" * (-len(plain) % 16)
        enc = Cipher(algorithms.AES(self.key), modes.ECB()).encryptor()
        data = base64.b64encode(enc.update(plain) + enc.finalize()).decode()
        reply: dict[str, Any] = json.loads(wm.handle_rpc(self.rig, {"enc": 1, "data": data}))
        if "enc" not in reply:
            return reply
        dec = Cipher(algorithms.AES(self.key), modes.ECB()).decryptor()
        raw = dec.update(base64.b64decode(reply["enc"])) + dec.finalize()
        out: dict[str, Any] = json.loads(raw.rstrip(b"\0"))
        return out


def pyasic_send(rig: SimRig, password: str, command: dict[str, Any]) -> dict[str, Any]:
    """The same round trip with pyasic's own helper functions."""
    token = rpc(rig, "get_token")["Msg"]
    pwd = _crypt(password, "$1$" + token["salt"] + "$").split("$")[3]
    sign = _crypt(pwd + token["time"], "$1$" + token["newsalt"] + "$").split("$")[3]
    data = TokenData(host_sign=sign, host_passwd_md5=pwd)
    reply: dict[str, Any] = json.loads(
        wm.handle_rpc(rig, json.loads(create_privileged_cmd(data, command)))
    )
    if "enc" in reply:
        parsed: dict[str, Any] = parse_btminer_priviledge_data(data, reply)
        return parsed
    return reply


def test_encrypted_round_trip_own_client() -> None:
    rig = make_rig()
    client = OwnClient(rig, "admin")
    ok = client.send("set_low_power")
    assert ok["STATUS"] == "S"
    assert ok["Code"] == 131
    assert ok["Msg"] == "API command OK"
    assert mode(rig) is Mode.LOW
    # the same token stays valid for further commands
    assert client.send("adjust_power_limit", power_limit="2500")["Code"] == 131
    assert rig.power_limit_w == 2500
    assert rpc(rig, "summary")["SUMMARY"][0]["Power Limit"] == 2500
    assert rpc(rig, "summary")["SUMMARY"][0]["Power Mode"] == "Low"
    assert rig.counters.writes == 2


def test_encrypted_round_trip_pyasic_helpers() -> None:
    rig = make_rig()
    reply = pyasic_send(rig, "admin", {"cmd": "power_off", "respbefore": "true"})
    assert reply["Msg"] == "API command OK"
    assert mode(rig) is Mode.SLEEP
    assert rpc(rig, "status")["Msg"]["mineroff"] == "true"
    assert rpc(rig, "status")["Msg"]["mineroff_reason"] == "by whatsminer api"
    reply = pyasic_send(rig, "admin", {"cmd": "power_on"})
    assert reply["Msg"] == "API command OK"
    assert mode(rig) is Mode.NORMAL
    assert rpc(rig, "status")["Msg"]["mineroff"] == "false"


def test_power_mode_set_while_off_applies_on_power_on() -> None:
    rig = make_rig()
    client = OwnClient(rig, "admin")
    client.send("set_high_power")
    client.send("power_off", respbefore="true")
    assert mode(rig) is Mode.SLEEP
    client.send("set_low_power")
    assert mode(rig) is Mode.SLEEP  # does not wake the rig
    assert rpc(rig, "status")["Msg"]["power_mode"] == "low"
    client.send("power_on")
    assert mode(rig) is Mode.LOW


def test_target_freq_led_reboot_update_pools() -> None:
    rig = make_rig()
    client = OwnClient(rig, "admin")
    assert client.send("set_target_freq", percent="-20")["Code"] == 131
    assert rig.freq_pct == -20
    assert client.send("set_target_freq", percent="150")["Code"] == 14
    assert client.send("set_led", color="red", period=200, duration=100, start=0)["Code"] == 131
    assert rpc(rig, "get_miner_info")["Msg"]["ledstat"] != "auto"
    assert client.send("set_led", param="auto")["Code"] == 131
    assert rpc(rig, "get_miner_info")["Msg"]["ledstat"] == "auto"
    assert client.send("update_pools", pool1="stratum+tcp://x:3333")["Code"] == 131
    assert client.send("adjust_power_limit", power_limit="99999")["Code"] == 131
    assert rig.power_limit_w is None
    assert client.send("reboot")["Msg"] == "API command OK"
    assert not rig.reachable()


def test_wrong_password_is_refused() -> None:
    rig = make_rig()
    reply = OwnClient(rig, "wrongpw").send("power_off", respbefore="true")
    assert reply["STATUS"] == "E"
    assert reply["Code"] == 23
    assert reply["Msg"] == "json cmd err"
    assert validate_command_output(reply)[0] is False  # pyasic raises APIError
    assert mode(rig) is Mode.NORMAL
    assert rig.counters.rejected == 1
    assert rig.counters.writes == 0


def test_unknown_or_expired_token_is_refused() -> None:
    rig = make_rig()
    client = OwnClient(rig, "admin")
    client.sign = "notatokenatall0000000"
    reply = client.send("set_low_power")
    assert (reply["Code"], reply["Msg"]) == (135, "check token err")
    client = OwnClient(rig, "admin")
    tokens = wm.state_of(rig).tokens
    tokens[client.sign] = time.monotonic() - 1.0
    assert client.send("set_low_power")["Code"] == 135
    assert mode(rig) is Mode.NORMAL


def test_token_table_has_32_slots() -> None:
    rig = make_rig()
    for _ in range(wm.TOKEN_SLOTS):
        assert rpc(rig, "get_token")["Code"] == 134
    refused = rpc(rig, "get_token")
    assert (refused["STATUS"], refused["Code"]) == ("E", 136)


def test_writes_locked() -> None:
    rig = make_rig()
    rig.set_fault(Fault.WRITES_LOCKED)
    reply = OwnClient(rig, "admin").send("power_off", respbefore="true")
    assert reply == {**reply, "STATUS": "E", "Code": 45, "Msg": "can't access write cmd"}
    assert mode(rig) is Mode.NORMAL
    assert rig.counters.rejected == 1
    # a plain-text write is refused the same way
    assert rpc(rig, "power_off")["Msg"] == "can't access write cmd"


def test_ignore_writes_answers_ok_and_changes_nothing() -> None:
    rig = make_rig()
    rig.set_fault(Fault.IGNORE_WRITES)
    client = OwnClient(rig, "admin")
    for cmd, params in (
        ("power_off", {"respbefore": "true"}),
        ("set_low_power", {}),
        ("adjust_power_limit", {"power_limit": "2000"}),
        ("reboot", {}),
    ):
        assert client.send(cmd, **params)["Msg"] == "API command OK"
    assert mode(rig) is Mode.NORMAL
    assert rig.power_limit_w is None
    assert rig.reachable()


def test_counters() -> None:
    rig = make_rig()
    rpc(rig, "pools+devs+summary")
    rpc(rig, "status")
    rpc(rig, "nonsense")
    OwnClient(rig, "admin").send("set_normal_power")
    c = rig.counters
    assert c.reads == 3  # two reads and get_token
    assert c.writes == 1
    assert c.rejected == 1
    assert c.by_command["devs"] == 1
    assert c.by_command["set_normal_power"] == 1
    assert c.by_command["get_token"] == 1


# ---- API v3 writes ----------------------------------------------------------------------------
def v3_write(rig: SimRig, cmd: str, param: Any, password: str = "super") -> dict[str, Any]:
    salt = v3(rig, {"cmd": "get.device.info", "param": "salt"})["msg"]["salt"]
    ts = int(time.time())
    token = wm.v3_token(cmd, password, salt, ts)
    return v3(rig, {"cmd": cmd, "param": param, "ts": ts, "account": "super", "token": token})


def test_v3_token_matches_pyasic_construction() -> None:
    # pyasic: base64(sha256(...)), NUL at index 8, split: the first 8 characters
    digest = base64.b64encode(hashlib.sha256(b"set.miner.servicesuperabcd12341700000000").digest())
    assert wm.v3_token("set.miner.service", "super", "abcd1234", 1700000000) == digest[:8].decode()


def test_v3_writes() -> None:
    rig = make_rig("m60s", firmware=V3_FIRMWARE)
    assert v3_write(rig, "set.miner.service", "stop") == {
        "code": 0,
        "when": pytest.approx(time.time(), abs=5),
        "msg": "ok",
        "desc": "set.miner.service",
    }
    assert mode(rig) is Mode.SLEEP
    assert v3(rig, {"cmd": "get.device.info"})["msg"]["miner"]["working"] == "false"
    assert v3_write(rig, "set.miner.service", "start")["msg"] == "ok"
    assert mode(rig) is Mode.NORMAL
    assert v3_write(rig, "set.miner.power_limit", 3000)["code"] == 0
    assert rig.power_limit_w == 3000
    summary = v3(rig, {"cmd": "get.miner.status", "param": "summary"})["msg"]["summary"]
    assert summary["power-limit"] == 3000
    bad = v3_write(rig, "set.miner.service", "stop", password="wrong")
    assert bad["code"] == -1
    assert mode(rig) is Mode.NORMAL
    rig.set_fault(Fault.WRITES_LOCKED)
    assert v3_write(rig, "set.miner.service", "stop")["code"] == -4
    rig.clear_faults()
    assert v3_write(rig, "set.system.reboot", None)["msg"] == "ok"
    assert not rig.reachable()
    assert rig.counters.writes == 4
    assert rig.counters.rejected == 2


# ---- cost ---------------------------------------------------------------------------------------
def test_plain_read_is_cheap() -> None:
    rig = make_rig()
    request = {"command": "summary"}
    wm.handle_rpc(rig, request)
    n = 500
    start = time.perf_counter()
    for _ in range(n):
        wm.handle_rpc(rig, request)
    per_request = (time.perf_counter() - start) / n
    assert per_request < 1e-3  # about 0.05 ms on the dev machine; loose for slow CI
