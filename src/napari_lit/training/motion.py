"""Smooth random motion and appearance jitter: short training sequences from single images.

Static-image pre-training for video object segmentation (STM, Oh et al. ICCV 2019; XMem,
Cheng & Schwing ECCV 2022) makes a short "video" of a still image by warping it a little more
on each frame. Here each frame's geometry is one affine map (translation, rotation and scale
about the view's centre, whose rates change linearly over the clip, so the motion accumulates
smoothly) followed by a mild elastic deformation (a smooth random displacement field that
grows from none on frame 0 over the clip). Image and masks go through the same maps
(OpenCV ``warpAffine``/``remap``; masks as float coverage, thresholded at 0.5, so they stay
on the pixels they cover). Appearance jitter (brightness, contrast, gamma, Gaussian noise)
changes the grey values only.

All geometry is in pixels of the model's input view (``size`` x ``size``); matrices map
source pixel coordinates ``(x, y, 1)`` (pixel centres at integers, OpenCV's convention) to
view coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["ImageMotion", "Appearance", "view_matrix", "motion_matrices", "elastic_fields", "warp",
           "jitter_appearance"]


@dataclass(frozen=True)
class ImageMotion:
    """How much a single image moves per frame of its pseudo-sequence (view pixels).

    Parameters
    ----------
    speed : float
        Largest translation per frame, px (the start and end velocities are drawn in a disc
        of this radius; the velocity changes linearly between them).
    rotation : float
        Largest rotation per frame, degrees.
    scale : float
        Largest relative scale change per frame (0.02: 2 %).
    elastic : float
        Largest elastic displacement, px.
    elastic_sigma : float
        Smoothness (Gaussian sigma, px) of the elastic displacement field.
    """

    speed: float = 3.0
    rotation: float = 2.0
    scale: float = 0.02
    elastic: float = 3.0
    elastic_sigma: float = 24.0


@dataclass(frozen=True)
class Appearance:
    """Appearance jitter of a clip (on [0, 1] grey values, before ImageNet normalisation).

    Parameters
    ----------
    brightness : float
        Offset drawn from [-brightness, brightness].
    contrast : float
        Contrast factor ``exp(u)``, u in [-contrast, contrast], about 0.5.
    gamma : float
        Gamma ``exp(u)``, u in [-gamma, gamma].
    noise : float
        Largest standard deviation of added Gaussian noise.
    drift : float
        With per-frame jitter: brightness and log-contrast drift by up to this much per frame.
    """

    brightness: float = 0.08
    contrast: float = 0.2
    gamma: float = 0.25
    noise: float = 0.03
    drift: float = 0.01


def _affine3(m: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    out[:2] = m
    return out


def view_matrix(window, size: int, flip: bool = False) -> np.ndarray:
    """The map from source pixels to the view of ``window`` resized to ``size`` x ``size``.

    Parameters
    ----------
    window : (y0, x0, y1, x1)
        Half-open source pixel box (need not be square: a whole frame is squashed to a
        square, as SAM2 resizes its input).
    size : int
        View side, px.
    flip : bool
        Mirror the view left-right.

    Returns
    -------
    (3, 3) float64 ndarray
        Homogeneous matrix of ``(x, y, 1)``; the window's outer pixel edges map to the
        view's (the convention of ``cv2.resize``).

    Raises
    ------
    ValueError
        If the window is empty.
    """
    y0, x0, y1, x1 = (float(v) for v in window)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"window must be non-empty (y0 < y1, x0 < x1), got {window}")
    sy, sx = size / (y1 - y0), size / (x1 - x0)
    m = np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5], [0.0, 0.0, 1.0]])
    if flip:
        m = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
    return m


def motion_matrices(rng: np.random.Generator, n_frames: int, size: int,
                    motion: ImageMotion = ImageMotion()) -> np.ndarray:
    """Per-frame affine maps of a smooth random motion about the view's centre.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_frames : int
    size : int
        View side, px (the motion turns about its centre).
    motion : ImageMotion

    Returns
    -------
    (n_frames, 3, 3) float64 ndarray
        Frame 0 is the identity (the prompt frame is the view itself); translation,
        rotation angle and log-scale are sums of per-frame rates that change linearly
        from a start rate to an end rate, each drawn within ``motion``'s limits.
    """
    def rates(limit: float, dims: int) -> np.ndarray:
        """(n_frames, dims) sums of per-frame rates going linearly from a start to an end rate."""
        if dims == 2:  # velocities in a disc of radius ``limit``
            r = limit * np.sqrt(rng.random(2))
            a = rng.uniform(0, 2 * np.pi, 2)
            start, end = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
        else:
            start, end = rng.uniform(-limit, limit, (2, 1))
        w = np.linspace(0.0, 1.0, max(n_frames - 1, 1))[:, None]
        per_frame = (start + (end - start) * w)[: n_frames - 1]
        return np.concatenate([np.zeros((1, dims)), np.cumsum(per_frame, axis=0)])

    shift = rates(motion.speed, 2)  # (x, y)
    angle = np.deg2rad(rates(motion.rotation, 1)[:, 0])
    log_scale = rates(np.log1p(motion.scale), 1)[:, 0]
    c = (size - 1) / 2.0
    out = np.empty((n_frames, 3, 3))
    for t in range(n_frames):
        s, a = np.exp(log_scale[t]), angle[t]
        rot = np.array([[s * np.cos(a), -s * np.sin(a)], [s * np.sin(a), s * np.cos(a)]])
        out[t] = np.eye(3)
        out[t, :2, :2] = rot
        out[t, :2, 2] = np.array([c, c]) - rot @ np.array([c, c]) + shift[t]
    return out


def elastic_fields(rng: np.random.Generator, n_frames: int, size: int,
                   motion: ImageMotion = ImageMotion()) -> Optional[List[Tuple[np.ndarray, np.ndarray]]]:
    """Per-frame ``cv2.remap`` maps of a mild elastic deformation that changes smoothly.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_frames, size : int
    motion : ImageMotion

    Returns
    -------
    list of (map_x, map_y) or None
        (size, size) float32 sampling positions per frame: the identity grid plus a
        displacement that grows from none (frame 0, the prompt frame, is the view itself)
        along a smooth path -- ``w F1 + 4 w (1 - w) F2 / 2`` at ``w = t / (T - 1)``, F1 and F2
        smooth random fields -- to at most ``elastic`` px (the amplitude drawn from
        [0, elastic]); None when ``motion.elastic`` is 0.
    """
    if motion.elastic <= 0:
        return None
    from scipy.ndimage import gaussian_filter

    amp = rng.uniform(0, motion.elastic)
    fields = []
    for _ in range(2):
        f = gaussian_filter(rng.standard_normal((2, size, size)), (0, motion.elastic_sigma, motion.elastic_sigma),
                            mode="reflect")
        f *= amp / max(float(np.abs(f).max()), 1e-6)
        fields.append(f.astype(np.float32))
    gy, gx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for t in range(n_frames):
        w = t / max(n_frames - 1, 1)
        d = w * fields[0] + 2 * w * (1 - w) * fields[1]
        out.append((gx + d[1], gy + d[0]))
    return out


def warp(image: np.ndarray, matrix: np.ndarray, size: int, maps=None, mask: bool = False) -> np.ndarray:
    """Warp one source image (or mask) into the view.

    Parameters
    ----------
    image : (Y, X) or (Y, X, C) float32 ndarray
        Grey values, or a mask's coverage in [0, 1].
    matrix : (3, 3) ndarray
        Source pixels -> view pixels (:func:`view_matrix`, then motion).
    size : int
    maps : (map_x, map_y), optional
        One frame of :func:`elastic_fields`, applied after the affine map.
    mask : bool
        Outside the source, masks read 0 (images repeat their edge pixels).

    Returns
    -------
    (size, size[, C]) float32 ndarray
        Bilinear samples (a mask's coverage: threshold it at 0.5).
    """
    import cv2

    border = cv2.BORDER_CONSTANT if mask else cv2.BORDER_REPLICATE
    out = cv2.warpAffine(np.ascontiguousarray(image, np.float32), matrix[:2], (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=border, borderValue=0)
    if maps is not None:
        out = cv2.remap(out, maps[0], maps[1], interpolation=cv2.INTER_LINEAR, borderMode=border, borderValue=0)
    return out


def jitter_appearance(rng: np.random.Generator, frames: np.ndarray, appearance: Appearance = Appearance(),
                      per_frame: bool = False) -> np.ndarray:
    """Brightness, contrast, gamma and noise jitter of a clip.

    Parameters
    ----------
    rng : numpy.random.Generator
    frames : (T, Y, X, 3) float32 ndarray
        Values in [0, 1].
    appearance : Appearance
    per_frame : bool
        Let brightness and contrast drift from frame to frame (single-image sequences,
        where nothing else changes the grey values).

    Returns
    -------
    (T, Y, X, 3) float32 ndarray
        In [0, 1]; a new array (``frames`` is not modified).
    """
    n = len(frames)
    b = rng.uniform(-appearance.brightness, appearance.brightness)
    c = rng.uniform(-appearance.contrast, appearance.contrast)
    g = np.exp(rng.uniform(-appearance.gamma, appearance.gamma))
    sigma = rng.uniform(0, appearance.noise)
    steps = np.arange(n)
    if per_frame:
        b = b + rng.uniform(-appearance.drift, appearance.drift) * steps
        c = c + rng.uniform(-appearance.drift, appearance.drift) * steps
    b = np.broadcast_to(b, (n,)).astype(np.float32)
    c = np.exp(np.broadcast_to(c, (n,))).astype(np.float32)
    x = np.power(np.clip(frames, 0, 1).astype(np.float32), np.float32(g))
    x = (x - 0.5) * c[:, None, None, None] + 0.5 + b[:, None, None, None]
    if sigma > 0:
        x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(x, 0, 1).astype(np.float32)
