"""bench video's drift standard error: the spread of per-clip early-minus-late differences, in points."""

import math

import numpy as np
import pytest

from bench.video import drift_standard_error


def test_drift_standard_error_is_the_paired_difference_spread_over_root_n() -> None:
    early, late = np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0, 1.0])  # differences 1, 0, 0, -1
    assert drift_standard_error(early, late) == pytest.approx(100 * math.sqrt(2 / 3) / 2, abs=0.01)
    assert drift_standard_error(early, early) == 0.0  # no drift in any clip: no spread
    # the same per-clip spread over 4x the clips halves the error
    many = drift_standard_error(np.tile(early, 4), np.tile(late, 4))
    assert many == pytest.approx(100 * np.std(np.tile(early - late, 4), ddof=1) / 4, abs=0.01)
    assert many < drift_standard_error(early, late) / 1.8
    assert drift_standard_error(np.array([0.5]), np.array([0.25])) is None  # one clip has no spread to measure
