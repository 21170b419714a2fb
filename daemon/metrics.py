"""Prometheus metrics: what each tick saw and did, for scraping at ``/metrics`` (docs/metrics.md).

- One registry of our own, never prometheus_client's global one, so two daemons (or tests) in
  one process never collide.
- :meth:`Metrics.record_tick` runs on the event loop after each tick and only takes a
  snapshot of plain numbers (and bumps the counters and histograms); the exposition is built
  from the last snapshot when Prometheus scrapes, on the HTTP server's thread. The snapshot is
  replaced whole under a lock, so a scrape never sees half a tick, and a rig that leaves the
  fleet leaves the exposition with the next tick.
- Base units throughout: seconds, watts, degrees Celsius, hashes per second. Prices keep the
  units they are traded in (USD per PH/s per day, USD per kWh, USD per day): money has no SI
  base unit, and USD per joule would be a number nobody reads; the unit is in the name.
- Per-rig series (``per_rig``) carry only ``rig`` and ``model`` so that arithmetic between
  them (watts / hashes per second) needs no ``ignoring(...)``; make, firmware and driver are
  on ``rigpilot_rig_info`` (value 1), to be joined with ``* on(rig) group_left(...)``.
- Figures mirror what the MQTT bridge publishes: margin, curtailed watts and the fleet's
  break-even come from daemon/mqtt/state.py, not a second copy of the arithmetic.
"""

from __future__ import annotations

import bisect
import errno
import gzip
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from daemon.efficiency import RigEfficiency, Shown, shown
from daemon.exposition import escape, gauge_family
from daemon.mqtt.state import CURTAILED, Prices, curtailed_kw, fleet_state, margin_usd_per_day
from drivers.catalogue import ModelEntry
from policies.guards import Desired
from policies.values import (
    FailureKind,
    Identity,
    Mode,
    Observation,
    ObservationFailure,
    PowerSource,
    Reading,
    RigId,
)

if TYPE_CHECKING:
    from daemon.loop import ControlLoop, TickReport
    from drivers.base import RigDriver

__all__ = ["DURATION_BUCKETS_S", "Metrics", "MetricsServer"]

DURATION_BUCKETS_S: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
    30.0,
    60.0,
)
"""Buckets of the observation and tick duration histograms (seconds)."""

TH = 1e12  # hashes per second in one TH/s
_MODES = tuple(m.value for m in Mode)
_FAILURES = tuple(k.value for k in FailureKind)


# -------------------------------------------------------------------------------------------
# What one tick leaves behind (plain, immutable; rendered on the scrape thread)


@dataclass(frozen=True, slots=True)
class RigsSnapshot:
    """What the per-rig series are rendered from: the tick's own immutable values, referenced
    rather than copied, so that the per-rig work is done by the scrape, not the event loop."""

    readings: Mapping[RigId, Reading]
    desired: Mapping[RigId, Desired]
    identities: Mapping[RigId, Identity]
    stuck: frozenset[RigId]
    prices: Prices
    efficiency: Mapping[RigId, RigEfficiency] = field(default_factory=dict)
    """The rigs' learned efficiencies (a copy of the loop's mapping, whose values are
    immutable), with ``entries`` their catalogue entries: shown by the scrape."""
    entries: Mapping[RigId, ModelEntry | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    site: str
    dry_run: bool
    held: bool
    conflict: bool
    rigs: int
    observed: int
    hashing: int
    curtailed: int
    not_responding: int
    power_estimated: int
    held_back: int
    unreadable: Mapping[str, int]
    implausible: int
    modes: Mapping[str, int]
    desired_modes: Mapping[str, int]
    hashrate_hs: float
    power_w: float
    curtailed_w: float
    hashprice_usd_per_phs_day: float | None
    power_price_usd_per_kwh: float | None
    breakeven_usd_per_phs_day: float | None
    quotes: tuple[tuple[str, str, float, float], ...]  # kind, source, age_s, ttl_s
    sources: tuple[tuple[str, str, bool | None, float | None], ...]  # name, kind, ok, last
    pins: int
    policies: tuple[tuple[str, bool], ...]  # (name, failed this tick)
    site_target_w: float | None
    site_power_cap_w: float | None
    per_rig: RigsSnapshot | None


@dataclass(slots=True)
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((_le(bound), float(cumulative)))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)


# -------------------------------------------------------------------------------------------
# The HTTP endpoint


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class MetricsServer:
    """The ``/metrics`` HTTP server running on its own daemon thread; :meth:`close` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False

    @property
    def server_port(self) -> int:
        """The port actually bound (useful when asked for port 0)."""
        return int(self._server.server_port)

    @property
    def server_address(self) -> str:
        return str(self._server.server_address[0])

    def close(self) -> None:
        """Stop serving, release the socket and join the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -------------------------------------------------------------------------------------------
# The metrics


def listen_error(address: str, port: int, exc: OSError) -> str:
    """One line for an operator: why ``[metrics]`` cannot listen, and what to do."""
    where = f"[metrics] port {port} on address {address}"
    if isinstance(exc, socket.gaierror):  # its errno is a resolver code, not an OS one
        return f"{where}: not a usable address ({exc.strerror}): fix [metrics] address"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where}: already in use (another program, or another rigpilot, listens there): "
            "stop it or choose another [metrics] port (RIGPILOT_METRICS__PORT)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {address} is not an address of this machine: set [metrics] address "
            "to one of its addresses (127.0.0.1 for this machine only, 0.0.0.0 for all)"
        )
    if exc.errno == errno.EACCES:
        return (
            f"{where}: permission denied (ports below 1024 need privileges the service "
            "does not have): choose a [metrics] port of 1024 or above"
        )
    return f"{where}: cannot listen: {exc.strerror or exc}: fix [metrics] or disable it"


class Metrics(Collector):
    """rigpilot's Prometheus metrics, fed once per tick by :meth:`record_tick`.

    ``per_rig=False`` leaves out every series labelled with a rig (for very large fleets);
    the fleet totals and the per-mode counts stay. ``process`` adds the standard
    ``process_*`` and ``python_*`` collectors to the registry. ``mqtt_connected`` and
    ``mqtt_events_dropped``, if given, are called at each scrape (on the HTTP thread: they must
    only read a flag or a counter).
    """

    def __init__(
        self,
        *,
        per_rig: bool = True,
        registry: CollectorRegistry | None = None,
        process: bool = True,
        mqtt_connected: Callable[[], bool] | None = None,
        mqtt_events_dropped: Callable[[], int] | None = None,
    ) -> None:
        self.per_rig = per_rig
        self.registry = registry if registry is not None else CollectorRegistry()
        self.mqtt_connected = mqtt_connected
        self.mqtt_events_dropped = mqtt_events_dropped
        self._version = _package_version()
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._rig_cache: tuple[RigsSnapshot, bytes] | None = None
        self._last_desired: dict[RigId, tuple[Mode, int | None]] = {}
        self._decisions: dict[tuple[str, str], int] = {}  # (by, mode)
        self._commands: dict[tuple[str, str, str], int] = {}  # (outcome, driver, mode)
        self._power_cycles: dict[str, int] = {}  # by outcome (daemon/power.py)
        self._thermal_cuts: dict[str, int] = {}  # by outcome (daemon/power.py)
        self._needs_hands: int | None = None
        self._observe_s = _Histogram(DURATION_BUCKETS_S)
        self._tick_s = _Histogram(DURATION_BUCKETS_S)
        self._reload: tuple[bool, float | None] | None = None  # (ok, last success)
        self.registry.register(self)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # ---------------------------------------------------------------------------------------
    # Feeding

    def record_reload(self, ok: bool, at: float) -> None:
        """A configuration was loaded (at start, ``ok``) or reloaded at ``at``."""
        with self._lock:
            last_ok = self._reload[1] if self._reload is not None else None
            self._reload = (ok, at if ok else last_ok)

    def record_tick(self, report: TickReport, loop: ControlLoop, now: float) -> None:
        """Take what ``report`` (from ``loop``'s last tick) says, as of ``now``. Never raises
        for a missing figure: what is unknown is left out of the exposition."""
        drivers = loop.observer.drivers
        stuck = loop.reconciler.not_responding
        economics = loop.site.economics
        prices = Prices(report.hashprice_usd_per_ph_day, report.power_price_usd_per_kwh, economics)
        entries = {r: d.entry for r, d in drivers.items()}
        dry = not loop.actuator.sends
        fleet = fleet_state(
            site=loop.site.name,
            at=report.at,
            readings=report.readings,
            desired=report.desired,
            entries=entries,
            prices=prices,
            not_responding=report.not_responding,
            dry_run=dry,
            policies=(),
            pins=0,
            site_target=None,
            manual_market={},
        )
        observed = [r for r in report.readings.values() if isinstance(r, Observation)]
        unreadable = dict.fromkeys(_FAILURES, 0)
        for reading in report.readings.values():
            if isinstance(reading, ObservationFailure):
                unreadable[reading.kind.value] += 1
        modes = dict.fromkeys(_MODES, 0)
        for obs in observed:
            modes[obs.mode.value] += 1
        desired_modes = dict.fromkeys(_MODES, 0)
        for d in report.desired.values():
            desired_modes[d.mode.value] += 1
        market = loop.market.state(now)
        quotes = tuple(
            (kind.value, q.source, q.age_s(now), q.ttl_s)
            for kind, q in sorted(market.quotes.items())
        )
        sources = tuple((s.name, s.kind.value, s.ok, s.last_success) for s in market.sources)
        target = loop.operator.site_target
        cap_kw = loop.site.power_cap_kw
        per_rig = None
        if self.per_rig:
            per_rig = RigsSnapshot(
                readings=report.readings,
                desired=report.desired,
                identities={r: d.identity for r, d in drivers.items()},
                stuck=frozenset(stuck),
                prices=prices,
                efficiency=dict(loop.efficiency),
                entries=entries,
            )
        snapshot = Snapshot(
            at=report.at,
            site=loop.site.name,
            dry_run=dry,
            held=loop.actuator.hold is not None,
            conflict=loop.conflict is not None,
            rigs=report.rigs,
            observed=report.observed,
            hashing=int(fleet["hashing"]),
            curtailed=sum(1 for d in report.desired.values() if d.mode in CURTAILED),
            not_responding=report.not_responding,
            power_estimated=int(fleet["power_estimated_rigs"]),
            held_back=sum(1 for d in report.desired.values() if d.held_back),
            unreadable=unreadable,
            implausible=sum(any(e.startswith("implausible ") for e in o.errors) for o in observed),
            modes=modes,
            desired_modes=desired_modes,
            hashrate_hs=report.hashrate_ths * TH,
            power_w=report.power_kw * 1000.0,
            curtailed_w=curtailed_kw(report.readings, report.desired, entries) * 1000.0,
            hashprice_usd_per_phs_day=report.hashprice_usd_per_ph_day,
            power_price_usd_per_kwh=report.power_price_usd_per_kwh,
            breakeven_usd_per_phs_day=fleet["breakeven_hashprice_usd_per_ph_day"],
            quotes=quotes,
            sources=sources,
            pins=sum(1 for o in loop.operator.overrides() if o.active(now)),
            policies=tuple(
                (name, name in report.failed_policies)
                for name in dict.fromkeys(
                    [*(p.name for p in loop.policies), *report.failed_policies]
                )
            ),
            site_target_w=target.kw * 1000.0 if target is not None and target.active(now) else None,
            site_power_cap_w=None if cap_kw is None else cap_kw * 1000.0,
            per_rig=per_rig,
        )
        with self._lock:
            self._snapshot = snapshot
            self._count(report, drivers)
            if loop.power is not None:
                self._power_cycles = dict(loop.power.cycle_counts)
                self._thermal_cuts = dict(loop.power.thermal_cut_counts)
                self._needs_hands = len(loop.power.needs_hands)
            self._observe_s.observe(report.observe_duration_s)
            self._tick_s.observe(report.duration_s)

    def _count(self, report: TickReport, drivers: Mapping[RigId, RigDriver]) -> None:
        """Decisions (a rig's desired state changed, as the audit log counts them) and
        commands, by outcome. Called under the lock."""
        for rig_id, d in report.desired.items():
            key = (d.mode, d.power_limit_w)
            if self._last_desired.get(rig_id) == key:
                continue
            self._last_desired[rig_id] = key
            label = (d.decided_by, d.mode.value)
            self._decisions[label] = self._decisions.get(label, 0) + 1
        for rig_id in [r for r in self._last_desired if r not in report.desired]:
            del self._last_desired[rig_id]  # left the fleet: a return counts as a decision
        for result in report.results:
            c = result.command
            rig_driver = drivers.get(c.rig_id)
            driver = rig_driver.identity.driver if rig_driver is not None else "unknown"
            label3 = (result.outcome.value, driver, c.mode.value)
            self._commands[label3] = self._commands.get(label3, 0) + 1

    # ---------------------------------------------------------------------------------------
    # Exposition

    def render(self, accept: str = "") -> bytes:
        """The exposition of this registry and the per-rig series, in the format ``accept`` (an
        HTTP Accept header) asks for: OpenMetrics 1.0 or, by default, text format 0.0.4."""
        return self._render(accept)[0]

    def _render(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        rigs = self._rig_text()
        if rigs:
            if content_type.startswith("application/openmetrics-text"):
                end = b"# EOF\n"
                assert body.endswith(end)
                body = body[: -len(end)] + rigs + end
            else:
                body += rigs
        return body, content_type

    def _rig_text(self) -> bytes:
        """The per-rig series of the last snapshot, written once per snapshot (not per scrape)."""
        with self._lock:
            snap = self._snapshot
            if snap is None or snap.per_rig is None:
                return b""
            cached = self._rig_cache
            if cached is not None and cached[0] is snap.per_rig:
                return cached[1]
        text = _per_rig_text(snap.per_rig).encode()
        with self._lock:
            self._rig_cache = (snap.per_rig, text)
        return text

    def serve(self, address: str, port: int) -> MetricsServer:
        """Serve ``/metrics`` on ``address``:``port`` (0: any free port) from a daemon thread:
        any path, content negotiated as :meth:`render` does, gzip when the client accepts it."""

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            if environ.get("PATH_INFO") == "/favicon.ico":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found"]
            body, content_type = self._render(environ.get("HTTP_ACCEPT", ""))
            headers = [("Content-Type", content_type)]
            if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
                body = gzip.compress(body, compresslevel=1)
                headers.append(("Content-Encoding", "gzip"))
            start_response("200 OK", headers)
            return [body]

        server_class = _Server6 if ":" in address else _Server
        try:
            server = make_server(address, port, app, server_class, handler_class=_QuietHandler)
        except OSError as exc:
            raise ValueError(listen_error(address, port, exc)) from None
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
        return MetricsServer(server, thread)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families vary with the fleet; nothing to check at register()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = self._snapshot
            decisions = dict(self._decisions)
            commands = dict(self._commands)
            cycles, needs_hands = dict(self._power_cycles), self._needs_hands
            cuts = dict(self._thermal_cuts)
            reload = self._reload
            observe_s = self._observe_s.family(
                "rigpilot_observation_duration_seconds",
                "Wall time of one observation cycle (every rig read once).",
            )
            tick_s = self._tick_s.family(
                "rigpilot_tick_duration_seconds",
                "Wall time of one control-loop tick, observation included.",
            )
        info = GaugeMetricFamily(
            "rigpilot_build_info", "The running rigpilot's version (always 1).", labels=["version"]
        )
        info.add_metric([self._version], 1.0)
        yield info
        if self.mqtt_connected is not None:
            yield _gauge(
                "rigpilot_mqtt_connected",
                "1 while the MQTT bridge is connected to its broker.",
                1.0 if _safe(self.mqtt_connected) else 0.0,
            )
        if self.mqtt_events_dropped is not None:
            dropped = CounterMetricFamily(
                "rigpilot_mqtt_events_dropped",
                "Events (fault, decision, command) dropped because more than the bridge's "
                "queue waited for the broker; answers and state are never dropped.",
            )
            dropped.add_metric([], float(self.mqtt_events_dropped()))
            yield dropped
        if reload is not None:
            yield _gauge(
                "rigpilot_config_last_reload_successful",
                "1 when the last configuration load or reload (SIGHUP) was applied, 0 when "
                "it was rejected (the configuration before it still runs).",
                1.0 if reload[0] else 0.0,
            )
            yield _gauge(
                "rigpilot_config_last_reload_success_timestamp_seconds",
                "When the configuration running now was loaded (Unix time).",
                reload[1],
            )
        decided = CounterMetricFamily(
            "rigpilot_decisions",
            "Changes of a rig's desired state, by the policy or guard that decided and the mode.",
            labels=["by", "mode"],
        )
        for (by, mode), n in sorted(decisions.items()):
            decided.add_metric([by, mode], float(n))
        yield decided
        commanded = CounterMetricFamily(
            "rigpilot_commands",
            "Commands to rigs, by outcome (sent, dry_run, failed, unsupported), driver and mode.",
            labels=["outcome", "driver", "mode"],
        )
        for (outcome, driver, mode), n in sorted(commands.items()):
            commanded.add_metric([outcome, driver, mode], float(n))
        yield commanded
        cycled = CounterMetricFamily(
            "rigpilot_power_cycles",
            "Hung rigs power-cycled at their outlets, by outcome (switched, dry_run, failed).",
            labels=["outcome"],
        )
        for outcome, n in sorted(cycles.items()):
            cycled.add_metric([outcome], float(n))
        yield cycled
        cut = CounterMetricFamily(
            "rigpilot_thermal_cuts",
            "Rigs' outlets cut in a thermal emergency (hashing at a critical temperature after "
            "being told to sleep), by outcome (switched, dry_run, failed).",
            labels=["outcome"],
        )
        for outcome, n in sorted(cuts.items()):
            cut.add_metric([outcome], float(n))
        yield cut
        yield _gauge(  # no sample where no rig is wired to a switch
            "rigpilot_fleet_rigs_needing_hands",
            "Rigs still silent after their power cycles of the day: someone must go and look.",
            needs_hands,
        )
        yield observe_s
        yield tick_s
        if snap is None:
            return  # no tick yet: nothing observed to report
        yield from _fleet(snap)
        yield from _market(snap)
        # The per-rig series are not collected here: render() appends them as text.


# -------------------------------------------------------------------------------------------
# Rendering a snapshot (scrape thread)


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it: ``0.05``, ``1.0``, ``+Inf``."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _package_version() -> str:
    try:
        return version("rigpilot")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def _safe(probe: Callable[[], bool]) -> bool:
    try:
        return bool(probe())
    except Exception:  # a probe's bug must not break the scrape
        return False


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[])
    if value is not None:
        family.add_metric([], float(value))
    return family


def _fleet(s: Snapshot) -> Iterator[Metric]:
    yield _gauge("rigpilot_dry_run", "1 when the daemon sends no command (dry-run).", s.dry_run)
    yield _gauge(
        "rigpilot_commands_held",
        "1 while commands are held because another instance commands this site (dry-run).",
        s.held,
    )
    yield _gauge(
        "rigpilot_site_conflict",
        "1 while another live rigpilot instance announces this site on the broker.",
        s.conflict,
    )
    yield _gauge(
        "rigpilot_last_tick_timestamp_seconds",
        "When the last tick ran (POSIX seconds, the loop's clock).",
        s.at,
    )
    site = GaugeMetricFamily("rigpilot_site_info", "The site this daemon runs.", labels=["site"])
    site.add_metric([s.site], 1.0)
    yield site
    failing = GaugeMetricFamily(
        "rigpilot_policy_failing",
        "1 when the policy raised this tick (the fleet is held: no policy moves any rig).",
        labels=["policy"],
    )
    for name, failed in s.policies:
        failing.add_metric([name], 1.0 if failed else 0.0)
    yield failing
    yield _gauge("rigpilot_fleet_rigs", "Rigs in the fleet.", s.rigs)
    yield _gauge("rigpilot_fleet_rigs_observed", "Rigs read this tick.", s.observed)
    yield _gauge(
        "rigpilot_fleet_rigs_hashing", "Rigs read this tick that hash and draw power.", s.hashing
    )
    yield _gauge(
        "rigpilot_fleet_rigs_curtailed",
        "Rigs whose desired mode is below normal (sleep, low or a power limit).",
        s.curtailed,
    )
    yield _gauge(
        "rigpilot_fleet_rigs_not_responding",
        "Rigs that ignored a command after every retry.",
        s.not_responding,
    )
    yield _gauge(
        "rigpilot_fleet_rigs_power_estimated",
        "Rigs read this tick whose watts are estimated (they report none).",
        s.power_estimated,
    )
    yield _gauge(
        "rigpilot_fleet_rigs_held_back",
        "Rigs a guard kept where they are this tick although a change was asked for.",
        s.held_back,
    )
    unreadable = GaugeMetricFamily(
        "rigpilot_fleet_rigs_unreadable",
        "Rigs not read this tick, by reason.",
        labels=["reason"],
    )
    for reason, n in s.unreadable.items():
        unreadable.add_metric([reason], float(n))
    yield unreadable
    yield _gauge(
        "rigpilot_fleet_rigs_implausible",
        "Rigs read this tick with a field refused as implausible (named in the rig's errors).",
        s.implausible,
    )
    by_mode = GaugeMetricFamily(
        "rigpilot_fleet_rigs_mode", "Rigs read this tick, by observed mode.", labels=["mode"]
    )
    for mode, n in s.modes.items():
        by_mode.add_metric([mode], float(n))
    yield by_mode
    by_desired = GaugeMetricFamily(
        "rigpilot_fleet_rigs_desired_mode", "Rigs by desired mode.", labels=["mode"]
    )
    for mode, n in s.desired_modes.items():
        by_desired.add_metric([mode], float(n))
    yield by_desired
    yield _gauge(
        "rigpilot_fleet_hashrate_hashes_per_second",
        "Hashrate of the rigs read this tick.",
        s.hashrate_hs,
    )
    yield _gauge(
        "rigpilot_fleet_power_watts",
        "Power drawn by the rigs read this tick (estimated watts included).",
        s.power_w,
    )
    yield _gauge(
        "rigpilot_fleet_curtailed_watts",
        "Load shed by curtailment: normal-mode nameplate minus drawn, over curtailed rigs.",
        s.curtailed_w,
    )
    yield _gauge("rigpilot_pins", "Active operator pins (overrides).", s.pins)
    yield _gauge(
        "rigpilot_site_target_watts",
        "The control room's site power target (demand response); absent when none.",
        s.site_target_w,
    )
    yield _gauge(
        "rigpilot_site_power_cap_watts",
        "The configured site power cap (control.power_cap_kw); absent when none.",
        s.site_power_cap_w,
    )


def _market(s: Snapshot) -> Iterator[Metric]:
    yield _gauge(
        "rigpilot_hashprice_usd_per_phs_day",
        "Hashprice the policies used (USD per PH/s per day); absent when stale.",
        s.hashprice_usd_per_phs_day,
    )
    yield _gauge(
        "rigpilot_power_price_usd_per_kwh",
        "Power price the policies used (USD per kWh, adders included); absent when stale.",
        s.power_price_usd_per_kwh,
    )
    yield _gauge(
        "rigpilot_fleet_breakeven_hashprice_usd_per_phs_day",
        "Hashprice at which the hashing rigs, together, exactly pay for their power.",
        s.breakeven_usd_per_phs_day,
    )
    age = GaugeMetricFamily(
        "rigpilot_market_quote_age_seconds",
        "Age of the best quote of each kind at the last tick (stale past its TTL).",
        labels=["kind", "source"],
    )
    ttl = GaugeMetricFamily(
        "rigpilot_market_quote_ttl_seconds",
        "Time-to-live of the best quote of each kind.",
        labels=["kind", "source"],
    )
    for kind, source, age_s, ttl_s in s.quotes:
        age.add_metric([kind, source], age_s)
        ttl.add_metric([kind, source], ttl_s)
    yield age
    yield ttl
    up = GaugeMetricFamily(
        "rigpilot_market_source_up",
        "1 when the feed's last fetch succeeded, 0 when it failed; absent until tried.",
        labels=["source", "kind"],
    )
    last = GaugeMetricFamily(
        "rigpilot_market_source_last_success_timestamp_seconds",
        "When the feed last gave a good value (POSIX seconds).",
        labels=["source", "kind"],
    )
    for name, kind, ok, last_success in s.sources:
        if ok is not None:
            up.add_metric([name, kind], 1.0 if ok else 0.0)
        if last_success is not None:
            last.add_metric([name, kind], last_success)
    yield up
    yield last


_RIG_FAMILIES = (
    (
        "rigpilot_rig_info",
        "A rig's identity (always 1): join on rig for make, firmware and driver.",
    ),
    ("rigpilot_rig_up", "1 when the rig was read this tick."),
    ("rigpilot_rig_not_responding", "1 when the rig ignored a command after every retry."),
    ("rigpilot_rig_hashrate_hashes_per_second", "The rig's hashrate."),
    ("rigpilot_rig_power_watts", "Power the rig draws (see rigpilot_rig_power_estimated)."),
    (
        "rigpilot_rig_power_estimated",
        "1 when rigpilot_rig_power_watts is estimated, 0 when measured (reported or metered).",
    ),
    ("rigpilot_rig_max_chip_temperature_celsius", "Hottest chip of the rig."),
    ("rigpilot_rig_board_temperature_celsius", "Temperature of each hashboard."),
    ("rigpilot_rig_inlet_temperature_celsius", "Inlet temperature, where reported."),
    ("rigpilot_rig_outlet_temperature_celsius", "Outlet temperature, where reported."),
    ("rigpilot_rig_mode", "The rig's observed mode (1, labelled with the mode)."),
    (
        "rigpilot_rig_desired_mode",
        "The rig's desired mode (1, labelled with the mode and who decided it).",
    ),
    (
        "rigpilot_rig_margin_usd_per_day",
        "Revenue minus power cost per day as observed now, at the tick's prices.",
    ),
    (
        "rigpilot_rig_efficiency_joules_per_hash",
        "The efficiency the policies score the rig at, in the labelled mode (x 1e12 for "
        "J/TH): learned from its measured watts (source meter or reported) once trusted, "
        "else the catalogue's.",
    ),
    (
        "rigpilot_rig_efficiency_samples",
        "Samples of measured watts taken towards the rig's learned efficiency (rigs with any).",
    ),
)


def _per_rig_text(rigs: RigsSnapshot) -> str:
    """Every per-rig family as exposition text (see daemon/exposition.py)."""
    out: list[list[tuple[str, float]]] = [[] for _ in _RIG_FAMILIES]
    info, up, stuck, desired = out[0], out[1], out[2], out[11]
    esc = escape
    efficiency, entries = rigs.efficiency, rigs.entries
    rated: dict[int, tuple[str, float] | None] = {}  # a model's catalogue series, by entry
    for rig_id, reading in rigs.readings.items():
        obs = reading if isinstance(reading, Observation) else None
        identity = obs.identity if obs is not None else rigs.identities.get(rig_id)
        if identity is None:
            identity = reading.identity if isinstance(reading, ObservationFailure) else None
        rig = esc(rig_id)
        model = esc(identity.model) if identity is not None else ""
        head = f'{{rig="{rig}",model="{model}"'
        key = head + "}"
        if identity is not None:
            make, firmware, driver = identity.make.value, identity.firmware, identity.driver
            info.append(
                (
                    f'{{rig="{rig}",make="{esc(make)}",model="{model}",'
                    f'firmware="{esc(firmware)}",driver="{esc(driver)}"}}',
                    1.0,
                )
            )
        else:
            info.append((f'{{rig="{rig}",make="",model="",firmware="",driver=""}}', 1.0))
        up.append((key, 0.0 if obs is None else 1.0))
        stuck.append((key, 1.0 if rig_id in rigs.stuck else 0.0))
        d = rigs.desired.get(rig_id)
        if d is not None:
            desired.append((f'{head},mode="{d.mode.value}",by="{esc(d.decided_by)}"}}', 1.0))
        if obs is not None:
            _observed_samples(out, obs, head, key, rigs.prices)
        if identity is None or rig_id not in entries:
            continue
        learned = efficiency.get(rig_id)
        if learned is None:  # the catalogue's figure, the same for every rig of the model
            entry = entries[rig_id]
            if id(entry) not in rated:
                view = shown(None, entry)
                jth = view.j_per_th
                rated[id(entry)] = None if jth is None else (view.mode.value, jth / TH)
            figure = rated[id(entry)]
            if figure is not None:
                out[13].append((f'{head},source="catalogue",mode="{figure[0]}"}}', figure[1]))
        else:
            _efficiency_samples(out, shown(learned, entries[rig_id]), head, key)
    return "".join(
        gauge_family(name, doc, samples)
        for (name, doc), samples in zip(_RIG_FAMILIES, out, strict=True)
    )


def _efficiency_samples(
    out: list[list[tuple[str, float]]], view: Shown, head: str, key: str
) -> None:
    """The efficiency samples of a rig with samples of its measured watts, into ``out``."""
    if view.j_per_th is not None:
        learned = view.source == "learned" and view.learned_from is not None
        source = view.learned_from.value if learned and view.learned_from else "catalogue"
        labels = f'{head},source="{source}",mode="{view.mode.value}"}}'
        out[13].append((labels, view.j_per_th / TH))
    if view.samples:
        out[14].append((key, float(view.samples)))


def _observed_samples(
    out: list[list[tuple[str, float]]], obs: Observation, head: str, key: str, prices: Prices
) -> None:
    """The samples of an observed rig, into ``out`` (one list per family of _RIG_FAMILIES)."""
    hashrate, power, estimated, chip, board, inlet, outlet, mode = out[3:11]
    hashrate.append((key, obs.hashrate_ths * TH))
    if obs.power_w is not None:
        power.append((key, obs.power_w))
    if obs.power_source is not None:
        estimated.append((key, 1.0 if obs.power_source is PowerSource.ESTIMATED else 0.0))
    if obs.max_chip_temp_c is not None:
        chip.append((key, obs.max_chip_temp_c))
    for b in obs.boards:
        if b.board_temp_c is not None:
            board.append((f'{head},board="{b.index}"}}', b.board_temp_c))
    if obs.inlet_c is not None:
        inlet.append((key, obs.inlet_c))
    if obs.outlet_c is not None:
        outlet.append((key, obs.outlet_c))
    mode.append((f'{head},mode="{obs.mode.value}"}}', 1.0))
    value = margin_usd_per_day(obs, prices)
    if value is not None:
        out[12].append((key, value))
