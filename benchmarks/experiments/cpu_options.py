"""Experiment (issue 28, item 3): torch's CPU options on SAM2.1's image encoder and memory attention.

Times, per option, (a) one image-encoder forward of a 1024 x 1024 frame and (b) one memory
attention call as propagation makes it (7 memory frames and their object pointers), for
``sam2.1_hiera_tiny`` with random weights (time does not depend on them), and measures how
far the option moves the masks from float32 on real weights: ``lit-tiny`` propagating its
largest object through a generated 12-frame nuclei clip (256 px), the option applied to the
same module(s), IoU of each frame's mask with the float32 run.

Options: intra-op threads 1 / 2; bfloat16 autocast (this CPU reports avx512_bf16); float16
autocast; ``torch.compile`` of the encoder, and of the memory attention under bfloat16
autocast (default mode; compile time reported apart); channels-last memory format for the
encoder; napari-lit's bfloat16 attention for the memory attention
(:func:`napari_lit.core._sam2.set_attention_precision`).

    python benchmarks/experiments/cpu_options.py [--repeats 3] [--out benchmarks/experiments/results/cpu_options.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _output import write_json  # noqa: E402


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (compiles, allocates)
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t0)
    return float(np.median(best))


def _autocast(dtype):
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


class _Patched:
    """Run ``module.forward`` under an autocast (outputs cast back to float32) while active."""

    def __init__(self, module, dtype):
        self.module, self.dtype = module, dtype

    def __enter__(self):
        import torch

        forward = self.module.forward
        dtype = self.dtype

        def patched(*args, **kwargs):
            with torch.autocast("cpu", dtype=dtype):
                out = forward(*args, **kwargs)
            return _to_float(out)

        self.module.forward = patched
        return self

    def __exit__(self, *exc):
        del self.module.forward


def _to_float(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(v) for v in out)
    return out


def encoder_and_attention_times(repeats: int, threads: int, dtype=None, compile_encoder=False,
                                channels_last=False, bf16_attention=False, compile_attention=False) -> dict:
    import torch

    from napari_lit.models import MODELS
    from napari_lit.models.build import build_sam2_model

    from napari_lit.core._sam2 import set_attention_precision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_sam2_model(MODELS["sam2.1_hiera_tiny"].config, target="video", device="cpu").eval()
    if bf16_attention:
        set_attention_precision(model, "bfloat16")
    attention = torch.compile(model.memory_attention) if compile_attention else model.memory_attention
    x = torch.randn(1, 3, 1024, 1024)
    encoder = model.image_encoder
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    compile_s = None
    if compile_encoder:
        encoder = torch.compile(encoder)
        t0 = time.perf_counter()
        with torch.inference_mode(), _autocast(dtype):
            encoder(x)
        compile_s = time.perf_counter() - t0
    with torch.inference_mode():
        def enc():
            with _autocast(dtype):
                encoder(x)
        t_enc = _time(enc, repeats)
        # memory attention as sam2 calls it on a tracked frame: 64 x 64 tokens of the current
        # frame, 7 memory frames of 64 x 64 (64-d after the memory encoder) and 16 object pointers
        d, mem_dim, hw = model.hidden_dim, model.mem_dim, 64 * 64
        curr = [torch.randn(hw, 1, d)]
        curr_pos = [torch.randn(hw, 1, d)]
        memory = torch.randn(7 * hw + 16 * (d // mem_dim), 1, mem_dim)
        memory_pos = torch.randn_like(memory)

        def att():
            with _autocast(dtype):
                attention(curr=curr, curr_pos=curr_pos, memory=memory, memory_pos=memory_pos,
                                       num_obj_ptr_tokens=16 * (d // mem_dim))
        t_att = _time(att, repeats)
    return {"encoder_s": t_enc, "memory_attention_s": t_att, "compile_s": compile_s}


def mask_agreement(dtype, modules=("image_encoder", "memory_attention"), threads: int = 2,
                   bf16_attention: bool = False) -> dict:
    """IoU of lit-tiny's masks with the option vs float32 on a generated clip."""
    import torch

    from napari_lit.core._sam2 import set_attention_precision

    from napari_lit.core.tracker import Tracker
    from napari_lit.models import load_predictor
    from napari_lit.training.synthetic import generate_clip

    torch.set_num_threads(threads)
    predictor = load_predictor("lit-tiny", device="cpu")
    clip = generate_clip(np.random.default_rng(1), 12, 256, kind="nuclei")
    frames = clip.frames[..., 0] if clip.frames.ndim == 4 else clip.frames
    ids, counts = np.unique(clip.labels[0][clip.labels[0] > 0], return_counts=True)
    mask = clip.labels[0] == ids[np.argmax(counts)]

    def run(attention="float32"):
        t = Tracker(predictor, frames, zoom="off", features=None, attention=attention)
        t.add_mask(0, 1, mask)
        out = {r.frame_idx: r.mask(1) for r in t.propagate(0, "forward")}
        t.close()
        return out

    reference = run()
    if bf16_attention:
        other = run("bfloat16")
        set_attention_precision(predictor, "float32")
    else:
        with contextlib.ExitStack() as stack:
            for name in modules:
                stack.enter_context(_Patched(getattr(predictor, name), dtype))
            other = run()
    ious = [float((reference[f] & other[f]).sum() / max((reference[f] | other[f]).sum(), 1)) for f in reference]
    return {"min_iou_vs_float32": min(ious), "mean_iou_vs_float32": float(np.mean(ious)),
            "frames_identical": int(sum(np.array_equal(reference[f], other[f]) for f in reference))}


def main(argv=None) -> int:
    import torch

    from napari_lit.bench.runner import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--masks-only", action="store_true",
                        help="only redo the lit-tiny mask agreement of the lower-precision rows in --out")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_options.json"))
    args = parser.parse_args(argv)
    if args.masks_only:
        result = json.loads(Path(args.out).read_text())
        for r in result["results"]:
            if "lit_tiny_masks" in r:
                dtype = torch.bfloat16 if "bfloat16" in r["option"] else torch.float16
                r["lit_tiny_masks"] = mask_agreement(None if "napari-lit" in r["option"] else dtype,
                                                     bf16_attention="napari-lit" in r["option"])
                print(r["option"], r["lit_tiny_masks"])
        write_json(result, args.out)
        return 0
    options = [
        ("float32, 1 thread", dict(threads=1)),
        ("float32, 2 threads", dict(threads=2)),
        ("bfloat16 autocast, 2 threads", dict(threads=2, dtype=torch.bfloat16)),
        ("float16 autocast, 2 threads", dict(threads=2, dtype=torch.float16)),
        ("channels-last encoder, 2 threads", dict(threads=2, channels_last=True)),
        ("bfloat16 attention (napari-lit), 2 threads", dict(threads=2, bf16_attention=True)),
    ]
    if not args.skip_compile:
        options.append(("torch.compile encoder, 2 threads", dict(threads=2, compile_encoder=True)))
        options.append(("torch.compile memory attention + bfloat16 autocast, 2 threads",
                        dict(threads=2, compile_attention=True, dtype=torch.bfloat16)))
    rows = []
    for label, kw in options:
        try:
            r = encoder_and_attention_times(args.repeats, **kw)
        except Exception as exc:  # noqa: BLE001 - an option that does not run here is a result too
            r = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        r["option"] = label
        if kw.get("dtype") is not None and not kw.get("compile_attention"):
            r["lit_tiny_masks"] = mask_agreement(kw["dtype"])
        if kw.get("bf16_attention"):
            r["lit_tiny_masks"] = mask_agreement(None, bf16_attention=True)
        rows.append(r)
        print(json.dumps(r))
    base = rows[1]
    for r in rows:
        if "encoder_s" in r:
            r["encoder_speedup_vs_float32_2_threads"] = base["encoder_s"] / r["encoder_s"]
            r["attention_speedup_vs_float32_2_threads"] = base["memory_attention_s"] / r["memory_attention_s"]
    out = write_json({"torch": torch.__version__, "machine": machine_info(), "repeats": args.repeats,
                      "results": rows}, args.out)
    for r in rows:
        if "encoder_s" in r:
            extra = f"  lit-tiny masks min IoU {r['lit_tiny_masks']['min_iou_vs_float32']:.3f}" if "lit_tiny_masks" in r else ""
            print(f"{r['option']:36s} encoder {r['encoder_s']:6.2f} s ({r['encoder_speedup_vs_float32_2_threads']:.2f}x)"
                  f"  memory attention {r['memory_attention_s'] * 1000:7.0f} ms "
                  f"({r['attention_speedup_vs_float32_2_threads']:.2f}x){extra}")
        else:
            print(f"{r['option']:36s} {r['error']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
