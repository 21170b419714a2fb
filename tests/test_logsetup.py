"""Logging: JSON lines or console text, stdlib records routed through, secrets masked."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from daemon.logsetup import REDACTED, configure_logging, get_logger, is_secret_key, redact


class _TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def _ours(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers if type(h).__name__ == "_RigpilotHandler"]


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("NO_COLOR", raising=False)
    root = logging.getLogger()
    level = root.level
    yield
    for handler in _ours(root):
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_event_level_and_utc_timestamp() -> None:
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    get_logger("daemon.test").info("sim.started", rigs=3)
    [record] = lines(stream)
    assert record["event"] == "sim.started"
    assert record["level"] == "info"
    assert record["rigs"] == 3
    assert record["logger"] == "daemon.test"
    ts = datetime.fromisoformat(record["timestamp"])
    assert ts.utcoffset() == timedelta(0)


def test_json_is_the_default_when_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    structlog.get_logger().info("sim.started")
    assert lines(stream)[0]["event"] == "sim.started"


def test_console_output_when_json_is_false() -> None:
    stream = io.StringIO()
    configure_logging("info", json=False, stream=stream)
    get_logger().info("sim.started", rigs=3)
    out = stream.getvalue()
    assert "sim.started" in out
    assert "rigs=3" in out
    assert "info" in out
    assert "\x1b[" not in out  # no colour codes when not writing to a terminal
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_console_with_colour_is_the_default_on_a_terminal() -> None:
    stream = _TtyStream()
    configure_logging("info", stream=stream)
    get_logger().info("sim.started")
    out = stream.getvalue()
    assert "sim.started" in out
    assert "\x1b[" in out


def test_no_color_disables_colour_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    stream = _TtyStream()
    configure_logging("info", stream=stream)
    get_logger().info("sim.started")
    assert "\x1b[" not in stream.getvalue()


def test_level_filters_events() -> None:
    stream = io.StringIO()
    configure_logging("warning", json=True, stream=stream)
    log = get_logger()
    log.info("rig.polled")
    log.warning("rig.slow")
    assert [r["event"] for r in lines(stream)] == ["rig.slow"]


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud", stream=io.StringIO())


def test_stdlib_records_at_warning_and_above_go_through_the_renderer() -> None:
    stream = io.StringIO()
    configure_logging("debug", json=True, stream=stream)
    lib = logging.getLogger("pyasic.test")
    lib.info("chatty %s", 1)
    lib.warning("miner %s did not answer", "10.0.0.1")
    [record] = lines(stream)
    assert record["event"] == "miner 10.0.0.1 did not answer"
    assert record["level"] == "warning"
    assert record["logger"] == "pyasic.test"
    assert "timestamp" in record


def test_exceptions_are_rendered_as_text_in_json() -> None:
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger().exception("rig.command_failed")
        logging.getLogger("aiomqtt").exception("lib.failed")
    ours, lib = lines(stream)
    assert ours["level"] == "error"
    assert "RuntimeError: boom" in ours["exception"]
    assert "RuntimeError: boom" in lib["exception"]


def test_configuring_again_replaces_instead_of_stacking() -> None:
    first, second = io.StringIO(), io.StringIO()
    log = get_logger()  # bound before configuration: must follow the latest one
    configure_logging("info", json=True, stream=first)
    configure_logging("info", json=True, stream=second)
    configure_logging("info", json=True, stream=second)
    log.info("sim.started")
    logging.getLogger("aiomqtt").warning("lib.warned")
    assert first.getvalue() == ""
    assert [r["event"] for r in lines(second)] == ["sim.started", "lib.warned"]
    assert len(_ours(logging.getLogger())) == 1


def test_secrets_are_masked_in_json() -> None:
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    get_logger().info(
        "mqtt.connecting",
        password="hunter2",
        api_key="k-123",
        mqtt_token="t-456",
        credential=SecretStr("s-789"),
        nested={"client_secret": "c-000", "rigs": [{"passwd": "p-111"}]},
        url="mqtt://user:p-222@broker:1883",
        host="broker",
    )
    out = stream.getvalue()
    for secret in ("hunter2", "k-123", "t-456", "s-789", "c-000", "p-111", "p-222"):
        assert secret not in out
    [record] = lines(stream)
    assert record["password"] == REDACTED
    assert record["nested"]["rigs"][0]["passwd"] == REDACTED
    assert record["url"] == f"mqtt://user:{REDACTED}@broker:1883"
    assert record["host"] == "broker"


def test_secrets_are_masked_in_console_output() -> None:
    stream = io.StringIO()
    configure_logging("info", json=False, stream=stream)
    get_logger().info("mqtt.connecting", password="hunter2", token=SecretStr("abc-secret"))
    out = stream.getvalue()
    assert "hunter2" not in out
    assert "abc-secret" not in out
    assert re.search(r"password=\*+", out)


def test_secret_values_anywhere_are_masked() -> None:
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    get_logger().info("config.loaded", whatever=SecretStr("zzz-top"))
    assert "zzz-top" not in stream.getvalue()


def test_is_secret_key() -> None:
    for key in ("password", "MQTT_PASSWORD", "passwd", "token", "api_key", "apiKey", "secret"):
        assert is_secret_key(key), key
    for key in ("host", "port", "username", "rig", "event"):
        assert not is_secret_key(key), key


def test_redact_leaves_input_unchanged() -> None:
    data = {"password": "x", "keep": [1, 2]}
    masked = redact(data)
    assert masked == {"password": REDACTED, "keep": [1, 2]}
    assert data["password"] == "x"
    assert redact({"password": None}) == {"password": None}
