"""The command desk: takes control-room requests in, changes the operator state through one
handler per command (daemon/mqtt/handlers.py), and answers each request once.

Commands change state, never rigs directly: a pin becomes an operator override the guards
enforce, a site target caps the site for the power-cap policy, a hand-set price outranks the
feeds (all held in daemon/operator_state.py). The level-triggered loop then does the rest, and
the desk answers from what the next observations show:

- every command gets exactly one final answer: ``done``, ``rejected`` (with the reason, nothing
  applied) or ``failed`` (applied, but the fleet was not observed to follow in time, and why);
  ``set``, ``curtail``, ``site_target`` and ``power_cycle`` get an ``accepted`` answer first;
- a command carrying a ``transaction`` id (or MQTT 5 correlation data) is remembered, and a
  redelivery of it is recognised and neither applied nor answered again;
- nothing a payload does can raise into the caller: every failure becomes a rejection.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from daemon.loop import ControlLoop, TickReport
from daemon.mqtt import commands as c
from daemon.mqtt.answers import Answer
from daemon.mqtt.handlers import HANDLERS, listed
from daemon.mqtt.topics import rig_key
from daemon.operator_state import CycleWait, Envelope, OperatorState, RequestKey, Wait
from daemon.reconciler import Target, satisfied, shown, wanted
from drivers.base import UnsupportedMode
from policies.guards.power import FLOOR_MODES
from policies.values import Mode, Observation, Reading, RigId

log = structlog.get_logger("mqtt.desk")

LISTED: Final = 5
SHOWN_REQUEST_CHARS: Final = 200

RETAINED_REASON: Final = (
    "invalid command: published with the retain flag, so not applied (a retained request "
    "would run again at every start); publish requests without retain (mosquitto_pub without "
    "-r). The daemon clears the retained message where the broker's ACL lets it"
)


def fingerprint(command: str, payload: bytes) -> tuple[str, str]:
    """(digest, shown): what identifies a request's content, whatever its JSON spacing or key
    order, and how the request is named in a conflict."""
    try:
        canonical = json.dumps(
            json.loads(payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    except (ValueError, RecursionError):
        canonical = payload.decode("utf-8", "replace")
    digest = hashlib.sha256(f"{command}\n{canonical}".encode()).hexdigest()[:32]
    shown = canonical if len(canonical) <= SHOWN_REQUEST_CHARS else canonical[:200] + "…"
    return digest, f"{command} {shown}"


@dataclass
class CommandDesk:
    loop: ControlLoop
    site: str
    groups: Mapping[RigId, str] = field(default_factory=dict)
    configured: frozenset[RigId] = frozenset()
    default_timeout_s: float = 600.0
    clock: Callable[[], float] = time.time
    on_change: Callable[[], None] = lambda: None
    """Called when a command changed state, so the loop can tick without waiting."""
    persist: Callable[[], None] = lambda: None
    """Commits the operator state durably; :meth:`commit` calls it before answers
    acknowledging that state are published (once for a whole batch of requests)."""
    dirty: bool = False
    _last: TickReport | None = None

    @property
    def state(self) -> OperatorState:
        """The operator state this desk changes: the loop's own."""
        return self.loop.operator

    def configure(self, groups: Mapping[RigId, str], configured: frozenset[RigId]) -> None:
        """The configured rigs and their groups (at start and on reload)."""
        self.groups = dict(groups)
        self.configured = configured

    # ---------------------------------------------------------------------------------------
    # Requests in

    def handle(self, env: Envelope) -> list[Answer]:
        """Validate and apply one request; its immediate answers (none for a redelivery).

        Call :meth:`commit` before publishing the answers: they acknowledge state that must be
        stored first.
        """
        answers = self._handle(env)
        if answers:
            self.dirty = True
        return answers

    def commit(self, answers: list[Answer]) -> list[Answer]:
        """Store the state ``answers`` acknowledge (one commit for all of them); returns the
        answers to publish. If storing fails, each becomes "failed", saying so: an answer
        never claims what a restart would lose."""
        if not self.dirty:
            return answers
        try:
            self.persist()
        except Exception as exc:
            log.exception("command.not_persisted", answers=len(answers))
            return [
                self.answer(
                    a.envelope,
                    a.body.get("transaction"),
                    "failed",
                    f"applied but not stored durably ({type(exc).__name__}: {exc}); "
                    "it will be lost on a restart",
                )
                for a in answers
            ]
        self.dirty = False
        return answers

    def _handle(self, env: Envelope) -> list[Answer]:
        tx: str | None = None
        if env.retained:
            tx = c.transaction_of(env.payload[: c.MAX_PAYLOAD_BYTES])
            log.warning("command.retained", command=env.command, transaction=tx)
            return [self.answer(env, tx, "rejected", RETAINED_REASON, remember=False)]
        try:
            try:
                request = c.parse(env.command, env.payload, env.received_at)
            except c.Rejected as exc:
                key = self._key(env, exc.transaction)
                if key is not None and self._remember(key, env):
                    return self._repeat(env, key, exc.transaction)
                raise
            tx = request.transaction
            key = self._key(env, tx)
            if key is not None and self._remember(key, env):
                log.info("command.duplicate", command=env.command, transaction=tx)
                return self._repeat(env, key, tx)
            return self._apply(env, request)
        except _Conflict as exc:
            log.warning("command.conflict", command=env.command, reason=exc.reason)
            return [self.answer(env, exc.transaction, "rejected", exc.reason, remember=False)]
        except c.Rejected as exc:
            log.info("command.rejected", command=env.command, reason=exc.reason)
            return [self.answer(env, exc.transaction or tx, "rejected", exc.reason)]
        except Exception as exc:  # a bug here must not reach the loop, and must be answered
            log.exception("command.crashed", command=env.command)
            return [
                self.answer(env, tx, "rejected", f"internal error: {type(exc).__name__}: {exc}")
            ]

    def _apply(self, env: Envelope, req: c.Request) -> list[Answer]:
        handler = HANDLERS.get(type(req))
        if handler is None:
            raise c.Rejected(f"command {env.command!r} is not handled", req.transaction)
        return handler(self, env, req, req.by or "mqtt")

    def _key(self, env: Envelope, tx: str | None) -> RequestKey | None:
        if tx is not None:
            return (env.command, tx)
        if env.correlation_data:
            return (env.command, "corr:" + env.correlation_data.hex())
        return None

    def _remember(self, key: RequestKey, env: Envelope) -> bool:
        """True if ``key`` was seen already; otherwise remember it (and what it asked)."""
        return self.state.requests.remember(
            key, env.received_at, fingerprint(env.command, env.payload)
        )

    def _repeat(self, env: Envelope, key: RequestKey, tx: str | None) -> list[Answer]:
        """A request seen before is not applied again. If its final answer exists, that same
        answer is sent again, marked ``repeated`` (the first may have been lost with a broker);
        if it is still in progress, its final answer is yet to come. The same id with other
        content is not a redelivery but a conflict: rejected, naming the first request."""
        requests = self.state.requests
        first = requests.firsts.get(key)
        if first is not None and first[0] != fingerprint(env.command, env.payload)[0]:
            what = f"transaction {tx!r}" if tx is not None else "this correlation data"
            at = datetime.fromtimestamp(requests.at[key], UTC).isoformat(timespec="seconds")
            raise _Conflict(
                f"conflict: {what} was first used at {at} by {first[1]}; a different request "
                "with the same id is not applied (give each request its own id)",
                tx,
            )
        final = requests.finals.get(key)
        if final is None:
            return []
        return [Answer(env, {**final, "repeated": True})]

    # ---------------------------------------------------------------------------------------
    # What the handlers use (daemon/mqtt/handlers.py)

    def changed(self) -> None:
        """The operator state changed: drop expired pins and let the loop tick now."""
        self.state.expire_pins(self.clock())
        self.on_change()

    def known(self) -> dict[str, RigId]:
        """Every rig this daemon owns, by id and by its topic key."""
        ids = set(self.configured) | set(self.loop.observer.drivers)
        out = {rig_key(r): r for r in ids}
        out.update({r: r for r in ids})
        return out

    def resolve(self, req: c.Targeted, tx: str | None = None) -> list[RigId]:
        """The rigs a request names; Rejected naming an unknown rig or group."""
        tx = tx if tx is not None else req.transaction
        known = self.known()
        if req.all:
            rigs = sorted(set(known.values()))
            if not rigs:
                raise c.Rejected("this daemon has no rigs", tx)
            return rigs
        if req.group is not None:
            rigs = sorted(r for r, g in self.groups.items() if g == req.group)
            if not rigs:
                groups = sorted({g for g in self.groups.values() if g})
                raise c.Rejected(
                    f"unknown group {req.group!r} (groups: {listed(groups) or 'none'})", tx
                )
            return rigs
        names = [req.rig] if req.rig is not None else list(req.rigs or [])
        unknown = [n for n in names if n not in known]
        if unknown:
            raise c.Rejected(f"unknown rig(s): {listed(unknown)}", tx)
        return sorted({known[n] for n in names})

    def check_modes(
        self, rigs: Sequence[RigId], mode: Mode, limit: int | None, tx: str | None
    ) -> None:
        """Rejected naming the rigs that cannot do ``mode`` (at ``limit``)."""
        problems = []
        for rig_id in rigs:
            try:
                self.loop.check_supported(rig_id, mode, limit)
            except UnsupportedMode as exc:
                problems.append(str(exc))
        if problems:
            raise c.Rejected(
                f"{len(problems)} rig(s) cannot do this: "
                + "; ".join(problems[:LISTED])
                + (f"; and {len(problems) - LISTED} more" if len(problems) > LISTED else ""),
                tx,
            )

    # ---------------------------------------------------------------------------------------
    # After each tick: answer the waits

    def after_tick(self, report: TickReport) -> list[Answer]:
        """Final answers for the waits this tick's observations settle."""
        self._last = report
        self.state.expire_pins(self.clock())
        answers: list[Answer] = []
        keep: list[Wait] = []
        for wait in self.state.waits:
            answer = self._settle(wait, report)
            if answer is None:
                keep.append(wait)
            else:
                answers.append(answer)
        self.state.settle_waits(keep)
        return answers

    def _settle(self, wait: Wait, report: TickReport) -> Answer | None:
        if wait.kw is not None:
            return self._settle_site_target(wait, wait.kw, report)
        if wait.cycle is not None:
            return self._settle_cycle(wait, wait.cycle, report)
        return self._settle_pin(wait, report)

    def observed(self, rig_id: RigId) -> Reading | None:
        """The rig as the last tick observed it (None before the first tick)."""
        return None if self._last is None else self._last.readings.get(rig_id)

    def _settle_cycle(self, wait: Wait, cw: CycleWait, report: TickReport) -> Answer | None:
        """A ``power_cycle``: done once every rig was cycled and is back (answering, in a mode
        other than off, and hashing if it was when asked); failed, with each rig's reason, at
        the deadline or once every rig still missing was refused or its switch failed. In
        dry-run: done once every rig's cycle was decided (``would``), nothing switched."""
        now = report.at
        power = self.loop.power
        dry = not self.loop.actuator.sends
        note_cycles(wait, cw, report)
        back = list(cw.cycled) if dry else [r for r in wait.rigs if is_back(r, cw, report)]
        waiting = [r for r in wait.rigs if r not in back and r not in cw.failed]
        if power is not None:  # again after a restart, which forgets what was asked
            power.request_cycles([r for r in waiting if r not in cw.cycled], wait.deadline)
        if waiting and now < wait.deadline:
            return None
        if power is not None:
            power.cancel_cycles(waiting)
        result: dict[str, Any] = {
            "rigs": len(wait.rigs),
            ("would" if dry else "back"): len(back),
            "after_s": round(now - wait.started, 1),
        }
        if not waiting and not cw.failed:
            hashing = sum(1 for r in back if r in cw.hashing)
            text = (
                f"dry-run: {len(back)} rig(s) would be power-cycled; nothing switched"
                if dry
                else f"{len(back)} rig(s) power-cycled and observed back"
                + (f" ({hashing} hashing again)" if hashing else "")
            )
            return self.answer(wait.envelope, wait.transaction, "done", text, result)
        reasons = [f"{r}: {cw.failed[r]}" for r in wait.rigs if r in cw.failed] + [
            f"{r}: {not_back(r, cw, report)}" for r in waiting
        ]
        result["not_back"] = [r for r in wait.rigs if r not in back][:1000]
        head = (
            f"{len(wait.rigs) - len(back)} of {len(wait.rigs)} rig(s) not power-cycled and "
            f"back after {now - wait.started:.0f} s: "
        )
        return self.answer(
            wait.envelope, wait.transaction, "failed", head + "; ".join(reasons[:LISTED]), result
        )

    def _settle_site_target(self, wait: Wait, kw: float, report: TickReport) -> Answer | None:
        now = report.at
        if not self.loop.actuator.sends:
            return self.answer(
                wait.envelope,
                wait.transaction,
                "done",
                f"dry-run: the policies now keep the site under {kw:g} kW; nothing is "
                "sent to the rigs",
            )
        if report.power_kw <= kw:
            return self.answer(
                wait.envelope,
                wait.transaction,
                "done",
                f"site observed at {report.power_kw:.1f} kW, at or under {kw:g} kW",
                {"power_kw": round(report.power_kw, 2), "after_s": round(now - wait.started, 1)},
            )
        if now >= wait.deadline:
            return self.answer(
                wait.envelope,
                wait.transaction,
                "failed",
                f"site still at {report.power_kw:.1f} kW, above the {kw:g} kW target, "
                f"after {now - wait.started:.0f} s (the target stays active)",
                {"power_kw": round(report.power_kw, 2)},
            )
        return None

    def _pending(
        self, wait: Wait, mode: Mode, live: list[RigId], report: TickReport
    ) -> list[RigId]:
        """The rigs of ``live`` not yet seen in the wait's setting (in dry-run: not decided)."""
        if not self.loop.actuator.sends:
            return [
                r
                for r in live
                if (d := report.desired.get(r)) is None
                or d.mode is not mode
                or d.power_limit_w != wait.power_limit_w
            ]
        return [r for r in live if not _observed_in(r, mode, wait.power_limit_w, report)]

    def _settle_pin(self, wait: Wait, report: TickReport) -> Answer | None:
        assert wait.mode is not None
        now = report.at
        dry = not self.loop.actuator.sends
        pin = self.state.pins.get(wait.pin_id or "")
        covered = pin.override.rig_ids if pin is not None else frozenset()
        superseded = [r for r in wait.rigs if r not in covered]
        live = [r for r in wait.rigs if r in covered]
        pending = self._pending(wait, wait.mode, live, report)
        stuck = [r for r in pending if r in self.loop.reconciler.not_responding]
        result: dict[str, Any] = {
            "rigs": len(wait.rigs),
            # In dry-run nothing is sent, so nothing is confirmed: the decisions say what
            # would be done.
            ("would" if dry else "confirmed"): len(live) - len(pending),
            "after_s": round(now - wait.started, 1),
        }
        if not pending:
            if superseded and not live:
                return self.answer(
                    wait.envelope,
                    wait.transaction,
                    "failed",
                    "superseded by a later command for every rig",
                    result,
                )
            text = (
                f"dry-run: {len(live)} rig(s) decided {wait.mode.value}; nothing sent"
                if dry
                else f"{len(live)} rig(s) observed in {wanted(wait.mode, wait.power_limit_w)}"
            )
            if superseded:
                text += f"; {len(superseded)} superseded by a later command"
            return self.answer(wait.envelope, wait.transaction, "done", text, result)
        if now < wait.deadline and len(stuck) < len(pending):
            return None
        reasons = [self._why_not(r, report, wait) for r in pending]
        result["not_decided" if dry else "not_confirmed"] = pending[:1000]
        head = (
            f"{len(pending)} of {len(wait.rigs)} rig(s) not observed in "
            f"{wanted(wait.mode, wait.power_limit_w)}"
            + (" (not responding to commands)" if len(stuck) == len(pending) else "")
            + f" after {now - wait.started:.0f} s: "
        )
        return self.answer(
            wait.envelope, wait.transaction, "failed", head + "; ".join(reasons[:LISTED]), result
        )

    def _why_not(self, rig_id: RigId, report: TickReport, wait: Wait) -> str:
        reading = report.readings.get(rig_id)
        if rig_id in self.loop.reconciler.not_responding:
            return f"{rig_id}: not responding to commands"
        if reading is None or not hasattr(reading, "mode"):
            detail = getattr(reading, "detail", "not observed")
            return f"{rig_id}: cannot be read ({detail})"
        d = report.desired.get(rig_id)
        if d is not None and d.held_back:
            return f"{rig_id}: held by {d.decided_by}: {d.reason}"
        assert wait.mode is not None
        target = Target(rig_id, wait.mode, wait.power_limit_w, "", "")
        hashing = "" if not satisfied(target, reading) else " but not hashing"
        return f"{rig_id}: observed {shown(target, reading)}{hashing}"

    # ---------------------------------------------------------------------------------------

    def status(self, with_rigs: bool) -> dict[str, Any]:
        report = self._last
        state = self.state
        out: dict[str, Any] = {
            "site": self.site,
            "ticked": report is not None,
            "pins": [
                {
                    "pin": p.id,
                    "mode": p.override.mode.value,
                    "rigs": len(p.override.rig_ids),
                    "until": p.override.expires_at,
                    "by": p.override.by,
                }
                for p in state.pins.values()
            ],
            "site_target": (
                {"kw": state.site_target.kw, "until": state.site_target.until}
                if state.site_target
                else None
            ),
            "waiting": len(state.waits),
        }
        if report is not None:
            out["summary"] = report.summary()
            out["at"] = report.at
            if with_rigs:
                out["rigs"] = self._rigs_status(report)
        return out

    def _rigs_status(self, report: TickReport) -> dict[RigId, dict[str, Any]]:
        reconciler = self.loop.reconciler
        return {
            r: {
                "mode": getattr(report.readings.get(r), "mode", Mode.UNKNOWN).value,
                "desired": d.mode.value,
                "power_limit_w": d.power_limit_w,
                "by": d.decided_by,
                "reason": d.reason,
                "not_responding": r in reconciler.not_responding,
                "retry_at": reconciler.retrying_at(r),
            }
            for r, d in report.desired.items()
        }

    def answer(
        self,
        env: Envelope,
        tx: str | None,
        status: str,
        reason: str,
        result: Mapping[str, Any] | None = None,
        *,
        remember: bool = True,
    ) -> Answer:
        """The answer; a final one is remembered for the request's id (unless ``remember`` is
        false: a conflict or a retained request must not replace the first request's answer)."""
        body: dict[str, Any] = {
            "transaction": tx,
            "command": env.command,
            "status": status,
            "reason": reason,
            "site": self.site,
            "at": self.clock(),
        }
        if result is not None:
            body["result"] = dict(result)
        if status != "accepted":
            log.info("command.answered", command=env.command, transaction=tx, status=status)
        key = self._key(env, tx)
        if remember and status != "accepted" and key is not None:
            self.state.requests.answered(key, body)
        return Answer(env, body)


def note_cycles(wait: Wait, cw: CycleWait, report: TickReport) -> None:
    """Bring ``cw`` up to date with a tick: the cycles of the wait's rigs (or refusals, or a
    switch failing) among its power events, and the rigs seen gone after their cycle (not
    answering, or observed off) in a tick after it."""
    asked = set(wait.rigs)
    for event in report.power_events:
        rig_id = str(event["rig"])
        if rig_id not in asked or rig_id in cw.cycled or rig_id in cw.failed:
            continue
        if event["kind"] == "power_cycle_refused":
            cw.failed[rig_id] = f"refused: {event['reason']}"
        elif event["kind"] == "power_cycle" and "error" in event:
            cw.failed[rig_id] = f"the switch failed: {event['error']}"
        elif event["kind"] == "power_cycle":
            cw.cycled[rig_id] = float(str(event["ts"]))
    for rig_id, at in cw.cycled.items():
        if rig_id in cw.gone or report.at <= at:
            continue
        reading = report.readings.get(rig_id)
        if not isinstance(reading, Observation) or reading.mode is Mode.OFF:
            cw.gone.append(rig_id)


def is_back(rig_id: RigId, cw: CycleWait, report: TickReport) -> bool:
    """Seen gone after its cycle, and now answering in a mode other than off (hashing, if it
    was hashing when the cycle was asked)."""
    reading = report.readings.get(rig_id)
    return (
        rig_id in cw.gone
        and isinstance(reading, Observation)
        and reading.mode is not Mode.OFF
        and (rig_id not in cw.hashing or reading.mining)
    )


def not_back(rig_id: RigId, cw: CycleWait, report: TickReport) -> str:
    """Why a rig of a power cycle is not back yet, for the failed answer."""
    reading = report.readings.get(rig_id)
    if rig_id not in cw.cycled:
        return "not cycled yet (waiting for the site's max_outlets_per_minute budget)"
    if rig_id not in cw.gone:
        return "its outlets were switched off but it was never seen gone (a stuck relay?)"
    if not isinstance(reading, Observation):
        detail = getattr(reading, "detail", "not observed")
        return f"not answering since its cycle ({detail})"
    if reading.mode is Mode.OFF:
        return "still off: its outlets are not on again yet (the site ramp grants power-ups)"
    return f"back in {reading.mode.value} but not hashing"


def _observed_in(rig_id: RigId, mode: Mode, limit: int | None, report: TickReport) -> bool:
    """The rig is observed as a command asked: in ``mode`` (the reconciler's test), and, for a
    mode that hashes, hashing (a rig powered on again answers in its mode while it boots)."""
    reading = report.readings.get(rig_id)
    if not satisfied(Target(rig_id, mode, limit, "", ""), reading):
        return False
    return mode in FLOOR_MODES or (isinstance(reading, Observation) and reading.mining)


class _Conflict(c.Rejected):
    """A request id reused for a different request."""
