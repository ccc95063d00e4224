"""How exactly the model rebuilds, on the next frame, a mask it holds in memory.

After a correction, SAM2 has the corrected mask of frame t in memory and predicts frame t+1
from it. This measures that single step, per generated scene kind and per evaluation
sequence: for a sample of frames t of each object, a fresh tracker gets the ground-truth
mask of frame t as its prompt and predicts

- ``same_frame``: frame t itself, shown again as the next frame (nothing moved: the mask in
  memory is the answer, so anything below the ceiling is imprecision of the model);
- ``next_frame``: the real frame t+1;

beside

- ``copy``: the mask of frame t scored on frame t+1 (repeating the last mask);
- ``ceiling``: the best the decoder's output grid can do on frame t+1
  (``mask_resolution_ceiling.py``).

Each is the IoU with the ground truth, summarised per group (median, mean, share >= each
tau). Generated clips: every scene kind of ``napari_lit.training.synthetic``, slow motion
(the recipe's ``track-easy`` level), a seed no training step uses. Diagnosis for
docs/benchmarks.md; nothing here sets a default or selects weights, and the evaluation
sequences are only scored.

    python benchmarks/one_step.py [--data ../shared/data/dev] [--model lit-tiny] [--config CFG]
        [--clips 6] [--stride 4] [--out benchmarks/results/one_step.json] [--plot docs/one-step.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _output import write_json

MEASURES = ("same_frame", "next_frame", "copy", "ceiling")
SLOW_MOTION = dict(speed=1.0, deform=0.01, events=0.2)  # the recipe's track-easy stage
SEED = 20_261_126  # not a training seed: the recipe draws from seeds 0.. and 10_000_0xx


def one_step(predictor, frame_t, frame_next, mask_t) -> float:
    """Predict the frame after ``frame_t`` from the ground-truth mask of ``frame_t``.

    Parameters
    ----------
    predictor : sam2.sam2_video_predictor.SAM2VideoPredictor
    frame_t, frame_next : (Y, X) or (Y, X, C) ndarray
        The prompted frame and the frame to predict.
    mask_t : (Y, X) bool ndarray
        Ground truth on ``frame_t`` (the mask prompt).

    Returns
    -------
    (Y, X) bool ndarray
        The predicted mask of ``frame_next``.
    """
    from napari_lit.core import FrameSource, Tracker

    tracker = Tracker(predictor, FrameSource(np.stack([frame_t, frame_next]), image_size=predictor.image_size))
    try:
        tracker.add_mask(0, 1, mask_t)
        for result in tracker.propagate(0, direction="forward"):
            if result.frame_idx == 1:
                return result.mask(1)
    finally:
        tracker.close()
    raise RuntimeError("propagation did not reach the next frame")


def score_pair(predictor, frame_t, frame_next, gt_t, gt_next) -> dict:
    """The four measures (IoU) for one object on one frame pair."""
    from mask_resolution_ceiling import ceiling_iou

    from napari_lit.bench.metrics import jaccard

    low = predictor.image_size // 4
    return {
        "same_frame": jaccard(one_step(predictor, frame_t, frame_t, gt_t), gt_t),
        "next_frame": jaccard(one_step(predictor, frame_t, frame_next, gt_t), gt_next),
        "copy": jaccard(gt_t, gt_next),
        "ceiling": ceiling_iou(gt_next, low),
    }


def summarise(pairs, taus, measures=MEASURES) -> dict:
    """Median, mean and share >= each tau of every measure over a group's frame pairs
    (``pairs``: one dict of IoUs per pair, keyed by measure)."""
    out = {"pairs": len(pairs)}
    for m in measures:
        v = np.array([p[m] for p in pairs])
        out[m] = {"median": float(np.median(v)), "mean": float(v.mean()),
                  **{f"at_least_{t:g}": float((v >= t).mean()) for t in taus}}
    return out


def generated_groups(predictor, clips: int, frames: int = 6, objects: int = 2):
    """Frame pairs of generated clips, grouped by scene kind."""
    from napari_lit.training.synthetic import SCENE_KINDS, MotionLevel, generate_clip

    rng = np.random.default_rng(SEED)
    groups = {}
    for kind in SCENE_KINDS:
        pairs = []
        for _ in range(clips):
            clip = generate_clip(rng, frames, predictor.image_size, kind=kind, motion=MotionLevel(**SLOW_MOTION))
            ids, counts = np.unique(clip.labels[0][clip.labels[0] > 0], return_counts=True)
            for obj in ids[np.argsort(-counts)][:objects]:
                gt = clip.labels == obj
                for t in range(0, frames - 1, 2):
                    if gt[t].any() and gt[t + 1].any():
                        pairs.append(score_pair(predictor, clip.frames[t], clip.frames[t + 1], gt[t], gt[t + 1]))
        groups[kind] = pairs
    return groups


def sequence_groups(predictor, data_dir, stride: int):
    """Frame pairs of the evaluation sequences (every ``stride``-th frame of each object,
    forward), grouped by sequence."""
    from napari_lit.io.dataset import list_sequences, load_sequence

    groups = {}
    for folder in list_sequences(data_dir):
        seq = load_sequence(folder)
        labels = np.asarray(seq.labels)
        pairs = []
        for obj in seq.objects:
            gt = labels == obj
            for t in range(0, len(gt) - 1, stride):
                if gt[t].any() and gt[t + 1].any():
                    pairs.append(score_pair(predictor, np.asarray(seq.image[t]), np.asarray(seq.image[t + 1]),
                                            gt[t], gt[t + 1]))
        groups[seq.name] = pairs
    return groups


def plot(result: dict, path: Path) -> None:
    """Median IoU of each measure per group: generated kinds, then evaluation sequences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"gen: {k}", v) for k, v in result["generated"].items()] + list(result.get("sequences", {}).items())
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=110)
    x = np.arange(len(rows))
    width = 0.2
    colours = {"same_frame": "#1f77b4", "next_frame": "#ff7f0e", "copy": "#7f7f7f", "ceiling": "#2ca02c"}
    labels = {"same_frame": "model, same frame again", "next_frame": "model, next frame",
              "copy": "copy the last mask", "ceiling": "decoder-grid ceiling"}
    for i, m in enumerate(MEASURES):
        ax.bar(x + (i - 1.5) * width, [r[m]["median"] for _, r in rows], width, color=colours[m], label=labels[m])
    for tau in result["taus"]:
        ax.axhline(tau, color="k", lw=0.6, ls=":")
    ax.set_xticks(x, [name for name, _ in rows], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("median IoU")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{result['model']}: one step from a ground-truth mask in memory")
    ax.legend(fontsize=8, ncol=4, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    from napari_lit.bench.runner import machine_info

    import torch

    from napari_lit.models import load_predictor

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data/dev", help="evaluation sequences ('' for generated clips only)")
    p.add_argument("--model", default="lit-tiny")
    p.add_argument("--config", help="Hydra config of a custom checkpoint")
    p.add_argument("--clips", type=int, default=6, help="generated clips per scene kind")
    p.add_argument("--stride", type=int, default=4, help="evaluation sequences: every stride-th frame")
    p.add_argument("--taus", type=float, nargs="+", default=[0.5, 0.85])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/one_step.json")
    p.add_argument("--plot", help="bar chart of the medians (PNG)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = load_predictor(args.model, config=args.config, device="cpu")
    t0 = time.time()
    result = {"model": args.model, "taus": args.taus, "slow_motion": SLOW_MOTION, "seed": SEED, "stride": args.stride,
              "generated": {}, "sequences": {}}
    all_pairs = {"generated": [], "sequences": []}
    for part, groups in (("generated", generated_groups(predictor, args.clips)),
                         ("sequences", sequence_groups(predictor, args.data, args.stride) if args.data else {})):
        for name, pairs in groups.items():
            if not pairs:
                continue
            result[part][name] = summarise(pairs, args.taus)
            all_pairs[part] += pairs
            s = result[part][name]
            print(f"{name:28s} n={s['pairs']:3d}  " + "  ".join(f"{m} {s[m]['median']:.3f}" for m in MEASURES),
                  flush=True)
    result["all"] = {part: summarise(pairs, args.taus) for part, pairs in all_pairs.items() if pairs}
    result["seconds"] = round(time.time() - t0, 1)
    result["machine"] = machine_info()
    for part, s in result["all"].items():
        print(f"ALL {part:24s} n={s['pairs']:3d}  " + "  ".join(f"{m} {s[m]['median']:.3f}" for m in MEASURES))
    out = write_json(result, args.out, indent=1)
    if args.plot:
        plot(result, Path(args.plot))
    print(f"wrote {out}" + (f", {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
