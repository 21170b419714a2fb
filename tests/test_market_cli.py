"""``rigpilot market`` end to end: a config file, real local feeds, the JSON document."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from feedserver import FeedServer, Reply
from helpers import write_toml

from daemon.market_cli import main
from market.hashprice import MEMPOOL_PATHS

FEEDS = Path(__file__).resolve().parent / "data" / "feeds"


@pytest.fixture
def feeds() -> Iterator[FeedServer]:
    srv = FeedServer()
    srv.routes[MEMPOOL_PATHS.hashrate] = Reply(
        (FEEDS / "hashprice_mempool_feb2026_hashrate_3d.json").read_bytes()
    )
    srv.routes[MEMPOOL_PATHS.reward_stats] = Reply(
        (FEEDS / "hashprice_mempool_feb2026_reward_stats_144.json").read_bytes()
    )
    srv.routes[MEMPOOL_PATHS.prices] = Reply(
        (FEEDS / "hashprice_mempool_feb2026_prices.json").read_bytes()
    )
    srv.routes[MEMPOOL_PATHS.tip_height] = Reply(
        (FEEDS / "hashprice_mempool_feb2026_tip_height.txt").read_bytes(), content_type="text/plain"
    )
    srv.thread.start()
    yield srv
    srv.close()


def run_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["--config", str(path), "--json"]) == 0
    doc: dict[str, object] = json.loads(capsys.readouterr().out)
    return doc


def test_market_json_with_live_sources(
    feeds: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_toml(
        tmp_path,
        f"""
[market]
pool_fee = 0.0
[[market.hashprice]]
type = "mempool"
base_url = "{feeds.url}"
[[market.power]]
type = "fixed"
value_per_kwh = 0.05
""",
    )
    doc = run_json(config, capsys)
    # Feb 2026: the mempool fixtures hold a price from that time, so the quote is stale now,
    # and says so; its value is still the worked example's.
    assert doc["hashprice_usd_per_ph_day"] == pytest.approx(34.9, abs=0.05)
    assert doc["hashprice_source"] == "mempool"
    assert doc["hashprice_stale"] is True
    assert doc["power_price_usd_per_kwh"] == 0.05
    assert doc["power_price_source"] == "fixed-power"
    assert isinstance(doc["hashprice_age_s"], float)
    rows = doc["breakeven"]
    assert isinstance(rows, list)
    models = {(r["model"], r["mode"]) for r in rows}
    assert ("S19j Pro", "normal") in models and ("M60S", "low") in models
    # a stale hashprice drives nothing: no break-even is computed from it
    assert all(r["breakeven_power_price_usd_per_kwh"] is None for r in rows)


def test_market_falls_back_in_priority_order_and_names_the_failure(
    feeds: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feeds.routes[MEMPOOL_PATHS.prices] = Reply(b"<html>502 Bad Gateway</html>", 502, "text/html")
    config = write_toml(
        tmp_path,
        f"""
[market]
pool_fee = 0.0
[[market.hashprice]]
type = "mempool"
base_url = "{feeds.url}"
[[market.hashprice]]
type = "fixed"
value = 34.9
[[market.power]]
type = "tou"
tz = "America/Chicago"
default_per_kwh = 0.049
""",
    )
    doc = run_json(config, capsys)
    assert doc["hashprice_source"] == "fixed-hashprice"
    assert doc["hashprice_stale"] is False
    sources = {s["name"]: s for s in doc["sources"]}  # type: ignore[attr-defined]
    assert "HTTP 502" in sources["mempool"]["error"]
    rows = {(r["model"], r["mode"]): r for r in doc["breakeven"]}  # type: ignore[attr-defined]
    s19 = rows[("S19j Pro", "normal")]
    assert s19["breakeven_power_price_usd_per_kwh"] == pytest.approx(0.049, abs=0.001)
    assert abs(s19["margin_usd_per_day"]) < 0.2  # right at break-even


def test_market_config_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_toml(
        tmp_path,
        """
[[market.hashprice]]
type = "mempol"
""",
    )
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "market.hashprice[0]" in err and "'mempool'" in err
    config = write_toml(
        tmp_path,
        """
[market]
currency = "EUR"
usd_per_unit = 1.08
[[market.power]]
type = "awattar"
""",
    )
    # same currency: no fx needed, so no configuration error (exit 2); with no network here,
    # neither price can be had (exit 1)
    assert main(["--config", str(config)]) == 1
    config = write_toml(
        tmp_path,
        """
[[market.power]]
type = "awattar"
""",
    )
    assert main(["--config", str(config)]) == 2
    assert "market.power[0] (awattar)" in capsys.readouterr().err


def test_market_table_marks_stale_values(
    feeds: FeedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_toml(
        tmp_path,
        f"""
[[market.hashprice]]
type = "mempool"
base_url = "{feeds.url}"
""",
    )
    assert main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "STALE" in out
    assert "power price  unavailable: no source configured" in out
