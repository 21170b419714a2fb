"""Start a simulator in a child process and wait until it serves (tests, benchmarks, demo).

The child inherits the caller's network namespace: call
``simulator.netns.ensure_private_netns()`` first, then start clients in the same process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.client import SimControl

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunningSim:
    proc: subprocess.Popen[str]
    rigs: list[dict[str, Any]]
    control: SimControl
    log_path: Path | None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start(
    args: list[str],
    control_path: Path,
    log_path: Path | None = None,
    timeout_s: float = 30.0,
    netns: str = "current",
) -> RunningSim:
    """Run ``python -m simulator ARGS --json`` and return once its control API answers.

    ``netns="new"`` runs it in a network namespace of its own (join it from a thread with
    ``/proc/PID/ns/net``): a second fleet beside one that already holds the ports.

    Logs go to ``log_path`` (never to a pipe nobody reads, which would block the simulator
    once full). Raises RuntimeError with the log's tail when it does not start.
    """
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
    cmd = [
        sys.executable,
        "-m",
        "simulator",
        *args,
        "--json",
        "--control",
        str(control_path),
        "--netns",
        netns,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=PACKAGE_ROOT,
        env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        tail = log_path.read_text()[-2000:] if log_path else "(no log kept)"
        raise RuntimeError(f"simulator did not start (exit {proc.returncode}): {tail}")
    rigs: list[dict[str, Any]] = json.loads(line)
    control = SimControl(control_path)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            control.request("GET", "/health")
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    return RunningSim(proc, rigs, control, log_path)
