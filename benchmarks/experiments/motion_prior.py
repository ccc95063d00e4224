"""Does a motion prior help lit-tiny track, without retraining? (issue 24, item 4)

On each tracked frame (no click, no mask: a frame propagated from memory) the previous
frame's mask logits, warped to this frame by OpenCV's DIS optical flow between the two
views the model sees, go to the mask decoder as its dense mask prompt (the prompt
encoder's mask input, through which sam2's training -- and lit-tiny's -- feeds the last
logits back on a frame corrected by clicks). The frame stays a tracked frame (not a
conditioning one). Scored as ``napari-lit bench --method propagate --init mask`` (zoom on) on the
held-back sequences of ``../shared/train`` (never dev), with the prior and without it, the
flow peer beside.

    .venv/bin/python benchmarks/experiments/motion_prior.py --out benchmarks/experiments/results/motion_prior.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT.parent / "shared" / "train"


def _grey(image) -> np.ndarray:
    """A model input (3, H, W), ImageNet-normalised float tensor, as 8-bit grey."""
    a = image.detach().float().cpu().numpy().mean(axis=0)
    lo, hi = np.percentile(a, (0.5, 99.5))
    return np.clip((a - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)


def warped_logits(prev_logits, prev_image, image, flow_engine):
    """``prev_logits`` (1, 1, h, w) warped from the previous view to this one (backward warp
    along the DIS flow from this view to the previous one)."""
    import cv2
    import torch

    flow = flow_engine.calc(_grey(image), _grey(prev_image), None)  # this -> previous, px of the view
    h, w = prev_logits.shape[-2:]
    H, W = flow.shape[:2]
    small = cv2.resize(flow, (w, h), interpolation=cv2.INTER_AREA) * np.array([w / W, h / H], np.float32)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    src = prev_logits[0, 0].detach().float().cpu().numpy()
    out = cv2.remap(src, gx + small[..., 0], gy + small[..., 1], cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return torch.from_numpy(out)[None, None].to(prev_logits.device)


def install_prior(scale: float = 1.0):
    """Patch sam2's per-frame inference so tracked frames get the warped previous logits."""
    import cv2
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    original = SAM2VideoPredictor._run_single_frame_inference
    engine = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    counts = {"prior": 0, "frames": 0}

    def run(self, inference_state, output_dict, frame_idx, batch_size, is_init_cond_frame, point_inputs,
            mask_inputs, reverse, run_mem_encoder, prev_sam_mask_logits=None):
        counts["frames"] += 1
        if (not is_init_cond_frame and point_inputs is None and mask_inputs is None
                and prev_sam_mask_logits is None and batch_size == 1):
            p = frame_idx + (1 if reverse else -1)
            prev = output_dict["cond_frame_outputs"].get(p) or output_dict["non_cond_frame_outputs"].get(p)
            if prev is not None:
                images = inference_state["images"]
                prior = scale * warped_logits(prev["pred_masks"], images[p], images[frame_idx], engine)
                counts["prior"] += 1
                # sam2 takes prev_sam_mask_logits only beside clicks, and a mask input as the
                # output itself: switched off for this call, the decoder gets it as its dense prompt
                keep = self.use_mask_input_as_output_without_sam
                self.use_mask_input_as_output_without_sam = False
                try:
                    return original(self, inference_state, output_dict, frame_idx, batch_size,
                                    is_init_cond_frame, None, prior, reverse, run_mem_encoder, None)
                finally:
                    self.use_mask_input_as_output_without_sam = keep
        return original(self, inference_state, output_dict, frame_idx, batch_size, is_init_cond_frame,
                        point_inputs, mask_inputs, reverse, run_mem_encoder, prev_sam_mask_logits)

    SAM2VideoPredictor._run_single_frame_inference = run
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(TRAIN))
    p.add_argument("--sequences", nargs="*", default=None, help="default: the held-back split's sequences")
    p.add_argument("--arms", nargs="*", default=["none", "flow", "prior"])
    p.add_argument("--scale", type=float, default=1.0, help="factor on the warped logits")
    p.add_argument("--model", default="lit-tiny")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from napari_lit.bench.runner import run_benchmark
    from napari_lit.training.real import scan_train_data, split_train_data

    seqs = args.sequences or [q.name for q in split_train_data(scan_train_data(args.data))[1] if q.n_frames > 1]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for arm in args.arms:
        if arm == "prior":
            counts = install_prior(args.scale)
        r = run_benchmark(args.data, "flow" if arm == "flow" else "propagate", "mask", model=args.model,
                          sequences=seqs, progress=False)
        per = {}
        for s in r["sequences"]:
            per.setdefault(s["name"], []).append(s["mean_j"])
        results[arm if arm != "prior" else f"prior x{args.scale:g}"] = {
            "mean_j": r["mean_j"], "seconds": r["seconds"],
            "per_sequence": {k: float(np.mean(v)) for k, v in per.items()},
            **({"prior_frames": counts["prior"]} if arm == "prior" else {})}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(arm, f"mean J {r['mean_j']:.3f}", {k: round(float(np.mean(v)), 3) for k, v in per.items()},
              flush=True)
        if arm == "prior":  # the patch stays for the process: run it last or alone
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
