"""The ``power-cap`` policy: keep the site's total draw at or under ``Site.power_cap_kw``.

The site total counts every rig at what it draws now: its reported (or estimated) watts, else its
mode's point. A rig that could not be read this cycle counts at the most it can draw (its own
highest catalogue point; without points, the highest catalogue point of any rig in the fleet,
never another rig's reading) and is never chosen to shed, since a command to it could not be
confirmed.

Over the cap, load is shed cheapest first: the step (a rig from its current draw down to any of
its lower supported points, e.g. normal -> low, or low -> sleep) losing the least margin per kW
freed. With one price for the site that ordering is the same as TH/s lost per kW freed, so it
holds, and is used, when prices are stale too. When the last step needed could be taken by a
step that frees enough on its own for less loss in total (normal -> low on one rig instead of
sleeping another), that step is taken instead.

Under the cap, rigs that could raise their draw (another policy wanting them higher) are held at
their current mode when the headroom cannot take them at their highest point; headroom goes to
the most efficient rises first. A hold is the rig's current mode, so on its own it changes
nothing, and combined (most restrictive wins) it stops other policies pushing the site over.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from policies.api import Intent, MarketView, RigView, Site
from policies.builtin import mode_label, point_for, supported_points
from policies.economics import Economics, ModePoint, cost_per_day, revenue_usd_per_day
from policies.values import Mode, RigId

NAME = "power-cap"
_EPS_W = 1e-6


class PowerCapPolicy:
    """Sheds the least profitable load until the site is under its cap; holds rises that would
    cross it. No intents when ``site.power_cap_kw`` is None."""

    name = NAME

    def decide(
        self, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
    ) -> dict[RigId, Intent]:
        """Shed and hold intents (see the module docstring); rigs left out may keep their state."""
        if site.power_cap_kw is None:
            return {}
        return plan(fleet, site.power_cap_kw * 1000.0, market, site.economics)


@dataclass(slots=True)
class _State:
    rig: RigView
    power_w: float
    hashrate_ths: float
    label: str
    readable: bool
    version: int = 0


@dataclass(frozen=True, slots=True)
class _Step:
    rig_id: RigId
    version: int
    target: ModePoint
    freed_w: float
    loss: float  # margin lost, USD/day, with fresh prices; TH/s lost without

    @property
    def ratio(self) -> float:
        return self.loss / self.freed_w


def counted_power_w(rig: RigView, fallback_w: float) -> float:
    """What ``power-cap`` counts a rig as drawing now.

    Read rigs: their observed watts, else their observed mode's point, else their highest point.
    Unread rigs: their highest point (conservative), else ``fallback_w``.
    """
    obs = rig.observation
    if obs is not None:
        if obs.power_w is not None:
            return obs.power_w
        current = point_for(rig, obs.mode)
        if current is not None:
            return current.power_w
    return max((p.power_w for p in rig.points), default=fallback_w)


def fleet_fallback_w(fleet: Sequence[RigView]) -> float:
    """The draw assumed for an unread rig without points: the highest catalogue point of any
    rig of ``fleet``. Never a reading: one rig's report must not decide what another counts as."""
    return max((p.power_w for rig in fleet for p in rig.points), default=0.0)


def plan(
    fleet: Sequence[RigView], cap_w: float, market: MarketView, terms: Economics
) -> dict[RigId, Intent]:
    """The ``power-cap`` decision for a cap of ``cap_w`` watts (see the module docstring)."""
    fallback = fleet_fallback_w(fleet)
    states = {rig.rig_id: _state(rig, fallback) for rig in fleet}
    total_w = sum(s.power_w for s in states.values())
    unread_w = sum(s.power_w for s in states.values() if not s.readable)
    prices = _prices(market)
    steps = _shed(states, total_w - cap_w, prices, terms)
    after_w = total_w - sum(s.freed_w for s in steps)

    header = f"power cap {cap_w / 1000:.1f} kW: site at {total_w / 1000:.1f} kW"
    if unread_w > 0:
        header += f" (unread rigs counted at {unread_w / 1000:.1f} kW)"
    intents: dict[RigId, Intent] = {}
    for rig_id, step in _net(steps).items():
        rig = states[rig_id].rig
        obs = rig.observation
        start = mode_label(obs.mode, obs.power_limit_w) if obs is not None else "?"
        loss = f", loses ${step.loss:.2f}/day" if prices is not None else ""
        reason = (
            f"{header}, {after_w / 1000:.1f} kW after shedding; {start} -> "
            f"{step.target.mode.value} frees {step.freed_w / 1000:.2f} kW{loss}"
        )
        intents[rig_id] = Intent(rig_id, step.target.mode, reason, NAME)
    intents.update(_holds(states, set(intents), cap_w - after_w, header))
    return intents


def _state(rig: RigView, fallback_w: float) -> _State:
    obs = rig.observation
    power = counted_power_w(rig, fallback_w)
    if obs is None:
        return _State(rig, power, 0.0, "unread", readable=False)
    hashrate = obs.hashrate_ths if obs.mining else 0.0
    return _State(rig, power, hashrate, mode_label(obs.mode, obs.power_limit_w), readable=True)


def _prices(market: MarketView) -> tuple[float, float] | None:
    hp, price = market.hashprice_usd_per_ph_day, market.power_price_usd_per_kwh
    return None if hp is None or price is None else (hp, price)


def _candidates(state: _State, prices: tuple[float, float] | None, terms: Economics) -> list[_Step]:
    if not state.readable:
        return []
    out = []
    for target in supported_points(state.rig):
        freed = state.power_w - target.power_w
        if freed <= _EPS_W:
            continue
        lost_ths = max(0.0, state.hashrate_ths - target.hashrate_ths)
        if prices is None:
            loss = lost_ths
        else:
            hp, price = prices
            loss = revenue_usd_per_day(lost_ths, hp, terms) - cost_per_day(freed, price, terms)
        out.append(_Step(state.rig.rig_id, state.version, target, freed, loss))
    return out


def _heap_key(step: _Step) -> tuple[float, float, RigId, str]:
    return (step.ratio, -step.freed_w, step.rig_id, step.target.mode.value)


def _shed(
    states: dict[RigId, _State],
    excess_w: float,
    prices: tuple[float, float] | None,
    terms: Economics,
) -> list[_Step]:
    """Steps to take, in order, to bring ``excess_w`` to <= 0 (or as near as possible)."""
    if excess_w <= _EPS_W:
        return []
    states = {k: _copy(s) for k, s in states.items()}
    heap = [(_heap_key(s), s) for st in states.values() for s in _candidates(st, prices, terms)]
    heapq.heapify(heap)
    # No step frees more than the largest first step of any rig: below that, look for one
    # step that finishes the job on its own.
    largest_w = max((s.freed_w for _, s in heap), default=0.0)
    taken: list[_Step] = []
    while excess_w > _EPS_W:
        sufficient = []
        if excess_w <= largest_w + _EPS_W:
            sufficient = [
                s
                for _, s in heap
                if s.version == states[s.rig_id].version and s.freed_w >= excess_w - _EPS_W
            ]
        if sufficient:
            cheapest = min(sufficient, key=lambda s: (s.loss, s.freed_w, s.rig_id))
            if cheapest.loss <= _greedy_loss(states, heap, excess_w, prices, terms):
                taken.append(cheapest)
                break
        step = _pop_live(heap, states)
        if step is None:
            break  # everything that can be shed is
        taken.append(step)
        excess_w -= step.freed_w
        _apply(states, step)
        for s in _candidates(states[step.rig_id], prices, terms):
            heapq.heappush(heap, (_heap_key(s), s))
    return taken


def _pop_live(
    heap: list[tuple[tuple[float, float, RigId, str], _Step]], states: dict[RigId, _State]
) -> _Step | None:
    while heap:
        _, step = heapq.heappop(heap)
        if step.version == states[step.rig_id].version:
            return step
    return None


def _copy(state: _State) -> _State:
    return _State(
        state.rig, state.power_w, state.hashrate_ths, state.label, state.readable, state.version
    )


def _apply(states: dict[RigId, _State], step: _Step) -> None:
    state = states[step.rig_id]
    state.power_w = step.target.power_w
    state.hashrate_ths = min(state.hashrate_ths, step.target.hashrate_ths)
    state.version += 1


def _greedy_loss(
    states: dict[RigId, _State],
    heap: list[tuple[tuple[float, float, RigId, str], _Step]],
    excess_w: float,
    prices: tuple[float, float] | None,
    terms: Economics,
) -> float:
    # The total loss of finishing by cheapest-ratio steps only (inf when that cannot finish).
    states = {k: _copy(s) for k, s in states.items()}
    heap = list(heap)
    loss = 0.0
    while excess_w > _EPS_W:
        step = _pop_live(heap, states)
        if step is None:
            return math.inf
        loss += step.loss
        excess_w -= step.freed_w
        _apply(states, step)
        for s in _candidates(states[step.rig_id], prices, terms):
            heapq.heappush(heap, (_heap_key(s), s))
    return loss


def _net(steps: list[_Step]) -> dict[RigId, _Step]:
    # A rig stepped twice (normal -> low -> sleep) ends at its last target; freed and loss add up.
    net: dict[RigId, _Step] = {}
    for step in steps:
        before = net.get(step.rig_id)
        net[step.rig_id] = (
            step
            if before is None
            else _Step(
                step.rig_id,
                step.version,
                step.target,
                before.freed_w + step.freed_w,
                before.loss + step.loss,
            )
        )
    return net


def _holds(
    states: dict[RigId, _State], shed: set[RigId], headroom_w: float, header: str
) -> dict[RigId, Intent]:
    rises: list[tuple[float, RigId, ModePoint, _State]] = []
    for rig_id, state in states.items():
        if rig_id in shed or not state.readable:
            continue
        top = max(supported_points(state.rig), key=lambda p: p.power_w, default=None)
        if top is None or top.power_w - state.power_w <= _EPS_W:
            continue
        rise_w = top.power_w - state.power_w
        gain = max(0.0, top.hashrate_ths - state.hashrate_ths) / rise_w
        rises.append((-gain, rig_id, top, state))
    holds: dict[RigId, Intent] = {}
    for _, rig_id, top, state in sorted(rises, key=lambda r: (r[0], r[1])):
        rise_w = top.power_w - state.power_w
        obs = state.rig.observation
        holdable = obs is not None and obs.mode is not Mode.UNKNOWN
        if obs is not None and obs.mode is Mode.LIMIT and obs.power_limit_w is None:
            holdable = False
        if rise_w <= headroom_w + _EPS_W or obs is None or not holdable:
            headroom_w -= rise_w  # free to rise (or cannot be held): its rise is reserved
            continue
        reason = (
            f"{header}; held at {state.label}: {top.mode.value} would add "
            f"{rise_w / 1000:.2f} kW, {max(0.0, headroom_w) / 1000:.2f} kW free"
        )
        limit = obs.power_limit_w if obs.mode is Mode.LIMIT else None
        holds[rig_id] = Intent(rig_id, obs.mode, reason, NAME, limit)
    return holds
