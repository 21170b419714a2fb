"""Power price sources: what every one shares, and the fixed price.

Market feeds (ERCOT, Octopus Agile, aWATTar, ENTSO-E) are in ``power_feeds``; time-of-use
tariffs in ``tou``. Every source returns a ``Quote`` of kind POWER_PRICE whose value is the
all-in price in the site currency per kWh, ``observed_at`` the start of the interval the price
applies to and ``ttl_s`` that interval's length, so a quote goes stale when its interval ends.

A market price becomes a site price through ``PriceAdjust``::

    price_per_kwh = (raw_per_kwh * fx_rate) * multiplier + adder_per_kwh

where ``raw_per_kwh`` is the feed's price converted to the feed currency per kWh (EUR/MWh / 1000,
p/kWh / 100). Before adjusting, ``raw_per_kwh`` must lie within the feed's plausible bounds
(default -1 to 10 per kWh): a value outside them is a FeedError ("implausible"), never a quote.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, TypedDict

import httpx

from market.fetch import FeedError, Fetcher, finite
from market.source import Source
from policies.values import Quote, QuoteKind

DEFAULT_BOUNDS_PER_KWH = (-1.0, 10.0)


@dataclass(frozen=True, slots=True)
class PriceAdjust:
    """Turns a market price into what the site pays per kWh.

    ``fx_rate`` converts the feed currency to the site currency (site units per feed unit),
    ``multiplier`` scales the converted energy price (losses, a supplier's margin, VAT on the
    energy part), and ``adder_per_kwh`` (site currency) adds delivery, transmission and taxes:
    ``(raw_per_kwh * fx_rate) * multiplier + adder_per_kwh``. ValueError on a non-finite
    field, a non-positive ``fx_rate`` or a negative ``multiplier``.
    """

    multiplier: float = 1.0
    adder_per_kwh: float = 0.0
    fx_rate: float = 1.0

    def __post_init__(self) -> None:
        for name in ("multiplier", "adder_per_kwh", "fx_rate"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"PriceAdjust.{name} must be finite, not {getattr(self, name)}")
        if self.fx_rate <= 0:
            raise ValueError(f"PriceAdjust.fx_rate must be positive, not {self.fx_rate}")
        if self.multiplier < 0:
            raise ValueError(f"PriceAdjust.multiplier must not be negative: {self.multiplier}")

    def apply(self, raw_per_kwh: float) -> float:
        """The site price per kWh for a feed price per kWh (feed currency)."""
        return (raw_per_kwh * self.fx_rate) * self.multiplier + self.adder_per_kwh


class FixedPrice(Source):
    """A flat all-in price: always the same value, never stale (``ttl_s`` is infinite)."""

    kind = QuoteKind.POWER_PRICE

    def __init__(self, value_per_kwh: float, *, currency: str = "USD", name: str = "fixed"):
        if not math.isfinite(value_per_kwh):
            raise ValueError(f"fixed price {value_per_kwh!r} is not a finite number")
        self.value_per_kwh = value_per_kwh
        self.currency = currency
        self.name = name
        self.ttl_s = math.inf

    async def fetch(self, now: float) -> Quote:
        """The fixed price, observed at ``now``."""
        return Quote(
            kind=QuoteKind.POWER_PRICE,
            value=self.value_per_kwh,
            unit=f"{self.currency}/kWh",
            source=self.name,
            observed_at=now,
            ttl_s=math.inf,
            detail=f"fixed {self.value_per_kwh:g} {self.currency}/kWh",
        )


@dataclass(frozen=True, slots=True)
class PriceInterval:
    """One price from a feed: [start, end) in POSIX seconds, in the feed's own unit."""

    start: float
    end: float
    raw: float
    label: str


def iso(ts: float) -> str:
    """POSIX seconds as ``2026-02-10T15:00:00Z`` (for messages)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def select_interval(
    intervals: Sequence[PriceInterval], now: float, source: str, carry_s: float = 0.0
) -> tuple[PriceInterval, bool]:
    """The interval whose price applies at ``now``, and whether it was carried forward.

    Prefers an interval containing ``now`` (the shortest, when a feed sends two resolutions);
    otherwise, if ``carry_s`` > 0, the latest one that ended at most ``carry_s`` before ``now``
    (a real-time price published after its interval). FeedError for an empty series, no
    interval for ``now`` or conflicting prices for the same interval.
    """
    if not intervals:
        raise FeedError(source, "empty series: the reply holds no prices", transient=False)
    covering = [iv for iv in intervals if iv.start <= now < iv.end]
    carried = False
    if not covering and carry_s > 0:
        latest = max(iv.end for iv in intervals)
        if now - carry_s <= latest <= now:
            covering = [iv for iv in intervals if iv.end == latest]
            carried = True
    if not covering:
        raise FeedError(source, _no_price(intervals, now))
    shortest = min(iv.end - iv.start for iv in covering)
    best = [iv for iv in covering if iv.end - iv.start == shortest]
    if len({iv.raw for iv in best}) > 1:
        prices = ", ".join(f"{iv.raw:g}" for iv in best)
        raise FeedError(
            source, f"conflicting prices for {best[0].label}: {prices}", transient=False
        )
    return best[0], carried


def _no_price(intervals: Sequence[PriceInterval], now: float) -> str:
    latest = max(iv.end for iv in intervals)
    if latest <= now:
        return f"no price for {iso(now)}, latest interval ended at {iso(latest)}"
    earliest = min(iv.start for iv in intervals)
    return f"no price for {iso(now)}: the reply covers {iso(earliest)} to {iso(latest)} with a gap"


class FeedOptions(TypedDict, total=False):
    """Settings every market feed accepts (keyword arguments)."""

    name: str
    adjust: PriceAdjust
    site_currency: str
    timeout_s: float
    attempts: int
    clock: Callable[[], float]
    bounds_per_kwh: tuple[float, float]


class MarketFeed(Source):
    """A power market price feed over HTTP: fetch, pick the interval for ``now``, check it is
    plausible, convert and adjust it. Subclasses implement ``intervals``."""

    kind = QuoteKind.POWER_PRICE
    default_name: ClassVar[str]
    feed_unit: str  # the feed's own unit, e.g. "EUR/MWh", "p/kWh"
    units_per_kwh: float  # feed units per (feed currency per kWh): 1000 for /MWh

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        feed_currency: str,
        ttl_s: float,
        carry_s: float = 0.0,
        name: str | None = None,
        adjust: PriceAdjust | None = None,
        site_currency: str | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        clock: Callable[[], float] = time.time,
        bounds_per_kwh: tuple[float, float] = DEFAULT_BOUNDS_PER_KWH,
    ) -> None:
        self.name = name or self.default_name
        self.adjust = adjust or PriceAdjust()
        self.feed_currency = feed_currency
        self.site_currency = site_currency or feed_currency
        if self.site_currency != feed_currency and self.adjust.fx_rate == 1.0:
            raise ValueError(
                f"{self.name}: the feed is in {feed_currency} but the site currency is "
                f"{self.site_currency}; set PriceAdjust.fx_rate"
            )
        self.ttl_s = ttl_s
        self.carry_s = carry_s
        self.bounds_per_kwh = bounds_per_kwh
        self.fetcher = Fetcher(
            self.name, client, timeout_s=timeout_s, attempts=attempts, clock=clock
        )

    @abc.abstractmethod
    async def intervals(self, now: float) -> list[PriceInterval]:
        """Every price the feed returned around ``now``, checked and in the feed's unit."""

    async def fetch(self, now: float) -> Quote:
        """The adjusted site price per kWh for the interval containing ``now``; FeedError
        naming the problem otherwise (never a number it is not sure of)."""
        interval, carried = select_interval(await self.intervals(now), now, self.name, self.carry_s)
        return self.quote(interval, carried)

    def quote(self, interval: PriceInterval, carried: bool = False) -> Quote:
        """``interval`` as a Quote: plausibility-checked, converted and adjusted."""
        raw_per_kwh = interval.raw / self.units_per_kwh
        lo, hi = self.bounds_per_kwh
        if not lo <= raw_per_kwh <= hi:
            raise FeedError(
                self.name,
                f"implausible price {interval.raw:.10g} {self.feed_unit} for {interval.label} "
                f"({raw_per_kwh:g} {self.feed_currency}/kWh, outside {lo:g}..{hi:g})",
                transient=False,
            )
        detail = f"{interval.label} {interval.raw:.10g} {self.feed_unit}"
        if carried:
            detail += " (latest published interval)"
        return Quote(
            kind=QuoteKind.POWER_PRICE,
            value=self.adjust.apply(raw_per_kwh),
            unit=f"{self.site_currency}/kWh",
            source=self.name,
            observed_at=interval.start,
            ttl_s=interval.end - interval.start + (self.carry_s if carried else 0.0),
            detail=detail,
        )

    def fail(self, problem: str) -> FeedError:
        """A non-transient FeedError for a malformed reply."""
        return FeedError(self.name, problem, transient=False)


class PushedPrice(Source):
    """Holds the last power price pushed to it (a site meter or an operator override over
    MQTT) and returns it; the MQTT bridge calls :meth:`push`."""

    kind = QuoteKind.POWER_PRICE

    def __init__(
        self,
        *,
        currency: str = "USD",
        name: str = "pushed",
        ttl_s: float = 3600.0,
        bounds_per_kwh: tuple[float, float] = DEFAULT_BOUNDS_PER_KWH,
    ) -> None:
        self.currency = currency
        self.name = name
        self.ttl_s = ttl_s
        self.bounds_per_kwh = bounds_per_kwh
        self._last: Quote | None = None

    def push(self, value_per_kwh: float, observed_at: float, source: str) -> Quote:
        """Take ``value_per_kwh`` (site currency, all-in) true from ``observed_at``; returns the
        quote it will serve. FeedError naming the problem, and no change, if anything is off."""
        value = finite(value_per_kwh, "pushed power price", self.name)
        lo, hi = self.bounds_per_kwh
        if not lo <= value <= hi:
            raise FeedError(
                self.name,
                f"implausible power price {value} {self.currency}/kWh (accepted {lo}..{hi})",
                transient=False,
            )
        when = finite(observed_at, "observed_at", self.name)
        if not source.strip() or len(source) > 100:
            raise FeedError(self.name, f"bad source name {source!r}", transient=False)
        self._last = Quote(
            QuoteKind.POWER_PRICE,
            value,
            f"{self.currency}/kWh",
            self.name,
            when,
            self.ttl_s,
            f"pushed by {source.strip()}",
        )
        return self._last

    async def fetch(self, now: float) -> Quote:
        """The last pushed quote; FeedError if none yet or if it claims a future time."""
        if self._last is None:
            raise FeedError(self.name, "no power price pushed yet")
        if self._last.observed_at > now + 300:
            raise FeedError(self.name, "pushed price claims a time in the future")
        return self._last
