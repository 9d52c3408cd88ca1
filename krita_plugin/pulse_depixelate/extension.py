"""Registration: the docker factory and the `pulse_depixelate` action (Tools ▸ Scripts)."""

from __future__ import annotations

from typing import Any

from krita import DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita
from PyQt5.QtWidgets import QMessageBox

from . import logic
from .docker import TITLE, PulseDocker, is_pulse_docker

ACTION_TEXT = "Depixelate Face (PULSE)"


def find_docker() -> PulseDocker | None:
    """The active window's PULSE docker (Krita creates one per window, hidden or not)."""
    app = Krita.instance()
    dockers = [d for d in app.dockers() if is_pulse_docker(d)]
    window = app.activeWindow()
    qwindow = window.qwindow() if window is not None else None
    for docker in dockers:
        if qwindow is not None and docker.window() is qwindow:
            return docker
    return dockers[0] if dockers else None


class PulseExtension(Extension):
    def __init__(self, parent: Any) -> None:
        super().__init__(parent)

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:
        # Text, menu and shortcut also come from pulse_depixelate.action when the installer placed it.
        action = window.createAction(logic.PLUGIN_ID, ACTION_TEXT, "tools/scripts")
        action.setToolTip("Imagine a face for the selected pixelated region with the local PULSE daemon")
        action.triggered.connect(self.trigger)

    def trigger(self) -> None:
        """Run with the docker's current settings on the active document's selection."""
        docker = find_docker()
        if docker is None:
            QMessageBox.warning(None, TITLE, "Show the PULSE Depixelate docker (Settings ▸ Dockers) first.")
            return
        if not docker.isVisible():
            docker.show()  # the progress and any message appear there
        docker.depixelate()


_keep: list[Any] = []  # Krita does not own Python wrappers: keep them alive for the session


def register(app: Any) -> None:
    factory = DockWidgetFactory(logic.PLUGIN_ID, DockWidgetFactoryBase.DockRight, PulseDocker)
    extension = PulseExtension(app)
    _keep.extend([factory, extension])
    app.addDockWidgetFactory(factory)
    app.addExtension(extension)
