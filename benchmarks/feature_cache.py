"""The image-feature cache: first vs second propagation over the same frames (issue 28).

For each model (``sam2.1_hiera_tiny`` with random weights at 1024 px -- the official
checkpoints cannot be downloaded here and the time does not depend on the weights -- and the
embedded ``lit-tiny``), in a child process of its own so that its peak memory is its own:

1. an uncached run (``features=None``: sam2's own one-frame cache) propagates one object,
   prompted by its mask on frame 0, through ``--frames`` frames of a generated 1024 x 1024
   nuclei time-lapse: the reference masks and the uncached time;
2. a tracker with the feature cache and the memory attention's precision (``--attention``;
   the tracker's default ``auto``: bfloat16 on a CPU that has it) (in memory, and written to a float32 folder on disk, as a
   session does) propagates twice: the first and the second time, and the **speed-up**
   (first / second);
3. a tracker with the memory cache alone (no folder, as outside a session) propagates twice:
   its speed-up too (``memory_only``);
4. a fresh tracker reads the features from that float32 folder, and from a float16 copy of
   it (memory cache off): time and the largest mask difference to the uncached run;

and reports disk per frame for both, and the process's peak resident memory. The largest
mask difference is the most pixels of any frame whose mask differs from the uncached run's,
the lowest IoU of a frame's mask with the uncached run's, and the largest absolute logit
difference. (With random weights sam2.1's logits lie near 0 over large areas, so small
numerical differences flip many pixels: its mask differences overstate what trained weights
would show; ``lit-tiny``'s are on trained weights.)

    python benchmarks/feature_cache.py [--frames 20] [--size 1024] [--threads 2]
        [--models sam2.1_hiera_tiny lit-tiny] [--out benchmarks/results/feature_cache.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _output import write_json

MODELS = ("sam2.1_hiera_tiny", "lit-tiny")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _predictor(name: str):
    import torch

    from napari_lit.models import MODELS as CATALOGUE
    from napari_lit.models import load_predictor
    from napari_lit.models.build import build_sam2_model

    if name == "lit-tiny":
        return load_predictor("lit-tiny", device="cpu")
    torch.manual_seed(0)
    model = build_sam2_model(CATALOGUE[name].config, target="video", device="cpu")
    model.eval()
    return model


def _stack(n_frames: int, size: int):
    from napari_lit.training.synthetic import generate_clip

    clip = generate_clip(np.random.default_rng(0), n_frames, size, kind="nuclei")
    frames = clip.frames[..., 0] if clip.frames.ndim == 4 else clip.frames
    ids, counts = np.unique(clip.labels[0][clip.labels[0] > 0], return_counts=True)
    return np.ascontiguousarray(frames), clip.labels[0] == ids[np.argmax(counts)]


def _run(tracker, mask):
    """Propagate forward from the mask on frame 0: (seconds, {frame: logits})."""
    if not tracker.prompt_frames(1):
        tracker.add_mask(0, 1, mask)
    t0 = time.perf_counter()
    logits = {r.frame_idx: r.logits[0].copy() for r in tracker.propagate(0, "forward")}
    return time.perf_counter() - t0, logits


def _difference(a: dict, b: dict) -> dict:
    pixels = max(int(np.count_nonzero((a[f] > 0) != (b[f] > 0))) for f in a)
    logit = max(float(np.max(np.abs(a[f] - b[f]))) for f in a)
    ious = [np.count_nonzero((a[f] > 0) & (b[f] > 0)) / max(np.count_nonzero((a[f] > 0) | (b[f] > 0)), 1) for f in a]
    return {"max_mask_pixels_different": pixels, "max_abs_logit_difference": logit, "min_iou": float(min(ious)),
            "mean_mask_pixels": float(np.mean([np.count_nonzero(b[f] > 0) for f in b]))}


def child(name: str, n_frames: int, size: int, threads: int, attention: str) -> dict:
    import torch

    from napari_lit.core._sam2 import set_attention_precision
    from napari_lit.core.features import DiskFeatures, FeatureCache, feature_identity
    from napari_lit.core.frames import FrameSource
    from napari_lit.core.tracker import Tracker

    torch.set_num_threads(threads)
    predictor = _predictor(name)
    frames, mask = _stack(n_frames, size)
    source = FrameSource(frames, image_size=predictor.image_size)
    encodes = [0]
    predictor.image_encoder.register_forward_hook(lambda *a: encodes.__setitem__(0, encodes[0] + 1))
    # the reference: no cache, float32 attention
    plain = Tracker(predictor, source, zoom="off", features=None, attention="float32")
    t_plain, reference = _run(plain, mask)
    plain.close()
    attention = set_attention_precision(predictor, attention)

    with tempfile.TemporaryDirectory() as tmp:
        identity = feature_identity(predictor, source)
        disk32 = DiskFeatures(Path(tmp) / "f32", identity, dtype="float32", budget_bytes=None)
        cache = FeatureCache(disk=disk32)
        tracker = Tracker(predictor, source, zoom="off", features=cache, attention=attention)
        encodes[0] = 0
        t_first, first = _run(tracker, mask)
        first_encodes = encodes[0]
        encodes[0] = 0
        t_second, second = _run(tracker, mask)
        second_encodes = encodes[0]
        tracker.close()
        # the same with the memory cache alone (a tracker outside a session writes no folder)
        alone = Tracker(predictor, source, zoom="off", features=FeatureCache(), attention=attention)
        t_first_memory, _ = _run(alone, mask)
        t_second_memory, _ = _run(alone, mask)
        alone.close()

        disk16 = DiskFeatures(Path(tmp) / "f16", identity, dtype="float16", budget_bytes=None)
        for f in disk32.frames():
            disk16.write(f, None, disk32.read(f, None))
        stored = {}
        for label, disk in (("float32", disk32), ("float16", disk16)):
            n = len(disk.frames())
            size_bytes = sum(p.stat().st_size for p in disk.path.rglob("*") if p.is_file())
            reader = Tracker(predictor, source, zoom="off", attention=attention,
                             features=FeatureCache(budget_bytes=0, disk=DiskFeatures(disk.path, identity)))
            encodes[0] = 0
            t_disk, from_disk = _run(reader, mask)
            reader.close()
            stored[label] = {"mb_per_frame": size_bytes / max(n, 1) / 2**20, "frames": n,
                             "propagation_s": t_disk, "encoder_calls": encodes[0],
                             **_difference(from_disk, reference)}
    return {
        "model": name,
        "attention": attention,
        "image_size": int(predictor.image_size),
        "frame_size": size,
        "frames": n_frames,
        "uncached_s": t_plain,
        "first_s": t_first,
        "second_s": t_second,
        "speedup": t_first / t_second,
        "speedup_vs_uncached": t_plain / t_second,
        "memory_only": {"first_s": t_first_memory, "second_s": t_second_memory,
                        "speedup": t_first_memory / t_second_memory},
        "first_encoder_calls": first_encodes,
        "second_encoder_calls": second_encodes,
        "memory_mb_per_frame": cache.nbytes / max(len(cache), 1) / 2**20,
        "first_vs_uncached": _difference(first, reference),
        "second_vs_uncached": _difference(second, reference),
        "disk": stored,
        "peak_rss_mb": _peak_rss_mb(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024, help="frame side (px)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--attention", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="the memory attention's precision in the cached runs (the uncached reference is "
                             "float32); auto: as the tracker chooses (bfloat16 where the CPU has it)")
    parser.add_argument("--out", default="benchmarks/results/feature_cache.json")
    parser.add_argument("--child", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.frames, args.size, args.threads, args.attention)))
        return 0

    import torch

    from napari_lit.bench.runner import machine_info

    results = []
    for name in args.models:
        run = subprocess.run([sys.executable, __file__, "--child", name, "--frames", str(args.frames),
                              "--size", str(args.size), "--threads", str(args.threads),
                              "--attention", args.attention],
                             capture_output=True, text=True, check=True)
        r = json.loads(run.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{name:20s} ({r['attention']} attention) first {r['first_s'] / r['frames']:6.2f} s/frame  second {r['second_s'] / r['frames']:6.2f}"
              f" s/frame  speed-up {r['speedup']:.2f}x (vs uncached {r['speedup_vs_uncached']:.2f}x)  "
              f"second-run encoder calls {r['second_encoder_calls']}  max mask diff "
              f"{r['second_vs_uncached']['max_mask_pixels_different']} px (min IoU "
              f"{r['second_vs_uncached']['min_iou']:.4f})  peak RSS {r['peak_rss_mb']:.0f} MB")
        m = r["memory_only"]
        print(f"{'':20s} memory cache alone: first {m['first_s'] / r['frames']:.2f} s/frame  second "
              f"{m['second_s'] / r['frames']:.2f} s/frame  speed-up {m['speedup']:.2f}x")
        for label, d in r["disk"].items():
            print(f"{'':20s} disk {label}: {d['mb_per_frame']:.2f} MB/frame, from disk {d['propagation_s'] / r['frames']:.2f}"
                  f" s/frame, max mask diff {d['max_mask_pixels_different']} px, "
                  f"max |logit diff| {d['max_abs_logit_difference']:.3g}")
    out = write_json({"frames": args.frames, "attention": args.attention, "frame_size": args.size, "threads": args.threads,
                      "torch": torch.__version__, "machine": machine_info(), "results": results}, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
