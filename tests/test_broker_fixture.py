"""The test broker itself: its port cannot be taken by an outgoing connection, and a restart
waits out a port that is still held for a moment (CI once failed a chaos soak on that)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from broker import Broker, ephemeral_range, free_port


def test_ports_lie_outside_the_kernels_ephemeral_range() -> None:
    low, high = ephemeral_range()
    ports = {free_port() for _ in range(50)}
    assert all(not low <= port <= high for port in ports), sorted(ports)
    assert len(ports) > 1, "always the same port"


def test_ephemeral_range_falls_back_to_linuxs_default(tmp_path: Path) -> None:
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)
    (tmp_path / "garbage").write_text("not numbers\n")
    assert ephemeral_range(tmp_path / "garbage") == (32768, 60999)
    (tmp_path / "range").write_text("40000\t50000\n")
    assert ephemeral_range(tmp_path / "range") == (40000, 50000)


def _hold(port: int) -> socket.socket:
    """A bound socket that does not listen, as an outgoing connection's local port would be."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    return holder


def test_a_restart_waits_out_a_port_held_for_a_moment(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", tls=False)
    holder = _hold(broker.port)
    threading.Timer(1.0, holder.close).start()
    try:
        broker.start(timeout=10)
        with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
            pass
        assert "Address already in use" in (broker.folder / "mosquitto.log").read_text()
    finally:
        holder.close()
        broker.stop()


def test_a_port_held_past_the_timeout_is_a_named_error(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", tls=False)
    holder = _hold(broker.port)
    try:
        with pytest.raises(RuntimeError, match="Address already in use"):
            broker.start(timeout=1)
    finally:
        holder.close()
        broker.stop()
