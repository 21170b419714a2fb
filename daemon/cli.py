"""The ``rigpilot`` command line."""

from __future__ import annotations

import argparse
import os
import select
import stat
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
    "fleet": "list every site seen on an MQTT broker (many sites, one control room)",
    "config": "config check [FILE]: validate a configuration, print the effective one",
    "backtest": "replay a price history through the policies and guards, report the money",
}


# A program killed by SIGPIPE is reported by the shell as 128 + 13; exiting with that status
# when stdout's reader went away (`rigpilot observe ... | head`) keeps the convention, so
# `set -o pipefail` scripts see the same as with any other Unix tool.
EXIT_BROKEN_PIPE = 141

EPILOG = """\
The global options (--log-level, --log-json) may also follow COMMAND.

exit status: 0 done; 1 nothing answered (observe: no rig could be read; scan: no rig found;
market: a price with sources configured could not be had; fleet: the broker could not be
asked, or shows no site); 2 invalid command line or configuration; 3 partial or stale
(observe: some rigs could not be read; status: the daemon's summary is stale or missing;
fleet: some retained payloads could not be read); 141 stdout was closed early (a pipe into
head): the rest of the output is dropped quietly, as the shell reports a program ended by
SIGPIPE. COMMAND --help says more."""


def _add_global_options(p: argparse.ArgumentParser, default: object = None) -> None:
    """--log-level and --log-json; ``default=argparse.SUPPRESS`` leaves unset ones out."""
    p.add_argument(
        "--log-level",
        default=default,
        choices=("debug", "info", "warning", "error"),
        help="default: info (`rigpilot run`: the config file's [log] level)",
    )
    p.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=default,
        help=(
            "JSON log lines (default: JSON unless stderr is a terminal; `rigpilot run`: the "
            "config file's [log] json)"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rigpilot",
        description="Controller daemon for Bitcoin ASIC mining fleets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"rigpilot {__version__}")
    _add_global_options(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def split_global_options(
    args: argparse.Namespace, rest: Sequence[str]
) -> tuple[argparse.Namespace, list[str]]:
    """Take the global options given after the subcommand out of ``rest`` (the subcommand's
    arguments) into ``args``; a value given there wins over one given before the subcommand.
    Nothing after a ``--`` is taken."""
    cut = list(rest).index("--") if "--" in rest else len(rest)
    trailing = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_global_options(trailing, default=argparse.SUPPRESS)
    found, left = trailing.parse_known_args(list(rest[:cut]))
    return argparse.Namespace(**{**vars(args), **vars(found)}), [*left, *rest[cut:]]


def _stdout_reader_gone() -> bool:
    """True when stdout (or stderr) is a pipe or socket whose reading end has been closed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (AttributeError, OSError, ValueError):
            continue
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            continue
        poll = select.poll()
        poll.register(fd, 0)  # POLLERR and POLLHUP are always reported
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0)):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rigpilot`` console script; returns the exit status.

    When the reader of stdout goes away (``rigpilot market --json | head``) the command stops
    quietly with :data:`EXIT_BROKEN_PIPE` instead of a BrokenPipeError traceback. A
    BrokenPipeError from anything else (a socket) is not hidden.
    """
    try:
        status = _dispatch(argv)
        sys.stdout.flush()  # here, not at interpreter exit, where a broken pipe is a traceback
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise
        # As the Python documentation advises: point stdout at /dev/null so that the flush at
        # exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return status


def _dispatch(argv: Sequence[str] | None) -> int:  # noqa: PLR0911  one return per subcommand, each imported lazily (no command loads another's modules)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    args, rest = split_global_options(args, rest)
    from daemon.logsetup import configure_logging

    configure_logging(level=args.log_level or "info", json=args.log_json, stream=sys.stderr)
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
    if args.command == "fleet":
        from daemon.sites_cli import main as fleet_main

        return fleet_main(rest)
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

        return run_main(rest, log_level=args.log_level, log_json=args.log_json)
    if args.command == "backtest":
        from backtest.cli import main as backtest_main

        return backtest_main(rest)
    if args.command == "market":
        from daemon.market_cli import main as market_main

        return market_main(rest)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
