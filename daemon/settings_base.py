"""The one base of every settings section: unknown keys are refused, values are immutable, and
no float setting takes ``inf``, ``-inf`` or ``nan`` (TOML and JSON can spell all three; an
infinite timeout or price would pass every ``gt=0`` check and wedge the daemon)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

SECTION_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Section(BaseModel):
    """Base of every ``[section]`` model of the configuration."""

    model_config = SECTION_CONFIG
