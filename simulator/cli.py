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
from simulator.switches import PDU_KINDS, SwitchBank, build_switches, parse_switch, wire

log = structlog.get_logger("simulator")


def handlers() -> dict[str, MakeHandlers]:
    """The protocol handlers of every simulated make."""
    from simulator import antminer, braiins, epic, luxos, vnish, whatsminer

    return {
        "antminer": antminer.HANDLERS,
        "whatsminer": whatsminer.HANDLERS,
        "luxos": luxos.HANDLERS,
        "braiins": braiins.HANDLERS,
        "epic": epic.HANDLERS,
        "vnish": vnish.HANDLERS,
    }


def build_parser(prog: str = "rigpilot sim") -> argparse.ArgumentParser:
    models = ", ".join(f"{m.key} ({m.make})" for m in MODELS.values())
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Run simulated Antminer and Whatsminer rigs that unmodified pyasic takes for real "
            "ones: cgminer RPC on 4028, the Antminer web UI on 80, btminer API v2 on 4028 and "
            "v3 on 4433, LuxOS's API on 4028, Braiins OS's REST API on 80, gRPC on 50051 and "
            "cgminer API on 4028, ePIC's HTTP API on 4028, VNish's RPC on 4028 and REST API on "
            "80, each rig on its own loopback address, inside a private network namespace. "
            "Runs until SIGINT/SIGTERM."
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
        "--braiins",
        action="append",
        default=[],
        metavar="MODEL[@FW]:COUNT",
        help="add COUNT Antminers of MODEL running Braiins OS 25.x (repeatable), e.g. s19jpro:10",
    )
    p.add_argument(
        "--epic",
        action="append",
        default=[],
        metavar="MODEL[@FW]:COUNT",
        help="add COUNT Antminers of MODEL running ePIC PowerPlay (repeatable), e.g. s19jpro:10",
    )
    p.add_argument(
        "--vnish",
        action="append",
        default=[],
        metavar="MODEL[@FW]:COUNT",
        help="add COUNT Antminers of MODEL running VNish (repeatable), e.g. s19jpro:10",
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
        "--pdu",
        action="append",
        default=[],
        metavar="KIND:OUTLETS",
        help="add a switched, metered rack PDU answering SNMP v2c on UDP 161 (repeatable): "
        "apc:24 (PowerNet-MIB) or raritan:24 (PDU2-MIB); see docs/power-switches.md",
    )
    p.add_argument(
        "--plug",
        action="append",
        default=[],
        metavar="KIND",
        help="add a metered smart plug on port 80 (repeatable): shelly (Gen2 RPC) or tasmota",
    )
    p.add_argument(
        "--switch-base",
        default=None,
        help="first switch address: PDUs, then plugs, in the order given (default 127.2.0.1; "
        "with --block N, 127.(N+1).254.1: a switch must be in its own process's block)",
    )
    p.add_argument(
        "--outlets-per-rig",
        type=int,
        default=1,
        help="outlets feeding each rig (2 for dual-PSU rigs); rigs are wired in order to "
        "the switches' outlets in order (default 1)",
    )
    p.add_argument(
        "--snmp-port",
        type=int,
        default=161,
        help="UDP port of the simulated PDUs' SNMP agents (default 161)",
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


def default_switch_base(block: int | None) -> str:
    """Where switches start unless ``--switch-base`` says: 127.2.0.1 for one simulator process;
    with ``--block N``, high in that block's own /16 (127.(N+1).254.1), because a connection to
    another block's addresses is steered to that block's process."""
    if block is None:
        return "127.2.0.1"
    return block_base(block).rsplit(".", 2)[0] + ".254.1"


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


def main(argv: Sequence[str] | None = None, prog: str = "rigpilot sim") -> int:  # noqa: C901, PLR0912, PLR0915  the simulator's start-up: each listener and its failure
    args = build_parser(prog).parse_args(argv)
    try:
        groups: list[GroupSpec] = []
        options: dict[str, Any] = {}
        if args.fleet:
            groups, options = load_fleet_file(args.fleet)
        groups += [parse_group(t, "antminer") for t in args.antminer]
        groups += [parse_group(t, "whatsminer") for t in args.whatsminer]
        groups += [replace(parse_group(t, "antminer"), os="luxos") for t in args.luxos]
        groups += [replace(parse_group(t, "antminer"), os="braiins") for t in args.braiins]
        groups += [replace(parse_group(t, "antminer"), os="epic") for t in args.epic]
        groups += [replace(parse_group(t, "antminer"), os="vnish") for t in args.vnish]
        faults = [_parse_fault(t) for t in args.fault]
        switch_specs = [parse_switch(t) for t in args.pdu]
        for text in args.pdu:
            if parse_switch(text).kind not in PDU_KINDS:
                raise ValueError(f"--pdu {text!r}: not a PDU kind; use --plug for plugs")
        for text in args.plug:
            spec = parse_switch(text)
            if spec.kind in PDU_KINDS:
                raise ValueError(f"--plug {text!r}: a PDU; use --pdu {spec.kind}:OUTLETS")
            switch_specs.append(spec)
    except ValueError as exc:
        print(f"rigpilot sim: error: {exc}", file=sys.stderr)
        return 2
    if not groups:
        print(
            "rigpilot sim: error: no rigs; give --antminer, --whatsminer, --luxos, --braiins, "
            "--epic, --vnish or --fleet",
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
        switch_base = args.switch_base or default_switch_base(args.block)
        if args.block is not None and switch_base.split(".")[:2] != base.split(".")[:2]:
            raise ValueError(
                f"--switch-base {switch_base} is outside block {args.block} "
                f"({block_base(args.block).rsplit('.', 2)[0]}.0.0/16): connections to it would "
                "reach another block's process"
            )
        switches = build_switches(switch_specs, fleet.clock, switch_base)
        clash = {sw.address for sw in switches} & set(fleet.by_address)
        if clash:
            raise ValueError(f"switch address {sorted(clash)[0]} is a rig's; move --switch-base")
        wire(switches, fleet.rigs, args.outlets_per_rig)
        fleet.switches = SwitchBank(switches)
    except (KeyError, ValueError) as exc:
        print(f"rigpilot sim: error: {exc}", file=sys.stderr)
        return 2
    control = args.control or Path(tempfile.gettempdir()) / f"rigpilot-sim-{os.getpid()}.sock"
    return _run(_serve(fleet, control, args.json, args.snmp_port, args.block))


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed: it halves the per-connection cost."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _serve(
    fleet: Fleet, control_path: Path, as_json: bool, snmp_port: int = 161, block: int | None = None
) -> int:
    server = FleetServer(fleet, handlers())
    try:
        await server.start(block=block)
        await fleet.switches.start(server.http_hosts, snmp_port)
    except OSError as exc:
        print(f"rigpilot sim: error: cannot listen: {exc}", file=sys.stderr)
        return 1
    from simulator import braiins

    try:
        grpc_servers = await braiins.serve_grpc([r for r in fleet.rigs if r.spec.make == "braiins"])
    except OSError as exc:
        await server.close()
        print(f"rigpilot sim: error: cannot listen for gRPC: {exc}", file=sys.stderr)
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
    for grpc_server in grpc_servers:
        grpc_server.close()
    fleet.switches.close()
    await server.close()
    control_path.unlink(missing_ok=True)
    log.info("sim.stopped", requests=server.stats.requests)
    return 0
