"""Rig physics: frequency, hashrate, power and temperatures as functions of mode and time.

Pure functions over a small mutable state that the rig advances lazily (only when somebody
looks), so a 10,000-rig fleet costs nothing between requests. All durations are simulated
seconds; the caller converts wall time with the time-scale factor.

Model (normalised to the model's nameplate, f = 1.0 at normal mode):
- hashrate = nameplate x f x working boards / boards
- voltage follows frequency down to a minimum stable voltage: v = max(V_MIN, 0.6 + 0.4 f)
- power = idle share + dynamic share x v^2 x f x (1 + hot-board leakage), so J/TH improves
  as the rig is underclocked down to V_MIN and worsens again below it (the U-shaped curve),
  and grows roughly with f^3 near the top.
- chip temperature relaxes exponentially towards ambient + R x power / airflow; the fans run
  a proportional controller on chip temperature, like stock firmware.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from policies import timing
from simulator.models import ModelSpec


class Mode(StrEnum):
    """What the rig's firmware has been told to do."""

    SLEEP = "sleep"
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class Phase(StrEnum):
    """What the hashboards are physically doing."""

    SLEEPING = "sleeping"  # boards powered down, control board up
    BOOTING = "booting"  # boards initialising after a wake-up or reboot: power, no hashrate
    RUNNING = "running"
    PROTECTED = "protected"  # stopped by the firmware's own over-temperature protection


# The firmware's transition timing is the drivers' model of it (policies/timing.py), so the
# daemon and the backtest expect exactly what these rigs do.
MODE_FREQ: dict[Mode, float] = {m: timing.MODE_FREQ[m.value] for m in Mode}

V_MIN = 0.82
IDLE_SHARE = 0.06  # fans, PSU losses and leakage at nameplate, as a share of nameplate power
SLEEP_POWER_W = 18.0  # control board and a slow fan while the boards are off
BOOT_S = timing.BOOT_S  # boards initialising before they hash
COLD_BOOT_S = timing.COLD_BOOT_S  # from power on (or a reboot) until the boards hash
RAMP_FROM = timing.RAMP_FROM  # the frequency they start hashing at
RAMP_UP_PER_S = timing.RAMP_UP_PER_S  # frequency ramps up from 0 to nominal over 150 s
RAMP_DOWN_PER_S = timing.RAMP_DOWN_PER_S  # and drops within a few seconds
BOOT_POWER_SHARE = timing.BOOT_POWER_SHARE
THERMAL_TAU_S = 40.0
CHIP_TARGET_C = 72.0
PROTECT_CHIP_C = 105.0  # stock firmware stops hashing here ("temperature too high")
RESUME_CHIP_C = 80.0
FAN_MIN_PCT = 20.0
FAN_MAX_RPM = 6600.0


def voltage(f: float) -> float:
    """Normalised core voltage needed at normalised frequency ``f``."""
    return max(V_MIN, 0.6 + 0.4 * f)


def power_at(spec: ModelSpec, f: float, working_boards: int, chip_temp_c: float) -> float:
    """Wall power in W when hashing at normalised frequency ``f`` (f > 0)."""
    share = working_boards / spec.boards
    leakage = 1.0 + 0.002 * max(0.0, chip_temp_c - CHIP_TARGET_C)
    dynamic = (1.0 - IDLE_SHARE) * voltage(f) ** 2 * f * share * leakage
    return spec.power_w * (IDLE_SHARE + dynamic)


def freq_for_power_limit(spec: ModelSpec, limit_w: float, working_boards: int) -> float:
    """The highest normalised frequency whose power stays under ``limit_w`` (bisection)."""
    lo, hi = 0.3, MODE_FREQ[Mode.HIGH]
    if power_at(spec, lo, working_boards, CHIP_TARGET_C) > limit_w:
        return lo
    for _ in range(30):
        mid = (lo + hi) / 2
        if power_at(spec, mid, working_boards, CHIP_TARGET_C) <= limit_w:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(slots=True)
class PhysState:
    """The physical state of one rig at ``t`` (simulated seconds)."""

    t: float
    ambient_c: float = 25.0
    phase: Phase = Phase.RUNNING
    freq: float = 1.0  # normalised frequency the boards run at now
    boot_left_s: float = 0.0
    chip_temp_c: float = CHIP_TARGET_C
    fan_pct: float = 70.0
    power_w: float = 0.0
    hashrate_ths: float = 0.0
    dead_boards: set[int] = field(default_factory=set)
    thermal_extra_c: float = 0.0  # added heat (blocked airflow, failed fan): the overheat fault
    power_factor: float = 1.0  # hashing power drawn per rated watt: > 1 for a rig less
    # efficient than its model (worn PSU, dust), < 1 for a better one; hashrate is unchanged


def target_freq(
    mode: Mode, power_limit_w: float | None, freq_pct: int, spec: ModelSpec, working_boards: int
) -> float:
    """Normalised frequency the firmware aims for, given its settings."""
    if mode is Mode.SLEEP:
        return 0.0
    f = MODE_FREQ[mode] * (1.0 + freq_pct / 100.0)
    if power_limit_w is not None:
        f = min(f, freq_for_power_limit(spec, power_limit_w, working_boards))
    return max(0.3, min(f, 1.3))


def advance(state: PhysState, spec: ModelSpec, target: float, t: float) -> None:
    """Advance ``state`` to time ``t`` while the firmware aims at frequency ``target``.

    Integrates in steps of at most 5 s so temperature and fan control stay stable however long
    the rig was left alone.
    """
    remaining = t - state.t
    while remaining > 1e-9:
        dt = min(remaining, 5.0)
        _step(state, spec, target, dt)
        remaining -= dt
    state.t = t
    _refresh_outputs(state, spec)


def _step(state: PhysState, spec: ModelSpec, target: float, dt: float) -> None:
    working = spec.boards - len(state.dead_boards)
    if state.phase is Phase.PROTECTED:
        if state.chip_temp_c < RESUME_CHIP_C and target > 0:
            state.phase, state.boot_left_s = Phase.BOOTING, BOOT_S
    elif target <= 0.0:
        state.freq = max(0.0, state.freq - RAMP_DOWN_PER_S * dt)
        if state.freq == 0.0:
            state.phase = Phase.SLEEPING
    elif state.phase is Phase.SLEEPING:
        state.phase, state.boot_left_s = Phase.BOOTING, BOOT_S
    elif state.phase is Phase.BOOTING:
        state.boot_left_s -= dt
        if state.boot_left_s <= 0:
            state.phase, state.freq = Phase.RUNNING, RAMP_FROM
    elif state.freq < target:
        state.freq = min(target, state.freq + RAMP_UP_PER_S * dt)
    else:
        state.freq = max(target, state.freq - RAMP_DOWN_PER_S * dt)

    power = _power_now(state, spec, working)
    # Airflow grows with fan speed; the overheat fault adds heat the fans cannot remove.
    airflow = 0.3 + 0.7 * state.fan_pct / 100.0
    rise_nominal = (CHIP_TARGET_C - 25.0) * 0.86  # chip rise at nameplate power, fans at 80 %
    steady = state.ambient_c + rise_nominal * (power / spec.power_w) / airflow
    steady += state.thermal_extra_c
    state.chip_temp_c = steady + (state.chip_temp_c - steady) * math.exp(-dt / THERMAL_TAU_S)
    hashing = state.phase in (Phase.RUNNING, Phase.BOOTING)
    wanted = FAN_MIN_PCT + (state.chip_temp_c - 55.0) * 4.0 if hashing else FAN_MIN_PCT
    state.fan_pct = max(FAN_MIN_PCT, min(100.0, wanted))
    if state.chip_temp_c >= PROTECT_CHIP_C and state.phase is not Phase.PROTECTED:
        state.phase, state.freq = Phase.PROTECTED, 0.0


def _power_now(state: PhysState, spec: ModelSpec, working: int) -> float:
    if state.phase is Phase.RUNNING and state.freq > 0 and working > 0:
        return power_at(spec, state.freq, working, state.chip_temp_c) * state.power_factor
    if state.phase is Phase.BOOTING:
        return SLEEP_POWER_W + BOOT_POWER_SHARE * spec.power_w * working / spec.boards
    return SLEEP_POWER_W


def _refresh_outputs(state: PhysState, spec: ModelSpec) -> None:
    working = spec.boards - len(state.dead_boards)
    state.power_w = _power_now(state, spec, working)
    if state.phase is Phase.RUNNING:
        state.hashrate_ths = spec.hashrate_ths * state.freq * working / spec.boards
    else:
        state.hashrate_ths = 0.0
