"""How lit-tiny fails on the evaluation sequences, and what the masked entropy sees of it.

Tracks each object of ``DATA_DIR`` alone from its ground-truth mask (as ``napari-lit bench
--method propagate --init mask``) and reports per object, over the frames other than the
prompt frame, Spearman's correlation of

- J with the predicted mask's area (negative: J falls as the mask grows, a leak),
- J with -|log(predicted area / true area)| (how much of J's change is a size error),
- -masked entropy with J, per area (Lazy-XMem eq. 4) and per boundary length,
- masked entropy (eq. 4) with the predicted area.

Analysis for docs/benchmarks.md, not a tuning step: nothing here sets a default.

    python benchmarks/leak_analysis.py [DATA_DIR] [--out benchmarks/results/leak_analysis.json]
"""

from __future__ import annotations

import argparse

import numpy as np

from _output import write_json

KEYS = ("j_vs_area", "j_vs_size_error", "entropy_area_vs_j", "entropy_length_vs_j", "entropy_vs_area")


def main(argv=None) -> int:
    import torch
    from scipy.stats import spearmanr

    from napari_lit.bench import runner
    from napari_lit.bench.metrics import jaccard
    from napari_lit.io.dataset import list_sequences, load_sequence
    from napari_lit.models import load_predictor

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data_dir", nargs="?", default="../shared/data/dev")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/leak_analysis.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = load_predictor("lit-tiny", device="cpu")
    rows = []
    for folder in list_sequences(args.data_dir):
        seq = load_sequence(folder)
        tracker = runner._make_tracker(predictor, seq)
        labels = np.asarray(seq.labels)
        for obj in seq.objects:
            gt = labels == obj
            pf = runner.first_frame(gt)
            if pf is None:
                continue
            tracker.reset()
            tracker.add_mask(pf, int(obj), gt[pf])
            n = len(gt)
            j, e_area, e_length, area = (np.full(n, np.nan) for _ in range(4))
            true_area = gt.reshape(n, -1).sum(1).astype(float)
            for r in tracker.propagate(direction="both"):
                i, m = r.frame_idx, r.mask(int(obj))
                j[i] = jaccard(m, gt[i])
                e_area[i] = r.masked_entropy()[0]
                e_length[i] = r.masked_entropy(normalize="length")[0]
                area[i] = m.sum()
            keep = np.ones(n, bool)
            keep[pf] = False

            def rho(a, b):
                a, b = a[keep], b[keep]
                if np.ptp(a) == 0 or np.ptp(b) == 0:
                    return None
                return float(spearmanr(a, b).statistic)

            size_error = -np.abs(np.log((area + 1) / (true_area + 1)))
            rows.append({"name": seq.name, "object": int(obj),
                         "j_vs_area": rho(j, area), "j_vs_size_error": rho(j, size_error),
                         "entropy_area_vs_j": rho(-e_area, j), "entropy_length_vs_j": rho(-e_length, j),
                         "entropy_vs_area": rho(e_area, area)})
        tracker.close()
    medians = {k: float(np.median([r[k] for r in rows if r[k] is not None])) for k in KEYS}
    out = write_json({"data_dir": str(args.data_dir), "medians": medians, "objects": rows}, args.out, indent=1)
    for k, v in medians.items():
        print(f"median Spearman {k}: {v:+.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
