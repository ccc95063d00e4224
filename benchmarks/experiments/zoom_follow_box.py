"""Which box of a predicted mask the object-centred zoom follows (issue 23, 2026-12-06).

Tracks every object of held-back training sequences of ``../shared/train`` (never dev) with
the embedded ``lit-tiny`` and ``napari-lit bench``'s protocol (``--method propagate``, mask
or click prompt), once per rule for the box that :mod:`napari_lit.core.tracker` refits the
window to (``zoom.object_box`` is replaced for the run), optionally with one of the other
changes tried beside it:

- rules: ``mask_box`` (the plain bounding box), ``main_parts`` (the box of the connected
  parts holding >= 10 % of the mask), ``share02`` (>= 2 %), ``near1`` / ``near05`` (main
  parts and any part within 1 / 0.5 of the largest part's size of it), ``spread2`` /
  ``spread15`` (the plain box unless it is more than 2 / 1.5 times longer than the main
  parts': today's ``object_box``);
- ``--cap F``: a refitted window's side changes at most F-fold per refit;
- ``--leak G``: a mask more than G times the previous frame's area is kept out of sam2's
  memory and the window is not refitted to it (``--leak-window-only``: only the latter);
- ``--context C``: ``ZoomConfig.context``.

Sequences: ``held-back`` = the held-back DAVIS videos (bus, flamingo, rollerblade) and frames
30-39 of ``ctc-fluo-simplus-02`` (its held-back tail, written to a temporary folder);
``simplus-02`` = the whole of ``ctc-fluo-simplus-02`` (frames 0-27 were trained on; the tail
alone is too short to tell the rules apart).

    python benchmarks/experiments/zoom_follow_box.py RULE {mask,click} {held-back,simplus-02}
        [--cap F] [--leak G [--leak-window-only]] [--context C]

Prints one line: mean J over objects and per sequence. Results of the runs that chose the
rule: ``results/zoom_follow_box.txt``.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

TRAIN = Path(__file__).resolve().parents[2] / ".." / "shared" / "train"
HELD_BACK_VIDEOS = ("davis16-bus", "davis16-flamingo", "davis16-rollerblade")


def near_box(mask, reach=1.0):
    """Main parts (>= 10 %) and every part whose box is within ``reach`` x the largest part's
    size of it."""
    from scipy import ndimage

    from napari_lit.core import zoom as Z

    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    parts, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 1:
        return Z.mask_box(mask)
    sizes = np.bincount(parts.ravel())[1:]
    big = int(np.argmax(sizes)) + 1
    objs = ndimage.find_objects(parts)
    b = objs[big - 1]
    h, w = b[0].stop - b[0].start, b[1].stop - b[1].start
    gy0, gy1, gx0, gx1 = b[0].start - reach * h, b[0].stop + reach * h, b[1].start - reach * w, b[1].stop + reach * w
    keep = np.zeros(n + 1, bool)
    for i, s in enumerate(objs, 1):
        near = s[0].stop > gy0 and s[0].start < gy1 and s[1].stop > gx0 and s[1].start < gx1
        keep[i] = near or sizes[i - 1] >= 0.1 * sizes.sum()
    keep[big] = True
    return Z.mask_box(keep[parts] & mask)


def rules():
    from napari_lit.core import zoom as Z

    return {
        "mask_box": Z.mask_box,
        "main_parts": lambda m: Z.object_box(m, spread=1.0),
        "share02": lambda m: Z.object_box(m, 0.02, spread=1.0),
        "near1": lambda m: near_box(m, 1.0),
        "near05": lambda m: near_box(m, 0.5),
        "spread2": lambda m: Z.object_box(m, spread=2.0),
        "spread15": lambda m: Z.object_box(m, spread=1.5),
    }


def held_back_folder(out: Path) -> Path:
    """Links to the held-back videos and frames 30-39 of ctc-fluo-simplus-02 under ``out``."""
    import tifffile

    for name in HELD_BACK_VIDEOS:
        (out / name).symlink_to((TRAIN / name).resolve())
    src, dst = TRAIN / "ctc-fluo-simplus-02", out / "ctc-fluo-simplus-02-tail"
    dst.mkdir()
    image = tifffile.imread(src / "image.tif")[30:40]
    labels = tifffile.imread(src / "labels.tif")[30:40]
    tifffile.imwrite(dst / "image.tif", image, compression="zlib")
    tifffile.imwrite(dst / "labels.tif", labels, compression="zlib")
    meta = json.loads((src / "meta.json").read_text())
    meta.update(n_frames=10, source_frames="t030..t039",
                objects=[int(o) for o in np.unique(labels) if o and (labels[0] == o).any()])
    (dst / "meta.json").write_text(json.dumps(meta))
    return out


def patch(rule: str, cap=None, leak=None, leak_window_only=False, context=None) -> None:
    import napari_lit.core.tracker as T
    from napari_lit.core import _sam2
    from napari_lit.core import zoom as Z

    T.object_box = rules()[rule]
    if cap is not None:
        def capped(window, box, frame_shape, size, config=Z.ZoomConfig(), velocity=(0.0, 0.0)):
            side = max(window[2] - window[0], window[3] - window[1])
            new = Z.follow(window, box, frame_shape, size, config, velocity)
            if new == tuple(window) or tuple(window) == Z.whole_frame(frame_shape) or new == Z.whole_frame(frame_shape):
                return new
            fitted = min(max(max(new[2] - new[0], new[3] - new[1]), side / cap), side * cap)
            centre = ((new[0] + new[2]) / 2, (new[1] + new[3]) / 2)
            return Z._place(centre, fitted, frame_shape)
        T.follow = capped
    if context is not None:
        T.ZoomConfig = functools.partial(Z.ZoomConfig, context=context)
    if leak is not None:
        propagate = T.Tracker.propagate

        def guarded(self, *args, **kwargs):
            area = {}
            for r in propagate(self, *args, **kwargs):
                f = r.frame_idx
                for o in r.obj_ids:
                    v = self._view_of[o]
                    m = r.mask(o).sum()
                    prev = area.get((o, f - v.step)) if v.step else None
                    if prev and m > leak * prev:
                        if not leak_window_only:
                            _sam2.forget_frame_memory(v.state, o, f)
                        if v.windowed and v.boxes.get(f - v.step) is not None:
                            v.boxes[f] = v.boxes[f - v.step]
                        area[(o, f)] = prev
                    else:
                        area[(o, f)] = m
                yield r
        T.Tracker.propagate = guarded


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rule", choices=sorted(rules()))
    p.add_argument("init", choices=("mask", "click"))
    p.add_argument("sequences", choices=("held-back", "simplus-02"))
    p.add_argument("--cap", type=float)
    p.add_argument("--leak", type=float)
    p.add_argument("--leak-window-only", action="store_true")
    p.add_argument("--context", type=float)
    args = p.parse_args(argv)
    from napari_lit.bench.runner import run_benchmark

    patch(args.rule, args.cap, args.leak, args.leak_window_only, args.context)
    with tempfile.TemporaryDirectory() as tmp:
        if args.sequences == "held-back":
            data = held_back_folder(Path(tmp))
        else:
            data = Path(tmp) / "ctc-fluo-simplus-02"
            data.symlink_to((TRAIN / "ctc-fluo-simplus-02").resolve())
        t = time.time()
        r = run_benchmark(data, method="propagate", init=args.init, progress=False)
    per = {}
    for e in r["sequences"]:
        per.setdefault(e["name"], []).append(e["mean_j"])
    per = {k: round(float(np.mean(v)), 3) for k, v in per.items()}
    extra = " ".join(f"{k}={v}" for k, v in (("cap", args.cap), ("leak", args.leak), ("context", args.context)) if v)
    print(f"{args.rule} {extra} {args.init} {args.sequences}: objects {r['mean_j']:.3f} ({len(r['sequences'])}), "
          f"per sequence {per} in {time.time() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
