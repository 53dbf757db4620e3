"""bench video's standard errors (drift, and the student's gap to the teacher): the spread of per-clip
differences over root n, in points."""

import math

import numpy as np
import pytest

from bench.video import paired_standard_error


def test_standard_error_is_the_paired_difference_spread_over_root_n() -> None:
    early, late = np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0, 1.0])  # differences 1, 0, 0, -1
    assert paired_standard_error(early, late) == pytest.approx(100 * math.sqrt(2 / 3) / 2, abs=0.01)
    assert paired_standard_error(early, early) == 0.0  # no clip differs: no spread
    # the same per-clip spread over 4x the clips halves the error
    many = paired_standard_error(np.tile(early, 4), np.tile(late, 4))
    assert many == pytest.approx(100 * np.std(np.tile(early - late, 4), ddof=1) / 4, abs=0.01)
    assert many < paired_standard_error(early, late) / 1.8
    assert paired_standard_error([0.5, 0.25], [0.25, 0.5]) == pytest.approx(25.0)  # lists, as rows keep them


@pytest.mark.parametrize("a, b", [([0.5], [0.25]), ([0.5, 0.2], [0.1, 0.2, 0.3]), (None, [0.1, 0.2])])
def test_no_standard_error_without_two_paired_clips(a, b) -> None:
    """One clip has no spread; scores of different clip sets, or a row from before per-clip scores, pair nothing."""
    assert paired_standard_error(a, b) is None
