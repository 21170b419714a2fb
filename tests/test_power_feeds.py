"""Power price sources against a real local HTTP server: recorded payloads, variants, faults.

Every test injects ``now``; none reads the clock to decide which price applies.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.fetch import FeedError
from market.power import FixedPrice, PriceAdjust, PriceInterval, select_interval
from market.power_feeds import Awattar, Entsoe, ErcotSpp, OctopusAgile
from market.tou import (
    ALL_DAYS,
    TimeOfUse,
    TouSchedule,
    TouWindow,
    parse_days,
    price_at,
    window_at,
    windows_between,
)
from policies.values import QuoteKind

FEEDS = Path(__file__).resolve().parent / "fixtures" / "feeds"
DATA = Path(__file__).resolve().parent / "data" / "feeds"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def recorded(name: str) -> Any:
    return json.loads((FEEDS / name).read_text())


# ------------------------------------------------------------------------- the local server


@dataclass
class Reply:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def json_reply(payload: Any) -> Reply:
    return Reply(json.dumps(payload).encode())


def xml_reply(body: bytes | str) -> Reply:
    data = body.encode() if isinstance(body, str) else body
    return Reply(data, content_type="application/xml")


HTML_502 = Reply(
    b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>",
    status=502,
    content_type="text/html",
)


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class FeedServer:
    """Serves queued replies by path; the last reply queued for a path repeats."""

    def __init__(self) -> None:
        self.replies: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve(self, path: str, *replies: Reply) -> None:
        with self.lock:
            self.replies[path] = list(replies)

    def take(self, path: str, seen: Seen) -> Reply:
        with self.lock:
            self.seen.append(seen)
            queue = self.replies.get(path)
            if not queue:
                return Reply(b"not found", status=404, content_type="text/plain")
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                reply = server.take(url.path, Seen(url.path, query, dict(self.headers.items())))
                time.sleep(reply.delay_s)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> FeedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer() as srv:
        yield srv


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


# ------------------------------------------------------------------------- PriceAdjust, fixed


def test_adjust_formula_fx_then_multiplier_then_adder() -> None:
    adjust = PriceAdjust(multiplier=1.19, adder_per_kwh=0.08, fx_rate=1.08)
    assert adjust.apply(0.02898) == pytest.approx((0.02898 * 1.08) * 1.19 + 0.08)
    assert PriceAdjust().apply(-0.03) == -0.03


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"fx_rate": 0.0}, "fx_rate must be positive"),
        ({"multiplier": -1.0}, "multiplier must not be negative"),
        ({"adder_per_kwh": math.nan}, "adder_per_kwh must be finite"),
        ({"fx_rate": math.inf}, "fx_rate must be finite"),
    ],
)
def test_adjust_rejects_nonsense(kwargs: dict[str, float], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        PriceAdjust(**kwargs)


async def test_fixed_price_never_stale() -> None:
    quote = await FixedPrice(0.061).fetch(1_000.0)
    assert (quote.kind, quote.value, quote.unit) == (QuoteKind.POWER_PRICE, 0.061, "USD/kWh")
    assert not quote.stale(1_000.0 + 10 * 365 * 86400)


def test_site_currency_needs_an_fx_rate(client: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="feed is in EUR but the site currency is USD"):
        Awattar(client, "http://127.0.0.1:9", site_currency="USD")


def test_conflicting_intervals_refused() -> None:
    a = PriceInterval(0.0, 3600.0, 10.0, "h0")
    b = PriceInterval(0.0, 3600.0, 12.0, "h0")
    with pytest.raises(FeedError, match="conflicting prices for h0: 10, 12"):
        select_interval([a, b], 10.0, "test")


# ------------------------------------------------------------------------- aWATTar

AWATTAR_T0 = 1561932000.0  # 2019-06-30T22:00:00Z, the recorded payload's first hour


def awattar(client: httpx.AsyncClient, server: FeedServer, *replies: Reply, **kw: Any) -> Awattar:
    server.serve("/v1/marketdata", *replies)
    kw.setdefault("attempts", 1)
    return Awattar(client, server.base_url, **kw)


def awattar_row(price: Any, unit: str = "Eur/MWh") -> dict[str, Any]:
    start = int(AWATTAR_T0 * 1000)
    end = start + 3_600_000
    return {"start_timestamp": start, "end_timestamp": end, "marketprice": price, "unit": unit}


async def test_awattar_recorded(client: httpx.AsyncClient, server: FeedServer) -> None:
    feed = awattar(client, server, json_reply(recorded("awattar_marketdata.json")))
    quote = await feed.fetch(AWATTAR_T0 + 600)
    assert quote.value == pytest.approx(0.02898)
    assert (quote.unit, quote.source, quote.observed_at, quote.ttl_s) == (
        "EUR/kWh",
        "awattar",
        AWATTAR_T0,
        3600.0,
    )
    assert quote.detail == "2019-06-30 22:00-23:00 UTC 28.98 EUR/MWh"
    assert (await feed.fetch(AWATTAR_T0 + 3600)).value == pytest.approx(0.02623)
    query = server.seen[0].query
    assert int(query["start"]) < (AWATTAR_T0 + 600) * 1000 < int(query["end"])


async def test_awattar_adjusted_into_site_currency(
    client: httpx.AsyncClient, server: FeedServer
) -> None:
    adjust = PriceAdjust(multiplier=1.2, adder_per_kwh=0.15, fx_rate=1.1)
    reply = json_reply(recorded("awattar_marketdata.json"))
    feed = awattar(client, server, reply, adjust=adjust, site_currency="USD")
    quote = await feed.fetch(AWATTAR_T0)
    assert quote.value == pytest.approx(0.02898 * 1.1 * 1.2 + 0.15)
    assert quote.unit == "USD/kWh"


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (awattar_row(28.98, unit="Eur/kWh"), "unit is 'Eur/kWh', expected 'Eur/MWh'"),
        (awattar_row(math.nan), "marketprice is not finite"),
        (awattar_row(math.inf), "marketprice is not finite"),
        (awattar_row("n/a"), "marketprice is not a number"),
        (awattar_row(20_000.0), "implausible price 20000 EUR/MWh"),
        (awattar_row(-1_500.0), "implausible price -1500 EUR/MWh"),
        ({"start_timestamp": 0, "end_timestamp": 1, "unit": "Eur/MWh"}, "marketprice missing"),
    ],
)
async def test_awattar_bad_rows(
    client: httpx.AsyncClient, server: FeedServer, row: dict[str, Any], problem: str
) -> None:
    # json.dumps writes NaN/Infinity literals, as a broken upstream might
    feed = awattar(client, server, json_reply({"object": "list", "data": [row]}))
    with pytest.raises(FeedError, match=problem) as info:
        await feed.fetch(AWATTAR_T0 + 60)
    assert info.value.source == "awattar"


async def test_awattar_minus_one_is_a_price(client: httpx.AsyncClient, server: FeedServer) -> None:
    feed = awattar(client, server, json_reply({"data": [awattar_row(-1)]}))
    assert (await feed.fetch(AWATTAR_T0)).value == pytest.approx(-0.001)


async def test_awattar_stale_and_empty(client: httpx.AsyncClient, server: FeedServer) -> None:
    feed = awattar(client, server, json_reply(recorded("awattar_marketdata.json")))
    with pytest.raises(FeedError) as info:
        await feed.fetch(AWATTAR_T0 + 3 * 3600)
    assert info.value.problem == (
        "no price for 2019-07-01T01:00:00Z, latest interval ended at 2019-07-01T00:00:00Z"
    )
    server.serve("/v1/marketdata", json_reply({"object": "list", "data": []}))
    with pytest.raises(FeedError, match="empty series"):
        await feed.fetch(AWATTAR_T0)
    server.serve("/v1/marketdata", json_reply({"object": "list"}))
    with pytest.raises(FeedError, match="field data missing"):
        await feed.fetch(AWATTAR_T0)


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (HTML_502, "HTTP 502 with an HTML error page"),
        (Reply(b"<html><body>maintenance</body></html>", content_type="text/html"), "not JSON"),
        (Reply(b"\x00\xff\x13garbage{", content_type="application/json"), "not JSON"),
        (Reply(b"{}", status=401), "credentials refused"),
    ],
)
async def test_awattar_http_faults(
    client: httpx.AsyncClient, server: FeedServer, reply: Reply, problem: str
) -> None:
    with pytest.raises(FeedError, match=problem):
        await awattar(client, server, reply).fetch(AWATTAR_T0)


async def test_rate_limited_holds_off(client: httpx.AsyncClient, server: FeedServer) -> None:
    now = [1000.0]
    limited = Reply(b"{}", status=429, headers={"Retry-After": "120"})
    feed = awattar(client, server, limited, attempts=3, clock=lambda: now[0])
    with pytest.raises(FeedError, match=r"rate limited \(HTTP 429\), retry after 120 s") as info:
        await feed.fetch(AWATTAR_T0)
    assert info.value.retry_after_s == 120.0
    assert len(server.seen) == 1  # a 429 is not retried at once
    with pytest.raises(FeedError, match="holding off for 120 s"):
        await feed.fetch(AWATTAR_T0)
    assert len(server.seen) == 1
    now[0] += 121
    server.serve("/v1/marketdata", json_reply(recorded("awattar_marketdata.json")))
    assert (await feed.fetch(AWATTAR_T0)).value == pytest.approx(0.02898)


async def test_timeout(client: httpx.AsyncClient, server: FeedServer) -> None:
    slow = json_reply(recorded("awattar_marketdata.json"))
    slow.delay_s = 1.0
    feed = awattar(client, server, slow, timeout_s=0.2)
    with pytest.raises(FeedError, match="no answer within"):
        await feed.fetch(AWATTAR_T0)


async def test_transient_error_retried(client: httpx.AsyncClient, server: FeedServer) -> None:
    good = json_reply(recorded("awattar_marketdata.json"))
    feed = awattar(client, server, HTML_502, good, attempts=2)
    assert (await feed.fetch(AWATTAR_T0)).value == pytest.approx(0.02898)
    assert len(server.seen) == 2


# ------------------------------------------------------------------------- Octopus Agile

OCTOPUS_PATH = (
    "/v1/products/AGILE-24-10-01/electricity-tariffs/E-1R-AGILE-24-10-01-C/standard-unit-rates/"
)


def octopus(client: httpx.AsyncClient, server: FeedServer, reply: Reply, **kw: Any) -> OctopusAgile:
    server.serve(OCTOPUS_PATH, reply)
    kw.setdefault("attempts", 1)
    return OctopusAgile(
        client, "AGILE-24-10-01", "E-1R-AGILE-24-10-01-C", base_url=server.base_url, **kw
    )


async def test_octopus_recorded(client: httpx.AsyncClient, server: FeedServer) -> None:
    feed = octopus(client, server, json_reply(recorded("octopus_agile_unit_rates.json")))
    quote = await feed.fetch(ts("2026-05-25T22:40:00Z"))
    assert quote.value == pytest.approx(0.141)
    assert (quote.unit, quote.observed_at, quote.ttl_s) == (
        "GBP/kWh",
        ts("2026-05-25T22:30:00Z"),
        1800.0,
    )
    assert quote.detail == "E-1R-AGILE-24-10-01-C 2026-05-25 22:30-23:00 UTC 14.1 p/kWh"
    negative = await feed.fetch(ts("2026-05-25T13:10:00Z"))
    assert negative.value == pytest.approx(-0.03)
    assert server.seen[0].query["period_from"] == "2026-05-25T21:40:00Z"


async def test_octopus_exc_vat(client: httpx.AsyncClient, server: FeedServer) -> None:
    feed = octopus(client, server, json_reply(recorded("octopus_agile_unit_rates.json")), vat=False)
    assert (await feed.fetch(ts("2026-05-25T22:30:00Z"))).value == pytest.approx(0.134286)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"value_inc_vat": None}, "value_inc_vat is not a number"),
        ({"valid_to": None}, "valid_to is not a timestamp"),
        ({"valid_from": "2026-05-25T22:30:00"}, "valid_from has no time zone"),
        ({"valid_to": "2026-05-25T22:00:00Z"}, "ends .* before it starts"),
        ({"value_inc_vat": 1500.0}, "implausible price 1500 p/kWh"),
    ],
)
async def test_octopus_bad_rows(
    client: httpx.AsyncClient, server: FeedServer, change: dict[str, Any], problem: str
) -> None:
    payload = recorded("octopus_agile_unit_rates.json")
    payload["results"][0].update(change)
    feed = octopus(client, server, json_reply(payload))
    with pytest.raises(FeedError, match=problem):
        await feed.fetch(ts("2026-05-25T22:40:00Z"))


async def test_octopus_missing_value(client: httpx.AsyncClient, server: FeedServer) -> None:
    payload = recorded("octopus_agile_unit_rates.json")
    del payload["results"][1]["value_inc_vat"]
    feed = octopus(client, server, json_reply(payload))
    with pytest.raises(FeedError, match="field value_inc_vat missing"):
        await feed.fetch(ts("2026-05-25T22:40:00Z"))


# ------------------------------------------------------------------------- ERCOT

ERCOT_PATH = "/np6-905-cd/spp_node_zone_hub"


def ercot(client: httpx.AsyncClient, server: FeedServer, reply: Reply, **kw: Any) -> ErcotSpp:
    server.serve(ERCOT_PATH, reply)
    kw.setdefault("attempts", 1)
    kw.setdefault("token", "tok-123")
    return ErcotSpp(client, "HB_NORTH", api_key="key-abc", base_url=server.base_url, **kw)


def ercot_payload(*rows: list[Any]) -> dict[str, Any]:
    payload: dict[str, Any] = recorded("ercot_spp_node_zone_hub.json")
    payload["data"] = [list(r) for r in rows]
    return payload


async def test_ercot_recorded(client: httpx.AsyncClient, server: FeedServer) -> None:
    feed = ercot(client, server, json_reply(recorded("ercot_spp_node_zone_hub.json")))
    # hour-ending 10, interval 1 = 09:00-09:15 CST = 15:00-15:15 UTC
    quote = await feed.fetch(ts("2026-02-10T15:05:00Z"))
    assert quote.value == pytest.approx(0.05125)
    assert (quote.unit, quote.observed_at, quote.ttl_s) == (
        "USD/kWh",
        ts("2026-02-10T15:00:00Z"),
        900.0,
    )
    assert quote.detail == "HB_NORTH 2026-02-10 09:00-09:15 CST (HE10 i1) 51.25 USD/MWh"
    seen = server.seen[0]
    assert seen.headers["Ocp-Apim-Subscription-Key"] == "key-abc"
    assert seen.headers["Authorization"] == "Bearer tok-123"
    assert seen.query == {
        "deliveryDateFrom": "2026-02-09",
        "deliveryDateTo": "2026-02-10",
        "settlementPoint": "HB_NORTH",
    }


async def test_ercot_carries_latest_then_goes_stale(
    client: httpx.AsyncClient, server: FeedServer
) -> None:
    feed = ercot(client, server, json_reply(recorded("ercot_spp_node_zone_hub.json")))
    carried = await feed.fetch(ts("2026-02-10T15:25:00Z"))
    assert carried.value == pytest.approx(0.05125)
    assert "latest published interval" in carried.detail
    assert not carried.stale(ts("2026-02-10T15:44:00Z"))
    assert carried.stale(ts("2026-02-10T15:46:00Z"))
    with pytest.raises(FeedError) as info:
        await feed.fetch(ts("2026-02-10T16:00:00Z"))
    assert info.value.problem == (
        "no price for 2026-02-10T16:00:00Z, latest interval ended at 2026-02-10T15:15:00Z"
    )


async def test_ercot_fall_back_repeated_hour(client: httpx.AsyncClient, server: FeedServer) -> None:
    rows = [
        ["2026-11-01", 2, 1, "HB_NORTH", "HU", 20.0, False],  # 01:00 CDT = 06:00Z
        ["2026-11-01", 2, 1, "HB_NORTH", "HU", 30.0, True],  # 01:00 CST = 07:00Z
        ["2026-11-01", 2, 1, "HB_WEST", "HU", 99.0, False],
    ]
    feed = ercot(client, server, json_reply(ercot_payload(*rows)))
    first = await feed.fetch(ts("2026-11-01T06:05:00Z"))
    second = await feed.fetch(ts("2026-11-01T07:05:00Z"))
    assert first.value == pytest.approx(0.02)
    assert second.value == pytest.approx(0.03)
    assert "01:00-01:15 CDT" in first.detail
    assert "01:00-01:15 CST" in second.detail


async def test_ercot_spring_forward(client: httpx.AsyncClient, server: FeedServer) -> None:
    rows = [
        ["2026-03-08", 3, 1, "HB_NORTH", "HU", 77.0, False],  # 02:00 local does not exist
        ["2026-03-08", 4, 1, "HB_NORTH", "HU", 40.0, False],  # 03:00 CDT = 08:00Z
    ]
    feed = ercot(client, server, json_reply(ercot_payload(*rows)))
    quote = await feed.fetch(ts("2026-03-08T08:01:00Z"))
    assert quote.value == pytest.approx(0.04)
    assert quote.observed_at == ts("2026-03-08T08:00:00Z")


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (["2026-02-10", 10, 1, "HB_NORTH", "HU", 51.25], "does not match the 7 fields"),
        (["2026-02-10", 25, 1, "HB_NORTH", "HU", 51.25, False], "deliveryHour 25 is not 1..24"),
        (["2026-02-10", 10, 5, "HB_NORTH", "HU", 51.25, False], "deliveryInterval 5 is not 1..4"),
        (["2026-02-10", 10, 1, "HB_NORTH", "HU", None, False], "settlementPointPrice is not a"),
        (["2026-02-10", 10, 1, "HB_NORTH", "HU", 20_000.0, False], "implausible price 20000"),
        (["2026-02-10", 10, 1, "HB_WEST", "HU", 51.25, False], "no rows for settlement point"),
        (["10/02/2026", 10, 1, "HB_NORTH", "HU", 51.25, False], "deliveryDate '10/02/2026'"),
    ],
)
async def test_ercot_bad_rows(
    client: httpx.AsyncClient, server: FeedServer, row: list[Any], problem: str
) -> None:
    feed = ercot(client, server, json_reply(ercot_payload(row)))
    with pytest.raises(FeedError, match=problem):
        await feed.fetch(ts("2026-02-10T15:05:00Z"))


async def test_ercot_partial_page_refused(client: httpx.AsyncClient, server: FeedServer) -> None:
    payload = recorded("ercot_spp_node_zone_hub.json")
    payload["_meta"].update(totalPages=2, currentPage=1)
    feed = ercot(client, server, json_reply(payload))
    with pytest.raises(FeedError, match=r"paginated \(page 1 of 2\)"):
        await feed.fetch(ts("2026-02-10T15:05:00Z"))


async def test_ercot_sentinel_and_spike_are_prices(
    client: httpx.AsyncClient, server: FeedServer
) -> None:
    rows = [
        ["2026-02-10", 10, 1, "HB_NORTH", "HU", -1, False],
        ["2026-02-10", 10, 2, "HB_NORTH", "HU", 5000.0, False],
    ]
    feed = ercot(client, server, json_reply(ercot_payload(*rows)), token=lambda: "fresh")
    assert (await feed.fetch(ts("2026-02-10T15:05:00Z"))).value == pytest.approx(-0.001)
    assert (await feed.fetch(ts("2026-02-10T15:20:00Z"))).value == pytest.approx(5.0)
    assert server.seen[-1].headers["Authorization"] == "Bearer fresh"


# ------------------------------------------------------------------------- ENTSO-E

DE_LU = "10Y1001A1001A82H"


def entsoe(client: httpx.AsyncClient, server: FeedServer, reply: Reply, **kw: Any) -> Entsoe:
    server.serve("/api", reply)
    kw.setdefault("attempts", 1)
    return Entsoe(client, "secret-token", DE_LU, base_url=server.base_url, **kw)


async def test_entsoe_recorded_forward_fill(client: httpx.AsyncClient, server: FeedServer) -> None:
    body = (FEEDS / "entsoe_day_ahead_A44.xml").read_bytes()
    feed = entsoe(client, server, xml_reply(body))
    first = await feed.fetch(ts("2025-08-21T22:30:00Z"))
    assert first.value == pytest.approx(0.08833)
    assert (first.unit, first.ttl_s) == ("EUR/kWh", 3600.0)
    # only positions 1 and 2 are sent: 3..24 repeat position 2
    filled = await feed.fetch(ts("2025-08-22T05:30:00Z"))
    assert filled.value == pytest.approx(0.08075)
    assert filled.observed_at == ts("2025-08-22T05:00:00Z")
    assert filled.detail == f"{DE_LU} 2025-08-22 05:00-06:00 UTC 80.75 EUR/MWh"
    query = server.seen[0].query
    assert (query["securityToken"], query["documentType"], query["in_Domain"]) == (
        "secret-token",
        "A44",
        DE_LU,
    )


@pytest.mark.parametrize(
    ("at", "price"),
    [
        ("2026-03-28T23:05:00Z", 90.5),  # position 1
        ("2026-03-28T23:35:00Z", 88.0),  # position 3 repeats 2
        ("2026-03-29T00:00:00Z", 70.25),  # position 5
        ("2026-03-29T21:30:00Z", 70.25),  # position 91 repeats 5
        ("2026-03-29T21:50:00Z", 101.0),  # position 92: the DST day has 92 quarter hours
    ],
)
async def test_entsoe_namespaced_pt15m_preferred(
    client: httpx.AsyncClient, server: FeedServer, at: str, price: float
) -> None:
    body = (DATA / "entsoe_de_lu_2026-03-29_ns.xml").read_bytes()
    quote = await entsoe(client, server, xml_reply(body)).fetch(ts(at))
    assert quote.value == pytest.approx(price / 1000)
    assert quote.ttl_s == 900.0  # the 15-minute series wins over the hourly one


async def test_entsoe_past_the_period(client: httpx.AsyncClient, server: FeedServer) -> None:
    body = (DATA / "entsoe_de_lu_2026-03-29_ns.xml").read_bytes()
    with pytest.raises(FeedError, match="latest interval ended at 2026-03-29T22:00:00Z"):
        await entsoe(client, server, xml_reply(body)).fetch(ts("2026-03-29T22:00:00Z"))


def recorded_xml(old: str = "", new: str = "") -> str:
    return (FEEDS / "entsoe_day_ahead_A44.xml").read_text().replace(old, new)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            (DATA / "entsoe_acknowledgement.xml").read_text(),
            "ENTSO-E answered with no data: No matching data found",
        ),
        (
            (DATA / "entsoe_entity_expansion.xml").read_text(),
            "DOCTYPE or ENTITY declaration refused",
        ),
        ("<!DOCTYPE html><html><body>Service Unavailable</body></html>", "an HTML page"),
        ("\x00garbage<<", "not well-formed XML"),
        (recorded_xml(">MWH<", ">KWH<"), "price_Measure_Unit.name is 'KWH', expected 'MWH'"),
        (recorded_xml(">EUR<", ">PLN<"), "currency_Unit.name is 'PLN', configured EUR"),
        (recorded_xml("PT60M", "P1D"), "unsupported resolution 'P1D'"),
        (recorded_xml(">88.33<", ">NaN<"), "price.amount is not finite"),
        (recorded_xml(">88.33<", ">9999999<"), "implausible price 9999999 EUR/MWh .*10000 EUR/kWh"),
        (recorded_xml("<position>2</position>", "<position>99</position>"), "99' is not 1..24"),
        (recorded_xml("<currency_Unit.name>EUR</currency_Unit.name>"), "currency_Unit.name miss"),
        ("<TimeSeries/>", "field TimeSeries.currency_Unit.name missing"),
        (
            "<Publication_MarketDocument xmlns='urn:x'/>",
            "empty series: the reply holds no prices",
        ),
    ],
)
async def test_entsoe_hostile(
    client: httpx.AsyncClient, server: FeedServer, body: str, problem: str
) -> None:
    with pytest.raises(FeedError, match=problem):
        await entsoe(client, server, xml_reply(body)).fetch(ts("2025-08-21T22:30:00Z"))


async def test_entsoe_html_error_status(client: httpx.AsyncClient, server: FeedServer) -> None:
    with pytest.raises(FeedError, match="HTTP 502 with an HTML error page"):
        await entsoe(client, server, HTML_502).fetch(ts("2025-08-21T22:30:00Z"))


# ------------------------------------------------------------------------- time of use

CHICAGO = "America/Chicago"
BERLIN = "Europe/Berlin"
PEAK = TouWindow.parse("mon-fri", "14:00", "19:00", 0.12, "peak")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def local_day(tz: str, day: str) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(tz))
    end = (start + timedelta(days=1)).replace(tzinfo=ZoneInfo(tz))
    return start.astimezone(UTC), end.astimezone(UTC)


def test_tou_weekday_peak_and_weekend() -> None:
    schedule = TouSchedule((PEAK,), CHICAGO, default_per_kwh=0.05)
    # Tuesday 2026-02-10 15:00 CST
    assert price_at(schedule, utc("2026-02-10T21:00:00Z")) == (
        0.12,
        utc("2026-02-10T20:00:00Z"),
        utc("2026-02-11T01:00:00Z"),
    )
    assert price_at(schedule, utc("2026-02-10T19:59:59Z"))[0] == 0.05
    # Saturday: the default all local day
    assert price_at(schedule, utc("2026-02-14T21:00:00Z")) == (
        0.05,
        utc("2026-02-14T06:00:00Z"),
        utc("2026-02-15T06:00:00Z"),
    )


def hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def quarter_hour_schedule(tz: str) -> TouSchedule:
    windows = [
        TouWindow(ALL_DAYS, hhmm(q * 15), hhmm(q * 15 + 15), float(q), f"q{q}") for q in range(96)
    ]
    return TouSchedule(tuple(windows), tz)


@pytest.mark.parametrize(
    ("tz", "day", "quarters", "hours"),
    [
        (CHICAGO, "2026-03-08", 92, 23),
        (CHICAGO, "2026-11-01", 100, 25),
        (BERLIN, "2026-03-29", 92, 23),
        (BERLIN, "2026-10-25", 100, 25),
        (BERLIN, "2026-06-01", 96, 24),
    ],
)
def test_tou_dst_days_have_92_or_100_quarter_hours(
    tz: str, day: str, quarters: int, hours: int
) -> None:
    start, end = local_day(tz, day)
    assert end - start == timedelta(hours=hours)
    slots = list(windows_between(quarter_hour_schedule(tz), start, end))
    assert len(slots) == quarters
    assert slots[0].start == start and slots[-1].end == end
    assert all(s.end - s.start == timedelta(minutes=15) for s in slots)
    assert all(a.end == b.start for a, b in itertools.pairwise(slots))


def test_tou_chicago_spring_forward() -> None:
    early = TouWindow.parse("daily", "01:00", "03:00", 0.04, "early")
    gap = TouWindow.parse("daily", "02:15", "02:45", 0.99, "gap")
    schedule = TouSchedule((early,), CHICAGO, default_per_kwh=0.05)
    # 01:00 CST (07:00Z) to 03:00 CDT (08:00Z): one real hour
    assert price_at(schedule, utc("2026-03-08T07:30:00Z")) == (
        0.04,
        utc("2026-03-08T07:00:00Z"),
        utc("2026-03-08T08:00:00Z"),
    )
    # a window inside the skipped hour never applies that day
    with_gap = TouSchedule((gap,), CHICAGO, default_per_kwh=0.05)
    start, end = local_day(CHICAGO, "2026-03-08")
    assert all(s.price_per_kwh == 0.05 for s in windows_between(with_gap, start, end))
    assert price_at(with_gap, utc("2026-03-09T07:20:00Z"))[0] == 0.99  # 02:20 CDT the next day


def test_tou_chicago_fall_back_window_happens_twice() -> None:
    window = TouWindow.parse("daily", "01:00", "01:30", 0.07, "twice")
    schedule = TouSchedule((window,), CHICAGO, default_per_kwh=0.05)
    assert price_at(schedule, utc("2026-11-01T06:10:00Z")) == (
        0.07,
        utc("2026-11-01T06:00:00Z"),
        utc("2026-11-01T06:30:00Z"),
    )
    assert price_at(schedule, utc("2026-11-01T06:40:00Z")) == (
        0.05,
        utc("2026-11-01T06:30:00Z"),
        utc("2026-11-01T07:00:00Z"),
    )
    assert price_at(schedule, utc("2026-11-01T07:10:00Z")) == (
        0.07,
        utc("2026-11-01T07:00:00Z"),
        utc("2026-11-01T07:30:00Z"),
    )


def test_tou_berlin_transitions() -> None:
    night = TouWindow.parse("daily", "00:00", "06:00", 0.20, "night")
    schedule = TouSchedule((night,), BERLIN, default_per_kwh=0.30)
    # 2026-03-29: 00:00 CET (23:00Z) to 06:00 CEST (04:00Z) is five real hours
    assert price_at(schedule, utc("2026-03-29T01:30:00Z")) == (
        0.20,
        utc("2026-03-28T23:00:00Z"),
        utc("2026-03-29T04:00:00Z"),
    )
    # 2026-10-25: 00:00 CEST (22:00Z) to 06:00 CET (05:00Z) is seven
    assert price_at(schedule, utc("2026-10-25T01:30:00Z")) == (
        0.20,
        utc("2026-10-24T22:00:00Z"),
        utc("2026-10-25T05:00:00Z"),
    )


def test_tou_window_across_midnight() -> None:
    night = TouWindow.parse("fri", "22:00", "06:00", 0.03, "fri-night")
    schedule = TouSchedule((night,), CHICAGO, default_per_kwh=0.05)
    assert price_at(schedule, utc("2026-02-14T09:00:00Z"))[0] == 0.03  # Sat 03:00 CST
    assert price_at(schedule, utc("2026-02-15T09:00:00Z"))[0] == 0.05  # Sun 03:00 CST


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (
            lambda: TouSchedule(
                (PEAK, TouWindow.parse("tue", "18:00", "20:00", 0.2, "evening")), CHICAGO, 0.05
            ),
            r"TOU window 'evening' \(Tue 18:00-20:00\) overlaps 'peak' \(Mon,Tue,Wed,Thu,Fri "
            r"14:00-19:00\) on Tue at 18:00-19:00",
        ),
        (
            lambda: TouSchedule((PEAK,), CHICAGO),
            "no price for Mon 00:00-14:00: no window covers it and no default price",
        ),
        (lambda: TouWindow.parse("mon", "25:00", "26:00", 0.1, "late"), "'late'.*not between"),
        (lambda: TouWindow.parse("mon", "10:00", "10:00", 0.1, "nil"), "'nil'.*window is empty"),
        (lambda: TouWindow.parse("mon", "9", "10:00", 0.1, "x"), "'x'.*time '9' is not HH:MM"),
        (lambda: TouWindow.parse("funday", "09:00", "10:00", 0.1), "unknown day 'funday'"),
        (lambda: TouWindow.parse("mon", "09:00", "10:00", math.nan, "n"), "'n'.*not a finite"),
        (lambda: TouSchedule((PEAK,), "Mars/Olympus", 0.05), "unknown time zone"),
    ],
)
def test_tou_validation_names_the_window(build: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        build()


def test_parse_days() -> None:
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("Sat,Sun") == frozenset({5, 6})
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert parse_days("daily") == ALL_DAYS


def test_price_at_needs_an_aware_instant() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        price_at(TouSchedule((PEAK,), CHICAGO, 0.05), datetime(2026, 1, 1))


async def test_time_of_use_source() -> None:
    source = TimeOfUse([PEAK], CHICAGO, default_per_kwh=0.05, currency="USD")
    quote = await source.fetch(ts("2026-02-10T21:00:00Z"))
    assert (quote.value, quote.unit, quote.source) == (0.12, "USD/kWh", "tou")
    assert quote.observed_at == ts("2026-02-10T20:00:00Z")
    assert quote.ttl_s == 5 * 3600
    assert not quote.stale(ts("2026-02-11T00:59:59Z"))
    assert quote.stale(ts("2026-02-11T01:00:01Z"))
    assert "peak" in quote.detail and "14:00 CST-19:00 CST" in quote.detail


ZONES = [CHICAGO, BERLIN, "Australia/Lord_Howe", "America/Santiago", "Asia/Kolkata", "UTC"]
ZONES += ["Pacific/Apia", "America/St_Johns"]


@st.composite
def schedules(draw: st.DrawFn) -> TouSchedule:
    """Non-overlapping windows on a few day groups, cut at random minutes (any DST corner)."""
    windows: list[TouWindow] = []
    for days in draw(st.sampled_from([["mon-fri", "sat,sun"], ["daily"], ["mon", "tue-sun"]])):
        cuts = draw(st.lists(st.integers(0, 1440), min_size=2, max_size=6, unique=True))
        cuts.sort()
        for n, (a, b) in enumerate(itertools.pairwise(cuts)):
            if draw(st.booleans()):
                price = draw(st.floats(-0.5, 2.0, allow_nan=False))
                windows.append(TouWindow.parse(days, hhmm(a), hhmm(b), price, f"{days}#{n}"))
    return TouSchedule(tuple(windows), draw(st.sampled_from(ZONES)), default_per_kwh=0.0625)


INSTANTS = st.integers(0, 4_102_444_800 * 1_000_000).map(
    lambda us: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
)
EDGES = ["2026-03-08T08:00:00Z", "2026-11-01T07:00:00Z", "2026-03-29T01:00:00Z"]
EDGES += ["2026-10-25T01:00:00Z", "2011-12-30T10:00:00Z"]  # the last: Samoa skips a whole day
DST_EDGES = st.builds(
    lambda edge, s: utc(edge) + timedelta(seconds=s),
    st.sampled_from(EDGES),
    st.integers(-7200, 7200),
)


def expected_price(schedule: TouSchedule, instant: datetime) -> float:
    return schedule.segment(instant.astimezone(schedule.zone))[1].price


@settings(max_examples=300, deadline=None)
@given(schedule=schedules(), instant=st.one_of(INSTANTS, DST_EDGES))
def test_tou_every_instant_has_exactly_one_window(schedule: TouSchedule, instant: datetime) -> None:
    price, start, end = price_at(schedule, instant)
    assert start <= instant < end
    assert price == expected_price(schedule, instant)  # what the local wall clock says
    tick = timedelta(microseconds=1)
    # the window is one window: its first and last instants answer with it
    assert price_at(schedule, start) == (price, start, end)
    assert price_at(schedule, end - tick) == (price, start, end)
    # and windows tile the time line: neighbours begin/end exactly at its edges
    assert price_at(schedule, end)[1] == end
    assert price_at(schedule, start - tick)[2] == start
    assert end - start <= timedelta(hours=49)  # within one (possibly long) local day


@settings(max_examples=100, deadline=None)
@given(schedule=schedules(), instant=st.one_of(INSTANTS, DST_EDGES))
def test_tou_price_constant_inside_window(schedule: TouSchedule, instant: datetime) -> None:
    slot = window_at(schedule, instant)
    span = slot.end - slot.start
    for k in range(1, 8):
        probe = slot.start + span * k / 8
        assert expected_price(schedule, probe) == slot.price_per_kwh
