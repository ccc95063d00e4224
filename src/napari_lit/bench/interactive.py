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

import time
from typing import Dict, Optional, Sequence

import numpy as np

from ..core.session import adapted_logits, self_applied_prediction
from ..core.uncertainty import DEFAULT_TAU_M, DEFAULT_TAU_U
from .metrics import frame_scores, jaccard

__all__ = ["INTERACTIVE_METHODS", "LEARNING_METHODS", "simulate_object", "error_click", "robustness", "workload", "MAX_CLICKS"]

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


def _prompt(tracker, frame, obj_id, gt_frame, init):
    """Initial prompt; returns (clicks used, the prompt frame's resulting mask)."""
    if init == "mask":
        tracker.add_mask(frame, obj_id, gt_frame)
        return 0, gt_frame.copy()
    from .metrics import click_point

    res = tracker.add_points(frame, obj_id, [list(click_point(gt_frame))], [1])
    return 1, res.mask(obj_id)


def _oracle_choice(tracker, adapter, frame_idx: int, obj_id: int, own, truth):
    """``lit-auto-oracle``: the adapted prediction of the frame if its IoU with ``truth`` beats
    that of ``own`` (the tracker's), else None."""
    logits = adapted_logits(tracker, adapter, frame_idx, obj_id)
    if logits is None:
        return None
    adapted = logits > 0
    return adapted if adapted.any() and jaccard(adapted, truth) > jaccard(own, truth) else None


def simulate_object(gt, tracker, adapter, method: str = "lit", init: str = "mask", tau: float = 0.5,
                    max_corrections: Optional[int] = None, obj_id: int = 1,
                    backward: bool = False, tau_u: float = DEFAULT_TAU_U, tau_m: float = DEFAULT_TAU_M) -> Dict:
    """Run the simulated user on one object through one sequence.

    Parameters
    ----------
    gt : (N, Y, X) bool ndarray
        Ground truth of the object; non-empty on some frame.
    tracker : napari_lit.core.Tracker
        Made with ``record_decoder_inputs=True``; it is reset first.
    adapter : napari_lit.core.adaptation.DecoderAdapter or None
        Required for ``lit`` and ``lit-always``; reset first (one adapter per object).
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
        training), ``events`` (list of ``{frame, kind, iou_before, iou_after}``; a correction
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
        On an unknown method/init, a missing adapter for ``lit``/``lit-always``, or an
        object absent from every frame.
    """
    if method not in INTERACTIVE_METHODS:
        raise ValueError(f"method must be one of {INTERACTIVE_METHODS}; got {method!r}")
    if init not in ("mask", "click"):
        raise ValueError(f"init must be 'mask' or 'click'; got {init!r}")
    if method in LEARNING_METHODS and adapter is None:
        raise ValueError(f"method {method!r} needs an adapter")
    gt = np.asarray(gt, dtype=bool)
    present = gt.reshape(len(gt), -1).any(axis=1)
    if not present.any():
        raise ValueError(f"object {obj_id} is absent from every frame")
    n = len(gt)
    t0 = int(np.flatnonzero(present)[0])
    tracker.reset()
    if adapter is not None:
        adapter.reset()
        adapter.always = method == "lit-always"
        if tracker.context is not None and adapter.on_decoder_call not in tracker.context.listeners:
            tracker.context.listeners.append(adapter.on_decoder_call)
    final = np.zeros(gt.shape, dtype=bool)  # frames never reached stay empty
    # IoU of the model's own last prediction of each frame, before any user action on it
    # (robustness is computed from these: the final masks are >= tau by construction)
    model_j = np.full(len(gt), np.nan)
    clicks, final[t0] = _prompt(tracker, t0, obj_id, gt[t0], init)
    corrections, accepts, adapt_ms, events, auto = 0, 0, [], [], 0
    gate = tau_m if method in AUTO_METHODS else None
    out_of_memory = set()
    budget = np.inf if max_corrections is None else int(max_corrections)

    def correct(frame, pred):
        nonlocal clicks
        mask, before = pred, jaccard(pred, gt[frame])
        for _ in range(MAX_CLICKS):
            (y, x), label = error_click(mask, gt[frame])
            mask = tracker.add_points(frame, obj_id, [[y, x]], [label], clear=False).mask(obj_id)
            clicks += 1
            if jaccard(mask, gt[frame]) >= tau:
                return mask, "clicks", before
        tracker.add_mask(frame, obj_id, gt[frame])
        return gt[frame].copy(), "mask", before

    directions = ["forward"] + (["backward"] if backward else [])
    for direction in directions:
        start = t0
        while True:
            stopped_at, resume_at, prev_h = None, None, None
            for result in tracker.propagate(start_frame=start, direction=direction, memory_gate=gate):
                f = result.frame_idx
                if f == start:  # the prompt or corrected frame: keep what the user gave
                    continue
                if obj_id in result.out_of_memory:
                    out_of_memory.add(f)
                pred = result.mask(obj_id)
                if method in ("lit-auto", "lit-auto-oracle"):
                    h = float(result.masked_entropy()[result.obj_ids.index(obj_id)])
                    adapted = None
                    if method == "lit-auto-oracle":
                        adapted = _oracle_choice(tracker, adapter, f, obj_id, pred, gt[f])
                    elif prev_h is not None and h - prev_h >= tau_u:
                        adapted = self_applied_prediction(tracker, adapter, f, obj_id, h)
                    if adapted is not None:
                        pred = adapted
                        tracker.add_mask(f, obj_id, pred)  # kept: into SAM2's memory
                        auto += 1
                        events.append({"frame": f, "kind": "auto", "iou_before": jaccard(result.mask(obj_id), gt[f]),
                                       "iou_after": jaccard(pred, gt[f])})
                        resume_at = f
                    prev_h = h
                final[f] = pred
                model_j[f] = jaccard(pred, gt[f])
                if corrections < budget and model_j[f] < tau:
                    stopped_at = (f, pred)
                    break
                if resume_at is not None:  # propagate again from the kept prediction
                    break
            if stopped_at is None:
                if resume_at is not None:
                    start = resume_at
                    continue
                break
            f, pred = stopped_at
            inputs = tracker.decoder_inputs(f, obj_id) if tracker.context is not None else None
            logits = (adapted_logits(tracker, adapter, f, obj_id)
                      if method in ("lit", "lit-auto", "lit-auto-oracle") and inputs is not None else None)
            iou_adapted = None
            if logits is not None:
                adapted = logits > 0
                iou_adapted = jaccard(adapted, gt[f])
                if iou_adapted >= tau and adapted.any():
                    tracker.add_mask(f, obj_id, adapted)
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
            if method in LEARNING_METHODS and inputs is not None and mask.any():
                t_start = time.perf_counter()
                for _ in adapter.train(obj_id, inputs, mask):
                    pass
                adapt_ms.append(1000 * (time.perf_counter() - t_start))
                # how well the adapter reproduces this correction (decoder resolution)
                event["adapter_fit"] = adapter.fit.get(int(obj_id))
            start = f
    if adapter is not None:
        adapter.always = False
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
        "events": events,
        "j": j.tolist(),
        "f": fm.tolist(),
        "mean_j": float(j.mean()),
        "mean_jf": float(((j + fm) / 2).mean()),
    }
