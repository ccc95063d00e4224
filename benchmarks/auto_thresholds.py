"""Choose the -auto thresholds (tau_m, tau_u) on generated sequences (never on ../shared/data).

Runs the simulated user of ``napari_lit.bench.interactive`` (tau 0.5, mask prompt) with
lit-tiny on generated clips of the pinned calibration scene kinds (faster motion than in
training), first ``frozen-auto`` for several memory gates tau_m, then ``lit-auto`` with the
best tau_m for several entropy jumps tau_u, and reports the total corrections of each. The
defaults of ``napari_lit.bench.interactive`` are the values with the fewest corrections here
(ties: the one that intervenes least; no best value when all give the same).

    python benchmarks/auto_thresholds.py [--clips 16] [--out benchmarks/results/auto_thresholds.json]
"""

from __future__ import annotations

import math
import time

import numpy as np

from _output import write_json

TAU_M = (0.2, 0.3, 0.4, 0.5, 0.6, math.inf)
TAU_U = (0.005, 0.01, 0.02, 0.05, 0.1, math.inf)


def main(argv=None) -> int:
    import torch

    from _generated import calibration_parser, hard_clips
    from napari_lit.bench.interactive import object_session, simulate_object
    from napari_lit.models import load_predictor

    args = calibration_parser(__doc__, clips=16, seed=4321,
                              out="benchmarks/results/auto_thresholds.json").parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    predictor = load_predictor("lit-tiny", device="cpu")
    clips = hard_clips(args.seed, args.clips, args.frames, kinds=args.kinds)

    def total(method, **kw):
        corrections, j = 0, []
        for frames, gt in clips:
            # a fresh session per clip, as the benchmark runs each object (learning on for lit-auto)
            with object_session(predictor, frames, method) as session:
                torch.manual_seed(0)
                res = simulate_object(gt, session, method, "mask", tau=0.5, **kw)
            corrections += res["corrections"]
            j.append(res["mean_j"])
        return {"corrections": corrections, "mean_j": float(np.mean(j))}

    frozen_auto = {str(t): total("frozen-auto", tau_m=t) for t in TAU_M}
    best_m = min(TAU_M, key=lambda t: (frozen_auto[str(t)]["corrections"], -t))
    lit_auto = {str(t): total("lit-auto", tau_m=best_m, tau_u=t) for t in TAU_U}
    counts = {lit_auto[str(t)]["corrections"] for t in TAU_U}
    best_u = None if len(counts) == 1 else min(TAU_U, key=lambda t: (lit_auto[str(t)]["corrections"], -t))
    out = write_json({"clips": len(clips), "frames": args.frames, "seed": args.seed,
                     "kinds": args.kinds,
                     "frozen_auto_tau_m": frozen_auto, "best_tau_m": best_m,
                     "lit_auto_tau_u": lit_auto, "best_tau_u": best_u,
                     "seconds": round(time.perf_counter() - t0, 1)}, args.out)
    for t in TAU_M:
        print(f"frozen-auto tau_m {t:>5}: corrections {frozen_auto[str(t)]['corrections']:4d}, "
              f"mean J {frozen_auto[str(t)]['mean_j']:.3f}")
    for t in TAU_U:
        print(f"lit-auto tau_u {t:>5} (tau_m {best_m}): corrections {lit_auto[str(t)]['corrections']:4d}, "
              f"mean J {lit_auto[str(t)]['mean_j']:.3f}")
    print(f"best tau_m {best_m}, best tau_u {best_u}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
