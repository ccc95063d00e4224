"""Batch throughput on a dask LocalCluster with 1 and 2 workers (issue 8).

Generates ``--stacks`` synthetic time-lapses (``--frames`` x ``--size`` px, uint16 TIFF, the
positions of one "plate"), teaches a session on the first (mask prompt on frame 0, one
correction learned), exports its recipe, then segments all stacks with ``run_batch`` on a
LocalCluster of 1 worker and of 2 workers (fresh output folders, one torch thread per
worker). Reports wall time, stacks/min, frames/s, scaling, the seconds per stack and the peak
memory of a worker, and writes them to a JSON file for docs/benchmarks.md.

    python benchmarks/batch_scaling.py [--stacks 16] [--frames 60] [--size 256]
        [--out benchmarks/results/batch_scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from _output import write_json


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stacks", type=int, default=16)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default="benchmarks/results/batch_scaling.json")
    args = p.parse_args(argv)

    import tifffile
    import torch
    from distributed import Client, LocalCluster

    from napari_lit.batch import export_recipe, run_batch
    from napari_lit.core.adaptation import AdapterConfig
    from napari_lit.core.session import LitSession
    from napari_lit.models import load_predictor
    from napari_lit.training.synthetic import generate_clip

    torch.set_num_threads(1)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = [generate_clip(np.random.default_rng(100 + i), args.frames, args.size, kind="nuclei")
                 for i in range(args.stacks)]
        stacks = []
        for i, c in enumerate(clips):
            path = tmp / f"pos{i:03d}.tif"
            tifffile.imwrite(path, (c.frames[..., 0].astype(np.uint16) * 200 + 1000))
            stacks.append(path)
        c = clips[0]
        obj = int(np.bincount(c.labels[0].ravel())[1:].argmax() + 1)
        predictor = load_predictor("lit-tiny", device="cpu")
        session = LitSession.create_in(tmp / "taught.litsession", predictor, tifffile.imread(stacks[0]),
                                       adapter_config=AdapterConfig())
        session.add_mask(0, obj, c.labels[0] == obj)
        list(session.propagate())
        k = args.frames // 2
        session.add_mask(k, obj, c.labels[k] == obj)
        list(session.learn_from(k, obj))
        recipe = export_recipe(session, tmp / "recipe")
        session.close()
        for n in args.workers:
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
            client.run(lambda: __import__("napari_lit.batch"))  # imports before the clock starts
            t0 = time.perf_counter()
            rows = run_batch(stacks, recipe, tmp / f"out-{n}", client=client, progress=False)
            wall = time.perf_counter() - t0
            peaks = client.run(_peak_rss_mb)
            client.close()
            cluster.close()
            done = [r for r in rows if r["status"] == "done"]
            runs.append({
                "workers": n, "wall_s": wall, "stacks": len(rows), "done": len(done),
                "stacks_per_min": 60 * len(done) / wall,
                "frames_per_s": sum(r["frames"] for r in done) / wall,
                "median_s_per_stack": float(np.median([r["seconds"] for r in done])),
                "worker_peak_rss_mb": max(peaks.values()),
            })
            print(json.dumps(runs[-1]))
    result = {
        "stacks": args.stacks, "frames": args.frames, "frame_size": [args.size, args.size], "dtype": "uint16",
        "model": "lit-tiny", "runs": runs,
        "scaling_2_vs_1": (runs[1]["stacks_per_min"] / runs[0]["stacks_per_min"]) if len(runs) > 1 else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    out = write_json(result, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
