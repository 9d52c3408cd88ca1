"""Test-only Krita plug-in: drives the real PULSE docker and action in a full Krita GUI, then exits.

Installed (with its .desktop) next to pulse_depixelate in an isolated profile and enabled in kritarc by
tests/editors/test_krita_gui.py. Config: JSON file named by $PULSE_KRITA_TEST. Scenario, in one Krita session:
  1. the docker exists (Krita.instance().dockers(), objectName pulse_depixelate) and shows the daemon status;
  2. `pulse_depixelate` action with no selection     -> "refused", message in the docker, no new layer;
  3. action against a dead endpoint (if configured)    -> "failed" with a "not running" message, UI responsive;
  4. action against the live daemon, with a selection -> "done": layers, pixels, progress, previews recorded;
  5. a long job cancelled after its first PROGRESS     -> "cancelled", no new layer (if configured);
  6. a selection without a mosaic, twice: the "depixelate anyway?" box answered with its default (No)
     -> "declined", no new layer; then Yes -> "done", the run's group (if configured);
  7. the docker floated at 300 px wide: what fits, what is cut, a screenshot (docker-300.png);
  8. a selection one mosaic cell larger than the mosaic (if configured) -> "done": each face's transparency mask
     (where this Krita's API can fill one) saved whole, to see it opaque over the mosaic and falling off around it.
The result goes to cfg["out"] as JSON (tracebacks included), then os._exit: QApplication.exit() can crash
Krita 5.1 on the way out, and a hook that never finishes is caught by the test's own timeout.
"""

import json
import os
import sys
import time
import traceback
from pathlib import Path

from krita import Krita, Selection
from PyQt5.QtCore import QTimer

_state = {}


def _cfg():
    return json.loads(Path(os.environ["PULSE_KRITA_TEST"]).read_text())


def _finish(result, code=0):
    cfg = _cfg()
    Path(cfg["out"]).write_text(json.dumps(result, indent=1))
    os._exit(code)


class Driver:
    """A small state machine pumped by Qt signals and timers: the GUI thread is never blocked here."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.app = Krita.instance()
        self.res = {"steps": [], "t0": time.monotonic()}
        self.gaps = []  # GUI-thread timer gaps during jobs: a frozen UI shows up as a long gap
        self._tick_last = None
        self.ticker = QTimer()
        self.ticker.setInterval(20)
        self.ticker.timeout.connect(self._tick)
        self.pending = None
        self.docker = None
        self.progress_seen, self.preview_seen = set(), False

    # ---- helpers
    def _tick(self):
        now = time.monotonic()
        if self._tick_last is not None:
            self.gaps.append(now - self._tick_last)
        self._tick_last = now
        d = self.docker
        if d is not None and d.progress.maximum() > 0:
            self.progress_seen.add((d.progress.value(), d.progress.maximum()))
        if d is not None and d.preview.isVisible():
            self.preview_seen = True

    def step(self, name, **info):
        info["name"] = name
        info["t"] = round(time.monotonic() - self.res["t0"], 2)
        self.res["steps"].append(info)
        print(f"pulse_gui_hook: {name} {info.get('state', '')} at {info['t']} s", file=sys.stderr, flush=True)

    def fail(self, why):
        self.res["error"] = why
        _finish(self.res, 3)

    def guard(self, fn):
        def wrapped(*args):
            try:
                fn(*args)
            except BaseException:
                self.fail(traceback.format_exc())
        return wrapped

    def layers(self):
        return [[n.name(), n.type(), bool(n.visible())] for n in self.doc.topLevelNodes()]

    # ---- scenario
    def start(self):
        from pulse_depixelate.docker import is_pulse_docker

        window = self.app.activeWindow()
        if window is None:
            QTimer.singleShot(200, self.guard(self.start))  # main window not up yet
            return
        dockers = [d for d in self.app.dockers() if is_pulse_docker(d)]
        self.res["dockers"] = [d.objectName() for d in self.app.dockers() if d.objectName().startswith("pulse")]
        if not dockers:
            self.fail("no pulse_depixelate docker among Krita.instance().dockers()")
            return
        self.docker = dockers[0]
        self.docker.show()
        self.res["docker_title"] = self.docker.windowTitle()
        self.res["version"] = self.app.version()
        self.res["action_text"] = self.app.action("pulse_depixelate").text() if self.app.action("pulse_depixelate") else None
        self.doc = self.app.openDocument(self.cfg["png"])
        window.addView(self.doc)
        self.bg = self.doc.topLevelNodes()[0]
        self.doc.setActiveNode(self.bg)
        w, h = self.doc.width(), self.doc.height()
        self.before = bytes(self.bg.pixelData(0, 0, w, h))
        self.progress_seen, self.preview_seen = set(), False
        self.docker.jobFinished.connect(self.guard(self.on_finished))
        s = self.cfg["settings"]
        from pulse_depixelate.logic import Settings

        self.docker.apply_settings(Settings(**s))
        self.queue = (["start"] if self.cfg.get("start_endpoint") else []) + ["nosel"] + (["dead"] if self.cfg.get("dead_endpoint") else []) + ["live"] + \
            (["cancel"] if self.cfg.get("cancel_steps") else []) + (["undo"] if self.cfg.get("undo") else []) + \
            (["nomosaic_no", "nomosaic_yes", "layout"] if self.cfg.get("plain_rect") else []) + \
            (["grown"] if self.cfg.get("grown_rect") else [])
        QTimer.singleShot(500, self.guard(self.next))

    def next(self):
        if not self.queue:
            self.finish()
            return
        self.pending = self.queue.pop(0)
        print(f"pulse_gui_hook: {self.pending} starts", file=sys.stderr, flush=True)
        d, s = self.docker, self.cfg["settings"]
        if self.pending == "start":
            self.do_start()
            return
        if self.pending == "undo":
            self.do_undo()
            return
        if self.pending == "layout":
            self.do_layout()
            return
        if self.pending == "nosel":
            self.doc.setSelection(None) if self.doc.selection() is not None else None
        else:
            key = {"grown": "grown_rect"}.get(self.pending, "plain_rect" if self.pending.startswith("nomosaic") else "rect")
            x, y, w, h = self.cfg[key]
            sel = Selection()
            sel.select(x, y, w, h, 255)
            self.doc.setSelection(sel)
        if self.pending == "dead":
            d.endpoint.setText(self.cfg["dead_endpoint"])
        else:
            d.endpoint.setText(s["endpoint"])
        d.steps.setValue(self.cfg["cancel_steps"] if self.pending == "cancel" else s["steps"])
        # Like a user: the selection settles (Krita may react to it asynchronously), the layer is picked,
        # then the action is triggered.
        QTimer.singleShot(300, self.guard(self.trigger))

    def trigger(self):
        self.doc.setActiveNode(self.bg)
        self.layers_before = self.layers()
        self.gaps, self._tick_last, self.progress_seen, self.preview_seen = [], None, set(), False
        self.ticker.start()
        self.job_t0 = time.monotonic()
        if self.pending.startswith("nomosaic"):
            self.question = None
            QTimer.singleShot(50, self.guard(self.answer_question))
        self.app.action("pulse_depixelate").trigger()
        if self.pending == "cancel":
            QTimer.singleShot(50, self.guard(self.cancel_when_running))

    def answer_question(self):
        """The "depixelate anyway?" box (modal: this timer runs inside its event loop): note what it says,
        then answer with its default button (nomosaic_no) or Yes (nomosaic_yes)."""
        from PyQt5.QtWidgets import QApplication, QMessageBox

        if self.pending is None or not self.pending.startswith("nomosaic"):
            return
        box = QApplication.activeModalWidget()
        if box is None or box.objectName() != "pulse_no_mosaic_question":
            QTimer.singleShot(50, self.guard(self.answer_question))
            return
        self.question = {"text": box.text(), "detail": box.informativeText(), "title": box.windowTitle(),
                         "default_is_no": box.defaultButton() is box.button(QMessageBox.No),
                         "run_button_enabled": self.docker.run_button.isEnabled()}
        if self.cfg.get("screenshots"):
            box.grab().save(str(Path(self.cfg["out"]).parent / f"question-{self.pending}.png"))
        (box.defaultButton() if self.pending == "nomosaic_no" else box.button(QMessageBox.Yes)).click()

    def do_layout(self):
        """The docker floated and 300 px wide, after a run: does everything fit, is any text cut?"""
        from PyQt5.QtWidgets import QApplication

        d = self.docker
        d.setFloating(True)
        d.resize(300, 900)
        QApplication.processEvents()
        QTimer.singleShot(500, self.guard(self.measure_layout))

    def measure_layout(self):
        from PyQt5.QtCore import Qt

        d = self.docker
        scroll = d.widget()
        inner = scroll.widget()
        viewport = scroll.viewport().width()
        msg = d.message
        faces = d.faces
        items = [faces.item(i) for i in range(faces.count())]
        fm = faces.fontMetrics()
        text_room = faces.viewport().width() - faces.iconSize().width() - 16
        info = {"docker_width": d.width(), "viewport_width": viewport,
                "content_min_width": inner.minimumSizeHint().width(),
                "widest_child": max((w.geometry().right() + 1 for w in inner.findChildren(type(inner))
                                     if w.isVisible() and w.parent() is inner), default=0),
                "message_text": msg.text(), "message_height": msg.height(),
                "message_needs": msg.heightForWidth(msg.width()),
                "faces": [it.text() for it in items],
                "faces_checked": [it.checkState() == Qt.Checked for it in items],
                "faces_have_icons": [not it.icon().isNull() for it in items],
                "face_line_widths": [max(fm.horizontalAdvance(line) for line in it.text().splitlines())
                                     for it in items], "face_text_room": text_room,
                "faces_visible": faces.isVisible(), "faces_height": faces.height()}
        # toggling the second face's tick shows its layer; toggling it back hides it
        if len(items) > 1:
            node = self.docker.last_layers[1]
            items[1].setCheckState(Qt.Checked)
            info["toggle_shows"] = bool(node.visible())
            items[1].setCheckState(Qt.Unchecked)
            info["toggle_hides"] = not node.visible()
        out = Path(self.cfg["out"]).parent
        scroll.widget().grab().save(str(out / "docker-300-content.png"))
        d.grab().save(str(out / "docker-300.png"))
        self.step("layout", **info)
        self.pending = None
        QTimer.singleShot(100, self.guard(self.next))

    def do_start(self):
        """Start button: launches `pulse-server run --endpoint E` detached; the status turns to connected."""
        d = self.docker
        d.endpoint.setText(self.cfg["start_endpoint"])
        self.start_info = {"status_right_after_change": d.status_label.text()}
        self.start_t0 = time.monotonic()
        QTimer.singleShot(100, self.guard(self.press_start))

    def press_start(self):
        text = self.docker.status_label.text()
        if "not running" not in text and time.monotonic() - self.start_t0 < 15:
            QTimer.singleShot(100, self.guard(self.press_start))  # the new endpoint's probe is still on its way
            return
        self.start_info["status_before"] = text
        self.start_info["button_visible_before"] = self.docker.start_button.isVisible()
        self.docker.start_button.click()
        self.start_info["status_after_click"] = self.docker.status_label.text()
        QTimer.singleShot(200, self.guard(self.wait_started))

    def wait_started(self):
        text = self.docker.status_label.text()
        waited = time.monotonic() - self.start_t0
        if not text.startswith("Daemon: connected") and waited < 60:
            QTimer.singleShot(200, self.guard(self.wait_started))
            return
        self.start_info.update(status=text, seconds=round(waited, 2),
                               button_visible_after=self.docker.start_button.isVisible())
        from protocol.client import PulseClient  # stop the daemon we started (test only: blocking is fine)

        try:
            with PulseClient(self.cfg["start_endpoint"], client_name="test", timeout=5.0) as c:
                c.connect()
                c.shutdown()
            self.start_info["stopped"] = True
        except Exception as exc:
            self.start_info["stopped"] = repr(exc)
        self.step("start", **self.start_info)
        self.pending = None
        QTimer.singleShot(100, self.guard(self.next))

    def do_undo(self):
        """Edit ▸ Undo until the PULSE layers are gone (how many steps does one depixelation take?)."""
        stacks = [self.layers()]
        for _ in range(int(self.cfg["undo"])):
            if not any(n.startswith("PULSE") for n, _t, _v in stacks[-1]):
                break
            self.app.action("edit_undo").trigger()
            self.doc.waitForDone()
            stacks.append(self.layers())
        W, H = self.doc.width(), self.doc.height()
        self.step("undo", stacks=stacks,
                  original_unchanged=bytes(self.bg.pixelData(0, 0, W, H)) == self.before)
        self.pending = None
        QTimer.singleShot(100, self.guard(self.next))

    def cancel_when_running(self):
        if self.pending != "cancel":
            return
        if self.docker.progress.maximum() > 1 and self.docker.progress.value() >= 1:
            self.step("cancel_pressed", at=self.docker.progress.value())
            self.docker.cancel_button.click()  # what a user does
        else:
            QTimer.singleShot(20, self.guard(self.cancel_when_running))

    def on_finished(self, state, message):
        self.ticker.stop()
        name, self.pending = self.pending, None
        self.doc.waitForDone()
        info = {"state": state, "message": message, "docker_message": self.docker.message.text(),
                "seconds": round(time.monotonic() - self.job_t0, 2),
                "max_gui_gap": round(max(self.gaps), 3) if self.gaps else None,
                "layers_before": self.layers_before, "layers_after": self.layers(),
                "progress_seen": sorted(self.progress_seen)[-3:], "progress_count": len(self.progress_seen),
                "preview_seen": self.preview_seen, "status": self.docker.status_label.text()}
        if name in ("live", "grown") and state == "done":
            info["masks"] = self.faces_masks(name)
        if name and name.startswith("nomosaic"):
            info["question"] = self.question
            info["group"] = self.docker.last_group.name() if state == "done" else None
            info["faces"] = [n.name() for n in self.docker.last_layers] if state == "done" else []
        if name == "live" and state == "done":
            out = Path(self.cfg["out"]).parent
            x, y, w, h = self.cfg["rect"]
            info["new_layers"] = []
            for i, node in enumerate(self.docker.last_layers):
                b = node.bounds()
                raw = bytes(node.pixelData(x, y, w, h))
                (out / f"layer{i}.raw").write_bytes(raw)
                info["new_layers"].append({"name": node.name(), "visible": bool(node.visible()),
                                           "bounds": [b.x(), b.y(), b.width(), b.height()],
                                           "space": [node.colorModel(), node.colorDepth()]})
            W, H = self.doc.width(), self.doc.height()
            info["original_unchanged"] = bytes(self.bg.pixelData(0, 0, W, H)) == self.before
            group = self.docker.last_group
            info["group"] = {"name": group.name(), "type": group.type(),
                             "children": [[n.name(), n.type(), [c.type() for c in n.childNodes()]]
                                          for n in group.childNodes()]}
            info["docker_tooltip"] = self.docker.message.toolTip()
            # Krita activates nodes asynchronously: look again once its events have run
            QTimer.singleShot(1500, self.guard(lambda: self.after_settle(name, info)))
            return
        self.after_settle(name, info)

    def faces_masks(self, step):
        """Each face of the last run: its name and child node types; a transparency mask's pixels over the
        whole image go to mask-<step>-<i>.raw (one byte per pixel)."""
        out, W, H = Path(self.cfg["out"]).parent, self.doc.width(), self.doc.height()
        faces = []
        for i, node in enumerate(self.docker.last_layers):
            masks = [m for m in node.childNodes() if m.type() == "transparencymask"]
            if masks:
                (out / f"mask-{step}-{i}.raw").write_bytes(bytes(masks[0].pixelData(0, 0, W, H)))
            faces.append({"name": node.name(), "children": [c.type() for c in node.childNodes()],
                          "parent": node.parentNode().name()})
        items = [self.docker.faces.item(i) for i in range(self.docker.faces.count())]
        return {"faces": faces, "group": self.docker.last_group.name(), "size": [W, H],
                "tooltip": self.docker.message.toolTip(), "face_tooltips": [it.toolTip() for it in items]}

    def after_settle(self, name, info):
        if name == "live":
            active = self.doc.activeNode()
            info["active_after"] = [active.name(), active.type(), bool(active.visible())] if active is not None else None
        if self.cfg.get("screenshots"):
            out = Path(self.cfg["out"]).parent
            self.docker.grab().save(str(out / f"docker-{name}.png"))
            window = self.app.activeWindow()
            if window is not None:
                window.qwindow().grab().save(str(out / f"window-{name}.png"))
        self.step(name, **info)
        QTimer.singleShot(100, self.guard(self.next))

    def finish(self):
        # The preview slot with a real JPEG (the daemon sends PREVIEWs only for some job kinds).
        from PyQt5.QtCore import QBuffer, QByteArray, QIODevice
        from PyQt5.QtGui import QColor, QImage

        img = QImage(64, 64, QImage.Format_RGB32)
        img.fill(QColor(200, 120, 40))
        data = QByteArray()
        buf = QBuffer(data)
        buf.open(QIODevice.WriteOnly)
        img.save(buf, "JPEG")
        self.docker._on_preview(bytes(data))
        pix = self.docker.preview.pixmap()
        self.res["preview_slot"] = {"visible": self.docker.preview.isVisible(),
                                    "size": [pix.width(), pix.height()] if pix is not None else None}
        self.res["total_seconds"] = round(time.monotonic() - self.res["t0"], 2)
        _finish(self.res, 0)


def _modal():
    """What a modal box in the way says (a hook that times out is often waiting behind one)."""
    from PyQt5.QtWidgets import QApplication

    box = QApplication.activeModalWidget()
    return None if box is None else [box.objectName(), box.windowTitle(), getattr(box, "text", str)()]


def _boot():
    try:
        cfg = _cfg()
    except (KeyError, OSError, ValueError):
        return  # not under the test: stay inert
    driver = Driver(cfg)
    _state["driver"] = driver
    QTimer.singleShot(int(cfg.get("timeout", 120) * 1000), lambda: (driver.res.update(error="hook timeout",
                                                                                       pending=driver.pending,
                                                                                       modal=_modal()),
                                                                  _finish(driver.res, 4)))
    QTimer.singleShot(1000, driver.guard(driver.start))


_boot()
