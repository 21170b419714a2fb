"""MQTT settings: where the password comes from, TLS files, and clear errors for bad ones."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
from broker import make_pki
from pydantic import SecretStr

from daemon.config import ConfigError, MqttSettings, load_settings
from daemon.mqtt.bridge import resolve_password, tls_context
from daemon.run import main


def test_password_from_setting_then_file_then_systemd_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-systemd\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert resolve_password(MqttSettings(), env) == "from-systemd"
    file = tmp_path / "pw"
    file.write_text("from-file\n")
    assert resolve_password(MqttSettings(password_file=file), env) == "from-file"
    assert (
        resolve_password(MqttSettings(password=SecretStr("direct"), password_file=file), env)
        == "direct"
    )
    assert resolve_password(MqttSettings(), {}) is None


def test_unreadable_password_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=re.escape(f"mqtt password file {missing} cannot be read")):
        resolve_password(MqttSettings(password_file=missing), {})


def test_tls_context_with_a_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    settings = MqttSettings.model_validate(
        {
            "tls": {
                "enabled": True,
                "ca_file": pki["ca"],
                "cert_file": pki["client"],
                "key_file": pki["client_key"],
            }
        }
    )
    ctx = tls_context(settings)
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode is ssl.CERT_REQUIRED
    assert tls_context(MqttSettings()) is None
    broken = MqttSettings.model_validate(
        {"tls": {"enabled": True, "ca_file": tmp_path / "missing-ca.pem"}}
    )
    with pytest.raises(ValueError, match=r"mqtt\.tls\.ca_file .*missing-ca\.pem cannot be read"):
        tls_context(broken)


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing ca", r"mqtt\.tls\.ca_file {ca} cannot be read: No such file"),
        ("missing cert", r"mqtt\.tls\.cert_file {cert} cannot be read: No such file"),
        ("missing key", r"mqtt\.tls\.key_file {key} cannot be read: No such file"),
        ("garbage ca", r"mqtt\.tls\.ca_file {ca}: not a PEM CA certificate"),
        ("garbage cert", r"mqtt\.tls\.cert_file {cert}: not a PEM certificate"),
        ("garbage key", r"mqtt\.tls\.key_file {key}: not a PEM private key"),
        ("other key", r"mqtt\.tls\.key_file {key} is not the key of mqtt\.tls\.cert_file {cert}"),
    ],
)
def test_tls_errors_name_the_file_and_what_is_wrong(tmp_path: Path, case: str, expect: str) -> None:
    pki = make_pki(tmp_path)
    files = {"ca": pki["ca"], "cert": pki["client"], "key": pki["client_key"]}
    what, name = case.split()
    if what == "missing":
        files[name] = tmp_path / f"no-{name}.pem"
    elif what == "garbage":
        files[name] = tmp_path / f"garbage-{name}.pem"
        files[name].write_text("not PEM at all\n")
    else:
        files["key"] = pki["server_key"]  # a real key, of another certificate
    settings = MqttSettings.model_validate(
        {
            "tls": {
                "enabled": True,
                "ca_file": files["ca"],
                "cert_file": files["cert"],
                "key_file": files["key"],
            }
        }
    )
    pattern = expect.format(**{k: re.escape(str(v)) for k, v in files.items()})
    with pytest.raises(ValueError, match=pattern):
        tls_context(settings)


def test_a_certificate_without_its_key_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text('[mqtt.tls]\nenabled = true\ncert_file = "/x.pem"\n')
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        load_settings(config)


def test_mqtt_typo_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text("[mqtt]\nenabeld = true\n")
    with pytest.raises(ConfigError, match=r"mqtt\.enabeld"):
        load_settings(config)


def test_rigpilot_run_refuses_an_unreadable_password_file_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "r.toml"
    config.write_text(f"""
state_dir = "{tmp_path / "state"}"
[mqtt]
enabled = true
password_file = "{tmp_path / "missing"}"
""")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"mqtt password file {tmp_path / 'missing'} cannot be read" in err


@pytest.mark.parametrize(
    ("settings", "expect"),
    [
        ({"host": "10.0.0.5", "username": "rigpilot", "tls": {"enabled": True}}, []),
        ({"host": "localhost", "username": "rigpilot"}, []),
        ({"host": "127.0.0.1", "username": "rigpilot"}, []),
        ({"host": "::1", "username": "rigpilot"}, []),
        ({"host": "10.0.0.5", "username": "rigpilot"}, ["no TLS to 10.0.0.5"]),
        ({"host": "broker.example", "username": "rigpilot"}, ["no TLS to broker.example"]),
        ({"host": "localhost"}, ["no authentication"]),
        ({"host": "10.0.0.5"}, ["no authentication", "no TLS to 10.0.0.5"]),
    ],
)
def test_an_unauthenticated_or_clear_text_connection_is_named_at_start(
    settings: dict[str, object], expect: list[str]
) -> None:
    from daemon.mqtt.bridge import insecure_connection

    mqtt = MqttSettings.model_validate(settings)
    password = "secret" if mqtt.username else None
    problems = insecure_connection(mqtt, password)
    assert len(problems) == len(expect), problems
    for problem, start in zip(problems, expect, strict=True):
        assert problem.startswith(start), problem
    # A user without a password is no authentication either.
    if mqtt.username:
        assert insecure_connection(mqtt, None)[0].startswith("no authentication")


@pytest.mark.parametrize(
    ("settings", "site", "expect"),
    [
        ({"username": "north"}, "north", []),
        ({}, "north", []),  # no user: "no authentication" says it (mqtt.insecure)
        ({"username": "rigpilot"}, "north", ["mqtt.username 'rigpilot' is not the site's"]),
        ({"username": "a.b", "discovery": True}, "a.b", ["Home Assistant discovery"]),
        ({"username": "a.b"}, "a.b", []),
        ({"username": "a_b-2", "discovery": True}, "a_b-2", []),
        (
            {"username": "rigpilot", "discovery": True},
            "x y",
            [
                "mqtt.username 'rigpilot'",
                "Home Assistant discovery goes under node id 'rigpilot_x_y'",
            ],
        ),
    ],
)
def test_a_user_or_site_the_documented_acl_would_refuse_is_named_at_start(
    settings: dict[str, object], site: str, expect: list[str]
) -> None:
    """The documented ACL confines a daemon to rigpilot/<its user name>/ and its discovery to
    the node rigpilot_<user name>; the broker drops whatever else it publishes without a word."""
    from daemon.mqtt.bridge import acl_mismatch
    from daemon.mqtt.topics import Topics

    problems = acl_mismatch(MqttSettings.model_validate(settings), Topics("rigpilot", site))
    assert len(problems) == len(expect), problems
    for problem, start in zip(problems, expect, strict=True):
        assert problem.startswith(start), problem
