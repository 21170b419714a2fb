"""``python -m simulator``: the same as ``rigpilot sim``."""

import sys

import structlog

from simulator.cli import main

structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
sys.exit(main(prog="python -m simulator"))
