"""``rigpilot status`` and ``rigpilot config check``: for operators at a shell.

``status`` reads what the running daemon last wrote to its state database (read-only, so it
works while the daemon runs and needs no network); ``config check`` validates a configuration
as the daemon would and prints the effective one, secrets masked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from daemon.config import ConfigError, Settings, load_settings, resolve_config_path
from daemon.store import StoreError, read_status
from policies.values import rig_text

EXIT_STALE = 3  # as systemctl status: "not running"


def _settings(path: Path | None, prog: str) -> Settings | None:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def main_status(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="rigpilot status",
        description="Print the running daemon's fleet summary (from its state database).",
    )
    p.add_argument("--config", type=Path, default=None, help="configuration file (for state_dir)")
    p.add_argument("--state-dir", type=Path, default=None, help="override the state directory")
    p.add_argument("--json", action="store_true", help="the whole status document as JSON")
    args = p.parse_args(argv)
    state_dir = args.state_dir
    tick_s = 30.0
    if state_dir is None:
        settings = _settings(args.config, "rigpilot status")
        if settings is None:
            return 2
        state_dir, tick_s = settings.state_dir, settings.control.tick_s
    try:
        status, written = read_status(state_dir)
    except StoreError as exc:
        print(f"rigpilot status: {exc}", file=sys.stderr)
        return 2
    if status is None or written is None:
        print(f"rigpilot status: no status in {state_dir}: the daemon has not completed a tick")
        return EXIT_STALE
    age = time.time() - written
    # A tick can legitimately take a while on a large fleet; three missed beats is stale.
    stale = age > max(3 * tick_s, 90.0)
    if args.json:
        print(json.dumps({**status, "age_s": round(age, 1), "stale": stale}, indent=2))
    else:
        mode = "DRY-RUN" if status.get("dry_run") else "live"
        print(f"rigpilot {status.get('version', '')} pid {status.get('pid')} ({mode})")
        print(f"  {rig_text(status.get('summary', ''), 2000)}")
        extra = [f"policies: {', '.join(status.get('policies') or [])}"]
        if status.get("pins"):
            extra.append(f"{status['pins']} operator pin(s)")
        if status.get("site_target_kw") is not None:
            extra.append(f"site target {status['site_target_kw']:g} kW")
        print("  " + "; ".join(extra))
        print(
            f"  last tick {age:.0f} s ago" + (" - STALE: is the daemon running?" if stale else "")
        )
    return EXIT_STALE if stale else 0


def main_config(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="rigpilot config",
        description="Configuration tools.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="validate a configuration and print the effective one, secrets masked",
        description="Validate FILE (default: $RIGPILOT_CONFIG, then /etc/rigpilot/rigpilot.toml)"
        " with the RIGPILOT_* environment applied, as `rigpilot run` would; print the "
        "effective configuration with secrets masked. Exit status 2 names every problem.",
    )
    check.add_argument("file", nargs="?", type=Path, default=None)
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    args = p.parse_args(argv)
    path = resolve_config_path(args.file)
    settings = _settings(args.file, "rigpilot config check")
    if settings is None:
        return 2
    problems = semantic_problems(settings)
    for problem in problems:
        print(f"rigpilot config check: {problem}", file=sys.stderr)
    if problems:
        return 2
    doc = effective(settings)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        source = str(path) if path else "no file: defaults and environment"
        print(f"# effective configuration ({source}); secrets masked")
        print(to_toml(doc), end="")
    return 0


def semantic_problems(settings: Settings) -> list[str]:
    """What load_settings cannot see but `rigpilot run` would refuse."""
    from daemon.mqtt.bridge import resolve_password, tls_context
    from daemon.run import load_policies, site_of

    problems = []
    try:
        load_policies(settings.control.policies, site_of(settings))
    except ValueError as exc:
        problems.append(str(exc))
    if settings.mqtt.enabled:
        for check in (resolve_password, tls_context):
            try:
                check(settings.mqtt)
            except ValueError as exc:
                problems.append(str(exc))
    return problems


def effective(settings: Settings) -> dict[str, Any]:
    """The settings as plain data; SecretStr values are masked by pydantic's JSON mode."""
    data: dict[str, Any] = settings.model_dump(mode="json", by_alias=True)
    return data


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{_key(k)} = {_scalar(v)}" for k, v in value.items() if v is not None]
        return "{" + ", ".join(items) + "}"
    return json.dumps(str(value), ensure_ascii=False)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def to_toml(doc: Mapping[str, Any], prefix: str = "") -> str:
    """A TOML rendering of ``doc`` (None values are shown as comments: TOML has no null)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, list[Mapping[str, Any]]]] = []
    for key, value in doc.items():
        name = f"{prefix}.{_key(key)}" if prefix else _key(key)
        if (
            isinstance(value, dict)
            and value
            and all(not isinstance(v, dict) or v for v in value.values())
        ):
            tables.append((name, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((name, value))
        elif value is None:
            lines.append(f"# {_key(key)} = (unset)")
        else:
            lines.append(f"{_key(key)} = {_scalar(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for name, table in tables:
        out += f"\n[{name}]\n" + to_toml(table, name)
    for name, items in arrays:
        for item in items:
            out += f"\n[[{name}]]\n" + to_toml(item, name)
    return out
