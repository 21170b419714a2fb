"""A small synchronous client of the control API (tests, benchmarks, scripts)."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class ControlError(RuntimeError):
    """The control API refused a request; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class SimControl:
    """Talks to a running simulator's control socket."""

    def __init__(self, path: Path | str, timeout: float = 10.0) -> None:
        self.path = str(path)
        self.timeout = timeout

    def request(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        conn = _UnixConnection(self.path, self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, route, body=payload, headers=headers)
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"null")
        finally:
            conn.close()
        if resp.status != 200:
            message = data.get("error", "") if isinstance(data, dict) else str(data)
            raise ControlError(resp.status, message)
        return data

    def rigs(self) -> list[dict[str, str]]:
        result: list[dict[str, str]] = self.request("GET", "/rigs")
        return result

    def rig(self, address: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/rigs/{address}")
        return result

    def set_fault(self, address: str, fault: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", f"/rigs/{address}/faults/{fault}", params)
        return result

    def clear_fault(self, address: str, fault: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/rigs/{address}/faults/{fault}")
        return result

    def clear_faults(self, address: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/rigs/{address}/faults")
        return result

    def reboot(self, address: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/rigs/{address}/reboot")
        return result

    def reset(self, address: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/rigs/{address}/reset")
        return result

    def set_ambient(self, address: str, ambient_c: float) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "PUT", f"/rigs/{address}/ambient", {"ambient_c": ambient_c}
        )
        return result

    def set_power_factor(self, address: str, factor: float) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "PUT", f"/rigs/{address}/power_factor", {"power_factor": factor}
        )
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/stats")
        return result

    def reset_counters(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/counters/reset")
        return result

    def set_time_scale(self, scale: float) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", "/clock", {"time_scale": scale})
        return result

    def switches(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/switches")
        return result

    def switch(self, address: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/switches/{address}")
        return result

    def set_outlet(self, address: str, outlet: int, on: bool) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "PUT", f"/switches/{address}/outlets/{outlet}", {"on": on}
        )
        return result

    def set_switch_fault(self, address: str, fault: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", f"/switches/{address}/faults/{fault}", params)
        return result

    def clear_switch_fault(self, address: str, fault: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "DELETE", f"/switches/{address}/faults/{fault}", params
        )
        return result

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Jump the whole fleet's simulated time ``seconds`` ahead."""
        result: dict[str, Any] = self.request("PUT", "/clock", {"advance_s": seconds})
        return result


class FleetControl(SimControl):
    """The control API of several simulator processes, one per address block (``--block``),
    as one: a rig's routes go to the process of its block (127.(N+1).x.y is block N), the
    rig list is every block's, ``/stats`` adds the blocks' counters up (each block's under
    ``blocks``), and the other routes (clock, counters) go to every block."""

    SUMMED = (
        "rigs",
        "cpu_s",
        "connections",
        "requests",
        "handler_errors",
        "open_connections",
        "reads",
        "writes",
    )

    def __init__(self, controls: list[SimControl]) -> None:
        super().__init__(controls[0].path, controls[0].timeout)
        self.controls = controls

    def block_of(self, address: str) -> SimControl:
        try:
            block = int(address.split(".")[1]) - 1
        except (IndexError, ValueError):
            raise ControlError(404, f"no simulated rig at {address}") from None
        if not 0 <= block < len(self.controls):
            raise ControlError(404, f"no simulated rig at {address} (no such address block)")
        return self.controls[block]

    def request(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        parts = route.strip("/").split("/")
        if parts[0] == "rigs" and len(parts) > 1:
            return self.block_of(parts[1]).request(method, route, body)
        answers = [c.request(method, route, body) for c in self.controls]
        if route == "/rigs":
            return [rig for answer in answers for rig in answer]
        if all(isinstance(a, dict) and "cpu_s" in a for a in answers):
            return self._summed(answers)
        return answers

    def _summed(self, stats: list[dict[str, Any]]) -> dict[str, Any]:
        out = dict(stats[0])
        for key in self.SUMMED:
            if all(key in s for s in stats):
                out[key] = sum(s[key] for s in stats)
        by_port: dict[str, int] = {}
        for s in stats:
            for port, n in dict(s.get("requests_by_port") or {}).items():
                by_port[port] = by_port.get(port, 0) + n
        out["requests_by_port"] = by_port
        out["blocks"] = stats
        return out
