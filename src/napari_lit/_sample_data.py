"""Sample data for napari: generated sequences with their ground truth.

Generated on demand by :mod:`napari_lit.training.synthetic` (the same generator that trains
lit-tiny), with fixed seeds; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_timelapse", "synthetic_zstack"]


def _sample(kind: str, seed: int, n_frames: int, name: str):
    from .training.synthetic import MotionLevel, generate_clip

    clip = generate_clip(np.random.default_rng(seed), n_frames, 256, kind, MotionLevel(2.0, 0.02, 0.3))
    image = clip.frames[..., 0]  # grey microscopy scene: one channel
    return [
        (image, {"name": name}, "image"),
        (clip.labels.astype(np.uint32), {"name": f"{name} ground truth", "opacity": 0.4}, "labels"),
    ]


def synthetic_timelapse():
    """A 24-frame fluorescence-like time-lapse of moving, dividing nuclei (T, Y, X)."""
    return _sample("nuclei", 7, 24, "synthetic time-lapse")


def synthetic_zstack():
    """A 24-slice z-stack through ellipsoids and tubes (Z, Y, X)."""
    return _sample("zstack", 11, 24, "synthetic z-stack")
