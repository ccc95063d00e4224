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


def test_a_leak_looks_surer_per_area_but_not_per_length():
    """The same boundary blur on an object and on a mask that leaked to twice its radius:
    eq. 4 (per area) scores the leak about half as uncertain, since its confident interior
    grows the denominator; per length (sqrt of the region size) the two score alike. A
    blurrier boundary still ranks above a sharp one per length."""
    d_obj, _ = _disk((256, 256), (128, 128), 25)
    d_leak, _ = _disk((256, 256), (128, 128), 50)
    obj, leak = (25 - d_obj)[None] * 0.5, (50 - d_leak)[None] * 0.5
    area = masked_entropy(obj, max_side=None)[0], masked_entropy(leak, max_side=None)[0]
    length = (masked_entropy(obj, max_side=None, normalize="length")[0],
              masked_entropy(leak, max_side=None, normalize="length")[0])
    assert area[1] < 0.6 * area[0]
    assert length[1] == pytest.approx(length[0], rel=0.15)
    # "length" is the per-area figure times the square root of the region's size
    region = dilate(obj[0] > 0, 0.25).sum()
    assert length[0] == pytest.approx(area[0] * np.sqrt(region), rel=1e-5)
    sharp = (25 - d_obj)[None] * 4.0
    assert masked_entropy(sharp, normalize="length")[0] < masked_entropy(obj, normalize="length")[0]
    with pytest.raises(ValueError, match="normalize must be one of"):
        masked_entropy(obj, normalize="perimeter")


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
    assert (values[0] == 0).all()  # frame 0 shows the masks the user gave, not a prediction


def test_a_clicked_frame_is_a_prediction_and_has_entropy(predictor, clip, object_on_frame0):
    from napari_lit.core import Tracker
    from scipy.ndimage import distance_transform_edt

    frames, _ = clip
    _, mask = object_on_frame0
    y, x = np.unravel_index(np.argmax(distance_transform_edt(mask)), mask.shape)
    tracker = Tracker(predictor, frames)
    clicked = tracker.add_points(0, 1, [[y, x]], [1])
    given = tracker.add_mask(2, 1, mask)
    tracker.close()
    assert clicked.given == () and clicked.masked_entropy()[0] > 0
    assert given.given == (1,) and given.masked_entropy()[0] == 0


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


def test_temperature_softens_the_probabilities_but_never_a_mask():
    dist, _ = _disk((128, 128), (64, 64), 30)
    logits = ((30 - dist) * 4.0)[None]
    np.testing.assert_allclose(class_probabilities(logits, 4.0), class_probabilities(logits / 4.0), rtol=1e-6)
    sharp, soft = masked_entropy(logits)[0], masked_entropy(logits, temperature=4.0)[0]
    assert soft > sharp  # wider band of doubt around the same boundary
    # the where-to-click point is still the core of the (unchanged) mask
    from napari_lit.core.uncertainty import suggested_click

    y, x = suggested_click(logits, temperature=4.0)
    assert abs(y - 64) <= 1 and abs(x - 64) <= 1
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            masked_entropy(logits, temperature=bad)


def test_lit_tiny_temperature_is_calibrated(predictor):
    """The shipped temperature (fitted by benchmarks/uncertainty_calibration.py on other
    generated clips) lowers the pixel-wise negative log-likelihood of lit-tiny's tracked
    masks on held-out generated clips where tracking fails sometimes (fast motion, as in the
    calibration), and every result the tracker gives carries it."""
    from napari_lit.core import Tracker
    from napari_lit.models import MODELS
    from napari_lit.training.synthetic import MotionLevel, generate_clip

    temperature = MODELS["lit-tiny"].temperature
    assert predictor.napari_lit_temperature == temperature > 1
    rng = np.random.default_rng(7)  # the calibration uses seed 1234 at 256 px

    def nll(logits, target, t):
        s = logits.astype(np.float64) / t
        return float((np.maximum(s, 0) - s * target + np.log1p(np.exp(-np.abs(s)))).mean())

    at_t, at_1 = [], []
    for kind in ("tissue", "natural"):
        c = generate_clip(rng, 8, 128, kind=kind, motion=MotionLevel(speed=6.0, deform=0.04, events=1.0))
        ids, counts = np.unique(c.labels[0][c.labels[0] > 0], return_counts=True)
        gt = c.labels == int(ids[np.argmax(counts)])
        tracker = Tracker(predictor, c.frames)
        tracker.add_mask(0, 1, gt[0])
        results = [r for r in tracker.propagate() if r.frame_idx > 0]
        tracker.close()
        assert all(r.temperature == temperature for r in results)
        at_t += [nll(r.logits[0], gt[r.frame_idx], temperature) for r in results]
        at_1 += [nll(r.logits[0], gt[r.frame_idx], 1.0) for r in results]
    assert np.mean(at_t) < np.mean(at_1)
    # the entropy the tracker reports is the one at that temperature
    r = results[-1]
    assert r.masked_entropy()[0] == pytest.approx(masked_entropy(r.logits, temperature=temperature)[0], abs=1e-6)


def test_suggested_click_stays_on_the_object_with_the_entropy_dilation():
    """The entropy's default dilation (a ring as wide as the object's radius) does not pull the
    hint off the object: the click is chosen inside the mask unless a dilation is asked for."""
    from napari_lit.core.uncertainty import DEFAULT_DILATION, suggested_click

    dist, _ = _disk((128, 128), (40, 64), 12)
    logits = ((12 - dist) * 6.0)[None]  # small object near the top; wide, sure background below
    y, x = suggested_click(logits, temperature=4.0)
    assert abs(y - 40) <= 1 and abs(x - 64) <= 1
    # with the ring asked for, the point is still within it (eq. 6 over M_d)
    y2, x2 = suggested_click(logits, ratio=DEFAULT_DILATION, temperature=4.0)
    assert np.hypot(y2 - 40, x2 - 64) <= 12 * (1 + DEFAULT_DILATION) + 1
