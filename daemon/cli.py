"""The ``rigpilot`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from daemon import __version__

SUBCOMMANDS = {
    "sim": "run a simulated fleet of Antminers and Whatsminers (no hardware needed)",
    "scan": "find and identify the rigs in address ranges",
    "observe": "read rigs once and print what they report",
    "market": "show hashprice, power price and every model's break-even",
    "run": "run the controller daemon (add --dry-run to send no command)",
    "demo": "the daemon on a simulated fleet through the Feb 2026 market slide",
    "status": "print the running daemon's fleet summary",
    "config": "config check [FILE]: validate a configuration, print the effective one",
    "backtest": "replay a price history through the policies and guards, report the money",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rigpilot",
        description="Controller daemon for Bitcoin ASIC mining fleets.",
    )
    p.add_argument("--version", action="version", version=f"rigpilot {__version__}")
    p.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="default: info",
    )
    p.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: JSON unless stderr is a terminal)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rigpilot`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from daemon.logsetup import configure_logging

    configure_logging(level=args.log_level, json=args.log_json, stream=sys.stderr)
    if args.command == "sim":
        # The simulator is a separate program that happens to share the console script; the
        # daemon itself never imports it (docs/architecture.md).
        from simulator.cli import main as sim_main

        return sim_main(rest)
    if args.command == "scan":
        from daemon.fleet_cli import main_scan

        return main_scan(rest)
    if args.command == "observe":
        from daemon.fleet_cli import main_observe

        return main_observe(rest)
    if args.command == "status":
        from daemon.admin_cli import main_status

        return main_status(rest)
    if args.command == "config":
        from daemon.admin_cli import main_config

        return main_config(rest)
    if args.command == "demo":
        # Starts the simulator: reached only from here, lazily, so `rigpilot run` never loads
        # the simulator (docs/architecture.md).
        from daemon.demo import main as demo_main

        return demo_main(rest)
    if args.command == "run":
        from daemon.run import main as run_main

        return run_main(rest)
    if args.command == "backtest":
        from daemon.backtest.cli import main as backtest_main

        return backtest_main(rest)
    if args.command == "market":
        from daemon.market_cli import main as market_main

        return market_main(rest)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
