"""How the cohort replay shows the power-up ramp a cohort of identical rigs (backtest/cohorts.py).

The ramp (``policies/guards/ramp.py``) grants rises in its order, each a start slot, while its
kW budget lasts, and holds everything from its first misfit on. Rigs alike differ in that order
only by their own jitter, so a waiting cohort is shown as its members first in the ramp's order,
each under its rig id, as in the plain replay; the rigs not shown stand behind the last one
shown, which must be held. This module says which members come first (:class:`DrawOrder`: the
members kept in the order of their own draws for the hour, the tick's shift a rotation found by
bisection) and how many are worth showing (:func:`reach`: an upper estimate from the ramp's own
order and costs; the replay checks the guards' answer and shows more when it was not enough).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from policies.api import MarketView, RigView
from policies.guards import GuardConfig, RampGrant, Setting
from policies.guards.ramp import (
    JITTER_SPAN,
    jitter_hour,
    kw_budget,
    make_rise,
    prune_log,
    rig_draws,
    rise_head,
    start_slots,
)
from policies.guards.rig import SOURCE_POLICY, Decision
from policies.values import RigId

_EPS_KW = 1e-6  # more generous than the ramp's own tolerance: an estimate errs upwards

_RIG_IDS: list[RigId] = []
_RIG_INDEX: dict[RigId, int] = {}


def rig_id(index: int) -> RigId:
    """The id the rig at ``index`` in the fleet is shown to the policies and guards under,
    whatever cohort it is in (the ramp's jitter is drawn by rig id)."""
    while len(_RIG_IDS) <= index:
        n = len(_RIG_IDS)
        _RIG_IDS.append(f"rig{n}")
        _RIG_INDEX[_RIG_IDS[n]] = n
    return _RIG_IDS[index]


def rig_ids(members: Sequence[int]) -> list[RigId]:
    """The ids of ``members`` (sorted rig indices), in that order."""
    rig_id(members[-1])  # sorted: every id is then known
    return [_RIG_IDS[i] for i in members]


def rig_index(rid: RigId) -> int:
    """The fleet index of the rig shown as ``rid`` (one :func:`rig_id` gave)."""
    return _RIG_INDEX[rid]


@dataclass(frozen=True, slots=True)
class Room:
    """What the ramp has left at the start of a tick's guard step, as it counts it: start
    slots, kW in the minute, and whether the minute was quiet (a rig larger than the budget
    may go alone)."""

    slots: int
    kw_left: float
    quiet: bool


NO_ROOM = Room(0, 0.0, False)
"""The room of a guard step with no rise: no cohort is shown rig by rig."""


def room_at(log: Sequence[RampGrant], config: GuardConfig, now: float) -> Room:
    """The ramp's budgets at ``now`` before this tick's grants, from its memory ``log``."""
    kept = prune_log(log, now, config)
    kw_left, quiet = kw_budget(kept, config, now)
    return Room(start_slots(kept, config, now)[1], kw_left, quiet)


class DrawOrder:
    """Cohorts' members in the order of their own jitter draws for the hour (then by id): each
    class's rigs sorted once an hour when one of its cohorts waits, and a cohort's members
    picked from that order, kept while its members (the same list) and the hour are the same."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.hour: int | None = None
        self.classes: dict[tuple[int, int], tuple[list[int], list[RigId], list[int]]] = {}
        self.kept: dict[str, tuple[list[int], list[int], list[RigId]]] = {}

    def first(
        self, uid: str, members: list[int], rigs: range, n: int, now: float, shift: int
    ) -> list[RigId]:
        """The ids of the first ``n`` of ``members`` (cohort ``uid``, sorted rig indices, most
        often all within ``rigs``, its class's) in the ramp's order at ``now`` among rigs
        alike: by (own draw + ``shift``) mod ``JITTER_SPAN``, a rotation of the order by own
        draw, starting at the first whose own draw is ``>= SPAN - shift``."""
        draws, ids = self._sorted(uid, members, rigs, now)
        k = bisect.bisect_left(draws, JITTER_SPAN - shift)
        out = ids[k : k + n]
        if len(out) < n:
            out += ids[: n - len(out)]
        return out

    def _sorted(
        self, uid: str, members: list[int], rigs: range, now: float
    ) -> tuple[list[int], list[RigId]]:
        hour = jitter_hour(now)
        if hour != self.hour:
            self.hour = hour
            self.classes.clear()
            self.kept.clear()
        kept = self.kept.get(uid)
        if kept is not None and kept[0] is members:
            return kept[1], kept[2]
        if rigs.start <= members[0] and members[-1] < rigs.stop:
            whole = self.classes.get((rigs.start, rigs.stop))
            if whole is None:
                whole = self.classes[rigs.start, rigs.stop] = _placed(self.seed, hour, rigs)
            class_draws, class_ids, place = whole
            start = rigs.start
            at = sorted([place[i - start] for i in members])  # the members' places in order
            draws = [class_draws[k] for k in at]
            order = [class_ids[k] for k in at]
        else:  # merged with rigs of another class alike (the same label): sorted on their own
            draws, order = _by_own_draw(self.seed, hour, members)
        self.kept[uid] = (members, draws, order)
        return draws, order


def _placed(seed: int, hour: int, rigs: range) -> tuple[list[int], list[RigId], list[int]]:
    """:func:`_by_own_draw` of a class's ``rigs``, with each rig's place in that order (by its
    position in ``rigs``)."""
    draws, ids, order = _ordered(seed, hour, rigs)
    place = [0] * len(rigs)
    for k, at in enumerate(order):
        place[at] = k
    return draws, ids, place


def _by_own_draw(seed: int, hour: int, rigs: Sequence[int]) -> tuple[list[int], list[RigId]]:
    """(own draws, ids) of ``rigs`` for ``hour``, sorted by draw, then id."""
    draws, ids, _ = _ordered(seed, hour, rigs)
    return draws, ids


def _ordered(seed: int, hour: int, rigs: Sequence[int]) -> tuple[list[int], list[RigId], list[int]]:
    """(own draws, ids, positions in ``rigs``) of ``rigs`` for ``hour``, sorted by draw, then
    id."""
    ids = rig_ids(rigs)
    own = list(map(rig_draws(seed, hour), ids))
    order = by_draw_then_id(own, ids)
    return [own[k] for k in order], [ids[k] for k in order], order


def by_draw_then_id(draws: list[int], ids: list[RigId]) -> list[int]:
    """The positions of ``draws`` (and ``ids``, alike) sorted by draw, then id: by draw alone
    unless two draws are equal (53-bit draws: next to never)."""
    if len(set(draws)) == len(draws):
        return sorted(range(len(draws)), key=draws.__getitem__)
    return sorted(range(len(draws)), key=lambda k: (draws[k], ids[k]))


@dataclass(frozen=True, slots=True)
class Rising:
    """A cohort of ``m`` rigs whose policy asks to raise them from ``hold`` to ``wanted``."""

    uid: str
    m: int
    view: RigView
    hold: Setting
    wanted: Setting
    policy: str


def reach(
    rising: Sequence[Rising], room: Room, market: MarketView, config: GuardConfig
) -> dict[str, int]:
    """How many of each cohort's rigs to show the ramp: at most those it could grant, plus one
    to be held. The ramp goes through the rises by its order's head (override, known score,
    score step: ``rise_head``), then the jitter; a cohort can take what the slots and kW left
    before its head allow (those of its near-ties too: they interleave), and the heads after
    it what is left once all before them went. Rises not in ``rising`` are left out (they only
    use the budgets up), and each rise costs the kW of the setting asked for: the guards may
    ask for less, which the caller checks in their answer."""
    heads = []
    for r in rising:
        decision = Decision(r.wanted, r.policy, "", SOURCE_POLICY)
        rise = make_rise(r.view, r.hold, decision, market, config)
        heads.append((rise_head(rise, config), r, rise.kw))
    heads.sort(key=lambda h: h[0])
    kw_left, slots, alone = room.kw_left, room.slots, room.quiet
    out: dict[str, int] = {}
    for _, group in itertools.groupby(heads, key=lambda h: h[0]):
        tied = list(group)
        for _, r, kw in tied:
            fit = slots if kw <= 0.0 else max(0, math.floor((kw_left + _EPS_KW) / kw))
            if alone:
                fit = max(fit, 1)
            out[r.uid] = min(r.m, min(fit, slots) + 1)
        # All of them granted, or the ramp stops at a misfit among them and holds the rest.
        kw_left -= sum(r.m * kw for _, r, kw in tied)
        slots = max(0, slots - sum(r.m for _, r, _ in tied))
        alone = False
    return out
