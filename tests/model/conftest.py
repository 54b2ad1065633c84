"""Fixtures of the model tests that more than one module uses."""

from __future__ import annotations

import numpy as np
import pytest

from model.model_format import SegmentModel
from model.preprocessing import Preprocessor
from model.segmenter import StreamingSegmenter
from tests.model.model_support import fitted_model


@pytest.fixture(scope="module")
def fitted() -> tuple[SegmentModel, StreamingSegmenter, Preprocessor, np.ndarray]:
    """`fitted_model`, once per module."""
    return fitted_model()
