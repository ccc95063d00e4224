"""``napari-lit bench``: segment every listed object of evaluation sequences and score it.

::

    napari-lit bench DATA_DIR --method propagate|static|flow --init mask|click --json OUT.json
                     [--model lit-tiny] [--config CFG] [--device auto]
                     [--sequences NAME ...] [--report-dir DIR] [--quiet]

For each object of each sequence (layout of ``shared/data/README.md``), the simulated user
prompts the first frame where the object appears in the ground truth: with that frame's
ground-truth mask (``--init mask``) or one positive click at the mask's interior point
farthest from its boundary (``--init click``, :func:`~napari_lit.bench.metrics.click_point`).

``propagate`` tracks the object from there forward and backward with the model (each object
alone: the tracker is reset between objects; ``--joint``: all objects of a sequence together,
as in the widget). ``static`` repeats the prompt frame's mask on every frame (for ``--init
click`` the mask the model made from the click): the baseline to beat. ``flow`` is the
classical peer with no learning: the prompt-frame mask warped from frame to frame along
OpenCV's DIS optical flow (:mod:`napari_lit.bench.flow`). ``static`` and ``flow`` with
``--init mask`` need no model and load none.

Every frame is scored with J and F (:mod:`napari_lit.bench.metrics`), the prompt frame
included. The JSON result is described in :func:`run_benchmark`; a Markdown table and a
per-frame plot are written beside it (:mod:`napari_lit.bench.report`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .interactive import (AUTO_METHODS, DEFAULT_TAU_M, DEFAULT_TAU_U, INTERACTIVE_METHODS, LEARNING_METHODS, robustness,
                          object_session, simulate_object, workload)
from ..core.uncertainty import NORMALIZATIONS
from .metrics import click_point, frame_scores

__all__ = ["METHODS", "INITS", "first_frame", "run_benchmark", "score_object", "score_objects", "build_parser",
           "main"]

logger = logging.getLogger(__name__)

METHODS = ("propagate", "static", "flow") + INTERACTIVE_METHODS
INITS = ("mask", "click")


def _usage_error(msg: str) -> Exception:
    from ..cli import UsageError

    return UsageError(msg)


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def first_frame(gt: np.ndarray) -> Optional[int]:
    """The frame where an object first appears: its prompt frame.

    Parameters
    ----------
    gt : (N, Y, X) ndarray of bool
        Ground truth of one object.

    Returns
    -------
    int or None
        Index of the first non-empty frame; None if the object is absent everywhere.
    """
    present = np.flatnonzero(gt.reshape(len(gt), -1).any(axis=1))
    return int(present[0]) if len(present) else None


def score_object(gt, method: str, init: str, tracker=None, obj_id: int = 1, entropy_norm: str = "area") -> Dict:
    """Prompt, segment and score one object through one sequence.

    Parameters
    ----------
    gt : (N, Y, X) ndarray of bool
        Ground truth of the object on every frame; must be non-empty somewhere.
    method : {"propagate", "static"}
    init : {"mask", "click"}
    tracker : napari_lit.core.Tracker, optional
        Over the sequence's frames; required unless ``method="static"`` and ``init="mask"``.
        It is reset first, so only this object is tracked.
    obj_id : int
        Id the object gets in the tracker.
    entropy_norm : {"area", "length"}
        ``propagate``: how the masked entropy is normalised (Lazy-XMem eq. 4's region size,
        or its square root; see :func:`napari_lit.core.uncertainty.masked_entropy`).

    Returns
    -------
    dict
        ``prompt_frame`` (int), ``click`` ((y, x) or None), ``j`` and ``f`` (lists of N
        floats, frame by frame), ``mean_j`` and ``mean_jf`` (floats, over all N frames).
        ``propagate`` adds ``entropy`` (N floats: the object's masked entropy, Lazy-XMem eq.
        2-4) and ``spearman``: Spearman's correlation of -entropy with J over the frames
        other than the prompt frame (:func:`entropy_iou_correlation`).

    Raises
    ------
    ValueError
        On an unknown method or init, a ground truth that is not (N, Y, X) or is empty on
        every frame, or a tracker whose frames differ from the ground truth in shape.
    """
    return score_objects({obj_id: gt}, method, init, tracker, entropy_norm=entropy_norm)[obj_id]


def score_objects(gts: Dict[int, np.ndarray], method: str, init: str, tracker=None,
                  entropy_norm: str = "area") -> Dict[int, Dict]:
    """Prompt several objects, each on the first frame where it appears, track them
    together (as the widget does) and score each.

    sam2 keeps a memory per object, so tracking objects together changes their masks little
    (on the dev sequences two of 29 objects' mean J moved, by at most 0.004); it changes
    their masked entropy: where objects compete for pixels, the entropy has |C| classes
    (Lazy-XMem eq. 2).

    Parameters
    ----------
    gts : dict of int -> (N, Y, X) ndarray of bool
        Ground truth of each object (its id in the tracker -> its masks); each must be
        non-empty somewhere, all of one shape.
    method, init, tracker, entropy_norm
        As in :func:`score_object`; the tracker is reset first.

    Returns
    -------
    dict of int -> dict
        Per object, what :func:`score_object` returns.

    Raises
    ------
    ValueError
        As :func:`score_object`, or when ``gts`` is empty or its masks differ in shape.
    """
    _check_choice("method", method, ("propagate", "static"))
    _check_choice("init", init, INITS)
    if not gts:
        raise ValueError("no object to score")
    gts = {int(k): np.asarray(v, dtype=bool) for k, v in gts.items()}
    shapes = {v.shape for v in gts.values()}
    if len(shapes) > 1:
        raise ValueError(f"the objects' ground truths differ in shape: {sorted(shapes)}")
    shape = shapes.pop()
    if len(shape) != 3:
        raise ValueError(f"ground truth must be (N, Y, X); got shape {shape}")
    prompt_frames = {}
    for obj_id, gt in gts.items():
        prompt_frames[obj_id] = first_frame(gt)
        if prompt_frames[obj_id] is None:
            raise ValueError(f"object {obj_id} is absent from every frame of the ground truth")
    needs_model = not (method == "static" and init == "mask")
    if needs_model:
        if tracker is None:
            raise ValueError(f"method {method!r} with init {init!r} needs a tracker")
        if (tracker.n_frames,) + tuple(tracker.frame_shape) != shape:
            raise ValueError(
                f"tracker frames {(tracker.n_frames,) + tuple(tracker.frame_shape)} differ from "
                f"the ground truth {shape}"
            )
        tracker.reset()
    n = shape[0]
    out = {}
    for obj_id, gt in gts.items():
        pf = prompt_frames[obj_id]
        click = None
        if init == "mask":
            prompt_mask = gt[pf]
            if needs_model:
                tracker.add_mask(pf, obj_id, prompt_mask)
        else:
            click = click_point(gt[pf])
            prompt_mask = tracker.add_points(pf, obj_id, [list(click)], [1]).mask(obj_id)
        out[obj_id] = {"prompt_frame": pf, "click": None if click is None else [int(click[0]), int(click[1])],
                       "j": np.full(n, np.nan), "f": np.full(n, np.nan), "entropy": np.full(n, np.nan),
                       "prompt_mask": prompt_mask}

    if method == "static":
        for obj_id, gt in gts.items():
            for i in range(n):
                out[obj_id]["j"][i], out[obj_id]["f"][i] = frame_scores(out[obj_id]["prompt_mask"], gt[i])
    else:
        for result in tracker.propagate(direction="both"):
            i = result.frame_idx
            entropy = result.masked_entropy(normalize=entropy_norm)
            for obj_id, gt in gts.items():
                o = out[obj_id]
                o["j"][i], o["f"][i] = frame_scores(result.mask(obj_id), gt[i])
                o["entropy"][i] = float(entropy[result.obj_ids.index(obj_id)])
        missing = np.flatnonzero(np.isnan(next(iter(out.values()))["j"]))
        if len(missing):  # not expected: propagation covers every frame
            raise RuntimeError(f"propagation did not reach frames {missing.tolist()}")
    for obj_id, o in out.items():
        j, f, entropy = o.pop("j"), o.pop("f"), o.pop("entropy")
        o.pop("prompt_mask")
        o.update({"j": j.tolist(), "f": f.tolist(), "mean_j": float(j.mean()),
                  "mean_jf": float(((j + f) / 2).mean())})
        if method == "propagate":
            o["entropy"] = entropy.tolist()
            o["spearman"] = entropy_iou_correlation(entropy, j, exclude=o["prompt_frame"])
    return out


def score_flow(gts: Dict[int, np.ndarray], init: str, frames, tracker=None) -> Dict[int, Dict]:
    """The classical peer: each object's prompt-frame mask warped along optical flow
    (:class:`~napari_lit.bench.flow.FlowTracker`, no learning), forward and backward from the
    frame where it first appears, and scored on every frame.

    Parameters
    ----------
    gts : dict of int -> (N, Y, X) ndarray of bool
        Ground truth of each object; each non-empty somewhere, all of one shape.
    init : {"mask", "click"}
        ``mask``: the prompt-frame mask is the ground truth's; ``click``: it is the model's
        answer to one click at the mask's innermost point (each object alone).
    frames : array-like, (N, Y, X) or (N, Y, X, C)
        The sequence's image.
    tracker : napari_lit.core.Tracker, optional
        Required for ``init="click"``; reset before each object.

    Returns
    -------
    dict of int -> dict
        Per object: ``prompt_frame``, ``click``, ``j``, ``f``, ``mean_j``, ``mean_jf`` as
        :func:`score_object` gives them.

    Raises
    ------
    ValueError
        On an unknown init, masks of different shapes or not (N, Y, X), an object absent
        everywhere, or ``init="click"`` without a tracker.
    """
    from .flow import FlowTracker

    _check_choice("init", init, INITS)
    if not gts:
        raise ValueError("no object to score")
    gts = {int(k): np.asarray(v, dtype=bool) for k, v in gts.items()}
    shapes = {v.shape for v in gts.values()}
    if len(shapes) > 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"ground truths must be (N, Y, X) of one shape; got {sorted(shapes)}")
    if init == "click" and tracker is None:
        raise ValueError("the flow peer with init 'click' needs a tracker (the model answers the click)")
    prompts, clicks = {}, {}
    for obj_id, gt in gts.items():
        pf = first_frame(gt)
        if pf is None:
            raise ValueError(f"object {obj_id} is absent from every frame of the ground truth")
        if init == "mask":
            prompts[obj_id], clicks[obj_id] = (pf, gt[pf]), None
        else:
            tracker.reset()
            click = click_point(gt[pf])
            prompts[obj_id] = (pf, tracker.add_points(pf, obj_id, [list(click)], [1]).mask(obj_id))
            clicks[obj_id] = [int(click[0]), int(click[1])]
    masks = FlowTracker(frames).track(prompts)
    out = {}
    for obj_id, gt in gts.items():
        j, f = np.array([frame_scores(masks[obj_id][i], gt[i]) for i in range(len(gt))]).T
        out[obj_id] = {"prompt_frame": prompts[obj_id][0], "click": clicks[obj_id], "j": j.tolist(),
                       "f": f.tolist(), "mean_j": float(j.mean()), "mean_jf": float(((j + f) / 2).mean())}
    return out


def entropy_iou_correlation(entropy, j, exclude: Optional[int] = None) -> Optional[float]:
    """Spearman's rank correlation of -entropy with IoU over frames (Lazy-XMem Fig. 3: the
    higher, the better the masked entropy tells a good frame from a bad one).

    Parameters
    ----------
    entropy, j : (N,) float sequences
        Per-frame masked entropy and IoU of one object.
    exclude : int, optional
        A frame to leave out (the prompt frame: its mask is given, not predicted).

    Returns
    -------
    float or None
        None when fewer than 3 frames remain or either series is constant.
    """
    from scipy.stats import spearmanr

    e, j = np.asarray(entropy, float), np.asarray(j, float)
    keep = np.isfinite(e) & np.isfinite(j)
    if exclude is not None:
        keep[int(exclude)] = False
    if keep.sum() < 3 or np.ptp(e[keep]) == 0 or np.ptp(j[keep]) == 0:
        return None
    return float(spearmanr(-e[keep], j[keep]).statistic)


def _seed(name: str, obj: int, adapter=None) -> None:
    """Seed one object's run from its sequence name and id -- torch's global generator and
    the adapter's own (its LoRA initialisation and dropout draw from ``AdapterConfig.seed``)
    -- so a result repeats, also when other sequences run before it or not."""
    import dataclasses

    import torch

    seed = zlib.crc32(f"{name}/{int(obj)}".encode())
    torch.manual_seed(seed)
    if adapter is not None:
        adapter.config = dataclasses.replace(adapter.config, seed=seed)


def machine_info() -> Dict[str, object]:
    """What a benchmark ran on, recorded with its results.

    Seeded runs repeat exactly on one machine, but floating-point results (and so a few IoUs
    near tau, and the correction counts) differ between CPUs, and timings differ more: only
    results recorded on the same machine are compared.

    Returns
    -------
    dict
        ``cpu`` (the processor's model name, or ``platform.processor()`` where
        ``/proc/cpuinfo`` is missing), ``cpu_count`` (logical cores), ``platform``, ``python``,
        ``torch`` (installed version, None without torch) and ``torch_threads`` (None when torch
        was not imported by the run).
    """
    import os
    import platform
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    torch = sys.modules.get("torch")
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch_version,
            "torch_threads": torch.get_num_threads() if torch is not None else None}


def adaptation_ratio(entries: Sequence[Dict]) -> Dict[str, Optional[Dict[str, float]]]:
    """Median adaptation time per correction over the time to propagate 10 frames, per sequence.

    Issue 26 (c), after LIT's "about 45 frames" (~0.5 s per correction against SAM2.1's
    ~11 ms per frame): both times come from the same run on the same machine.

    Parameters
    ----------
    entries : sequence of dict
        Per-object results of an interactive method, with ``name``, ``adapt_ms`` and
        ``frame_ms`` (lists, ms).

    Returns
    -------
    dict
        Sequence name -> ``{"median_adapt_ms", "median_frame_ms", "ratio"}`` (ratio: median
        adaptation / (10 x median frame time); <= 1 meets the target), and ``"all"`` over
        every entry; a value is None where the sequence had no adaptation or no tracked frame.
    """
    groups: Dict[str, List[Dict]] = {}
    for e in entries:
        groups.setdefault(e["name"], []).append(e)

    def ratio(es):
        a = [ms for e in es for ms in e.get("adapt_ms", ())]
        f = [ms for e in es for ms in e.get("frame_ms", ())]
        if not a or not f:
            return None
        ma, mf = float(np.median(a)), float(np.median(f))
        return {"median_adapt_ms": ma, "median_frame_ms": mf, "ratio": ma / (10 * mf)}

    out = {name: ratio(es) for name, es in groups.items()}
    out["all"] = ratio(list(entries))
    return out


def run_benchmark(data_dir: Union[str, Path], method: str = "propagate", init: str = "mask",
                  model: str = "lit-tiny", config=None, device: str = "auto",
                  sequences: Optional[Sequence[str]] = None, predictor=None,
                  progress: Union[bool, Callable[[int, int], None]] = True,
                  tau: float = 0.5, max_corrections: Optional[int] = None,
                  adapter_config=None, tau_u: float = DEFAULT_TAU_U, tau_m: float = DEFAULT_TAU_M,
                  joint: bool = False, entropy_norm: str = "area", zoom: str = "auto",
                  j_at_k: Optional[int] = None, ctc_metrics: bool = False,
                  division_share: float = 0.2, division_growth: Optional[float] = None) -> Dict:
    """Benchmark a method on the evaluation sequences under ``data_dir``.

    Each object's run is seeded from its sequence name and id (LoRA initialisation and
    dropout), so results repeat and do not depend on which other sequences run.

    Parameters
    ----------
    data_dir : str or Path
        A folder of sequence folders, or one sequence folder (with ``meta.json``).
    method : {"propagate", "static", "flow", "frozen", "lit", ...}
        See :data:`METHODS` and the module notes.
    init : {"mask", "click"}
    model, config, device
        See :func:`napari_lit.models.load_predictor`; unused for ``static`` or ``flow`` with
        ``mask``.
    sequences : sequence of str, optional
        Names of the sequences to run (all by default).
    predictor : sam2.sam2_video_predictor.SAM2VideoPredictor, optional
        An already loaded predictor (then ``model``/``config``/``device`` are only recorded).
    progress : bool or callable
        True: a tqdm bar over (sequence, object) pairs on stderr; a callable is called as
        ``progress(done, total)`` after each pair instead.
    tau : float
        Interactive methods (``frozen``, ``lit``, ``lit-always``, ``lit-auto``): the simulated user
        corrects frames with IoU < ``tau`` (:mod:`napari_lit.bench.interactive`).
    max_corrections : int, optional
        Interactive methods: correction events allowed per object (unlimited by default).
    adapter_config : napari_lit.core.adaptation.AdapterConfig, optional
        Interactive methods: LoRA settings (napari-lit's defaults by default). Each object
        runs in a session of its own; with scope ``sequence`` or ``both`` the shared
        adapter (its weights and the corrections it replays) goes on from one object to
        the next of the same sequence, in the sequence's object order, as a user who
        corrects the objects one after another would see it.
    tau_u : float
        ``lit-auto``: masked-entropy jump that triggers the adapted prediction.
    tau_m : float
        ``lit-auto``, ``frozen-auto``: masked entropy above which a tracked frame is kept out
        of SAM2's memory.
    joint : bool
        ``propagate``, ``static``: prompt and track all objects of a sequence together, as
        the widget does (:func:`score_objects`; their masked entropy then has a class per
        object), instead of each object alone.
    entropy_norm : {"area", "length"}
        ``propagate``: normalisation of the recorded masked entropy (see :func:`score_object`).
    zoom : {"auto", "off"}
        The tracker's object-centred zoom (:class:`~napari_lit.core.tracker.Tracker`).
    j_at_k : int, optional
        Interactive methods: also measure J@k for k = 0..``j_at_k``, the object's mean J
        (over its frames) once the simulated user has made k corrections and the tracker
        ran on to the end (the run again with ``max_corrections`` k, from the same seed and
        the same carried shared adapter; effort held equal, as IoU@k in Kontogianni et al.
        2020). Each k at or below the run's own number of corrections costs one more run.
    ctc_metrics : bool
        ``propagate`` and ``flow``: for each time-lapse with a CTC lineage (``man_track.txt``),
        also track every cell of its first frame from one click each (flow: from the model's
        masks of those clicks) with the division rule and score
        TRA, DET, SEG and CHOTA (:mod:`napari_lit.bench.tracking`), in ``ctc`` (sequence ->
        scores).
    division_share, division_growth : float
        The division rule of ``ctc_metrics`` (the smaller daughter's share; the pair's
        largest size relative to the mother, None: not checked; see
        :func:`~napari_lit.core.session.split_daughters`).

    Returns
    -------
    dict
        ``model`` (None for ``static`` or ``flow`` with ``mask``, which use no model),
        ``weights_sha256`` (the checkpoint's SHA-256 as :func:`~napari_lit.models.load_predictor`
        recorded it; None without a model or for a predictor built otherwise), ``method``, ``init``,
        ``data_dir``, ``joint``, ``entropy_norm``, ``zoom`` (None when no model runs), ``mean_j`` and ``mean_jf`` (means over all (sequence, object) entries;
        None if there is none), ``seconds`` (wall time, model loading included), ``machine``
        (:func:`machine_info`) and ``sequences``: one entry per (sequence, object) with ``name``, ``object``, ``domain``,
        ``davis`` (bool), ``axes``, ``frames`` (N), ``prompt_frame``, ``click``, ``mean_j``,
        ``mean_jf``, and the per-frame lists ``j`` and ``f`` (N floats each); ``propagate``
        adds ``entropy`` and ``spearman`` per entry and ``median_spearman`` (see
        :func:`score_object`). Objects absent
        from every frame are skipped with a warning. Interactive methods add ``tau``,
        ``max_corrections``, ``total_corrections``, ``total_clicks``, ``adapter_accepts``,
        ``median_adapt_ms``, ``p95_adapt_ms``, ``median_frame_ms`` and ``adapt_vs_10_frames``
        (:func:`adaptation_ratio`), ``robustness`` (R@0.1, R@0.25, R@0.5 of the
        model's own predictions), ``adapter`` (its settings; None for ``frozen``),
        ``workload`` (NoC, IDI in frames, ACI of Lazy-XMem sec. 4.2; user prompts only),
        ``auto_applied``, ``tau_u``, ``tau_m`` and ``out_of_memory`` (``-auto`` methods) at the
        top level and ``corrections``, ``clicks``, ``adapter_accepts``, ``adapt_ms`` and
        ``frame_ms`` (lists) and ``events`` per entry; with ``j_at_k``, ``j_at_k`` (list of k + 1 floats) per entry
        and its mean over the entries at the top level.

    Raises
    ------
    napari_lit.cli.UsageError
        If ``data_dir`` holds no sequence, a sequence cannot be read, a name in ``sequences``
        does not exist, ``method``/``init`` is unknown or the model cannot be loaded.
    """
    from ..io import list_sequences, load_sequence

    t0 = time.perf_counter()
    if method not in METHODS:
        raise _usage_error(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    if init not in INITS:
        raise _usage_error(f"unknown init {init!r}: expected one of {', '.join(INITS)}")
    if joint and method not in ("propagate", "static", "flow"):
        raise _usage_error(f"--joint is for the propagate, static and flow methods; the simulated user of "
                           f"{method!r} corrects one object at a time")
    if ctc_metrics and method not in ("propagate", "flow"):
        raise _usage_error(f"--ctc-metrics tracks the cells with the model or its flow peer: it is for --method "
                           f"propagate or flow, not {method!r}")
    if j_at_k is not None and (method not in INTERACTIVE_METHODS or int(j_at_k) < 0):
        raise _usage_error(f"--j-at-k is a number of corrections (>= 0) for the interactive methods "
                           f"({', '.join(INTERACTIVE_METHODS)}); got {j_at_k} with {method!r}")
    from ..core.zoom import ZOOM_MODES

    if zoom not in ZOOM_MODES:
        raise _usage_error(f"unknown zoom {zoom!r}: expected one of {', '.join(ZOOM_MODES)}")
    if entropy_norm not in NORMALIZATIONS:
        raise _usage_error(f"unknown entropy normalisation {entropy_norm!r}: expected one of "
                           f"{', '.join(NORMALIZATIONS)}")
    if entropy_norm != "area" and method != "propagate":
        raise _usage_error(f"--entropy-norm is for the propagate method (it only changes the recorded "
                           f"masked entropy); {method!r} uses eq. 4's")
    try:
        folders = list_sequences(data_dir)
    except FileNotFoundError as exc:
        raise _usage_error(str(exc)) from None
    if sequences:
        by_name = {p.name: p for p in folders}
        unknown = [s for s in sequences if s not in by_name]
        if unknown:
            raise _usage_error(
                f"no sequence {', '.join(unknown)} in {data_dir} (it has: {', '.join(by_name)})"
            )
        folders = [by_name[s] for s in dict.fromkeys(sequences)]
    seqs = []
    for folder in folders:
        try:
            seqs.append(load_sequence(folder))
        except (FileNotFoundError, ValueError, json.JSONDecodeError) as exc:
            raise _usage_error(f"{folder.name}: {exc}") from None

    needs_model = not (method in ("static", "flow") and init == "mask") or ctc_metrics
    if needs_model and predictor is None:
        predictor = _load_predictor(model, config, device)
    interactive = method in INTERACTIVE_METHODS
    if interactive:
        from ..core.adaptation import AdapterConfig

        adapter_config = adapter_config or AdapterConfig()

    total = sum(len(s.objects) for s in seqs)
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"bench {method}/{init}", unit="object", file=sys.stderr,
                   dynamic_ncols=True)
    entries: List[Dict] = []
    presence: List[List[bool]] = []  # per entry, per frame: object in the ground truth
    done = 0
    try:
        for seq in seqs:
            labels = np.asarray(seq.labels[:])
            tracker = None
            present = []
            for obj in seq.objects:
                if first_frame(labels == obj) is None:
                    logger.warning("%s: object %d is absent from every frame; skipped", seq.name, obj)
                else:
                    present.append(int(obj))
            source = features = None
            if needs_model and present and interactive:  # one session per object, on one frame source
                from ..core.features import FeatureCache

                source = _make_source(predictor, seq)
                features = FeatureCache()  # and one feature cache: every run encodes each frame/window once
            elif needs_model and present:
                tracker = _make_tracker(predictor, seq, zoom=zoom)
            joint_scores = None
            if method == "flow" and present:  # one flow per frame pair for all objects
                joint_scores = score_flow({obj: labels == obj for obj in present}, init, seq.image, tracker)
            elif joint and present:
                joint_scores = score_objects({obj: labels == obj for obj in present}, method, init, tracker,
                                             entropy_norm=entropy_norm)
            # scope sequence/both: what the shared adapter learned goes on to the sequence's next object
            carried = None
            for obj in seq.objects:
                if bar is not None:
                    bar.set_postfix_str(f"{seq.name} #{obj}", refresh=False)
                if obj in present:
                    gt = labels == obj
                    if needs_model and not interactive:
                        _seed(seq.name, obj)
                    if joint_scores is not None:
                        scores = joint_scores[obj]
                    elif interactive:
                        def run(budget, carried_in=carried):
                            return _run_object(predictor, source, method, adapter_config, zoom, seq, obj,
                                               carried_in, gt, init, tau, budget, tau_u, tau_m, features)

                        scores, shared = run(max_corrections)
                        if j_at_k is not None:
                            scores["j_at_k"] = _j_at_k(j_at_k, scores, lambda k: run(k)[0])
                        carried = shared if shared is not None else carried
                    else:
                        scores = score_object(gt, method, init, tracker, obj_id=int(obj),
                                              entropy_norm=entropy_norm)
                    presence.append(gt.reshape(len(gt), -1).any(axis=1).tolist())
                    entries.append({
                        "name": seq.name, "object": int(obj), "domain": seq.domain,
                        "davis": bool(seq.is_davis), "axes": seq.axes, "frames": int(len(gt)),
                        **scores,
                    })
                done += 1
                if bar is not None:
                    bar.update(1)
                elif callable(progress):
                    progress(done, total)
            if tracker is not None:
                tracker.close()
            if source is not None:
                source.close()
    finally:
        if bar is not None:
            bar.close()

    def mean(key):  # None (JSON null) rather than NaN when no object could be scored
        return float(np.mean([e[key] for e in entries])) if entries else None

    result = {
        "model": model if needs_model else None,
        # which weights made these figures (SHA-256 of the checkpoint; None without a model)
        "weights_sha256": getattr(predictor, "napari_lit_checksum", None) if needs_model else None,
        "method": method,
        "init": init,
        "data_dir": str(data_dir),
        "joint": bool(joint),
        "entropy_norm": entropy_norm,
        "zoom": zoom if needs_model else None,
        "mean_j": mean("mean_j"),
        "mean_jf": mean("mean_jf"),
        "seconds": round(time.perf_counter() - t0, 3),
        "machine": machine_info(),
        "sequences": entries,
    }
    if method == "propagate":
        rho = [e["spearman"] for e in entries if e.get("spearman") is not None]
        result["median_spearman"] = float(np.median(rho)) if rho else None
    if ctc_metrics:
        from .tracking import ctc_scores, has_lineage, track_cells

        result["ctc"] = {}
        for seq in seqs:
            if has_lineage(seq) and seq.axes.startswith("T"):
                labels, parents = track_cells(predictor, seq, zoom=zoom, method=method, min_share=division_share,
                                              max_growth=division_growth)
                result["ctc"][seq.name] = ctc_scores(labels, parents, seq)
        result["division_rule"] = {"share": division_share, "growth": division_growth}
        result["seconds"] = round(time.perf_counter() - t0, 3)
    if interactive and j_at_k is not None:
        result["j_at_k"] = ([float(np.mean([e["j_at_k"][k] for e in entries])) for k in range(j_at_k + 1)]
                            if entries else None)
    if interactive:
        adapt_ms = [ms for e in entries for ms in e["adapt_ms"]]
        frame_ms = [ms for e in entries for ms in e["frame_ms"]]
        result.update({
            "tau": tau,
            "max_corrections": max_corrections,
            "total_corrections": int(sum(e["corrections"] for e in entries)),
            "total_clicks": int(sum(e["clicks"] for e in entries)),
            "adapter_accepts": int(sum(e["adapter_accepts"] for e in entries)),
            "median_adapt_ms": float(np.median(adapt_ms)) if adapt_ms else None,
            "p95_adapt_ms": float(np.percentile(adapt_ms, 95)) if adapt_ms else None,
            # issue 26 (c): adaptation per correction against propagating 10 frames, same run
            "median_frame_ms": float(np.median(frame_ms)) if frame_ms else None,
            "adapt_vs_10_frames": adaptation_ratio(entries),
            # R@tau of the model's own predictions (the final masks are >= tau by construction)
            "robustness": robustness([e["model_j"] for e in entries], presence),
            "adapter": dataclasses.asdict(adapter_config) if method in LEARNING_METHODS else None,
            # NoC, IDI (frames), ACI of Lazy-XMem sec. 4.2: user prompts only
            "workload": workload([[e["prompt_frame"]] + [ev["frame"] for ev in e["events"]
                                                         if ev["kind"] in ("clicks", "mask")]
                                  for e in entries], [e["frames"] for e in entries]),
            "auto_applied": int(sum(e.get("auto_applied", 0) for e in entries)),
            "tau_u": tau_u if method == "lit-auto" else None,
            "tau_m": tau_m if method in AUTO_METHODS else None,
            "out_of_memory": int(sum(e.get("out_of_memory", 0) for e in entries)),
        })
    return result


def _run_object(predictor, source, method, adapter_config, zoom, seq, obj, carried, gt, init, tau, budget,
                tau_u, tau_m, features="auto"):
    """One object's simulated run in a fresh session, seeded as in :func:`run_benchmark`,
    starting from ``carried`` (a shared adapter's :meth:`shared_snapshot`, or None), its image
    features from ``features`` (the sequence's cache); returns its scores and what its shared
    adapter then knows (None without one)."""
    with object_session(predictor, source, method, adapter_config, zoom, features) as session:
        _seed(seq.name, obj, session.adapter)
        if carried is not None:
            session.adapter.restore(carried)
        scores = simulate_object(gt, session, method, init, tau=tau, max_corrections=budget, obj_id=int(obj),
                                 backward=seq.is_volume, tau_u=tau_u, tau_m=tau_m)
        return scores, (session.adapter.shared_snapshot() if session.adapter.has_shared else None)


def _j_at_k(k_max: int, scores: Dict, run: Callable[[int], Dict]) -> List[float]:
    """J@k for k = 0..``k_max`` from the unlimited run's ``scores`` and ``run(k)`` (a run
    with k corrections allowed). A run allowed more corrections than the unlimited one made
    is that run; at exactly its number the last stop (where an adapted prediction may have
    been accepted) is not made, so that k runs again."""
    out = []
    for k in range(int(k_max) + 1):
        out.append(float(scores["mean_j"]) if k > scores["corrections"] else float(run(k)["mean_j"]))
    return out


def _load_predictor(model, config, device):
    from ..models import ModelUnavailableError, load_predictor
    from ..models.build import CheckpointError

    try:
        return load_predictor(model, config=config, device=device)
    except (ModelUnavailableError, CheckpointError, ValueError, FileNotFoundError) as exc:
        raise _usage_error(str(exc)) from None


def _make_source(predictor, seq):
    from ..core import FrameSource

    try:
        return FrameSource(seq.image, image_size=predictor.image_size)
    except (TypeError, ValueError) as exc:
        raise _usage_error(f"{seq.name}: {exc}") from None


def _make_tracker(predictor, seq, record: bool = False, zoom: str = "auto"):
    from ..core import Tracker

    return Tracker(predictor, _make_source(predictor, seq), record_decoder_inputs=record, zoom=zoom)


class _Parser(argparse.ArgumentParser):
    """Argument errors become a one-line :class:`~napari_lit.cli.UsageError`."""

    def error(self, message):
        raise _usage_error(message)


def build_parser() -> argparse.ArgumentParser:
    """Parser of ``napari-lit bench`` arguments (without the word ``bench``)."""
    p = _Parser(prog="napari-lit bench",
                description="Benchmark segmentation through sequences with ground truth (J, F, J&F).")
    p.add_argument("data_dir", help="folder of sequence folders (or one sequence folder)")
    p.add_argument("--method", required=True, choices=METHODS,
                   help="propagate: track with the model; static: repeat the prompt frame's mask; flow: warp "
                        "it along optical flow (OpenCV DIS, no learning); "
                        "frozen|lit|lit-always|lit-auto|frozen-auto: a simulated user corrects frames with IoU < --tau "
                        "(lit learns from each correction; lit-auto also applies what it learned where the "
                        "masked entropy jumps); lit-auto-oracle: lit-auto choosing on every frame by the "
                        "ground truth (what any choice rule could gain)")
    p.add_argument("--tau", type=float, default=0.5, help="interactive methods: correct frames with IoU below this")
    p.add_argument("--tau-u", type=float, default=DEFAULT_TAU_U,
                   help="lit-auto: masked-entropy jump that makes it try the adapted decoder on a frame")
    p.add_argument("--tau-m", type=float, default=DEFAULT_TAU_M,
                   help="lit-auto, frozen-auto, lit-auto-oracle: masked entropy above which a frame stays out of "
                        "SAM2's memory")
    p.add_argument("--max-corrections", type=int, default=None,
                   help="interactive methods: correction events allowed per object (default unlimited)")
    p.add_argument("--init", required=True, choices=INITS,
                   help="prompt: the ground-truth mask, or one click at its innermost point")
    p.add_argument("--json", required=True, dest="json_path", help="output JSON file")
    p.add_argument("--model", default="lit-tiny", help="catalogue name or a .pt file (default lit-tiny)")
    p.add_argument("--config", help="Hydra config for a custom .pt checkpoint")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--sequences", nargs="+", metavar="NAME", help="run only these sequences")
    p.add_argument("--joint", action="store_true",
                   help="propagate, static: track all objects of a sequence together, as the widget does "
                        "(their masked entropy then has a class per object); default: each object alone")
    p.add_argument("--entropy-norm", choices=NORMALIZATIONS, default="area",
                   help="propagate: masked entropy divided by the region's size (Lazy-XMem eq. 4, default) "
                        "or by its square root (entropy per pixel of boundary length)")
    p.add_argument("--zoom", choices=("auto", "off"), default="auto",
                   help="object-centred zoom: small objects seen through their own window of the frame "
                        "(auto, default) or every object through the whole frame (off)")
    p.add_argument("--ctc-metrics", action="store_true",
                   help="propagate, flow: on time-lapses with a CTC lineage (man_track.txt), also track every "
                        "cell of the first frame from one click with the division rule and report TRA, DET, SEG, "
                        "CHOTA")
    p.add_argument("--division-share", type=float, default=0.2, metavar="SHARE",
                   help="--ctc-metrics: the division rule's smaller daughter's share of the two parts (default 0.2)")
    p.add_argument("--division-growth", type=float, metavar="G",
                   help="--ctc-metrics: a split divides only if its two parts hold at most G times the cell's area "
                        "on the frame before (default: not checked)")
    p.add_argument("--j-at-k", type=int, metavar="K",
                   help="interactive methods: also measure J@k, the mean J after k corrections per object, "
                        "for k = 0..K (one more run per k, up to the corrections the object needs)")
    p.add_argument("--report-dir", help="folder for the .md table and .png plot (default: beside the JSON)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    lora = p.add_argument_group("adapter (lit, lit-always)", "LoRA settings; napari-lit's defaults otherwise")
    lora.add_argument("--lora-rank", type=int, help="LoRA rank (alpha follows it: scale 1)")
    lora.add_argument("--lora-lr", type=float, help="AdamW learning rate")
    lora.add_argument("--lora-steps", type=int, help="most optimisation steps per correction")
    lora.add_argument("--lora-patience", type=int, metavar="N",
                      help="stop after N steps without a lower loss (early stopping; default 8)")
    lora.add_argument("--lora-dropout", type=float, help="LoRA dropout")
    lora.add_argument("--lora-targets", nargs="+", metavar="PROJ",
                      help="layers to adapt: the decoder transformer's q_proj k_proj v_proj out_proj, and "
                           "of its output path hypernetworks (default q_proj k_proj v_proj)")
    lora.add_argument("--lora-memory-attention", action="store_true",
                      help="also adapt SAM2's memory attention")
    lora.add_argument("--lora-replay", type=int, metavar="N",
                      help="also train on the object's N previous corrections with each new one, for its "
                           "own adapter (default 0)")
    lora.add_argument("--lora-scope", choices=("object", "sequence", "both"),
                      help="object: one adapter per object (LIT, default); sequence: one adapter shared by "
                           "all objects of a sequence, trained on each correction of any object (image-sequence "
                           "adaptation, Kontogianni et al. 2020); both: the shared one, then each object's own")
    lora.add_argument("--lora-shared-replay", type=int, metavar="N",
                      help="earlier corrections (the latest of each object first) the shared adapter trains on "
                           "with each new one (default 4)")
    lora.add_argument("--lora-shared-steps", type=int, metavar="N",
                      help="most steps of the shared adapter per correction (default 0: --lora-steps)")
    lora.add_argument("--lora-loss-side", type=int, metavar="N",
                      help="compare the adapted mask with the correction on a grid of at most N pixels on "
                           "its longer side, the decoder's logits resized to it as sam2 resizes them to the "
                           "frame (default 0: at the decoder's output resolution)")
    return p


def adapter_config_from_args(args):
    """The :class:`~napari_lit.core.adaptation.AdapterConfig` the ``--lora-*`` options ask
    for (defaults for the options not given).

    Raises
    ------
    napari_lit.cli.UsageError
        On an invalid setting (the message names it).
    """
    from ..core.adaptation import AdapterConfig

    kw = {}
    if args.lora_rank is not None:
        kw.update(rank=args.lora_rank, alpha=float(args.lora_rank))
    for opt, key in (("lora_lr", "lr"), ("lora_steps", "max_steps"), ("lora_patience", "patience"),
                     ("lora_dropout", "dropout"),
                     ("lora_targets", "target_modules"), ("lora_replay", "replay"),
                     ("lora_loss_side", "loss_side"), ("lora_scope", "scope"),
                     ("lora_shared_replay", "shared_replay"), ("lora_shared_steps", "shared_steps")):
        if getattr(args, opt) is not None:
            kw[key] = getattr(args, opt)
    if args.lora_memory_attention:
        kw["memory_attention"] = True
    try:
        return AdapterConfig(**kw)
    except ValueError as exc:
        raise _usage_error(f"adapter settings: {exc}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``napari-lit bench`` with ``argv`` (the arguments after ``bench``); returns 0.

    Raises
    ------
    napari_lit.cli.UsageError
        On bad arguments or input (see :func:`run_benchmark`).
    """
    from .report import write_reports

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not Path(args.data_dir).is_dir():
        raise _usage_error(f"data folder not found: {args.data_dir}")
    out = Path(args.json_path)
    if out.is_dir():
        raise _usage_error(f"--json {out} is a folder; expected a file name such as results.json")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _usage_error(f"cannot create the folder of --json {out}: {exc}") from None
    result = run_benchmark(args.data_dir, args.method, args.init, model=args.model, config=args.config,
                           device=args.device, sequences=args.sequences, progress=not args.quiet,
                           tau=args.tau, max_corrections=args.max_corrections, tau_u=args.tau_u, tau_m=args.tau_m,
                           adapter_config=adapter_config_from_args(args), joint=args.joint,
                           entropy_norm=args.entropy_norm, zoom=args.zoom, j_at_k=args.j_at_k,
                           ctc_metrics=args.ctc_metrics, division_share=args.division_share,
                           division_growth=args.division_growth)
    out.write_text(json.dumps(result, indent=1))
    md, png = write_reports(result, out, report_dir=args.report_dir)
    if result["sequences"]:
        print(f"{args.method}/{args.init}: mean J {result['mean_j']:.3f}, mean J&F {result['mean_jf']:.3f} "
              f"over {len(result['sequences'])} objects in {result['seconds']:.0f} s")
        if "total_corrections" in result:
            print(f"corrections {result['total_corrections']}, clicks {result['total_clicks']}, "
                  f"adapter accepts {result['adapter_accepts']}, median adaptation "
                  f"{result['median_adapt_ms'] or 0:.0f} ms (tau {result['tau']})")
    else:
        print(f"{args.method}/{args.init}: no listed object appears in the ground truth; nothing scored")
    for name, scores in (result.get("ctc") or {}).items():
        print(f"{name}: " + ", ".join(f"{m} {scores[m]:.3f}" for m in ("TRA", "DET", "SEG", "CHOTA")
                                      if scores.get(m) is not None)
              + f" ({scores['tracks']} tracks, {scores['divisions']} divisions found)")
    print(f"wrote {out}, {md}, {png}")
    return 0
