"""What a rig's address may be: an IPv4 or IPv6 address, nothing else.

pyasic, which reads and commands the rigs, builds every miner's API client from
``ipaddress.ip_address(address)``: a host name gets no further than identification. So a
``[[rigs]] address`` (and an address given to ``rigpilot observe``) must be an IP address, and
one that merely looks like an IPv4 address (``10.0.0.300``) is refused with the reason.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

_DOTTED_NUMBERS: Final = re.compile(r"^[0-9.]+$")
_HOST_NAME: Final = re.compile(
    r"^(?=.{1,253}\.?$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
)


def check_rig_address(text: str) -> str:
    """``text`` stripped, if it is an IPv4 or IPv6 address; else ValueError saying why not."""
    address = text.strip()
    try:
        ipaddress.ip_address(address)
    except ValueError:
        pass
    else:
        return address
    if not address:
        raise ValueError("a rig address cannot be empty")
    if _DOTTED_NUMBERS.match(address):
        try:
            ipaddress.IPv4Address(address)
        except ipaddress.AddressValueError as exc:
            raise ValueError(f"{address!r} is not a valid IPv4 address: {_reason(exc)}") from None
    if ":" in address:
        try:
            ipaddress.IPv6Address(address)
        except ipaddress.AddressValueError as exc:
            raise ValueError(f"{address!r} is not a valid IPv6 address: {_reason(exc)}") from None
    if _HOST_NAME.match(address):
        raise ValueError(
            f"{address!r} is a host name: rigs are read by IP address (the miner library "
            "needs one); give the rig's IPv4 or IPv6 address"
        )
    raise ValueError(f"{address!r} is not an IPv4 or IPv6 address")


def _reason(exc: ipaddress.AddressValueError) -> str:
    """The library's reason without the address it repeats ("... in '10.0.0.300'")."""
    return re.sub(r" in '[^']*'$", "", str(exc))
