"""Rebuild examples/astronaut-mosaic.png: a public-domain photo with its face pixelated (16-px blocks).

Source: scikit-image's `skimage.data.astronaut()` — Eileen Collins, NASA portrait, public domain
(no known copyright restrictions). Needs scikit-image (`pip install scikit-image`); the PNG is committed, so
running the demo does not.
"""

from pathlib import Path

import numpy as np
from PIL import Image

CROP = (120, 20, 224, 224)  # x, y, w, h in the 512×512 original
MOSAIC = (44, 44, 128, 128)  # in the crop: 8×8 cells of 16 px over the face
BLOCK = 16


def main() -> None:
    from skimage.data import astronaut

    from pulse_server.pipeline import pixelate

    x, y, w, h = CROP
    crop = np.ascontiguousarray(astronaut()[y : y + h, x : x + w])
    out = Path(__file__).with_name("astronaut-mosaic.png")
    Image.fromarray(pixelate(crop, BLOCK, MOSAIC)).save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
