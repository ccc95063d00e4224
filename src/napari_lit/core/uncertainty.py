"""Masked entropy: how unsure the tracker is about each object on a frame.

Lazy-XMem (Vujasinovic et al. 2024, sec. 3.2): the normalised Shannon entropy of each pixel's
class distribution (eq. 2), restricted to the object's mask dilated by a circular kernel
(eq. 3), summed over that region (eq. 4). Here the sum is divided by the region's size, so
the figure is a mean in [0, 1] that does not grow with the object's size: 0 = every pixel
around the object is certain, 1 = every pixel is a coin toss.

The class distribution comes from SAM2's mask logits, which are per object (independent
sigmoids). With one object there are two classes (object, background); with several, their
probabilities are combined by soft aggregation (as in STM/XMem: background = the product of
the objects' complements, then a softmax over the odds), giving |C| = objects + 1 classes.
Everything is computed from logits the tracker already has: no extra model pass.

Before the sigmoid the logits are divided by the model's temperature (temperature scaling,
Guo et al. 2017, "On calibration of modern neural networks"): a model whose logits are far
too sharp for its accuracy (as lit-tiny's are) has an entropy that is near zero except in a
thin band along the mask's edge, so it measures the mask's shape, not the model's doubt. The
temperature is a property of the model (:attr:`napari_lit.models.ModelSpec.temperature`),
fitted by minimising the pixel-wise negative log-likelihood on generated sequences
(``benchmarks/uncertainty_calibration.py``); dividing by it never changes a mask (the sign
of a logit is kept).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["DEFAULT_DILATION", "model_temperature", "DEFAULT_TAU_U", "DEFAULT_TAU_M", "pixel_entropy", "class_probabilities", "dilate", "masked_entropy", "suggested_click"]

DEFAULT_DILATION = 0.25
"""Dilation radius as a fraction of the object's equivalent radius sqrt(area / pi).
Chosen on generated sequences by ``benchmarks/uncertainty_calibration.py`` at lit-tiny's fitted
temperature (refit for the v2 weights; median Spearman correlation of -entropy with IoU over 60
objects at T = 2.748: 0.34 with 0.25, 0.30 with 0, 0.29 with 0.1, 0.28 with 0.5, 0.24 with 1.0)."""

DEFAULT_TAU_M = 0.4
"""Masked entropy above which a tracked frame is kept out of SAM2's memory (Lazy-XMem's
uncertainty-driven memory update; ``frozen-auto``, ``lit-auto``); chosen on generated
sequences by ``benchmarks/auto_thresholds.py`` at lit-tiny's calibrated temperature, refit for
the v2 weights (fewest corrections of 0.2 to 0.6 and no gate, ties to the gate that keeps out
fewest frames: 33 with 0.2-0.4, 36 with 0.5-0.6, 35 without a gate; the v1 weights chose 0.6)."""

DEFAULT_TAU_U = 0.05
"""Masked-entropy jump from the previous frame that makes self-applied learning (``lit-auto``)
try the adapted decoder on a frame. ``benchmarks/auto_thresholds.py`` found no difference
between 0.005 and infinity on generated sequences with today's lit-tiny (when the entropy
jumps, the object rarely has an adapter yet, and the adapted prediction is seldom surer than
the tracker's own), so this middle value keeps the mechanism active until a better-tracking
model can be calibrated."""

_EPS = 1e-6


def model_temperature(predictor) -> float:
    """The logit temperature napari-lit uses for ``predictor``'s uncertainty: the one
    :func:`napari_lit.models.load_predictor` records (its catalogue entry's), else 1.0 (an
    uncalibrated custom checkpoint is taken as it is)."""
    t = float(getattr(predictor, "napari_lit_temperature", 1.0) or 1.0)
    return t if t > 0 else 1.0


def pixel_entropy(probs: np.ndarray) -> np.ndarray:
    """Normalised pixel entropy (Lazy-XMem eq. 2).

    Parameters
    ----------
    probs : (C, ...) float ndarray
        Class probabilities per pixel (summing to 1 over axis 0), C >= 2.

    Returns
    -------
    (...) float32 ndarray
        ``-sum_c p log p / log C``, in [0, 1].

    Raises
    ------
    ValueError
        If there are fewer than 2 classes.
    """
    probs = np.asarray(probs, np.float32)
    if probs.ndim < 1 or probs.shape[0] < 2:
        raise ValueError(f"entropy needs at least 2 classes along axis 0; got shape {probs.shape}")
    p = np.clip(probs, _EPS, 1.0)
    return (-(p * np.log(p)).sum(axis=0) / np.log(probs.shape[0])).astype(np.float32)


def class_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Per-pixel class distribution from per-object mask logits (soft aggregation).

    Parameters
    ----------
    logits : (O, ...) float ndarray
        SAM2 mask logits of O >= 1 objects.
    temperature : float
        The logits are divided by it first (temperature scaling, see the module's notes).

    Returns
    -------
    (O + 1, ...) float32 ndarray
        Background first, then the objects in the order of ``logits``; sums to 1 over axis 0.
        For one object this is exactly (1 - sigmoid, sigmoid).

    Raises
    ------
    ValueError
        If ``temperature`` is not > 0.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    logits = np.asarray(logits, np.float32) / np.float32(temperature)
    prob = 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))
    if len(prob) == 1:
        return np.concatenate([1 - prob, prob])
    bg = np.prod(1 - prob, axis=0, keepdims=True)
    agg = np.clip(np.concatenate([bg, prob]), _EPS, 1 - _EPS)
    odds = np.log(agg / (1 - agg))
    odds -= odds.max(axis=0, keepdims=True)
    e = np.exp(odds)
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def dilate(mask: np.ndarray, ratio: float = DEFAULT_DILATION) -> np.ndarray:
    """The mask dilated by a circular kernel (Lazy-XMem eq. 3).

    Parameters
    ----------
    mask : (Y, X) bool ndarray
    ratio : float
        Kernel radius as a fraction of the object's equivalent radius ``sqrt(area / pi)``
        (at least 1 pixel); 0 leaves the mask as it is.

    Returns
    -------
    (Y, X) bool ndarray

    Raises
    ------
    ValueError
        On a negative ratio or a mask that is not 2D.
    """
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D (Y, X); got shape {mask.shape}")
    if ratio < 0:
        raise ValueError(f"dilation ratio must be >= 0; got {ratio}")
    area = int(mask.sum())
    if ratio == 0 or area == 0 or area == mask.size:
        return mask.copy()
    radius = max(1.0, ratio * np.sqrt(area / np.pi))
    return distance_transform_edt(~mask) <= radius


#: How :func:`masked_entropy` normalises the entropy summed over an object's region.
NORMALIZATIONS = ("area", "length")


def masked_entropy(logits: np.ndarray, ratio: float = DEFAULT_DILATION, max_side: Optional[int] = 256,
                   temperature: float = 1.0, normalize: str = "area") -> np.ndarray:
    """Masked entropy of each object on one frame (Lazy-XMem eq. 2-4, per pixel of the region).

    Parameters
    ----------
    logits : (O, Y, X) float ndarray
        Mask logits of all O objects of the frame (> 0 is inside).
    ratio : float
        Dilation of each object's mask, see :func:`dilate`.
    max_side : int, optional
        Compute on a grid subsampled to at most this many pixels on the long side (the
        figure is a mean over a region, so it barely changes; the cost does). None: full
        resolution.
    temperature : float
        Logit temperature of the model (see :func:`model_temperature`).
    normalize : {"area", "length"}
        ``"area"`` (Lazy-XMem eq. 4, the default): the entropy summed over the region divided
        by the region's size. ``"length"``: divided by the square root of its size instead,
        the region's length scale, so the figure is the entropy per pixel of boundary length
        (the uncertain band along the boundary, whatever the object's size). Eq. 4 makes a
        mask that leaks into the background look surer (its confident interior grows the
        denominator); per length it does not. Not used by the widget or ``lit-auto`` (their
        thresholds are on the eq. 4 scale); see docs/benchmarks.md.

    Returns
    -------
    (O,) float32 ndarray
        ``"area"``: mean normalised entropy over each object's dilated mask, in [0, 1];
        ``"length"``: that mean times the square root of the region's size in pixels (of the
        grid it is computed on), in [0, sqrt(region size)]. An object with an empty mask is
        scored over the pixels where its probability is >= 0.1 (a faint object SAM2 nearly
        found), and 0 when there is none (confidently absent).

    Raises
    ------
    ValueError
        If ``logits`` is not (O, Y, X) with O >= 1, ``temperature`` <= 0, or ``normalize``
        is not one of :data:`NORMALIZATIONS`.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3 or len(logits) == 0:
        raise ValueError(f"logits must be (O, Y, X) with at least one object; got shape {logits.shape}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}; got {normalize!r}")
    if max_side is not None and max(logits.shape[1:]) > max_side:
        step = int(np.ceil(max(logits.shape[1:]) / max_side))
        logits = logits[:, ::step, ::step]
    probs = class_probabilities(logits, temperature)
    ent = pixel_entropy(probs)
    out = np.zeros(len(logits), np.float32)
    for i in range(len(logits)):
        mask = logits[i] > 0
        region = dilate(mask, ratio) if mask.any() else probs[i + 1] >= 0.1
        if region.any():
            out[i] = float(ent[region].mean())
            if normalize == "length":
                out[i] *= float(np.sqrt(region.sum()))
    return out


def suggested_click(logits: np.ndarray, index: int = 0, ratio: float = 0.0,
                    temperature: float = 1.0):
    """Where to click on object ``index`` of a frame: the point of Lazy-XMem eq. 5-6.

    The pixel of the object's dilated mask that is farthest from the mask's boundary
    (eq. 5, a distance field) and most certain (weighted by 1 - pixel entropy, eq. 6):
    ``argmax M_d * E * (1 - S)``. On a wrong frame it marks the core of what the model
    segments, the natural place for a confirming positive click (or, if that core is wrong,
    for a negative one).

    Parameters
    ----------
    logits : (O, Y, X) float ndarray
        Mask logits of all objects of the frame (> 0 is inside).
    index : int
        Which object (position along axis 0).
    ratio : float
        Dilation of the mask, see :func:`dilate`. Default 0 (the mask itself), not the
        entropy's :data:`DEFAULT_DILATION`: eq. 5 measures the distance to the boundary on
        both sides, so with a ring as wide as the object's radius a background point could
        win, and the hint is meant as a positive click on the object's core.
    temperature : float
        Logit temperature of the model (see :func:`model_temperature`).

    Returns
    -------
    (y, x) : (int, int) or None
        Pixel coordinates at the logits' resolution; None when the object's mask is empty.

    Raises
    ------
    ValueError
        If ``logits`` is not (O, Y, X) or ``index`` is out of range.
    """
    from scipy.ndimage import distance_transform_edt

    logits = np.asarray(logits)
    if logits.ndim != 3 or not 0 <= index < len(logits):
        raise ValueError(f"logits must be (O, Y, X) and index in [0, O); got shape {logits.shape}, index {index}")
    mask = logits[index] > 0
    if not mask.any():
        return None
    region = dilate(mask, ratio)
    # distance to the boundary Omega of the mask, on both sides of it (eq. 5)
    dist = np.where(mask, distance_transform_edt(mask), distance_transform_edt(~mask))
    certainty = 1 - pixel_entropy(class_probabilities(logits, temperature))
    score = np.where(region, dist * certainty, -1.0)
    y, x = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(y), int(x)
