"""Policy plugins: the registry, the built-ins (breakeven, power-cap, schedule), combining, and
the example plugin in examples/quiet_hours, loaded through the registry without installing it."""

from __future__ import annotations

import copy
import math
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from helpers import identity, observation, rig_view
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import registry
from policies.api import Intent, MarketView, Policy, RigView, Site, check_site
from policies.breakeven import (
    BreakevenPolicy,
    curtailment_j_per_th,
    curtailment_order,
    decide_rig,
)
from policies.builtin import BUILTIN_POLICIES, expected_power_w, power_order_key
from policies.combine import combine
from policies.economics import Economics, ModePoint, breakeven
from policies.power_cap import PowerCapPolicy, counted_power_w, fleet_fallback_w
from policies.schedule import ScheduleError, SchedulePolicy, parse_schedule
from policies.values import Mode, PowerSource, RigId

REPO = Path(__file__).resolve().parents[1]
QUIET_HOURS = REPO / "examples" / "quiet_hours"
TERMS = Economics(pool_fee=0.02, overhead=1.0)
SLEEP_W = 10.0
# (model, TH/s, W) at normal; low is 80 % of the hashrate at 70 % of the power, as the
# catalogue's low modes roughly are, so every rig has the same curve shape.
MODELS = [
    ("S19j Pro", 104.0, 3068.0),
    ("S19 XP", 140.0, 3010.0),
    ("S21", 200.0, 3500.0),
    ("M30S", 88.0, 3344.0),
    ("M50S", 126.0, 3276.0),
    ("M60S", 186.0, 3422.0),
]


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def make_rig(
    rig_id: RigId,
    points: Mapping[Mode, tuple[float, float]],
    *,
    mode: Mode = Mode.NORMAL,
    model: str = "S19j Pro",
    group: str = "",
    readable: bool = True,
    modes: frozenset[Mode] | None = None,
    power_w: float | None = -1.0,
    power_limit_w: int | None = None,
) -> RigView:
    """A rig whose observation matches its point for ``mode`` (unless ``power_w`` is given)."""
    sleep = ModePoint(Mode.SLEEP, 0.0, SLEEP_W, PowerSource.ESTIMATED)
    pts = (sleep, *(ModePoint(m, ths, w, PowerSource.REPORTED) for m, (ths, w) in points.items()))
    current = next((p for p in pts if p.mode is mode), None)
    obs = None
    if readable:
        watts = power_w if power_w != -1.0 else (current.power_w if current else None)
        obs = observation(
            rig_id,
            mode,
            ths=current.hashrate_ths if current else 0.0,
            watts=watts,
            source=PowerSource.REPORTED,
            ident=identity(rig_id, model=model),
            power_limit_w=power_limit_w,
        )
    modes = modes if modes is not None else frozenset({Mode.SLEEP, *points})
    return rig_view(obs, modes, pts, rig_id=rig_id, group=group)


def model_rig(index: int, *, mode: Mode = Mode.NORMAL, group: str = "") -> RigView:
    model, ths, watts = MODELS[index]
    points = {Mode.LOW: (ths * 0.8, watts * 0.7), Mode.NORMAL: (ths, watts)}
    return make_rig(f"10.0.0.{index + 1}", points, mode=mode, model=model, group=group)


def market(hashprice: float | None = 34.9, price: float | None = 0.06) -> MarketView:
    return MarketView(hashprice, price, "test", "test")


# --- breakeven ------------------------------------------------------------------------------


def test_breakeven_reason_names_model_margin_price_and_breakeven() -> None:
    rig = model_rig(0)
    intents = BreakevenPolicy().decide(market(34.9, 0.052), [rig], Site(economics=TERMS), 0.0)
    intent = intents[rig.rig_id]
    assert intent.mode is Mode.LOW and intent.policy == "breakeven"
    normal = breakeven(rig.points[2], 34.9, 0.052, TERMS)
    low = breakeven(rig.points[1], 34.9, 0.052, TERMS)
    assert normal.margin_usd_per_day < 0 < low.margin_usd_per_day
    assert intent.reason == (
        f"S19j Pro: normal loses ${-normal.margin_usd_per_day:.2f}/day at $0.052/kWh, "
        f"$34.90/PH/day (break-even ${normal.breakeven_power_price_per_kwh:.3f}); "
        f"low earns ${low.margin_usd_per_day:.2f}/day"
    )


def test_breakeven_sleeps_when_no_mode_pays_and_keeps_a_paying_mode() -> None:
    rig = model_rig(0)
    policy = BreakevenPolicy()
    sleep = policy.decide(market(34.9, 0.08), [rig], Site(economics=TERMS), 0.0)[rig.rig_id]
    assert sleep.mode is Mode.SLEEP
    assert "no mode beats sleep" in sleep.reason
    run = policy.decide(market(60.0, 0.03), [rig], Site(economics=TERMS), 0.0)[rig.rig_id]
    assert run.mode is Mode.NORMAL
    assert run.reason.endswith("normal is its best mode")


@pytest.mark.parametrize(("hashprice", "price"), [(None, 0.05), (40.0, None), (None, None)])
def test_breakeven_without_a_fresh_price_gives_no_intent(
    hashprice: float | None, price: float | None
) -> None:
    fleet = [model_rig(i) for i in range(len(MODELS))]
    assert BreakevenPolicy().decide(market(hashprice, price), fleet, Site(), 0.0) == {}


def test_breakeven_only_picks_supported_modes_and_skips_rigs_without_figures() -> None:
    no_low = make_rig("a", {Mode.LOW: (83.2, 2147.6), Mode.NORMAL: (104.0, 3068.0)})
    no_low = RigView(
        no_low.rig_id, no_low.observation, frozenset({Mode.SLEEP, Mode.NORMAL}), no_low.points
    )
    unknown = make_rig("b", {}, mode=Mode.UNKNOWN)
    intents = BreakevenPolicy().decide(market(34.9, 0.052), [no_low, unknown], Site(), 0.0)
    assert set(intents) == {"a"}
    assert intents["a"].mode is not Mode.LOW


def test_breakeven_curtails_least_efficient_rigs_first_as_hashprice_falls() -> None:
    fleet = [model_rig(i) for i in range(len(MODELS))]
    by_j_per_th = [
        f"10.0.0.{i + 1}" for i in sorted(range(6), key=lambda i: -MODELS[i][2] / MODELS[i][1])
    ]
    assert [r.rig_id for r in curtailment_order(fleet)] == by_j_per_th

    left_normal: list[RigId] = []
    slept: list[RigId] = []
    policy = BreakevenPolicy()
    for step in range(1000, 0, -1):
        hashprice = step / 10
        intents = policy.decide(market(hashprice, 0.05), fleet, Site(economics=TERMS), 0.0)
        assert list(intents) == by_j_per_th  # listed in curtailment order
        for rig_id, intent in intents.items():
            if intent.mode is not Mode.NORMAL and rig_id not in left_normal:
                left_normal.append(rig_id)
            if intent.mode is Mode.SLEEP and rig_id not in slept:
                slept.append(rig_id)
        sleeping = [r for r in by_j_per_th if intents[r].mode is Mode.SLEEP]
        assert sleeping == by_j_per_th[: len(sleeping)]  # always a prefix: worst first
    assert left_normal == by_j_per_th
    assert slept == by_j_per_th


# --- shared strategies ----------------------------------------------------------------------

HASHING = [Mode.LOW, Mode.NORMAL, Mode.HIGH]


@st.composite
def rig_views(draw: st.DrawFn, rig_id: str) -> RigView:
    present = draw(st.lists(st.sampled_from(HASHING), unique=True, max_size=3))
    points = {m: (draw(st.floats(1.0, 300.0)), draw(st.floats(200.0, 6000.0))) for m in present}
    supported = frozenset(
        {Mode.SLEEP, *draw(st.lists(st.sampled_from(present), unique=True))}
        if present
        else {Mode.SLEEP}
    )
    mode = draw(st.sampled_from(sorted(supported)))
    return make_rig(
        rig_id,
        points,
        mode=mode,
        modes=supported,
        readable=draw(st.integers(0, 5)) > 0,
        group=draw(st.sampled_from(["", "a", "b"])),
    )


fleets = st.integers(0, 6).flatmap(
    lambda n: st.tuples(*[rig_views(f"10.0.0.{i}") for i in range(n)]).map(list)
)
prices = st.floats(0.0, 0.5)
hashprices = st.floats(0.0, 200.0)


@st.composite
def tied_rig_views(draw: st.DrawFn, rig_id: str) -> RigView:
    """Rigs drawn from a few figures, so equal margins and equal efficiencies are common."""
    present = draw(st.lists(st.sampled_from(HASHING), unique=True, max_size=3))
    figures = st.tuples(st.sampled_from([50.0, 100.0]), st.sampled_from([1500.0, 3000.0]))
    points = {m: draw(figures) for m in present}
    chosen = draw(st.lists(st.sampled_from(present), unique=True)) if present else []
    supported = frozenset({Mode.SLEEP, *chosen})
    mode = draw(st.sampled_from(sorted(supported)))
    return make_rig(rig_id, points, mode=mode, modes=supported)


tied_fleets = st.integers(0, 8).flatmap(
    lambda n: st.tuples(*[tied_rig_views(f"10.0.1.{i}") for i in range(n)]).map(list)
)


def reference_breakeven(
    view: MarketView, fleet: Sequence[RigView], site: Site
) -> dict[str, Intent]:
    """``breakeven`` as first written: decide_rig for every rig, in curtailment order."""
    hashprice, price = view.hashprice_usd_per_ph_day, view.power_price_usd_per_kwh
    if hashprice is None or price is None:
        return {}
    out = {}
    for rig in curtailment_order(fleet):
        intent = decide_rig(rig, hashprice, price, site.economics)
        if intent is not None:
            out[rig.rig_id] = intent
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(fleets, tied_fleets),
    st.one_of(hashprices, st.sampled_from([0.0, 30.0, 60.0])),
    st.one_of(prices, st.sampled_from([0.0, 0.03, 0.06])),
)
def test_breakeven_decide_is_decide_rig_for_each_rig_in_curtailment_order(
    fleet: list[RigView], hashprice: float, price: float
) -> None:
    # decide() picks modes in one pass, rounds margins only near a tie and writes reasons
    # lazily; it must give exactly what decide_rig gives, in the same order, reasons included.
    view, site = market(hashprice, price), Site(economics=TERMS)
    got = BreakevenPolicy().decide(view, fleet, site, 0.0)
    want = reference_breakeven(view, fleet, site)
    assert list(got) == list(want)
    assert [(i.mode, i.reason, i.policy) for i in got.values()] == [
        (i.mode, i.reason, i.policy) for i in want.values()
    ]


def test_breakeven_lazy_reasons_keep_the_prices_of_their_own_tick() -> None:
    fleet = [model_rig(i) for i in range(len(MODELS))]
    policy, site = BreakevenPolicy(), Site(economics=TERMS)
    early = policy.decide(market(60.0, 0.03), fleet, site, 0.0)
    late = policy.decide(market(30.0, 0.08), fleet, site, 10.0)
    rig = fleet[0]
    assert "$60.00/PH/day" in early[rig.rig_id].reason  # read after the later tick
    assert "$30.00/PH/day" in late[rig.rig_id].reason
    assert early[rig.rig_id] == decide_rig(rig, 60.0, 0.03, TERMS)


def test_a_lazy_reason_reads_like_text_and_is_formatted_once() -> None:
    calls: list[int] = []

    def explain(subject: int) -> str:
        calls.append(subject)
        return f"because {subject}"

    lazy = Intent("a", Mode.LOW, (explain, 7), "p")
    assert calls == []  # nothing formatted until read
    assert lazy.reason == "because 7" and lazy.reason == "because 7"
    assert calls == [7]
    eager = Intent("a", Mode.LOW, "because 7", "p")
    assert lazy == eager and hash(lazy) == hash(eager) and repr(lazy) == repr(eager)
    assert lazy != Intent("a", Mode.LOW, "because 8", "p")
    assert copy.deepcopy(lazy) == eager


@given(fleets, hashprices, prices)
def test_breakeven_never_picks_a_mode_with_a_lower_margin(
    fleet: list[RigView], hashprice: float, price: float
) -> None:
    intents = BreakevenPolicy().decide(market(hashprice, price), fleet, Site(), 0.0)
    for rig in fleet:
        if rig.rig_id not in intents:
            continue
        supported = [p for p in rig.points if p.mode in rig.modes]
        margins = {
            p.mode: breakeven(p, hashprice, price, Economics()).margin_usd_per_day
            for p in supported
        }
        chosen = intents[rig.rig_id].mode
        assert chosen in margins
        assert margins[chosen] >= max(margins.values()) - 1e-6


@given(fleets, st.one_of(st.none(), hashprices), st.one_of(st.none(), prices))
def test_no_fresh_price_no_breakeven_intents(
    fleet: list[RigView], hashprice: float | None, price: float | None
) -> None:
    if hashprice is None or price is None:
        assert BreakevenPolicy().decide(market(hashprice, price), fleet, Site(), 0.0) == {}


@given(fleets, hashprices, st.floats(0.01, 0.5))
def test_sleeping_rigs_are_a_prefix_of_the_curtailment_order(
    fleet: list[RigView], hashprice: float, price: float
) -> None:
    intents = BreakevenPolicy().decide(market(hashprice, price), fleet, Site(), 0.0)
    order = [r for r in curtailment_order(fleet) if r.rig_id in intents]
    for i, worse in enumerate(order):
        for better in order[i + 1 :]:
            if intents[better.rig_id].mode is Mode.SLEEP:
                # a more efficient rig sleeps only if every worse one does (or at a near-tie)
                assert intents[worse.rig_id].mode is Mode.SLEEP or _threshold(
                    worse
                ) == pytest.approx(_threshold(better), rel=1e-6, abs=1e-6)


def _threshold(rig: RigView) -> float:
    value = curtailment_j_per_th(rig)
    return math.inf if value is None else value


# --- power-cap ------------------------------------------------------------------------------


def site_total_w(fleet: Sequence[RigView], intents: Mapping[RigId, Intent]) -> float:
    fallback = fleet_fallback_w(fleet)
    total = 0.0
    for rig in fleet:
        intent = intents.get(rig.rig_id)
        if intent is None:
            total += counted_power_w(rig, fallback)
        else:
            total += expected_power_w(rig, intent.mode, intent.power_limit_w)
    return total


def test_power_cap_without_a_cap_or_under_it_does_nothing() -> None:
    fleet = [model_rig(i) for i in range(6)]
    assert PowerCapPolicy().decide(market(), fleet, Site(), 0.0) == {}
    assert PowerCapPolicy().decide(market(), fleet, Site(power_cap_kw=100.0), 0.0) == {}


def test_power_cap_steps_down_to_low_when_that_frees_enough() -> None:
    fleet = [model_rig(i) for i in range(6)]
    total = sum(m[2] for m in MODELS)
    cap_kw = (total - 500.0) / 1000
    # every rig pays at these prices: stepping the M30S (38 J/TH) to low loses least
    intents = PowerCapPolicy().decide(market(60.0, 0.03), fleet, Site(power_cap_kw=cap_kw), 0.0)
    assert [(i.rig_id, i.mode) for i in intents.values()] == [("10.0.0.4", Mode.LOW)]
    reason = intents["10.0.0.4"].reason
    assert reason.startswith(f"power cap {cap_kw:.1f} kW: site at {total / 1000:.1f} kW")
    assert "normal -> low frees 1.00 kW" in reason and "loses $" in reason
    assert site_total_w(fleet, intents) <= cap_kw * 1000


def test_power_cap_sheds_least_profitable_load_first_even_without_prices() -> None:
    fleet = [model_rig(i) for i in range(6)]
    total = sum(m[2] for m in MODELS)
    cap_kw = (total - 6000.0) / 1000
    for view in (market(), market(None, None)):
        intents = PowerCapPolicy().decide(view, fleet, Site(power_cap_kw=cap_kw), 0.0)
        assert site_total_w(fleet, intents) <= cap_kw * 1000
        # the least efficient rig (M30S, 38 J/TH) sleeps; the best two (S21, M60S) are spared
        assert intents["10.0.0.4"].mode is Mode.SLEEP
        assert not {"10.0.0.3", "10.0.0.6"} & set(intents)
        assert ("loses $" in intents["10.0.0.4"].reason) == (
            view.hashprice_usd_per_ph_day is not None
        )


def test_power_cap_counts_unread_rigs_at_their_most_and_never_sheds_them() -> None:
    unread = make_rig(
        "u", {Mode.NORMAL: (100.0, 3000.0), Mode.HIGH: (120.0, 4000.0)}, readable=False
    )
    read = make_rig("r", {Mode.LOW: (80.0, 2000.0), Mode.NORMAL: (100.0, 3000.0)})
    cap = Site(power_cap_kw=6.5)
    intents = PowerCapPolicy().decide(market(60.0, 0.03), [unread, read], cap, 0.0)
    assert set(intents) == {"r"} and intents["r"].mode is Mode.LOW
    assert "unread rigs counted at 4.0 kW" in intents["r"].reason


def test_power_cap_holds_rises_that_would_cross_it() -> None:
    asleep = make_rig("s", {Mode.NORMAL: (100.0, 3000.0)}, mode=Mode.SLEEP)
    running = make_rig("n", {Mode.NORMAL: (100.0, 3000.0)})
    intents = PowerCapPolicy().decide(market(), [asleep, running], Site(power_cap_kw=5.0), 0.0)
    assert list(intents) == ["s"]
    hold = intents["s"]
    assert hold.mode is Mode.SLEEP and "held at sleep: normal would add 2.99 kW" in hold.reason
    # with breakeven wanting both to run, combining keeps the site under the cap
    fleet = [asleep, running]
    wants = BreakevenPolicy().decide(market(60.0, 0.03), fleet, Site(), 0.0)
    assert {i.mode for i in wants.values()} == {Mode.NORMAL}
    combined = combine([wants, intents], fleet)
    assert combined["s"].mode is Mode.SLEEP and combined["s"].policy == "power-cap"
    assert "overrules breakeven wanted normal" in combined["s"].reason
    assert site_total_w(fleet, combined) <= 5000.0


@settings(max_examples=200)
@given(fleets, st.floats(0.0, 1.2), st.booleans())
def test_power_cap_reaches_the_cap_whenever_shedding_can(
    fleet: list[RigView], fraction: float, priced: bool
) -> None:
    fallback = fleet_fallback_w(fleet)
    now_w = sum(counted_power_w(r, fallback) for r in fleet)
    floor_w = sum(
        min([counted_power_w(r, fallback)] + [p.power_w for p in r.points if p.mode in r.modes])
        if r.observation is not None
        else counted_power_w(r, fallback)
        for r in fleet
    )
    cap_w = now_w * fraction
    view = market() if priced else market(None, None)
    intents = PowerCapPolicy().decide(view, fleet, Site(power_cap_kw=cap_w / 1000), 0.0)
    for rig in fleet:
        intent = intents.get(rig.rig_id)
        if intent is not None:
            assert rig.observation is not None  # unread rigs are never commanded
            assert expected_power_w(rig, intent.mode) <= counted_power_w(rig, fallback) + 1e-6
    if floor_w <= cap_w:
        assert site_total_w(fleet, intents) <= cap_w + 1e-6


# --- schedule -------------------------------------------------------------------------------

FOUR_CP = {
    "timezone": "America/Chicago",
    "windows": [
        {
            "name": "4cp",
            "start": "16:00",
            "end": "17:30",
            "months": [6, 7, 8, 9],
            "weekdays": ["mon", "tue", "wed", "thu", "fri"],
            "mode": "sleep",
        }
    ],
}


def schedule_site(raw: object) -> Site:
    return Site(params={"schedule": raw})


@pytest.mark.parametrize(
    ("when", "active"),
    [
        ("2026-07-01T21:30:00+00:00", True),  # Wed 16:30 CDT
        ("2026-07-01T20:59:59+00:00", False),  # 15:59:59 CDT
        ("2026-07-01T22:30:00+00:00", False),  # 17:30 CDT: the end is exclusive
        ("2026-07-04T21:30:00+00:00", False),  # Saturday
        ("2026-10-01T21:30:00+00:00", False),  # October
        ("2026-06-01T21:00:00+00:00", True),  # Mon 16:00 CDT, first day of the season
    ],
)
def test_schedule_4cp_window(when: str, active: bool) -> None:
    fleet = [model_rig(0), model_rig(1)]
    intents = SchedulePolicy().decide(market(), fleet, schedule_site(FOUR_CP), ts(when))
    if not active:
        assert intents == {}
        return
    assert {i.mode for i in intents.values()} == {Mode.SLEEP}
    reason = intents["10.0.0.1"].reason
    assert "'4cp' 16:00-17:30 America/Chicago mon-fri, jun-sep: sleep" in reason
    assert "CDT" in reason


def test_schedule_follows_dst() -> None:
    daily = [{"start": "16:00", "end": "17:00", "timezone": "America/Chicago"}]
    policy, fleet = SchedulePolicy(), [model_rig(0)]

    def on(iso: str, raw: object = daily) -> bool:
        return bool(policy.decide(market(), fleet, schedule_site(raw), ts(iso)))

    assert on("2026-03-07T22:30:00+00:00") and not on("2026-03-07T21:30:00+00:00")  # CST
    assert on("2026-03-09T21:30:00+00:00") and not on("2026-03-09T22:30:00+00:00")  # CDT
    gap = [{"start": "02:00", "end": "03:00", "timezone": "America/Chicago"}]
    assert not on("2026-03-08T07:59:00+00:00", gap)  # 01:59 CST
    assert not on("2026-03-08T08:00:00+00:00", gap)  # 03:00 CDT: 02:xx never happened
    repeated = [{"start": "01:00", "end": "02:00", "timezone": "America/Chicago"}]
    assert on("2026-11-01T06:30:00+00:00", repeated)  # 01:30 CDT
    assert on("2026-11-01T07:30:00+00:00", repeated)  # 01:30 CST, the hour again


def test_schedule_overnight_window_belongs_to_its_start_day() -> None:
    friday_night = [{"start": "22:00", "end": "06:00", "weekdays": ["friday"], "timezone": "UTC"}]
    policy, fleet, site = SchedulePolicy(), [model_rig(0)], schedule_site(friday_night)
    assert policy.decide(market(), fleet, site, ts("2026-07-04T03:00:00+00:00"))  # Sat 03:00
    assert policy.decide(market(), fleet, site, ts("2026-07-03T23:00:00+00:00"))  # Fri 23:00
    assert not policy.decide(market(), fleet, site, ts("2026-07-03T03:00:00+00:00"))  # Fri 03
    assert not policy.decide(market(), fleet, site, ts("2026-07-04T22:30:00+00:00"))  # Sat 22


def test_schedule_groups_limits_and_overlaps() -> None:
    raw = {
        "timezone": "Europe/Berlin",
        "windows": [
            {
                "name": "cap",
                "start": "00:00",
                "end": "24:00",
                "mode": "limit",
                "power_limit_w": 2500,
            },
            {
                "name": "row-a quiet",
                "start": "00:00",
                "end": "24:00",
                "mode": "low",
                "groups": ["a"],
            },
        ],
    }
    a, b = model_rig(0, group="a"), model_rig(1, group="b")
    intents = SchedulePolicy().decide(market(), [a, b], schedule_site(raw), 0.0)
    # S19j Pro low draws 2147.6 W, under the 2500 W limit: low is the more restrictive
    assert intents[a.rig_id].mode is Mode.LOW and "also on: cap" in intents[a.rig_id].reason
    assert (intents[b.rig_id].mode, intents[b.rig_id].power_limit_w) == (Mode.LIMIT, 2500)


def test_schedule_parses_toml() -> None:
    raw = tomllib.loads(
        """
        [schedule]
        timezone = "America/Chicago"
        [[schedule.windows]]
        name = "4cp"
        start = 16:00:00
        end = "17:30"
        months = ["June", "jul", 8, "september"]
        weekdays = ["Mon", "tuesday", "wed", "thu", "fri"]
        """
    )
    window = parse_schedule(raw["schedule"]).windows[0]
    assert (window.start_s, window.end_s) == (16 * 3600, 17 * 3600 + 1800)
    assert window.months == {6, 7, 8, 9} and window.weekdays == {0, 1, 2, 3, 4}
    assert window.zone.key == "America/Chicago"
    assert parse_schedule(None).windows == ()


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ({"start": "25:00", "end": "17:00"}, "bad start '25:00'"),
        ({"start": "16:00", "end": "5pm"}, "bad end '5pm'"),
        ({"start": "16:00", "end": "16:00"}, "start and end are equal"),
        ({"start": "16:00", "end": "17:00", "mode": "nap"}, "mode must be one of"),
        ({"start": "16:00", "end": "17:00", "mode": "limit"}, "needs power_limit_w"),
        ({"start": "16:00", "end": "17:00", "power_limit_w": 5}, "only for mode limit"),
        ({"start": "16:00", "end": "17:00", "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"start": "16:00", "end": "17:00", "months": [13]}, "bad months entry 13"),
        ({"start": "16:00", "end": "17:00", "weekdays": ["someday"]}, "bad weekdays entry"),
        ({"start": "16:00", "end": "17:00", "weekdays": "mon"}, "must be a non-empty list"),
        ({"start": "16:00", "end": "17:00", "groups": [""]}, "groups must be names"),
        ({"start": "16:00", "end": "17:00", "stat": "x"}, "unknown setting(s) ['stat']"),
    ],
)
def test_schedule_errors_name_the_bad_window(window: dict[str, object], message: str) -> None:
    good = {"name": "ok", "start": "01:00", "end": "02:00"}
    raw = {"timezone": "UTC", "windows": [good, {"name": "peak", **window}]}
    with pytest.raises(ScheduleError) as err:
        parse_schedule(raw)
    assert str(err.value).startswith("schedule window 2 ('peak'): ")
    assert message in str(err.value)


def test_schedule_rejects_a_malformed_table() -> None:
    with pytest.raises(ScheduleError, match="must be a list of tables"):
        parse_schedule("16:00-17:00")
    with pytest.raises(ScheduleError, match=r"unknown setting\(s\) \['zone'\]"):
        parse_schedule({"zone": "UTC"})
    with pytest.raises(ScheduleError, match="schedule window 1: must be a table"):
        parse_schedule(["16:00"])


# --- combine --------------------------------------------------------------------------------


def intent(rig_id: RigId, mode: Mode, policy: str, limit: int | None = None) -> Intent:
    return Intent(rig_id, mode, f"{policy} says {mode.value}", policy, limit)


def test_combine_most_restrictive_wins_and_names_the_overruled() -> None:
    rig = model_rig(0)
    combined = combine(
        [
            {rig.rig_id: intent(rig.rig_id, Mode.NORMAL, "breakeven")},
            {rig.rig_id: intent(rig.rig_id, Mode.SLEEP, "schedule")},
            {rig.rig_id: intent(rig.rig_id, Mode.SLEEP, "quiet-hours")},
        ],
        [rig],
    )
    winner = combined[rig.rig_id]
    assert (winner.mode, winner.policy) == (Mode.SLEEP, "schedule")
    assert winner.reason == (
        "schedule says sleep [overrules breakeven wanted normal: breakeven says normal"
        " | agreed by quiet-hours]"
    )


def test_combine_orders_limits_by_the_rigs_points() -> None:
    rig = model_rig(0)  # low: 2147.6 W
    for watts, winner in ((2000, Mode.LIMIT), (2500, Mode.LOW)):
        combined = combine(
            [
                {rig.rig_id: intent(rig.rig_id, Mode.LOW, "a")},
                {rig.rig_id: intent(rig.rig_id, Mode.LIMIT, "b", watts)},
            ],
            [rig],
        )
        assert combined[rig.rig_id].mode is winner
    # without the rig's points, modes order by name: sleep < low < limit < normal < high
    bare = combine([{"x": intent("x", Mode.HIGH, "a")}, {"x": intent("x", Mode.LOW, "b")}])
    assert bare["x"].mode is Mode.LOW


def test_combine_passes_single_opinions_through_and_rejects_misfiled_intents() -> None:
    only = intent("x", Mode.HIGH, "a")
    assert combine([{"x": only}, {}]) == {"x": only}
    assert combine([]) == {}
    with pytest.raises(ValueError, match="filed an intent for 'y' under 'x'"):
        combine([{"x": intent("y", Mode.SLEEP, "a")}])


intents_for = st.builds(
    lambda mode, limit: (mode, limit if mode is Mode.LIMIT else None),
    st.sampled_from([Mode.OFF, Mode.SLEEP, Mode.LOW, Mode.NORMAL, Mode.HIGH, Mode.LIMIT]),
    st.integers(100, 6000),
)


@given(fleets, st.lists(st.dictionaries(st.integers(0, 5), intents_for), max_size=4))
def test_combine_returns_the_minimum_power_intent(
    fleet: list[RigView], raw: list[dict[int, tuple[Mode, int | None]]]
) -> None:
    by_policy = [
        {f"10.0.0.{i}": Intent(f"10.0.0.{i}", m, "r", f"p{n}", lim) for i, (m, lim) in d.items()}
        for n, d in enumerate(raw)
    ]
    rigs = {r.rig_id: r for r in fleet}
    combined = combine(by_policy, fleet)
    assert set(combined) == {k for d in by_policy for k in d}
    for rig_id, result in combined.items():
        rig = rigs.get(rig_id)
        keys = [
            power_order_key(rig, i.mode, i.power_limit_w)
            for d in by_policy
            for i in d.values()
            if i.rig_id == rig_id
        ]
        assert power_order_key(rig, result.mode, result.power_limit_w) == min(keys)
        assert result.policy in {
            i.policy for d in by_policy for i in d.values() if i.rig_id == rig_id
        }


# --- purity ---------------------------------------------------------------------------------

ALL_DAY = {"timezone": "UTC", "windows": [{"start": "00:00", "end": "24:00", "groups": ["a"]}]}


@settings(max_examples=100)
@given(fleets, hashprices, prices, st.floats(0.0, 2e9), st.floats(0.0, 60.0))
def test_policies_are_pure(
    fleet: list[RigView], hashprice: float, price: float, now: float, cap_kw: float
) -> None:
    site = Site(power_cap_kw=cap_kw, params={"schedule": copy.deepcopy(ALL_DAY)})
    view = market(hashprice, price)
    before = copy.deepcopy((view, fleet, site))
    for policy in (BreakevenPolicy(), PowerCapPolicy(), SchedulePolicy()):
        first = policy.decide(view, fleet, site, now)
        assert policy.decide(view, fleet, site, now) == first
        assert (view, fleet, site) == before
        outputs = [first, policy.decide(view, list(fleet), site, now)]
        assert combine(outputs, fleet) == combine(outputs, fleet)
        assert outputs[0] == outputs[1]


# --- registry -------------------------------------------------------------------------------


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, eps: Sequence[tuple[str, str]]) -> None:
    found = [EntryPoint(name, value, registry.GROUP) for name, value in eps]

    def entry_points(*, group: str) -> list[EntryPoint]:
        return found if group == registry.GROUP else []

    monkeypatch.setattr(registry, "entry_points", entry_points)


@pytest.fixture
def quiet_hours_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The example plugin importable from its source directory, and its entry-point value."""
    project = tomllib.loads((QUIET_HOURS / "pyproject.toml").read_text())
    value = project["project"]["entry-points"][registry.GROUP]["quiet-hours"]
    monkeypatch.syspath_prepend(str(QUIET_HOURS))
    yield str(value)
    sys.modules.pop("quiet_hours", None)


def test_registry_falls_back_to_builtins_without_entry_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_entry_points(monkeypatch, [])
    assert registry.available_policies() == sorted(BUILTIN_POLICIES)
    for name in BUILTIN_POLICIES:
        policy = registry.load_policy(name)
        assert isinstance(policy, Policy) and policy.name == name
    assert {r.origin for regs in registry.registrations().values() for r in regs} == {"built-in"}


def test_registry_loads_builtins_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, list(BUILTIN_POLICIES.items()))
    regs = registry.registrations()
    assert all(len(r) == 1 and r[0].origin == "entry point" for r in regs.values())
    assert isinstance(registry.load_policy("power-cap"), PowerCapPolicy)


def test_registry_loads_the_example_plugin_without_installing_it(
    monkeypatch: pytest.MonkeyPatch, quiet_hours_on_path: str
) -> None:
    fake_entry_points(monkeypatch, [("quiet-hours", quiet_hours_on_path)])
    assert registry.available_policies() == sorted([*BUILTIN_POLICIES, "quiet-hours"])
    policy = registry.load_policy("quiet-hours")
    assert policy.name == "quiet-hours"
    site = Site(
        params={
            "quiet-hours": {
                "groups": ["a"],
                "start": "22:00",
                "end": "07:00",
                "timezone": "Europe/Berlin",
            }
        }
    )
    fleet = [model_rig(0, group="a"), model_rig(1, group="b")]
    night = policy.decide(market(), fleet, site, ts("2026-07-01T23:30:00+00:00"))  # 01:30
    assert {k: i.mode for k, i in night.items()} == {"10.0.0.1": Mode.SLEEP}
    assert night["10.0.0.1"].reason == "quiet hours 22:00-07:00 Europe/Berlin (now 01:30)"
    assert policy.decide(market(), fleet, site, ts("2026-07-01T10:00:00+00:00")) == {}
    check_site(policy, site)  # good settings pass the plugin's own check
    bad = Site(
        params={"quiet-hours": {"groups": [], "start": "late", "end": "07:00", "timezone": "UTC"}}
    )
    with pytest.raises(ValueError, match="quiet-hours: bad start"):
        policy.decide(market(), fleet, bad, 0.0)
    with pytest.raises(ValueError, match="quiet-hours: bad start"):
        check_site(policy, bad)  # what start-up, reload and `config check` call
    with pytest.raises(ValueError, match="quiet-hours: settings must be a table"):
        check_site(policy, Site())


def test_check_site_asks_the_policies_that_have_settings() -> None:
    check_site(BreakevenPolicy(), Site(params={"schedule": "anything"}))  # no check: accepts
    check_site(SchedulePolicy(), Site())  # no windows: fine
    with pytest.raises(ValueError, match=r"schedule window 1 \('x'\): bad start '25:00'"):
        check_site(
            SchedulePolicy(),
            Site(params={"schedule": [{"name": "x", "start": "25:00", "end": "26:00"}]}),
        )


def test_registry_names_an_unknown_policy_and_the_installed_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_entry_points(monkeypatch, [])
    with pytest.raises(registry.UnknownPolicyError) as err:
        registry.load_policy("brekeven")
    assert str(err.value) == (
        "unknown policy 'brekeven'; installed policies: breakeven, power-cap, schedule"
    )
    assert isinstance(err.value, LookupError)


@pytest.mark.parametrize(
    ("eps", "name", "message"),
    [
        ([("breakeven", "evil:Policy")], "breakeven", "registered more than once"),
        ([("gone", "no_such_module_xyz:P")], "gone", "failed to import"),
        ([("misnamed", "policies.breakeven:BreakevenPolicy")], "misnamed", "calls itself"),
        ([("notapolicy", "policies.schedule:NAME")], "notapolicy", "neither a policy nor"),
        ([("wrong", "policies.economics:Economics")], "wrong", "has no name and decide"),
    ],
)
def test_registry_load_errors_name_the_policy(
    monkeypatch: pytest.MonkeyPatch, eps: list[tuple[str, str]], name: str, message: str
) -> None:
    fake_entry_points(monkeypatch, eps)
    with pytest.raises(registry.PolicyLoadError, match=message) as err:
        registry.load_policy(name)
    assert repr(name) in str(err.value)


def test_registry_finds_builtins_whatever_is_installed() -> None:
    # No monkeypatching: passes with or without rigpilot's entry points installed.
    assert set(BUILTIN_POLICIES) <= set(registry.available_policies())
    assert registry.load_policy("breakeven").name == "breakeven"
