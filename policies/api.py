"""The policy plugin API: what a policy sees, and what it returns.

A policy is a pure function of (market, fleet, site, now) returning an Intent per rig with a
human-readable reason. No I/O, no clock reads (``now`` is given), no randomness without a seed.
Guards (``policies/guards.py``) then turn intents into desired states; the reconciler commands
only the differences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

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


@dataclass(frozen=True, slots=True)
class Intent:
    """What a policy wants for one rig, and why (shown to operators and in the audit log)."""

    rig_id: RigId
    mode: Mode
    reason: str
    policy: str
    power_limit_w: int | None = None


@runtime_checkable
class Policy(Protocol):
    """A policy plugin. Register it in the ``rigpilot.policies`` entry-point group."""

    name: str

    def decide(
        self, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
    ) -> Mapping[RigId, Intent]:
        """An intent for each rig it has an opinion on; rigs left out keep their state."""
        ...
