"""The daemon's own lifecycle as ``rigpilot status`` needs it: which process runs, since when,
whether it stopped cleanly, and how its last configuration reload went.

The daemon keeps one ``process`` document in its state database: written when it starts,
after each SIGHUP reload and when it stops cleanly. A daemon killed outright (SIGKILL, power
loss) writes nothing more, so ``status`` also asks the operating system whether the recorded
process still exists; the process's start time (``/proc/<pid>/stat``) tells it apart from an
unrelated process that was later given the same PID.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

PROC: Final = Path("/proc")


def process_start(pid: int, proc: Path = PROC) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat`` field 22),
    or None when that cannot be read (no /proc, or hidden from this user)."""
    stat = _stat(pid, proc)
    if stat is None:
        return None
    try:
        return int(stat[19])  # fields after the command name, which may contain spaces
    except (IndexError, ValueError):
        return None


def _stat(pid: int, proc: Path) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after ``(comm)``: state first."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def is_running(pid: int, started: int | None, proc: Path = PROC) -> bool:
    """Whether the process ``pid`` that started at ``started`` (see :func:`process_start`)
    still runs. A zombie (killed, not yet reaped) is not running; a process with that PID but
    another start time is another process. When the process exists but cannot be inspected
    (another user's process under ``hidepid``), it is taken to be running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, and belongs to another user
    stat = _stat(pid, proc)
    if stat is None:
        return True  # exists, but cannot be inspected: assume it is ours
    if stat[0] in ("Z", "X"):
        return False
    return started is None or process_start(pid, proc) == started


@dataclass(frozen=True)
class Reload:
    """The outcome of one configuration reload."""

    ok: bool
    at: float
    error: str | None = None
    changed: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "at": self.at, "error": self.error, "changed": list(self.changed)}


def process_doc(version: str, wedged_after_s: float, now: float | None = None) -> dict[str, Any]:
    """The ``process`` document of this process, as it starts. ``wedged_after_s`` (the
    watchdog's deadline, ``control.wedged_after()``) is how old a last tick may be before
    ``status`` calls the daemon stale."""
    pid = os.getpid()
    return {
        "pid": pid,
        "pid_start": process_start(pid),
        "version": version,
        "started_at": time.time() if now is None else now,
        "stopped_at": None,
        "wedged_after_s": wedged_after_s,
        "last_reload": None,
    }
