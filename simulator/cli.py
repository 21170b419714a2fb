"""``rigpilot sim``: run a simulated fleet until stopped."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from simulator.control import ControlApi, serve_control
from simulator.fleet import DEFAULT_BASE, Fleet, GroupSpec, load_fleet_file, parse_group
from simulator.models import MODELS
from simulator.netns import NetnsError, enter_private_netns, join_instructions, loopback_only
from simulator.protocol import MakeHandlers
from simulator.rig import Fault, SimClock
from simulator.server import BLOCK_RIGS, FleetServer, block_base

log = structlog.get_logger("simulator")


def handlers() -> dict[str, MakeHandlers]:
    """The protocol handlers of every simulated make."""
    from simulator import antminer, luxos, whatsminer

    return {
        "antminer": antminer.HANDLERS,
        "whatsminer": whatsminer.HANDLERS,
        "luxos": luxos.HANDLERS,
    }


def build_parser(prog: str = "rigpilot sim") -> argparse.ArgumentParser:
    models = ", ".join(f"{m.key} ({m.make})" for m in MODELS.values())
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Run simulated Antminer and Whatsminer rigs that unmodified pyasic takes for real "
            "ones: cgminer RPC on 4028, the Antminer web UI on 80, btminer API v2 on 4028 and "
            "v3 on 4433, LuxOS's API on 4028, each rig on its own loopback address, inside a "
            "private network namespace. Runs until SIGINT/SIGTERM."
        ),
        epilog=f"Models: {models}. Faults: {', '.join(f.value for f in Fault)}.",
    )
    p.add_argument(
        "--antminer",
        action="append",
        default=[],
        metavar="MODEL[@FW]:COUNT",
        help="add COUNT Antminers of MODEL (repeatable), e.g. s19jpro:100",
    )
    p.add_argument(
        "--whatsminer",
        action="append",
        default=[],
        metavar="MODEL[@FW]:COUNT",
        help="add COUNT Whatsminers of MODEL (repeatable), e.g. m30s+:50",
    )
    p.add_argument(
        "--luxos",
        action="append",
        default=[],
        metavar="MODEL[@FW]:COUNT",
        help="add COUNT Antminers of MODEL running LuxOS (repeatable), e.g. s19jpro:10",
    )
    p.add_argument(
        "--fleet",
        type=Path,
        metavar="FILE",
        help="TOML fleet file with [[rigs]] groups (see docs/simulator.md)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="simulated seconds per wall second (default 1; >1 runs physics faster)",
    )
    p.add_argument(
        "--base-address",
        default=None,
        help=f"first rig address in 127.0.0.0/8 (default {DEFAULT_BASE})",
    )
    p.add_argument(
        "--block",
        type=int,
        default=None,
        metavar="N",
        help="serve as the N-th of several simulator processes sharing the ports: rigs from "
        "127.(N+1).0.1 (at most 65,024), connections to 127.(N+1).0.0/16 steered to this "
        "process; start the processes in block order (docs/simulator.md)",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ADDRESS=FAULT[,k=v...]",
        help="start a rig with a fault, e.g. 127.1.0.3=slow,delay_s=2 (repeatable)",
    )
    p.add_argument(
        "--control",
        type=Path,
        default=None,
        help="unix socket of the control API (default: a file in the temp dir)",
    )
    p.add_argument(
        "--netns",
        choices=("auto", "new", "current"),
        default="auto",
        help="auto: enter a private network namespace unless this one only has lo; "
        "new: always enter one; current: stay (refused if other interfaces "
        "exist, so the simulator never listens beyond loopback)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON line first: the rigs' address, make, model, firmware",
    )
    return p


def _parse_fault(text: str) -> tuple[str, Fault, dict[str, Any]]:
    address, sep, rest = text.partition("=")
    if not sep:
        raise ValueError(f"--fault {text!r}: expected ADDRESS=FAULT[,key=value...]")
    name, *pairs = rest.split(",")
    try:
        fault = Fault(name)
    except ValueError:
        known = ", ".join(f.value for f in Fault)
        raise ValueError(f"--fault {text!r}: unknown fault {name!r}; known: {known}") from None
    params: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise ValueError(f"--fault {text!r}: parameter {pair!r} is not key=value")
        params[key] = float(value) if value.replace(".", "", 1).isdigit() else value
    return address, fault, params


def main(argv: Sequence[str] | None = None, prog: str = "rigpilot sim") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        groups: list[GroupSpec] = []
        options: dict[str, Any] = {}
        if args.fleet:
            groups, options = load_fleet_file(args.fleet)
        groups += [parse_group(t, "antminer") for t in args.antminer]
        groups += [parse_group(t, "whatsminer") for t in args.whatsminer]
        groups += [replace(parse_group(t, "antminer"), os="luxos") for t in args.luxos]
        faults = [_parse_fault(t) for t in args.fault]
    except ValueError as exc:
        print(f"rigpilot sim: error: {exc}", file=sys.stderr)
        return 2
    if not groups:
        print(
            "rigpilot sim: error: no rigs; give --antminer, --whatsminer, --luxos or --fleet",
            file=sys.stderr,
        )
        return 2
    if args.netns == "new" or (args.netns == "auto" and not loopback_only()):
        try:
            enter_private_netns()
        except NetnsError as exc:
            print(f"rigpilot sim: error: {exc}", file=sys.stderr)
            return 1
    elif not loopback_only():
        print(
            "rigpilot sim: error: --netns current refused: this network namespace has "
            "interfaces other than lo, and the simulator must not listen beyond loopback",
            file=sys.stderr,
        )
        return 2
    scale = args.time_scale if args.time_scale is not None else options.get("time_scale", 1.0)
    base = args.base_address or options.get("base_address", DEFAULT_BASE)
    try:
        if args.block is not None:
            if args.base_address or "base_address" in options:
                raise ValueError("--block sets the base address; give no --base-address")
            base = block_base(args.block)
            total = sum(g.count for g in groups)
            if total > BLOCK_RIGS:
                raise ValueError(
                    f"--block {args.block}: {total} rigs do not fit in one address block "
                    f"(at most {BLOCK_RIGS}); run more processes"
                )
        fleet = Fleet(groups, SimClock(scale=float(scale)), base_address=str(base))
        for address, fault, params in faults:
            fleet.get(address).set_fault(fault, params)
    except (KeyError, ValueError) as exc:
        print(f"rigpilot sim: error: {exc}", file=sys.stderr)
        return 2
    control = args.control or Path(tempfile.gettempdir()) / f"rigpilot-sim-{os.getpid()}.sock"
    return _run(_serve(fleet, control, args.json, args.block))


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed: it halves the per-connection cost."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _serve(fleet: Fleet, control_path: Path, as_json: bool, block: int | None) -> int:
    server = FleetServer(fleet, handlers())
    try:
        await server.start(block=block)
    except OSError as exc:
        print(f"rigpilot sim: error: cannot listen: {exc}", file=sys.stderr)
        return 1
    api_server = await serve_control(ControlApi(fleet, server), control_path)
    if as_json:
        sys.stdout.write(json.dumps([r.identity() for r in fleet.rigs]) + "\n")
        sys.stdout.flush()
    log.info(
        "sim.started",
        rigs=len(fleet),
        control=str(control_path),
        pid=os.getpid(),
        time_scale=fleet.clock.scale,
        join=join_instructions(os.getpid()),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    api_server.close()
    await server.close()
    control_path.unlink(missing_ok=True)
    log.info("sim.stopped", requests=server.stats.requests)
    return 0
