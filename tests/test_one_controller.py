"""One controller per site: a second ``rigpilot run`` on the same state directory refuses to
start (the real command, real processes, the lock on a real file), and a second instance of
the same site on the same broker is detected by both and never commands (a real Mosquitto)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO, SimFleet
from test_service import KEYS, start, wait_log, write_config

from daemon.statelock import LOCK_NAME


def run_second(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(config), "--ticks", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_second_daemon_on_the_same_state_refuses_to_start_naming_the_pid(
    sim: SimFleet, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "r.toml", sim, keys=KEYS[:2], top="dry_run = true")
    lock = tmp_path / "state" / LOCK_NAME
    first = start(config)
    try:
        await wait_log(config, "daemon.ready")
        second = run_second(config)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr  # one line, nothing logged before it
        assert lines[0].startswith("rigpilot run: state directory ")
        assert f"pid {first.pid}" in lines[0] and str(lock) in lines[0]
        assert lock.read_text().strip() == str(first.pid)
        assert first.poll() is None, "the running daemon is untouched"
        await wait_log(config, "fleet.tick", count=3)  # and keeps ticking
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    assert lock.read_text() == "", "a clean stop leaves no PID behind"

    # SIGKILL: the kernel drops the lock with the process; the next start is not blocked.
    killed = start(config)
    try:
        await wait_log(config, "daemon.ready", count=2)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
    assert lock.read_text().strip() == str(killed.pid)  # a stale PID, but no lock
    again = run_second(config)
    assert again.returncode == 0, again.stderr
