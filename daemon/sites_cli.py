"""``rigpilot fleet``: every site seen on a broker, from its retained topics alone.

For the control room's broker, where site brokers are bridged (docs/multi-site.md), or any
broker several daemons share. It connects, subscribes to the retained topics of every site
(``daemon.mqtt.sites``), takes what the broker holds and leaves: it publishes nothing and needs
only read access (the ``viewer`` user of docs/mosquitto/acl).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import aiomqtt
from pydantic import SecretStr, ValidationError

from daemon.config import ConfigError, MqttSettings, MqttTlsSettings, load_settings
from daemon.mqtt import sites

PROG: Final = "rigpilot fleet"
DEFAULT_TIMEOUT_S: Final = 10.0
EXIT_UNREACHABLE: Final = 1
EXIT_USAGE: Final = 2
EXIT_PARTIAL: Final = 3

EPILOG = """\
The broker is named by --broker (with --username, --ca-file, ...) or taken from the [mqtt]
section of a rigpilot configuration (--config). The password comes from --password-file or
the environment variable RIGPILOT_MQTT__PASSWORD, never from the command line.

STATE is "online" or "offline" (the daemon's bridge/state: its last will says offline),
"link down": the bridge from the site's broker to this one is down (Mosquitto's notification
on <base>/<site>/link/state), so the rest of the line is the site's last word before it, or
"unknown" (no bridge/state seen); CONFLICT follows it when another instance announces the
same site (docs/mqtt.md, one controller per site). RIGS is observed/configured. CURTAILED
counts the rigs held below normal and their share of the site's rigs (in dry-run: the rigs
the decisions would curtail). LAST TICK is the time of the site's last fleet summary.

exit status:
  0  every site seen was read
  1  the broker could not be reached, refused the connection, or shows no site
  2  invalid command line or configuration
  3  some retained payloads could not be read (named on stderr; the rest is listed)"""


class FleetError(Exception):
    """The broker could not be asked (unreachable, refused, TLS): the message says why."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="List every site seen on an MQTT broker: availability, rigs, hashrate, "
        "power, curtailed share and last tick, from the retained topics alone.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--broker", metavar="HOST[:PORT]", help="the broker (port: 8883 with TLS)")
    p.add_argument("--config", type=Path, help="take the broker from this file's [mqtt]")
    p.add_argument("--username", help="broker user (read access to <base>/# is enough)")
    p.add_argument("--password-file", type=Path, help="a file holding the password")
    p.add_argument("--ca-file", type=Path, help="CA certificate: connect with TLS")
    p.add_argument("--tls", action="store_true", help="TLS with the system's CAs")
    p.add_argument("--base-topic", default=None, help="default: rigpilot (or the config's)")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to connect and read (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument("--json", action="store_true", help="one JSON document: every site's line")
    return p


def _host_port(text: str, tls: bool) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:  # no port, or a bare IPv6 address in brackets
        return text.strip("[]"), 8883 if tls else 1883
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--broker {text!r}: the port {port!r} is not a number") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"--broker {text!r}: the port must lie in 1..65535")
    return host.strip("[]"), number


def settings_from(args: argparse.Namespace) -> MqttSettings:
    """The broker to ask: the configuration's [mqtt] (options given win), or --broker."""
    if (args.broker is None) == (args.config is None):
        raise ValueError("name the broker with exactly one of --broker or --config")
    if args.config is not None:
        base = load_settings(args.config).mqtt
    else:
        tls = args.ca_file is not None or args.tls
        host, port = _host_port(args.broker, tls)
        base = MqttSettings(
            host=host, port=port, tls=MqttTlsSettings(enabled=tls, ca_file=args.ca_file)
        )
    update: dict[str, Any] = {}
    if args.username is not None:
        update["username"] = args.username
    if args.password_file is not None:
        update["password_file"], update["password"] = args.password_file, None
    elif args.broker is not None and os.environ.get("RIGPILOT_MQTT__PASSWORD"):
        update["password"] = SecretStr(os.environ["RIGPILOT_MQTT__PASSWORD"])
    if args.base_topic is not None:
        update["base_topic"] = args.base_topic
    return MqttSettings.model_validate({**base.model_dump(), **update})


async def read_retained(
    settings: MqttSettings, password: str | None, tls: ssl.SSLContext | None, timeout: float
) -> dict[str, bytes]:
    """Every retained message of the sites' topics, by topic.

    Retained messages are sent right after the broker acknowledges a subscription, in order;
    a second subscription (to a filter nothing is published to) is acknowledged only after
    them, so once it is, the broker has sent everything it holds, with no guessing how long
    to wait.
    """
    base = settings.base_topic
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=password,
        identifier=f"rigpilot-fleet-{uuid.uuid4().hex[:12]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        tls_context=tls,
        timeout=timeout,
    )
    where = f"{settings.host}:{settings.port}"
    retained: dict[str, bytes] = {}
    try:
        async with asyncio.timeout(timeout):
            async with client:
                await client.subscribe([(f, 0) for f in sites.filters(base)])
                await client.subscribe(f"{base}/+/{sites.FLEET}/end-of-retained", qos=0)
                for _ in range(len(client.messages)):
                    message = await anext(aiter(client.messages))
                    if message.retain and isinstance(message.payload, bytes | bytearray):
                        retained[message.topic.value] = bytes(message.payload)
    except TimeoutError:
        raise FleetError(f"broker {where} did not answer within {timeout:g} s") from None
    except aiomqtt.MqttCodeError as exc:
        raise FleetError(f"broker {where} refused the connection: {_reason(exc)}") from None
    except aiomqtt.MqttError as exc:
        raise FleetError(f"broker {where} cannot be reached: {exc}") from None
    return retained


def _reason(exc: aiomqtt.MqttCodeError) -> str:
    text = str(exc.rc) if exc.rc is not None else str(exc)
    code = getattr(exc.rc, "value", exc.rc)
    if code in (4, 5, 134, 135):  # 3.1.1 and MQTT 5 codes: bad credentials / not authorised
        text += " (check --username and the password)"
    return text


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    from daemon.mqtt.bridge import resolve_password, tls_context

    try:
        settings = settings_from(args)
        password = resolve_password(settings)
        tls = tls_context(settings)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        print(f"{PROG}: {problems}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.timeout <= 0:
        print(f"{PROG}: --timeout must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        retained = asyncio.run(read_retained(settings, password, tls, args.timeout))
    except FleetError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    views = sites.gather(settings.base_topic, retained)
    now = time.time()
    rows = [sites.row(v, now) for v in views.values()]
    if args.json:
        print(json.dumps({"base_topic": settings.base_topic, "sites": rows}, indent=2))
    elif rows:
        print(sites.table(rows))
    unreadable = [p for v in views.values() for p in v.problems]
    for problem in unreadable:
        print(f"{PROG}: unreadable: {problem}", file=sys.stderr)
    if not rows:
        print(
            f"{PROG}: no site seen under {settings.base_topic}/ on {settings.host}:"
            f"{settings.port} (is the base topic right, and may this user read it?)",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    return EXIT_PARTIAL if unreadable else 0
