"""Hashprice sources: each returns a Quote in USD per PH/s per day, or raises FeedError.

- ``MempoolHashprice``: computed from a mempool.space-compatible API (difficulty, mean fees over
  the last blocks, BTC price, tip height for the subsidy) with ``policies.hashprice``.
- ``BraiinsInsights``: Braiins Insights ``hash_price`` (USD per TH/s per day, × 1,000).
- ``LuxorHashprice``: Luxor's Hashrate Index current hashprice, asked for per PH/s.
- ``FixedHashprice``: a configured constant.
- ``PushedHashprice``: the last value pushed to it (by the MQTT bridge).

Every number a feed gives is checked before it is used: present, a finite number, of the right
sign, in the right unit where the reply says, and plausible (``PLAUSIBLE_*`` below). A value that
fails any check is a FeedError naming the field and the problem, never a quote.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import SecretStr

from market.fetch import FeedError, Fetcher, finite, need
from market.source import Source
from policies.hashprice import (
    SATS_PER_BTC,
    block_subsidy_btc,
    block_subsidy_sats,
    hashprice_usd_per_ph_day,
)
from policies.values import QUOTE_UNITS, Quote, QuoteKind

UNIT = QUOTE_UNITS[QuoteKind.HASHPRICE]  # "USD/PH/day"

# Plausible ranges: wide enough for any market this decade, narrow enough to catch a unit slip
# (per TH/s read as per PH/s is 1,000× off), a testnet/regtest node, or a placeholder value.
PLAUSIBLE_HASHPRICE_USD_PER_PH_DAY = (1.0, 2_000.0)
PLAUSIBLE_DIFFICULTY = (1e12, 1e16)
PLAUSIBLE_BTC_USD = (1_000.0, 10_000_000.0)
MAX_FEES_BTC_PER_BLOCK = 50.0  # a 144-block mean has never come near one original subsidy
MAX_BLOCK_HEIGHT = 10_000_000  # about the year 2200
CLOCK_SKEW_S = 300.0  # how far in the future a feed's timestamp may be before it is refused

DEFAULT_TTL_S = 1800.0  # about three blocks
PUSHED_TTL_S = 3600.0


@dataclass(frozen=True, slots=True)
class MempoolPaths:
    """The mempool.space REST paths used, in one place (a self-hosted mempool serves the same)."""

    hashrate: str = "/api/v1/mining/hashrate/3d"  # currentDifficulty
    reward_stats: str = "/api/v1/mining/reward-stats/144"  # totalFee (sats), startBlock, endBlock
    prices: str = "/api/v1/prices"  # USD, time
    tip_height: str = "/api/blocks/tip/height"  # plain-text integer


MEMPOOL_PATHS = MempoolPaths()
BRAIINS_PATH = "/v1.0/hashrate-stats"
LUXOR_PATH = "/hashprice/current"
LUXOR_KEY_HEADER = "X-Hi-Api-Key"


# --- checks shared by every source ------------------------------------------------------------


def _positive(value: Any, field: str, source: str) -> float:
    number = finite(value, field, source)
    if number <= 0:
        raise FeedError(source, f"{field} is not positive: {value!r}", transient=False)
    return number


def _in_range(
    number: float, bounds: tuple[float, float], what: str, source: str, hint: str = ""
) -> float:
    low, high = bounds
    if not low <= number <= high:
        raise FeedError(
            source,
            f"implausible {what} {number:g} (expected {low:g}..{high:g}){hint}",
            transient=False,
        )
    return number


def check_hashprice(value: Any, source: str, field: str = "hashprice", hint: str = "") -> float:
    """``value`` as a hashprice in USD/PH/day, or FeedError if it is not a finite positive
    number inside PLAUSIBLE_HASHPRICE_USD_PER_PH_DAY (the message names ``field``)."""
    number = _positive(value, field, source)
    if not hint and _plausible(number * 1000):
        hint = " - looks like USD per TH/s per day, not per PH/s"
    elif not hint and _plausible(number / 1000):
        hint = " - looks 1,000× too high (per EH/s? or per TH/s scaled twice?)"
    return _in_range(number, PLAUSIBLE_HASHPRICE_USD_PER_PH_DAY, f"{field} {UNIT}", source, hint)


def _plausible(hashprice: float) -> bool:
    low, high = PLAUSIBLE_HASHPRICE_USD_PER_PH_DAY
    return low <= hashprice <= high


def _check_units(
    obj: Mapping[str, Any], allowed: Mapping[str, tuple[str, ...]], source: str
) -> None:
    """Refuse a reply whose own unit/currency field says something other than what we read."""
    for key, accepted in allowed.items():
        if key in obj and str(obj[key]).strip().upper() not in accepted:
            raise FeedError(
                source,
                f"wrong unit: {key} is {obj[key]!r}, expected {' or '.join(accepted)}",
                transient=False,
            )


def _mapping(obj: Any, what: str, source: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise FeedError(source, f"{what} is not a JSON object: {str(obj)[:60]!r}", transient=False)
    return obj


def _int_field(value: Any, field: str, source: str) -> int:
    """A non-negative integer given as a JSON int or a string of digits (e.g. sats, heights)."""
    if isinstance(value, bool):
        raise FeedError(source, f"{field} is a boolean, not an integer", transient=False)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    else:
        raise FeedError(source, f"{field} is not an integer: {value!r}", transient=False)
    if number < 0:
        raise FeedError(source, f"{field} is negative: {value!r}", transient=False)
    return number


def _timestamp(value: Any, field: str, source: str) -> float:
    """POSIX seconds from epoch seconds (or milliseconds) or an ISO 8601 string."""
    if isinstance(value, str) and not _looks_numeric(value):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise FeedError(source, f"{field} is not a time: {value!r}", transient=False) from None
        if when.tzinfo is None:  # no zone given: read it as UTC, as the APIs used here do
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    seconds = _positive(value, field, source)
    return seconds / 1000 if seconds > 1e11 else seconds  # 1e11 s is the year 5138: it is ms


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _observed_at(when: float, now: float, field: str, source: str) -> float:
    """When a value applies, refusing one from the future beyond CLOCK_SKEW_S."""
    if when > now + CLOCK_SKEW_S:
        raise FeedError(source, f"{field} is {when - now:.0f} s in the future", transient=False)
    return min(when, now)


def _ttl(ttl_s: float) -> float:
    if not (ttl_s > 0):  # also refuses NaN
        raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
    return float(ttl_s)


# --- HTTP sources -----------------------------------------------------------------------------


class _HttpSource(Source):
    """A hashprice source behind one base URL, fetched through a Fetcher."""

    kind = QuoteKind.HASHPRICE

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient,
        name: str,
        ttl_s: float,
        timeout_s: float,
        attempts: int,
        min_interval_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.ttl_s = _ttl(ttl_s)
        self.fetcher = Fetcher(
            source=name,
            client=client,
            timeout_s=timeout_s,
            attempts=attempts,
            min_interval_s=min_interval_s,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _quote(self, value: float, observed_at: float, detail: str) -> Quote:
        return Quote(
            kind=QuoteKind.HASHPRICE,
            value=value,
            unit=UNIT,
            source=self.name,
            observed_at=observed_at,
            ttl_s=self.ttl_s,
            detail=detail,
        )

    def _error(self, path: str, exc: FeedError) -> FeedError:
        """The same error, saying which endpoint gave it."""
        return FeedError(
            self.name,
            f"{path}: {exc.problem}",
            retry_after_s=exc.retry_after_s,
            transient=exc.transient,
        )

    async def _get_json(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        try:
            return await self.fetcher.get_json(self._url(path), params, headers)
        except FeedError as exc:
            raise self._error(path, exc) from None

    async def _get_text(self, path: str) -> tuple[str, str]:
        """The reply's text and content type."""
        try:
            resp = await self.fetcher.get(self._url(path))
        except FeedError as exc:
            raise self._error(path, exc) from None
        try:
            return resp.text, resp.headers.get("content-type", "")
        except UnicodeDecodeError:
            raise FeedError(self.name, f"{path}: reply is not text", transient=False) from None


# --- mempool.space ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MempoolFees:
    """Mean fees per block over a reward-stats window."""

    btc_per_block: float
    blocks: int
    start_block: int
    end_block: int


def _mempool_difficulty(payload: Any, source: str) -> float:
    """``currentDifficulty``; else the last point of the ``difficulty`` series."""
    obj = _mapping(payload, MEMPOOL_PATHS.hashrate, source)
    if "currentDifficulty" in obj:
        raw = obj["currentDifficulty"]
        field = "currentDifficulty"
    else:
        series = obj.get("difficulty")
        if not isinstance(series, list) or not series:
            raise FeedError(
                source,
                "no difficulty: currentDifficulty missing and the difficulty series is empty",
                transient=False,
            )
        raw = need(series, -1, "difficulty", source=source)
        field = "difficulty[-1].difficulty"
    difficulty = _positive(raw, field, source)
    return _in_range(difficulty, PLAUSIBLE_DIFFICULTY, "difficulty", source)


def _mempool_fees(payload: Any, source: str) -> MempoolFees:
    """Mean fees per block in BTC over startBlock..endBlock (which need not be 144 blocks)."""
    obj = _mapping(payload, MEMPOOL_PATHS.reward_stats, source)
    start = _int_field(need(obj, "startBlock", source=source), "startBlock", source)
    end = _int_field(need(obj, "endBlock", source=source), "endBlock", source)
    if end < start:
        raise FeedError(
            source, f"empty block range: endBlock {end} < startBlock {start}", transient=False
        )
    total_fee = finite(need(obj, "totalFee", source=source), "totalFee", source)
    if total_fee < 0:
        raise FeedError(source, f"negative fees: totalFee {obj['totalFee']!r}", transient=False)
    blocks = end - start + 1
    btc_per_block = total_fee / blocks / SATS_PER_BTC
    if btc_per_block > MAX_FEES_BTC_PER_BLOCK:
        raise FeedError(
            source,
            f"implausible fees {btc_per_block:g} BTC/block (expected <= "
            f"{MAX_FEES_BTC_PER_BLOCK:g}; is totalFee in sats?)",
            transient=False,
        )
    if "totalReward" in obj:
        _check_reward_subsidy(obj, total_fee, start, end, source)
    return MempoolFees(btc_per_block, blocks, start, end)


def _check_reward_subsidy(
    obj: Mapping[str, Any], total_fee: float, start: int, end: int, source: str
) -> None:
    """totalReward − totalFee must be the subsidy of those blocks: catches amounts not in sats."""
    total_reward = finite(obj["totalReward"], "totalReward", source)
    blocks = end - start + 1
    implied_sats = (total_reward - total_fee) / blocks
    low = block_subsidy_sats(min(end, MAX_BLOCK_HEIGHT)) * 0.99  # a miner may claim a bit less
    high = block_subsidy_sats(min(start, MAX_BLOCK_HEIGHT)) * 1.001 + 1
    if not low <= implied_sats <= high:
        raise FeedError(
            source,
            f"reward-stats inconsistent: totalReward - totalFee is "
            f"{implied_sats / SATS_PER_BTC:g} BTC per block, but the subsidy of blocks "
            f"{start}..{end} is {block_subsidy_btc(min(end, MAX_BLOCK_HEIGHT)):g} BTC "
            "(are both amounts in sats?)",
            transient=False,
        )


def _mempool_price(payload: Any, source: str) -> tuple[float, float]:
    """BTC price in USD and the POSIX time it applies."""
    obj = _mapping(payload, MEMPOOL_PATHS.prices, source)
    _check_units(obj, {"currency": ("USD",)}, source)
    btc_usd = _positive(need(obj, "USD", source=source), "USD", source)
    _in_range(btc_usd, PLAUSIBLE_BTC_USD, "BTC price USD", source)
    when = _timestamp(need(obj, "time", source=source), "time", source)
    return btc_usd, when


def _tip_height(text: str, content_type: str, source: str) -> int:
    body = text.strip()
    if not body.isdigit():
        kind = "an HTML page" if "html" in content_type or body.startswith("<") else repr(body[:60])
        raise FeedError(source, f"tip height is not an integer: {kind}", transient=False)
    height = int(body)
    if height > MAX_BLOCK_HEIGHT:
        raise FeedError(source, f"implausible block height {height}", transient=False)
    return height


def mempool_detail(
    difficulty: float, fees: MempoolFees, btc_usd: float, subsidy_btc: float, height: int
) -> str:
    """The inputs of a computed hashprice, for people: what the number was made of."""
    return (
        f"difficulty {difficulty / 1e12:.2f} T, fees {fees.btc_per_block:.4f} BTC/block "
        f"({fees.blocks} blocks), BTC ${btc_usd:,.0f}, subsidy {subsidy_btc:g} "
        f"(height {height:,})"
    )


async def _first_error(
    *coros: Coroutine[Any, Any, Any],
) -> list[Any]:
    """Run ``coros`` concurrently; on the first FeedError cancel the rest and raise it."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coro) for coro in coros]
    except BaseExceptionGroup as errors:
        raise _feed_error_in(errors) from None
    return [task.result() for task in tasks]


def _feed_error_in(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in errors.exceptions:
        if isinstance(exc, FeedError):
            return exc
    return errors


class MempoolHashprice(_HttpSource):
    """Hashprice computed from a mempool.space-compatible API (mempool.space or your own node).

    Difficulty from ``currentDifficulty``, mean fees per block over the reward-stats window
    (block count from startBlock..endBlock), BTC price in USD, and the subsidy at the tip height;
    ``observed_at`` is the price's ``time``. Four GETs per fetch, made concurrently.
    """

    def __init__(
        self,
        base_url: str = "https://mempool.space",
        *,
        client: httpx.AsyncClient,
        name: str = "mempool",
        ttl_s: float = DEFAULT_TTL_S,
        timeout_s: float = 10.0,
        attempts: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # min_interval_s 0: one fetch is four calls through the same Fetcher; how often the
        # source is polled is the scheduler's business.
        super().__init__(
            base_url,
            client=client,
            name=name,
            ttl_s=ttl_s,
            timeout_s=timeout_s,
            attempts=attempts,
            min_interval_s=0.0,
            clock=clock,
        )
        self.paths = MEMPOOL_PATHS

    async def fetch(self, now: float) -> Quote:
        """The hashprice now, from the four mempool endpoints; FeedError on any doubt."""
        hashrate, rewards, prices, (tip, tip_type) = await _first_error(
            self._get_json(self.paths.hashrate),
            self._get_json(self.paths.reward_stats),
            self._get_json(self.paths.prices),
            self._get_text(self.paths.tip_height),
        )
        difficulty = _mempool_difficulty(hashrate, self.name)
        fees = _mempool_fees(rewards, self.name)
        btc_usd, price_time = _mempool_price(prices, self.name)
        height = _tip_height(tip, tip_type, self.name)
        subsidy = block_subsidy_btc(height)
        value = hashprice_usd_per_ph_day(difficulty, btc_usd, subsidy, fees.btc_per_block)
        check_hashprice(value, self.name, "computed hashprice")
        observed_at = _observed_at(price_time, now, "prices time", self.name)
        detail = mempool_detail(difficulty, fees, btc_usd, subsidy, height)
        return self._quote(value, observed_at, detail)


# --- Braiins Insights -------------------------------------------------------------------------


class BraiinsInsights(_HttpSource):
    """Braiins Insights ``/v1.0/hashrate-stats``: ``hash_price`` is USD per TH/s per day, so the
    quote is 1,000 × that. The reply has no time; ``observed_at`` is ``now``."""

    def __init__(
        self,
        base_url: str = "https://insights.braiins.com/api",
        *,
        client: httpx.AsyncClient,
        name: str = "braiins",
        ttl_s: float = DEFAULT_TTL_S,
        timeout_s: float = 10.0,
        attempts: int = 3,
        min_interval_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            base_url,
            client=client,
            name=name,
            ttl_s=ttl_s,
            timeout_s=timeout_s,
            attempts=attempts,
            min_interval_s=min_interval_s,
            clock=clock,
        )

    async def fetch(self, now: float) -> Quote:
        """Braiins' hashprice now, in USD/PH/day; FeedError on any doubt."""
        obj = _mapping(await self._get_json(BRAIINS_PATH), BRAIINS_PATH, self.name)
        _check_units(obj, {"currency": ("USD",), "unit": ("USD/TH/DAY", "USD/TH/S/DAY")}, self.name)
        per_th = _positive(need(obj, "hash_price", source=self.name), "hash_price", self.name)
        value = check_hashprice(
            per_th * 1000,
            self.name,
            "hash_price × 1000",
            _braiins_hint(per_th),
        )
        detail = f"Braiins Insights hash_price {per_th:g} USD/TH/day"
        if "avg_fees_per_block" in obj:
            fees = finite(obj["avg_fees_per_block"], "avg_fees_per_block", self.name)
            detail += f", fees {fees:.4f} BTC/block"
        return self._quote(value, now, detail)


def _braiins_hint(per_th: float) -> str:
    if _plausible(per_th):
        return " - hash_price looks like USD per PH/s per day already, not per TH/s"
    return ""


# --- Luxor Hashrate Index ---------------------------------------------------------------------


class LuxorHashprice(_HttpSource):
    """Luxor Hashrate Index ``GET /hashprice/current?hashunit=PHS`` with the key in
    ``X-Hi-Api-Key``.

    Units: the endpoint's required ``hashunit`` parameter (``PHS`` or ``THS``) chooses the hash
    unit, and Hashrate Index quotes hashprice per PH/s per day; we ask for ``PHS``, so
    ``data.priceUSD`` is USD per PH/s per day and ``data.priceBTC`` BTC per PH/s per day. Two
    checks guard that reading: the value must be plausible per PH/s (a per-TH/s figure is 1,000×
    too small), and priceUSD / priceBTC must be a plausible BTC price (both in the same unit).
    ``observed_at`` is ``data.timestamp``. Luxor allows a burst of 20 calls, then one per 15 s.
    """

    def __init__(
        self,
        base_url: str = "https://api.hashrateindex.com/v1/hashrateindex",
        *,
        api_key: SecretStr | str,
        client: httpx.AsyncClient,
        name: str = "luxor",
        ttl_s: float = DEFAULT_TTL_S,
        timeout_s: float = 10.0,
        attempts: int = 3,
        min_interval_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            base_url,
            client=client,
            name=name,
            ttl_s=ttl_s,
            timeout_s=timeout_s,
            attempts=attempts,
            min_interval_s=min_interval_s,
            clock=clock,
        )
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        if not self._api_key.get_secret_value().strip():
            raise ValueError("api_key must not be empty")

    async def fetch(self, now: float) -> Quote:
        """Luxor's current hashprice in USD/PH/day; FeedError on any doubt."""
        payload = await self._get_json(
            LUXOR_PATH,
            params={"hashunit": "PHS"},
            headers={LUXOR_KEY_HEADER: self._api_key.get_secret_value()},
        )
        data = need(payload, "data", source=self.name)
        if isinstance(data, list | dict) and not data:
            raise FeedError(self.name, "empty data in the reply", transient=False)
        data = _mapping(data, "data", self.name)
        _check_units(data, {"hashunit": ("PHS",), "currency": ("USD",)}, self.name)
        value = check_hashprice(need(data, "priceUSD", source=self.name), self.name, "priceUSD")
        detail = f"Hashrate Index {value:.2f} USD/PH/day"
        if data.get("priceBTC") is not None:
            detail += _luxor_btc_check(value, data["priceBTC"], self.name)
        when = _timestamp(need(data, "timestamp", source=self.name), "timestamp", self.name)
        return self._quote(value, _observed_at(when, now, "timestamp", self.name), detail)


def _luxor_btc_check(price_usd: float, price_btc: Any, source: str) -> str:
    """priceUSD / priceBTC is the BTC price both were made with; it must be plausible."""
    per_btc = _positive(price_btc, "priceBTC", source)
    implied = price_usd / per_btc
    _in_range(
        implied,
        PLAUSIBLE_BTC_USD,
        "BTC price implied by priceUSD/priceBTC",
        source,
        " - priceUSD and priceBTC are not in the same unit",
    )
    return f" ({per_btc:.8f} BTC/PH/day, BTC ${implied:,.0f})"


# --- fixed and pushed -------------------------------------------------------------------------


class FixedHashprice(Source):
    """A constant hashprice from configuration: never stale (``ttl_s`` infinite by default),
    ``observed_at`` is ``now``. ValueError at construction if the value is not plausible."""

    kind = QuoteKind.HASHPRICE

    def __init__(self, value: float, *, name: str = "fixed", ttl_s: float = math.inf) -> None:
        try:
            self.value = check_hashprice(value, name, "fixed hashprice")
        except FeedError as exc:
            raise ValueError(str(exc)) from None
        self.name = name
        self.ttl_s = _ttl(ttl_s)

    async def fetch(self, now: float) -> Quote:
        """The configured value, observed ``now``."""
        return Quote(
            kind=QuoteKind.HASHPRICE,
            value=self.value,
            unit=UNIT,
            source=self.name,
            observed_at=now,
            ttl_s=self.ttl_s,
            detail="fixed in configuration",
        )


class PushedHashprice(Source):
    """Holds the last hashprice pushed to it (e.g. by the MQTT bridge) and returns it.

    ``push`` applies the same checks as the HTTP sources and keeps the previous value when a
    push is refused. ``fetch`` raises FeedError until something has been pushed.
    """

    kind = QuoteKind.HASHPRICE

    def __init__(self, *, name: str = "pushed", ttl_s: float = PUSHED_TTL_S) -> None:
        self.name = name
        self.ttl_s = _ttl(ttl_s)
        self._last: Quote | None = None

    def push(self, value: float, observed_at: float, source: str, unit: str = UNIT) -> Quote:
        """Take ``value`` (USD/PH/day, true at ``observed_at``) from ``source``; returns the quote
        it will serve. FeedError (naming the problem) and no change if anything is off."""
        if unit.replace(" ", "").upper() != UNIT.upper():
            raise FeedError(self.name, f"wrong unit: {unit!r}, expected {UNIT}", transient=False)
        if not isinstance(source, str) or not source.strip() or len(source) > 100:
            raise FeedError(self.name, f"bad source name {source!r}", transient=False)
        checked = check_hashprice(value, self.name, "pushed hashprice")
        when = _positive(observed_at, "observed_at", self.name)
        self._last = Quote(
            kind=QuoteKind.HASHPRICE,
            value=checked,
            unit=UNIT,
            source=self.name,
            observed_at=when,
            ttl_s=self.ttl_s,
            detail=f"pushed by {source.strip()}",
        )
        return self._last

    async def fetch(self, now: float) -> Quote:
        """The last pushed quote (stale or not: the caller judges age); FeedError if none yet
        or if it claims a time in the future."""
        if self._last is None:
            raise FeedError(self.name, "no hashprice pushed yet")
        _observed_at(self._last.observed_at, now, "pushed observed_at", self.name)
        return self._last
