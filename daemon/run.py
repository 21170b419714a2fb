"""``rigpilot run``: the daemon — observe, decide, guard and act, tick after tick, until stopped.

Stopping leaves every rig as it is (safety invariant 6); starting again changes nothing until
the first complete observation, which the first tick takes before it decides anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from daemon.audit import AuditLog
from daemon.config import ConfigError, Settings, load_settings, resolve_config_path
from daemon.control_config import ControlSettings
from daemon.gctune import tune_gc
from daemon.lifecycle import Reload, process_doc
from daemon.loop import ControlLoop, TickReport
from daemon.metrics import Metrics
from daemon.mqtt.bridge import Bridge, package_version
from daemon.mqtt.commands import COMMANDS
from daemon.mqtt.desk import CommandDesk
from daemon.mqtt.topics import Topics
from daemon.notify import Notifier
from daemon.observer import ObserverSettings
from daemon.persist import Persistence
from daemon.prepare import Prepared, prepare
from daemon.reconciler import Actuator, Reconciler
from daemon.statelock import state_lock
from daemon.store import DB_NAME, Store, StoredInventory, StoreError
from daemon.workers import ObserverPool
from drivers.inventory import IdentifyFailure, Inventory

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


def build_loop(
    settings: Settings,
    dry_run: bool,
    client: httpx.AsyncClient,
    inventory: Inventory,
    clock: Callable[[], float] = time.time,
    prepared: Prepared | None = None,
) -> ControlLoop:
    """Wire the control loop from the configuration, as ``prepared`` from it (raises
    ValueError naming a bad setting)."""
    prepared = prepared or prepare(settings, client)
    control = settings.control
    observer = ObserverPool(  # worker processes, started by the first cycle (daemon/workers.py)
        inventory,
        ObserverSettings(
            concurrency=control.observe_concurrency, timeout_s=control.observe_timeout_s
        ),
        workers=control.workers,
        clock=clock,
        log_level=settings.log.level,
        log_json=settings.log.json_output,
    )
    observer.sync_drivers()
    return ControlLoop(
        observer=observer,
        market=prepared.market,
        policies=prepared.policies,
        site=prepared.site,
        guard_config=prepared.guard_config,
        reconciler=Reconciler(
            confirm_deadline_s=control.confirm_deadline_s,
            max_attempts=control.max_attempts,
            stuck_retry_s=control.not_responding_retry_s,
        ),
        actuator=Actuator(
            observer.drivers,
            dry_run=dry_run,
            concurrency=control.command_concurrency,
            timeout_s=control.command_timeout_s,
            clock=clock,
            max_wait_s=control.tick_s,
        ),
        audit=AuditLog(settings.state_dir / "audit.jsonl"),
        usd_per_unit=settings.market.usd_per_unit,
        market_refresh_s=settings.market.refresh_s,
        groups={r.address: r.group for r in settings.rigs},
        clock=clock,
    )


async def serve(
    settings: Settings,
    dry_run: bool,
    ticks: int | None = None,
    on_tick: Callable[[TickReport], None] | None = None,
    stop: asyncio.Event | None = None,
    *,
    config_path: Path | None = None,
    reload: asyncio.Event | None = None,
    notifier: Notifier | None = None,
    force_dry_run: bool = False,
) -> int:
    """Run ticks every ``control.tick_s`` until ``stop`` is set (or ``ticks`` have run).

    ``reload`` set: re-read ``config_path`` between ticks (SIGHUP). ``force_dry_run`` (the
    ``--dry-run`` flag) keeps dry-run on whatever a reloaded configuration says.
    """
    check_state_dir(settings.state_dir)
    client = httpx.AsyncClient(headers={"User-Agent": "rigpilot"})
    try:  # every setting is built now, not after identification (daemon/prepare.py)
        prepared = prepare(settings, client)
    except ValueError:
        await client.aclose()
        raise
    stop = stop or asyncio.Event()
    reload = reload or asyncio.Event()
    notifier = notifier or Notifier()
    try:
        store = Store(settings.state_dir / DB_NAME)
    except StoreError as exc:
        await client.aclose()
        raise ValueError(str(exc)) from None
    # for `rigpilot status` (daemon/lifecycle.py)
    lifecycle = process_doc(package_version(), settings.control.wedged_after())
    _save_lifecycle(store, lifecycle)
    inventory = StoredInventory(store, legacy_file=settings.state_dir / "inventory.json")
    cached = inventory.load()
    addresses = [r.address for r in settings.rigs]
    for address in [a for a in inventory.addresses() if a not in set(addresses)]:
        inventory.forget(address)  # no longer configured: not ours to control
    notifier.status(f"identifying {len(addresses)} rigs ({cached} cached)")
    identifying = asyncio.ensure_future(inventory.ensure(addresses))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({identifying, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not identifying.done():  # SIGTERM while identifying: stop now, not after every rig
        await _stop_task(identifying)
        store.close()
        notifier.close()
        log.info("daemon.stopped", ticks=0, note="stopped while identifying; rigs left as they are")
        return 0
    failures = identifying.result()
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
    async with client:
        loop = build_loop(settings, dry_run, client, inventory, prepared=prepared)
        poke = asyncio.Event()  # a command changed state: tick now rather than at the next beat
        bridge = build_bridge(settings, loop, poke.set) if settings.mqtt.enabled else None
        desk = bridge.desk if bridge is not None else None
        persistence = Persistence(store, loop, desk, package_version())
        persistence.restore(loop.clock())
        loop.journal = persistence.journal
        if desk is not None:
            desk.persist = persistence.save_commands
        metrics = (
            Metrics(
                per_rig=settings.metrics.per_rig,
                mqtt_connected=(lambda: bridge.connected) if bridge is not None else None,
            )
            if settings.metrics.enabled
            else None
        )
        metrics_server = (
            metrics.serve(settings.metrics.address, settings.metrics.port) if metrics else None
        )
        if bridge is not None:
            bridge.info["last_reload"] = None
        if metrics is not None:
            metrics.record_reload(True, lifecycle["started_at"])

        def reloaded(outcome: Reload) -> None:
            """Say how a reload went: status, MQTT bridge/info, metrics (the log says it)."""
            lifecycle["last_reload"] = outcome.to_dict()
            lifecycle["wedged_after_s"] = progress.wedged_after_s
            _save_lifecycle(store, lifecycle)
            if bridge is not None:
                bridge.update_info(last_reload=outcome.to_dict())
            if metrics is not None:
                metrics.record_reload(outcome.ok, outcome.at)

        tune_gc()  # the long-lived heap is built: stop rescanning it (daemon/gctune.py)
        progress = _Progress.of(settings.control)
        watchdog = asyncio.create_task(_watchdog(notifier, progress, stop), name="watchdog")
        bridge_task = None
        if bridge is not None:
            bridge.start()
            bridge_task = asyncio.create_task(bridge.run(stop), name="mqtt")
            await bridge.checked()  # another instance of this site? (before any command)
        count = 0
        # Rigs that could not be identified are tried again every REIDENTIFY_EVERY_TICKS ticks,
        # in the background: a rig that takes its whole identify deadline never delays a tick.
        reidentify: asyncio.Task[list[IdentifyFailure]] | None = None
        try:
            while not stop.is_set() and (ticks is None or count < ticks):
                if reload.is_set():  # SIGHUP: before the next tick, so it acts at once
                    reload.clear()
                    await _stop_task(reidentify)  # the reload identifies afresh
                    reidentify = None
                    settings, failures = await _reload(
                        settings,
                        config_path,
                        loop,
                        desk,
                        inventory,
                        notifier,
                        force_dry_run,
                        failures,
                        progress,
                        client,
                        on_outcome=reloaded,
                    )
                started = time.monotonic()
                poke.clear()
                report = await _bounded_tick(loop, stop, settings.control.stop_grace_s)
                if report is None:
                    break  # stopping: the tick in flight was abandoned
                count += 1
                progress.ticked(report)
                if count == 1:
                    notifier.ready(report.summary())
                    log.info("daemon.ready", note="first complete observation done")
                else:
                    notifier.status(report.summary())
                if bridge is not None:
                    bridge.on_tick(report)
                persistence.save_tick(report)
                if metrics is not None:
                    metrics.record_tick(report, loop, report.at)
                if on_tick is not None:
                    on_tick(report)
                if reidentify is not None and reidentify.done():
                    failures, reidentify = reidentify.result(), None
                    loop.observer.sync_drivers()
                if failures and reidentify is None and count % REIDENTIFY_EVERY_TICKS == 0:
                    retry = [f.address for f in failures]
                    reidentify = asyncio.create_task(inventory.ensure(retry), name="reidentify")
                if ticks is not None and count >= ticks:
                    break
                await _pause(
                    settings.control.tick_s - (time.monotonic() - started), stop, poke, reload
                )
        finally:
            stop.set()
            await _stop_task(reidentify)
            watchdog.cancel()
            if bridge_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(bridge_task, 10.0)
            if metrics_server is not None:
                metrics_server.close()
            if loop.audit is not None:
                loop.audit.close()
            await loop.observer.close()  # the observer workers
            lifecycle["stopped_at"] = time.time()
            _save_lifecycle(store, lifecycle)
            store.close()
            notifier.close()
    log.info("daemon.stopped", ticks=count, note="rigs left as they are")
    return 0


async def _stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it (identification stops within a second of its cancel)."""
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 5.0)


async def _bounded_tick(
    loop: ControlLoop, stop: asyncio.Event, grace_s: float
) -> TickReport | None:
    """One tick; when ``stop`` is set meanwhile, the tick gets ``grace_s`` more to finish its
    commands, then is abandoned (None). Commands whose send began stay journaled and are
    confirmed by observation after the next start; the others are taken out of the journal."""
    tick = asyncio.ensure_future(loop.tick())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({tick, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not tick.done():
            done, _ = await asyncio.wait({tick}, timeout=grace_s)
            if not done:
                tick.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await tick
                try:
                    loop.abandoned()
                except Exception:
                    log.exception("journal.failed", note="unsent commands stay journaled")
                log.warning(
                    "daemon.tick_abandoned",
                    grace_s=grace_s,
                    sends_begun=len(loop.actuator.started),
                )
                return None
        return tick.result()
    finally:
        stopper.cancel()


def _save_lifecycle(store: Store, lifecycle: dict[str, Any]) -> None:
    """Store the ``process`` document; a failure is logged, never raised (it only informs)."""
    try:
        store.put({"process": lifecycle})
    except Exception as exc:
        log.error("store.process_doc_failed", error=repr(exc))


@dataclass
class _Progress:
    """When the loop last completed a tick, and how long without one is wedged (the
    configuration's ``control.wedged_after()``, followed on reload), for the watchdog."""

    wedged_after_s: float
    last: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, control: ControlSettings) -> _Progress:
        return cls(control.wedged_after())

    def follow(self, control: ControlSettings) -> None:
        self.wedged_after_s = control.wedged_after()

    def ticked(self, report: TickReport) -> None:
        self.last = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.last < self.wedged_after_s


async def _watchdog(notifier: Notifier, progress: _Progress, stop: asyncio.Event) -> None:
    """WATCHDOG=1 at half systemd's interval, but only while ticks complete: a wedged loop
    goes silent and systemd restarts the daemon."""
    if notifier.watchdog_s is None:
        return
    interval = notifier.watchdog_s / 2
    silent = False
    while not stop.is_set():
        if progress.alive():
            notifier.watchdog()
            if silent:
                log.info("watchdog.resumed")
                silent = False
        elif not silent:
            log.error(
                "watchdog.silent",
                since_last_tick_s=round(time.monotonic() - progress.last, 1),
                note="the control loop is not completing ticks; systemd will restart us",
            )
            silent = True
        await asyncio.sleep(interval)


async def _reload(
    settings: Settings,
    config_path: Path | None,
    loop: ControlLoop,
    desk: CommandDesk | None,
    inventory: Inventory,
    notifier: Notifier,
    force_dry_run: bool,
    failures: list[IdentifyFailure],
    progress: _Progress,
    client: httpx.AsyncClient,
    *,
    on_outcome: Callable[[Reload], None] | None = None,
) -> tuple[Settings, list[IdentifyFailure]]:
    """Apply a re-read configuration. Everything it configures is built first, by the same
    validation as start-up and ``config check`` (daemon/prepare.py); a configuration that
    fails anywhere is refused, the running one kept, and the daemon carries on. ``on_outcome``
    is told how it went."""
    notifier.reloading()
    try:
        new = with_state_directory(load_settings(config_path), os.environ)
        prepared = prepare(new, client)
    except Exception as exc:  # whatever fails, the running configuration stays
        error = str(exc) if isinstance(exc, ConfigError | ValueError) else repr(exc)
        log.error(
            "config.reload_rejected",
            path=str(config_path) if config_path else None,
            error=error,
            note="the running configuration is kept",
        )
        if on_outcome is not None:
            on_outcome(Reload(ok=False, at=time.time(), error=error))
        notifier.ready("reload rejected; running configuration kept")
        return settings, failures
    restart_only = [
        key
        for key in ("state_dir", "site", "mqtt", "metrics", "log")
        if getattr(new, key) != getattr(settings, key)
    ]
    changed = [k for k in type(new).model_fields if getattr(new, k) != getattr(settings, k)]
    control = new.control
    loop.site = dataclasses.replace(prepared.site, name=settings.site.name)  # [site]: restart
    loop.policies = prepared.policies
    loop.guard_config = prepared.guard_config
    loop.reconciler.confirm_deadline_s = control.confirm_deadline_s
    loop.reconciler.max_attempts = control.max_attempts
    loop.reconciler.stuck_retry_s = control.not_responding_retry_s
    loop.actuator.dry_run = force_dry_run or new.dry_run
    loop.actuator.concurrency = control.command_concurrency
    loop.actuator.timeout_s = control.command_timeout_s
    loop.actuator.max_wait_s = control.tick_s
    loop.observer.settings = ObserverSettings(
        concurrency=control.observe_concurrency, timeout_s=control.observe_timeout_s
    )
    if new.market != settings.market:  # else the running sources keep their cached quotes
        manual = loop.market.manual
        loop.market = prepared.market
        loop.market.manual.update(manual)
        loop.usd_per_unit = new.market.usd_per_unit
        loop.market_refresh_s = new.market.refresh_s
        loop.force_market_refresh()
    progress.follow(control)
    if new.rigs != settings.rigs:
        addresses = [r.address for r in new.rigs]
        for address in [a for a in inventory.addresses() if a not in set(addresses)]:
            inventory.forget(address)
        failures = await inventory.ensure(addresses)
        inventory.save()
        loop.observer.sync_drivers()
        loop.groups = {r.address: r.group for r in new.rigs}
        if desk is not None:
            desk.groups = {r.address: r.group for r in new.rigs}
            desk.configured = frozenset(addresses)
    if restart_only:
        log.warning("config.needs_restart", sections=restart_only, note="kept as they were")
        new = new.model_copy(update={k: getattr(settings, k) for k in restart_only})
    log.info("config.reloaded", changed=changed, dry_run=loop.actuator.dry_run)
    if on_outcome is not None:
        on_outcome(Reload(ok=True, at=time.time(), changed=tuple(changed)))
    notifier.ready(f"configuration reloaded ({', '.join(changed) or 'no changes'})")
    return new, failures


MIN_TICK_GAP_S = 1.0


async def _pause(
    wait_s: float, stop: asyncio.Event, poke: asyncio.Event, reload: asyncio.Event
) -> None:
    """Wait for the next tick: ``wait_s``, or less when poked or asked to reload (never under
    MIN_TICK_GAP_S), or until stopped."""
    deadline = time.monotonic() + max(wait_s, 0.0)
    await asyncio.sleep(min(MIN_TICK_GAP_S, max(wait_s, 0.0)))
    while not stop.is_set() and not poke.is_set() and not reload.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        waiters = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(poke.wait()),
            asyncio.ensure_future(reload.wait()),
        ]
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


def with_state_directory(settings: Settings, env: Mapping[str, str]) -> Settings:
    """systemd's ``$STATE_DIRECTORY`` (the first, if several) unless ``state_dir`` is set."""
    state_directory = env.get("STATE_DIRECTORY", "")
    if state_directory and "state_dir" not in settings.model_fields_set:
        return settings.model_copy(update={"state_dir": Path(state_directory.split(":")[0])})
    return settings


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"rigpilot run: {exc}", file=sys.stderr)
        return 2
    dry_run = args.dry_run or settings.dry_run
    config_path = resolve_config_path(args.config)
    settings = with_state_directory(settings, os.environ)

    async def go() -> int:
        stop, reload = asyncio.Event(), asyncio.Event()
        notifier = Notifier()

        def stopping() -> None:
            if not stop.is_set():
                notifier.stopping()
                log.info("daemon.stopping", note="finishing the tick in flight, then saving")
            stop.set()

        running = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(sig, stopping)
        running.add_signal_handler(signal.SIGHUP, reload.set)
        return await serve(
            settings,
            dry_run,
            args.ticks,
            stop=stop,
            config_path=config_path,
            reload=reload,
            notifier=notifier,
            force_dry_run=args.dry_run,
        )

    try:
        with state_lock(settings.state_dir):  # one controller per state directory
            return asyncio.run(go())
    except ValueError as exc:
        print(f"rigpilot run: {exc}", file=sys.stderr)
        return 2
