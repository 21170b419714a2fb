"""``rigpilot run``: the daemon — observe, decide, guard and act, tick after tick, until stopped.

Stopping leaves every rig as it is (safety invariant 6); starting again changes nothing until
the first complete observation, which the first tick takes before it decides anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import structlog

from daemon.audit import AuditLog
from daemon.config import ConfigError, Settings, load_settings
from daemon.loop import ControlLoop, TickReport
from daemon.market.config import build_market
from daemon.mqtt.bridge import Bridge, resolve_password, tls_context
from daemon.mqtt.commands import COMMANDS
from daemon.mqtt.desk import CommandDesk
from daemon.mqtt.topics import Topics
from daemon.observer import Observer, ObserverSettings
from daemon.reconciler import Actuator, Reconciler
from drivers.inventory import Inventory
from policies.api import Policy, Site
from policies.registry import PolicyLoadError, load_policy

log = structlog.get_logger("daemon")

REIDENTIFY_EVERY_TICKS = 10


def parser(prog: str = "rigpilot run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run the controller daemon.")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="configuration file (default: $RIGPILOT_CONFIG, then "
        "/etc/rigpilot/rigpilot.toml if it exists)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and log everything, send no write command to any rig",
    )
    p.add_argument("--ticks", type=int, default=None, help=argparse.SUPPRESS)
    return p


def check_state_dir(path: Path) -> None:
    """Create the state directory if needed; ValueError naming it when it is not writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"state directory {path} cannot be created: {exc.strerror}; set "
            "state_dir in the configuration or RIGPILOT_STATE_DIR"
        ) from None
    if not os.access(path, os.W_OK):
        raise ValueError(
            f"state directory {path} is not writable; set state_dir in the "
            "configuration or RIGPILOT_STATE_DIR"
        )


def load_policies(names: Sequence[str]) -> list[Policy]:
    """The configured policies; ValueError naming ``control.policies`` and the bad name."""
    try:
        return [load_policy(name) for name in names]
    except PolicyLoadError as exc:
        raise ValueError(f"control.policies: {exc}") from None


def build_loop(
    settings: Settings,
    dry_run: bool,
    client: httpx.AsyncClient,
    inventory: Inventory,
    clock: Callable[[], float] = time.time,
) -> ControlLoop:
    """Wire the control loop from the configuration (raises ValueError naming a bad setting)."""
    control = settings.control
    observer = Observer(
        inventory,
        ObserverSettings(
            concurrency=control.observe_concurrency, timeout_s=control.observe_timeout_s
        ),
        clock=clock,
    )
    observer.sync_drivers()
    economics = settings.market.economics
    policies = load_policies(control.policies)
    site = Site(
        name=settings.site.name,
        economics=economics,
        power_cap_kw=control.power_cap_kw,
        params=dict(control.policy_params),
    )
    return ControlLoop(
        observer=observer,
        market=build_market(settings.market, client),
        policies=policies,
        site=site,
        guard_config=control.guards.to_config(economics),
        reconciler=Reconciler(
            confirm_deadline_s=control.confirm_deadline_s, max_attempts=control.max_attempts
        ),
        actuator=Actuator(
            observer.drivers,
            dry_run=dry_run,
            concurrency=control.command_concurrency,
            timeout_s=control.command_timeout_s,
            clock=clock,
        ),
        audit=AuditLog(settings.state_dir / "audit.jsonl"),
        usd_per_unit=settings.market.usd_per_unit,
        market_refresh_s=settings.market.refresh_s,
        clock=clock,
    )


async def serve(
    settings: Settings,
    dry_run: bool,
    ticks: int | None = None,
    on_tick: Callable[[TickReport], None] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run ticks every ``control.tick_s`` until ``stop`` is set (or ``ticks`` have run)."""
    check_state_dir(settings.state_dir)
    load_policies(settings.control.policies)  # a typo fails now, not after identification
    if settings.mqtt.enabled:  # so does an unreadable password file or certificate
        resolve_password(settings.mqtt)
        tls_context(settings.mqtt)
    stop = stop or asyncio.Event()
    inventory = Inventory(settings.state_dir / "inventory.json")
    cached = inventory.load()
    addresses = [r.address for r in settings.rigs]
    failures = await inventory.ensure(addresses)
    for f in failures:
        log.warning("rig.unidentified", address=f.address, reason=f.kind.value, detail=f.detail)
    log.info(
        "daemon.started",
        rigs=len(inventory.rigs),
        cached=cached,
        unidentified=len(failures),
        dry_run=dry_run,
        policies=settings.control.policies,
    )
    async with httpx.AsyncClient(headers={"User-Agent": "rigpilot"}) as client:
        loop = build_loop(settings, dry_run, client, inventory)
        poke = asyncio.Event()  # a command changed state: tick now rather than at the next beat
        bridge = build_bridge(settings, loop, poke.set) if settings.mqtt.enabled else None
        bridge_task = None
        if bridge is not None:
            bridge.start()
            bridge_task = asyncio.create_task(bridge.run(stop), name="mqtt")
        count = 0
        try:
            while not stop.is_set() and (ticks is None or count < ticks):
                started = time.monotonic()
                poke.clear()
                report = await loop.tick()
                count += 1
                if bridge is not None:
                    bridge.on_tick(report)
                if on_tick is not None:
                    on_tick(report)
                if failures and count % REIDENTIFY_EVERY_TICKS == 0:
                    failures = await inventory.ensure([f.address for f in failures])
                    loop.observer.sync_drivers()
                if ticks is not None and count >= ticks:
                    break
                await _pause(settings.control.tick_s - (time.monotonic() - started), stop, poke)
        finally:
            stop.set()
            if bridge_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(bridge_task, 10.0)
            if loop.audit is not None:
                loop.audit.close()
    log.info("daemon.stopped", ticks=count, note="rigs left as they are")
    return 0


MIN_TICK_GAP_S = 1.0


async def _pause(wait_s: float, stop: asyncio.Event, poke: asyncio.Event) -> None:
    """Wait for the next tick: ``wait_s``, or less when poked (never under MIN_TICK_GAP_S),
    or until stopped."""
    deadline = time.monotonic() + max(wait_s, 0.0)
    await asyncio.sleep(min(MIN_TICK_GAP_S, max(wait_s, 0.0)))
    while not stop.is_set() and not poke.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(poke.wait())]
        try:
            await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()


def build_bridge(settings: Settings, loop: ControlLoop, poke: Callable[[], None]) -> Bridge:
    """The MQTT bridge and its command desk for ``loop`` (ValueError naming a bad setting)."""
    topics = Topics(settings.mqtt.base_topic, settings.site.name)
    desk = CommandDesk(
        loop=loop,
        site=settings.site.name,
        groups={r.address: r.group for r in settings.rigs},
        configured=frozenset(r.address for r in settings.rigs),
        default_timeout_s=settings.mqtt.command_timeout_s,
        clock=loop.clock,
        on_change=poke,
    )
    return Bridge(
        settings.mqtt,
        topics,
        desk,
        info={
            "site": settings.site.name,
            "rigs": len(settings.rigs),
            "dry_run": loop.actuator.dry_run,
            "policies": list(settings.control.policies),
            "commands": sorted(COMMANDS),
            "requests": topics.request("<command>"),
            "responses": topics.response("<command>"),
        },
        clock=loop.clock,
    )


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"rigpilot run: {exc}", file=sys.stderr)
        return 2
    dry_run = args.dry_run or settings.dry_run

    async def go() -> int:
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(sig, stop.set)
        return await serve(settings, dry_run, args.ticks, stop=stop)

    try:
        return asyncio.run(go())
    except ValueError as exc:
        print(f"rigpilot run: {exc}", file=sys.stderr)
        return 2
