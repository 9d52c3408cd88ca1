"""pulse daemon and solver: PULSE face depixelation served to GIMP and Krita over ZeroMQ."""

__version__ = "0.1.0"
