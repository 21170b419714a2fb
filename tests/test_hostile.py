"""Hostile rigs (tests/hostile.py) against scan, observe and the daemon: one broken or lying rig
never hurts the fleet."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
from conftest import REPO, FrozenClock, SimFleet
from hostile import HostileRig, hostile

from daemon.fleet_cli import main_observe, main_scan
from daemon.mqtt.state import Prices, decision_event, rig_state
from daemon.observer import Observer, ObserverSettings
from drivers.identify import driver_for, identify
from drivers.inventory import Inventory
from drivers.stock import WhatsminerV2
from drivers.transport import DriverError, decode
from policies.economics import Economics
from policies.guards import Desired
from policies.values import (
    MAX_RIG_TEXT,
    FailureKind,
    Identity,
    Make,
    Mode,
    Observation,
    ObservationFailure,
)
from simulator import antminer as sim_am
from simulator import whatsminer as sim_wm
from simulator.models import lookup
from simulator.rig import SimRig

ENDLESS = "::1"  # IPv6: the simulator holds 0.0.0.0:4028 (IPv4 only) for every 127.x address
HUGE = ENDLESS
TRICKLE = ENDLESS


def _scan(*argv: str) -> tuple[float, list[dict[str, object]]]:
    out = io.StringIO()
    start = time.monotonic()
    assert main_scan([*argv, "--json"], out) == 1  # no rig found: every scan here is hostile
    return time.monotonic() - start, [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("address", "behaviour"), [(ENDLESS, "endless"), (HUGE, "huge"), (TRICKLE, "trickle")]
)
def test_scan_of_a_hostile_rig_returns_within_its_identify_deadline(
    address: str, behaviour: str, tmp_path: Path
) -> None:
    with hostile(HostileRig(address, behaviour)):
        elapsed, lines = _scan(address, "--timeout", "3", "--state-dir", str(tmp_path))
    assert elapsed < 3 + 1, f"scan of a {behaviour} rig took {elapsed:.1f} s"
    assert [line["ok"] for line in lines] == [False]


async def test_identify_reads_no_endless_reply_past_its_cap() -> None:
    """pyasic's own reader would copy an ever-growing buffer for the whole deadline; the
    bounded factory stops each exchange at 4 MiB, so the rig sends little before it is cut."""
    with hostile(HostileRig(ENDLESS, "endless")) as server:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.monotonic()
        with pytest.raises(DriverError) as failed:
            await identify(ENDLESS, 3.0)
        elapsed = time.monotonic() - start
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        sent_mb = server.bytes_sent / 1e6
    assert elapsed < 3.5
    assert failed.value.kind is FailureKind.UNKNOWN_MINER, failed.value.detail
    assert grown_mb < 50, f"RSS grew {grown_mb:.0f} MB"
    assert sent_mb < 200, f"{sent_mb:.0f} MB read from an endless rig"


def _timed_scan(address: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "scan", address, "--timeout", "3", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return time.monotonic() - start, done


@pytest.mark.slow
def test_the_scan_process_exits_promptly(tmp_path: Path) -> None:
    # The same command against an address where nothing answers, measured in the same run:
    # the interpreter's start and the imports, which a loaded machine stretches.
    baseline, _ = _timed_scan("127.9.9.9")
    with hostile(HostileRig(ENDLESS, "endless")):
        elapsed, done = _timed_scan(ENDLESS)
    assert done.returncode == 1, done.stderr  # no rig found
    assert json.loads(done.stdout)["ok"] is False
    assert elapsed < baseline + 3 + 2, f"the scan process took {elapsed:.1f} s ({baseline:.1f})"


async def _tick_times(config: Path, count: int, timeout: float) -> list[float]:
    """When each of the next ``count`` ``fleet.tick`` log lines appeared (polled every 0.1 s)."""
    from helpers import log_events

    deadline = time.monotonic() + timeout
    seen = sum(e.get("event") == "fleet.tick" for e in log_events(config))
    times: list[float] = []
    while len(times) < count:
        assert time.monotonic() < deadline, f"{len(times)} of {count} ticks in {timeout} s"
        now = sum(e.get("event") == "fleet.tick" for e in log_events(config))
        times += [time.monotonic()] * (now - seen)
        seen = now
        await asyncio.sleep(0.1)
    return times


@pytest.mark.slow
@pytest.mark.parametrize("behaviour", ["endless", "trickle"])
async def test_the_daemon_keeps_its_tick_period_and_stops_on_sigterm_beside_a_hostile_rig(
    sim: SimFleet, tmp_path: Path, behaviour: str
) -> None:
    """Two good rigs and one hostile rig, identified at start and again every 10 ticks: ticks
    keep their 1 s period (no gap near the identify deadline) and SIGTERM ends the process
    within 10 s."""
    from helpers import start, wait_log, write_config

    config = write_config(
        tmp_path / "rigpilot.toml", sim, keys=["s19jpro", "m30s"], top="dry_run = true"
    )
    config.write_text(config.read_text() + f'[[rigs]]\naddress = "{ENDLESS}"\n')
    with hostile(HostileRig(ENDLESS, behaviour)):
        proc = start(config)
        try:
            await wait_log(config, "daemon.ready", 60)
            times = await _tick_times(config, 14, 60)  # past the 10th tick's re-identification
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert max(gaps) < 2.5, f"a tick came {max(gaps):.1f} s after the one before"
            mark = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 10)
            assert time.monotonic() - mark < 10
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------------------------------
# Text from rigs is data


ANSI = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred"


def whatsminer_reply(**summary: object) -> bytes:
    clock = FrozenClock()
    rig = SimRig("127.1.0.1", lookup("m30s+"), clock, 0)
    clock.t += 900
    reply = decode(sim_wm.handle_rpc(rig, {"command": "summary+devs"}))
    reply["summary"][0]["SUMMARY"][0].update(summary)
    return json.dumps(reply).encode()


def cached(tmp_path: Path, identity: Identity) -> Path:
    inventory = Inventory(tmp_path / "inventory.json")
    inventory.put(identity)
    inventory.save()
    return tmp_path


WHATSMINER = Identity(ENDLESS, Make.WHATSMINER, "M30S+ V40", "fw", "whatsminer-v2")


def test_ansi_sequences_and_huge_strings_from_a_rig_are_escaped_in_the_table(
    tmp_path: Path,
) -> None:
    reply = whatsminer_reply(
        **{"Error Code Count": 2, "Error Code 0": ANSI, "Error Code 1": "x" * 1_000_000}
    )
    state = cached(tmp_path, WHATSMINER)
    out = io.StringIO()
    with hostile(HostileRig(ENDLESS, "reply", {"summary+devs": reply})):
        assert main_observe([ENDLESS, "--state-dir", str(state)], out) == 0
    table = out.getvalue()
    assert "\x1b" not in table and "\x07" not in table
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in table
    assert max(len(line) for line in table.splitlines()) < 1000  # 1 MB cut to MAX_RIG_TEXT
    assert "x" * MAX_RIG_TEXT + "…" in table


@pytest.mark.parametrize("bad", ["-1", "0", "nan", "inf", "61", "soon"])
def test_observe_timeout_must_be_a_positive_finite_number_of_seconds(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main_observe([ENDLESS, "--timeout", bad])
    assert exited.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_scan_lists_error_status_and_invalid_json_rigs_as_failures(tmp_path: Path) -> None:
    error = {"STATUS": [{"STATUS": "E", "Msg": "Antminer S19 " + ANSI}], "id": 1}
    broken = b'{"STATUS": [{"STATUS": "S"}], "VERSION": [{"Type": "Antminer S19j Pro"}] oops'
    for replies, said in (
        ({"*": json.dumps(error).encode()}, "rig answered E: Antminer S19 \\x1b]0;pwned"),
        # pyasic's repair leaves no VERSION: its fallback Antminer class, read as stock
        # firmware, then finds no STATS in the same broken reply
        ({"*": broken}, "STATS: missing"),
    ):
        with hostile(HostileRig(ENDLESS, "reply", replies)):
            _, lines = _scan(ENDLESS, "--timeout", "3", "--state-dir", str(tmp_path))
        assert [line["ok"] for line in lines] == [False], lines
        assert said in str(lines[0]["detail"])


WEB_BAD_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n{}"


async def test_a_garbled_web_header_keeps_the_reading_with_mode_not_confirmed() -> None:
    clock = FrozenClock()
    rig = SimRig("127.1.0.1", lookup("s19jpro"), clock, 0)
    clock.t += 900
    stats = sim_am.handle_rpc(rig, {"command": "stats"})
    identity = Identity(ENDLESS, Make.ANTMINER, "S19j Pro", "fw", "antminer-stock")
    with hostile(HostileRig(ENDLESS, "reply", {"stats": stats}, web=WEB_BAD_LENGTH)):
        obs = await driver_for(identity).observe(3.0, time.time())
    assert obs.hashrate_ths > 50
    assert any("mode not confirmed" in e and "Content-Length" in e for e in obs.errors)


async def test_a_crashing_driver_logs_its_traceback_once_per_transition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A driver bug (impossible to provoke from a rig once every reply path is bounded, hence
    the injected fault) is reported every cycle but its traceback is logged once."""
    inventory = Inventory()
    inventory.put(WHATSMINER)
    now = [1_000_000.0]
    observer = Observer(inventory, ObserverSettings(open_after=100), clock=lambda: now[0])

    async def crash(self: object, timeout_s: float, at: float) -> Observation:
        raise RuntimeError("driver bug \x1b[2J")

    monkeypatch.setattr(WhatsminerV2, "observe", crash)
    with structlog.testing.capture_logs() as logs:
        for _ in range(4):
            reading = (await observer.cycle()).readings[ENDLESS]
            assert isinstance(reading, ObservationFailure)
            assert reading.detail == "RuntimeError: driver bug \\x1b[2J"
            now[0] += 10
    assert [e["event"] for e in logs].count("rig.observe_crashed") == 1


def test_rig_text_is_escaped_in_the_mqtt_state_and_the_decision_reasons() -> None:
    failure = ObservationFailure(ENDLESS, FailureKind.BAD_REPLY, "rig refused: " + ANSI, 0.0)
    desired = Desired(ENDLESS, Mode.SLEEP, None, "plugin quotes the rig: " + ANSI, "plugin")
    prices = Prices(None, None, Economics())
    state = rig_state(ENDLESS, WHATSMINER, failure, desired, prices)
    text = json.loads(json.dumps(state))  # what a subscriber decodes
    assert "\x1b" not in text["error"] and "\\x1b]0;pwned" in text["error"]
    assert "\x1b" not in text["desired"]["reason"]
    assert "\x1b" not in decision_event(desired, 0.0, True)["reason"]


@pytest.mark.parametrize("behaviour", ["endless", "huge"])
async def test_an_oversized_v3_reply_is_a_bad_reply_not_unreachable(behaviour: str) -> None:
    identity = Identity(ENDLESS, Make.WHATSMINER, "M60S VK40", "fw", "whatsminer-v3")
    with hostile(HostileRig(ENDLESS, behaviour, v3=True)), pytest.raises(DriverError) as failed:
        await driver_for(identity).observe(3.0, time.time())
    assert failed.value.kind is FailureKind.BAD_REPLY
    assert failed.value.detail == "reply larger than 4 MiB"


@pytest.mark.parametrize(
    ("behaviour", "kind"), [("endless", "bad_reply"), ("huge", "bad_reply"), ("trickle", "timeout")]
)
def test_observe_names_each_hostile_rig_within_its_deadline(
    tmp_path: Path, behaviour: str, kind: str
) -> None:
    state = cached(tmp_path, WHATSMINER)
    out = io.StringIO()
    start = time.monotonic()
    with hostile(HostileRig(ENDLESS, behaviour)):
        argv = [ENDLESS, "--json", "--timeout", "2", "--state-dir", str(state)]
        assert main_observe(argv, out) == 1  # no rig read
    assert time.monotonic() - start < 2 + 1
    line = json.loads(out.getvalue())
    assert (line["ok"], line["error"]) == (False, kind), line


@pytest.mark.slow
async def test_sigterm_while_identifying_a_hostile_rig_ends_the_daemon_at_once(
    tmp_path: Path,
) -> None:
    from helpers import NotifySocket, log_events, start

    config = tmp_path / "rigpilot.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\ndry_run = true\n[[rigs]]\naddress = "{ENDLESS}"\n'
    )
    notify = NotifySocket(tmp_path)
    try:
        with hostile(HostileRig(ENDLESS, "trickle")):  # identification takes about 5 s
            proc = start(config, {"NOTIFY_SOCKET": str(notify.path)})
            try:
                await notify.wait("STATUS", 1, 60, containing="identifying")
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 10) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        notify.close()
    # At once: the stop came while the rig was still being identified, not after it.
    stopped = [e for e in log_events(config) if e.get("event") == "daemon.stopped"]
    assert stopped and stopped[0]["note"].startswith("stopped while identifying")


async def test_a_crashing_identification_logs_its_traceback_once_per_transition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Injected (no rig reply reaches a crash any more): retried every 10 ticks, the crash is
    reported each time and its traceback logged once."""
    from drivers import inventory

    async def crash(address: str, timeout_s: float) -> Identity:
        raise RuntimeError("identify bug \x1b[2J")

    monkeypatch.setattr(inventory, "identify", crash)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            (failure,) = await inventory.identify_many([ENDLESS], 1, 1.0)
            assert isinstance(failure, inventory.IdentifyFailure)
            assert failure.detail == "RuntimeError: identify bug \\x1b[2J"
    assert [e["event"] for e in logs].count("rig.identify_crashed") == 1
