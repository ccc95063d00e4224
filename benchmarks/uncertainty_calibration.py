"""Calibrate the masked entropy on generated sequences (never on ../shared/data).

Tracks objects through generated clips of the pinned calibration scene kinds
(``_generated.CALIBRATION_KINDS``) with lit-tiny (mask prompt on the first frame, faster
motion than training so that tracking fails sometimes), then

1. fits the model's logit temperature T by temperature scaling (Guo et al. 2017): the T that
   minimises the mean pixel-wise binary cross-entropy of sigmoid(logit / T) against the
   ground-truth mask over every tracked frame (a 1-D search over log T); it never changes a
   mask, only how sure the probabilities say the model is;
2. at that temperature, computes each object's masked entropy (Lazy-XMem eq. 2-4) for
   several dilation ratios from the same logits and reports per ratio the median over
   objects of Spearman's correlation between -entropy and IoU (Lazy-XMem Fig. 3); the table
   is repeated at T = 1 (no calibration) for comparison;
3. at that temperature and ratio, the same with the entropy normalised per boundary length
   (``masked_entropy(normalize="length")``: divided by the square root of the region's size
   instead of its size, Lazy-XMem eq. 4), for comparison with eq. 4.

napari-lit's lit-tiny temperature (``napari_lit.models.MODELS["lit-tiny"].temperature``) and
default dilation (``napari_lit.core.uncertainty.DEFAULT_DILATION``) are the fitted T and the
best ratio here.

    python benchmarks/uncertainty_calibration.py [--clips 24] [--frames 16]
        [--out benchmarks/results/uncertainty_calibration.json]
"""

from __future__ import annotations

import time

import numpy as np

from _output import write_json

RATIOS = (0.0, 0.1, 0.25, 0.5, 1.0)


def bce(logits: np.ndarray, target: np.ndarray, temperature: float) -> float:
    """Summed binary cross-entropy of sigmoid(logits / temperature) against ``target``."""
    s = logits.astype(np.float64) / temperature
    return float((np.maximum(s, 0) - s * target + np.log1p(np.exp(-np.abs(s)))).sum())


def fit_temperature(frames_logits, frames_target) -> tuple:
    """The temperature minimising the mean pixel BCE over all frames; returns
    ``(T, nll_at_T, nll_at_1)`` (mean per pixel)."""
    from scipy.optimize import minimize_scalar

    n = sum(t.size for t in frames_target)

    def nll(log_t):
        t = float(np.exp(log_t))
        return sum(bce(z, y, t) for z, y in zip(frames_logits, frames_target)) / n

    res = minimize_scalar(nll, bounds=(np.log(0.25), np.log(64.0)), method="bounded",
                          options={"xatol": 1e-3})
    return float(np.exp(res.x)), float(res.fun), float(nll(0.0))


def spearman_table(records, temperature: float, ratios=RATIOS, normalize: str = "area") -> dict:
    """Per dilation ratio: the median over objects of Spearman(-masked entropy, IoU)."""
    from napari_lit.bench.runner import entropy_iou_correlation
    from napari_lit.core.uncertainty import masked_entropy

    rho = {r: [] for r in ratios}
    for logits, j in records:
        for r in ratios:
            ent = np.full(len(j), np.nan)
            for i, z in logits.items():
                ent[i] = masked_entropy(z, r, temperature=temperature, normalize=normalize)[0]
            value = entropy_iou_correlation(ent, j, exclude=0)
            if value is not None:
                rho[r].append(value)
    return {str(r): {"median_spearman": float(np.median(v)) if v else None, "objects": len(v)}
            for r, v in rho.items()}


def main(argv=None) -> int:
    import torch

    from _generated import calibration_parser, hard_clips
    from napari_lit.bench.metrics import jaccard
    from napari_lit.core import Tracker
    from napari_lit.models import load_predictor

    args = calibration_parser(__doc__, clips=24, seed=1234,
                              out="benchmarks/results/uncertainty_calibration.json").parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    predictor = load_predictor("lit-tiny", device="cpu")
    records, fit_logits, fit_targets = [], [], []
    for frames, gt in hard_clips(args.seed, args.clips, args.frames, kinds=args.kinds):
        tracker = Tracker(predictor, frames)
        tracker.add_mask(0, 1, gt[0])
        logits, j = {}, np.full(args.frames, np.nan)
        for result in tracker.propagate(direction="forward"):
            i = result.frame_idx
            j[i] = jaccard(result.mask(1), gt[i])
            logits[i] = result.logits  # raw: the temperature is applied below
            if i > 0:  # the prompt frame's output is the prompt itself
                fit_logits.append(result.logits[0])
                fit_targets.append(gt[i].astype(np.float64))
        tracker.close()
        records.append((logits, j))
    temperature, nll_t, nll_1 = fit_temperature(fit_logits, fit_targets)
    calibrated = spearman_table(records, temperature)
    raw = spearman_table(records, 1.0)
    best = max((r for r in RATIOS if calibrated[str(r)]["objects"]),
               key=lambda r: calibrated[str(r)]["median_spearman"])
    per_length = spearman_table(records, temperature, ratios=(best,), normalize="length")[str(best)]
    out = write_json({"clips": args.clips, "frames": args.frames, "seed": args.seed,
                     "kinds": args.kinds,
                     "temperature": round(temperature, 3), "nll_at_temperature": nll_t,
                     "nll_at_1": nll_1, "ratios": calibrated, "ratios_at_1": raw,
                     "best_ratio": best, "per_length_at_best_ratio": per_length,
                     "seconds": round(time.perf_counter() - t0, 1)}, args.out)
    print(f"temperature {temperature:.3f}: pixel NLL {nll_t:.4f} (at T = 1: {nll_1:.4f})")
    for r in RATIOS:
        print(f"dilation ratio {r:4.2f}: median Spearman(-entropy, IoU) "
              f"{calibrated[str(r)]['median_spearman']} (T = 1: {raw[str(r)]['median_spearman']})"
              f" over {calibrated[str(r)]['objects']} objects")
    print(f"best ratio {best}; per boundary length there: median Spearman {per_length['median_spearman']} "
          f"over {per_length['objects']} objects; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
