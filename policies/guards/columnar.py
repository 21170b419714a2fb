"""``apply_guards`` over a :class:`policies.columns.FleetViews`: the same answer, most rigs at once.

Most rigs, most ticks, are in one of a few plain situations (docs/guards.md, "How a tick is
computed"): a known setting, no thermal latch, not hot, no override or one pinning the rig
where it is, and either no intent, an intent for where it is, or (freshly read, cool) an intent
to move that only hysteresis, the dwell or the ramp can stop. Those are found and answered with
numpy, over the fleet's columns and the guard memory's columns (kept with the returned state,
so the next tick starts from them). Every other rig goes through the per-rig chain
(``decide_rig``) exactly as in ``core.apply_guards``, and the ramp orders all rises together,
with the same keys and the same jitter draws. The result, ``Desired`` per rig in fleet order,
is made rig by rig only when read.

tests/test_columns.py runs random fleets, intents, overrides and faults through both paths,
tick after tick, and checks they give equal desired states (reasons included) and states.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

import numpy as np

from policies.api import Intent, LazyReason, MarketView
from policies.columns import (
    CODE_MODES,
    LIMIT,
    MODE_CODES,
    NONE,
    OFF,
    POINT_MODES,
    SLEEP,
    UNKNOWN,
    Bools,
    FleetViews,
    Floats,
    IntentColumns,
    Ints,
)
from policies.guards.core import _desired, _next_rig_state
from policies.guards.model import (
    DWELL,
    GUARD_NAMES,
    HYSTERESIS,
    NO_INTENT,
    OVERRIDE,
    RAMP,
    RAMP_KW_WINDOW_S,
    Desired,
    GuardConfig,
    GuardState,
    Override,
    RampGrant,
    RigGuardState,
    Setting,
)
from policies.guards.power import _EPS_W, is_raise
from policies.guards.ramp import (
    _EPS_KW,
    Rise,
    _at,
    _held,
    make_rise,
    prune_log,
    ramp_text,
    start_slots,
)
from policies.guards.rig import (
    NO_INTENT_REASON,
    SOURCE_OVERRIDE,
    Decision,
    Latch,
    decide_rig,
    dwell_text,
    hysteresis_text,
    override_reason,
)
from policies.values import Mode, RigId

# How each rig's answer is made (DesiredColumns)
_MADE, _KEEP, _AS_ASKED, _PINNED, _HYSTERESIS, _DWELL, _CHANGE, _RAMPED = range(8)


class MemoryColumns:
    """The guards' memory of the fleet's rigs (``rigs``, a GuardState's mapping) as columns in
    fleet order (``ids``): what the column path reads of each rig's ``RigGuardState``."""

    __slots__ = (
        "arrays",
        "by_guard",
        "cap_none",
        "changed_at",
        "has",
        "ids",
        "limit_none",
        "mode",
        "prev",
        "prev_limit_none",
        "rigs",
    )

    def __init__(
        self,
        rigs: Mapping[RigId, RigGuardState],
        ids: tuple[RigId, ...],
        columns: tuple[Bools, Ints, Bools, Floats, Ints, Bools, Bools, Bools],
    ) -> None:
        self.rigs: Final = rigs
        self.ids: Final = ids
        self.arrays: Final = columns
        (
            self.has,
            self.mode,
            self.limit_none,
            self.changed_at,
            self.prev,
            self.prev_limit_none,
            self.by_guard,
            self.cap_none,
        ) = columns

    @classmethod
    def of(cls, rigs: Mapping[RigId, RigGuardState], ids: tuple[RigId, ...]) -> MemoryColumns:
        rows = [_row(rigs.get(rid)) for rid in ids]
        n = len(ids)
        cols = list(zip(*rows, strict=True)) if rows else [()] * 8
        return cls(
            rigs,
            ids,
            (
                np.array(cols[0], dtype=np.bool_).reshape(n),
                np.array(cols[1], dtype=np.int64).reshape(n),
                np.array(cols[2], dtype=np.bool_).reshape(n),
                np.array(cols[3], dtype=np.float64).reshape(n),
                np.array(cols[4], dtype=np.int64).reshape(n),
                np.array(cols[5], dtype=np.bool_).reshape(n),
                np.array(cols[6], dtype=np.bool_).reshape(n),
                np.array(cols[7], dtype=np.bool_).reshape(n),
            ),
        )

    def updated(
        self,
        rigs: Mapping[RigId, RigGuardState],
        changes: Sequence[tuple[int, RigGuardState]],
    ) -> MemoryColumns:
        """These columns for ``rigs``, which differ from ``self.rigs`` at ``changes``."""
        cols = tuple(a.copy() for a in self.arrays)
        for i, memory in changes:
            for col, value in zip(cols, _row(memory), strict=True):
                col[i] = value
        return MemoryColumns(rigs, self.ids, cols)  # type: ignore[arg-type]


def _row(m: RigGuardState | None) -> tuple[bool, int, bool, float, int, bool, bool, bool]:
    if m is None:
        return (False, UNKNOWN, True, math.nan, NONE, True, False, True)
    prev = m.previous
    return (
        True,
        MODE_CODES[m.setting.mode],
        m.setting.power_limit_w is None,
        math.nan if m.changed_at is None else m.changed_at,
        NONE if prev is None else MODE_CODES[prev.mode],
        prev is None or prev.power_limit_w is None,
        m.changed_by in GUARD_NAMES,
        m.thermal_cap is None,
    )


def memory_of(state: GuardState, ids: tuple[RigId, ...]) -> MemoryColumns:
    """``state``'s memory as columns for ``ids``: the ones kept with it when they match."""
    kept = state.columns
    if isinstance(kept, MemoryColumns) and kept.rigs is state.rigs and kept.ids == ids:
        return kept
    return MemoryColumns.of(state.rigs, ids)


class DesiredColumns(Mapping[RigId, Desired]):
    """The guards' answer for every rig of the fleet, in fleet order; each ``Desired`` is made
    when first read (the same value ``core.apply_guards`` gives) and kept."""

    __slots__ = (
        "_args",
        "_band",
        "_dwell_s",
        "_fleet",
        "_hold",
        "_intent",
        "_kind",
        "_made",
        "_pins",
        "_ramp_left",
        "_target",
    )

    def __init__(
        self,
        fleet: FleetViews,
        kind: Ints,
        hold: Ints,
        target: Ints,
        args: Floats,
        made: dict[RigId, Desired],
        intent: Mapping[RigId, Intent] | list[Intent | None],
        pins: dict[int, tuple[Override, str]],
        ramp_left: tuple[float, int],
        config: GuardConfig,
    ) -> None:
        self._band = config.hysteresis_usd_per_day
        self._dwell_s = config.min_dwell_s
        self._fleet = fleet
        self._kind = kind
        self._hold = hold
        self._target = target
        self._args = args
        self._made = made
        self._intent = intent
        self._pins = pins
        self._ramp_left = ramp_left

    def _intent_at(self, i: int, rig_id: RigId) -> Intent:
        source = self._intent
        intent = source[i] if isinstance(source, list) else source[rig_id]
        assert intent is not None
        return intent

    def __getitem__(self, rig_id: RigId) -> Desired:
        made = self._made.get(rig_id)
        if made is not None:
            return made
        i = self._fleet.columns.index.get(rig_id)
        if i is None:
            raise KeyError(rig_id)
        kind = int(self._kind[i])
        hold = CODE_MODES[self._hold[i]]
        if kind == _KEEP:
            d = Desired(rig_id, hold, None, NO_INTENT_REASON, NO_INTENT)
        elif kind in (_AS_ASKED, _CHANGE):
            intent = self._intent_at(i, rig_id)
            mode = CODE_MODES[self._target[i]]
            d = Desired(rig_id, mode, None, intent.lazy_reason, intent.policy)
        elif kind == _PINNED:
            _, why = self._pins[int(self._fleet.columns.group_codes[i])]
            d = Desired(rig_id, hold, None, why, OVERRIDE)
        elif kind == _HYSTERESIS:
            held: LazyReason = (hysteresis_text, (hold, float(self._args[i]), self._band))
            d = Desired(rig_id, hold, None, held, HYSTERESIS, held_back=True)
        elif kind == _DWELL:
            waits: LazyReason = (dwell_text, (float(self._args[i]), self._dwell_s))
            d = Desired(rig_id, hold, None, waits, DWELL, held_back=True)
        else:
            assert kind == _RAMPED
            intent = self._intent_at(i, rig_id)
            kw = float(self._args[i])
            d = _ramp_held(rig_id, self._hold[i], self._target[i], kw, intent, self._ramp_left)
        self._made[rig_id] = d
        return d

    def __iter__(self) -> Iterator[RigId]:
        return iter(self._fleet.columns.ids)

    def __len__(self) -> int:
        return len(self._fleet.columns.ids)

    def __repr__(self) -> str:
        return f"DesiredColumns({len(self)} rigs)"


def apply_columns(
    intents: Mapping[RigId, Intent],
    fleet: FleetViews,
    market: MarketView,
    state: GuardState,
    config: GuardConfig,
    overrides: Sequence[Override],
    now: float,
    seed: int,
) -> tuple[DesiredColumns, GuardState]:
    """``core.apply_guards`` for a fleet with columns and unique ids, its clock already checked
    (``state.as_of`` is not after ``now``). See the module docstring."""
    c = fleet.columns
    n = len(c)
    ids, views = c.ids, fleet.views
    prior_rigs = state.rigs
    mem = memory_of(state, ids)

    # -- the intents, as codes -------------------------------------------------------------
    exempt = config.stale_exempt_policies
    intent_list: list[Intent | None] | None = None
    if isinstance(intents, IntentColumns) and intents.fleet is fleet:
        icode = intents.codes
        exempt_rig: Bools | bool = intents.policy in exempt
        policy_of: Mapping[RigId, Intent] | list[Intent | None] = intents
    else:
        intent_list = []
        codes, exempts = [], []
        unknown = Mode.UNKNOWN
        for rid in ids:
            intent = intents.get(rid)
            if intent is not None and (intent.rig_id != rid or intent.mode is unknown):
                intent = None  # ignored, as propose() and intents_for() do
            intent_list.append(intent)
            if intent is None:
                codes.append(NONE)
                exempts.append(False)
            else:
                codes.append(MODE_CODES[intent.mode])
                exempts.append(intent.policy in exempt)
        icode = np.array(codes, dtype=np.int64).reshape(n)
        exempt_rig = np.array(exempts, dtype=np.bool_).reshape(n)
        policy_of = intent_list

    def intent_at(i: int) -> Intent | None:
        if intent_list is not None:
            return intent_list[i]
        return intents.get(ids[i]) if icode[i] >= 0 else None

    # -- overrides -------------------------------------------------------------------------
    live = [o for o in overrides if o.active(now)]
    overridden = np.zeros(n, dtype=np.bool_)
    for o in live:
        for rid in o.rig_ids:
            i = c.index.get(rid)
            if i is not None:
                overridden[i] = True
    named = overridden.copy()  # named by an override (a specific one outranks any group's)
    by_group: dict[str, list[Override]] = {}
    for o in live:
        if o.group:
            by_group.setdefault(o.group, []).append(o)
    pins: dict[int, tuple[Override, str]] = {}  # group code -> its only live override
    pinned = np.zeros(n, dtype=np.bool_)
    for group, found in by_group.items():
        g = c.groups.get(group)
        if g is None:
            continue
        members = c.group_codes == g
        overridden |= members
        o = found[0]
        if len(found) == 1 and o.mode is not Mode.LIMIT:
            pins[g] = (o, override_reason(o))
            pinned |= members & (mem.mode == MODE_CODES[o.mode])

    # -- which rigs are plain ---------------------------------------------------------------
    stale_seen = now - c.observed_at > config.observation_ttl_s
    fresh = c.observed & ~stale_seen
    temp = np.where(fresh, c.temp_c, np.nan)
    with np.errstate(invalid="ignore"):
        cool = ~(temp >= config.thermal_limit_c)
    base = (
        c.regular
        & mem.has
        & mem.cap_none
        & mem.limit_none
        & (mem.mode != UNKNOWN)
        & (mem.mode != LIMIT)
        & cool
    )
    pinned &= base & ~named
    plain = base & ~overridden
    prices_fresh = (
        market.hashprice_usd_per_ph_day is not None and market.power_price_usd_per_kwh is not None
    )
    keep = plain & (icode == NONE)
    asked = plain & (icode >= 0) & (prices_fresh | exempt_rig)
    as_asked = asked & (icode == mem.mode)
    moving = asked & (icode != mem.mode) & (icode != LIMIT) & ~np.isnan(temp)
    slow = ~(keep | as_asked | moving | pinned)

    # -- hysteresis, dwell, and what a move would cost the ramp ------------------------------
    cols = np.arange(n)
    hold_w = _watts(c.watts, c.has_point, mem.mode, cols)
    target_w = _watts(c.watts, c.has_point, icode, cols)
    nan = np.full(n, np.nan)
    target_margin = hold_margin = nan
    hashprice = market.hashprice_usd_per_ph_day
    price = market.power_price_usd_per_kwh
    if hashprice is not None and price is not None:
        terms = config.economics
        # revenue_usd_per_day - cost_per_day, operand for operand
        margin = c.ths / 1000.0 * hashprice * (1.0 - terms.pool_fee) - (
            c.watts / 1000.0 * 24.0 * price * terms.overhead
        )
        target_margin = _at_mode(margin, c.has_point, icode, cols)
        hold_margin = _at_mode(margin, c.has_point, mem.mode, cols)
    gain = target_margin - hold_margin
    with np.errstate(invalid="ignore"):
        hysteresis = (
            moving
            & (mem.prev == icode)
            & mem.prev_limit_none
            & ~mem.by_guard
            & ~np.isnan(gain)
            & (np.abs(gain) <= config.hysteresis_usd_per_day)
        )
        since = now - mem.changed_at
        dwell = moving & ~hysteresis & (since < config.min_dwell_s)  # NaN (never changed): no
    go = moving & ~hysteresis & ~dwell
    floor = (icode == SLEEP) | (icode == OFF)
    with np.errstate(invalid="ignore"):
        rising = np.where(
            np.isnan(hold_w), ~floor, np.isnan(target_w) | (target_w > hold_w + _EPS_W)
        )
    change = go & ~rising
    fast_rises = np.flatnonzero(go & rising)
    after_w = np.where(
        np.isnan(target_w), np.maximum(config.default_rig_power_w, c.max_point_w), target_w
    )
    up = after_w - np.where(np.isnan(hold_w), 0.0, hold_w)
    kw = np.where(up > 0.0, up, 0.0) / 1000.0
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(
            ~np.isnan(target_margin) & (target_w != 0.0), target_margin / (target_w / 1000.0), nan
        )

    # -- the rest, rig by rig, through the whole chain ---------------------------------------
    made: dict[RigId, Desired] = {}
    moved: list[tuple[int, RigGuardState | None, Setting, Decision, Latch]] = []
    slow_rises: list[Rise] = []
    for i in np.flatnonzero(slow).tolist():
        rig = views[i]
        prior = prior_rigs.get(ids[i])
        hold, decision, latch = decide_rig(rig, intent_at(i), overrides, prior, market, config, now)
        moved.append((i, prior, hold, decision, latch))
        if is_raise(rig, hold, decision.setting):
            slow_rises.append(make_rise(rig, hold, decision, market, config))

    # -- the ramp, over every rise -------------------------------------------------------------
    kept = prune_log(state.ramp_log, now, config)
    in_minute = [g for g in kept if g.at > now - RAMP_KW_WINDOW_S]
    kw_left = config.ramp_kw_per_min - sum(g.kw for g in in_minute)
    slot, slots_left = start_slots(kept, config, now)
    spacing = config.ramp_spacing_s
    quiet_minute = not in_minute
    ahead = _ahead(
        slow_rises, fast_rises, score, c.id_rank, c.index, slots_left + 1, config, seed, now
    )
    grants: list[RampGrant] = []
    blocked = False
    ramped: dict[int, Decision] = {}  # slow rises, by their index in slow_rises
    granted: list[tuple[int, float | None]] = []  # fast rises let through: (rig, start_at)
    held_at: dict[int, tuple[float, int]] = {}  # fast rises held in order: their ramp_left
    fast_kw: list[float] = kw[fast_rises].tolist()
    ns = len(slow_rises)
    for j in ahead:
        pos = -1 if j < ns else int(fast_rises[j - ns])
        if pos < 0:
            rise = slow_rises[j]
            rid, rise_kw = rise.rig.rig_id, rise.kw
        else:
            rid, rise_kw = ids[pos], fast_kw[j - ns]
        alone = quiet_minute and not grants
        fits = rise_kw <= kw_left + _EPS_KW or alone
        if not blocked and slots_left >= 1 and fits:
            at = slot + len(grants) * spacing
            if pos < 0:
                ramped[j] = _at(rise.decision, at) if at > now else rise.decision
            else:
                granted.append((pos, at if at > now else None))
            grants.append(RampGrant(at, rid, rise_kw))
            kw_left -= rise_kw
            slots_left -= 1
            continue
        blocked = True
        if pos < 0:
            ramped[j] = _held(rise, kw_left, slots_left)
        else:
            held_at[pos] = (kw_left, slots_left)
    for j, rise in enumerate(slow_rises):
        if j not in ramped:
            ramped[j] = _held(rise, kw_left, slots_left)
    by_rig = {slow_rises[j].rig.rig_id: d for j, d in ramped.items()}

    # -- the answers, and the new memory -------------------------------------------------------
    kind = np.full(n, _MADE, dtype=np.int64)
    kind[keep] = _KEEP
    kind[as_asked] = _AS_ASKED
    kind[pinned] = _PINNED
    kind[moving & hysteresis] = _HYSTERESIS
    kind[dwell] = _DWELL
    kind[change] = _CHANGE
    kind[fast_rises] = _RAMPED
    args = np.where(hysteresis, gain, np.where(dwell, since, kw))
    rigs: dict[RigId, RigGuardState] = dict(prior_rigs)
    changes: list[tuple[int, RigGuardState]] = []
    for i, prior, hold, decision, latch in moved:
        rid = ids[i]
        final = by_rig.get(rid, decision)
        made[rid] = _desired(rid, final)
        memory = _next_rig_state(prior, hold, final, latch, now)
        if memory is not prior:
            rigs[rid] = memory
            changes.append((i, memory))
    for i in np.flatnonzero(change).tolist():
        changes.append(_moved(i, ids[i], rigs, icode, intent_at(i), now))
    for i, start_at in granted:
        kind[i] = _MADE
        intent = intent_at(i)
        assert intent is not None
        rid = ids[i]
        mode = CODE_MODES[icode[i]]
        made[rid] = Desired(rid, mode, None, intent.lazy_reason, intent.policy, start_at=start_at)
        changes.append(_moved(i, rid, rigs, icode, intent, now))
    ramp_left = (kw_left, slots_left)
    for i, left in held_at.items():  # held in order: with the budget left at that point
        intent = intent_at(i)
        assert intent is not None
        made[ids[i]] = _ramp_held(ids[i], mem.mode[i], icode[i], float(kw[i]), intent, left)
    desired = DesiredColumns(
        fleet, kind, mem.mode, icode, args, made, policy_of, pins, ramp_left, config
    )
    state_out = GuardState(
        rigs=rigs,
        ramp_log=kept + tuple(grants),
        as_of=now,
        columns=mem.updated(rigs, changes),
    )
    return desired, state_out


def _ramp_held(
    rig_id: RigId,
    hold: np.int64 | int,
    target: np.int64 | int,
    kw: float,
    intent: Intent,
    left: tuple[float, int],
) -> Desired:
    """A rise the ramp postponed: as ``ramp._held`` words it."""
    why = (CODE_MODES[target], kw, intent.policy, *left)
    return Desired(rig_id, CODE_MODES[hold], None, (ramp_text, why), RAMP, held_back=True)


def _moved(
    i: int,
    rig_id: RigId,
    rigs: dict[RigId, RigGuardState],
    icode: Ints,
    intent: Intent | None,
    now: float,
) -> tuple[int, RigGuardState]:
    """A plain rig moved to its intent: its new memory (``core._next_rig_state``'s)."""
    prior = rigs[rig_id]
    assert intent is not None
    memory = RigGuardState(
        setting=Setting(CODE_MODES[icode[i]]),
        changed_at=now,
        previous=prior.setting,
        changed_by=intent.policy,
        thermal_cap=None,
        thermal_at=prior.thermal_at,
    )
    rigs[rig_id] = memory
    return i, memory


def _watts(watts: Floats, has: Bools, code: Ints, cols: Ints) -> Floats:
    """``power.power_w`` per rig for the setting of mode ``code`` (NaN: None; not LIMIT)."""
    pt = (code >= 0) & (code < POINT_MODES)
    k = np.where(pt, code, 0)
    found = pt & has[k, cols]
    w = np.where(found, watts[k, cols], np.nan)
    w = np.where((code == SLEEP) & ~found, 0.0, w)
    return np.where(code == OFF, 0.0, w)


def _at_mode(values: Floats, has: Bools, code: Ints, cols: Ints) -> Floats:
    """Per rig, ``values`` at its point for mode ``code`` (NaN without one)."""
    pt = (code >= 0) & (code < POINT_MODES)
    k = np.where(pt, code, 0)
    return np.where(pt & has[k, cols], values[k, cols], np.nan)


def _ahead(
    slow_rises: Sequence[Rise],
    fast: Ints,
    score: Floats,
    id_rank: Ints,
    index: Mapping[RigId, int],
    count: int,
    config: GuardConfig,
    seed: int,
    now: float,
) -> list[int]:
    """``ramp.first_rises`` over the slow rises (indices ``0..len(slow_rises)-1``) and the fast
    ones (``len(slow_rises) + k`` for ``fast[k]``): the first ``count`` in the ramp's order,
    with the same keys and the same jitter draws."""
    ns = len(slow_rises)
    total = ns + len(fast)
    if total == 0 or count <= 0:
        return []
    tie = config.ramp_tie_usd_per_kw_day
    fast_score = score[fast]
    ovr = np.concatenate(
        [
            np.array(
                [0 if r.decision.source == SOURCE_OVERRIDE else 1 for r in slow_rises],
                dtype=np.int64,
            ),
            np.ones(len(fast), dtype=np.int64),
        ]
    )
    known = np.concatenate(
        [
            np.array([0 if r.score is not None else 1 for r in slow_rises], dtype=np.int64),
            np.isnan(fast_score).astype(np.int64),
        ]
    )
    bucket = np.concatenate(
        [
            np.array(
                [0.0 if r.score is None else float(-math.floor(r.score / tie)) for r in slow_rises],
                dtype=np.float64,
            ),
            np.where(np.isnan(fast_score), 0.0, -np.floor(fast_score / tie)),
        ]
    )
    rank = np.concatenate(
        [
            np.array([id_rank[index[r.rig.rig_id]] for r in slow_rises], dtype=np.int64),
            id_rank[fast],
        ]
    )
    by_head = np.lexsort((bucket, known, ovr))
    front = by_head
    if count < total:
        t = by_head[count - 1]
        o, k, b = ovr[by_head], known[by_head], bucket[by_head]
        within = (o < ovr[t]) | (
            (o == ovr[t]) & ((k < known[t]) | ((k == known[t]) & (b <= bucket[t])))
        )
        front = by_head[within]
    among = np.empty(total, dtype=np.int64)  # each rise's rank by rig id among the rises
    among[np.argsort(rank)] = np.arange(total)
    rng = random.Random(f"rigpilot.guards.ramp:{seed}:{now!r}")
    draws = np.array([rng.random() for _ in range(int(among[front].max()) + 1)])
    keys = (rank[front], draws[among[front]], bucket[front], known[front], ovr[front])
    ordered: list[int] = front[np.lexsort(keys)][:count].tolist()
    return ordered
