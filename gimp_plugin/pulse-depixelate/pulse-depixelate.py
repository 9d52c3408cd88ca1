#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters ▸ Enhance ▸ Depixelate Face (PULSE)…

A thin adapter between GIMP and the local PULSE daemon: it reads the selected region (pixels in the drawable's
own bit depth, plus the selection mask) through Gegl buffers, sends it with the `protocol` client that the
installer copied next to this file, and pastes the K returned faces as one layer group of K masked layers,
in one undo step.
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
import pulse_gimp as logic  # noqa: E402
from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: E402

from protocol.editor_messages import is_bug, is_cancel  # noqa: E402


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


def _is_result(item):
    """Our own tag: the parasite on every PULSE group and face layer."""
    return item.get_parasite(logic.PARASITE_NAME) is not None


def _siblings(image, item):
    parent = item.get_parent()
    return list(parent.get_children()) if parent is not None else list(image.get_layers())


def source_layer(image, drawable):
    """The layer to read: the active one, or, when it is a PULSE result, the photo layer beneath its run.

    -> (layer, note): note says why it is not the active layer ("" when it is).
    """
    if isinstance(drawable, Gimp.Layer) and drawable.is_layer_mask():  # painting a face's mask: its layer
        drawable = Gimp.Layer.from_mask(drawable)
    if not isinstance(drawable, Gimp.Item):
        return drawable, ""
    top = None  # the outermost PULSE item around the active one: its run's group
    item = drawable
    while item is not None:
        if _is_result(item):
            top = item
        item = item.get_parent()
    if top is None:
        return drawable, ""
    siblings = _siblings(image, top)
    below = siblings[siblings.index(top) + 1:]
    choice = logic.pick_source(drawable.get_name(), True,
                               [(layer.get_name(), _is_result(layer), layer.is_group()) for layer in below])
    return below[choice.index], choice.note


def insert_position(image, source):
    """(parent, position) for the new group: above `source` and the earlier runs right on top of it."""
    siblings = _siblings(image, source)
    return source.get_parent(), logic.insert_position([_is_result(s) for s in siblings], siblings.index(source))


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


def all_layer_names(image):
    """Every layer's name, inside groups too: GIMP keeps them unique across the whole image."""
    names, stack = [], list(image.get_layers())
    while stack:
        layer = stack.pop()
        names.append(layer.get_name())
        if layer.is_group():
            stack.extend(layer.get_children())
    return names


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


def solve(settings, region, fmt, pixels, mask, lead="", ask=None):
    """Send the region to the daemon; progress into GIMP's progress bar. Returns the protocol Result.

    The client checks the settings against the daemon's own ranges (WELCOME) before it sends anything. The progress
    text says what the job is doing and how long it takes (ACCEPTED's estimate), what the daemon detected
    (JOB_STATE after its analysis) and the time left (PROGRESS). `lead` goes before it (which layer is read,
    when it is not the active one). `ask` (question, detail) -> bool is asked when the daemon finds no
    mosaic; None (a script): that refusal is the run's error. On Yes the same region goes again, forced.
    """
    from protocol.client import PulseClient  # imports zmq: ImportError is explained to the user
    from protocol.editor_progress import JobView
    from protocol.editor_settings import model_for_estimate
    from protocol.messages import ImageBlob
    from protocol.no_mosaic import submit_or_ask

    image = ImageBlob(region.width, region.height, fmt.channels, fmt.dtype, pixels)
    mask_blob = None if mask is None else ImageBlob(region.width, region.height, 1, "u8", mask)
    prefix = f"{lead} — " if lead else ""

    Gimp.progress_init(f"{prefix}PULSE: sending {region.width}×{region.height} pixels to the daemon…")
    cancel = CancelFlag().install()
    with PulseClient(settings.endpoint or None, client_name=logic.CLIENT_NAME,
                     client_version=logic.PLUGIN_VERSION) as client:
        welcome = client.connect()
        view = JobView(device=str(welcome.device), model=model_for_estimate(settings.job, welcome))

        def show(update):
            def handler(msg):
                update(msg)
                Gimp.progress_set_text(f"{prefix}PULSE: {view.text()}")
                Gimp.progress_update(view.fraction)
            return handler

        def submit(params):
            return client.run_job(image, mask_blob, params, on_progress=show(view.progress),
                                  on_accepted=show(view.accepted), on_job_state=show(view.job_state),
                                  should_cancel=cancel)

        result = submit_or_ask(submit, settings.params(), ask)
    Gimp.progress_update(1.0)
    return result


_ui_ready = []


def _init_ui():
    """GimpUi once per plug-in run: the settings dialog and the question may both need it."""
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi

    if not _ui_ready:
        GimpUi.init(logic.PROC_NAME)
        _ui_ready.append(True)
    return GimpUi


def ask_yes_no(question, detail):
    """A modal yes/no question whose default (Return, Escape, closing it) is No."""
    GimpUi = _init_ui()
    gi.require_version("Gtk", "3.0")
    from gi.repository import Gtk

    dialog = Gtk.MessageDialog(modal=True, message_type=Gtk.MessageType.QUESTION,
                               buttons=Gtk.ButtonsType.YES_NO, text=question)
    dialog.set_title(logic.QUESTION_TITLE)
    dialog.format_secondary_text(detail)
    dialog.set_default_response(Gtk.ResponseType.NO)
    no_button = dialog.get_widget_for_response(Gtk.ResponseType.NO)
    if no_button is not None:
        no_button.grab_focus()  # Return answers No unless the user picks Yes
    set_transient = getattr(GimpUi, "window_set_transient", None)
    if set_transient is not None:
        set_transient(dialog)  # above GIMP's image window, not lost behind it
    answer = dialog.run() == Gtk.ResponseType.YES
    dialog.destroy()
    while Gtk.events_pending():  # the dialog leaves the screen before the job blocks this process again
        Gtk.main_iteration()
    return answer


def _mask_for(layer, plan):
    """A layer mask holding the plan's coverage: what shows of the face is the mask's business."""
    mask = layer.create_mask(Gimp.AddMaskType.WHITE)
    layer.add_mask(mask)
    buffer = mask.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, plan.width, plan.height), logic.MASK_FORMAT, plan.mask)
    buffer.flush()
    mask.update(0, 0, plan.width, plan.height)
    return mask


def _tag(item, data):
    # Persistent but not undoable, attached before the item is in the image: GIMP then records no undo step
    # for it at all; the tag comes and goes with its layer. (An UNDOABLE parasite pushed an undo group of its
    # own per layer, which GIMP's redo answered with a Gimp-Core-CRITICAL about undo_group_end.)
    item.attach_parasite(Gimp.Parasite.new(logic.PARASITE_NAME, getattr(Gimp, "PARASITE_PERSISTENT", 1),
                                           list(data)))


def paste(image, source, plan, fmt):
    """One group above `source` (and its earlier runs) with one masked layer per candidate, best on top;
    ONE undo step.

    Leaves the best face active (visible), so the next stroke goes to a layer the user can see.
    """
    parent, position = insert_position(image, source)
    layer_type = getattr(Gimp.ImageType, fmt.layer_type_name)
    layers, group = [], None
    image.undo_group_start()
    try:
        group = Gimp.GroupLayer.new(image, plan.group_name)
        _tag(group, plan.group_parasite)
        if not image.insert_layer(group, parent, position):
            group = None
            raise RuntimeError(f"GIMP refused to add the layer group {plan.group_name!r}")
        for rank, spec in enumerate(plan.layers):
            layer = Gimp.Layer.new(image, spec.name, spec.width, spec.height, layer_type, 100.0,
                                   Gimp.LayerMode.NORMAL)
            _tag(layer, spec.parasite)
            image.insert_layer(layer, group, rank)  # rank order inside the group: best on top
            layer.set_offsets(spec.x, spec.y)
            buffer = layer.get_buffer()
            buffer.set(Gegl.Rectangle.new(0, 0, spec.width, spec.height), fmt.babl, spec.data)
            buffer.flush()
            layer.update(0, 0, spec.width, spec.height)
            _mask_for(layer, spec)
            layer.set_visible(spec.visible)
            layers.append(layer)
    except Exception:
        if group is not None:
            image.remove_layer(group)  # a half-pasted result would be worse than none: all of it goes
        raise
    finally:
        image.undo_group_end()
    image.set_selected_layers([layers[0]])
    Gimp.displays_flush()
    return group


def _dialog(procedure, config):
    """The settings dialog: what it does in one line, the everyday fields, the daemon's address folded away."""
    GimpUi = _init_ui()
    dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config)
    intro = dialog.get_label("pulse-intro", logic.DESCRIPTION, False, False)
    intro.set_line_wrap(True)
    intro.set_max_width_chars(50)
    intro.set_xalign(0.0)
    dialog.get_label("pulse-advanced-title", logic.ADVANCED_LABEL, False, False)
    dialog.fill_box("pulse-advanced-box", [logic.ENDPOINT])
    dialog.fill_expander("pulse-advanced", "pulse-advanced-title", False, "pulse-advanced-box")
    dialog.fill(["pulse-intro"] + list(logic.DIALOG_FIELDS) + ["pulse-advanced"])
    accepted = dialog.run()
    dialog.destroy()
    return accepted


def _endpoint_tried(endpoint):
    from protocol.endpoint import default_endpoint  # stdlib only

    return endpoint or default_endpoint()


def run(procedure, run_mode, image, drawables, config, data):
    if len(drawables) != 1:
        return _fail(procedure, "Select exactly one layer to depixelate.", Gimp.PDBStatusType.CALLING_ERROR)
    if run_mode == Gimp.RunMode.INTERACTIVE and not _dialog(procedure, config):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    endpoint = str(config.get_property(logic.ENDPOINT) or "").strip()
    ask = ask_yes_no if logic.asks_before_forcing(run_mode.value_nick) else None
    try:
        settings = logic.settings_from(config.get_property, interactive=run_mode != Gimp.RunMode.NONINTERACTIVE)
        source, note = source_layer(image, drawables[0])
        region, fmt, pixels, mask = read_region(image, source)
        result = solve(settings, region, fmt, pixels, mask, lead=note, ask=ask)
        plan = logic.plan_paste(result, region, fmt, all_layer_names(image), mask)
        paste(image, source, plan, fmt)
        Gimp.message(logic.done_message(plan, note))
    except Exception as exc:  # every failure becomes a message; the image stays untouched
        if is_bug(exc) and not isinstance(exc, logic.UserError):
            traceback.print_exc(file=sys.stderr)  # a bug, not a user problem: keep the trace for reports
        # The user's own No to "depixelate anyway?" ends the run like Cancel: nothing to report as an error.
        return _fail(procedure, logic.user_message(exc, _endpoint_tried(endpoint)),
                     Gimp.PDBStatusType.CANCEL if is_cancel(exc) else Gimp.PDBStatusType.EXECUTION_ERROR)
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
            logic.DESCRIPTION,
            "Sends the selection to the local PULSE daemon (`pulse-server run`) and adds a layer group above "
            "the active layer (\"PULSE run N — B px blocks\") with one masked layer per candidate face. The "
            "faces are invented by a generative model so that they pixelate back to the input: they do not "
            "recover anybody's identity. Run on a PULSE result, it depixelates the photo layer beneath it.",
            name,
        )
        procedure.set_attribution("pulse contributors", "pulse contributors", "2026")
        for arg in logic.ARGS:  # the contract's parameters, then the endpoint and (scripts only) force
            if arg.kind is int:
                procedure.add_int_argument(arg.name, arg.label, arg.blurb, int(arg.minimum), int(arg.maximum),
                                           arg.default, GObject.ParamFlags.READWRITE)
            elif arg.kind is float:
                procedure.add_double_argument(arg.name, arg.label, arg.blurb, arg.minimum, arg.maximum,
                                              arg.default, GObject.ParamFlags.READWRITE)
            elif arg.kind is bool:
                procedure.add_boolean_argument(arg.name, arg.label, arg.blurb, arg.default,
                                               GObject.ParamFlags.READWRITE)
            else:
                procedure.add_string_argument(arg.name, arg.label, arg.blurb, arg.default,
                                              GObject.ParamFlags.READWRITE)
        return procedure


Gimp.main(PulseDepixelate.__gtype__, sys.argv)
