"""One controller per state directory: an exclusive lock held for the daemon's whole life.

``rigpilot run`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<state_dir>/rigpilot.lock``
before it reads anything, and writes its PID into the file. A second ``rigpilot run`` on the
same state directory (a root shell while the service runs) finds the lock taken and refuses to
start, naming the PID that holds it, instead of sharing ``rigpilot.db`` and commanding the
same rigs. The kernel drops the lock when the process ends, however it ends (SIGKILL, a
crash), so a stale lock file never blocks a restart. The file itself is never removed:
removing it would let two processes lock two different files of the same name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

LOCK_NAME: Final = "rigpilot.lock"


class StateLocked(ValueError):
    """The state directory is locked by another process, or the lock cannot be taken; the
    message is one line naming the directory (and the holder's PID when known)."""


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text:
            return f"pid {int(text)}"
    return "pid unknown: it has not written it yet"


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[Path]:
    """Hold the state directory's lock for the ``with`` block (StateLocked if held)."""
    path = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StateLocked(f"cannot create the lock file {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateLocked(f"cannot lock {path}: {exc.strerror}") from None
            raise StateLocked(
                f"state directory {state_dir} is in use by another rigpilot "
                f"({_holder(fd)}, lock {path}): one controller per site; stop that one first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # still locked: nobody reads a PID that is gone
    finally:
        os.close(fd)
