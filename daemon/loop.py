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
from typing import Any

import structlog

from daemon.audit import AuditLog
from daemon.efficiency import RigEfficiency, learn
from daemon.observer import FleetObserver
from daemon.operator_state import OperatorState
from daemon.power import PowerSwitches, with_switches
from daemon.reconciler import Actuator, Command, CommandResult, Outcome, Reconciler, Target
from daemon.rig_economics import Ratios, mode_points, rig_ratios
from drivers.base import RigDriver, UnsupportedMode
from market.service import Market, MarketState
from policies.api import MarketView, Policy, RigView, Site
from policies.guards import Desired, GuardConfig, GuardState, Setting
from policies.guards.power import FLOOR_MODES
from policies.guards.ramp import Send, new_grants, ramp_sends
from policies.tick import PolicyFailure, tick
from policies.timing import STOCK, Transition
from policies.transition import settling_until
from policies.values import CURTAILED_MODES, Mode, Observation, QuoteKind, Reading, RigId

log = structlog.get_logger("loop")


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
    power_events: tuple[Mapping[str, object], ...] = ()
    """This tick's power cycles (hung or asked for), refused requests and rigs needing hands,
    as audited (daemon/power.py)."""

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
    operator: OperatorState = field(default_factory=OperatorState)
    """What the control room has set (pins, site target, hand-set prices): read each tick,
    changed only by the command desk and restored by persistence (daemon/operator_state.py)."""
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
    power: PowerSwitches | None = None
    """The PDUs and plugs feeding the rigs (daemon/power.py), None when none is wired."""
    cycle_journal: Callable[[Mapping[str, Any]], None] | None = None
    """Called with the power switches' history of cycles (:meth:`PowerSwitches.history`)
    before a power cycle is switched (the durable store); an exception there switches
    nothing."""
    _last_obs: dict[RigId, Observation] = field(default_factory=dict)
    _ratios: dict[RigId, Ratios] = field(default_factory=dict)  # measured shares of rated
    efficiency: dict[RigId, RigEfficiency] = field(default_factory=dict)
    """Each rig's efficiency learned from measured watts (daemon/efficiency.py): updated each
    tick from its reading, restored and saved by persistence (daemon/persist.py)."""
    _last_desired: dict[RigId, tuple[Mode, int | None]] = field(default_factory=dict)
    _market_at: float = float("-inf")
    _failing: set[str] = field(default_factory=set)
    _market_state: MarketState | None = None

    def use_market(self, market: Market) -> None:
        """Take prices from ``market`` from the next tick on (a reload changed the sources)."""
        self.market = market
        self.force_market_refresh()

    async def tick(self) -> TickReport:  # noqa: PLR0915  one tick's steps in their order, each one line or a call
        """One full pass. Never raises for a rig's or a feed's failure."""
        started = time.monotonic()
        if self.power is None:
            cycle = await self.observer.cycle()
        else:  # the switches first: a rig they show off is observed off, not polled
            sweep = await self.power.read(self.clock())
            off = self.power.known_off()
            addresses = None
            if off:
                self.observer.sync_drivers()
                unknown = self.observer.inventory.unidentified
                every = [
                    *self.observer.drivers,
                    *(a for a in unknown if a not in self.observer.drivers),
                ]
                addresses = [a for a in every if a not in off]
            cycle = await self.observer.cycle(addresses)
            identities = {r: d.identity for r, d in self.observer.drivers.items()}
            cycle = replace(
                cycle,
                readings=with_switches(
                    cycle.readings, sweep.readings, self.power.wiring, identities, self.clock()
                ),
            )
        observed_s = time.monotonic() - started
        now = self.clock()
        # The operator's hand-set prices are the market's manual quotes: the same mapping, so
        # they outrank its feeds, and expire there.
        self.market.manual = self.operator.prices
        if self._market_state is None or now - self._market_at >= self.market_refresh_s:
            self._market_state = await self._refresh_market(now)
            self._market_at = now
        market_state = self.market.state(now)
        market = self._view(market_state, now)
        fleet = self._fleet(cycle.readings, now)
        before = self.guard_state
        as_of = before.as_of
        if as_of is not None and now < as_of:
            log.warning(
                "clock.stepped_back",
                by_s=round(as_of - now, 3),
                note="the guards' dwell, cool-down and ramp times are shifted back as much",
            )
        decided = tick(
            self.policies,
            fleet,
            market,
            self.site,
            before,
            self.guard_config,
            now,
            overrides=self.operator.overrides(now),
            site_target_kw=self._site_target_kw(now),
            seed=self.seed,
            transition=self._transition,
        )
        desired, self.guard_state = decided.desired, decided.guard_state
        failed = self._log_failures(decided.failures)
        targets = {r: self._target(d) for r, d in desired.items()}
        commands = self.reconciler.plan(targets, cycle.readings, now)
        commands = self._ramp_ungranted(
            commands, new_grants(before, self.guard_state), fleet, cycle.readings, market, now
        )
        if self.power is not None:  # off and on through the outlets (daemon/power.py)
            commands = self.power.steps(commands, targets, cycle.readings, now)
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
        power_events: list[Mapping[str, object]] = []
        if self.power is not None:
            power_events = await self._recover(desired, cycle.readings, results, now)
        self._audit(desired, cycle.readings, market, results, now)
        report = replace(
            self._report(now, cycle.readings, desired, results, market),
            observe_duration_s=observed_s,
            duration_s=time.monotonic() - started,
            failed_policies=failed,
            power_events=tuple(power_events),
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

    def _log_failures(self, failures: Sequence[PolicyFailure]) -> tuple[str, ...]:
        """Log a policy when it starts failing, with the error, and when it recovers; the
        names of those failing this tick (the tick held the fleet: policies/tick.py)."""
        failed = tuple(f.policy for f in failures)
        for f in failures:
            if f.policy not in self._failing:
                log.error(
                    "policy.failed",
                    policy=f.policy,
                    error=f.error,
                    exc_info=f.exception,
                    note="no policy moves any rig until it decides again; guards still act",
                )
        for name in sorted(self._failing - set(failed)):
            log.info("policy.recovered", policy=name)
        self._failing = set(failed)
        return failed

    def _site_target_kw(self, now: float) -> float | None:
        """The active site target's kW (demand response), None without one (an expired one
        is dropped by the operator state)."""
        target = self.operator.active_site_target(now)
        return None if target is None else target.kw

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
        if driver is None or d.mode is Mode.UNKNOWN or d.mode in self._modes(d.rig_id, driver):
            return Target(
                d.rig_id, d.mode, d.power_limit_w, d.lazy_reason, d.decided_by, d.start_at
            )
        safe = d.mode.nearest_safe(self._modes(d.rig_id, driver))
        note = f" [{driver.identity.model} cannot do {d.mode.value}: {safe.value} instead]"
        return Target(d.rig_id, safe, None, d.reason + note, d.decided_by, d.start_at)

    async def _recover(
        self,
        desired: Mapping[RigId, Desired],
        readings: Mapping[RigId, Reading],
        results: Sequence[CommandResult],
        now: float,
    ) -> list[Mapping[str, object]]:
        """After the tick's sends: the switches note them (thermal emergency cuts audited),
        then hung rigs, and those an operator asked for, are power-cycled (daemon/power.py),
        never one an operator pinned or one meant to be off; cuts and cycles are audited and
        handed on in the tick's report (MQTT publishes them)."""
        assert self.power is not None
        cuts = self.power.record(results)
        for event in cuts:
            if self.audit is not None:
                self.audit.write(event)
        held = {
            r: f"asked to be off (by {d.decided_by}): a power cycle would not bring it back"
            for r, d in desired.items()
            if d.mode is Mode.OFF
        }
        held.update(self.pinned_for_cycles(now))
        events = await self.power.recover(
            readings,
            frozenset(self.reconciler.not_responding),
            held,
            self.actuator.sends,
            now,
            self.cycle_journal,
        )
        for event in events:
            if event["kind"] == "power_cycle" and not event["dry_run"]:
                # its old command is moot: judge it afresh once it answers again
                self.reconciler.clear(str(event["rig"]))
            if self.audit is not None:
                self.audit.write(event)
        return [*cuts, *events]

    def pinned_for_cycles(self, now: float) -> dict[RigId, str]:
        """The rigs an operator pinned, and why none of them is power-cycled (hung or asked
        for: unpin or resume it first)."""
        held: dict[RigId, str] = {}
        for o in self.operator.overrides(now):
            rigs = set(o.rig_ids)
            if o.group:
                rigs |= {r for r, g in self.groups.items() if g == o.group}
            why = (
                f"pinned to {o.mode.value} by {o.by} until {o.expires_at:.0f}: an operator's "
                "pin is never power-cycled (unpin or resume the rig first)"
            )
            held.update(dict.fromkeys(rigs, why))
        return held

    def check_supported(self, rig_id: RigId, mode: Mode, power_limit_w: int | None) -> None:
        """UnsupportedMode naming why ``rig_id`` cannot be put in ``mode`` (at
        ``power_limit_w``): ``off`` needs outlets feeding the rig, any other mode its firmware
        (a rig not identified yet is not refused: the guards only ever lower an unobserved
        rig). The one check of what an operator may ask (the MQTT desk uses it)."""
        if mode is Mode.OFF:
            if self.power is None or not self.power.wired(rig_id):
                raise UnsupportedMode(
                    f"{rig_id} has no outlets (no [[rigs]] outlets feed it), so it cannot be "
                    "switched off; sleep is the lowest it goes"
                )
            return
        driver = self.observer.drivers.get(rig_id)
        if driver is not None:
            driver.check_supported(mode, power_limit_w)

    def _modes(self, rig_id: RigId, driver: RigDriver) -> frozenset[Mode]:
        """What the rig can be put in: its firmware's modes, and off where outlets feed it."""
        modes = driver.capabilities.modes
        if self.power is not None and self.power.wired(rig_id):
            return modes | {Mode.OFF}
        return modes

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
            learned = self.efficiency.get(rig_id)
            if obs is not None:
                learned = self._learn(rig_id, learned, obs, driver, settling)
                if not settling:
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
                        learned=learned,
                    )
                )
                if basis
                else ()
            )
            views.append(
                RigView(
                    rig_id,
                    obs,
                    self._modes(rig_id, driver),
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

    def _learn(
        self,
        rig_id: RigId,
        learned: RigEfficiency | None,
        obs: Observation,
        driver: RigDriver,
        settling: bool,
    ) -> RigEfficiency | None:
        """The rig's efficiency after ``obs`` (daemon/efficiency.py), kept in ``efficiency``."""
        after = learn(learned, obs, driver.entry, settling=settling)
        if after is not learned:
            if after is None:
                del self.efficiency[rig_id]
            else:
                self.efficiency[rig_id] = after
        return after

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
        curtailed = sum(1 for d in desired.values() if d.mode in CURTAILED_MODES)
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
        **({} if c.switch is None else {"outlets": "on" if c.switch else "off"}),
    }
