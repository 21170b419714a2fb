"""Logging for the daemon: structlog, JSON lines in production, readable on a terminal.

Call :func:`configure_logging` once at start-up (calling it again replaces the configuration,
it never stacks handlers). Then log through structlog with ``noun.verb`` event names::

    log = get_logger(__name__)
    log.info("rig.mode_changed", rig="10.0.0.5", mode="sleep", reason="hashprice")

Records from libraries that use the standard :mod:`logging` module (pyasic, aiomqtt, ...) go
through the same renderer, at WARNING and above. Secrets never reach the output: values that
are pydantic ``SecretStr``/``SecretBytes``, and values of keys named like a password, token,
secret or API key, are replaced by ``**********`` (see :func:`mask_secrets`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

import structlog
from pydantic import SecretBytes, SecretStr
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

__all__ = [
    "REDACTED",
    "configure_logging",
    "get_logger",
    "is_secret_key",
    "mask_secrets",
    "redact",
]

REDACTED: Final = "**********"

_LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Over-matching (e.g. "tokens_used") only hides a harmless value; under-matching leaks one.
_SECRET_KEY_RE: Final = re.compile(
    r"pass(word|wd|phrase)|secret|token|api[-_]?key|private[-_]?key|credential|authorization",
    re.IGNORECASE,
)
# The password part of "scheme://user:password@host" (MQTT URLs, stratum pool URLs).
_URL_PASSWORD_RE: Final = re.compile(r"(?P<head>://[^/\s:@]+:)[^/\s@]+@")


def is_secret_key(key: str) -> bool:
    """Return True when a key named ``key`` must have its value hidden from logs and errors."""
    return _SECRET_KEY_RE.search(key) is not None


def redact(value: Any, *, key: str | None = None) -> Any:
    """Return ``value`` with every secret in it replaced by :data:`REDACTED`.

    Secrets are pydantic ``SecretStr``/``SecretBytes`` values, the values of keys for which
    :func:`is_secret_key` is true (``key`` names the key ``value`` is stored under, if any),
    and passwords inside URLs. Mappings, lists and tuples are searched recursively and copied
    when something in them changes; the input is never modified.
    """
    if key is not None and is_secret_key(key) and value is not None:
        return REDACTED
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if isinstance(value, str):
        return _URL_PASSWORD_RE.sub(rf"\g<head>{REDACTED}@", value)
    if isinstance(value, Mapping):
        masked = {k: redact(v, key=k if isinstance(k, str) else None) for k, v in value.items()}
        return masked if any(masked[k] is not value[k] for k in masked) else value
    if isinstance(value, list | tuple):
        items = [redact(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    return value


def mask_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: return the event with every secret in it masked (see :func:`redact`)."""
    return {k: redact(v, key=k) for k, v in event_dict.items()}


def _parse_level(level: str) -> int:
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        allowed = ", ".join(k for k in _LEVELS if k != "warn")
        raise ValueError(f"unknown log level {level!r}; expected one of {allowed}") from None


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # closed or detached stream
        return False


class _NamedWriteLogger(structlog.WriteLogger):
    """A structlog WriteLogger that remembers the name it was asked for."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


class _RigpilotHandler(logging.StreamHandler[TextIO]):
    """The root handler installed by :func:`configure_logging` (a distinct type so a second
    call can find and replace it instead of adding another one)."""


def configure_logging(
    level: str = "info", json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard ``logging`` module to write to ``stream``.

    Promises:

    - every event is one line on ``stream`` (default: ``sys.stderr`` at call time) with
      ``timestamp`` (ISO 8601, UTC), ``level`` and ``event``; events below ``level``
      (``debug``, ``info``, ``warning``, ``error``, ``critical``) are dropped;
    - the format is JSON when ``json`` is True, or when it is None and ``stream`` is not a
      terminal; otherwise structlog's console renderer (coloured on a terminal unless
      ``NO_COLOR`` is set);
    - records of standard-library loggers are rendered the same way, with their ``logger``
      name, at WARNING or ``level`` (whichever is higher) and above; ``warnings.warn`` is
      captured too;
    - secrets are masked in every event (:func:`mask_secrets`);
    - calling it again replaces the previous configuration (idempotent: nothing is stacked).

    Raises ``ValueError`` for an unknown level name.
    """
    min_level = _parse_level(level)
    out = sys.stderr if stream is None else stream
    use_json = (not _is_tty(out)) if json is None else json

    renderer: Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
    else:
        colors = _is_tty(out) and "NO_COLOR" not in os.environ
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    # The console renderer prints exc_info itself (readably); JSON needs it as a string.
    exc_processors: list[Processor] = [structlog.processors.format_exc_info] if use_json else []

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_logger_name,
            structlog.processors.StackInfoRenderer(),
            timestamper,
            mask_secrets,
            *exc_processors,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=lambda *args: _NamedWriteLogger(out, args[0] if args else None),
        # Not cached: a logger bound at import time must follow a later reconfiguration.
        cache_logger_on_first_use=False,
    )

    handler = _RigpilotHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                mask_secrets,
                *exc_processors,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RigpilotHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(max(min_level, logging.WARNING))
    logging.captureWarnings(True)


def get_logger(name: str | None = None, **initial_values: Any) -> FilteringBoundLogger:
    """Return a structlog logger that follows the current configuration.

    ``name`` (conventionally ``__name__``) is added to every event as ``logger``; keyword
    arguments are bound as context on every event.
    """
    args = () if name is None else (name,)
    logger: FilteringBoundLogger = structlog.get_logger(*args, **initial_values)
    return logger
