"""Chaos soak: the daemon keeps its promises while everything around it fails.

Runs, in a private network namespace, for ``--minutes`` (default 10):

- a simulated fleet of ``--rigs`` (default 1,000; the mixed fleet of ``bench/observe.py``) at
  30x simulated time, ``--faulty`` (10 %) of it with rotating faults — every fault the
  simulator has, and reboots;
- a real Mosquitto (TLS, passwords, the documented ACL) and the daemon as its own process
  (``rigpilot run``), with a real ``NOTIFY_SOCKET`` and watchdog interval;
- three control-room clients (two MQTT 5, one 3.1.1) sending random commands — set, curtail,
  resume, pin, unpin, status, retry — and resending unanswered ones with the same
  ``transaction``, as a careful client would; a market client swinging the hashprice across
  every model's break-even (hand-set prices over MQTT);
- a disruption every ``--disrupt-every`` seconds, in turn: broker SIGKILL and restart, daemon
  SIGKILL and restart, daemon SIGTERM and restart, broker and daemon both killed.

After each disruption, once the daemon is back, the clients and the market pause for a quiet
window of two ticks, then: every healthy rig must be in the state the daemon wants it in.
Healthy: no fault within the reconciler's longest backoff (a command that reached a rig while
it was faulty is retried only after that, by design), and not backing off after a send that
failed outright. At the end the clients stop sending new commands and, for up to 150 s, keep
asking again for every answer they miss (an answer in flight when a broker is SIGKILLed is gone;
asking again with the same ``transaction`` is how a client learns the outcome); then a last
convergence check, and:

- no unhandled exception (no log record with a traceback, nothing on stderr but log lines);
- every command sent has its final answer (after resends), and every acknowledged command
  (answered ``accepted`` or ``done``) has exactly one final answer
  (a resent command's final answer, repeated and marked so, is not a second one), and no
  command was applied twice (``pin.added`` at most once per transaction);
- the audit log is complete: no rig received more write requests (simulator counters) than its
  ``command_intent`` lines account for (at most two requests per command: a Whatsminer API v2
  wake-up is "set mode" then "power on"), and every result line has its intent;
- memory flat: the daemon's RSS in the second half of its longest life within 15 % of the first;
- the watchdog never went silent while the daemon was up (largest gap between WATCHDOG=1 below
  ``WatchdogSec``), and no ``watchdog.silent`` was logged.

Ends with a table and ``RESULT ... ok=yes|no``; writes ``soak.json`` into ``--out``.

``--every-kind`` runs on past ``--minutes`` (up to three times as long) until each kind of
disruption has happened once: on a loaded machine recoveries take longer and a short run could
end before the last kind (tests/test_soak.py uses it).

Usage: python -m bench.soak [--rigs 1000] [--minutes 10] [--disrupt-every 60] [--seed 1]
       [--faulty 0.1] [--out DIR] [--every-kind]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.observe import fleet_args  # noqa: E402

FAULTS = [
    "offline",
    "refuse",
    "hang",
    "slow",
    "malformed",
    "reset",
    "ignore_writes",
    "writes_locked",
    "overheat",
    "dead_board",
    "reboot",
]
DISRUPTIONS = ["broker_kill", "daemon_kill", "daemon_term", "both_kill"]
SITE = "soak"
TICK_S = 5.0
WATCHDOG_S = 20.0
SIM_SCALE = 30.0
WRITES_PER_COMMAND = 2
CONFIRM_DEADLINE_S = 15.0
MAX_ATTEMPTS = 3
# The longest a command that reached a faulty rig can wait before its next try (confirm
# deadline doubling per attempt), plus a tick: a rig is healthy again only after that.
RECOVERY_S = CONFIRM_DEADLINE_S * (2**MAX_ATTEMPTS - 1) + TICK_S
COMMAND_TIMEOUT_S = 45.0
RESEND_ACCEPTED_S = COMMAND_TIMEOUT_S + TICK_S + 10.0
"""An accepted command's final answer is due within its timeout and a tick: past that (plus a
margin) the client asks again."""
DRAIN_S = 150.0
"""At the end, how long the clients keep asking for the answers they miss."""
CRASH_EVENTS = {
    "command.crashed",
    "rig.command_crashed",
    "feed.crashed",
    "mqtt.message_crashed",
    "journal.failed",
    "command.not_persisted",
    "watchdog.silent",
}


def _going_on(opts: Options, elapsed_s: float, disruptions: list[dict[str, Any]]) -> bool:
    """For ``--minutes``; with ``--every-kind`` on (up to 3x as long) until each kind happened."""
    if elapsed_s < opts.minutes * 60:
        return True
    seen = {d["kind"] for d in disruptions}
    return opts.every_kind and elapsed_s < opts.minutes * 60 * 3 and not set(DISRUPTIONS) <= seen


@dataclass
class Options:
    rigs: int = 1000
    minutes: float = 10.0
    disrupt_every_s: float = 60.0
    seed: int = 1
    faulty: float = 0.1
    out: Path | None = None
    every_kind: bool = False


# ----------------------------------------------------------------------------------------------
# The daemon process, with its NOTIFY_SOCKET


class Notify:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.events: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            for line in data.splitlines():
                self.events.append((now, line))

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()

    def times(self, line: str, since: float = 0.0) -> list[float]:
        return [t for t, x in list(self.events) if x == line and t >= since]


@dataclass
class Life:
    pid: int
    started: float
    ready: float | None = None
    ended: float | None = None
    how: str = ""
    rss_kb: list[tuple[float, int]] = field(default_factory=list)


class Daemon:
    def __init__(self, config: Path, notify: Notify, log: Path) -> None:
        self.config, self.notify, self.log = config, notify, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.lives: list[Life] = []
        self.stderr = log.with_name("daemon.stderr")

    def start(self) -> None:
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(self.notify.path),
            "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)),
            "PYTHONPATH": str(REPO),
        }
        out = self.log.open("ab")
        err = self.stderr.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "--log-json", "run", "--config", str(self.config)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )
        err.close()
        self.lives.append(Life(self.proc.pid, time.monotonic()))

    async def ready(self, timeout: float = 120.0) -> float:
        life = self.lives[-1]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.notify.times("READY=1", life.started)
            if got:
                life.ready = got[0]
                return got[0] - life.started
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode} before READY")
            await asyncio.sleep(0.1)
        raise RuntimeError("daemon not READY in time")

    def sample_rss(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.lives[-1].rss_kb.append((time.monotonic(), int(line.split()[1])))
        except OSError:
            pass

    def stop(self, how: str) -> int | None:
        if self.proc is None:
            return None
        if how == "kill":
            self.proc.kill()
        else:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.lives[-1].ended = time.monotonic()
        self.lives[-1].how = how
        self.proc = None
        return code


# ----------------------------------------------------------------------------------------------
# Control-room clients


@dataclass
class Sent:
    tx: str
    command: str
    body: dict[str, Any]
    first: float
    sends: int = 1
    last: float = 0.0


class ControlRoom:
    """Clients sending random commands and recording every answer (by transaction)."""

    def __init__(self, broker: Any, rigs: list[str], groups: list[str], rng: random.Random):
        from mqtt_client import Collector

        self.rng = rng
        self.rigs, self.groups = rigs, groups
        root = f"rigpilot/{SITE}"
        self.root = root
        self.answers_col = Collector(broker, "operator", [f"{root}/response/#"], "soak-answers")
        self.clients = [
            Collector(broker, "operator", [], "soak-op-1"),
            Collector(broker, "operator", [], "soak-op-2"),
            Collector(broker, "operator", [], "soak-op-3", v5=False),
        ]
        self.market = Collector(broker, "operator", [], "soak-market")
        self.sent: dict[str, Sent] = {}
        self.paused = asyncio.Event()
        """No new commands (a quiet window, or the drain at the end)."""
        self.checking = asyncio.Event()
        """A convergence check is running: not even resends."""
        self.draining = False
        self.tasks: list[asyncio.Task[None]] = []
        self.counter = itertools.count(1)
        self.hashprices = itertools.cycle([22.0, 45.0, 70.0, 30.0, 55.0])

    async def start(self) -> None:
        for c in [self.answers_col, *self.clients, self.market]:
            await c.__aenter__()
        for i, c in enumerate(self.clients):
            self.tasks.append(asyncio.create_task(self._run(c, i)))
        self.tasks.append(asyncio.create_task(self._swing()))
        self.tasks.append(asyncio.create_task(self._resend()))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for c in [self.answers_col, *self.clients, self.market]:
            await c.__aexit__(None, None, None)

    def _target(self) -> dict[str, Any]:
        r = self.rng.random()
        if r < 0.6:
            return {"rig": self.rng.choice(self.rigs)}
        if r < 0.85:
            return {"rigs": self.rng.sample(self.rigs, 3)}
        return {"group": self.rng.choice(self.groups)}

    def _command(self) -> tuple[str, dict[str, Any]]:
        kind = self.rng.choice(
            ["set", "set", "curtail", "resume", "pin", "unpin", "status", "retry"]
        )
        if kind == "set":
            mode = self.rng.choice(["sleep", "normal", "low", "auto"])
            return kind, {
                **self._target(),
                "mode": mode,
                "for_s": 120,
                "timeout_s": COMMAND_TIMEOUT_S,
            }
        if kind == "curtail":
            return kind, {**self._target(), "for_s": 120, "timeout_s": COMMAND_TIMEOUT_S}
        if kind == "pin":
            mode = self.rng.choice(["sleep", "normal"])
            return kind, {"rig": self.rng.choice(self.rigs), "mode": mode, "for_s": 90}
        if kind in ("resume", "unpin", "retry"):
            return kind, self._target()
        return "status", {}

    async def _publish(self, client: Any, command: str, body: dict[str, Any]) -> bool:
        if client.client is None:
            return False
        try:
            await client.client.publish(
                f"{self.root}/request/{command}", json.dumps(body), qos=1, timeout=5
            )
        except Exception:  # broker away: the resender tries again
            return False
        return True

    async def _run(self, client: Any, n: int) -> None:
        while True:
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            if self.paused.is_set():
                continue
            command, body = self._command()
            tx = f"c{n}-{next(self.counter)}"
            body["transaction"] = tx
            now = time.monotonic()
            self.sent[tx] = Sent(tx, command, body, now, 1, now)
            await self._publish(client, command, body)

    async def _swing(self) -> None:
        while True:
            await asyncio.sleep(20.0)
            if self.paused.is_set():
                continue
            tx = f"m-{next(self.counter)}"
            body = {
                "input": "hashprice",
                "value": next(self.hashprices),
                "for_s": 3600,
                "transaction": tx,
            }
            now = time.monotonic()
            self.sent[tx] = Sent(tx, "market_set", body, now, 1, now)
            await self._publish(self.market, "market_set", body)

    def answers(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for m in list(self.answers_col.messages):
            try:
                body = m.json()
            except ValueError:
                continue
            if body.get("transaction"):
                out[body["transaction"]].append(body)
        return out

    async def _resend(self) -> None:
        """A command with no answer at all after 15 s, or accepted but without a final answer
        well past its timeout (lost with a broker), is sent again with the same transaction:
        the daemon does not apply it twice, and repeats its final answer."""
        while True:
            await asyncio.sleep(5.0 if not self.draining else 2.0)
            if self.checking.is_set():
                continue  # the quiet window is quiet
            answered = self.answers()
            now = time.monotonic()
            for s in list(self.sent.values()):
                got = answered.get(s.tx, [])
                final = any(a["status"] != "accepted" for a in got)
                quiet = now - s.last
                if final or s.sends >= 8 or quiet < (15.0 if not got else RESEND_ACCEPTED_S):
                    continue
                s.sends += 1
                s.last = now
                await self._publish(
                    self.market if s.tx.startswith("m-") else self.clients[0], s.command, s.body
                )

    def outstanding(self) -> list[str]:
        """Commands without a final answer yet (none at all, or only "accepted")."""
        answered = self.answers()
        return [
            tx
            for tx in self.sent
            if not any(a["status"] != "accepted" for a in answered.get(tx, []))
        ]

    async def drain(self, budget_s: float) -> list[str]:
        """No new commands; resend what is unanswered until every command has its final answer
        or ``budget_s`` is spent; returns what is still outstanding. A client whose answer was
        lost with a killed broker asks again: that is how it learns the outcome."""
        self.paused.set()
        self.draining = True
        deadline = time.monotonic() + budget_s
        try:
            while time.monotonic() < deadline:
                if not self.outstanding():
                    break
                await asyncio.sleep(1.0)
        finally:
            self.draining = False
        return self.outstanding()

    async def status(self, timeout: float = 30.0) -> dict[str, Any]:
        """The daemon's status with every rig's observed and desired mode (request/response)."""
        tx = f"check-{next(self.counter)}"
        body = {"rigs": True, "transaction": tx}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self._publish(self.clients[0], "status", body)
            for _ in range(50):
                got = self.answers().get(tx)
                if got:
                    return dict(got[0]["result"])
                await asyncio.sleep(0.1)
        raise RuntimeError("the daemon did not answer status")

    async def ticks(self, n: int, timeout: float = 120.0) -> None:
        """Wait until the daemon has completed ``n`` more ticks (its own, however long)."""
        seen = (await self.status()).get("at")
        deadline = time.monotonic() + timeout
        while n > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            at = (await self.status()).get("at")
            if at is not None and at != seen:
                seen, n = at, n - 1


# ----------------------------------------------------------------------------------------------


def write_config(folder: Path, broker: Any, rigs: list[str]) -> Path:
    password = folder / "mqtt_password"
    from broker import USERS

    user = broker.add_site(SITE)
    password.write_text(USERS[user])
    lines = "\n".join(
        f'[[rigs]]\naddress = "{a}"\ngroup = "row-{i % 10}"' for i, a in enumerate(rigs)
    )
    config = folder / "rigpilot.toml"
    config.write_text(f"""
state_dir = "{folder / "state"}"
[site]
name = "{SITE}"
[mqtt]
enabled = true
host = "127.0.0.1"
port = {broker.port}
username = "{user}"
password_file = "{password}"
state_interval_s = 30
command_timeout_s = 45
[mqtt.tls]
enabled = true
ca_file = "{broker.pki["ca"]}"
[control]
tick_s = {TICK_S}
confirm_deadline_s = {CONFIRM_DEADLINE_S}
max_attempts = {MAX_ATTEMPTS}
stop_grace_s = 5
wedged_after_s = 25
observe_timeout_s = 3
command_timeout_s = 10
[control.guards]
min_dwell_s = 0
ramp_kw_per_min = 1000000
ramp_rigs_per_s = 10000
[[market.hashprice]]
type = "fixed"
value = 40.0
[[market.power]]
type = "fixed"
value_per_kwh = 0.05
{lines}
""")
    return config


class Faults:
    def __init__(self, control: Any, rigs: list[str], share: float, rng: random.Random):
        self.control, self.rigs, self.rng = control, rigs, rng
        self.count = max(1, int(len(rigs) * share))
        self.current: dict[str, str] = {}
        self.history: list[tuple[float, set[str]]] = []  # (when cleared, rigs)
        self.kinds = itertools.cycle(FAULTS)
        self.applied: Counter[str] = Counter()

    def rotate(self) -> None:
        for address, fault in self.current.items():
            if fault != "reboot":
                self.control.clear_faults(address)
        self.history.append((time.monotonic(), set(self.current)))
        chosen = self.rng.sample(self.rigs, self.count)
        self.current = {}
        for address in chosen:
            fault = next(self.kinds)
            if fault == "reboot":
                self.control.reboot(address)
            elif fault == "slow":
                self.control.set_fault(address, fault, delay_s=2.0)
            elif fault == "overheat":
                self.control.set_fault(address, fault, extra_c=40.0)
            else:
                self.control.set_fault(address, fault)
            self.current[address] = fault
            self.applied[fault] += 1

    def unhealthy(self) -> set[str]:
        """Rigs faulty now, or within RECOVERY_S: a command that reached a faulty rig (ignored,
        refused, timed out) is retried only after the reconciler's backoff, by design."""
        since = time.monotonic() - RECOVERY_S
        out = set(self.current)
        for cleared, rigs in self.history:
            if cleared >= since:
                out |= rigs
        return out


def sim_mode(state: dict[str, Any]) -> str:
    return str(state.get("mode"))


async def converge_check(
    room: ControlRoom, control: Any, faults: Faults, rigs: list[str]
) -> dict[str, Any]:
    """Quiet window of two ticks, then every healthy rig must be where the daemon wants it.

    What the daemon wants is asked of it (``status`` with rigs) a cycle before, just before and
    just after reading the rigs' true state: a rig is judged when its desired state held for
    that whole cycle (it had a full cycle to be commanded and confirmed)."""
    was_paused = room.paused.is_set()
    room.paused.set()
    room.checking.set()
    try:
        return await _converge_check(room, control, faults, rigs)
    finally:
        room.checking.clear()
        if not was_paused:  # after the final check the room stays quiet
            room.paused.clear()


async def _converge_check(
    room: ControlRoom, control: Any, faults: Faults, rigs: list[str]
) -> dict[str, Any]:
    await room.ticks(1)  # the daemon's cycles, however long they take
    first = (await room.status()).get("rigs", {})
    await room.ticks(1)
    await asyncio.sleep(2.0)  # the last commands' effect on the rigs (30x simulated time)
    before = (await room.status()).get("rigs", {})
    truth = {a: await asyncio.to_thread(control.rig, a) for a in rigs}
    # A tick may have sent new commands while the rigs were read: the next tick's desired
    # states show it, so a rig is judged only if that one agrees too.
    await room.ticks(1)
    after = (await room.status()).get("rigs", {})
    bad = []
    checked = 0
    skip = faults.unhealthy()
    for address in rigs:
        want, again, early = before.get(address), after.get(address), first.get(address)
        if address in skip or want is None or again is None or early is None:
            continue
        wanted = {(w["desired"], w["power_limit_w"]) for w in (early, want, again)}
        if len(wanted) > 1:
            continue  # the desired state changed within the last cycle: judged next time
        if want["desired"] == "unknown" or want["mode"] == "unknown" or want["not_responding"]:
            continue
        if want.get("retry_at") is not None:
            continue  # its last command failed (a fault just cleared): backing off, by design
        state = truth[address]
        checked += 1
        if want["desired"] == "limit":
            ok = state.get("power_limit_w") == want["power_limit_w"]
        else:
            ok = sim_mode(state) == want["desired"]
        if not ok:
            bad.append(f"{address}: wants {want['desired']} ({want['by']}), is {sim_mode(state)}")
    return {"checked": checked, "off_target": len(bad), "examples": bad[:5]}


async def soak(opts: Options) -> dict[str, Any]:
    from broker import Broker

    from simulator import launch

    rng = random.Random(opts.seed)
    folder = Path(opts.out or tempfile.mkdtemp(prefix="rigpilot-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(
        f"soak: {opts.rigs} rigs, {opts.minutes} min, disruption every "
        f"{opts.disrupt_every_s:.0f} s, output in {folder}",
        flush=True,
    )
    sim = launch.start(
        [*fleet_args(opts.rigs), "--time-scale", str(SIM_SCALE)],
        folder / "sim.sock",
        folder / "sim.log",
        timeout_s=120,
    )
    control = sim.control
    rigs = [r["address"] for r in sim.rigs]
    await asyncio.to_thread(control.request, "POST", "/counters/reset")
    broker = Broker(folder / "broker")
    broker.start()
    config = write_config(folder, broker, rigs)
    notify = Notify(folder / "notify.sock")
    daemon = Daemon(config, notify, folder / "daemon.log")
    room = ControlRoom(broker, rigs, [f"row-{i}" for i in range(10)], rng)
    faults = Faults(control, rigs, opts.faulty, rng)
    disruptions: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        daemon.start()
        first_ready = await daemon.ready(300)
        print(f"soak: daemon ready after {first_ready:.1f} s (identification included)", flush=True)
        await room.start()
        started = time.monotonic()
        kinds = itertools.cycle(DISRUPTIONS)
        next_fault = time.monotonic()
        next_disruption = time.monotonic() + opts.disrupt_every_s
        while _going_on(opts, time.monotonic() - started, disruptions):
            now = time.monotonic()
            daemon.sample_rss()
            if now >= next_fault:
                await asyncio.to_thread(faults.rotate)
                next_fault = now + 2 * TICK_S * 3
            if now >= next_disruption:
                kind = next(kinds)
                t0 = time.monotonic()
                if kind == "broker_kill":
                    broker.kill()
                    await asyncio.sleep(3.0)
                    broker.start()
                elif kind == "daemon_kill":
                    daemon.stop("kill")
                    daemon.start()
                elif kind == "daemon_term":
                    code = daemon.stop("term")
                    if code != 0:
                        disruptions.append({"kind": kind, "error": f"exit {code}"})
                    daemon.start()
                else:
                    broker.kill()
                    daemon.stop("kill")
                    await asyncio.sleep(2.0)
                    broker.start()
                    daemon.start()
                if kind != "broker_kill":
                    await daemon.ready()
                recovered = time.monotonic() - t0
                check = await converge_check(room, control, faults, rigs)
                disruptions.append({"kind": kind, "recovered_s": round(recovered, 1), **check})
                print(
                    f"soak: {kind:12s} back in {recovered:5.1f} s; {check['checked']} healthy "
                    f"rigs checked, {check['off_target']} off target",
                    flush=True,
                )
                next_disruption = time.monotonic() + opts.disrupt_every_s
            await asyncio.sleep(1.0)
        # Drain: no new commands; every acknowledged one gets its final answer.
        outstanding = await room.drain(DRAIN_S)
        print(
            f"soak: drained; {len(outstanding)} command(s) still without a final answer",
            flush=True,
        )
        final_check = await converge_check(room, control, faults, rigs)
        code = daemon.stop("term")
        await room.stop()
        writes = {}
        for address in rigs:
            state = await asyncio.to_thread(control.rig, address)
            writes[address] = int(state["counters"]["writes"])
    finally:
        if daemon.proc is not None:
            daemon.stop("kill")
        broker.stop()
        sim.stop()
        notify.close()
    return evaluate(
        folder,
        opts,
        daemon,
        notify,
        room,
        faults,
        disruptions,
        final_check,
        code,
        rigs,
        writes,
        time.monotonic() - started,
    )


def evaluate(
    folder: Path,
    opts: Options,
    daemon: Daemon,
    notify: Notify,
    room: ControlRoom,
    faults: Faults,
    disruptions: list[dict[str, Any]],
    final_check: dict[str, Any],
    last_exit: int | None,
    rigs: list[str],
    writes: dict[str, int],
    wall_s: float,
) -> dict[str, Any]:
    logs = []
    stray = 0
    for line in (folder / "daemon.log").read_text(errors="replace").splitlines():
        try:
            logs.append(json.loads(line))
        except ValueError:
            stray += 1  # not a log line: a traceback or a print
    crashes = [e for e in logs if "exception" in e or e.get("event") in CRASH_EVENTS]
    # Commands.
    answers = room.answers()
    finals_per_tx = {
        tx: [a for a in got if a["status"] != "accepted" and not a.get("repeated")]
        for tx, got in answers.items()
    }
    repeats = {tx: [a for a in got if a.get("repeated")] for tx, got in answers.items()}
    duplicates = [tx for tx, f in finals_per_tx.items() if len(f) > 1]
    acked = [tx for tx, got in answers.items() if got]
    # A final answer lost with a killed broker reaches the client when it asks again: the
    # daemon repeats it (marked "repeated"); lost means the client never got one at all.
    lost = [tx for tx in acked if not finals_per_tx.get(tx) and not repeats.get(tx)]
    unanswered = [tx for tx in room.sent if tx not in answers]
    pins = Counter(e.get("transaction") for e in logs if e.get("event") == "pin.added")
    applied_twice = [tx for tx, n in pins.items() if tx and n > 1]
    statuses = Counter(a["status"] for got in finals_per_tx.values() for a in got)
    # Audit completeness against what the rigs saw (the simulator's write counters).
    audit_lines = []
    for path in sorted((folder / "state").glob("audit.jsonl*")):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                audit_lines.append(json.loads(line))
    intents = Counter(a["rig"] for a in audit_lines if a["kind"] == "command_intent")
    results = Counter(a["rig"] for a in audit_lines if a["kind"] == "command" and not a["dry_run"])
    # One command is one write request, or two where the protocol needs it (a Whatsminer API v2
    # wake-up is "set mode" then "power on"): more writes than that means an unaudited command.
    audit_gaps = [r for r in rigs if writes.get(r, 0) > WRITES_PER_COMMAND * intents.get(r, 0)]
    results_without_intent = [r for r in results if results[r] > intents.get(r, 0)]
    # Memory: the longest life's RSS, first half vs second half.
    longest = max(daemon.lives, key=lambda life: len(life.rss_kb))
    samples = [kb for _, kb in longest.rss_kb]
    half = len(samples) // 2
    rss_first = max(samples[:half]) if half else 0
    rss_second = max(samples[half:]) if half else 0
    growth = (rss_second / rss_first - 1.0) if rss_first else 0.0
    # Watchdog: gaps between pings inside each life, after READY.
    worst_gap = 0.0
    for life in daemon.lives:
        if life.ready is None:
            continue
        end = life.ended or time.monotonic()
        pings = [t for t in notify.times("WATCHDOG=1", life.ready) if t <= end]
        points = [life.ready, *pings]
        gaps = [b - a for a, b in itertools.pairwise(points)]
        worst_gap = max([worst_gap, *gaps])
    off_target = sum(d.get("off_target", 0) for d in disruptions) + final_check["off_target"]
    checks = {
        "healthy rigs on target after every disruption": off_target == 0,
        "no unhandled exception": not crashes and stray == 0,
        "no acknowledged command lost": not lost,
        "every command answered in the end": not unanswered,
        "no command answered twice": not duplicates,
        "no command applied twice": not applied_twice,
        "audit log complete": not audit_gaps and not results_without_intent,
        "memory flat (< 15 % growth)": growth < 0.15,
        "watchdog never silent while up": worst_gap < WATCHDOG_S,
        "clean exit on SIGTERM": last_exit == 0 and not any("error" in d for d in disruptions),
    }
    summary = {
        "rigs": opts.rigs,
        "minutes": opts.minutes,
        "wall_s": round(wall_s, 1),
        "disruptions": disruptions,
        "final_check": final_check,
        "faults_applied": dict(faults.applied),
        "daemon_lives": len(daemon.lives),
        "commands_sent": len(room.sent),
        "commands_resent": sum(s.sends - 1 for s in room.sent.values()),
        "final_answers_repeated": sum(1 for r in repeats.values() if r),
        "answers": dict(statuses),
        "acknowledged": len(acked),
        "never_answered": len(unanswered),
        "lost": lost[:10],
        "duplicates": duplicates[:10],
        "applied_twice": applied_twice[:10],
        "crashes": [{k: e.get(k) for k in ("event", "exception", "level")} for e in crashes[:5]],
        "stray_output_lines": stray,
        "audit_intents": sum(intents.values()),
        "rig_writes": sum(writes.values()),
        "audit_gaps": audit_gaps[:10],
        "rss_mb_first_half": round(rss_first / 1024, 1),
        "rss_mb_second_half": round(rss_second / 1024, 1),
        "rss_growth": round(growth, 3),
        "worst_watchdog_gap_s": round(worst_gap, 1),
        "checks": checks,
        "ok": all(checks.values()),
    }
    (folder / "soak.json").write_text(json.dumps(summary, indent=2))
    return summary


def report(summary: dict[str, Any]) -> None:
    print()
    print("| disruption | recovered | healthy rigs checked | off target |")
    print("| --- | --- | --- | --- |")
    for d in summary["disruptions"]:
        print(
            f"| {d['kind']} | {d.get('recovered_s', '-')} s | {d.get('checked', '-')} | "
            f"{d.get('off_target', d.get('error', '-'))} |"
        )
    print()
    print("| invariant | held |")
    print("| --- | --- |")
    for name, held in summary["checks"].items():
        print(f"| {name} | {'yes' if held else 'NO'} |")
    print()
    kinds = Counter(d["kind"] for d in summary["disruptions"])
    fields = {
        "rigs": summary["rigs"],
        "minutes": summary["minutes"],
        "disruptions": len(summary["disruptions"]),
        "broker_kills": kinds["broker_kill"] + kinds["both_kill"],
        "daemon_kills": kinds["daemon_kill"] + kinds["both_kill"],
        "daemon_terms": kinds["daemon_term"],
        "commands": summary["commands_sent"],
        "acknowledged": summary["acknowledged"],
        "lost": len(summary["lost"]),
        "applied_twice": len(summary["applied_twice"]),
        "off_target": sum(d.get("off_target", 0) for d in summary["disruptions"]),
        "rss_growth": summary["rss_growth"],
        "worst_watchdog_gap_s": summary["worst_watchdog_gap_s"],
        "ok": "yes" if summary["ok"] else "no",
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--rigs", type=int, default=1000)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--disrupt-every", type=float, default=60.0, dest="disrupt_every_s")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--faulty", type=float, default=0.1)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--every-kind",
        action="store_true",
        help="run past --minutes (up to 3x) until each kind of disruption happened once",
    )
    opts = Options(**vars(p.parse_args(argv)))
    from simulator.netns import enter_private_netns

    # Always a namespace of its own: the soak's simulator takes ports 80, 4028 and 4433 on every
    # address, which another simulator in the caller's namespace (the test suite's) holds.
    enter_private_netns()
    summary = asyncio.run(soak(opts))
    report(summary)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
