"""Segmentation quality of one object through a sequence: DAVIS region and boundary scores.

J is the region similarity (Jaccard index, IoU) and F the boundary accuracy (F-measure of
boundary pixels matched within a small tolerance), as defined for DAVIS by Perazzi et al.,
"A Benchmark Dataset and Evaluation Methodology for Video Object Segmentation", CVPR 2016.
J&F is their mean. Written from the paper's definitions with numpy/scipy/scikit-image.

A frame where the object is absent from the ground truth scores 1 (J and F) when the
prediction is empty there too, else 0.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

__all__ = [
    "BOUNDARY_TOLERANCE",
    "jaccard",
    "boundary_tolerance",
    "mask_boundary",
    "f_measure",
    "frame_scores",
    "sequence_scores",
    "click_point",
]

#: Boundary match tolerance as a fraction of the image diagonal (DAVIS).
BOUNDARY_TOLERANCE = 0.008


def _check_pair(pred, gt) -> Tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred)
    g = np.asarray(gt)
    if p.ndim != 2 or g.ndim != 2:
        raise ValueError(f"expected two (Y, X) masks; got shapes {p.shape} and {g.shape}")
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in shape")
    return p.astype(bool, copy=False), g.astype(bool, copy=False)


def jaccard(pred, gt) -> float:
    """Region similarity J: intersection over union of two masks.

    Parameters
    ----------
    pred, gt : (Y, X) array-like of bool
        Predicted and ground-truth masks (nonzero = object).

    Returns
    -------
    float
        ``|pred & gt| / |pred | gt|`` in [0, 1]; 1 if both are empty (absent object, correctly
        predicted absent), 0 if only one is.

    Raises
    ------
    ValueError
        If the masks are not 2D or differ in shape.
    """
    p, g = _check_pair(pred, gt)
    union = np.count_nonzero(p | g)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(p & g) / union)


def boundary_tolerance(shape, fraction: float = BOUNDARY_TOLERANCE) -> int:
    """Boundary match tolerance in pixels: ``ceil(fraction * image diagonal)``, at least 1.

    Parameters
    ----------
    shape : tuple of int
        (Y, X) of the frame.
    fraction : float
        Fraction of the diagonal; 0.008 in DAVIS.

    Returns
    -------
    int
        E.g. 8 px for 480 x 854 frames, 2 px for 128 x 128.
    """
    h, w = int(shape[0]), int(shape[1])
    return max(1, int(math.ceil(fraction * math.hypot(h, w))))


def mask_boundary(mask) -> np.ndarray:
    """One-pixel-wide boundary of a mask: object pixels with a 4-connected background neighbour.

    Parameters
    ----------
    mask : (Y, X) array-like of bool

    Returns
    -------
    (Y, X) bool ndarray
        ``skimage.segmentation.find_boundaries(mask, connectivity=1, mode="inner")``. The image border is not
        a boundary (an object cut by the frame edge has no boundary there).
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if not m.any():
        return np.zeros(m.shape, bool)
    return find_boundaries(m, connectivity=1, mode="inner", background=0)


def _within(boundary: np.ndarray, tol: int) -> np.ndarray:
    """Pixels within ``tol`` px (Euclidean) of ``boundary``: dilation by ``skimage.morphology.disk(tol)``."""
    return ndi.distance_transform_edt(~boundary) <= tol


def f_measure(pred, gt, tolerance: Optional[int] = None) -> float:
    """Boundary accuracy F of a predicted mask against the ground truth.

    Boundary pixels of each mask (:func:`mask_boundary`) count as matched when a boundary
    pixel of the other mask lies within ``tolerance`` px. Precision P is the matched fraction
    of the predicted boundary, recall R that of the ground-truth boundary, and
    ``F = 2 P R / (P + R)`` (Perazzi et al. 2016, eq. 2).

    Parameters
    ----------
    pred, gt : (Y, X) array-like of bool
    tolerance : int, optional
        Match distance in pixels; :func:`boundary_tolerance` of the frame by default.

    Returns
    -------
    float
        In [0, 1]. 1 if both masks are empty, 0 if exactly one is; masks without boundary
        pixels (covering the whole frame) score 1 if both have none, else 0.

    Raises
    ------
    ValueError
        If the masks are not 2D or differ in shape, or ``tolerance`` < 1.
    """
    p, g = _check_pair(pred, gt)
    tol = boundary_tolerance(p.shape) if tolerance is None else int(tolerance)
    if tol < 1:
        raise ValueError(f"tolerance must be >= 1 px, got {tolerance}")
    if not g.any() or not p.any():
        return 1.0 if (not g.any() and not p.any()) else 0.0
    bp, bg = mask_boundary(p), mask_boundary(g)
    if not bp.any() or not bg.any():
        return 1.0 if (not bp.any() and not bg.any()) else 0.0
    # crop to the boundaries' bounding box plus the tolerance: same result, less work
    ys, xs = np.nonzero(bp | bg)
    y0, y1 = max(0, ys.min() - tol - 1), min(p.shape[0], ys.max() + tol + 2)
    x0, x1 = max(0, xs.min() - tol - 1), min(p.shape[1], xs.max() + tol + 2)
    bp, bg = bp[y0:y1, x0:x1], bg[y0:y1, x0:x1]
    precision = np.count_nonzero(bp & _within(bg, tol)) / np.count_nonzero(bp)
    recall = np.count_nonzero(bg & _within(bp, tol)) / np.count_nonzero(bg)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def frame_scores(pred, gt, tolerance: Optional[int] = None) -> Tuple[float, float]:
    """J and F of one frame.

    Parameters
    ----------
    pred, gt : (Y, X) array-like of bool
    tolerance : int, optional
        See :func:`f_measure`.

    Returns
    -------
    (float, float)
        ``(J, F)``; J&F is their mean.

    Raises
    ------
    ValueError
        See :func:`jaccard` and :func:`f_measure`.
    """
    return jaccard(pred, gt), f_measure(pred, gt, tolerance)


def sequence_scores(pred, gt, tolerance: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of one object through a sequence.

    Parameters
    ----------
    pred, gt : (N, Y, X) array-like of bool
        Predicted and ground-truth masks, frame by frame.
    tolerance : int, optional
        See :func:`f_measure`.

    Returns
    -------
    j, f : (N,) float64 ndarrays

    Raises
    ------
    ValueError
        If the stacks are not 3D or differ in shape.
    """
    p = np.asarray(pred)
    g = np.asarray(gt)
    if p.ndim != 3 or p.shape != g.shape:
        raise ValueError(
            f"expected prediction and ground truth of the same (N, Y, X) shape; got {p.shape} and {g.shape}"
        )
    scores = np.array([frame_scores(p[i], g[i], tolerance) for i in range(len(p))], float).reshape(-1, 2)
    return scores[:, 0], scores[:, 1]


def click_point(mask) -> Tuple[int, int]:
    """The interior pixel of a mask farthest from its boundary: where a user would click.

    Parameters
    ----------
    mask : (Y, X) array-like of bool

    Returns
    -------
    (int, int)
        ``(y, x)`` of the maximum of the Euclidean distance transform of the mask, with the
        area outside the frame counted as background (a mask cut by the frame edge is not
        clicked at the edge); the first maximum in row-major order on ties.

    Raises
    ------
    ValueError
        If the mask is not 2D or is empty.
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 2:
        raise ValueError(f"expected a (Y, X) mask; got shape {m.shape}")
    if not m.any():
        raise ValueError("cannot place a click in an empty mask")
    dist = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(y), int(x)
