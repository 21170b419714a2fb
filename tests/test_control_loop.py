"""The control loop end to end against the simulated fleet, with prices pushed by the test.

The loop's clock is a fake advanced 30 s per tick, and the simulator's clock jumps the same 30 s
ahead (PUT /clock advance_s) instead of the test waiting a wall second at 30x: both see the same
30 s between ticks, and a tick costs only its own work.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import SimFleet
from structlog.testing import capture_logs

from daemon.audit import AuditLog
from daemon.loop import ControlLoop, TickReport
from daemon.observer import Observer, ObserverSettings
from daemon.reconciler import Actuator, Reconciler
from drivers.inventory import Inventory
from market.hashprice import PushedHashprice
from market.power import PushedPrice
from market.service import Market
from policies.api import Intent, MarketView, RigView, Site
from policies.breakeven import BreakevenPolicy
from policies.economics import Economics
from policies.guards import GuardConfig
from policies.values import Mode, QuoteKind, RigId

KEYS = ["m30s+", "s19jpro", "m50s", "s19xp", "m60s", "s21"]  # worst J/TH first
RANK = {Mode.SLEEP: 0, Mode.LOW: 1, Mode.NORMAL: 2, Mode.HIGH: 3}
TERMS = Economics(pool_fee=0.02, overhead=1.0)


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


class Harness:
    def __init__(
        self,
        loop: ControlLoop,
        hashprice: PushedHashprice,
        power: PushedPrice,
        clock: Clock,
        sim: SimFleet,
    ) -> None:
        self.loop, self.hashprice, self.power, self.clock = loop, hashprice, power, clock
        self.sim = sim

    async def tick(self, hashprice: float, power: float = 0.05) -> TickReport:
        """One tick, then 30 s later for the daemon's clock and the rigs' physics alike (the
        simulator's clock jumps ahead rather than the test waiting 1 s of wall time)."""
        self.hashprice.push(hashprice, self.clock.t, "test")
        self.power.push(power, self.clock.t, "test")
        report = await self.loop.tick()
        self.clock.t += 30
        await asyncio.to_thread(self.sim.control.advance_clock, 30)
        return report


async def harness(
    sim: SimFleet,
    tmp_path: Path,
    dry_run: bool,
    min_dwell_s: float = 0.0,
    ramp_kw_per_min: float = 1000.0,
) -> tuple[Harness, list[str]]:
    addresses = [sim.address(k) for k in KEYS]
    inventory = Inventory()
    await inventory.ensure(addresses)
    clock = Clock()
    # 10 s per rig: a bound a loaded machine does not reach (3 s left a first tick unread once)
    observer = Observer(inventory, ObserverSettings(timeout_s=10.0), clock=clock)
    observer.sync_drivers()
    hashprice = PushedHashprice(ttl_s=600)
    power = PushedPrice(ttl_s=600)
    loop = ControlLoop(
        observer=observer,
        market=Market({QuoteKind.HASHPRICE: [hashprice], QuoteKind.POWER_PRICE: [power]}),
        policies=[BreakevenPolicy()],
        site=Site(economics=TERMS),
        guard_config=GuardConfig(
            min_dwell_s=min_dwell_s,
            hysteresis_usd_per_day=0.25,
            ramp_kw_per_min=ramp_kw_per_min,
            ramp_rigs_per_s=10,
            economics=TERMS,
        ),
        reconciler=Reconciler(confirm_deadline_s=120, max_attempts=3),
        actuator=Actuator(observer.drivers, dry_run=dry_run, clock=clock),
        audit=AuditLog(tmp_path / "audit.jsonl"),
        market_refresh_s=0.0,
        clock=clock,
    )
    return Harness(loop, hashprice, power, clock, sim), addresses


async def test_curtails_in_efficiency_order_and_comes_back_ramped(
    sim: SimFleet, tmp_path: Path
) -> None:
    h, addresses = await harness(sim, tmp_path, dry_run=False, ramp_kw_per_min=4.0)
    left_normal: dict[str, int] = {}
    slept: dict[str, int] = {}
    for step, price in enumerate([60, 44, 38, 33, 29, 25, 22, 19, 16]):
        for _ in range(2):
            report = await h.tick(price)
        for address in addresses:
            mode = report.desired[address].mode
            if mode in (Mode.LOW, Mode.SLEEP):  # (Whatsminers may go HIGH while it pays)
                left_normal.setdefault(address, step)
            if mode is Mode.SLEEP:
                slept.setdefault(address, step)
    assert set(slept) == set(addresses), "at $16/PH/day and 5 c/kWh nothing pays"
    order = [left_normal[a] for a in addresses]
    assert order == sorted(order), f"least efficient must be curtailed first: {order}"
    sleep_order = [slept[a] for a in addresses]
    assert sleep_order == sorted(sleep_order), f"least efficient sleep first: {sleep_order}"
    for address in addresses:  # commanded for real, and confirmed by the simulator's truth
        assert (await asyncio.to_thread(sim.control.rig, address))["mode"] == "sleep"
    # The market recovers: back to normal, but not all at once (4 kW per minute)
    raised_per_tick = []
    previous = {a: Mode.SLEEP for a in addresses}
    for _ in range(14):
        report = await h.tick(80)
        now = {a: report.desired[a].mode for a in addresses}
        raised_per_tick.append(
            sum(1 for a in addresses if previous[a] is Mode.SLEEP and now[a] is not Mode.SLEEP)
        )
        previous = now
    assert max(raised_per_tick) == 1, f"power-up must be ramped: {raised_per_tick}"
    assert all(m in (Mode.NORMAL, Mode.HIGH) for m in previous.values()), previous
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {x["kind"] for x in lines} == {"decision", "command_intent", "command", "confirmed"}
    assert all({"ts", "rig", "policy", "dry_run"} <= set(x) for x in lines)
    # Every command's result follows its intent, written before the send.
    intents = [(x["rig"], x["action"]) for x in lines if x["kind"] == "command_intent"]
    results = [(x["rig"], x["action"]) for x in lines if x["kind"] == "command"]
    assert intents == results
    # every rig's sleep was confirmed by observation, one audit line per rig
    confirmed_asleep = {
        x["rig"] for x in lines if x["kind"] == "confirmed" and x["observed"]["mode"] == "sleep"
    }
    assert confirmed_asleep == set(addresses)


class Exploding:
    """A plugin with a bug that shows only sometimes: raises while ``broken``."""

    name = "exploding"

    def __init__(self) -> None:
        self.broken = False
        self.garbage = False

    def decide(
        self, market: MarketView, fleet: Sequence[RigView], site: Site, now: float
    ) -> dict[RigId, Intent]:
        if self.broken:
            raise ZeroDivisionError("the plugin's bug")
        if self.garbage:  # a plugin that answers with something that is not an Intent
            return {rig.rig_id: "sleep" for rig in fleet}  # type: ignore[misc]
        return {}


async def test_a_policy_that_raises_holds_the_fleet_and_the_daemon_goes_on(
    sim: SimFleet, tmp_path: Path
) -> None:
    # A failing policy must not crash the daemon (every tick would, a crash loop), and must not
    # be dropped either (without its opinion the others could raise power it kept down): the
    # tick holds every rig where the guards last put it, logs the failure once, and the
    # fleet moves again when the policy recovers.
    h, addresses = await harness(sim, tmp_path, dry_run=False)
    plugin = Exploding()
    h.loop.policies = [BreakevenPolicy(), plugin]
    for _ in range(3):
        report = await h.tick(16)  # nothing pays: every rig to sleep
    asleep = {a: report.desired[a].setting for a in addresses}
    assert all(s.mode is Mode.SLEEP for s in asleep.values())
    plugin.broken = True
    with capture_logs() as logs:
        for _ in range(3):
            report = await h.tick(80)  # everything pays again, but a policy is failing
            assert report.failed_policies == ("exploding",)
            assert "policy failed: exploding (holding)" in report.summary()
            assert {a: report.desired[a].setting for a in addresses} == asleep
            assert report.commands == 0
        plugin.broken = False
        for _ in range(3):
            report = await h.tick(80)
    assert report.failed_policies == ()
    assert any(report.desired[a].mode is not Mode.SLEEP for a in addresses), "woken again"
    failed = [x for x in logs if x["event"] == "policy.failed"]
    assert len(failed) == 1 and failed[0]["policy"] == "exploding" and failed[0]["exc_info"]
    assert failed[0]["error"] == "ZeroDivisionError: the plugin's bug"
    assert [x["policy"] for x in logs if x["event"] == "policy.recovered"] == ["exploding"]
    # An answer that is not a mapping of Intents is a failure too, named as such.
    plugin.garbage = True
    with capture_logs() as logs:
        report = await h.tick(16)
    assert report.failed_policies == ("exploding",) and report.commands == 0
    (garbage,) = [x for x in logs if x["event"] == "policy.failed"]
    assert garbage["error"].startswith("TypeError: policy 'exploding' returned str for rig")


async def test_no_flapping_while_the_price_hovers_at_break_even(
    sim: SimFleet, tmp_path: Path
) -> None:
    h, addresses = await harness(sim, tmp_path, dry_run=False, min_dwell_s=300)
    changes = dict.fromkeys(addresses, 0)
    last: dict[str, Mode] = {}
    # S19j Pro's normal/low margins cross near $37/PH/day at 5 c/kWh: hover around it
    for i in range(16):
        report = await h.tick(37.0 + (0.6 if i % 2 else -0.6))
        for a in addresses:
            mode = report.desired[a].mode
            if a in last and mode is not last[a]:
                changes[a] += 1
            last[a] = mode
    assert max(changes.values()) <= 2, changes  # 16 ticks x 30 s = 8 min, dwell 5 min


async def test_a_waking_rig_is_not_sent_back_while_it_boots(sim: SimFleet, tmp_path: Path) -> None:
    # No dwell to hide it: a rig booting after a wake-up reports a fraction of its hashrate
    # for a minute or two; judged on that, it would look unprofitable and be sent back down.
    h, addresses = await harness(sim, tmp_path, dry_run=False, min_dwell_s=0.0)
    for _ in range(3):
        report = await h.tick(16)  # nothing pays: all asleep
    assert all(report.desired[a].mode is Mode.SLEEP for a in addresses)
    woke: dict[str, Mode] = {}
    went_back: dict[str, list[str]] = {}
    for _ in range(10):  # 5 minutes just above most rigs' break-even in low or normal
        report = await h.tick(40)
        for a in addresses:
            d = report.desired[a]
            if a not in woke:
                if d.mode is not Mode.SLEEP:
                    woke[a] = d.mode
            elif RANK.get(d.mode, 0) < RANK.get(woke[a], 0):  # sent back down, not a near-tie up
                went_back.setdefault(a, []).append(f"{d.mode.value}: {d.reason}")
    assert set(woke) == set(addresses)
    assert not went_back, went_back


async def test_dry_run_decides_like_live_and_writes_nothing(sim: SimFleet, tmp_path: Path) -> None:
    h, addresses = await harness(sim, tmp_path, dry_run=True)
    before = {
        a: (await asyncio.to_thread(sim.control.rig, a))["counters"]["writes"] for a in addresses
    }
    report = await h.tick(30)
    curtailed = {a for a in addresses if report.desired[a].mode in (Mode.LOW, Mode.SLEEP)}
    assert curtailed, "at $30/PH/day some rigs should be curtailed"
    assert report.commands == len({r.command.rig_id for r in report.results})
    for _ in range(3):
        await h.tick(30)
    for a in addresses:
        truth = await asyncio.to_thread(sim.control.rig, a)
        assert truth["counters"]["writes"] == before[a], a
        assert truth["mode"] == "normal"
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    commands = [x for x in lines if x["kind"] == "command"]
    assert commands and all(x["dry_run"] and x["result"] == "dry_run" for x in commands)
    assert {x["rig"] for x in commands} == curtailed  # the same decisions live would send


@pytest.mark.parametrize("key", ["s21"])
async def test_thermal_protection_outranks_economics(
    sim: SimFleet, tmp_path: Path, key: str
) -> None:
    h, _ = await harness(sim, tmp_path, dry_run=False)
    address = sim.address(key)
    await h.tick(80)
    await asyncio.to_thread(sim.control.set_fault, address, "overheat", extra_c=25)
    modes = []
    for _ in range(8):
        report = await h.tick(80)  # mining pays handsomely: economics says normal
        modes.append(report.desired[address])
    assert any(d.decided_by == "thermal" and d.mode in (Mode.LOW, Mode.SLEEP) for d in modes)


async def test_rigpilot_run_dry_run_from_a_config_file(sim: SimFleet, tmp_path: Path) -> None:
    from daemon.config import load_settings
    from daemon.run import serve

    rigs = "\n".join(f'[[rigs]]\naddress = "{sim.address(k)}"' for k in ["s19jpro", "m50s"])
    config = tmp_path / "rigpilot.toml"
    config.write_text(f"""
state_dir = "{tmp_path / "state"}"
dry_run = true
[control]
tick_s = 1
[[market.hashprice]]
type = "fixed"
value = 25.0
[[market.power]]
type = "fixed"
value_per_kwh = 0.06
{rigs}
""")
    settings = load_settings(config)
    reports: list[TickReport] = []
    assert await serve(settings, settings.dry_run, ticks=2, on_tick=reports.append) == 0
    assert len(reports) == 2 and reports[0].observed == 2
    assert all(d.mode in (Mode.LOW, Mode.SLEEP) for d in reports[-1].desired.values())
    assert (tmp_path / "state" / "rigpilot.db").exists()  # the inventory cache, among others
    audit = (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
    assert any(json.loads(x)["kind"] == "command" for x in audit)
    for k in ["s19jpro", "m50s"]:  # dry-run: nothing was written to the rigs
        assert (await asyncio.to_thread(sim.control.rig, sim.address(k)))["mode"] == "normal"


async def test_a_schedule_window_for_a_group_applies_to_that_group_only(
    sim: SimFleet, tmp_path: Path
) -> None:
    # The groups in [[rigs]] reach the policies: a schedule window for "row-a" sleeps the rig
    # of row-a and leaves row-b's alone, in the daemon as wired from a config file; a reload
    # that moves a rig to another group moves it out of the window.
    from daemon.config import load_settings
    from daemon.notify import Notifier
    from daemon.run import Service, serve

    a, b = sim.address("s19jpro"), sim.address("m50s")

    def config_text(group_of_b: str) -> str:
        return f"""
state_dir = "{tmp_path / "state"}"
dry_run = true
[control]
tick_s = 1
policies = ["schedule"]
[[control.policy_params.schedule]]
name = "row-a maintenance"
start = "00:00"
end = "24:00"
mode = "sleep"
timezone = "UTC"
groups = ["row-a"]
[[market.hashprice]]
type = "fixed"
value = 60.0
[[market.power]]
type = "fixed"
value_per_kwh = 0.03
[[rigs]]
address = "{a}"
group = "row-a"
[[rigs]]
address = "{b}"
group = "{group_of_b}"
"""

    config = tmp_path / "rigpilot.toml"
    config.write_text(config_text("row-b"))
    settings = load_settings(config)
    stop, reload = asyncio.Event(), asyncio.Event()
    reports: list[TickReport] = []
    services: list[Service] = []
    reloads: list[dict[str, Any] | None] = []  # as `rigpilot status` shows them

    def on_tick(report: TickReport) -> None:
        reports.append(report)
        reloads.append(services[0].lifecycle["last_reload"])
        if len(reports) == 1:
            # A reload with a schedule that cannot be used is refused; the running one stays.
            config.write_text(config_text("row-a").replace('"UTC"', '"Mars/Olympus"'))
            reload.set()  # as SIGHUP does
        elif len(reports) == 2:
            config.write_text(config_text("row-a"))  # b moved to row-a
            reload.set()
        elif len(reports) == 3:
            stop.set()

    await serve(
        settings,
        True,
        on_tick=on_tick,
        stop=stop,
        config_path=config,
        reload=reload,
        notifier=Notifier({}),
        on_start=services.append,
    )
    first, refused, moved = reports
    assert first.desired[a].mode is Mode.SLEEP
    assert first.desired[a].decided_by == "schedule"
    assert first.desired[b].mode is Mode.NORMAL  # no window: it keeps what it does
    assert first.desired[b].decided_by != "schedule"
    assert reloads[0] is None and reloads[1] is not None and reloads[2] is not None
    assert not reloads[1]["ok"] and "Mars/Olympus" in reloads[1]["error"]
    assert reloads[2]["ok"] and "rigs" in reloads[2]["changed"]
    assert refused.desired[b].mode is Mode.NORMAL
    assert moved.desired[b].mode is Mode.SLEEP
    assert moved.desired[b].decided_by == "schedule"


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    from daemon.run import check_state_dir

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be created"):
        check_state_dir(blocker / "state")


def test_nearest_safe_mode_never_draws_more() -> None:
    stock = frozenset({Mode.SLEEP, Mode.LOW, Mode.NORMAL})
    assert Mode.HIGH.nearest_safe(stock) is Mode.NORMAL
    assert Mode.LIMIT.nearest_safe(stock) is Mode.LOW
    assert Mode.LOW.nearest_safe(frozenset({Mode.SLEEP, Mode.NORMAL})) is Mode.SLEEP
    assert Mode.NORMAL.nearest_safe(stock) is Mode.NORMAL
    # Never off (a power cut) nor limit (needs a setting) in place of another mode; an
    # unsupported off becomes sleep, not the highest mode the rig has.
    assert Mode.NORMAL.nearest_safe(frozenset({Mode.OFF, Mode.LIMIT})) is Mode.SLEEP
    assert Mode.OFF.nearest_safe(frozenset({Mode.SLEEP, Mode.HIGH})) is Mode.SLEEP
    order = sorted(Mode, key=lambda m: m.power_rank)
    assert order == [
        Mode.OFF, Mode.SLEEP, Mode.LOW, Mode.LIMIT, Mode.NORMAL, Mode.HIGH, Mode.UNKNOWN
    ]  # fmt: skip


async def test_a_hung_price_feed_does_not_hold_up_the_tick(sim: SimFleet, tmp_path: Path) -> None:
    from market.source import Source
    from policies.values import Quote

    class Hung(Source):
        kind, name, ttl_s = QuoteKind.HASHPRICE, "hung", 600.0

        async def fetch(self, now: float) -> Quote:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    h, _ = await harness(sim, tmp_path, dry_run=True)
    h.loop.market = Market({QuoteKind.HASHPRICE: [Hung()], QuoteKind.POWER_PRICE: [h.power]})
    h.loop.market_timeout_s = 0.5
    h.power.push(0.05, h.clock.t, "test")
    started = asyncio.get_running_loop().time()
    report = await h.loop.tick()
    assert asyncio.get_running_loop().time() - started < 5
    assert report.hashprice_usd_per_ph_day is None  # no price: nothing economic happens
    assert all(d.decided_by != "breakeven" for d in report.desired.values())


def test_unknown_policy_is_named_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.run import main

    config = tmp_path / "rigpilot.toml"
    config.write_text(f'state_dir = "{tmp_path}"\n[control]\npolicies = ["brekeven"]\n')
    assert main(["--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "control.policies: unknown policy 'brekeven'" in err and "breakeven" in err


def test_a_bad_schedule_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Checked at start-up, not found by the first tick (which would then fail every tick).
    from daemon.run import main

    config = tmp_path / "rigpilot.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\n[control]\npolicies = ["schedule"]\n'
        '[[control.policy_params.schedule]]\nname = "4cp"\nstart = "16:00"\nend = "17:30"\n'
        'mode = "nap"\ntimezone = "America/Chicago"\n'
    )
    assert main(["--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "control.policy_params (schedule): schedule window 1 ('4cp')" in err
    assert "nap" in err


async def test_a_mode_the_rig_cannot_do_is_sent_as_the_nearest_safe_one(
    sim: SimFleet, tmp_path: Path
) -> None:
    from policies.guards import Override

    h, _ = await harness(sim, tmp_path, dry_run=False)
    stock = sim.address("s19jpro")  # stock Antminer firmware: no power limit
    h.loop.operator.pin(
        Override(
            Mode.LIMIT,
            h.clock.t + 3600,
            "test",
            "cap it",
            frozenset({stock}),
            power_limit_w=2000,
        )
    )
    report = await h.tick(hashprice=80.0)
    assert report.desired[stock].mode is Mode.LIMIT
    [sent] = [r for r in report.results if r.command.rig_id == stock]
    assert sent.command.mode is Mode.LOW and sent.command.power_limit_w is None
    assert "cannot do limit: low instead" in sent.command.reason


async def test_a_stop_mid_ramp_unjournals_the_power_ups_not_yet_sent(
    sim: SimFleet, tmp_path: Path
) -> None:
    from dataclasses import replace

    from daemon.reconciler import Command
    from daemon.run import bounded_tick

    h, addresses = await harness(sim, tmp_path, dry_run=False)
    # Start slots 2 s apart (site time = wall time here: the clock stands still in a tick).
    h.loop.guard_config = replace(h.loop.guard_config, ramp_rigs_per_s=0.5, ramp_horizon_s=30.0)
    for _ in range(3):
        report = await h.tick(16)
    assert all(report.desired[a].mode is Mode.SLEEP for a in addresses)
    journaled: list[list[Command]] = []
    h.loop.journal = lambda commands, now: journaled.append(list(commands))
    writes = {
        a: (await asyncio.to_thread(sim.control.rig, a))["counters"]["writes"] for a in addresses
    }
    h.hashprice.push(80, h.clock.t, "test")
    h.power.push(0.05, h.clock.t, "test")
    await h.loop.market.refresh(h.clock.t)  # a jump is taken once seen twice
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(1.0, stop.set)
    abandoned = await bounded_tick(h.loop, stop, grace_s=2.0)  # slots at +0, +2, +4 ... s
    assert abandoned is None, "the tick was abandoned"
    planned, kept = journaled
    assert len(planned) == len(addresses)  # every rig raised, each at its own slot
    assert 1 <= len(kept) < len(planned)
    sent = set()
    for a in addresses:
        after = (await asyncio.to_thread(sim.control.rig, a))["counters"]["writes"]
        if after > writes[a]:
            sent.add(a)
    assert {c.rig_id for c in kept} == sent  # journaled as in flight: exactly what was sent
    # The audit log's intents (written before sending) carry each power-up's start slot.
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    ups = [x for x in lines if x["kind"] == "command_intent" and x["action"]["mode"] != "sleep"]
    slots = sorted(x["action"].get("not_before", h.clock.t) - h.clock.t for x in ups)
    assert slots == [2.0 * k for k in range(len(addresses))], slots


async def test_retried_power_ups_stay_within_the_ramp(sim: SimFleet, tmp_path: Path) -> None:
    """A wake-up whose commands the rigs ignore is retried; the retries go through the same
    ramp as new power-ups (4 kW a minute: one ~3.5 kW rig at a time, 60 s apart), instead of
    going out at the tick their deadline passes, on top of the guards' new grants."""
    h, addresses = await harness(sim, tmp_path, dry_run=False, ramp_kw_per_min=4.0)
    for _ in range(3):
        report = await h.tick(16)
    assert all(report.desired[a].mode is Mode.SLEEP for a in addresses)
    for _ in range(3):  # confirmed asleep
        await h.tick(16)
    for a in addresses:
        assert (await asyncio.to_thread(sim.control.rig, a))["mode"] == "sleep"
        await asyncio.to_thread(sim.control.set_fault, a, "ignore_writes")
    start = h.clock.t
    for _ in range(12):  # 6 min: every rig granted in turn, each ignores it, some retried
        await h.tick(80)
    for a in addresses:
        await asyncio.to_thread(sim.control.clear_faults, a)
    for _ in range(40):
        await h.tick(80)
        modes = [(await asyncio.to_thread(sim.control.rig, a))["mode"] for a in addresses]
        if all(m in ("normal", "high") for m in modes):
            break
    assert all(m in ("normal", "high") for m in modes), f"every rig wakes in the end: {modes}"
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    ups = [
        x
        for x in lines
        if x["kind"] == "command" and x["ts"] >= start and x["action"]["mode"] != "sleep"
    ]
    assert any(x["action"]["attempt"] > 1 for x in ups), "no power-up was retried"
    starts = sorted(x["action"].get("not_before", x["ts"]) for x in ups)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 60.0, f"power-ups (retries included) less than a minute apart: {gaps}"
