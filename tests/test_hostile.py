"""Hostile rigs (tests/hostile.py) against scan, observe and the daemon: one broken or lying rig
never hurts the fleet."""

from __future__ import annotations

import asyncio
import io
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SimFleet
from hostile import HostileRig, hostile

from daemon.fleet_cli import main_scan
from drivers.identify import identify
from drivers.transport import DriverError
from policies.values import FailureKind

ENDLESS = "::1"  # IPv6: the simulator holds 0.0.0.0:4028 (IPv4 only) for every 127.x address
HUGE = ENDLESS
TRICKLE = ENDLESS


def _scan(*argv: str) -> tuple[float, list[dict[str, object]]]:
    out = io.StringIO()
    start = time.monotonic()
    assert main_scan([*argv, "--json"], out) == 0
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


def test_the_scan_process_exits_promptly(tmp_path: Path) -> None:
    with hostile(HostileRig(ENDLESS, "endless")):
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "scan", ENDLESS, "--timeout", "3", "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is False
    assert elapsed < 3 + 1 + 5, f"the scan process took {elapsed:.1f} s"  # + interpreter start


async def _ticks(config: Path, count: int, timeout: float) -> list[float]:
    from test_service import log_events

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ticks = [e for e in log_events(config) if e.get("event") == "fleet.tick"]
        if len(ticks) >= count:
            return [time.monotonic()]
        await asyncio.sleep(0.2)
    raise AssertionError(f"fewer than {count} ticks within {timeout} s")


async def test_the_daemon_keeps_ticking_and_stops_on_sigterm_with_an_endless_rig(
    sim: SimFleet, tmp_path: Path
) -> None:
    """Two good rigs and one that streams endlessly on 4028 (identified at start, then again
    every 10 ticks): ticks keep their 1 s period and SIGTERM ends the process within 10 s."""
    from test_service import start, wait_log, write_config

    config = write_config(
        tmp_path / "rigpilot.toml", sim, keys=["s19jpro", "m30s"], top="dry_run = true"
    )
    config.write_text(config.read_text() + f'[[rigs]]\naddress = "{ENDLESS}"\n')
    with hostile(HostileRig(ENDLESS, "endless")):
        proc = start(config)
        try:
            await wait_log(config, "daemon.ready", 60)
            began = time.monotonic()
            await _ticks(config, 15, 60)  # past the 10th tick's re-identification
            period = (time.monotonic() - began) / 15
            assert period < 1.6, f"ticks came every {period:.1f} s (tick_s = 1)"
            mark = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 10)
            assert time.monotonic() - mark < 10
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
