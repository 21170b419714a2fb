"""The command desk: applies control-room commands to the loop's state, and answers each once.

Commands change state, never rigs directly: a pin becomes an operator override the guards
enforce, a site target caps the site for the power-cap policy, a hand-set price outranks the
feeds. The level-triggered loop then does the rest, and the desk answers from what the next
observations show:

- every command gets exactly one final answer: ``done``, ``rejected`` (with the reason, nothing
  applied) or ``failed`` (applied, but the fleet was not observed to follow in time, and why);
  ``set``, ``curtail`` and ``site_target`` get an ``accepted`` answer first;
- a command carrying a ``transaction`` id (or MQTT 5 correlation data) is remembered, and a
  redelivery of it is recognised and neither applied nor answered again;
- nothing a payload does can raise into the caller: every failure becomes a rejection.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from daemon.loop import ControlLoop, SiteTarget, TickReport
from daemon.mqtt import commands as c
from daemon.mqtt.topics import rig_key
from daemon.reconciler import Target, satisfied, shown, wanted
from drivers.base import UnsupportedMode
from market.fetch import FeedError
from market.hashprice import PushedHashprice
from market.power import PushedPrice
from policies.guards import Override
from policies.values import Mode, QuoteKind, RigId

log = structlog.get_logger("mqtt.desk")

SEEN_MAX: Final = 100_000
SEEN_TTL_S: Final = 86400.0
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


@dataclass(frozen=True, slots=True)
class Envelope:
    """One request as it arrived."""

    command: str
    payload: bytes
    received_at: float
    response_topic: str | None = None  # MQTT 5, already checked by the bridge
    correlation_data: bytes | None = None
    retained: bool = False  # arrived with the retain flag: never applied


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer to publish: to the request's response topic, with its correlation data."""

    envelope: Envelope
    body: dict[str, Any]

    @property
    def final(self) -> bool:
        return bool(self.body["status"] != "accepted")


@dataclass(frozen=True, slots=True)
class Pin:
    id: str
    override: Override
    transaction: str | None


@dataclass
class _Wait:
    envelope: Envelope
    command: str
    transaction: str | None
    deadline: float
    started: float
    rigs: list[RigId] = field(default_factory=list)
    mode: Mode | None = None
    power_limit_w: int | None = None
    pin_id: str | None = None
    kw: float | None = None


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


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
    """Commits the desk's state durably; :meth:`commit` calls it before answers acknowledging
    that state are published (once for a whole batch of requests)."""
    dirty: bool = False
    pins: dict[str, Pin] = field(default_factory=dict)
    waits: list[_Wait] = field(default_factory=list)
    _seen: OrderedDict[tuple[str, str], float] = field(default_factory=OrderedDict)
    _new_seen: list[tuple[str, str, float, dict[str, Any] | None, str | None]] = field(
        default_factory=list
    )
    _firsts: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    """Each remembered request's (digest, shown) from :func:`fingerprint`."""
    _finals: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _last: TickReport | None = None

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
                self._answer(
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
            tx = c._transaction_of(env.payload[: c.MAX_PAYLOAD_BYTES])
            log.warning("command.retained", command=env.command, transaction=tx)
            return [self._answer(env, tx, "rejected", RETAINED_REASON, remember=False)]
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
            return [self._answer(env, exc.transaction, "rejected", exc.reason, remember=False)]
        except c.Rejected as exc:
            log.info("command.rejected", command=env.command, reason=exc.reason)
            return [self._answer(env, exc.transaction or tx, "rejected", exc.reason)]
        except Exception as exc:  # a bug here must not reach the loop, and must be answered
            log.exception("command.crashed", command=env.command)
            return [
                self._answer(env, tx, "rejected", f"internal error: {type(exc).__name__}: {exc}")
            ]

    def _key(self, env: Envelope, tx: str | None) -> tuple[str, str] | None:
        if tx is not None:
            return (env.command, tx)
        if env.correlation_data:
            return (env.command, "corr:" + env.correlation_data.hex())
        return None

    def _remember(self, key: tuple[str, str], env: Envelope) -> bool:
        """True if ``key`` was seen already; otherwise remember it (and what it asked)."""
        now = env.received_at
        while self._seen:
            oldest_key, at = next(iter(self._seen.items()))
            if now - at <= SEEN_TTL_S and len(self._seen) < SEEN_MAX:
                break
            del self._seen[oldest_key]
            self._finals.pop(oldest_key, None)
            self._firsts.pop(oldest_key, None)
        if key in self._seen:
            return True
        self._seen[key] = now
        first = fingerprint(env.command, env.payload)
        self._firsts[key] = first
        self._new_seen.append((key[0], key[1], now, None, json.dumps(list(first))))
        return False

    def _repeat(self, env: Envelope, key: tuple[str, str], tx: str | None) -> list[Answer]:
        """A request seen before is not applied again. If its final answer exists, that same
        answer is sent again, marked ``repeated`` (the first may have been lost with a broker);
        if it is still in progress, its final answer is yet to come. The same id with other
        content is not a redelivery but a conflict: rejected, naming the first request."""
        first = self._firsts.get(key)
        if first is not None and first[0] != fingerprint(env.command, env.payload)[0]:
            what = f"transaction {tx!r}" if tx is not None else "this correlation data"
            at = datetime.fromtimestamp(self._seen[key], UTC).isoformat(timespec="seconds")
            raise _Conflict(
                f"conflict: {what} was first used at {at} by {first[1]}; a different request "
                "with the same id is not applied (give each request its own id)",
                tx,
            )
        final = self._finals.get(key)
        if final is None:
            return []
        return [Answer(env, {**final, "repeated": True})]

    def take_new_seen(self) -> list[tuple[str, str, float, dict[str, Any] | None, str | None]]:
        """Request ids (with final answers, and what the request asked) recorded since the
        last call (for the store)."""
        out, self._new_seen = self._new_seen, []
        return out

    def restore_seen(
        self,
        seen: Mapping[tuple[str, str], tuple[float, dict[str, Any] | None, str | None]],
    ) -> None:
        for key, (at, final, first) in sorted(seen.items(), key=lambda kv: kv[1][0]):
            self._seen[key] = at
            if final is not None:
                self._finals[key] = final
            if first is not None:
                try:
                    digest, shown = json.loads(first)
                    self._firsts[key] = (str(digest), str(shown))
                except (ValueError, TypeError):
                    log.warning("store.request_unreadable", command=key[0], id=key[1])

    def to_dict(self) -> dict[str, Any]:
        """Pins and the commands still waiting for their final answer, JSON-ready."""
        return {
            "pins": [
                {"id": p.id, "transaction": p.transaction, "override": p.override.to_dict()}
                for p in self.pins.values()
            ],
            "waits": [
                {
                    "command": w.command,
                    "payload": w.envelope.payload.decode("utf-8", "replace"),
                    "received_at": w.envelope.received_at,
                    "response_topic": w.envelope.response_topic,
                    "correlation_data": (
                        w.envelope.correlation_data.hex() if w.envelope.correlation_data else None
                    ),
                    "transaction": w.transaction,
                    "deadline": w.deadline,
                    "started": w.started,
                    "rigs": w.rigs,
                    "mode": w.mode.value if w.mode else None,
                    "power_limit_w": w.power_limit_w,
                    "pin_id": w.pin_id,
                    "kw": w.kw,
                }
                for w in self.waits
            ],
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Inverse of to_dict; KeyError/ValueError on a malformed document."""
        pins = {}
        for p in data.get("pins") or []:
            pin = Pin(str(p["id"]), Override.from_dict(p["override"]), p.get("transaction"))
            pins[pin.id] = pin
        waits = []
        for w in data.get("waits") or []:
            corr = w.get("correlation_data")
            env = Envelope(
                str(w["command"]),
                str(w.get("payload", "")).encode(),
                float(w["received_at"]),
                w.get("response_topic"),
                bytes.fromhex(corr) if corr else None,
            )
            waits.append(
                _Wait(
                    env,
                    str(w["command"]),
                    w.get("transaction"),
                    float(w["deadline"]),
                    float(w["started"]),
                    [str(r) for r in w.get("rigs") or []],
                    Mode(w["mode"]) if w.get("mode") else None,
                    w.get("power_limit_w"),
                    w.get("pin_id"),
                    w.get("kw"),
                )
            )
        self.pins, self.waits = pins, waits
        self.loop.overrides = [p.override for p in self.pins.values()]

    def seen(self) -> dict[tuple[str, str], float]:
        """The remembered request ids and when they arrived (for the durable store)."""
        return dict(self._seen)

    def _apply(self, env: Envelope, req: c.Request) -> list[Answer]:
        now = env.received_at
        by = req.by or "mqtt"
        if isinstance(req, c.SetCommand):
            mode = req.mode.mode()
            rigs = self._resolve(req)
            if mode is None:
                return [self._unpinned(env, req, rigs, by)]
            return self._pin_and_wait(
                env,
                req,
                rigs,
                mode,
                req.power_limit_w,
                now + req.for_s,
                req.bypass_dwell,
                by,
                req.timeout_s,
            )
        if isinstance(req, c.CurtailCommand):
            rigs = self._resolve(req)
            return self._pin_and_wait(
                env,
                req,
                rigs,
                Mode.SLEEP,
                None,
                now + req.for_s,
                req.bypass_dwell,
                by,
                req.timeout_s,
            )
        if isinstance(req, c.ResumeCommand):
            return [self._unpinned(env, req, self._resolve(req), by)]
        if isinstance(req, c.PinCommand):
            rigs = self._resolve(req)
            mode = Mode(req.mode.value)
            until = req.until if req.until is not None else now + (req.for_s or 0.0)
            if until <= now:
                raise c.Rejected("until is in the past", req.transaction)
            if until - now > c.MAX_PIN_S:
                raise c.Rejected(
                    f"until is more than {c.MAX_PIN_S / 86400:.0f} days ahead", req.transaction
                )
            self._check_modes(rigs, mode, req.power_limit_w, req.transaction)
            pin = self._add_pin(rigs, mode, req.power_limit_w, until, req.bypass_dwell, by, req)
            return [
                self._answer(
                    env,
                    req.transaction,
                    "done",
                    f"pinned {len(rigs)} rig(s) to {mode.value}",
                    {"pin": pin.id, "rigs": len(rigs), "until": until},
                )
            ]
        if isinstance(req, c.UnpinCommand):
            if req.pin is not None:
                if req.pin not in self.pins:
                    known = _listed(list(self.pins)) or "none"
                    raise c.Rejected(f"unknown pin {req.pin!r} (pins: {known})", req.transaction)
                self.pins.pop(req.pin)
                self._sync()
                return [self._answer(env, req.transaction, "done", f"pin {req.pin} removed")]
            target = c.Targeted(rig=req.rig, rigs=req.rigs, group=req.group, all=req.all)
            return [self._unpinned(env, req, self._resolve(target, req.transaction), by)]
        if isinstance(req, c.SiteTargetCommand):
            return self._site_target(env, req, by)
        if isinstance(req, c.MarketSetCommand):
            return [self._market_set(env, req, by)]
        if isinstance(req, c.MarketClearCommand):
            kind = QuoteKind(req.input.value)
            old = self.loop.market.clear_manual(kind)
            self.on_change()
            what = "cleared" if old is not None else "was not set"
            return [self._answer(env, req.transaction, "done", f"{kind.value} {what}")]
        if isinstance(req, c.StatusCommand):
            return [self._answer(env, req.transaction, "done", "status", self.status(req.rigs))]
        if isinstance(req, c.RetryCommand):
            rigs = self._resolve(req)
            stuck = [r for r in rigs if r in self.loop.reconciler.not_responding]
            for r in rigs:
                self.loop.reconciler.clear(r)
            self.on_change()
            return [
                self._answer(
                    env,
                    req.transaction,
                    "done",
                    f"{len(stuck)} rig(s) were marked not responding; they will be commanded again",
                    {"cleared": stuck},
                )
            ]
        raise c.Rejected(f"command {env.command!r} is not handled", req.transaction)

    # ---------------------------------------------------------------------------------------
    # Targets and pins

    def known(self) -> dict[str, RigId]:
        """Every rig this daemon owns, by id and by its topic key."""
        ids = set(self.configured) | set(self.loop.observer.drivers)
        out = {rig_key(r): r for r in ids}
        out.update({r: r for r in ids})
        return out

    def _resolve(self, req: c.Targeted, tx: str | None = None) -> list[RigId]:
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
                    f"unknown group {req.group!r} (groups: {_listed(groups) or 'none'})", tx
                )
            return rigs
        names = [req.rig] if req.rig is not None else list(req.rigs or [])
        unknown = [n for n in names if n not in known]
        if unknown:
            raise c.Rejected(f"unknown rig(s): {_listed(unknown)}", tx)
        return sorted({known[n] for n in names})

    def _check_modes(
        self, rigs: Sequence[RigId], mode: Mode, limit: int | None, tx: str | None
    ) -> None:
        problems = []
        for rig_id in rigs:
            driver = self.loop.observer.drivers.get(rig_id)
            if driver is None:
                continue  # not identified yet: the guards only ever lower an unobserved rig
            try:
                driver.check_supported(mode, limit)
            except UnsupportedMode as exc:
                problems.append(str(exc))
        if problems:
            raise c.Rejected(
                f"{len(problems)} rig(s) cannot do this: "
                + "; ".join(problems[:LISTED])
                + (f"; and {len(problems) - LISTED} more" if len(problems) > LISTED else ""),
                tx,
            )

    def _add_pin(
        self,
        rigs: Sequence[RigId],
        mode: Mode,
        limit: int | None,
        until: float,
        bypass_dwell: bool,
        by: str,
        req: c.Request,
    ) -> Pin:
        """Pin ``rigs``; the newest pin wins, so older pins let go of these rigs."""
        self._release(rigs)
        why = f"{type(req).__name__.removesuffix('Command').lower()} over MQTT"
        if req.transaction:
            why += f" (transaction {req.transaction})"
        override = Override(
            mode=mode,
            expires_at=until,
            by=by,
            why=why,
            rig_ids=frozenset(rigs),
            power_limit_w=limit,
            bypass_dwell=bypass_dwell,
        )
        pin = Pin(uuid.uuid4().hex[:12], override, req.transaction)
        self.pins[pin.id] = pin
        self._sync()
        log.info(
            "pin.added",
            pin=pin.id,
            mode=mode.value,
            rigs=len(rigs),
            until=until,
            by=by,
            transaction=req.transaction,
        )
        return pin

    def _release(self, rigs: Sequence[RigId]) -> int:
        """Remove ``rigs`` from every pin (dropping emptied pins); how many rig pins went."""
        drop = set(rigs)
        released = 0
        for pin_id, pin in list(self.pins.items()):
            covered = pin.override.rig_ids & drop
            if not covered:
                continue
            released += len(covered)
            rest = pin.override.rig_ids - drop
            if rest:
                self.pins[pin_id] = replace(pin, override=replace(pin.override, rig_ids=rest))
            else:
                del self.pins[pin_id]
        return released

    def _sync(self) -> None:
        now = self.clock()
        for pin_id, pin in list(self.pins.items()):
            if not pin.override.active(now):
                del self.pins[pin_id]
        self.loop.overrides = [p.override for p in self.pins.values()]
        self.on_change()

    def pinned(self) -> dict[RigId, tuple[str, Override]]:
        """Each pinned rig's pin id and override (built once per tick, not searched per rig)."""
        return {r: (p.id, p.override) for p in self.pins.values() for r in p.override.rig_ids}

    def _unpinned(self, env: Envelope, req: c.Request, rigs: Sequence[RigId], by: str) -> Answer:
        released = self._release(rigs)
        self._sync()
        log.info("pin.released", rigs=len(rigs), released=released, by=by)
        return self._answer(
            env,
            req.transaction,
            "done",
            f"{released} of {len(rigs)} rig(s) were pinned; the policies decide for them again",
            {"rigs": len(rigs), "released": released},
        )

    def _pin_and_wait(
        self,
        env: Envelope,
        req: c.Request,
        rigs: Sequence[RigId],
        mode: Mode,
        limit: int | None,
        until: float,
        bypass_dwell: bool,
        by: str,
        timeout_s: float | None,
    ) -> list[Answer]:
        self._check_modes(rigs, mode, limit, req.transaction)
        pin = self._add_pin(rigs, mode, limit, until, bypass_dwell, by, req)
        timeout = timeout_s or self.default_timeout_s
        now = env.received_at
        self.waits.append(
            _Wait(
                env,
                env.command,
                req.transaction,
                now + timeout,
                now,
                list(rigs),
                mode,
                limit,
                pin.id,
            )
        )
        return [
            self._answer(
                env,
                req.transaction,
                "accepted",
                f"{len(rigs)} rig(s) pinned to {mode.value}; answering once observed "
                f"(within {timeout:.0f} s)",
                {"pin": pin.id, "rigs": len(rigs), "until": until, "timeout_s": timeout},
            )
        ]

    # ---------------------------------------------------------------------------------------
    # Site target and market

    def _site_target(self, env: Envelope, req: c.SiteTargetCommand, by: str) -> list[Answer]:
        now = env.received_at
        if req.kw is None:
            old = self.loop.site_target
            self.loop.site_target = None
            self.on_change()
            text = f"site target of {old.kw:g} kW cleared" if old else "no site target was set"
            return [self._answer(env, req.transaction, "done", text)]
        until = req.until if req.until is not None else now + (req.for_s or 0.0)
        if until <= now:
            raise c.Rejected("until is in the past", req.transaction)
        if until - now > c.MAX_PIN_S:
            raise c.Rejected(
                f"until is more than {c.MAX_PIN_S / 86400:.0f} days ahead", req.transaction
            )
        self.loop.site_target = SiteTarget(req.kw, until, by)
        self.on_change()
        log.info("site_target.set", kw=req.kw, until=until, by=by, transaction=req.transaction)
        timeout = min(req.timeout_s or self.default_timeout_s, until - now)
        self.waits.append(_Wait(env, env.command, req.transaction, now + timeout, now, kw=req.kw))
        return [
            self._answer(
                env,
                req.transaction,
                "accepted",
                f"site target {req.kw:g} kW until {until:.0f}; answering once the site is "
                f"observed at or under it (within {timeout:.0f} s)",
                {"kw": req.kw, "until": until, "timeout_s": timeout},
            )
        ]

    def _market_set(self, env: Envelope, req: c.MarketSetCommand, by: str) -> Answer:
        now = env.received_at
        try:
            if req.input is c.MarketInput.HASHPRICE:
                quote = PushedHashprice(name="operator", ttl_s=req.for_s).push(req.value, now, by)
            else:
                quote = PushedPrice(name="operator", ttl_s=req.for_s).push(req.value, now, by)
        except FeedError as exc:
            raise c.Rejected(f"{req.input.value}: {exc.problem}", req.transaction) from None
        self.loop.market.set_manual(quote)
        self.on_change()
        return self._answer(
            env,
            req.transaction,
            "done",
            f"{req.input.value} set to {quote.value:g} {quote.unit} for {req.for_s:.0f} s",
            {"value": quote.value, "unit": quote.unit, "until": now + req.for_s},
        )

    # ---------------------------------------------------------------------------------------
    # After each tick: answer the waits

    def after_tick(self, report: TickReport) -> list[Answer]:
        """Final answers for the waits this tick's observations settle."""
        self._last = report
        self._sync_expired()
        answers: list[Answer] = []
        keep: list[_Wait] = []
        for wait in self.waits:
            answer = self._settle(wait, report)
            if answer is None:
                keep.append(wait)
            else:
                answers.append(answer)
        self.waits = keep
        return answers

    def _sync_expired(self) -> None:
        now = self.clock()
        if any(not p.override.active(now) for p in self.pins.values()):
            for pin_id, pin in list(self.pins.items()):
                if not pin.override.active(now):
                    log.info("pin.expired", pin=pin_id, mode=pin.override.mode.value)
                    del self.pins[pin_id]
            self.loop.overrides = [p.override for p in self.pins.values()]

    def _settle(self, wait: _Wait, report: TickReport) -> Answer | None:
        now = report.at
        dry = not self.loop.actuator.sends
        if wait.kw is not None:
            if dry:
                return self._answer(
                    wait.envelope,
                    wait.transaction,
                    "done",
                    f"dry-run: the policies now keep the site under {wait.kw:g} kW; nothing is "
                    "sent to the rigs",
                )
            if report.power_kw <= wait.kw:
                return self._answer(
                    wait.envelope,
                    wait.transaction,
                    "done",
                    f"site observed at {report.power_kw:.1f} kW, at or under {wait.kw:g} kW",
                    {
                        "power_kw": round(report.power_kw, 2),
                        "after_s": round(now - wait.started, 1),
                    },
                )
            if now >= wait.deadline:
                return self._answer(
                    wait.envelope,
                    wait.transaction,
                    "failed",
                    f"site still at {report.power_kw:.1f} kW, above the {wait.kw:g} kW target, "
                    f"after {now - wait.started:.0f} s (the target stays active)",
                    {"power_kw": round(report.power_kw, 2)},
                )
            return None
        assert wait.mode is not None
        pin = self.pins.get(wait.pin_id or "")
        covered = pin.override.rig_ids if pin is not None else frozenset()
        superseded = [r for r in wait.rigs if r not in covered]
        live = [r for r in wait.rigs if r in covered]
        pending: list[RigId] = []
        for rig_id in live:
            target = Target(rig_id, wait.mode, wait.power_limit_w, "", "")
            if dry:
                d = report.desired.get(rig_id)
                if d is None or d.mode is not wait.mode or d.power_limit_w != wait.power_limit_w:
                    pending.append(rig_id)
            elif not satisfied(target, report.readings.get(rig_id)):
                pending.append(rig_id)
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
                return self._answer(
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
            return self._answer(wait.envelope, wait.transaction, "done", text, result)
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
        return self._answer(
            wait.envelope, wait.transaction, "failed", head + "; ".join(reasons[:LISTED]), result
        )

    def _why_not(self, rig_id: RigId, report: TickReport, wait: _Wait) -> str:
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
        return f"{rig_id}: observed {shown(target, reading)}"

    # ---------------------------------------------------------------------------------------

    def status(self, with_rigs: bool) -> dict[str, Any]:
        report = self._last
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
                for p in self.pins.values()
            ],
            "site_target": (
                {"kw": self.loop.site_target.kw, "until": self.loop.site_target.until}
                if self.loop.site_target
                else None
            ),
            "waiting": len(self.waits),
        }
        if report is not None:
            out["summary"] = report.summary()
            out["at"] = report.at
            if with_rigs:
                out["rigs"] = {
                    r: {
                        "mode": getattr(report.readings.get(r), "mode", Mode.UNKNOWN).value,
                        "desired": d.mode.value,
                        "power_limit_w": d.power_limit_w,
                        "by": d.decided_by,
                        "reason": d.reason,
                        "not_responding": r in self.loop.reconciler.not_responding,
                        "retry_at": self.loop.reconciler.retrying_at(r),
                    }
                    for r, d in report.desired.items()
                }
        return out

    def _answer(
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
        if remember and status != "accepted" and key is not None and key in self._seen:
            self._finals[key] = body
            self._new_seen.append((key[0], key[1], self._seen[key], body, None))
        return Answer(env, body)


class _Conflict(c.Rejected):
    """A request id reused for a different request."""
