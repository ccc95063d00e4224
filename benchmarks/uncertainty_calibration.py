"""Choose the masked-entropy dilation on generated sequences (never on ../shared/data).

Tracks objects through generated clips of every scene kind with lit-tiny (mask prompt on the
first frame, faster motion than training so that tracking fails sometimes), computes each
object's masked entropy (Lazy-XMem eq. 2-4) for several dilation ratios from the same
logits, and reports per ratio the median over objects of Spearman's correlation between
-entropy and IoU (Lazy-XMem Fig. 3). napari-lit's default dilation is the best ratio here.

    python benchmarks/uncertainty_calibration.py [--clips 24] [--frames 16]
        [--out benchmarks/results/uncertainty_calibration.json]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

RATIOS = (0.0, 0.1, 0.25, 0.5, 1.0)


def main(argv=None) -> int:
    import torch

    from _generated import calibration_parser, hard_clips
    from napari_lit.bench.metrics import jaccard
    from napari_lit.bench.runner import entropy_iou_correlation
    from napari_lit.core import Tracker
    from napari_lit.core.uncertainty import masked_entropy
    from napari_lit.models import load_predictor

    args = calibration_parser(__doc__, clips=24, seed=1234,
                              out="benchmarks/results/uncertainty_calibration.json").parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    predictor = load_predictor("lit-tiny", device="cpu")
    rho = {r: [] for r in RATIOS}
    for frames, gt in hard_clips(args.seed, args.clips, args.frames):
        tracker = Tracker(predictor, frames)
        tracker.add_mask(0, 1, gt[0])
        ent = {r: np.full(args.frames, np.nan) for r in RATIOS}
        j = np.full(args.frames, np.nan)
        for result in tracker.propagate(direction="forward"):
            i = result.frame_idx
            j[i] = jaccard(result.mask(1), gt[i])
            for r in RATIOS:
                ent[r][i] = masked_entropy(result.logits, r)[0]
        tracker.close()
        for r in RATIOS:
            value = entropy_iou_correlation(ent[r], j, exclude=0)
            if value is not None:
                rho[r].append(value)
    summary = {str(r): {"median_spearman": float(np.median(v)) if v else None, "objects": len(v)}
               for r, v in rho.items()}
    best = max((r for r in RATIOS if rho[r]), key=lambda r: np.median(rho[r]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"clips": args.clips, "frames": args.frames, "seed": args.seed,
                               "ratios": summary, "best_ratio": best,
                               "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    for r in RATIOS:
        print(f"dilation ratio {r:4.2f}: median Spearman(-entropy, IoU) {summary[str(r)]['median_spearman']}"
              f" over {summary[str(r)]['objects']} objects")
    print(f"best ratio {best}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
