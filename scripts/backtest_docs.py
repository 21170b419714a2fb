"""Write the sample run's figures into docs/backtest.md, from the sample data, so they cannot
drift from what the code prints (tests/test_backtest_report.py regenerates and compares).

The block between ``<!-- backtest-sample:begin -->`` and ``<!-- backtest-sample:end -->`` is
what ``rigpilot backtest`` prints for the documented command on ``examples/backtest/``, with
the wall time left out (it depends on the machine) and the report directory as documented.

Usage: python -m scripts.backtest_docs [--write | --check]
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "backtest.md"
BEGIN = "<!-- backtest-sample:begin -->"
END = "<!-- backtest-sample:end -->"
OUT = "/tmp/feb2026"
COMMAND = [
    "--market",
    "examples/backtest/feb2026.csv",
    "--fleet",
    "examples/backtest/fleet.toml",
    "--policy",
    "breakeven",
]


def block() -> str:
    """The documented run's terminal output, as it goes between the markers."""
    from backtest import cli

    shown = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        argv = [str(REPO / a) if a.startswith("examples/") else a for a in COMMAND]
        status = cli.main([*argv, "--out", tmp, "--quiet"], out=shown)
        if status != 0:
            raise SystemExit(f"the documented run failed with exit status {status}")
        text = shown.getvalue().replace(tmp, OUT).replace(str(REPO) + "/", "")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("market ")]
    lines = [re.sub(r": \d+\.\d s, report in ", ": (wall time), report in ", ln) for ln in lines]
    return "```\n" + "\n".join(lines) + "\n```"


def replaced(doc: str, new_block: str) -> str:
    """``doc`` with the text between the markers replaced by ``new_block``."""
    head, sep, rest = doc.partition(BEGIN)
    _old, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{DOC}: the markers {BEGIN} and {END} are missing")
    return f"{head}{BEGIN}\n{new_block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the block into the docs")
    mode.add_argument("--check", action="store_true", help="exit 1 when the docs differ")
    args = parser.parse_args(argv)
    new = block()
    doc = DOC.read_text(encoding="utf-8")
    if args.write:
        DOC.write_text(replaced(doc, new), encoding="utf-8")
    elif args.check:
        if replaced(doc, new) != doc:
            print(f"{DOC}: the sample's figures differ from the code's; run make backtest-docs")
            return 1
    else:
        print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
