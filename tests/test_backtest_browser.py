"""The backtest's HTML report as a browser lays it out: headless Chromium (Debian's
``chromium`` package) at 1,280 px. Skipped, saying why, where no Chromium is installed.

The page has no scripts of its own; the test loads a copy with a small measuring script
appended, and Chromium's ``--dump-dom`` hands back what it measured: where each table ends,
whether anything is wider than the window, and every chart's texts (title, axis labels,
legend, ticks), which are compared with series.csv.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backtest.engine import ReplayConfig, replay
from backtest.inputs import load_fleet, load_market
from backtest.report import write_report
from policies.registry import load_policy

REPO = Path(__file__).resolve().parents[1]
SAMPLE_MARKET = REPO / "examples" / "backtest" / "feb2026.csv"
SAMPLE_FLEET = REPO / "examples" / "backtest" / "fleet.toml"
WIDTH = 1280

MEASURE = """
<script>
const out = {width: innerWidth, scrollWidth: document.documentElement.scrollWidth,
  tables: [...document.querySelectorAll("table")].map(t => {
    const r = t.getBoundingClientRect();
    return {right: r.right, cells: t.querySelectorAll("td,th").length};
  }),
  charts: [...document.querySelectorAll("figure svg")].map(s => {
    const r = s.getBoundingClientRect();
    return {right: r.right, width: r.width,
            texts: [...s.querySelectorAll("text")].map(t => t.textContent)};
  })};
const pre = document.createElement("pre");
pre.id = "measured";
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>
"""


def _chromium() -> str | None:
    return next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        _chromium() is None,
        reason="headless Chromium not installed (Debian: apt-get install chromium); the chart "
        "data are checked against series.csv without a browser in tests/test_backtest_report.py",
    ),
]


def test_the_report_in_headless_chromium_at_1280_px(tmp_path: Path) -> None:
    market = load_market(SAMPLE_MARKET)
    config = ReplayConfig()
    outcome = replay(market, load_fleet(SAMPLE_FLEET), [load_policy("breakeven")], config)
    write_report(outcome, tmp_path, "rigpilot backtest: breakeven")
    page = (tmp_path / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", MEASURE + "</body>"))
    chromium = _chromium()
    assert chromium is not None
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--window-size={WIDTH},900",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r'<pre id="measured">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium printed no measurement: {done.stderr[-2000:]}"
    got = json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<"))
    assert got["width"] == WIDTH
    # nothing wider than the window: no table cut off, no horizontal scrolling
    assert got["scrollWidth"] <= WIDTH
    assert len(got["tables"]) == 2
    for table in got["tables"]:
        assert table["right"] <= WIDTH
    assert [t["cells"] for t in got["tables"]] == [4 * 9, 4 * 7]
    # every chart: its title with the dates, dated x ticks, units, a legend from series.csv
    with (tmp_path / "series.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    first = datetime.fromisoformat(rows[0]["time"].replace("Z", "+00:00"))
    span = f"{first:%Y-%m-%d} to {datetime.fromtimestamp(market.end, UTC):%Y-%m-%d} (UTC)"
    models = [c for c in rows[0] if c.startswith("breakeven_")]
    wanted = {
        0: ("USD per PH/s per day", ["hashprice"] + ["break-even"] * len(models)),
        1: ("kW (mean over each step)", ["policy", "always-on", "threshold"]),
        2: ("USD", ["policy", "always-on", "threshold"]),
    }
    assert len(got["charts"]) == 3
    for k, chart in enumerate(got["charts"]):
        texts = chart["texts"]
        assert chart["right"] <= WIDTH and chart["width"] > 600
        assert any(t.endswith(span) for t in texts), texts[:5]
        assert "date (UTC)" in texts
        unit, legend = wanted[k]
        assert unit in texts
        for label in legend:
            assert any(t.startswith(label) for t in texts), label
        days = [t for t in texts if re.fullmatch(r"\d\d", t)]
        assert len(days) >= 4  # ticks between the first and last date
        assert not [t for t in texts if re.fullmatch(r"[-\u2212]0(\.0*)?", t)]
