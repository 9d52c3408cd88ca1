"""The GIMP 3 plug-in in real GIMP 3.0 (Debian 13 chroot, headless `gimp-console-3.0`) against the real daemon.

The chroot is built once with debootstrap and cached (tests/gimp_chroot.py). The plug-in is installed with
`pulse-server install-plugin gimp --dest <chroot HOME>/.config/GIMP/3.0/plug-ins`; the daemon runs on the host
on tcp loopback with the tiny test generator (the chroot shares the host's network namespace, PULSE_TOKEN
shares the token). A Python script run by GIMP's python-fu-eval builds an image with a mosaic, selects it,
calls `python-fu-pulse-depixelate` non-interactively and writes what it sees as JSON + raw pixel files,
which the assertions here read. GIMP exits 64 when that script raises.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gimp_chroot  # noqa: E402

pytestmark = [pytest.mark.gimp, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
BLOCK = 8
# Image 96×80; the active layer "face" is 64×56 at offset (12, 10) above a "background" layer; the mosaic
# (4×4 blocks of 8 px) sits at (16, 8) in the face layer = (28, 18) in the image, and the selection covers it.
IMAGE_SIZE = (96, 80)
FACE_OFFSET = (12, 10)
FACE_SIZE = (64, 56)
MOSAIC_IN_LAYER = (16, 8)
MOSAIC_CELLS = 4
SEL = (FACE_OFFSET[0] + MOSAIC_IN_LAYER[0], FACE_OFFSET[1] + MOSAIC_IN_LAYER[1], BLOCK * MOSAIC_CELLS, BLOCK * MOSAIC_CELLS)

# Runs inside GIMP (Debian 13's Python 3.13, no numpy). CFG is replaced by the config path.
DRIVER = r'''
import json, os, time, traceback
import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp, Gegl

cfg = json.load(open(CFG))
work = cfg["work"]
PROC = "python-fu-pulse-depixelate"
out = {"runs": {}}
PRECISION = {"u8": Gimp.Precision.U8_NON_LINEAR, "u16": Gimp.Precision.U16_NON_LINEAR,
             "float": Gimp.Precision.FLOAT_NON_LINEAR}


def babl(scene):
    model = ("Y'" if scene["gray"] else "R'G'B'") + ("A" if scene["alpha"] else "")
    return model + " " + scene["precision"]


def layer_type(scene):
    return getattr(Gimp.ImageType, ("GRAY" if scene["gray"] else "RGB") + ("A" if scene["alpha"] else "") + "_IMAGE")


def pixels(d, fmt):
    r = Gegl.Rectangle.new(0, 0, d.get_width(), d.get_height())
    return bytes(d.get_buffer().get(r, 1.0, fmt, Gegl.AbyssPolicy.NONE))


def make_image(scene):
    W, H = cfg["image_size"]
    base = Gimp.ImageBaseType.GRAY if scene["gray"] else Gimp.ImageBaseType.RGB
    img = Gimp.Image.new_with_precision(W, H, base, PRECISION[scene["precision"]])
    layers = {}
    for spec in scene["layers"]:  # bottom first
        w, h = spec["size"]
        layer = Gimp.Layer.new(img, spec["name"], w, h, layer_type(scene), 100.0, Gimp.LayerMode.NORMAL)
        img.insert_layer(layer, None, 0)
        layer.set_offsets(*spec["offset"])
        buf = layer.get_buffer()
        buf.set(Gegl.Rectangle.new(0, 0, w, h), babl(scene), open(work + "/" + spec["raw"], "rb").read())
        buf.flush()
        layers[spec["name"]] = layer
    face = layers["face"]
    img.set_selected_layers([face])
    x, y, w, h = cfg["selection"]
    if scene.get("ellipse"):
        img.select_ellipse(Gimp.ChannelOps.REPLACE, x, y, w, h)
    else:
        img.select_rectangle(Gimp.ChannelOps.REPLACE, x, y, w, h)
    mask = img.get_selection().get_buffer().get(Gegl.Rectangle.new(x, y, w, h), 1.0, "Y u8", Gegl.AbyssPolicy.NONE)
    open(work + "/mask-" + scene["tag"] + ".raw", "wb").write(bytes(mask))
    return img, face


def describe(img, tag, fmt):
    info = []
    for i, layer in enumerate(img.get_layers()):
        _, ox, oy = layer.get_offsets()
        par = layer.get_parasite(cfg["parasite"])
        entry = {"name": layer.get_name(), "visible": layer.get_visible(), "offset": [ox, oy],
                 "size": [layer.get_width(), layer.get_height()], "has_alpha": layer.has_alpha(),
                 "parasite": bytes(par.get_data()).decode() if par else None,
                 "raw": "%s-%d.raw" % (tag, i)}
        open(work + "/" + entry["raw"], "wb").write(pixels(layer, fmt))
        info.append(entry)
    return info


def run(tag, args, scene):
    scene["tag"] = tag
    img, face = make_image(scene)
    fmt = babl(scene)
    before = describe(img, tag + "-before", fmt)
    proc = Gimp.get_pdb().lookup_procedure(PROC)
    config = proc.create_config()
    args = dict(args)
    interactive = args.pop("interactive", False)
    display = Gimp.Display.new(img) if interactive else None  # as a user sees it: the dialog needs a GUI
    config.set_property("run-mode", Gimp.RunMode.INTERACTIVE if interactive else Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", img)
    config.set_core_object_array("drawables", [face])
    for k, v in args.items():
        config.set_property(k, v)
    t0 = time.monotonic()
    res = proc.run(config)
    seconds = time.monotonic() - t0
    status = res.index(0)
    error = None
    if status != Gimp.PDBStatusType.SUCCESS and res.length() > 1:
        error = str(res.index(1))
    out["runs"][tag] = {
        "status": status.value_nick, "error": error, "seconds": seconds,
        "before": before, "after": describe(img, tag + "-after", fmt),
        "precision": img.get_precision().value_nick,
        "selected": [l.get_name() for l in img.get_selected_layers()],
        "selection": list(Gimp.Selection.bounds(img))[1:],
        "undo_enabled": img.undo_is_enabled(),
    }
    if interactive:
        # Hand over to the host, which presses Ctrl+Z once in the image window, then look again.
        Gimp.displays_flush()
        open(work + "/undo-ready", "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(work + "/undo-done") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        out["runs"][tag]["after_undo"] = describe(img, tag + "-undo", fmt)
    if display is not None:
        display.delete()
    else:
        img.delete()


try:
    proc = Gimp.get_pdb().lookup_procedure(PROC)
    out["registered"] = proc is not None
    if proc is not None:
        out["menu_label"] = proc.get_menu_label()
        out["menu_paths"] = list(proc.get_menu_paths())
        out["image_types"] = proc.get_image_types()
        out["arguments"] = [p.name for p in proc.get_arguments()]
        for tag, args, scene in cfg["runs"]:
            run(tag, args, scene)
    out["ok"] = True
except Exception:
    out["traceback"] = traceback.format_exc()
    raise
finally:
    json.dump(out, open(work + "/result.json", "w"))
'''


def _pulse_server() -> list[str]:
    exe = Path(sys.executable).with_name("pulse-server")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from pulse_server.cli import main_server; sys.exit(main_server())"]


@pytest.fixture(scope="session")
def gimp_root() -> Path:
    """The cached Debian 13 + GIMP 3 chroot (built here on first use); skips where it cannot exist."""
    require = os.environ.get("PULSE_REQUIRE_GIMP") == "1"  # CI: a missing chroot is a failure, not a skip
    if os.geteuid() != 0 and not require:
        pytest.skip("the real-GIMP tests need root (debootstrap, chroot, mount /proc and /dev)")
    try:
        info = gimp_chroot.build()
    except gimp_chroot.ChrootUnavailable as exc:
        if require:
            raise
        pytest.skip(f"GIMP 3 chroot unavailable: {exc}")
    print(f"GIMP chroot: {json.dumps(info)}")
    return gimp_chroot.chroot_root()


@pytest.fixture
def chroot_work(gimp_root: Path):
    """A fresh HOME and work dir inside the chroot (paths as GIMP sees them and as the host sees them)."""
    inner = Path("/tmp") / f"pulse-gimp-{uuid.uuid4().hex[:8]}"
    outer = gimp_root / inner.relative_to("/")
    (outer / "home").mkdir(parents=True)
    (outer / "work").mkdir()
    yield inner, outer
    gimp_chroot.remove_tree(outer)


@dataclass(frozen=True)
class Scene:
    precision: str = "u8"  # u8 | u16 | float (GIMP non-linear precisions)
    gray: bool = False
    alpha: bool = False
    seed: int = 3
    ellipse: bool = False  # elliptic selection: a real mask travels with the pixels

    @property
    def channels(self) -> int:
        return (1 if self.gray else 3) + int(self.alpha)

    @property
    def dtype(self):
        return {"u8": np.uint8, "u16": np.dtype("<u2"), "float": np.dtype("<f4")}[self.precision]

    def encode(self, img255: np.ndarray) -> bytes:
        """(H, W, C) values on the 0-255 scale -> raw bytes in this scene's Babl format."""
        if self.precision == "u8":
            return np.rint(img255).astype(np.uint8).tobytes()
        if self.precision == "u16":
            return np.rint(img255 * 257.0).astype("<u2").tobytes()
        return (img255 / 255.0).astype("<f4").tobytes()

    def decode(self, raw: bytes, w: int, h: int) -> np.ndarray:
        """Raw bytes -> (H, W, C) float64 on the 0-255 scale."""
        a = np.frombuffer(raw, self.dtype).reshape(h, w, self.channels).astype(np.float64)
        return a if self.precision == "u8" else a / 257.0 if self.precision == "u16" else a * 255.0

    def build(self, work: Path) -> tuple[dict, np.ndarray]:
        """Write the two layers' raw pixels; returns the driver's scene spec and the mosaic cells (0-255)."""
        rng = np.random.default_rng(self.seed)
        bg = rng.integers(0, 256, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3)).astype(np.float64)
        yy, xx = np.mgrid[0 : FACE_SIZE[1], 0 : FACE_SIZE[0]]
        face = np.stack([xx * 3 + 20, yy * 4 + 10, (xx + yy) * 2 + 40], -1).clip(0, 255).astype(np.float64)
        cells = rng.integers(30, 226, (MOSAIC_CELLS, MOSAIC_CELLS, 3)).astype(np.float64)
        mx, my = MOSAIC_IN_LAYER
        face[my : my + BLOCK * MOSAIC_CELLS, mx : mx + BLOCK * MOSAIC_CELLS] = cells.repeat(BLOCK, 0).repeat(BLOCK, 1)
        if self.gray:  # the scene's grey levels are its own truth: the mosaic cells too
            bg, face, cells = (np.rint(a.mean(-1, keepdims=True)) for a in (bg, face, cells))
        if self.alpha:
            bg, face = (np.concatenate([a, np.full(a.shape[:2] + (1,), 255.0)], -1) for a in (bg, face))
            cells = np.concatenate([cells, np.full(cells.shape[:2] + (1,), 255.0)], -1)
        tag = f"{self.precision}-{'gray' if self.gray else 'rgb'}{'a' if self.alpha else ''}"
        (work / f"bg-{tag}.raw").write_bytes(self.encode(bg))
        (work / f"face-{tag}.raw").write_bytes(self.encode(face))
        spec = {"precision": self.precision, "gray": self.gray, "alpha": self.alpha, "ellipse": self.ellipse,
                "layers": [
            {"name": "background", "size": list(IMAGE_SIZE), "offset": [0, 0], "raw": f"bg-{tag}.raw"},
            {"name": "face", "size": list(FACE_SIZE), "offset": list(FACE_OFFSET), "raw": f"face-{tag}.raw"},
        ]}
        return spec, cells


def _install_plugin(outer_home: Path) -> Path:
    dest = outer_home / ".config/GIMP/3.0/plug-ins"
    proc = subprocess.run([*_pulse_server(), "install-plugin", "gimp", "--dest", str(dest), "--target", "linux"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert os.access(dest / "pulse-depixelate" / "pulse-depixelate.py", os.X_OK)
    return dest


def _press_undo_once(work: Path):
    """After the dialog: wait until the driver has looked at the result, then Ctrl+Z once in the image window."""

    def after_dialog(x11) -> None:
        deadline = time.monotonic() + 300
        while not (work / "undo-ready").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
        windows = x11("xdotool", "search", "--name", "Untitled").stdout.split()
        if windows:
            x11("xdotool", "windowfocus", "--sync", windows[-1], "key", "ctrl+z")
        (work / "undo-done").write_text(" ".join(windows))

    return after_dialog


def _drive(gimp_root: Path, inner: Path, outer: Path, runs: list[tuple[str, dict, Scene]],
           env: dict[str, str], gui: bool = False) -> dict:
    """Run all `runs` (tag, procedure args, scene) in one headless GIMP; returns its JSON + mosaic cells."""
    work = outer / "work"
    specs, cells = [], {}
    for tag, args, scene in runs:
        spec, cells[tag] = scene.build(work)
        specs.append([tag, args, spec])
    cfg = {"work": str(inner / "work"), "image_size": list(IMAGE_SIZE), "selection": list(SEL),
           "parasite": "pulse-depixelate", "runs": specs}
    (work / "config.json").write_text(json.dumps(cfg))
    (work / "driver.py").write_text(f"CFG = {str(inner / 'work/config.json')!r}\n" + DRIVER)
    t0 = time.monotonic()
    dialog_seen = None
    if gui:
        # No first-run welcome dialog in front of ours.
        (outer / "home/.config/GIMP/3.0/gimprc").write_text("(show-welcome-dialog no)\n")
        proc, dialog_seen = gimp_chroot.gimp_gui_batch(gimp_root, inner / "work/driver.py", home=inner / "home",
                                                       dialog_title="Depixelate Face", env=env, timeout=600,
                                                       after_dialog=_press_undo_once(work))
    else:
        proc = gimp_chroot.gimp_batch(gimp_root, inner / "work/driver.py", home=inner / "home", env=env, timeout=900)
    wall = time.monotonic() - t0
    result_file = work / "result.json"
    assert result_file.exists(), f"GIMP wrote no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(result_file.read_text())
    assert proc.returncode == 0 and result.get("ok"), (
        f"GIMP exit {proc.returncode}\n{result.get('traceback')}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    result.update(wall_s=wall, dialog_seen_s=dialog_seen, cells=cells, stderr=proc.stderr, scenes={tag: sc for tag, _, sc in runs})
    return result


def _pixels(outer: Path, entry: dict, scene: Scene) -> np.ndarray:
    w, h = entry["size"]
    return scene.decode((outer / "work" / entry["raw"]).read_bytes(), w, h)


def _same_pixels(outer: Path, a: dict, b: dict) -> bool:
    return (outer / "work" / a["raw"]).read_bytes() == (outer / "work" / b["raw"]).read_bytes()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, tiny_weights):
    from daemon_fixture import start_daemon

    handle = start_daemon(tmp_path_factory.mktemp("gimp-daemon"), weights=tiny_weights, endpoint="tcp")
    try:
        yield handle
    finally:
        handle.stop()


SCENES = {
    "u8-rgb": Scene("u8", gray=False, alpha=False, seed=3),
    "u16-gray": Scene("u16", gray=True, alpha=False, seed=4),
    "float-rgba": Scene("float", gray=False, alpha=True, seed=5),
}


def test_depixelate_in_real_gimp(gimp_root, chroot_work, daemon):
    inner, outer = chroot_work
    _install_plugin(outer / "home")
    args = {"candidates": 2, "steps": 30, "seed": 1234, "block-size": 0, "endpoint": daemon.endpoint}
    runs = [(tag, args, scene) for tag, scene in SCENES.items()]
    runs.append(("ellipse", args, Scene("u8", seed=3, ellipse=True)))
    # Daemon not reachable (discard port: nothing listens there): a clear error, image untouched.
    runs.append(("down", {**args, "endpoint": "tcp://127.0.0.1:9"}, SCENES["u8-rgb"]))
    res = _drive(gimp_root, inner, outer, runs, env={"PULSE_TOKEN": daemon.token})
    print(f"GIMP batch wall time {res['wall_s']:.1f}s; procedure runs: "
          + ", ".join(f"{t} {r['seconds']:.1f}s" for t, r in res["runs"].items()))

    # Registration: menu, label, image types, arguments.
    assert res["registered"]
    assert res["menu_label"] == "Depixelate Face (PULSE)…"
    assert res["menu_paths"] == ["<Image>/Filters/Enhance"]
    assert res["image_types"] == "RGB*, GRAY*"
    assert res["arguments"][-5:] == ["candidates", "steps", "seed", "block-size", "endpoint"]

    for tag, scene in SCENES.items():
        run = res["runs"][tag]
        assert run["status"] == "success", (tag, run["error"], res["stderr"][-3000:])
        assert run["precision"].startswith(scene.precision)
        before, after = run["before"], run["after"]
        # Two new layers on top (best first), directly above the active layer "face".
        assert [layer["name"] for layer in after[2:]] == ["face", "background"], tag
        new = after[:2]
        assert new[0]["name"].startswith("PULSE face 1 (err ") and new[1]["name"].startswith("PULSE face 2 (err ")
        assert [layer["visible"] for layer in new] == [True, False]
        errs = []
        for layer in new:
            assert layer["offset"] == list(SEL[:2]) and layer["size"] == list(SEL[2:]), (tag, layer)
            assert layer["has_alpha"] == scene.alpha
            meta = json.loads(layer["parasite"])
            assert meta["model"] and isinstance(meta["seed"], int) and meta["downscale_error"] >= 0
            assert "not a recovery" in meta["comment"]
            assert meta["comment"].split("seed: ")[1].startswith(str(meta["seed"]))
            errs.append(meta["downscale_error"])
        assert errs == sorted(errs)
        assert {json.loads(layer["parasite"])["seed"] for layer in new} == {1234, 1235}  # seed + i per candidate
        assert f"err {errs[0]:.1e}".replace("e-0", "e-") in new[0]["name"]
        # Nothing else changed: original layers (names, offsets, sizes, pixels), selection, active layer.
        for b, a in zip(before, after[2:]):
            assert (a["name"], a["offset"], a["size"], a["visible"]) == (b["name"], b["offset"], b["size"], b["visible"])
            assert _same_pixels(outer, a, b), (tag, a["name"])
        assert run["selection"] == [True, SEL[0], SEL[1], SEL[0] + SEL[2], SEL[1] + SEL[3]]
        assert run["selected"] == ["face"]
        assert run["undo_enabled"]
        # Re-mosaic invariant: the best face averaged over the input's 8×8 blocks gives the mosaic back.
        best = _pixels(outer, new[0], scene)
        blocks = best.reshape(MOSAIC_CELLS, BLOCK, MOSAIC_CELLS, BLOCK, scene.channels).mean(axis=(1, 3))
        mae = np.abs(blocks - res["cells"][tag]).mean(axis=(0, 1))
        print(f"{tag}: re-mosaic mean abs error per channel (0-255) {mae.round(3).tolist()}; errors {errs}")
        assert (mae <= 2.0).all(), (tag, mae)
        # ...and it is a face, not the mosaic pasted back: there is detail inside the blocks.
        detail = best.reshape(MOSAIC_CELLS, BLOCK, MOSAIC_CELLS, BLOCK, scene.channels).std(axis=(1, 3))
        assert detail[..., : 1 if scene.gray else 3].mean() > 1.0, tag

    # Elliptic selection: the mask went along; outside it the new layer repeats the original pixels exactly.
    run = res["runs"]["ellipse"]
    assert run["status"] == "success", run["error"]
    scene = SCENES["u8-rgb"]
    mask = np.frombuffer((outer / "work/mask-ellipse.raw").read_bytes(), np.uint8).reshape(SEL[3], SEL[2])
    assert (mask == 0).sum() > 100 and (mask == 255).sum() > 500  # corners out, middle in
    best = _pixels(outer, run["after"][0], scene)
    face_before = _pixels(outer, run["before"][0], scene)  # top first: [face, background]
    fx, fy = SEL[0] - FACE_OFFSET[0], SEL[1] - FACE_OFFSET[1]
    original = face_before[fy : fy + SEL[3], fx : fx + SEL[2]]
    assert np.array_equal(best[mask == 0], original[mask == 0])
    assert np.abs(best[mask == 255] - original[mask == 255]).mean() > 1.0  # inside: a new face
    assert run["selection"] == [True, SEL[0], SEL[1], SEL[0] + SEL[2], SEL[1] + SEL[3]]

    # The undo group was closed by the plug-in itself (GIMP warns when a plug-in leaves one open).
    assert "inconsistent state" not in res["stderr"], res["stderr"][-2000:]

    down = res["runs"]["down"]
    assert down["status"] == "execution-error"
    assert "pulse-server run" in (down["error"] or ""), down["error"]
    assert [(a["name"], a["offset"]) for a in down["after"]] == [(b["name"], b["offset"]) for b in down["before"]]
    assert all(_same_pixels(outer, a, b) for a, b in zip(down["after"], down["before"]))


def _plugin_pids(marker: str) -> list[int]:
    """Processes running our installed plug-in (its path contains this test's unique chroot dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and "pulse-depixelate.py" in cmd:
                pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_cancel_in_real_gimp_cancels_the_daemon_job(gimp_root, chroot_work, daemon, how):
    """The running plug-in stopped mid-job; the daemon job is cancelled and the image is untouched.

    SIGTERM (GIMP quitting): the plug-in sends an explicit CANCEL. SIGKILL is what GIMP's own Cancel button on
    the progress bar does (GP_QUIT, 10 ms, then SIGKILL): the daemon cancels the job of the vanished client
    once its heartbeats stop.
    """
    import signal
    import threading

    inner, outer = chroot_work
    _install_plugin(outer / "home")
    log_before = daemon.output()
    jobs_before = log_before.count(" from gimp")
    stop, seen = threading.Event(), {}

    def killer():
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline:
            if daemon.output().count(" from gimp") > jobs_before:
                time.sleep(2.0)  # let the solver start stepping
                pids = _plugin_pids(str(inner))
                if pids:
                    seen["pids"] = pids
                    for pid in pids:
                        os.kill(pid, getattr(signal, how))
                    return
            time.sleep(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    runs = [("cancel", {"candidates": 4, "steps": 5000, "seed": 5, "block-size": 0, "endpoint": daemon.endpoint},
             SCENES["u8-rgb"])]
    try:
        res = _drive(gimp_root, inner, outer, runs, env={"PULSE_TOKEN": daemon.token})
    finally:
        stop.set()
        thread.join(5)
    run = res["runs"]["cancel"]
    assert seen.get("pids"), f"the job never showed up in the daemon log:\n{daemon.output()[-3000:]}"
    assert run["seconds"] < 120, "cancel must stop the job long before 4×5000 steps finish"
    assert [(a["name"], a["offset"]) for a in run["after"]] == [(b["name"], b["offset"]) for b in run["before"]]
    assert all(_same_pixels(outer, a, b) for a, b in zip(run["after"], run["before"]))
    if how == "SIGTERM":
        assert run["status"] == "cancel", (run["status"], run["error"], res["stderr"][-3000:])
        assert "Depixelation cancelled." in res["stderr"]  # the plug-in's Gimp.message (GIMP shows none for CANCEL)
        # An explicit CANCEL from the plug-in (not the daemon noticing a vanished client).
        assert "cancelled by the client" in daemon.output()[len(log_before):], daemon.output()[-2000:]
    else:
        assert run["status"] != "success"
        deadline = time.monotonic() + 20  # a few missed heartbeats
        while " cancelled (" not in daemon.output()[len(log_before):] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert " cancelled (" in daemon.output()[len(log_before):], daemon.output()[-2000:]


def test_without_pyzmq_the_menu_registers_and_explains(gimp_root, chroot_work):
    """GIMP's Python lacking pyzmq (simulated by a zmq module that fails to import, placed first on the
    plug-in's path): the procedure still registers, and running it says what to install; image untouched."""
    inner, outer = chroot_work
    dest = _install_plugin(outer / "home")
    (dest / "pulse-depixelate" / "zmq.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'zmq'\", name='zmq')\n")
    runs = [("nozmq", {"candidates": 1, "steps": 5, "seed": 1, "block-size": 0, "endpoint": ""}, SCENES["u8-rgb"])]
    res = _drive(gimp_root, inner, outer, runs, env={})
    assert res["registered"] and res["menu_paths"] == ["<Image>/Filters/Enhance"]
    run = res["runs"]["nozmq"]
    assert run["status"] == "execution-error"
    assert "python3-zmq" in run["error"] and "install-plugin gimp" in run["error"], run["error"]
    assert [(a["name"], a["offset"]) for a in run["after"]] == [(b["name"], b["offset"]) for b in run["before"]]
    assert all(_same_pixels(outer, a, b) for a, b in zip(run["after"], run["before"]))


def test_interactive_dialog_in_real_gimp_gui(gimp_root, chroot_work, daemon):
    """Full GIMP GUI (Xvfb): the GimpUi.ProcedureDialog opens, OK runs the job with the dialog's values on the
    default endpoint (PULSE_ENDPOINT, as `pulse-server run` would publish it), and the layers arrive."""
    inner, outer = chroot_work
    _install_plugin(outer / "home")
    args = {"interactive": True, "candidates": 2, "steps": 20, "seed": 77, "block-size": 0, "endpoint": ""}
    res = _drive(gimp_root, inner, outer, [("dialog", args, SCENES["u8-rgb"])],
                 env={"PULSE_TOKEN": daemon.token, "PULSE_ENDPOINT": daemon.endpoint}, gui=True)
    print(f"GUI GIMP wall {res['wall_s']:.1f}s, dialog after {res['dialog_seen_s']}s")
    assert res["dialog_seen_s"] is not None, "the plug-in's dialog never appeared:\n" + res["stderr"][-3000:]
    assert "duplicate mnemonic" not in res["stderr"], res["stderr"][-2000:]
    run = res["runs"]["dialog"]
    assert run["status"] == "success", (run["error"], res["stderr"][-3000:])
    names = [layer["name"] for layer in run["after"]]
    assert names[0].startswith("PULSE face 1 (err ") and names[1].startswith("PULSE face 2 (err ")
    assert names[2:] == ["face", "background"]
    # The dialog's values went to the daemon: candidate i is solved with seed + i.
    assert {json.loads(layer["parasite"])["seed"] for layer in run["after"][:2]} == {77, 78}
    # One Ctrl+Z (GIMP's own Edit ▸ Undo) takes the whole result back: it was exactly one undo step.
    assert (outer / "work/undo-done").read_text().strip(), "no image window to press Ctrl+Z in"
    undone = run["after_undo"]
    assert [(a["name"], a["offset"], a["size"]) for a in undone] == [
        (b["name"], b["offset"], b["size"]) for b in run["before"]]
    assert all(_same_pixels(outer, a, b) for a, b in zip(undone, run["before"]))
