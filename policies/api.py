"""The policy plugin API: what a policy sees, and what it returns.

A policy is a pure function of (market, fleet, site, now) returning an Intent per rig with a
human-readable reason. No I/O, no clock reads (``now`` is given), no randomness without a seed.
Guards (``policies/guards.py``) then turn intents into desired states; the reconciler commands
only the differences.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from policies.economics import Economics, ModePoint
from policies.values import Mode, Observation, RigId


@dataclass(frozen=True, slots=True)
class MarketView:
    """The prices a decision may use, already checked for age by the shell.

    A price is None when no fresh quote exists (no source, or older than its TTL): policies
    must not act on it, and the stale-input guard applies the configured fail-safe.
    """

    hashprice_usd_per_ph_day: float | None
    power_price_usd_per_kwh: float | None
    hashprice_source: str = ""
    power_price_source: str = ""


@dataclass(frozen=True, slots=True)
class RigView:
    """One rig as a decision sees it: its latest observation (None when it could not be read
    this cycle), the modes its driver supports, and what it would do in each mode."""

    rig_id: RigId
    observation: Observation | None
    modes: frozenset[Mode]
    points: tuple[ModePoint, ...]  # one per supported mode, sleep included
    group: str = ""  # operator-defined group (row, container, PDU) for overrides and caps
    power_limit_range_w: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Site:
    """Site-wide settings a policy may read."""

    name: str = "site1"
    economics: Economics = field(default_factory=Economics)
    power_cap_kw: float | None = None  # contract limit or a demand-response target
    params: Mapping[str, object] = field(default_factory=dict)  # per-policy settings


LazyReason = tuple[Callable[[Any], str], Any]
"""A reason given lazily: ``(explain, subject)``; the text is ``explain(subject)``, made only
when someone reads it. ``explain`` must be pure (the same subject always gives the same text)
and ``subject`` immutable, so when the text is made does not matter."""


def reason_text(reason: str | LazyReason) -> str:
    """The text of a reason given either way."""
    if isinstance(reason, str):
        return reason
    explain, subject = reason
    return explain(subject)


class HasLazyReason:
    """A value whose ``reason`` may be given lazily (:data:`LazyReason`): formatted on first
    read, then kept. A cache of a pure function of immutable inputs, so invisible."""

    __slots__ = ("_reason",)

    _reason: str | LazyReason

    @property
    def reason(self) -> str:
        """The reason's text (formatted on first read when given lazily, then kept)."""
        reason = self._reason
        if isinstance(reason, str):
            return reason
        explain, subject = reason
        text = explain(subject)
        self._reason = text
        return text

    @property
    def lazy_reason(self) -> str | LazyReason:
        """The reason as given (or as formatted since): pass this on, rather than ``reason``,
        to keep an unread reason unformatted."""
        return self._reason


class Intent(HasLazyReason):
    """What a policy wants for one rig, and why (shown to operators and in the audit log).

    An immutable value (its attributes are ``Final``; do not assign them). ``reason`` is text,
    or a :data:`LazyReason` ``(explain, subject)`` formatted only when ``intent.reason`` is
    first read: a policy deciding for thousands of rigs per tick need not format a reason for
    every rig, since only rigs whose desired state changes reach the audit log. Equality,
    hashing and ``repr`` use the text, so a lazy reason is indistinguishable from a formatted
    one.
    """

    __slots__ = ("mode", "policy", "power_limit_w", "rig_id")

    def __init__(
        self,
        rig_id: RigId,
        mode: Mode,
        reason: str | LazyReason,
        policy: str,
        power_limit_w: int | None = None,
    ) -> None:
        self.rig_id: Final = rig_id
        self.mode: Final = mode
        self._reason = reason
        self.policy: Final = policy
        self.power_limit_w: Final = power_limit_w

    def _key(self) -> tuple[RigId, Mode, str, str, int | None]:
        return (self.rig_id, self.mode, self.reason, self.policy, self.power_limit_w)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Intent)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Intent(rig_id={self.rig_id!r}, mode={self.mode!r}, reason={self.reason!r}, "
            f"policy={self.policy!r}, power_limit_w={self.power_limit_w!r})"
        )


@runtime_checkable
class Policy(Protocol):
    """A policy plugin. Register it in the ``rigpilot.policies`` entry-point group."""

    name: str

    def decide(
        self, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
    ) -> Mapping[RigId, Intent]:
        """An intent for each rig it has an opinion on; rigs left out keep their state."""
        ...


def check_site(policy: Policy, site: Site) -> None:
    """Run the policy's optional ``check(site)``: a policy with settings in ``site.params``
    may define it to raise ValueError naming a setting it cannot use, so that the daemon
    refuses the configuration at start-up, on reload and in ``rigpilot config check`` rather
    than failing every tick. Policies without it accept any site."""
    check = getattr(policy, "check", None)
    if check is not None:
        check(site)
