#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""GIMP 3 plug-in: Filters ▸ Enhance ▸ Depixelate Face (PULSE)…

A thin adapter between GIMP and the local PULSE daemon: it reads the selected region (pixels in the drawable's
own bit depth, plus the selection mask) through Gegl buffers, sends it with the `protocol` client that the
installer copied next to this file, and pastes the K returned faces as K new layers in one undo group.
All decisions live in `pulse_gimp.py` (tested without GIMP). pyzmq is imported only when the procedure runs,
so the menu entry registers — and explains the problem — even where pyzmq is missing.
"""

import os
import sys
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
# The protocol client and pulse_gimp live next to this file; wheels vendored for a bundled Python in _vendor.
for _path in (os.path.join(_HERE, "_vendor"), _HERE):
    if os.path.isdir(_path) and _path not in sys.path:
        sys.path.insert(0, _path)

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: E402

import pulse_gimp as logic  # noqa: E402


def _fail(procedure, message, status=Gimp.PDBStatusType.EXECUTION_ERROR):
    """Return an error whose text says what to do; nothing in the image was changed.

    GIMP itself shows the error of a failed procedure as a message ("Calling error for procedure …", in the
    GUI and on the console alike), so an extra Gimp.message() here would only say it twice. A cancelled run
    gets one short Gimp.message, as GIMP shows nothing for CANCEL.
    """
    if status == Gimp.PDBStatusType.CANCEL:
        Gimp.message(message)
    return procedure.new_return_values(status, GLib.Error(message))


def _check_drawable(drawable):
    if not isinstance(drawable, Gimp.Layer) or drawable.is_layer_mask():
        raise logic.UserError("Select a layer (not a channel or mask) to depixelate.")
    if drawable.is_group():
        raise logic.UserError("Select a normal layer, not a layer group.")
    if drawable.is_indexed():
        raise logic.UserError("Indexed images are not supported: convert the image to RGB or grayscale first.")


def read_region(image, drawable):
    """-> (Region, PixelFormat, pixel bytes, mask bytes or None), reading nothing outside the region."""
    _check_drawable(drawable)
    _, ox, oy = drawable.get_offsets()
    selection = tuple(Gimp.Selection.bounds(image)[1:])
    region = logic.plan_region((ox, oy), (drawable.get_width(), drawable.get_height()), selection)
    fmt = logic.pixel_format(image.get_precision().value_nick, drawable.is_gray(), drawable.has_alpha())
    rect = Gegl.Rectangle.new(region.src_x, region.src_y, region.width, region.height)
    pixels = bytes(drawable.get_buffer().get(rect, 1.0, fmt.babl, Gegl.AbyssPolicy.NONE))
    mask = None
    if region.has_selection:
        sel_rect = Gegl.Rectangle.new(region.x, region.y, region.width, region.height)
        raw = image.get_selection().get_buffer().get(sel_rect, 1.0, logic.MASK_FORMAT, Gegl.AbyssPolicy.NONE)
        mask = logic.mask_or_none(bytes(raw))
    return region, fmt, pixels, mask


class CancelFlag:
    """Set by SIGTERM/SIGINT (GIMP quitting, a terminal's Ctrl-C): the client then sends CANCEL and we stop.

    GIMP's own Cancel button on the progress bar SIGKILLs the plug-in after 10 ms, which no code can catch;
    the daemon sees the session vanish (missed heartbeats, ~3 s) and cancels the job itself.
    """

    def __init__(self):
        self.set = False

    def install(self):
        import signal

        def handler(signum, frame):
            self.set = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError):  # not the main thread / not supported here
                pass
        return self

    def __call__(self):
        return self.set


def solve(settings, region, fmt, pixels, mask):
    """Send the region to the daemon; progress into GIMP's progress bar. Returns the protocol Result."""
    from protocol.client import PulseClient  # imports zmq: ImportError is explained to the user
    from protocol.messages import ImageBlob

    image = ImageBlob(region.width, region.height, fmt.channels, fmt.dtype, pixels)
    mask_blob = None if mask is None else ImageBlob(region.width, region.height, 1, "u8", mask)

    def on_state(state):
        Gimp.progress_set_text("PULSE: %s…" % state.replace("_", " "))

    def on_progress(p):
        Gimp.progress_set_text(logic.progress_text(p.step, p.total, p.best_error))
        Gimp.progress_update(logic.progress_fraction(p.step, p.total))

    Gimp.progress_init("PULSE: sending the region to the daemon…")
    with PulseClient(settings.endpoint or None, client_name=logic.CLIENT_NAME,
                     client_version=logic.PLUGIN_VERSION) as client:
        result = client.run_job(image, mask_blob, settings.params(), on_progress=on_progress,
                                on_state=on_state, should_cancel=CancelFlag().install())
    Gimp.progress_update(1.0)
    return result


def paste(image, drawable, plans, fmt):
    """K new layers above `drawable`, best on top and visible, all in one undo group."""
    parent = drawable.get_parent()
    position = image.get_item_position(drawable)
    layer_type = getattr(Gimp.ImageType, fmt.layer_type_name)
    flags = getattr(Gimp, "PARASITE_PERSISTENT", 1) | getattr(Gimp, "PARASITE_UNDOABLE", 2)
    selected = image.get_selected_layers()  # inserting makes the new layer active; we give the choice back
    added = []
    image.undo_group_start()
    try:
        for plan in logic.insertion_order(plans):
            layer = Gimp.Layer.new(image, plan.name, plan.width, plan.height, layer_type, 100.0,
                                   Gimp.LayerMode.NORMAL)
            image.insert_layer(layer, parent, position)
            added.append(layer)
            layer.set_offsets(plan.x, plan.y)
            buffer = layer.get_buffer()
            buffer.set(Gegl.Rectangle.new(0, 0, plan.width, plan.height), fmt.babl, plan.data)
            buffer.flush()
            layer.update(0, 0, plan.width, plan.height)
            layer.set_visible(plan.visible)
            layer.attach_parasite(Gimp.Parasite.new(logic.PARASITE_NAME, flags, list(plan.parasite)))
    except Exception:
        for layer in added:  # a half-pasted result would be worse than none: leave the image as it was
            image.remove_layer(layer)
        raise
    finally:
        image.undo_group_end()
        image.set_selected_layers(selected)
    Gimp.displays_flush()


def run(procedure, run_mode, image, drawables, config, data):
    if len(drawables) != 1:
        return _fail(procedure, "Select exactly one layer to depixelate.", Gimp.PDBStatusType.CALLING_ERROR)
    drawable = drawables[0]
    if run_mode == Gimp.RunMode.INTERACTIVE:
        gi.require_version("GimpUi", "3.0")
        from gi.repository import GimpUi

        GimpUi.init(logic.PROC_NAME)
        dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config)
        dialog.fill(None)
        accepted = dialog.run()
        dialog.destroy()
        if not accepted:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    try:
        settings = logic.settings_from(config.get_property)
        region, fmt, pixels, mask = read_region(image, drawable)
        result = solve(settings, region, fmt, pixels, mask)
        plans = logic.plan_layers(result, region, fmt)
        paste(image, drawable, plans, fmt)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a message; the image stays untouched
        if not isinstance(exc, (logic.UserError, ImportError)) and getattr(exc, "code", None) is None:
            traceback.print_exc(file=sys.stderr)  # a bug, not a user problem: keep the trace for reports
        cancelled = getattr(exc, "code", None) == "CANCELLED"
        return _fail(procedure, logic.user_message(exc),
                     Gimp.PDBStatusType.CANCEL if cancelled else Gimp.PDBStatusType.EXECUTION_ERROR)
    finally:
        Gimp.progress_end()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


class PulseDepixelate(Gimp.PlugIn):
    def do_query_procedures(self):
        return [logic.PROC_NAME]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        Gegl.init(None)
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        procedure.set_image_types(logic.IMAGE_TYPES)
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_menu_label(logic.MENU_LABEL)
        procedure.add_menu_path(logic.MENU_PATH)
        procedure.set_documentation(
            "Imagine a face that matches a pixelated one (PULSE)",
            "Sends the selection to the local PULSE daemon (`pulse-server run`) and adds one layer per "
            "candidate face above the active layer. The faces are invented by a generative model so that "
            "they pixelate back to the input: they do not recover anybody's identity.",
            name,
        )
        procedure.set_attribution("pulse contributors", "pulse contributors", "2026")
        for arg in logic.INT_ARGS:
            procedure.add_int_argument(arg.name, arg.label, arg.blurb, arg.minimum, arg.maximum, arg.default,
                                       GObject.ParamFlags.READWRITE)
        name_, label, blurb, default = logic.ENDPOINT_ARG
        procedure.add_string_argument(name_, label, blurb, default, GObject.ParamFlags.READWRITE)
        return procedure


Gimp.main(PulseDepixelate.__gtype__, sys.argv)
