"""The stock Antminer protocol handlers, called directly (no sockets).

Shapes are checked against the real captures in ``tests/fixtures/captures/antminer/v2020``;
the web UI is driven through httpx's own DigestAuth over a MockTransport, so the digest
handshake is the one pyasic uses.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from pyasic.miners.factory import MinerFactory, MinerTypes
from pyasic.misc import validate_command_output

from simulator.antminer import HANDLERS, REALM, handle_http, handle_rpc, make_nonce
from simulator.models import MODELS
from simulator.physics import Mode, Phase
from simulator.protocol import HttpRequest, HttpResponse
from simulator.rig import Fault, SimClock, SimRig

CAPTURES = Path(__file__).resolve().parent / "fixtures" / "captures" / "antminer" / "v2020"
ANTMINERS = [key for key, spec in MODELS.items() if spec.make == "antminer"]


class ManualClock(SimClock):
    """A SimClock that only moves when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__()
        self.t = start

    def now(self) -> float:
        return self.t


def capture(name: str) -> dict[str, Any]:
    path = CAPTURES / f"{name}.json"
    assert path.exists(), f"reference capture missing: {path}"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def make_rig(key: str = "s19jpro", start: float = 1000.0) -> tuple[SimRig, ManualClock]:
    clock = ManualClock(start)
    rig = SimRig("127.1.0.10", MODELS[key], clock, 0)
    clock.t += 1.0
    return rig, clock


def mode(rig: SimRig) -> Mode:
    """The rig's mode, read through a call so mypy does not narrow it between writes."""
    return rig.mode


def rpc(rig: SimRig, request: Any) -> dict[str, Any]:
    raw = handle_rpc(rig, request)
    assert raw.endswith(b"\x00"), "cgminer replies end with a NUL"
    data: dict[str, Any] = json.loads(raw[:-1])
    return data


def rpc_cmd(rig: SimRig, command: str) -> dict[str, Any]:
    return rpc(rig, {"command": command})


# ---- web plumbing: httpx (DigestAuth included) talking straight to handle_http ------------------


def web_client(rig: SimRig, password: str | None = "root") -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        req = HttpRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query.decode(),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=request.read(),
        )
        resp: HttpResponse = handle_http(rig, req)
        return httpx.Response(resp.status, headers=resp.headers, content=resp.body)

    auth = httpx.DigestAuth("root", password) if password is not None else None
    return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://rig", auth=auth)


def cgi(rig: SimRig, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    with web_client(rig) as client:
        if body is None:
            resp = client.get(f"/cgi-bin/{name}.cgi")
        else:
            resp = client.post(f"/cgi-bin/{name}.cgi", json=body)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


# ---- RPC: shapes ---------------------------------------------------------------------------------


def test_handlers_bundle() -> None:
    assert HANDLERS.rpc is handle_rpc
    assert HANDLERS.http is handle_http
    assert HANDLERS.framed is None


@pytest.mark.parametrize("command", ["version", "summary", "pools", "devs"])
def test_rpc_key_sets_match_captures(command: str) -> None:
    rig, _ = make_rig()
    ours, real = rpc_cmd(rig, command), capture(command)
    assert set(ours) == set(real)
    assert set(ours["STATUS"][0]) == set(real["STATUS"][0])
    assert ours["STATUS"][0]["STATUS"] == "S"
    assert ours["STATUS"][0]["Code"] == real["STATUS"][0]["Code"]
    section = command.upper()
    assert ours[section], f"{section} is empty"
    for item in ours[section]:
        assert set(item) == set(real[section][0])
        for key, value in real[section][0].items():
            assert type(item[key]) is type(value), (section, key, item[key], value)


def test_rpc_stats_key_sets_and_types_match_capture() -> None:
    rig, _ = make_rig()
    ours, real = rpc_cmd(rig, "stats"), capture("stats")
    assert set(ours) == set(real)
    assert ours["STATUS"][0]["Code"] == 70
    assert len(ours["STATS"]) == 2
    assert set(ours["STATS"][0]) == set(real["STATS"][0])
    assert set(ours["STATS"][1]) == set(real["STATS"][1])
    for key, value in real["STATS"][1].items():
        assert type(ours["STATS"][1][key]) is type(value), key


@pytest.mark.parametrize("key", ANTMINERS)
def test_rpc_identity_and_values(key: str) -> None:
    rig, _ = make_rig(key)
    spec = rig.spec
    version = rpc_cmd(rig, "version")["VERSION"][0]
    assert version["Type"] == spec.rpc_type
    assert version["CompileTime"] == rig.firmware
    stats = rpc_cmd(rig, "stats")
    assert stats["STATS"][0]["Type"] == spec.rpc_type
    s1 = stats["STATS"][1]
    snap = rig.snapshot()
    assert s1["total_rateideal"] == pytest.approx(spec.hashrate_ths * 1000)
    assert s1["Elapsed"] == snap.uptime_s
    assert s1["fan_num"] == spec.fans
    for i, board in enumerate(snap.boards, 1):
        rate = s1[f"chain_rate{i}"]
        assert re.fullmatch(r"\d+\.\d\d", rate), rate
        assert float(rate) == pytest.approx(board.hashrate_ths * 1000, abs=0.01)
        assert re.fullmatch(r"\d+-\d+-\d+-\d+", s1[f"temp_chip{i}"])
        chips = [int(t) for t in s1[f"temp_chip{i}"].split("-")]
        assert sum(chips) / 4 == pytest.approx(board.chip_temp_c, abs=0.5)
        assert s1[f"chain_acn{i}"] == spec.chips_per_board
    assert s1["chain_rate4"] == "" and s1["chain_acn4"] == 0
    summary = rpc_cmd(rig, "summary")["SUMMARY"][0]
    assert summary["GHS 5s"] == pytest.approx(snap.hashrate_ths * 1000, abs=0.01)
    assert summary["GHS 5s"] == pytest.approx(spec.hashrate_ths * 1000, rel=0.05)


def test_devdetails_is_invalid_command_and_detection_picks_antminer() -> None:
    rig, _ = make_rig()
    raw = handle_rpc(rig, {"command": "devdetails"}).decode()
    reply = json.loads(raw[:-1])
    assert reply["STATUS"][0]["STATUS"] == "E"
    assert reply["STATUS"][0]["Code"] == 14
    assert reply["STATUS"][0]["Msg"] == "Invalid command"
    # pyasic's own socket-probe classifier, fed what the two probes receive
    assert MinerFactory._parse_socket_type(raw) is None
    version = handle_rpc(rig, {"command": "version"}).decode()
    assert MinerFactory._parse_socket_type(version) == MinerTypes.ANTMINER


def test_unknown_and_missing_command() -> None:
    rig, _ = make_rig()
    bad = rpc_cmd(rig, "restart")
    assert bad["STATUS"][0]["STATUS"] == "E" and bad["STATUS"][0]["Code"] == 14
    missing = rpc(rig, {"parameter": "x"})
    assert missing["STATUS"][0]["Code"] == 24
    assert missing["STATUS"][0]["Msg"] == "Missing JSON 'command'"
    garbage = rpc(rig, b"{not json")
    assert garbage["STATUS"][0]["Code"] == 23
    assert rig.counters.rejected == 3
    assert rig.counters.reads == 0


def test_plain_text_command() -> None:
    rig, _ = make_rig()
    raw = handle_rpc(rig, b"version")
    assert raw.endswith(b"\x00")
    assert raw.startswith(b"STATUS=S,") and b"Type=Antminer S19j Pro" in raw


def test_multicommand() -> None:
    rig, _ = make_rig()
    reply = rpc_cmd(rig, "version+summary+stats+pools")
    assert set(reply) == {"version", "summary", "stats", "pools", "id"}
    assert reply["id"] == 1
    for name in ("version", "summary", "stats", "pools"):
        assert isinstance(reply[name], list) and len(reply[name]) == 1
        assert reply[name][0]["STATUS"][0]["STATUS"] == "S"
        assert set(reply[name][0]) == set(capture(name))
    assert validate_command_output(reply) == (True, None)
    assert rig.counters.reads == 1
    assert rig.counters.by_command["stats"] == 1
    mixed = rpc_cmd(rig, "summary+devdetails")
    assert mixed["devdetails"][0]["STATUS"][0]["Code"] == 14
    assert validate_command_output(mixed)[0] is False  # so pyasic falls back to single commands


# ---- modes ---------------------------------------------------------------------------------------


def test_sleep_low_normal_through_set_miner_conf() -> None:
    rig, clock = make_rig()
    nameplate = rig.spec.hashrate_ths * 1000
    reply = cgi(rig, "set_miner_conf", {"miner-mode": 1, "freq-level": "100"})
    assert reply == {"stats": "success", "code": "M000", "msg": "OK!"}
    assert mode(rig) is Mode.SLEEP
    assert cgi(rig, "get_miner_conf")["bitmain-work-mode"] == "1"
    clock.t += 30.0
    summary = rpc_cmd(rig, "summary")["SUMMARY"][0]
    stats = rpc_cmd(rig, "stats")["STATS"][1]
    assert summary["GHS 5s"] == 0.0
    for i in range(1, rig.spec.boards + 1):  # the chains are still there, idle
        assert stats[f"chain_acn{i}"] == rig.spec.chips_per_board
        assert stats[f"chain_rate{i}"] == "0.00"
    assert rig.snapshot().phase is Phase.SLEEPING

    assert cgi(rig, "set_miner_conf", {"miner-mode": "3"})["code"] == "M000"
    assert mode(rig) is Mode.LOW
    conf = cgi(rig, "get_miner_conf")
    assert conf["bitmain-work-mode"] == "3" and conf["miner-mode"] == 3
    clock.t += 600.0
    low = rpc_cmd(rig, "summary")["SUMMARY"][0]["GHS 5s"]
    assert low == pytest.approx(0.7 * nameplate, rel=0.03)

    cgi(rig, "set_miner_conf", {"miner-mode": 0})
    assert mode(rig) is Mode.NORMAL
    clock.t += 600.0
    normal = rpc_cmd(rig, "summary")["SUMMARY"][0]["GHS 5s"]
    assert normal == pytest.approx(nameplate, rel=0.03)
    assert rig.counters.writes == 3


def test_ignore_writes_answers_success_and_does_nothing() -> None:
    rig, clock = make_rig()
    rig.set_fault(Fault.IGNORE_WRITES)
    reply = cgi(rig, "set_miner_conf", {"miner-mode": 1})
    assert reply["code"] == "M000"
    assert mode(rig) is Mode.NORMAL
    clock.t += 30.0
    assert rpc_cmd(rig, "summary")["SUMMARY"][0]["GHS 5s"] > 0
    assert cgi(rig, "get_miner_conf")["bitmain-work-mode"] == "0"


def test_set_miner_conf_keeps_pools_and_rejects_garbage() -> None:
    rig, _ = make_rig()
    pools = [{"url": "stratum+tcp://pool.example:3333", "user": "me.1", "pass": "x"}]
    cgi(rig, "set_miner_conf", {"miner-mode": 0, "pools": pools})
    assert cgi(rig, "get_miner_conf")["pools"][0] == pools[0]
    rpc_pools = rpc_cmd(rig, "pools")["POOLS"]
    assert [p["URL"] for p in rpc_pools] == ["stratum+tcp://pool.example:3333"]
    with web_client(rig) as client:
        resp = client.post("/cgi-bin/set_miner_conf.cgi", content=b"not json")
    assert resp.json()["stats"] == "error"
    assert mode(rig) is Mode.NORMAL


# ---- web UI --------------------------------------------------------------------------------------


def test_root_without_credentials_is_the_antminer_challenge() -> None:
    rig, _ = make_rig()
    with web_client(rig, password=None) as client:
        resp = client.get("/")
    assert resp.status_code == 401
    header = resp.headers["www-authenticate"]
    assert re.fullmatch(
        r'Digest realm="antMiner Configuration", nonce="[0-9a-f]{32}", qop="auth"', header
    )
    assert MinerFactory._parse_web_type(resp.text, resp) == MinerTypes.ANTMINER
    assert rig.counters.rejected == 0  # the bare challenge is not a failed login


def test_digest_accepts_right_password_and_rejects_wrong() -> None:
    rig, _ = make_rig()
    with web_client(rig) as client:
        ok = client.get("/cgi-bin/get_system_info.cgi")
    assert ok.status_code == 200
    assert ok.json()["serinum"] == rig.serial
    with web_client(rig, password="wrong") as client:
        bad = client.get("/cgi-bin/get_system_info.cgi")
    assert bad.status_code == 401
    assert 'realm="antMiner Configuration"' in bad.headers["www-authenticate"]
    assert rig.counters.rejected == 1
    assert rig.counters.by_command["get_system_info.cgi"] == 1


def _digest_header(
    nonce: str, uri: str, password: str = "root", method: str = "GET", user: str = "root"
) -> str:
    ha1 = hashlib.md5(f"{user}:{REALM}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    nc, cnonce = "00000001", "0a4f113b"
    resp = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return (
        f'Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
        f'response="{resp}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"'
    )


def test_digest_nonce_is_stateless_but_not_forgeable() -> None:
    rig, _ = make_rig()
    other, _ = make_rig()
    other.address = "127.1.0.11"
    uri = "/cgi-bin/get_blink_status.cgi"

    def get(nonce: str, target: SimRig = rig, **kw: str) -> int:
        header = _digest_header(nonce, uri, **kw)
        req = HttpRequest("GET", uri, "", {"authorization": header}, b"")
        return handle_http(target, req).status

    old = make_nonce(rig, now=1_600_000_000)  # issued long ago, still ours
    assert get(old) == 200
    assert get("0" * 32) == 401  # never issued
    assert get(make_nonce(other)) == 401  # issued by another rig
    assert get(old, password="admin") == 401
    assert get(old, user="admin") == 401


def test_unknown_paths_are_html_404_so_pyasic_does_not_see_marathon() -> None:
    rig, _ = make_rig()
    with web_client(rig) as client:
        resp = client.get("/kaonsu/v1/brief")
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("text/html")
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.text)


def test_system_info_key_set_and_identity() -> None:
    rig, _ = make_rig("s21")
    info = cgi(rig, "get_system_info")
    assert set(info) == set(capture("system_info"))
    assert info["minertype"] == "Antminer S21"
    assert info["serinum"] == rig.serial
    assert info["macaddr"] == rig.mac
    assert info["hostname"] == rig.hostname
    assert info["system_filesystem_version"] == "FR-1.12(251009-S21)"


def test_web_stats_summary_and_blink() -> None:
    rig, _ = make_rig()
    snap = rig.snapshot()
    stats = cgi(rig, "stats")["STATS"][0]
    chains = stats["chain"]
    assert [c["index"] for c in chains] == [0, 1, 2]
    for chain, board in zip(chains, snap.boards, strict=True):
        assert chain["rate_real"] == pytest.approx(board.hashrate_ths * 1000, abs=0.01)
        assert chain["asic_num"] == rig.spec.chips_per_board
        assert sum(chain["temp_pcb"]) / 4 == pytest.approx(board.board_temp_c, abs=0.5)
        assert sum(chain["temp_chip"]) / 4 == pytest.approx(board.chip_temp_c, abs=0.5)
        assert isinstance(chain["sn"], str) and chain["sn"]
    summary = cgi(rig, "summary")["SUMMARY"][0]
    assert all(item["status"] == "s" for item in summary["status"])
    assert cgi(rig, "get_blink_status") == {"blink": False}
    assert cgi(rig, "blink", {"blink": "true"})["code"] == "B000"
    assert cgi(rig, "get_blink_status") == {"blink": True}
    assert cgi(rig, "blink", {"blink": "false"})["code"] == "B100"


def test_dead_board_and_overheat_show_in_web_and_rpc() -> None:
    rig, clock = make_rig()
    rig.set_fault(Fault.DEAD_BOARD, {"board": 1})
    clock.t += 10.0
    chains = cgi(rig, "stats")["STATS"][0]["chain"]
    assert [c["index"] for c in chains] == [0, 2]
    s1 = rpc_cmd(rig, "stats")["STATS"][1]
    assert s1["chain_acn2"] == 0 and s1["chain_rate2"] == ""
    errors = [i for i in cgi(rig, "summary")["SUMMARY"][0]["status"] if i["status"] != "s"]
    assert [e["code"] for e in errors] == [2030]


def test_reboot_takes_the_rig_away() -> None:
    rig, _ = make_rig()
    assert rig.reachable()
    cgi(rig, "reboot")
    assert not rig.reachable()
    assert rig.counters.writes == 1


def test_factory_reset_forgets_web_settings() -> None:
    rig, _ = make_rig()
    cgi(rig, "blink", {"blink": "true"})
    rig.factory_reset()
    assert cgi(rig, "get_blink_status") == {"blink": False}
