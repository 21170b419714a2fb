"""rigpilot's daemon: configuration, CLI, control loop and its I/O shell."""

__version__ = "0.1.0"
