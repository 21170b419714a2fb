"""One hostile rig among a few hundred good ones: does the daemon keep its tick period and memory?

Starts ``python -m simulator`` with the mixed fleet of ``bench/observe.py`` (``--rigs``, 300 by
default) in a private network namespace, and the hostile rigs of ``tests/hostile.py`` on the IPv6
loopback ``[::1]:4028`` (the simulator holds 0.0.0.0:4028). Then runs the real daemon
(``python -m daemon.cli --log-json run``, dry-run, ``tick_s`` 2) once without a hostile rig and
once beside each hostile behaviour (``endless``: bytes forever; ``huge``: a 50 MB reply;
``trickle``: a byte a second), with the same state directory so every good rig is identified
from the cache after the first run. The hostile rig is identified at start, fails, and is tried
again every 10 ticks, as in production.

For each run, from the daemon's own ``fleet.tick`` log timestamps after ``daemon.ready``: the mean
tick period and the longest gap between ticks over ``--ticks`` ticks, the daemon's resident
memory when ready and at the end (``/proc/PID/status`` VmRSS, peak VmHWM), and how long SIGTERM
takes to end the process. Targets (issue 24): the period within 20 % of the baseline's, RSS
within 50 MB of it, exit within 10 s.

Ends with ``RESULT rigs=... base_period_s=... worst_period_ratio=... worst_rss_delta_mb=...
worst_stop_s=... ok=yes|no``.

Usage: python -m bench.hostile [--rigs 300] [--ticks 25] [--tick-s 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the hostile rigs are the tests' own

from bench.observe import fleet_args  # noqa: E402

HOSTILE = "::1"
TARGETS = {"period_ratio": 1.2, "rss_delta_mb": 50.0, "stop_s": 10.0}


@dataclass
class Run:
    name: str
    period_s: float
    max_gap_s: float
    rss_ready_mb: float
    rss_end_mb: float
    hwm_mb: float
    stop_s: float
    rigs_line: str


def _rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def _events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _config(work: Path, addresses: list[str], tick_s: float, hostile: bool) -> Path:
    rigs = [*addresses, HOSTILE] if hostile else addresses
    path = work / ("hostile.toml" if hostile else "base.toml")
    path.write_text(
        f'state_dir = "{work / "state"}"\ndry_run = true\n'
        f"[control]\ntick_s = {tick_s}\n"
        '[[market.hashprice]]\ntype = "fixed"\nvalue = 50.0\n'
        '[[market.power]]\ntype = "fixed"\nvalue_per_kwh = 0.05\n'
        + "".join(f'[[rigs]]\naddress = "{a}"\n' for a in rigs)
    )
    return path


def run_daemon(name: str, config: Path, ticks: int, limit_s: float) -> Run:
    log = config.parent / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "--log-json", "run", "--config", str(config)],
            cwd=REPO,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + limit_s
        rss_ready = hwm = 0.0
        ready = False
        while time.monotonic() < deadline:
            time.sleep(0.2)
            events = _events(log)
            if not ready and any(e.get("event") == "daemon.ready" for e in events):
                ready = True
                rss_ready, _ = _rss_mb(proc.pid)
            if ready:
                at_ready = next(i for i, e in enumerate(events) if e.get("event") == "daemon.ready")
                done = [e for e in events[at_ready:] if e.get("event") == "fleet.tick"]
                if len(done) > ticks:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"{name}: the daemon exited ({proc.returncode}); see {log}")
        else:
            raise RuntimeError(f"{name}: fewer than {ticks} ticks in {limit_s:.0f} s; see {log}")
        rss_end, hwm = _rss_mb(proc.pid)
        mark = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        stop_s = time.monotonic() - mark
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    times = [
        datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")).timestamp() for e in done
    ]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return Run(
        name,
        (times[-1] - times[0]) / (len(times) - 1),
        max(gaps),
        rss_ready,
        rss_end,
        hwm,
        stop_s,
        str(done[-1].get("summary", ""))[:60],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rigs", type=int, default=300)
    parser.add_argument("--ticks", type=int, default=25, help="ticks measured per run")
    parser.add_argument("--tick-s", type=float, default=2.0)
    parser.add_argument("--behaviours", default="endless,huge,trickle")
    parser.add_argument("--limit-s", type=float, default=300.0, help="per run")
    args = parser.parse_args()

    from hostile import HostileRig, hostile

    from simulator import launch
    from simulator.netns import ensure_private_netns

    ensure_private_netns()
    work = Path(tempfile.mkdtemp(prefix="rigpilot-bench-hostile-"))
    sim = launch.start([*fleet_args(args.rigs), "--time-scale", "1"], work / "sim.sock")
    try:
        addresses = [r["address"] for r in sim.rigs]
        print(f"simulator: {len(addresses)} rigs (pid {sim.proc.pid}); work dir {work}", flush=True)
        base_cfg = _config(work, addresses, args.tick_s, hostile=False)
        hostile_cfg = _config(work, addresses, args.tick_s, hostile=True)
        runs = [run_daemon("warm-up", base_cfg, 3, args.limit_s)]  # identifies into the cache
        runs.append(run_daemon("baseline", base_cfg, args.ticks, args.limit_s))
        for behaviour in args.behaviours.split(","):
            with hostile(HostileRig(HOSTILE, behaviour)) as server:
                run = run_daemon(behaviour, hostile_cfg, args.ticks, args.limit_s)
                run.rigs_line += f"; hostile sent {server.bytes_sent / 1e6:.0f} MB"
            runs.append(run)
    finally:
        sim.stop()
    base = runs[1]
    print(
        f"{'run':<9} {'period s':>8} {'max gap':>8} {'RSS ready':>9} {'RSS end':>8} "
        f"{'peak':>6} {'stop s':>6}  fleet"
    )
    for r in runs[1:]:
        print(
            f"{r.name:<9} {r.period_s:8.2f} {r.max_gap_s:8.2f} {r.rss_ready_mb:9.0f} "
            f"{r.rss_end_mb:8.0f} {r.hwm_mb:6.0f} {r.stop_s:6.1f}  {r.rigs_line}"
        )
    hostile_runs = runs[2:]
    ratio = max(r.period_s / base.period_s for r in hostile_runs)
    rss_delta = max(r.hwm_mb - base.hwm_mb for r in hostile_runs)
    stop_s = max(r.stop_s for r in runs[1:])
    ok = (
        ratio <= TARGETS["period_ratio"]
        and rss_delta <= TARGETS["rss_delta_mb"]
        and stop_s <= TARGETS["stop_s"]
    )
    print(
        f"RESULT rigs={args.rigs} base_period_s={base.period_s:.2f} "
        f"worst_period_ratio={ratio:.2f} worst_rss_delta_mb={rss_delta:.0f} "
        f"worst_stop_s={stop_s:.1f} ok={'yes' if ok else 'no'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
