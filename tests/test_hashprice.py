"""Hashprice: the formula (policies.hashprice) and the sources (market.hashprice), the
sources against a real local HTTP server serving recorded and hostile payloads."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from feedserver import FeedServer, Reply
from hypothesis import given
from hypothesis import strategies as st

from market.fetch import FeedError
from market.hashprice import (
    MEMPOOL_PATHS,
    BraiinsInsights,
    FixedHashprice,
    LuxorHashprice,
    MempoolHashprice,
    PushedHashprice,
    check_hashprice,
)
from policies.hashprice import (
    block_subsidy_btc,
    block_subsidy_sats,
    blocks_per_th_day,
    btc_per_th_day,
    hashprice_usd_per_ph_day,
    hashprice_usd_per_th_day,
)
from policies.values import Quote, QuoteKind

REPO = Path(__file__).resolve().parents[1]
FEEDS = REPO / "tests" / "fixtures" / "feeds"
OUR_FEEDS = Path(__file__).resolve().parent / "data" / "feeds"

FEB_DIFFICULTY = 125.86e12
FEB_BTC_USD = 69_500.0
FEB_FEES = 0.02
FEB_SUBSIDY = 3.125
FEB_NOW = 1_770_552_000.0 + 60  # a minute after the Feb 2026 fixtures' price time
FEB_PRICE_TIME = 1_770_552_000.0


# --- the formula ------------------------------------------------------------------------------


def test_feb_2026_worked_example_is_34_9_usd_per_ph_day() -> None:
    value = hashprice_usd_per_ph_day(FEB_DIFFICULTY, FEB_BTC_USD, FEB_SUBSIDY, FEB_FEES)
    assert value == pytest.approx(34.9, abs=0.05)
    per_th = hashprice_usd_per_th_day(FEB_DIFFICULTY, FEB_BTC_USD, FEB_SUBSIDY, FEB_FEES)
    assert per_th == pytest.approx(0.0349, abs=0.00005)


def test_blocks_and_btc_per_th_day() -> None:
    blocks = blocks_per_th_day(FEB_DIFFICULTY)
    assert blocks == pytest.approx(1e12 * 86_400 / (FEB_DIFFICULTY * 2**32))
    assert btc_per_th_day(FEB_DIFFICULTY, 3.125, 0.02) == pytest.approx(blocks * 3.145)


# economics.md: model, J/TH, break-even $/kWh at $0.0349/TH/day (no pool fee, overhead 1).
BREAK_EVEN_TABLE = [
    ("Antminer S19j Pro", 29.5, 0.049),
    ("Antminer S19 XP", 21.5, 0.068),
    ("Antminer S21", 17.5, 0.083),
    ("Antminer S21 Pro", 15.0, 0.097),
    ("Antminer S21 XP", 13.5, 0.108),
    ("Whatsminer M30S", 38.0, 0.038),
    ("Whatsminer M50S", 26.0, 0.056),
    ("Whatsminer M60S", 18.4, 0.079),
]


@pytest.mark.parametrize(("model", "j_per_th", "break_even"), BREAK_EVEN_TABLE)
def test_break_even_table_is_consistent_with_the_formula(
    model: str, j_per_th: float, break_even: float
) -> None:
    revenue_per_th_day = hashprice_usd_per_th_day(
        FEB_DIFFICULTY, FEB_BTC_USD, FEB_SUBSIDY, FEB_FEES
    )
    kwh_per_th_day = 0.024 * j_per_th  # J/TH = W per TH/s; × 24 h / 1000
    assert revenue_per_th_day / kwh_per_th_day == pytest.approx(break_even, abs=0.0006), model
    # Just above break-even the rig costs more than it earns; just below, it pays.
    assert kwh_per_th_day * (break_even + 0.001) > revenue_per_th_day
    assert kwh_per_th_day * (break_even - 0.001) < revenue_per_th_day


def test_s19j_pro_breaks_even_at_0_049_per_kwh() -> None:
    hashprice_per_th = 0.0349
    th_s, j_per_th = 104, 29.5
    revenue = hashprice_per_th * th_s
    cost_at = 0.024 * j_per_th * th_s  # $/day per $/kWh
    assert revenue / cost_at == pytest.approx(0.049, abs=0.0005)


@pytest.mark.parametrize(
    ("height", "btc"),
    [
        (0, 50.0),
        (209_999, 50.0),
        (210_000, 25.0),
        (420_000, 12.5),
        (630_000, 6.25),
        (839_999, 6.25),
        (840_000, 3.125),
        (936_144, 3.125),
        (1_049_999, 3.125),
        (1_050_000, 1.5625),
        (64 * 210_000, 0.0),
        (10**9, 0.0),
    ],
)
def test_block_subsidy(height: int, btc: float) -> None:
    assert block_subsidy_btc(height) == btc
    assert block_subsidy_sats(height) == round(btc * 100_000_000)


@pytest.mark.parametrize("height", [-1, 1.5, True, "840000"])
def test_block_subsidy_refuses_bad_heights(height: Any) -> None:
    with pytest.raises(ValueError, match="height"):
        block_subsidy_btc(height)


GOOD_ARGS = {
    "difficulty": FEB_DIFFICULTY,
    "btc_usd": FEB_BTC_USD,
    "subsidy_btc": FEB_SUBSIDY,
    "fees_btc_per_block": FEB_FEES,
}


@pytest.mark.parametrize(
    ("arg", "bad"),
    [
        ("difficulty", 0.0),
        ("difficulty", -1.0),
        ("difficulty", math.nan),
        ("difficulty", math.inf),
        ("btc_usd", 0.0),
        ("btc_usd", -1.0),
        ("btc_usd", math.nan),
        ("btc_usd", -math.inf),
        ("fees_btc_per_block", -0.01),
        ("fees_btc_per_block", math.nan),
        ("fees_btc_per_block", math.inf),
        ("subsidy_btc", -1.0),
        ("subsidy_btc", math.nan),
        ("btc_usd", "69500"),
        ("difficulty", True),
    ],
)
def test_formula_refuses_bad_inputs_naming_the_argument(arg: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=arg):
        hashprice_usd_per_ph_day(**{**GOOD_ARGS, arg: bad})


def test_zero_fees_are_allowed() -> None:
    assert hashprice_usd_per_ph_day(FEB_DIFFICULTY, FEB_BTC_USD, FEB_SUBSIDY, 0.0) > 0


difficulties = st.floats(min_value=1e12, max_value=1e16)
prices = st.floats(min_value=1_000, max_value=10_000_000)
fees = st.floats(min_value=0, max_value=50)
subsidies = st.sampled_from([50.0, 25.0, 12.5, 6.25, 3.125, 1.5625])


@given(difficulties, prices, prices, subsidies, fees)
def test_hashprice_is_monotonic_in_price(
    difficulty: float, p1: float, p2: float, subsidy: float, fee: float
) -> None:
    low, high = sorted((p1, p2))
    assert hashprice_usd_per_ph_day(difficulty, low, subsidy, fee) <= hashprice_usd_per_ph_day(
        difficulty, high, subsidy, fee
    )


@given(difficulties, prices, subsidies, fees, fees)
def test_hashprice_is_monotonic_in_fees(
    difficulty: float, price: float, subsidy: float, f1: float, f2: float
) -> None:
    low, high = sorted((f1, f2))
    assert hashprice_usd_per_ph_day(difficulty, price, subsidy, low) <= hashprice_usd_per_ph_day(
        difficulty, price, subsidy, high
    )


@given(difficulties, difficulties, prices, subsidies, fees)
def test_hashprice_falls_as_difficulty_rises(
    d1: float, d2: float, price: float, subsidy: float, fee: float
) -> None:
    low, high = sorted((d1, d2))
    assert hashprice_usd_per_ph_day(low, price, subsidy, fee) >= hashprice_usd_per_ph_day(
        high, price, subsidy, fee
    )


@given(difficulties, prices, subsidies, fees, st.floats(min_value=0.01, max_value=100))
def test_hashprice_is_proportional_to_price_and_inverse_to_difficulty(
    difficulty: float, price: float, subsidy: float, fee: float, k: float
) -> None:
    base = hashprice_usd_per_ph_day(difficulty, price, subsidy, fee)
    assert hashprice_usd_per_ph_day(difficulty, price * k, subsidy, fee) == pytest.approx(
        base * k, rel=1e-9
    )
    assert hashprice_usd_per_ph_day(difficulty * k, price, subsidy, fee) == pytest.approx(
        base / k, rel=1e-9
    )


@pytest.fixture
def server() -> Iterator[FeedServer]:
    srv = FeedServer()
    srv.thread.start()
    yield srv
    srv.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


def file_reply(path: Path, content_type: str = "application/json") -> Reply:
    return Reply(path.read_bytes(), content_type=content_type)


def json_reply(obj: Any) -> Reply:
    return Reply(json.dumps(obj).encode())


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def serve_recorded_mempool(srv: FeedServer) -> None:
    srv.routes[MEMPOOL_PATHS.hashrate] = file_reply(FEEDS / "mempool_mining_hashrate_3d.json")
    srv.routes[MEMPOOL_PATHS.reward_stats] = file_reply(FEEDS / "mempool_reward_stats_144.json")
    srv.routes[MEMPOOL_PATHS.prices] = file_reply(FEEDS / "mempool_prices.json")
    srv.routes[MEMPOOL_PATHS.tip_height] = Reply(b"736655", content_type="text/plain")


FEB_FILES = {
    MEMPOOL_PATHS.hashrate: "hashprice_mempool_feb2026_hashrate_3d.json",
    MEMPOOL_PATHS.reward_stats: "hashprice_mempool_feb2026_reward_stats_144.json",
    MEMPOOL_PATHS.prices: "hashprice_mempool_feb2026_prices.json",
}


def serve_feb_mempool(srv: FeedServer) -> None:
    for path, name in FEB_FILES.items():
        srv.routes[path] = file_reply(OUR_FEEDS / name)
    srv.routes[MEMPOOL_PATHS.tip_height] = file_reply(
        OUR_FEEDS / "hashprice_mempool_feb2026_tip_height.txt", "text/plain"
    )


def feb_payload(path: str) -> Any:
    return load(OUR_FEEDS / FEB_FILES[path])


def mempool(
    srv: FeedServer, c: httpx.AsyncClient, timeout_s: float = 10.0, **kw: Any
) -> MempoolHashprice:
    """A mempool source on the test server; the timeout is a bound a loaded machine never
    reaches, except where a test sets a short one to see it expire."""
    return MempoolHashprice(srv.url, client=c, attempts=1, timeout_s=timeout_s, **kw)


# --- mempool ----------------------------------------------------------------------------------


async def test_mempool_feb_2026_gives_34_9(server: FeedServer, client: httpx.AsyncClient) -> None:
    serve_feb_mempool(server)
    quote = await mempool(server, client, ttl_s=900).fetch(FEB_NOW)
    assert isinstance(quote, Quote)
    assert quote.kind is QuoteKind.HASHPRICE
    assert quote.unit == "USD/PH/day"
    assert quote.value == pytest.approx(34.9, abs=0.05)
    assert quote.source == "mempool"
    assert quote.observed_at == FEB_PRICE_TIME
    assert quote.ttl_s == 900
    assert quote.detail == (
        "difficulty 125.86 T, fees 0.0200 BTC/block (144 blocks), BTC $69,500, "
        "subsidy 3.125 (height 936,144)"
    )
    assert {s.path for s in server.seen} == set(FEB_FILES) | {MEMPOOL_PATHS.tip_height}


async def test_mempool_recorded_payloads_count_blocks_from_the_range(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    serve_recorded_mempool(server)
    quote = await mempool(server, client).fetch(1_703_252_500.0)
    # 100 blocks (736556..736655), not 144: 0.1312 BTC/block mean fees.
    expected = hashprice_usd_per_ph_day(31251101365711.12, 43753, 6.25, 1311748254 / 100 / 1e8)
    assert quote.value == pytest.approx(expected)
    assert "(100 blocks)" in quote.detail
    assert "subsidy 6.25" in quote.detail
    assert quote.observed_at == 1703252411


async def test_mempool_base_url_may_have_a_prefix_and_trailing_slash(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    serve_feb_mempool(server)
    server.routes = {"/mempool" + path: reply for path, reply in server.routes.items()}
    source = MempoolHashprice(server.url + "/mempool/", client=client, attempts=1)
    assert (await source.fetch(FEB_NOW)).value == pytest.approx(34.9, abs=0.05)


async def test_mempool_difficulty_falls_back_to_the_series(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    serve_feb_mempool(server)
    payload = feb_payload(MEMPOOL_PATHS.hashrate)
    del payload["currentDifficulty"]
    server.routes[MEMPOOL_PATHS.hashrate] = json_reply(payload)
    assert (await mempool(server, client).fetch(FEB_NOW)).value == pytest.approx(34.9, abs=0.05)


def with_field(path: str, key: str, value: Any) -> Reply:
    payload = feb_payload(path)
    payload[key] = value
    return json_reply(payload)


def without_field(path: str, key: str) -> Reply:
    payload = feb_payload(path)
    del payload[key]
    return json_reply(payload)


def raw(body: str, content_type: str = "application/json", status: int = 200) -> Reply:
    return Reply(body.encode(), status, content_type)


PRICES, REWARDS, HASHRATE, TIP = (
    MEMPOOL_PATHS.prices,
    MEMPOOL_PATHS.reward_stats,
    MEMPOOL_PATHS.hashrate,
    MEMPOOL_PATHS.tip_height,
)
HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"

MEMPOOL_HOSTILE: list[tuple[str, str, Reply, str]] = [
    # (case, path, reply, message regex)
    ("html 502", PRICES, raw(HTML_502, "text/html", 502), r"/api/v1/prices: HTTP 502 .*HTML"),
    ("html 200", HASHRATE, raw(HTML_502, "text/html"), r"hashrate/3d: not JSON"),
    ("html tip", TIP, raw(HTML_502, "text/html"), r"tip height is not an integer: an HTML page"),
    ("garbage", PRICES, Reply(b"\x00\xff\xfegarbage"), r"not JSON"),
    ("garbage tip", TIP, raw("12ab", "text/plain"), r"tip height is not an integer: '12ab'"),
    ("negative tip", TIP, raw("-5", "text/plain"), r"tip height is not an integer"),
    ("huge tip", TIP, raw("99999999999", "text/plain"), r"implausible block height"),
    ("not object", PRICES, raw("[69500]"), r"not a JSON object"),
    ("missing USD", PRICES, without_field(PRICES, "USD"), r"field USD missing"),
    ("missing time", PRICES, without_field(PRICES, "time"), r"field time missing"),
    ("missing fee", REWARDS, without_field(REWARDS, "totalFee"), r"field totalFee missing"),
    ("missing end", REWARDS, without_field(REWARDS, "endBlock"), r"field endBlock missing"),
    ("price -1", PRICES, with_field(PRICES, "USD", -1), r"USD is not positive: -1"),
    ("price 0", PRICES, with_field(PRICES, "USD", 0), r"USD is not positive"),
    ("price NaN", PRICES, raw('{"time":1770552000,"USD":NaN}'), r"USD is not finite"),
    ("price 'NaN'", PRICES, with_field(PRICES, "USD", "NaN"), r"USD is not finite"),
    ("price inf", PRICES, raw('{"time":1770552000,"USD":Infinity}'), r"USD is not finite"),
    ("price 1e400", PRICES, raw('{"time":1770552000,"USD":1e400}'), r"USD is not finite"),
    ("price 'inf'", PRICES, with_field(PRICES, "USD", "inf"), r"USD is not finite"),
    ("price text", PRICES, with_field(PRICES, "USD", "n/a"), r"USD is not a number"),
    ("price bool", PRICES, with_field(PRICES, "USD", True), r"USD is a boolean"),
    ("price null", PRICES, with_field(PRICES, "USD", None), r"USD is not a number"),
    ("price low", PRICES, with_field(PRICES, "USD", 10), r"implausible BTC price USD 10"),
    ("price high", PRICES, with_field(PRICES, "USD", 1e9), r"implausible BTC price"),
    ("price EUR", PRICES, with_field(PRICES, "currency", "EUR"), r"wrong unit: currency"),
    ("future price", PRICES, with_field(PRICES, "time", FEB_NOW + 3600), r"in the future"),
    ("fees -5", REWARDS, with_field(REWARDS, "totalFee", "-5"), r"negative fees"),
    ("fees NaN", REWARDS, with_field(REWARDS, "totalFee", "NaN"), r"totalFee is not finite"),
    ("fees absurd", REWARDS, with_field(REWARDS, "totalFee", "9e12"), r"implausible fees"),
    ("empty range", REWARDS, with_field(REWARDS, "endBlock", 936000), r"empty block range"),
    ("float height", REWARDS, with_field(REWARDS, "startBlock", 1.5), r"startBlock is not an int"),
    ("btc not sats", REWARDS, with_field(REWARDS, "totalReward", "452.88"), r"inconsistent"),
    ("fee > reward", REWARDS, with_field(REWARDS, "totalReward", "1"), r"inconsistent"),
    ("diff NaN", HASHRATE, with_field(HASHRATE, "currentDifficulty", "NaN"), r"not finite"),
    ("diff -1", HASHRATE, with_field(HASHRATE, "currentDifficulty", -1), r"not positive"),
    ("diff testnet", HASHRATE, with_field(HASHRATE, "currentDifficulty", 5e9), r"implausible diff"),
    ("diff huge", HASHRATE, with_field(HASHRATE, "currentDifficulty", 1e18), r"implausible diff"),
    (
        "empty series",
        HASHRATE,
        json_reply({"hashrates": [], "difficulty": [], "currentHashrate": 0}),
        r"difficulty series is empty",
    ),
    ("404", HASHRATE, raw("<html>404</html>", "text/html", 404), r"HTTP 404 with an HTML"),
]


@pytest.mark.parametrize(
    ("path", "reply", "message"),
    [case[1:] for case in MEMPOOL_HOSTILE],
    ids=[case[0] for case in MEMPOOL_HOSTILE],
)
async def test_mempool_hostile_replies_raise_feed_error(
    server: FeedServer, client: httpx.AsyncClient, path: str, reply: Reply, message: str
) -> None:
    serve_feb_mempool(server)
    server.routes[path] = reply
    with pytest.raises(FeedError, match=message) as err:
        await mempool(server, client).fetch(FEB_NOW)
    assert err.value.source == "mempool"


async def test_mempool_implausible_computed_hashprice(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    serve_feb_mempool(server)
    server.routes[HASHRATE] = with_field(HASHRATE, "currentDifficulty", 1.0e12)
    server.routes[PRICES] = with_field(PRICES, "USD", 5_000_000)
    with pytest.raises(FeedError, match=r"implausible computed hashprice USD/PH/day"):
        await mempool(server, client).fetch(FEB_NOW)


async def test_mempool_429_retry_after_holds_off(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    serve_feb_mempool(server)
    server.routes[REWARDS] = Reply(b"slow down", 429, "text/plain", {"Retry-After": "120"})
    source = mempool(server, client)
    with pytest.raises(FeedError, match=r"reward-stats/144: rate limited \(HTTP 429\)") as err:
        await source.fetch(FEB_NOW)
    assert err.value.retry_after_s == 120
    assert "retry after 120 s" in str(err.value)
    # Counted where requests leave the client: a request of the first fetch that was written
    # before the 429 cancelled it can still reach the server's log afterwards.
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(request.url.path)

    client.event_hooks["request"].append(count)
    with pytest.raises(FeedError, match=r"holding off"):
        await source.fetch(FEB_NOW)
    assert sent == []  # nothing sent while holding off
    client.event_hooks["request"].remove(count)


async def test_mempool_timeout(server: FeedServer, client: httpx.AsyncClient) -> None:
    serve_feb_mempool(server)
    server.routes[TIP] = Reply(b"936144", content_type="text/plain", delay_s=10)
    with pytest.raises(FeedError, match=r"tip/height: no answer within 1 s"):
        await mempool(server, client, timeout_s=1.0).fetch(FEB_NOW)


async def test_mempool_retries_a_502_then_succeeds(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    serve_feb_mempool(server)
    good = file_reply(OUR_FEEDS / FEB_FILES[PRICES])
    server.routes[PRICES] = [raw(HTML_502, "text/html", 502), good]
    source = MempoolHashprice(server.url, client=client, attempts=2, timeout_s=1.0)
    assert (await source.fetch(FEB_NOW)).value == pytest.approx(34.9, abs=0.05)
    assert server.requests_to(PRICES) == 2


async def test_mempool_connection_refused(client: httpx.AsyncClient) -> None:
    srv = FeedServer()
    url = srv.url
    srv.httpd.server_close()  # bound once, now closed: nothing listens there
    source = MempoolHashprice(url, client=client, attempts=1, timeout_s=1.0)
    with pytest.raises(FeedError, match=r"ConnectError"):
        await source.fetch(FEB_NOW)


# --- Braiins Insights -------------------------------------------------------------------------


def braiins(srv: FeedServer, c: httpx.AsyncClient, timeout_s: float = 10.0) -> BraiinsInsights:
    return BraiinsInsights(srv.url, client=c, attempts=1, timeout_s=timeout_s)


BRAIINS = "/v1.0/hashrate-stats"


async def test_braiins_recorded_payload(server: FeedServer, client: httpx.AsyncClient) -> None:
    server.routes[BRAIINS] = file_reply(FEEDS / "braiins_insights_hashrate_stats.json")
    quote = await braiins(server, client).fetch(FEB_NOW)
    assert quote.value == pytest.approx(39.0)  # 0.039 USD/TH/day
    assert quote.unit == "USD/PH/day"
    assert quote.source == "braiins"
    assert quote.observed_at == FEB_NOW
    assert "hash_price 0.039 USD/TH/day" in quote.detail


async def test_braiins_feb_2026(server: FeedServer, client: httpx.AsyncClient) -> None:
    server.routes[BRAIINS] = file_reply(OUR_FEEDS / "hashprice_braiins_feb2026_hashrate_stats.json")
    assert (await braiins(server, client).fetch(FEB_NOW)).value == pytest.approx(34.9)


def braiins_with(key: str, value: Any) -> Reply:
    payload = load(FEEDS / "braiins_insights_hashrate_stats.json")
    payload[key] = value
    return json_reply(payload)


BRAIINS_HOSTILE: list[tuple[str, Reply, str]] = [
    ("html 502", raw(HTML_502, "text/html", 502), r"HTTP 502 with an HTML error page"),
    ("missing", json_reply({"current_hashrate": 1001.23}), r"field hash_price missing"),
    ("-1", braiins_with("hash_price", -1), r"hash_price is not positive"),
    ("NaN", braiins_with("hash_price", "NaN"), r"hash_price is not finite"),
    ("inf", raw('{"hash_price": Infinity}'), r"hash_price is not finite"),
    ("per PH", braiins_with("hash_price", 39.0), r"implausible .*per PH/s per day already"),
    ("tiny", braiins_with("hash_price", 1e-7), r"implausible hash_price × 1000"),
    ("unit", braiins_with("unit", "USD/PH/day"), r"wrong unit: unit is 'USD/PH/day'"),
    ("currency", braiins_with("currency", "BTC"), r"wrong unit: currency is 'BTC'"),
    ("empty", json_reply({}), r"field hash_price missing"),
    ("list", json_reply([]), r"not a JSON object"),
    ("fees NaN", braiins_with("avg_fees_per_block", "NaN"), r"avg_fees_per_block is not finite"),
]


@pytest.mark.parametrize(
    ("reply", "message"),
    [case[1:] for case in BRAIINS_HOSTILE],
    ids=[case[0] for case in BRAIINS_HOSTILE],
)
async def test_braiins_hostile_replies_raise_feed_error(
    server: FeedServer, client: httpx.AsyncClient, reply: Reply, message: str
) -> None:
    server.routes[BRAIINS] = reply
    with pytest.raises(FeedError, match=message):
        await braiins(server, client).fetch(FEB_NOW)


async def test_braiins_429_and_timeout(server: FeedServer, client: httpx.AsyncClient) -> None:
    server.routes[BRAIINS] = Reply(b"{}", 429, headers={"Retry-After": "30"})
    with pytest.raises(FeedError, match=r"rate limited \(HTTP 429\), retry after 30 s"):
        await braiins(server, client).fetch(FEB_NOW)
    server.routes[BRAIINS] = Reply(b'{"hash_price": 0.0349}', delay_s=10)
    with pytest.raises(FeedError, match=r"no answer within 1 s"):
        await braiins(server, client, timeout_s=1.0).fetch(FEB_NOW)


# --- Luxor Hashrate Index ---------------------------------------------------------------------

LUXOR = "/hashprice/current"
KEY = "hi-test-key-123"


def luxor(srv: FeedServer, c: httpx.AsyncClient) -> LuxorHashprice:
    return LuxorHashprice(
        srv.url, api_key=KEY, client=c, attempts=1, timeout_s=1.0, min_interval_s=0
    )


async def test_luxor_feb_2026(server: FeedServer, client: httpx.AsyncClient) -> None:
    server.routes[LUXOR] = file_reply(OUR_FEEDS / "hashprice_luxor_feb2026_current.json")
    quote = await luxor(server, client).fetch(FEB_NOW)
    assert quote.value == pytest.approx(34.94)
    assert quote.source == "luxor"
    assert quote.observed_at == FEB_PRICE_TIME  # 2026-02-08T12:00:00Z
    assert "BTC $69,5" in quote.detail
    (seen,) = server.seen
    assert seen.query == {"hashunit": "PHS"}
    assert seen.headers.get("X-Hi-Api-Key") == KEY


async def test_luxor_recorded_placeholder_is_refused(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    # The documented example's 0.1 is a placeholder: per PH/s it is not a market value.
    server.routes[LUXOR] = file_reply(FEEDS / "luxor_hashprice_current.json")
    with pytest.raises(FeedError, match=r"implausible priceUSD .*per TH/s"):
        await luxor(server, client).fetch(FEB_NOW)


async def test_luxor_old_timestamp_is_kept_and_stale(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    payload = load(OUR_FEEDS / "hashprice_luxor_feb2026_current.json")
    payload["data"]["timestamp"] = "2019-08-24T14:15:22Z"
    server.routes[LUXOR] = json_reply(payload)
    quote = await luxor(server, client).fetch(FEB_NOW)
    assert quote.observed_at == 1566656122
    assert quote.stale(FEB_NOW)


def luxor_data(**changes: Any) -> Reply:
    payload = load(OUR_FEEDS / "hashprice_luxor_feb2026_current.json")
    for key, value in changes.items():
        if value is None:
            del payload["data"][key]
        else:
            payload["data"][key] = value
    return json_reply(payload)


LUXOR_HOSTILE: list[tuple[str, Reply, str]] = [
    (
        "per TH",
        file_reply(OUR_FEEDS / "hashprice_luxor_feb2026_current_per_th.json"),
        r"implausible priceUSD USD/PH/day 0.03494 .*per TH/s",
    ),
    ("-1", luxor_data(priceUSD=-1), r"priceUSD is not positive"),
    ("NaN", luxor_data(priceUSD="NaN"), r"priceUSD is not finite"),
    ("inf", raw('{"data":{"priceUSD":Infinity,"timestamp":1770552000}}'), r"not finite"),
    ("huge", luxor_data(priceUSD=34940), r"implausible priceUSD .*1,000× too high"),
    ("no price", luxor_data(priceUSD=None), r"field priceUSD missing"),
    ("no time", luxor_data(timestamp=None), r"field timestamp missing"),
    ("bad time", luxor_data(timestamp="yesterday"), r"timestamp is not a time"),
    ("future", luxor_data(timestamp="2026-02-09T12:00:00Z"), r"timestamp is .* in the future"),
    ("units mix", luxor_data(priceBTC=0.5), r"priceUSD and priceBTC are not in the same unit"),
    ("btc -1", luxor_data(priceBTC=-1), r"priceBTC is not positive"),
    ("hashunit", luxor_data(hashunit="THS"), r"wrong unit: hashunit is 'THS'"),
    ("currency", luxor_data(currency="EUR"), r"wrong unit: currency is 'EUR'"),
    ("no data", json_reply({"error": "oops"}), r"field data missing"),
    ("empty data", json_reply({"data": {}}), r"empty data"),
    ("empty list", json_reply({"data": []}), r"empty data"),
    ("list data", json_reply({"data": [{"price": 34.9}]}), r"data is not a JSON object"),
    ("html 502", raw(HTML_502, "text/html", 502), r"HTTP 502 with an HTML error page"),
    ("401", raw('{"error":"bad key"}', status=401), r"HTTP 401: credentials refused"),
    ("garbage", Reply(b"\x89PNG\r\n"), r"not JSON"),
]


@pytest.mark.parametrize(
    ("reply", "message"),
    [case[1:] for case in LUXOR_HOSTILE],
    ids=[case[0] for case in LUXOR_HOSTILE],
)
async def test_luxor_hostile_replies_raise_feed_error(
    server: FeedServer, client: httpx.AsyncClient, reply: Reply, message: str
) -> None:
    server.routes[LUXOR] = reply
    with pytest.raises(FeedError, match=message):
        await luxor(server, client).fetch(FEB_NOW)


async def test_luxor_429_holds_off_and_rate_limits(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    server.routes[LUXOR] = Reply(b"{}", 429, headers={"Retry-After": "60"})
    source = luxor(server, client)
    with pytest.raises(FeedError, match=r"HTTP 429"):
        await source.fetch(FEB_NOW)
    with pytest.raises(FeedError, match=r"holding off"):
        await source.fetch(FEB_NOW)
    assert len(server.seen) == 1


async def test_luxor_key_is_secret(client: httpx.AsyncClient) -> None:
    source = LuxorHashprice(api_key=KEY, client=client)
    assert KEY not in repr(source)
    assert KEY not in repr(vars(source))
    with pytest.raises(ValueError, match="api_key"):
        LuxorHashprice(api_key=" ", client=client)


async def test_luxor_default_rate_limit_is_one_call_per_15_s(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    server.routes[LUXOR] = file_reply(OUR_FEEDS / "hashprice_luxor_feb2026_current.json")
    source = LuxorHashprice(server.url, api_key=KEY, client=client, attempts=1)
    await source.fetch(FEB_NOW)
    with pytest.raises(FeedError, match=r"at most one call per 15 s"):
        await source.fetch(FEB_NOW)


# --- fixed and pushed -------------------------------------------------------------------------


async def test_fixed_hashprice() -> None:
    source = FixedHashprice(40.0)
    quote = await source.fetch(FEB_NOW)
    assert (quote.value, quote.unit, quote.source, quote.observed_at) == (
        40.0,
        "USD/PH/day",
        "fixed",
        FEB_NOW,
    )
    assert not quote.stale(FEB_NOW + 10 * 365 * 86400)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, 0.0, 0.035, 5000.0])
def test_fixed_hashprice_refuses_implausible_values(bad: float) -> None:
    with pytest.raises(ValueError, match="fixed hashprice"):
        FixedHashprice(bad)


async def test_pushed_hashprice() -> None:
    source = PushedHashprice(name="mqtt", ttl_s=600)
    with pytest.raises(FeedError, match="no hashprice pushed yet"):
        await source.fetch(FEB_NOW)
    source.push(34.9, FEB_PRICE_TIME, "control-room")
    quote = await source.fetch(FEB_NOW)
    assert (quote.value, quote.observed_at, quote.ttl_s, quote.source) == (
        34.9,
        FEB_PRICE_TIME,
        600,
        "mqtt",
    )
    assert quote.detail == "pushed by control-room"
    assert quote.stale(FEB_PRICE_TIME + 601)


@pytest.mark.parametrize(
    ("value", "observed_at", "source", "unit", "message"),
    [
        (math.nan, FEB_PRICE_TIME, "x", "USD/PH/day", "not finite"),
        ("NaN", FEB_PRICE_TIME, "x", "USD/PH/day", "not finite"),
        (math.inf, FEB_PRICE_TIME, "x", "USD/PH/day", "not finite"),
        (-1.0, FEB_PRICE_TIME, "x", "USD/PH/day", "not positive"),
        (5000.0, FEB_PRICE_TIME, "x", "USD/PH/day", "implausible"),
        (0.0349, FEB_PRICE_TIME, "x", "USD/PH/day", "implausible .*per TH/s"),
        (34.9, FEB_PRICE_TIME, "x", "USD/TH/day", "wrong unit"),
        (34.9, math.nan, "x", "USD/PH/day", "observed_at is not finite"),
        (34.9, -5.0, "x", "USD/PH/day", "observed_at is not positive"),
        (34.9, FEB_PRICE_TIME, "", "USD/PH/day", "bad source name"),
    ],
)
async def test_pushed_hashprice_refuses_bad_pushes_and_keeps_the_last(
    value: Any, observed_at: float, source: str, unit: str, message: str
) -> None:
    pushed = PushedHashprice()
    pushed.push(34.9, FEB_PRICE_TIME, "good")
    with pytest.raises(FeedError, match=message):
        pushed.push(value, observed_at, source, unit)
    assert (await pushed.fetch(FEB_NOW)).detail == "pushed by good"


async def test_pushed_hashprice_from_the_future_is_refused() -> None:
    pushed = PushedHashprice()
    pushed.push(34.9, FEB_NOW + 3600, "clock-skewed")
    with pytest.raises(FeedError, match="in the future"):
        await pushed.fetch(FEB_NOW)


def test_check_hashprice_accepts_the_plausible_range() -> None:
    assert check_hashprice(1.0, "t") == 1.0
    assert check_hashprice("2000", "t") == 2000.0
    with pytest.raises(FeedError, match="implausible"):
        check_hashprice(2000.5, "t")
