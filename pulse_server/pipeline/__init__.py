"""Selection → face → patch: mosaic analysis, framing for the generator, solve, blend back (see pipeline.py).

Importing this package does not import torch; `depixelate` imports the solver when it runs.
"""

from .framing import Frame, FrameFn, FrameHints, center_frame
from .mosaic import MosaicInfo, block_means, detect_grid, pixelate
from .pipeline import MAX_SIDE, DepixParams, DepixResult, analyze_mosaic, depixelate

__all__ = [
    "depixelate", "DepixParams", "DepixResult", "MosaicInfo", "analyze_mosaic", "detect_grid", "pixelate",
    "block_means", "Frame", "FrameFn", "FrameHints", "center_frame", "MAX_SIDE",
]
