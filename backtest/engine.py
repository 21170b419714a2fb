"""The replay: a market history through the live policies and guards, on simulated physics.

Per tick, exactly what ``daemon/loop.py`` does with what it observed: build a ``MarketView`` and
a ``RigView`` per rig (observation from the physics, mode points from
``daemon.rig_economics.mode_points``), call every configured policy's ``decide``, ``combine``
them, ``apply_guards`` with the ``GuardState`` carried from the last tick, and hand the desired
modes to the rigs (here: the physics, which then sleeps within seconds or boots and ramps).

Two things make a year of 1,000 rigs cheap without changing a decision (docs/backtest.md):

- **Cohorts.** Rigs of one class (model, health, ambient, group, modes) in the same physical
  state with the same guard memory are indistinguishable to pure policies and guards, so one
  ``RigView`` stands for all of them. A cohort splits only when the guards treat its members
  differently (the power-up ramp lets some go first), and cohorts merge again once they are
  indistinguishable. Policies that look at the whole fleet (``power-cap``, plugins) see one
  view per rig.
- **Skipping.** A tick is run when the market row changes and then every ``tick_s`` while
  anything is pending (a rig held back by a guard, in transition, thermally latched). At a new
  row the policies are called unless, for ``breakeven``, no cohort's best mode changed (the
  policy's documented rule, checked with the core's own margin arithmetic); the guards are
  called unless nothing asks for a change and nothing is pending, which is when the guards'
  documented result is "keep every rig as it is". ``exact=True`` calls everything every
  ``tick_s``; the tests check both give identical results.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from backtest.inputs import MAKE_MODES, Fleet, Market, iso_utc
from backtest.physics import RigPhysics, steady_rates
from daemon.loop import checked_opinion, nearest_safe
from daemon.rig_economics import Ratios, mode_points, rig_ratios
from drivers import catalogue
from policies.api import Intent, MarketView, Policy, RigView, Site
from policies.combine import combine
from policies.economics import Economics, cost_per_day, revenue_usd_per_day
from policies.guards import (
    DWELL,
    HYSTERESIS,
    RAMP,
    Desired,
    FailSafe,
    GuardConfig,
    GuardState,
    RampGrant,
    RigGuardState,
    Setting,
    apply_guards,
)
from policies.guards.power import is_raise
from policies.guards.ramp import prune_log, start_slots
from policies.timing import STOCK, Transition
from policies.transition import hold_transitions, settling_until
from policies.values import Identity, Make, Mode, Observation, PowerSource, RigId
from simulator.models import ModelSpec

PER_RIG_POLICIES = frozenset({"breakeven", "schedule"})
"""Policies whose intent for a rig depends on that rig's view alone (docs/policies.md)."""
CLOCK_FREE_POLICIES = frozenset({"breakeven", "power-cap"})
"""Policies documented not to read ``now``; any other is called every ``tick_s``."""
_HASHING = (Mode.LOW, Mode.NORMAL, Mode.HIGH)
_SLEEPING = (Mode.SLEEP, Mode.OFF)
_DAY_S = 86_400.0


class PolicyFailed(Exception):
    """A policy raised, or answered with something that is not a mapping of Intents, during the
    replay. The live loop would hold the fleet and log it; a replay with a policy that fails
    says nothing about that policy, so it stops, naming the policy, when and why."""

    def __init__(self, policy: str, at: float, error: str) -> None:
        super().__init__(policy, at, error)
        self.policy, self.at, self.error = policy, at, error

    def __str__(self) -> str:
        return f"policy {self.policy!r} failed at {iso_utc(self.at)} in the replay: {self.error}"


def _ask(
    policy: Policy, market: MarketView, views: Sequence[RigView], site: Site, now: float
) -> Mapping[RigId, Intent]:
    """``policy.decide``, checked as the live loop checks it; PolicyFailed if it fails."""
    try:
        return checked_opinion(policy.name, policy.decide(market, views, site, now))
    except Exception as exc:
        raise PolicyFailed(policy.name, now, f"{type(exc).__name__}: {exc}") from exc


def _copy_id(uid: str, k: int) -> RigId:
    """The id of the ``k``-th rig of cohort ``uid`` shown rig by rig."""
    return f"{uid}/{k}"


def _retarget(intent: Intent, rig_id: str) -> Intent:
    """``intent`` for another rig of the same cohort (Intent is an immutable slots class)."""
    return Intent(rig_id, intent.mode, intent.lazy_reason, intent.policy, intent.power_limit_w)


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """What the replay runs: the policies (by name, loaded by the caller), the guards' and
    site's settings, the loop's tick, and the ramp jitter's seed."""

    policies: tuple[str, ...] = ("breakeven",)
    guards: GuardConfig = field(default_factory=GuardConfig)
    site: Site = field(default_factory=Site)
    tick_s: float = 30.0
    seed: int = 0
    exact: bool = False

    @property
    def economics(self) -> Economics:
        return self.site.economics


@dataclass(frozen=True, slots=True)
class RigClass:
    """Rigs that are physically and economically the same."""

    label: str
    spec: ModelSpec
    health: float
    ambient_c: float
    group: str
    modes: frozenset[Mode]
    entry: catalogue.ModelEntry | None
    first: int  # index of its first rig in the fleet
    count: int


def classes_of(fleet: Fleet) -> list[RigClass]:
    """The fleet's rigs grouped into classes, rigs numbered in file order."""
    out: list[RigClass] = []
    index = 0
    for g in fleet.groups:
        entry = catalogue.lookup(g.spec.make, g.spec.model)
        for health, count in g.healths():
            label = f"{g.spec.key}@{health:.3f}"
            if g.ambient_c != 25.0:
                label += f"/{g.ambient_c:g}C"
            if g.group:
                label += f"/{g.group}"
            modes = g.modes or MAKE_MODES[g.spec.make]
            out.append(
                RigClass(label, g.spec, health, g.ambient_c, g.group, modes, entry, index, count)
            )
            index += count
    return out


# ---------------------------------------------------------------------------------------------
# accounting


@dataclass(slots=True)
class Prices:
    """The history as step functions, with running integrals for lazy accounting."""

    start: float
    interval: float
    hp: list[float]  # forward-filled, for accounting
    pp: list[float]
    cum_hp: list[float]  # ∫ hashprice dt from start to each row's start (USD/PH/day · s)
    cum_pp: list[float]

    @classmethod
    def of(cls, market: Market) -> Prices:
        hp: list[float] = []
        pp: list[float] = []
        last_h = last_p = 0.0
        for r in market.rows:
            last_h = (
                r.hashprice_usd_per_ph_day if r.hashprice_usd_per_ph_day is not None else last_h
            )
            last_p = r.power_price_usd_per_kwh if r.power_price_usd_per_kwh is not None else last_p
            hp.append(last_h)
            pp.append(last_p)
        cum_hp, cum_pp = [0.0], [0.0]
        for h, p in zip(hp, pp, strict=True):
            cum_hp.append(cum_hp[-1] + h * market.interval_s)
            cum_pp.append(cum_pp[-1] + p * market.interval_s)
        return cls(market.start, float(market.interval_s), hp, pp, cum_hp, cum_pp)

    def integrals(self, t: float) -> tuple[float, float]:
        i = min(len(self.hp) - 1, max(0, int((t - self.start) // self.interval)))
        dt = t - (self.start + i * self.interval)
        return self.cum_hp[i] + self.hp[i] * dt, self.cum_pp[i] + self.pp[i] * dt


@dataclass(slots=True)
class Account:
    """Per-rig totals of one unit (a cohort, or a baseline's class) since its last flush."""

    energy_ws: float = 0.0
    revenue_usd: float = 0.0
    cost_usd: float = 0.0
    asleep_s: float = 0.0
    low_s: float = 0.0
    changes: int = 0


@dataclass(slots=True, eq=False)
class Unit:
    """Identical rigs (``members``) sharing one physical state and one commanded setting."""

    uid: str
    cls: RigClass
    members: list[int]
    phys: RigPhysics
    setting: Setting
    since: float  # accounts are up to date until here
    acct: Account = field(default_factory=Account)
    memory: RigGuardState | None = None
    pending: bool = False
    held_by: str = ""
    guard_key: tuple[object, ...] | None = None  # the guards' inputs when they last held it
    rise_key: tuple[object, ...] | None = None  # ... when the ramp last held it back
    intent_copies: tuple[Intent, list[Intent]] | None = None  # see PolicyRun._intent_copies
    temp_c: float = 0.0  # chip temperature as observed (rounded), at the last look
    view: RigView | None = None
    view_key: tuple[object, ...] | None = None
    stale_view: bool = True  # the physics moved since the view was last checked
    changed: bool = True  # its observation changed since the policies last saw it
    settling: bool = False  # commanded and not yet settled (policies/transition.py)
    ratios: Ratios | None = None  # measured shares of rated hashrate and power, last seen
    points: tuple[tuple[Mode, float, float], ...] = ()  # supported (mode, TH/s, W) for checks

    @property
    def m(self) -> int:
        return len(self.members)


class Strategy:
    """A fleet under one way of deciding; keeps the row series and the ramp meter."""

    def __init__(self, prices: Prices, terms: Economics, classes: Sequence[RigClass]) -> None:
        self.prices = prices
        self.fee_k = (1.0 - terms.pool_fee) / 1000.0 / _DAY_S  # USD per (TH/s·s) per USD/PH/day
        self.cost_k = terms.overhead / 3.6e6  # USD per (W·s) per USD/kWh
        self.units: list[Unit] = []
        n = sum(c.count for c in classes)
        self.rig_energy_ws = [0.0] * n
        self.rig_revenue = [0.0] * n
        self.rig_cost = [0.0] * n
        self.rig_asleep_s = [0.0] * n
        self.rig_low_s = [0.0] * n
        self.rig_changes = [0] * n
        self.events: list[tuple[float, float]] = []
        self.row_energy_ws: list[float] = []
        self.row_hash_ths_s: list[float] = []
        self.row_hashing: list[int] = []
        self.row_change_cost: list[float] = []  # USD: transitions against their steady target
        self._row_e = self._row_h = self._row_c = 0.0
        self._seg_start = prices.start
        self._settled_p = self._settled_h = 0.0
        self._dirty = True
        self._counter = 0

    def new_uid(self) -> str:
        self._counter += 1
        return f"u{self._counter}"

    def initial_power_w(self) -> float:
        return sum(u.phys.power_w * u.m for u in self.units)

    # -- lazy accounts ---------------------------------------------------------------------
    def settle(self, u: Unit, t: float) -> None:
        """Bring ``u``'s accounts up to ``t`` (it is settled: constant power and hashrate)."""
        if t <= u.since:
            return
        dt = t - u.since
        if u.phys.settled:
            h0, p0 = self.prices.integrals(u.since)
            h1, p1 = self.prices.integrals(t)
            a = u.acct
            a.energy_ws += u.phys.power_w * dt
            a.revenue_usd += u.phys.hashrate_ths * (h1 - h0) * self.fee_k
            a.cost_usd += u.phys.power_w * (p1 - p0) * self.cost_k
            self._time_in_mode(u, dt)
        u.since = t

    def _time_in_mode(self, u: Unit, dt: float) -> None:
        if u.setting.mode in _SLEEPING:
            u.acct.asleep_s += dt
        elif u.setting.mode is Mode.LOW:
            u.acct.low_s += dt

    def flush(self, u: Unit) -> None:
        """Credit ``u``'s per-rig accounts to each of its rigs. A zero is not added: the totals
        start at +0.0 and can never be -0.0 (x - x is +0.0), so adding ±0.0 changes nothing."""
        a = u.acct
        members = u.members
        for totals, value in (
            (self.rig_energy_ws, a.energy_ws),
            (self.rig_revenue, a.revenue_usd),
            (self.rig_cost, a.cost_usd),
            (self.rig_asleep_s, a.asleep_s),
            (self.rig_low_s, a.low_s),
        ):
            if value:
                for i in members:
                    totals[i] += value
        if a.changes:
            changes = self.rig_changes
            for i in members:
                changes[i] += a.changes
        u.acct = Account()

    # -- the settled set's rates, for the row series ---------------------------------------
    def _close_segment(self, t: float) -> None:
        if self._dirty:
            self._row_e += self._settled_p * (t - self._seg_start)
            self._row_h += self._settled_h * (t - self._seg_start)
            self._seg_start = t
            self._settled_p = sum(u.phys.power_w * u.m for u in self.units if u.phys.settled)
            self._settled_h = sum(u.phys.hashrate_ths * u.m for u in self.units if u.phys.settled)
            self._dirty = False

    def touch(self, t: float) -> None:
        """The settled set or a settled unit's rates change at ``t``."""
        self._row_e += self._settled_p * (t - self._seg_start)
        self._row_h += self._settled_h * (t - self._seg_start)
        self._seg_start = t
        self._dirty = True

    def command(self, u: Unit, setting: Setting, t: float) -> None:
        """The rigs of ``u`` are told ``setting`` at ``t``."""
        if setting == u.setting:
            return
        self.settle(u, t)
        if u.phys.settled:
            self.touch(t)
        u.setting = setting
        u.acct.changes += 1
        u.stale_view = True
        u.phys.command(setting, t)
        u.since = t

    def advance(self, t: float, row: int) -> None:
        """Every unit to ``t`` (within row ``row``): transients step by step, settled ones
        later, lazily."""
        self._close_segment(self._seg_start)
        hp, pp = self.prices.hp[row], self.prices.pp[row]
        sink = self._sink
        for u in self.units:
            if u.phys.settled:
                continue
            dt = t - u.since
            e, h = u.phys.run(t, sink, u.m)
            # The change's cost: what the rigs would have made at their target's steady state
            # over the stretch, less what they made (hashes lost booting, power still drawn).
            sw, sh = steady_rates(u.cls.spec, u.phys.health, u.cls.ambient_c, u.phys.target)
            self._row_c += (
                (sh * dt - h) * hp * self.fee_k - (sw * dt - e) * pp * self.cost_k
            ) * u.m
            a = u.acct
            a.energy_ws += e
            a.revenue_usd += h * hp * self.fee_k
            a.cost_usd += e * pp * self.cost_k
            self._time_in_mode(u, t - u.since)
            u.since = t
            u.stale_view = True
            self._row_e += e * u.m
            self._row_h += h * u.m
            if u.phys.settled:
                self.touch(t)
        self._close_segment(t)

    def _sink(self, t: float, dw: float) -> None:
        self.events.append((t, dw))

    def end_row(self, t: float) -> None:
        self._close_segment(t)
        self._row_e += self._settled_p * (t - self._seg_start)
        self._row_h += self._settled_h * (t - self._seg_start)
        self._seg_start = t
        self.row_energy_ws.append(self._row_e)
        self.row_hash_ths_s.append(self._row_h)
        self.row_hashing.append(sum(u.m for u in self.units if u.setting.mode not in _SLEEPING))
        self.row_change_cost.append(self._row_c)
        self._row_e = self._row_h = self._row_c = 0.0

    def finish(self, t: float) -> None:
        for u in self.units:
            self.settle(u, t)
            self.flush(u)

    def steepest_ramp_kw_per_min(self, start: float, p0_w: float) -> float:
        """The largest rise of the fleet's 1-minute average power from one minute to the next."""
        if not self.events:
            return 0.0
        ev = sorted(self.events)
        times = [t for t, _ in ev]
        levels = []
        level = p0_w
        for _, dw in ev:
            level += dw
            levels.append(level)

        def avg(minute: int) -> float:
            a, b = start + 60.0 * minute, start + 60.0 * (minute + 1)
            i = bisect.bisect_right(times, a)
            cur = levels[i - 1] if i else p0_w
            total, t = 0.0, a
            while i < len(times) and times[i] < b:
                total += cur * (times[i] - t)
                t, cur = times[i], levels[i]
                i += 1
            return (total + cur * (b - t)) / 60.0

        minutes = sorted({int((t - start) // 60.0) + d for t in times for d in (0, 1)})
        best = 0.0
        cache: dict[int, float] = {}
        for mnt in minutes:
            if mnt < 1:
                continue
            for k in (mnt - 1, mnt):
                if k not in cache:
                    cache[k] = avg(k)
            best = max(best, cache[mnt] - cache[mnt - 1])
        return best / 1000.0


# ---------------------------------------------------------------------------------------------
# the replay


ProgressFn = Callable[[int, int], None]
RampFn = Callable[[tuple[RampGrant, ...]], None]
"""Told the ramp's memory after each guard step: the power-ups kept, with their start slots."""


@dataclass(slots=True)
class Counters:
    ticks: int = 0
    decide_calls: int = 0
    guard_calls: int = 0
    peak_units: int = 0
    views: int = 0


@dataclass(slots=True)
class Replay:
    """The outcome of one strategy over the history."""

    name: str
    strategy: Strategy
    ramp_kw_per_min: float
    counters: Counters | None = None


@dataclass(slots=True)
class Outcome:
    """The policy run and both baselines, over the same history and fleet."""

    market: Market
    fleet: Fleet
    classes: list[RigClass]
    config: ReplayConfig
    policy: Replay
    always_on: Replay
    threshold: Replay


def _observation(u: Unit, now: float) -> Observation:
    s = u.phys.state
    spec = u.cls.spec
    identity = Identity(u.uid, Make(spec.make), spec.model, spec.firmware, f"backtest-{spec.make}")
    hashing = u.phys.hashing
    return Observation(
        identity=identity,
        observed_at=now,
        hashrate_ths=round(u.phys.hashrate_ths, 3),
        power_w=round(s.power_w, 1),
        power_source=PowerSource.REPORTED,
        mode=u.setting.mode,
        mining=hashing,
        max_chip_temp_c=round(s.chip_temp_c, 1),
        ambient_c=s.ambient_c,
        power_limit_w=u.setting.power_limit_w,
    )


def read_again_at(obs: Observation, now: float) -> Observation:
    """``obs`` read again at ``now`` (``dataclasses.replace`` without its introspection)."""
    return Observation(
        obs.identity,
        now,
        obs.hashrate_ths,
        obs.power_w,
        obs.power_source,
        obs.mode,
        obs.mining,
        obs.boards,
        obs.max_chip_temp_c,
        obs.inlet_c,
        obs.outlet_c,
        obs.ambient_c,
        obs.fan_rpm,
        obs.power_limit_w,
        obs.errors,
        obs.uptime_s,
        obs.model_unknown,
    )


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
        self.ramp_log = GuardState().ramp_log
        self.intents: dict[RigId, Intent] = {}
        self.intents_market: tuple[float | None, float | None] | None = None
        # breakeven's best mode by a cohort's points, at the prices _best_at
        self._best_at: tuple[float | None, float | None] | None = None
        self._best: dict[tuple[tuple[Mode, float, float], ...], Mode | None] = {}
        names = {p.name for p in self.policies}
        self.clocked = bool(names - CLOCK_FREE_POLICIES)
        self.partial = names <= (PER_RIG_POLICIES & CLOCK_FREE_POLICIES)
        self.fleetwide = bool(names - PER_RIG_POLICIES)

    # -- views ------------------------------------------------------------------------------
    def _look(self, now: float) -> None:
        """Notice every rig whose observation changed since the core last saw it, or that
        has stopped settling after a change (it is then scored on what it measures again)."""
        for u in self.s.units:
            settling = _settling(u, now)
            if settling != u.settling:
                u.settling = settling
                u.stale_view = True
            if not u.stale_view:
                continue
            u.stale_view = False
            key = (u.setting, u.phys.hashing, *u.phys.key()[1:], u.settling)
            u.temp_c = round(u.phys.state.chip_temp_c, 1)
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
                if not u.settling:  # as the loop does: the shares it was last measured at
                    u.ratios = rig_ratios(obs, u.cls.entry) or u.ratios
                points = tuple(
                    mode_points(obs, u.cls.modes, u.cls.entry, settling=u.settling, ratios=u.ratios)
                )
                view = RigView(u.uid, obs, u.cls.modes, points, group=u.cls.group)
                u.points = tuple(
                    (p.mode, p.hashrate_ths, p.power_w) for p in points if p.mode in u.cls.modes
                )
                self.counters.views += 1
            elif view.observation is not None and view.observation.observed_at != now:
                obs = read_again_at(view.observation, now)
                view = RigView(u.uid, obs, u.cls.modes, view.points, group=u.cls.group)
            u.view = view
            out.append(view)
        return out

    # -- one tick ---------------------------------------------------------------------------
    def tick(self, now: float, market: MarketView) -> None:
        """One pass of the loop's decision path at ``now``."""
        self.counters.ticks += 1
        prices = (market.hashprice_usd_per_ph_day, market.power_price_usd_per_kwh)
        self._look(now)
        if self.config.exact or not self.partial or self.intents_market is None:
            self._decide(market, list(self.s.units), now)
        else:
            # Per-rig, clock-free policies: a cohort's intent can change only when its
            # observation did, or when the prices moved its best mode.
            moved = prices != self.intents_market
            todo = [u for u in self.s.units if u.changed or (moved and self._moved(u, prices))]
            if todo:
                self._decide(market, todo, now)
        self.intents_market = prices
        for u in self.s.units:
            u.changed = False
        stale = prices[0] is None or prices[1] is None
        busy = [
            u for u in self.s.units if self.config.exact or not self._quiet(u, stale, prices, now)
        ]
        if busy:
            self._guard(market, busy, now, prices)
            if self.on_ramp is not None:
                self.on_ramp(self.ramp_log)

    def _moved(self, u: Unit, prices: tuple[float | None, float | None]) -> bool:
        """Whether ``breakeven``'s intent for ``u`` may differ at ``prices``."""
        want = self.intents.get(u.uid)
        hp, pp = prices
        if hp is None or pp is None:
            return want is not None
        if self._best_at != prices:
            self._best_at, self._best = prices, {}
        if u.points in self._best:
            best = self._best[u.points]
        else:
            best = self._best[u.points] = _best_mode(u.points, hp, pp, self.config.economics)
        return (None if want is None else want.mode) is not best

    def _decide(self, market: MarketView, units: list[Unit], now: float) -> None:
        self.counters.decide_calls += 1
        site = self.config.site
        self._views(self.s.units if self.fleetwide else units, now)
        fleetwide = {
            p.name: self._decide_fleetwide(p, market, now)
            for p in self.policies
            if p.name not in PER_RIG_POLICIES
        }
        if fleetwide:
            units = list(self.s.units)
        views = self._views(units, now)
        per_policy: list[Mapping[RigId, Intent]] = [
            fleetwide[p.name] if p.name in fleetwide else _ask(p, market, views, site, now)
            for p in self.policies
        ]
        intents = combine(per_policy, views)
        for u in units:
            want = intents.get(u.uid)
            if want is None:
                self.intents.pop(u.uid, None)
            else:
                self.intents[u.uid] = want

    def _quiet(
        self, u: Unit, stale: bool, prices: tuple[float | None, float | None], now: float
    ) -> bool:
        """True when the guards' documented result for ``u`` is "stays as it is, same memory":
        nothing asks it to change, no guard holds it back, it is neither hot nor latched; or
        hysteresis (or a dwell not yet over) held it with exactly these inputs before."""
        mem = u.memory
        if mem is None or mem.thermal_cap is not None:
            return False
        if u.pending:
            if u.guard_key != self._guard_key(u, prices) or u.held_by not in (HYSTERESIS, DWELL):
                return False
            if u.held_by == HYSTERESIS:
                return True
            due = (mem.changed_at or 0.0) + self.config.guards.min_dwell_s
            return now < due
        temp = u.temp_c
        if temp >= self.config.guards.thermal_limit_c:
            return False
        want = self.intents.get(u.uid)
        if want is None:
            return True
        if Setting.of(want.mode, want.power_limit_w) != mem.setting:
            return False
        g = self.config.guards
        return not (
            stale
            and g.stale_failsafe is not FailSafe.HOLD
            and want.policy not in g.stale_exempt_policies
        )

    def _decide_fleetwide(
        self, policy: Policy, market: MarketView, now: float
    ) -> dict[RigId, Intent]:
        """One view per rig; a cohort whose rigs get different intents is split by intent."""
        expanded: list[RigView] = []
        owner: dict[RigId, tuple[Unit, int]] = {}
        for u in self.s.units:
            assert u.view is not None
            for k in range(u.m):
                rid = f"{u.uid}.{k}"
                expanded.append(dataclasses.replace(u.view, rig_id=rid))
                owner[rid] = (u, k)
        raw = _ask(policy, market, expanded, self.config.site, now)
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
                    part.view_key, part.points = u.view_key, u.points
                self.s.units.insert(self.s.units.index(u) + n, part)
            parts.append(part)
        for part, ks in zip(parts, index_groups, strict=True):
            part.members = [members[k] for k in ks]
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
        """``apply_guards`` over ``units`` (the others are quiet: see :meth:`_quiet`), power-ups
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
        guards = self.config.guards
        slots = start_slots(prune_log(self.ramp_log, now, guards), guards, now)[1]
        shown = {u.uid: self._shown(u, slots) for u in units}
        wide = {uid for uid, ids in shown.items() if len(ids) > 1}
        known = all(u.rise_key == self._guard_key(u, prices) for u in units if u.uid in wide)
        if self.config.exact or not wide or known:
            self._guard_once(market, [(u, shown[u.uid]) for u in units], now, prices)
            return
        log = self.ramp_log
        desired, state = self._call(market, [(u, [u.uid]) for u in units], now)
        rises = [u for u in units if _is_rise(u, desired[u.uid], state.rigs.get(u.uid), now)]
        again = {u.uid for u in rises} if any(u.uid in wide for u in rises) else set()
        for u in units:
            if u.uid not in again:
                self._take(u, desired[u.uid], state.rigs.get(u.uid), now, prices)
        if again:
            self.counters.guard_calls += 1
            self.ramp_log = log
            self._guard_once(market, [(u, shown[u.uid]) for u in rises], now, prices)

    def _guard_once(
        self,
        market: MarketView,
        shown: list[tuple[Unit, list[str]]],
        now: float,
        prices: tuple[float | None, float | None],
    ) -> None:
        """One ``apply_guards`` call over the cohorts, each shown under its ids."""
        desired, state = self._call(market, shown, now)
        for u, ids in shown:
            if len(ids) == 1:
                self._take(u, desired[ids[0]], state.rigs.get(ids[0]), now, prices)
            else:
                self._take_split(u, ids, desired, state, now, prices)

    def _shown(self, u: Unit, slots: int) -> list[str]:
        """The ids ``u`` is shown to the guards under. Only the ramp treats a cohort's rigs
        differently, and only for a power-up: it grants at most one rig per start slot left
        this tick, so that many plus one (to be held) are shown; the others stand behind the
        one held."""
        want = self.intents.get(u.uid)
        if want is None or slots == 0 or u.m == 1 or u.view is None:
            return [u.uid]
        hold = u.memory.setting if u.memory is not None else u.setting
        wanted = Setting.of(want.mode, want.power_limit_w)
        if wanted == hold or not is_raise(u.view, hold, wanted):
            return [u.uid]
        n = min(u.m, slots + 1)
        return [_copy_id(u.uid, k) for k in range(n)]

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
            if len(ids) == 1:  # as itself
                fleet.append(view)
                if want is not None:
                    intents[u.uid] = want
                if mem is not None:
                    memory[u.uid] = mem
                continue
            copies = self._intent_copies(u, want, len(ids)) if want is not None else None
            obs, modes, points, group = view.observation, view.modes, view.points, view.group
            limits = view.power_limit_range_w
            for k, rid in enumerate(ids):
                fleet.append(RigView(rid, obs, modes, points, group, limits))
                if copies is not None:
                    intents[rid] = copies[k]
                if mem is not None:
                    memory[rid] = mem
        # As the loop does: no policy command to a rig still settling after a change, and no
        # change that would not pay for itself.
        terms = self.config.guards.economics
        intents = dict(hold_transitions(intents, fleet, memory, _timing, market, terms, now))
        state = GuardState(rigs=memory, ramp_log=self.ramp_log)
        desired, new_state = apply_guards(
            intents, fleet, market, state, self.config.guards, (), now, self.config.seed
        )
        self.ramp_log = new_state.ramp_log
        return desired, new_state

    def _intent_copies(self, u: Unit, want: Intent, n: int) -> list[Intent]:
        """``want`` for the first ``n`` of the ids ``u`` is shown under rig by rig (kept while
        its intent is the same object: intents are immutable)."""
        kept = u.intent_copies
        if kept is None or kept[0] is not want:
            kept = u.intent_copies = (want, [])
        copies = kept[1]
        while len(copies) < n:
            copies.append(_retarget(want, _copy_id(u.uid, len(copies))))
        return copies

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
        rigs = new_state.rigs
        groups: dict[tuple[object, ...], list[int]] = {}
        firsts: list[str] = []
        for k, rid in enumerate(ids):
            d = desired[rid]
            key = (d.mode, d.power_limit_w, d.held_back, rigs.get(rid))
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
                firsts.append(rid)
            group.append(k)
            if rid == rest_id:
                group.extend(range(len(ids), u.m))
        parts = self._split(u, list(groups.values()), now)
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
        safe = nearest_safe(mode, u.cls.modes)
        setting = Setting.of(safe, limit if safe is mode else None)
        if setting != u.setting:
            self.s.command(u, setting, now)

    def next_tick(self, now: float) -> float | None:
        """When the next tick could change anything, before new prices: the next ``tick_s``
        while a rig is in transition, held by the ramp or thermally, or latched; when its
        dwell ends for a rig the dwell holds; never for a rig only hysteresis holds (that
        changes with prices or observations only)."""
        tick = self.config.tick_s
        if self.config.exact or self.clocked:
            return now + tick
        due: float | None = None
        for u in self.s.units:
            mem = u.memory
            if not u.phys.settled or (mem is not None and mem.thermal_cap is not None):
                return now + tick
            if u.settling:  # decided again (and scored on its readings) once settled
                return now + tick
            if not u.pending or u.held_by == HYSTERESIS:
                continue
            if u.held_by == DWELL and mem is not None and mem.changed_at is not None:
                when = mem.changed_at + self.config.guards.min_dwell_s
                steps = max(1, math.ceil((when - now) / tick - 1e-9))
                at = now + steps * tick
                due = at if due is None else min(due, at)
                continue
            return now + tick
        return due

    def merge(self, now: float) -> None:
        """Cohorts that have become indistinguishable become one again."""
        dwell = self.config.guards.min_dwell_s
        seen: dict[tuple[object, ...], Unit] = {}
        keep: list[Unit] = []
        merged = False
        for u in self.s.units:
            mem = u.memory
            if not u.phys.settled or u.pending or mem is None or u.settling:
                keep.append(u)
                continue
            recent = mem.changed_at is not None and now - mem.changed_at < dwell
            key = (
                u.cls.label,
                u.setting,
                u.phys.key(),
                mem.setting,
                mem.previous,
                mem.changed_by,
                mem.thermal_cap,
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
            into.members = sorted(into.members + u.members)
            self.intents.pop(u.uid, None)
            merged = True
        if merged:
            self.s.units = keep
            self.s.touch(now)
        self.counters.peak_units = max(self.counters.peak_units, len(self.s.units))


def _timing(rig_id: RigId) -> Transition:
    """The backtest's rigs are the simulator's, which follow the stock timing."""
    return STOCK


def _settling(u: Unit, now: float) -> bool:
    until = settling_until(u.memory, STOCK)
    return until is not None and now < until


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


def _best_mode(
    points: Sequence[tuple[Mode, float, float]], hp: float, pp: float, terms: Economics
) -> Mode | None:
    """The mode ``breakeven`` picks from these points (docs/policies.md: the best margin, ties to
    the lower power; no intent without a hashing point), by the core's arithmetic."""
    if not any(m in _HASHING and ths > 0 for m, ths, _ in points):
        return None
    best: Mode | None = None
    best_key = (math.inf, math.inf)
    for mode, ths, watts in points:  # the first smallest, as min() would pick
        key = (
            -round(revenue_usd_per_day(ths, hp, terms) - cost_per_day(watts, pp, terms), 9),
            watts,
        )
        if best is None or key < best_key:
            best, best_key = mode, key
    return best


# ---------------------------------------------------------------------------------------------
# running everything


def _units(strategy: Strategy, classes: Sequence[RigClass], start: float) -> None:
    steady: dict[tuple[str, float, float], RigPhysics] = {}
    for c in classes:
        key = (c.spec.key, c.health, c.ambient_c)
        if key not in steady:
            steady[key] = RigPhysics.running(c.spec, c.health, c.ambient_c, start)
        strategy.units.append(
            Unit(
                strategy.new_uid(),
                c,
                list(range(c.first, c.first + c.count)),
                steady[key].copy(),
                Setting(Mode.NORMAL),
                start,
            )
        )


def replay(
    market: Market,
    fleet: Fleet,
    policies: Sequence[Policy],
    config: ReplayConfig,
    progress: ProgressFn | None = None,
    on_ramp: RampFn | None = None,
) -> Outcome:
    """Run the policies, always-on and the plain threshold over ``market`` with ``fleet``.
    ``on_ramp`` is told the policy run's ramp memory after each guard step (an audit of the
    power-ups the replay keeps: bench/backtest.py --ramp-audit, tests).

    Deterministic: the same inputs give the same outcome."""
    # As in the daemon, one tick schedules power-up starts up to the next tick. The replay
    # starts a granted rig at the tick, not at its slot within the tick (docs/backtest.md).
    config = dataclasses.replace(
        config, guards=dataclasses.replace(config.guards, ramp_horizon_s=config.tick_s)
    )
    classes = classes_of(fleet)
    prices = Prices.of(market)
    terms = config.economics
    rows = market.rows
    interval = float(market.interval_s)

    live = Strategy(prices, terms, classes)
    _units(live, classes, market.start)
    run = PolicyRun(live, policies, config, progress, on_ramp)
    p0_live = live.initial_power_w()

    thr = Strategy(prices, terms, classes)
    _units(thr, classes, market.start)
    p0_thr = thr.initial_power_w()
    on_ratio = {}
    for u in thr.units:
        ths, w = u.phys.hashrate_ths, u.phys.power_w
        on_ratio[u.uid] = (ths, w)

    always = Strategy(prices, terms, classes)
    _units(always, classes, market.start)

    total = len(rows)
    step = max(1, total // 100)
    for i, row in enumerate(rows):
        t0 = row.t
        t1 = t0 + interval
        view = MarketView(
            row.hashprice_usd_per_ph_day, row.power_price_usd_per_kwh, "backtest", "backtest"
        )
        run.merge(t0)
        t = t0
        while True:
            run.tick(t, view)
            nxt = run.next_tick(t)
            if nxt is None or nxt >= t1 - 1e-9:
                live.advance(t1, i)
                break
            live.advance(nxt, i)
            t = nxt
        live.end_row(t1)

        hp, pp = prices.hp[i], prices.pp[i]
        for u in thr.units:
            ths, w = on_ratio[u.uid]
            on = revenue_usd_per_day(ths, hp, terms) - cost_per_day(w, pp, terms) >= 0
            thr.command(u, Setting(Mode.NORMAL if on else Mode.SLEEP), t0)
        thr.advance(t1, i)
        thr.end_row(t1)

        always.advance(t1, i)
        always.end_row(t1)
        if progress is not None and (i % step == 0 or i == total - 1):
            progress(i + 1, total)

    end = market.end
    for s in (live, thr, always):
        s.finish(end)
    return Outcome(
        market,
        fleet,
        classes,
        config,
        Replay("policy", live, live.steepest_ramp_kw_per_min(market.start, p0_live), run.counters),
        Replay("always-on", always, 0.0),
        Replay("threshold", thr, thr.steepest_ramp_kw_per_min(market.start, p0_thr)),
    )
