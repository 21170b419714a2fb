"""``rigpilot backtest``: the replay, its baselines, its inputs and its report files."""

from __future__ import annotations

import csv
import io
import json
import pickle
import re
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from backtest import cli
from backtest.engine import Outcome, PolicyFailed, ReplayConfig, replay
from backtest.inputs import (
    BacktestInputError,
    Fleet,
    Market,
    MarketRow,
    RigGroup,
    load_fleet,
    load_market,
)
from backtest.report import PNGS, series_rows, summary, write_report
from policies.guards import GuardConfig, RampGrant
from policies.registry import load_policy
from simulator.models import MODELS

REPO = Path(__file__).resolve().parents[1]
SAMPLE_MARKET = REPO / "examples" / "backtest" / "feb2026.csv"
SAMPLE_FLEET = REPO / "examples" / "backtest" / "fleet.toml"
T0 = 1_769_904_000.0  # 2026-02-01T00:00:00Z


def _slice(market: Market, rows: int) -> Market:
    return replace(market, rows=market.rows[:rows])


def _run(market: Market, fleet: Fleet, policies: str = "breakeven", **kw: object) -> Outcome:
    config = ReplayConfig(policies=tuple(policies.split("+")), **kw)  # type: ignore[arg-type]
    return replay(market, fleet, [load_policy(n) for n in config.policies], config)


# ---------------------------------------------------------------------------------------------
# the three "done when" tests


@pytest.mark.slow
def test_breakeven_never_earns_less_than_always_on_on_the_sample_data() -> None:
    outcome = _run(load_market(SAMPLE_MARKET), load_fleet(SAMPLE_FLEET))
    pol, always, _thr = summary(outcome)
    assert pol.profit_usd >= always.profit_usd
    # ... and not only at the end: the running totals, step by step.
    p, a = outcome.policy.strategy, outcome.always_on.strategy
    header, rows = series_rows(outcome)
    cp, ca = header.index("policy_cum_profit_usd"), header.index("always_on_cum_profit_usd")
    assert all(float(r[cp]) >= float(r[ca]) for r in rows)  # type: ignore[arg-type]
    assert len(p.row_energy_ws) == len(a.row_energy_ws) == 8064


def test_threshold_matches_a_hand_computed_result() -> None:
    # One S21 (nameplate 200 TH/s, 3500 W; at steady normal its chips stay under 72 °C, so
    # the physics draws exactly nameplate), hourly rows at 5 ¢/kWh, pool fee 2 %.
    # Margin at normal = 0.2 PH x hp x 0.98 - 3.5 kW x 24 h x 0.05 = 0.196 hp - 4.2 USD/day:
    # on at $50/PH/day (+5.60), off at $20 (-0.28). Going to sleep takes one physics step
    # (frequency falls 0.25/s; a step draws the power it ends at), then 18 W.
    rows = tuple(
        MarketRow(T0 + 3600 * i, hp, 0.05) for i, hp in enumerate((50.0, 50.0, 20.0, 20.0))
    )
    market = Market("tiny", 3600, rows)
    fleet = Fleet("one", (RigGroup(MODELS["s21"], 1),))
    outcome = _run(market, fleet)
    thr = outcome.threshold.strategy
    revenue_on = 200 / 1000 * 50 * 0.98 / 24  # USD per hour at $50
    cost_on = 3.5 * 0.05
    cost_off = 0.018 * 0.05
    assert sum(thr.rig_revenue) == pytest.approx(2 * revenue_on, rel=1e-9)
    assert sum(thr.rig_cost) == pytest.approx(2 * cost_on + 2 * cost_off, rel=1e-9)
    assert sum(thr.rig_energy_ws) / 3.6e6 == pytest.approx(2 * 3.5 + 2 * 0.018, rel=1e-9)
    assert thr.rig_changes == [1]
    assert thr.rig_asleep_s == [2 * 3600.0]
    assert thr.row_hashing == [1, 1, 0, 0]
    # always-on, by hand too: on throughout
    a = outcome.always_on.strategy
    revenue_20 = 200 / 1000 * 20 * 0.98 / 24
    assert sum(a.rig_revenue) - sum(a.rig_cost) == pytest.approx(
        2 * revenue_on + 2 * revenue_20 - 4 * cost_on, rel=1e-9
    )


@pytest.mark.slow
def test_identical_inputs_give_identical_outputs(tmp_path: Path) -> None:
    market = tmp_path / "m.csv"
    lines = SAMPLE_MARKET.read_text().splitlines()
    market.write_text("\n".join(lines[:600]) + "\n")  # two days, with a spike on Feb 1-2
    outs = []
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        argv = ["--market", str(market), "--fleet", str(SAMPLE_FLEET), "--policy", "breakeven"]
        assert cli.main([*argv, "--out", str(out), "--quiet"], out=io.StringIO()) == 0
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0] == outs[1]
    assert set(outs[0]) == {"series.csv", "rigs.csv", "summary.csv", "report.html", *PNGS}


# ---------------------------------------------------------------------------------------------
# the replay is the live path


def test_skipping_calls_changes_nothing() -> None:
    """The fast path (cohorts, calls skipped where the result is known) equals calling the
    policies and guards at every tick."""
    market = _slice(load_market(SAMPLE_MARKET), 144)  # 12 hours
    fleet = load_fleet(SAMPLE_FLEET)
    fast = _run(market, fleet)
    exact = _run(market, fleet, exact=True)
    assert summary(fast) == summary(exact)
    for a, b in ((fast.policy, exact.policy), (fast.threshold, exact.threshold)):
        assert a.strategy.row_energy_ws == b.strategy.row_energy_ws
        assert a.strategy.rig_changes == b.strategy.rig_changes
    assert fast.policy.counters is not None and exact.policy.counters is not None
    assert fast.policy.counters.guard_calls < exact.policy.counters.guard_calls


def test_the_ramp_guard_paces_the_wake_up() -> None:
    # 20 S21 asleep through a spike, then back: the threshold wakes all at once, the guards
    # as the kW budget allows (7.5 kW a minute: two S21, 3.5 kW each, a minute).
    prices = [0.05] * 3 + [2.0] * 3 + [0.05] * 12
    rows = tuple(MarketRow(T0 + 300 * i, 50.0, p) for i, p in enumerate(prices))
    guards = GuardConfig(ramp_kw_per_min=7.5)
    outcome = _run(
        Market("spike", 300, rows), Fleet("f", (RigGroup(MODELS["s21"], 20),)), guards=guards
    )
    pol = outcome.policy.strategy
    assert pol.row_hashing[3] == 0
    assert pol.row_hashing[-1] == 20
    assert pol.row_hashing[6] < 20
    assert outcome.threshold.strategy.row_hashing[6] == 20
    assert outcome.policy.ramp_kw_per_min < outcome.threshold.ramp_kw_per_min
    assert outcome.policy.ramp_kw_per_min <= 2 * 3.5 + 0.1  # at most two rigs' boot+ramp a minute


def test_the_replays_grants_stay_within_the_kw_budget_in_every_minute() -> None:
    # Cohorts are shown to the guards rig by rig for a power-up, and asked twice when some are
    # held before the ramp (the first call's grants are dropped). Whatever the replay keeps must
    # still be one ramp: the kW granted in any 60 s stay within the budget.
    prices = [0.05] * 3 + [2.0] * 3 + [0.05] * 12
    rows = tuple(MarketRow(T0 + 300 * i, 50.0, p) for i, p in enumerate(prices))
    fleet = Fleet(
        "f", (RigGroup(MODELS["s21"], 60, 0.95, 0.05, 3), RigGroup(MODELS["s19jpro"], 60))
    )
    kept: dict[tuple[float, str], float] = {}  # (start slot, rig) -> kW: every power-up kept

    def keep(log: tuple[RampGrant, ...]) -> None:
        kept.update(((g.at, g.rig_id), g.kw) for g in log)

    budget = 20.0
    config = ReplayConfig(policies=("breakeven",), guards=GuardConfig(ramp_kw_per_min=budget))
    market = Market("spike", 300, rows)
    outcome = replay(market, fleet, [load_policy("breakeven")], config, on_ramp=keep)
    assert outcome.policy.strategy.row_hashing[-1] == 120  # every rig woke, through the ramp
    starts = sorted(kept.items())
    assert len(starts) >= 120
    for (end, _), _kw in starts:
        minute = [kw for (at, _), kw in starts if end - 60.0 < at <= end]
        assert sum(minute) <= budget + 1e-6, (end, minute)


def test_the_rigs_budget_is_per_second_not_per_tick() -> None:
    # With the kW budget out of the way, 1 rig/s at 30 s ticks wakes 20 rigs in one tick.
    prices = [0.05] * 3 + [2.0] * 3 + [0.05] * 4
    rows = tuple(MarketRow(T0 + 300 * i, 50.0, p) for i, p in enumerate(prices))
    fleet = Fleet("f", (RigGroup(MODELS["s21"], 20),))
    fast = _run(Market("spike", 300, rows), fleet)
    assert fast.policy.strategy.row_hashing[6] == 20
    slow = _run(Market("spike", 300, rows), fleet, guards=GuardConfig(ramp_rigs_per_s=1 / 30))
    assert slow.policy.strategy.row_hashing[6] == 10  # one a tick: 10 ticks in the row


def test_control_path_does_not_import_the_simulator() -> None:
    code = (
        "import sys, daemon.loop, daemon.run, daemon.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'simulator'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# bad input: the file, the line or field, the problem


def _market(tmp_path: Path, text: str, name: str = "m.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


HEAD = "time,hashprice_usd_per_ph_day,power_price_usd_per_kwh\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEAD + "2026-02-01T00:00:00Z,40,0.05\n2026-02-01T00:05:00Z,40\n", "line 3: 2 fields"),
        (HEAD + "2026-02-01T00:00:00Z,forty,0.05\n", "line 2: hashprice_usd_per_ph_day: 'forty'"),
        ("time,hashprice_usd_per_ph_day,price\n", "line 1: unknown column 'price'"),
        ("time,hashprice_usd_per_ph_day\n", "line 1: missing column 'power_price_usd_per_kwh'"),
        (
            HEAD + "2026-02-01T00:05:00Z,40,0.05\n2026-02-01T00:00:00Z,40,0.05\n",
            "line 3: time 2026-02-01T00:00:00Z is not after",
        ),
        (
            HEAD
            + "2026-02-01T00:00:00Z,40,0.05\n2026-02-01T00:05:00Z,40,0.05\n"
            + "2026-02-01T00:20:00Z,40,0.05\n",
            "line 4: gap or irregular step",
        ),
        (HEAD + "2026-02-01T00:00:00,40,0.05\n2026-02-01T00:05:00,40,0.05\n", "no time zone"),
        (HEAD + "2026-02-01T00:00:00Z,40,0.05\n2026-02-01T00:01:00Z,40,0.05\n", "300 s"),
        (HEAD + "2026-02-01T00:00:00Z,,0.05\n2026-02-01T00:05:00Z,40,0.05\n", "first row"),
        (HEAD + "2026-02-01T00:00:00Z,40,50\n2026-02-01T00:05:00Z,40,0.05\n", "implausible"),
        (HEAD + "2026-02-01T00:00:00Z,-4,0.05\n2026-02-01T00:05:00Z,40,0.05\n", "negative"),
    ],
)
def test_bad_market_csv(tmp_path: Path, text: str, message: str) -> None:
    path = _market(tmp_path, text)
    with pytest.raises(BacktestInputError) as err:
        load_market(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_market_json_and_its_errors(tmp_path: Path) -> None:
    rows = [
        {"time": T0 + 900 * i, "hashprice_usd_per_ph_day": 40, "power_price_usd_per_kwh": p}
        for i, p in enumerate((0.05, None, -0.01))
    ]
    market = load_market(_market(tmp_path, json.dumps({"rows": rows}), "m.json"))
    assert market.interval_s == 900
    assert market.rows[1].power_price_usd_per_kwh is None  # an empty quote: stale, as live
    rows[2]["power"] = 1
    with pytest.raises(BacktestInputError, match=r"m\.json: rows\[2\]: unknown field 'power'"):
        load_market(_market(tmp_path, json.dumps(rows), "m.json"))
    with pytest.raises(BacktestInputError, match=r"m\.json: line 1: not valid JSON"):
        load_market(_market(tmp_path, "[{", "m.json"))


def test_a_market_saved_by_excel_is_read_as_written_by_hand(tmp_path: Path) -> None:
    # Excel's "CSV UTF-8" starts with a byte-order mark and ends lines with CRLF; a price
    # column in USD/MWh, named as such, is converted to USD/kWh.
    plain = HEAD + "2026-02-01T00:00:00Z,40,0.05\n2026-02-01T00:05:00Z,41.5,-0.012\n"
    want = load_market(_market(tmp_path, plain, "plain.csv")).rows
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbf" + plain.replace("\n", "\r\n").encode())
    assert load_market(excel).rows == want
    mwh = plain.replace("_per_kwh", "_per_mwh").replace(",0.05", ",50").replace("-0.012", "-12")
    assert load_market(_market(tmp_path, mwh, "mwh.csv")).rows == want
    crlf_mwh = tmp_path / "both.csv"
    crlf_mwh.write_bytes(b"\xef\xbb\xbf" + mwh.replace("\n", "\r\n").encode())
    assert load_market(crlf_mwh).rows == want
    rows = [
        {"time": T0, "hashprice_usd_per_ph_day": 40, "power_price_usd_per_mwh": 50},
        {"time": T0 + 300, "hashprice_usd_per_ph_day": 41.5, "power_price_usd_per_mwh": -12},
    ]
    bom_json = tmp_path / "m.json"
    bom_json.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    assert load_market(bom_json).rows == want
    fleet = tmp_path / "fleet.toml"
    fleet.write_bytes(b"\xef\xbb\xbf" + b'[[rigs]]\r\nmodel = "s21"\r\ncount = 2\r\n')
    assert load_fleet(fleet).rigs == 2


MWH_HEAD = "time,hashprice_usd_per_ph_day,power_price_usd_per_mwh\n"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            (HEAD.strip() + ",power_price_usd_per_mwh\n2026-02-01T00:00:00Z,40,0.05,50\n").encode(),
            "line 1: both 'power_price_usd_per_kwh' and 'power_price_usd_per_mwh'",
        ),
        (
            (MWH_HEAD + "2026-02-01T00:00:00Z,40,50000\n2026-02-01T00:05:00Z,40,50\n").encode(),
            "line 2: power_price_usd_per_mwh: 50000 is implausible (wrong unit? USD per MWh)",
        ),
        (
            (MWH_HEAD + "2026-02-01T00:00:00Z,40,\n2026-02-01T00:05:00Z,40,50\n").encode(),
            "line 2: power_price_usd_per_mwh: the first row needs a value",
        ),
        (
            (HEAD + "2026-02-01T00:00:00Z,40,55\n2026-02-01T00:05:00Z,40,50\n").encode(),
            "a price in USD/MWh goes in a column power_price_usd_per_mwh",
        ),
        ("\ufeffprice,time\r\n".encode(), "line 1: unknown column 'price'"),
        ("time,x\n".encode("utf-16"), "UTF-16 (Excel's 'Unicode Text'); save it as UTF-8"),
        ((HEAD + "2026-02-01T00:00:00Z,40,0.05\n").encode("latin-1") + b"\xe9\n", "not UTF-8"),
    ],
)
def test_market_files_as_saved_keep_clear_errors(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(data)
    with pytest.raises(BacktestInputError) as err:
        load_market(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[rigs]]\nmodel = "s9"\ncount = 3\n', "rigs[0]: model: unknown model 's9'; known"),
        ('[[rigs]]\nmodel = "s21"\ncount = 0\n', "rigs[0]: count: want a whole number"),
        ('[[rigs]]\nmodel = "s21"\ncolour = "red"\n', "rigs[0]: unknown key 'colour'"),
        ('[[rigs]]\nmodel = "s21"\nmodes = ["sleep", "turbo"]\n', "unknown mode 'turbo'"),
        ('[[rigs]]\nmodel = "s21"\nhealth = 2\n', "rigs[0]: health: want a number"),
        ("speed = 3\n", "unknown key 'speed'"),
        ('[[rigs]\nmodel = "s21"\n', "not valid TOML"),
    ],
)
def test_bad_fleet(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(BacktestInputError) as err:
        load_fleet(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_the_simulator_fleet_example_is_accepted() -> None:
    fleet = load_fleet(REPO / "docs" / "fleet.example.toml")
    assert fleet.rigs == 47
    assert "time_scale" in fleet.ignored
    assert "rigs[4].faults" in fleet.ignored


def test_health_spread_splits_a_group_evenly() -> None:
    group = RigGroup(MODELS["s21"], 10, health=0.95, health_spread=0.05, health_buckets=3)
    assert group.healths() == [(0.9, 3), (0.95, 3), (1.0, 4)]


def test_cli_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--market", str(SAMPLE_MARKET), "--fleet", str(SAMPLE_FLEET), "--out", str(tmp_path)]
    assert cli.main([*args, "--policy", "brekeven"], out=io.StringIO()) == 2
    assert "unknown policy 'brekeven'; installed policies: breakeven" in capsys.readouterr().err
    assert cli.main([*args, "--policy", "breakeven", "--sweep", "speed=1"], out=io.StringIO()) == 2
    assert "--sweep 'speed=1': want KEY=V1,V2" in capsys.readouterr().err
    bad = _market(tmp_path, HEAD + "2026-02-01T00:00:00Z,40,0.05\nnope,40,0.05\n")
    args[1] = str(bad)
    assert cli.main([*args, "--policy", "breakeven"], out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert f"{bad}: line 3: time: 'nope' is not an ISO 8601 time" in err


EXPLODING = """
from policies.api import Intent


class Exploding:
    name = "exploding"

    def decide(self, market, fleet, site, now):
        if now >= 1_769_904_000.0 + 3600:  # an hour into February 2026: the plugin's bug
            raise ZeroDivisionError("the plugin's bug")
        return {}


class Garbage:
    name = "garbage"

    def decide(self, market, fleet, site, now):
        return {rig.rig_id: "sleep" for rig in fleet}
"""


def _plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two broken plugins, registered as installed ones are (an entry point each)."""
    from importlib.metadata import EntryPoint

    from policies import registry

    (tmp_path / "broken_plugins.py").write_text(EXPLODING)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = [
        EntryPoint(name, f"broken_plugins:{cls}", registry.GROUP)
        for name, cls in (("exploding", "Exploding"), ("garbage", "Garbage"))
    ]
    monkeypatch.setattr(
        registry, "entry_points", lambda *, group: found if group == registry.GROUP else []
    )
    monkeypatch.delitem(sys.modules, "broken_plugins", raising=False)


@pytest.mark.slow
def test_a_policy_that_fails_mid_replay_is_reported_and_its_run_held_the_fleet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "src").mkdir()
    _plugins(tmp_path / "src", monkeypatch)
    path = tmp_path / "two-hours.csv"  # the sample's first two hours
    path.write_text("".join(SAMPLE_MARKET.read_text().splitlines(keepends=True)[:25]))
    args = ["--market", str(path), "--fleet", str(SAMPLE_FLEET), "--quiet", "--jobs", "1"]
    out = tmp_path / "out"
    argv = [*args, "--policy", "breakeven", "--sweep", "policy=breakeven,exploding"]
    assert cli.main([*argv, "--out", str(out)], out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert (
        "error: [2/2] policy=exploding: policy 'exploding' failed at 2026-02-01T01:00:00Z in the "
        "replay: ZeroDivisionError: the plugin's bug (the fleet held, as live; 100 ticks failed, "
        "the fleet held at each)" in err
    )
    assert "1 of 2 runs had a failing policy" in err
    for run in ("run-01", "run-02"):  # every run's report is written
        assert (out / run / "summary.csv").exists()
    assert (
        "FAILED: policy &#x27;exploding&#x27; failed"
        in (out / "run-02" / "report.html").read_text()
    )
    with (out / "sweep.csv").open() as f:
        flags = [row["flag"] for row in csv.DictReader(f)]
    assert flags[0] == ""
    assert flags[1].startswith("policy failed: 'exploding' (the fleet held at each failing tick)")
    # An answer that is not a mapping of Intents fails the same way, named as the loop names it.
    assert cli.main([*args, "--policy", "garbage", "--out", str(tmp_path / "g")]) == 1
    err = capsys.readouterr().err
    assert "policy 'garbage' failed at 2026-02-01T00:00:00Z in the replay: TypeError: " in err
    assert "policy 'garbage' returned str for rig" in err
    # The failure crosses to the parent of a --jobs worker intact.
    exc = PolicyFailed("exploding", T0, "ZeroDivisionError: x", 3)
    again = pickle.loads(pickle.dumps(exc))
    assert str(again) == str(exc) and again == exc


class FailingFor:
    """Wants nothing, and raises from ``start`` until ``end`` (a plugin's bug)."""

    name = "flaky"

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end

    def decide(self, market: object, fleet: object, site: object, now: float) -> dict[str, object]:
        if self.start <= now < self.end:
            raise ZeroDivisionError("the plugin's bug")
        return {}


@pytest.mark.parametrize("exact", [False, True])
def test_a_failing_policy_holds_the_replayed_fleet_as_live(exact: bool) -> None:
    # Cheap power for an hour, then dear for two: breakeven alone puts every rig to sleep
    # after the first hour. With a policy failing from 30 min to 2 h beside it, no policy
    # moves any rig while it fails (policies/tick.py, as the daemon): the fleet hashes on
    # through the dear hour, and sleeps once the policy decides again.
    prices = [0.03] * 12 + [0.60] * 24
    market = Market("m", 300, tuple(MarketRow(T0 + 300 * i, 50.0, p) for i, p in enumerate(prices)))
    fleet = Fleet("f", (RigGroup(MODELS["s21"], 6),))
    config = ReplayConfig(policies=("breakeven", "flaky"), exact=exact)
    alone = replay(
        market, fleet, [load_policy("breakeven")], replace(config, policies=("breakeven",))
    )
    flaky = FailingFor(T0 + 1800, T0 + 7200)
    held = replay(market, fleet, [load_policy("breakeven"), flaky], config)  # type: ignore[list-item]
    assert alone.failures == ()
    assert alone.policy.strategy.row_hashing == [6] * 12 + [0] * 24
    assert held.policy.strategy.row_hashing == [6] * 24 + [0] * 12
    (failure,) = held.failures
    assert (failure.policy, failure.at) == ("flaky", T0 + 1800)
    assert failure.error == "ZeroDivisionError: the plugin's bug"
    assert failure.ticks == (7200 - 1800) // 30  # every tick while it failed


# ---------------------------------------------------------------------------------------------
# the report


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


@pytest.mark.slow
def test_report_files(tmp_path: Path) -> None:
    outcome = _run(_slice(load_market(SAMPLE_MARKET), 300), load_fleet(SAMPLE_FLEET))
    write_report(outcome, tmp_path, "test")
    for name in PNGS:
        chunks = _png_chunks((tmp_path / name).read_bytes())
        kinds = [k for k, _ in chunks]
        assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
        width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
        raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
        assert (depth, colour) == (8, 6)  # RGBA, as matplotlib writes it
        assert len(raw) == height * (1 + 4 * width)
        assert len(set(raw)) > 3  # something was drawn
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 3
    for external in ("<script", "<link", "src=", "@import", "https://"):
        assert external not in page
    assert page.count("url(") == page.count("url(#")  # references within the page only
    namespaces = re.sub(r'xmlns(:\w+)?="http://[^"]*"', "", page)
    assert "http://" not in namespaces
    with (tmp_path / "series.csv").open() as fh:
        header = next(csv.reader(fh))
    for col in (
        "time",
        "hashprice_usd_per_ph_day",
        "fleet_breakeven_hashprice_usd_per_ph_day",
        "policy_power_kw",
        "policy_cum_profit_usd",
        "always_on_profit_usd",
        "threshold_rigs_hashing",
    ):
        assert col in header
    with (tmp_path / "rigs.csv").open() as fh:
        rigs = list(csv.DictReader(fh))
    assert len(rigs) == 60
    assert {"rig", "model", "mode_changes", "hours_asleep", "profit_usd"} <= set(rigs[0])
    with (tmp_path / "summary.csv").open() as fh:
        names = [r["strategy"] for r in csv.DictReader(fh)]
    assert names == ["policy", "always-on", "threshold"]


@pytest.mark.slow
def test_sweep_compares_settings(tmp_path: Path) -> None:
    market = tmp_path / "m.csv"
    market.write_text("\n".join(SAMPLE_MARKET.read_text().splitlines()[:150]) + "\n")
    config = tmp_path / "rigpilot.toml"
    config.write_text("[control]\npower_cap_kw = 150\n")
    argv = ["--market", str(market), "--fleet", str(SAMPLE_FLEET), "--config", str(config)]
    argv += ["--policy", "breakeven", "--out", str(tmp_path / "out"), "--quiet"]
    argv += ["--sweep", "hysteresis=0,1", "--sweep", "policy=breakeven,breakeven+power-cap"]
    shown = io.StringIO()
    assert cli.main(argv, out=shown) == 0
    with (tmp_path / "out" / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["settings"] for r in rows] == [
        "hysteresis=0 policy=breakeven",
        "hysteresis=0 policy=breakeven+power-cap",
        "hysteresis=1 policy=breakeven",
        "hysteresis=1 policy=breakeven+power-cap",
    ]
    assert (tmp_path / "out" / "run-04" / "report.html").exists()
    assert "sweep:" in shown.getvalue()
    # the cap holds the site at or under 150 kW once it has shed
    with (tmp_path / "out" / "run-02" / "series.csv").open() as fh:
        power = [float(r["policy_power_kw"]) for r in csv.DictReader(fh)]
    assert max(power[3:]) <= 150.0 + 1e-6


@pytest.mark.slow
def test_a_sweep_in_parallel_writes_what_one_after_the_other_writes(tmp_path: Path) -> None:
    # --jobs 2 replays the runs in two worker processes; every file of every run, the
    # comparison and the terminal summary must be what --jobs 1 gives, byte for byte.
    market = tmp_path / "m.csv"
    market.write_text("\n".join(SAMPLE_MARKET.read_text().splitlines()[:200]) + "\n")
    argv = ["--market", str(market), "--fleet", str(SAMPLE_FLEET), "--policy", "breakeven"]
    argv += ["--quiet", "--sweep", "hysteresis=0,0.5,1", "--sweep", "dwell=0,600"]
    shown = {}
    for jobs in ("1", "2"):
        out = io.StringIO()
        assert cli.main([*argv, "--out", str(tmp_path / jobs), "--jobs", jobs], out=out) == 0
        text = out.getvalue().replace(str(tmp_path / jobs), "OUT")
        shown[jobs] = [ln for ln in text.splitlines() if " s, report in " not in ln]
    assert shown["1"] == shown["2"]
    files = sorted(
        p.relative_to(tmp_path / "1") for p in (tmp_path / "1").rglob("*") if p.is_file()
    )
    assert len(files) > 6 * 3 and Path("sweep.csv") in files
    for name in files:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name


def test_a_schedule_it_cannot_use_is_refused_before_replaying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "rigpilot.toml"
    config.write_text(
        '[control]\n[[control.policy_params.schedule]]\nname = "4cp"\nstart = "16:00"\n'
        'end = "17:30"\nmode = "sleep"\ntimezone = "Texas/Houston"\n'
    )
    argv = ["--market", str(SAMPLE_MARKET), "--fleet", str(SAMPLE_FLEET), "--config", str(config)]
    argv += ["--policy", "breakeven+schedule", "--out", str(tmp_path / "out"), "--quiet"]
    assert cli.main(argv, out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert "policy_params (schedule): schedule window 1 ('4cp')" in err and "Texas/Houston" in err
    assert not (tmp_path / "out").exists()


def test_jobs_below_one_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--market", str(SAMPLE_MARKET), "--fleet", str(SAMPLE_FLEET), "--policy", "breakeven"]
    assert cli.main([*argv, "--out", str(tmp_path), "--jobs", "0"], out=io.StringIO()) == 2
    assert "--jobs: 0 is below 1" in capsys.readouterr().err


def test_rigpilot_backtest_help_is_listed() -> None:
    from daemon.cli import build_parser

    assert "backtest" in build_parser().format_help()
