"""Which window scale to keep for a new object's click: rules compared on *training* images.

The zoom answers a click through windows of ``scale * image_size`` px for each of
``ZoomConfig.click_scales`` (each refitted once to its mask) and keeps one answer. This
script makes every candidate (one tracker per scale, so the candidates are exactly what the
tracker computes) on held-out training images -- CTC simplus-02 and MSC (frame of first
annotation), and DSB2018 nuclei images -- and scores, by IoU with the ground truth, rules
that pick one:

- ``scale S``: always scale S;
- ``stability``: the most stable mask (SAM's stability score; what the tracker did first);
- ``inside``: the most stable among the masks that do not touch their window's edge
  (where the window edge is not the frame's), else the most stable;
- ``smallest-inside``: the smallest scale whose mask does not touch its window's edge,
  else the most stable;
- ``... + whole``: the same with the whole frame (zoom off) as one more candidate;
- ``stability, whole below 0.8``: the most stable, or the whole frame when that one's
  stability is below 0.8 (the tracker's rule, ``ZoomConfig.click_min_stability``).

The candidates are saved, so a new rule can be scored from the JSON alone (``--rescore``).

    .venv/bin/python benchmarks/experiments/click_choice.py --out benchmarks/experiments/results/click_choice.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _output import write_json  # noqa: E402

TRAIN = ROOT.parent / "shared" / "train"
SCALES = (0.5, 1.0, 2.0)


def touches_window_edge(mask: np.ndarray, window, frame_shape, px: int = 2) -> bool:
    """Whether ``mask`` (frame pixels) reaches within ``px`` of an edge of ``window`` that is
    not also an edge of the frame (the object may continue outside the window)."""
    if window is None or not mask.any():
        return False
    y0, x0, y1, x1 = window
    ys, xs = np.nonzero(mask)
    return bool((y0 > 0 and ys.min() < y0 + px) or (x0 > 0 and xs.min() < x0 + px)
                or (y1 < frame_shape[0] and ys.max() >= y1 - px) or (x1 < frame_shape[1] and xs.max() >= x1 - px))


def candidates(predictor, image, frame, gt, click):
    """One candidate per scale: IoU with the ground truth, stability, whether it touches its window's edge."""
    import napari_lit.core.tracker as tracker_module
    from napari_lit.bench.metrics import jaccard
    from napari_lit.core import FrameSource, Tracker
    from napari_lit.core.zoom import ZoomConfig, stability_score

    out = []
    whole = Tracker(predictor, FrameSource(image, image_size=predictor.image_size), zoom="off")
    res = whole.add_points(frame, 1, [list(click)], [1])
    mask = res.mask(1)
    whole.close()
    out.append({"scale": "whole", "iou": float(jaccard(mask, gt)), "stability": stability_score(res.logits[0]),
                "edge": False,
                "area": int(mask.sum())})
    for scale in SCALES:
        scores = []
        original = tracker_module.stability_score
        tracker_module.stability_score = lambda logits: scores.append(original(logits)) or scores[-1]
        try:
            tracker = Tracker(predictor, FrameSource(image, image_size=predictor.image_size),
                              zoom_config=ZoomConfig(click_scales=(scale,)))
            mask = tracker.add_points(frame, 1, [list(click)], [1]).mask(1)
            window = tracker.window(frame, 1)
            tracker.close()
        finally:
            tracker_module.stability_score = original
        out.append({"scale": scale, "iou": float(jaccard(mask, gt)), "stability": scores[-1],
                    "edge": touches_window_edge(mask, window, gt.shape), "area": int(mask.sum())})
    return out


def choose(cands, rule: str) -> dict:
    whole = cands[0]
    if rule == "whole frame (zoom off)":
        return whole
    if rule.endswith(" + whole"):
        rule = rule[: -len(" + whole")]
    else:
        cands = [c for c in cands if c["scale"] != "whole"]
    if rule.startswith("scale "):
        return next(c for c in cands if c["scale"] == float(rule.split()[1]))
    best = max(cands, key=lambda c: c["stability"])
    inside = [c for c in cands if not c["edge"] and c["stability"] > 0]
    if rule == "stability, whole below 0.8":  # the tracker's rule (ZoomConfig.click_min_stability)
        return best if best["stability"] >= 0.8 else whole
    if rule == "stability" or not inside:
        return best
    if rule == "inside":
        return max(inside, key=lambda c: c["stability"])
    if rule == "smallest-inside":
        return min(inside, key=lambda c: (c["scale"] == "whole", c["scale"] if c["scale"] != "whole" else 0))
    raise ValueError(rule)


RULES = (("whole frame (zoom off)",) + tuple(f"scale {s:g}" for s in SCALES)
         + ("stability", "inside", "smallest-inside", "stability + whole", "inside + whole", "smallest-inside + whole",
            "stability, whole below 0.8"))


def run(args):
    import torch

    from napari_lit.bench.metrics import click_point
    from napari_lit.io import load_sequence
    from napari_lit.models import load_predictor

    torch.set_num_threads(args.threads)
    predictor = load_predictor("lit-tiny", device="cpu")
    names = (["ctc-fluo-simplus-02", "ctc-fluo-msc-01"] + sorted(p.name for p in TRAIN.glob("dsb2018-*"))[: args.dsb]
             + sorted(p.name for p in TRAIN.glob("davis16-*")) + ["segtrackv2-bmx"])
    out = {"rules": RULES, "groups": {}}
    for name in names:
        seq = load_sequence(TRAIN / name)
        labels = np.asarray(seq.labels[:])
        frame = next(f for f in range(len(labels)) if labels[f].any())
        objects = [int(o) for o in np.unique(labels[frame]) if o][: args.max_objects]
        group = ("dsb2018" if name.startswith("dsb") else "video (DAVIS-2016 train, SegTrack)"
                 if name.startswith(("davis", "segtrack")) else name)
        rows = out["groups"].setdefault(group, [])
        for obj in objects:
            gt = labels[frame] == obj
            if gt.sum() < 20:
                continue
            rows.append({"name": name, "object": obj, "area": int(gt.sum()),
                         "candidates": candidates(predictor, seq.image, frame, gt, click_point(gt))})
        print(name, len(rows), flush=True)
    return summarise(out)


def summarise(out):
    out["rules"] = RULES
    out["summary"] = {}
    for group, rows in out["groups"].items():
        out["summary"][group] = {r: {"mean": float(np.mean([choose(x["candidates"], r)["iou"] for x in rows])),
                                     "median": float(np.median([choose(x["candidates"], r)["iou"] for x in rows]))}
                                 for r in RULES}
        out["summary"][group]["objects"] = len(rows)
    print("| rule | " + " | ".join(out["summary"]) + " |")
    for r in RULES:
        print(f"| {r} | " + " | ".join(f"{s[r]['mean']:.3f} / {s[r]['median']:.3f}" for s in out["summary"].values())
              + " |")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsb", type=int, default=30, help="DSB2018 images")
    p.add_argument("--max-objects", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks/experiments/results/click_choice.json"))
    p.add_argument("--rescore", action="store_true", help="score the rules on the candidates saved in --out")
    args = p.parse_args()
    if args.rescore:
        import json

        write_json(summarise(json.loads(Path(args.out).read_text())), args.out)
    else:
        write_json(run(args), args.out)


if __name__ == "__main__":
    main()
