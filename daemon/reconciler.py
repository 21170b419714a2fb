"""Reconciler and actuator: command only the differences, and confirm by observation.

Level-triggered: each tick compares the desired state with what was observed and produces
absolute, idempotent commands ("be in mode X") for the rigs that differ. A command counts as
done only when a later observation shows the rig in the new state, within a deadline;
otherwise it is sent again with exponential backoff, and after ``max_attempts`` the rig is
marked as not responding to commands, reported, and left alone until it is seen in the desired
state, its desired state changes, or an operator clears the mark. One stubborn rig never blocks
the others: sends run with bounded concurrency, each under its own deadline.

Dry-run sends nothing (safety invariant 5) and records what it would have sent; everything
else, including the bookkeeping, runs exactly as live.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from drivers.base import RigDriver, UnsupportedMode
from drivers.pool import bounded_map
from drivers.transport import DriverError
from policies.api import LazyReason, reason_text
from policies.values import Mode, Observation, Reading, RigId

log = structlog.get_logger("reconciler")


@dataclass(frozen=True, slots=True)
class Target:
    """The desired state of one rig (what the guards decided)."""

    rig_id: RigId
    mode: Mode
    power_limit_w: int | None
    reason: str | LazyReason  # formatted only for a command (reason_text)
    decided_by: str
    not_before: float | None = None  # a power-up's start slot from the ramp guard (None: now)


@dataclass(frozen=True, slots=True)
class Command:
    rig_id: RigId
    mode: Mode
    power_limit_w: int | None
    reason: str
    decided_by: str
    attempt: int  # 1 for the first send of this target
    not_before: float | None = None  # not sent before this time (the ramp's start slot)
    switch: bool | None = None
    """Carried out by the rig's outlets (on / off), not its firmware: daemon/power.py."""


class Outcome(StrEnum):
    SENT = "sent"  # accepted by the rig; waiting for an observation to confirm
    DRY_RUN = "dry_run"  # not sent: dry-run
    FAILED = "failed"  # could not be sent (unreachable, refused, timed out)
    UNSUPPORTED = "unsupported"  # the rig cannot do it; the driver says what it can


@dataclass(frozen=True, slots=True)
class CommandResult:
    command: Command
    outcome: Outcome
    detail: str
    at: float


@dataclass(slots=True)
class _Pending:
    target: Target
    attempts: int
    next_try_at: float  # until then, wait for an observation to confirm (or for a retry)
    failed: bool = False  # the last send failed outright: waiting out the backoff


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A rig seen in its target state after a command (``attempts`` sends), or after it had
    been marked not responding (``recovered``)."""

    rig_id: RigId
    mode: Mode
    power_limit_w: int | None
    attempts: int
    recovered: bool
    decided_by: str


def satisfied(target: Target, reading: Reading | None) -> bool:
    """True when ``reading`` shows the rig in ``target``'s state.

    A power limit is a setting on top of the power mode, not a mode a rig reports (a
    Whatsminer keeps its normal/low/high power mode under ``adjust_power_limit``; pyasic's
    ``set_power_limit`` sets Braiins' power target): ``limit W`` is shown by the reported power
    limit W while the rig runs, in whatever power mode (``Mode.LIMIT`` itself is accepted too).
    """
    if not isinstance(reading, Observation):
        return False
    if target.mode is Mode.LIMIT:
        return reading.power_limit_w == target.power_limit_w and reading.mode not in (
            Mode.SLEEP,
            Mode.UNKNOWN,
        )
    if reading.mode is not target.mode:
        return False
    if target.mode is Mode.SLEEP:
        return not reading.mining
    return True


def shown(target: Target, reading: Reading | None) -> str:
    """What ``reading`` shows of ``target``'s kind of state, for messages ("normal",
    "normal at power limit 3600 W")."""
    if not isinstance(reading, Observation):
        return "nothing"
    if target.mode is Mode.LIMIT and reading.mode not in (Mode.SLEEP, Mode.UNKNOWN):
        limit = "no" if reading.power_limit_w is None else f"{reading.power_limit_w} W"
        return f"{reading.mode.value} at power limit {limit}"
    return reading.mode.value


def wanted(mode: Mode, power_limit_w: int | None) -> str:
    """The target as messages name it ("sleep", "limit (power limit 2800 W)")."""
    return f"limit (power limit {power_limit_w} W)" if mode is Mode.LIMIT else mode.value


@dataclass
class Reconciler:
    """Tracks in-flight commands per rig and decides what to send each tick."""

    confirm_deadline_s: float = 300.0  # a wake-up takes minutes; doubled on each retry
    base_backoff_s: float = 30.0  # after a send that failed outright; doubled on each retry
    max_attempts: int = 3
    stuck_retry_s: float = 1800.0
    """A rig marked not responding is sent its target once more this long after it was marked
    (and after each such try) until it is seen in it: a rig whose control came back wakes up
    without an operator. 0: never (left to an operator's ``retry``)."""
    pending: dict[RigId, _Pending] = field(default_factory=dict)
    not_responding: dict[RigId, Target] = field(default_factory=dict)
    stuck_since: dict[RigId, float] = field(default_factory=dict)
    """When each rig marked not responding was last sent its target (inf: never again, the
    rig said it cannot do it)."""
    confirmed: list[Confirmation] = field(default_factory=list)
    """What the last ``plan`` saw confirmed, rig by rig (for the audit log); the log gets one
    summary line per plan, not one line per rig (a fleet-wide curtailment is 10,000 rigs)."""

    def plan(
        self, targets: Mapping[RigId, Target], readings: Mapping[RigId, Reading], now: float
    ) -> list[Command]:
        """Commands for the rigs whose observed state differs from their target.

        Never commands a rig that could not be observed this cycle, one whose command is
        still waiting for confirmation, or one marked not responding for this same target.
        """
        commands: list[Command] = []
        self.confirmed = []
        for rig_id, target in targets.items():
            if target.mode is Mode.UNKNOWN:
                continue  # never observed: the guards say leave it alone (invariant 6)
            reading = readings.get(rig_id)
            if satisfied(target, reading):
                self._confirm(rig_id, target)
            elif isinstance(reading, Observation):  # else observe before acting
                command = self._next_command(rig_id, target, reading, now)
                if command is not None:
                    commands.append(command)
        if self.confirmed:
            _log_confirmed(self.confirmed)
        return commands

    def _confirm(self, rig_id: RigId, target: Target) -> None:
        """``rig_id`` is seen in its target: whatever was awaited or marked is done."""
        pending = self.pending.pop(rig_id, None)
        stuck = self.not_responding.pop(rig_id, None)
        self.stuck_since.pop(rig_id, None)
        if pending is not None or stuck is not None:
            self.confirmed.append(
                Confirmation(
                    rig_id,
                    target.mode,
                    target.power_limit_w,
                    pending.attempts
                    if pending is not None and _same(pending.target, target)
                    else 0,
                    stuck is not None,
                    target.decided_by,
                )
            )

    def _next_command(
        self, rig_id: RigId, target: Target, reading: Observation, now: float
    ) -> Command | None:
        """The command that moves ``rig_id`` toward ``target`` now, if one is due: not while
        the last one awaits confirmation or its backoff, and a rig marked not responding for
        this target only once every ``stuck_retry_s``."""
        stuck = self.not_responding.get(rig_id)
        if stuck is not None:
            if _same(stuck, target):
                since = self.stuck_since.setdefault(rig_id, now)
                if not self.stuck_retry_s or now < since + self.stuck_retry_s:
                    return None
                # One more try (``record`` notes when it went); still marked until seen.
                return self._command(target, self.max_attempts + 1)
            del self.not_responding[rig_id]  # a new target: try again
            self.stuck_since.pop(rig_id, None)
        pending = self.pending.get(rig_id)
        if pending is None or not _same(pending.target, target):
            return self._command(target, 1)
        if now < pending.next_try_at:
            return None
        if pending.attempts >= self.max_attempts:
            self.pending.pop(rig_id)
            self.not_responding[rig_id] = target
            self.stuck_since[rig_id] = now
            log.warning(
                "rig.not_responding",
                rig=rig_id,
                mode=target.mode.value,
                attempts=pending.attempts,
                observed=reading.mode.value,
            )
            return None
        return self._command(target, pending.attempts + 1)

    @staticmethod
    def _command(target: Target, attempt: int) -> Command:
        return Command(
            target.rig_id,
            target.mode,
            target.power_limit_w,
            reason_text(target.reason),
            target.decided_by,
            attempt,
            target.not_before,
        )

    def record(self, results: Sequence[CommandResult]) -> None:
        """Remember what was sent, so the next ticks wait for confirmation or retry."""
        for result in results:
            cmd = result.command
            target = Target(cmd.rig_id, cmd.mode, cmd.power_limit_w, cmd.reason, cmd.decided_by)
            if result.outcome is Outcome.UNSUPPORTED:
                self.pending.pop(cmd.rig_id, None)
                self.not_responding[cmd.rig_id] = target  # do not ask again for the same
                self.stuck_since[cmd.rig_id] = math.inf
                continue
            if cmd.rig_id in self.not_responding:  # it stays marked until seen in its target
                self.stuck_since[cmd.rig_id] = result.at
                log.info(
                    "rig.not_responding_retry",
                    rig=cmd.rig_id,
                    mode=cmd.mode.value,
                    outcome=result.outcome.value,
                )
                continue
            factor = 2 ** (cmd.attempt - 1)
            if result.outcome is Outcome.DRY_RUN:
                wait = float("inf")  # nothing was sent: do not "retry" until the target changes
            elif result.outcome is Outcome.FAILED:
                wait = self.base_backoff_s * factor
            else:
                wait = self.confirm_deadline_s * factor
            self.pending[cmd.rig_id] = _Pending(
                target, cmd.attempt, result.at + wait, result.outcome is Outcome.FAILED
            )

    def retrying_at(self, rig_id: RigId) -> float | None:
        """When a rig whose last command failed outright will be tried again (None if not)."""
        pending = self.pending.get(rig_id)
        return pending.next_try_at if pending is not None and pending.failed else None

    def forget_unsent(self) -> None:
        """Forget the commands that were never sent (dry-run or held), which wait for their
        target to change: once commands are sent again, they go at the next tick."""
        for rig_id in [r for r, p in self.pending.items() if p.next_try_at == math.inf]:
            del self.pending[rig_id]

    def clear(self, rig_id: RigId) -> None:
        """Operator action: forget that a rig ignored its commands."""
        self.not_responding.pop(rig_id, None)
        self.stuck_since.pop(rig_id, None)
        self.pending.pop(rig_id, None)

    def wait_for(self, commands: Sequence[Command], now: float) -> None:
        """Record ``commands`` as sent *before* sending them (the durable store's write-ahead
        journal uses this on a copy): a restart then waits for their confirmation instead of
        sending them again."""
        for cmd in commands:
            target = Target(cmd.rig_id, cmd.mode, cmd.power_limit_w, cmd.reason, cmd.decided_by)
            wait = self.confirm_deadline_s * 2 ** (cmd.attempt - 1)
            self.pending[cmd.rig_id] = _Pending(target, cmd.attempt, now + wait)

    def to_dict(self) -> dict[str, Any]:
        """In-flight commands and rigs marked not responding, JSON-ready."""
        return {
            "pending": {
                r: {
                    **_target_dict(p.target),
                    "attempts": p.attempts,
                    "next_try_at": p.next_try_at,
                    "failed": p.failed,
                }
                for r, p in self.pending.items()
                if math.isfinite(p.next_try_at)
            },
            "not_responding": {
                r: {**_target_dict(t), **_since(self.stuck_since.get(r))}
                for r, t in self.not_responding.items()
            },
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Inverse of to_dict (replaces what is held); KeyError/ValueError if malformed."""
        pending = {
            str(r): _Pending(
                _target(r, d), int(d["attempts"]), float(d["next_try_at"]), bool(d.get("failed"))
            )
            for r, d in dict(data.get("pending") or {}).items()
        }
        marked = dict(data.get("not_responding") or {})
        stuck = {str(r): _target(r, d) for r, d in marked.items()}
        since = {
            str(r): _since_from(d) for r, d in marked.items() if "since" in d or d.get("never")
        }
        self.pending, self.not_responding, self.stuck_since = pending, stuck, since


def _target_dict(t: Target) -> dict[str, Any]:
    return {
        "mode": t.mode.value,
        "power_limit_w": t.power_limit_w,
        "reason": reason_text(t.reason),
        "decided_by": t.decided_by,
    }


def _since(at: float | None) -> dict[str, Any]:
    """When a rig marked not responding was last tried, for JSON (which has no infinity)."""
    if at is None:
        return {}
    return {"never": True} if math.isinf(at) else {"since": at}


def _since_from(d: Mapping[str, Any]) -> float:
    return math.inf if d.get("never") else float(d["since"])


def _target(rig_id: str, d: Mapping[str, Any]) -> Target:
    limit = d.get("power_limit_w")
    return Target(
        str(rig_id),
        Mode(d["mode"]),
        None if limit is None else int(limit),
        str(d.get("reason", "")),
        str(d.get("decided_by", "")),
    )


def _log_confirmed(confirmed: Sequence[Confirmation]) -> None:
    by_mode = Counter(c.mode.value for c in confirmed)
    recovered = sum(1 for c in confirmed if c.recovered)
    retried = sum(1 for c in confirmed if c.attempts > 1)
    extra = {"rigs": [c.rig_id for c in confirmed]} if len(confirmed) <= 10 else {}
    log.info(
        "commands.confirmed",
        confirmed=len(confirmed),
        by_mode=dict(by_mode),
        after_retry=retried,
        recovered=recovered,
        **extra,
    )


def _same(a: Target, b: Target) -> bool:
    return a.mode is b.mode and a.power_limit_w == b.power_limit_w


@dataclass
class Actuator:
    """Sends commands through the rigs' drivers with bounded concurrency, each no earlier than
    its ``not_before`` (the ramp guard's start slots: power-ups go out spaced, not at once)."""

    drivers: Mapping[RigId, RigDriver]
    dry_run: bool = True
    concurrency: int = 64
    timeout_s: float = 30.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    """Waits a duration measured in ``clock``'s seconds (the demo's clock runs faster)."""
    max_wait_s: float = 300.0
    """The longest a command waits for its start slot (the shell passes its tick): a wall
    clock stepped back mid-tick must not hold a tick for the size of the step."""
    started: list[Command] = field(default_factory=list)
    """The commands of the last ``send`` that reached their driver (or all, in dry-run): if
    that send is cancelled, the others were never sent."""
    switch: Callable[[RigId, bool, float], Awaitable[str]] | None = None
    """Switches a rig's outlets (``PowerSwitches.switch_rig``) for commands that say so."""
    hold: str | None = None
    """Why commands are held although the configuration is live (another instance commands
    this site: daemon/mqtt/bridge.py). While set, every command is handled as in dry-run;
    ``dry_run`` itself stays what the configuration says."""

    @property
    def sends(self) -> bool:
        """True when commands really go to the rigs: not dry-run, and not held."""
        return not self.dry_run and self.hold is None

    async def send(self, commands: Sequence[Command]) -> list[CommandResult]:
        """Send every command (or, in dry-run, none) and report each outcome, in the order
        given. Commands due now go first; the ones with a later start slot follow in slot
        order, so waiting ones never hold up the others."""
        self.started = []
        if all(c.not_before is None for c in commands):
            return await bounded_map(list(commands), self._send_one, self.concurrency)
        order = sorted(
            range(len(commands)),
            key=lambda i: (commands[i].not_before is not None, commands[i].not_before or 0.0, i),
        )
        results = await bounded_map([commands[i] for i in order], self._send_one, self.concurrency)
        out: list[CommandResult | None] = [None] * len(commands)
        for i, result in zip(order, results, strict=True):
            out[i] = result
        return [r for r in out if r is not None]

    async def _send_one(self, cmd: Command) -> CommandResult:  # noqa: PLR0911  one result per way a send ends
        now = self.clock()
        if self.dry_run:
            return CommandResult(cmd, Outcome.DRY_RUN, "dry-run: not sent", now)
        if self.hold is not None:
            return CommandResult(cmd, Outcome.DRY_RUN, f"held: {self.hold}", now)
        if cmd.not_before is not None and cmd.not_before > now:
            await self.sleep(min(cmd.not_before - now, self.max_wait_s))
        self.started.append(cmd)
        if cmd.switch is not None:
            if self.switch is None:
                return CommandResult(cmd, Outcome.FAILED, "no power switch configured", now)
            try:
                detail = await self.switch(cmd.rig_id, cmd.switch, self.timeout_s)
            except DriverError as exc:
                return CommandResult(
                    cmd, Outcome.FAILED, f"{exc.kind.value}: {exc.detail}", self.clock()
                )
            return CommandResult(cmd, Outcome.SENT, detail, self.clock())
        driver = self.drivers.get(cmd.rig_id)
        if driver is None:
            return CommandResult(cmd, Outcome.FAILED, "no driver for this rig", now)
        try:
            result = await driver.apply(cmd.mode, cmd.power_limit_w, self.timeout_s)
        except UnsupportedMode as exc:
            return CommandResult(cmd, Outcome.UNSUPPORTED, str(exc), self.clock())
        except DriverError as exc:
            return CommandResult(
                cmd, Outcome.FAILED, f"{exc.kind.value}: {exc.detail}", self.clock()
            )
        except Exception as exc:  # a driver bug must not stop the other commands
            log.exception("rig.command_crashed", rig=cmd.rig_id)
            return CommandResult(cmd, Outcome.FAILED, f"{type(exc).__name__}: {exc}", self.clock())
        return CommandResult(cmd, Outcome.SENT, result.detail, self.clock())
