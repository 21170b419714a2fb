"""The backtest's report as an operator reads it: where the gain came from (spikes, the low
hashprice, the cost of changes), sweeps that say when a run is inert, and the sample's figures
in docs/backtest.md regenerated from the data."""

from __future__ import annotations

import csv
import html
import io
import re
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from backtest import cli
from backtest.charts import MAX_POINTS, downsample, tick_label
from backtest.engine import Outcome, ReplayConfig, replay
from backtest.inputs import Fleet, Market, MarketRow, RigGroup, load_fleet, load_market
from backtest.report import PNGS, SpikeRule, charts, spikes_of, summary, write_report
from policies.registry import load_policy
from simulator.models import MODELS

REPO = Path(__file__).resolve().parents[1]
SAMPLE_MARKET = REPO / "examples" / "backtest" / "feb2026.csv"
SAMPLE_FLEET = REPO / "examples" / "backtest" / "fleet.toml"
T0 = 1_769_904_000.0  # 2026-02-01T00:00:00Z


# Replays of the sample month and charts drawn: seconds each (the month is one module fixture).
pytestmark = pytest.mark.slow


def _run(market: Market, fleet: Fleet, policies: str = "breakeven") -> Outcome:
    config = ReplayConfig(policies=tuple(policies.split("+")))
    return replay(market, fleet, [load_policy(n) for n in config.policies], config)


@pytest.fixture(scope="module")
def february() -> Outcome:
    return _run(load_market(SAMPLE_MARKET), load_fleet(SAMPLE_FLEET))


def _capped(market: Market, usd_per_kwh: float) -> Market:
    rows = tuple(
        r
        if r.power_price_usd_per_kwh is None
        else replace(r, power_price_usd_per_kwh=min(r.power_price_usd_per_kwh, usd_per_kwh))
        for r in market.rows
    )
    return replace(market, rows=rows)


# ---------------------------------------------------------------------------------------------
# attribution


def test_one_spike_is_all_spike_gain_and_the_wake_up_is_the_changes_cost() -> None:
    # One S21, hashprice and power constant but for one row at 1 USD/kWh. The threshold sleeps
    # through that row and wakes after it: all its gain is the spike's, less what sleeping and
    # waking cost on the physics; nothing is left for the "low hashprice" part.
    rows = tuple(MarketRow(T0 + 300 * i, 40.0, 1.0 if i == 3 else 0.04) for i in range(10))
    outcome = _run(Market("one-spike", 300, rows), Fleet("f", (RigGroup(MODELS["s21"], 1),)))
    _pol, always, thr = summary(outcome)
    gain = thr.profit_usd - always.profit_usd
    assert gain > 0
    assert thr.gain_spikes_usd == pytest.approx(gain + thr.cost_of_changes_usd, abs=1e-12)
    assert abs(thr.gain_low_hashprice_usd) < 1e-12
    # A wake-up costs hashes: 45 s of booting at 15 % of nameplate and no hashrate, then a
    # frequency ramp from 30 %; at least the boot's lost revenue, at most ~3 minutes of it.
    s21 = MODELS["s21"]
    revenue_per_s = s21.hashrate_ths * 40.0 * (1 - 0.02) / 1000.0 / 86_400.0
    assert 45 * revenue_per_s * 0.5 < thr.cost_of_changes_usd < 200 * revenue_per_s
    assert (always.gain_spikes_usd, always.cost_of_changes_usd) == (0.0, 0.0)


def test_the_february_gain_is_split_into_spikes_the_slide_and_changes(
    february: Outcome,
) -> None:
    pol, always, thr = summary(february)
    spikes, flags = spikes_of(february, SpikeRule())
    assert spikes.rows == 44
    assert spikes.hours == pytest.approx(44 * 300 / 3600)
    assert sum(flags) == 44
    for f in (pol, thr):
        gain = f.profit_usd - always.profit_usd
        parts = f.gain_spikes_usd + f.gain_low_hashprice_usd - f.cost_of_changes_usd
        assert parts == pytest.approx(gain, abs=1e-9)
        assert f.cost_of_changes_usd > 0
    # The hand count: about $679 of the threshold's $846 came from the 44 spike rows.
    assert thr.gain_spikes_usd == pytest.approx(678.84, abs=0.01)
    assert thr.profit_usd - always.profit_usd == pytest.approx(845.67, abs=0.01)
    assert pol.gain_spikes_usd > 0.6 * (pol.profit_usd - always.profit_usd)
    assert pol.gain_low_hashprice_usd > 250


def test_hold_out_power_capped_at_6_cents_the_policy_still_beats_always_on(
    february: Outcome,
) -> None:
    # With every power price capped at 0.06 USD/kWh there are no spikes; what the policy
    # still gains is the slide's, and the attribution on the real prices predicted it.
    capped = _run(_capped(load_market(SAMPLE_MARKET), 0.06), load_fleet(SAMPLE_FLEET))
    pol, always, _thr = summary(capped)
    gain = pol.profit_usd - always.profit_usd
    assert gain > 0.10 * always.profit_usd  # the figure: +$299 (+10.7 %)
    assert pol.gain_spikes_usd == 0.0
    uncapped = summary(february)[0]
    assert uncapped.gain_low_hashprice_usd == pytest.approx(gain, rel=0.05)


def test_spikes_as_the_top_percent_of_prices(february: Outcome) -> None:
    spikes, flags = spikes_of(february, SpikeRule(top_pct=0.5))
    assert spikes.rows == sum(flags) == 41  # 0.5 % of 8,064 rows, rounded up
    assert spikes.rule.startswith("top 0.5 % of power prices (>= ")
    pol = summary(february, SpikeRule(top_pct=0.5))[0]
    assert pol.gain_spikes_usd < summary(february)[0].gain_spikes_usd


def test_the_split_is_in_the_csv_the_html_and_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    market = tmp_path / "m.csv"
    market.write_text("\n".join(SAMPLE_MARKET.read_text().splitlines()[:1400]) + "\n")
    argv = ["--market", str(market), "--fleet", str(SAMPLE_FLEET), "--policy", "breakeven"]
    argv += ["--out", str(tmp_path / "out"), "--quiet", "--spike-price", "0.1"]
    shown = io.StringIO()
    assert cli.main(argv, out=shown) == 0
    text = shown.getvalue()
    assert "gain against always-on, by source (spikes: power >= 0.1 USD/kWh: " in text
    with (tmp_path / "out" / "summary.csv").open() as fh:
        rows = {r["strategy"]: r for r in csv.DictReader(fh)}
    pol = rows["policy"]
    total = (
        float(pol["gain_from_spikes_usd"])
        + float(pol["gain_from_low_hashprice_usd"])
        - float(pol["cost_of_changes_usd"])
    )
    assert total == pytest.approx(float(pol["profit_vs_always_on_usd"]), abs=0.02)
    assert float(pol["gain_from_spikes_usd"]) > 0  # a spike on Feb 5
    split = text.split("by source")[1]
    line = next(ln for ln in split.splitlines() if ln.strip().startswith("policy"))
    assert line.split()[2] == f"{float(pol['gain_from_spikes_usd']):+,.2f}"
    page = (tmp_path / "out" / "report.html").read_text()
    assert "from the price spikes (power &gt;= 0.1 USD/kWh: " in page
    assert "cost of changes" in page
    with (tmp_path / "out" / "series.csv").open() as fh:
        series = list(csv.DictReader(fh))
    assert sum(int(r["power_spike"]) for r in series) > 0
    assert sum(float(r["policy_change_cost_usd"]) for r in series) == pytest.approx(
        float(pol["cost_of_changes_usd"]), abs=0.01
    )


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--spike-top", "0"], "--spike-top: 0 is not a percentage 0..100"),
        (["--spike-top", "150"], "--spike-top: 150 is not a percentage"),
        (["--spike-price", "nan"], "--spike-price: nan is not a number"),
    ],
)
def test_bad_spike_rules_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: list[str], message: str
) -> None:
    argv = ["--market", str(SAMPLE_MARKET), "--fleet", str(SAMPLE_FLEET), "--policy"]
    argv += ["breakeven", "--out", str(tmp_path), *flag]
    assert cli.main(argv, out=io.StringIO()) == 2
    assert message in capsys.readouterr().err


def test_write_report_takes_the_spike_rule(tmp_path: Path, february: Outcome) -> None:
    write_report(february, tmp_path, "t", rule=SpikeRule(price_usd_per_kwh=100.0))
    with (tmp_path / "summary.csv").open() as fh:
        rows = {r["strategy"]: r for r in csv.DictReader(fh)}
    assert rows["policy"]["gain_from_spikes_usd"] == "0.0"
    assert rows["always-on"]["cost_of_changes_usd"] == "0.0"


# ---------------------------------------------------------------------------------------------
# honest sweeps


def test_a_sweep_flags_inert_and_identical_runs_with_the_reason(tmp_path: Path) -> None:
    market = tmp_path / "m.csv"
    market.write_text("\n".join(SAMPLE_MARKET.read_text().splitlines()[:150]) + "\n")
    argv = ["--market", str(market), "--fleet", str(SAMPLE_FLEET), "--policy", "breakeven"]
    argv += ["--out", str(tmp_path / "out"), "--quiet", "--jobs", "1"]
    argv += ["--sweep", "policy=breakeven,power-cap,breakeven+power-cap"]
    shown = io.StringIO()
    assert cli.main(argv, out=shown) == 0
    with (tmp_path / "out" / "sweep.csv").open() as fh:
        flags = [r["flag"] for r in csv.DictReader(fh)]
    no_cap = "power-cap: no power cap configured ([control] power_cap_kw)"
    assert flags == [
        "",
        f"inert: the policy never acted, the run equals always-on ({no_cap})",
        f"identical to run-01 ({no_cap})",
    ]
    text = shown.getvalue()
    assert f"[identical to run-01 ({no_cap})]" in text
    assert f"note: inert: the policy never acted, the run equals always-on ({no_cap})" in text


def test_a_sweep_with_a_cap_flags_nothing(tmp_path: Path) -> None:
    market = tmp_path / "m.csv"
    market.write_text("\n".join(SAMPLE_MARKET.read_text().splitlines()[:150]) + "\n")
    config = tmp_path / "rigpilot.toml"
    config.write_text("[control]\npower_cap_kw = 150\n")
    argv = ["--market", str(market), "--fleet", str(SAMPLE_FLEET), "--policy", "breakeven"]
    argv += ["--out", str(tmp_path / "out"), "--quiet", "--jobs", "1", "--config", str(config)]
    argv += ["--sweep", "policy=breakeven,power-cap"]
    assert cli.main(argv, out=io.StringIO()) == 0
    with (tmp_path / "out" / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["flag"] for r in rows] == ["", ""]
    with (tmp_path / "out" / "run-02" / "summary.csv").open() as fh:
        pol = next(csv.DictReader(fh))
    assert rows[1]["cost_of_changes_usd"] == pol["cost_of_changes_usd"]


# ---------------------------------------------------------------------------------------------
# docs that cannot drift


def test_the_docs_sample_block_is_what_the_code_prints() -> None:
    from scripts.backtest_docs import BEGIN, DOC, block, replaced

    doc = DOC.read_text(encoding="utf-8")
    fresh = block()
    assert "policy " in fresh and "gain against always-on, by source" in fresh
    assert replaced(doc, fresh) == doc, "docs/backtest.md drifted: run make backtest-docs"
    drifted = doc.replace(BEGIN + "\n```\n", BEGIN + "\n```\nstale figures\n", 1)
    assert replaced(drifted, fresh) == doc  # the script puts a drifted block right


# ---------------------------------------------------------------------------------------------
# charts made to be read (their data checked against series.csv, in plain Python)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def _series(path: Path) -> dict[str, list[float]]:
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows] for k in rows[0] if k != "time"}


def _svg_texts(svg: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


def test_every_chart_draws_the_csv_with_title_dates_units_and_legend(
    tmp_path: Path, february: Outcome
) -> None:
    write_report(february, tmp_path, "t")
    series = _series(tmp_path / "series.csv")
    specs = charts(february)
    assert [s.stem + ".png" for s in specs] == list(PNGS)
    for spec in specs:
        assert "2026-02-01 to 2026-03-01 (UTC)" in spec.title
        assert len(spec.times) == len(spec.lines[0].values) <= MAX_POINTS
        for line in spec.lines:
            assert line.values == downsample(series[line.column]), line.column
        # the PNG carries the title; the page's SVG has it, the axes' labels, the legend
        title = next(
            body
            for kind, body in _png_chunks((tmp_path / f"{spec.stem}.png").read_bytes())
            if kind == b"tEXt" and body.startswith(b"Title\x00")
        )
        assert title == b"Title\x00" + spec.title.encode()
    page = (tmp_path / "report.html").read_text()
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 3
    for spec, svg in zip(specs, svgs, strict=True):
        texts = _svg_texts(svg)
        assert spec.title in texts
        assert "date (UTC)" in texts and spec.y_label in texts
        assert {line.label for line in spec.lines} <= set(texts)
        assert "Feb" in texts and "09" in texts  # dated ticks, not only the first and last
        assert not [t for t in texts if re.fullmatch(r"[-\u2212]0(\.0*)?", t)]  # no "-0"


def test_the_hashprice_chart_keeps_the_slide_visible(february: Outcome) -> None:
    spec = charts(february)[0]
    hp = spec.lines[0].values
    assert spec.y_top is not None and max(hp) < spec.y_top < 60  # not ~1,400
    assert spec.y_bottom == 0.0  # negative break-even (negative prices) marked at the bottom
    for line in spec.lines[1:]:
        above = [i for i, v in enumerate(line.values) if v > spec.y_top]
        below = [i for i, v in enumerate(line.values) if v < 0]
        assert spec.clipped.get(line.column, []) == above
        assert spec.clipped_below.get(line.column, []) == below
    assert sum(len(v) for v in spec.clipped.values()) > 0
    assert any("drawn as triangles at the top edge" in n for n in spec.notes)
    # the slide: the drawn hashprice goes from about 44 to about 27
    assert hp[0] > 43 and hp[-1] < 28


def test_identical_lines_are_called_out(tmp_path: Path) -> None:
    # Power always cheap: nothing ever sleeps, so the policy and the threshold are always-on.
    rows = tuple(MarketRow(T0 + 300 * i, 40.0, 0.03) for i in range(40))
    outcome = _run(Market("cheap", 300, rows), Fleet("f", (RigGroup(MODELS["s21"], 2),)))
    for spec in charts(outcome)[1:]:
        assert spec.notes == [
            "policy = always-on = threshold on this run (the same line; always-on, threshold "
            "dashed)"
        ]
        assert [line.dashed for line in spec.lines] == [False, True, True]
    # ... and where only two are equal, only those two are named.
    spiky = tuple(MarketRow(T0 + 300 * i, 40.0, 2.0 if i == 5 else 0.03) for i in range(40))
    outcome = _run(Market("spike", 300, spiky), Fleet("f", (RigGroup(MODELS["s21"], 2),)))
    assert charts(outcome)[1].notes == []  # all three differ
    write_report(outcome, tmp_path, "t")
    assert "on this run (the same line" not in (tmp_path / "report.html").read_text()


def test_tick_labels_never_read_minus_zero() -> None:
    assert [tick_label(v) for v in (-0.0, -1e-12, 0.0)] == ["0", "0", "0"]
    assert tick_label(2500.0) == "2,500"
    assert tick_label(-12.5) == "-12.5"
    assert tick_label(1_250_000.0) == "1.25M"


def test_the_summary_tables_fit_a_1280_px_page(february: Outcome, tmp_path: Path) -> None:
    # Without a browser: each table's widest cell per column at 13 px sans-serif (at most
    # 8 px a character) plus padding and borders, within the page's 960 px body.
    write_report(february, tmp_path, "t")
    page = (tmp_path / "report.html").read_text()
    assert "max-width:960px" in page
    for table in re.findall(r"<table>.*?</table>", page, re.S):
        cells = [
            [
                max(len(html.unescape(p)) for p in re.split(r"<br>", c))
                for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", row)
            ]
            for row in re.findall(r"<tr>(.*?)</tr>", table)
        ]
        widths = [max(col) for col in zip(*cells, strict=True)]
        assert sum(8 * w + 14 for w in widths) <= 960, widths


def test_a_single_inert_run_says_why(tmp_path: Path) -> None:
    market = tmp_path / "m.csv"
    market.write_text("\n".join(SAMPLE_MARKET.read_text().splitlines()[:60]) + "\n")
    argv = ["--market", str(market), "--fleet", str(SAMPLE_FLEET), "--policy", "schedule"]
    shown = io.StringIO()
    assert cli.main([*argv, "--out", str(tmp_path / "out"), "--quiet"], out=shown) == 0
    assert (
        "note: inert: the policy never acted, the run equals always-on (schedule: no schedule "
        "windows configured (policy_params.schedule))"
    ) in shown.getvalue()
