"""Selection → observation → patch: mosaic analysis and the cells the solver fits (`prepare`), placing,
correcting and blending the faces it finds (`finish`); see pipeline.py. `runner.depixelate` joins them.

Importing this package does not import torch; `finish` imports it when it runs.
"""

from .mosaic import MosaicInfo, block_means, detect_grid, pixelate
from .observation import Observation
from .pipeline import MAX_SIDE, DepixParams, DepixResult, Prepared, analyze_mosaic, finish, prepare

__all__ = [
    "prepare", "finish", "DepixParams", "DepixResult", "Prepared", "Observation", "MosaicInfo", "analyze_mosaic",
    "detect_grid", "pixelate", "block_means", "MAX_SIDE",
]
