"""A reload reaches every part of the running daemon: every reloadable setting is changed in the
configuration file, SIGHUP is sent to the process, and the running service is checked to use
each new value (the watchdog's wedged deadline included). The daemon is `serve` with the signal
handlers `rigpilot run` installs, a real config file, the simulated fleet and a real broker (the
command desk follows the rigs' groups)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker import Broker
from conftest import SimFleet
from helpers import KEYS, write_config
from mqtt_client import daemon_settings
from pydantic import BaseModel

from daemon.config import Settings, load_settings
from daemon.loop import TickReport
from daemon.notify import Notifier
from daemon.power import CycleRules
from daemon.run import RESTART_ONLY, RESTART_ONLY_SETTINGS, Service, handle_signals, serve
from policies.guards import FailSafe
from policies.values import QuoteKind

# Every reloadable setting, as the first and the second configuration file set it.
FIRST = """
[control]
tick_s = 1
policies = ["breakeven"]
observe_timeout_s = 2
observe_concurrency = 8
command_concurrency = 8
command_timeout_s = 2
confirm_deadline_s = 20
max_attempts = 3
not_responding_retry_s = 100
stop_grace_s = 5
[control.guards]
thermal_limit_c = 90
thermal_critical_c = 95
thermal_resume_c = 80
stale_failsafe = "hold"
min_dwell_s = 0
hysteresis_usd_per_day = 0.25
ramp_kw_per_min = 100000
ramp_rigs_per_s = 100
thermal_cut = true
thermal_cut_after_s = 120
[control.off]
prefer_off = true
min_asleep_s = 1800
standby_w = 0
silent_wait_s = 600
[market]
pool_fee = 0.02
overhead = 1.0
currency = "USD"
usd_per_unit = 1.0
refresh_s = 60
[[market.hashprice]]
type = "fixed"
value = 60.0
[[market.power]]
type = "fixed"
value_per_kwh = 0.03
[[switches]]
name = "pdu-a"
kind = "apc"
address = "127.2.0.1"
[power_cycle]
enabled = false
after_s = 600
max_per_rig_per_day = 2
max_outlets_per_minute = 4
exclude_groups = []
"""

SECOND = """
[control]
tick_s = 2
policies = ["breakeven", "schedule"]
power_cap_kw = 10000
observe_timeout_s = 3
observe_concurrency = 16
command_concurrency = 16
command_timeout_s = 3
confirm_deadline_s = 40
max_attempts = 5
not_responding_retry_s = 200
stop_grace_s = 7
wedged_after_s = 600
[[control.policy_params.schedule]]
name = "nobody's maintenance"
start = "00:00"
end = "24:00"
mode = "sleep"
timezone = "UTC"
groups = ["nobody"]
[control.guards]
thermal_limit_c = 88
thermal_critical_c = 93
thermal_resume_c = 78
stale_failsafe = "sleep"
min_dwell_s = 60
hysteresis_usd_per_day = 0.5
ramp_kw_per_min = 50000
ramp_rigs_per_s = 50
thermal_cut = false
thermal_cut_after_s = 300
[control.off]
prefer_off = false
min_asleep_s = 900
standby_w = 1.5
silent_wait_s = 300
[market]
pool_fee = 0.03
overhead = 1.1
currency = "EUR"
usd_per_unit = 1.25
refresh_s = 120
[[market.hashprice]]
type = "fixed"
value = 70.0
[[market.power]]
type = "fixed"
value_per_kwh = 0.04
[[switches]]
name = "pdu-b"
kind = "raritan"
address = "127.2.0.2"
[power_cycle]
enabled = true
after_s = 1200
max_per_rig_per_day = 3
max_outlets_per_minute = 6
exclude_groups = ["row-b"]
"""

Check = Callable[[Service, TickReport], Any]


def desk_rigs(service: Service) -> tuple[dict[str, str], list[str]]:
    """The rigs the command desk resolves requests against, and their groups."""
    assert service.bridge is not None
    desk = service.bridge.desk
    return dict(desk.groups), sorted(desk.configured)


def power_rules(service: Service) -> CycleRules:
    assert service.loop.power is not None
    return service.loop.power.cycle_rules


def off_wait_s(service: Service) -> float:
    assert service.loop.power is not None
    return service.loop.power.off_wait_s


def checks(a: str, b: str, c: str) -> dict[str, tuple[Check, Any, Any]]:
    """What the running service uses for each setting, and the value expected from FIRST and
    from SECOND (written by hand), for rigs ``a``, ``b`` (and ``c``, added by SECOND). A setting
    added to the configuration fails test_every_reloadable_setting_is_checked until it has a
    line here."""
    first_groups = {a: "row-a", b: "row-a"}
    second_groups = {a: "row-a", b: "row-b", c: "row-b"}
    return {
        "dry_run": (lambda s, r: s.loop.actuator.dry_run, True, False),
        "rigs": (
            lambda s, r: (sorted(s.loop.observer.drivers), s.loop.groups, desk_rigs(s)),
            (sorted([a, b]), first_groups, (first_groups, sorted([a, b]))),
            (sorted([a, b, c]), second_groups, (second_groups, sorted([a, b, c]))),
        ),
        "control.tick_s": (
            lambda s, r: (
                s.settings.control.tick_s,  # the pause between ticks
                s.loop.actuator.max_wait_s,
                s.loop.guard_config.ramp_horizon_s,
            ),
            (1.0, 1.0, 1.0),
            (2.0, 2.0, 2.0),
        ),
        "control.policies": (
            lambda s, r: [p.name for p in s.loop.policies],
            ["breakeven"],
            ["breakeven", "schedule"],
        ),
        "control.power_cap_kw": (lambda s, r: s.loop.site.power_cap_kw, None, 10000.0),
        "control.observe_timeout_s": (lambda s, r: s.loop.observer.settings.timeout_s, 2.0, 3.0),
        "control.observe_concurrency": (lambda s, r: s.loop.observer.settings.concurrency, 8, 16),
        "control.command_concurrency": (lambda s, r: s.loop.actuator.concurrency, 8, 16),
        "control.command_timeout_s": (lambda s, r: s.loop.actuator.timeout_s, 2.0, 3.0),
        "control.confirm_deadline_s": (
            lambda s, r: s.loop.reconciler.confirm_deadline_s,
            20.0,
            40.0,
        ),
        "control.max_attempts": (lambda s, r: s.loop.reconciler.max_attempts, 3, 5),
        "control.not_responding_retry_s": (
            lambda s, r: s.loop.reconciler.stuck_retry_s,
            100.0,
            200.0,
        ),
        "control.stop_grace_s": (lambda s, r: s.settings.control.stop_grace_s, 5.0, 7.0),
        "control.wedged_after_s": (
            # the watchdog's deadline, and what `rigpilot status` is told of it
            lambda s, r: (s.progress.wedged_after_s, s.lifecycle["wedged_after_s"]),
            (120.0, 120.0),  # the default: three ticks, at least 120 s
            (600.0, 600.0),
        ),
        "control.policy_params": (
            lambda s, r: sorted(s.loop.site.params),
            [],
            ["schedule"],
        ),
        "control.guards.thermal_limit_c": (
            lambda s, r: s.loop.guard_config.thermal_limit_c,
            90,
            88,
        ),
        "control.guards.thermal_critical_c": (
            lambda s, r: s.loop.guard_config.thermal_critical_c,
            95,
            93,
        ),
        "control.guards.thermal_resume_c": (
            lambda s, r: s.loop.guard_config.thermal_resume_c,
            80,
            78,
        ),
        "control.guards.stale_failsafe": (
            lambda s, r: s.loop.guard_config.stale_failsafe,
            FailSafe.HOLD,
            FailSafe.SLEEP,
        ),
        "control.guards.min_dwell_s": (lambda s, r: s.loop.guard_config.min_dwell_s, 0, 60),
        "control.guards.thermal_cut": (lambda s, r: s.loop.guard_config.thermal_cut, True, False),
        "control.guards.thermal_cut_after_s": (
            lambda s, r: s.loop.guard_config.thermal_cut_after_s,
            120.0,
            300.0,
        ),
        "control.off.prefer_off": (lambda s, r: s.loop.guard_config.off.enabled, True, False),
        "control.off.min_asleep_s": (
            lambda s, r: s.loop.guard_config.off.min_asleep_s,
            1800.0,
            900.0,
        ),
        "control.off.standby_w": (lambda s, r: s.loop.guard_config.off.standby_w, 0.0, 1.5),
        "control.off.silent_wait_s": (lambda s, r: off_wait_s(s), 600.0, 300.0),
        "control.guards.hysteresis_usd_per_day": (
            lambda s, r: s.loop.guard_config.hysteresis_usd_per_day,
            0.25,
            0.5,
        ),
        "control.guards.ramp_kw_per_min": (
            lambda s, r: s.loop.guard_config.ramp_kw_per_min,
            100000,
            50000,
        ),
        "control.guards.ramp_rigs_per_s": (
            lambda s, r: s.loop.guard_config.ramp_rigs_per_s,
            100,
            50,
        ),
        "market.pool_fee": (
            lambda s, r: (s.loop.site.economics.pool_fee, s.loop.guard_config.economics.pool_fee),
            (0.02, 0.02),
            (0.03, 0.03),
        ),
        "market.overhead": (
            lambda s, r: (s.loop.site.economics.overhead, s.loop.guard_config.economics.overhead),
            (1.0, 1.0),
            (1.1, 1.1),
        ),
        "market.currency": (
            lambda s, r: s.loop.market.state(r.at).quotes[QuoteKind.POWER_PRICE].unit,
            "USD/kWh",
            "EUR/kWh",
        ),
        "market.usd_per_unit": (
            lambda s, r: (s.loop.usd_per_unit, round(r.power_price_usd_per_kwh or 0.0, 6)),
            (1.0, 0.03),
            (1.25, 0.05),  # 0.04 EUR/kWh at 1.25 USD per EUR
        ),
        "market.refresh_s": (lambda s, r: s.loop.market_refresh_s, 60.0, 120.0),
        # The switches and the wiring follow at once (an outlet moved to another rig must not
        # be switched for the old one), and the actuator switches through the new ones.
        "switches": (
            lambda s, r: (
                sorted(s.loop.power.switches) if s.loop.power else None,
                dict(s.loop.power.wiring) if s.loop.power else None,
                s.loop.power is not None
                and getattr(s.loop.actuator.switch, "__self__", None) is s.loop.power,
            ),
            (["pdu-a"], {a: (("pdu-a", 1),)}, True),
            (["pdu-b"], {a: (("pdu-b", 2),)}, True),
        ),
        "power_cycle.enabled": (lambda s, r: power_rules(s).enabled, False, True),
        "power_cycle.after_s": (lambda s, r: power_rules(s).after_s, 600.0, 1200.0),
        "power_cycle.max_per_rig_per_day": (
            lambda s, r: power_rules(s).max_per_rig_per_day,
            2,
            3,
        ),
        "power_cycle.max_outlets_per_minute": (
            lambda s, r: power_rules(s).max_outlets_per_minute,
            4,
            6,
        ),
        "power_cycle.exclude_groups": (
            lambda s, r: sorted(power_rules(s).excluded),
            [],
            sorted([b, c]),
        ),
        "market.hashprice": (lambda s, r: r.hashprice_usd_per_ph_day, 60.0, 70.0),
        "market.power": (
            lambda s, r: s.loop.market.state(r.at).quotes[QuoteKind.POWER_PRICE].value,
            0.03,
            0.04,
        ),
    }


def reloadable(model: type[BaseModel] = Settings, prefix: str = "") -> set[str]:
    """Every setting a reload applies: each leaf of the configuration's sections but the
    restart-only ones (a section is a model; anything else is one setting)."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        if (not prefix and name in RESTART_ONLY) or prefix + name in RESTART_ONLY_SETTINGS:
            continue
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out |= reloadable(kind, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def test_every_reloadable_setting_is_checked() -> None:
    assert reloadable() == set(checks("a", "b", "c"))


async def test_a_sighup_applies_every_reloadable_setting(
    broker: Broker, sim: SimFleet, tmp_path: Path
) -> None:
    a, b, c = sim.address("s19jpro"), sim.address("m50s"), sim.address("s19xp")
    settings = daemon_settings(tmp_path, broker, "reload-all", {a: "row-a", b: "row-a"})
    config = tmp_path / "rigpilot.toml"
    # The file as daemon_settings wrote it, up to its [control]: the state directory, [site]
    # and [mqtt] (restart-only), then each test configuration.
    head = config.read_text().split("[control]")[0]
    assert "dry_run = false\n" in head
    first_head = head.replace("dry_run = false\n", "dry_run = true\n")
    rigs_first = (
        f'[[rigs]]\naddress = "{a}"\ngroup = "row-a"\noutlets = ["pdu-a:1"]\n'
        f'[[rigs]]\naddress = "{b}"\ngroup = "row-a"\n'
    )
    rigs_second = (
        f'[[rigs]]\naddress = "{a}"\ngroup = "row-a"\noutlets = ["pdu-b:2"]\n'
        f'[[rigs]]\naddress = "{b}"\ngroup = "row-b"\n'
        f'[[rigs]]\naddress = "{c}"\ngroup = "row-b"\n'
    )
    config.write_text(first_head + FIRST + rigs_first)
    settings = load_settings(config)
    expect = checks(a, b, c)
    stop, reload = asyncio.Event(), asyncio.Event()
    services: list[Service] = []
    seen: list[dict[str, Any]] = []

    def started(service: Service) -> None:
        services.append(service)
        handle_signals(stop, reload, Notifier({}))  # as `rigpilot run` does

    def on_tick(report: TickReport) -> None:
        service = services[0]
        if not seen:
            seen.append({k: check(service, report) for k, (check, _, _) in expect.items()})
            config.write_text(head + SECOND + rigs_second)
            os.kill(os.getpid(), signal.SIGHUP)
        elif service.lifecycle.get("last_reload"):
            # The first tick after the reload: a tick can still come before the event loop
            # has handled the signal (an early tick after a command), which shows the old values.
            seen.append({k: check(service, report) for k, (check, _, _) in expect.items()})
            stop.set()

    try:
        await asyncio.wait_for(
            serve(
                settings,
                True,
                on_tick=on_tick,
                stop=stop,
                config_path=config,
                reload=reload,
                on_start=started,
            ),
            120,
        )
    finally:
        running = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            running.remove_signal_handler(sig)
    before, after = seen
    for key, (_, first, second) in expect.items():
        assert before[key] == first, (key, before[key])
        assert after[key] == second, (key, after[key])
    assert services[0].lifecycle["last_reload"]["ok"] is True


async def test_dry_run_asked_at_start_survives_a_reload(sim: SimFleet, tmp_path: Path) -> None:
    """`rigpilot run --dry-run` on a file without dry-run: a reload of that file (which says
    nothing of dry-run) keeps the daemon in dry-run."""
    config = write_config(tmp_path / "rigpilot.toml", sim, keys=KEYS[:1])
    settings = load_settings(config)
    assert settings.dry_run is False
    stop, reload = asyncio.Event(), asyncio.Event()
    services: list[Service] = []
    dry: list[bool] = []

    def on_tick(report: TickReport) -> None:
        dry.append(services[0].loop.actuator.dry_run)
        if len(dry) == 1:
            reload.set()
        elif len(dry) == 2:
            stop.set()

    await asyncio.wait_for(
        serve(
            settings,
            True,
            on_tick=on_tick,
            stop=stop,
            config_path=config,
            reload=reload,
            on_start=services.append,
        ),
        60,
    )
    assert dry == [True, True]
    assert services[0].lifecycle["last_reload"]["ok"] is True
