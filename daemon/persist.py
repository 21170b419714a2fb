"""Ties the durable store to the running daemon: restore at start, save as state changes.

What is saved when:
- a control-room command: pins, site target, hand-set prices, waits and the request's id, before
  its answer is published (``save_commands``);
- commands to rigs: the reconciler with those commands as in flight, before they are sent
  (``journal``);
- a power cycle: the switches' history of cycles with it (each rig's cycles of the last 24 h,
  the rigs needing hands), before its outlets are switched (``journal_cycles``);
- every tick: the guards' state (the rigs whose state changed, a row each), the reconciler, the
  operator state, the power cycles' history and the status line (``save_tick``), in one
  transaction; with them the rigs'
  learned efficiencies (daemon/efficiency.py) that changed, each at most every
  :data:`EFFICIENCY_SAVE_S` unless it became trusted or stopped being so (a restart loses at
  most that much learning, against a time constant of an hour).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from daemon import efficiency
from daemon.efficiency import RigEfficiency
from daemon.loop import ControlLoop, TickReport
from daemon.operator_state import SEEN_TTL_S
from daemon.reconciler import Command
from daemon.store import Store
from policies.guards import GuardState, RigGuardState

log = structlog.get_logger("store")

EFFICIENCY_SAVE_S = 600.0
"""A rig's learned efficiency is rewritten at most this often (seconds of the loop's clock)."""


def _guard_rows(rows: Mapping[str, Any]) -> dict[str, RigGuardState]:
    """The rigs' guard states from their rows; a row that is not one is skipped, and named
    (that rig starts from what it is observed doing, as on a first start)."""
    rigs: dict[str, RigGuardState] = {}
    for rig_id, row in rows.items():
        try:
            rigs[rig_id] = RigGuardState.from_dict(row)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            log.warning("store.guard_row_unusable", rig=rig_id, error=repr(exc))
    return rigs


@dataclass
class Persistence:
    store: Store
    loop: ControlLoop
    version: str = ""
    _saved_rigs: Mapping[str, RigGuardState] = field(default_factory=dict)
    """The rigs' guard states as last committed (the objects themselves)."""
    _stored: Collection[str] = field(default_factory=set)
    """The rigs the store has a guard-state row for."""
    _efficiency_saved: dict[str, tuple[RigEfficiency, float]] = field(default_factory=dict)
    """Each rig's learned efficiency as last committed, and when (the loop's clock)."""

    def restore(self, now: float) -> dict[str, int]:
        """Load what the last run left; returns counts of what was restored (logged)."""
        counts: dict[str, int] = {}
        guards = self.store.get("guards")
        rows = self.store.guard_rigs()
        self._stored = set(rows)
        if guards is not None or rows:
            try:
                doc = {**(guards or {"version": 1, "ramp_log": []}), "rigs": {}}
                restored = replace(GuardState.from_dict(doc), rigs=_guard_rows(rows))
                self.loop.guard_state = restored
                counts["guarded_rigs"] = len(restored.rigs)
                self._saved_rigs = dict(restored.rigs)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                log.warning("store.guards_unusable", error=str(exc))
        self._restore_efficiency(now)
        counts["learned_efficiency"] = len(self.loop.efficiency)
        power, history = self.loop.power, self.store.get("power")
        if power is not None and history is not None:
            try:
                counts["power_cycled_rigs"] = power.restore_history(history, now)
                counts["needing_hands"] = len(power.needs_hands)
            except ValueError as exc:
                log.warning("store.power_history_unusable", error=str(exc))
        recon = self.store.get("reconciler")
        if recon is not None:
            try:
                self.loop.reconciler.restore(recon)
                counts["in_flight"] = len(self.loop.reconciler.pending)
                counts["not_responding"] = len(self.loop.reconciler.not_responding)
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("store.reconciler_unusable", error=str(exc))
        operator = self.loop.operator
        try:
            operator.restore_targets(self.store.get("loop") or {}, now)
            counts["hand_set_prices"] = len(operator.prices)
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("store.loop_state_unusable", error=str(exc))
        desk = self.store.get("desk")
        if desk is not None:
            try:
                operator.restore_pins(desk)
                counts["pins"] = len(operator.pins)
                counts["waiting_commands"] = len(operator.waits)
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("store.desk_unusable", error=str(exc))
        seen = self.store.seen(now - SEEN_TTL_S)
        operator.requests.restore(seen)
        counts["command_ids"] = len(seen)
        self.store.prune_seen(now - SEEN_TTL_S)
        log.info("store.restored", path=str(self.store.path), **counts)
        return counts

    def _restore_efficiency(self, now: float) -> None:
        """The rigs' learned efficiencies; a row that is not one is named and that rig learns
        afresh."""
        learned: dict[str, RigEfficiency] = {}
        for rig_id, row in self.store.efficiency().items():
            try:
                learned[rig_id] = efficiency.from_dict(row)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                log.warning("store.efficiency_row_unusable", rig=rig_id, error=repr(exc))
        self.loop.efficiency = learned
        self._efficiency_saved = {rig_id: (e, now) for rig_id, e in learned.items()}

    def _efficiency_changes(self, now: float) -> tuple[dict[str, Any], list[str]]:
        """The learned efficiencies to write now (see the module's docstring), and the rigs
        whose row goes (learning restarted for another rig at that address)."""
        saved = self._efficiency_saved
        rows: dict[str, Any] = {}
        for rig_id, learned in self.loop.efficiency.items():
            last = saved.get(rig_id)
            if last is None or (
                last[0] is not learned
                and (now - last[1] >= EFFICIENCY_SAVE_S or last[0].reference != learned.reference)
            ):
                rows[rig_id] = learned.to_dict()
        gone = [rig_id for rig_id in saved if rig_id not in self.loop.efficiency]
        return rows, gone

    def save_commands(self) -> None:
        """After a control-room request: the operator state, and the request's id."""
        operator = self.loop.operator
        self.store.put(operator.to_docs(), seen=operator.requests.take_unsaved())

    def journal_cycles(self, history: Mapping[str, Any]) -> None:
        """Before a power cycle is switched: the switches' history of cycles with it."""
        self.store.put({"power": history})

    def journal(self, commands: Sequence[Command], now: float) -> None:
        """Before sending: the reconciler as it will be once these are sent."""
        ahead = copy.deepcopy(self.loop.reconciler)
        ahead.wait_for(commands, now)
        self.store.put({"reconciler": ahead.to_dict()})

    def _guard_changes(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
        """The guards' document (without its rigs), the rigs whose state changed since the
        last save, and the rigs gone from it. The guards return the same object for a rig
        whose state did not change, so one identity check per rig finds the changes."""
        state = self.loop.guard_state
        saved = self._saved_rigs
        changed = {
            rid: rig.to_dict() for rid, rig in state.rigs.items() if saved.get(rid) is not rig
        }
        gone = [rid for rid in self._stored if rid not in state.rigs]
        doc = state.to_dict(rigs=False)
        return doc, changed, gone

    def save_tick(self, report: TickReport) -> None:
        guards, changed, gone = self._guard_changes()
        operator = self.loop.operator
        docs: dict[str, Any] = {
            "guards": guards,
            "reconciler": self.loop.reconciler.to_dict(),
            **operator.to_docs(),
            "status": self.status(report),
        }
        if self.loop.power is not None:  # cycles leave the last 24 h, rigs get their hands
            docs["power"] = self.loop.power.history(report.at)
        seen = operator.requests.take_unsaved()
        learned, unlearned = self._efficiency_changes(report.at)
        self.store.put(
            docs,
            seen=seen,
            guard_rigs=changed,
            guard_rigs_gone=gone,
            efficiency=learned,
            efficiency_gone=unlearned,
        )
        current = self.loop.efficiency
        for rig_id in learned:
            self._efficiency_saved[rig_id] = (current[rig_id], report.at)
        for rig_id in unlearned:
            del self._efficiency_saved[rig_id]
        # Only once it is committed. The guards never modify a state they returned, so the
        # mapping itself is kept, not a copy.
        self._saved_rigs = self.loop.guard_state.rigs
        self._stored = self._saved_rigs.keys()

    def status(self, report: TickReport) -> dict[str, Any]:
        target = self.loop.operator.site_target
        return {
            "pid": os.getpid(),
            "version": self.version,
            "written_at": time.time(),
            "at": report.at,
            "summary": report.summary(),
            "rigs": report.rigs,
            "observed": report.observed,
            "hashrate_ths": round(report.hashrate_ths, 1),
            "power_kw": round(report.power_kw, 2),
            "curtailed": report.curtailed,
            "not_responding": report.not_responding,
            "hashprice_usd_per_ph_day": report.hashprice_usd_per_ph_day,
            "power_price_usd_per_kwh": report.power_price_usd_per_kwh,
            "dry_run": not self.loop.actuator.sends,
            "held": self.loop.actuator.hold,
            "conflict": self.loop.conflict,
            "policies": [p.name for p in self.loop.policies],
            "pins": len(self.loop.operator.pins),
            "site_target_kw": target.kw if target else None,
            "tick_duration_s": round(report.duration_s, 3),
            "efficiency": self.efficiency_counts(),
        }

    def efficiency_counts(self) -> dict[str, int]:
        """How many rigs' J/TH is learned (trusted), still being learned, from each source."""
        counts = {"learned_meter": 0, "learned_reported": 0, "learning": 0}
        for learned in self.loop.efficiency.values():
            if learned.reference is None:
                counts["learning"] += 1
            else:
                counts[f"learned_{learned.modes[learned.reference].source.value}"] += 1
        return counts
