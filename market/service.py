"""The market: each input from its sources in priority order, checked, kept with its age.

- Sources of one kind are tried in the configured order; the first good value wins.
- A failing source never replaces a good value: the last good quote is kept until its TTL runs
  out, and is then reported stale (and, per the safety invariants, drives no change).
- A value that jumps implausibly far from the last good one (``max_jump``, e.g. hashprice
  ±40 % in one refresh) is held back until a second reading confirms it, so one bad payload
  cannot swing the fleet; power prices legitimately spike a hundredfold, so they have no
  jump limit by default, only the sources' own plausibility bounds.
- Each source's failure is logged once when it starts and once when it recovers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from market.fetch import FeedError
from market.source import Source
from policies.values import Quote, QuoteKind

log = structlog.get_logger("market")

DEFAULT_MAX_JUMP: Mapping[QuoteKind, float | None] = {
    QuoteKind.HASHPRICE: 0.4,
    QuoteKind.POWER_PRICE: None,
}


@dataclass
class SourceStatus:
    name: str
    kind: QuoteKind
    ok: bool | None = None  # None: not tried yet
    error: str = ""
    last_success: float | None = None
    last_value: float | None = None


@dataclass(frozen=True, slots=True)
class MarketState:
    """What the market knows at ``now``: the best quote per kind (maybe stale) and why."""

    now: float
    quotes: Mapping[QuoteKind, Quote]
    sources: Sequence[SourceStatus]
    held_back: Mapping[QuoteKind, str]

    def quote(self, kind: QuoteKind) -> Quote | None:
        return self.quotes.get(kind)

    def fresh(self, kind: QuoteKind) -> Quote | None:
        """The quote of ``kind`` if it exists and is within its TTL."""
        q = self.quotes.get(kind)
        return q if q is not None and not q.stale(self.now) else None


@dataclass
class Market:
    """Refreshes quotes from ordered sources and keeps the last good value of each kind."""

    sources: Mapping[QuoteKind, Sequence[Source]]
    max_jump: Mapping[QuoteKind, float | None] = field(
        default_factory=lambda: dict(DEFAULT_MAX_JUMP)
    )
    good: dict[QuoteKind, Quote] = field(default_factory=dict)
    pending: dict[QuoteKind, Quote] = field(default_factory=dict)
    held: dict[QuoteKind, str] = field(default_factory=dict)
    status: dict[str, SourceStatus] = field(default_factory=dict)
    manual: dict[QuoteKind, Quote] = field(default_factory=dict)
    """Inputs an operator set by hand: they outrank every source until their TTL runs out."""

    def __post_init__(self) -> None:
        for kind, sources in self.sources.items():
            for source in sources:
                self.status[source.name] = SourceStatus(source.name, kind)

    async def refresh(self, now: float) -> MarketState:
        """Ask the sources (kinds in parallel, each kind's sources in order) and update."""
        await asyncio.gather(*(self._refresh_kind(kind, now) for kind in self.sources))
        return self.state(now)

    def state(self, now: float) -> MarketState:
        quotes = dict(self.good)
        for kind, quote in list(self.manual.items()):
            if quote.stale(now):
                del self.manual[kind]
                log.info("market.manual_expired", kind=kind.value, value=quote.value)
            else:
                quotes[kind] = quote
        return MarketState(now, quotes, list(self.status.values()), dict(self.held))

    def set_manual(self, quote: Quote) -> None:
        """Use ``quote`` (already checked) instead of the sources until it goes stale."""
        self.manual[quote.kind] = quote
        log.info("market.manual_set", kind=quote.kind.value, value=quote.value, by=quote.detail)

    def clear_manual(self, kind: QuoteKind) -> Quote | None:
        """Drop the hand-set ``kind``; returns it (None if there was none)."""
        quote = self.manual.pop(kind, None)
        if quote is not None:
            log.info("market.manual_cleared", kind=kind.value)
        return quote

    async def _refresh_kind(self, kind: QuoteKind, now: float) -> None:
        for source in self.sources[kind]:
            status = self.status[source.name]
            try:
                quote = await source.fetch(now)
            except FeedError as exc:
                self._failed(status, exc.problem)
                continue
            except Exception as exc:  # a parser bug must not take the market down
                log.exception("feed.crashed", source=source.name)
                self._failed(status, f"{type(exc).__name__}: {exc}")
                continue
            if status.ok is False:
                log.info("feed.recovered", source=source.name, value=quote.value)
            status.ok, status.error = True, ""
            status.last_success, status.last_value = now, quote.value
            self._offer(kind, quote, now)
            return

    def _failed(self, status: SourceStatus, problem: str) -> None:
        if status.ok is not False or status.error != problem:
            log.warning("feed.failed", source=status.name, problem=problem)
        status.ok, status.error = False, problem

    def _offer(self, kind: QuoteKind, quote: Quote, now: float) -> None:
        """Accept ``quote`` unless it jumps implausibly from a fresh good value unconfirmed."""
        limit = self.max_jump.get(kind)
        last = self.good.get(kind)
        if limit is not None and last is not None and not last.stale(now) and last.value:
            change = abs(quote.value / last.value - 1.0)
            if change > limit:
                pending = self.pending.get(kind)
                if pending is None or abs(pending.value / quote.value - 1.0) > 0.05:
                    self.pending[kind] = quote
                    self.held[kind] = (
                        f"{quote.source} says {quote.value:.4g} {quote.unit}, "
                        f"{change:.0%} from {last.value:.4g}: held until a second reading "
                        "confirms it"
                    )
                    log.warning(
                        "market.jump_held",
                        kind=kind.value,
                        value=quote.value,
                        last=last.value,
                        source=quote.source,
                    )
                    return
                log.info("market.jump_confirmed", kind=kind.value, value=quote.value)
        self.pending.pop(kind, None)
        self.held.pop(kind, None)
        self.good[kind] = quote


async def run_forever(
    market: Market,
    interval_s: float,
    clock: Callable[[], float],
    on_state: Callable[[MarketState], None] | None = None,
) -> None:
    """Refresh every ``interval_s`` seconds until cancelled."""
    while True:
        state = await market.refresh(clock())
        if on_state is not None:
            on_state(state)
        await asyncio.sleep(interval_s)
