"""Shared by the calibration scripts: their command line and the generated clips they use.

Thresholds and defaults are chosen on these clips, never on ../shared/data: every scene kind
of ``napari_lit.training.synthetic`` in turn, with faster motion than in training so that
tracking fails sometimes; per clip the object with the largest area on frame 0.
"""

from __future__ import annotations

import argparse

import numpy as np

HARD_MOTION = dict(speed=6.0, deform=0.04, events=1.0)


def calibration_parser(doc: str, clips: int, seed: int, out: str) -> argparse.ArgumentParser:
    """``--clips --frames --seed --threads --out`` with these defaults."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--clips", type=int, default=clips)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=out)
    return p


def hard_clips(seed: int, n: int, frames: int, size: int = 256):
    """Up to ``n`` generated clips as ``(frames (T, H, W, 3) uint8, gt (T, H, W) bool)``;
    clips without an object on frame 0 are left out."""
    from napari_lit.training.synthetic import SCENE_KINDS, MotionLevel, generate_clip

    rng = np.random.default_rng(seed)
    out = []
    for c in range(n):
        clip = generate_clip(rng, frames, size, kind=SCENE_KINDS[c % len(SCENE_KINDS)],
                             motion=MotionLevel(**HARD_MOTION))
        ids, counts = np.unique(clip.labels[0][clip.labels[0] > 0], return_counts=True)
        if len(ids):
            out.append((clip.frames, clip.labels == int(ids[np.argmax(counts)])))
    return out
