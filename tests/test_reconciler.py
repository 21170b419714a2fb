"""Reconciler and actuator: differences only, confirm by observation, retry, give up, dry-run."""

from __future__ import annotations

import asyncio
import json
import time

from conftest import SimFleet
from helpers import observation
from structlog.testing import capture_logs

from daemon.observer import Observer, ObserverSettings
from daemon.reconciler import Actuator, Command, CommandResult, Outcome, Reconciler, Target
from drivers.inventory import Inventory
from policies.values import (
    FailureKind,
    Mode,
    Observation,
    ObservationFailure,
    Reading,
)


def obs(rig: str, mode: Mode, mining: bool = True) -> Observation:
    return observation(rig, mode, ths=100.0 if mining else 0.0, source=None)


def target(rig: str, mode: Mode) -> Target:
    return Target(rig, mode, None, "test", "breakeven")


def sent(cmds: list[Command], at: float, outcome: Outcome = Outcome.SENT) -> list[CommandResult]:
    return [CommandResult(c, outcome, "", at) for c in cmds]


def test_only_differences_are_commanded_and_only_observed_rigs() -> None:
    rec = Reconciler()
    readings: dict[str, Reading] = {
        "a": obs("a", Mode.NORMAL),
        "b": obs("b", Mode.SLEEP, mining=False),
        "c": ObservationFailure("c", FailureKind.TIMEOUT, "no answer", 0.0),
    }
    targets = {r: target(r, Mode.SLEEP) for r in "abc"}
    cmds = rec.plan(targets, readings, 0.0)
    assert [(c.rig_id, c.mode, c.attempt) for c in cmds] == [("a", Mode.SLEEP, 1)]


def test_a_lazy_reason_is_written_only_for_a_command() -> None:
    # The loop hands the guards' reasons on unformatted; only commands (and the audit) read them.
    written: list[str] = []

    def explain(rig: str) -> str:
        written.append(rig)
        return f"policy says sleep: {rig}"

    readings: dict[str, Reading] = {
        "a": obs("a", Mode.NORMAL),
        "b": obs("b", Mode.SLEEP, mining=False),
    }
    targets = {r: Target(r, Mode.SLEEP, None, (explain, r), "breakeven") for r in "ab"}
    cmds = Reconciler().plan(targets, readings, 0.0)
    assert [(c.rig_id, c.reason) for c in cmds] == [("a", "policy says sleep: a")]
    assert written == ["a"]  # b is already asleep: its reason was never needed


def test_waits_for_confirmation_then_retries_then_gives_up() -> None:
    rec = Reconciler(confirm_deadline_s=60, max_attempts=3)
    readings: dict[str, Reading] = {"a": obs("a", Mode.NORMAL)}
    targets = {"a": target("a", Mode.SLEEP)}
    now = 0.0
    attempts = []
    for _ in range(16):
        cmds = rec.plan(targets, readings, now)
        attempts += [c.attempt for c in cmds]
        rec.record(sent(cmds, now))
        now += 30
    assert attempts == [1, 2, 3]  # at 0, 60 and 180 s: the wait doubles; given up at 420 s
    assert "a" in rec.not_responding
    assert rec.plan(targets, readings, now) == []  # reported, and left alone
    # a new target for the rig is tried again
    cmds = rec.plan({"a": target("a", Mode.LOW)}, readings, now)
    assert [(c.mode, c.attempt) for c in cmds] == [(Mode.LOW, 1)]


def test_a_rig_marked_not_responding_is_tried_again_now_and_then_until_seen() -> None:
    rec = Reconciler(confirm_deadline_s=60, max_attempts=1, stuck_retry_s=1800)
    targets = {"a": target("a", Mode.NORMAL)}
    asleep: dict[str, Reading] = {"a": obs("a", Mode.SLEEP, mining=False)}
    rec.record(sent(rec.plan(targets, asleep, 0.0), 0.0))
    assert rec.plan(targets, asleep, 60.0) == [] and "a" in rec.not_responding  # marked at 60
    tries = []
    for now in range(90, 4000, 30):
        cmds = rec.plan(targets, asleep, float(now))
        if now == 1860:  # the ramp postponed this one: not sent, so not counted as a try
            assert len(cmds) == 1
            continue
        with capture_logs() as logs:
            rec.record(sent(cmds, float(now)))
        tries += [(now, c.attempt) for c in cmds]
        assert ("rig.not_responding_retry" in {e["event"] for e in logs}) == bool(cmds)
        assert "a" in rec.not_responding  # still reported while it does not follow
    assert tries == [(1890, 2), (3690, 2)]  # every 30 min, one send each
    # Persisted with when it was last tried: a restart does not try at once.
    again = Reconciler(stuck_retry_s=1800)
    again.restore(json.loads(json.dumps(rec.to_dict())))
    assert again.plan(targets, asleep, 3700.0) == []
    assert [c.rig_id for c in again.plan(targets, asleep, 5490.0)] == ["a"]
    # Seen in its target at last: confirmed as recovered, the mark is gone.
    assert rec.plan(targets, {"a": obs("a", Mode.NORMAL)}, 4000.0) == []
    assert rec.confirmed[0].recovered and not rec.not_responding and not rec.stuck_since


def test_not_responding_retry_can_be_turned_off() -> None:
    rec = Reconciler(confirm_deadline_s=60, max_attempts=1, stuck_retry_s=0)
    targets = {"a": target("a", Mode.NORMAL)}
    asleep: dict[str, Reading] = {"a": obs("a", Mode.SLEEP, mining=False)}
    rec.record(sent(rec.plan(targets, asleep, 0.0), 0.0))
    assert rec.plan(targets, asleep, 60.0) == []
    assert rec.plan(targets, asleep, 1e7) == [] and "a" in rec.not_responding


def test_confirmation_clears_the_pending_command() -> None:
    rec = Reconciler(confirm_deadline_s=60)
    targets = {"a": target("a", Mode.SLEEP)}
    rec.record(sent(rec.plan(targets, {"a": obs("a", Mode.NORMAL)}, 0.0), 0.0))
    assert rec.pending
    assert rec.plan(targets, {"a": obs("a", Mode.SLEEP, mining=False)}, 10.0) == []
    assert not rec.pending and not rec.not_responding


def test_confirmations_are_one_log_line_per_plan_with_the_rigs_kept_for_the_audit() -> None:
    rec = Reconciler(confirm_deadline_s=60, max_attempts=1)
    rigs = [f"r{i}" for i in range(12)]
    targets = {r: target(r, Mode.SLEEP) for r in rigs}
    awake: dict[str, Reading] = {r: obs(r, Mode.NORMAL) for r in rigs}
    rec.record(sent(rec.plan(targets, awake, 0.0), 0.0))
    rec.plan(targets, awake, 61.0)  # r0..r11 each had their one attempt: not responding
    assert len(rec.not_responding) == 12
    readings = dict(awake)
    readings.update({r: obs(r, Mode.SLEEP, mining=False) for r in rigs[:3]})
    rec.record(sent(rec.plan({"r3": target("r3", Mode.LOW)}, readings, 62.0), 62.0))
    with capture_logs() as logs:
        rec.plan(targets, readings, 63.0)
    assert [x["event"] for x in logs] == ["commands.confirmed"]
    assert logs[0]["confirmed"] == 3 and logs[0]["recovered"] == 3
    assert logs[0]["rigs"] == ["r0", "r1", "r2"]  # named while few
    assert [(c.rig_id, c.recovered) for c in rec.confirmed] == [(r, True) for r in rigs[:3]]

    asleep: dict[str, Reading] = {r: obs(r, Mode.SLEEP, mining=False) for r in rigs}
    with capture_logs() as logs:
        rec.plan(targets, asleep, 64.0)
    assert [x["event"] for x in logs] == ["commands.confirmed"]  # one line, not nine
    assert logs[0]["confirmed"] == 9 and logs[0]["by_mode"] == {"sleep": 9}
    assert "rigs" in logs[0]
    assert len(rec.confirmed) == 9
    assert rec.plan(targets, asleep, 65.0) == [] and rec.confirmed == []
    rec2 = Reconciler()
    many = {f"m{i}": target(f"m{i}", Mode.SLEEP) for i in range(20)}
    rec2.record(sent(rec2.plan(many, {m: obs(m, Mode.NORMAL) for m in many}, 0.0), 0.0))
    with capture_logs() as logs:
        rec2.plan(many, {m: obs(m, Mode.SLEEP, mining=False) for m in many}, 1.0)
    assert len(logs) == 1 and logs[0]["confirmed"] == 20 and "rigs" not in logs[0]
    assert {c.attempts for c in rec2.confirmed} == {1}


def test_failed_send_retries_sooner_and_dry_run_never_retries() -> None:
    rec = Reconciler(confirm_deadline_s=600, base_backoff_s=20)
    targets = {"a": target("a", Mode.SLEEP), "b": target("b", Mode.SLEEP)}
    readings: dict[str, Reading] = {"a": obs("a", Mode.NORMAL), "b": obs("b", Mode.NORMAL)}
    cmds = rec.plan(targets, readings, 0.0)
    rec.record(
        [
            CommandResult(cmds[0], Outcome.FAILED, "unreachable", 0.0),
            CommandResult(cmds[1], Outcome.DRY_RUN, "", 0.0),
        ]
    )
    again = rec.plan(targets, readings, 25.0)
    assert [(c.rig_id, c.attempt) for c in again] == [("a", 2)]
    later = rec.plan(targets, readings, 1e9)  # b was never sent: never "retried"
    assert [(c.rig_id, c.attempt) for c in later] == [("a", 2)]


def test_unsupported_mode_is_not_asked_again() -> None:
    rec = Reconciler()
    targets = {"a": target("a", Mode.HIGH)}
    readings: dict[str, Reading] = {"a": obs("a", Mode.NORMAL)}
    cmds = rec.plan(targets, readings, 0.0)
    rec.record(sent(cmds, 0.0, Outcome.UNSUPPORTED))
    assert rec.plan(targets, readings, 1e6) == []
    again = Reconciler()  # not even now and then, after a restart
    again.restore(json.loads(json.dumps(rec.to_dict())))
    assert again.plan(targets, readings, 1e7) == []


async def _fleet(sim: SimFleet, keys: list[str]) -> tuple[Observer, list[str]]:
    addresses = [sim.address(k) for k in keys]
    inventory = Inventory()
    await inventory.ensure(addresses)
    return Observer(inventory, ObserverSettings(timeout_s=3.0)), addresses


async def test_live_commands_are_confirmed_and_a_stubborn_rig_does_not_block(sim: SimFleet) -> None:
    observer, addresses = await _fleet(sim, ["s19jpro", "s21", "m30s+", "m50s"])
    stubborn = addresses[0]
    await asyncio.to_thread(sim.control.set_fault, stubborn, "ignore_writes")
    rec = Reconciler(confirm_deadline_s=2.0, max_attempts=2)
    act = Actuator(observer.drivers, dry_run=False)
    targets = {a: target(a, Mode.SLEEP) for a in addresses}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cycle = await observer.cycle()
        results = await act.send(rec.plan(targets, cycle.readings, time.time()))
        rec.record(results)
        if stubborn in rec.not_responding and not rec.pending:
            break
        await asyncio.sleep(0.5)
    assert stubborn in rec.not_responding
    for address in addresses[1:]:
        truth = await asyncio.to_thread(sim.control.rig, address)
        assert truth["mode"] == "sleep", address
    stubborn_truth = await asyncio.to_thread(sim.control.rig, stubborn)
    assert stubborn_truth["mode"] == "normal"
    assert stubborn_truth["counters"]["writes"] >= 2  # it was asked, twice, then left alone


async def test_dry_run_sends_no_write_and_decides_the_same(sim: SimFleet) -> None:
    observer, addresses = await _fleet(sim, ["s19xp", "m60s", "m60s-v3"])
    before = {
        a: (await asyncio.to_thread(sim.control.rig, a))["counters"]["writes"] for a in addresses
    }
    rec = Reconciler()
    act = Actuator(observer.drivers, dry_run=True)
    targets = {a: target(a, Mode.SLEEP) for a in addresses}
    cycle = await observer.cycle()
    planned = rec.plan(targets, cycle.readings, time.time())
    results = await act.send(planned)
    rec.record(results)
    assert {c.rig_id for c in planned} == set(addresses)  # the same decisions as live
    assert all(r.outcome is Outcome.DRY_RUN for r in results)
    cycle = await observer.cycle()
    assert rec.plan(targets, cycle.readings, time.time() + 3600) == []
    for address in addresses:
        truth = await asyncio.to_thread(sim.control.rig, address)
        assert truth["counters"]["writes"] == before[address]
        assert truth["mode"] == "normal"


def test_unknown_target_means_leave_alone() -> None:
    rec = Reconciler()
    readings: dict[str, Reading] = {"a": obs("a", Mode.NORMAL)}
    assert rec.plan({"a": target("a", Mode.UNKNOWN)}, readings, 0.0) == []


def test_a_target_s_start_slot_reaches_its_command() -> None:
    rec = Reconciler()
    slot = Target("a", Mode.NORMAL, None, "test", "breakeven", not_before=123.5)
    cmds = rec.plan({"a": slot}, {"a": obs("a", Mode.SLEEP, mining=False)}, 100.0)
    assert [c.not_before for c in cmds] == [123.5]


async def test_power_ups_are_sent_at_their_start_slots_and_never_hold_up_the_rest(
    sim: SimFleet,
) -> None:
    observer, addresses = await _fleet(sim, ["s19jpro", "s21", "m30s+", "m50s"])
    writes = {
        a: (await asyncio.to_thread(sim.control.rig, a))["counters"]["writes"] for a in addresses
    }
    await observer.cycle()
    act = Actuator(observer.drivers, dry_run=False, concurrency=2)
    t0 = time.time()
    # Given late slots first: the actuator sends what is due now first, then slot by slot.
    slots = [t0 + 1.5, t0 + 0.75, None, t0 + 0.5]
    cmds = [
        Command(a, Mode.LOW, None, "test", "breakeven", 1, not_before=s)
        for a, s in zip(addresses, slots, strict=True)
    ]
    results = await act.send(cmds)
    assert [r.command for r in results] == cmds  # answers keep the order given
    assert all(r.outcome is Outcome.SENT for r in results), results
    # Due now first, then slot by slot; none before its slot.
    assert act.started == [cmds[2], cmds[3], cmds[1], cmds[0]]
    assert results[2].at - t0 < 0.5, "the command due now waited for the others' slots"
    for r, s in zip(results, slots, strict=True):
        if s is not None:
            assert s <= r.at < s + 5.0, (r.command.rig_id, r.at - t0)
    for address in addresses:
        after = (await asyncio.to_thread(sim.control.rig, address))["counters"]["writes"]
        assert after > writes[address], address
    await act.send([Command(a, Mode.NORMAL, None, "test", "test", 1) for a in addresses])


async def test_dry_run_does_not_wait_for_start_slots(sim: SimFleet) -> None:
    observer, addresses = await _fleet(sim, ["s19jpro"])
    await observer.cycle()
    act = Actuator(observer.drivers, dry_run=True)
    t0 = time.monotonic()
    cmd = Command(addresses[0], Mode.LOW, None, "test", "breakeven", 1, time.time() + 30)
    (result,) = await act.send([cmd])
    assert result.outcome is Outcome.DRY_RUN
    assert time.monotonic() - t0 < 5.0


async def test_a_clock_stepped_back_does_not_hold_a_start_slot_for_the_step(sim: SimFleet) -> None:
    observer, addresses = await _fleet(sim, ["s19jpro"])
    await observer.cycle()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    t0 = time.time()
    stepped_back = lambda: t0 - 3600.0  # noqa: E731 (the wall clock stepped back an hour)
    act = Actuator(observer.drivers, dry_run=False, clock=stepped_back, sleep=sleep, max_wait_s=30)
    cmd = Command(addresses[0], Mode.LOW, None, "test", "breakeven", 1, not_before=t0 + 5.0)
    (result,) = await act.send([cmd])
    assert result.outcome is Outcome.SENT
    assert waits == [30.0]
    await act.send([Command(addresses[0], Mode.NORMAL, None, "test", "test", 1)])


def test_a_power_limit_is_shown_by_the_reported_limit_in_any_power_mode() -> None:
    from dataclasses import replace

    from daemon.reconciler import satisfied, shown

    want = Target("w1", Mode.LIMIT, 2800, "pin", "desk")
    at_limit = replace(obs("w1", Mode.NORMAL), power_limit_w=2800)
    assert satisfied(want, at_limit)  # a Whatsminer keeps its power mode under a limit
    assert satisfied(want, replace(at_limit, mode=Mode.LOW))
    assert satisfied(want, replace(at_limit, mode=Mode.LIMIT))
    assert not satisfied(want, replace(at_limit, power_limit_w=3600))
    assert not satisfied(want, replace(at_limit, power_limit_w=None))
    asleep = replace(obs("w1", Mode.SLEEP, mining=False), power_limit_w=2800)
    assert not satisfied(want, asleep)  # the limit is set, but the rig is not running
    assert shown(want, replace(at_limit, power_limit_w=3600)) == "normal at power limit 3600 W"
    assert shown(want, asleep) == "sleep"
    # nothing is sent to a rig already at its limit
    assert Reconciler().plan({"w1": want}, {"w1": at_limit}, 0.0) == []
