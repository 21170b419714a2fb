"""Catalogue of the rig models the simulator can impersonate.

The simulator imports nothing of rigpilot's, so it keeps its own small table. Nameplate figures
come from docs/reference/economics.md (and the makers' spec sheets where that table is
silent, e.g. the M30S+); identity strings are what real firmware reports, as pyasic 0.79 reads
them (see docs/simulator.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Make = Literal["antminer", "whatsminer", "luxos", "braiins", "epic", "vnish"]
"""``luxos``: an Antminer running LuxOS (see :func:`on_luxos`); ``braiins``: one running
Braiins OS (see :func:`on_braiins`); ``epic``: one running ePIC's PowerPlay firmware (see
:func:`on_epic`); ``vnish``: one running VNish (:func:`on_vnish`)."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Static facts about one rig model."""

    key: str
    """Short name used on the command line, e.g. ``s19jpro``."""
    make: Make
    model: str
    """The model as pyasic names it, e.g. ``S19j Pro`` or ``M30S+ V40``."""
    rpc_type: str
    """Antminer: RPC ``VERSION[0].Type`` / web ``minertype``.
    Whatsminer: ``DEVDETAILS[0].Model``."""
    hashrate_ths: float
    """Nameplate hashrate in normal mode."""
    power_w: float
    """Nameplate wall power in normal mode."""
    boards: int
    chips_per_board: int
    fans: int
    firmware: str
    """Default firmware version string for this model."""
    board_freq_mhz: float
    """Nominal chip frequency in normal mode."""
    source: str
    """Where the nameplate figures come from."""
    web_watt: bool = False
    """Antminer: the firmware reports its wall power in the web ``stats`` (``watt``), as
    stock firmware from 2023 on does."""

    @property
    def efficiency_j_per_th(self) -> float:
        return self.power_w / self.hashrate_ths


_ECON = "docs/reference/economics.md"

MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec(
            "s19jpro",
            "antminer",
            "S19j Pro",
            "Antminer S19j Pro",
            104,
            3068,
            3,
            126,
            4,
            "Fri Nov 17 17:37:49 CST 2023",
            525,
            _ECON,
        ),
        ModelSpec(
            "s19xp",
            "antminer",
            "S19 XP",
            "Antminer S19 XP",
            140,
            3010,
            3,
            110,
            4,
            "Thu May  4 10:21:06 CST 2023",
            560,
            _ECON,
        ),
        ModelSpec(
            "s21",
            "antminer",
            "S21",
            "Antminer S21",
            200,
            3500,
            3,
            108,
            4,
            "Thu Oct  9 18:55:45 CST 2025",
            490,
            _ECON,
        ),
        ModelSpec(
            "s21pro",
            "antminer",
            "S21 Pro",
            "Antminer S21 Pro",
            234,
            3510,
            3,
            65,
            4,
            "Thu Oct  9 18:55:45 CST 2025",
            500,
            _ECON,
        ),
        ModelSpec(
            "s21xphyd",
            "antminer",
            "S21 XP Hyd.",
            "Antminer S21 XP Hyd.",
            473,
            5676,
            3,
            160,
            4,
            "Thu Jan  8 15:44:15 CST 2026",
            495,
            "RPC capture antminer/v2023_07 (total_rateideal 473 TH/s, 160 chips, 495 MHz); "
            "Bitmain spec sheet 12 J/TH",
            web_watt=True,
        ),
        ModelSpec(
            "m30s+",
            "whatsminer",
            "M30S+ V40",
            "M30S+V40",
            100,
            3400,
            3,
            235,
            2,
            "20230803.11.REL",
            600,
            "MicroBT spec sheet: 100 TH/s at 34 J/TH",
        ),
        ModelSpec(
            "m30s",
            "whatsminer",
            "M30S V50",
            "M30SV50",
            88,
            3344,
            3,
            156,
            2,
            "20230803.11.REL",
            580,
            _ECON,
        ),
        ModelSpec(
            "m50s",
            "whatsminer",
            "M50S VH50",
            "M50SVH50",
            126,
            3276,
            3,
            135,
            2,
            "20240624.18.REL",
            600,
            _ECON,
        ),
        ModelSpec(
            "m60s",
            "whatsminer",
            "M60S VK40",
            "M60S_VK40",
            186,
            3422,
            3,
            225,
            2,
            "20240624.18.REL",
            625,
            _ECON,
        ),
        ModelSpec(
            "m66s",
            "whatsminer",
            "M66S VK30",
            "M66SVK30",
            298,
            5513,
            3,
            264,
            0,
            "20251209.16.Rel2",
            625,
            "MicroBT spec sheet: 298 TH/s at 18.5 J/TH (immersion)",
        ),
    )
}


def lookup(key: str) -> ModelSpec:
    """The spec for ``key`` (case-insensitive); ValueError naming the known keys if absent."""
    spec = MODELS.get(key.lower())
    if spec is None:
        raise ValueError(f"unknown model {key!r}; known models: {', '.join(sorted(MODELS))}")
    return spec


LUXOS_FIRMWARE = "2025.4.8.220305-57b389c7"
"""The ``LUXminer`` version of the LuxOS captures (tests/fixtures/captures/luxminer/v1)."""


def on_luxos(spec: ModelSpec) -> ModelSpec:
    """``spec``, an Antminer, running LuxOS instead of stock firmware (same hardware, same
    physics; make ``luxos``, whose handlers are ``simulator/luxos.py``)."""
    if spec.make != "antminer":
        raise ValueError(f"{spec.key} is a {spec.make}: LuxOS runs on Antminers only")
    return replace(spec, make="luxos", firmware=LUXOS_FIRMWARE)


BOS_FIRMWARE = "2025-08-06-0-3881c51d-25.07-plus"
"""``bos_version.current`` of the Braiins OS captures (tests/fixtures/captures/braiins/v25_07)."""


def on_braiins(spec: ModelSpec) -> ModelSpec:
    """``spec``, an Antminer, running Braiins OS 25.x instead of stock firmware (same hardware,
    same physics; make ``braiins``, whose handlers are ``simulator/braiins.py``)."""
    if spec.make != "antminer":
        raise ValueError(f"{spec.key} is a {spec.make}: Braiins OS runs on Antminers here")
    return replace(spec, make="braiins", firmware=BOS_FIRMWARE)


EPIC_FIRMWARE = "PowerPlay-BMS v1.5.13"
"""The ``Software`` of the ePIC captures (tests/fixtures/captures/epic/v1)."""


def on_epic(spec: ModelSpec) -> ModelSpec:
    """``spec``, an Antminer, running ePIC's PowerPlay firmware (same hardware, same physics;
    make ``epic``, whose handlers are ``simulator/epic.py``)."""
    if spec.make != "antminer":
        raise ValueError(f"{spec.key} is a {spec.make}: ePIC runs on Antminers only")
    return replace(spec, make="epic", firmware=EPIC_FIRMWARE)


VNISH_FIRMWARE = "Vnish 1.2.6"
"""What VNish 1.2.6 appends to the model (``Antminer S19 (Vnish 1.2.6)``, its API reference)."""


def on_vnish(spec: ModelSpec) -> ModelSpec:
    """``spec``, an Antminer, running VNish (same hardware, same physics; make ``vnish``, whose
    handlers are ``simulator/vnish.py``)."""
    if spec.make != "antminer":
        raise ValueError(f"{spec.key} is a {spec.make}: VNish runs on Antminers only")
    return replace(spec, make="vnish", firmware=VNISH_FIRMWARE)
