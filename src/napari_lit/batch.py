"""Apply what a session learned to a whole experiment, on a ``dask.distributed`` cluster.

A **recipe** is the portable result of a session (:func:`export_recipe`): the model's name and
checksum, the adapter of every object that learned from corrections (and the adapter shared
by all objects, when the session's adapter scope is ``sequence`` or ``both``), and the prompts (clicks,
boxes, masks) with the frames they were given on. :func:`run_batch` segments many stacks with
it: one task per stack on a cluster (a ``LocalCluster`` by default, or an existing scheduler),
the model loaded once per worker, each stack's labels written by the worker to its own label
store (renamed into place when complete, so a rerun skips finished stacks and never takes a
half-written one for done), and a summary table (objects, frames, mean masked entropy, frames
flagged for review) of every stack, failed ones included.

The recipe's prompts are copied to each stack at the same frames and pixel positions (the
positions of a plate are imaged the same way); objects with an adapter are tracked with the
adapted decoder on every frame (the ``lit-always`` mode), since no user is there to flag
frames.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

__all__ = ["RECIPE_FILE", "export_recipe", "detect_objects", "expand_inputs", "segment_stack", "run_batch"]

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.json"
SUMMARY_FILE = "summary.csv"
#: A frame is flagged for review when an object's masked entropy reaches this (napari-lit's
#: review threshold scale, Lazy-XMem eq. 4).
REVIEW_ENTROPY = 0.2


def export_recipe(session, folder: Union[str, Path], prompts: str = "copy", detect_frame: int = 0,
                  polarity: str = "bright", min_area: int = 30, divisions: Optional[float] = None) -> Path:
    """Write the portable result of ``session`` to the new folder ``folder``.

    Parameters
    ----------
    session : napari_lit.core.session.LitSession
    folder : str or Path
        Created; ``recipe.json``, ``adapters/obj<k>/`` (peft weights + config),
        ``adapters/sequence/`` (the shared adapter, if any) and ``masks/*.npy`` (mask prompts).
    prompts : {"copy", "detect"}
        ``copy``: the session's prompts at the same frames and positions on every stack (a
        fixed field of view). ``detect``: one positive click per object detected on frame
        ``detect_frame`` of each stack (:func:`detect_objects`: Otsu threshold, connected
        components of at least ``min_area`` px, ``polarity`` bright or dark objects), ids
        1..K; with the shared adapter (scope ``sequence`` or ``both``) every detected
        object uses it, and otherwise, when the session taught exactly one object's
        adapter, every detected object uses that one.

    divisions : float, optional
        The division rule for every stack (:meth:`~napari_lit.core.session.LitSession.propagate`'s
        ``divisions``: a mask that splits into two parts, the smaller at least this share of
        the two, divides into two daughters while propagating forward); each stack's lineage
        is kept in its label store's attributes (``napari_lit.lineage``), which ``napari-lit
        export --format ctc|geff`` reads. None: off.

    Returns
    -------
    Path
        ``folder``.

    Raises
    ------
    ValueError
        If the session has no prompt.
    FileExistsError
        If ``folder`` exists and is not empty.
    """
    from dataclasses import asdict

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty")
    if prompts not in ("copy", "detect") or polarity not in ("bright", "dark"):
        raise ValueError(f"prompts must be copy or detect and polarity bright or dark; got {prompts!r}, {polarity!r}")
    given = sorted(session.prompts.items())
    if not given and prompts == "copy":
        raise ValueError("the session has no prompt to copy to other stacks")
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    entries = []
    for (frame, obj), prompt in given if prompts == "copy" else ():
        entry = {"frame": int(frame), "obj_id": int(obj), "kind": prompt["kind"]}
        if prompt["kind"] == "points":
            entry["points"] = np.asarray(prompt["points"], float).tolist()
            entry["labels"] = np.asarray(prompt["labels"], int).tolist()
        elif prompt["kind"] == "box":
            entry["box"] = np.asarray(prompt["box"], float).tolist()
        else:
            name = f"masks/frame{frame}-obj{obj}.npy"
            np.save(folder / name, np.asarray(prompt["mask"], bool))
            entry["mask"] = name
        entries.append(entry)
    from .core.adaptation import SHARED

    adapted = [obj for obj in session.adapter.own_adapters() if obj in session.tracker.obj_ids]
    for obj in adapted:
        session.adapter.save(folder / "adapters" / f"obj{obj}", obj)
    if session.adapter.has_shared:
        session.adapter.save(folder / "adapters" / "sequence", SHARED)
    predictor = session.tracker.predictor
    recipe = {
        "format": 1,
        "model": {"name": getattr(predictor, "napari_lit_model", None),
                  "sha256": getattr(predictor, "napari_lit_checksum", None),
                  "image_size": int(predictor.image_size)},
        "adapter": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(session.adapter.config).items()},
        "adapted_objects": adapted,
        "sequence_adapter": bool(session.adapter.has_shared),
        "frame_shape": list(session.tracker.frame_shape),
        "zoom": session.tracker.zoom,
        "prompts": entries,
        "prompt_mode": prompts,
        "detect": {"frame": int(detect_frame), "polarity": polarity, "min_area": int(min_area)},
        "divisions": None if divisions is None else float(divisions),
    }
    (folder / RECIPE_FILE).write_text(json.dumps(recipe, indent=2))
    return folder


def detect_objects(frame: np.ndarray, polarity: str = "bright", min_area: int = 30) -> List[tuple]:
    """One click per object of a frame: Otsu's threshold, connected components of at least
    ``min_area`` px, and for each the pixel deepest inside it (farthest from its edge).

    Parameters
    ----------
    frame : (Y, X) or (Y, X, C) ndarray
        Channels are averaged.
    polarity : {"bright", "dark"}
        Objects brighter (fluorescence) or darker than the background.
    min_area : int
        Smaller components are noise.

    Returns
    -------
    list of (y, x)
        Largest object first.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    img = np.asarray(frame, np.float32)
    if img.ndim == 3:
        img = img.mean(axis=-1)
    img = np.nan_to_num(img)
    if img.max() == img.min():
        return []
    fg = img > threshold_otsu(img) if polarity == "bright" else img < threshold_otsu(img)
    labels, n = ndi.label(fg)
    clicks = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        region = labels[sl] == i
        if region.sum() < min_area:
            continue
        dist = ndi.distance_transform_edt(region)
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        clicks.append((int(region.sum()), (sl[0].start + int(y), sl[1].start + int(x))))
    return [yx for _, yx in sorted(clicks, key=lambda c: -c[0])]


def expand_inputs(inputs: Sequence[str]) -> List[Path]:
    """Stacks from paths, glob patterns and CSV files (a ``path`` column, or the first one),
    in order, without duplicates.

    Raises
    ------
    FileNotFoundError
        If a pattern matches nothing or a path does not exist.
    """
    out: List[Path] = []
    for item in inputs:
        if str(item).lower().endswith(".csv") and Path(item).is_file():
            with open(item, newline="") as f:
                rows = list(csv.reader(f))
            header = [h.strip().lower() for h in rows[0]] if rows else []
            col = header.index("path") if "path" in header else 0
            base = Path(item).parent
            paths = [Path(r[col].strip()) for r in rows[1:] if r and r[col].strip()]
            out += [p if p.is_absolute() else base / p for p in paths]
        elif any(ch in str(item) for ch in "*?["):
            matched = sorted(glob.glob(str(item)))
            if not matched:
                raise FileNotFoundError(f"{item} matches no file")
            out += [Path(m) for m in matched]
        else:
            out.append(Path(item))
    missing = [str(p) for p in out if not p.exists()]
    if missing:
        raise FileNotFoundError(f"not found: {', '.join(missing[:5])}")
    seen, unique = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


_WORKER_MODELS: Dict[str, tuple] = {}  # recipe folder -> (predictor, adapter), one per worker process


def _model_for(recipe_dir: Path, device: str):
    """The recipe's model with its adapters, loaded once per process (a dask worker)."""
    key = f"{Path(recipe_dir).resolve()}|{device}"
    if key not in _WORKER_MODELS:
        from .core.adaptation import SHARED, AdapterConfig, DecoderAdapter
        from .models import load_predictor

        recipe = json.loads((Path(recipe_dir) / RECIPE_FILE).read_text())
        predictor = load_predictor(recipe["model"]["name"], device=device)
        want = recipe["model"].get("sha256")
        have = getattr(predictor, "napari_lit_checksum", None)
        if want and have and want != have:
            raise ValueError(f"the model {recipe['model']['name']} here (sha256 {have[:12]}) is not the one "
                             f"the recipe was made with ({want[:12]})")
        config = AdapterConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in recipe["adapter"].items()})
        adapter = DecoderAdapter(predictor, config)
        detect = recipe.get("prompt_mode") == "detect"
        with_shared = bool(recipe.get("sequence_adapter"))
        if with_shared:
            adapter.load(Path(recipe_dir) / "adapters" / "sequence", SHARED)
        if not (detect and with_shared):  # detected objects' ids are not the session's
            for obj in recipe["adapted_objects"]:
                adapter.load(Path(recipe_dir) / "adapters" / f"obj{obj}", int(obj))
        adapter.always = True
        one = recipe["adapted_objects"][0] if detect and not with_shared and \
            len(recipe["adapted_objects"]) == 1 else None
        if one is not None:  # detected objects all use the one adapter the session taught
            adapter = _SharedAdapter(adapter, int(one))
        _WORKER_MODELS[key] = (predictor, adapter)
    return _WORKER_MODELS[key]


class _SharedAdapter:
    """Routes every object's decoder calls to one taught object's adapter."""

    def __init__(self, adapter, obj_id: int):
        self.adapter, self.obj_id = adapter, obj_id

    def on_decoder_call(self, frame_idx: int, obj_id: Optional[int], tracking: bool) -> None:
        self.adapter.on_decoder_call(frame_idx, None if obj_id is None else self.obj_id, tracking)


def _output_path(out_dir: Path, stack: Path) -> Path:
    name = stack.name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif", ".npy"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(out_dir) / f"{name}-labels.zarr"


def segment_stack(stack_path: Union[str, Path], recipe_dir: Union[str, Path], out_dir: Union[str, Path],
                  device: str = "cpu", threads: Optional[int] = 1) -> Dict:
    """Segment one stack with a recipe; the task each dask worker runs.

    Parameters
    ----------
    stack_path : str or Path
        TIFF, zarr, OME-Zarr, .npy or frame folder, (N, Y, X[, C]).
    recipe_dir : str or Path
        From :func:`export_recipe`.
    out_dir : str or Path
        The labels go to ``out_dir/<stack name>-labels.zarr``, written under a temporary
        name and renamed when every frame is written; an existing one is left as it is.
    device : str
    threads : int, optional
        torch threads in this task (1 suits one task per worker process; None leaves it).

    Returns
    -------
    dict
        ``input``, ``labels``, ``status`` (``done`` or ``skipped``), ``objects``, ``frames``,
        ``mean_entropy``, ``flagged_frames``, ``seconds``.

    Raises
    ------
    ValueError
        If the stack does not fit the recipe (another frame size) or cannot be read.
    """
    import torch

    from .core.store import LabelStore

    t0 = time.perf_counter()
    stack_path, recipe_dir, out_dir = Path(stack_path), Path(recipe_dir), Path(out_dir)
    target = _output_path(out_dir, stack_path)
    if target.exists():
        store = LabelStore.open(target, mode="r")
        meta = dict(store.array.attrs.get("napari_lit", {}))
        return {**meta.get("summary", {}), "input": str(stack_path), "labels": str(target), "status": "skipped"}
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _segment(stack_path, recipe_dir, target, device, t0)
    finally:
        torch.set_num_threads(threads_before)


def _segment(stack_path: Path, recipe_dir: Path, target: Path, device: str, t0: float) -> Dict:
    from .core.frames import FrameSource
    from .core.store import LabelStore
    from .core.tracker import Tracker
    from .io.ngff import frames_of, is_ome_zarr, levels_of, open_ome_zarr
    from .io.readers import open_image

    recipe = json.loads((recipe_dir / RECIPE_FILE).read_text())
    predictor, adapter = _model_for(recipe_dir, device)
    lowres, levels = None, ()
    if is_ome_zarr(stack_path):
        ome = open_ome_zarr(stack_path)
        stack, lowres, _ = frames_of(ome, predictor.image_size)
        levels = levels_of(ome)
    else:
        stack = open_image(stack_path)
    source = FrameSource(stack, image_size=predictor.image_size, lowres=lowres, levels=levels)
    if list(source.frame_shape) != list(recipe["frame_shape"]):
        raise ValueError(f"{stack_path.name}: frames of {source.frame_shape} px, but the recipe's prompts are for "
                         f"{tuple(recipe['frame_shape'])} px frames")
    # recipes from before the zoom saw whole frames
    tracker = Tracker(predictor, source, record_decoder_inputs=True, zoom=recipe.get("zoom", "off"))
    tracker.context.listeners.append(adapter.on_decoder_call)
    partial = target.with_name(f".{target.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    try:
        n = source.n_frames
        prompts = list(recipe["prompts"])
        if recipe.get("prompt_mode") == "detect":
            d = recipe["detect"]
            frame = min(int(d["frame"]), n - 1)
            clicks = detect_objects(source.raw(frame), d["polarity"], d["min_area"])
            if not clicks:
                raise ValueError(f"{stack_path.name}: no object detected on frame {frame}")
            prompts = [{"frame": frame, "obj_id": k, "kind": "points", "points": [list(yx)], "labels": [1]}
                       for k, yx in enumerate(clicks, start=1)]
        for p in prompts:
            if p["frame"] >= n:
                log.warning("%s: prompt on frame %d skipped (the stack has %d frames)", stack_path.name, p["frame"], n)
                continue
            if p["kind"] == "points":
                tracker.add_points(p["frame"], p["obj_id"], p["points"], p["labels"], clear=True)
            elif p["kind"] == "box":
                tracker.add_box(p["frame"], p["obj_id"], p["box"])
            else:
                tracker.add_mask(p["frame"], p["obj_id"], np.load(recipe_dir / p["mask"]))
        store = LabelStore.create(partial, (n,) + source.frame_shape, attrs={"input": str(stack_path),
                                                                            "recipe": str(recipe_dir)})
        entropy: Dict[int, List[float]] = {}
        flagged = set()
        lineage: Dict[int, int] = {}
        results = (tracker.propagate(direction="both") if recipe.get("divisions") is None
                   else _propagate_dividing(tracker, float(recipe["divisions"]), lineage))
        for result in results:
            store.write_frame(result.frame_idx, result.labels())
            for obj, h in zip(result.obj_ids, result.masked_entropy()):
                entropy.setdefault(int(obj), []).append(float(h))
                if h >= REVIEW_ENTROPY:
                    flagged.add(int(result.frame_idx))
        if len(store.frames_done) != n:
            raise RuntimeError(f"{stack_path.name}: only {len(store.frames_done)} of {n} frames were written")
        summary = {"objects": len(tracker.obj_ids), "frames": n,
                   "mean_entropy": round(float(np.mean([np.mean(v) for v in entropy.values()])), 6) if entropy else 0.0,
                   "flagged_frames": len(flagged)}
        if recipe.get("divisions") is not None:
            summary["divisions"] = len(set(lineage.values()))
        meta = dict(store.array.attrs.get("napari_lit", {}))
        store.array.attrs["napari_lit"] = {**meta, "summary": summary,
                                           "lineage": {str(d): int(m) for d, m in lineage.items()}}
    finally:
        tracker.close()
    partial.rename(target)  # complete: now it counts as done
    return {**summary, "input": str(stack_path), "labels": str(target), "status": "done",
            "seconds": round(time.perf_counter() - t0, 2)}


def _propagate_dividing(tracker, min_share: float, lineage: Dict[int, int]):
    """Propagate as ``tracker.propagate(direction="both")`` does, with the division rule
    forward from the earliest prompt (:func:`~napari_lit.core.session.find_division`; the
    session's rule, without its undo log): a divided mother is left out after her last
    frame, her daughters before their first, and propagation resumes from the division.
    ``lineage`` (daughter -> mother) is filled in. Frames before the earliest prompt are
    propagated backward after, without divisions."""
    from .core.session import find_division, outside_tracks_dropped, restarting_propagation

    ends: Dict[int, int] = {}
    starts: Dict[int, int] = {}

    def visit(result, d, fresh):
        result = outside_tracks_dropped(result, starts, ends)
        found = find_division(result, tracker.prompt_frames, min_share) if d == "forward" else None
        if found is None:
            return result, False
        f, (mother, parts) = result.frame_idx, found
        a = max(set(tracker.obj_ids) | set(lineage) | {0}) + 1
        ends[mother] = f - 1
        for daughter, part in zip((a, a + 1), parts):
            lineage[daughter], starts[daughter] = mother, f
            result = tracker.add_mask(f, daughter, part)
        return outside_tracks_dropped(result, starts, ends), True

    def run(start, d):
        return tracker.propagate(start_frame=start, direction=d)

    first = min(tracker.prompt_frames())
    return restarting_propagation(run, first, "both" if first > 0 else "forward", visit)


def run_batch(inputs: Sequence[Union[str, Path]], recipe_dir: Union[str, Path], out_dir: Union[str, Path],
              scheduler: Optional[str] = None, n_workers: int = 1, device: str = "cpu", retries: int = 2,
              progress: bool = True, client=None) -> List[Dict]:
    """Segment every stack of ``inputs`` with the recipe, one task per stack on a cluster.

    Parameters
    ----------
    inputs : sequence of str or Path
        Stacks (see :func:`expand_inputs` for globs and CSV files).
    recipe_dir : str or Path
    out_dir : str or Path
        Label stores and ``summary.csv`` go here.
    scheduler : str, optional
        Address of a running dask scheduler (its workers need napari-lit installed and the
        stacks, recipe and output folder at the same paths, e.g. on shared storage); default:
        a ``LocalCluster`` of ``n_workers`` single-threaded worker processes, closed at the end.
    n_workers : int
    device : str
    retries : int
        Times a failed task (an error, or its worker died) is tried again before it is
        reported as failed.
    progress : bool
    client : distributed.Client, optional
        Use this client (and its cluster) instead.

    Returns
    -------
    list of dict
        One row per stack, in input order: the :func:`segment_stack` summary, or
        ``status`` ``failed`` with the ``error``. Also written to ``out_dir/summary.csv``.
    """
    from distributed import Client, LocalCluster, as_completed

    stacks = expand_inputs([str(i) for i in inputs])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    own = client is None
    cluster = None
    if own:
        if scheduler:
            client = Client(scheduler)
        else:
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
    rows: Dict[int, Dict] = {}
    try:
        futures = {client.submit(segment_stack, str(s), str(recipe_dir), str(out_dir), device, 1,
                                 key=f"napari-lit-{i}-{s.name}", retries=retries, pure=False): i
                   for i, s in enumerate(stacks)}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(stacks), desc="batch", unit="stack")
        for future in as_completed(futures):
            i = futures[future]
            try:
                rows[i] = future.result()
            except Exception as exc:  # reported, never dropped
                rows[i] = {"input": str(stacks[i]), "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    table = [rows[i] for i in range(len(stacks))]
    columns = ["input", "status", "objects", "frames", "mean_entropy", "flagged_frames", "seconds", "labels", "error"]
    with open(out_dir / SUMMARY_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in table:
            writer.writerow(row)
    return table
