"""The MQTT control room: state out, commands in, every command answered (docs/mqtt.md).

``topics`` names the tree, ``commands`` parses and validates requests (pure), ``desk`` applies
them to the control loop and answers them, ``state`` and ``discovery`` build what is published
(pure), and ``bridge`` is the one broker connection that carries it all.
"""
