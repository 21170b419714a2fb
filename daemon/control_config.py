"""The ``[control]`` configuration section: the loop's pace, its policies and its guards."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from daemon.settings_base import Section
from policies.economics import Economics
from policies.guards import FailSafe, GuardConfig
from policies.off import OffRule


class GuardSettings(Section):
    """``[control.guards]``: see docs/guards.md for each setting."""

    thermal_limit_c: float = Field(default=90.0, gt=40, lt=130)
    thermal_critical_c: float = Field(default=95.0, gt=40, lt=130)
    thermal_resume_c: float = Field(default=80.0, gt=20, lt=130)
    # A rig wired to outlets, hashing at or above thermal_critical_c this long after it was
    # set to sleep (its firmware ignores the command), has its outlets cut (docs/guards.md).
    thermal_cut: bool = True
    thermal_cut_after_s: float = Field(default=120.0, ge=30, le=3600)
    stale_failsafe: FailSafe = FailSafe.HOLD
    min_dwell_s: float = Field(default=600.0, ge=0, le=86400)
    hysteresis_usd_per_day: float = Field(default=0.25, ge=0)
    ramp_kw_per_min: float = Field(default=100.0, gt=0)
    ramp_rigs_per_s: float = Field(default=1.0, gt=0)

    def to_config(
        self, economics: Economics, tick_s: float, off: OffRule | None = None
    ) -> GuardConfig:
        """The guards' configuration, with the off-over-sleep rule (``[control.off]``, default
        when None); power-up starts are scheduled up to one tick ahead."""
        return GuardConfig(
            thermal_limit_c=self.thermal_limit_c,
            thermal_critical_c=self.thermal_critical_c,
            thermal_resume_c=self.thermal_resume_c,
            thermal_cut=self.thermal_cut,
            thermal_cut_after_s=self.thermal_cut_after_s,
            stale_failsafe=self.stale_failsafe,
            min_dwell_s=self.min_dwell_s,
            hysteresis_usd_per_day=self.hysteresis_usd_per_day,
            ramp_kw_per_min=self.ramp_kw_per_min,
            ramp_rigs_per_s=self.ramp_rigs_per_s,
            economics=economics,
            ramp_horizon_s=tick_s,
            off=off or OffRule(),
        )


class OffSettings(Section):
    """``[control.off]``: when a curtailed rig wired to outlets is switched off rather than
    left asleep (policies/off.py, docs/power-switches.md)."""

    # A policy's sleep becomes off once the rig has been asleep long enough for off to pay for
    # its longer (cold) boot; false: off only when a policy or a pin asks for it.
    prefer_off: bool = True
    # Never off before asleep this long, whatever the break-even says.
    min_asleep_s: float = Field(default=1800.0, ge=0, le=7 * 86400)
    # What a rig's outlet feed still draws when switched off.
    standby_w: float = Field(default=0.0, ge=0, le=500)
    # A rig told to sleep on its way to off that then stops answering is cut after this long
    # (never when it was seen hashing since).
    silent_wait_s: float = Field(default=600.0, ge=60, le=86400)

    def rule(self) -> OffRule:
        return OffRule(self.prefer_off, self.min_asleep_s, self.standby_w)


class ControlSettings(Section):
    """``[control]``: the loop's pace, its policies and its guards."""

    tick_s: float = Field(default=30.0, ge=1, le=3600)
    policies: tuple[str, ...] = ("breakeven",)
    power_cap_kw: float | None = Field(default=None, gt=0)
    observe_timeout_s: float = Field(default=5.0, gt=0, le=60)
    observe_concurrency: int = Field(default=256, ge=1, le=4096)
    # Observer worker processes (daemon/workers.py): "auto" (one per core, see
    # docs/control-loop.md) or a number. Read at start-up; a reload keeps the running count.
    workers: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = "auto"
    command_concurrency: int = Field(default=256, ge=1, le=4096)
    command_timeout_s: float = Field(default=30.0, gt=0, le=300)
    confirm_deadline_s: float = Field(default=300.0, gt=0, le=86400)
    max_attempts: int = Field(default=3, ge=1, le=20)
    # A rig marked not responding is sent its target once more every this many seconds until
    # it is seen in it (0: never; the control room's `retry` command clears the mark at once).
    not_responding_retry_s: float = Field(default=1800.0, ge=0, le=86400)
    # On SIGTERM, how long the tick in flight may take to finish its commands before it is
    # abandoned (commands already journaled are confirmed by observation after a restart).
    stop_grace_s: float = Field(default=20.0, ge=0, le=300)
    # The watchdog goes silent when no tick completed for this long (None: 3 ticks, >= 120 s).
    wedged_after_s: float | None = Field(default=None, gt=0, le=86400)
    guards: GuardSettings = GuardSettings()
    off: OffSettings = OffSettings()

    def slowest_tick_s(self) -> float:
        """The longest a healthy tick can take: the wait, a full observation deadline, the
        power-up start slots (up to one tick ahead) and a full command deadline (a hung rig
        holds the tick that long, and no longer)."""
        return 2 * self.tick_s + self.observe_timeout_s + self.command_timeout_s

    def wedged_after(self) -> float:
        """When the watchdog goes silent: as configured, else three ticks, at least 120 s,
        and never before a slow but healthy tick could end."""
        if self.wedged_after_s is not None:
            return self.wedged_after_s
        return max(3 * self.tick_s, 120.0, self.slowest_tick_s() + 30.0)

    @model_validator(mode="after")
    def _wedge_after_a_slow_tick(self) -> ControlSettings:
        if self.wedged_after_s is not None and self.wedged_after_s < self.slowest_tick_s():
            raise ValueError(
                f"wedged_after_s ({self.wedged_after_s:g} s) must be at least 2 × tick_s + "
                f"observe_timeout_s + command_timeout_s ({self.slowest_tick_s():g} s): a tick "
                "spacing power-ups or waiting on a hung rig is slow, not wedged"
            )
        return self

    policy_params: dict[str, object] = Field(default_factory=dict)
