"""The control loop: observe, price, decide, guard, reconcile, act, audit — once per tick.

Level-triggered: every tick recomputes the desired state of every rig from what is observed
now, so a missed message or a restart never leaves a rig wrong for more than one cycle.
Policies and guards are the pure core; this module is the imperative shell around them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import structlog

from daemon.audit import AuditLog
from daemon.market.service import Market, MarketState
from daemon.observer import FleetObserver
from daemon.reconciler import Actuator, Command, CommandResult, Outcome, Reconciler, Target
from daemon.rig_economics import Ratios, mode_points, rig_ratios
from policies.api import Intent, MarketView, Policy, RigView, Site
from policies.combine import combine
from policies.guards import (
    Desired,
    GuardConfig,
    GuardState,
    Override,
    Setting,
    apply_guards,
)
from policies.guards.power import FLOOR_MODES
from policies.guards.ramp import Send, new_grants, ramp_sends
from policies.power_cap import PowerCapPolicy
from policies.timing import STOCK, Transition
from policies.transition import hold_transitions, settling_until
from policies.values import Mode, Observation, QuoteKind, Reading, RigId

log = structlog.get_logger("loop")


_BY_POWER = (Mode.SLEEP, Mode.LOW, Mode.LIMIT, Mode.NORMAL, Mode.HIGH)


def nearest_safe(mode: Mode, supported: frozenset[Mode]) -> Mode:
    """The supported mode closest below ``mode`` in power (sleep as the last resort)."""
    if mode in supported:
        return mode
    rank = _BY_POWER.index(mode) if mode in _BY_POWER else len(_BY_POWER)
    for candidate in reversed(_BY_POWER[:rank]):
        if candidate in supported and candidate is not Mode.LIMIT:
            return candidate
    return Mode.SLEEP


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one tick saw and did: the fleet summary line operators read."""

    at: float
    rigs: int
    observed: int
    hashrate_ths: float
    power_kw: float
    curtailed: int
    commands: int
    not_responding: int
    hashprice_usd_per_ph_day: float | None
    power_price_usd_per_kwh: float | None
    desired: Mapping[RigId, Desired]
    readings: Mapping[RigId, Reading]
    results: Sequence[CommandResult]
    observe_duration_s: float = 0.0  # the observation cycle's wall time
    duration_s: float = 0.0  # the whole tick's wall time, observation included
    failed_policies: tuple[str, ...] = ()  # raised this tick: no policy moved any rig
    price_origins: Mapping[QuoteKind, tuple[str, float]] = field(default_factory=dict)
    """Each price's source and age in seconds (the best quote, even a stale one)."""

    def summary(self) -> str:
        hp = (
            "stale"
            if self.hashprice_usd_per_ph_day is None
            else f"${self.hashprice_usd_per_ph_day:.2f}/PH/day"
        )
        pp = (
            "stale"
            if self.power_price_usd_per_kwh is None
            else f"${self.power_price_usd_per_kwh:.4f}/kWh"
        )
        failed = (
            f"; policy failed: {', '.join(self.failed_policies)} (holding)"
            if self.failed_policies
            else ""
        )
        return (
            f"{self.observed}/{self.rigs} rigs read, {self.hashrate_ths / 1000:.2f} PH/s, "
            f"{self.power_kw:.0f} kW, {self.curtailed} curtailed, {self.commands} commands, "
            f"{self.not_responding} not responding; hashprice {hp}, power {pp}{failed}"
        )


@dataclass(frozen=True, slots=True)
class SiteTarget:
    """A site power target set by the control room (demand response), until ``until``."""

    kw: float
    until: float
    by: str

    def active(self, now: float) -> bool:
        return now < self.until


@dataclass
class ControlLoop:
    observer: FleetObserver  # rigpilot run: daemon.workers.ObserverPool
    market: Market
    policies: Sequence[Policy]
    site: Site
    guard_config: GuardConfig
    reconciler: Reconciler
    actuator: Actuator
    audit: AuditLog | None = None
    usd_per_unit: float = 1.0
    market_refresh_s: float = 60.0
    market_timeout_s: float = 15.0
    clock: Callable[[], float] = time.time
    overrides: list[Override] = field(default_factory=list)
    site_target: SiteTarget | None = None
    journal: Callable[[Sequence[Command], float], None] | None = None
    """Called with the commands about to be sent, before sending (the durable store's
    write-ahead journal); an exception there sends nothing this tick."""
    seed: int = 0
    groups: Mapping[RigId, str] = field(default_factory=dict)
    """Each rig's operator-defined group (``[[rigs]] group``), as the policies and guards see
    it in ``RigView.group`` (schedule windows and overrides by group)."""
    guard_state: GuardState = field(default_factory=GuardState)
    conflict: str | None = None
    """Another live instance announces this site (set by the MQTT bridge): shown by
    ``rigpilot status`` and the metrics until it is gone."""
    _last_obs: dict[RigId, Observation] = field(default_factory=dict)
    _ratios: dict[RigId, Ratios] = field(default_factory=dict)  # measured shares of rated
    _last_desired: dict[RigId, tuple[Mode, int | None]] = field(default_factory=dict)
    _market_at: float = float("-inf")
    _failing: set[str] = field(default_factory=set)
    _market_state: MarketState | None = None

    async def tick(self) -> TickReport:
        """One full pass. Never raises for a rig's or a feed's failure."""
        started = time.monotonic()
        cycle = await self.observer.cycle()
        observed_s = time.monotonic() - started
        now = self.clock()
        if self._market_state is None or now - self._market_at >= self.market_refresh_s:
            self._market_state = await self._refresh_market(now)
            self._market_at = now
        market_state = self.market.state(now)
        market = self._view(market_state, now)
        fleet = self._fleet(cycle.readings, now)
        site, policies = self._site_and_policies(now)
        intents, failed = self._decide(policies, market, fleet, site, now)
        intents = hold_transitions(
            intents,
            fleet,
            self.guard_state.rigs,
            self._transition,
            market,
            self.guard_config.economics,
            now,
        )
        self.overrides = [o for o in self.overrides if o.active(now)]
        before = self.guard_state
        as_of = before.as_of
        if as_of is not None and now < as_of:
            log.warning(
                "clock.stepped_back",
                by_s=round(as_of - now, 3),
                note="the guards' dwell, cool-down and ramp times are shifted back as much",
            )
        desired, self.guard_state = apply_guards(
            intents,
            fleet,
            market,
            self.guard_state,
            self.guard_config,
            self.overrides,
            now,
            self.seed,
        )
        targets = {r: self._target(d) for r, d in desired.items()}
        commands = self.reconciler.plan(targets, cycle.readings, now)
        commands = self._ramp_ungranted(
            commands, new_grants(before, self.guard_state), fleet, cycle.readings, market, now
        )
        if commands and self.journal is not None and self.actuator.sends:
            try:
                self.journal(commands, now)
            except Exception:
                log.exception("journal.failed", commands=len(commands), note="nothing sent")
                commands = []
        if commands and self.audit is not None and self.actuator.sends:
            # Written (and flushed) before sending: a crash mid-send cannot leave a command the
            # rig received missing from the audit log; its result line follows the send.
            for c in commands:
                self.audit.write(
                    {
                        "ts": now,
                        "kind": "command_intent",
                        "rig": c.rig_id,
                        "dry_run": False,
                        "policy": c.decided_by,
                        "action": _action_doc(c),
                    }
                )
        results = await self.actuator.send(commands)
        self.reconciler.record(results)
        self._audit(desired, cycle.readings, market, results, now)
        report = replace(
            self._report(now, cycle.readings, desired, results, market),
            observe_duration_s=observed_s,
            duration_s=time.monotonic() - started,
            failed_policies=failed,
            price_origins={k: (q.source, q.age_s(now)) for k, q in market_state.quotes.items()},
        )
        log.info("fleet.tick", summary=report.summary())
        return report

    def abandoned(self) -> None:
        """The tick in progress was cancelled (the daemon is stopping): journal again with
        only the commands whose send began. The others (power-ups still waiting for their
        start slot) were never sent, so after a restart they are decided and ramped again
        rather than awaited as if sent."""
        if self.journal is None or not self.actuator.sends:
            return
        self.journal(list(self.actuator.started), self.clock())

    def hold_commands(self, why: str | None) -> None:
        """Hold every command, saying ``why`` (another instance commands the site), or send
        again (None): then the commands held meanwhile are sent at the next tick."""
        if why is None and self.actuator.hold is not None:
            self.reconciler.forget_unsent()
        self.actuator.hold = why

    def force_market_refresh(self) -> None:
        """Refresh prices at the next tick (a reloaded configuration changed the sources)."""
        self._market_at = float("-inf")

    async def _refresh_market(self, now: float) -> MarketState:
        """Refresh prices, but never let a slow feed hold up the tick: past
        ``market_timeout_s`` the last known quotes are used (and age as they should)."""
        try:
            return await asyncio.wait_for(self.market.refresh(now), self.market_timeout_s)
        except TimeoutError:
            log.warning("market.refresh_slow", timeout_s=self.market_timeout_s)
            return self.market.state(now)

    def _decide(
        self,
        policies: Sequence[Policy],
        market: MarketView,
        fleet: Sequence[RigView],
        site: Site,
        now: float,
    ) -> tuple[Mapping[RigId, Intent], tuple[str, ...]]:
        """Every policy's intents, combined. A policy that raises (a plugin's bug, settings it
        cannot use) makes the tick hold: no policy moves any rig, since without its opinion
        the others could raise power it would have kept down (a schedule's 4CP window, a
        cap). The guards still act (thermal protection, overrides) and the next tick tries
        again. Logged when a policy starts failing, with the error, and when it recovers."""
        opinions: list[Mapping[RigId, Intent]] = []
        failed: list[str] = []
        for policy in policies:
            try:
                opinions.append(
                    checked_opinion(policy.name, policy.decide(market, fleet, site, now))
                )
            except Exception as exc:
                failed.append(policy.name)
                if policy.name not in self._failing:
                    log.exception(
                        "policy.failed",
                        policy=policy.name,
                        error=f"{type(exc).__name__}: {exc}",
                        note="no policy moves any rig until it decides again; guards still act",
                    )
        for name in sorted(self._failing - set(failed)):
            log.info("policy.recovered", policy=name)
        self._failing = set(failed)
        if failed:
            return {}, tuple(failed)
        return combine(opinions, fleet), ()

    def _site_and_policies(self, now: float) -> tuple[Site, Sequence[Policy]]:
        """The site and policies for this tick: an active site target (demand response) caps
        the site below its contract limit, and brings in the power-cap policy if the
        configuration did not name it."""
        target = self.site_target
        if target is None:
            return self.site, self.policies
        if not target.active(now):
            log.info("site_target.expired", kw=target.kw, by=target.by)
            self.site_target = None
            return self.site, self.policies
        contract = self.site.power_cap_kw
        cap = target.kw if contract is None else min(target.kw, contract)
        site = replace(self.site, power_cap_kw=cap)
        policies = list(self.policies)
        if not any(p.name == PowerCapPolicy.name for p in policies):
            policies.append(PowerCapPolicy())
        return site, policies

    def _ramp_ungranted(
        self,
        commands: list[Command],
        granted: frozenset[RigId],
        fleet: Sequence[RigView],
        readings: Mapping[RigId, Reading],
        market: MarketView,
        now: float,
    ) -> list[Command]:
        """Commands that raise a rig's power without a ramp grant from this tick's guards (a
        retry of a power-up that failed or was not confirmed, or a rig found below its desired
        setting by itself) go through the same ramp, after the guards' grants: each gets a
        start slot, or waits for a later tick while the budget is spent. Without this, the
        retries of a wake-up that failed together (a switch down) would all start at once."""
        views: dict[RigId, RigView] | None = None
        sends: list[Send] = []
        for c in commands:
            obs = readings.get(c.rig_id)
            if c.rig_id in granted or not isinstance(obs, Observation):
                continue
            if c.mode in FLOOR_MODES and obs.mode is not Mode.OFF:
                continue  # into sleep/off from anything but off: never a raise (a curtailment)
            if views is None:
                views = {v.rig_id: v for v in fleet}
            view = views.get(c.rig_id)
            if view is None:
                continue
            seen = Setting.of(obs.mode, obs.power_limit_w)
            sends.append(Send(view, seen, Setting.of(c.mode, c.power_limit_w), c.decided_by))
        if not sends:
            return commands
        allowed, ramp_log = ramp_sends(
            sends, self.guard_state.ramp_log, market, self.guard_config, self.seed, now
        )
        self.guard_state = replace(self.guard_state, ramp_log=ramp_log)
        checked = {s.rig.rig_id for s in sends}
        out: list[Command] = []
        postponed: list[RigId] = []
        for c in commands:
            if c.rig_id not in checked:
                out.append(c)
            elif c.rig_id not in allowed:
                postponed.append(c.rig_id)
            else:
                slot = allowed[c.rig_id]
                out.append(c if slot is None or slot <= now else replace(c, not_before=slot))
        if postponed:
            log.info(
                "commands.ramped",
                postponed=len(postponed),
                note="power-ups without a grant this tick wait for the ramp's budget",
                **({"rigs": postponed} if len(postponed) <= 10 else {}),
            )
        return out

    def _target(self, d: Desired) -> Target:
        """The command target for ``d``: a mode the rig cannot do becomes the nearest mode
        that draws no more power, with a note saying so."""
        driver = self.observer.drivers.get(d.rig_id)
        if driver is None or d.mode is Mode.UNKNOWN or d.mode in driver.capabilities.modes:
            return Target(
                d.rig_id, d.mode, d.power_limit_w, d.lazy_reason, d.decided_by, d.start_at
            )
        safe = nearest_safe(d.mode, driver.capabilities.modes)
        note = f" [{driver.identity.model} cannot do {d.mode.value}: {safe.value} instead]"
        return Target(d.rig_id, safe, None, d.reason + note, d.decided_by, d.start_at)

    def _view(self, state: MarketState, now: float) -> MarketView:
        hp = state.fresh(QuoteKind.HASHPRICE)
        pp = state.fresh(QuoteKind.POWER_PRICE)
        return MarketView(
            hashprice_usd_per_ph_day=hp.value if hp else None,
            power_price_usd_per_kwh=pp.value * self.usd_per_unit if pp else None,
            hashprice_source=hp.source if hp else "",
            power_price_source=pp.source if pp else "",
        )

    def _transition(self, rig_id: RigId) -> Transition:
        driver = self.observer.drivers.get(rig_id)
        return driver.capabilities.transition if driver is not None else STOCK

    def _fleet(self, readings: Mapping[RigId, Reading], now: float) -> list[RigView]:
        """Every rig as the policies and guards see it. A rig still settling after a change is
        scored on the figures of the mode it is going to (policies/transition.py)."""
        views = []
        groups = self.groups
        memory = self.guard_state.rigs
        for rig_id, driver in self.observer.drivers.items():
            reading = readings.get(rig_id)
            if isinstance(reading, Observation):
                self._last_obs[rig_id] = reading
            obs = reading if isinstance(reading, Observation) else None
            basis = obs or self._last_obs.get(rig_id)
            caps = driver.capabilities
            until = settling_until(memory.get(rig_id), caps.transition)
            settling = until is not None and now < until
            if obs is not None and not settling:
                measured = rig_ratios(obs, driver.entry)
                if measured is not None:
                    self._ratios[rig_id] = measured
            points = (
                tuple(
                    mode_points(
                        basis,
                        caps.modes,
                        driver.entry,
                        settling=settling,
                        ratios=self._ratios.get(rig_id),
                    )
                )
                if basis
                else ()
            )
            views.append(
                RigView(
                    rig_id,
                    obs,
                    caps.modes,
                    points,
                    groups.get(rig_id, ""),
                    caps.power_limit_range_w,
                )
            )
        for rig_id in readings:
            if rig_id not in self.observer.drivers:
                # Never identified (observer.py): unread, no model, no mode it can be put in.
                # The policies and guards treat it as any unread rig without mode points
                # (power-cap counts it at the most any rig of the fleet draws).
                views.append(RigView(rig_id, None, frozenset(), (), groups.get(rig_id, "")))
        return views

    def _audit(
        self,
        desired: Mapping[RigId, Desired],
        readings: Mapping[RigId, Reading],
        market: MarketView,
        results: Sequence[CommandResult],
        now: float,
    ) -> None:
        dry = not self.actuator.sends
        for rig_id, d in desired.items():
            key = (d.mode, d.power_limit_w)
            if self._last_desired.get(rig_id) == key:
                continue
            self._last_desired[rig_id] = key
            if self.audit is None:
                continue
            obs = readings.get(rig_id)
            observed = (
                {
                    "mode": obs.mode.value,
                    "hashrate_ths": round(obs.hashrate_ths, 2),
                    "power_w": obs.power_w,
                    "power_source": obs.power_source.value if obs.power_source else None,
                    "max_chip_temp_c": obs.max_chip_temp_c,
                    "mining": obs.mining,
                }
                if isinstance(obs, Observation)
                else {"error": getattr(obs, "kind", "unobserved")}
            )
            self.audit.write(
                {
                    "ts": now,
                    "kind": "decision",
                    "rig": rig_id,
                    "dry_run": dry,
                    "policy": d.decided_by,
                    "reason": d.reason,
                    "held_back": d.held_back,
                    "desired": _setting_doc(d.mode, d.power_limit_w, "start_at", d.start_at),
                    "observed": observed,
                    "inputs": {
                        "hashprice_usd_per_ph_day": market.hashprice_usd_per_ph_day,
                        "hashprice_source": market.hashprice_source,
                        "power_price_usd_per_kwh": market.power_price_usd_per_kwh,
                        "power_price_source": market.power_price_source,
                    },
                }
            )
        if self.audit is None:
            return
        for r in results:
            c = r.command
            self.audit.write(
                {
                    "ts": r.at,
                    "kind": "command",
                    "rig": c.rig_id,
                    "dry_run": dry,
                    "policy": c.decided_by,
                    "reason": c.reason,
                    "action": _action_doc(c),
                    "result": r.outcome.value,
                    "detail": r.detail,
                }
            )
        for ok in self.reconciler.confirmed:  # the log has one summary line per tick
            self.audit.write(
                {
                    "ts": now,
                    "kind": "confirmed",
                    "rig": ok.rig_id,
                    "dry_run": dry,
                    "policy": ok.decided_by,
                    "observed": {"mode": ok.mode.value, "power_limit_w": ok.power_limit_w},
                    "attempts": ok.attempts,
                    "recovered": ok.recovered,
                }
            )

    def _report(
        self,
        now: float,
        readings: Mapping[RigId, Reading],
        desired: Mapping[RigId, Desired],
        results: Sequence[CommandResult],
        market: MarketView,
    ) -> TickReport:
        observed = [r for r in readings.values() if isinstance(r, Observation)]
        curtailed = sum(1 for d in desired.values() if d.mode in (Mode.SLEEP, Mode.LOW))
        return TickReport(
            at=now,
            rigs=len(readings),
            observed=len(observed),
            hashrate_ths=sum(o.hashrate_ths for o in observed),
            power_kw=sum(o.power_w or 0.0 for o in observed) / 1000.0,
            curtailed=curtailed,
            commands=sum(1 for r in results if r.outcome in (Outcome.SENT, Outcome.DRY_RUN)),
            not_responding=len(self.reconciler.not_responding),
            hashprice_usd_per_ph_day=market.hashprice_usd_per_ph_day,
            power_price_usd_per_kwh=market.power_price_usd_per_kwh,
            desired=desired,
            readings=readings,
            results=results,
        )


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


def _setting_doc(
    mode: Mode, power_limit_w: int | None, slot_key: str, slot: float | None
) -> dict[str, object]:
    """A mode for the audit log, with its ramp start slot under ``slot_key`` when it has one."""
    doc: dict[str, object] = {"mode": mode.value, "power_limit_w": power_limit_w}
    if slot is not None:
        doc[slot_key] = slot
    return doc


def _action_doc(c: Command) -> dict[str, object]:
    """A command's action for the audit log (intent and result lines alike)."""
    return {
        **_setting_doc(c.mode, c.power_limit_w, "not_before", c.not_before),
        "attempt": c.attempt,
    }
