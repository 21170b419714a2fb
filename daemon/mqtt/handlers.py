"""One handler per control-room command: what each does to the operator state, and its first
answer.

A handler gets the desk (:class:`Desk`: the operator state, the loop it reads rigs from, and
the desk's helpers), the request as it arrived and as parsed, and who asked. It changes the
operator state only through its methods (daemon/operator_state.py), raises
:class:`~daemon.mqtt.commands.Rejected` naming the problem before changing anything, and
returns its immediate answers. :data:`HANDLERS` maps each request type to its handler; the
desk (daemon/mqtt/desk.py) parses, deduplicates and dispatches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

import structlog

from daemon.loop import ControlLoop
from daemon.mqtt import commands as c
from daemon.mqtt.answers import Answer
from daemon.operator_state import CycleWait, Envelope, OperatorState, Pin, SiteTarget, Wait
from daemon.power import NO_OUTLETS
from market.fetch import FeedError
from market.hashprice import PushedHashprice
from market.power import PushedPrice
from policies.guards import Override
from policies.values import Mode, Observation, QuoteKind, Reading, RigId

log = structlog.get_logger("mqtt.desk")


class Desk(Protocol):
    """What a handler needs of the command desk."""

    @property
    def state(self) -> OperatorState: ...

    @property
    def loop(self) -> ControlLoop: ...

    @property
    def default_timeout_s(self) -> float: ...

    def changed(self) -> None:
        """The operator state changed: the loop should tick without waiting."""

    def answer(
        self,
        env: Envelope,
        tx: str | None,
        status: str,
        reason: str,
        result: Mapping[str, Any] | None = None,
    ) -> Answer: ...

    def resolve(self, req: c.Targeted, tx: str | None = None) -> list[RigId]: ...

    def check_modes(
        self, rigs: Sequence[RigId], mode: Mode, limit: int | None, tx: str | None
    ) -> None: ...

    def status(self, with_rigs: bool) -> dict[str, Any]: ...

    def observed(self, rig_id: RigId) -> Reading | None:
        """The rig as the last tick observed it (None before the first tick)."""


Handler = Callable[[Desk, Envelope, Any, str], list[Answer]]


def listed(items: Sequence[str], most: int = 5) -> str:
    """``items`` comma-separated, the first ``most`` of them and how many more."""
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def checked_until(req: c.PinCommand | c.SiteTargetCommand, now: float) -> float:
    """When a pin or site target ends: ``until``, or ``for_s`` from now; Rejected if that is
    past or more than MAX_PIN_S ahead."""
    until = req.until if req.until is not None else now + (req.for_s or 0.0)
    if until <= now:
        raise c.Rejected("until is in the past", req.transaction)
    if until - now > c.MAX_PIN_S:
        raise c.Rejected(
            f"until is more than {c.MAX_PIN_S / 86400:.0f} days ahead", req.transaction
        )
    return until


# -------------------------------------------------------------------------------------------
# Pins: set, curtail, resume, pin, unpin


def add_pin(
    desk: Desk,
    rigs: Sequence[RigId],
    mode: Mode,
    limit: int | None,
    until: float,
    bypass_dwell: bool,
    by: str,
    req: c.Request,
) -> Pin:
    """Pin ``rigs`` (the newest pin wins: older pins let go of these rigs)."""
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
    pin = desk.state.pin(override, req.transaction)
    desk.changed()
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


def unpinned(desk: Desk, env: Envelope, req: c.Request, rigs: Sequence[RigId], by: str) -> Answer:
    """Hand ``rigs`` back to the policies."""
    released = desk.state.release(rigs)
    desk.changed()
    log.info("pin.released", rigs=len(rigs), released=released, by=by)
    return desk.answer(
        env,
        req.transaction,
        "done",
        f"{released} of {len(rigs)} rig(s) were pinned; the policies decide for them again",
        {"rigs": len(rigs), "released": released},
    )


def pin_and_wait(
    desk: Desk,
    env: Envelope,
    req: c.SetCommand | c.CurtailCommand,
    mode: Mode,
    limit: int | None,
    by: str,
) -> list[Answer]:
    """Pin the request's rigs and answer once they are observed so (``set``, ``curtail``)."""
    rigs = desk.resolve(req)
    now = env.received_at
    until = now + req.for_s
    desk.check_modes(rigs, mode, limit, req.transaction)
    pin = add_pin(desk, rigs, mode, limit, until, req.bypass_dwell, by, req)
    timeout = req.timeout_s or desk.default_timeout_s
    desk.state.wait(
        Wait(env, env.command, req.transaction, now + timeout, now, list(rigs), mode, limit, pin.id)
    )
    return [
        desk.answer(
            env,
            req.transaction,
            "accepted",
            f"{len(rigs)} rig(s) pinned to {mode.value}; answering once observed "
            f"(within {timeout:.0f} s)",
            {"pin": pin.id, "rigs": len(rigs), "until": until, "timeout_s": timeout},
        )
    ]


def handle_set(desk: Desk, env: Envelope, req: c.SetCommand, by: str) -> list[Answer]:
    mode = req.mode.mode()
    if mode is None:  # auto
        return [unpinned(desk, env, req, desk.resolve(req), by)]
    return pin_and_wait(desk, env, req, mode, req.power_limit_w, by)


def handle_curtail(desk: Desk, env: Envelope, req: c.CurtailCommand, by: str) -> list[Answer]:
    return pin_and_wait(desk, env, req, Mode.SLEEP, None, by)


def handle_resume(desk: Desk, env: Envelope, req: c.ResumeCommand, by: str) -> list[Answer]:
    return [unpinned(desk, env, req, desk.resolve(req), by)]


def handle_pin(desk: Desk, env: Envelope, req: c.PinCommand, by: str) -> list[Answer]:
    rigs = desk.resolve(req)
    mode = Mode(req.mode.value)
    until = checked_until(req, env.received_at)
    desk.check_modes(rigs, mode, req.power_limit_w, req.transaction)
    pin = add_pin(desk, rigs, mode, req.power_limit_w, until, req.bypass_dwell, by, req)
    return [
        desk.answer(
            env,
            req.transaction,
            "done",
            f"pinned {len(rigs)} rig(s) to {mode.value}",
            {"pin": pin.id, "rigs": len(rigs), "until": until},
        )
    ]


def handle_unpin(desk: Desk, env: Envelope, req: c.UnpinCommand, by: str) -> list[Answer]:
    if req.pin is not None:
        if not desk.state.unpin(req.pin):
            known = listed(list(desk.state.pins)) or "none"
            raise c.Rejected(f"unknown pin {req.pin!r} (pins: {known})", req.transaction)
        desk.changed()
        return [desk.answer(env, req.transaction, "done", f"pin {req.pin} removed")]
    target = c.Targeted(rig=req.rig, rigs=req.rigs, group=req.group, all=req.all)
    return [unpinned(desk, env, req, desk.resolve(target, req.transaction), by)]


# -------------------------------------------------------------------------------------------
# Site target and market


def handle_site_target(
    desk: Desk, env: Envelope, req: c.SiteTargetCommand, by: str
) -> list[Answer]:
    now = env.received_at
    if req.kw is None:
        old = desk.state.set_site_target(None)
        desk.changed()
        text = f"site target of {old.kw:g} kW cleared" if old else "no site target was set"
        return [desk.answer(env, req.transaction, "done", text)]
    until = checked_until(req, now)
    desk.state.set_site_target(SiteTarget(req.kw, until, by))
    desk.changed()
    log.info("site_target.set", kw=req.kw, until=until, by=by, transaction=req.transaction)
    timeout = min(req.timeout_s or desk.default_timeout_s, until - now)
    desk.state.wait(Wait(env, env.command, req.transaction, now + timeout, now, kw=req.kw))
    return [
        desk.answer(
            env,
            req.transaction,
            "accepted",
            f"site target {req.kw:g} kW until {until:.0f}; answering once the site is "
            f"observed at or under it (within {timeout:.0f} s)",
            {"kw": req.kw, "until": until, "timeout_s": timeout},
        )
    ]


def handle_market_set(desk: Desk, env: Envelope, req: c.MarketSetCommand, by: str) -> list[Answer]:
    now = env.received_at
    try:
        if req.input is c.MarketInput.HASHPRICE:
            quote = PushedHashprice(name="operator", ttl_s=req.for_s).push(req.value, now, by)
        else:
            quote = PushedPrice(name="operator", ttl_s=req.for_s).push(req.value, now, by)
    except FeedError as exc:
        raise c.Rejected(f"{req.input.value}: {exc.problem}", req.transaction) from None
    desk.state.set_price(quote)
    desk.changed()
    return [
        desk.answer(
            env,
            req.transaction,
            "done",
            f"{req.input.value} set to {quote.value:g} {quote.unit} for {req.for_s:.0f} s",
            {"value": quote.value, "unit": quote.unit, "until": now + req.for_s},
        )
    ]


def handle_market_clear(
    desk: Desk, env: Envelope, req: c.MarketClearCommand, by: str
) -> list[Answer]:
    kind = QuoteKind(req.input.value)
    old = desk.state.clear_price(kind)
    desk.changed()
    what = "cleared" if old is not None else "was not set"
    return [desk.answer(env, req.transaction, "done", f"{kind.value} {what}")]


# -------------------------------------------------------------------------------------------
# Status and retry


def handle_status(desk: Desk, env: Envelope, req: c.StatusCommand, by: str) -> list[Answer]:
    return [desk.answer(env, req.transaction, "done", "status", desk.status(req.rigs))]


def handle_retry(desk: Desk, env: Envelope, req: c.RetryCommand, by: str) -> list[Answer]:
    rigs = desk.resolve(req)
    reconciler = desk.loop.reconciler
    stuck = [r for r in rigs if r in reconciler.not_responding]
    for r in rigs:
        reconciler.clear(r)
    desk.changed()
    return [
        desk.answer(
            env,
            req.transaction,
            "done",
            f"{len(stuck)} rig(s) were marked not responding; they will be commanded again",
            {"cleared": stuck},
        )
    ]


# -------------------------------------------------------------------------------------------
# Power cycle


def handle_power_cycle(
    desk: Desk, env: Envelope, req: c.PowerCycleCommand, by: str
) -> list[Answer]:
    """Ask the switches to power-cycle the rigs (daemon/power.py: the same limits and the same
    path as a hung rig's cycle), and answer once each is back. Rejected, naming each rig and
    why, when any may not be cycled now (no outlets, pinned, excluded, out of cycles today,
    its outlets not on); the site's outlets-per-minute budget only makes rigs wait their turn."""
    rigs = desk.resolve(req)
    now = env.received_at
    power = desk.loop.power
    held = desk.loop.pinned_for_cycles(now)
    problems = []
    for rig_id in rigs:
        why = NO_OUTLETS if power is None else power.refusal(rig_id, held, now)
        if why is not None:
            problems.append(f"{rig_id}: {why}")
    if problems:
        raise c.Rejected(
            f"{len(problems)} rig(s) cannot be power-cycled now: {listed(problems)}",
            req.transaction,
        )
    assert power is not None
    timeout = req.timeout_s or desk.default_timeout_s
    hashing = [r for r in rigs if isinstance(o := desk.observed(r), Observation) and o.mining]
    power.request_cycles(rigs, now + timeout)
    desk.state.wait(
        Wait(
            env,
            env.command,
            req.transaction,
            now + timeout,
            now,
            list(rigs),
            cycle=CycleWait(hashing),
        )
    )
    desk.changed()
    log.info("power_cycle.asked", rigs=len(rigs), by=by, transaction=req.transaction)
    return [
        desk.answer(
            env,
            req.transaction,
            "accepted",
            f"{len(rigs)} rig(s) to be power-cycled; answering once each is back"
            f"{' and hashing' if hashing else ''} (within {timeout:.0f} s)",
            {"rigs": len(rigs), "hashing": len(hashing), "timeout_s": timeout},
        )
    ]


HANDLERS: Final[Mapping[type[c.Request], Handler]] = {
    c.SetCommand: handle_set,
    c.CurtailCommand: handle_curtail,
    c.ResumeCommand: handle_resume,
    c.PinCommand: handle_pin,
    c.UnpinCommand: handle_unpin,
    c.SiteTargetCommand: handle_site_target,
    c.MarketSetCommand: handle_market_set,
    c.MarketClearCommand: handle_market_clear,
    c.StatusCommand: handle_status,
    c.RetryCommand: handle_retry,
    c.PowerCycleCommand: handle_power_cycle,
}
"""Each request type's handler (every command in ``commands.COMMANDS`` has one: tested)."""
