"""The one boundary between the editor's pixel formats and the pipeline's float RGB.

Editors hand us (H, W, C) arrays with C = 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) in uint8, uint16
or float32 (float in [0, 1]). Everything inside the pipeline works on float32 RGB in [0, 1] plus an
optional float alpha; `to_working` goes in, `from_working` comes back out, nothing else converts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PipelineError

_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}


@dataclass(frozen=True)
class PixelFormat:
    """What the editor sent: restored exactly on the way out."""

    channels: int  # 1 G, 2 GA, 3 RGB, 4 RGBA
    dtype: np.dtype

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def grey(self) -> bool:
        return self.channels in (1, 2)

    @property
    def scale(self) -> float:
        return _SCALE[self.dtype]


def check_region(region: np.ndarray) -> PixelFormat:
    """Validate shape/dtype/values of an editor region; PipelineError with a message a user can act on."""
    if not isinstance(region, np.ndarray):
        raise PipelineError(f"region must be a numpy array, got {type(region).__name__}")
    if region.ndim == 2:
        raise PipelineError("region must be (H, W, C); got a 2-D array (add a channel axis for grey)")
    if region.ndim != 3 or region.shape[2] not in (1, 2, 3, 4):
        raise PipelineError(f"region must be (H, W, C) with C in 1..4, got shape {region.shape}")
    dtype = np.dtype(region.dtype)
    if dtype not in _SCALE:
        raise PipelineError(f"unsupported pixel type {dtype}: use uint8, uint16 or float32", code="BAD_FORMAT")
    require_finite(region)
    return PixelFormat(channels=region.shape[2], dtype=dtype)


def require_finite(pixels: np.ndarray) -> None:
    """Refuse NaN and ±inf float pixels, before anything clips them into [0, 1]: an infinite pixel is a broken
    image, not a bright one. The one check of `solve` and `depixelate`, in the CLIs and in the daemon alike."""
    if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
        raise PipelineError("region contains NaN or infinite float pixels", code="BAD_PIXELS")


def to_working(region: np.ndarray, fmt: PixelFormat) -> tuple[np.ndarray, np.ndarray | None]:
    """Editor pixels -> (rgb float32 (H, W, 3) in [0, 1], alpha float32 (H, W) or None)."""
    f = region.astype(np.float32) / np.float32(fmt.scale)
    if fmt.dtype == np.float32:
        f = np.clip(f, 0.0, 1.0)  # HDR/out-of-gamut floats: the generator only knows [0, 1]
    colour = f[..., :1] if fmt.grey else f[..., :3]
    rgb = np.repeat(colour, 3, axis=2) if fmt.grey else np.ascontiguousarray(colour)
    alpha = f[..., -1] if fmt.has_alpha else None
    return rgb, alpha


def from_working(rgb: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """float RGB (H, W, 3) -> the editor's colour channels (H, W, 1|3) in its dtype (no alpha)."""
    colour = rgb_to_grey(rgb)[..., None] if fmt.grey else rgb
    colour = np.clip(colour, 0.0, 1.0)
    if fmt.dtype == np.float32:
        return colour.astype(np.float32)
    return np.rint(colour * fmt.scale).astype(fmt.dtype)


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """Rec. 709 luma of a float RGB image; the inverse of repeating a grey channel three times."""
    return (rgb @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)).astype(np.float32)
