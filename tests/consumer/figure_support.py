"""Checks of the PNG figures `report` and `tune-k` write."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np


def assert_real_image(path: Path) -> None:
    """``path`` is a picture of some size with more than a few colours, not a blank."""
    image = mpimg.imread(path)
    assert image.shape[0] >= 200 and image.shape[1] >= 200, (path.name, image.shape)
    pixels = image.reshape(-1, image.shape[-1])
    assert len(np.unique(pixels[::7], axis=0)) > 10, f"{path.name} is a single colour"
