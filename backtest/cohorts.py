"""The cohort optimiser: the live decision path (policies/tick.py) over cohorts of identical rigs.

Per tick, what ``daemon/loop.py`` does with what it observed: build a ``MarketView`` and a
``RigView`` per cohort (observation from the physics, mode points from
``daemon.rig_economics.mode_points``), ask every configured policy through
:func:`policies.tick.ask`, combine them (:func:`policies.tick.combined`: a policy that fails
holds the fleet, as live), run the tick's guard stage (:func:`policies.tick.guard`) with the
guards' memory carried from the last tick, and hand the desired modes to the rigs (here: the
physics, which then sleeps within seconds or boots and ramps).

Two things make a year of 1,000 rigs cheap without changing a decision (docs/backtest.md):

- **Cohorts.** Rigs of one class (model, health, ambient, group, modes) in the same physical
  state with the same guard memory are indistinguishable to pure policies and guards, so one
  ``RigView`` stands for all of them. A cohort splits only when the guards treat its members
  differently (the power-up ramp lets some go first), and cohorts merge again once they are
  indistinguishable. Policies that look at the whole fleet (``power-cap``, plugins) see one
  view per rig.
- **Skipping.** A tick is run when the market row changes and then every ``tick_s`` while
  anything may change with time: a rig in transition or thermally latched, or held back by a
  guard whose hold may end (when it ends, as the guards say: ``held_until``). Per-rig,
  clock-free policies (``breakeven``) are asked about every cohort when the prices changed and
  about the cohorts whose observation changed otherwise; the guards are not called for a
  cohort whose answer they say is known (``policies/guards/horizon.py``: ``keeps``, nothing
  asks it to change; ``held_again``, the same inputs held it back before and the hold lasts).
  ``exact=True`` calls everything every ``tick_s``; ``plain=True`` also shows every rig as its
  own cohort (the plain replay). The tests check that all three give the same results, with
  ramps that bind too: the ramp's jitter is each rig's own draw, so a cohort waiting for it
  shows only its members first in the ramp's order, as many as the ramp could grant plus one
  (``backtest/ramp_view.py``; docs/backtest.md).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from backtest.classes import ProgressFn, RampFn, ReplayConfig
from backtest.frozen import maker, replacer
from backtest.inputs import iso_utc
from backtest.ledger import Strategy, Unit
from backtest.physics import state_key
from backtest.ramp_view import (
    NO_ROOM,
    DrawOrder,
    Rising,
    Room,
    reach,
    rig_id,
    rig_ids,
    rig_index,
    room_at,
)
from daemon.rig_economics import Ratios, mode_points, rig_ratios
from policies.api import Intent, MarketView, Policy, RigView
from policies.economics import ModePoint
from policies.guards import (
    RAMP,
    Desired,
    GuardState,
    RampGrant,
    RigGuardState,
    Setting,
)
from policies.guards.horizon import held_again, held_until, keeps
from policies.guards.power import is_raise
from policies.guards.ramp import jitter_shift, new_grants
from policies.guards.rig import dwell_holds
from policies.tick import PolicyFailure, ask, combined, guard
from policies.timing import STOCK, Transition
from policies.transition import settling_until
from policies.values import Identity, Make, Mode, Observation, PowerSource, RigId

PER_RIG_POLICIES = frozenset({"breakeven", "schedule"})
"""Policies whose intent for a rig depends on that rig's view alone (docs/policies.md)."""
CLOCK_FREE_POLICIES = frozenset({"breakeven", "power-cap"})
"""Policies documented not to read ``now``; any other is called every ``tick_s``."""
_POINTS_MAX = 100_000  # mode points kept by their inputs (PolicyRun._points)


@dataclass(frozen=True, slots=True)
class PolicyFailed:
    """A policy that failed during the replay (raised, or answered with something that is not
    a mapping of Intents): when first, with what error, and at how many ticks. As live
    (policies/tick.py), each of those ticks held the fleet: no policy moved any rig."""

    policy: str
    at: float
    error: str
    ticks: int = 1

    def __str__(self) -> str:
        again = f"; {self.ticks:,} ticks failed, the fleet held at each" if self.ticks > 1 else ""
        return (
            f"policy {self.policy!r} failed at {iso_utc(self.at)} in the replay: {self.error} "
            f"(the fleet held, as live{again})"
        )


def _retarget(intent: Intent, rig_id: str) -> Intent:
    """``intent`` for another rig of the same cohort (Intent is an immutable slots class)."""
    return Intent(rig_id, intent.mode, intent.lazy_reason, intent.policy, intent.power_limit_w)


@dataclass(slots=True)
class Counters:
    ticks: int = 0
    decide_calls: int = 0
    guard_calls: int = 0
    peak_units: int = 0
    views: int = 0
    shown_again: int = 0  # guard calls made again with more of a cohort's rigs shown


_new_observation = maker(Observation)  # Observation(...), every field positionally
_new_view = maker(RigView)  # RigView(...), every field positionally
read_again: Callable[[Observation, float], Observation] = replacer(Observation, "observed_at")
"""``obs`` read again at ``now``: ``dataclasses.replace(obs, observed_at=now)``, cheaper."""


def _identity(u: Unit) -> Identity:
    """The identity ``u``'s rigs are observed under (one per cohort: its id is the cohort's)."""
    identity = u.identity
    if identity is None:
        spec = u.cls.spec
        identity = u.identity = Identity(
            u.uid, Make(spec.make), spec.model, spec.firmware, f"backtest-{spec.make}"
        )
    return identity


def _observation(u: Unit, now: float) -> Observation:
    phys = u.phys
    s = phys.state
    setting = u.setting
    return _new_observation(
        _identity(u),
        now,
        round(phys.hashrate_ths, 3),
        round(s.power_w, 1),
        _REPORTED,
        setting.mode,
        phys.hashing,
        (),  # boards
        round(s.chip_temp_c, 1),
        None,  # inlet_c
        None,  # outlet_c
        s.ambient_c,
        (),  # fan_rpm
        setting.power_limit_w,
        (),  # errors
        None,  # uptime_s
        False,  # model_unknown
    )


_REPORTED = PowerSource.REPORTED


class PolicyRun:
    """The live decision path over cohorts (see the module docstring)."""

    def __init__(
        self,
        strategy: Strategy,
        policies: Sequence[Policy],
        config: ReplayConfig,
        progress: ProgressFn | None = None,
        on_ramp: RampFn | None = None,
    ) -> None:
        self.s = strategy
        self.on_ramp = on_ramp
        self.policies = list(policies)
        self.config = config
        self.counters = Counters()
        self.exact = config.exact or config.plain  # no call skipped
        self.failing = False  # a policy failed at the last decision: decide again each tick
        self.failures: dict[str, PolicyFailed] = {}
        self.ramp_log = GuardState().ramp_log
        self.intents: dict[RigId, Intent] = {}
        self.intents_market: tuple[float | None, float | None] | None = None
        self.order = DrawOrder(config.seed)  # cohorts' members in the jitter's order
        self.points_memo: dict[tuple[object, ...], tuple[Ratios | None, tuple[ModePoint, ...]]] = {}
        names = {p.name for p in self.policies}
        self.clocked = bool(names - CLOCK_FREE_POLICIES)
        self.partial = names <= (PER_RIG_POLICIES & CLOCK_FREE_POLICIES)
        self.fleetwide = bool(names - PER_RIG_POLICIES)

    # -- views ------------------------------------------------------------------------------
    def _look(self, now: float) -> None:
        """Notice every rig whose observation changed since the core last saw it, or that
        has stopped settling after a change (it is then scored on what it measures again)."""
        for u in self.s.units:
            mem = u.memory
            kept = u.settle_until
            if kept is None or kept[0] is not mem:  # a function of the memory: once per memory
                kept = u.settle_until = (mem, settling_until(mem, STOCK))
            until = kept[1]
            settling = until is not None and now < until
            if settling != u.settling:
                u.settling = settling
                u.stale_view = True
            if not u.stale_view:
                continue
            u.stale_view = False
            seen = u.phys.seen()
            u.temp_c = seen[2]
            key = (u.setting, seen, settling)
            if key != u.view_key:
                u.view_key = key
                u.view = None
                u.changed = True

    def _views(self, units: Sequence[Unit], now: float) -> list[RigView]:
        """These cohorts' views at ``now`` (built again only when an observation changed)."""
        out = []
        for u in units:
            view = u.view
            if view is None:
                obs = _observation(u, now)
                points = self._points(u, obs)
                view = _new_view(u.uid, obs, u.cls.modes, points, u.cls.group, None)
                self.counters.views += 1
            elif view.observation is not None and view.observation.observed_at != now:
                obs = read_again(view.observation, now)
                view = _new_view(u.uid, obs, u.cls.modes, view.points, u.cls.group, None)
            u.view = view
            out.append(view)
        return out

    def _points(self, u: Unit, obs: Observation) -> tuple[ModePoint, ...]:
        """The mode points of ``u`` observed as ``obs``, as the loop works them out (its
        shares updated as the loop does: those it was last measured at). Both are pure
        functions of the class, what ``obs`` says of hashrate, power and mode, whether the
        rigs are settling and the shares before, so they are worked out once per such inputs
        (cohorts the ramp split go through the same readings, a tick apart)."""
        key = (
            id(u.cls),  # the classes live as long as the replay
            obs.mode,
            obs.mining,
            obs.hashrate_ths,
            obs.power_w,
            obs.power_source,
            u.settling,
            u.ratios,
        )
        known = self.points_memo.get(key)
        if known is None:
            ratios = u.ratios
            if not u.settling:  # as the loop does: the shares it was last measured at
                ratios = rig_ratios(obs, u.cls.entry) or ratios
            points = mode_points(obs, u.cls.modes, u.cls.entry, settling=u.settling, ratios=ratios)
            if len(self.points_memo) >= _POINTS_MAX:
                self.points_memo.clear()
            known = self.points_memo[key] = (ratios, tuple(points))
        u.ratios = known[0]
        return known[1]

    # -- one tick ---------------------------------------------------------------------------
    def tick(self, now: float, market: MarketView) -> None:
        """One pass of the loop's decision path at ``now``."""
        self.counters.ticks += 1
        prices = (market.hashprice_usd_per_ph_day, market.power_price_usd_per_kwh)
        self._look(now)
        if self.exact or not self.partial or self.intents_market is None or self.failing:
            self._decide(market, list(self.s.units), now)
        else:
            # Per-rig, clock-free policies: a cohort's intent can change only when its
            # observation or the prices did (the policies themselves are asked which).
            moved = prices != self.intents_market
            todo = list(self.s.units) if moved else [u for u in self.s.units if u.changed]
            if todo:
                self._decide(market, todo, now)
        self.intents_market = prices
        # The cohorts whose guards' answer is not known, as the guards themselves say
        # (policies/guards/horizon.py): it stays as it is with the same memory; or the guard
        # that held it back at the last call, with exactly these inputs, holds it again.
        busy = []
        exact, guards, intents = self.exact, self.config.guards, self.intents
        for u in self.s.units:
            u.changed = False
            if not exact:
                if u.pending:
                    if u.guard_key == self._guard_key(u, prices) and held_again(
                        u.held_by, u.memory, now, guards
                    ):
                        continue
                elif keeps(u.memory, intents.get(u.uid), u.temp_c, market, guards):
                    continue
            busy.append(u)
        if busy:
            self._guard(market, busy, now, prices)
            if self.on_ramp is not None:
                self.on_ramp(self.ramp_log)

    def _decide(self, market: MarketView, units: list[Unit], now: float) -> None:
        self.counters.decide_calls += 1
        site = self.config.site
        if self.fleetwide:  # every cohort's view, for the policies that see each rig
            self._views(self.s.units, now)
        fleetwide = {
            p.name: self._decide_fleetwide(p, market, now)
            for p in self.policies
            if p.name not in PER_RIG_POLICIES
        }
        if fleetwide:
            units = list(self.s.units)
        views = self._views(units, now)
        intents, failures = combined(
            [
                fleetwide[p.name] if p.name in fleetwide else ask(p, market, views, site, now)
                for p in self.policies
            ],
            views,
        )
        self.failing = bool(failures)
        if failures:  # as live: no policy moves any rig this tick (policies/tick.py)
            self._failed(failures, now)
            self.intents.clear()
            return
        for u in units:
            want = intents.get(u.uid)
            if want is None:
                self.intents.pop(u.uid, None)
            else:
                self.intents[u.uid] = want

    def _failed(self, failures: Sequence[PolicyFailure], now: float) -> None:
        for f in failures:
            seen = self.failures.get(f.policy)
            self.failures[f.policy] = (
                PolicyFailed(f.policy, now, f.error)
                if seen is None
                else dataclasses.replace(seen, ticks=seen.ticks + 1)
            )

    def _decide_fleetwide(
        self, policy: Policy, market: MarketView, now: float
    ) -> dict[RigId, Intent] | PolicyFailure:
        """One view per rig; a cohort whose rigs get different intents is split by intent."""
        expanded: list[RigView] = []
        owner: dict[RigId, tuple[Unit, int]] = {}
        for u in self.s.units:
            assert u.view is not None
            for k, index in enumerate(u.members):
                rid = rig_id(index)
                expanded.append(dataclasses.replace(u.view, rig_id=rid))
                owner[rid] = (u, k)
        raw = ask(policy, market, expanded, self.config.site, now)
        if isinstance(raw, PolicyFailure):
            return raw
        by_unit: dict[str, list[Intent | None]] = {u.uid: [None] * u.m for u in self.s.units}
        for rid, intent in raw.items():
            if rid in owner:
                u, k = owner[rid]
                by_unit[u.uid][k] = intent
        out: dict[RigId, Intent] = {}
        for u in list(self.s.units):
            wants = by_unit[u.uid]
            groups: dict[tuple[object, ...], list[int]] = {}
            for k, w in enumerate(wants):
                key = None if w is None else (w.mode, w.power_limit_w, w.policy)
                groups.setdefault((key,), []).append(k)
            parts = self._split(u, list(groups.values()), now)
            for part, ks in zip(parts, groups.values(), strict=True):
                w = wants[ks[0]]
                if w is not None:
                    out[part.uid] = _retarget(w, part.uid)
        return out

    def _split(self, u: Unit, index_groups: list[list[int]], now: float) -> list[Unit]:
        """``u`` split into one unit per group of member positions (the first keeps ``u``)."""
        if len(index_groups) == 1:
            return [u]
        self.s.settle(u, now)
        self.s.flush(u)
        members = u.members
        parts = []
        for n in range(len(index_groups)):
            if n == 0:
                part = u
            else:
                part = Unit(
                    self.s.new_uid(),
                    u.cls,
                    [],
                    u.phys.copy(),
                    u.setting,
                    now,
                    memory=u.memory,
                    pending=u.pending,
                    held_by=u.held_by,
                    settling=u.settling,
                    ratios=u.ratios,
                )
                if u.view is not None:
                    part.view = dataclasses.replace(u.view, rig_id=part.uid)
                    part.view_key = u.view_key
                self.s.units.insert(self.s.units.index(u) + n, part)
            parts.append(part)
        for part, ks in zip(parts, index_groups, strict=True):
            part.regroup([members[k] for k in ks])
        self.s.touch(now)
        return parts

    def _guard_key(self, u: Unit, prices: tuple[float | None, float | None]) -> tuple[object, ...]:
        return (prices, u.view_key, _intent_key(self.intents.get(u.uid)), u.memory, u.m)

    def _guard(
        self,
        market: MarketView,
        units: list[Unit],
        now: float,
        prices: tuple[float | None, float | None],
    ) -> None:
        """``apply_guards`` over ``units`` (the others are quiet: see :meth:`tick`), power-ups
        shown rig by rig (:meth:`_shown`).

        The guards decide each rig by the per-rig chain, and only the ramp looks across rigs,
        at the rises (docs/guards.md, "How a tick is computed"). So when some cohort would be
        shown rig by rig, all are first shown one rig each: a cohort whose outcome is not a rise
        (held by hysteresis or the dwell, a step down, nothing to do) has its answer, the same
        as in one call with everything. If a cohort to be shown rig by rig is among the rises,
        the rises are asked again, alone, with the ramp's memory from before the first call:
        the ramp sees exactly the rises it would have seen in one call. The one call is always
        right, the first one only saves showing copies of cohorts that are held before the ramp;
        so it is skipped when every cohort to be shown rig by rig was held back by the ramp
        with the same inputs last time (a rise again: hysteresis and the dwell let it through
        then, and the dwell only runs out). ``exact`` makes the one call."""
        self.counters.guard_calls += 1
        self._views(units, now)
        rising = [r for r in map(self._rising, units) if r is not None]
        if rising:
            room = room_at(self.ramp_log, self.config.guards, now)
            caps = reach(rising, room, market, self.config.guards)
            shown = {u.uid: self._shown(u, room, now, caps.get(u.uid)) for u in units}
        else:  # each cohort as itself
            room, shown = NO_ROOM, {u.uid: [u.uid] for u in units}
        wide = {u.uid for u in units if u.m > 1 and shown[u.uid][0] != u.uid}
        known = all(u.rise_key == self._guard_key(u, prices) for u in units if u.uid in wide)
        if self.exact or not wide or known:
            self._guard_once(market, [(u, shown[u.uid]) for u in units], now, prices, room)
            return
        log = self.ramp_log
        first = [(u, [u.uid] if u.uid in wide else shown[u.uid]) for u in units]
        desired, state = self._call(market, first, now)
        rises = []
        for u, (rid,) in first:
            if _is_rise(u, desired[rid], state.rigs.get(rid), now):
                rises.append(u)
        again = {u.uid for u in rises} if any(u.uid in wide for u in rises) else set()
        for u, (rid,) in first:
            if u.uid not in again:
                self._take(u, desired[rid], state.rigs.get(rid), now, prices)
        if again:
            self.counters.guard_calls += 1
            self.ramp_log = log
            self._guard_once(market, [(u, shown[u.uid]) for u in rises], now, prices, room)

    def _guard_once(
        self,
        market: MarketView,
        shown: list[tuple[Unit, list[str]]],
        now: float,
        prices: tuple[float | None, float | None],
        room: Room,
    ) -> None:
        """One ``apply_guards`` call over the cohorts, each shown under its ids; made again with
        more of a cohort's rigs shown while one shown fewer than the ramp's slots allow had its
        last shown rig granted (:meth:`_cut_short`)."""
        log = self.ramp_log
        while True:
            desired, state = self._call(market, shown, now)
            short = self._cut_short(shown, room, log, state)
            if not short:
                break
            self.counters.guard_calls += 1
            self.counters.shown_again += 1
            self.ramp_log = log
            shown = [
                (u, self._shown(u, room, now, u.m) if u.uid in short else ids) for u, ids in shown
            ]
        for u, ids in shown:
            if len(ids) == 1:
                self._take(u, desired[ids[0]], state.rigs.get(ids[0]), now, prices)
            else:
                self._take_split(u, ids, desired, state, now, prices)

    def _cut_short(
        self,
        shown: list[tuple[Unit, list[str]]],
        room: Room,
        log: tuple[RampGrant, ...],
        state: GuardState,
    ) -> set[str]:
        """The cohorts shown by fewer rigs than the ramp's start slots allow (:meth:`_shown`)
        whose last rig shown, in the ramp's order, was granted: a rig not shown might have
        been granted too. Where the last one shown was not granted, no rig after it could be:
        the ramp grants in order and holds everything after its first misfit, and each rig's
        place in the order is its own (its jitter), so the rigs not shown would have come
        after it, held, and changed nothing before them."""
        short = [
            (u, ids) for u, ids in shown if ids[0] != u.uid and len(ids) < min(u.m, room.slots + 1)
        ]
        if not short:
            return set()
        granted = new_grants(GuardState(ramp_log=log), state)
        return {u.uid for u, ids in short if ids[-1] in granted}

    def _rising(self, u: Unit) -> Rising | None:
        """``u`` when its policy asks to raise its power (from its hold setting, as the guards
        hold it), as :func:`backtest.ramp_view.reach` takes it; None otherwise."""
        want = self.intents.get(u.uid)
        if want is None or u.view is None:
            return None
        hold = u.memory.setting if u.memory is not None else u.setting
        wanted = Setting.of(want.mode, want.power_limit_w)
        if wanted == hold or not is_raise(u.view, hold, wanted):
            return None
        return Rising(u.uid, u.m, u.view, hold, wanted, want.policy)

    def _shown(self, u: Unit, room: Room, now: float, cap: int | None) -> list[RigId]:
        """The ids ``u`` is shown to the guards under: the cohort's own id, or, for a power-up
        the ramp may grant, its rigs' ids. Only the ramp treats a cohort's rigs differently: it
        grants at most one rig per start slot left this tick, in its order, where rigs alike
        differ only by their own jitter (then the id). So the members first in that order, as
        many as the slots plus one (to be held), are shown, each under its own id as in the
        plain replay; the others stand behind the one held. ``cap``: no more than that many
        (what the ramp's kW could reach, :func:`backtest.ramp_view.reach`; the guards may
        grant more when they ask for less than the policy: :meth:`_guard_once` checks), None
        when ``u`` is not rising (:meth:`_rising`)."""
        if room.slots == 0 or cap is None:
            return [u.uid]
        n = min(u.m, room.slots + 1, cap)
        if n == u.m:
            return rig_ids(u.members)
        rigs = range(u.cls.first, u.cls.first + u.cls.count)
        shift = jitter_shift(self.config.seed, now)
        return self.order.first(u.uid, u.members, rigs, n, now, shift)

    def _call(
        self, market: MarketView, shown: Sequence[tuple[Unit, Sequence[str]]], now: float
    ) -> tuple[Mapping[RigId, Desired], GuardState]:
        """``apply_guards`` over the cohorts as shown; keeps the new ramp log."""
        fleet: list[RigView] = []
        intents: dict[RigId, Intent] = {}
        memory: dict[RigId, RigGuardState] = {}
        for u, ids in shown:
            view = u.view
            assert view is not None
            want = self.intents.get(u.uid)
            mem = u.memory
            if ids[0] == u.uid:  # as itself
                fleet.append(view)
                if want is not None:
                    intents[u.uid] = want
                if mem is not None:
                    memory[u.uid] = mem
                continue
            copies = self._intent_copies(u, want) if want is not None else None
            obs, modes, points, group = view.observation, view.modes, view.points, view.group
            limits = view.power_limit_range_w
            for rid in ids:
                fleet.append(_new_view(rid, obs, modes, points, group, limits))
                if copies is not None:
                    intent = copies.get(rid)
                    if intent is None:
                        intent = copies[rid] = _retarget(copies[u.uid], rid)
                    intents[rid] = intent
                if mem is not None:
                    memory[rid] = mem
        # The tick's guard stage, as live: the transitions' hold, then the guards.
        state = GuardState(rigs=memory, ramp_log=self.ramp_log)
        desired, new_state = guard(
            intents, fleet, market, state, self.config.guards, (), now, self.config.seed, _timing
        )
        self.ramp_log = new_state.ramp_log
        return desired, new_state

    def _intent_copies(self, u: Unit, want: Intent) -> dict[RigId, Intent]:
        """``want`` retargeted to the rigs of ``u`` shown rig by rig, by rig id, filled as they
        are shown (kept while its intent is the same object: intents are immutable)."""
        kept = u.intent_copies
        if kept is None or kept[0] is not want:
            kept = u.intent_copies = (want, {u.uid: want})
        return kept[1]

    def _take(
        self,
        u: Unit,
        d: Desired,
        memory: RigGuardState | None,
        now: float,
        prices: tuple[float | None, float | None],
    ) -> None:
        """The guards' answer for a cohort shown as one rig."""
        u.memory = memory
        u.pending, u.held_by = d.held_back, d.decided_by
        self._apply(u, d.mode, d.power_limit_w, now)
        u.guard_key = self._guard_key(u, prices)
        u.rise_key = u.guard_key if d.decided_by == RAMP else None

    def _take_split(
        self,
        u: Unit,
        ids: list[str],
        desired: Mapping[RigId, Desired],
        new_state: GuardState,
        now: float,
        prices: tuple[float | None, float | None],
    ) -> None:
        """The guards' answers for a cohort shown rig by rig: split by outcome."""
        rest_id = next((rid for rid in ids if desired[rid].held_back), ids[0])
        # Rigs not shown stand behind one that was held back (all alike), or the first.
        members = u.members  # sorted
        shown: set[int] = set()
        rigs = new_state.rigs
        groups: dict[tuple[object, ...], list[int]] = {}
        firsts: list[str] = []
        rest_group: list[int] = []
        last: tuple[Desired, RigGuardState | None] | None = None
        group: list[int] = []
        for rid in ids:
            d = desired[rid]
            memory = rigs.get(rid)
            if (
                last is None
                or memory is not last[1]  # rigs answered alike share their memory
                or d.mode is not last[0].mode
                or d.held_back is not last[0].held_back
                or d.power_limit_w != last[0].power_limit_w
            ):  # else: the group of the rig before (the same key)
                key = (d.mode, d.power_limit_w, d.held_back, memory)
                found = groups.get(key)
                if found is None:
                    found = groups[key] = []
                    firsts.append(rid)
                group = found
                last = (d, memory)
            k = bisect.bisect_left(members, rig_index(rid))
            group.append(k)
            shown.add(k)
            if rid == rest_id:
                rest_group = group
        if len(shown) < u.m:
            rest_group.extend(set(range(u.m)).difference(shown))
        parts = self._split(u, [sorted(g) for g in groups.values()], now)
        for part, rid in zip(parts, firsts, strict=True):
            d = desired[rid]
            part.memory = new_state.rigs.get(rid)
            part.pending, part.held_by = d.held_back, d.decided_by
            part.guard_key = None
            want = self.intents.get(u.uid)
            if want is not None and part is not u:  # u keeps its own (and its copies)
                self.intents[part.uid] = _retarget(want, part.uid)
            self._apply(part, d.mode, d.power_limit_w, now)
            part.rise_key = self._guard_key(part, prices) if d.decided_by == RAMP else None

    def _apply(self, u: Unit, mode: Mode, limit: int | None, now: float) -> None:
        """What the reconciler and the rig do with a desired mode."""
        if mode is Mode.UNKNOWN:
            return
        safe = mode.nearest_safe(u.cls.modes)
        setting = Setting.of(safe, limit if safe is mode else None)
        if setting != u.setting:
            self.s.command(u, setting, now)

    def next_tick(self, now: float) -> float | None:
        """When the next tick could change anything, before new prices: the next ``tick_s``
        while a rig is in transition, thermally latched, or held back by a guard whose hold
        may end with time; otherwise when the first hold ends, as the guards say
        (``held_until``: a dwell when it ends, hysteresis never by time)."""
        tick = self.config.tick_s
        if self.exact or self.clocked or self.failing:
            return now + tick
        due: float | None = None
        for u in self.s.units:
            mem = u.memory
            if not u.phys.settled or (mem is not None and mem.thermal_cap is not None):
                return now + tick
            if u.settling:  # decided again (and scored on its readings) once settled
                return now + tick
            if not u.pending:
                continue
            when = held_until(u.held_by, mem, self.config.guards)
            if when is None:
                return now + tick
            if when == math.inf:
                continue
            steps = max(1, math.ceil((when - now) / tick - 1e-9))
            at = now + steps * tick
            due = at if due is None else min(due, at)
        return due

    def merge(self, now: float) -> None:
        """Cohorts that have become indistinguishable become one again: settled in exactly the
        same physical state (not only the same observation: rigs started apart by the ramp can
        settle a hair apart, and one copy going on for both would change their energy), and the
        time of a change stops counting once its dwell is over (``dwell_holds``, the dwell
        guard's test)."""
        guards = self.config.guards
        if self.config.plain:  # every rig its own cohort, throughout
            self.counters.peak_units = len(self.s.units)
            return
        alike = self._alike()
        if not alike:  # no two cohorts could merge: nothing to build keys for
            self.counters.peak_units = max(self.counters.peak_units, len(self.s.units))
            return
        seen: dict[tuple[object, ...], Unit] = {}
        keep: list[Unit] = []
        merged = False
        for u in self.s.units:
            mem = u.memory
            if u.uid not in alike or mem is None:
                keep.append(u)
                continue
            recent = dwell_holds(mem, now, guards)
            key = (
                u.cls.label,
                u.setting,
                u.phys.target,
                state_key(u.phys.state),  # the exact state: one copy goes on for both
                mem.setting,
                mem.previous,
                mem.changed_by,
                mem.thermal_cap,
                None if mem.thermal_cap is None else mem.thermal_at,
                mem.critical_since,
                mem.changed_at if recent else None,
                _intent_key(self.intents.get(u.uid)),
            )
            into = seen.get(key)
            if into is None:
                seen[key] = u
                keep.append(u)
                continue
            for x in (into, u):
                self.s.settle(x, now)
                self.s.flush(x)
            into.regroup(sorted(into.members + u.members))
            self.intents.pop(u.uid, None)
            merged = True
        if merged:
            self.s.units = keep
            self.s.touch(now)
        self.counters.peak_units = max(self.counters.peak_units, len(self.s.units))

    def _alike(self) -> set[str]:
        """The cohorts that may merge (settled, not held back, with a memory, not settling)
        and share class, target and chip temperature with another such (part of the merge
        key, compared first: most rows no two cohorts could merge)."""
        first: dict[tuple[str, float, float], str] = {}
        alike: set[str] = set()
        for u in self.s.units:
            if not u.phys.settled or u.pending or u.memory is None or u.settling:
                continue
            key = (u.cls.label, u.phys.target, u.phys.state.chip_temp_c)
            other = first.setdefault(key, u.uid)
            if other != u.uid:
                alike.add(other)
                alike.add(u.uid)
        return alike


def _timing(rig_id: RigId) -> Transition:
    """The backtest's rigs are the simulator's, which follow the stock timing."""
    return STOCK


def _is_rise(u: Unit, d: Desired, memory: RigGuardState | None, now: float) -> bool:
    """Whether the guards' answer ``d`` for ``u`` went through the ramp: held by it, or a change
    that raises power (``is_raise`` from the setting the guards held, as they judge it)."""
    if d.decided_by == RAMP or d.start_at is not None:
        return True
    if memory is None or memory.changed_at != now or memory.previous is None:
        return False
    assert u.view is not None
    return is_raise(u.view, memory.previous, memory.setting)


def _intent_key(intent: Intent | None) -> tuple[object, ...] | None:
    return None if intent is None else (intent.mode, intent.power_limit_w, intent.policy)
