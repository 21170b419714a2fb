"""An answer to a control-room request, as the command desk hands it to the bridge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.operator_state import Envelope


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer to publish: to the request's response topic, with its correlation data."""

    envelope: Envelope
    body: dict[str, Any]

    @property
    def final(self) -> bool:
        return bool(self.body["status"] != "accepted")
