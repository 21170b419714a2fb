"""Warnings from ``rigpilot config check``: a configuration that loads, but will not work as
meant, or exposes a secret, under the shipped unit (systemd/rigpilot.service).

The unit runs the daemon as a dynamic user (``DynamicUser=yes``, with ``PrivateUsers=yes``): a
uid allocated at start that owns no file outside its state directory and is in no group that
owns one. So for every file the daemon opens itself, only the permissions for *other* users
count: the file must be readable by everyone, and every directory above it enterable by
everyone. A secret cannot be both that and private, so secrets reach the service as systemd
credentials (``LoadCredential=``: systemd, as root, copies the root-only file for the service
into ``/run/credentials/rigpilot.service/``). ``ProtectHome=yes`` and ``PrivateTmp=yes`` hide
``/home``, ``/root``, ``/run/user``, ``/tmp`` and ``/var/tmp`` from the service altogether.

These are warnings, not errors: the same configuration may be meant for a shell or another
supervisor. Problems that stop the daemon are errors elsewhere (:mod:`daemon.config`,
``admin_cli.semantic_problems``).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from daemon.config import Settings
from daemon.logsetup import is_secret_key

UNIT: Final = "rigpilot.service"
CREDENTIALS_DIR: Final = Path("/run/credentials")
# What the unit hides from the service, and the setting that does it.
HIDDEN_FROM_SERVICE: Final[Mapping[str, str]] = {
    "/home": "ProtectHome=yes",
    "/root": "ProtectHome=yes",
    "/run/user": "ProtectHome=yes",
    "/tmp": "PrivateTmp=yes",
    "/var/tmp": "PrivateTmp=yes",
}
_PASSWORD_CREDENTIAL: Final = (
    "put the password in /etc/rigpilot/mqtt_password (root 0600), which the unit passes to "
    "the service as the credential mqtt_password (LoadCredential=), and leave "
    "mqtt.password_file unset"
)
_KEY_CREDENTIAL: Final = (
    "keep it root 0600 and pass it as a credential: LoadCredential=mqtt_client_key:{path} in "
    'a drop-in and key_file = "/run/credentials/rigpilot.service/mqtt_client_key" '
    "(systemd/rigpilot.service.d/example-override.conf)"
)


def config_warnings(
    settings: Settings,
    path: Path | None,
    *,
    hidden: Mapping[str, str] = HIDDEN_FROM_SERVICE,
) -> list[str]:
    """What is wrong but not invalid in ``settings``, read from ``path`` (None: no file).

    ``hidden``: the directories the service cannot see (the unit's; a test may pass fewer).
    """
    out: list[str] = []
    if not settings.rigs:
        out.append(
            "no rigs configured ([[rigs]]): the daemon would observe and control nothing "
            "(`rigpilot scan CIDR` finds them)"
        )
    if not settings.market.power:
        out.append(
            "no power price source ([[market.power]]): the policies that weigh revenue against "
            "the cost of power (breakeven, power_cap) have no price and decide nothing; add "
            'one (docs/power-prices.md), the simplest being type = "fixed" with value_per_kwh'
        )
    if path is not None:
        out += _public_file("the configuration file", path, hidden, "chmod 0644 {path}")
        out += _secrets_in(path)
    mqtt = settings.mqtt
    if mqtt.enabled and mqtt.password_file is not None:
        out += _secret_file("mqtt.password_file", mqtt.password_file, hidden, _PASSWORD_CREDENTIAL)
    if mqtt.enabled and mqtt.tls.enabled:
        for key, file in (("ca_file", mqtt.tls.ca_file), ("cert_file", mqtt.tls.cert_file)):
            if file is not None:
                out += _public_file(f"mqtt.tls.{key}", file, hidden, "chmod 0644 {path}")
        if mqtt.tls.key_file is not None:
            out += _secret_file("mqtt.tls.key_file", mqtt.tls.key_file, hidden, _KEY_CREDENTIAL)
    return out


def unreadable_by_others(path: Path, hidden: Mapping[str, str] | None = None) -> str | None:
    """Why a user that neither owns ``path`` nor is in its group cannot read it (None: it can,
    or the file does not exist, which is reported elsewhere). ``hidden``: directories that
    user cannot see at all."""
    try:
        real = path.resolve()
        info = real.stat()
    except OSError:
        return None
    for where in {path.absolute(), real}:
        for top, setting in (hidden or {}).items():
            if where.is_relative_to(top):
                return f"it is under {top}, which the service cannot see ({setting} in {UNIT})"
    for folder in reversed(real.parents):
        mode = folder.stat()
        if not mode.st_mode & stat.S_IXOTH:
            return f"its directory {folder} ({_describe(mode)}) lets no other user in"
    if not info.st_mode & stat.S_IROTH:
        return f"{_describe(info)}: the service's own user is neither its owner nor in its group"
    return None


def _describe(info: os.stat_result) -> str:
    owner = f"{_user(info.st_uid)}:{_group(info.st_gid)}"
    return f"mode {stat.S_IMODE(info.st_mode):04o}, owner {owner}"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _is_credential(path: Path) -> bool:
    """A path systemd fills for the running service (it may not exist at a shell)."""
    return path.absolute().is_relative_to(CREDENTIALS_DIR)


def _public_file(what: str, path: Path, hidden: Mapping[str, str], fix: str) -> list[str]:
    if _is_credential(path):
        return []
    why = unreadable_by_others(path, hidden)
    if why is None:
        return []
    if why.startswith("it is under"):
        todo = "move it (e.g. to /etc/rigpilot/)"
    elif why.startswith("its directory"):
        todo = "chmod o+x on that directory"
    else:
        todo = fix.format(path=path)
    return [
        f"{what} {path}: the service (DynamicUser=yes in {UNIT}) could not read it: {why}; {todo}"
    ]


def _secret_file(key: str, path: Path, hidden: Mapping[str, str], fix: str) -> list[str]:
    if _is_credential(path):
        return []
    try:
        info = path.stat()
    except OSError:
        return []  # a missing file is an error (admin_cli.semantic_problems)
    todo = fix.format(path=path)
    if unreadable_by_others(path) is None:
        return [
            f"{key} {path} is readable by every local user ({_describe(info)}), and so is "
            f"the secret in it; {todo}"
        ]
    why = unreadable_by_others(path, hidden) or "only its owner and group may read it"
    return [
        f"{key} {path}: the service (DynamicUser=yes in {UNIT}) could not read it: {why}; "
        f"do not make it world-readable: {todo}"
    ]


def _secrets_in(path: Path) -> list[str]:
    """Secrets written into a configuration file every local user can read."""
    try:
        info = path.stat()
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return []
    if unreadable_by_others(path) is not None:
        return []
    out = []
    for key in _secret_keys(data):
        where = (
            _PASSWORD_CREDENTIAL.replace(", and leave mqtt.password_file unset", "")
            if key == "mqtt.password"
            else "set it in a root-only EnvironmentFile= as a RIGPILOT_* variable "
            "(systemd/README.md)"
        )
        out.append(
            f"{key} is written in {path}, which every local user can read "
            f"({_describe(info)}; the service needs it readable): move the secret out: {where}"
        )
    return out


def _secret_keys(data: Any, prefix: str = "") -> Iterator[str]:
    """Dotted keys of non-empty secret values in TOML ``data`` (a ``*_file`` is a path)."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            secret = is_secret_key(key) and not key.endswith("_file")
            if secret and isinstance(value, str) and value:
                yield name
            else:
                yield from _secret_keys(value, name)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from _secret_keys(item, f"{prefix}[{i}]")
