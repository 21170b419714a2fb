"""Off over sleep, only when it pays: the one rule by which a curtailed rig wired to outlets is
switched off rather than left asleep (docs/power-switches.md, "Off or sleep").

A sleeping rig draws its control board's few watts (about 18 W); off (its outlets cut) draws
only what the outlet's feed draws when off (``standby_w``, 0 W for a plain relay). But a rig
woken from off boots from cold, which takes longer than a wake from sleep
(:attr:`policies.timing.Transition.cold_boot_s` against ``boot_s``): the extra boot seconds
hash nothing and draw the booting boards' power. That is the price of off, paid once, at the
wake-up (:func:`off_case`).

How long a curtailment will last is not known when it starts. The rule is the break-even
("ski-rental") one: keep the rig asleep, and switch it off once it has been asleep for as long
as the saving (sleep draw minus standby, at the current power price) takes to pay for the
extra cost of the cold boot (the extra boot seconds at the rig's hashing revenue at the
current hashprice, plus the extra boot energy), and never before ``min_asleep_s``. Whatever
the curtailment turns out to be, this costs at most twice what knowing its length in advance
would have (the classic bound of the rule); a short curtailment never pays for a cold boot.

A rig already off that its policies want asleep stays off: booting it from cold only to sleep
costs the boot and then the sleep draw, never less than staying off.

Applied once per tick to the combined intents, before the transitions' hold
(:func:`policies.tick.guard`), live and in the backtest alike, so every policy's ``sleep``
becomes ``off`` by the same rule. Only rigs whose modes include ``off`` (wired to outlets) are
concerned. Pure: no I/O, no clock reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from policies.api import Intent, MarketView, RigView
from policies.builtin import point_for
from policies.economics import Economics, ModePoint, cost_per_day, revenue_usd_per_day
from policies.timing import Transition
from policies.values import HASHING_MODES, Mode, RigId

if TYPE_CHECKING:  # the guards' memory type; policies.guards imports this module's OffRule
    from policies.guards.model import RigGuardState

SECONDS_PER_DAY: Final = 86400.0
_OFF, _SLEEP = Mode.OFF, Mode.SLEEP


@dataclass(frozen=True, slots=True)
class OffRule:
    """The settings of the rule (``[control.off]``; docs/power-switches.md)."""

    enabled: bool = True
    """False: no policy's ``sleep`` ever becomes ``off`` (``off`` then comes only from a policy
    or a pin that asks for it)."""
    min_asleep_s: float = 1800.0
    """The floor: never off before the rig has been asleep this long, whatever the break-even
    says (a cold boot also risks what the arithmetic does not price: relays, PSUs, boards)."""
    standby_w: float = 0.0
    """What a rig's outlet feed still draws when switched off (0 W for a relay that cuts it)."""

    def __post_init__(self) -> None:
        for name in ("min_asleep_s", "standby_w"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"off rule: {name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class OffCase:
    """The arithmetic of off over sleep for one rig at the current prices."""

    extra_boot_s: float
    """Seconds a wake from off boots longer than a wake from sleep (hash lost)."""
    hash_usd: float
    """The hash those seconds would have earned (revenue of the rig's wake-up mode)."""
    boot_energy_usd: float
    """The power booting boards draw for those extra seconds."""
    saving_w: float
    """Sleep draw minus the outlet's standby."""
    saving_usd_per_day: float
    breakeven_s: float
    """Asleep this long, off has paid for its cold boot (+inf: it never does)."""

    @property
    def extra_cost_usd(self) -> float:
        return self.hash_usd + self.boot_energy_usd


def wake_point(rig: RigView) -> ModePoint | None:
    """The point the rig is priced to wake into: normal, else its highest hashing point."""
    normal = point_for(rig, Mode.NORMAL)
    if normal is not None and normal.hashrate_ths > 0:
        return normal
    hashing = [p for p in rig.points if p.mode in HASHING_MODES and p.hashrate_ths > 0]
    return max(hashing, key=lambda p: (p.hashrate_ths, p.mode.value)) if hashing else None


def off_case(
    rig: RigView,
    timing: Transition,
    hashprice_usd_per_ph_day: float,
    price_per_kwh: float,
    terms: Economics,
    rule: OffRule,
) -> OffCase | None:
    """The cost of a cold boot over a warm one and the saving of off over sleep, for ``rig``
    at these prices; None when the rig has no hashing point to price a wake-up with."""
    wake = wake_point(rig)
    if wake is None:
        return None
    lost = timing.lost_hash_s
    extra_s = max(0.0, lost("off", wake.mode) - lost("sleep", wake.mode))
    revenue = max(0.0, revenue_usd_per_day(wake.hashrate_ths, hashprice_usd_per_ph_day, terms))
    hash_usd = extra_s * revenue / SECONDS_PER_DAY
    boot_extra_s = max(0.0, timing.boot_from("off") - timing.boot_from("sleep"))
    boot_w = timing.boot_power_share * wake.power_w
    energy_usd = boot_extra_s * max(0.0, cost_per_day(boot_w, price_per_kwh, terms))
    energy_usd /= SECONDS_PER_DAY
    sleep = point_for(rig, _SLEEP)
    saving_w = (sleep.power_w if sleep is not None else 0.0) - rule.standby_w
    saving_per_day = cost_per_day(saving_w, price_per_kwh, terms) if saving_w > 0 else 0.0
    cost = hash_usd + energy_usd
    breakeven = math.inf if saving_per_day <= 0 else cost / saving_per_day * SECONDS_PER_DAY
    return OffCase(extra_s, hash_usd, energy_usd, saving_w, saving_per_day, breakeven)


def off_after_s(case: OffCase, rule: OffRule) -> float:
    """How long a rig must have been asleep before it is switched off (+inf: never)."""
    return max(rule.min_asleep_s, case.breakeven_s)


def asleep_since(memory: RigGuardState | None) -> float | None:
    """When the rig was last set to sleep, per the guards' memory (None: it is not set to
    sleep, or when is not known, e.g. found asleep at start-up)."""
    if memory is None or memory.setting.mode is not _SLEEP:
        return None
    return memory.changed_at


def prefer_off(
    intents: Mapping[RigId, Intent],
    fleet: Sequence[RigView],
    memory: Mapping[RigId, RigGuardState],
    timing: Callable[[RigId], Transition],
    market: MarketView,
    terms: Economics,
    rule: OffRule,
    now: float,
) -> Mapping[RigId, Intent]:
    """``intents`` with ``sleep`` replaced by ``off`` (same policy, the reason saying why) for
    each rig that can be switched off and either is set off already, or has been set to sleep
    for :func:`off_after_s` at the current prices. The mapping itself when nothing changes."""
    if not rule.enabled:
        return intents
    hp, pp = market.hashprice_usd_per_ph_day, market.power_price_usd_per_kwh
    out: dict[RigId, Intent] | None = None
    for rig in fleet:
        if _OFF not in rig.modes:
            continue
        rid = rig.rig_id
        want = intents.get(rid)
        if want is None or want.mode is not _SLEEP or want.rig_id != rid:
            continue
        mem = memory.get(rid)
        note: tuple[str, object] | None = None
        if mem is not None and mem.setting.mode is _OFF:
            note = ("stay", None)
        else:
            since = asleep_since(mem)
            if since is None or hp is None or pp is None:
                continue
            case = off_case(rig, timing(rid), hp, pp, terms, rule)
            if case is None or now - since < off_after_s(case, rule):
                continue
            note = ("pays", (now - since, case, rule, pp))
        if out is None:
            out = dict(intents)
        out[rid] = Intent(rid, _OFF, (_off_reason, (want, note)), want.policy)
    return intents if out is None else out


def _off_reason(args: tuple[Intent, tuple[str, object]]) -> str:
    want, (kind, detail) = args
    if kind == "stay":
        return f"{want.reason}; off: already off, and a cold boot only to sleep never pays"
    assert isinstance(detail, tuple)
    asleep_s, case, rule, price = detail
    return f"{want.reason}; {off_text(asleep_s, case, rule, price)}"


def off_text(asleep_s: float, case: OffCase, rule: OffRule, price_per_kwh: float) -> str:
    """Why a rig asleep ``asleep_s`` is switched off (the audit trail's words)."""
    floor = (
        f", floor {_duration(rule.min_asleep_s)}" if rule.min_asleep_s > case.breakeven_s else ""
    )
    return (
        f"off: asleep {_duration(asleep_s)} >= {_duration(case.breakeven_s)}, the time its "
        f"sleep draw ({case.saving_w:.0f} W at ${price_per_kwh:.3f}/kWh: "
        f"${case.saving_usd_per_day:.4f}/day) takes to pay for a cold boot "
        f"(${case.extra_cost_usd:.4f}: {case.extra_boot_s:.0f} s more hash lost "
        f"${case.hash_usd:.4f}, boot energy ${case.boot_energy_usd:.4f}){floor}"
    )


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    minutes = round(seconds / 60.0)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
