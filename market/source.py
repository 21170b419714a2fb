"""The interface every market source implements."""

from __future__ import annotations

import abc

from policies.values import Quote, QuoteKind


class Source(abc.ABC):
    """Produces quotes of one kind. ``fetch`` raises FeedError (market.fetch) with a
    message naming the problem; it never returns a value it is not sure of."""

    kind: QuoteKind
    name: str
    ttl_s: float

    @abc.abstractmethod
    async def fetch(self, now: float) -> Quote:
        """The source's current value; ``now`` is POSIX seconds from the caller's clock."""
