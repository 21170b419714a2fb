"""One tick of the core: from what is observed and priced now to the desired state of every rig.

The live loop (``daemon/loop.py``) and the backtest (``backtest/``) both decide through this
module, so a rig is decided the same way in both: the site target caps the site
(:func:`with_site_target`), every policy gives its opinion (:func:`decide`), the opinions are
combined, a curtailed rig wired to outlets goes from sleep to off once that pays
(:func:`policies.off.prefer_off`), a rig still settling after a change or a change that does
not repay itself is held (:func:`policies.transition.hold_transitions`), and the guards make
the final call (:func:`policies.guards.apply_guards`). :func:`tick` is all of it in one call;
:func:`decide` and :func:`guard` are its two stages, for a caller (the backtest's cohort
replay) that asks the policies and the guards about different sets of rigs.

**A policy that fails holds the fleet**, live and in the backtest alike: a policy that raises,
or answers with something that is not a mapping of Intents, is reported (:class:`PolicyFailure`)
and no policy moves any rig this tick, since without its opinion the others could raise power
it would have kept down (a schedule's 4CP window, a cap). The guards still act (thermal
protection, overrides, the stale-input fail-safe). The next tick asks again.

Pure: no I/O, no clock reads; the same arguments give the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from policies.api import Intent, MarketView, Policy, RigView, Site
from policies.combine import combine
from policies.guards import Desired, GuardConfig, GuardState, Override, apply_guards
from policies.off import prefer_off
from policies.power_cap import PowerCapPolicy
from policies.timing import STOCK, Transition
from policies.transition import hold_transitions
from policies.values import RigId


@dataclass(frozen=True, slots=True)
class PolicyFailure:
    """A policy that raised, or answered with something that is not a mapping of Intents."""

    policy: str
    error: str  # "ZeroDivisionError: the plugin's bug"
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    """The exception itself, for a shell that logs its traceback."""


@dataclass(frozen=True, slots=True)
class TickResult:
    """What one tick decided: the desired state of every rig in the fleet, the guards' new
    state, and the policies that failed (when any did, no policy moved any rig)."""

    desired: Mapping[RigId, Desired]
    guard_state: GuardState
    failures: tuple[PolicyFailure, ...] = ()

    @property
    def failed_policies(self) -> tuple[str, ...]:
        return tuple(f.policy for f in self.failures)


def checked_opinion(name: str, opinion: object) -> Mapping[RigId, Intent]:
    """A policy's answer, if it is what the API promises (a mapping of rig ids to Intents);
    TypeError naming the policy and the problem otherwise."""
    if not isinstance(opinion, Mapping):
        raise TypeError(f"policy {name!r} returned {type(opinion).__name__}, not a mapping")
    for rig_id, intent in opinion.items():
        if not isinstance(intent, Intent):
            raise TypeError(
                f"policy {name!r} returned {type(intent).__name__} for rig {rig_id!r}, "
                "not an Intent"
            )
    return opinion


def ask(
    policy: Policy, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
) -> Mapping[RigId, Intent] | PolicyFailure:
    """One policy's checked opinion, or the failure it ended in."""
    try:
        return checked_opinion(policy.name, policy.decide(market, fleet, site, now))
    except Exception as exc:
        return PolicyFailure(policy.name, f"{type(exc).__name__}: {exc}", exc)


def combined(
    opinions: Sequence[Mapping[RigId, Intent] | PolicyFailure], fleet: Sequence[RigView]
) -> tuple[Mapping[RigId, Intent], tuple[PolicyFailure, ...]]:
    """The policies' opinions combined (most power-restrictive wins), or no intent at all and
    the failures when any policy failed: the fleet holds."""
    failures = tuple(o for o in opinions if isinstance(o, PolicyFailure))
    if failures:
        return {}, failures
    return combine([o for o in opinions if not isinstance(o, PolicyFailure)], fleet), ()


def decide(
    policies: Sequence[Policy],
    market: MarketView,
    fleet: Sequence[RigView],
    site: Site,
    now: float,
) -> tuple[Mapping[RigId, Intent], tuple[PolicyFailure, ...]]:
    """Every policy's intents for ``fleet``, combined; ``({}, failures)`` when one failed."""
    return combined([ask(p, market, fleet, site, now) for p in policies], fleet)


def with_site_target(
    site: Site, policies: Sequence[Policy], target_kw: float | None
) -> tuple[Site, Sequence[Policy]]:
    """The site and policies under a site power target (demand response, in kW; None: none):
    it caps the site below its contract limit, and brings in the power-cap policy if the
    configuration did not name it."""
    if target_kw is None:
        return site, policies
    contract = site.power_cap_kw
    cap = target_kw if contract is None else min(target_kw, contract)
    capped = replace(site, power_cap_kw=cap)
    if any(p.name == PowerCapPolicy.name for p in policies):
        return capped, policies
    return capped, [*policies, PowerCapPolicy()]


def _stock(rig_id: RigId) -> Transition:
    return STOCK


def guard(
    intents: Mapping[RigId, Intent],
    fleet: Sequence[RigView],
    market: MarketView,
    state: GuardState,
    config: GuardConfig,
    overrides: Sequence[Override],
    now: float,
    seed: int,
    transition: Callable[[RigId], Transition] = _stock,
) -> tuple[Mapping[RigId, Desired], GuardState]:
    """The combined intents through the off-over-sleep rule (policies/off.py), the transitions'
    hold and the guards: the desired state of every rig in ``fleet`` and the guards' new state.
    ``transition`` gives each rig's firmware timing (policies/timing.py)."""
    intents = prefer_off(
        intents, fleet, state.rigs, transition, market, config.economics, config.off, now
    )
    held = hold_transitions(intents, fleet, state.rigs, transition, market, config.economics, now)
    return apply_guards(held, fleet, market, state, config, overrides, now, seed)


def tick(
    policies: Sequence[Policy],
    fleet: Sequence[RigView],
    market: MarketView,
    site: Site,
    state: GuardState,
    config: GuardConfig,
    now: float,
    *,
    overrides: Sequence[Override] = (),
    site_target_kw: float | None = None,
    seed: int = 0,
    transition: Callable[[RigId], Transition] = _stock,
) -> TickResult:
    """One tick: the site target, the policies, the transitions' hold and the guards over
    ``fleet`` (see the module docstring). ``overrides`` are the operator's pins,
    ``site_target_kw`` an active site power target (the caller drops expired ones), ``seed``
    the ramp jitter's."""
    site, policies = with_site_target(site, policies, site_target_kw)
    intents, failures = decide(policies, market, fleet, site, now)
    desired, new_state = guard(
        intents, fleet, market, state, config, overrides, now, seed, transition
    )
    return TickResult(desired, new_state, failures)
