"""Break-even arithmetic, and the market service's rules for keeping good values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from market.fetch import FeedError
from market.service import Market
from market.source import Source
from policies.economics import (
    Economics,
    ModePoint,
    best_mode,
    breakeven,
    breakeven_power_price,
)
from policies.values import Mode, PowerSource, Quote, QuoteKind

NO_FEE = Economics(pool_fee=0.0, overhead=1.0)


def point(mode: Mode, ths: float, watts: float) -> ModePoint:
    return ModePoint(mode, ths, watts, PowerSource.REPORTED)


@pytest.mark.parametrize(
    ("ths", "watts", "expected"),
    [
        (104, 3068, 0.049),  # S19j Pro
        (140, 3010, 0.068),  # S19 XP
        (200, 3500, 0.083),  # S21
        (88, 3344, 0.038),  # M30S
        (126, 3276, 0.056),  # M50S
        (186, 3422, 0.079),  # M60S
    ],
)
def test_economics_md_breakeven_table(ths: float, watts: float, expected: float) -> None:
    # docs/reference/economics.md: break-even $/kWh at $0.0349/TH/day, no fee, no overhead
    be = breakeven_power_price(point(Mode.NORMAL, ths, watts), 34.9, NO_FEE)
    assert be == pytest.approx(expected, abs=0.0006)


def test_fee_and_overhead_lower_the_breakeven() -> None:
    rig = point(Mode.NORMAL, 104, 3068)
    plain = breakeven_power_price(rig, 34.9, NO_FEE)
    real = breakeven_power_price(rig, 34.9, Economics(pool_fee=0.02, overhead=1.1))
    assert plain is not None and real is not None
    assert real == pytest.approx(plain * 0.98 / 1.1)


def test_margin_sign_matches_breakeven() -> None:
    rig = point(Mode.NORMAL, 104, 3068)
    terms = Economics()
    be = breakeven(rig, 34.9, 0.06, terms)
    assert not be.pays
    assert be.breakeven_power_price_per_kwh is not None
    at_be = breakeven(rig, 34.9, be.breakeven_power_price_per_kwh, terms)
    assert at_be.margin_usd_per_day == pytest.approx(0.0, abs=1e-9)
    assert be.breakeven_hashprice_usd_per_ph_day is not None
    assert breakeven(
        rig, be.breakeven_hashprice_usd_per_ph_day, 0.06, terms
    ).margin_usd_per_day == pytest.approx(0.0, abs=1e-9)


def test_best_mode_sleeps_when_nothing_pays_and_underclocks_in_between() -> None:
    sleep = point(Mode.SLEEP, 0, 18)
    low = point(Mode.LOW, 72.8, 72.8 * 24.0)
    normal = point(Mode.NORMAL, 104, 3068)
    terms = Economics(pool_fee=0.0)
    assert best_mode([sleep, low, normal], 34.9, 0.03, terms).mode is Mode.NORMAL
    assert best_mode([sleep, low, normal], 34.9, 0.055, terms).mode is Mode.LOW
    assert best_mode([sleep, low, normal], 34.9, 0.08, terms).mode is Mode.SLEEP
    with pytest.raises(ValueError, match="at least one"):
        best_mode([], 34.9, 0.05, terms)


@given(st.floats(1, 500), st.floats(100, 5000), st.floats(1, 200), st.floats(-0.5, 2))
def test_breakeven_properties(ths: float, watts: float, hashprice: float, price: float) -> None:
    rig = point(Mode.NORMAL, ths, watts)
    be = breakeven(rig, hashprice, price, Economics())
    assert math.isfinite(be.margin_usd_per_day)
    assert be.breakeven_power_price_per_kwh is not None
    assert be.pays == (price <= be.breakeven_power_price_per_kwh + 1e-12)


@pytest.mark.parametrize(
    ("fee", "overhead"), [(-0.1, 1.0), (1.0, 1.0), (0.02, 0.1), (0.02, float("nan"))]
)
def test_bad_terms_are_refused(fee: float, overhead: float) -> None:
    with pytest.raises(ValueError):
        Economics(pool_fee=fee, overhead=overhead)


class Scripted(Source):
    """A feed that answers from a script: a value, or a FeedError message."""

    def __init__(
        self, name: str, kind: QuoteKind, script: list[float | str], ttl_s: float = 600
    ) -> None:
        self.name, self.kind, self.ttl_s = name, kind, ttl_s
        self.script = script

    async def fetch(self, now: float) -> Quote:
        item = self.script.pop(0)
        if isinstance(item, str):
            raise FeedError(self.name, item)
        return Quote(self.kind, item, "USD/PH/day", self.name, now, self.ttl_s)


async def test_failing_source_keeps_last_good_until_ttl_then_stale() -> None:
    primary = Scripted(
        "a",
        QuoteKind.HASHPRICE,
        [35.0, "HTTP 502 with an HTML error page", "no answer within 10 s"],
    )
    market = Market({QuoteKind.HASHPRICE: [primary]})
    state = await market.refresh(1000.0)
    assert state.fresh(QuoteKind.HASHPRICE) is not None
    state = await market.refresh(1300.0)
    quote = state.fresh(QuoteKind.HASHPRICE)
    assert quote is not None and quote.value == 35.0
    assert [s.error for s in state.sources] == ["HTTP 502 with an HTML error page"]
    state = await market.refresh(1700.0)
    assert state.fresh(QuoteKind.HASHPRICE) is None  # older than its TTL
    stale = state.quote(QuoteKind.HASHPRICE)
    assert stale is not None and stale.value == 35.0 and stale.stale(1700.0)


async def test_sources_are_tried_in_priority_order() -> None:
    first = Scripted("first", QuoteKind.HASHPRICE, ["rate limited (HTTP 429)", 36.0])
    second = Scripted("second", QuoteKind.HASHPRICE, [34.0])
    market = Market({QuoteKind.HASHPRICE: [first, second]})
    quote = (await market.refresh(0.0)).quote(QuoteKind.HASHPRICE)
    assert quote is not None and quote.source == "second"
    quote = (await market.refresh(60.0)).quote(QuoteKind.HASHPRICE)
    assert quote is not None and quote.source == "first"


async def test_absurd_jump_is_held_until_confirmed() -> None:
    feed = Scripted("a", QuoteKind.HASHPRICE, [35.0, 350.0, 35.5, 60.0, 61.0])
    market = Market({QuoteKind.HASHPRICE: [feed]})
    await market.refresh(0.0)
    state = await market.refresh(60.0)
    assert state.quotes[QuoteKind.HASHPRICE].value == 35.0
    assert "held until a second reading" in state.held_back[QuoteKind.HASHPRICE]
    state = await market.refresh(120.0)
    assert state.quotes[QuoteKind.HASHPRICE].value == 35.5
    assert not state.held_back
    await market.refresh(180.0)  # 60 is +69 %: held
    state = await market.refresh(240.0)  # 61 confirms it (within 5 %)
    assert state.quotes[QuoteKind.HASHPRICE].value == 61.0


async def test_power_spikes_are_not_held_back() -> None:
    feed = Scripted("ercot", QuoteKind.POWER_PRICE, [0.03, 3.5])
    market = Market({QuoteKind.POWER_PRICE: [feed]})
    await market.refresh(0.0)
    state = await market.refresh(300.0)
    assert state.quotes[QuoteKind.POWER_PRICE].value == 3.5
