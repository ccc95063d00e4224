"""Masked entropy (Lazy-XMem eq. 2-4) and its correlation with IoU."""

import numpy as np
import pytest

from napari_lit.bench.runner import entropy_iou_correlation
from napari_lit.core.uncertainty import class_probabilities, dilate, masked_entropy, pixel_entropy


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - centre[0], xx - centre[1]), (np.hypot(yy - centre[0], xx - centre[1]) <= radius)


def test_pixel_entropy_is_normalised():
    assert pixel_entropy(np.array([[0.5], [0.5]]))[0] == pytest.approx(1.0)
    assert pixel_entropy(np.full((3, 1), 1 / 3))[0] == pytest.approx(1.0)
    assert pixel_entropy(np.array([[1.0], [0.0]]))[0] == pytest.approx(0.0, abs=1e-4)
    p = np.array([[0.9], [0.1]])
    assert pixel_entropy(p)[0] == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2), rel=1e-4)
    with pytest.raises(ValueError, match="at least 2 classes"):
        pixel_entropy(np.ones((1, 4)))


def test_class_probabilities():
    one = class_probabilities(np.array([[0.0, 2.0]]))
    np.testing.assert_allclose(one[1], 1 / (1 + np.exp(-np.array([0.0, 2.0]))), rtol=1e-5)
    np.testing.assert_allclose(one.sum(0), 1, rtol=1e-6)
    two = class_probabilities(np.array([[8.0, -8.0, 0.0], [-8.0, 8.0, 0.0]]))
    np.testing.assert_allclose(two.sum(0), 1, rtol=1e-5)
    assert two[1, 0] > 0.99 and two[2, 1] > 0.99  # each object wins where it is sure
    assert two[0, 2] < two[1, 2] + two[2, 2]  # two half-sure objects outweigh the background


def test_dilate_grows_by_the_ratio_of_the_equivalent_radius():
    _, mask = _disk((101, 101), (50, 50), 20)
    np.testing.assert_array_equal(dilate(mask, 0.0), mask)
    grown = dilate(mask, 0.5)  # radius ~ 20 + 10
    r_eq = np.sqrt(mask.sum() / np.pi)
    assert grown.sum() == pytest.approx(np.pi * (r_eq * 1.5) ** 2, rel=0.05)
    assert not dilate(np.zeros((8, 8), bool), 1.0).any()
    with pytest.raises(ValueError, match="2D"):
        dilate(np.zeros((2, 8, 8), bool))
    with pytest.raises(ValueError, match=">= 0"):
        dilate(mask, -1)


def test_masked_entropy_ranks_a_blurred_boundary_above_a_sharp_one():
    dist, _ = _disk((128, 128), (64, 64), 30)
    sharp = (30 - dist)[None] * 4.0  # logits: steep across the boundary
    blurred = (30 - dist)[None] * 0.3
    s, b = masked_entropy(sharp)[0], masked_entropy(blurred)[0]
    assert 0 <= s < b <= 1
    # confidently absent (SAM2's NO_OBJ_SCORE) -> 0; a faint object it nearly found -> > 0
    assert masked_entropy(np.full((1, 64, 64), -1024.0))[0] == 0
    faint = np.full((1, 64, 64), -1024.0)
    faint[0, 20:30, 20:30] = -1.0
    assert masked_entropy(faint)[0] > 0.5
    # several objects: one value each, in order; subsampling barely changes it
    both = np.concatenate([sharp, blurred[:, ::-1]])
    assert masked_entropy(both).shape == (2,)
    full = masked_entropy(blurred, max_side=None)[0]
    assert masked_entropy(blurred, max_side=32)[0] == pytest.approx(full, abs=0.05)
    with pytest.raises(ValueError, match=r"\(O, Y, X\)"):
        masked_entropy(np.zeros((64, 64)))


def test_entropy_iou_correlation():
    j = np.array([1.0, 0.9, 0.5, 0.2, 0.8])
    assert entropy_iou_correlation(1 - j, j) == pytest.approx(1.0)
    assert entropy_iou_correlation(j, j) == pytest.approx(-1.0)
    assert entropy_iou_correlation(np.zeros(5), j) is None  # constant entropy
    rho = entropy_iou_correlation([0.0, 0.1, 0.2, 0.3, 0.4], [1.0, 0.2, 0.9, 0.5, 0.3], exclude=0)
    assert rho == pytest.approx(1 - 6 * 12 / (4 * 15))  # ranks of frames 1-4 only: sum d^2 = 12


def test_propagation_reports_entropy_per_object(predictor, clip):
    from napari_lit.core import Tracker

    frames, labels = clip
    ids = [int(i) for i in np.unique(labels[0]) if i][:2]
    tracker = Tracker(predictor, frames)
    for k, obj in enumerate(ids, start=1):
        tracker.add_mask(0, k, labels[0] == obj)
    values = [r.masked_entropy() for r in tracker.propagate()]
    tracker.close()
    values = np.array(values)
    assert values.shape == (len(frames), 2)
    assert ((values >= 0) & (values <= 1)).all()
    assert values[1:].max() > 0  # propagated frames are not certain everywhere


def test_suggested_click_is_the_certain_core_of_the_mask():
    from napari_lit.core.uncertainty import suggested_click

    dist, _ = _disk((96, 128), (40, 70), 20)
    logits = ((20 - dist) * 2.0)[None]
    y, x = suggested_click(logits)
    assert abs(y - 40) <= 1 and abs(x - 70) <= 1  # farthest from the boundary
    # the same mask, but the model is unsure on its left half: the point moves right
    unsure = logits.copy()
    unsure[0, :, :75] *= 0.02  # the centre column too
    y2, x2 = suggested_click(unsure)
    assert (unsure[0] > 0).sum() == (logits[0] > 0).sum() and x2 >= 75
    # several objects: the point is for the one asked for
    shifted = np.roll(logits, 40, axis=2)
    assert suggested_click(np.concatenate([logits, shifted]), 1)[1] > 100
    assert suggested_click(np.full((1, 8, 8), -5.0)) is None
    with pytest.raises(ValueError, match="index"):
        suggested_click(logits, 1)
