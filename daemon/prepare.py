"""One validation for start-up, SIGHUP reload and ``rigpilot config check``.

:func:`prepare` builds from a configuration everything the control loop is given — the site,
the policies (each checking its own settings), the guards' configuration and every market
source — and checks the MQTT password and TLS files. Start-up refuses to run, a reload keeps
the running configuration, and ``config check`` exits 2, all on the same problems, each named
by its key. Nothing is swapped into a running loop until all of it has been built.

Not checked here: the state directory (start-up creates it) and the metrics port (only binding
it can tell), both of which need a restart to change anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from daemon.config import Settings
from daemon.mqtt.bridge import resolve_password, tls_context
from market.config import build_market
from market.service import Market
from policies.api import Policy, Site, check_site
from policies.guards import GuardConfig
from policies.registry import PolicyLoadError, load_policy


class ConfigProblems(ValueError):
    """The configuration cannot be used: one or more problems, each naming its key."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Prepared:
    """What a configuration builds, ready to be given to (or swapped into) the control loop."""

    settings: Settings
    site: Site
    policies: list[Policy]
    guard_config: GuardConfig
    market: Market


def site_of(settings: Settings) -> Site:
    """The site the policies are given, from the configuration."""
    control = settings.control
    return Site(
        name=settings.site.name,
        economics=settings.market.economics,
        power_cap_kw=control.power_cap_kw,
        params=dict(control.policy_params),
    )


def load_policies(names: Sequence[str], site: Site | None = None) -> list[Policy]:
    """The configured policies; ValueError naming ``control.policies`` and the bad name.
    With ``site``: each policy's own check of its settings too (``policies.api.check_site``),
    a ValueError naming ``control.policy_params`` and the problem."""
    try:
        policies = [load_policy(name) for name in names]
    except PolicyLoadError as exc:
        raise ValueError(f"control.policies: {exc}") from None
    if site is not None:
        for policy in policies:
            try:
                check_site(policy, site)
            except ValueError as exc:
                raise ValueError(f"control.policy_params ({policy.name}): {exc}") from None
    return policies


def prepare(settings: Settings, client: httpx.AsyncClient) -> Prepared:
    """Build everything ``settings`` configures (market sources bound to ``client``); raises
    :class:`ConfigProblems` listing every problem found, each naming its key."""
    problems: list[str] = []
    site = site_of(settings)
    policies: list[Policy] = []
    market: Market | None = None
    guard_config: GuardConfig | None = None
    control = settings.control
    try:
        policies = load_policies(control.policies, site)
    except ValueError as exc:
        problems.append(str(exc))
    try:
        market = build_market(settings.market, client)
    except ValueError as exc:
        problems.append(str(exc))
    try:
        guard_config = control.guards.to_config(
            settings.market.economics, control.tick_s, control.off.rule()
        )
    except (ValueError, TypeError) as exc:
        problems.append(f"control.guards: {exc}")
    if settings.mqtt.enabled:
        for check in (resolve_password, tls_context):
            try:
                check(settings.mqtt)
            except ValueError as exc:
                problems.append(str(exc))
    if problems or market is None or guard_config is None:
        raise ConfigProblems(problems or ["the configuration could not be built"])
    return Prepared(settings, site, policies, guard_config, market)
