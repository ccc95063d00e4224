"""Training on partly annotated clips: which (frame, object) pairs the loss and the prompts may use.

Real training data is not annotated everywhere: a Cell Tracking Challenge sequence has
segmentation masks on some frames only, and on some of those only for some cells
(``annotated_frames`` / ``complete_frames`` in ``meta.json``). A label 0 there means "nobody
annotated this", not "background". A :class:`MaskedVideoBatch` carries, beside sam2's batch,
a ``valid`` flag per frame and object:

- :func:`masked_loss` computes sam2's own loss (``training.loss_fns.MultiStepMultiMasksAndIous``)
  over the valid pairs only, with the same normalisation (by the batch's number of objects),
  so an invalid pair contributes exactly nothing and an all-valid batch gives sam2's loss;
- :func:`prompt_frames_within` keeps ``SAM2Train`` from taking prompts (conditioning masks,
  clicks, simulated corrections) from a frame where some object is not annotated: its mask
  there would be an empty mask read as "the object is absent".

The object's own mask on an annotated frame is exact even where the frame is incomplete
(pixels of unannotated cells are not this object either); only an object *missing* from an
incomplete frame is unknown. :func:`valid_pairs` states that rule.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from tensordict import tensorclass
from training.utils.data_utils import BatchedVideoDatapoint, VideoDatapoint, collate_fn

__all__ = ["MaskedVideoBatch", "collate_masked", "masked_loss", "prompt_frames_within", "allowed_prompt_frames",
           "valid_pairs"]

#: The keys of a ``SAM2Train`` frame output that the loss reads, each a list over prediction
#: steps of tensors whose first dimension is the object.
_LOSS_KEYS = ("multistep_pred_multimasks_high_res", "multistep_pred_ious", "multistep_object_score_logits")


@tensorclass
class MaskedVideoBatch(BatchedVideoDatapoint):
    """sam2's ``BatchedVideoDatapoint`` with a ``valid`` flag per (frame, object).

    Made by :func:`collate_masked`. The fields of sam2's batch are unchanged: ``img_batch``
    (T, B, 3, H, W) float32, ``obj_to_frame_idx`` (T, O, 2) int32 (frame, clip) of each
    object, ``masks`` (T, O, H, W) bool, ``metadata``, ``dict_key``; ``batch_size`` [T],
    ``device`` and ``names`` are tensorclass arguments.

    Attributes
    ----------
    valid : (T, O) bool tensor
        True where ``masks[t, o]`` is ground truth (the object annotated there, or the frame
        completely annotated, so an empty mask means absent); False where it is unknown.
    """

    valid: torch.BoolTensor


def valid_pairs(present: np.ndarray, annotated: np.ndarray, complete: np.ndarray) -> np.ndarray:
    """Which (frame, object) masks are ground truth.

    Parameters
    ----------
    present : (T, O) bool ndarray
        Whether object ``o`` has labelled pixels on frame ``t`` (anywhere in the frame).
    annotated : (T,) bool ndarray
        Frames somebody annotated (``annotated_frames``).
    complete : (T,) bool ndarray
        Annotated frames on which every object is annotated (``complete_frames``).

    Returns
    -------
    (T, O) bool ndarray
        ``annotated & (complete | present)``: on an unannotated frame nothing is known; on an
        incomplete one an object's own mask is exact, its absence is not.

    Raises
    ------
    ValueError
        If the shapes disagree.
    """
    present, annotated, complete = (np.asarray(a, bool) for a in (present, annotated, complete))
    if present.ndim != 2 or annotated.shape != (present.shape[0],) or complete.shape != annotated.shape:
        raise ValueError(f"expected present (T, O) and annotated, complete (T,); got {present.shape}, "
                         f"{annotated.shape}, {complete.shape}")
    return annotated[:, None] & (complete[:, None] | present)


def collate_masked(videos: Sequence[VideoDatapoint], valid: Sequence[np.ndarray],
                   dict_key: str = "mixed") -> MaskedVideoBatch:
    """sam2's ``collate_fn`` plus the ``valid`` flags of each video.

    Parameters
    ----------
    videos : sequence of VideoDatapoint
        All with the same number of frames T.
    valid : sequence of (T, O_i) bool ndarray
        One per video, objects in the order of each frame's ``objects``.
    dict_key : str

    Returns
    -------
    MaskedVideoBatch
        ``valid`` (T, sum O_i), objects in the order sam2's collation puts them.

    Raises
    ------
    ValueError
        If ``valid`` does not match the videos' frames and objects.
    """
    if len(videos) != len(valid):
        raise ValueError(f"one valid array per video expected: {len(videos)} videos, {len(valid)} arrays")
    for video, v in zip(videos, valid):
        shape = (len(video.frames), len(video.frames[0].objects))
        if np.shape(v) != shape:
            raise ValueError(f"video {video.video_id}: valid must be (frames, objects) = {shape}, got {np.shape(v)}")
    batch = collate_fn(list(videos), dict_key=dict_key)
    flags = torch.from_numpy(np.concatenate([np.asarray(v, bool) for v in valid], axis=1))
    return MaskedVideoBatch(img_batch=batch.img_batch, obj_to_frame_idx=batch.obj_to_frame_idx, masks=batch.masks,
                            metadata=batch.metadata, dict_key=batch.dict_key, valid=flags,
                            batch_size=batch.batch_size)


def masked_loss(loss_fn, outs: List[Dict], targets: torch.Tensor,
                valid: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """sam2's multi-step loss over the valid (frame, object) pairs only.

    Parameters
    ----------
    loss_fn : training.loss_fns.MultiStepMultiMasksAndIous
    outs : list of dict
        ``SAM2Train`` outputs, one per frame.
    targets : (T, O, H, W) bool tensor
        Ground-truth masks.
    valid : (T, O) bool tensor, optional
        The pairs to supervise; all when None.

    Returns
    -------
    dict of str to tensor
        The same keys as ``loss_fn(outs, targets)`` (``loss_mask``, ``loss_dice``, ``loss_iou``,
        ``loss_class``, ``core_loss``). Each frame's loss is sam2's, computed on its valid
        objects and scaled by ``n_valid / O``: sam2 divides every term by the number of
        objects, so this is its loss with the invalid pairs' terms removed and the rest
        unchanged. With every pair valid it equals ``loss_fn(outs, targets)``; a frame with
        no valid object adds nothing (zero, with the graph kept so ``backward`` works).

    Raises
    ------
    ValueError
        If ``valid`` is not (T, O) for ``targets``.
    """
    if valid is None or bool(valid.all()):
        return loss_fn(outs, targets)
    n_frames, n_obj = targets.shape[:2]
    if tuple(valid.shape) != (n_frames, n_obj):
        raise ValueError(f"valid must be (frames, objects) = {(n_frames, n_obj)}, got {tuple(valid.shape)}")
    losses: Dict[str, torch.Tensor] = defaultdict(int)
    for t in range(n_frames):
        keep = torch.nonzero(valid[t].to(targets.device), as_tuple=False)[:, 0]
        if not len(keep):
            continue
        frame_out = {k: [v[keep] for v in outs[t][k]] for k in _LOSS_KEYS}
        cur = loss_fn([frame_out], targets[t : t + 1, keep])
        scale = len(keep) / n_obj
        for k, v in cur.items():
            losses[k] = losses[k] + v * scale
    if not losses:  # nothing valid: a zero that still reaches the outputs' graph
        zero = outs[0][_LOSS_KEYS[0]][0].sum() * 0.0
        return {k: zero for k in ("loss_mask", "loss_dice", "loss_iou", "loss_class", "core_loss")}
    return dict(losses)


def allowed_prompt_frames(valid: Optional[torch.Tensor]) -> Optional[List[int]]:
    """Frames on which every object's mask is ground truth (prompts may come from them).

    Parameters
    ----------
    valid : (T, O) bool tensor or None

    Returns
    -------
    list of int or None
        None when every frame qualifies (or ``valid`` is None).
    """
    if valid is None or bool(valid.all()):
        return None
    return [int(t) for t in torch.nonzero(valid.all(dim=1), as_tuple=False)[:, 0]]


@contextlib.contextmanager
def prompt_frames_within(model, allowed: Optional[Iterable[int]]):
    """Make ``SAM2Train`` take prompts only from ``allowed`` frames (and the start frame).

    sam2 draws 1-2 initial conditioning frames (masks, clicks or a box from the ground truth)
    and 1-2 frames for simulated correction clicks (from the error against the ground truth)
    at random among all frames of a batch. Inside this context the frames it draws outside
    ``allowed`` are dropped after the draw -- a dropped conditioning frame becomes an ordinary
    tracked frame -- so the random draws, and with them the rest of the batch, stay as sam2
    makes them.

    Parameters
    ----------
    model : training.model.sam2.SAM2Train
    allowed : iterable of int or None
        Frame indices; None: no restriction.

    Yields
    ------
    model
    """
    if allowed is None:
        yield model
        return
    allowed = set(int(t) for t in allowed)
    original = model.prepare_prompt_inputs

    def prepare(backbone_out, input, start_frame_idx=0):
        out = original(backbone_out, input, start_frame_idx)
        ok = allowed | {start_frame_idx}
        init = [t for t in out["init_cond_frames"] if t in ok]
        for t in set(out["init_cond_frames"]) - set(init):
            out["mask_inputs_per_frame"].pop(t, None)
            out["point_inputs_per_frame"].pop(t, None)
        out["init_cond_frames"] = init
        out["frames_not_in_init_cond"] = [t for t in range(start_frame_idx, out["num_frames"]) if t not in init]
        out["frames_to_add_correction_pt"] = [t for t in out["frames_to_add_correction_pt"] if t in ok]
        return out

    model.prepare_prompt_inputs = prepare
    try:
        yield model
    finally:
        del model.prepare_prompt_inputs  # the class's method again
