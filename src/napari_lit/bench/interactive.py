"""A simulated user who corrects the tracker, with and without learning from corrections.

Protocol (LIT, Yang et al. 2026, as in ``shared/DESIGN.md``), for one object:

1. prompt on the first frame where the object appears (its ground-truth mask, or one click
   at its innermost point);
2. propagate forward (for z-stacks also backward from the prompt);
3. at the first frame in propagation order whose IoU < ``tau``, one *correction event*:

   - ``lit``: if the object has an adapter, its adapted decoder's prediction for that frame
     is tried first; if its IoU >= ``tau`` it is accepted (counted in ``adapter_accepts``,
     not as a correction) and written to SAM2's memory like a correction;
   - otherwise up to 3 clicks at the centre of the largest error region (sam2's
     ``get_next_point(method="center")``: positive on a missed region, negative on a false
     one), then the full ground-truth mask if the IoU is still < ``tau``; that whole event
     is one correction;
   - ``lit`` and ``lit-always``: the adapter trains on the corrected frame;

4. propagation resumes from the corrected frame.

``frozen`` never learns; ``lit-always`` applies the adapted decoder on every frame (the
ablation LIT reports as worse than no adaptation). ``lit-auto`` is ``lit`` plus self-applied
learning: during propagation, when the object's masked entropy jumps by at least ``tau_u``
from the previous frame (Lazy-XMem sec. 3.4) and the object has an adapter, the adapted
decoder also predicts the frame, and the prediction with the lower masked entropy is kept
(the adapted one is written to SAM2's memory like an accepted prediction, counted in
``auto_applied``, and propagation resumes from it); it also keeps frames whose masked entropy
exceeds ``tau_m`` out of SAM2's memory (Lazy-XMem's uncertainty-driven memory update), which
is all ``frozen-auto`` adds to ``frozen``. ``lit-auto-oracle`` is ``lit-auto`` with the
choice made by the ground truth instead of the entropy, on every tracked frame where the
object has an adapter: the adapted prediction is kept when its IoU beats the tracker's own.
No user has that oracle; it shows what any rule for choosing between the two predictions
could gain with the model and adapter at hand. Robustness R@tau is eq. 7 of Lazy-XMem
(Vujasinovic et al. 2024).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..core.uncertainty import DEFAULT_TAU_M, DEFAULT_TAU_U
from .metrics import frame_scores, jaccard

__all__ = ["INTERACTIVE_METHODS", "LEARNING_METHODS", "simulate_object", "object_session", "error_click", "robustness", "workload", "MAX_CLICKS"]

INTERACTIVE_METHODS = ("frozen", "lit", "lit-always", "lit-auto", "frozen-auto", "lit-auto-oracle")
LEARNING_METHODS = ("lit", "lit-always", "lit-auto", "lit-auto-oracle")
AUTO_METHODS = ("lit-auto", "frozen-auto", "lit-auto-oracle")
MAX_CLICKS = 3


def error_click(pred: np.ndarray, gt: np.ndarray):
    """The correction click a simulated user gives: the centre of the largest error region.

    Uses sam2's own ``get_next_point(method="center")``: the point farthest from the
    boundary of the error region (false negatives -> positive click, false positives ->
    negative click).

    Parameters
    ----------
    pred, gt : (Y, X) bool ndarray

    Returns
    -------
    ((y, x), label) : ((int, int), int)
        Label 1 for a positive click, 0 for a negative one.
    """
    import torch
    from sam2.modeling.sam2_utils import get_next_point

    g = torch.from_numpy(np.ascontiguousarray(gt, dtype=bool))[None, None]
    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=bool))[None, None]
    points, labels = get_next_point(gt_masks=g, pred_masks=p, method="center")
    x, y = points[0, 0].tolist()
    return (int(round(y)), int(round(x))), int(labels[0, 0])


def robustness(j_per_object: Sequence[Sequence[float]], present: Sequence[Sequence[bool]],
               thresholds=(0.1, 0.25, 0.5)) -> Dict[str, float]:
    """R@tau (Lazy-XMem eq. 7): mean over objects of the fraction of frames where the object
    is present and its IoU >= tau.

    Parameters
    ----------
    j_per_object : sequence of sequences of float
        Per object, per frame IoU.
    present : sequence of sequences of bool
        Per object, per frame: the object is in the ground truth.
    thresholds : sequence of float

    Returns
    -------
    dict
        ``{"R@0.1": ..., ...}``; NaN-free (objects never present are skipped).
    """
    out = {}
    for tau in thresholds:
        ratios = []
        for j, p in zip(j_per_object, present):
            j, p = np.asarray(j, float), np.asarray(p, bool)
            if p.any():
                ratios.append(float((j[p] >= tau).mean()))
        out[f"R@{tau:g}"] = float(np.mean(ratios)) if ratios else None
    return out


def workload(prompt_frames: Sequence[Sequence[int]], n_frames: Sequence[int]) -> Dict[str, float]:
    """User-workload metrics of Lazy-XMem sec. 4.2 over objects.

    Parameters
    ----------
    prompt_frames : sequence of sequences of int
        Per object, the frames where the user prompted it: the initial prompt and each
        correction (accepted adapted predictions are not user prompts).
    n_frames : sequence of int
        Per object, its number of frames |F_o|.

    Returns
    -------
    dict
        ``noc``: number of user corrections (prompts after the first, all objects);
        ``idi``: interaction density index, the mean gap in frames between consecutive
        interactions of an object, counting the start and the end of the sequence as
        interactions (averaged over objects; higher = fewer interruptions);
        ``aci``: average correction interval (eq. 8), ``sum_o 1/|F_o| sum_i=1..|F_o|
        sum_j=1..i n_j`` with ``n_j`` the number of consecutive prompts ``j`` frames apart
        (lower = corrections more spread out).

    Raises
    ------
    ValueError
        If the two sequences differ in length or an object has no frames.
    """
    if len(prompt_frames) != len(n_frames):
        raise ValueError(f"{len(prompt_frames)} prompt lists for {len(n_frames)} objects")
    noc, idis, aci = 0, [], 0.0
    for frames, n in zip(prompt_frames, n_frames):
        if n < 1:
            raise ValueError(f"an object needs at least one frame; got {n}")
        f = sorted(int(x) for x in frames)
        noc += max(len(f) - 1, 0)
        marks = sorted(set([0, n - 1] + f))
        idis.append(float(np.mean(np.diff(marks))) if len(marks) > 1 else float(n))
        gaps = np.diff(f)
        counts = np.bincount(gaps[gaps > 0], minlength=n + 1)[: n + 1] if len(gaps) else np.zeros(n + 1)
        aci += float(np.cumsum(counts[1:]).sum()) / n
    return {"noc": int(noc), "idi": float(np.mean(idis)) if idis else None, "aci": float(aci)}


@contextlib.contextmanager
def object_session(predictor, frames, method: str = "lit", adapter_config=None, zoom: str = "auto",
                   features="auto"):
    """A fresh :class:`~napari_lit.core.session.LitSession` for one simulated object: the
    session a user drives from the widget or the CLI (learning on for the learning methods),
    with its label store in a temporary folder that goes when the block ends.

    Parameters
    ----------
    predictor : SAM2VideoPredictor
    frames : FrameSource or array-like
        The sequence, (N, Y, X[, C]); a FrameSource can be shared by the objects of a sequence.
    method : str
        One of :data:`INTERACTIVE_METHODS`.
    adapter_config : AdapterConfig, optional
    zoom : {"auto", "off"}
    features : "auto", FeatureCache or None
        The tracker's image-feature cache; one shared by the objects of a sequence encodes
        each frame (and window) once for all their runs (the masks are the same).

    Yields
    ------
    LitSession
    """
    from ..core.session import LitSession

    with tempfile.TemporaryDirectory(prefix="napari-lit-bench-") as tmp:
        session = LitSession(predictor, frames, Path(tmp) / "labels.zarr", learn=method in LEARNING_METHODS,
                             adapter_config=adapter_config, zoom=zoom, features=features)
        try:
            yield session
        finally:
            session.close()


def _prompt(session, frame, obj_id, gt_frame, init):
    """Initial prompt; returns (clicks used, the prompt frame's resulting mask)."""
    if init == "mask":
        session.add_mask(frame, obj_id, gt_frame)
        return 0, gt_frame.copy()
    from .metrics import click_point

    res = session.add_points(frame, obj_id, [list(click_point(gt_frame))], [1])
    return 1, res.mask(obj_id)


def _oracle_choice(session, frame_idx: int, obj_id: int, own, truth):
    """``lit-auto-oracle``: the adapted prediction of the frame if its IoU with ``truth`` beats
    that of ``own`` (the tracker's), else None."""
    adapted = session.adapted_prediction(frame_idx, obj_id)
    if adapted is None:
        return None
    return adapted if adapted.any() and jaccard(adapted, truth) > jaccard(own, truth) else None


def _timed(results):
    """``(result, ms)`` for each item of the generator ``results``: the wall time spent
    inside it to produce the item (what the caller does between items is not counted)."""
    while True:
        t = time.perf_counter()
        try:
            item = next(results)
        except StopIteration:
            return
        yield item, 1000 * (time.perf_counter() - t)


def simulate_object(gt, session, method: str = "lit", init: str = "mask", tau: float = 0.5,
                    max_corrections: Optional[int] = None, obj_id: int = 1,
                    backward: bool = False, tau_u: float = DEFAULT_TAU_U, tau_m: float = DEFAULT_TAU_M) -> Dict:
    """Run the simulated user on one object through one sequence.

    The user drives a :class:`~napari_lit.core.session.LitSession` as the widget does:
    prompt, propagate (stopped at the first frame below ``tau``), try the adapted prediction
    and accept it, or correct with clicks then a mask, learn, propagate again.

    Parameters
    ----------
    gt : (N, Y, X) bool ndarray
        Ground truth of the object; non-empty on some frame.
    session : LitSession
        A fresh session on the sequence (no prompt yet; :func:`object_session`), learning on
        for the learning methods.
    method : {"frozen", "lit", "lit-always", "lit-auto", "frozen-auto", "lit-auto-oracle"}
    init : {"mask", "click"}
    tau : float
        IoU below which the user corrects a frame.
    max_corrections : int, optional
        Correction events allowed for this object (unlimited by default); after that the
        tracker's masks are kept as they are.
    obj_id : int
    backward : bool
        Also propagate backward from the prompt frame (z-stacks).
    tau_u : float
        ``lit-auto``: masked-entropy jump that triggers the adapted prediction.
    tau_m : float
        ``lit-auto``, ``frozen-auto``, ``lit-auto-oracle``: masked entropy above which a
        tracked frame is kept out of SAM2's memory.

    Returns
    -------
    dict
        ``prompt_frame``, ``corrections``, ``clicks`` (correction clicks plus the initial
        click for ``init="click"``), ``adapter_accepts``, ``adapt_ms`` (list, one per
        training), ``frame_ms`` (list: wall time in ms the session took to track and write
        each propagated frame, the simulated user's scoring left out), ``events`` (list of ``{frame, kind, iou_before, iou_after}``; a correction
        also has ``iou_adapted``, the IoU of the adapted prediction tried first and not
        accepted, when the object had an adapter, and ``adapter_fit``, the best IoU with
        which the adapter reproduced it at the decoder's resolution, when it learned
        from it), ``j``,
        ``f`` (final masks, per frame), ``mean_j``, ``mean_jf``, ``model_j``: per frame
        the IoU of the model's own last prediction before any correction there, and
        ``auto_applied`` (adapted predictions ``lit-auto`` or ``lit-auto-oracle`` kept on
        their own; 0 otherwise) and
        ``out_of_memory`` (frames kept out of SAM2's memory by the ``-auto`` methods).

    Raises
    ------
    ValueError
        On an unknown method/init, a learning method on a session that does not learn, a
        session that already has prompts, or an object absent from every frame.
    """
    if method not in INTERACTIVE_METHODS:
        raise ValueError(f"method must be one of {INTERACTIVE_METHODS}; got {method!r}")
    if init not in ("mask", "click"):
        raise ValueError(f"init must be 'mask' or 'click'; got {init!r}")
    if method in LEARNING_METHODS and not session.learn:
        raise ValueError(f"method {method!r} needs a session that learns (learn=True)")
    if session.tracker.obj_ids:
        raise ValueError(f"the session already has objects {list(session.tracker.obj_ids)}: give a fresh one")
    gt = np.asarray(gt, dtype=bool)
    present = gt.reshape(len(gt), -1).any(axis=1)
    if not present.any():
        raise ValueError(f"object {obj_id} is absent from every frame")
    n = len(gt)
    t0 = int(np.flatnonzero(present)[0])
    session.adapter.always = method == "lit-always"
    final = np.zeros(gt.shape, dtype=bool)  # frames never reached stay empty
    # IoU of the model's own last prediction of each frame, before any user action on it
    # (robustness is computed from these: the final masks are >= tau by construction)
    model_j = np.full(len(gt), np.nan)
    clicks, final[t0] = _prompt(session, t0, obj_id, gt[t0], init)
    corrections, accepts, adapt_ms, events, auto = 0, 0, [], [], 0
    frame_ms = []
    gate = tau_m if method in AUTO_METHODS else None
    self_applied = tau_u if method == "lit-auto" else None  # the session's own rule
    out_of_memory = set()
    budget = np.inf if max_corrections is None else int(max_corrections)

    def correct(frame, pred):
        nonlocal clicks
        mask, before = pred, jaccard(pred, gt[frame])
        points, labels = [], []
        for _ in range(MAX_CLICKS):
            (y, x), label = error_click(mask, gt[frame])
            points.append([y, x])
            labels.append(label)
            mask = session.add_points(frame, obj_id, points, labels).mask(obj_id)  # the frame's clicks so far
            clicks += 1
            if jaccard(mask, gt[frame]) >= tau:
                return mask, "clicks", before
        session.add_mask(frame, obj_id, gt[frame])
        return gt[frame].copy(), "mask", before

    directions = ["forward"] + (["backward"] if backward else [])
    for direction in directions:
        start = t0
        while True:
            stopped_at, oracle = None, None
            gen = session.propagate(start_frame=start, direction=direction, tau_u=self_applied, tau_m=gate)
            try:
                for result, ms in _timed(gen):
                    f = result.frame_idx
                    if f != start:  # the time the session took to track (and write) this frame
                        frame_ms.append(ms)
                    if f == start:  # the prompt or corrected frame: keep what the user gave
                        continue
                    if obj_id in result.out_of_memory:
                        out_of_memory.add(f)
                    pred = result.mask(obj_id)
                    if obj_id in result.replaced:  # lit-auto: the session kept the adapted prediction
                        auto += 1
                        events.append({"frame": f, "kind": "auto", "iou_before": jaccard(result.replaced[obj_id], gt[f]),
                                       "iou_after": jaccard(pred, gt[f])})
                    elif method == "lit-auto-oracle":
                        adapted = _oracle_choice(session, f, obj_id, pred, gt[f])
                        if adapted is not None:
                            oracle = (f, result.mask(obj_id), adapted)
                            pred = adapted
                    final[f] = pred
                    model_j[f] = jaccard(pred, gt[f])
                    if oracle is not None:
                        break
                    if corrections < budget and model_j[f] < tau:
                        stopped_at = (f, pred)
                        break
            finally:
                gen.close()
            if oracle is not None:  # kept: into SAM2's memory, propagate again from it
                f, own, adapted = oracle
                session.accept(f, obj_id, adapted)
                auto += 1
                events.append({"frame": f, "kind": "auto", "iou_before": jaccard(own, gt[f]),
                               "iou_after": jaccard(adapted, gt[f])})
                if corrections < budget and model_j[f] < tau:
                    stopped_at = (f, adapted)
                else:
                    start = f
                    continue
            if stopped_at is None:
                break
            f, pred = stopped_at
            iou_adapted = None
            if method in ("lit", "lit-auto", "lit-auto-oracle"):
                adapted = session.adapted_prediction(f, obj_id)
                if adapted is not None:
                    iou_adapted = jaccard(adapted, gt[f])
                    if iou_adapted >= tau and adapted.any():
                        session.accept(f, obj_id, adapted)
                        final[f] = adapted
                        accepts += 1
                        events.append({"frame": f, "kind": "adapter", "iou_before": jaccard(pred, gt[f]),
                                       "iou_after": iou_adapted})
                        start = f
                        continue
            mask, kind, before = correct(f, pred)
            final[f] = mask
            corrections += 1
            event = {"frame": f, "kind": kind, "iou_before": before, "iou_after": jaccard(mask, gt[f])}
            if iou_adapted is not None:  # the adapted prediction tried first, not good enough
                event["iou_adapted"] = iou_adapted
            events.append(event)
            if method in LEARNING_METHODS and mask.any():
                try:
                    for _ in session.learn_from(f, obj_id):
                        pass
                except ValueError:  # no recorded propagation of the frame to learn from
                    pass
                else:
                    adapt_ms.append(session.last_train_ms)
                    # how well the adapter reproduces this correction (decoder resolution)
                    event["adapter_fit"] = session.last_train_fit
            start = f
    session.adapter.always = False
    j = np.empty(n)
    fm = np.empty(n)
    for i in range(n):
        j[i], fm[i] = frame_scores(final[i], gt[i])
    model_j[t0] = jaccard(final[t0], gt[t0])
    unreached = np.isnan(model_j)
    model_j[unreached] = [jaccard(final[i], gt[i]) for i in np.flatnonzero(unreached)]
    return {
        "prompt_frame": t0,
        "model_j": model_j.tolist(),
        "auto_applied": auto,
        "out_of_memory": len(out_of_memory),
        "corrections": corrections,
        "clicks": clicks,
        "adapter_accepts": accepts,
        "adapt_ms": adapt_ms,
        "frame_ms": frame_ms,
        "events": events,
        "j": j.tolist(),
        "f": fm.tolist(),
        "mean_j": float(j.mean()),
        "mean_jf": float(((j + fm) / 2).mean()),
    }
