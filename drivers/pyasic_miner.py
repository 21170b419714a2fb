"""pyasic miner objects without pyasic's detection.

``pyasic.get_miner`` costs several milliseconds and a dozen requests per rig. Once a rig is
identified, the classification pyasic chose (its miner type, model key and firmware version) is
cached in the rig's Identity, and the same class is rebuilt from it with the factory's own
selection function, so a restart or a command costs no detection at all.
"""

from __future__ import annotations

import warnings
from typing import Any

from pyasic.miners.factory import MINER_CLASSES, MinerFactory, MinerTypes

from policies.values import Identity

_CACHE: dict[tuple[str, str, str, str, str], Any] = {}


class NotClassified(LookupError):
    """The identity carries no pyasic classification: the rig must be identified again."""


def _signature(miner: Any) -> tuple[str, ...]:
    # pyasic builds some classes at run time (BTMiner picks its V2/V3 base by firmware date),
    # so compare the whole ancestry by name, not the class object.
    return tuple(c.__name__ for c in type(miner).__mro__)


def classify(miner: Any, version: str | None) -> dict[str, str] | None:
    """The (type, model key, version) that rebuild ``miner``'s class, or None if none does.

    ``version`` is the firmware version pyasic's factory saw (Whatsminer: ``fw_ver``).
    """
    address = str(miner.ip)
    version = version or ""
    raw = str(miner.raw_model or "")
    candidates = [raw.upper(), f"ANTMINER {raw.upper()}", raw.upper().replace(" ", "")]
    wanted = _signature(miner)
    for mtype, classes in MINER_CLASSES.items():
        for key in candidates:
            if key in classes:
                rebuilt = MinerFactory._select_miner_from_classes(
                    address, miner_model=key, miner_type=mtype, version=version or None
                )
                if _signature(rebuilt) == wanted:
                    return {
                        "pyasic_type": mtype.name,
                        "pyasic_model": key,
                        "pyasic_version": version,
                    }
    # A model pyasic does not list: its factory chose the make's fallback class
    # ("AntminerUnknown", "WhatsminerUnknown"), which the make and no model rebuild.
    for mtype, classes in MINER_CLASSES.items():
        fallback = classes.get(None)
        if fallback is not None and isinstance(miner, fallback):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pyasic's "partially supported" warning
                rebuilt = MinerFactory._select_miner_from_classes(
                    address, miner_model=None, miner_type=mtype, version=version or None
                )
            if _signature(rebuilt) == wanted:
                return {"pyasic_type": mtype.name, "pyasic_model": "", "pyasic_version": version}
    return None


def miner_for(identity: Identity) -> Any:
    """A pyasic miner object for ``identity``, rebuilt from its cached classification.

    Raises NotClassified when the identity carries no classification (re-identify the rig).
    """
    extra = identity.extra
    try:
        key = (
            identity.address,
            extra["pyasic_type"],
            extra["pyasic_model"],
            extra.get("pyasic_version", ""),
            identity.firmware,
        )
    except KeyError:
        raise NotClassified(f"{identity.address}: no cached pyasic classification") from None
    miner = _CACHE.get(key)
    if miner is None:
        miner = MinerFactory._select_miner_from_classes(
            identity.address,
            miner_model=key[2] or None,  # "": a model pyasic does not list (its fallback class)
            miner_type=MinerTypes[key[1]],
            version=key[3] or None,
        )
        _CACHE[key] = miner
    return miner


def forget(address: str) -> None:
    """Drop cached miner objects for ``address`` (after re-identification)."""
    for key in [k for k in _CACHE if k[0] == address]:
        del _CACHE[key]
