"""The simulator's rig physics, driven as a library (no sockets, no clock).

``simulator.physics`` is pure functions over a small state: frequency, phase (sleeping,
booting, running), chip temperature and fans, power from the V²f curve. A wake-up is board
initialisation (45 s, drawing power, no hashrate) then a frequency ramp (about 105 s from 30 %
to nominal); going to sleep takes seconds. This module integrates that state in the physics' own
steps of at most 5 s, measuring energy (right-endpoint rule: a step draws the power the state
has at its end) and hashes, and stops integrating once the state has settled (the phase and
frequency at their target, the chip temperature moving less than 0.001 °C per step): from then
on power and hashrate are constant until the next command, which is what makes a year cheap.

A transition's stretch between two ticks is a pure function of the starting state (its time
aside), the target and the stretch's length, when the times are whole seconds (then every step
lands on a whole second and no sum depends on the start time). Such segments are integrated
once and replayed for every later rig in the same state: the fleet's many identical wake-ups
and sleeps cost a dictionary lookup each, with the same floats (tests/test_backtest_fast.py).

Health scales hashrate only (a worn rig hashes less for the same power).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.guards import Setting
from policies.values import Mode
from simulator import physics as sp
from simulator.models import ModelSpec

STEP_S = 5.0
_SETTLED_C = 1e-3
PRESETTLE_S = 1200.0

_SIM_MODE = {
    Mode.SLEEP: sp.Mode.SLEEP,
    Mode.OFF: sp.Mode.SLEEP,  # the simulated rigs have no off; sleep is the nearest
    Mode.LOW: sp.Mode.LOW,
    Mode.NORMAL: sp.Mode.NORMAL,
    Mode.HIGH: sp.Mode.HIGH,
    Mode.LIMIT: sp.Mode.NORMAL,  # normal frequency under a power limit
}


def target_for(spec: ModelSpec, setting: Setting) -> float:
    """The normalised frequency the firmware aims for under ``setting``."""
    limit = (
        float(setting.power_limit_w)
        if setting.mode is Mode.LIMIT and setting.power_limit_w
        else None
    )
    return sp.target_freq(_SIM_MODE[setting.mode], limit, 0, spec, spec.boards)


def steady_rates(
    spec: ModelSpec, health: float, ambient_c: float, target: float
) -> tuple[float, float]:
    """(watts, TH/s) a rig settles at when the firmware aims at ``target``: what a change
    would deliver at once if waking, ramping and slowing down took no time. The replay prices
    its changes against it (the cost of a change: hashes not made, power still drawn)."""
    key = (spec.key, health, ambient_c, target)
    rates = _STEADY.get(key)
    if rates is None:
        state = sp.PhysState(t=0.0, ambient_c=ambient_c)
        sp.advance(state, spec, target, 2 * PRESETTLE_S)
        rates = _STEADY[key] = (state.power_w, state.hashrate_ths * health)
    return rates


_STEADY: dict[tuple[str, float, float, float], tuple[float, float]] = {}


PowerSink = list[tuple[float, float]]
"""Where a run appends (time a new power level starts, the change in watts), for the ramp
meter."""


@dataclass(slots=True)
class RigPhysics:
    """One rig's physical state (or that of identical rigs, one copy for all)."""

    spec: ModelSpec
    health: float
    state: sp.PhysState
    target: float
    settled: bool = False
    power_w: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.power_w = self.state.power_w

    @classmethod
    def running(cls, spec: ModelSpec, health: float, ambient_c: float, t: float) -> RigPhysics:
        """A rig that has been hashing at normal long enough to be at its steady state at ``t``."""
        state = sp.PhysState(t=t - PRESETTLE_S, ambient_c=ambient_c)
        target = sp.target_freq(sp.Mode.NORMAL, None, 0, spec, spec.boards)
        sp.advance(state, spec, target, t)
        rig = cls(spec, health, state, target, settled=True)
        return rig

    def copy(self) -> RigPhysics:
        s = self.state
        state = sp.PhysState(
            t=s.t,
            ambient_c=s.ambient_c,
            phase=s.phase,
            freq=s.freq,
            boot_left_s=s.boot_left_s,
            chip_temp_c=s.chip_temp_c,
            fan_pct=s.fan_pct,
            power_w=s.power_w,
            hashrate_ths=s.hashrate_ths,
            dead_boards=set(s.dead_boards),
            thermal_extra_c=s.thermal_extra_c,
        )
        return RigPhysics(self.spec, self.health, state, self.target, self.settled)

    def command(self, setting: Setting, t: float) -> None:
        """The firmware is told ``setting`` at ``t`` (from then on it aims there)."""
        if self.settled and t > self.state.t:
            self.state.t = t  # nothing changed while settled
        target = target_for(self.spec, setting)
        if target != self.target:
            self.target = target
            self.settled = False

    @property
    def hashrate_ths(self) -> float:
        return self.state.hashrate_ths * self.health

    @property
    def hashing(self) -> bool:
        return self.state.phase in (sp.Phase.RUNNING, sp.Phase.BOOTING)

    def run(
        self, t_end: float, sink: PowerSink | None = None, weight: float = 1.0
    ) -> tuple[float, float]:
        """Advance to ``t_end``; returns (watt-seconds drawn, TH/s-seconds hashed) on the way.

        ``sink`` gets every change of power level (times ``weight``, the rigs this state
        stands for)."""
        s = self.state
        if t_end <= s.t:
            return 0.0, 0.0
        if self.settled:
            dt = t_end - s.t
            s.t = t_end
            return self.power_w * dt, s.hashrate_ths * self.health * dt
        if not (s.t.is_integer() and t_end.is_integer()):
            if sink is None:
                return self._integrate(t_end, None)
            levels: list[tuple[float, float, float]] = []
            sums = self._integrate(t_end, levels)
            sink.extend([(t, (new_w - old_w) * weight) for t, new_w, old_w in levels])
            return sums
        # Whole seconds: every step lands on a whole second, so a segment's arithmetic does not
        # depend on when it starts, and identical rigs' identical segments are replayed.
        key = (self.spec.key, self.health, self.target, t_end - s.t, *state_key(s))
        seg = _SEGMENTS.get(key)
        if seg is None:
            seg = self._record(t_end)
            if len(_SEGMENTS) >= _SEGMENTS_MAX:
                _SEGMENTS.clear()
            _SEGMENTS[key] = seg
        else:
            _set_state(s, seg.end)
            self.power_w = s.power_w
            self.settled = seg.settled
        if sink is not None:
            t0 = t_end - seg.span
            sink.extend([(t0 + at, (new_w - old_w) * weight) for at, new_w, old_w in seg.levels])
        s.t = t_end
        return seg.energy, seg.hashes

    def _record(self, t_end: float) -> Segment:
        """Integrate to ``t_end`` (whole seconds), noting what a replay of it needs."""
        s = self.state
        t0 = s.t
        levels: list[tuple[float, float, float]] = []
        energy, hashes = self._integrate(t_end, levels)
        at = tuple((t - t0, new_w, old_w) for t, new_w, old_w in levels)  # from the start
        return Segment(t_end - t0, state_key(s), self.settled, energy, hashes, at)

    def _integrate(
        self, t_end: float, levels: list[tuple[float, float, float]] | None
    ) -> tuple[float, float]:
        """The physics' own steps of at most ``STEP_S`` to ``t_end``, until settled; each
        change of power level appended to ``levels`` as (when, new level, old level)."""
        s = self.state
        energy = hashes = 0.0
        while s.t < t_end - 1e-9:
            t0 = s.t
            dt = min(STEP_S, t_end - t0)
            temp0, freq0, phase0 = s.chip_temp_c, s.freq, s.phase
            sp.advance(s, self.spec, self.target, t0 + dt)
            if s.power_w != self.power_w:
                if levels is not None:
                    levels.append((t0, s.power_w, self.power_w))
                self.power_w = s.power_w
            energy += s.power_w * dt
            hashes += s.hashrate_ths * self.health * dt
            at_target = (
                s.freq == freq0
                and s.phase == phase0
                and (
                    (self.target <= 0 and s.phase is sp.Phase.SLEEPING)
                    or (s.phase is sp.Phase.RUNNING and abs(s.freq - self.target) < 1e-12)
                )
            )
            if at_target and abs(s.chip_temp_c - temp0) < _SETTLED_C * dt / STEP_S:
                self.settled = True
                rest = t_end - s.t
                if rest > 0:
                    s.t = t_end
                    energy += s.power_w * rest
                    hashes += s.hashrate_ths * self.health * rest
                break
        return energy, hashes

    def seen(self) -> tuple[sp.Phase, float, float, float]:
        """The state as observed, rounded as the observation is: (phase, power, chip
        temperature, hashrate before health)."""
        s = self.state
        return (s.phase, round(s.power_w, 1), round(s.chip_temp_c, 1), round(s.hashrate_ths, 3))


StateKey = tuple[float, sp.Phase, float, float, float, float, float, float, float, int]


def state_key(s: sp.PhysState) -> StateKey:
    """Everything of ``s`` but its time that the physics' steps read or write."""
    return (
        s.ambient_c,
        s.phase,
        s.freq,
        s.boot_left_s,
        s.chip_temp_c,
        s.fan_pct,
        s.power_w,
        s.hashrate_ths,
        s.thermal_extra_c,
        len(s.dead_boards),
    )


def _set_state(s: sp.PhysState, end: StateKey) -> None:
    """``s`` as recorded at a segment's end (its ambient, heat and boards are the key's)."""
    s.phase, s.freq, s.boot_left_s, s.chip_temp_c = end[1], end[2], end[3], end[4]
    s.fan_pct, s.power_w, s.hashrate_ths = end[5], end[6], end[7]


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of a transition, integrated once: how long, the state at its end, whether it
    settled, per-rig energy (W·s) and hashes (TH/s·s), and the power levels met on the way
    (seconds from its start, new level, old level), for the ramp meter."""

    span: float
    end: StateKey
    settled: bool
    energy: float
    hashes: float
    levels: tuple[tuple[float, float, float], ...]


_SEGMENTS: dict[tuple[object, ...], Segment] = {}
"""Segments by (model, health, target, length, starting state): a pure function of its key."""
_SEGMENTS_MAX = 200_000
