"""``rigpilot backtest``: replay a price history through the live policies and guards.

An offline tool beside the daemon (docs/backtest.md). It calls the same pure core the control
loop calls (``policies``' ``decide``, ``policies.combine.combine``,
``policies.guards.apply_guards`` and ``daemon.rig_economics.mode_points``) and drives the
simulator's physics model (``simulator.physics``, ``simulator.models``) as a library: pure
functions over plain data, no sockets. Nothing on the daemon's control path imports this
package (docs/architecture.md).
"""
