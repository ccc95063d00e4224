"""Experiment (issue 28): the C allocator and the key padding in SAM2.1's cached frames.

``sam2.1_hiera_tiny`` (random weights) at 1024 px propagates one object through a generated
17-frame clip with the feature cache and bfloat16 memory attention; the memory attention's
inputs of the frames with a full memory bank (7 memory frames, 7-16 object pointers: 28,700
to 28,736 keys) are kept, and each is run ``--repeats`` times, interleaved, with

- the block attention before key padding (keys as they come, a new score matrix per block),
- today's (keys padded to a multiple of 64, one score buffer per call),

and one image-encoder forward ``--repeats`` times; all of it in one child process per
allocator setting: glibc as it comes (``NAPARI_LIT_TUNE_MALLOC=0``) and as
:func:`napari_lit.core.cpu.tune_allocator` sets it. Medians and minima in seconds.

    python benchmarks/experiments/allocator.py [--repeats 5] [--out benchmarks/experiments/results/allocator.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _output import write_json  # noqa: E402


def _unpadded_attention(q, k, v):
    """The block attention as it was before key padding (for comparison)."""
    import torch

    from napari_lit.core._sam2 import _QUERY_BLOCK

    scale = q.shape[-1] ** -0.5
    lead = q.shape[:-2]
    q2, k2, v2 = (t.reshape(-1, *t.shape[-2:]) for t in (q, k, v))
    out = torch.empty(q2.shape[:-1] + (v.shape[-1],), dtype=q.dtype)
    for b in range(q2.shape[0]):
        qb, kt, vb = (q2[b] * scale).bfloat16(), k2[b].bfloat16().t().contiguous(), v2[b].bfloat16()
        for i in range(0, qb.shape[0], _QUERY_BLOCK):
            out[b, i:i + _QUERY_BLOCK] = torch.softmax(torch.mm(qb[i:i + _QUERY_BLOCK], kt), dim=-1) @ vb
    return out.reshape(*lead, *out.shape[-2:])


def child(repeats: int) -> dict:
    import torch

    import feature_cache as fc
    from napari_lit.core import _sam2, cpu
    from napari_lit.core.features import FeatureCache
    from napari_lit.core.frames import FrameSource
    from napari_lit.core.tracker import Tracker

    torch.set_num_threads(2)
    predictor = fc._predictor("sam2.1_hiera_tiny")
    frames, mask = fc._stack(17, 1024)
    source = FrameSource(frames, image_size=predictor.image_size)
    captured = {}
    predictor.memory_attention.register_forward_pre_hook(
        lambda m, args, kwargs: captured.__setitem__(kwargs["memory"].shape[0], (args, kwargs)), with_kwargs=True)
    tracker = Tracker(predictor, source, zoom="off", features=FeatureCache(), attention="bfloat16")
    fc._run(tracker, mask)
    tuned = cpu._applied is not None
    full = [n for n in sorted(captured) if n >= 7 * 4096]
    variants = {"unpadded": _unpadded_attention, "padded": _sam2._bf16_attention}
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            _sam2._bf16_attention = fn
            for n in full:
                args, kwargs = captured[n]
                with torch.no_grad():
                    t0 = time.perf_counter()
                    predictor.memory_attention(*args, **kwargs)
                    times[name].append(time.perf_counter() - t0)
    _sam2._bf16_attention = variants["padded"]
    image = torch.randn(1, 3, 1024, 1024)
    encoder = []
    with torch.no_grad():
        predictor.image_encoder(image)
        for _ in range(repeats):
            t0 = time.perf_counter()
            predictor.image_encoder(image)
            encoder.append(time.perf_counter() - t0)
    summary = {f"memory_attention_{name}": {"median_s": float(np.median(v)), "min_s": float(np.min(v)), "calls": len(v)}
               for name, v in times.items()}
    summary["image_encoder"] = {"median_s": float(np.median(encoder)), "min_s": float(np.min(encoder))}
    return {"allocator_tuned": tuned, "keys": full, **summary}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/experiments/results/allocator.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.repeats)))
        return 0
    from napari_lit.bench.runner import machine_info

    results = []
    for switch in ("0", "1"):
        env = dict(os.environ, NAPARI_LIT_TUNE_MALLOC=switch,
                   PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
        run = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True, env=env)
        r = json.loads(run.stdout.strip().splitlines()[-1])
        results.append(r)
        label = "tuned" if r["allocator_tuned"] else "glibc default"
        print(f"allocator {label:13s}: memory attention unpadded {r['memory_attention_unpadded']['median_s']:.3f} s, "
              f"padded {r['memory_attention_padded']['median_s']:.3f} s (medians); image encoder "
              f"{r['image_encoder']['median_s']:.3f} s")
    out = write_json({"repeats": args.repeats, "machine": machine_info(), "results": results}, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
