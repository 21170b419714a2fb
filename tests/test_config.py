"""Settings: TOML file + RIGPILOT_* environment, and the errors an operator sees."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from helpers import write_toml
from pydantic import BaseModel

from daemon import config
from daemon.config import ConfigError, Settings, load_settings, resolve_config_path
from daemon.logsetup import configure_logging, get_logger
from policies.economics import Economics

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "daemon" / "rigpilot.example.toml"
NO_ENV: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _no_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real /etc/rigpilot/rigpilot.toml on the test machine must not leak into the tests.
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "rigpilot.toml")


VALID = """
dry_run = true
state_dir = "/tmp/rigpilot-state"

[site]
name = "north-1"

[log]
level = "DEBUG"
json = true

[mqtt]
host = "broker.example"
port = 8883
username = "rigpilot"
password = "hunter2-file"

[mqtt.tls]
enabled = true
ca_file = "/etc/ssl/ca.pem"

[[rigs]]
address = "10.0.0.1"

[[rigs]]
address = " 10.0.0.2 "
driver = "antminer"
"""


# --- valid input -----------------------------------------------------------------------------


def test_valid_file_loads_every_section(tmp_path: Path) -> None:
    s = load_settings(write_toml(tmp_path, VALID), NO_ENV)
    assert s.dry_run is True
    assert s.state_dir == Path("/tmp/rigpilot-state")
    assert s.site.name == "north-1"
    assert s.log.level == "debug"
    assert s.log.json_output is True
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.username) == ("broker.example", 8883, "rigpilot")
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == "hunter2-file"
    assert s.mqtt.tls.enabled is True
    assert s.mqtt.tls.ca_file == Path("/etc/ssl/ca.pem")
    assert [(r.address, r.driver) for r in s.rigs] == [("10.0.0.1", None), ("10.0.0.2", "antminer")]


def test_defaults_without_file_or_env() -> None:
    s = load_settings(None, NO_ENV)
    assert s.site.name == "site1"
    assert s.state_dir == Path("/var/lib/rigpilot")
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.base_topic) == ("localhost", 1883, "rigpilot")
    assert s.mqtt.password is None
    assert s.log.level == "info"
    assert s.log.json_output is None
    assert s.dry_run is False
    assert s.rigs == ()


def test_power_ups_are_scheduled_up_to_one_tick_ahead(tmp_path: Path) -> None:
    path = tmp_path / "rigpilot.toml"
    path.write_text("[control]\ntick_s = 20\n[control.guards]\nramp_rigs_per_s = 2\n")
    control = load_settings(path, NO_ENV).control
    guards = control.guards.to_config(Economics(), control.tick_s)
    assert (guards.ramp_horizon_s, guards.ramp_spacing_s) == (20.0, 0.5)
    # A tick may now spend up to one more tick_s sending spaced power-ups: not wedged.
    assert (
        control.slowest_tick_s() == 2 * 20 + control.observe_timeout_s + control.command_timeout_s
    )


def test_example_config_loads_cleanly() -> None:
    s = load_settings(EXAMPLE, NO_ENV)
    assert s.rigs
    assert s.dry_run is False


def test_settings_are_immutable(tmp_path: Path) -> None:
    s = load_settings(write_toml(tmp_path, VALID), NO_ENV)
    with pytest.raises(ValueError, match="frozen"):
        s.dry_run = False


# --- precedence ------------------------------------------------------------------------------


def test_env_overrides_file_with_nested_delimiter(tmp_path: Path) -> None:
    env = {
        "RIGPILOT_MQTT__PORT": "1884",
        "RIGPILOT_MQTT__TLS__ENABLED": "false",
        "RIGPILOT_LOG__JSON": "false",
        "rigpilot_site__name": "south",  # names are case-insensitive, as in pydantic-settings
        "RIGPILOT_MQTT__PASSWORD": "hunter2-env",
    }
    s = load_settings(write_toml(tmp_path, VALID), env)
    assert s.mqtt.port == 1884
    assert s.mqtt.host == "broker.example"  # the rest of [mqtt] still comes from the file
    assert s.mqtt.tls.enabled is False
    assert s.mqtt.tls.ca_file == Path("/etc/ssl/ca.pem")
    assert s.log.json_output is False
    assert s.site.name == "south"
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == "hunter2-env"


def test_env_json_value_for_a_list(tmp_path: Path) -> None:
    env = {"RIGPILOT_RIGS": '[{"address": "10.9.9.9"}]'}
    s = load_settings(write_toml(tmp_path, VALID), env)
    assert [r.address for r in s.rigs] == ["10.9.9.9"]


def test_overrides_win_over_env_and_file(tmp_path: Path) -> None:
    s = load_settings(
        write_toml(tmp_path, VALID), {"RIGPILOT_DRY_RUN": "true"}, overrides={"dry_run": False}
    )
    assert s.dry_run is False


def test_env_argument_isolates_from_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RIGPILOT_MQTT__PORT", "not-a-port")
    assert load_settings(write_toml(tmp_path, VALID), NO_ENV).mqtt.port == 8883


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIGPILOT_MQTT__PORT", "1999")
    assert load_settings(write_toml(tmp_path, VALID)).mqtt.port == 1999


# --- config file location --------------------------------------------------------------------


def test_default_path_used_only_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "etc" / "rigpilot.toml"
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", default)
    assert resolve_config_path(None, NO_ENV) is None
    default.parent.mkdir()
    default.write_text('[site]\nname = "from-default"\n', encoding="utf-8")
    assert resolve_config_path(None, NO_ENV) == default
    assert load_settings(None, NO_ENV).site.name == "from-default"


def test_config_path_from_env_variable(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[site]\nname = "via-env"\n')
    env = {"RIGPILOT_CONFIG": str(path)}
    assert resolve_config_path(None, env) == path
    assert load_settings(None, env).site.name == "via-env"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_settings(missing, NO_ENV)
    assert str(missing) in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(tmp_path, NO_ENV)


# --- errors ----------------------------------------------------------------------------------


def test_type_error_in_file_names_key_file_expectation_and_value(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[mqtt]\nport = "eighty"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, NO_ENV)
    msg = str(info.value)
    assert "mqtt.port" in msg
    assert str(path) in msg
    assert "Input should be a valid integer" in msg
    assert "'eighty'" in msg
    [issue] = info.value.issues
    assert (issue.key, issue.source) == ("mqtt.port", str(path))


def test_type_error_in_env_names_the_variable(tmp_path: Path) -> None:
    path = write_toml(tmp_path, VALID)
    with pytest.raises(ConfigError) as info:
        load_settings(path, {"RIGPILOT_MQTT__PORT": "abc"})
    msg = str(info.value)
    assert "mqtt.port" in msg
    assert "environment variable RIGPILOT_MQTT__PORT" in msg
    assert str(path) not in msg
    assert "Input should be a valid integer" in msg
    assert "'abc'" in msg


def test_value_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.port .*less than or equal to 65535; got 70000"):
        load_settings(write_toml(tmp_path, "[mqtt]\nport = 70000\n"), NO_ENV)


def test_error_inside_a_list_names_the_index(tmp_path: Path) -> None:
    text = '[[rigs]]\naddress = "10.0.0.1"\n[[rigs]]\naddress = 42\n'
    with pytest.raises(ConfigError, match=r"rigs\[1\]\.address .*valid string; got 42"):
        load_settings(write_toml(tmp_path, text), NO_ENV)


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rigs\[0\]\.address .*required key is missing"):
        load_settings(write_toml(tmp_path, '[[rigs]]\ndriver = "antminer"\n'), NO_ENV)


def test_duplicate_rig_is_rejected(tmp_path: Path) -> None:
    text = '[[rigs]]\naddress = "10.0.0.1"\n[[rigs]]\naddress = "10.0.0.1"\n'
    with pytest.raises(ConfigError, match="listed more than once"):
        load_settings(write_toml(tmp_path, text), NO_ENV)


def test_wildcard_in_base_topic_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.base_topic .*wildcards"):
        load_settings(write_toml(tmp_path, '[mqtt]\nbase_topic = "a/#"\n'), NO_ENV)


def test_unknown_key_in_file_suggests_the_close_one(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[mqtt]\nhsot = "broker"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, NO_ENV)
    msg = str(info.value)
    assert "mqtt.hsot" in msg
    assert str(path) in msg
    assert "unknown key" in msg
    assert "did you mean 'mqtt.host'?" in msg


def test_unknown_top_level_key_and_section(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "dryrun = true\n[mqt]\nhost = 'x'\n[zzzz]\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, NO_ENV)
    msg = str(info.value)
    assert "did you mean 'dry_run'?" in msg
    assert "did you mean 'mqtt'?" in msg
    assert "zzzz" in msg
    assert len(info.value.issues) == 3


def test_unknown_env_variable_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"RIGPILOT_MQT__HOST": "x", "RIGPILOT_SITE__NAM": "y"})
    msg = str(info.value)
    assert "environment variable RIGPILOT_MQT__HOST" in msg
    assert "did you mean RIGPILOT_MQTT__HOST?" in msg
    assert "environment variable RIGPILOT_SITE__NAM" in msg
    assert "did you mean RIGPILOT_SITE__NAME?" in msg


def test_unrelated_env_variables_are_ignored() -> None:
    s = load_settings(None, {"PATH": "/bin", "RIGPILOTX": "1", "HOME": "/root"})
    assert s.site.name == "site1"


def test_invalid_json_in_env_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment variable RIGPILOT_RIGS.*JSON"):
        load_settings(None, {"RIGPILOT_RIGS": "10.0.0.1"})


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[mqtt]\nport = "x"\nhots = "y"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, {"RIGPILOT_LOG__LEVEL": "loud"})
    keys = {issue.key for issue in info.value.issues}
    assert keys == {"mqtt.port", "mqtt.hots", "log.level"}
    assert "3 problems" in str(info.value)


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[site]\nname = "ok"\n[mqtt]\nport = = 1\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, NO_ENV)
    msg = str(info.value)
    assert str(path) in msg
    assert "TOML syntax error" in msg
    assert "line 4" in msg
    assert "column" in msg


def test_override_errors_name_their_source() -> None:
    with pytest.raises(ConfigError, match=r"dryrun .*command line.*did you mean 'dry_run'"):
        load_settings(None, NO_ENV, overrides={"dryrun": True})


# --- secrets ---------------------------------------------------------------------------------


def test_secret_never_appears_in_repr_str_or_json(tmp_path: Path) -> None:
    s = load_settings(write_toml(tmp_path, VALID), NO_ENV)
    for text in (repr(s), str(s), repr(s.mqtt), s.model_dump_json()):
        assert "hunter2" not in text
    assert "hunter2" not in json.dumps(s.model_dump(mode="json"))


def test_secret_is_masked_in_error_messages(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[mqtt]\npassword = 987654321\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, NO_ENV)
    msg = str(info.value)
    assert "mqtt.password" in msg
    assert "987654321" not in msg
    assert "**********" in msg


def test_misspelt_secret_key_value_is_not_echoed(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[mqtt]\npasword = "hunter2"\n')
    with pytest.raises(ConfigError, match=r"did you mean 'mqtt\.password'") as info:
        load_settings(path, NO_ENV)
    assert "hunter2" not in str(info.value)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", json=True, stream=stream)
    yield stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_RigpilotHandler":
            root.removeHandler(handler)
    structlog.reset_defaults()


def test_secret_never_appears_in_logs(tmp_path: Path, log_stream: io.StringIO) -> None:
    s = load_settings(write_toml(tmp_path, VALID), NO_ENV)
    log = get_logger("test")
    log.info("config.loaded", settings=s, mqtt=s.mqtt.model_dump(), password=s.mqtt.password)
    log.info("config.dumped", config=s.model_dump())
    out = log_stream.getvalue()
    assert "hunter2" not in out
    assert len(out.splitlines()) == 2


def test_settings_without_load_settings_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIGPILOT_SITE__NAME", "plain")
    assert Settings().site.name == "plain"


FIXED_POWER = "market.power[0].fixed.value_per_kwh"
INFINITE = [
    ("[control]\ntick_s = inf\n", "control.tick_s"),
    ("[control]\nobserve_timeout_s = inf\n", "control.observe_timeout_s"),
    ("[control]\ncommand_timeout_s = inf\n", "control.command_timeout_s"),
    ("[control]\nconfirm_deadline_s = inf\n", "control.confirm_deadline_s"),
    ("[control]\nwedged_after_s = nan\n", "control.wedged_after_s"),
    ("[control.guards]\nmin_dwell_s = inf\n", "control.guards.min_dwell_s"),
    ("[control.guards]\nhysteresis_usd_per_day = nan\n", "control.guards.hysteresis_usd_per_day"),
    ("[mqtt]\nstate_interval_s = inf\n", "mqtt.state_interval_s"),
    ('[[market.hashprice]]\ntype = "fixed"\nvalue = inf\n', "market.hashprice[0].fixed.value"),
    ('[[market.power]]\ntype = "fixed"\nvalue_per_kwh = -inf\n', FIXED_POWER),
    ('[[market.power]]\ntype = "fixed"\nvalue_per_kwh = nan\n', FIXED_POWER),
]


@pytest.mark.parametrize(("text", "key"), INFINITE)
def test_no_float_setting_takes_inf_or_nan(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key) + ".*finite number"):
        load_settings(write_toml(tmp_path, text), NO_ENV)


def test_every_settings_section_refuses_inf_and_nan() -> None:
    """Every model under Settings (today's and tomorrow's) refuses non-finite floats."""
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Settings]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        assert model.model_config.get("allow_inf_nan") is False, model.__name__
        for field in model.model_fields.values():
            todo.extend(config.models_in(field.annotation))
    assert len(seen) > 10


@pytest.mark.parametrize(
    ("text", "key", "limit"),
    [
        ("[control]\ntick_s = 3601\n", "control.tick_s", "3600"),
        ("[control]\nobserve_timeout_s = 61\n", "control.observe_timeout_s", "60"),
        ("[control]\ncommand_timeout_s = 301\n", "control.command_timeout_s", "300"),
        ("[control]\nconfirm_deadline_s = 86401\n", "control.confirm_deadline_s", "86400"),
    ],
)
def test_timeouts_and_intervals_have_maximums(
    tmp_path: Path, text: str, key: str, limit: str
) -> None:
    match = key.replace(".", r"\.") + f".*less than or equal to {limit}"
    with pytest.raises(ConfigError, match=match):
        load_settings(write_toml(tmp_path, text), NO_ENV)


def test_invalid_json_in_env_never_echoes_its_value() -> None:
    env = {"RIGPILOT_MQTT": '{"password": "hunter2-secret", "port": 18830'}
    with pytest.raises(ConfigError) as info:
        load_settings(None, env)
    text = str(info.value)
    assert "RIGPILOT_MQTT" in text and "expected a JSON value" in text
    assert "hunter2" not in text and "password" not in text
    assert "is not shown" in text
    env = {"RIGPILOT_RIGS": '[{"address": "10.0.0.1", "password": "hunter2-secret"'}
    with pytest.raises(ConfigError) as info:
        load_settings(None, env)
    assert "hunter2" not in str(info.value)
