"""A small stand-in for Krita's `krita` module (libkis), for the plug-in's fast logic test.

Only what krita_plugin/pulse_depixelate/logic.py calls, with the semantics observed in Krita 5.1.5
(tests/krita_scripts/adapter.py checks the same code against the real thing):
- pixel data is raw bytes in the colour space's own layout (the test decides the BGRA order, not the mock);
- a new paint layer is transparent (all zero bytes) and sized to the canvas;
- Node.addChildNode(child, above) inserts directly above `above`, or on top when `above` is None;
- Document.selection() is None without a selection; Selection.pixelData gives one byte per pixel;
- a "transparencymask" from createNode has no pixels (5.1: no selection behind it; setPixelData does
  nothing); Krita 5.2's createTransparencyMask is not there (tests add it to model 5.2).
"""

from __future__ import annotations

import itertools
import uuid

_SIZES = {"U8": 1, "U16": 2, "F16": 2, "F32": 4}
_CHANNELS = {"RGBA": 4, "GRAYA": 2, "CMYKA": 5, "LABA": 4, "XYZA": 4, "YCbCrA": 4}
_ids = itertools.count()


def _pixel_size(model: str, depth: str) -> int:
    return _CHANNELS[model] * _SIZES[depth]


class Selection:
    def __init__(self, width: int = 0, height: int = 0) -> None:
        self._mask: dict[tuple[int, int], int] = {}

    def select(self, x: int, y: int, w: int, h: int, value: int) -> None:
        for j in range(y, y + h):
            for i in range(x, x + w):
                self._mask[(i, j)] = value

    def _bounds(self) -> tuple[int, int, int, int]:
        pts = [p for p, v in self._mask.items() if v]
        if not pts:
            return 0, 0, 0, 0
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1

    def x(self) -> int:
        return self._bounds()[0]

    def y(self) -> int:
        return self._bounds()[1]

    def width(self) -> int:
        return self._bounds()[2]

    def height(self) -> int:
        return self._bounds()[3]

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:
        return bytes(self._mask.get((i, j), 0) for j in range(y, y + h) for i in range(x, x + w))

    def setPixelData(self, data: bytes, x: int, y: int, w: int, h: int) -> None:
        for j in range(h):
            for i in range(w):
                self._mask[(x + i, y + j)] = data[j * w + i]


class Node:
    def __init__(self, doc: "Document", name: str, type_: str) -> None:
        self._doc, self._name, self._type = doc, name, type_
        self._model, self._depth, self._profile = doc.colorModel(), doc.colorDepth(), doc.colorProfile()
        self._pixels = bytearray(doc.width() * doc.height() * _pixel_size(self._model, self._depth))
        self._visible, self._parent, self._children = True, None, []
        self._selection: Selection | None = None  # a transparency mask's (Krita 5.2 setSelection)
        self._uid = uuid.UUID(int=next(_ids))

    # identity and tree
    def name(self) -> str:
        return self._name

    def setName(self, name: str) -> None:
        self._name = name

    def type(self) -> str:
        return self._type

    def uniqueId(self) -> uuid.UUID:
        return self._uid

    def parentNode(self) -> "Node | None":
        return self._parent

    def childNodes(self) -> list["Node"]:
        return list(self._children)

    def addChildNode(self, child: "Node", above: "Node | None") -> bool:
        index = len(self._children) if above is None else self._children.index(above) + 1
        self._children.insert(index, child)
        child._parent = self
        return True

    def remove(self) -> bool:
        if self._parent is not None:
            self._parent._children.remove(self)
            self._parent = None
        return True

    def visible(self) -> bool:
        return self._visible

    def setSelection(self, selection: Selection) -> None:
        self._selection = selection

    def setVisible(self, value: bool) -> None:
        self._visible = bool(value)

    # colour space
    def colorModel(self) -> str:
        return self._model

    def colorDepth(self) -> str:
        return self._depth

    def colorProfile(self) -> str:
        return self._profile

    def setColorSpace(self, model: str, depth: str, profile: str) -> bool:
        """Real Krita converts the pixels. The mock changes model/depth only on empty layers, and treats a
        profile change as a conversion that keeps the bytes (the real conversion is checked in real Krita)."""
        if (model, depth) != (self._model, self._depth):
            assert not any(self._pixels), "mock: converting non-empty layers between models is not modelled"
            self._pixels = bytearray(self._doc.width() * self._doc.height() * _pixel_size(model, depth))
        self._doc.conversions.append((self._name, self._profile, profile))
        self._model, self._depth, self._profile = model, depth, profile
        return True

    # pixels
    def _psize(self) -> int:
        return _pixel_size(self._model, self._depth)

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:
        if self._type == "transparencymask":
            return b"" if self._selection is None else self._selection.pixelData(x, y, w, h)
        ps, W = self._psize(), self._doc.width()
        return b"".join(bytes(self._pixels[((y + j) * W + x) * ps:((y + j) * W + x + w) * ps]) for j in range(h))

    projectionPixelData = pixelData

    def setPixelData(self, data: bytes, x: int, y: int, w: int, h: int) -> None:
        if self._type == "transparencymask":
            return  # Krita 5.1: a mask made by createNode has no selection to write to
        ps, W = self._psize(), self._doc.width()
        assert len(data) == w * h * ps, (len(data), w, h, ps)
        for j in range(h):
            self._pixels[((y + j) * W + x) * ps:((y + j) * W + x + w) * ps] = data[j * w * ps:(j + 1) * w * ps]


class Document:
    def __init__(self, width: int, height: int, model: str = "RGBA", depth: str = "U8",
                 profile: str = "sRGB-elle-V2-srgbtrc.icc") -> None:
        self._w, self._h, self._model, self._depth, self._profile = width, height, model, depth, profile
        self._selection: Selection | None = None
        self.conversions: list[tuple[str, str, str]] = []  # (layer name, from profile, to profile)
        self.annotations: dict[str, tuple[str, bytes]] = {}
        self._root = Node(self, "root", "grouplayer")
        bg = self.createNode("Background", "paintlayer")
        self._root.addChildNode(bg, None)
        self._active: Node | None = bg
        self.refreshed = 0

    def width(self) -> int:
        return self._w

    def height(self) -> int:
        return self._h

    def colorModel(self) -> str:
        return self._model

    def colorDepth(self) -> str:
        return self._depth

    def colorProfile(self) -> str:
        return self._profile

    def rootNode(self) -> Node:
        return self._root

    def topLevelNodes(self) -> list[Node]:
        return self._root.childNodes()

    def activeNode(self) -> Node | None:
        return self._active

    def setActiveNode(self, node: Node) -> None:
        self._active = node

    def createNode(self, name: str, type_: str) -> Node:
        return Node(self, name, type_)

    def createGroupLayer(self, name: str) -> Node:
        return Node(self, name, "grouplayer")

    def selection(self) -> Selection | None:
        return self._selection

    def setSelection(self, sel: Selection | None) -> None:
        self._selection = sel

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:
        """The projection, modelled as the topmost visible layer (enough for the plug-in's bookkeeping)."""
        visible = [n for n in self._root.childNodes() if n.visible()]
        return visible[-1].pixelData(x, y, w, h)

    def setAnnotation(self, type_: str, description: str, data: bytes) -> None:
        self.annotations[type_] = (description, bytes(data))

    def annotation(self, type_: str) -> bytes:
        return self.annotations.get(type_, ("", b""))[1]

    def refreshProjection(self) -> None:
        self.refreshed += 1


class Krita:
    _instance: "Krita | None" = None

    def __init__(self) -> None:
        self._documents: list[Document] = []
        self._active: Document | None = None
        self.extensions, self.factories, self.settings = [], [], {}

    @classmethod
    def instance(cls) -> "Krita":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def documents(self) -> list[Document]:
        return list(self._documents)

    def activeDocument(self) -> Document | None:
        return self._active

    def createDocument(self, width, height, name, model, depth, profile, resolution) -> Document:
        doc = Document(width, height, model, depth, profile or "sRGB-elle-V2-srgbtrc.icc")
        self._documents.append(doc)
        self._active = doc
        return doc

    def addExtension(self, ext) -> None:
        self.extensions.append(ext)

    def addDockWidgetFactory(self, factory) -> None:
        self.factories.append(factory)

    def dockers(self) -> list:
        return []

    def readSetting(self, group: str, name: str, default: str) -> str:
        return self.settings.get((group, name), default)

    def writeSetting(self, group: str, name: str, value: str) -> None:
        self.settings[(group, name)] = value


# Registration API, so that importing the plug-in package where PyQt5 happens to be installed still works.
class DockWidget:
    pass


class DockWidgetFactoryBase:
    DockRight = 1

    def __init__(self, id_: str, position: int) -> None:
        self.id, self.position = id_, position


class DockWidgetFactory(DockWidgetFactoryBase):
    def __init__(self, id_: str, position: int, klass: type) -> None:
        super().__init__(id_, position)
        self.klass = klass


class Extension:
    def __init__(self, parent=None) -> None:
        self.parent = parent
