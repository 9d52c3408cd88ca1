"""runner.depixelate() with the small real face prior (../shared/priors/celeba32-dcgan.pt) on real mosaics.

The example is a public-domain photo whose face was pixelated with 16-px blocks (examples/README.md). With a
real face prior the search must reach eps on the mosaic's own cells (before any correction), and the
finished patches must keep every invariant of the pipeline without showing the grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pulse_server.pipeline import DepixParams
from pulse_server.runner import depixelate

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "astronaut-mosaic.png"


def test_real_prior_on_example(shared_prior_path: Path) -> None:
    from pulse_server.models.loading import load_prior

    prior, info = load_prior(shared_prior_path)
    image = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    region = np.ascontiguousarray(image[30:200, 30:200])
    res = depixelate(prior, region, None, DepixParams(candidates=2, steps=40, seed=0), model=info.name)
    m = res.mosaic
    assert (m.block, m.phase, m.rect, m.detected) == (16, (14, 14), (14, 14, 128, 128), True)
    assert res.model == "celeba32-dcgan"
    assert res.method == "ilo" and res.stage == 2  # the DCGAN's 8×8 features: 8 cells per side
    # the faces' own mosaics (placed by θ, colour-fitted, before the correction) match eps (random starts ~5e-2)
    assert all(c.eps_reached and c.downscale_mse <= 2e-3 for c in res.candidates)
    x, y, w, h = m.rect
    want = region[y : y + h, x : x + w].astype(np.float64).reshape(8, 16, 8, 16, 3).mean(axis=(1, 3))
    for patch in res.patches:
        sub = patch[y : y + h, x : x + w].astype(np.float64)
        assert np.abs(sub.reshape(8, 16, 8, 16, 3).mean(axis=(1, 3)) - want).mean(axis=(0, 1)).max() <= 1.0
        outside = np.ones(region.shape[:2], bool)
        outside[y : y + h, x : x + w] = False
        assert np.array_equal(patch[outside], region[outside])
        # a face, not a mosaic: strong detail inside the cells
        on_edge = (np.arange(1, w) % 16) == 0
        steps = np.abs(np.diff(sub, axis=1)).mean(axis=2)
        inner, edge = steps[:, ~on_edge].mean(), steps[:, on_edge].mean()
        assert inner > 1.0
        assert edge / inner <= 1.15, f"the grid shows through: steps across cell edges / inside = {edge / inner:.2f}"
