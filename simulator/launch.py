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

from simulator.client import FleetControl, SimControl

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


GROUP_FLAGS = ("--antminer", "--whatsminer", "--luxos", "--braiins", "--epic", "--vnish")


@dataclass
class RunningFleet:
    """Several simulator processes, one per address block, as one fleet."""

    sims: list[RunningSim]
    rigs: list[dict[str, Any]]
    control: FleetControl

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.sims[0].proc

    def stop(self) -> None:
        for sim in reversed(self.sims):
            sim.stop()


def split_groups(args: list[str], processes: int) -> list[list[str]]:
    """``args`` for each of ``processes`` simulators: every ``MODEL:COUNT`` group (of every
    make's flag, GROUP_FLAGS) split as evenly as can be, the other options to all.
    ValueError for an option that names addresses (``--fleet``, ``--base-address``,
    ``--fault``, ``--block``): the blocks choose the addresses."""
    shares: list[list[str]] = [[] for _ in range(processes)]
    common: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i]
        if flag in ("--fleet", "--base-address", "--fault", "--block", "--control", "--netns"):
            raise ValueError(f"{flag} cannot be given to a fleet of several simulators")
        if flag in GROUP_FLAGS:
            name, _, count = args[i + 1].rpartition(":")
            if not name or not count.isdigit():
                raise ValueError(f"{flag} {args[i + 1]!r}: expected MODEL[@FW]:COUNT")
            total = int(count)
            for k in range(processes):
                n = total // processes + (1 if k < total % processes else 0)
                if n:
                    shares[k] += [flag, f"{name}:{n}"]
            i += 2
        else:
            common.append(flag)
            i += 1
    return [share + common for share in shares]


def start_blocks(
    args: list[str],
    folder: Path,
    processes: int,
    timeout_s: float = 120.0,
    keep_logs: bool = False,
) -> RunningFleet:
    """Start ``processes`` simulators sharing the ports, process N serving the rigs of block
    N (127.(N+1).0.0/16), one after the other (the order their sockets join the port's
    SO_REUSEPORT group is the order the steering filter counts on: simulator/server.py).
    The rigs are ``args``' groups split among them (:func:`split_groups`)."""
    sims: list[RunningSim] = []
    try:
        for block, share in enumerate(split_groups(args, processes)):
            if not share or not any(a in GROUP_FLAGS for a in share):
                break  # fewer rigs than processes
            log_path = folder / f"sim-{block}.log" if keep_logs else None
            sims.append(
                start(
                    [*share, "--block", str(block)],
                    folder / f"sim-{block}.sock",
                    log_path,
                    timeout_s,
                )
            )
    except BaseException:
        for sim in sims:
            sim.stop()
        raise
    rigs = [rig for sim in sims for rig in sim.rigs]
    return RunningFleet(sims, rigs, FleetControl([sim.control for sim in sims]))
