"""PULSE Depixelate for Krita: a docker and a Tools ▸ Scripts action that send the selected pixelated face
to the local pulse daemon and paste the imagined candidates back as new paint layers.

Krita imports this package at startup when the plug-in is enabled (Settings ▸ Configure Krita ▸ Python
Plugin Manager); registering the docker factory and the extension here is how pykrita plug-ins work.
Outside Krita (tests, the installer) importing the package registers nothing.
"""

from __future__ import annotations


def _register() -> None:
    try:
        from krita import Krita
        from .extension import register
    except ImportError:  # not inside Krita (or no PyQt5): logic-only use
        return
    if Krita.instance() is not None:
        register(Krita.instance())


_register()
