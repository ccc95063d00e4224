"""How well LIT-LoRA reproduces a correction within a step budget (and what each budget costs).

The simulated user of ``napari-lit bench --method lit`` corrects the dev sequences at
``--tau``; every correction the adapter learns from (the frame's recorded decoder inputs and
the corrected mask) is kept. Each is then learned again by a fresh adapter (napari-lit's
default settings, early stopping off) for each step budget, and the script reports the
*fit*: the best IoU with which the adapted decoder reproduces the corrected mask on that very
frame, at the decoder's resolution. The adapted prediction offered on a later frame can hardly
beat the fit on the frame it learned from, so a fit below tau means the adapter cannot save
a correction at that tau however the rest of the protocol is tuned; the wall time says what
each budget costs against issue 3's 0.5 s per correction.

    python benchmarks/adapter_fit.py [DATA_DIR] [--tau 0.85] [--sequences NAME ...]
        [--per-object 3] [--steps 10 20 40 100] [--out benchmarks/results/adapter_fit.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _output import write_json


def record_corrections(predictor, seq, tau: float, per_object: int):
    """The corrections the ``lit`` simulated user makes on ``seq`` (at most ``per_object``
    per object): a list of ``(object, frame inputs, corrected mask)``."""
    from napari_lit.bench.interactive import object_session, simulate_object
    from napari_lit.bench.runner import _make_source, first_frame

    recorded = []
    labels = np.asarray(seq.labels[:])
    source = _make_source(predictor, seq)
    try:
        for obj in seq.objects:
            gt = labels == obj
            if first_frame(gt) is None:
                continue
            with object_session(predictor, source, "lit") as session:
                train = session.adapter.train

                def recording(obj_id, inputs, target_mask, train=train):
                    recorded.append((int(obj_id), inputs, np.asarray(target_mask, bool).copy()))
                    return train(obj_id, inputs, target_mask)

                session.adapter.train = recording
                simulate_object(gt, session, "lit", "mask", tau=tau, max_corrections=per_object,
                                obj_id=int(obj), backward=seq.is_volume)
    finally:
        source.close()
    return recorded


def fit_curve(predictor, examples, budgets):
    """Fit (best IoU on the corrected frame) and wall time of a fresh adapter per budget.

    Returns
    -------
    dict
        ``{budget: {"fit": [...], "ms": [...]}}``, one value per example.
    """
    from napari_lit.core.adaptation import AdapterConfig, DecoderAdapter

    out = {}
    for budget in budgets:
        cfg = AdapterConfig(max_steps=budget, patience=budget, target_iou=1.01)  # all steps
        adapter = DecoderAdapter(predictor, cfg)
        fits, ms = [], []
        for obj, inputs, mask in examples:
            t = time.perf_counter()
            for _ in adapter.train(obj, inputs, mask):
                pass
            ms.append(1000 * (time.perf_counter() - t))
            fits.append(adapter.fit[int(obj)])
            adapter.reset(obj)
        adapter.reset()
        out[budget] = {"fit": fits, "ms": ms}
    return out


def main(argv=None) -> int:
    import torch

    from napari_lit.io import list_sequences, load_sequence
    from napari_lit.models import load_predictor

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data_dir", nargs="?", default="../shared/data/dev")
    p.add_argument("--tau", type=float, default=0.85)
    p.add_argument("--sequences", nargs="+", help="only these sequences (default: all)")
    p.add_argument("--per-object", type=int, default=3, help="corrections kept per object")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40, 100], help="step budgets")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/adapter_fit.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    predictor = load_predictor("lit-tiny", device="cpu")
    folders = list_sequences(args.data_dir)
    if args.sequences:
        folders = [f for f in folders if f.name in set(args.sequences)]
    rows = {}
    for folder in folders:
        seq = load_sequence(folder)
        examples = record_corrections(predictor, seq, args.tau, args.per_object)
        if not examples:
            print(f"{seq.name}: no correction at tau {args.tau}")
            continue
        curve = fit_curve(predictor, examples, args.steps)
        rows[seq.name] = {str(b): v for b, v in curve.items()}
        print(f"{seq.name:24s} {len(examples):3d} corrections  " + "  ".join(
            f"{b} steps: fit {np.median(v['fit']):.2f} ({np.median(v['ms']):.0f} ms)" for b, v in curve.items()),
            flush=True)
    allfit = {str(b): [x for r in rows.values() for x in r[str(b)]["fit"]] for b in args.steps}
    allms = {str(b): [x for r in rows.values() for x in r[str(b)]["ms"]] for b in args.steps}
    summary = {b: {"median_fit": float(np.median(allfit[b])), "median_ms": float(np.median(allms[b])),
                   "frac_fit_at_least_tau": float(np.mean(np.array(allfit[b]) >= args.tau)),
                   "corrections": len(allfit[b])} for b in allfit if allfit[b]}
    for b, s in summary.items():
        print(f"all: {b:>3s} steps: median fit {s['median_fit']:.3f}, fit >= {args.tau} on "
              f"{100 * s['frac_fit_at_least_tau']:.0f} % of {s['corrections']} corrections, "
              f"median {s['median_ms']:.0f} ms")
    out = write_json({"tau": args.tau, "per_object": args.per_object, "steps": args.steps,
                     "threads": args.threads, "torch": torch.__version__,
                     "summary": summary, "sequences": rows}, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
