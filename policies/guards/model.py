"""The guards' value types: settings, overrides, configuration, the desired state, and the state
the guards carry from one tick to the next (JSON-serialisable so the daemon can persist it)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from policies.api import HasLazyReason, LazyReason, RigView
from policies.economics import Economics
from policies.off import OffRule
from policies.values import Mode, RigId

# decided_by names of the guards (a policy's own name is used when the intent passes through)
OVERRIDE = "override"
THERMAL = "thermal"
THERMAL_EMERGENCY = "thermal-emergency"
STALE_INPUT = "stale-input"
DWELL = "dwell"
HYSTERESIS = "hysteresis"
RAMP = "ramp"
NO_OBSERVATION = "no-observation"
NO_INTENT = "no-intent"
GUARD_NAMES = frozenset(
    {
        OVERRIDE,
        THERMAL,
        THERMAL_EMERGENCY,
        STALE_INPUT,
        DWELL,
        HYSTERESIS,
        RAMP,
        NO_OBSERVATION,
        NO_INTENT,
    }
)


@dataclass(frozen=True, slots=True, eq=False)
class Setting:
    """A mode and, for ``Mode.LIMIT``, its power limit (None for every other mode)."""

    mode: Mode
    power_limit_w: int | None = None

    @classmethod
    def of(cls, mode: Mode, power_limit_w: int | None) -> Setting:
        """The setting, dropping a limit that only LIMIT mode carries (one shared value per
        mode without a limit: the guards compare settings for every rig, every tick)."""
        if mode is _LIMIT:
            return cls(mode, power_limit_w)
        return _PLAIN[mode]

    # Written out rather than generated: the same equality, without building two tuples.
    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if other.__class__ is not Setting:
            return NotImplemented
        assert isinstance(other, Setting)
        return self.mode is other.mode and self.power_limit_w == other.power_limit_w

    def __hash__(self) -> int:
        return hash((self.mode, self.power_limit_w))


_PLAIN: Final = {mode: Setting(mode) for mode in Mode}
_LIMIT: Final = Mode.LIMIT  # a module global: reading an Enum member off its class costs more


class Desired(HasLazyReason):
    """What one rig should be doing after the guards, who decided it, and why.

    ``mode`` UNKNOWN means "leave the rig alone": nothing is known about it yet. ``held_back``
    is True when a change was asked for (by an override, a policy or the fail-safe) and a guard
    kept the rig where it is this tick; ``decided_by`` names that guard. ``start_at`` is set on
    a power-up the ramp granted a later start slot within the tick: the command is not to be
    sent before that time (None: now).

    An immutable value (attributes ``Final``). ``reason`` may be given lazily, as for
    :class:`policies.api.Intent`: it is formatted when first read, and equality, hashing and
    ``repr`` use its text.
    """

    __slots__ = (
        "decided_by",
        "held_back",
        "mode",
        "power_limit_w",
        "rig_id",
        "start_at",
    )

    def __init__(
        self,
        rig_id: RigId,
        mode: Mode,
        power_limit_w: int | None,
        reason: str | LazyReason,
        decided_by: str,
        held_back: bool = False,
        start_at: float | None = None,
    ) -> None:
        self.rig_id: Final = rig_id
        self.mode: Final = mode
        self.power_limit_w: Final = power_limit_w
        self._reason = reason
        self.decided_by: Final = decided_by
        self.held_back: Final = held_back
        self.start_at: Final = start_at

    @property
    def setting(self) -> Setting:
        return Setting(self.mode, self.power_limit_w)

    def _key(self) -> tuple[RigId, Mode, int | None, str, str, bool, float | None]:
        return (
            self.rig_id,
            self.mode,
            self.power_limit_w,
            self.reason,
            self.decided_by,
            self.held_back,
            self.start_at,
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Desired)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Desired(rig_id={self.rig_id!r}, mode={self.mode!r}, "
            f"power_limit_w={self.power_limit_w!r}, reason={self.reason!r}, "
            f"decided_by={self.decided_by!r}, held_back={self.held_back!r}"
            + ("" if self.start_at is None else f", start_at={self.start_at!r}")
            + ")"
        )


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's pin: these rigs (by id, or every rig of ``group``) run ``mode`` until
    ``expires_at``. ``bypass_dwell`` lets it act before the rig's minimum dwell has passed;
    nothing lets it raise the power of a rig the thermal guard holds down."""

    mode: Mode
    expires_at: float
    by: str
    why: str
    rig_ids: frozenset[RigId] = frozenset()
    group: str | None = None
    power_limit_w: int | None = None
    bypass_dwell: bool = False

    def __post_init__(self) -> None:
        if self.mode is Mode.UNKNOWN:
            raise ValueError("an override needs a real mode, not 'unknown'")
        if self.mode is Mode.LIMIT and (self.power_limit_w is None or self.power_limit_w <= 0):
            raise ValueError("a 'limit' override needs a positive power_limit_w")
        if not self.rig_ids and not self.group:
            raise ValueError("an override needs rig_ids or a group")
        if not math.isfinite(self.expires_at):
            raise ValueError("expires_at must be a finite time")

    def active(self, now: float) -> bool:
        """True until ``expires_at`` (exclusive)."""
        return now < self.expires_at

    def matches(self, rig: RigView) -> bool:
        """True when the override names this rig, or its group."""
        return rig.rig_id in self.rig_ids or (bool(self.group) and rig.group == self.group)

    @property
    def specific(self) -> bool:
        return bool(self.rig_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "expires_at": self.expires_at,
            "by": self.by,
            "why": self.why,
            "rig_ids": sorted(self.rig_ids),
            "group": self.group,
            "power_limit_w": self.power_limit_w,
            "bypass_dwell": self.bypass_dwell,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Override:
        """Inverse of to_dict; KeyError/ValueError on a malformed entry."""
        return cls(
            mode=Mode(data["mode"]),
            expires_at=float(data["expires_at"]),
            by=str(data["by"]),
            why=str(data["why"]),
            rig_ids=frozenset(str(r) for r in data.get("rig_ids") or ()),
            group=None if data.get("group") is None else str(data["group"]),
            power_limit_w=_opt_int(data.get("power_limit_w")),
            bypass_dwell=bool(data.get("bypass_dwell", False)),
        )


class FailSafe(StrEnum):
    """What a rig's policy intent becomes while a price it needs is stale."""

    HOLD = "hold"  # keep the current mode
    SLEEP = "sleep"
    NORMAL = "normal"


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """The guards' settings (see docs/guards.md for each, and why the defaults)."""

    thermal_limit_c: float = 90.0
    thermal_critical_c: float = 95.0
    thermal_resume_c: float = 80.0
    thermal_cooldown_s: float = 300.0
    thermal_cut: bool = True
    """Declare a thermal emergency (the rig's outlets cut, where it has any) for a rig at or
    above ``thermal_critical_c`` that still hashes ``thermal_cut_after_s`` after it was set to
    sleep (its firmware ignores the command): see :func:`policies.guards.rig.emergency`."""
    thermal_cut_after_s: float = 120.0
    stale_failsafe: FailSafe = FailSafe.HOLD
    stale_exempt_policies: frozenset[str] = frozenset()
    observation_ttl_s: float = 180.0
    min_dwell_s: float = 600.0
    hysteresis_usd_per_day: float = 0.25
    economics: Economics = field(default_factory=Economics)
    ramp_kw_per_min: float = 100.0
    ramp_rigs_per_s: float = 1.0
    ramp_tie_usd_per_kw_day: float = 0.05
    default_rig_power_w: float = 3500.0
    ramp_horizon_s: float = 1.0
    """How far ahead one call may schedule power-up starts (the shell passes its tick
    interval, so a tick uses the rigs-per-second budget until the next tick)."""
    off: OffRule = field(default_factory=OffRule)
    """When a policy's ``sleep`` becomes ``off`` for a rig wired to outlets (policies/off.py)."""

    def __post_init__(self) -> None:
        for name in (
            "thermal_limit_c",
            "thermal_critical_c",
            "thermal_resume_c",
            "thermal_cooldown_s",
            "thermal_cut_after_s",
            "observation_ttl_s",
            "min_dwell_s",
            "hysteresis_usd_per_day",
            "ramp_kw_per_min",
            "ramp_rigs_per_s",
            "ramp_tie_usd_per_kw_day",
            "default_rig_power_w",
            "ramp_horizon_s",
        ):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if not self.thermal_resume_c < self.thermal_limit_c <= self.thermal_critical_c:
            raise ValueError("need thermal_resume_c < thermal_limit_c <= thermal_critical_c")
        for name in (
            "thermal_cooldown_s",
            "thermal_cut_after_s",
            "min_dwell_s",
            "hysteresis_usd_per_day",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in (
            "observation_ttl_s",
            "ramp_kw_per_min",
            "ramp_rigs_per_s",
            "ramp_tie_usd_per_kw_day",
            "default_rig_power_w",
            "ramp_horizon_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")

    @property
    def ramp_spacing_s(self) -> float:
        """Power-up starts are at least this far apart: one rig per ``1/ramp_rigs_per_s``."""
        return 1.0 / self.ramp_rigs_per_s


RAMP_KW_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class RigGuardState:
    """What the guards remember about one rig."""

    setting: Setting  # the last desired setting
    changed_at: float | None = None  # when the desired setting last changed
    previous: Setting | None = None  # the setting before that change
    changed_by: str = ""  # decided_by of that change
    thermal_cap: Mode | None = None  # latched by the thermal guard until the rig cools
    thermal_at: float | None = None  # the last time the rig was seen at or above the limit
    critical_since: float | None = None  # seen hashing at or above critical since (rig.py)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.setting.mode.value,
            "power_limit_w": self.setting.power_limit_w,
            "changed_at": self.changed_at,
            "previous": None if self.previous is None else _setting_dict(self.previous),
            "changed_by": self.changed_by,
            "thermal_cap": None if self.thermal_cap is None else self.thermal_cap.value,
            "thermal_at": self.thermal_at,
            **({} if self.critical_since is None else {"critical_since": self.critical_since}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RigGuardState:
        previous = data.get("previous")
        return cls(
            setting=Setting.of(Mode(data["mode"]), _opt_int(data.get("power_limit_w"))),
            changed_at=_opt_float(data.get("changed_at")),
            previous=None if previous is None else _setting_from(previous),
            changed_by=str(data.get("changed_by", "")),
            thermal_cap=None if data.get("thermal_cap") is None else Mode(data["thermal_cap"]),
            thermal_at=_opt_float(data.get("thermal_at")),
            critical_since=_opt_float(data.get("critical_since")),
        )


@dataclass(frozen=True, slots=True)
class RampGrant:
    """One power-up the ramp guard let through: when it starts (its slot, possibly later in the
    tick than the call's ``now``), which rig, how many kW."""

    at: float
    rig_id: RigId
    kw: float


@dataclass(frozen=True, slots=True)
class GuardState:
    """Everything the guards carry between ticks; a new value is returned by every tick."""

    rigs: Mapping[RigId, RigGuardState] = field(default_factory=dict)
    ramp_log: tuple[RampGrant, ...] = ()
    as_of: float | None = field(default=None, compare=False)
    """The ``now`` of the call that returned this state (None: not known). A later call with
    an earlier ``now`` means the clock stepped back: see :meth:`shifted`."""

    def shifted(self, delta_s: float) -> GuardState:
        """Every time this state remembers moved by ``delta_s``: when the clock steps back by
        d, the guards shift their memory by -d, as if no time had passed between the two calls,
        so a dwell, a thermal cool-down or the ramp's minute lasts what it should from there,
        instead of until the clock catches up with times now in the future (hours, after a bad
        clock is corrected)."""

        def moved(t: float | None) -> float | None:
            return None if t is None else t + delta_s

        rigs = {
            rid: RigGuardState(
                r.setting,
                moved(r.changed_at),
                r.previous,
                r.changed_by,
                r.thermal_cap,
                moved(r.thermal_at),
                moved(r.critical_since),
            )
            for rid, r in self.rigs.items()
        }
        log = tuple(RampGrant(g.at + delta_s, g.rig_id, g.kw) for g in self.ramp_log)
        return GuardState(rigs, log, moved(self.as_of))

    def to_dict(self, rigs: bool = True) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict`` of it equals this state. ``rigs=False`` leaves the
        rigs out (a store that keeps them a row each adds them back as ``"rigs"``)."""
        doc: dict[str, Any] = {"version": 1}
        if rigs:
            doc["rigs"] = {rid: self.rigs[rid].to_dict() for rid in sorted(self.rigs)}
        doc["ramp_log"] = [{"at": g.at, "rig_id": g.rig_id, "kw": g.kw} for g in self.ramp_log]
        if self.as_of is not None:
            doc["as_of"] = self.as_of
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuardState:
        """Inverse of to_dict; KeyError/ValueError on a malformed document."""
        if data.get("version", 1) != 1:
            raise ValueError(f"unknown guard state version {data.get('version')!r}")
        rigs = {str(rid): RigGuardState.from_dict(r) for rid, r in dict(data["rigs"]).items()}
        log = tuple(
            RampGrant(float(g["at"]), str(g["rig_id"]), float(g["kw"])) for g in data["ramp_log"]
        )
        return cls(rigs=rigs, ramp_log=log, as_of=_opt_float(data.get("as_of")))


def _setting_dict(setting: Setting) -> dict[str, Any]:
    return {"mode": setting.mode.value, "power_limit_w": setting.power_limit_w}


def _setting_from(data: Mapping[str, Any]) -> Setting:
    return Setting.of(Mode(data["mode"]), _opt_int(data.get("power_limit_w")))


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
