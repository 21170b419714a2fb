"""The learned efficiency (daemon/efficiency.py): the estimator, which readings are samples,
and how the learned J/TH corrects a rig's mode points (daemon/rig_economics.py)."""

from __future__ import annotations

import random

import pytest
from helpers import identity, observation

from daemon import efficiency
from daemon.efficiency import (
    ModeEstimate,
    RigEfficiency,
    Sample,
    learn,
    sample_of,
    shown,
    update,
)
from daemon.rig_economics import mode_points
from drivers import catalogue
from policies.values import Mode, Observation, PowerSource

_ENTRY = catalogue.lookup("antminer", "S19j Pro")
assert _ENTRY is not None
ENTRY: catalogue.ModelEntry = _ENTRY
RATED = ENTRY.normal  # 104 TH/s at 29.5 J/TH
ALL = frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL})
METER = PowerSource.METER


def metered(at: float, ths: float = 100.0, watts: float = 3300.0, **kw: object) -> Observation:
    return observation(ths=ths, watts=watts, source=METER, at=at, **kw)  # type: ignore[arg-type]


def run(samples: list[Sample], start: ModeEstimate | None = None) -> ModeEstimate:
    est = start
    for s in samples:
        est = update(est, s)
    assert est is not None
    return est


def test_converges_to_the_true_efficiency_through_noise() -> None:
    rng = random.Random(7)
    samples = [
        Sample(60.0 * i, 3300.0 * rng.uniform(0.99, 1.01), 100.0 * rng.uniform(0.96, 1.04), METER)
        for i in range(120)
    ]
    est = run(samples)
    assert est.samples == 120 and est.rejected == 0
    assert est.j_per_th == pytest.approx(33.0, rel=0.01)
    assert est.trusted


def test_trusted_only_after_enough_samples_over_enough_time() -> None:
    step = efficiency.TRUST_SPAN_S / (efficiency.TRUST_SAMPLES - 1)
    few = [Sample(step * i, 3300.0, 100.0, METER) for i in range(efficiency.TRUST_SAMPLES - 1)]
    assert not run(few).trusted  # one sample short
    fast = [Sample(1.0 * i, 3300.0, 100.0, METER) for i in range(200)]
    assert not run(fast).trusted  # many, but within three minutes
    enough = [Sample(step * i, 3300.0, 100.0, METER) for i in range(efficiency.TRUST_SAMPLES)]
    assert run(enough).trusted


def test_an_outlier_is_rejected_and_a_lasting_change_restarts_learning() -> None:
    steady = [Sample(60.0 * i, 3300.0, 100.0, METER) for i in range(30)]
    est = run(steady)
    spike = update(est, Sample(1900.0, 5000.0, 100.0, METER))  # 50 J/TH: not this rig's
    assert (spike.power_w, spike.hashrate_ths, spike.samples) == (3300.0, 100.0, 30)
    assert spike.rejected == 1
    back = update(spike, Sample(1960.0, 3300.0, 100.0, METER))
    assert back.rejected == 0 and back.samples == 31
    changed = [Sample(2000.0 + 60 * i, 4000.0, 100.0, METER) for i in range(efficiency.RESET_AFTER)]
    after = run(changed, back)
    assert after.samples == 1 and after.j_per_th == pytest.approx(40.0)  # learning again
    assert not after.trusted


def test_a_long_gap_does_not_let_one_sample_replace_the_estimate() -> None:
    est = run([Sample(60.0 * i, 3300.0, 100.0, METER) for i in range(100)])
    later = update(est, Sample(est.last_at + 7 * 86400, 3600.0, 100.0, METER))  # 9 % more
    weight = (later.power_w - est.power_w) / (3600.0 - est.power_w)
    assert weight == pytest.approx(1 - 2.718281828 ** (-efficiency.MAX_STEP_S / efficiency.TAU_S))


def test_a_meter_outranks_the_rigs_own_report() -> None:
    reported = run([Sample(60.0 * i, 3000.0, 100.0, PowerSource.REPORTED) for i in range(10)])
    metered_est = update(reported, Sample(700.0, 3300.0, 100.0, METER))
    assert metered_est.source is METER and metered_est.samples == 1
    assert update(metered_est, Sample(760.0, 3000.0, 100.0, PowerSource.REPORTED)) is metered_est


def test_only_settled_hashing_readings_with_measured_watts_are_samples() -> None:
    good = metered(10.0)
    assert sample_of(good, ENTRY, settling=False) == Sample(10.0, 3300.0, 100.0, METER)
    assert sample_of(good, ENTRY, settling=True) is None  # a transition, not a mode
    assert sample_of(good, None, settling=False) is None  # no rating to check it against
    estimated = observation(ths=100.0, watts=3300.0, source=PowerSource.ESTIMATED)
    assert sample_of(estimated, ENTRY, settling=False) is None
    booting = metered(10.0, ths=0.0, watts=480.0, mining=True)
    assert sample_of(booting, ENTRY, settling=False) is None
    asleep = metered(10.0, ths=0.0, watts=18.0, mode=Mode.SLEEP)
    assert sample_of(asleep, ENTRY, settling=False) is None
    ramping = metered(10.0, ths=40.0, watts=1500.0)  # 38 % of its rated hashrate
    assert sample_of(ramping, ENTRY, settling=False) is None
    miswired = metered(10.0, ths=100.0, watts=7000.0)  # 70 J/TH: another rig's outlet?
    assert sample_of(miswired, ENTRY, settling=False) is None


def test_learning_skips_a_transition_and_restarts_for_another_rig() -> None:
    learned = None
    for i in range(25):
        learned = learn(learned, metered(60.0 * i), ENTRY, settling=False)
    assert learned is not None and learned.reference is Mode.NORMAL
    assert learned.ratio == pytest.approx(33.0 / RATED.j_per_th)
    assert learn(learned, metered(1600.0, watts=480.0), ENTRY, settling=True) is learned
    swapped = observation(
        ths=100.0, watts=3300.0, source=METER, at=1700.0, ident=identity(model="S19 XP")
    )
    other = catalogue.lookup("antminer", "S19 XP")
    fresh = learn(learned, swapped, other, settling=False)
    assert fresh is not None and fresh.model == "S19 XP"  # another rig there: learnt afresh
    assert fresh.modes[Mode.NORMAL].samples == 1 and fresh.reference is None


def trained(watts: float = 3300.0, ths: float = 100.0) -> RigEfficiency:
    learned = None
    for i in range(25):
        learned = learn(learned, metered(60.0 * i, ths=ths, watts=watts), ENTRY, settling=False)
    assert learned is not None
    return learned


def test_mode_points_use_the_learned_efficiency_where_nothing_is_measured_now() -> None:
    learned = trained()
    asleep = observation(ths=0.0, watts=18.0, source=METER, mode=Mode.SLEEP)
    points = {p.mode: p for p in mode_points(asleep, ALL, ENTRY, learned=learned)}
    normal, low = points[Mode.NORMAL], points[Mode.LOW]
    assert normal.j_per_th == pytest.approx(33.0)  # learned in normal: its own figure
    assert normal.power_source is METER
    low_rated = ENTRY.figures(Mode.LOW)
    assert low_rated is not None  # scaled by the same ratio as normal's
    assert low.j_per_th == pytest.approx(low_rated.j_per_th * 33.0 / RATED.j_per_th)
    plain = {p.mode: p for p in mode_points(asleep, ALL, ENTRY)}
    assert plain[Mode.NORMAL].j_per_th == pytest.approx(RATED.j_per_th)  # the catalogue's
    hashing = metered(2000.0, ths=101.0, watts=3350.0)
    now = {p.mode: p for p in mode_points(hashing, ALL, ENTRY, learned=learned)}
    assert (now[Mode.NORMAL].hashrate_ths, now[Mode.NORMAL].power_w) == (101.0, 3350.0)


def test_an_untrusted_estimate_changes_nothing() -> None:
    learned = learn(None, metered(0.0), ENTRY, settling=False)
    assert learned is not None and learned.reference is None
    asleep = observation(ths=0.0, watts=18.0, source=METER, mode=Mode.SLEEP)
    assert mode_points(asleep, ALL, ENTRY, learned=learned) == mode_points(asleep, ALL, ENTRY)
    view = shown(learned, ENTRY)
    assert (view.source, view.samples, view.j_per_th) == ("catalogue", 1, RATED.j_per_th)


def test_shown_names_the_source_and_the_samples() -> None:
    view = shown(trained(), ENTRY).as_dict()
    assert view == {
        "source": "learned",
        "learned_from": "meter",
        "mode": "normal",
        "j_per_th": 33.0,
        "catalogue_j_per_th": round(RATED.j_per_th, 2),
        "samples": 25,
    }
    assert shown(None, ENTRY).source == "catalogue"
    assert shown(None, None).j_per_th is None


def test_a_stored_row_round_trips_and_a_bad_one_names_the_problem() -> None:
    learned = trained()
    again = efficiency.from_dict(learned.to_dict())
    assert again == learned
    row = learned.to_dict()
    row["modes"]["normal"]["power_w"] = -1
    with pytest.raises(ValueError, match="positive watts"):
        efficiency.from_dict(row)
    row = learned.to_dict()
    row["modes"]["normal"]["source"] = "estimated"
    with pytest.raises(ValueError, match="not a measurement"):
        efficiency.from_dict(row)
    row = learned.to_dict()
    row["modes"]["sleep"] = row["modes"]["normal"]
    with pytest.raises(ValueError, match="does not hash"):
        efficiency.from_dict(row)
    with pytest.raises(ValueError, match="version"):
        efficiency.from_dict({**learned.to_dict(), "version": 9})
