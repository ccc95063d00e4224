"""Time LIT-LoRA adaptation per correction for lit-tiny and the sam2.1_hiera_tiny architecture.

For each model: propagate one object through a short generated sequence with decoder-input
recording, then train the adapter on K corrections (one per frame, target = the ground
truth) exactly as the simulated user does, and report the median and 95th percentile of the
wall time per correction and of the time per optimisation step. sam2.1_hiera_tiny cannot be
downloaded here, so its weights are random (created by this script): the timing depends on
the architecture and input size (1024 px), not on the weights. Early stopping is disabled
for both, so each correction runs all ``max_steps`` (20 by default, the worst case); the
median under the simulated user, with early stopping, is in the ``lit`` benchmark results
(``median_adapt_ms``). ``--published`` times LIT's published settings instead (40 steps).

    python benchmarks/adaptation_speed.py [--corrections 5] [--threads 2] [--device cpu|cuda]
        [--out benchmarks/results/adaptation_speed.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _output import write_json


def time_model(predictor, name: str, corrections: int, size: int, full_steps: bool, cfg=None) -> dict:
    from napari_lit.core import Tracker
    from napari_lit.core.adaptation import AdapterConfig, DecoderAdapter
    from napari_lit.training.synthetic import generate_clip

    clip = generate_clip(np.random.default_rng(0), corrections + 1, size, kind="nuclei")
    frames, labels = clip.frames[..., 0], clip.labels
    obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
    tracker = Tracker(predictor, frames, record_decoder_inputs=True)
    cfg = cfg or AdapterConfig()
    if full_steps:  # worst case: no early stop, all max_steps
        cfg.patience, cfg.target_iou = cfg.max_steps, 1.01
    adapter = DecoderAdapter(predictor, cfg)
    tracker.add_mask(0, obj, labels[0] == obj)
    t0 = time.perf_counter()
    list(tracker.propagate(direction="forward"))
    propagate_s = time.perf_counter() - t0
    per_correction, per_step, n_steps = [], [], []
    for f in range(1, corrections + 1):
        t = time.perf_counter()
        steps = list(adapter.train(obj, tracker.decoder_inputs(f, obj), labels[f] == obj))
        dt = time.perf_counter() - t
        per_correction.append(dt * 1000)
        per_step.append(dt * 1000 / len(steps))
        n_steps.append(len(steps))
    adapter.reset()
    tracker.close()
    return {
        "model": name,
        "image_size": predictor.image_size,
        "trainable_parameters": None,
        "corrections": corrections,
        "steps_per_correction": n_steps,
        "median_adapt_ms": float(np.median(per_correction)),
        "p95_adapt_ms": float(np.percentile(per_correction, 95)),
        "median_ms_per_step": float(np.median(per_step)),
        "propagate_s_per_frame": propagate_s / (corrections + 1),
    }


def count_lora_parameters(predictor) -> int:
    from napari_lit.core.adaptation import AdapterConfig

    from peft import get_peft_model
    import copy

    wrapped = get_peft_model(copy.deepcopy(predictor.sam_mask_decoder), AdapterConfig().lora_config())
    return sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n)


def main(argv=None) -> int:
    from napari_lit.bench.runner import machine_info

    import torch

    from napari_lit.core.adaptation import AdapterConfig
    from napari_lit.models import MODELS, load_predictor
    from napari_lit.models.build import build_sam2_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corrections", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu (the figure issue 3 asks for) or cuda")
    p.add_argument("--skip-hiera", action="store_true", help="only lit-tiny")
    p.add_argument("--published", action="store_true", help="LIT's settings (lr 1e-4, 40 steps)")
    p.add_argument("--out", default="benchmarks/results/adaptation_speed.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    cfg = AdapterConfig.published() if args.published else AdapterConfig()
    steps = f"all {cfg.max_steps} steps"
    lit = load_predictor("lit-tiny", device=args.device)
    r = time_model(lit, f"lit-tiny ({steps})", args.corrections, 256, full_steps=True, cfg=cfg)
    r["trainable_parameters"] = count_lora_parameters(lit)
    results.append(r)
    if not args.skip_hiera:
        torch.manual_seed(0)
        hiera = build_sam2_model(MODELS["sam2.1_hiera_tiny"].config, target="video", device=args.device)
        r = time_model(hiera, f"sam2.1_hiera_tiny (random weights, 1024 px, {steps})",
                       max(2, args.corrections // 2), 512, full_steps=True, cfg=cfg)
        r["trainable_parameters"] = count_lora_parameters(hiera)
        results.append(r)
    out = write_json({"threads": args.threads, "device": args.device, "torch": torch.__version__,
                     "machine": machine_info(), "results": results}, args.out)
    for r in results:
        print(f"{r['model']:45s} LoRA params {r['trainable_parameters']:6d}  median {r['median_adapt_ms']:7.0f} ms"
              f"  p95 {r['p95_adapt_ms']:7.0f} ms per correction  ({r['median_ms_per_step']:.1f} ms/step,"
              f" steps {r['steps_per_correction']})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
