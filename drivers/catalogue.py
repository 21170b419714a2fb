"""The model catalogue (``drivers/catalogue.toml``) and power estimation from it.

Stock Antminer firmware reports no watts, so rigpilot estimates a rig's power from its model,
its mode and its measured hashrate. The catalogue is data: nameplate hashrate and power, J/TH
per mode and hashboard count for each model pyasic names, every figure with its source.
docs/catalogue.md has the table, the estimation rules and their error bounds.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any, Final, NoReturn, overload

from policies.values import Make, Mode, PowerSource

SLEEP_POWER_W: Final = 18.0
"""Control board and a slow fan while the hashboards are off."""
IDLE_SHARE: Final = 0.15
"""Boards powered but not hashing (booting, stopped), as a share of nameplate power.

Also the floor under any hashing estimate: a rig that hashes at all draws at least this much.
"""
NORMAL_J_PER_TH_TOLERANCE: Final = 0.02
"""Normal-mode J/TH must agree with nameplate W / TH/s within this share (rounding)."""

_RATED_MODES: Final = {m.value: m for m in (Mode.LOW, Mode.NORMAL, Mode.HIGH)}
_HARDWARE_MAKES: Final = frozenset({Make.ANTMINER, Make.WHATSMINER})
_MAKE_ALIASES: Final = {"bitmain": Make.ANTMINER, "microbt": Make.WHATSMINER}
_ENTRY_FIELDS: Final = frozenset(
    {
        "make",
        "model",
        "aliases",
        "hashrate_ths",
        "power_w",
        "source",
        "hashboards",
        "hashboards_source",
        "modes",
    }
)
_MODE_FIELDS: Final = frozenset({"hashrate_ths", "j_per_th", "source"})

_PARENS = re.compile(r"\([^)]*\)")  # pyasic appends the firmware: "S19j Pro (BOS+)"
_MAKER_PREFIX = re.compile(r"^(?:(?:antminer|whatsminer|bitmain|microbt)[\s_-]*)+")
_SEPARATORS = re.compile(r"[\s_-]+")
_VARIANT = re.compile(r"v[a-z]{0,2}\d+$")  # Whatsminer hardware variant: V40, VK40, VH50


class CatalogueError(ValueError):
    """The catalogue is unreadable or an entry is broken; the message names model and field."""


@dataclass(frozen=True, slots=True)
class ModeFigures:
    """What a model does in one rated mode: hashrate and efficiency, and where they come from."""

    mode: Mode
    hashrate_ths: float
    j_per_th: float
    source: str

    @property
    def power_w(self) -> float:
        """Wall power in this mode at this mode's hashrate."""
        return self.hashrate_ths * self.j_per_th


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model in the catalogue. ``hashrate_ths`` and ``power_w`` are normal-mode nameplate."""

    make: Make
    model: str
    aliases: tuple[str, ...]
    hashrate_ths: float
    power_w: float
    source: str
    hashboards: int
    hashboards_source: str
    modes: tuple[ModeFigures, ...]

    def figures(self, mode: Mode) -> ModeFigures | None:
        """The figures for ``mode`` if the catalogue rates this model in it, else None."""
        return next((m for m in self.modes if m.mode is mode), None)

    @property
    def normal(self) -> ModeFigures:
        """Normal-mode figures; every entry has them."""
        figures = self.figures(Mode.NORMAL)
        assert figures is not None  # the loader refuses an entry without them
        return figures

    @property
    def j_per_th(self) -> float:
        """Normal-mode efficiency."""
        return self.normal.j_per_th


@dataclass(frozen=True, slots=True)
class PowerEstimate:
    """An estimated wall power, flagged as such, with a short human explanation."""

    power_w: float
    source: PowerSource = field(default=PowerSource.ESTIMATED, init=False)
    basis: str = ""


def model_key(model: str) -> str:
    """A spelling-insensitive key for a model name.

    Lower case, without a firmware suffix in parentheses, a leading maker name ("Antminer"),
    spaces, underscores or hyphens: "ANTMINER S19J PRO" and "S19j Pro (Stock)" -> "s19jpro",
    "M30S+ V40" and "M30S+_V40" -> "m30s+v40". "+" stays significant.
    """
    key = _PARENS.sub(" ", model.strip().lower()).strip()
    key = _MAKER_PREFIX.sub("", key)
    return _SEPARATORS.sub("", key)


def _base_key(key: str) -> str:
    """``key`` without a trailing Whatsminer variant ("m30s+v40" -> "m30s+")."""
    base = _VARIANT.sub("", key)
    return base or key


def _make_of(make: Make | str) -> Make | None:
    text = str(make).strip().lower()
    if text in _MAKE_ALIASES:
        return _MAKE_ALIASES[text]
    try:
        return Make(text)
    except ValueError:
        return None


class Catalogue:
    """A validated set of model entries, searchable by pyasic's spelling of make and model."""

    __slots__ = ("_entries", "_index")

    def __init__(self, entries: Iterable[ModelEntry], origin: str = "<catalogue>") -> None:
        """Index ``entries``; CatalogueError if two of them claim the same name for one make."""
        self._entries = tuple(entries)
        self._index: dict[tuple[Make, str], ModelEntry] = {}
        for entry in self._entries:
            for name in (entry.model, *entry.aliases):
                slot = (entry.make, model_key(name))
                other = self._index.get(slot)
                if other is not None and other is not entry:
                    raise CatalogueError(
                        f"{origin}: model {entry.model!r}: field 'aliases': name {name!r} "
                        f"is already used by model {other.model!r}"
                    )
                self._index[slot] = entry

    @property
    def entries(self) -> tuple[ModelEntry, ...]:
        """Every entry, in file order."""
        return self._entries

    def lookup(self, make: Make | str, model: str) -> ModelEntry | None:
        """The entry for ``model`` as pyasic reports it, or None if the catalogue lacks it.

        Tolerates case, spacing, a leading maker name, a firmware suffix in parentheses and a
        trailing Whatsminer variant ("M30S+ V40", "M60S VK40", "M30S+V40"); "+" is significant,
        so "M30S" never matches "M30S+". ``make`` is pyasic's (any case): an Antminer or
        Whatsminer make restricts the search to that maker's models; a firmware make such as
        ``braiins`` (which runs on either) searches both.
        """
        parsed = _make_of(make)
        makes = [parsed] if parsed in _HARDWARE_MAKES else sorted(_HARDWARE_MAKES)
        key = model_key(model)
        if not key:
            return None
        for candidate in (key, _base_key(key)):
            for m in makes:
                found = self._index.get((m, candidate))
                if found is not None:
                    return found
        return None


def load(path: str | PathLike[str]) -> Catalogue:
    """Read and validate a catalogue TOML file.

    Raises CatalogueError naming the file, and for a broken entry the model and the field.
    """
    origin = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"{origin}: cannot read the catalogue: {exc}") from exc
    return _parse(data, origin)


@cache
def default_catalogue() -> Catalogue:
    """The catalogue shipped with rigpilot (package data), read and validated once."""
    origin = "drivers/catalogue.toml"
    text = resources.files(__package__ or "drivers").joinpath("catalogue.toml").read_text("utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{origin}: cannot read the catalogue: {exc}") from exc
    return _parse(data, origin)


def lookup(make: Make | str, model: str) -> ModelEntry | None:
    """``default_catalogue().lookup(make, model)``: the shipped entry, or None if unknown."""
    return default_catalogue().lookup(make, model)


@overload
def estimate_power_w(
    entry: ModelEntry,
    mode: Mode,
    hashrate_ths: float | None,
    power_limit_w: int | None = None,
) -> PowerEstimate: ...
@overload
def estimate_power_w(
    entry: None,
    mode: Mode,
    hashrate_ths: float | None,
    power_limit_w: int | None = None,
) -> None: ...
def estimate_power_w(
    entry: ModelEntry | None,
    mode: Mode,
    hashrate_ths: float | None,
    power_limit_w: int | None = None,
) -> PowerEstimate | None:
    """Estimated wall power of a rig of model ``entry`` seen in ``mode`` at ``hashrate_ths``.

    None for an unknown model (``entry`` None): no guess, callers show "unknown". Otherwise:
    - SLEEP: ``SLEEP_POWER_W`` (control board); OFF: 0 W.
    - hashrate known and > 0: the mode's J/TH x the measured hashrate, so a dead board or a
      degraded rig shows up; never below the idle floor (``SLEEP_POWER_W`` + ``IDLE_SHARE`` of
      nameplate W).
    - hashrate 0: the idle floor (booting, or boards stopped).
    - hashrate None: the mode's nameplate figures (J/TH x the mode's rated hashrate).
    - UNKNOWN and LIMIT use normal J/TH; a mode the model has no figures for (HIGH on stock
      Antminer) uses normal J/TH too, and the basis says so.
    - a ``power_limit_w`` > 0 caps the estimate in every hashing mode (not below
      ``SLEEP_POWER_W``); a limit <= 0 is ignored, no rig can run under it.
    The result is never negative and, for fixed model, mode and limit, never decreases as the
    hashrate grows. ValueError if ``hashrate_ths`` is negative or not finite.
    """
    if entry is None:
        return None
    if hashrate_ths is not None and not (math.isfinite(hashrate_ths) and hashrate_ths >= 0):
        raise ValueError(f"hashrate_ths must be a finite number >= 0, got {hashrate_ths!r}")
    name = entry.model
    if mode is Mode.SLEEP:
        return PowerEstimate(SLEEP_POWER_W, basis=f"{name} asleep: control board only")
    if mode is Mode.OFF:
        return PowerEstimate(0.0, basis=f"{name} off")

    figures, label = _figures_for(entry, mode)
    idle_w = SLEEP_POWER_W + IDLE_SHARE * entry.power_w
    if hashrate_ths is None:
        power = figures.power_w
        basis = (
            f"{name} {label} {figures.j_per_th:.1f} J/TH x rated "
            f"{figures.hashrate_ths:.1f} TH/s (hashrate unknown)"
        )
    elif hashrate_ths == 0:
        power = idle_w
        basis = (
            f"{name} not hashing (booting or stopped): {SLEEP_POWER_W:.0f} W + "
            f"{IDLE_SHARE:.0%} of {entry.power_w:.0f} W nameplate"
        )
    else:
        power = figures.j_per_th * hashrate_ths
        basis = f"{name} {label} {figures.j_per_th:.1f} J/TH x {hashrate_ths:.1f} TH/s"
        if power < idle_w:
            power = idle_w
            basis += f", raised to the {idle_w:.0f} W idle floor"
    if power_limit_w is not None and 0 < power_limit_w < power:
        basis = f"{name} power limit {power_limit_w} W (uncapped: {basis.removeprefix(name + ' ')})"
        power = max(SLEEP_POWER_W, float(power_limit_w))
    return PowerEstimate(power, basis=basis)


def _figures_for(entry: ModelEntry, mode: Mode) -> tuple[ModeFigures, str]:
    """The figures to estimate ``mode`` with, and how to name them in a basis."""
    if mode in (Mode.LOW, Mode.NORMAL, Mode.HIGH):
        figures = entry.figures(mode)
        if figures is not None:
            return figures, f"{mode.value} mode"
        return entry.normal, f"{mode.value} mode (no {mode.value} figures, normal used)"
    if mode is Mode.LIMIT:
        return entry.normal, "limit mode, normal"
    return entry.normal, f"{mode.value} mode, normal"


# --- validation ---------------------------------------------------------------------------


def _parse(data: Mapping[str, Any], origin: str) -> Catalogue:
    extra = sorted(set(data) - {"models"})
    if extra:
        raise CatalogueError(f"{origin}: unknown top-level key(s) {extra}; expected 'models'")
    raw = data.get("models")
    if not isinstance(raw, list) or not raw:
        raise CatalogueError(f"{origin}: expected a non-empty array of [[models]] tables")
    entries = [_entry(item, f"{origin}: entry {i + 1}", origin) for i, item in enumerate(raw)]
    return Catalogue(entries, origin)


def _fail(where: str, name: str, problem: str) -> NoReturn:
    raise CatalogueError(f"{where}: field {name!r}: {problem}")


def _text(table: Mapping[str, Any], name: str, where: str, prefix: str = "") -> str:
    value = table.get(name)
    if not isinstance(value, str) or not value.strip():
        _fail(where, prefix + name, f"must be a non-empty string, got {value!r}")
    return value


def _positive(table: Mapping[str, Any], name: str, where: str, prefix: str = "") -> float:
    value = table.get(name)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        _fail(where, prefix + name, f"must be a positive number, got {value!r}")
    return float(value)


def _entry(item: object, where: str, origin: str) -> ModelEntry:
    if not isinstance(item, dict):
        raise CatalogueError(f"{where}: expected a table, got {item!r}")
    model = item.get("model")
    if isinstance(model, str) and model.strip():
        where = f"{origin}: model {model!r}"
    else:
        _fail(where, "model", f"must be a non-empty string, got {model!r}")
    unknown = sorted(set(item) - _ENTRY_FIELDS)
    if unknown:
        _fail(where, unknown[0], f"unknown field; expected {sorted(_ENTRY_FIELDS)}")
    make_text = _text(item, "make", where)
    make = _make_of(make_text)
    if make not in _HARDWARE_MAKES:
        _fail(where, "make", f"must be 'antminer' or 'whatsminer', got {make_text!r}")
    aliases = item.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        _fail(where, "aliases", f"must be a list of non-empty strings, got {aliases!r}")
    hashboards = item.get("hashboards")
    if isinstance(hashboards, bool) or not isinstance(hashboards, int) or hashboards < 1:
        _fail(where, "hashboards", f"must be a whole number >= 1, got {hashboards!r}")
    hashrate_ths = _positive(item, "hashrate_ths", where)
    power_w = _positive(item, "power_w", where)
    modes = _modes(item.get("modes"), where, hashrate_ths, power_w)
    return ModelEntry(
        make=make,
        model=model,
        aliases=tuple(aliases),
        hashrate_ths=hashrate_ths,
        power_w=power_w,
        source=_text(item, "source", where),
        hashboards=hashboards,
        hashboards_source=_text(item, "hashboards_source", where),
        modes=modes,
    )


def _modes(raw: object, where: str, hashrate_ths: float, power_w: float) -> tuple[ModeFigures, ...]:
    if not isinstance(raw, dict):
        _fail(where, "modes", f"must be a table of low/normal/high, got {raw!r}")
    if "normal" not in raw:
        _fail(where, "modes.normal", "missing; every model needs normal-mode figures")
    result: list[ModeFigures] = []
    for name, table in raw.items():
        prefix = f"modes.{name}."
        mode = _RATED_MODES.get(name)
        if mode is None:
            _fail(where, f"modes.{name}", f"unknown mode; expected one of {list(_RATED_MODES)}")
        if not isinstance(table, dict):
            _fail(where, f"modes.{name}", f"must be a table, got {table!r}")
        unknown = sorted(set(table) - _MODE_FIELDS)
        if unknown:
            _fail(where, prefix + unknown[0], f"unknown field; expected {sorted(_MODE_FIELDS)}")
        j_per_th = _positive(table, "j_per_th", where, prefix)
        source = _text(table, "source", where, prefix)
        if mode is Mode.NORMAL:
            if "hashrate_ths" in table:
                _fail(where, prefix + "hashrate_ths", "normal mode runs at the nameplate; omit it")
            mode_ths = hashrate_ths
            nameplate = power_w / hashrate_ths
            if abs(j_per_th - nameplate) > NORMAL_J_PER_TH_TOLERANCE * nameplate:
                _fail(
                    where,
                    prefix + "j_per_th",
                    f"{j_per_th} disagrees with power_w / hashrate_ths = {nameplate:.2f}",
                )
        else:
            mode_ths = _positive(table, "hashrate_ths", where, prefix)
            if (mode is Mode.LOW) != (mode_ths < hashrate_ths) or mode_ths == hashrate_ths:
                side = "below" if mode is Mode.LOW else "above"
                _fail(
                    where,
                    prefix + "hashrate_ths",
                    f"{mode_ths} must be {side} the nameplate {hashrate_ths} TH/s",
                )
        result.append(ModeFigures(mode, mode_ths, j_per_th, source))
    return tuple(result)
