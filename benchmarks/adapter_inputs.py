"""Which decoder inputs LIT-LoRA should learn a correction from, judged on the next frame.

After a ground-truth correction on frame t, SAM2 predicts frame t+1 with that mask in memory,
and at tau 0.85 that prediction usually fails again (benchmarks/one_step.py). The adapter
learns from frame t's *recorded* decoder inputs: the memory-conditioned embedding of frame t
as it was tracked, before the correction, from memory that led to the failure. Frame t+1 is
then predicted from memory that holds the corrected mask. This script asks whether the adapter
would carry more to frame t+1 if it learned instead (or also) from frame t decoded again with
its own correction in memory (*recall* inputs: the situation of frame t+1, without the
motion). For a sample of frame pairs of every object (frames t-1, t, t+1, all present):

- ``frozen``: SAM2's prediction of t+1 from the true mask of t (a fresh tracker that is
  shown frame t, frame t again, then t+1; the recall inputs are those of the repeat);
- ``recorded``: the adapted prediction of t+1, the adapter trained (napari-lit's defaults) on
  frame t's inputs as tracked from the true mask of t-1 against the true mask of t;
- ``recall``: trained on frame t's inputs with the true mask of t in memory;
- ``both``: trained on ``recorded``, then on ``recall`` (two corrections' time);
- ``copy``: the true mask of t scored on t+1.

Each is the IoU with the true mask of t+1 (median and share >= 0.5 / 0.85 per sequence and
over all pairs). Evaluation sequences are only scored; nothing here sets a default.

    python benchmarks/adapter_inputs.py [DATA_DIR] [--stride 5] [--out benchmarks/results/adapter_inputs.json]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import numpy as np

from _output import write_json

MEASURES = ("frozen", "recorded", "recall", "both", "copy")


def _track(predictor, frames, mask0):
    """A recording tracker over ``frames`` prompted with ``mask0`` on frame 0 and propagated
    forward; returns it (open) and the logits per frame."""
    from napari_lit.core import FrameSource, Tracker

    tracker = Tracker(predictor, FrameSource(np.stack(frames), image_size=predictor.image_size),
                      record_decoder_inputs=True)
    tracker.add_mask(0, 1, mask0)
    logits = {r.frame_idx: r.logits[0] for r in tracker.propagate(0, direction="forward")}
    return tracker, logits


def score_pair(predictor, adapter, images, masks) -> dict:
    """The measures for one object on frames (t-1, t, t+1): ``images`` and ``masks`` (bool)
    are those three frames."""
    from napari_lit.bench.metrics import jaccard

    (im_prev, im_t, im_next), (gt_prev, gt_t, gt_next) = images, masks
    before, _ = _track(predictor, [im_prev, im_t], gt_prev)
    after, logits = _track(predictor, [im_t, im_t, im_next], gt_t)
    try:
        recorded, recall, nxt = before.decoder_inputs(1, 1), after.decoder_inputs(1, 1), after.decoder_inputs(2, 1)

        def adapted(examples) -> float:
            adapter.reset()
            for inputs in examples:
                list(adapter.train(1, inputs, gt_t))
            low, _, _ = adapter.predict(1, nxt)
            return jaccard(after.to_input_resolution(low, nxt.window) > 0, gt_next)

        return {"frozen": jaccard(logits[2] > 0, gt_next), "recorded": adapted([recorded]),
                "recall": adapted([recall]), "both": adapted([recorded, recall]), "copy": jaccard(gt_t, gt_next)}
    finally:
        before.close()
        after.close()


def summarise(pairs) -> dict:
    """Median, mean and share >= 0.5 / 0.85 of every measure (``one_step.summarise``)."""
    from one_step import summarise as summarise_measures

    return summarise_measures(pairs, (0.5, 0.85), MEASURES)


def _print_row(name: str, s: dict) -> None:
    print(f"{name:26s} n={s['pairs']:3d}  " + "  ".join(
        f"{m} {s[m]['median']:.3f} ({100 * s[m]['at_least_0.85']:.0f} %)" for m in MEASURES), flush=True)


def main(argv=None) -> int:
    import torch

    from napari_lit.bench.runner import machine_info
    from napari_lit.core.adaptation import AdapterConfig, DecoderAdapter
    from napari_lit.io.dataset import list_sequences, load_sequence
    from napari_lit.models import load_predictor

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data_dir", nargs="?", default="../shared/data/dev")
    p.add_argument("--model", default="lit-tiny")
    p.add_argument("--config", help="Hydra config of a custom checkpoint")
    p.add_argument("--stride", type=int, default=5, help="every stride-th frame t of each object")
    p.add_argument("--sequences", nargs="+", help="only these sequences")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/adapter_inputs.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folders = list_sequences(args.data_dir)
    unknown = sorted(set(args.sequences or ()) - {f.name for f in folders})
    if unknown:
        raise ValueError(f"no sequence named {unknown} in {args.data_dir}; it has {[f.name for f in folders]}")
    predictor = load_predictor(args.model, config=args.config, device="cpu")
    adapter = DecoderAdapter(predictor, AdapterConfig())
    t0 = time.time()
    result = {"model": args.model, "stride": args.stride, "adapter": asdict(AdapterConfig()),
              "machine": machine_info(), "sequences": {}}
    everything = []
    for folder in folders:
        if args.sequences and folder.name not in args.sequences:
            continue
        seq = load_sequence(folder)
        labels = np.asarray(seq.labels)
        pairs = []
        for obj in seq.objects:
            gt = labels == obj
            for t in range(1, len(gt) - 1, args.stride):
                if gt[t - 1].any() and gt[t].any() and gt[t + 1].any():
                    torch.manual_seed(1_000 * int(obj) + t)  # LoRA initialisation and dropout: reruns repeat
                    images = [np.asarray(seq.image[i]) for i in (t - 1, t, t + 1)]
                    pairs.append(score_pair(predictor, adapter, images, [gt[t - 1], gt[t], gt[t + 1]]))
        if pairs:
            result["sequences"][seq.name] = summarise(pairs)
            everything += pairs
            _print_row(seq.name, result["sequences"][seq.name])
    result["all"] = summarise(everything)
    result["seconds"] = round(time.time() - t0, 1)
    _print_row("all", result["all"])
    out = write_json(result, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
