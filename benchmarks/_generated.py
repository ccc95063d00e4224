"""Shared by the calibration scripts: their command line and the generated clips they use.

Thresholds and defaults are chosen on these clips, never on ../shared/data: the scene kinds
of ``CALIBRATION_KINDS`` (``napari_lit.training.synthetic``) in turn, with faster motion than
in training so that tracking fails sometimes; per clip the object with the largest area on
frame 0.
"""

from __future__ import annotations

import argparse

import numpy as np

HARD_MOTION = dict(speed=6.0, deform=0.04, events=1.0)

#: The scene kinds the calibration clips cycle through, pinned so that adding a kind to
#: ``SCENE_KINDS`` does not change the clips behind the shipped temperature, dilation and
#: tau_m: the seven kinds there were when lit-tiny run E's values were fitted (``em`` and
#: ``photo`` came later). ``--kinds`` picks others.
CALIBRATION_KINDS = ("nuclei", "tissue", "zstack", "phase", "ct", "natural", "parts")


def calibration_parser(doc: str, clips: int, seed: int, out: str) -> argparse.ArgumentParser:
    """``--clips --frames --seed --kinds --threads --out`` with these defaults."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--clips", type=int, default=clips)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--kinds", nargs="+", default=list(CALIBRATION_KINDS),
                   help="scene kinds the clips cycle through (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=out)
    return p


def hard_clips(seed: int, n: int, frames: int, size: int = 256, kinds=CALIBRATION_KINDS):
    """Up to ``n`` generated clips as ``(frames (T, H, W, 3) uint8, gt (T, H, W) bool)``,
    clip ``c`` of scene kind ``kinds[c % len(kinds)]``; clips without an object on frame 0
    are left out.

    Raises
    ------
    ValueError
        When a kind is not one of ``napari_lit.training.synthetic.SCENE_KINDS``.
    """
    from napari_lit.training.synthetic import SCENE_KINDS, MotionLevel, generate_clip

    unknown = [k for k in kinds if k not in SCENE_KINDS]
    if unknown or not kinds:
        raise ValueError(f"scene kinds must be some of {SCENE_KINDS}; got {list(kinds)}")
    rng = np.random.default_rng(seed)
    out = []
    for c in range(n):
        clip = generate_clip(rng, frames, size, kind=kinds[c % len(kinds)],
                             motion=MotionLevel(**HARD_MOTION))
        ids, counts = np.unique(clip.labels[0][clip.labels[0] > 0], return_counts=True)
        if len(ids):
            out.append((clip.frames, clip.labels == int(ids[np.argmax(counts)])))
    return out
