"""The "PULSE Depixelate" docker: settings, daemon status, progress, cancel, previews.

The fields, their labels, ranges and the model list come from the editor kit (`protocol.editor_settings`):
the contract's declared ranges until the daemon answers, then the ones its WELCOME announces. The job's
status line (what it is doing, what was detected, how long it takes) is the kit's `JobView`.

Threading: Krita's API is only called on the GUI thread (here, in slots). The daemon is only talked to in
QThreads (`JobThread`, `ProbeThread`), which see plain bytes and dataclasses and report back through Qt
signals; signals emitted from a worker thread reach these slots queued, on the GUI thread.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import traceback
from typing import Any

from krita import DockWidget, Krita, Selection
from PyQt5.QtCore import QSize, Qt, QThread, QTimer, pyqtSignal
from PyQt5.QtGui import QIcon, QImage, QPixmap
from PyQt5.QtWidgets import (
    QApplication,
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from protocol.editor_messages import code_of
from protocol.editor_progress import JobView
from protocol.errors import ErrorCode
from protocol.job import Param

from . import client_path, logic
from .logic import kit

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
    view = pyqtSignal(object)  # a JobView snapshot: state, what was detected, estimate, time left
    welcome = pyqtSignal(object)  # the daemon's WELCOME (its ranges and models)
    succeeded = pyqtSignal(object)  # logic.Outcome
    failed = pyqtSignal(str, str)  # message, error code ("" for none)
    cancelled = pyqtSignal()
    no_mosaic = pyqtSignal(str, str)  # question, detail: the daemon found no mosaic; ask before forcing

    def __init__(self, request: logic.Request, parent: Any = None) -> None:
        super().__init__(parent)
        self.request = request
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def run(self) -> None:  # worker thread
        view = JobView()

        def shown(update: Any) -> Any:
            def handler(msg: Any) -> None:
                update(msg)
                self.view.emit(dataclasses.replace(view))  # a copy: the GUI thread reads it later
            return handler

        def on_welcome(welcome: Any) -> None:
            view.device = str(getattr(welcome, "device", ""))
            view.model = str(self.request.params.get("model") or kit.own_model_name(welcome))
            self.welcome.emit(welcome)

        def on_progress(p: Any) -> None:
            shown(view.progress)(p)
            self.progress.emit(int(p.step), int(p.total), float(p.best_error))

        try:
            outcome = logic.run_job(
                self.request, on_progress=on_progress, should_cancel=self._cancel.is_set,
                on_preview=lambda jpeg: self.preview.emit(bytes(jpeg)),
                on_accepted=shown(view.accepted), on_job_state=shown(view.job_state), on_welcome=on_welcome)
        except Exception as exc:  # every failure becomes a message in the docker
            if code_of(exc) == ErrorCode.CANCELLED:
                self.cancelled.emit()
                return
            asked = logic.force_question(exc, self.request)
            if asked is not None:
                self.no_mosaic.emit(*asked)
                return
            if not logic.is_expected(exc):
                traceback.print_exc()
            self.failed.emit(logic.user_message(exc, self.request.endpoint or ""), code_of(exc) or "")
            return
        self.succeeded.emit(outcome)


class ProbeThread(QThread):
    """Asks the daemon who it is (HELLO/WELCOME) with a short timeout."""

    answered = pyqtSignal(bool, str, str, object)  # reachable, status text, endpoint asked ("" = default), WELCOME

    def __init__(self, endpoint: str | None, parent: Any = None) -> None:
        super().__init__(parent)
        self.endpoint = endpoint

    def run(self) -> None:  # worker thread
        try:
            client_path.ensure_client_path()
            from protocol.client import PulseClient

            with PulseClient(self.endpoint, client_name=logic.CLIENT_NAME, client_version=logic.PLUGIN_VERSION,
                             timeout=2.0) as client:
                welcome = client.connect()
            own = kit.own_model_name(welcome)
            text = f"connected ({getattr(welcome, 'device', '?')}" + (f", {own})" if own else ")")
            self.answered.emit(True, text, self.endpoint or "", welcome)
        except Exception as exc:  # the plug-in's own refusals and the contract's (BAD_PARAMS)
            if code_of(exc) == ErrorCode.DAEMON_NOT_RUNNING:
                self.answered.emit(False, "not running", self.endpoint or "", None)
            else:
                self.answered.emit(False, logic.user_message(exc, self.endpoint or ""), self.endpoint or "", None)


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
        self._job: JobThread | None = None
        self._probe: ProbeThread | None = None
        self._probe_again = False
        self._retired: list[JobThread] = []  # threads past their last signal, until QThread.finished
        self._welcome: Any = None  # the daemon's last WELCOME
        self._spec: dict | None = None  # its ranges (None: the contract's, until it answers)
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

        intro = QLabel(kit.DESCRIPTION)
        intro.setWordWrap(True)
        box.addWidget(intro)

        form = QFormLayout()
        # A narrow docker puts a label above its field instead of squeezing both into one row.
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)
        # The contract's everyday fields, in its order, with its labels, help and (until a daemon answers) ranges.
        for f in kit.fields():
            widget = self._model_combo(f) if f.name == "model" else self._spin_box(f)
            widget.setToolTip(f.help)
            setattr(self, f.name, widget)
            form.addRow(f.label, widget)
        self.source = QComboBox()
        self.source.addItem("Active layer", "layer")
        self.source.addItem("Whole image (merged)", "projection")
        form.addRow("Pixels from", self.source)
        box.addLayout(form)

        # Advanced, folded away: where the daemon listens.
        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText(kit.ADVANCED_LABEL)
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.RightArrow)
        self.advanced_toggle.setAutoRaise(True)
        self.advanced = QWidget()
        advanced_form = QFormLayout(self.advanced)
        advanced_form.setRowWrapPolicy(QFormLayout.WrapLongRows)
        advanced_form.setContentsMargins(0, 0, 0, 0)
        self.endpoint = QLineEdit()
        self.endpoint.setPlaceholderText("default")
        self.endpoint.setToolTip(kit.ENDPOINT_HELP)
        advanced_form.addRow(kit.ENDPOINT_LABEL, self.endpoint)
        self.advanced.setVisible(False)
        self.advanced_toggle.toggled.connect(self._show_advanced)
        box.addWidget(self.advanced_toggle)
        box.addWidget(self.advanced)
        # Re-check the daemon shortly after the endpoint changes (typed or set by the action's caller).
        self._endpoint_timer = QTimer(self)
        self._endpoint_timer.setSingleShot(True)
        self._endpoint_timer.setInterval(400)
        self._endpoint_timer.timeout.connect(self.probe)
        self.endpoint.textChanged.connect(self._endpoint_changed)

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

    @staticmethod
    def _spin_box(f: Param) -> QSpinBox:
        box = QSpinBox()
        box.setRange(int(f.low), int(f.high))
        box.setValue(int(f.default))
        if f.special:
            box.setSpecialValueText(f.special)  # seed -1 "random", block 0 "auto"
        if f.unit:
            box.setSuffix(f" {f.unit}")
        return box

    def _model_combo(self, f: Param) -> QComboBox:
        combo = QComboBox()
        # Long model names must not widen the docker: the combo box asks for a few characters and elides.
        combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(12)
        self._fill_models(combo, kit.model_choices(None), str(f.default))
        return combo

    @staticmethod
    def _fill_models(combo: QComboBox, choices: list, keep: str) -> None:
        """The daemon's models, its own first; the user's choice stays selected while the daemon still lists it."""
        combo.blockSignals(True)
        combo.clear()
        for choice in choices:
            combo.addItem(choice.label, choice.value)
        if keep and combo.findData(keep) < 0:
            combo.addItem(f"{keep} (not listed by this daemon)", keep)  # kept, so the daemon says why not
        combo.setCurrentIndex(max(0, combo.findData(keep)))
        combo.blockSignals(False)

    def _show_advanced(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.advanced_toggle.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)

    def _apply_welcome(self, welcome: Any) -> None:
        """The daemon's ranges on the spin boxes and its models in the list (GUI thread)."""
        self._welcome = welcome
        self._spec = kit.daemon_spec(welcome)
        for f in kit.fields(self._spec):
            widget = getattr(self, f.name)
            if isinstance(widget, QSpinBox):
                widget.setRange(int(f.low), int(f.high))  # Qt keeps the value inside the new range
        self._fill_models(self.model, kit.model_choices(welcome), self.model.currentData() or "")

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

    _NUMBERS = tuple(f.name for f in kit.fields() if f.kind is int)  # the spin boxes

    def settings(self) -> logic.Settings:
        values = {name: getattr(self, name).value() for name in self._NUMBERS}
        return logic.Settings(**values, model=self.model.currentData() or "", source=self.source.currentData(),
                              endpoint=self.endpoint.text().strip())

    def apply_settings(self, s: logic.Settings) -> None:
        for name in self._NUMBERS:
            getattr(self, name).setValue(int(getattr(s, name)))
        if self.model.findData(s.model) < 0:
            self._fill_models(self.model, kit.model_choices(self._welcome), s.model)
        self.model.setCurrentIndex(max(0, self.model.findData(s.model)))
        self.source.setCurrentIndex(max(0, self.source.findData(s.source)))
        self.endpoint.setText(s.endpoint)
        if s.endpoint:
            self.advanced_toggle.setChecked(True)  # a non-default address is not hidden away

    def _load_settings(self) -> None:
        app, s = Krita.instance(), logic.Settings()
        for name in self._NUMBERS:
            try:
                setattr(s, name, int(app.readSetting(logic.PLUGIN_ID, name, str(getattr(s, name)))))
            except ValueError:
                pass
        for name in ("model", "source", "endpoint"):
            setattr(s, name, app.readSetting(logic.PLUGIN_ID, name, getattr(s, name)))
        self.apply_settings(s)

    def _save_settings(self, s: logic.Settings) -> None:
        app = Krita.instance()
        for name in self._NUMBERS + ("model", "source", "endpoint"):
            app.writeSetting(logic.PLUGIN_ID, name, str(getattr(s, name)))

    # ------------------------------------------------------------------------------------------ daemon

    def _periodic_probe(self) -> None:
        if self.isVisible():  # a hidden docker does not poll the daemon
            self.probe()

    def _endpoint_changed(self, _text: str) -> None:
        if self._job is None:
            self.status_label.setText("Daemon: checking…")  # whatever we knew was about another endpoint
        self._endpoint_timer.start()

    def _current_endpoint(self) -> str | None:
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

    def _on_probe(self, ok: bool, text: str, endpoint: str, welcome: Any) -> None:
        stale = (endpoint or None) != self._current_endpoint()  # the user changed it meanwhile
        if self._job is None and not stale:
            self._set_status(ok, text)
            if welcome is not None:
                self._apply_welcome(welcome)

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
            request = logic.build_request(Krita.instance().activeDocument(), settings, spec=self._spec)
        except Exception as exc:  # the docker must end the job with a message, whatever happened
            if not logic.is_expected(exc):
                raise
            text = logic.user_message(exc, settings.endpoint)
            self._say(text, error=True)
            self.jobFinished.emit("refused", text)
            return False
        self._save_settings(settings)
        self._start(request)
        return True

    def _start(self, request: logic.Request) -> None:
        self._job = JobThread(request, self)
        self._job.progress.connect(self._on_progress)
        self._job.preview.connect(self._on_preview)
        self._job.view.connect(self._on_view)
        self._job.welcome.connect(self._apply_welcome)
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

    def _on_view(self, view: JobView) -> None:
        """The status line: what the job is doing, what the daemon detected, the estimate before it runs;
        the bar: steps, best error and the time left."""
        self._say(view.headline()[:1].upper() + view.headline()[1:] + "…")
        if view.total > 0:  # short: the bar is as narrow as the docker
            left = view.time_left()
            self.progress.setFormat("%v / %m steps" + (f" · {left}" if left else ""))

    def _on_preview(self, jpeg: bytes) -> None:
        pixmap = QPixmap()
        if pixmap.loadFromData(jpeg, "JPEG"):
            self.preview.setPixmap(pixmap.scaled(PREVIEW_SIZE, PREVIEW_SIZE, Qt.KeepAspectRatio,
                                                 Qt.SmoothTransformation))
            self.preview.setVisible(True)

    def _on_success(self, outcome: logic.Outcome) -> None:  # GUI thread: Krita calls allowed
        try:
            pasted = logic.apply_outcome(self._job.request, outcome, Krita.instance().documents(), Selection)
        except Exception as exc:
            if not isinstance(exc, logic.PluginError):
                traceback.print_exc()
            self._on_failure(logic.user_message(exc), code_of(exc) or "")  # also stops the busy progress bar
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

    def _on_failure(self, text: str, code: str = "") -> None:
        self._say(text, error=True)
        if code == ErrorCode.DAEMON_NOT_RUNNING:
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

