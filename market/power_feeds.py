"""Power market feeds: ERCOT settlement point prices, Octopus Agile, aWATTar and ENTSO-E.

Each parses its reply into ``PriceInterval``s in the feed's own unit and leaves choosing the
interval for ``now``, the plausibility check, conversion and ``PriceAdjust`` to ``MarketFeed``
(``power.py``). Every malformed reply is a FeedError that names the field and the problem.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Unpack
from zoneinfo import ZoneInfo

import httpx

from market.fetch import FeedError, finite, need
from market.power import FeedOptions, MarketFeed, PriceInterval

CHICAGO = ZoneInfo("America/Chicago")


def _utc(text: Any, field_name: str, source: str) -> datetime:
    """An ISO 8601 timestamp with an offset (``Z`` included), as an aware UTC datetime."""
    try:
        value = datetime.fromisoformat(str(text))
    except ValueError:
        raise FeedError(source, f"{field_name} is not a timestamp: {text!r}", False) from None
    if value.tzinfo is None:
        raise FeedError(source, f"{field_name} has no time zone: {text!r}", False)
    return value.astimezone(UTC)


def _rows(payload: Any, key: str, source: str) -> list[Any]:
    rows = need(payload, key, source=source)
    if not isinstance(rows, list):
        raise FeedError(source, f"field {key} is not a list", transient=False)
    return rows


# ---------------------------------------------------------------------------------- ERCOT


def _ercot_flag(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("y", "true", "1"):
        return True
    if text in ("n", "false", "0", "", "none"):
        return False
    raise FeedError(source, f"DSTFlag is not a flag: {value!r}", transient=False)


def ercot_interval_start(day: date, hour: int, interval: int, dst_flag: bool) -> datetime | None:
    """Start (UTC) of ERCOT's interval ``interval`` (1-4) of hour-ending ``hour`` (1-24) on
    ``day`` in Central Prevailing Time; ``dst_flag`` marks the repeated hour of a fall-back day
    (its second, standard-time occurrence). None for a time a spring-forward skips."""
    wall = datetime.combine(day, time()) + timedelta(hours=hour - 1, minutes=15 * (interval - 1))
    start = wall.replace(tzinfo=CHICAGO, fold=1 if dst_flag else 0).astimezone(UTC)
    if start.astimezone(CHICAGO).replace(tzinfo=None) != wall:
        return None
    return start


class ErcotSpp(MarketFeed):
    """ERCOT real-time settlement point prices (NP6-905-CD), USD/MWh per 15-minute interval.

    Real-time prices are published after their interval ends, so by default the latest
    interval is carried forward for up to ``carry_s`` (30 min) when none covers ``now``.
    ``token`` may be a callable returning the current bearer token (ERCOT's expire hourly).
    """

    default_name = "ercot"
    feed_unit = "USD/MWh"
    units_per_kwh = 1000.0
    DEFAULT_BASE_URL = "https://api.ercot.com/api/public-reports"
    PATH = "/np6-905-cd/spp_node_zone_hub"

    def __init__(
        self,
        client: httpx.AsyncClient,
        settlement_point: str,
        *,
        api_key: str,
        token: str | Callable[[], str],
        base_url: str = DEFAULT_BASE_URL,
        carry_s: float = 1800.0,
        **options: Unpack[FeedOptions],
    ) -> None:
        super().__init__(client, feed_currency="USD", ttl_s=900.0, carry_s=carry_s, **options)
        self.settlement_point = settlement_point
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._token = token

    def _headers(self) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        return {"Ocp-Apim-Subscription-Key": self._api_key, "Authorization": f"Bearer {token}"}

    async def intervals(self, now: float) -> list[PriceInterval]:
        """Today's and yesterday's (Central time) intervals for the settlement point."""
        today = datetime.fromtimestamp(now, CHICAGO).date()
        params = {
            "deliveryDateFrom": (today - timedelta(days=1)).isoformat(),
            "deliveryDateTo": today.isoformat(),
            "settlementPoint": self.settlement_point,
        }
        payload = await self.fetcher.get_json(
            self.base_url + self.PATH, params=params, headers=self._headers()
        )
        found = list(self._parse(payload))
        if not found:
            raise self.fail(f"no rows for settlement point {self.settlement_point}")
        return found

    def _parse(self, payload: Any) -> Iterator[PriceInterval]:
        meta = payload.get("_meta") if isinstance(payload, Mapping) else None
        if isinstance(meta, Mapping) and meta.get("totalPages", 1) != meta.get("currentPage", 1):
            # a partial reply could miss the current interval and carry an older one forward
            raise self.fail(
                f"reply is paginated (page {meta.get('currentPage')} of "
                f"{meta.get('totalPages')}): not all of the day's rows were returned"
            )
        names = [
            str(need(f, "name", source=self.name)) for f in _rows(payload, "fields", self.name)
        ]
        for n, row in enumerate(_rows(payload, "data", self.name)):
            record = self._record(names, row, n)
            point = str(need(record, "settlementPoint", source=self.name))
            if point.upper() == self.settlement_point.upper():
                interval = self._interval(record, n)
                if interval is not None:
                    yield interval

    def _record(self, names: list[str], row: Any, n: int) -> Mapping[str, Any]:
        if isinstance(row, Mapping):
            return row
        if not isinstance(row, list) or len(row) != len(names):
            raise self.fail(f"data row {n} does not match the {len(names)} fields: {row!r}")
        return dict(zip(names, row, strict=True))

    def _interval(self, record: Mapping[str, Any], n: int) -> PriceInterval | None:
        src = self.name
        try:
            day = date.fromisoformat(str(need(record, "deliveryDate", source=src)))
        except ValueError:
            raise self.fail(f"data row {n}: deliveryDate {record['deliveryDate']!r}") from None
        hour = need(record, "deliveryHour", source=src)
        quarter = need(record, "deliveryInterval", source=src)
        if not (isinstance(hour, int) and 1 <= hour <= 24):
            raise self.fail(f"data row {n}: deliveryHour {hour!r} is not 1..24")
        if not (isinstance(quarter, int) and 1 <= quarter <= 4):
            raise self.fail(f"data row {n}: deliveryInterval {quarter!r} is not 1..4")
        dst = _ercot_flag(record.get("DSTFlag", False), src)
        price = finite(
            need(record, "settlementPointPrice", source=src), "settlementPointPrice", src
        )
        start = ercot_interval_start(day, hour, quarter, dst)
        if start is None:  # a wall time the spring-forward skips: it prices no real instant
            return None
        end = start + timedelta(minutes=15)
        local = f"{start.astimezone(CHICAGO):%H:%M}-{end.astimezone(CHICAGO):%H:%M %Z}"
        label = f"{self.settlement_point} {day} {local} (HE{hour:02d} i{quarter})"
        return PriceInterval(start.timestamp(), end.timestamp(), price, label)


# ---------------------------------------------------------------------------------- Octopus


class OctopusAgile(MarketFeed):
    """Octopus Energy Agile unit rates (UK), pence per kWh per half hour; may be negative.

    ``vat=True`` uses ``value_inc_vat``, else ``value_exc_vat``. ``payment_method`` keeps only
    rates for that method (rates without one always apply).
    """

    default_name = "octopus"
    feed_unit = "p/kWh"
    units_per_kwh = 100.0
    DEFAULT_BASE_URL = "https://api.octopus.energy"

    def __init__(
        self,
        client: httpx.AsyncClient,
        product: str,
        tariff: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        vat: bool = True,
        payment_method: str | None = None,
        **options: Unpack[FeedOptions],
    ) -> None:
        super().__init__(client, feed_currency="GBP", ttl_s=1800.0, **options)
        self.product = product
        self.tariff = tariff
        self.base_url = base_url.rstrip("/")
        self.value_field = "value_inc_vat" if vat else "value_exc_vat"
        self.payment_method = payment_method

    async def intervals(self, now: float) -> list[PriceInterval]:
        """The half-hour rates from an hour before ``now`` to an hour after."""
        url = (
            f"{self.base_url}/v1/products/{self.product}/electricity-tariffs/"
            f"{self.tariff}/standard-unit-rates/"
        )
        params = {"period_from": _z(now - 3600), "period_to": _z(now + 3600)}
        payload = await self.fetcher.get_json(url, params=params)
        return [
            self._interval(row, n)
            for n, row in enumerate(_rows(payload, "results", self.name))
            if self._wanted(row)
        ]

    def _wanted(self, row: Any) -> bool:
        method = row.get("payment_method") if isinstance(row, Mapping) else None
        return self.payment_method is None or method is None or method == self.payment_method

    def _interval(self, row: Any, n: int) -> PriceInterval:
        src = self.name
        start = _utc(need(row, "valid_from", source=src), f"results[{n}].valid_from", src)
        end = _utc(need(row, "valid_to", source=src), f"results[{n}].valid_to", src)
        if end <= start:
            raise self.fail(f"results[{n}] ends ({end:%H:%M}) before it starts ({start:%H:%M})")
        price = finite(
            need(row, self.value_field, source=src), f"results[{n}].{self.value_field}", src
        )
        label = f"{self.tariff} {start:%Y-%m-%d %H:%M}-{end:%H:%M} UTC"
        return PriceInterval(start.timestamp(), end.timestamp(), price, label)


def _z(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------- aWATTar


class Awattar(MarketFeed):
    """aWATTar day-ahead market data (DE/AT), EUR/MWh per hour, timestamps in milliseconds.

    The default base URL is the German API; ``https://api.awattar.at`` serves Austria.
    """

    default_name = "awattar"
    feed_unit = "EUR/MWh"
    units_per_kwh = 1000.0
    DEFAULT_BASE_URL = "https://api.awattar.de"

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str = DEFAULT_BASE_URL,
        **options: Unpack[FeedOptions],
    ) -> None:
        super().__init__(client, feed_currency="EUR", ttl_s=3600.0, **options)
        self.base_url = base_url.rstrip("/")

    async def intervals(self, now: float) -> list[PriceInterval]:
        """The hourly prices from two hours before ``now`` to two hours after."""
        params = {"start": str(int((now - 7200) * 1000)), "end": str(int((now + 7200) * 1000))}
        payload = await self.fetcher.get_json(self.base_url + "/v1/marketdata", params=params)
        return [self._interval(row, n) for n, row in enumerate(_rows(payload, "data", self.name))]

    def _interval(self, row: Any, n: int) -> PriceInterval:
        src = self.name
        unit = need(row, "unit", source=src)
        if str(unit).replace(" ", "").lower() != "eur/mwh":
            raise self.fail(f"data[{n}].unit is {unit!r}, expected 'Eur/MWh'")
        start = finite(need(row, "start_timestamp", source=src), f"data[{n}].start_timestamp", src)
        end = finite(need(row, "end_timestamp", source=src), f"data[{n}].end_timestamp", src)
        if end <= start:
            raise self.fail(f"data[{n}] ends before it starts")
        price = finite(need(row, "marketprice", source=src), f"data[{n}].marketprice", src)
        begin = datetime.fromtimestamp(start / 1000, UTC)
        label = f"{begin:%Y-%m-%d %H:%M}-{datetime.fromtimestamp(end / 1000, UTC):%H:%M} UTC"
        return PriceInterval(start / 1000, end / 1000, price, label)


# ---------------------------------------------------------------------------------- ENTSO-E

_RESOLUTION = re.compile(r"PT(\d+)([MH])")
_UNSAFE_XML = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(node: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in node if _local(child.tag) == name]


def _descendants(node: ET.Element, name: str) -> list[ET.Element]:
    return [el for el in node.iter() if _local(el.tag) == name]


def parse_xml(body: bytes, source: str) -> ET.Element:
    """The document's root element; FeedError for an HTML page, a DOCTYPE or entity
    declaration (refused outright: no entity expansion, no external references), or bad XML."""
    head = body.lstrip()[:200].lower()
    if head.startswith((b"<!doctype html", b"<html")):
        raise FeedError(source, "an HTML page, not XML", transient=True)
    if _UNSAFE_XML.search(body):
        raise FeedError(source, "XML with a DOCTYPE or ENTITY declaration refused", False)
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise FeedError(source, f"not well-formed XML: {exc}", transient=False) from None


class Entsoe(MarketFeed):
    """ENTSO-E Transparency Platform day-ahead prices (document A44) for a bidding zone.

    Positions a period leaves out repeat the previous position's price (curve type A03), so
    they are forward-filled; resolutions PT15M/PT30M/PT60M. The currency must be
    ``currency`` and the unit MWH. Tags are matched by local name, with or without namespace.
    """

    default_name = "entsoe"
    feed_unit = "EUR/MWh"
    units_per_kwh = 1000.0
    DEFAULT_BASE_URL = "https://web-api.tp.entsoe.eu"

    def __init__(
        self,
        client: httpx.AsyncClient,
        token: str,
        domain: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        currency: str = "EUR",
        **options: Unpack[FeedOptions],
    ) -> None:
        super().__init__(client, feed_currency=currency, ttl_s=3600.0, **options)
        self.domain = domain
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.feed_unit = f"{currency}/MWh"

    async def intervals(self, now: float) -> list[PriceInterval]:
        """The prices of the day before and the day after ``now``."""
        fmt = "%Y%m%d%H00"
        params = {
            "securityToken": self._token,
            "documentType": "A44",
            "in_Domain": self.domain,
            "out_Domain": self.domain,
            "periodStart": datetime.fromtimestamp(now - 86400, UTC).strftime(fmt),
            "periodEnd": datetime.fromtimestamp(now + 86400, UTC).strftime(fmt),
        }
        resp = await self.fetcher.get(self.base_url + "/api", params=params)
        root = parse_xml(resp.content, self.name)
        if _local(root.tag) == "Acknowledgement_MarketDocument":
            reason = " ".join(el.text or "" for el in _descendants(root, "text")).strip()
            raise self.fail(f"ENTSO-E answered with no data: {reason or 'no reason given'}")
        series = [root] if _local(root.tag) == "TimeSeries" else _descendants(root, "TimeSeries")
        return [iv for ts in series for iv in self._series(ts)]

    def _text(self, node: ET.Element, name: str) -> str:
        found = _children(node, name)
        if not found or not (found[0].text or "").strip():
            raise self.fail(f"field {_local(node.tag)}.{name} missing")
        return (found[0].text or "").strip()

    def _series(self, series: ET.Element) -> Iterator[PriceInterval]:
        currency = self._text(series, "currency_Unit.name")
        if currency != self.feed_currency:
            raise self.fail(f"currency_Unit.name is {currency!r}, configured {self.feed_currency}")
        unit = self._text(series, "price_Measure_Unit.name")
        if unit.upper() != "MWH":
            raise self.fail(f"price_Measure_Unit.name is {unit!r}, expected 'MWH'")
        for period in _children(series, "Period"):
            yield from self._period(period)

    def _period(self, period: ET.Element) -> Iterator[PriceInterval]:
        span = _children(period, "timeInterval")
        if not span:
            raise self.fail("field Period.timeInterval missing")
        start = _utc(self._text(span[0], "start"), "timeInterval.start", self.name)
        end = _utc(self._text(span[0], "end"), "timeInterval.end", self.name)
        step = self._resolution(self._text(period, "resolution"))
        count = int((end - start) / step)
        if count <= 0 or start + count * step != end:
            raise self.fail(f"timeInterval {start}..{end} is not a whole number of {step}")
        prices = self._points(period, count)
        if not prices:
            raise self.fail("empty series: a Period has no Point")
        filled: float | None = None
        for position in range(1, count + 1):
            filled = prices.get(position, filled)  # A03: a missing position repeats the last
            if filled is not None:
                begin = start + (position - 1) * step
                label = f"{self.domain} {begin:%Y-%m-%d %H:%M}-{begin + step:%H:%M} UTC"
                yield PriceInterval(begin.timestamp(), (begin + step).timestamp(), filled, label)

    def _resolution(self, text: str) -> timedelta:
        match = _RESOLUTION.fullmatch(text)
        if not match or int(match[1]) == 0:
            raise self.fail(f"unsupported resolution {text!r}")
        amount = int(match[1])
        return timedelta(minutes=amount) if match[2] == "M" else timedelta(hours=amount)

    def _points(self, period: ET.Element, count: int) -> dict[int, float]:
        prices: dict[int, float] = {}
        for point in _children(period, "Point"):
            raw_position = self._text(point, "position")
            if not raw_position.isdigit() or not 1 <= int(raw_position) <= count:
                raise self.fail(f"Point.position {raw_position!r} is not 1..{count}")
            position = int(raw_position)
            price = finite(self._text(point, "price.amount"), "Point.price.amount", self.name)
            if prices.get(position, price) != price:
                raise self.fail(f"Point.position {position} appears twice with different prices")
            prices[position] = price
        return prices
