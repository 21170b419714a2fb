"""The chaos soak, short: 100 rigs for two minutes, every kind of disruption once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # two minutes of chaos


def test_short_chaos_soak_holds_every_invariant(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    args = ["--rigs", "100", "--minutes", "2", "--disrupt-every", "8", "--every-kind"]
    args += ["--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert (out / "soak.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "soak.json").read_text())
    kinds = {d["kind"] for d in summary["disruptions"]}
    assert kinds == {"broker_kill", "daemon_kill", "daemon_term", "both_kill"}, proc.stdout[-3000:]
    failed = [name for name, held in summary["checks"].items() if not held]
    assert not failed, f"{failed}\n{json.dumps(summary, indent=1)[:4000]}"
    assert summary["acknowledged"] > 20 and summary["daemon_lives"] == 4
    assert proc.returncode == 0 and "ok=yes" in proc.stdout.splitlines()[-1]
