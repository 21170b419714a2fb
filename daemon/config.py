"""The daemon's settings: a TOML file plus ``RIGPILOT_*`` environment variables.

Precedence, highest first: ``overrides`` passed to :func:`load_settings` (command-line flags),
environment variables, the TOML file, the defaults below. Nested keys are joined with ``__`` in
environment variables: ``[mqtt] port`` is ``RIGPILOT_MQTT__PORT``. Every section forbids unknown
keys, so a typo is an error rather than a silently ignored setting.

Every problem is reported as a :class:`ConfigError` that names the key (``mqtt.port``), where
the value came from (the file, or the environment variable), what was expected and the value
given; secrets are never echoed.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars

from daemon.control_config import ControlSettings
from daemon.logsetup import REDACTED, is_secret_key
from daemon.rig_address import check_rig_address
from daemon.settings_base import Section
from daemon.switch_config import (
    PowerCycleSettings,
    SwitchConfig,
    check_outlets,
    check_switches,
)
from market.config import MarketSettings

__all__ = [
    "CONFIG_PATH_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "ConfigError",
    "ConfigIssue",
    "LogSettings",
    "MetricsSettings",
    "MqttSettings",
    "MqttTlsSettings",
    "RigConfig",
    "Settings",
    "SiteSettings",
    "load_settings",
    "resolve_config_path",
]

DEFAULT_CONFIG_PATH: Final = Path("/etc/rigpilot/rigpilot.toml")
ENV_PREFIX: Final = "RIGPILOT_"
ENV_NESTED_DELIMITER: Final = "__"
# Names the config file; it is not a setting, so the unknown-variable check skips it.
CONFIG_PATH_ENV_VAR: Final = "RIGPILOT_CONFIG"

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class _Section(Section):
    pass


class SiteSettings(_Section):
    """``[site]``: the site this daemon instance controls."""

    # Used as an MQTT topic level, so no "/", "+" or "#".
    name: str = Field(default="site1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)


class LogSettings(_Section):
    """``[log]``: level and format (see :func:`daemon.logsetup.configure_logging`)."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    level: LogLevel = "info"
    # The key is ``json``; the attribute is not, because ``json`` shadows a BaseModel method.
    # None: JSON unless stderr is a terminal.
    json_output: bool | None = Field(default=None, alias="json")

    @field_validator("level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


class MqttTlsSettings(_Section):
    """``[mqtt.tls]``: TLS to the broker."""

    enabled: bool = False
    # None: the system's trusted CAs.
    ca_file: Path | None = None
    # A client certificate, when the broker asks for one (both or neither).
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> MqttTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttSettings(_Section):
    """``[mqtt]``: the broker shared by the daemon instances and the control room."""

    # Off by default so a daemon without a broker does not retry one forever.
    enabled: bool = False
    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    # From the environment (RIGPILOT_MQTT__PASSWORD), a file, or the systemd credential
    # "mqtt_password" ($CREDENTIALS_DIRECTORY); there is no command-line option for it.
    password: SecretStr | None = None
    password_file: Path | None = None
    # None: "rigpilot-<site>-<host>". Fixed, so the broker keeps the session (queued commands).
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    base_topic: str = Field(default="rigpilot", min_length=1)
    # A rig's retained state is republished when it changes, and at least this often.
    state_interval_s: float = Field(default=60.0, ge=1, le=86400)
    # How long set/curtail/site_target wait for the fleet before answering "failed".
    command_timeout_s: float = Field(default=600.0, gt=0, le=86400)
    # Home Assistant MQTT discovery (a device per rig): for home and small sites.
    discovery: bool = False
    discovery_prefix: str = Field(default="homeassistant", min_length=1)
    tls: MqttTlsSettings = MqttTlsSettings()

    @field_validator("base_topic")
    @classmethod
    def _check_base_topic(cls, value: str) -> str:
        if "+" in value or "#" in value:
            raise ValueError("a topic to publish under cannot contain the wildcards + or #")
        if value.startswith("/") or value.endswith("/"):
            raise ValueError("must not start or end with /")
        return value


class MetricsSettings(_Section):
    """``[metrics]``: the Prometheus endpoint (docs/metrics.md)."""

    enabled: bool = False
    address: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=9464, ge=1, le=65535)
    # One series per rig and metric: turn off for very large fleets to keep cardinality down.
    per_rig: bool = True


class RigConfig(_Section):
    """One ``[[rigs]]`` entry: a rig this instance owns."""

    address: str = Field(min_length=1, description="IPv4 or IPv6 address of the rig")
    # None: detect the rig's make and firmware.
    driver: str | None = None
    # Operator-defined group (row, container, PDU): commands can address a whole group.
    group: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    # The switch outlets feeding the rig, "SWITCH:NUMBER" (two for a dual-PSU rig):
    # docs/power-switches.md.
    outlets: tuple[str, ...] = Field(default=(), max_length=4)
    # False: never power-cycle this rig when it hangs ([power_cycle]).
    power_cycle: bool = True

    @field_validator("address", mode="before")
    @classmethod
    def _strip_address(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @field_validator("address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        return check_rig_address(value)


class Settings(BaseSettings):
    """All of the daemon's settings, validated and immutable.

    Build it with :func:`load_settings`. ``Settings()`` alone reads only ``os.environ`` and the
    defaults (no file), which suits tests and tools.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    site: SiteSettings = SiteSettings()
    log: LogSettings = LogSettings()
    state_dir: Path = Path("/var/lib/rigpilot")
    mqtt: MqttSettings = MqttSettings()
    metrics: MetricsSettings = MetricsSettings()
    # Safety invariant 5: no write command reaches any rig.
    dry_run: bool = False
    switches: tuple[SwitchConfig, ...] = ()
    power_cycle: PowerCycleSettings = PowerCycleSettings()
    rigs: tuple[RigConfig, ...] = ()
    market: MarketSettings = MarketSettings()
    control: ControlSettings = ControlSettings()

    @field_validator("rigs")
    @classmethod
    def _unique_rigs(
        cls, rigs: tuple[RigConfig, ...], info: ValidationInfo
    ) -> tuple[RigConfig, ...]:
        seen: set[str] = set()
        for rig in rigs:
            key = rig.address.lower()
            if key in seen:
                raise ValueError(f"rig {rig.address} is listed more than once")
            seen.add(key)
        check_outlets(info.data.get("switches", ()), ((r.address, r.outlets) for r in rigs))
        return rigs

    @field_validator("switches")
    @classmethod
    def _unique_switches(cls, switches: tuple[SwitchConfig, ...]) -> tuple[SwitchConfig, ...]:
        check_switches(switches)
        return switches

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Sources in precedence order: init > env > TOML file > defaults."""
        ctx = _LOAD_CONTEXT.get()
        if ctx is None:
            return (init_settings, env_settings)
        return (
            init_settings,
            _MappingEnvSource(settings_cls, ctx.env),
            InitSettingsSource(settings_cls, dict(ctx.file_data)),
        )


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in the configuration."""

    key: str
    """Dotted key, e.g. ``mqtt.port`` or ``rigs[2].address``."""
    source: str
    """Where the value came from: a file path, ``environment variable RIGPILOT_...``, ..."""
    message: str
    """What was expected, e.g. ``Input should be a valid integer``."""
    value: str | None = None
    """The offending value (repr, truncated, secrets masked), if there is one to show."""

    def __str__(self) -> str:
        text = f"{self.key} (from {self.source}): {self.message}"
        return text if self.value is None else f"{text}; got {self.value}"


class ConfigError(Exception):
    """The configuration cannot be used; ``str()`` is a message fit for an operator."""

    def __init__(self, message: str, issues: Sequence[ConfigIssue] = ()) -> None:
        super().__init__(message)
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)

    @classmethod
    def from_issues(cls, issues: Sequence[ConfigIssue]) -> ConfigError:
        """An error listing ``issues`` (at least one)."""
        if len(issues) == 1:
            return cls(f"invalid configuration: {issues[0]}", issues)
        lines = "\n".join(f"  - {issue}" for issue in issues)
        return cls(f"invalid configuration ({len(issues)} problems):\n{lines}", issues)


# --------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class _LoadContext:
    file_data: Mapping[str, Any]
    env: Mapping[str, str]


# BaseSettings picks its sources in a classmethod; this carries one load_settings call's file
# and environment to it without global state that outlives the call.
_LOAD_CONTEXT: ContextVar[_LoadContext | None] = ContextVar("rigpilot_config_load", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env_mapping = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._env_mapping, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def resolve_config_path(
    path: Path | None = None, env: Mapping[str, str] | None = None
) -> Path | None:
    """Return the config file to read: ``path`` if given, else ``$RIGPILOT_CONFIG`` if set,
    else :data:`DEFAULT_CONFIG_PATH` if that file exists, else None (no file)."""
    if path is not None:
        return path
    environ = _environ(env)
    from_env = _env_get(environ, CONFIG_PATH_ENV_VAR)
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load_settings(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load and validate the settings.

    ``path`` is the TOML file (None: see :func:`resolve_config_path`); ``env`` the environment
    (None: ``os.environ``), of which only ``RIGPILOT_*`` variables are read; ``overrides`` are
    top-level values that win over everything (command-line flags), e.g. ``{"dry_run": True}``.

    Raises :class:`ConfigError` when the file is missing, unreadable or not valid TOML (naming
    the line and column), when a ``RIGPILOT_*`` variable or a key is unknown (suggesting the
    closest known name), or when a value is invalid (naming the key, its source, what was
    expected and the value). All problems found are reported at once.
    """
    environ = _environ(env)
    file_path = resolve_config_path(path, environ)
    file_data = _read_toml(file_path) if file_path is not None else {}
    init = dict(overrides or {})

    issues = _unknown_env_vars(environ)
    token = _LOAD_CONTEXT.set(_LoadContext(file_data=file_data, env=environ))
    try:
        settings = Settings(**init)
    except ValidationError as exc:
        issues += [
            _issue_from_error(err, file_path, file_data, environ, init) for err in exc.errors()
        ]
    except SettingsError as exc:
        issues.append(_issue_from_settings_error(exc, environ))
    finally:
        _LOAD_CONTEXT.reset(token)
    if issues:
        raise ConfigError.from_issues(issues)
    return settings


def _environ(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _env_get(environ: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup, as the settings source does it."""
    wanted = name.upper()
    for key, value in environ.items():
        if key.upper() == wanted:
            return value
    return None


_TOML_POSITION_RE: Final = re.compile(
    r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$"
)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 text: {exc.reason}") from None
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POSITION_RE.match(str(exc))
        if match is None:
            raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
        raise ConfigError(
            f"{path}: TOML syntax error at line {match['line']}, column {match['col']}: "
            f"{match['msg']}"
        ) from None


# --------------------------------------------------------------------------------------------
# Turning pydantic's errors into operator messages


def _dotted(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _env_name(parts: Sequence[int | str]) -> str:
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p) for p in parts).upper()


def models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models inside ``annotation`` (``X | None``, ``tuple[X, ...]``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in get_args(annotation):
        yield from models_in(arg)


def _field_keys(model: type[BaseModel]) -> dict[str, Any]:
    """The keys ``model`` accepts (aliases where set) and the annotation of each."""
    return {(info.alias or name): info.annotation for name, info in model.model_fields.items()}


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model that holds the key at ``loc[-1]``, or None if ``loc`` leaves the models."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = _field_keys(model).get(part)
        found = next(models_in(annotation), None)
        if found is None:
            return None
        model = found
    return model


def _is_secret_at(loc: Sequence[int | str]) -> bool:
    if any(isinstance(p, str) and is_secret_key(p) for p in loc):
        return True
    model = _model_at(loc)
    if model is None or not loc or not isinstance(loc[-1], str):
        return False
    annotation = _field_keys(model).get(loc[-1])
    return annotation is not None and _contains_type(annotation, SecretStr)


def _contains_type(annotation: Any, wanted: type) -> bool:
    if annotation is wanted:
        return True
    return any(_contains_type(arg, wanted) for arg in get_args(annotation))


def _depth_in(data: Any, path: Sequence[int | str]) -> int:
    """How many leading parts of ``path`` exist in nested ``data``."""
    depth = 0
    for part in path:
        in_mapping = isinstance(data, Mapping) and isinstance(part, str) and part in data
        in_list = isinstance(data, list | tuple) and isinstance(part, int) and part < len(data)
        if not (in_mapping or in_list):
            break
        data = data[part]
        depth += 1
    return depth


def _env_depth(environ: Mapping[str, str], loc: Sequence[int | str]) -> tuple[int, str | None]:
    """How deep into ``loc`` the environment supplies a value, and the variable supplying it."""
    upper = {k.upper(): k for k in environ}
    str_prefix = 0
    while str_prefix < len(loc) and isinstance(loc[str_prefix], str):
        str_prefix += 1
    for n in range(str_prefix, 0, -1):
        name = upper.get(_env_name(loc[:n]))
        if name is None:
            continue
        if n == len(loc):
            return n, name
        try:  # a complex value given as JSON, e.g. RIGPILOT_RIGS='[{"address": ...}]'
            decoded = json.loads(environ[name])
        except ValueError:
            return n, name
        return n + _depth_in(decoded, loc[n:]), name
    return 0, None


def _source_of(
    loc: Sequence[int | str],
    file_path: Path | None,
    file_data: Mapping[str, Any],
    environ: Mapping[str, str],
    init: Mapping[str, Any],
) -> tuple[str, bool]:
    """Where the value at ``loc`` came from, and whether that is the environment.

    The source supplying the deepest part of ``loc`` wins; ties go to the higher precedence.
    """
    env_depth, env_var = _env_depth(environ, loc)
    candidates = [
        (_depth_in(init, loc), 3, "override passed on the command line", False),
        (env_depth, 2, f"environment variable {env_var}", True),
        (_depth_in(file_data, loc), 1, str(file_path), False),
    ]
    depth, _, source, is_env = max(candidates, key=lambda c: (c[0], c[1]))
    if depth == 0:
        return "defaults", False
    return source, is_env


def _render_value(value: Any, secret: bool) -> str:
    if secret or isinstance(value, SecretStr):
        return REDACTED
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _issue_from_error(
    err: ErrorDetails,
    file_path: Path | None,
    file_data: Mapping[str, Any],
    environ: Mapping[str, str],
    init: Mapping[str, Any],
) -> ConfigIssue:
    loc = tuple(err["loc"])
    key = _dotted(loc)
    source, is_env = _source_of(loc, file_path, file_data, environ, init)
    kind = err["type"]
    if kind == "extra_forbidden":
        # No value shown: a misspelt secret key ("pasword") would not be recognised as secret.
        return ConfigIssue(key, source, "unknown key" + _suggestion(loc, is_env))
    if kind == "missing":
        return ConfigIssue(key, source, "required key is missing")
    message = err["msg"].removeprefix("Value error, ")
    return ConfigIssue(key, source, message, _render_value(err["input"], _is_secret_at(loc)))


def _suggestion(loc: Sequence[int | str], as_env: bool) -> str:
    model = _model_at(loc)
    bad = loc[-1] if loc else None
    if model is None or not isinstance(bad, str):
        return ""
    match = difflib.get_close_matches(bad.lower(), list(_field_keys(model)), n=1, cutoff=0.6)
    if not match:
        return ""
    parent = loc[:-1]
    if as_env and all(isinstance(p, str) for p in parent):
        return f"; did you mean {_env_name([*parent, match[0]])}?"
    return f"; did you mean '{_dotted([*parent, match[0]])}'?"


def _unknown_env_vars(environ: Mapping[str, str]) -> list[ConfigIssue]:
    """``RIGPILOT_*`` variables naming no top-level setting (pydantic only checks nested ones)."""
    known = list(_field_keys(Settings))
    issues = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper == CONFIG_PATH_ENV_VAR:
            continue
        parts = upper[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER)
        if parts[0] in known:
            continue
        hint = ""
        match = difflib.get_close_matches(parts[0], known, n=1, cutoff=0.6)
        if match:
            hint = f"; did you mean {_env_name([match[0], *parts[1:]])}?"
        issues.append(
            ConfigIssue(".".join(parts), f"environment variable {name}", "unknown setting" + hint)
        )
    return issues


_SETTINGS_ERROR_FIELD_RE: Final = re.compile(r'field "(?P<field>[^"]+)"')


def _issue_from_settings_error(exc: SettingsError, environ: Mapping[str, str]) -> ConfigIssue:
    """pydantic-settings raises SettingsError when a complex env value is not valid JSON."""
    match = _SETTINGS_ERROR_FIELD_RE.search(str(exc))
    if match is None:
        return ConfigIssue("(unknown)", "environment", str(exc))
    field = match["field"]
    _, var = _env_depth(environ, (field,))
    # The value is never shown: a JSON object may hold secrets under any key, and the parser
    # cannot say which while the JSON is broken. Where it broke (line, column) is enough.
    cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
    size = "" if var is None else f"; the value ({len(environ[var])} characters) is not shown"
    return ConfigIssue(
        field,
        f"environment variable {var or _env_name([field])}",
        f"expected a JSON value{cause}{size}",
    )
