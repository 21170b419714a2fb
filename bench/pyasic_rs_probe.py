"""What pyasic-rs (the Python bindings of asic-rs) costs against a fleet: a standalone probe.

Identifies every given address with ``pyasic_rs.MinerFactory().get_miner``, reads each found
miner once with ``get_data()`` to warm it (connections, digest-auth state, lazy caches), then
reads them again ``--data-passes`` times and measures that. Work is spread over ``--concurrency``
workers pulling from one queue, so at most that many requests are in flight and no task is
created ahead of its turn.

CPU is ``time.process_time()`` of this whole process, which counts the Rust runtime's worker
threads as well as the Python thread; it is the client's cost alone (the simulator runs in
another process). Divided by the number of rigs attempted, in milliseconds.

Prints ONE JSON line on stdout and exits 0:

- ``{"available": false, "reason": "..."}`` when ``pyasic_rs`` cannot be imported;
- otherwise ``{"available": true, "version", "identify_cpu_ms_per_rig", "data_cpu_ms_per_rig",
  "ok", "failed", "wall_s", ...}`` where ``ok`` counts addresses identified and read without
  error (and with a hashrate) on every measured pass, ``failed`` the rest, and ``wall_s`` the
  wall time of the whole run (identify + warm-up + measured passes). Extra keys give the split
  by phase, the models found and a few error samples.

pyasic-rs is not a rigpilot dependency: run this with the python of a venv that has it, inside
the simulator's network namespace, e.g.

    python bench/pyasic_rs_probe.py --addresses-file rigs.json --concurrency 64

The addresses file holds one address per line, or a JSON array of addresses or of objects with
an ``address`` key (the first line ``python -m simulator --json`` prints).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_ERROR_SAMPLES = 5


class NoHashrateError(Exception):
    """get_data answered, but without a hashrate: the read failed inside asic-rs."""


@dataclass
class Outcome:
    """What one phase did over the fleet."""

    ok: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0


def read_addresses(path: Path) -> list[str]:
    """Addresses from a text file (one a line, ``#`` comments) or a JSON array."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        first_line = text.lstrip().splitlines()[0]
        try:
            items: Any = json.loads(text)
        except json.JSONDecodeError:
            items = json.loads(first_line)  # simulator --json output followed by other lines
        out: list[str] = []
        for item in items:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict) and isinstance(item.get("address"), str):
                out.append(item["address"])
            else:
                raise ValueError(f"{path}: unexpected item {item!r}")
        return out
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


async def run_bounded(
    keys: Sequence[str],
    concurrency: int,
    timeout_s: float,
    call: Callable[[str], Awaitable[object]],
) -> Outcome:
    """Call ``call(key)`` for every key with at most ``concurrency`` in flight; time the lot."""
    outcome = Outcome()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for key in keys:
        queue.put_nowait(key)

    async def worker() -> None:
        while True:
            try:
                key = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                result = await asyncio.wait_for(call(key), timeout_s)
            except TimeoutError:
                outcome.errors[key] = f"timeout after {timeout_s:g} s"
            except Exception as exc:
                outcome.errors[key] = f"{type(exc).__name__}: {exc}"
            else:
                if result is None:
                    outcome.errors[key] = "not identified (get_miner returned None)"
                else:
                    outcome.ok.add(key)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, len(keys))))]
    await asyncio.gather(*workers)
    outcome.cpu_s = time.process_time() - cpu0
    outcome.wall_s = time.perf_counter() - wall0
    return outcome


def per_rig_ms(cpu_s: float, rigs: int) -> float | None:
    return round(cpu_s * 1000.0 / rigs, 3) if rigs else None


async def probe(
    rs: Any, addresses: list[str], concurrency: int, timeout_s: float, data_passes: int
) -> dict[str, object]:
    """Identify and read ``addresses`` with the ``pyasic_rs`` module ``rs``; the result line."""
    start = time.perf_counter()
    factory: Any = rs.MinerFactory()
    miners: dict[str, Any] = {}

    async def identify(address: str) -> object:
        miner: Any = await factory.get_miner(address)
        if miner is not None:
            miners[address] = miner
        return miner

    ident = await run_bounded(addresses, concurrency, timeout_s, identify)

    async def read(address: str) -> object:
        data: Any = await miners[address].get_data()
        if data.hashrate is None:  # asic-rs swallows errors: a failed read is a hollow MinerData
            raise NoHashrateError("get_data returned no hashrate")
        return data

    found = sorted(miners)
    warm = await run_bounded(found, concurrency, timeout_s, read)
    passes: list[Outcome] = []
    for _ in range(data_passes):
        passes.append(await run_bounded(found, concurrency, timeout_s, read))

    ok = set(found)
    errors: dict[str, str] = dict(ident.errors)
    for outcome in passes:
        ok &= outcome.ok
        for key, err in outcome.errors.items():
            errors.setdefault(key, err)
    data_cpu_s = sum(p.cpu_s for p in passes)
    data_wall_s = sum(p.wall_s for p in passes)
    reads = len(found) * len(passes)
    models = Counter(f"{m.make} {m.model} ({m.firmware})" for m in miners.values())
    samples = dict(sorted(errors.items())[:MAX_ERROR_SAMPLES])
    return {
        "available": True,
        "version": package_version(rs),
        "identify_cpu_ms_per_rig": per_rig_ms(ident.cpu_s, len(addresses)),
        "data_cpu_ms_per_rig": per_rig_ms(data_cpu_s, reads),
        "ok": len(ok),
        "failed": len(addresses) - len(ok),
        "wall_s": round(time.perf_counter() - start, 3),
        "rigs": len(addresses),
        "identified": len(found),
        "concurrency": concurrency,
        "data_passes": len(passes),
        "identify_wall_s": round(ident.wall_s, 3),
        "warmup_data_cpu_ms_per_rig": per_rig_ms(warm.cpu_s, len(found)),
        "data_wall_s_per_pass": round(data_wall_s / len(passes), 3) if passes else None,
        "models": dict(sorted(models.items())),
        "error_samples": samples,
    }


def package_version(rs: Any) -> str | None:
    from importlib import metadata

    for name in ("pyasic-rs", "pyasic_rs"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    version: Any = getattr(rs, "__version__", None)
    return str(version) if version is not None else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument("--addresses-file", type=Path, required=True)
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    p.add_argument(
        "--timeout", type=float, default=15.0, help="seconds per get_miner/get_data (default 15)"
    )
    p.add_argument(
        "--data-passes", type=int, default=1, help="measured warm get_data passes (default 1)"
    )
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.data_passes < 1 or args.timeout <= 0:
        p.error("--concurrency and --data-passes must be >= 1, --timeout > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rs: Any = importlib.import_module("pyasic_rs")
    except ImportError as exc:
        print(json.dumps({"available": False, "reason": f"{type(exc).__name__}: {exc}"}))
        return 0
    addresses = read_addresses(args.addresses_file)
    result = asyncio.run(
        probe(rs, addresses, args.concurrency, args.timeout, args.data_passes),
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
