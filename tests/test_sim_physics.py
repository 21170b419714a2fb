"""Rig physics: nameplate calibration, efficiency curve, mode-change timing, thermal faults."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.models import MODELS, lookup
from simulator.physics import (
    BOOT_S,
    SLEEP_POWER_W,
    Mode,
    Phase,
    PhysState,
    advance,
    power_at,
    target_freq,
)
from simulator.rig import Fault, SimClock, SimRig


class FakeClock(SimClock):
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0

    def now(self) -> float:
        return self.t


def make_rig(key: str = "s19jpro") -> tuple[SimRig, FakeClock]:
    clock = FakeClock()
    return SimRig("127.1.0.1", lookup(key), clock, index=0), clock


@pytest.mark.parametrize("key", sorted(MODELS))
def test_nameplate_at_normal_mode(key: str) -> None:
    spec = lookup(key)
    assert power_at(spec, 1.0, spec.boards, 72.0) == pytest.approx(spec.power_w)
    rig, clock = make_rig(key)
    clock.t = 600.0
    snap = rig.snapshot()
    assert snap.hashrate_ths == pytest.approx(spec.hashrate_ths, rel=0.03)
    assert snap.power_w == pytest.approx(spec.power_w, rel=0.03)


def test_underclocking_improves_efficiency_down_to_min_voltage() -> None:
    spec = lookup("s19xp")

    def j_per_th(f: float) -> float:
        return power_at(spec, f, spec.boards, 72.0) / (spec.hashrate_ths * f)

    assert j_per_th(0.7) < j_per_th(1.0) < j_per_th(1.12)
    # Below the minimum stable voltage the fixed losses dominate again: U-shaped.
    assert j_per_th(0.3) > j_per_th(0.6)


@given(st.floats(0.3, 1.3), st.floats(0.3, 1.3))
def test_power_grows_with_frequency(f1: float, f2: float) -> None:
    spec = lookup("s21")
    lo, hi = sorted((f1, f2))
    assert power_at(spec, lo, 3, 72.0) <= power_at(spec, hi, 3, 72.0)


def test_sleep_is_fast_and_wake_up_ramps_over_minutes() -> None:
    rig, clock = make_rig()
    clock.t = 300.0
    rig.set_mode(Mode.SLEEP)
    clock.t += 10.0
    snap = rig.snapshot()
    assert snap.phase is Phase.SLEEPING
    assert snap.hashrate_ths == 0.0
    assert snap.power_w == pytest.approx(SLEEP_POWER_W)
    rig.set_mode(Mode.NORMAL)
    clock.t += BOOT_S / 2
    assert rig.snapshot().phase is Phase.BOOTING
    assert rig.snapshot().hashrate_ths == 0.0
    clock.t += BOOT_S / 2 + 30.0
    partial = rig.snapshot().hashrate_ths
    assert 0 < partial < 0.8 * rig.spec.hashrate_ths
    clock.t += 300.0
    assert rig.snapshot().hashrate_ths == pytest.approx(rig.spec.hashrate_ths, rel=0.03)


def test_low_mode_reduces_power_more_than_hashrate() -> None:
    rig, clock = make_rig("s21")
    clock.t = 100.0
    normal = rig.snapshot()
    rig.set_mode(Mode.LOW)
    clock.t += 60.0
    low = rig.snapshot()
    assert low.hashrate_ths < normal.hashrate_ths
    assert low.power_w / low.hashrate_ths < normal.power_w / normal.hashrate_ths


def test_power_limit_caps_power() -> None:
    spec = lookup("m50s")
    f = target_freq(Mode.NORMAL, 2500, 0, spec, spec.boards)
    assert power_at(spec, f, spec.boards, 72.0) <= 2500
    assert power_at(spec, f + 0.01, spec.boards, 72.0) > 2500


def test_overheat_fault_trips_firmware_protection_and_recovers() -> None:
    rig, clock = make_rig()
    rig.set_fault(Fault.OVERHEAT, {"extra_c": 50})
    clock.t = 600.0
    snap = rig.snapshot()
    assert snap.phase is Phase.PROTECTED
    assert snap.hashrate_ths == 0.0
    assert snap.errors
    rig.clear_fault(Fault.OVERHEAT)
    clock.t += 900.0
    snap = rig.snapshot()
    assert snap.phase is Phase.RUNNING
    assert snap.chip_temp_c < 90


def test_dead_board_loses_its_share() -> None:
    rig, clock = make_rig()
    rig.set_fault(Fault.DEAD_BOARD, {"board": 1})
    clock.t = 60.0
    snap = rig.snapshot()
    assert snap.hashrate_ths == pytest.approx(rig.spec.hashrate_ths * 2 / 3, rel=0.03)
    assert not snap.boards[1].alive
    assert snap.boards[1].hashrate_ths == 0.0
    with pytest.raises(ValueError, match="board must be"):
        rig.set_fault(Fault.DEAD_BOARD, {"board": 7})


def test_ignore_writes_reports_false_and_keeps_mode() -> None:
    rig, _ = make_rig()
    rig.set_fault(Fault.IGNORE_WRITES)
    assert rig.set_mode(Mode.SLEEP) is False
    assert rig.mode is Mode.NORMAL


def test_reboot_is_unreachable_then_back_in_default_mode() -> None:
    rig, clock = make_rig()
    rig.set_mode(Mode.LOW)
    rig.reboot()
    assert not rig.reachable()
    clock.t += 200.0
    assert rig.reachable()
    assert rig.mode is Mode.NORMAL


@given(st.sampled_from(list(Mode)), st.floats(0, 3600), st.floats(-10, 45))
def test_state_stays_physical(mode: Mode, dt: float, ambient: float) -> None:
    spec = lookup("m30s+")
    state = PhysState(t=0.0, ambient_c=ambient)
    advance(state, spec, target_freq(mode, None, 0, spec, spec.boards), dt)
    assert state.power_w >= SLEEP_POWER_W - 1e-9
    assert state.hashrate_ths >= 0
    assert ambient - 1 <= state.chip_temp_c < 130
    assert 0 <= state.fan_pct <= 100


def test_a_power_factor_makes_a_rig_less_efficient_than_its_model() -> None:
    rig, clock = make_rig()
    clock.t = 600.0
    plain = rig.snapshot()
    rig.set_power_factor(1.2)
    clock.t = 660.0
    worse = rig.snapshot()
    assert worse.hashrate_ths == pytest.approx(plain.hashrate_ths, rel=0.03)  # same hash
    assert worse.power_w == pytest.approx(plain.power_w * 1.2, rel=0.02)  # more watts
    rig.set_mode(Mode.SLEEP)
    clock.t = 900.0
    assert rig.snapshot().power_w == SLEEP_POWER_W  # only the hashing draw is scaled
    with pytest.raises(ValueError, match=r"power_factor must be between 0\.5 and 2\.0, got 3"):
        rig.set_power_factor(3.0)
    rig.factory_reset()
    assert rig.phys.power_factor == 1.0
