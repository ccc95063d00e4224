"""Tracking J on long generated clips, per scene kind, for one or more checkpoints.

The recipe's validation tracks 8-frame clips; the evaluation videos have 40-80 frames, and a
model that is good for 7 frames can still drift over 40 (its errors feed its own memory). This
tracks every scene kind of ``napari_lit.training.synthetic`` over ``--frames`` frames from the
ground-truth mask of frame 0 (the largest ``--objects`` objects of each clip, one at a time)
and reports, per model and kind, mean J over frames 1-7 (what the recipe validates), over all
frames after the prompt, and over the last 10 frames; and the means over kinds and over the
natural-video-like kinds (``natural``, ``parts``, ``photo``). The clips are drawn from a seed
no training step uses, the same clips for every model. Nothing here is measured on
``shared/data``: it is for asking which generated measure ranks checkpoints as the evaluation
sequences do (docs/training.md).

    python benchmarks/long_clips.py [--models lit-tiny runs/X.pt ...] [--config CFG]
        [--frames 40] [--clips 3] [--objects 2] [--out benchmarks/results/long_clips.json]

``--config`` is the Hydra config of every ``.pt`` model given (lit-tiny's by default).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _output import write_json

SEED = 777_2026  # not a training seed: the recipe draws from seeds 0.. and 10_000_0xx
NATURAL_KINDS = ("natural", "parts", "photo")
WINDOWS = ("first7", "all", "last10")


def track_j(predictor, frames: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """J of each frame when one object is tracked forward from its true mask on frame 0.

    Parameters
    ----------
    predictor : sam2.sam2_video_predictor.SAM2VideoPredictor
    frames : (T, Y, X, 3) uint8 ndarray
    gt : (T, Y, X) bool ndarray
        The object's true masks.

    Returns
    -------
    (T,) float ndarray
        J per frame (frame 0 is the prompt).
    """
    from napari_lit.bench.metrics import jaccard
    from napari_lit.core import FrameSource, Tracker

    tracker = Tracker(predictor, FrameSource(frames, image_size=predictor.image_size))
    j = np.zeros(len(frames))
    try:
        tracker.add_mask(0, 1, gt[0])
        for result in tracker.propagate(0, direction="forward"):
            j[result.frame_idx] = jaccard(result.mask(1), gt[result.frame_idx])
    finally:
        tracker.close()
    return j


def windows(j: np.ndarray) -> dict:
    """Mean J of (N, T) tracks over frames 1-7, all frames after the prompt, the last 10."""
    return {"first7": float(j[:, 1:8].mean()), "all": float(j[:, 1:].mean()), "last10": float(j[:, -10:].mean())}


def draw_clips(kinds, clips: int, frames: int, size: int = 256):
    """The same seeded clips for every model: {kind: [Clip, ...]}."""
    from napari_lit.training.synthetic import MotionLevel, generate_clip

    rng = np.random.default_rng(SEED)
    return {kind: [generate_clip(rng, frames, size, kind=kind, motion=MotionLevel()) for _ in range(clips)]
            for kind in kinds}


def score_model(predictor, clips_by_kind: dict, objects: int) -> dict:
    """Per kind the three window means, plus ``mean`` (over kinds) and ``natural`` (over
    :data:`NATURAL_KINDS`)."""
    out = {"kinds": {}}
    for kind, clips in clips_by_kind.items():
        tracks = []
        for clip in clips:
            ids, counts = np.unique(clip.labels[0][clip.labels[0] > 0], return_counts=True)
            for obj in ids[np.argsort(-counts)][:objects]:
                tracks.append(track_j(predictor, clip.frames, clip.labels == obj))
        out["kinds"][kind] = {**windows(np.array(tracks)), "tracks": len(tracks)}
    for name, group in (("mean", list(out["kinds"])), ("natural", [k for k in NATURAL_KINDS if k in out["kinds"]])):
        if group:
            out[name] = {w: float(np.mean([out["kinds"][k][w] for k in group])) for w in WINDOWS}
    return out


def main(argv=None) -> int:
    import torch

    from napari_lit.bench.runner import machine_info
    from napari_lit.models import load_predictor
    from napari_lit.models.catalogue import LIT_TINY_CONFIG
    from napari_lit.training.synthetic import SCENE_KINDS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["lit-tiny"], help="catalogue names or .pt checkpoints")
    p.add_argument("--config", help="Hydra config of the .pt checkpoints (default: lit-tiny's)")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--clips", type=int, default=3, help="clips per scene kind")
    p.add_argument("--objects", type=int, default=2, help="largest objects tracked per clip")
    p.add_argument("--kinds", nargs="+", default=list(SCENE_KINDS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/long_clips.json")
    args = p.parse_args(argv)
    unknown = sorted(set(args.kinds) - set(SCENE_KINDS))
    if unknown:
        raise ValueError(f"scene kinds must be some of {list(SCENE_KINDS)}; got {unknown}")
    if args.frames < 11:
        raise ValueError(f"--frames must be at least 11 (frames 1-7 and the last 10 are scored); got {args.frames}")
    torch.set_num_threads(args.threads)
    config = args.config or str(LIT_TINY_CONFIG)
    clips = draw_clips(args.kinds, args.clips, args.frames)
    result = {"frames": args.frames, "clips": args.clips, "objects": args.objects, "seed": SEED,
              "machine": machine_info(), "models": {}}
    for model in args.models:
        t0 = time.time()
        predictor = load_predictor(model, config=config if model.endswith(".pt") else None, device="cpu")
        r = score_model(predictor, clips, args.objects)
        r["seconds"] = round(time.time() - t0, 1)
        result["models"][model] = r
        print(f"{model}: " + "  ".join(f"{k} {v['first7']:.2f}/{v['all']:.2f}" for k, v in r["kinds"].items())
              + "  | mean " + "/".join(f"{r['mean'][w]:.3f}" for w in WINDOWS)
              + ("  natural " + "/".join(f"{r['natural'][w]:.3f}" for w in WINDOWS) if "natural" in r else ""),
              flush=True)
    out = write_json(result, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
