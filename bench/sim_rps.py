"""Simulator throughput: requests per second and CPU per request with 10,000 rigs.

Starts ``python -m simulator`` with a mixed fleet in a private network namespace, then drives
it from this process with raw RPC requests (the reads a poller sends: ``stats`` to Antminers,
``summary`` to Whatsminers), one connection per request as pyasic does, spread over every rig.
The simulator's CPU is read from its control API before and after, so the figure is the
server's cost alone, whatever the load generator costs.

Baseline, measured in the same run with the same client: a bare server on the same event loop
(uvloop where installed) that answers
every connection with a fixed reply. The difference is what the simulator's own work
(address dispatch, physics, JSON) costs per request.

Ends with one line: ``RESULT rigs=... rps=... cpu_us_per_req=... capacity_rps_one_core=...
baseline_cpu_us_per_req=... target_rps=5000 ok=...``.

Usage: python -m bench.sim_rps [--rigs 10000] [--seconds 10] [--concurrency 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simulator import launch  # noqa: E402
from simulator.netns import ensure_private_netns  # noqa: E402

BASELINE_PORT = 14999
TARGET_RPS = 5000.0


class _Once(asyncio.Protocol):
    """Client side of one request: send, read to EOF, report."""

    def __init__(self, payload: bytes, done: asyncio.Future[int]) -> None:
        self.payload = payload
        self.done = done
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.size += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.size)


async def _drive(
    targets: list[tuple[str, int, bytes]], seconds: float, concurrency: int
) -> tuple[int, int, float]:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    ok = failed = 0
    counter = 0

    async def worker(offset: int) -> None:
        nonlocal ok, failed, counter
        i = offset
        while time.monotonic() < deadline:
            host, port, payload = targets[i % len(targets)]
            i += concurrency
            done: asyncio.Future[int] = loop.create_future()
            try:
                await loop.create_connection(partial(_Once, payload, done), host, port)
                size = await asyncio.wait_for(done, 5.0)
                if size > 0:
                    ok += 1
                else:
                    failed += 1
            except (OSError, TimeoutError):
                failed += 1
            counter += 1

    start = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return ok, failed, time.monotonic() - start


def _baseline_server() -> None:
    reply = json.dumps({"STATUS": [{"STATUS": "S"}], "SUMMARY": [{"Elapsed": 1}]}).encode()

    class Fixed(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)

        def data_received(self, data: bytes) -> None:
            self.transport.write(reply)
            self.transport.close()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(Fixed, "127.0.0.1", BASELINE_PORT, backlog=4096)
        print("ready", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print(usage.ru_utime + usage.ru_stime, flush=True)

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())  # the same event loop the simulator runs on


def _cpu_of(proc: subprocess.Popen[str]) -> float:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("cpu\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rigs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        _baseline_server()
        return 0
    ensure_private_netns()
    half = args.rigs // 2
    control = Path(tempfile.mkdtemp()) / "ctl.sock"
    sim = launch.start(
        [
            "--antminer",
            f"s19jpro:{half - half // 2}",
            "--antminer",
            f"s21:{half // 2}",
            "--whatsminer",
            f"m30s+:{args.rigs - half}",
        ],
        control,
    )
    ctl, rigs = sim.control, sim.rigs
    try:
        targets = [
            (
                r["address"],
                4028,
                b'{"command":"stats"}' if r["make"] == "antminer" else b'{"command":"summary"}',
            )
            for r in rigs
        ]
        asyncio.run(_drive(targets[:200], 1.0, 32))  # warm up
        before = ctl.stats()
        ok, failed, wall = asyncio.run(_drive(targets, args.seconds, args.concurrency))
        after = ctl.stats()
        rss_mb = after["rss_mb"]
    finally:
        sim.stop()

    base = subprocess.Popen(
        [sys.executable, __file__, "--baseline-server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert base.stdout is not None
        base.stdout.readline()
        base_targets = [("127.0.0.1", BASELINE_PORT, b'{"command":"summary"}')]
        asyncio.run(_drive(base_targets, 1.0, 32))
        b_cpu0 = _cpu_of(base)
        b_ok, _, b_wall = asyncio.run(_drive(base_targets, args.seconds, args.concurrency))
        b_cpu1 = _cpu_of(base)
    finally:
        base.kill()
        base.wait()

    served = after["requests"] - before["requests"]
    cpu = after["cpu_s"] - before["cpu_s"]
    cpu_us = cpu / served * 1e6 if served else float("inf")
    capacity = 1e6 / cpu_us if served else 0.0
    base_us = (b_cpu1 - b_cpu0) / b_ok * 1e6 if b_ok else float("inf")
    print(
        f"simulator: {len(rigs)} rigs, {served} requests in {wall:.1f} s "
        f"({ok / wall:.0f}/s as driven by one Python client), {failed} failed, "
        f"{cpu:.2f} s CPU, RSS {rss_mb:.0f} MB"
    )
    print(
        f"baseline bare asyncio server: {b_ok} requests in {b_wall:.1f} s, "
        f"{base_us:.0f} us CPU per request"
    )
    print(
        f"RESULT rigs={len(rigs)} rps={ok / wall:.0f} cpu_us_per_req={cpu_us:.1f} "
        f"capacity_rps_one_core={capacity:.0f} baseline_cpu_us_per_req={base_us:.1f} "
        f"failed={failed} sim_rss_mb={rss_mb:.0f} target_rps={TARGET_RPS:.0f} "
        f"ok={'yes' if capacity >= TARGET_RPS and failed == 0 else 'no'}"
    )
    return 0 if capacity >= TARGET_RPS and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
