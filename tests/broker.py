"""A real Mosquitto broker for tests: TLS, a password file and an ACL, on a free port.

The ACL is the one documented in docs/mqtt.md (``docs/mosquitto/acl``): each site's daemon
(user ``site_user(site)``, added with ``Broker.add_site``) may read its requests and write its
own site's tree, the ``operator`` may read everything and command, the ``viewer`` may only read.
Persistence is on, so a killed and restarted broker keeps retained messages and sessions as a
production broker would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import random
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[1]
ACL_FILE = REPO / "docs" / "mosquitto" / "acl"
MOSQUITTO = "/usr/sbin/mosquitto"

USERS = {
    "operator": "operator-secret",
    "viewer": "viewer-secret",
    "homeassistant": "ha-secret",
}


def site_user(site: str) -> str:
    """The broker user of ``site``'s daemon: the documented convention (docs/mqtt.md) is the
    site name itself, which the ACL's ``%u`` patterns confine to ``rigpilot/<site>/``."""
    return site


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10_000  # clear of the well-known ports and of the simulator's (80, 4028, 4433...)


def ephemeral_range(source: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default if unknown)."""
    with contextlib.suppress(OSError, ValueError):
        low, high = (int(part) for part in source.read_text().split())
        return low, high
    return 32768, 60999


def free_port(*, attempts: int = 200) -> int:
    """A free listening port outside the kernel's ephemeral range.

    A port the kernel handed out (``bind(0)``) lies inside that range. While a broker on it is
    down for a restart, any outgoing connection (the daemon polling rigs, a client reconnecting
    to the broker, which can even connect to itself) may take it as its local port, and the
    restarted broker then fails with "Address already in use". Below the range, only a listener
    can hold the port.
    """
    low, high = ephemeral_range()
    candidates = range(LOWEST_PORT, low) if low > LOWEST_PORT else range(high + 1, 65536)
    for port in random.sample(candidates, min(attempts, len(candidates))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port among {attempts} tries in {candidates}")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rigpilot test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, server in (("server", True), ("client", False)):
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        paths[name] = folder / f"{name}.pem"
        paths[f"{name}_key"] = folder / f"{name}.key"
        paths[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, paths[f"{name}_key"])
    return paths


@dataclass
class Broker:
    """One Mosquitto process; ``kill()`` and ``start()`` again keep port, users and data."""

    folder: Path
    tls: bool = True
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    pki: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        passwd = self.folder / "passwd"
        passwd.write_text("")
        for user, password in USERS.items():
            subprocess.run(
                ["mosquitto_passwd", "-b", str(passwd), user, password],
                check=True,
                capture_output=True,
            )
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {ACL_FILE}",
            "persistence true",
            f"persistence_location {self.folder}/",
            "autosave_interval 1",
            "user root",
            f"listener {self.port} 127.0.0.1",
        ]
        if self.tls:
            self.pki = make_pki(self.folder)
            lines += [
                f"cafile {self.pki['ca']}",
                f"certfile {self.pki['server']}",
                f"keyfile {self.pki['server_key']}",
                "require_certificate false",
            ]
        (self.folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def add_site(self, site: str) -> str:
        """Give ``site``'s daemon its user (once) and return the user name; a running broker
        reloads its password file (SIGHUP) and is waited for until the user can connect."""
        user = site_user(site)
        passwd = self.folder / "passwd"
        if user in {line.split(":")[0] for line in passwd.read_text().splitlines()}:
            return user
        USERS[user] = f"{user}-secret"
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwd), user, USERS[user]],
            check=True,
            capture_output=True,
        )
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)
            self._wait_user(user)
        return user

    def _wait_user(self, user: str, timeout: float = 10.0) -> None:
        """Until ``user`` is let in (a publish to a topic it may not write: dropped, unseen)."""
        deadline = time.monotonic() + timeout
        args = ["mosquitto_pub", *self.client_args(user, v5=False), "-t", "probe", "-n"]
        while subprocess.run(args, capture_output=True, timeout=10, check=False).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not take the new user {user}")
            time.sleep(0.1)

    def start(self, *, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until it listens.

        A port still held for a moment after a kill ("Address already in use") is waited out
        for up to ``timeout`` seconds, as systemd's restart would; any other early exit is an
        error.
        """
        log_path = self.folder / "mosquitto.log"
        deadline = time.monotonic() + timeout
        while True:
            logged = log_path.stat().st_size if log_path.exists() else 0
            with log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [MOSQUITTO, "-c", str(self.folder / "mosquitto.conf")],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_listening(deadline):
                return
            with log_path.open("rb") as log:
                log.seek(logged)
                said = log.read().decode(errors="replace")
            if "Address already in use" not in said or time.monotonic() >= deadline:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {said[-2000:]}")
            time.sleep(0.2)

    def _wait_listening(self, deadline: float) -> bool:
        """True once the broker accepts connections, False if it exited first."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return True
            time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1)  # one started just before the deadline may be failing right now
            return False
        raise RuntimeError(f"mosquitto did not start listening on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: the broker dies as in a crash (no will is lost: the clients see a reset)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def client_args(self, user: str, *, v5: bool = True) -> list[str]:
        """Arguments for mosquitto_pub / mosquitto_sub as ``user``."""
        args = ["-h", "127.0.0.1", "-p", str(self.port), "-u", user, "-P", USERS[user]]
        args += ["-V", "mqttv5" if v5 else "mqttv311"]
        if self.tls:
            args += ["--cafile", str(self.pki["ca"])]
        return args

    def pub(self, user: str, topic: str, payload: str, *, v5: bool = False, **props: str) -> None:
        args = ["mosquitto_pub", *self.client_args(user, v5=v5), "-q", "1", "-t", topic]
        for name, value in props.items():
            args += ["-D", "publish", name.replace("_", "-"), value]
        subprocess.run([*args, "-m", payload], check=True, capture_output=True, timeout=10)


# --- Sites bridged to a control room (docs/multi-site.md) -------------------------------------

BRIDGE_FILE = REPO / "docs" / "mosquitto" / "site-bridge.conf"
BRIDGE_SITE = "north"  # the site the shipped bridge file is written for


class Link:
    """The network between a site's broker and the control room's: a TCP relay whose ``cut()``
    drops every connection through it at once (as a lost WAN link seen by both ends: each gets
    a reset, the control room's broker fires the bridge's last will) and refuses new ones
    until ``restore()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up = threading.Event()
        self.up.set()
        self.accepted = 0  # connections relayed (a bridge that reconnected shows here)
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.up.is_set():
                _reset(conn)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _reset(conn)
                continue
            with self._lock:
                self._socks |= {conn, upstream}
                self.accepted += 1
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            src.settimeout(None)
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up.clear()
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            _reset(s)

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
        self._thread.join(2)


def _reset(s: socket.socket) -> None:
    """Close ``s`` with a TCP reset (SO_LINGER 0), as a dropped link looks to both ends."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv (close alone would not)
    with contextlib.suppress(OSError):
        s.close()


def bridge_conf(site: str, control: Broker, port: int, *, retry_s: int = 1, **more: str) -> str:
    """The shipped bridge file (``docs/mosquitto/site-bridge.conf``) for ``site``, pointed at
    ``control`` through ``port``: only the site's name, the address, the password, the CA file
    and the retry delay differ from the file."""
    text = BRIDGE_FILE.read_text().replace(BRIDGE_SITE, site)
    values = {
        "address": f"127.0.0.1:{port}",
        "remote_password": USERS[site_user(site)],
        "bridge_cafile": str(control.pki["ca"]),
        "restart_timeout": str(retry_s),
        **more,
    }
    lines = []
    for line in text.splitlines():
        key = line.split(" ", 1)[0]
        lines.append(f"{key} {values.pop(key)}" if key in values and line.strip() else line)
    if values:
        raise ValueError(f"{BRIDGE_FILE} has no {', '.join(values)} line")
    return "\n".join(lines) + "\n"


def bridged_site(control: Broker, folder: Path, site: str) -> tuple[Broker, Link]:
    """A site's broker (TLS, password file, the documented ACL) bridged to ``control`` with the
    shipped bridge file, through a :class:`Link` that the test can cut. Both brokers get the
    site's user; start the returned broker yourself."""
    control.add_site(site)
    local = Broker(folder)
    local.add_site(site)
    link = Link(control.port)
    with (local.folder / "mosquitto.conf").open("a") as conf:
        conf.write(bridge_conf(site, control, link.port))
    return local, link
