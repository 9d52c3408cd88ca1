"""Krita plug-in sources: `pulse_depixelate.desktop` + the `pulse_depixelate` package (see pulse_server/editors/krita.py)."""
