"""The replay's books: prices as step functions, and each cohort's energy, revenue, cost and
time in mode, credited to its rigs, with the per-row series the report draws."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from backtest.classes import RigClass
from backtest.inputs import Market
from backtest.physics import RigPhysics, steady_rates
from daemon.rig_economics import Ratios
from policies.api import Intent, RigView
from policies.economics import Economics
from policies.guards import (
    RigGuardState,
    Setting,
)
from policies.guards.power import FLOOR_MODES
from policies.values import Identity, Mode

_DAY_S = 86_400.0


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
    intent_copies: tuple[Intent, dict[str, Intent]] | None = None  # see PolicyRun._intent_copies
    temp_c: float = 0.0  # chip temperature as observed (rounded), at the last look
    view: RigView | None = None
    identity: Identity | None = None  # its rigs' identity as observed (PolicyRun), kept
    view_key: tuple[object, ...] | None = None
    stale_view: bool = True  # the physics moved since the view was last checked
    changed: bool = True  # its observation changed since the policies last saw it
    settling: bool = False  # commanded and not yet settled (policies/transition.py)
    ratios: Ratios | None = None  # measured shares of rated hashrate and power, last seen
    # (memory, until when it says the rigs settle): settling_until of that memory, kept
    settle_until: tuple[RigGuardState | None, float | None] | None = None
    m: int = field(init=False, default=0)  # len(members), kept (read in every hot loop)

    def __post_init__(self) -> None:
        self.m = len(self.members)

    def regroup(self, members: list[int]) -> None:
        """The cohort is now ``members`` (sorted rig indices)."""
        self.members = members
        self.m = len(members)


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
        self._hashing: int | None = None  # rigs not asleep, kept until a command or touch
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
        if u.setting.mode in FLOOR_MODES:
            u.acct.asleep_s += dt
        elif u.setting.mode is Mode.LOW:
            u.acct.low_s += dt

    def flush(self, u: Unit) -> None:
        """Credit ``u``'s per-rig accounts to each of its rigs, the totals that are not zero
        (adding a zero changes nothing: the totals start at +0.0 and can never be -0.0, x - x
        being +0.0, and x + ±0.0 is x for every other x)."""
        a = u.acct
        energy, revenue, cost, asleep, low = (
            a.energy_ws,
            a.revenue_usd,
            a.cost_usd,
            a.asleep_s,
            a.low_s,
        )
        credits = [
            (totals, x)
            for totals, x in (
                (self.rig_energy_ws, energy),
                (self.rig_revenue, revenue),
                (self.rig_cost, cost),
                (self.rig_asleep_s, asleep),
                (self.rig_low_s, low),
            )
            if x
        ]
        members = u.members
        if len(credits) == 3:  # running, or asleep (no revenue, no time at low)
            (t0, x0), (t1, x1), (t2, x2) = credits
            for i in members:
                t0[i] += x0
                t1[i] += x1
                t2[i] += x2
        elif len(credits) == 4:  # asleep or at low part of the time
            (t0, x0), (t1, x1), (t2, x2), (t3, x3) = credits
            for i in members:
                t0[i] += x0
                t1[i] += x1
                t2[i] += x2
                t3[i] += x3
        else:
            for totals, x in credits:
                for i in members:
                    totals[i] += x
        if a.changes:
            changes = self.rig_changes
            for i in u.members:
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
        self._hashing = None

    def command(self, u: Unit, setting: Setting, t: float) -> None:
        """The rigs of ``u`` are told ``setting`` at ``t``."""
        if setting == u.setting:
            return
        self.settle(u, t)
        if u.phys.settled:
            self.touch(t)
        u.setting = setting
        self._hashing = None
        u.acct.changes += 1
        u.stale_view = True
        u.phys.command(setting, t)
        u.since = t

    def advance(self, t: float, row: int) -> None:
        """Every unit to ``t`` (within row ``row``): transients step by step, settled ones
        later, lazily."""
        self._close_segment(self._seg_start)
        hp, pp = self.prices.hp[row], self.prices.pp[row]
        sink = self.events
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

    def end_row(self, t: float) -> None:
        self._close_segment(t)
        self._row_e += self._settled_p * (t - self._seg_start)
        self._row_h += self._settled_h * (t - self._seg_start)
        self._seg_start = t
        self.row_energy_ws.append(self._row_e)
        self.row_hash_ths_s.append(self._row_h)
        if self._hashing is None:
            self._hashing = sum(u.m for u in self.units if u.setting.mode not in FLOOR_MODES)
        self.row_hashing.append(self._hashing)
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
        # The power after each time with a change (the last of that time's changes, added one
        # by one in time order to p0_w): levels[i] from times[i - 1] to times[i] (p0_w before
        # the first). The average below skips nothing by this: a change at the time of the one
        # before adds level * 0.0 to its sum, a zero (the levels are finite).
        after = itertools.accumulate(map(itemgetter(1), ev), initial=p0_w)
        next(after)
        last = dict(zip(map(itemgetter(0), ev), after, strict=True))
        times: list[float] = list(last)
        levels: list[float] = [p0_w, *last.values()]
        n = len(times)

        def avg(minute: int) -> float:
            a, b = start + 60.0 * minute, start + 60.0 * (minute + 1)
            i = bisect.bisect_right(times, a)
            cur = levels[i]
            total, t = 0.0, a
            while i < n:
                at = times[i]
                if at >= b:
                    break
                total += cur * (at - t)
                t = at
                i += 1
                cur = levels[i]
            return (total + cur * (b - t)) / 60.0

        met = {int((t - start) // 60.0) for t in times}  # minutes with a change, and the next
        minutes = sorted(met.union([mnt + 1 for mnt in met]))
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
