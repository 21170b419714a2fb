"""Power switches: switched and metered rack PDUs (SNMP) and smart plugs (Shelly, Tasmota).

A switch is a driver kind beside :class:`drivers.base.RigDriver`: it speaks to one device that
powers one or more rigs through its outlets (see docs/power-switches.md).
"""
