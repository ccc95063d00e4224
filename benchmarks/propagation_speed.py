"""Propagation speed and peak memory of a model on a long uint16 stack.

Writes a synthetic (N, Y, X) uint16 time-lapse to a zarr array on disk (a 50-frame generated
clip played back and forth, so motion stays continuous), prompts the largest objects on frame
0 with their masks (``--objects``, one by default), propagates forward with the Tracker while writing every frame to a LabelStore
(the CLI's path), and reports frames/s overall and in the first and last 10 % of frames, and
the process's peak resident memory.

With ``--stock``, the same frames (as the JPEG folder sam2 reads) also go through sam2's
stock ``init_state`` + ``propagate_in_video``, which loads every frame into memory and keeps
every frame's outputs, in a separate process, so the two peak-memory figures compare in one
run (issue 6's benchmark: ``--frames 2000 --size 1024 --stock``).

    python benchmarks/propagation_speed.py [--frames 500] [--size 512] [--model lit-tiny]
        [--threads 2] [--objects 1] [--zoom off|auto] [--tiles 1] [--stock]
        [--out benchmarks/results/propagation_speed.json]

``--zoom`` defaults to ``off`` here so that older results compare; issue 23's table runs
both on a 1024 x 1024 stack of 2 x 2 tiles (``--tiles 2``) with 1, 8 and 32 objects.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from _output import write_json


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def make_stack(path: Path, n_frames: int, size: int, seed: int = 0, tiles: int = 1):
    """Write the stack (run in a child process, so its memory does not count as ours).

    With ``tiles`` > 1 each frame is a ``tiles`` x ``tiles`` grid of clips of side
    ``size // tiles`` (their own seeds), so a large frame holds many small nuclei.
    """
    import zarr

    from napari_lit.training.synthetic import MotionLevel, generate_clip

    side = size // tiles
    grey = np.zeros((50, side * tiles, side * tiles), np.uint16)
    labels0 = np.zeros((side * tiles, side * tiles), np.int32)
    for k in range(tiles * tiles):
        clip = generate_clip(np.random.default_rng(seed + k), 50, side, kind="nuclei",
                             motion=MotionLevel(2.0, 0.02, 0.0))
        r, c = divmod(k, tiles)
        sl = (slice(r * side, (r + 1) * side), slice(c * side, (c + 1) * side))
        grey[(slice(None),) + sl] = clip.frames[..., 0].astype(np.uint16) * 200 + 1000
        labels0[sl] = np.where(clip.labels[0] > 0, clip.labels[0] + 1000 * k, 0)
    arr = zarr.open_array(str(path), mode="w", shape=(n_frames,) + grey.shape[1:], chunks=(1,) + grey.shape[1:],
                          dtype="uint16")
    order = np.concatenate([np.arange(50), np.arange(49, -1, -1)])
    for t in range(n_frames):
        arr[t] = grey[order[t % len(order)]]
    np.save(str(path) + ".labels0.npy", labels0)


def run(n_frames: int, size: int, model: str, threads: int, n_objects: int = 2, prefetch: int = 0,
        session: bool = False, zoom: str = "off", tiles: int = 1) -> dict:
    import torch

    from napari_lit.core import FrameSource, LabelStore, Tracker
    from napari_lit.models import load_predictor

    import multiprocessing

    import zarr

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.zarr"
        child = multiprocessing.get_context("spawn").Process(target=make_stack, args=(path, n_frames, size, 0, tiles))
        child.start()
        child.join()
        stack = zarr.open_array(str(path), mode="r")
        labels0 = np.load(str(path) + ".labels0.npy")
        rss_before = _peak_rss_mb()
        predictor = load_predictor(model, device="cpu")
        source = FrameSource(stack, image_size=predictor.image_size, prefetch=prefetch)
        ids, counts = np.unique(labels0[labels0 > 0], return_counts=True)
        objects = ids[np.argsort(counts)[::-1][:n_objects]]
        areas = np.sort(counts)[::-1][:n_objects]
        if session:  # the widget's path: a session folder, a fsynced log line and the entropy per frame
            from napari_lit.core.session import LitSession

            lit = LitSession.create_in(Path(tmp) / "run.litsession", predictor, source, learn=False, zoom=zoom)
            tracker = lit.tracker
            for obj in objects:
                lit.add_mask(0, int(obj), labels0 == obj)
            frames_iter = lit.propagate(direction="forward")
        else:  # the CLI's --out path: the tracker and a label store
            tracker = Tracker(predictor, source, zoom=zoom)
            for obj in objects:
                tracker.add_mask(0, int(obj), labels0 == obj)
            store = LabelStore.create(Path(tmp) / "labels.zarr", (n_frames, size, size))
            frames_iter = tracker.propagate(direction="forward")
        times, rss = [], []
        t_prev = time.perf_counter()
        for result in frames_iter:
            if not session:
                store.write_frame(result.frame_idx, result.labels())
            now = time.perf_counter()
            times.append(now - t_prev)
            t_prev = now
            if result.frame_idx % max(1, n_frames // 20) == 0:
                rss.append([int(result.frame_idx), _current_rss_mb()])
        held, pruned = tracker.state_frames(), tracker.n_pruned
        if session:
            lit.close()
    times = np.array(times[1:])  # frame 0 is the prompt frame (no model pass)
    k = max(1, len(times) // 10)
    return {
        "model": model,
        "frames": n_frames,
        "frame_size": [size, size],
        "dtype": "uint16",
        "objects": len(objects),
        "object_area_px": [int(areas.min()), int(areas.max())] if len(areas) else [0, 0],
        "zoom": zoom,
        "tiles": tiles,
        "views": len(tracker.states),
        "threads": threads,
        "prefetch": prefetch,
        "path": "session folder (LitSession)" if session else "tracker + label store",
        "frames_per_s": float(1 / times.mean()),
        "frames_per_s_first_10pct": float(1 / times[:k].mean()),
        "frames_per_s_last_10pct": float(1 / times[-k:].mean()),
        "ms_per_frame_median": float(np.median(times) * 1000),
        "peak_rss_mb": _peak_rss_mb(),
        "peak_rss_mb_before_model": rss_before,
        "rss_mb_by_frame": rss,
        "sam2_state_frames_at_end": held,
        "sam2_state_frames_dropped": pruned,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }


def _write_jpegs(stack, folder: Path) -> None:
    """The stack as the numbered JPEG folder sam2's stock loader reads (8-bit, contrast
    stretched over the whole stack as sam2 users do before exporting)."""
    from PIL import Image

    folder.mkdir()
    lo, hi = float(np.min(stack[0])), float(np.max(stack[0]))
    for t in range(stack.shape[0]):
        frame = np.clip((np.asarray(stack[t], np.float32) - lo) / max(hi - lo, 1) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(frame).convert("RGB").save(folder / f"{t:05d}.jpg", quality=95)


def _stock_child(jpeg_dir: str, labels0_path: str, model: str, threads: int, n_objects: int, out_path: str):
    """sam2's own init_state (every frame loaded) and propagate_in_video (every output kept)."""
    import torch

    from napari_lit.models import load_predictor

    torch.set_num_threads(threads)
    predictor = load_predictor(model, device="cpu")
    labels0 = np.load(labels0_path)
    rss_before = _peak_rss_mb()
    t0 = time.perf_counter()
    state = predictor.init_state(video_path=jpeg_dir)
    load_s = time.perf_counter() - t0
    ids, counts = np.unique(labels0[labels0 > 0], return_counts=True)
    for obj in ids[np.argsort(counts)[::-1][:n_objects]]:
        predictor.add_new_mask(state, frame_idx=0, obj_id=int(obj), mask=labels0 == obj)
    times, t_prev = [], time.perf_counter()
    for _ in predictor.propagate_in_video(state):
        now = time.perf_counter()
        times.append(now - t_prev)
        t_prev = now
    times = np.array(times[1:])
    k = max(1, len(times) // 10)
    Path(out_path).write_text(json.dumps({
        "frames_per_s": float(1 / times.mean()),
        "frames_per_s_first_10pct": float(1 / times[:k].mean()),
        "frames_per_s_last_10pct": float(1 / times[-k:].mean()),
        "load_s": load_s,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_rss_mb_before_state": rss_before,
    }))


def run_stock(n_frames: int, size: int, model: str, threads: int, n_objects: int) -> dict:
    """The stock sam2 path on the same generated stack, in a child process."""
    import multiprocessing

    import zarr

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.zarr"
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=make_stack, args=(path, n_frames, size))
        child.start()
        child.join()
        _write_jpegs(zarr.open_array(str(path), mode="r"), Path(tmp) / "jpeg")
        out = Path(tmp) / "stock.json"
        child = ctx.Process(target=_stock_child, args=(str(Path(tmp) / "jpeg"), str(path) + ".labels0.npy", model,
                                                       threads, n_objects, str(out)))
        child.start()
        child.join()
        if child.exitcode != 0:
            return {"failed": f"exit code {child.exitcode} (out of memory?)"}
        return json.loads(out.read_text())


def main(argv=None) -> int:
    from napari_lit.bench.runner import machine_info

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=500)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--model", default="lit-tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--objects", type=int, default=1, help="objects tracked at once")
    p.add_argument("--prefetch", type=int, default=0, help="frames read ahead in a background thread")
    p.add_argument("--session", action="store_true",
                   help="through a LitSession in a session folder (fsynced log line and entropy per frame)")
    p.add_argument("--zoom", choices=("auto", "off"), default="off",
                   help="object-centred zoom (the tracker's default is auto; off = the whole frame)")
    p.add_argument("--tiles", type=int, default=1,
                   help="frames made of tiles x tiles generated clips (more, smaller nuclei)")
    p.add_argument("--stock", action="store_true", help="also run sam2's stock init_state on the same frames")
    p.add_argument("--out", default="benchmarks/results/propagation_speed.json")
    args = p.parse_args(argv)
    result = run(args.frames, args.size, args.model, args.threads, args.objects, args.prefetch, args.session,
                 args.zoom, args.tiles)
    result["last_over_first_10pct_time"] = result["frames_per_s_first_10pct"] / result["frames_per_s_last_10pct"]
    if args.stock:
        stock = run_stock(args.frames, args.size, args.model, args.threads, args.objects)
        result["stock_sam2"] = stock
        if "peak_rss_mb" in stock:
            result["stock_over_ours_peak_rss"] = stock["peak_rss_mb"] / result["peak_rss_mb"]
    result["machine"] = machine_info()
    out = write_json(result, args.out)
    for k, v in result.items():
        print(f"{k:28s} {v:.2f}" if isinstance(v, float) else f"{k:28s} {v}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
