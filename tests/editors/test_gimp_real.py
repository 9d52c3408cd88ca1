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
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gimp_chroot

pytestmark = [pytest.mark.gimp, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
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
    x, y, w, h = scene.get("selection") or cfg["selection"]
    if scene.get("ellipse"):
        img.select_ellipse(Gimp.ChannelOps.REPLACE, x, y, w, h)
    else:
        img.select_rectangle(Gimp.ChannelOps.REPLACE, x, y, w, h)
    mask = img.get_selection().get_buffer().get(Gegl.Rectangle.new(x, y, w, h), 1.0, "Y u8", Gegl.AbyssPolicy.NONE)
    open(work + "/mask-" + scene["tag"] + ".raw", "wb").write(bytes(mask))
    return img, face


def describe(img, tag, fmt):
    """Every layer, groups' children right after their group (top down), with its pixels and mask in files."""
    info = []

    def walk(layers, path):
        for layer in layers:
            _, ox, oy = layer.get_offsets()
            par = layer.get_parasite(cfg["parasite"])
            entry = {"name": layer.get_name(), "path": path, "group": layer.is_group(),
                     "visible": layer.get_visible(), "offset": [ox, oy],
                     "size": [layer.get_width(), layer.get_height()], "has_alpha": layer.has_alpha(),
                     "parasite": bytes(par.get_data()).decode() if par else None,
                     "raw": None, "mask": None}
            i = len(info)
            info.append(entry)
            if layer.is_group():
                walk(layer.get_children(), path + [layer.get_name()])
                continue
            entry["raw"] = "%s-%d.raw" % (tag, i)
            open(work + "/" + entry["raw"], "wb").write(pixels(layer, fmt))
            mask = layer.get_mask()
            if mask is not None:
                entry["mask"] = "%s-%d-mask.raw" % (tag, i)
                open(work + "/" + entry["mask"], "wb").write(pixels(mask, "Y u8"))

    walk(img.get_layers(), [])
    return info


asked = []


def ask_host(what):
    """The host presses a key in the image window ("key:ctrl+z") or grabs the screen ("shot:NAME")."""
    Gimp.displays_flush()
    asked.append(what)
    n = len(asked)
    ask, done = "%s/ask-%d" % (work, n), "%s/done-%d" % (work, n)
    open(ask + ".tmp", "w").write(what)
    os.rename(ask + ".tmp", ask)
    deadline = time.monotonic() + 120
    while not os.path.exists(done) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # GIMP handles the key (undo, redo) on its own main loop


def call(proc, img, drawables, args, interactive=False):
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.INTERACTIVE if interactive else Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", img)
    config.set_core_object_array("drawables", drawables)
    for k, v in args.items():
        config.set_property(k, v)
    t0 = time.monotonic()
    res = proc.run(config)
    status = res.index(0)
    error = None
    if status != Gimp.PDBStatusType.SUCCESS and res.length() > 1:
        error = str(res.index(1))
    return {"status": status.value_nick, "error": error, "seconds": time.monotonic() - t0,
            "active": [l.get_name() for l in drawables]}


def selected(img):
    return [l.get_name() for l in img.get_selected_layers()]


def run(tag, args, scene):
    scene["tag"] = tag
    img, face = make_image(scene)
    fmt = babl(scene)
    before = describe(img, tag + "-before", fmt)
    proc = Gimp.get_pdb().lookup_procedure(PROC)
    args = dict(args)
    interactive = args.pop("interactive", False)
    rerun = args.pop("rerun", False)
    once = args.pop("once", False)  # interactive, without the undo/redo/rerun round
    display = Gimp.Display.new(img) if interactive else None  # as a user sees it: the dialog needs a GUI
    result = call(proc, img, [face], args, interactive)
    result.update({
        "before": before, "after": describe(img, tag + "-after", fmt),
        "precision": img.get_precision().value_nick,
        "selected": selected(img),
        "selection": list(Gimp.Selection.bounds(img))[1:],
        "undo_enabled": img.undo_is_enabled(),
    })
    out["runs"][tag] = result
    if interactive and not once:
        # As a user would: look, undo, redo, then run the filter again on whatever is active now.
        ask_host("shot:%s-pasted" % tag)
        ask_host("key:ctrl+z")
        result["after_undo"] = describe(img, tag + "-undo", fmt)
        ask_host("key:ctrl+y")
        result["after_redo"] = describe(img, tag + "-redo", fmt)
        result["selected_after_redo"] = selected(img)
    if (interactive and not once) or rerun:
        again = call(proc, img, list(img.get_selected_layers()), args)
        again.update({"after": describe(img, tag + "-again", fmt), "selected": selected(img)})
        result["again"] = again
        if interactive:
            ask_host("shot:%s-again" % tag)
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
    grow: int = 0  # the selection this many pixels larger than the mosaic on each side
    mosaic: bool = True  # False: the selection holds a photo-like texture, never pixelated

    @property
    def selection(self) -> tuple[int, int, int, int]:
        g = self.grow
        return SEL[0] - g, SEL[1] - g, SEL[2] + 2 * g, SEL[3] + 2 * g

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
        if self.grow or not self.mosaic:  # a photo's texture around the mosaic (a plain ramp can pass for more cells)
            face = (face + rng.normal(0, 12, face.shape)).clip(0, 255).round()
        if self.mosaic:
            face[my : my + BLOCK * MOSAIC_CELLS, mx : mx + BLOCK * MOSAIC_CELLS] = cells.repeat(BLOCK, 0).repeat(BLOCK, 1)
        if self.gray:  # the scene's grey levels are its own truth: the mosaic cells too
            bg, face, cells = (np.rint(a.mean(-1, keepdims=True)) for a in (bg, face, cells))
        if self.alpha:
            bg, face = (np.concatenate([a, np.full(a.shape[:2] + (1,), 255.0)], -1) for a in (bg, face))
            cells = np.concatenate([cells, np.full(cells.shape[:2] + (1,), 255.0)], -1)
        tag = f"{self.precision}-{'gray' if self.gray else 'rgb'}{'a' if self.alpha else ''}"
        tag += f"-s{self.seed}-g{self.grow}{'' if self.mosaic else '-plain'}"  # one file per scene
        (work / f"bg-{tag}.raw").write_bytes(self.encode(bg))
        (work / f"face-{tag}.raw").write_bytes(self.encode(face))
        spec = {"precision": self.precision, "gray": self.gray, "alpha": self.alpha, "ellipse": self.ellipse,
                "selection": list(self.selection), "layers": [
            {"name": "background", "size": list(IMAGE_SIZE), "offset": [0, 0], "raw": f"bg-{tag}.raw"},
            {"name": "face", "size": list(FACE_SIZE), "offset": list(FACE_OFFSET), "raw": f"face-{tag}.raw"},
        ]}
        return spec, cells


def _install_plugin(outer_home: Path) -> Path:
    dest = outer_home / ".config/GIMP/3.0/plug-ins"
    # This checkout's plug-in and protocol, not those of whatever pulse-server the venv has installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([*_pulse_server(), "install-plugin", "gimp", "--dest", str(dest), "--target", "linux"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert os.access(dest / "pulse-depixelate" / "pulse-depixelate.py", os.X_OK)
    return dest


def _serve_host_requests(work: Path, shots: Path | None):
    """After the dialog: do what the driver asks (ask-N files) until it has written its result.

    "key:K" presses K in the image window (GIMP's own shortcuts: Ctrl+Z undo, Ctrl+Y redo); "shot:NAME"
    saves the screen as NAME.png under `shots` (when screenshots are wanted).
    """

    def serve(x11, display: str) -> None:
        deadline = time.monotonic() + 600
        n = 1
        while not (work / "result.json").exists() and time.monotonic() < deadline:
            ask = work / f"ask-{n}"
            if not ask.exists():
                time.sleep(0.2)
                continue
            what = ask.read_text()
            kind, _, arg = what.partition(":")
            if kind == "key":
                windows = x11("xdotool", "search", "--name", "Untitled").stdout.split()
                if windows:
                    x11("xdotool", "windowfocus", "--sync", windows[-1], "key", arg)
                (work / f"done-{n}").write_text(" ".join(windows))
            else:
                if shots is not None:
                    _screenshot(display, shots / f"{arg}.png")
                (work / f"done-{n}").write_text(arg)
            n += 1

    return serve


def _dialog_shot(shots: Path):
    """The screen with the dialog up, GIMP's window first grown to the screen (the layer names read whole)."""

    def shot(x11, display: str) -> None:
        for window in x11("xdotool", "search", "--name", "Untitled").stdout.split():
            x11("xdotool", "windowmove", window, "0", "0", "windowsize", window, "1280", "1024")
        time.sleep(1.0)
        _screenshot(display, shots / "dialog.png")

    return shot


def _screenshot(display: str, path: Path) -> None:
    """The Xvfb screen inside the chroot, grabbed from the host (same network namespace: X's abstract socket)."""
    from PIL import ImageGrab

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ImageGrab.grab(xdisplay=display).save(path)
    except OSError as exc:  # a screenshot is for people to look at, never a reason for the test to fail
        print(f"screenshot {path.name} failed: {exc}")


def _drive(gimp_root: Path, inner: Path, outer: Path, runs: list[tuple[str, dict, Scene]],
           env: dict[str, str], gui: bool = False, shots: Path | None = None, after_dialog=None) -> dict:
    """Run all `runs` (tag, procedure args, scene) in one headless GIMP; returns its JSON + mosaic cells.

    `gui`: the full GIMP under Xvfb; `after_dialog(x11, display)` serves it once the first settings dialog
    is answered (default: the driver's key and screenshot requests)."""
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
                                                       after_dialog=after_dialog or _serve_host_requests(work, shots),
                                                       before_return=_dialog_shot(shots) if shots else None)
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


def _run_group(entries: list[dict]) -> tuple[dict, list[dict], list[dict]]:
    """(the run's group, its face layers top down, the layers outside it) of a describe() listing."""
    group = entries[0]
    assert group["group"] and group["path"] == [], entries
    faces = [e for e in entries if e["path"] == [group["name"]]]
    rest = [e for e in entries if e is not group and e not in faces]
    return group, faces, rest


def _mask(outer: Path, entry: dict) -> np.ndarray:
    w, h = entry["size"]
    return np.frombuffer((outer / "work" / entry["mask"]).read_bytes(), np.uint8).reshape(h, w)


def _check_run(outer: Path, run: dict, scene: Scene, cells: np.ndarray, tag: str, number: int = 1) -> list[float]:
    """One group "PULSE run N — 8 px blocks" above the photo with one masked layer per candidate, best first
    and visible; pixels re-mosaic to the input; every other layer untouched. Returns the faces' errors."""
    assert run["status"] == "success", (tag, run["error"])
    group, faces, rest = _run_group(run["after"])
    assert group["name"] == f"PULSE run {number} — {BLOCK} px blocks", group["name"]
    meta = json.loads(group["parasite"])
    assert meta["kind"] == "run" and meta["run"] == number and "not a recovery" in meta["comment"]
    assert len(faces) >= 2
    suffix = "" if number == 1 else f" (run {number})"
    assert [f["name"] for f in faces] == [f"PULSE face {i}{suffix}" for i in range(1, len(faces) + 1)]
    assert [f["visible"] for f in faces] == [True] + [False] * (len(faces) - 1)
    assert group["visible"]
    x, y, w, h = scene.selection
    errs = []
    for face in faces:
        assert face["offset"] == [x, y] and face["size"] == [w, h], (tag, face)
        assert face["has_alpha"] == scene.alpha
        assert face["mask"] is not None, f"{tag}: {face['name']} has no layer mask"
        info = json.loads(face["parasite"])
        assert info["model"] and isinstance(info["seed"], int) and info["downscale_error"] >= 0
        assert "not a recovery" in info["comment"]
        errs.append(info["downscale_error"])
    assert errs == sorted(errs)
    assert [c["downscale_error"] for c in meta["candidates"]] == errs  # the group's candidate list
    # Re-mosaic invariant: the best face averaged over the input's 8×8 blocks gives the mosaic back.
    g = scene.grow
    best = _pixels(outer, faces[0], scene)[g:g + SEL[3], g:g + SEL[2]]
    blocks = best.reshape(MOSAIC_CELLS, BLOCK, MOSAIC_CELLS, BLOCK, scene.channels).mean(axis=(1, 3))
    mae = np.abs(blocks - cells).mean(axis=(0, 1))
    print(f"{tag}: re-mosaic mean abs error per channel (0-255) {mae.round(3).tolist()}; errors {errs}; "
          f"mosaic {meta['analysis'].get('rect')} phase {meta['analysis'].get('phase')}")
    assert (mae <= 2.0).all(), (tag, mae)
    # ...and it is a face, not the mosaic pasted back: there is detail inside the blocks.
    detail = best.reshape(MOSAIC_CELLS, BLOCK, MOSAIC_CELLS, BLOCK, scene.channels).std(axis=(1, 3))
    assert detail[..., : 1 if scene.gray else 3].mean() > 1.0, tag
    return errs


def _criticals(stderr: str) -> list[str]:
    """GIMP's CRITICAL lines, less the one g_object_unref that GIMP 3.0.4 logs while quitting a batch run
    (logged with the plug-in's earlier versions too, after "batch command executed successfully")."""
    return [line for line in stderr.splitlines() if "CRITICAL" in line and "g_object_unref" not in line]


def _unchanged(outer: Path, before: list[dict], after: list[dict]) -> bool:
    return ([(a["name"], a["offset"], a["size"], a["visible"]) for a in after]
            == [(b["name"], b["offset"], b["size"], b["visible"]) for b in before]
            and all(_same_pixels(outer, a, b) for a, b in zip(after, before)))


def _candidate_slots(seeds: list[int], base: int) -> set[int]:
    """Which candidate each layer's recorded seed belongs to: candidate i searches from base + i, or, when it
    missed eps where the best matched, from its retry seed (and records the seed that made its face)."""
    from pulse_server.solver.mosaic_search import retry_seed

    slots = {}
    for i in range(len(seeds)):
        slots[base + i] = slots[retry_seed(base + i, 1)] = i
    return {slots.get(s, -1) for s in seeds}


def test_depixelate_in_real_gimp(gimp_root, chroot_work, daemon):
    inner, outer = chroot_work
    _install_plugin(outer / "home")
    args = {"candidates": 2, "steps": 30, "seed": 1234, "block": 0, "endpoint": daemon.endpoint}
    runs = [(tag, args, scene) for tag, scene in SCENES.items()]
    runs.append(("ellipse", args, Scene("u8", seed=3, ellipse=True)))
    # A selection one cell larger than the mosaic on each side, and the filter run again on its result.
    runs.append(("margin", {**args, "rerun": True}, Scene("u8", seed=6, grow=BLOCK)))
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
    # the job contract's everyday parameters (protocol/editor_settings.py), then the daemon's address and force
    assert res["arguments"][-7:] == ["candidates", "steps", "seed", "block", "model", "endpoint", "force"]

    for tag, scene in SCENES.items():
        run = res["runs"][tag]
        assert run["precision"].startswith(scene.precision)
        _check_run(outer, run, scene, res["cells"][tag], tag)
        group, faces, rest = _run_group(run["after"])
        assert _candidate_slots([json.loads(f["parasite"])["seed"] for f in faces], 1234) == {0, 1}
        # The selection is the mosaic: each mask is opaque over all of it.
        assert all((_mask(outer, f) == 255).all() for f in faces), tag
        # Nothing else changed: the photo's layers (names, offsets, sizes, pixels), the selection.
        assert [e["name"] for e in rest] == ["face", "background"]
        assert _unchanged(outer, run["before"], rest), tag
        assert run["selection"] == [True, SEL[0], SEL[1], SEL[0] + SEL[2], SEL[1] + SEL[3]]
        assert run["selected"] == ["PULSE face 1"]  # the visible best face, not a hidden one
        assert run["undo_enabled"]

    # Elliptic selection: the mask went along; outside it the new layer repeats the original pixels exactly,
    # and the layer mask is the selection (opaque where selected, nothing outside).
    run = res["runs"]["ellipse"]
    scene = SCENES["u8-rgb"]
    _check_run(outer, run, scene, res["cells"]["ellipse"], "ellipse")
    _, faces, _ = _run_group(run["after"])
    mask = np.frombuffer((outer / "work/mask-ellipse.raw").read_bytes(), np.uint8).reshape(SEL[3], SEL[2])
    assert (mask == 0).sum() > 100 and (mask == 255).sum() > 500  # corners out, middle in
    best = _pixels(outer, faces[0], scene)
    face_before = _pixels(outer, run["before"][0], scene)  # top first: [face, background]
    fx, fy = SEL[0] - FACE_OFFSET[0], SEL[1] - FACE_OFFSET[1]
    original = face_before[fy : fy + SEL[3], fx : fx + SEL[2]]
    assert np.array_equal(best[mask == 0], original[mask == 0])
    assert np.abs(best[mask == 255] - original[mask == 255]).mean() > 1.0  # inside: a new face
    assert np.abs(_mask(outer, faces[0]).astype(int) - mask).max() <= 1
    assert run["selection"] == [True, SEL[0], SEL[1], SEL[0] + SEL[2], SEL[1] + SEL[3]]

    # A selection larger than the mosaic: the mask is opaque over the mosaic the daemon found and falls off
    # in a band one cell wide around it; the pixels there are the photo's own.
    run = res["runs"]["margin"]
    scene = Scene("u8", seed=6, grow=BLOCK)
    first = _check_run(outer, run, scene, res["cells"]["margin"], "margin")
    group, faces, _ = _run_group(run["after"])
    ax, ay, aw, ah = json.loads(group["parasite"])["analysis"]["rect"]
    assert (ax, ay, aw, ah) == (BLOCK, BLOCK, SEL[2], SEL[3]), "the daemon found the mosaic elsewhere"
    m = _mask(outer, faces[0])
    assert (m[ay:ay + ah, ax:ax + aw] == 255).all()
    edge = m[ay + ah // 2, :ax][::-1]  # from the mosaic's left edge outwards
    assert (np.diff(edge.astype(int)) < 0).all() and edge[0] < 255 and edge[-1] > 0, edge.tolist()
    g = scene.grow
    fx, fy = scene.selection[0] - FACE_OFFSET[0], scene.selection[1] - FACE_OFFSET[1]
    original = _pixels(outer, run["before"][0], scene)[fy:fy + scene.selection[3], fx:fx + scene.selection[2]]
    best = _pixels(outer, faces[0], scene)
    ring = np.ones(m.shape, bool)
    ring[g:g + SEL[3], g:g + SEL[2]] = False
    assert np.array_equal(best[ring], original[ring]), "outside the mosaic the layer is the photo"

    # Run again with "PULSE face 1" active (as after Ctrl+Y): the photo layer beneath is read, and the new
    # run lands above the first one, numbered on, without a "#1" name anywhere.
    again = run["again"]
    assert again["active"] == ["PULSE face 1"]
    assert again["status"] == "success", again["error"]
    top = [e for e in again["after"] if e["path"] == []]
    assert [e["name"] for e in top] == [f"PULSE run 2 — {BLOCK} px blocks", f"PULSE run 1 — {BLOCK} px blocks",
                                        "face", "background"]
    _check_run(outer, again, scene, res["cells"]["margin"], "margin-again", number=2)
    assert not any("#" in e["name"] for e in again["after"])
    second = [json.loads(e["parasite"])["downscale_error"] for e in _run_group(again["after"])[1]]
    assert second == first, "the same photo pixels and seed must give the same faces: it read the photo"
    assert again["selected"] == ["PULSE face 1 (run 2)"]
    assert "depixelating the layer beneath it, “face”" in res["stderr"], res["stderr"][-2000:]
    assert "PULSE run 2: found 8 px blocks, 4×4 cells; imagined 2 faces" in res["stderr"]

    # The undo group was closed by the plug-in itself (GIMP warns when a plug-in leaves one open).
    assert "inconsistent state" not in res["stderr"], res["stderr"][-2000:]
    assert not _criticals(res["stderr"]), res["stderr"][-3000:]

    down = res["runs"]["down"]
    assert down["status"] == "execution-error"
    assert "pulse-server run" in (down["error"] or ""), down["error"]
    assert down["error"].count("tcp://127.0.0.1:9") == 1, down["error"]  # the address it tried, once
    assert _unchanged(outer, down["before"], down["after"])


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
    runs = [("cancel", {"candidates": 4, "steps": 5000, "seed": 5, "block": 0, "endpoint": daemon.endpoint},
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
        assert "Depixelation cancelled:" in res["stderr"]  # the plug-in's Gimp.message (GIMP shows none for CANCEL)
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
    runs = [("nozmq", {"candidates": 1, "steps": 5, "seed": 1, "block": 0, "endpoint": ""}, SCENES["u8-rgb"])]
    res = _drive(gimp_root, inner, outer, runs, env={})
    assert res["registered"] and res["menu_paths"] == ["<Image>/Filters/Enhance"]
    run = res["runs"]["nozmq"]
    assert run["status"] == "execution-error"
    assert "python3-zmq" in run["error"] and "install-plugin gimp" in run["error"], run["error"]
    assert [(a["name"], a["offset"]) for a in run["after"]] == [(b["name"], b["offset"]) for b in run["before"]]
    assert all(_same_pixels(outer, a, b) for a, b in zip(run["after"], run["before"]))


def test_interactive_dialog_undo_redo_and_rerun_in_real_gimp_gui(gimp_root, chroot_work, daemon):
    """Full GIMP GUI (Xvfb), as a user works: the dialog opens, OK runs the job with the dialog's values on the
    default endpoint (PULSE_ENDPOINT, as `pulse-server run` would publish it); one Ctrl+Z takes the whole run
    back, Ctrl+Y brings it back without GIMP criticals, and the filter run again on the redone "PULSE face 1"
    reads the photo layer beneath it. PULSE_GIMP_SCREENSHOTS=DIR keeps screenshots of each step."""
    inner, outer = chroot_work
    _install_plugin(outer / "home")
    shots = Path(os.environ["PULSE_GIMP_SCREENSHOTS"]) if os.environ.get("PULSE_GIMP_SCREENSHOTS") else None
    args = {"interactive": True, "candidates": 2, "steps": 20, "seed": 77, "block": 0, "endpoint": ""}
    scene = Scene("u8", seed=3, grow=BLOCK)
    res = _drive(gimp_root, inner, outer, [("dialog", args, scene)],
                 env={"PULSE_TOKEN": daemon.token, "PULSE_ENDPOINT": daemon.endpoint}, gui=True, shots=shots)
    print(f"GUI GIMP wall {res['wall_s']:.1f}s, dialog after {res['dialog_seen_s']}s")
    assert res["dialog_seen_s"] is not None, "the plug-in's dialog never appeared:\n" + res["stderr"][-3000:]
    assert "duplicate mnemonic" not in res["stderr"], res["stderr"][-2000:]
    run = res["runs"]["dialog"]
    _check_run(outer, run, scene, res["cells"]["dialog"], "dialog")
    group, faces, rest = _run_group(run["after"])
    # The dialog's values went to the daemon: candidate i is solved with seed + i.
    assert {json.loads(f["parasite"])["seed"] for f in faces} == {77, 78}
    assert run["selected"] == ["PULSE face 1"]

    # One Ctrl+Z (GIMP's own Edit ▸ Undo) takes the whole run back: group, layers, masks were one undo step.
    assert _unchanged(outer, run["before"], run["after_undo"])
    # Ctrl+Y (Edit ▸ Redo) brings all of it back, masks included, and GIMP logs nothing critical doing so.
    redone = run["after_redo"]
    assert [(e["name"], e["path"], e["mask"] is not None) for e in redone] == [
        (e["name"], e["path"], e["mask"] is not None) for e in run["after"]]
    assert all(_same_pixels(outer, a, b) for a, b in zip(redone, run["after"]) if a["raw"])
    assert all((_mask(outer, a) == _mask(outer, b)).all() for a, b in zip(redone, run["after"]) if a["mask"])
    assert not _criticals(res["stderr"]), res["stderr"][-3000:]
    assert "inconsistent state" not in res["stderr"], res["stderr"][-2000:]

    # The filter again, on what GIMP made active after the redo: the photo beneath is read, not a result.
    again = run["again"]
    assert any(name.startswith("PULSE") for name in run["selected_after_redo"]), run["selected_after_redo"]
    assert again["status"] == "success", (again["error"], res["stderr"][-3000:])
    top = [e["name"] for e in again["after"] if e["path"] == []]
    assert top == [f"PULSE run 2 — {BLOCK} px blocks", f"PULSE run 1 — {BLOCK} px blocks", "face", "background"]


PLAIN = Scene("u8", seed=8, mosaic=False)  # the selection holds a textured photo, no mosaic


def _untouched(outer: Path, run: dict) -> bool:
    return [(a["name"], a["offset"]) for a in run["after"]] == [(b["name"], b["offset"]) for b in run["before"]] \
        and all(_same_pixels(outer, a, b) for a, b in zip(run["after"], run["before"]))


def _forced_group(run: dict) -> tuple[dict, list[dict]]:
    """The run's group over a region without a mosaic: named so, with masked faces that say they are imagined."""
    assert run["status"] == "success", run["error"]
    group, faces, rest = _run_group(run["after"])
    assert group["name"] == "PULSE run 1 — no mosaic found", group["name"]
    meta = json.loads(group["parasite"])
    assert meta["analysis"]["detected"] is False and "not a recovery" in meta["comment"]
    assert [f["name"] for f in faces] == ["PULSE face 1", "PULSE face 2"]
    assert all(f["mask"] is not None and "not a recovery" in json.loads(f["parasite"])["comment"] for f in faces)
    assert [e["name"] for e in rest] == ["face", "background"]
    return group, faces


def test_no_mosaic_in_a_script_is_a_clear_refusal_and_force_paints_anyway(gimp_root, chroot_work, daemon):
    """Batch mode cannot ask: the daemon's finding is the run's error and the image stays as it was; the
    procedure's `force` argument is how a script depixelates such a region anyway."""
    inner, outer = chroot_work
    _install_plugin(outer / "home")
    args = {"candidates": 2, "steps": 5, "seed": 9, "block": 0, "endpoint": daemon.endpoint}
    runs = [("refused", args, PLAIN), ("forced", {**args, "force": True}, PLAIN)]
    res = _drive(gimp_root, inner, outer, runs, env={"PULSE_TOKEN": daemon.token})
    refused = res["runs"]["refused"]
    assert refused["status"] == "execution-error", refused
    assert "no mosaic found in the selection (" in refused["error"], refused["error"]
    assert "python-fu-pulse-depixelate with force TRUE" in refused["error"] and "--force" not in refused["error"]
    assert _untouched(outer, refused)
    assert "No mosaic found" not in res["stderr"]  # no dialog was attempted: there is nobody to answer it
    _forced_group(res["runs"]["forced"])
    assert not _criticals(res["stderr"]), res["stderr"][-3000:]


def _answer_questions(work: Path, answers: list[str], shots: Path | None):
    """After the first settings dialog (answered by gimp_gui_batch): OK every later settings dialog, and answer
    each "No mosaic found" question with the next key of `answers` ("Return": its default; "alt+y": Yes).
    Writes the answers given to work/answered.json."""

    def serve(x11, display: str) -> None:
        def visible(pattern: str) -> list[str]:
            return x11("xdotool", "search", "--onlyvisible", "--name", pattern).stdout.split()

        # Windows answered and still on screen. Forgotten once gone: each run's dialogs come from a new plug-in
        # process, and the X server hands a new client the id range of one that left, so ids come back.
        answered = {"^Depixelate Face": set(visible("^Depixelate Face")), "^No mosaic found": set()}
        given: list[str] = []
        deadline = time.monotonic() + 300
        while not (work / "result.json").exists() and time.monotonic() < deadline:
            for pattern, seen in answered.items():
                shown = visible(pattern)
                seen &= set(shown)
                fresh = [w for w in shown if w not in seen]
                if not fresh:
                    continue
                seen.update(fresh)  # one dialog at a time: GTK may map more than one X window for it
                time.sleep(1.0)  # let GTK map and realise it
                key = "Return"
                if pattern.startswith("^No"):
                    key = answers[len(given)]
                    given.append(key)
                    if shots is not None:
                        _screenshot(display, shots / f"question-{len(given)}.png")
                x11("xdotool", "windowfocus", "--sync", fresh[-1], "key", "--clearmodifiers", key)
            time.sleep(0.3)
        (work / "answered.json").write_text(json.dumps(given))

    return serve


def test_no_mosaic_in_the_gui_asks_and_defaults_to_no(gimp_root, chroot_work, daemon):
    """GIMP GUI (Xvfb): on a region without a mosaic the plug-in asks "depixelate anyway?". Return (the
    default) answers No and leaves the image as it was; Yes sends the region again, forced, and the run's
    group arrives. PULSE_GIMP_SCREENSHOTS=DIR keeps the question's screenshots."""
    inner, outer = chroot_work
    _install_plugin(outer / "home")
    shots = Path(os.environ["PULSE_GIMP_SCREENSHOTS"]) if os.environ.get("PULSE_GIMP_SCREENSHOTS") else None
    args = {"interactive": True, "once": True, "candidates": 2, "steps": 5, "seed": 9, "block": 0,
            "endpoint": ""}
    work = outer / "work"
    proc_env = {"PULSE_TOKEN": daemon.token, "PULSE_ENDPOINT": daemon.endpoint}
    res = _drive(gimp_root, inner, outer, [("declined", args, PLAIN), ("accepted", args, PLAIN)], proc_env,
                 gui=True, after_dialog=_answer_questions(work, ["Return", "alt+y"], shots))
    assert json.loads((work / "answered.json").read_text()) == ["Return", "alt+y"], "a question never appeared"
    declined = res["runs"]["declined"]
    assert declined["status"] == "cancel", (declined, res["stderr"][-3000:])
    assert _untouched(outer, declined)
    assert "Nothing was changed" in (declined["error"] or "Nothing was changed"), declined["error"]
    _forced_group(res["runs"]["accepted"])
    assert not _criticals(res["stderr"]), res["stderr"][-3000:]
