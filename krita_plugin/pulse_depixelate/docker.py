"""The "PULSE Depixelate" docker: settings, daemon status, progress, cancel, previews.

Threading: Krita's API is only called on the GUI thread (here, in slots). The daemon is only talked to in
QThreads (`JobThread`, `ProbeThread`), which see plain bytes and dataclasses and report back through Qt
signals; signals emitted from a worker thread reach these slots queued, on the GUI thread.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import traceback
from typing import Any, Optional

from krita import DockWidget, Krita, Selection
from PyQt5.QtCore import QSize, QThread, QTimer, Qt, pyqtSignal
from PyQt5.QtGui import QIcon, QImage, QPixmap
from PyQt5.QtWidgets import (QApplication, QComboBox, QFormLayout, QFrame, QHBoxLayout, QLabel, QLineEdit,
                             QListWidget, QListWidgetItem, QMessageBox, QProgressBar, QPushButton, QScrollArea,
                             QSpinBox, QVBoxLayout, QWidget)

from . import client_path, logic

TITLE = "PULSE Depixelate"
PROBE_INTERVAL_MS = 5000
PREVIEW_SIZE = 96
FACE_ICON = 48  # the face list's thumbnails (logic.THUMB_SIDE)
FACE_ROWS = 4  # rows the face list shows before it scrolls
QUESTION_NAME = "pulse_no_mosaic_question"  # objectName of the "depixelate anyway?" box


class JobThread(QThread):
    """Runs one job against the daemon; never touches Krita."""

    progress = pyqtSignal(int, int, float)  # step, total, best error so far
    preview = pyqtSignal(bytes)  # small JPEG
    state = pyqtSignal(str)  # queued | loading | running | ...
    succeeded = pyqtSignal(object)  # logic.Outcome
    failed = pyqtSignal(str)
    cancelled = pyqtSignal()
    no_mosaic = pyqtSignal(str, str)  # question, detail: the daemon found no mosaic; ask before forcing

    def __init__(self, request: logic.Request, parent: Any = None) -> None:
        super().__init__(parent)
        self.request = request
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def run(self) -> None:  # worker thread
        try:
            outcome = logic.run_job(
                self.request,
                on_progress=lambda p: self.progress.emit(int(p.step), int(p.total), float(p.best_error)),
                should_cancel=self._cancel.is_set,
                on_preview=lambda jpeg: self.preview.emit(bytes(jpeg)),
                on_state=lambda state: self.state.emit(str(state)),
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message in the docker
            if type(exc).__name__ == "JobCancelled":
                self.cancelled.emit()
                return
            asked = logic.force_question(exc, self.request)
            if asked is not None:
                self.no_mosaic.emit(*asked)
                return
            if not isinstance(exc, (logic.PluginError, ImportError)) and not type(exc).__module__.startswith("protocol"):
                traceback.print_exc()
            self.failed.emit(logic.user_message(exc))
            return
        self.succeeded.emit(outcome)


class ProbeThread(QThread):
    """Asks the daemon who it is (HELLO/WELCOME) with a short timeout."""

    answered = pyqtSignal(bool, str, str)  # reachable, status text, the endpoint asked ("" = default)

    def __init__(self, endpoint: Optional[str], parent: Any = None) -> None:
        super().__init__(parent)
        self.endpoint = endpoint

    def run(self) -> None:  # worker thread
        try:
            client_path.ensure_client_path()
            from protocol.client import PulseClient

            with PulseClient(self.endpoint, client_name=logic.CLIENT_NAME, client_version=logic.PLUGIN_VERSION,
                             timeout=2.0) as client:
                welcome = client.connect()
            # The daemon's own model comes first; the registry's other models follow (loaded or not).
            models = str(((getattr(welcome, "models", None) or [{}])[0]).get("name", ""))
            text = f"connected ({getattr(welcome, 'device', '?')}" + (f", {models})" if models else ")")
            self.answered.emit(True, text, self.endpoint or "")
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ == "DaemonNotRunning":
                self.answered.emit(False, "not running", self.endpoint or "")
            else:
                self.answered.emit(False, logic.user_message(exc), self.endpoint or "")


class _ContentSizedScrollArea(QScrollArea):
    """Asks for its content's full size (a plain QScrollArea asks for little, and the dock area obliges)."""

    def sizeHint(self) -> QSize:
        inner = self.widget()
        if inner is None:
            return super().sizeHint()
        bar = self.verticalScrollBar().sizeHint().width()
        return inner.sizeHint() + QSize(bar + 2 * self.frameWidth(), 2 * self.frameWidth())

    def minimumSizeHint(self) -> QSize:
        # Tall enough for the settings and buttons; longer messages and the preview scroll.
        inner = self.widget()
        base = super().minimumSizeHint()
        return base if inner is None else QSize(base.width(), min(inner.sizeHint().height(), 480))


class PulseDocker(DockWidget):
    """One per Krita window; the `pulse_depixelate` action drives the active window's one."""

    jobFinished = pyqtSignal(str, str)  # "done" | "failed" | "cancelled" | "refused" | "declined", message

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(TITLE)
        self._job: Optional[JobThread] = None
        self._probe: Optional[ProbeThread] = None
        self._probe_again = False
        self._retired: list[JobThread] = []  # threads past their last signal, until QThread.finished
        self.last_layers: list[Any] = []  # the last run's face layers, best first
        self.last_group: Any = None
        self._build_ui()
        self._load_settings()
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._periodic_probe)
        self._timer.start(PROBE_INTERVAL_MS)
        app = QApplication.instance()
        if app is not None:  # never leave a running QThread behind: Qt aborts the process if one is destroyed
            app.aboutToQuit.connect(self._shutdown)
        missing = client_path.missing_dependencies()
        if missing:
            self._say(client_path.dependency_help(missing), error=True)
            self._set_status(False, "client libraries missing")
        else:
            QTimer.singleShot(0, self.probe)

    # ------------------------------------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        root = QWidget()
        box = QVBoxLayout(root)
        status_row = QHBoxLayout()
        self.status_label = QLabel("Daemon: checking…")
        self.status_label.setWordWrap(True)
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Start the PULSE daemon (`pulse-server run`) in the background")
        self.start_button.clicked.connect(self.start_daemon)
        status_row.addWidget(self.status_label, 1)
        status_row.addWidget(self.start_button)
        box.addLayout(status_row)

        form = QFormLayout()
        # A narrow docker puts a label above its field instead of squeezing both into one row.
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)
        self.candidates = QSpinBox(minimum=1, maximum=16, value=3)
        self.candidates.setToolTip("How many faces to imagine; each becomes a layer, the best one visible")
        self.steps = QSpinBox(minimum=1, maximum=10000, value=100)
        self.seed = QSpinBox(minimum=-1, maximum=2**31 - 1, value=-1)
        self.seed.setSpecialValueText("random")
        self.block = QSpinBox(minimum=0, maximum=512, value=0)
        self.block.setSpecialValueText("auto")
        self.block.setSuffix(" px")
        self.source = QComboBox()
        self.source.addItem("Active layer", "layer")
        self.source.addItem("Whole image (merged)", "projection")
        self.endpoint = QLineEdit()
        self.endpoint.setPlaceholderText("default")
        self.endpoint.setToolTip("Daemon endpoint, e.g. tcp://127.0.0.1:5599; empty: the per-user default")
        # Re-check the daemon shortly after the endpoint changes (typed or set by the action's caller).
        self._endpoint_timer = QTimer(self)
        self._endpoint_timer.setSingleShot(True)
        self._endpoint_timer.setInterval(400)
        self._endpoint_timer.timeout.connect(self.probe)
        self.endpoint.textChanged.connect(self._endpoint_changed)
        for label, widget in (("Candidates", self.candidates), ("Steps", self.steps), ("Seed", self.seed),
                              ("Block size", self.block), ("Pixels from", self.source), ("Endpoint", self.endpoint)):
            form.addRow(label, widget)
        box.addLayout(form)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Depixelate")
        self.run_button.clicked.connect(self.depixelate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        box.addLayout(buttons)

        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        box.addWidget(self.progress)
        self.preview = QLabel()
        self.preview.setFixedSize(PREVIEW_SIZE, PREVIEW_SIZE)
        self.preview.setAlignment(Qt.AlignCenter)
        self.preview.setVisible(False)
        box.addWidget(self.preview, 0, Qt.AlignHCenter)
        self.message = QLabel("Select a pixelated face, then press Depixelate.")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.message.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        # Room for a few wrapped lines: a scroll area does not grow for a word-wrapped label by itself.
        self.message.setMinimumHeight(5 * self.message.fontMetrics().lineSpacing())
        box.addWidget(self.message)
        # The last run's faces: a thumbnail, the layer name over its error and seed; the tick is the
        # layer's visibility, so faces can be compared without hunting for them in the layer stack.
        self.faces = QListWidget()
        self.faces.setObjectName("pulse_faces")
        self.faces.setIconSize(QSize(FACE_ICON, FACE_ICON))
        self.faces.setWordWrap(True)
        self.faces.setTextElideMode(Qt.ElideMiddle)
        self.faces.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.faces.setToolTip("Tick a face to show its layer, untick to hide it")
        self.faces.itemChanged.connect(self._face_toggled)
        self.faces.setVisible(False)
        box.addWidget(self.faces)
        box.addStretch(1)
        scroll = _ContentSizedScrollArea(self)  # a short docker scrolls instead of clipping the message
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # the form reflows to the docker's width
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setWidget(root)
        self.setWidget(scroll)

    def _shutdown(self) -> None:
        self._timer.stop()
        if self._job is not None:
            self._job.cancel()  # the daemon drops the job too (CANCEL), rather than finishing it for nobody
            self._job.wait(3000)
        for thread in [self._probe] + self._retired:
            if thread is not None:
                thread.wait(3000)

    def canvasChanged(self, canvas: Any) -> None:  # required by DockWidget; nothing is tied to a canvas
        pass

    def _say(self, text: str, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setStyleSheet("color: #d33;" if error else "")

    def _set_status(self, ok: bool, text: str) -> None:
        self.status_label.setText(f"Daemon: {text}")
        self.start_button.setVisible(not ok)

    # ------------------------------------------------------------------------------------------ settings

    _FIELDS = ("candidates", "steps", "seed", "block")

    def settings(self) -> logic.Settings:
        return logic.Settings(candidates=self.candidates.value(), steps=self.steps.value(), seed=self.seed.value(),
                              block=self.block.value(), source=self.source.currentData(),
                              endpoint=self.endpoint.text().strip())

    def apply_settings(self, s: logic.Settings) -> None:
        for name in self._FIELDS:
            getattr(self, name).setValue(int(getattr(s, name)))
        self.source.setCurrentIndex(max(0, self.source.findData(s.source)))
        self.endpoint.setText(s.endpoint)

    def _load_settings(self) -> None:
        app, s = Krita.instance(), logic.Settings()
        for name in self._FIELDS:
            try:
                setattr(s, name, int(app.readSetting(logic.PLUGIN_ID, name, str(getattr(s, name)))))
            except ValueError:
                pass
        s.source = app.readSetting(logic.PLUGIN_ID, "source", s.source)
        s.endpoint = app.readSetting(logic.PLUGIN_ID, "endpoint", s.endpoint)
        self.apply_settings(s)

    def _save_settings(self, s: logic.Settings) -> None:
        app = Krita.instance()
        for name in self._FIELDS + ("source", "endpoint"):
            app.writeSetting(logic.PLUGIN_ID, name, str(getattr(s, name)))

    # ------------------------------------------------------------------------------------------ daemon

    def _periodic_probe(self) -> None:
        if self.isVisible():  # a hidden docker does not poll the daemon
            self.probe()

    def _endpoint_changed(self, _text: str) -> None:
        if self._job is None:
            self.status_label.setText("Daemon: checking…")  # whatever we knew was about another endpoint
        self._endpoint_timer.start()

    def _current_endpoint(self) -> Optional[str]:
        return self.endpoint.text().strip() or None

    def probe(self) -> None:
        if self._job is not None:
            return
        if self._probe is not None:
            self._probe_again = True  # the endpoint may have changed meanwhile: ask again afterwards
            return
        probe = ProbeThread(self._current_endpoint(), self)
        probe.answered.connect(self._on_probe)
        probe.finished.connect(self._probe_done)
        self._probe = probe
        probe.start()

    def _on_probe(self, ok: bool, text: str, endpoint: str) -> None:
        stale = (endpoint or None) != self._current_endpoint()  # the user changed it meanwhile
        if self._job is None and not stale:
            self._set_status(ok, text)

    def _probe_done(self) -> None:
        if self._probe is not None:
            self._probe.deleteLater()
        self._probe = None
        if self._probe_again:
            self._probe_again = False
            QTimer.singleShot(0, self.probe)

    def start_daemon(self) -> None:
        endpoint = self.endpoint.text().strip() or None
        cmd = client_path.server_command(endpoint)
        if cmd is None:
            self._say("`pulse-server` was not found: install pulse (pip install pulse-depixelate) or start the "
                      "daemon yourself with `pulse-server run`.", error=True)
            return
        kwargs: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                                  "stderr": subprocess.DEVNULL, "env": client_path.daemon_env(), "close_fds": True}
        if sys.platform == "win32":
            kwargs["creationflags"] = (subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
                                       | subprocess.CREATE_NO_WINDOW)
        else:
            kwargs["start_new_session"] = True  # survives Krita; logs go to the daemon's own log file
        try:
            subprocess.Popen(cmd, **kwargs)
        except OSError as exc:
            self._say(f"Could not start the daemon ({' '.join(cmd)}): {exc}", error=True)
            return
        self._set_status(False, "starting…")
        self._say("Starting the daemon; the first job also loads the model, which can take a while.")
        for delay in (1500, 4000, 8000):
            QTimer.singleShot(delay, self.probe)

    # ------------------------------------------------------------------------------------------ jobs

    def depixelate(self) -> bool:
        """Start a job on the active document's selection; False (with a message) when it cannot start."""
        if self._job is not None:
            self._say("A job is already running: wait for it or press Cancel.")
            return False
        settings = self.settings()
        try:
            missing = client_path.missing_dependencies()
            if missing:
                raise logic.PluginError(client_path.dependency_help(missing))
            request = logic.build_request(Krita.instance().activeDocument(), settings)
        except logic.PluginError as exc:
            self._say(str(exc), error=True)
            self.jobFinished.emit("refused", str(exc))
            return False
        self._save_settings(settings)
        self._start(request)
        return True

    def _start(self, request: logic.Request) -> None:
        self._job = JobThread(request, self)
        self._job.progress.connect(self._on_progress)
        self._job.preview.connect(self._on_preview)
        self._job.state.connect(self._on_state)
        self._job.succeeded.connect(self._on_success)
        self._job.failed.connect(self._on_failure)
        self._job.cancelled.connect(self._on_cancelled)
        self._job.no_mosaic.connect(self._on_no_mosaic)
        self._job.finished.connect(self._reap)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until the first PROGRESS (queue, model loading)
        self.preview.setVisible(False)
        r = request.rect
        forced = " (anyway: no mosaic)" if request.params.get("force") else ""
        self._say(f"Sending {r.w}×{r.h} pixels at ({r.x}, {r.y}) to the daemon{forced}…")
        self._job.start()

    def _on_no_mosaic(self, question: str, detail: str) -> None:
        """The daemon found no mosaic: ask (default No); Yes sends the same region again, forced, as a new job.

        The refused job's thread is done; the docker stays busy (Depixelate disabled) until the answer."""
        request = self._job.request
        self._retired.append(self._job)
        self._job = None
        self.cancel_button.setEnabled(False)
        box = QMessageBox(QMessageBox.Question, TITLE, question, QMessageBox.Yes | QMessageBox.No, self)
        box.setObjectName(QUESTION_NAME)
        box.setInformativeText(detail)
        box.setDefaultButton(QMessageBox.No)
        box.setEscapeButton(QMessageBox.No)
        if box.exec() == QMessageBox.Yes:
            self._start(logic.forced_request(request))
            return
        text = logic.declined_message(detail)
        self._say(text)
        self._reset_progress()
        self._job = None
        self._end_job("declined", text)

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()  # the client sends CANCEL to the daemon at its next event
            self.cancel_button.setEnabled(False)
            self._say("Cancelling…")

    def _on_progress(self, step: int, total: int, best: float) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(min(step, total))
        self.progress.setFormat(f"%v / %m steps (err {best:.1e})" if best == best and best != float("inf")
                                else "%v / %m steps")

    _STATE_TEXT = {"queued": "Queued behind other jobs…", "loading": "Loading the model (first job only)…",
                   "running": "Imagining faces…"}

    def _on_state(self, state: str) -> None:
        if state in self._STATE_TEXT:
            self._say(self._STATE_TEXT[state])

    def _on_preview(self, jpeg: bytes) -> None:
        pixmap = QPixmap()
        if pixmap.loadFromData(jpeg, "JPEG"):
            self.preview.setPixmap(pixmap.scaled(PREVIEW_SIZE, PREVIEW_SIZE, Qt.KeepAspectRatio,
                                                 Qt.SmoothTransformation))
            self.preview.setVisible(True)

    def _on_success(self, outcome: logic.Outcome) -> None:  # GUI thread: Krita calls allowed
        try:
            pasted = logic.apply_outcome(self._job.request, outcome, Krita.instance().documents(), Selection)
        except Exception as exc:  # noqa: BLE001 - the docker must end the job with a message, whatever happened
            if not isinstance(exc, logic.PluginError):
                traceback.print_exc()
            self._on_failure(logic.user_message(exc))  # also stops the busy progress bar
            return
        self.last_layers, self.last_group = pasted.faces, pasted.group
        # Krita activates a node added to the image once its own queued events have run (here: the group),
        # after apply_outcome made the best face active: make it so again after them.
        doc, best = self._job.request.doc, pasted.faces[0]
        QTimer.singleShot(0, lambda: doc.setActiveNode(best))
        self._set_status(True, f"connected ({outcome.model})")
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("done")
        self._say(logic.done_message(pasted, outcome))
        self.message.setToolTip(logic.candidates_text(pasted, outcome))
        self._show_faces(doc, pasted, outcome)
        self._end_job("done", pasted.faces[0].name())

    def _on_failure(self, text: str) -> None:
        self._say(text, error=True)
        if "not running" in text:
            self._set_status(False, "not running")
        self._reset_progress()
        self._end_job("failed", text)

    def _on_cancelled(self) -> None:
        self._say("Cancelled; the image is unchanged.")
        self._reset_progress()
        self._end_job("cancelled", "")

    def _show_faces(self, doc: Any, pasted: logic.Pasted, outcome: logic.Outcome) -> None:
        """Fill the face list with this run's layers (best first), ticked as they are visible."""
        self._faces_doc = doc
        self.faces.blockSignals(True)  # filling it is not the user toggling layers
        self.faces.clear()
        for node, plan in zip(pasted.faces, outcome.layers):
            item = QListWidgetItem(logic.face_label(node.name(), plan))
            w, h, rgba = plan.thumb
            if w and h:
                image = QImage(rgba, w, h, 4 * w, QImage.Format_RGBA8888).copy()  # copy: own the bytes
                item.setIcon(QIcon(QPixmap.fromImage(image)))
            item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if plan.visible else Qt.Unchecked)
            item.setData(Qt.UserRole, node.uniqueId())
            item.setToolTip(plan.comment if pasted.masked else f"{plan.comment}\n{logic.NO_MASK_NOTE}")
            self.faces.addItem(item)
        self.faces.blockSignals(False)
        rows = sum(self.faces.sizeHintForRow(i) for i in range(min(self.faces.count(), FACE_ROWS)))
        self.faces.setFixedHeight(rows + 2 * self.faces.frameWidth() + 2)
        self.faces.setVisible(self.faces.count() > 0)

    def _face_toggled(self, item: QListWidgetItem) -> None:
        """The tick is the layer's visibility; a layer deleted (or undone) since is greyed out instead."""
        doc = getattr(self, "_faces_doc", None)
        node = logic.find_node(doc.rootNode(), item.data(Qt.UserRole)) if doc is not None else None
        if node is None:
            self.faces.blockSignals(True)
            item.setFlags(Qt.NoItemFlags)
            item.setToolTip("This layer is no longer in the image.")
            self.faces.blockSignals(False)
            return
        node.setVisible(item.checkState() == Qt.Checked)
        doc.refreshProjection()

    def _reset_progress(self) -> None:
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.resetFormat()

    def _end_job(self, state: str, message: str) -> None:
        """Each job ends in exactly one of success/failure/cancel (the thread's last signal): the docker is
        ready again right here, without waiting for QThread.finished, whose order relative to the thread's
        own signals is not something to rely on."""
        if self._job is not None:
            self._retired.append(self._job)
        self._job = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        QTimer.singleShot(0, self.probe)
        self.jobFinished.emit(state, message)  # last: listeners see the docker ready for the next job

    def _reap(self) -> None:
        for thread in [t for t in self._retired if t.isFinished()]:
            self._retired.remove(thread)
            thread.deleteLater()


def is_pulse_docker(widget: Any) -> bool:
    return widget is not None and widget.objectName() == logic.PLUGIN_ID and hasattr(widget, "depixelate")

