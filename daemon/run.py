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
from typing import Any, Final

import httpx
import structlog

from daemon.audit import AuditLog
from daemon.config import ConfigError, Settings, load_settings, resolve_config_path
from daemon.control_config import ControlSettings
from daemon.gctune import tune_gc
from daemon.lifecycle import Reload, process_doc
from daemon.logsetup import configure_logging
from daemon.loop import ControlLoop, TickReport
from daemon.metrics import Metrics
from daemon.mqtt.bridge import Bridge, package_version
from daemon.mqtt.commands import COMMANDS
from daemon.mqtt.desk import CommandDesk
from daemon.mqtt.topics import Topics
from daemon.notify import Notifier
from daemon.observer import ObserverSettings
from daemon.persist import Persistence
from daemon.power import PowerSwitches
from daemon.prepare import Prepared, prepare, site_of
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
    ValueError naming a bad setting). Every setting reaches it through :func:`configure_loop`,
    the function a reload calls too."""
    prepared = prepared or prepare(settings, client)
    observer = ObserverPool(  # worker processes, started by the first cycle (daemon/workers.py)
        inventory,
        observer_settings(settings.control),
        workers=settings.control.workers,
        clock=clock,
        log_level=settings.log.level,
        log_json=settings.log.json_output,
    )
    observer.sync_drivers()
    loop = ControlLoop(
        observer=observer,
        market=prepared.market,
        policies=prepared.policies,
        site=prepared.site,
        guard_config=prepared.guard_config,
        reconciler=Reconciler(),
        actuator=Actuator(observer.drivers, clock=clock),
        audit=AuditLog(settings.state_dir / "audit.jsonl"),
        clock=clock,
    )
    configure_loop(loop, prepared, dry_run)
    return loop


def observer_settings(control: ControlSettings) -> ObserverSettings:
    return ObserverSettings(
        concurrency=control.observe_concurrency, timeout_s=control.observe_timeout_s
    )


def configure_loop(
    loop: ControlLoop, prepared: Prepared, dry_run: bool, *, new_market: bool = False
) -> None:
    """Give ``loop`` every setting of ``prepared`` it follows: at start (:func:`build_loop`)
    and on reload, the same assignments. ``new_market``: the market sources changed, so take
    ``prepared.market`` (else the running sources keep their cached quotes)."""
    settings, control = prepared.settings, prepared.settings.control
    loop.site = prepared.site
    loop.policies = prepared.policies
    loop.guard_config = prepared.guard_config
    loop.reconciler.confirm_deadline_s = control.confirm_deadline_s
    loop.reconciler.max_attempts = control.max_attempts
    loop.reconciler.stuck_retry_s = control.not_responding_retry_s
    loop.actuator.dry_run = dry_run
    loop.actuator.concurrency = control.command_concurrency
    loop.actuator.timeout_s = control.command_timeout_s
    loop.actuator.max_wait_s = control.tick_s
    loop.observer.settings = observer_settings(control)
    loop.usd_per_unit = settings.market.usd_per_unit
    loop.market_refresh_s = settings.market.refresh_s
    loop.groups = {r.address: r.group for r in settings.rigs}
    # The switches and the rigs' wiring follow the file at once: an outlet re-wired to another
    # rig must never be switched for the old one. What the old switches learnt (off waits,
    # power cycles of the day, rigs needing hands) carries over.
    power = PowerSwitches.from_settings(settings)
    if power is not None and loop.power is not None:
        power.carry_over(loop.power)
    loop.power = power
    loop.actuator.switch = power.switch_rig if power is not None else None
    if new_market:
        loop.use_market(prepared.market)


TickListener = Callable[[TickReport], None]
"""Told of every completed tick, in the order they were added to the service."""


@dataclass
class Service:
    """The running daemon: its parts, built from the configuration by :func:`start`, and
    the configuration they follow (:meth:`configure`, at start and on reload)."""

    settings: Settings
    """The running configuration (restart-only sections as at start)."""
    force_dry_run: bool
    """``--dry-run``: dry-run whatever a reloaded configuration says."""
    client: httpx.AsyncClient
    store: Store
    inventory: Inventory
    loop: ControlLoop
    persistence: Persistence
    progress: Progress
    notifier: Notifier
    lifecycle: dict[str, Any]
    config_path: Path | None = None
    bridge: Bridge | None = None
    metrics: Metrics | None = None
    failures: list[IdentifyFailure] = field(default_factory=list)
    """The rigs that could not be identified (tried again in the background)."""
    listeners: list[TickListener] = field(default_factory=list)
    poke: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a command changed the operator state: tick now rather than at the next beat."""
    ticks: int = 0

    def configure(self, prepared: Prepared, *, new_market: bool = False) -> None:
        """Apply every reloadable setting of ``prepared`` to every part that follows one."""
        settings = prepared.settings
        dry_run = self.force_dry_run or settings.dry_run
        configure_loop(self.loop, prepared, dry_run, new_market=new_market)
        self.progress.follow(settings.control)
        if self.bridge is not None:
            self.bridge.desk.configure(
                {r.address: r.group for r in settings.rigs},
                frozenset(r.address for r in settings.rigs),
            )
        self.settings = settings

    def ticked(self, report: TickReport) -> None:
        """Hand the tick's report to every listener."""
        self.ticks += 1
        for listener in self.listeners:
            listener(report)

    def announce(self, report: TickReport) -> None:
        """The watchdog's progress, and the status line systemd shows (READY at the first)."""
        self.progress.ticked(report)
        if self.ticks == 1:
            self.notifier.ready(report.summary())
            log.info("daemon.ready", note="first complete observation done")
        else:
            self.notifier.status(report.summary())

    def reload_outcome(self, outcome: Reload) -> None:
        """Say how a reload went: status, MQTT bridge/info, metrics (the log says it)."""
        self.lifecycle["last_reload"] = outcome.to_dict()
        self.lifecycle["wedged_after_s"] = self.progress.wedged_after_s
        save_lifecycle(self.store, self.lifecycle)
        if self.bridge is not None:
            self.bridge.update_info(last_reload=outcome.to_dict())
        if self.metrics is not None:
            self.metrics.record_reload(outcome.ok, outcome.at)

    async def reload(self) -> bool:
        """Re-read the configuration file and apply it. Everything it configures is built
        first, by the same validation as start-up and ``config check`` (daemon/prepare.py);
        a configuration that fails anywhere is refused, the running one kept, and the daemon
        carries on. True if it was applied."""
        self.notifier.reloading()
        try:
            new = with_state_directory(load_settings(self.config_path), os.environ)
            prepared = prepare(new, self.client)
        except Exception as exc:  # whatever fails, the running configuration stays
            error = str(exc) if isinstance(exc, ConfigError | ValueError) else repr(exc)
            log.error(
                "config.reload_rejected",
                path=str(self.config_path) if self.config_path else None,
                error=error,
                note="the running configuration is kept",
            )
            self.reload_outcome(Reload(ok=False, at=time.time(), error=error))
            self.notifier.ready("reload rejected; running configuration kept")
            return False
        old = self.settings
        changed = [k for k in type(new).model_fields if getattr(new, k) != getattr(old, k)]
        restart_only = [k for k in RESTART_ONLY if getattr(new, k) != getattr(old, k)]
        kept: dict[str, Any] = {k: getattr(old, k) for k in RESTART_ONLY}
        for dotted in RESTART_ONLY_SETTINGS:
            section, key = dotted.split(".")
            was = getattr(getattr(old, section), key)
            if getattr(getattr(new, section), key) != was:
                restart_only.append(dotted)
            kept[section] = kept.get(section, getattr(new, section)).model_copy(update={key: was})
        if restart_only:
            log.warning("config.needs_restart", sections=restart_only, note="kept as they were")
        new = new.model_copy(update=kept)
        prepared = dataclasses.replace(prepared, settings=new, site=site_of(new))
        if new.rigs != old.rigs:
            await self.identify([r.address for r in new.rigs])
        self.configure(prepared, new_market=new.market != old.market)
        log.info("config.reloaded", changed=changed, dry_run=self.loop.actuator.dry_run)
        self.reload_outcome(Reload(ok=True, at=time.time(), changed=tuple(changed)))
        self.notifier.ready(f"configuration reloaded ({', '.join(changed) or 'no changes'})")
        return True

    async def identify(self, addresses: Sequence[str]) -> None:
        """Make ``addresses`` the rigs this daemon controls: forget the others, identify the
        new ones (the failures are kept to be tried again)."""
        inventory = self.inventory
        for address in [a for a in inventory.addresses() if a not in set(addresses)]:
            inventory.forget(address)
        self.failures = await inventory.ensure(addresses)
        inventory.save()
        self.loop.observer.sync_drivers()


RESTART_ONLY: Final = ("state_dir", "site", "mqtt", "metrics", "log")
"""The configuration's sections a reload does not change (each needs a restart); so is
``control.workers``, the number of observer worker processes."""
RESTART_ONLY_SETTINGS: Final = ("control.workers",)
"""Single settings a reload does not change, inside otherwise reloadable sections."""


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
    on_start: Callable[[Service], None] | None = None,
) -> int:
    """Run ticks every ``control.tick_s`` until ``stop`` is set (or ``ticks`` have run).

    ``reload`` set: re-read ``config_path`` between ticks (SIGHUP). ``force_dry_run`` (the
    ``--dry-run`` flag) keeps dry-run on whatever a reloaded configuration says; so does
    ``dry_run`` where the configuration does not say dry-run. ``on_start``
    is given the service once it is built, before its first tick.
    """
    stop = stop or asyncio.Event()
    reload = reload or asyncio.Event()
    notifier = notifier or Notifier()
    client = httpx.AsyncClient(headers={"User-Agent": "rigpilot"})
    async with client:
        service = await start(settings, dry_run, client, notifier, stop, config_path, force_dry_run)
        if service is None:
            return 0
        if on_tick is not None:
            service.listeners.append(on_tick)
        if on_start is not None:
            on_start(service)
        tasks: list[asyncio.Task[Any]] = []
        try:
            await _launch(service, stop, tasks)
            await _run_ticks(service, stop, reload, ticks)
        finally:
            await _teardown(service, stop, tasks)
    log.info("daemon.stopped", ticks=service.ticks, note="rigs left as they are")
    return 0


async def start(
    settings: Settings,
    dry_run: bool,
    client: httpx.AsyncClient,
    notifier: Notifier,
    stop: asyncio.Event,
    config_path: Path | None = None,
    force_dry_run: bool = False,
) -> Service | None:
    """Build the service from ``settings``: the store, the rigs identified, the loop, the MQTT
    bridge, persistence restored, metrics, and the per-tick listeners. None if ``stop`` was set
    while identifying (rigs left as they are). ValueError naming a bad setting."""
    check_state_dir(settings.state_dir)
    prepared = prepare(settings, client)  # every setting is built now, not after identifying
    try:
        store = Store(settings.state_dir / DB_NAME)
    except StoreError as exc:
        raise ValueError(str(exc)) from None
    try:
        return await _build(
            settings, dry_run, client, notifier, stop, store, prepared, force_dry_run, config_path
        )
    except BaseException:
        store.close()
        raise


async def _build(
    settings: Settings,
    dry_run: bool,
    client: httpx.AsyncClient,
    notifier: Notifier,
    stop: asyncio.Event,
    store: Store,
    prepared: Prepared,
    force_dry_run: bool,
    config_path: Path | None,
) -> Service | None:
    """:func:`start` once the store is open (it closes the store if this raises)."""
    # for `rigpilot status` (daemon/lifecycle.py)
    lifecycle = process_doc(package_version(), settings.control.wedged_after())
    save_lifecycle(store, lifecycle)
    inventory = StoredInventory(store)
    cached = inventory.load()
    failures = await _identify_or_stop(settings, inventory, notifier, stop, cached)
    if failures is None:
        store.close()
        notifier.close()
        log.info("daemon.stopped", ticks=0, note="stopped while identifying; rigs left as they are")
        return None
    log.info(
        "daemon.started",
        rigs=len(inventory.rigs),
        cached=cached,
        unidentified=len(failures),
        dry_run=dry_run,
        policies=settings.control.policies,
    )
    loop = build_loop(settings, dry_run, client, inventory, prepared=prepared)
    service = Service(
        settings=settings,
        # asked for dry-run beyond what the file says (--dry-run): kept whatever a reload says
        force_dry_run=force_dry_run or (dry_run and not settings.dry_run),
        client=client,
        store=store,
        inventory=inventory,
        loop=loop,
        persistence=Persistence(store, loop, package_version()),
        progress=Progress.of(settings.control),
        notifier=notifier,
        lifecycle=lifecycle,
        config_path=config_path,
        failures=failures,
    )
    _wire(service)
    service.configure(prepared)  # as a reload does: one way for settings to reach the parts
    return service


async def _identify_or_stop(
    settings: Settings, inventory: Inventory, notifier: Notifier, stop: asyncio.Event, cached: int
) -> list[IdentifyFailure] | None:
    """Identify the configured rigs (forgetting the others: not ours to control; ``cached``
    known from the store); None if ``stop`` is set meanwhile (SIGTERM while identifying: stop
    now, not after every rig)."""
    addresses = [r.address for r in settings.rigs]
    for address in [a for a in inventory.addresses() if a not in set(addresses)]:
        inventory.forget(address)
    notifier.status(f"identifying {len(addresses)} rigs ({cached} cached)")
    identifying = asyncio.ensure_future(inventory.ensure(addresses))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({identifying, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not identifying.done():
        await _stop_task(identifying)
        return None
    failures = identifying.result()
    for f in failures:
        log.warning("rig.unidentified", address=f.address, reason=f.kind.value, detail=f.detail)
    return failures


def _wire(service: Service) -> None:
    """Connect the parts: MQTT desk and bridge, persistence (restored now), metrics, and the
    per-tick listeners, in the order each tick is handed to them."""
    settings, loop = service.settings, service.loop
    persistence = service.persistence
    if settings.mqtt.enabled:
        service.bridge = build_bridge(settings, loop, service.poke.set)
        service.bridge.desk.persist = persistence.save_commands
        service.bridge.info["last_reload"] = None
    persistence.restore(loop.clock())
    loop.journal = persistence.journal
    loop.cycle_journal = persistence.journal_cycles
    bridge = service.bridge
    if settings.metrics.enabled:
        service.metrics = Metrics(
            per_rig=settings.metrics.per_rig,
            mqtt_connected=(lambda: bridge.connected) if bridge is not None else None,
            mqtt_events_dropped=(lambda: bridge.events_dropped) if bridge is not None else None,
        )
        service.metrics.record_reload(True, service.lifecycle["started_at"])
    service.listeners.append(service.announce)
    if bridge is not None:
        service.listeners.append(bridge.on_tick)
    service.listeners.append(persistence.save_tick)
    if service.metrics is not None:
        metrics = service.metrics
        service.listeners.append(lambda report: metrics.record_tick(report, loop, report.at))


async def _launch(service: Service, stop: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
    """Start what runs beside the ticks, into ``tasks``: the metrics endpoint, the watchdog,
    the MQTT bridge (checked for another instance of this site before any command)."""
    settings = service.settings
    if service.metrics is not None:
        server = service.metrics.serve(settings.metrics.address, settings.metrics.port)
        tasks.append(asyncio.create_task(_close_on_stop(server.close, stop), name="metrics"))
    tune_gc()  # the long-lived heap is built: stop rescanning it (daemon/gctune.py)
    tasks.append(
        asyncio.create_task(_watchdog(service.notifier, service.progress, stop), name="watchdog")
    )
    if service.bridge is not None:
        service.bridge.start()
        tasks.append(asyncio.create_task(service.bridge.run(stop), name="mqtt"))
        await service.bridge.checked()


async def _close_on_stop(close: Callable[[], None], stop: asyncio.Event) -> None:
    try:
        await stop.wait()
    finally:
        close()


async def _run_ticks(
    service: Service, stop: asyncio.Event, reload: asyncio.Event, ticks: int | None
) -> None:
    """Tick until stopped (or ``ticks`` have run): a reload first when asked, each report to
    the listeners, unidentified rigs tried again in the background every
    REIDENTIFY_EVERY_TICKS ticks (a rig that takes its whole identify deadline never delays
    a tick), then the pause to the next beat."""
    reidentify: asyncio.Task[list[IdentifyFailure]] | None = None
    try:
        while not stop.is_set() and (ticks is None or service.ticks < ticks):
            if reload.is_set():  # SIGHUP: before the next tick, so it acts at once
                reload.clear()
                await _stop_task(reidentify)  # the reload identifies afresh
                reidentify = None
                await service.reload()
            started = time.monotonic()
            service.poke.clear()
            control = service.settings.control
            report = await bounded_tick(service.loop, stop, control.stop_grace_s)
            if report is None:
                break  # stopping: the tick in flight was abandoned
            service.ticked(report)
            reidentify = _reidentify(service, reidentify)
            if ticks is not None and service.ticks >= ticks:
                break
            wait_s = control.tick_s - (time.monotonic() - started)
            await _pause(wait_s, stop, service.poke, reload)
    finally:
        await _stop_task(reidentify)


def _reidentify(
    service: Service, task: asyncio.Task[list[IdentifyFailure]] | None
) -> asyncio.Task[list[IdentifyFailure]] | None:
    """The background identification of the rigs that failed it: its result taken when done,
    a new one started every REIDENTIFY_EVERY_TICKS ticks while some still fail."""
    if task is not None and task.done():
        service.failures, task = task.result(), None
        service.loop.observer.sync_drivers()
    if service.failures and task is None and service.ticks % REIDENTIFY_EVERY_TICKS == 0:
        retry = [f.address for f in service.failures]
        task = asyncio.create_task(service.inventory.ensure(retry), name="reidentify")
    return task


async def _teardown(service: Service, stop: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
    """Stop what runs beside the ticks (the bridge gets 10 s to flush), close the audit log,
    record the stop for ``rigpilot status``, close the store. Rigs are left as they are."""
    stop.set()
    for task in tasks:
        if task.get_name() == "watchdog":
            task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 10.0)
    if service.loop.audit is not None:
        service.loop.audit.close()
    await service.loop.observer.close()  # the observer workers
    service.lifecycle["stopped_at"] = time.time()
    save_lifecycle(service.store, service.lifecycle)
    service.store.close()
    service.notifier.close()


async def _stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it (identification stops within a second of its cancel)."""
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 5.0)


async def bounded_tick(loop: ControlLoop, stop: asyncio.Event, grace_s: float) -> TickReport | None:
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


def save_lifecycle(store: Store, lifecycle: dict[str, Any]) -> None:
    """Store the ``process`` document; a failure is logged, never raised (it only informs)."""
    try:
        store.put({"process": lifecycle})
    except Exception as exc:
        log.error("store.process_doc_failed", error=repr(exc))


@dataclass
class Progress:
    """When the loop last completed a tick, and how long without one is wedged (the
    configuration's ``control.wedged_after()``, followed on reload), for the watchdog."""

    wedged_after_s: float
    last: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, control: ControlSettings) -> Progress:
        return cls(control.wedged_after())

    def follow(self, control: ControlSettings) -> None:
        self.wedged_after_s = control.wedged_after()

    def ticked(self, report: TickReport) -> None:
        self.last = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.last < self.wedged_after_s


async def _watchdog(notifier: Notifier, progress: Progress, stop: asyncio.Event) -> None:
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


def handle_signals(stop: asyncio.Event, reload: asyncio.Event, notifier: Notifier) -> None:
    """On the running event loop: SIGINT and SIGTERM set ``stop`` (the tick in flight
    finishes), SIGHUP sets ``reload``."""

    def stopping() -> None:
        if not stop.is_set():
            notifier.stopping()
            log.info("daemon.stopping", note="finishing the tick in flight, then saving")
        stop.set()

    running = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        running.add_signal_handler(sig, stopping)
    running.add_signal_handler(signal.SIGHUP, reload.set)


def main(argv: Sequence[str], log_level: str | None = None, log_json: bool | None = None) -> int:
    """``rigpilot run``. ``log_level`` / ``log_json``: the global command-line options when
    given; they win over the config file's ``[log]``, which applies from start-up on."""
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"rigpilot run: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        level=log_level or settings.log.level,
        json=settings.log.json_output if log_json is None else log_json,
        stream=sys.stderr,
    )
    dry_run = args.dry_run or settings.dry_run
    config_path = resolve_config_path(args.config)
    settings = with_state_directory(settings, os.environ)

    async def go() -> int:
        stop, reload = asyncio.Event(), asyncio.Event()
        notifier = Notifier()
        handle_signals(stop, reload, notifier)
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
