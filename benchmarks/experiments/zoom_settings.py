"""Choose the object-centred zoom's numbers on held-out *training* sequences (not dev).

Tracks every object of a few ``../shared/train`` sequences from its first annotated mask
(forward and backward) and scores J on the frames that are annotated for it (CTC MSC is
annotated on some frames only: ``annotated_frames`` / ``complete_frames`` in its meta.json),
for zoom off and several :class:`~napari_lit.core.zoom.ZoomConfig` settings, with the static
and optical-flow peers beside them; and, for the nuclei sequences, the IoU of the mask one
click makes on its frame. Writes one JSON and prints a table.

    .venv/bin/python benchmarks/experiments/zoom_settings.py --out benchmarks/experiments/results/zoom_settings.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _output import write_json  # noqa: E402

TRAIN = ROOT.parent / "shared" / "train"
SEQUENCES = ["ctc-fluo-simplus-02", "ctc-fluo-msc-01", "segtrackv2-bmx", "davis16-bear", "davis16-boat",
             "davis16-dog-agility", "davis16-kite-walk", "davis16-mallard-fly", "davis16-paragliding",
             "davis16-soccerball", "davis16-surf"]
SETTINGS = {
    "default": {},
    "context3": {"context": 3.0},
    "context6": {"context": 6.0},
    "click0.5": {"click_scales": (0.5,)},
    "click2": {"click_scales": (2.0,)},
    "margin0.2": {"margin": 0.2},
    "band1.25": {"band": 1.25},
    "share0.5": {"frame_share": 0.5},
    "c3-margin0.2": {"context": 3.0, "margin": 0.2},
    "c3-click0.5": {"context": 3.0, "click_scales": (0.5,)},
    "c3-follow": {"context": 3.0, "margin": 0.49, "band": 1.05},
    "c2.5": {"context": 2.5},
    "c3-nomargin": {"context": 3.0, "margin": 0.0},
}


def scored_frames(meta, labels, obj):
    """Frames where the object's ground truth can be trusted (present, or absent on a complete frame)."""
    n = len(labels)
    def frames(key, default):
        value = meta.get(key, default)
        return set(range(n)) if value == "all" else set(value)

    annotated = frames("annotated_frames", "all")
    complete = frames("complete_frames", sorted(annotated))
    present = labels.reshape(n, -1).__eq__(obj).any(axis=1)
    return [f for f in range(n) if f in complete or (f in annotated and present[f])]


def run(args):
    import torch

    from napari_lit.bench.flow import FlowTracker
    from napari_lit.bench.metrics import click_point, jaccard
    from napari_lit.core import FrameSource, Tracker
    from napari_lit.core.zoom import ZoomConfig
    from napari_lit.io import load_sequence
    from napari_lit.models import load_predictor

    torch.set_num_threads(args.threads)
    predictor = load_predictor("lit-tiny", device="cpu")
    variants = {"off": None} | {k: ZoomConfig(**v) for k, v in SETTINGS.items() if k in args.settings}
    out = {"sequences": {}, "settings": {k: SETTINGS.get(k) for k in variants}}
    for name in args.sequences:
        seq = load_sequence(TRAIN / name)
        labels = np.asarray(seq.labels[:])
        objects = [int(o) for o in seq.objects if (labels == o).any()][: args.max_objects]
        rows = {}
        flow = FlowTracker(seq.image)
        for obj in objects:
            frames = scored_frames(seq.meta, labels, obj)
            gt = labels == obj
            pf = next(f for f in frames if gt[f].any())
            row = rows.setdefault(obj, {})
            row["static"] = float(np.mean([jaccard(gt[pf], gt[f]) for f in frames]))
            fl = flow.track_one(pf, gt[pf])
            row["flow"] = float(np.mean([jaccard(fl[f], gt[f]) for f in frames]))
            for key, cfg in variants.items():
                t0 = time.perf_counter()
                tracker = Tracker(predictor, FrameSource(seq.image, image_size=predictor.image_size),
                                  zoom="off" if cfg is None else "auto", zoom_config=cfg)
                tracker.add_mask(pf, obj, gt[pf])
                masks = {r.frame_idx: r.mask(obj) for r in tracker.propagate(direction="both")}
                row[key] = float(np.mean([jaccard(masks[f], gt[f]) for f in frames]))
                if name.startswith("ctc"):
                    tracker.reset()
                    click = click_point(gt[pf])
                    row[key + "/click"] = jaccard(tracker.add_points(pf, obj, [list(click)], [1]).mask(obj), gt[pf])
                row[key + "/s"] = time.perf_counter() - t0
                tracker.close()
        out["sequences"][name] = rows
        means = {k: float(np.mean([r[k] for r in rows.values()])) for k in next(iter(rows.values())) if not k.endswith("/s")}
        out["sequences"][name + "/mean"] = means
        print(name, " ".join(f"{k} {v:.3f}" for k, v in means.items()), flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", nargs="+", default=SEQUENCES)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS))
    p.add_argument("--max-objects", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/experiments/results/zoom_settings.json"))
    args = p.parse_args()
    write_json(run(args), args.out)


if __name__ == "__main__":
    main()
