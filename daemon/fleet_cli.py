"""``rigpilot scan`` and ``rigpilot observe``: find rigs, and read them once."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from daemon.observer import Observer, ObserverSettings
from daemon.rig_address import check_rig_address
from drivers.inventory import IdentifyFailure, Inventory, InventoryError, scan
from policies.values import Identity, Observation, ObservationFailure, Reading, rig_text


def _cache(args: argparse.Namespace) -> Path | None:
    state: Path | None = args.state_dir
    return None if state is None else state / "inventory.json"


MAX_TIMEOUT_S = 60.0


def _seconds(text: str) -> float:
    """A deadline in seconds: a finite number above 0 and at most MAX_TIMEOUT_S."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise argparse.ArgumentTypeError(
            f"{text} s: give a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}"
        )
    return value


def scan_parser(prog: str = "rigpilot scan") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Find and identify the rigs in address ranges.",
        epilog="exit status: 0 at least one rig identified; 1 none found; 2 invalid arguments",
    )
    p.add_argument("ranges", nargs="+", metavar="CIDR", help="e.g. 10.0.4.0/24 or 10.0.4.17")
    p.add_argument("--json", action="store_true", help="one JSON object per rig per line")
    p.add_argument("--concurrency", type=int, default=256, help="probes in flight (256)")
    p.add_argument(
        "--timeout", type=_seconds, default=10.0, help="seconds to identify one rig (10, <= 60)"
    )
    p.add_argument(
        "--state-dir", type=Path, default=None, help="cache identities in STATE_DIR/inventory.json"
    )
    return p


def _rig_address(text: str) -> str:
    try:
        return check_rig_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def observe_parser(prog: str = "rigpilot observe") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Identify rigs (or use the cache) and read each one once.",
        epilog="exit status: 0 every rig read; 1 no rig could be read; 2 invalid arguments; "
        "3 some rigs could not be read (each is listed with the reason)",
    )
    p.add_argument("addresses", nargs="+", metavar="ADDRESS", type=_rig_address)
    p.add_argument("--json", action="store_true", help="one JSON object per rig per line")
    p.add_argument("--concurrency", type=int, default=256, help="rigs read at once (256)")
    p.add_argument(
        "--timeout", type=_seconds, default=5.0, help="seconds to read one rig (5, <= 60)"
    )
    p.add_argument(
        "--state-dir", type=Path, default=None, help="cache identities in STATE_DIR/inventory.json"
    )
    return p


def _identity_line(identity: Identity | IdentifyFailure, as_json: bool) -> str:
    if isinstance(identity, IdentifyFailure):
        if as_json:
            return json.dumps(
                {
                    "address": identity.address,
                    "ok": False,
                    "error": identity.kind.value,
                    "detail": identity.detail,
                }
            )
        return (
            f"{identity.address:<15} {'-':<11} {identity.kind.value}: {rig_text(identity.detail)}"
        )
    if as_json:
        return json.dumps({**identity.as_dict(), "ok": True})
    return (
        f"{identity.address:<15} {identity.make.value:<11} {rig_text(identity.model):<12} "
        f"{identity.driver:<15} {rig_text(identity.firmware)}"
    )


def main_scan(argv: Sequence[str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = scan_parser().parse_args(argv)
    try:
        results = asyncio.run(scan(args.ranges, args.concurrency, identify_timeout_s=args.timeout))
    except InventoryError as exc:
        print(f"rigpilot scan: error: {exc}", file=sys.stderr)
        return 2
    inventory = Inventory(_cache(args))
    inventory.load()
    if not args.json:
        print(f"{'address':<15} {'make':<11} {'model':<12} {'driver':<15} firmware", file=out)
    for result in results:
        if isinstance(result, Identity):
            inventory.put(result)
        print(_identity_line(result, args.json), file=out)
    inventory.save()
    found = sum(isinstance(r, Identity) for r in results)
    if not args.json:
        print(
            f"{found} rig(s) identified, {len(results) - found} answering but not identified",
            file=out,
        )
    return 0 if found else 1


def _reading_line(reading: Reading, as_json: bool) -> str:
    if as_json:
        return json.dumps(reading.as_dict())
    if isinstance(reading, ObservationFailure):
        ident = reading.identity
        model = rig_text(ident.model) if ident else "-"
        return f"{reading.address:<15} {model:<12} {reading.kind.value}: {rig_text(reading.detail)}"
    assert isinstance(reading, Observation)
    power = "-" if reading.power_w is None else f"{reading.power_w:.0f}"
    if reading.power_source is not None and reading.power_source.value == "estimated":
        power += "*"
    temp = "-" if reading.max_chip_temp_c is None else f"{reading.max_chip_temp_c:.0f}"
    errors = ",".join(rig_text(e) for e in reading.errors) or "-"
    return (
        f"{reading.rig_id:<15} "
        f"{rig_text(reading.identity.model):<12} {reading.hashrate_ths:8.1f} {power:>6} {temp:>5} "
        f"{reading.mode.value:<7} {'yes' if reading.mining else 'no':<6} {errors}"
    )


async def _observe(args: argparse.Namespace) -> list[Reading]:
    inventory = Inventory(_cache(args))
    inventory.load()
    failures = await inventory.ensure(
        args.addresses, min(args.concurrency, 64), max(args.timeout, 10.0)
    )
    observer = Observer(
        inventory, ObserverSettings(concurrency=args.concurrency, timeout_s=args.timeout)
    )
    known = [a for a in args.addresses if a in inventory.rigs]
    cycle = await observer.cycle(known)
    readings: dict[str, Reading] = dict(cycle.readings)
    now = observer.clock()
    for failure in failures:
        readings[failure.address] = ObservationFailure(
            failure.address, failure.kind, failure.detail, now
        )
    return [readings[a] for a in args.addresses if a in readings]


def main_observe(argv: Sequence[str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = observe_parser().parse_args(argv)
    readings = asyncio.run(_observe(args))
    if not args.json:
        print(
            f"{'address':<15} {'model':<12} {'TH/s':>8} {'W':>6} {'chip':>5} "
            f"{'mode':<7} {'mining':<6} errors",
            file=out,
        )
    for reading in readings:
        print(_reading_line(reading, args.json), file=out)
    if not args.json and any(
        isinstance(r, Observation)
        and r.power_source is not None
        and r.power_source.value == "estimated"
        for r in readings
    ):
        print("* estimated power (the rig reports none)", file=out)
    return observe_status(readings)


def observe_status(readings: Sequence[Reading]) -> int:
    """0: every rig read; 1: none could be; 3: some could not be."""
    read = sum(isinstance(r, Observation) for r in readings)
    if read == 0:
        return 1
    return 0 if read == len(readings) else 3
