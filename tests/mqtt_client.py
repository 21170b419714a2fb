"""Test-side MQTT: a reconnecting collector, and a daemon run in-process against a broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from broker import USERS, Broker

from daemon.config import Settings, load_settings
from daemon.loop import TickReport


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Collector:
    """Subscribes as ``user`` and keeps every message; reconnects (with its session) when the
    broker goes away, as a control-room client would."""

    broker: Broker
    user: str
    topics: list[str]
    client_id: str
    v5: bool = True
    messages: list[Msg] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    client: aiomqtt.Client | None = None
    _task: asyncio.Task[None] | None = None

    def _make(self) -> aiomqtt.Client:
        ctx = ssl.create_default_context(cafile=str(self.broker.pki["ca"]))
        session: dict[str, Any] = (
            {"clean_start": False} if self.v5 else {"clean_session": False}
        )  # keep the session across reconnects, as a control-room client would
        return aiomqtt.Client(
            "127.0.0.1",
            self.broker.port,
            username=self.user,
            password=USERS[self.user],
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if self.v5 else aiomqtt.ProtocolVersion.V311,
            tls_context=ctx,
            keepalive=5,
            **session,
        )

    async def _run(self) -> None:
        while True:
            try:
                async with self._make() as client:
                    self.client = client
                    for t in self.topics:
                        await client.subscribe(t, qos=1)
                    self.connected.set()
                    async for m in client.messages:
                        props = m.properties
                        corr = getattr(props, "CorrelationData", None) if props else None
                        payload = m.payload if isinstance(m.payload, bytes) else b""
                        self.messages.append(
                            Msg(m.topic.value, payload, m.retain, corr, time.monotonic())
                        )
            except aiomqtt.MqttError:
                self.connected.clear()
                self.client = None
                await asyncio.sleep(0.3)

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 15)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def on(self, topic: str) -> list[Msg]:
        return [m for m in self.messages if m.topic == topic]

    async def wait_for(
        self, pred: Callable[[Msg], bool], timeout: float = 30.0, after: int = 0
    ) -> Msg:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages[after:]:
                if pred(m):
                    return m
            await asyncio.sleep(0.05)
        raise AssertionError(f"no matching message within {timeout} s; got {self.messages[-5:]}")

    async def final(self, transaction: str, timeout: float = 30.0) -> dict[str, Any]:
        """The final answer (done, rejected or failed) to ``transaction``."""

        def match(m: Msg) -> bool:
            if "/response/" not in m.topic:
                return False
            body = m.json()
            return bool(body.get("transaction") == transaction and body["status"] != "accepted")

        return dict((await self.wait_for(match, timeout)).json())

    async def count(self, n: int, timeout: float) -> None:
        """Wait until ``n`` messages have arrived (or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)

    def answers(self, transaction: str) -> list[dict[str, Any]]:
        out = []
        for m in self.messages:
            if "/response/" in m.topic:
                body = m.json()
                if body.get("transaction") == transaction:
                    out.append(body)
        return out


def daemon_settings(
    tmp: Path,
    broker: Broker,
    site: str,
    rigs: dict[str, str],
    *,
    dry_run: bool = False,
    discovery: bool = False,
    extra: str = "",
    outlets: dict[str, list[str]] | None = None,
) -> Settings:
    """A config file for ``rigs`` ({address: group}, each fed by its ``outlets``, if any) with
    the broker's TLS and the credentials of ``site``'s daemon user."""
    tmp.mkdir(parents=True, exist_ok=True)
    password = tmp / "mqtt_password"
    user = broker.add_site(site)
    password.write_text(USERS[user] + "\n")
    feeds = outlets or {}
    rig_lines = "\n".join(
        f'[[rigs]]\naddress = "{a}"\ngroup = "{g}"\noutlets = {json.dumps(feeds.get(a, []))}'
        for a, g in rigs.items()
    )
    config = tmp / "rigpilot.toml"
    config.write_text(f"""
state_dir = "{tmp / "state"}"
dry_run = {"true" if dry_run else "false"}
[site]
name = "{site}"
[mqtt]
enabled = true
host = "127.0.0.1"
port = {broker.port}
username = "{user}"
password_file = "{password}"
discovery = {"true" if discovery else "false"}
state_interval_s = 5
command_timeout_s = 60
[mqtt.tls]
enabled = true
ca_file = "{broker.pki["ca"]}"
[control]
tick_s = 1
confirm_deadline_s = 20
[control.guards]
min_dwell_s = 0
ramp_kw_per_min = 100000
ramp_rigs_per_s = 100
[[market.hashprice]]
type = "fixed"
value = 80.0
[[market.power]]
type = "fixed"
value_per_kwh = 0.05
{extra}
{rig_lines}
""")
    return load_settings(config)


@dataclass
class RunningDaemon:
    task: asyncio.Task[int]
    stop: asyncio.Event
    reports: list[TickReport]

    async def close(self) -> int:
        self.stop.set()
        return await asyncio.wait_for(self.task, 30)

    async def ticks(self, n: int, timeout: float = 30.0) -> None:
        """Wait until the daemon has ticked ``n`` more times (a bound, not a sleep)."""
        want = len(self.reports) + n
        deadline = time.monotonic() + timeout
        while len(self.reports) < want:
            if self.task.done():
                self.task.result()
                raise AssertionError(f"the daemon stopped after {len(self.reports)} ticks")
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {n} ticks within {timeout} s")
            await asyncio.sleep(0.05)


async def start_daemon(settings: Settings) -> RunningDaemon:
    from daemon.run import serve

    stop = asyncio.Event()
    reports: list[TickReport] = []
    task = asyncio.create_task(serve(settings, settings.dry_run, on_tick=reports.append, stop=stop))
    deadline = time.monotonic() + 60
    while not reports:
        if task.done():
            task.result()
        if time.monotonic() > deadline:
            raise AssertionError("the daemon did not tick within 60 s")
        await asyncio.sleep(0.05)
    return RunningDaemon(task, stop, reports)
