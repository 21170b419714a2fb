"""The observer's own parsers, field by field against pyasic's parse of the same reply.

Run on the real captures (tests/fixtures/captures) and on the simulator's replies for every
model and mode; then every hostile reply must give a BAD_REPLY error that names the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import FrozenClock
from pyasic.miners.backends.bmminer import BMMiner
from pyasic.miners.backends.btminer import BTMinerV2
from pyasic.miners.factory import MinerFactory, MinerTypes

from drivers.parse import antminer_stats, whatsminer_summary, whatsminer_v3_status
from drivers.transport import BTMINER_STOPPED, DriverError, decode
from policies.values import FailureKind, Mode
from simulator import antminer as sim_am
from simulator import whatsminer as sim_wm
from simulator.models import MODELS, lookup
from simulator.physics import Mode as SimMode
from simulator.rig import Fault, SimRig

CAPTURES = Path(__file__).resolve().parent / "fixtures" / "captures"


def capture(path: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((CAPTURES / path).read_text())
    return value


def pyasic_antminer(model_key: str = "ANTMINER S19 PRO") -> Any:
    return MinerFactory._select_miner_from_classes(
        "127.0.0.1", miner_model=model_key, miner_type=MinerTypes.ANTMINER
    )


def pyasic_whatsminer(model_key: str = "M30S+V40") -> Any:
    return MinerFactory._select_miner_from_classes(
        "127.0.0.1",
        miner_model=model_key,
        miner_type=MinerTypes.WHATSMINER,
        version="20230803.11.REL",
    )


async def compare_antminer(
    ours_reply: dict[str, Any], summary: dict[str, Any] | None, miner: Any
) -> None:
    ours = antminer_stats(ours_reply)
    boards = await BMMiner._get_hashboards(miner, rpc_stats=ours_reply)
    fans = await BMMiner._get_fans(miner, rpc_stats=ours_reply)
    uptime = await BMMiner._get_uptime(miner, rpc_stats=ours_reply)
    assert len(ours.boards) == len(boards)
    for mine, theirs in zip(ours.boards, boards, strict=True):
        assert mine.index == theirs.slot
        assert mine.hashrate_ths == pytest.approx(float(theirs.hashrate or 0), abs=0.01)
        assert mine.chips == theirs.chips
        # pyasic's RPC parser labels temp<N> "chip" and temp2_<N> "board"; on stock S19/S21
        # data (the real capture) temp<N> is the hottest PCB sensor and temp2_<N> the hottest
        # chip, which is what pyasic's own web parser reports as chip temperature.
        assert mine.chip_temp_c == pytest.approx(theirs.temp, abs=1)
        assert mine.board_temp_c == pytest.approx(theirs.chip_temp, abs=1)
    assert list(ours.fan_rpm) == [f.speed for f in fans if f.speed]
    assert ours.uptime_s == uptime
    if summary is not None:
        hashrate = await BMMiner._get_hashrate(miner, rpc_summary=summary)
        assert ours.hashrate_ths == pytest.approx(float(hashrate), rel=1e-6)


async def test_antminer_stats_capture_matches_pyasic() -> None:
    await compare_antminer(
        capture("antminer/v2020/stats.json"),
        capture("antminer/v2020/summary.json"),
        pyasic_antminer(),
    )
    ours = antminer_stats(capture("antminer/v2020/stats.json"))
    assert ours.hashrate_ths == pytest.approx(110.56689)
    assert ours.max_chip_temp_c == 78
    assert ours.fingerprint == "Antminer S19 Pro|Tue Dec  6 16:12:30 CST 2022"


# pyasic 0.79 lists no S21 XP Hyd.: its fallback class reads less (tests/test_unknown_models.py)
PYASIC_LISTED = [k for k, m in MODELS.items() if m.make == "antminer" and k != "s21xphyd"]


@pytest.mark.parametrize("key", PYASIC_LISTED)
@pytest.mark.parametrize("mode", [SimMode.NORMAL, SimMode.LOW, SimMode.SLEEP])
async def test_antminer_sim_replies_match_pyasic(key: str, mode: SimMode) -> None:
    clock = FrozenClock()
    rig = SimRig("127.1.0.1", lookup(key), clock, 0)
    rig.set_mode(mode)
    clock.t += 900
    stats = json.loads(sim_am.handle_rpc(rig, {"command": "stats"}).rstrip(b"\x00"))
    summary = json.loads(sim_am.handle_rpc(rig, {"command": "summary"}).rstrip(b"\x00"))
    await compare_antminer(stats, summary, pyasic_antminer(f"ANTMINER {lookup(key).model}".upper()))
    truth = rig.true_state()
    ours = antminer_stats(stats)
    assert ours.hashrate_ths == pytest.approx(truth["hashrate_ths"], rel=0.01, abs=0.01)
    # the hottest chip sensor: at or above the board's mean chip temperature
    assert ours.max_chip_temp_c is not None
    assert truth["chip_temp_c"] - 0.5 <= ours.max_chip_temp_c <= truth["chip_temp_c"] + 8


async def compare_whatsminer(reply: dict[str, Any], miner: Any) -> None:
    ours = whatsminer_summary(reply)
    summary = {"SUMMARY": reply["summary"][0]["SUMMARY"]} if "summary" in reply else reply
    assert ours.hashrate_ths == pytest.approx(
        float(await BTMinerV2._get_hashrate(miner, rpc_summary=summary)), rel=1e-6
    )
    watts = await BTMinerV2._get_wattage(miner, rpc_summary=summary)
    assert ours.power_w == (None if watts is None else pytest.approx(watts))
    assert ours.power_limit_w == await BTMinerV2._get_wattage_limit(miner, rpc_summary=summary)
    assert ours.ambient_c == await BTMinerV2._get_env_temp(miner, rpc_summary=summary)
    fans = await BTMinerV2._get_fans(miner, rpc_summary=summary)
    assert list(ours.fan_rpm) == [f.speed for f in fans]
    assert ours.uptime_s == await BTMinerV2._get_uptime(miner, rpc_summary=summary)
    if "devs" in reply:
        devs = {"DEVS": reply["devs"][0]["DEVS"]}
        boards = [b for b in await BTMinerV2._get_hashboards(miner, rpc_devs=devs) if not b.missing]
        assert len(ours.boards) == len(boards)
        for mine, theirs in zip(ours.boards, boards, strict=True):
            assert mine.index == theirs.slot
            assert mine.hashrate_ths == pytest.approx(float(theirs.hashrate), abs=0.01)
            assert mine.chips == theirs.chips
            assert mine.board_temp_c == pytest.approx(theirs.temp, abs=0.5)
            # pyasic reports the average chip temperature; thermal protection needs the hottest
            assert mine.chip_temp_c is not None
            assert mine.chip_temp_c >= theirs.chip_temp - 0.5


async def test_whatsminer_captures_match_pyasic() -> None:
    summary, devs = capture("whatsminer/v1/summary.json"), capture("whatsminer/v1/devs.json")
    joined = {"summary": [summary], "devs": [devs]}
    await compare_whatsminer(joined, pyasic_whatsminer())
    ours = whatsminer_summary(joined)
    assert ours.power_w == 3417
    assert ours.mode is Mode.NORMAL
    assert ours.max_chip_temp_c == 92.5
    with_errors = whatsminer_summary(capture("whatsminer/v1/summary_with_errors.json"))
    assert with_errors.errors == ("110", "600")


@pytest.mark.parametrize("key", ["m30s+", "m30s", "m50s", "m60s"])
@pytest.mark.parametrize("mode", [SimMode.NORMAL, SimMode.LOW, SimMode.HIGH])
async def test_whatsminer_sim_replies_match_pyasic(key: str, mode: SimMode) -> None:
    clock = FrozenClock()
    rig = SimRig("127.1.0.1", lookup(key), clock, 0)
    rig.set_mode(mode)
    clock.t += 900
    reply = decode(sim_wm.handle_rpc(rig, {"command": "summary+devs"}))
    await compare_whatsminer(reply, pyasic_whatsminer(lookup(key).rpc_type.replace("_", "")))
    ours = whatsminer_summary(reply)
    assert ours.mode is Mode(mode.value)
    truth = rig.true_state()
    assert ours.hashrate_ths == pytest.approx(truth["hashrate_ths"], rel=0.01)
    assert ours.power_w == pytest.approx(truth["power_w"], rel=0.01)


def test_whatsminer_sleeping_rig_refuses_summary() -> None:
    clock = FrozenClock()
    rig = SimRig("127.1.0.1", lookup("m30s+"), clock, 0)
    rig.set_mode(SimMode.SLEEP)
    clock.t += 60
    assert sim_wm.handle_rpc(rig, {"command": "summary+devs"}).startswith(BTMINER_STOPPED)


def test_whatsminer_v3_capture_and_sim() -> None:
    real = capture("whatsminer/v3/get_miner_status_summary.json")
    real["msg"]["edevs"] = capture("whatsminer/v3/get_miner_status_edevs.json")["msg"]["edevs"]
    ours = whatsminer_v3_status(real)
    assert ours.hashrate_ths == pytest.approx(171.259)
    assert ours.power_w == 3156.0
    assert ours.power_limit_w == 3600
    assert [b.chips for b in ours.boards] == [75, 75, 75]
    assert ours.boards[0].board_temp_c == 41.1
    rig = SimRig("127.1.0.1", lookup("m60s"), FrozenClock(), 0, firmware="20251209.16.Rel2")
    reply = json.loads(sim_wm.handle_v3(rig, {"cmd": "get.miner.status", "param": "summary+edevs"}))
    sim = whatsminer_v3_status(reply)
    assert sim.hashrate_ths == pytest.approx(rig.true_state()["hashrate_ths"], rel=0.01)


@pytest.mark.parametrize("dead", [0, 1, 2])
def test_dead_board_is_reported_dead(dead: int) -> None:
    clock = FrozenClock()
    rig = SimRig("127.1.0.1", lookup("s19xp"), clock, 0)
    rig.set_fault(Fault.DEAD_BOARD, {"board": dead})
    clock.t += 60
    stats = json.loads(sim_am.handle_rpc(rig, {"command": "stats"}).rstrip(b"\x00"))
    boards = antminer_stats(stats, expected_boards=3).boards
    assert [b.index for b in boards] == [0, 1, 2]
    assert [b.alive for b in boards] == [i != dead for i in range(3)]


@pytest.mark.parametrize(
    ("reply", "field"),
    [
        ({"STATUS": [{"STATUS": "E", "Msg": "Invalid command"}]}, "rig answered E"),
        ({"STATUS": [{"STATUS": "S"}], "STATS": [{"Type": "x"}]}, "STATS"),
        ({"STATUS": [{"STATUS": "S"}], "STATS": [{}, {"GHS 5s": "fast"}]}, "GHS 5s"),
        ({"STATUS": [{"STATUS": "S"}], "STATS": [{}, {"GHS 5s": "nan"}]}, "finite"),
        ({"STATUS": [{"STATUS": "S"}], "STATS": "nope"}, "STATS"),
        ({"stats": []}, "stats"),
    ],
)
def test_antminer_hostile_replies_name_the_field(reply: dict[str, Any], field: str) -> None:
    with pytest.raises(DriverError, match=field) as err:
        antminer_stats(reply)
    assert err.value.kind is FailureKind.BAD_REPLY


@pytest.mark.parametrize(
    ("reply", "field"),
    [
        ({"SUMMARY": [{"MHS 1m": None}]}, "MHS 1m"),
        ({"SUMMARY": []}, "empty"),
        ({"SUMMARY": [{"MHS 1m": 1e8}], "DEVS": [{"ASC": "x"}]}, "ASC"),
        ({"SUMMARY": [{"MHS 1m": "inf"}]}, "finite"),
    ],
)
def test_whatsminer_hostile_replies_name_the_field(reply: dict[str, Any], field: str) -> None:
    with pytest.raises(DriverError, match=field):
        whatsminer_summary(reply)


@pytest.mark.parametrize(
    ("reply", "field"),
    [
        ({"code": -2, "msg": "invalid cmd"}, "rig answered -2"),
        ({"code": 0, "msg": {}}, "msg.summary"),
        ({"code": 0, "msg": {"summary": {"hash-realtime": 1}, "edevs": [{"id": "a"}]}}, "edevs"),
    ],
)
def test_whatsminer_v3_hostile_replies(reply: dict[str, Any], field: str) -> None:
    with pytest.raises(DriverError, match=field):
        whatsminer_v3_status(reply)


@pytest.mark.parametrize("raw", [b"", b"<html>502 Bad Gateway</html>", b"[1, 2]"])
def test_decode_rejects_garbage_with_an_excerpt(raw: bytes) -> None:
    with pytest.raises(DriverError) as err:
        decode(raw)
    assert err.value.kind is FailureKind.BAD_REPLY


def test_truncated_reply_repaired_by_pyasic_is_still_refused() -> None:
    # pyasic's decoder "repairs" a cut reply into valid JSON missing the data: the parser
    # must refuse it rather than report a rig with no boards.
    cut = b'{"STATUS":[{"STATUS":"S"}],"SUMMARY":[{"MHS'
    with pytest.raises(DriverError, match="SUMMARY"):
        whatsminer_summary(decode(cut))


def test_a_reply_field_must_be_a_finite_number() -> None:
    """Python's JSON reader takes NaN and Infinity, and true is an int to isinstance: none of
    them is a reading. The error names the field (the Braiins OS driver let NaN through)."""
    import json

    from drivers.parse import field_number, field_object, field_opt_number

    reply = json.loads('{"w": NaN, "t": Infinity, "b": true, "ok": 3125, "none": null}')
    for key in ("w", "t", "b"):
        with pytest.raises(DriverError) as err:
            field_number(reply[key], f"stats.{key}")
        assert err.value.kind is FailureKind.BAD_REPLY
        assert err.value.detail.startswith(f"stats.{key}: not a number")
    assert field_number(reply["ok"], "stats.ok") == 3125.0
    assert field_opt_number(reply["none"], "stats.none") is None
    with pytest.raises(DriverError, match=r"^stats: not an object$"):
        field_object([1], "stats")
    with pytest.raises(DriverError, match=r"^stats: missing$"):
        field_object(None, "stats")
