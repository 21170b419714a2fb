"""The site's power switches in the daemon: reading every outlet once per tick, what the
outlets say about their rigs, and the one rule by which ``off`` is carried out.

:class:`PowerSwitches` is shell (sockets, deadlines, logging). The rules are pure functions:

- :func:`with_switches`: a rig whose every outlet is metered and was read this tick has, as its
  power, the sum of what those outlets draw, with ``power_source = meter`` (preferred over the
  catalogue's estimate and over the rig's own PSU figure, which leaves out the PSU's losses); a
  rig that does not answer while every outlet feeding it is read off is observed ``off``.
- :func:`step`: how a command is carried out for a rig wired to outlets. ``off`` is firmware
  sleep first, and the outlets are switched off only once the rig is observed asleep (never
  while it is observed hashing); any other mode asked of a rig observed ``off`` switches its
  outlets on (the command is a power-up like any other, so it goes through the site ramp),
  and the firmware mode follows once the rig answers. The one exception: a rig the thermal guard
  declares in a thermal emergency (``decided_by`` ``thermal-emergency``: hashing at a critical
  temperature long after it was told to sleep, :func:`policies.guards.rig.emergency`) has its
  outlets cut at once. The actuator's dry-run and hold apply before anything is sent, so
  dry-run sends nothing to a switch either.

See docs/power-switches.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from daemon.config import Settings
from daemon.reconciler import Command, CommandResult, Outcome, Target
from daemon.switch_config import SwitchConfig, parse_outlet
from drivers.switches.base import OutletReading, PowerSwitch
from drivers.switches.plugs import ShellyGen2, Tasmota
from drivers.switches.snmp import ApcPdu, ApcPduUnmetered, RaritanPdu, SnmpPdu
from drivers.transport import DriverError
from policies.api import reason_text
from policies.guards.model import THERMAL_EMERGENCY
from policies.values import Identity, Mode, Observation, PowerSource, Reading, RigId

log = structlog.get_logger("power")

OFF_WAIT_S = 600.0
"""How long a rig told to sleep on its way to ``off`` may stay silent before its outlets are cut
anyway (never when it was seen hashing since)."""

NO_OUTLETS = "no outlets feed it ([[rigs]] outlets), so it cannot be power-cycled"

DAY_S = 86400.0
CYCLE_HISTORY_VERSION = 1
"""The version of :meth:`PowerSwitches.history`'s document (the store's ``power`` row)."""

OutletId = tuple[str, int]
"""(switch name, outlet number as the device numbers it)."""


@dataclass(frozen=True, slots=True)
class Outlets:
    """The outlets feeding one rig: their names (``switch:outlet``), and whether every one is
    metered (its switch reports power per outlet)."""

    names: tuple[str, ...]
    metered: bool


@dataclass(frozen=True, slots=True)
class OutletSweep:
    """Every configured outlet as read in one tick: a reading, or why there is none."""

    readings: Mapping[OutletId, OutletReading]
    failures: Mapping[str, DriverError]  # by switch name
    at: float


def with_switches(
    readings: Mapping[RigId, Reading],
    outlets: Mapping[OutletId, OutletReading],
    wiring: Mapping[RigId, Sequence[OutletId]],
    identities: Mapping[RigId, Identity],
    now: float,
) -> dict[RigId, Reading]:
    """``readings`` as the outlets complete them: each fully metered rig's power replaced by
    its outlets' sum; a rig not answering with every outlet read off, observed ``off``."""
    out = dict(readings)
    for rig_id, feeds in wiring.items():
        obs = out.get(rig_id)
        if not feeds:
            continue
        read = [outlets.get(o) for o in feeds]
        known = [r for r in read if r is not None]
        if len(known) != len(feeds):
            continue
        if not isinstance(obs, Observation):
            identity = identities.get(rig_id)
            if identity is not None and not any(r.on for r in known):
                watts = [r.power_w for r in known if r.power_w is not None]
                out[rig_id] = Observation(
                    identity,
                    now,
                    0.0,
                    sum(watts) if len(watts) == len(known) else 0.0,
                    PowerSource.METER if len(watts) == len(known) else None,
                    Mode.OFF,
                    False,
                    errors=("powered off at its outlets",),
                )
            continue
        watts = [r.power_w for r in known if r.power_w is not None]
        if len(watts) != len(feeds):
            continue
        out[rig_id] = replace(obs, power_w=sum(watts), power_source=PowerSource.METER)
    return out


def step(cmd: Command, reading: Reading | None) -> Command:
    """How ``cmd`` is carried out on a rig wired to outlets (see the module's docstring)."""
    if cmd.mode is Mode.OFF:
        if cmd.decided_by == THERMAL_EMERGENCY:
            return replace(cmd, switch=False, reason=f"{cmd.reason}; outlets off at once")
        if isinstance(reading, Observation) and reading.mode is Mode.SLEEP and not reading.mining:
            return replace(cmd, switch=False, reason=f"{cmd.reason}; observed asleep: outlets off")
        return replace(
            cmd,
            mode=Mode.SLEEP,
            switch=None,
            reason=f"{cmd.reason}; off: sleep first, the outlets once it is seen asleep",
        )
    if isinstance(reading, Observation) and reading.mode is Mode.OFF:
        return replace(
            cmd,
            switch=True,
            reason=f"{cmd.reason}; outlets on, then {cmd.mode.value} once the rig answers",
        )
    return cmd


def build_switch(cfg: SwitchConfig, outlets: tuple[int, ...]) -> PowerSwitch:
    """The driver for one ``[[switches]]`` entry, for the outlets rigs are wired to."""
    if cfg.kind in ("apc", "apc-switched", "raritan"):
        pdus: dict[str, type[SnmpPdu]] = {
            "apc": ApcPdu,
            "apc-switched": ApcPduUnmetered,
            "raritan": RaritanPdu,
        }
        return pdus[cfg.kind](
            cfg.name,
            cfg.address,
            outlets,
            read_community=cfg.read_community.get_secret_value(),
            write_community=cfg.write_community.get_secret_value(),
            port=cfg.default_port,
        )
    plug = ShellyGen2 if cfg.kind == "shelly" else Tasmota
    password = cfg.password.get_secret_value() if cfg.password else None
    return plug(cfg.name, cfg.address, outlets, password=password, port=cfg.default_port)


@dataclass(slots=True)
class _Batch:
    """Outlet states asked of one switch together, and the answer they all wait for."""

    done: asyncio.Future[None]
    states: dict[int, bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CycleRules:
    """When a hung rig may be power-cycled (``[power_cycle]``, docs/power-switches.md)."""

    enabled: bool = False
    after_s: float = 900.0
    max_per_rig_per_day: int = 2
    max_outlets_per_minute: int = 4
    excluded: frozenset[RigId] = frozenset()


def cycle_refusal(
    rig_id: RigId,
    powered: bool,
    history: Sequence[float],
    held: Mapping[RigId, str],
    rules: CycleRules,
    now: float,
) -> str | None:
    """Why ``rig_id`` may not be power-cycled now, or None: the limits every cycle keeps,
    whether the rig is hung or an operator asked for it. Excluded (``power_cycle = false`` or
    its group), held (an operator pin, or asked to be off: ``held`` says which), its outlets
    not all reading on and drawing power, or ``max_per_rig_per_day`` cycles in the last 24 h.
    The site's ``max_outlets_per_minute`` is not a refusal: a rig over it waits its turn."""
    if rig_id in rules.excluded:
        return (
            "excluded from power cycling (power_cycle = false, or its group is in "
            "[power_cycle] exclude_groups)"
        )
    why = held.get(rig_id)
    if why is not None:
        return why
    if not powered:
        return "its outlets did not all read on (and drawing power) at the last sweep"
    used = sum(1 for t in history if t > now - DAY_S)
    if used >= rules.max_per_rig_per_day:
        return (
            f"power-cycled {used} time(s) in the last 24 h "
            f"(max_per_rig_per_day = {rules.max_per_rig_per_day})"
        )
    return None


@dataclass(frozen=True, slots=True)
class CyclePlan:
    """The rigs to power-cycle now, and the ones asked for that may not be (and why)."""

    due: list[RigId]
    refused: dict[RigId, str]


def plan_cycles(
    silent_since: Mapping[RigId, float],
    powered: Mapping[RigId, bool],
    history: Mapping[RigId, Sequence[float]],
    recent_outlets: Sequence[float],
    outlets_of: Mapping[RigId, int],
    held: Mapping[RigId, str],
    rules: CycleRules,
    now: float,
    requested: Sequence[RigId] = (),
) -> CyclePlan:
    """The rigs to power-cycle now: first those an operator asked for (``requested``, in the
    order asked), then, with ``rules.enabled``, the hung ones, longest silent first: silent (or
    ignoring commands) for ``after_s``. Each must pass :func:`cycle_refusal`; together they stay
    within the site's ``max_outlets_per_minute`` outlets switched off by cycles in the last 60 s
    (the rest wait for a later tick, in the same order). A requested rig refused is named in
    ``refused`` with the reason; a hung one refused is only skipped."""
    budget = rules.max_outlets_per_minute - sum(1 for t in recent_outlets if t > now - 60.0)
    hung = (
        [
            rig_id
            for rig_id, since in sorted(silent_since.items(), key=lambda item: (item[1], item[0]))
            if now - since >= rules.after_s and rig_id not in requested
        ]
        if rules.enabled
        else []
    )
    due: list[RigId] = []
    refused: dict[RigId, str] = {}
    for rig_id in [*requested, *hung]:
        why = cycle_refusal(
            rig_id, powered.get(rig_id, False), history.get(rig_id, ()), held, rules, now
        )
        if why is not None:
            if rig_id in requested:
                refused[rig_id] = why
            continue
        need = outlets_of.get(rig_id, 1)
        if need > budget:
            break  # the rest wait for the next minute, in order
        budget -= need
        due.append(rig_id)
    return CyclePlan(due, refused)


class PowerSwitches:
    """The switches rigs are wired to, read together once per tick."""

    def __init__(
        self,
        switches: Mapping[str, PowerSwitch],
        wiring: Mapping[RigId, Sequence[OutletId]],
        timeouts: Mapping[str, float],
        concurrency: int = 64,
        off_wait_s: float = OFF_WAIT_S,
        cycle_rules: CycleRules | None = None,
    ) -> None:
        self.switches = dict(switches)
        self.wiring = {rig: tuple(feeds) for rig, feeds in wiring.items() if feeds}
        self.timeouts = dict(timeouts)
        self.concurrency = concurrency
        self.off_wait_s = off_wait_s
        self.last: OutletSweep | None = None
        self._slept_for_off: dict[RigId, float] = {}  # sleep sent on the way to off, when
        self._mining_at: dict[RigId, float] = {}  # last observed hashing, when
        self.cycle_rules = cycle_rules or CycleRules()
        self._silent_since: dict[RigId, float] = {}
        self._cycles: dict[RigId, list[float]] = {}
        self._cycled_outlets: list[float] = []
        self._batches: dict[str, _Batch] = {}
        self.cycle_counts: dict[str, int] = {}
        """Power cycles by outcome (switched, dry_run, failed), for the metrics."""
        self.needs_hands: set[RigId] = set()
        """Rigs still silent after their cycles of the day: somebody has to go and look."""
        self.thermal_cut_counts: dict[str, int] = {}
        """Outlets cut in a thermal emergency, by outcome (switched, dry_run, failed)."""
        self._requested: dict[RigId, float] = {}  # power cycles an operator asked for, until

    def carry_over(self, old: PowerSwitches) -> None:
        """Take what ``old`` (the switches before a reload) learnt about the rigs: the last
        sweep, rigs on their way to off, when each was last seen hashing or went silent, the
        day's power cycles, the cycles asked for and the rigs needing hands. Only for rigs
        still wired here."""
        wired = set(self.wiring)
        self.last = old.last
        self._slept_for_off = {r: t for r, t in old._slept_for_off.items() if r in wired}
        self._mining_at = {r: t for r, t in old._mining_at.items() if r in wired}
        self._silent_since = {r: t for r, t in old._silent_since.items() if r in wired}
        self._cycles = {r: list(t) for r, t in old._cycles.items() if r in wired}
        self._cycled_outlets = list(old._cycled_outlets)
        self.cycle_counts = dict(old.cycle_counts)
        self.thermal_cut_counts = dict(old.thermal_cut_counts)
        self.needs_hands = old.needs_hands & wired
        self._requested = {r: t for r, t in old._requested.items() if r in wired}

    def known_off(self) -> set[RigId]:
        """Rigs every outlet of which read off in the last sweep: nothing to poll (a powered-off
        rig only times out); the sweep observes them instead (:func:`with_switches`)."""
        sweep = self.last
        if sweep is None:
            return set()
        return {
            rig
            for rig, feeds in self.wiring.items()
            if all((r := sweep.readings.get(o)) is not None and not r.on for o in feeds)
        }

    def wired(self, rig_id: RigId) -> bool:
        return rig_id in self.wiring

    def outlets_info(self, rig_id: RigId) -> Outlets | None:
        """What feeds ``rig_id`` (for Home Assistant's entities): None when no outlet does."""
        feeds = self.wiring.get(rig_id)
        if not feeds:
            return None
        return Outlets(
            tuple(f"{name}:{number}" for name, number in feeds),
            all(self.switches[name].metered for name, _ in feeds),
        )

    def steps(
        self,
        commands: Sequence[Command],
        targets: Mapping[RigId, Target],
        readings: Mapping[RigId, Reading],
        now: float,
    ) -> list[Command]:
        """``commands`` as the outlets carry them out (:func:`step`), plus outlet cuts the
        reconciler did not plan: a rig in a thermal emergency whose outlets are not all read
        off (its command may be waiting for a confirmation, or marked not responding), and a
        rig on its way to ``off`` that went silent after being told to sleep, after
        ``off_wait_s``, provided nothing showed it hashing since (the bounded wait)."""
        for rig_id, reading in readings.items():
            if isinstance(reading, Observation) and reading.mining:
                self._mining_at[rig_id] = reading.observed_at
        out = [step(c, readings.get(c.rig_id)) if self.wired(c.rig_id) else c for c in commands]
        planned = {c.rig_id for c in out}
        for rig_id, target in targets.items():
            if target.mode is not Mode.OFF or rig_id in planned or not self.wired(rig_id):
                continue
            if target.decided_by == THERMAL_EMERGENCY:
                cut = self._emergency_cut(target)
            else:
                cut = self._silent_cut(target, readings, now)
            if cut is not None:
                out.append(cut)
        return out

    def _emergency_cut(self, target: Target) -> Command | None:
        """The cut of a rig in a thermal emergency, unless its outlets all read off."""
        sweep = self.last
        feeds = self.wiring[target.rig_id]
        if sweep is not None and all(
            (r := sweep.readings.get(o)) is not None and not r.on for o in feeds
        ):
            return None
        return Command(
            target.rig_id,
            Mode.OFF,
            None,
            f"{reason_text(target.reason)}; outlets off at once",
            target.decided_by,
            1,
            switch=False,
        )

    def _silent_cut(
        self, target: Target, readings: Mapping[RigId, Reading], now: float
    ) -> Command | None:
        """The bounded wait's cut of a rig told to sleep on its way to off and silent since."""
        rig_id = target.rig_id
        slept = self._slept_for_off.get(rig_id)
        sweep = self.last
        if (
            slept is None
            or now < slept + self.off_wait_s
            or isinstance(readings.get(rig_id), Observation)
            or self._mining_at.get(rig_id, float("-inf")) > slept
            or sweep is None
            or not any(
                sweep.readings.get(o, OutletReading(o[1], False)).on
                for o in self.wiring.get(rig_id, ())
            )
        ):
            return None
        return Command(
            rig_id,
            Mode.OFF,
            None,
            f"off: told to sleep {now - slept:.0f} s ago, silent since and not seen "
            "hashing: outlets off",
            target.decided_by,
            1,
            switch=False,
        )

    def record(self, results: Sequence[CommandResult]) -> list[dict[str, object]]:
        """Note when a rig on its way to ``off`` was told to sleep (for the bounded wait), and
        count the thermal emergency cuts: their audit events are returned."""
        events: list[dict[str, object]] = []
        for r in results:
            cmd = r.command
            if cmd.decided_by == THERMAL_EMERGENCY and cmd.switch is False:
                events.append(self._thermal_cut(r))
            if r.outcome is not Outcome.SENT or not self.wired(cmd.rig_id):
                continue
            if cmd.mode is Mode.SLEEP and "off: sleep first" in cmd.reason:
                self._slept_for_off[cmd.rig_id] = r.at  # the last time it was told
            elif cmd.switch is not None or cmd.mode is not Mode.SLEEP:
                self._slept_for_off.pop(cmd.rig_id, None)
        return events

    def _thermal_cut(self, r: CommandResult) -> dict[str, object]:
        """Count, log and describe (for the audit log) one thermal emergency cut."""
        outcome = {Outcome.SENT: "switched", Outcome.DRY_RUN: "dry_run"}.get(r.outcome, "failed")
        self.thermal_cut_counts[outcome] = self.thermal_cut_counts.get(outcome, 0) + 1
        event: dict[str, object] = {
            "ts": r.at,
            "kind": "thermal_cut",
            "rig": r.command.rig_id,
            "reason": r.command.reason,
            "outcome": outcome,
            "detail": r.detail,
            "dry_run": r.outcome is Outcome.DRY_RUN,
        }
        if outcome == "failed":
            event["error"] = r.detail
        elif outcome == "switched":
            event["outlets"] = r.detail
        log.warning("rig.thermal_cut", **{k: v for k, v in event.items() if k != "kind"})
        return event

    def _powered(self) -> dict[RigId, bool]:
        """Each wired rig: every outlet feeding it read on (and, where metered, drawing power)
        at the last sweep."""
        sweep = self.last
        return {
            rig: sweep is not None
            and all(
                (r := sweep.readings.get(o)) is not None and r.on and (r.power_w or 1.0) > 0
                for o in feeds
            )
            for rig, feeds in self.wiring.items()
        }

    def refusal(self, rig_id: RigId, held: Mapping[RigId, str], now: float) -> str | None:
        """Why ``rig_id`` may not be power-cycled now (:func:`cycle_refusal`), or None."""
        if not self.wired(rig_id):
            return NO_OUTLETS
        return cycle_refusal(
            rig_id,
            self._powered().get(rig_id, False),
            self._cycles.get(rig_id, ()),
            held,
            self.cycle_rules,
            now,
        )

    def request_cycles(self, rigs: Sequence[RigId], until: float) -> None:
        """An operator asks for these rigs to be power-cycled (the ``power_cycle`` command):
        :meth:`recover` cycles them first, within the same limits as hung rigs, until
        ``until``. Asking again for a rig already waiting changes nothing."""
        for rig_id in rigs:
            if self.wired(rig_id):
                self._requested.setdefault(rig_id, until)

    def cancel_cycles(self, rigs: Sequence[RigId]) -> None:
        """Forget the requests for these rigs that were not carried out."""
        for rig_id in rigs:
            self._requested.pop(rig_id, None)

    def history(self, now: float) -> dict[str, Any]:
        """What the cycle limits rest on, for the store: each rig's power cycles of the last
        24 h, the outlets cycled in the last minute, and the rigs needing hands. A restart (or
        a daemon crash-looping under systemd) must not give a rig a fresh day of cycles."""
        return {
            "version": CYCLE_HISTORY_VERSION,
            "cycles": {
                rig: recent
                for rig, times in sorted(self._cycles.items())
                if (recent := [t for t in times if t > now - DAY_S])
            },
            "cycled_outlets": [t for t in self._cycled_outlets if t > now - 60.0],
            "needs_hands": sorted(self.needs_hands),
        }

    def restore_history(self, doc: Mapping[str, Any], now: float) -> int:
        """Take back :meth:`history` as the store kept it, for the rigs still wired here (a
        rig since unwired has no outlets to cycle). Returns how many rigs had cycles in the
        last 24 h. Raises ValueError naming what is wrong with the document (nothing is
        taken then)."""
        if not isinstance(doc, Mapping) or doc.get("version") != CYCLE_HISTORY_VERSION:
            raise ValueError(f"power cycle history: not a version {CYCLE_HISTORY_VERSION} document")
        raw_cycles, outlets, hands = (
            doc.get("cycles"),
            doc.get("cycled_outlets"),
            doc.get("needs_hands"),
        )
        if not isinstance(raw_cycles, Mapping):
            raise ValueError("power cycle history: 'cycles' is not a mapping of rig to times")
        if not isinstance(outlets, list) or not isinstance(hands, list):
            raise ValueError("power cycle history: 'cycled_outlets' or 'needs_hands' is not a list")

        def times(what: str, value: object) -> list[float]:
            if not isinstance(value, list) or not all(
                isinstance(t, int | float) and not isinstance(t, bool) for t in value
            ):
                raise ValueError(f"power cycle history: {what} is not a list of times")
            return [float(t) for t in value]

        cycles = {
            str(rig): recent
            for rig, value in raw_cycles.items()
            if str(rig) in self.wiring
            and (recent := [t for t in times(f"rig {rig}'s cycles", value) if t > now - DAY_S])
        }
        cycled = [t for t in times("'cycled_outlets'", outlets) if t > now - 60.0]
        for rig, recent in cycles.items():
            self._cycles[rig] = sorted({*self._cycles.get(rig, []), *recent})
        self._cycled_outlets = sorted([*self._cycled_outlets, *cycled])
        self.needs_hands |= {str(r) for r in hands if str(r) in self.wiring}
        return len(cycles)

    async def recover(
        self,
        readings: Mapping[RigId, Reading],
        ignoring: frozenset[RigId],
        held: Mapping[RigId, str],
        sends: bool,
        now: float,
        journal: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> list[dict[str, object]]:
        """Power-cycle the rigs :func:`plan_cycles` names (those asked for, then the hung
        ones): their outlets off now; the loop then sees them observed off with a target that
        is not, and switches them on again as a power-up through the ramp (:func:`step`).
        Returns the audit events (cycles, requests refused, and rigs that need hands). With
        ``sends`` False (dry-run, hold) nothing is switched. ``held``: rigs an operator pinned
        or that are asked to be off, and why. ``journal`` (the durable store) is handed
        :meth:`history` with each cycle counted before its outlets are switched; where it
        raises, that cycle is not made."""
        for rig_id in self.wiring:
            silent = not isinstance(readings.get(rig_id), Observation) or rig_id in ignoring
            if silent:
                self._silent_since.setdefault(rig_id, now)
            else:
                self._silent_since.pop(rig_id, None)
                self.needs_hands.discard(rig_id)
        self._requested = {r: t for r, t in self._requested.items() if t > now}
        rules = self.cycle_rules
        plan = plan_cycles(
            self._silent_since,
            self._powered(),
            self._cycles,
            self._cycled_outlets,
            {r: len(f) for r, f in self.wiring.items()},
            held,
            rules,
            now,
            list(self._requested),
        )
        events: list[dict[str, object]] = []
        for rig_id, why in plan.refused.items():
            del self._requested[rig_id]
            log.warning("rig.power_cycle_refused", rig=rig_id, reason=why)
            events.append({"ts": now, "kind": "power_cycle_refused", "rig": rig_id, "reason": why})
        for rig_id in plan.due:
            events.append(await self._cycle(rig_id, sends, now, journal))
        for rig_id, since in self._silent_since.items():
            used = sum(1 for t in self._cycles.get(rig_id, ()) if t > now - DAY_S)
            if (
                rules.enabled
                and rig_id not in self.needs_hands
                and used >= rules.max_per_rig_per_day
                and now - since >= rules.after_s
            ):
                self.needs_hands.add(rig_id)
                log.error("rig.needs_hands", rig=rig_id, cycles_today=used)
                events.append({"ts": now, "kind": "needs_hands", "rig": rig_id, "cycles": used})
        self._cycled_outlets = [t for t in self._cycled_outlets if t > now - 60.0]
        return events

    async def _cycle(
        self,
        rig_id: RigId,
        sends: bool,
        now: float,
        journal: Callable[[Mapping[str, Any]], None] | None,
    ) -> dict[str, object]:
        """Count a cycle of ``rig_id`` (journaled first) and switch its outlets off (unless not
        ``sends``); its audit event."""
        n = sum(1 for t in self._cycles.get(rig_id, ()) if t > now - DAY_S) + 1
        since = self._silent_since.get(rig_id)
        event: dict[str, object] = {
            "ts": now,
            "kind": "power_cycle",
            "rig": rig_id,
            "cause": "hung" if self._requested.pop(rig_id, None) is None else "requested",
            "silent_s": None if since is None else round(now - since, 1),
            "cycle_today": n,
            "dry_run": not sends,
        }
        self._cycles.setdefault(rig_id, []).append(now)
        self._cycled_outlets += [now] * len(self.wiring[rig_id])
        journaled = True
        if sends and journal is not None:
            try:
                journal(self.history(now))
            except Exception as exc:  # the store's failure, whatever it is: switch nothing
                log.exception("power_cycle.journal_failed", rig=rig_id, note="not switched")
                event["error"] = f"not switched: the cycle could not be recorded ({exc})"
                journaled = False
        if sends and journaled:
            try:
                event["outlets"] = await self.switch_rig(rig_id, False, max(self.timeouts.values()))
            except DriverError as exc:
                event["error"] = f"{exc.kind.value}: {exc.detail}"
        outcome = "dry_run" if not sends else "failed" if "error" in event else "switched"
        self.cycle_counts[outcome] = self.cycle_counts.get(outcome, 0) + 1
        self._silent_since[rig_id] = now  # a fresh grace: boot, then judge again
        log.warning("rig.power_cycled", **{k: v for k, v in event.items() if k != "kind"})
        return event

    async def switch_rig(self, rig_id: RigId, on: bool, timeout_s: float) -> str:
        """Switch every outlet feeding ``rig_id`` (DriverError from the first switch that
        fails). Requests for one switch made together (the actuator sends concurrently) go out
        as one: a PDU gets one SET for up to 24 outlets instead of one per rig."""
        done = []
        for name, number in self.wiring.get(rig_id, ()):
            await self._batched(name, number, on, min(timeout_s, self.timeouts[name]))
            done.append(f"{name}:{number}")
        log.debug("switch.outlets", rig=rig_id, on=on, outlets=done)
        return f"outlets {', '.join(done)} {'on' if on else 'off'}"

    async def _batched(self, name: str, outlet: int, on: bool, timeout_s: float) -> None:
        batch = self._batches.get(name)
        if batch is None:
            batch = self._batches[name] = _Batch(asyncio.get_running_loop().create_future())
            asyncio.get_running_loop().create_task(self._flush(name, timeout_s))
        batch.states[outlet] = on
        await asyncio.shield(batch.done)

    async def _flush(self, name: str, timeout_s: float) -> None:
        await asyncio.sleep(0)  # let every concurrent caller of this tick join the batch
        batch = self._batches.pop(name)
        try:
            await self.switches[name].set_outlets(batch.states, timeout_s=timeout_s)
        except DriverError as exc:
            batch.done.set_exception(exc)
            batch.done.exception()  # retrieved: callers that went away must not warn
        else:
            batch.done.set_result(None)

    @classmethod
    def from_settings(cls, settings: Settings) -> PowerSwitches | None:
        """None when no rig is wired to a switch."""
        wiring = {r.address: tuple(parse_outlet(o) for o in r.outlets) for r in settings.rigs}
        used: dict[str, set[int]] = {}
        for feeds in wiring.values():
            for name, number in feeds:
                used.setdefault(name, set()).add(number)
        if not used:
            return None
        configs = {sw.name: sw for sw in settings.switches}
        switches = {n: build_switch(configs[n], tuple(sorted(o))) for n, o in used.items()}
        timeouts = {n: configs[n].timeout_s for n in used}
        pc = settings.power_cycle
        excluded = frozenset(
            r.address for r in settings.rigs if not r.power_cycle or r.group in pc.exclude_groups
        )
        rules = CycleRules(
            pc.enabled, pc.after_s, pc.max_per_rig_per_day, pc.max_outlets_per_minute, excluded
        )
        return cls(
            switches,
            wiring,
            timeouts,
            off_wait_s=settings.control.off.silent_wait_s,
            cycle_rules=rules,
        )

    async def read(self, now: float) -> OutletSweep:
        """Read every switch (bounded concurrency, each within its own deadline); a switch
        that fails is logged and its outlets are left out of this sweep."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(name: str, sw: PowerSwitch) -> Mapping[int, OutletReading] | DriverError:
            async with gate:
                try:
                    return await sw.read_outlets(timeout_s=self.timeouts[name])
                except DriverError as exc:
                    return exc

        names = list(self.switches)
        results = await asyncio.gather(*(one(n, self.switches[n]) for n in names))
        readings: dict[OutletId, OutletReading] = {}
        failures: dict[str, DriverError] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, DriverError):
                failures[name] = result
                log.warning(
                    "switch.read_failed", switch=name, kind=result.kind.value, detail=result.detail
                )
                continue
            for number, reading in result.items():
                readings[(name, number)] = reading
        self.last = OutletSweep(readings, failures, now)
        return self.last

    async def aclose(self) -> None:
        for sw in self.switches.values():
            await sw.aclose()
