"""The per-rig guards: each takes the decision so far and returns it, or what replaces it.

Order (each may only keep the decision or move it towards the rig's hold setting or lower):
propose (override > intent > hold) -> stale input -> hysteresis -> dwell -> no-observation ->
thermal. The site-wide ramp (``ramp.py``) runs after, on what would raise power.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple

from policies.api import Intent, LazyReason, MarketView, RigView, reason_text
from policies.builtin import point_for
from policies.guards.model import (
    DWELL,
    GUARD_NAMES,
    HYSTERESIS,
    NO_INTENT,
    NO_OBSERVATION,
    OVERRIDE,
    STALE_INPUT,
    THERMAL,
    THERMAL_EMERGENCY,
    FailSafe,
    GuardConfig,
    Override,
    RigGuardState,
    Setting,
)
from policies.guards.power import (
    FLOOR_MODES,
    is_lowering,
    is_raise,
    lowest_setting,
    margin_usd_per_day,
    power_w,
)
from policies.values import Mode, Observation

SOURCE_OVERRIDE = "override"
SOURCE_POLICY = "policy"
SOURCE_HOLD = "hold"
SOURCE_FAILSAFE = "failsafe"
NO_INTENT_REASON = "no policy intent: keeps its current mode"
_UNKNOWN: Final = Mode.UNKNOWN  # module globals: reading an Enum member off its class costs more


class Decision:
    """A rig's setting as the guards pass it along, with who set it and why (an immutable value;
    ``reason`` is text or a :data:`policies.api.LazyReason`, formatted only when read)."""

    __slots__ = (
        "bypass_dwell",
        "decided_by",
        "held_back",
        "reason",
        "setting",
        "source",
        "start_at",
    )

    def __init__(
        self,
        setting: Setting,
        decided_by: str,
        reason: str | LazyReason,
        source: str,  # what asked for it: override, policy, failsafe, or hold
        held_back: bool = False,
        bypass_dwell: bool = False,
        start_at: float | None = None,  # a ramp slot later in the tick (None: now)
    ) -> None:
        self.setting: Final = setting
        self.decided_by: Final = decided_by
        self.reason: Final = reason
        self.source: Final = source
        self.held_back: Final = held_back
        self.bypass_dwell: Final = bypass_dwell
        self.start_at: Final = start_at

    @property
    def reason_text(self) -> str:
        return reason_text(self.reason)


class Latch(NamedTuple):
    """The thermal guard's memory of one rig (a tuple: one is made for every rig, every tick)."""

    cap: Mode | None
    at: float | None
    critical_since: float | None = None
    """Since when the rig has been seen hashing at or above ``thermal_critical_c`` in every
    fresh observation (None: it was not, at the last one)."""


_NO_LATCH: Final = Latch(None, None)


def fresh_observation(rig: RigView, now: float, config: GuardConfig) -> Observation | None:
    """The rig's observation if it is no older than ``observation_ttl_s``, else None."""
    obs = rig.observation
    if obs is None or now - obs.observed_at > config.observation_ttl_s:
        return None
    return obs


def hold_setting(obs: Observation | None, prior: RigGuardState | None) -> Setting:
    """Where the rig stays when nothing moves it: its last desired setting, else what it was
    observed doing, else UNKNOWN (leave it alone)."""
    if prior is not None and prior.setting.mode is not _UNKNOWN:
        return prior.setting
    if obs is not None:
        return Setting.of(obs.mode, obs.power_limit_w)
    return Setting.of(Mode.UNKNOWN, None)


def pick_override(rig: RigView, overrides: Sequence[Override], now: float) -> Override | None:
    """The active override for this rig: one naming it beats one naming its group; among
    equals the one asking for the least power wins (the safe side), then the earliest listed."""
    live: list[Override] = []
    for override in overrides:  # most rigs, most ticks: none matches
        if override.matches(rig) and override.active(now):
            live.append(override)
    if not live:
        return None
    if len(live) == 1:
        return live[0]

    def key(item: tuple[int, Override]) -> tuple[int, float, int]:
        index, override = item
        watts = power_w(rig, Setting.of(override.mode, override.power_limit_w))
        return (0 if override.specific else 1, float("inf") if watts is None else watts, index)

    return min(enumerate(live), key=key)[1]


def propose(
    rig: RigView, intent: Intent | None, override: Override | None, hold: Setting
) -> Decision:
    """The starting decision: an active override, else the policy's intent, else hold."""
    if override is not None:
        return Decision(
            Setting.of(override.mode, override.power_limit_w),
            OVERRIDE,
            (override_reason, override),
            SOURCE_OVERRIDE,
            bypass_dwell=override.bypass_dwell,
        )
    if intent is not None and intent.mode is not _UNKNOWN:
        setting = Setting.of(intent.mode, intent.power_limit_w)
        return Decision(setting, intent.policy, intent._reason, SOURCE_POLICY)
    return Decision(hold, NO_INTENT, NO_INTENT_REASON, SOURCE_HOLD)


def override_reason(override: Override) -> str:
    """What an override's decision says: who, until when, and why."""
    reason = f"operator override by {override.by} until {override.expires_at:.0f}"
    if override.why:
        reason += f": {override.why}"
    return reason


def _held(decision: Decision, hold: Setting, by: str, reason: str | LazyReason) -> Decision:
    """``decision`` replaced by staying at ``hold``; later guards see nothing left to do."""
    moved = decision.setting != hold
    return Decision(hold, by, reason, SOURCE_HOLD, held_back=decision.held_back or moved)


def observation_guard(
    decision: Decision, rig: RigView, obs: Observation | None, hold: Setting
) -> Decision:
    """A rig without a fresh observation is only ever moved by an override lowering its power."""
    if obs is not None or decision.setting is hold or decision.setting == hold:
        return decision
    if decision.source == SOURCE_OVERRIDE and is_lowering(rig, hold, decision.setting):
        return decision
    return _held(decision, hold, NO_OBSERVATION, "no fresh observation: kept as it is")


def stale_guard(
    decision: Decision, rig: RigView, hold: Setting, market: MarketView, config: GuardConfig
) -> Decision:
    """While a price is stale a policy's intent is replaced by the configured fail-safe."""
    if decision.source != SOURCE_POLICY or not stale_applies(decision.decided_by, market, config):
        return decision
    hashprice, price = market.hashprice_usd_per_ph_day, market.power_price_usd_per_kwh
    stale = [
        name
        for name, value in (
            ("hashprice", hashprice),
            ("power price", price),
        )
        if value is None
    ]
    why = f"{' and '.join(stale)} stale: fail-safe {config.stale_failsafe.value}"
    target = _failsafe_setting(rig, hold, config.stale_failsafe)
    if target == hold:
        return _held(decision, hold, STALE_INPUT, why)
    return Decision(target, STALE_INPUT, why, SOURCE_FAILSAFE)


def stale_applies(policy: str, market: MarketView, config: GuardConfig) -> bool:
    """Whether the stale-input guard acts on ``policy``'s intents: a price is stale and the
    policy is not exempt (``stale_exempt_policies``)."""
    if market.hashprice_usd_per_ph_day is not None and market.power_price_usd_per_kwh is not None:
        return False
    return policy not in config.stale_exempt_policies


def _failsafe_setting(rig: RigView, hold: Setting, failsafe: FailSafe) -> Setting:
    if failsafe is FailSafe.SLEEP and Mode.SLEEP in rig.modes:
        return Setting.of(Mode.SLEEP, None)
    if failsafe is FailSafe.NORMAL and Mode.NORMAL in rig.modes:
        return Setting.of(Mode.NORMAL, None)
    return hold


def hysteresis_guard(
    decision: Decision,
    rig: RigView,
    hold: Setting,
    prior: RigGuardState | None,
    market: MarketView,
    config: GuardConfig,
) -> Decision:
    """A policy may not undo its own last change until the margin between the two settings has
    moved by more than ``hysteresis_usd_per_day``."""
    if (
        decision.source != SOURCE_POLICY
        or decision.setting is hold
        or decision.setting == hold
        or prior is None
        or prior.previous != decision.setting
        or prior.changed_by in GUARD_NAMES
    ):
        return decision
    wanted = margin_usd_per_day(rig, decision.setting, market, config.economics)
    current = margin_usd_per_day(rig, hold, market, config.economics)
    if wanted is None or current is None:
        return decision
    gain = wanted - current
    if abs(gain) > config.hysteresis_usd_per_day:
        return decision
    why = (hold.mode, gain, config.hysteresis_usd_per_day)
    return _held(decision, hold, HYSTERESIS, (hysteresis_text, why))


def hysteresis_text(args: tuple[Mode, float, float]) -> str:
    """The hysteresis guard's reason, from (the hold mode, the margin gain, the band)."""
    mode, gain, band = args
    return (
        f"undoing the last change to {mode.value} would move the margin only "
        f"{gain:+.2f} USD/day (band ±{band:.2f})"
    )


def dwell_guard(
    decision: Decision,
    hold: Setting,
    prior: RigGuardState | None,
    now: float,
    config: GuardConfig,
) -> Decision:
    """No change within ``min_dwell_s`` of the last one, unless an override says so."""
    if prior is None or prior.changed_at is None or decision.setting is hold:
        return decision
    if decision.setting == hold:
        return decision
    if decision.source == SOURCE_OVERRIDE and decision.bypass_dwell:
        return decision
    if not dwell_holds(prior, now, config):
        return decision
    elapsed = now - prior.changed_at
    return _held(decision, hold, DWELL, (dwell_text, (elapsed, config.min_dwell_s)))


def dwell_holds(prior: RigGuardState | None, now: float, config: GuardConfig) -> bool:
    """Whether the rig's last change is younger than ``min_dwell_s`` at ``now`` (the dwell
    guard's one test)."""
    if prior is None or prior.changed_at is None:
        return False
    return now - prior.changed_at < config.min_dwell_s


def dwell_ends(prior: RigGuardState | None, config: GuardConfig) -> float | None:
    """About when the dwell of the rig's last change ends (None: no change remembered); the
    guard itself decides by :func:`dwell_holds`."""
    if prior is None or prior.changed_at is None:
        return None
    return prior.changed_at + config.min_dwell_s


def dwell_text(args: tuple[float, float]) -> str:
    """The dwell guard's reason, from (seconds since the last change, the minimum dwell)."""
    elapsed, min_dwell_s = args
    return f"last change {elapsed:.0f} s ago; minimum dwell {min_dwell_s:.0f} s"


def update_latch(
    rig: RigView, obs: Observation | None, prior: RigGuardState | None, now: float, c: GuardConfig
) -> Latch:
    """Trip at ``thermal_limit_c``; clear below ``thermal_resume_c``, or, for a rig that is not
    hashing and reports no chip temperature, ``thermal_cooldown_s`` after it was last hot."""
    if prior is None:
        cap = at = critical = None
    else:
        cap, at, critical = prior.thermal_cap, prior.thermal_at, prior.critical_since
    temp = None if obs is None else obs.max_chip_temp_c
    if temp is not None and is_hot(temp, c):
        if temp >= c.thermal_critical_c and obs is not None and obs.mining:
            critical = now if critical is None else critical
        else:
            critical = None
        return Latch(thermal_target(rig, temp, c).mode, now, critical)
    if obs is None:  # unread: nothing new is known
        return _NO_LATCH if cap is None and at is None and critical is None else prior_latch(prior)
    if cap is None:
        return _NO_LATCH if at is None else Latch(None, at)
    if temp is not None and temp < c.thermal_resume_c:
        return Latch(None, at)
    cooled_long_enough = at is None or now - at >= c.thermal_cooldown_s
    if temp is None and not obs.mining and cooled_long_enough:
        return Latch(None, at)
    return Latch(cap, at)


def prior_latch(prior: RigGuardState | None) -> Latch:
    """The latch the guards' memory holds."""
    if prior is None:
        return _NO_LATCH
    return Latch(prior.thermal_cap, prior.thermal_at, prior.critical_since)


def is_hot(temp_c: float, config: GuardConfig) -> bool:
    """A chip temperature at or above ``thermal_limit_c``: the thermal guard acts."""
    return temp_c >= config.thermal_limit_c


def thermal_target(rig: RigView, temp_c: float, config: GuardConfig) -> Setting:
    """Low when the rig has a low mode with known watts and is below critical, else sleep."""
    if temp_c < config.thermal_critical_c and point_for(rig, Mode.LOW) is not None:
        return Setting.of(Mode.LOW, None)
    return lowest_setting(rig)


def emergency(
    rig: RigView,
    obs: Observation | None,
    hold: Setting,
    set_at: float | None,
    latch: Latch,
    now: float,
    config: GuardConfig,
) -> str | None:
    """The thermal emergency the guard declares, as its reason, or None: a rig that can be
    switched off (``off`` among its modes: wired to outlets), seen hashing at or above
    ``thermal_critical_c`` in every fresh observation for ``thermal_cut_after_s`` since it was
    set to sleep (or off; ``set_at``: when), that is, since the later of the two. Its firmware
    ignores the command while its chips are at the temperature where damage starts, so its
    power is cut. Never a rig not seen hashing, never one whose chips are unread (an unread
    temperature is not evidence of an emergency; the guard keeps such a rig from being raised),
    never with ``thermal_cut`` off."""
    critical = latch.critical_since
    if (
        not config.thermal_cut
        or critical is None
        or obs is None
        or not obs.mining
        or hold.mode not in FLOOR_MODES
        or set_at is None
        or Mode.OFF not in rig.modes
    ):
        return None
    temp = obs.max_chip_temp_c
    if temp is None or temp < config.thermal_critical_c:
        return None
    since = max(critical, set_at)
    if now - since < config.thermal_cut_after_s:
        return None
    return (
        f"thermal emergency: max chip {temp:.0f} °C >= {config.thermal_critical_c:.0f} °C, "
        f"still hashing {now - since:.0f} s after it was set to {hold.mode.value} "
        f"(limit {config.thermal_cut_after_s:.0f} s): its outlets are cut"
    )


def thermal_guard(
    decision: Decision,
    rig: RigView,
    obs: Observation | None,
    hold: Setting,
    latch: Latch,
    config: GuardConfig,
    set_at: float | None = None,
    now: float = 0.0,
) -> Decision:
    """A hot rig goes down to its thermal target (or stays lower), or is cut in a thermal
    emergency (:func:`emergency`; ``set_at``: when its current setting was made); a latched
    rig or one whose chips cannot be read while hashing is not raised. Outranks everything
    before it."""
    temp = obs.max_chip_temp_c if obs is not None else None
    if temp is not None and is_hot(temp, config):
        cut = emergency(rig, obs, hold, set_at, latch, now, config)
        if cut is not None:
            return Decision(
                Setting.of(Mode.OFF, None),
                THERMAL_EMERGENCY,
                cut,
                decision.source,
                decision.held_back,
                decision.bypass_dwell,
            )
        return _hot(decision, rig, temp, hold, config)
    if not is_raise(rig, hold, decision.setting):
        return decision
    if latch.cap is not None:
        shown = "unread" if temp is None else f"{temp:.0f} °C"
        reason = f"cooling after a thermal trip (max chip {shown}); resumes below "
        return _held(decision, hold, THERMAL, reason + f"{config.thermal_resume_c:.0f} °C")
    if obs is not None and temp is None and obs.mining:
        return _held(decision, hold, THERMAL, "chip temperature unreadable while hashing")
    return decision


def _hot(
    decision: Decision, rig: RigView, temp: float, hold: Setting, config: GuardConfig
) -> Decision:
    target = thermal_target(rig, temp, config)
    if power_w(rig, hold) is None:
        target = lowest_setting(rig)
    wanted = decision.setting
    if not is_raise(rig, target, wanted) and not is_raise(rig, hold, wanted):
        return decision
    reason = f"max chip {temp:.0f} °C >= {config.thermal_limit_c:.0f} °C"
    if is_raise(rig, hold, target):
        return _held(decision, hold, THERMAL, reason + f": kept at {hold.mode.value}")
    return Decision(
        target,
        THERMAL,
        reason + f": {target.mode.value}",
        decision.source,
        decision.held_back,
        decision.bypass_dwell,
    )


def decide_rig(
    rig: RigView,
    intent: Intent | None,
    overrides: Sequence[Override],
    prior: RigGuardState | None,
    market: MarketView,
    config: GuardConfig,
    now: float,
) -> tuple[Setting, Decision, Latch]:
    """Every per-rig guard in order: (the hold setting, the decision, the new thermal latch)."""
    obs = fresh_observation(rig, now, config)
    hold = hold_setting(obs, prior)
    latch = update_latch(rig, obs, prior, now, config)
    decision = propose(rig, intent, pick_override(rig, overrides, now), hold)
    decision = stale_guard(decision, rig, hold, market, config)
    decision = hysteresis_guard(decision, rig, hold, prior, market, config)
    decision = dwell_guard(decision, hold, prior, now, config)
    decision = observation_guard(decision, rig, obs, hold)
    set_at = prior.changed_at if prior is not None else None
    decision = thermal_guard(decision, rig, obs, hold, latch, config, set_at, now)
    return hold, decision, latch


def intents_for(intents: Mapping[str, Intent], rig: RigView) -> Intent | None:
    """The intent addressed to ``rig``, if any (one keyed under another rig id is ignored)."""
    intent = intents.get(rig.rig_id)
    return intent if intent is not None and intent.rig_id == rig.rig_id else None
