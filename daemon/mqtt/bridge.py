"""The one broker connection: state out, commands in, reconnecting for as long as it runs.

- MQTT 5 (3.1.1 clients can still command: answers also go to ``response/<command>`` with the
  request's ``transaction``), a fixed client id and a persistent session, so commands published
  while the daemon was briefly away are delivered when it is back.
- Retained ``bridge/state`` is ``online`` on connect and ``offline`` on a clean stop; the last
  will says ``offline`` when the daemon or its link dies.
- The control loop never waits for the broker: ticks hand their report to :meth:`on_tick`,
  which only updates in-memory documents. A writer task publishes them while connected; on
  reconnect every retained document is published again. Answers are kept until published;
  events are dropped (and counted) when more than ``EVENT_QUEUE_MAX`` wait.
- Connection loss is logged once, and its recovery once; retries back off with jitter.
- One controller per site: the retained ``bridge/info`` carries this process's instance id and
  start time and is published again every ``heartbeat_s``. The bridge listens to its site's
  ``bridge/info`` and ``bridge/state``: another instance heard there (a second machine running
  the same site) is reported loudly by both, and the one started later holds every command
  (it runs as in dry-run, publishes no state and takes no request) until the other is gone: its
  info says it stopped, or it is not heard for ``GONE_AFTER_BEATS`` of its heartbeats (one
  more heartbeat only, once the site's availability went ``offline``: its last will).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import os
import random
import socket
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.config import MqttSettings
from daemon.efficiency import shown
from daemon.loop import TickReport
from daemon.mqtt import discovery
from daemon.mqtt.answers import Answer
from daemon.mqtt.commands import transaction_of
from daemon.mqtt.desk import CommandDesk
from daemon.mqtt.state import (
    Prices,
    command_event,
    decision_event,
    decision_key,
    fault_event,
    fleet_state,
    outlets_state,
    power_event,
    rig_state,
)
from daemon.mqtt.topics import Topics
from daemon.operator_state import Envelope
from policies.values import Observation, ObservationFailure, QuoteKind, RigId

log = structlog.get_logger("mqtt")

EVENT_QUEUE_MAX: Final = 20_000
PUBLISH_BATCH: Final = 256
SESSION_EXPIRY_S: Final = 3600
BACKOFF_MIN_S: Final = 1.0
BACKOFF_MAX_S: Final = 60.0
CREDENTIAL_NAME: Final = "mqtt_password"
MAX_RESPONSE_TOPIC: Final = 256
HEARTBEAT_S: Final = 10.0
GONE_AFTER_BEATS: Final = 3
CHECK_TIMEOUT_S: Final = 5.0
HOST: Final = socket.gethostname()


def package_version() -> str:
    try:
        return version("rigpilot")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def resolve_password(settings: MqttSettings, env: Mapping[str, str] = os.environ) -> str | None:
    """The broker password: the setting (environment or file), else ``password_file``, else
    the systemd credential ``mqtt_password``. ValueError naming the file if it is unreadable."""
    if settings.password is not None:
        return settings.password.get_secret_value()
    path: Path | None = settings.password_file
    if path is None and env.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        path = candidate if candidate.exists() else None
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip() or None  # empty: no password
    except OSError as exc:
        raise ValueError(f"mqtt password file {path} cannot be read: {exc.strerror}") from None


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """The TLS context for the broker, or None without TLS. ValueError naming a bad file."""
    tls = settings.tls
    if not tls.enabled:
        return None
    files = {"ca_file": tls.ca_file, "cert_file": tls.cert_file, "key_file": tls.key_file}
    for key, path in files.items():
        if path is not None:
            _check_readable(f"mqtt.tls.{key}", path)
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"mqtt.tls.ca_file {tls.ca_file}: not a PEM CA certificate ({_ssl_reason(exc)})"
        ) from None
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(_cert_chain_error(tls.cert_file, tls.key_file, exc)) from None
    return ctx


def _check_readable(key: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        hint = ""
        if str(path).startswith("/run/credentials/"):
            hint = " (a systemd credential: it exists only while the service runs)"
        raise ValueError(f"{key} {path} cannot be read: {exc.strerror or exc}{hint}") from None


def _ssl_reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc.strerror or exc)


def _cert_chain_error(cert: Path, key: Path, exc: OSError) -> str:
    """Which of the client certificate and key is wrong, as far as the files tell."""
    reason = _ssl_reason(exc)
    if reason == "KEY_VALUES_MISMATCH":
        return f"mqtt.tls.key_file {key} is not the key of mqtt.tls.cert_file {cert}"
    if b"-----BEGIN CERTIFICATE-----" not in cert.read_bytes():
        return f"mqtt.tls.cert_file {cert}: not a PEM certificate ({reason})"
    if b"PRIVATE KEY-----" not in key.read_bytes():
        return f"mqtt.tls.key_file {key}: not a PEM private key ({reason})"
    return f"mqtt.tls.cert_file {cert} / key_file {key}: cannot be loaded ({reason})"


def default_client_id(site: str) -> str:
    """``rigpilot-<site>-<host>``: fixed across restarts (the broker keeps the session), and
    not the same for two machines running the same site, which would take the id from each
    other in turn (both are then detected: see "One controller per site")."""
    return f"rigpilot-{site}-{HOST}"[:64]


def insecure_connection(settings: MqttSettings, password: str | None) -> list[str]:
    """What is unsafe about connecting to the broker as configured (empty: nothing): without
    credentials anyone the broker lets in may command the fleet, as anyone; without TLS to a
    broker off this host, credentials and commands cross the network in clear."""
    problems = []
    if settings.username is None or password is None:
        problems.append(
            "no authentication (mqtt.username and a password): if the broker admits anonymous "
            "clients, anyone who reaches it can command the fleet, and `by` is whatever they write"
        )
    if not settings.tls.enabled and not _loopback(settings.host):
        problems.append(
            f"no TLS to {settings.host}, which is not this host: the password and every command "
            "cross the network in clear (mqtt.tls.enabled)"
        )
    return problems


def acl_mismatch(settings: MqttSettings, topics: Topics) -> list[str]:
    """What the documented ACL (docs/mosquitto/acl) would silently refuse this daemon (empty:
    nothing). It confines each site's daemon to its own tree by its user name, which must be
    the site's name, and lets it announce Home Assistant devices under the node id
    ``rigpilot_<site>`` only, which a site name with other characters than letters, digits,
    ``_`` and ``-`` does not give. The broker drops a refused publish without a word."""
    problems = []
    if settings.username is not None and settings.username != topics.site:
        problems.append(
            f"mqtt.username {settings.username!r} is not the site's name {topics.site!r}: the "
            "documented ACL lets a site's daemon read and write only rigpilot/<its user name>/"
        )
    node = discovery.fleet_device_id(topics)
    if settings.discovery and node != f"rigpilot_{topics.site}":
        problems.append(
            f"Home Assistant discovery goes under node id {node!r}, which the documented ACL "
            f"does not give site {topics.site!r} (it allows rigpilot_<site> only): name the "
            "site with letters, digits, '_' and '-'"
        )
    return problems


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


@dataclass(frozen=True, slots=True)
class _Out:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    correlation_data: bytes | None = None
    answer: Mapping[str, Any] | None = None  # the body, for an answer to a request

    def again(self) -> _Out:
        """This message to send once more after a publish that may or may not have reached the
        broker (cancelled or cut off before its PUBACK): an answer says ``"repeated": true``,
        so the same final answer is never seen twice as if it were two."""
        if self.answer is None or self.answer.get("repeated"):
            return self
        body = {**self.answer, "repeated": True}
        return _Out(self.topic, _dumps(body), self.qos, self.retain, self.correlation_data, body)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def _payload(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


def _dumps(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str).encode()


@dataclass(frozen=True, slots=True)
class Peer:
    """Another instance heard announcing this site."""

    instance: str
    started_at: float
    host: str
    pid: int | None
    heartbeat_s: float
    heard: float  # time.monotonic() when last heard (a retained copy: as of its own "at")

    def rank(self) -> tuple[float, str]:
        """Who commands: the earliest started; equal times, the smaller instance id."""
        return (self.started_at, self.instance)

    def describe(self) -> str:
        pid = f" pid {self.pid}" if self.pid is not None else ""
        return f"{self.host}{pid} (instance {self.instance[:8]}, started {self.started_at:.0f})"


@dataclass
class Bridge:
    settings: MqttSettings
    topics: Topics
    desk: CommandDesk
    info: dict[str, Any] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    connected: bool = False
    events_dropped: int = 0  # since start: the metric rigpilot_mqtt_events_dropped_total
    _dropping_since: int | None = None  # events_dropped when this overflow began (logged once)
    _retained: dict[str, bytes] = field(default_factory=dict)
    _dirty: dict[str, None] = field(default_factory=dict)  # ordered set of retained topics
    _answers: deque[_Out] = field(default_factory=deque)
    _unstored: list[Answer] = field(default_factory=list)
    _events: deque[_Out] = field(default_factory=deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _rig_keys: dict[RigId, tuple[Any, ...]] = field(default_factory=dict)
    _rig_sent_at: dict[RigId, float] = field(default_factory=dict)
    _decisions: dict[RigId, tuple[Any, ...]] = field(default_factory=dict)
    _failing: set[RigId] = field(default_factory=set)
    _announced: set[RigId] = field(default_factory=set)
    _client: aiomqtt.Client | None = None
    _version: str = field(default_factory=package_version)
    instance: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float | None = None  # None: the clock when built
    heartbeat_s: float = HEARTBEAT_S
    peers: dict[str, Peer] = field(default_factory=dict)
    standby: bool = False
    """Another instance started earlier commands this site: hold every command."""
    _checked: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.started_at is None:
            self.started_at = self.clock()

    # ---------------------------------------------------------------------------------------
    # Documents (called from the loop; never blocks, never raises for the broker)

    def start(self) -> None:
        """Publish the bridge's info (retained) once the connection is up."""
        self._put(self.topics.info, self._info_doc())
        if self.settings.discovery:
            for topic, config in discovery.fleet_configs(
                self.topics, self._version, self.settings.discovery_prefix
            ):
                self._put(topic, config)

    def update_info(self, **fields: Any) -> None:
        """Change fields of the retained info document (e.g. ``last_reload``) and publish it."""
        self.info.update(fields)
        self._put(self.topics.info, self._info_doc())

    def on_tick(self, report: TickReport) -> None:
        """Publish what this tick saw and decided, and answer the commands it settles."""
        for answer in self.desk.after_tick(report):
            self.answer(answer)
        if self.standby:
            return  # the instance that commands the site publishes its state
        loop = self.desk.loop
        prices = Prices(
            report.hashprice_usd_per_ph_day,
            report.power_price_usd_per_kwh,
            loop.site.economics,
        )
        drivers = loop.observer.drivers
        now = report.at
        interval = self.settings.state_interval_s
        stuck = loop.reconciler.not_responding
        dry = not loop.actuator.sends
        operator = loop.operator
        pinned = operator.pinned()
        power = loop.power
        sweep = power.last.readings if power is not None and power.last is not None else {}
        for rig_id, reading in report.readings.items():
            desired = report.desired.get(rig_id)
            pin = pinned.get(rig_id)
            driver = drivers.get(rig_id)
            feeds = power.wiring.get(rig_id) if power is not None else None
            outlets = outlets_state(feeds, sweep) if feeds else None
            key = (
                type(reading).__name__,
                getattr(reading, "mode", None),
                getattr(reading, "mining", None),
                getattr(reading, "kind", None),
                None if desired is None else (desired.mode, desired.power_limit_w, desired.reason),
                None if pin is None else pin[0],
                rig_id in stuck,
                None if outlets is None else outlets["on"],
            )
            changed = self._rig_keys.get(rig_id) != key
            if changed or now - self._rig_sent_at.get(rig_id, float("-inf")) >= interval:
                self._rig_keys[rig_id] = key
                self._rig_sent_at[rig_id] = now
                doc = rig_state(
                    rig_id,
                    driver.identity if driver else None,
                    reading,
                    desired,
                    prices,
                    group=self.desk.groups.get(rig_id, ""),
                    pin=pin,
                    not_responding=rig_id in stuck,
                    outlets=outlets,
                    efficiency=(
                        None
                        if driver is None
                        else shown(loop.efficiency.get(rig_id), driver.entry).as_dict()
                    ),
                )
                self._put(self.topics.rig_state(rig_id), doc)
            if isinstance(reading, ObservationFailure) and rig_id not in self._failing:
                self._failing.add(rig_id)
                problem = f"{reading.kind.value}: {reading.detail}"
                self._event("fault", fault_event(rig_id, problem, now))
            elif isinstance(reading, Observation) and rig_id in self._failing:
                self._failing.discard(rig_id)
                self._event("fault", fault_event(rig_id, "observed again", now, recovered=True))
            if desired is not None and self._decisions.get(rig_id) != decision_key(desired):
                self._decisions[rig_id] = decision_key(desired)
                self._event("decision", decision_event(desired, now, dry))
            if self.settings.discovery and driver is not None and rig_id not in self._announced:
                self._announced.add(rig_id)
                self._announce_rig(rig_id)
        for result in report.results:
            self._event("command", command_event(result, dry))
        for event in report.power_events:
            self._event("power", power_event(event, dry))
        entries = {r: d.entry for r, d in drivers.items()}
        market = operator.prices
        hp_origin = report.price_origins.get(QuoteKind.HASHPRICE)
        pp_origin = report.price_origins.get(QuoteKind.POWER_PRICE)
        self._put(
            self.topics.fleet,
            fleet_state(
                site=self.topics.site,
                at=now,
                readings=report.readings,
                desired=report.desired,
                entries=entries,
                prices=prices,
                not_responding=report.not_responding,
                dry_run=dry,
                policies=[p.name for p in loop.policies],
                failed_policies=report.failed_policies,
                hashprice_source=hp_origin[0] if hp_origin else "",
                hashprice_age_s=hp_origin[1] if hp_origin else None,
                power_price_source=pp_origin[0] if pp_origin else "",
                power_price_age_s=pp_origin[1] if pp_origin else None,
                pins=len(operator.pins),
                site_target=(
                    {"kw": operator.site_target.kw, "until": operator.site_target.until}
                    if operator.site_target
                    else None
                ),
                manual_market={
                    k.value: {"value": q.value, "until": q.observed_at + q.ttl_s}
                    for k, q in market.items()
                },
            ),
        )

    def answer(self, answer: Answer) -> None:
        """Queue ``answer``; it is published after the desk's state is committed."""
        self._unstored.append(answer)
        self._wake.set()

    def _out(self, answer: Answer) -> _Out:
        env = answer.envelope
        topic = env.response_topic or self.topics.response(env.command)
        return _Out(topic, _dumps(answer.body), 1, False, env.correlation_data, answer.body)

    def _put(self, topic: str, doc: Mapping[str, Any]) -> None:
        self._retained[topic] = _dumps(doc)
        self._dirty[topic] = None
        self._wake.set()

    def _event(self, kind: str, doc: Mapping[str, Any]) -> None:
        if len(self._events) >= EVENT_QUEUE_MAX:
            self._events.popleft()
            if self._dropping_since is None:
                self._dropping_since = self.events_dropped
                log.warning(
                    "mqtt.events_dropped",
                    waiting=EVENT_QUEUE_MAX,
                    note="the broker is not taking events: the oldest are dropped and counted "
                    "(rigpilot_mqtt_events_dropped_total); answers and state are kept",
                )
            self.events_dropped += 1
        self._events.append(_Out(self.topics.event(kind), _dumps(doc), 0))
        self._wake.set()

    def _announce_rig(self, rig_id: RigId) -> None:
        driver = self.desk.loop.observer.drivers.get(rig_id)
        if driver is None:
            return
        power = self.desk.loop.power
        outlets = power.outlets_info(rig_id) if power is not None else None
        for topic, config in discovery.rig_configs(
            self.topics,
            driver.identity,
            driver.capabilities,
            self._version,
            self.settings.discovery_prefix,
            outlets=outlets.names if outlets is not None else (),
            metered=outlets is not None and outlets.metered,
        ):
            self._put(topic, config)

    def _reannounce(self) -> None:
        """Home Assistant restarted: publish every discovery config again."""
        prefix = self.settings.discovery_prefix + "/"
        for topic in self._retained:
            if topic.startswith(prefix):
                self._dirty[topic] = None
        self._wake.set()

    # ---------------------------------------------------------------------------------------
    # Requests in

    def handle_message(self, message: aiomqtt.Message) -> None:
        """One incoming message; never raises."""
        topic = message.topic.value
        try:
            if topic == self.topics.info:
                self._on_info(message)
                return
            if topic == self.topics.availability:
                self._on_availability(message)
                return
            if self.settings.discovery and topic == f"{self.settings.discovery_prefix}/status":
                if bytes(message.payload or b"").strip().lower() == b"online":
                    log.info("mqtt.homeassistant_online")
                    self._reannounce()
                return
            self._request(topic, message)
        except Exception:  # nothing a broker delivers may stop the bridge
            log.exception("mqtt.message_crashed", topic=topic[:200])

    def _request(self, topic: str, message: aiomqtt.Message) -> None:
        prefix = self.topics.root + "/request/"
        if not topic.startswith(prefix):
            return
        if self.standby:  # the instance that commands the site answers it
            log.warning("mqtt.request_ignored", topic=topic[:200], note="standby instance")
            return
        name = topic[len(prefix) :][:64]
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = str(payload or "").encode()
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        retained = bool(message.retain)
        if retained:
            self._clear_retained(topic)
        env = Envelope(name, bytes(payload), self.clock(), None, correlation, retained)
        if response_topic is not None:
            problem = self._bad_response_topic(str(response_topic))
            if problem:
                self.answer(self.desk.answer(env, transaction_of(env.payload), "rejected", problem))
                return
            env = Envelope(
                name, bytes(payload), env.received_at, str(response_topic), correlation, retained
            )
        for answer in self.desk.handle(env):
            self.answer(answer)

    def _clear_retained(self, topic: str) -> None:
        """A request that arrived retained is cleared from the broker (an empty retained
        publish), so it does not arrive again at the next start. Published with the answers;
        a broker whose ACL refuses it keeps the message, and the next start rejects it again."""
        if not topic.startswith(self.topics.root + "/request/") or "+" in topic or "#" in topic:
            return
        log.warning("mqtt.retained_request_cleared", topic=topic[:200])
        self._answers.append(_Out(topic, b"", 1, True))
        self._wake.set()

    def _bad_response_topic(self, topic: str) -> str | None:
        if (
            not topic.startswith(self.topics.response_prefix)
            or "+" in topic
            or "#" in topic
            or len(topic) > MAX_RESPONSE_TOPIC
        ):
            return (
                f"response topic {topic[:80]!r} is not allowed: it must lie under "
                f"{self.topics.response_prefix}"
            )
        return None

    # ---------------------------------------------------------------------------------------
    # The connection

    def _client_for(self, password: str | None, tls: ssl.SSLContext | None) -> aiomqtt.Client:
        s = self.settings
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = SESSION_EXPIRY_S
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=password,
            identifier=s.client_id or default_client_id(self.topics.site),
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self.topics.availability, b"offline", qos=1, retain=True),
            clean_start=False,
            keepalive=s.keepalive_s,
            properties=connect,
            tls_context=tls,
            timeout=10,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set; then say "offline" and leave."""
        password = resolve_password(self.settings)
        tls = tls_context(self.settings)
        for problem in insecure_connection(self.settings, password):
            log.warning("mqtt.insecure", host=self.settings.host, problem=problem)
        for problem in acl_mismatch(self.settings, self.topics):
            log.warning("mqtt.acl", problem=problem)
        backoff = BACKOFF_MIN_S
        failing: str | None = None
        while not stop.is_set():
            client = self._client_for(password, tls)
            try:
                async with client:
                    # Batches of publishes in flight are normal here, not a warning sign.
                    client.pending_calls_threshold = 4 * PUBLISH_BATCH
                    self._client = client
                    await self._on_connect(client)
                    if failing is not None:
                        log.info("mqtt.reconnected", host=self.settings.host)
                    else:
                        log.info("mqtt.connected", host=self.settings.host)
                    failing, backoff = None, BACKOFF_MIN_S
                    await self._session(client, stop)
                    await self._goodbye(client)
                    return
            except aiomqtt.MqttError as exc:
                problem = str(exc)
                if failing is None:
                    log.warning(
                        "mqtt.disconnected",
                        host=self.settings.host,
                        problem=problem,
                        note="the control loop keeps running; state is republished on reconnect",
                    )
                failing = problem
            finally:
                self.connected = False
                self._client = None
            delay = backoff * random.uniform(0.8, 1.2)  # jitter, not crypto
            backoff = min(BACKOFF_MAX_S, backoff * 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        # Requests keep their retain flag (a retained request is refused, never applied), and
        # the daemon's own publishes (clearing a retained request) do not come back to it.
        await client.subscribe(
            self.topics.requests,
            options=SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True),
        )
        if self.settings.discovery:
            await client.subscribe(f"{self.settings.discovery_prefix}/status", qos=1)
        # The site's info and availability first: their retained copies arrive before the echo
        # of our own info, so once that echo is read, every instance announced is known.
        await client.subscribe(self.topics.info, qos=1)
        await client.subscribe(self.topics.availability, qos=1)
        info = self._retained[self.topics.info] = _dumps(self._info_doc())
        await client.publish(self.topics.info, info, qos=1, retain=True)
        if not self.standby:
            await client.publish(self.topics.availability, b"online", qos=1, retain=True)
        self.connected = True
        for topic in self._retained:  # everything again: the broker may have lost it
            self._dirty[topic] = None
        self._wake.set()

    async def _session(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        async def read() -> None:
            async for message in client.messages:
                self.handle_message(message)

        reader = asyncio.create_task(read())
        writer = asyncio.create_task(self._write(client))
        beat = asyncio.create_task(self._heartbeat())
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {reader, writer, beat, stopper}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stopper:
                    task.result()  # re-raise the connection error
                    raise aiomqtt.MqttError("message stream ended")
        finally:
            for task in (reader, writer, beat, stopper):
                task.cancel()
            await asyncio.gather(reader, writer, beat, stopper, return_exceptions=True)

    async def _write(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush(client)

    async def flush(self, client: aiomqtt.Client) -> None:
        """Publish answers first (once what they acknowledge is stored), then retained
        documents, then events."""
        if self._unstored:
            stored = self.desk.commit(self._unstored)
            self._unstored = []
            self._answers.extend(self._out(a) for a in stored)
        while self._answers:
            out = self._answers[0]
            # Should this publish not complete (connection lost, or the daemon stopping while it
            # waits for the PUBACK), the broker may have it already: the next try is marked.
            self._answers[0] = out.again()
            await self._publish(client, out)
            self._answers.popleft()
        while self._dirty:
            batch = []
            for topic in self._dirty:
                batch.append(topic)
                if len(batch) >= PUBLISH_BATCH:
                    break
            await asyncio.gather(
                *(
                    client.publish(t, self._retained[t], qos=1, retain=True, timeout=30)
                    for t in batch
                )
            )
            for t in batch:
                self._dirty.pop(t, None)
        while self._events:
            n = min(PUBLISH_BATCH, len(self._events))
            batch_out = [self._events.popleft() for _ in range(n)]
            await asyncio.gather(*(self._publish(client, o) for o in batch_out))
        if self._dropping_since is not None:
            log.info("mqtt.events_flowing", dropped=self.events_dropped - self._dropping_since)
            self._dropping_since = None

    async def _publish(self, client: aiomqtt.Client, out: _Out) -> None:
        props = None
        if out.correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = out.correlation_data
        await client.publish(
            out.topic, out.payload, qos=out.qos, retain=out.retain, properties=props, timeout=30
        )

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Clean stop: flush answers (bounded), say this instance stopped (so another one of
        the site takes over at once), then "offline" (the will does not fire)."""
        try:
            await asyncio.wait_for(self.flush(client), 5.0)
        except (TimeoutError, aiomqtt.MqttError):
            log.warning("mqtt.flush_incomplete", answers=len(self._answers))
        stopped = _dumps({**self._info_doc(), "stopped": True})
        await client.publish(self.topics.info, stopped, qos=1, retain=True, timeout=5)
        await client.publish(self.topics.availability, b"offline", qos=1, retain=True, timeout=5)
        log.info("mqtt.offline_published")

    # ---------------------------------------------------------------------------------------
    # One controller per site

    def _info_doc(self) -> dict[str, Any]:
        return {
            **self.info,
            "version": self._version,
            "instance": self.instance,
            "started_at": self.started_at,
            "host": HOST,
            "pid": os.getpid(),
            "heartbeat_s": self.heartbeat_s,
            "at": self.clock(),
            "standby": self.standby,
            "others": [p.describe() for p in self.peers.values()],
        }

    async def checked(self, timeout_s: float = CHECK_TIMEOUT_S) -> bool:
        """Wait until the site's announced instances are known (the broker delivered them
        and the echo of our own info), at most ``timeout_s``; False if the broker could not
        be asked in time (then nothing is known: the daemon starts as the only instance)."""
        try:
            await asyncio.wait_for(self._checked.wait(), timeout_s)
        except TimeoutError:
            log.warning(
                "mqtt.instances_unchecked",
                timeout_s=timeout_s,
                note="the broker did not answer: another instance of this site cannot be seen",
            )
            return False
        return True

    def _on_info(self, message: aiomqtt.Message) -> None:
        try:
            doc = json.loads(_payload(message))
            instance = str(doc["instance"])
        except (ValueError, TypeError, KeyError):
            return  # empty (cleared), or from a rigpilot without instance ids
        if instance == self.instance:
            self._checked.set()
            return
        if doc.get("stopped"):
            if self.peers.pop(instance, None) is not None:
                log.info("mqtt.instance_stopped", other=instance[:8])
            self._evaluate()
            return
        now = time.monotonic()
        heard = now
        pid = doc.get("pid")
        if message.retain:  # kept by the broker: as old as it says (never newer than now)
            heard = now - max(0.0, self.clock() - float(doc.get("at") or 0.0))
            if doc.get("host") == HOST and isinstance(pid, int) and not _alive(pid):
                return  # a process of this machine that died (killed with the broker)
        self.peers[instance] = Peer(
            instance,
            float(doc.get("started_at") or 0.0),
            str(doc.get("host") or "?"),
            int(pid) if isinstance(pid, int) else None,
            float(doc.get("heartbeat_s") or HEARTBEAT_S),
            heard,
        )
        self._evaluate()

    def _on_availability(self, message: aiomqtt.Message) -> None:
        """``offline`` on the site's availability: the last will of an instance that died or
        lost its link. Every instance known is then gone unless heard again within one more
        of its heartbeats (one that only lost its link reconnects and announces itself)."""
        if _payload(message).strip() != b"offline" or not self.peers:
            return
        log.info("mqtt.instances_offline", others=len(self.peers))
        now = time.monotonic()
        for peer in list(self.peers.values()):
            last_chance = now - (GONE_AFTER_BEATS - 1) * peer.heartbeat_s
            self.peers[peer.instance] = dataclasses.replace(
                peer, heard=min(peer.heard, last_chance)
            )
        self._evaluate()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            self._evaluate()
            self._put(self.topics.info, self._info_doc())
            if not self.standby:  # a stopped or dead instance's "offline" is not ours
                self._retained[self.topics.availability] = b"online"
                self._dirty[self.topics.availability] = None

    def _evaluate(self) -> None:
        """Forget instances not heard for GONE_AFTER_BEATS of their heartbeats, then decide
        who commands; report every change loudly."""
        now = time.monotonic()
        for peer in list(self.peers.values()):
            if now - peer.heard > GONE_AFTER_BEATS * peer.heartbeat_s:
                log.warning("mqtt.instance_gone", other=peer.describe(), note="not heard")
                del self.peers[peer.instance]
        me = (self.started_at or 0.0, self.instance)
        first = min(self.peers.values(), key=Peer.rank, default=None)
        standby = first is not None and first.rank() < me
        conflict = None
        if self.peers:
            others = ", ".join(p.describe() for p in self.peers.values())
            role = (
                f"this instance holds its commands; {first.describe()} commands the site"
                if standby and first is not None
                else "this instance commands the site; the other holds its commands"
            )
            conflict = f"another rigpilot announces site {self.topics.site!r}: {others}; {role}"
        loop = self.desk.loop
        took_over = self.standby and not standby
        changed = standby != self.standby or (conflict is None) != (loop.conflict is None)
        self.standby = standby
        loop.conflict = conflict
        loop.hold_commands(
            f"another instance commands site {self.topics.site!r}: {first.describe()}"
            if standby and first is not None
            else None
        )
        if not changed:
            return
        if conflict is not None:
            log.error("mqtt.another_instance", problem=conflict, standby=standby)
        else:
            log.warning("mqtt.instance_conflict_over", note="this instance commands the site")
        self._event(
            "instance",
            {
                "instance": self.instance,
                "host": HOST,
                "pid": os.getpid(),
                "started_at": self.started_at,
                "standby": standby,
                "conflict": conflict,
                "others": [p.describe() for p in self.peers.values()],
                "at": self.clock(),
            },
        )
        self._put(self.topics.info, self._info_doc())
        if standby:  # the availability is the commanding instance's to say
            self._retained.pop(self.topics.availability, None)
            self._dirty.pop(self.topics.availability, None)
        else:
            self._retained[self.topics.availability] = b"online"
            self._dirty[self.topics.availability] = None
        if took_over:  # everything this instance knows, in place of the other's
            for topic in self._retained:
                self._dirty[topic] = None
