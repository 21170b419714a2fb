"""Private network namespaces, so one wildcard socket per port can answer for every rig.

Binding 0.0.0.0:4028 in the host's namespace would expose the simulator on every interface.
Inside a fresh network namespace the only interface is ``lo``, so the wildcard listener is
reachable only on loopback, answers for all of 127.0.0.0/8, and may take port 80 without
privileges on the host (an unprivileged user gets a user namespace alongside).

Clients join the namespace: as root ``nsenter --target PID --net``; as an ordinary user
``nsenter --target PID --user --net --preserve-credentials``; or they are started from a
process that is already inside (the test suite enters one at start-up and everything it
launches inherits it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


class NetnsError(RuntimeError):
    """A namespace could not be created or entered; the message says why and what to do."""


def loopback_only() -> bool:
    """True when this process's network namespace has no interface but ``lo``."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def enter_private_netns(*, threaded: bool = False) -> None:
    """Move this process into a new network namespace with ``lo`` up.

    As root only a network namespace is created; otherwise a user namespace too, mapping the
    current uid to root inside it. Must run before the process starts threads, unless
    ``threaded``: then only the calling thread moves (and the threads and child processes it
    starts from then on), which needs root, or root inside a user namespace entered earlier (a
    threaded process cannot create a user namespace). pytest-xdist workers use it.
    """
    uid, gid = os.geteuid(), os.getegid()
    if threaded and uid != 0:
        raise NetnsError(
            "a process with threads can take a private network namespace only as root "
            "(or as root of a user namespace entered before its threads started)"
        )
    flags = CLONE_NEWNET if uid == 0 else CLONE_NEWUSER | CLONE_NEWNET
    if _libc().unshare(flags) != 0:
        err = ctypes.get_errno()
        raise NetnsError(
            f"cannot create a private network namespace: {os.strerror(err)}. "
            "Run as root, or enable unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0)."
        )
    if uid != 0:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
    _bring_up_loopback()


def _bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14s", b"lo", 0, b"\x00" * 14)
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b"\x00" * 14))


def ensure_private_netns() -> bool:
    """Enter a private namespace unless this one is already loopback-only. True if it entered."""
    if loopback_only():
        return False
    enter_private_netns()
    return True


def join_instructions(pid: int) -> str:
    """The command an operator types to run a client inside process ``pid``'s namespace."""
    if os.geteuid() == 0:
        return f"nsenter --target {pid} --net -- <command>"
    return f"nsenter --target {pid} --user --net --preserve-credentials -- <command>"
