"""PULSE Depixelate for Krita: a docker and a Tools ▸ Scripts action that send the selected pixelated face
to the local pulse daemon and paste the imagined candidates back as new paint layers.

Krita imports this package at startup when the plug-in is enabled (Settings ▸ Configure Krita ▸ Python
Plugin Manager); registering the docker factory and the extension here is how pykrita plug-ins work.
Outside Krita (tests, the installer) importing the package registers nothing.
"""

from __future__ import annotations

import importlib.util


def _register() -> None:
    try:
        from krita import Krita
    except ImportError:  # not inside Krita: logic-only use
        return
    if importlib.util.find_spec("PyQt5") is None:  # a stand-in `krita` module without Qt (the fast tests)
        return
    from .extension import register  # inside Krita a broken import must show, not silently hide the docker

    instance = Krita.instance()
    if instance is not None:
        register(instance)


_register()
