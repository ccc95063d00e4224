"""What IoU a SAM2 of a given input size can reach at best on each evaluation sequence.

SAM2's mask decoder predicts logits at a quarter of the model's input size (64 x 64 for
lit-tiny's 256 px, 256 x 256 for the official 1024 px models), which sam2 resizes bilinearly
to the frame. A perfect decoder would output, on that grid, the ground truth's area fraction
of each cell; this script resizes exactly that back to the frame (as sam2 does) and scores it
against the ground truth. The result bounds every method at that input size: a frame whose
ceiling is below tau must be corrected whatever the model learns (with the ground-truth mask
as the user's last resort).

No model is run; the ground truth of every object on every frame where it is present is used.

    python benchmarks/mask_resolution_ceiling.py [DATA_DIR] [--sizes 256 1024]
        [--out benchmarks/results/mask_resolution_ceiling.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def ceiling_iou(mask: np.ndarray, low: int) -> float:
    """IoU of ``mask`` with its best ``low`` x ``low`` decoder output resized back.

    Parameters
    ----------
    mask : (Y, X) bool ndarray
    low : int
        The decoder's output grid (input size / 4).

    Returns
    -------
    float
    """
    import torch
    import torch.nn.functional as F

    from napari_lit.bench.metrics import jaccard

    x = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    logits = F.interpolate(x, size=(low, low), mode="area") * 2 - 1  # > 0 where mostly object
    up = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    return jaccard(up > 0, mask)


def main(argv=None) -> int:
    from napari_lit.io.dataset import list_sequences, load_sequence

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data_dir", nargs="?", default="../shared/data/dev")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="model input sizes (px)")
    p.add_argument("--taus", type=float, nargs="+", default=[0.5, 0.85])
    p.add_argument("--out", default="benchmarks/results/mask_resolution_ceiling.json")
    args = p.parse_args(argv)
    out = {"sizes": args.sizes, "taus": args.taus, "sequences": {}}
    for path in list_sequences(args.data_dir):
        seq = load_sequence(path)
        labels = np.asarray(seq.labels)
        row = {}
        for size in args.sizes:
            values = [ceiling_iou(labels[t] == obj, size // 4)
                      for obj in seq.objects for t in range(labels.shape[0]) if (labels[t] == obj).any()]
            row[str(size)] = {"mean_iou": float(np.mean(values)), "frames": len(values),
                              **{f"frac_at_least_{tau}": float(np.mean(np.array(values) >= tau)) for tau in args.taus}}
        out["sequences"][path.name] = row
        print(path.name, ", ".join(f"{s} px: mean {row[str(s)]['mean_iou']:.3f}, >= {args.taus[-1]} on "
                                   f"{100 * row[str(s)][f'frac_at_least_{args.taus[-1]}']:.0f} %" for s in args.sizes))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
