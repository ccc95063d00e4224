"""Prompt objects on any frame and propagate them through a stack with SAM2.

A thin, validated layer over ``sam2``'s own video predictor: prompts (positive/negative
points, a box, or a mask) per object id on any frame, propagation forward, backward or both
from any frame, several objects at once, masks at the input resolution. Objects may leave
and re-enter the field of view; sam2's object score then gives empty masks.

Coordinates follow napari: points are (y, x) and boxes (y0, x0, y1, x1) in pixels of the
input frame; sam2's (x, y) convention stays inside this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import numpy as np

from . import _sam2
from ._sam2 import init_inference_state
from .frames import FrameSource
from .uncertainty import model_temperature

__all__ = ["FrameResult", "Tracker", "DIRECTIONS"]

logger = logging.getLogger(__name__)

DIRECTIONS = ("forward", "backward", "both")

#: Default bound of sam2's per-frame outputs per object (bytes): about 50 frames of a
#: 1024 px SAM2.1 model, about 580 of lit-tiny's, before the farthest are dropped.
DEFAULT_STATE_BUDGET = 64 * 2**20


@dataclass
class FrameResult:
    """Masks of all objects on one frame.

    Attributes
    ----------
    frame_idx : int
        Index along the propagation axis.
    obj_ids : tuple of int
        Object ids, in the order of ``logits``.
    logits : (O, Y, X) float32 ndarray
        SAM2 mask logits at the input resolution (> 0 is inside).
    out_of_memory : tuple of int
        Objects whose result on this frame was kept out of SAM2's memory (see
        :meth:`Tracker.propagate`'s ``memory_gate``).
    temperature : float
        The model's logit temperature, used by :meth:`masked_entropy` (see
        :func:`napari_lit.core.uncertainty.model_temperature`).
    given : tuple of int
        Objects whose mask on this frame is a mask prompt, which SAM2 returns as it is (the
        user's mask, not a prediction): their masked entropy is 0.
    """

    frame_idx: int
    obj_ids: Tuple[int, ...]
    logits: np.ndarray
    out_of_memory: Tuple[int, ...] = ()
    temperature: float = 1.0
    given: Tuple[int, ...] = ()
    _entropy: dict = field(default_factory=dict, repr=False, compare=False)  # (ratio, normalize) -> (O,)

    @property
    def masks(self) -> np.ndarray:
        """(O, Y, X) bool masks."""
        return self.logits > 0

    def mask(self, obj_id: int) -> np.ndarray:
        """(Y, X) bool mask of object ``obj_id``.

        Raises
        ------
        ValueError
            If ``obj_id`` is not among :attr:`obj_ids`.
        """
        return self.logits[self.obj_ids.index(obj_id)] > 0

    def masked_entropy(self, ratio: Optional[float] = None, normalize: str = "area") -> np.ndarray:
        """(O,) float32 masked entropy of each object, in the order of :attr:`obj_ids`
        (Lazy-XMem eq. 2-4, see :func:`napari_lit.core.uncertainty.masked_entropy`; the
        objects compete for pixels). ``ratio``: mask dilation (default
        :data:`~napari_lit.core.uncertainty.DEFAULT_DILATION`); ``normalize``: eq. 4's
        ``"area"`` or ``"length"`` (see there). Computed once per setting: the memory gate, the
        session and the benchmark all ask for it on every frame."""
        from .uncertainty import DEFAULT_DILATION, masked_entropy

        if not self.obj_ids:
            return np.zeros(0, np.float32)
        ratio = DEFAULT_DILATION if ratio is None else float(ratio)
        key = (ratio, normalize)
        if key not in self._entropy:
            values = masked_entropy(self.logits, ratio, temperature=self.temperature, normalize=normalize)
            values[[k for k, o in enumerate(self.obj_ids) if o in self.given]] = 0.0
            self._entropy[key] = values
        return self._entropy[key].copy()

    def labels(self) -> np.ndarray:
        """(Y, X) uint32 label image: each pixel gets the object with the highest positive
        logit there (overlaps resolved by confidence), 0 elsewhere."""
        out = np.zeros(self.logits.shape[1:], np.uint32)
        if not self.obj_ids:
            return out
        ids = np.asarray(self.obj_ids, np.uint32)
        if len(ids) == 1:
            out[self.logits[0] > 0] = ids[0]
            return out
        inside = (self.logits > 0).any(axis=0)  # argmax only where some object is present
        out[inside] = ids[np.argmax(self.logits[:, inside], axis=0)]
        return out


class Tracker:
    """Segment and track objects through a stack with a SAM2 video predictor.

    Parameters
    ----------
    predictor : sam2.sam2_video_predictor.SAM2VideoPredictor
        E.g. from :func:`napari_lit.models.load_predictor`.
    frames : FrameSource or array-like
        The stack, (N, Y, X) or (N, Y, X, C); an array is wrapped in a
        :class:`~napari_lit.core.frames.FrameSource` at the predictor's input size.
    offload_state_to_cpu : bool
        Keep sam2's per-frame state in CPU memory (for long stacks on a GPU).
    record_decoder_inputs : bool
        Keep the mask decoder's inputs of recently tracked frames (per object), which
        learning from corrections needs (:mod:`napari_lit.core.adaptation`).
    state_budget_bytes : int, optional
        Upper bound of sam2's per-frame outputs kept in its inference state (memory features,
        object pointers, low-resolution masks), per object; None keeps all (as sam2 does).
        Over the budget, the tracked frames farthest from the frame in progress go first,
        never the ones sam2 reads from (:func:`napari_lit.core._sam2.prune_tracked_outputs`),
        so memory stays flat over any number of frames and propagation is unchanged. A
        click later on a dropped frame starts from the frames' prompts and the nearby memory
        still held, without that frame's earlier mask as a prior.

    Raises
    ------
    TypeError, ValueError
        If ``frames`` is not a valid stack (see :class:`FrameSource`).
    """

    def __init__(self, predictor, frames, offload_state_to_cpu: bool = False,
                 record_decoder_inputs: bool = False, state_budget_bytes: Optional[int] = DEFAULT_STATE_BUDGET):
        if not isinstance(frames, FrameSource):
            frames = FrameSource(frames, image_size=predictor.image_size)
        elif frames.image_size != predictor.image_size:
            raise ValueError(
                f"frame source resizes to {frames.image_size} px but the model expects "
                f"{predictor.image_size} px"
            )
        self.predictor = predictor
        self.temperature = model_temperature(predictor)  #: logit temperature for the entropy
        self.frames = frames
        self.state = init_inference_state(predictor, frames, offload_state_to_cpu)
        self.context = _sam2.ObjectContext(predictor, self.state) if record_decoder_inputs else None
        self.state_budget_bytes = state_budget_bytes
        self._reach = _sam2.memory_reach(predictor)
        self._keep: Optional[int] = None  # outputs per object that fit the budget (from the first one)
        self.n_pruned = 0  #: tracked-frame outputs dropped from sam2's state so far

    def close(self) -> None:
        """Detach from the predictor (restores what recording decoder inputs changed) and
        stop the frame source's prefetch thread, if any."""
        if self.context is not None:
            self.context.close()
            self.context = None
        self.frames.close()

    def _bound_state(self, frame_idx: int) -> None:
        """Keep sam2's per-frame outputs within :attr:`state_budget_bytes` (per object)."""
        if self.state_budget_bytes is None:
            return
        if self._keep is None:
            sizes = [_sam2.output_nbytes(out) for d in self.state["output_dict_per_obj"].values()
                     for out in d["non_cond_frame_outputs"].values()]
            if not sizes:
                return
            self._keep = max(2 * self._reach + 1, int(self.state_budget_bytes // max(max(sizes), 1)))
        self.n_pruned += _sam2.prune_tracked_outputs(self.state, frame_idx, self._reach, self._keep)

    def state_frames(self) -> int:
        """How many tracked-frame outputs sam2's state holds now (all objects)."""
        return sum(len(d["non_cond_frame_outputs"]) for d in self.state["output_dict_per_obj"].values())

    def decoder_inputs(self, frame_idx: int, obj_id: int):
        """Mask-decoder inputs recorded when ``frame_idx`` of ``obj_id`` was last tracked.

        Returns
        -------
        napari_lit.core._sam2.DecoderInputs or None
            None when not recorded (never tracked, or evicted from the bounded record).

        Raises
        ------
        RuntimeError
            If the tracker was made without ``record_decoder_inputs``.
        """
        if self.context is None:
            raise RuntimeError("this Tracker does not record decoder inputs (record_decoder_inputs=False)")
        return self.context.decoder_inputs(frame_idx, obj_id)

    def to_input_resolution(self, low_res_logits) -> np.ndarray:
        """Resize ``low_res_logits``, (1, 1, h, w) decoder logits, to (Y, X) float32 logits
        at the input size, as sam2 does for its outputs."""
        import torch.nn.functional as F

        logits = F.interpolate(low_res_logits.float(), size=self.frame_shape, mode="bilinear", align_corners=False)
        return logits[0, 0].cpu().numpy()

    # ------------------------------------------------------------------ properties
    @property
    def n_frames(self) -> int:
        """Number of frames N."""
        return self.frames.n_frames

    @property
    def frame_shape(self) -> Tuple[int, int]:
        """(Y, X) of the input frames."""
        return self.frames.frame_shape

    @property
    def obj_ids(self) -> Tuple[int, ...]:
        """Ids of the objects prompted so far."""
        return tuple(self.state["obj_ids"])

    def prompt_frames(self, obj_id: Optional[int] = None) -> List[int]:
        """Sorted frames that hold a prompt of object ``obj_id`` (of any object when None)."""
        frames = set()
        for oid, idx in self.state["obj_id_to_idx"].items():
            if obj_id is not None and oid != obj_id:
                continue
            frames.update(self.state["point_inputs_per_obj"][idx])
            frames.update(self.state["mask_inputs_per_obj"][idx])
        return sorted(frames)

    def _result(self, frame_idx, obj_ids, video_res_masks) -> FrameResult:
        """sam2's output of one frame as a :class:`FrameResult` with the model's temperature
        and the objects whose mask there is a mask prompt (SAM2 outputs it unchanged)."""
        frame_idx = int(frame_idx)
        given = tuple(oid for oid, idx in self.state["obj_id_to_idx"].items()
                      if frame_idx in self.state["mask_inputs_per_obj"][idx])
        return FrameResult(frame_idx, tuple(int(i) for i in obj_ids), video_res_masks[:, 0].float().cpu().numpy(),
                           temperature=self.temperature, given=given)

    # ------------------------------------------------------------------ validation
    def _check_frame(self, frame_idx) -> int:
        if not isinstance(frame_idx, (int, np.integer)) or isinstance(frame_idx, bool):
            raise TypeError(f"frame index must be an integer, got {frame_idx!r}")
        if not 0 <= int(frame_idx) < self.n_frames:
            raise IndexError(
                f"frame {int(frame_idx)} does not exist: the stack has frames 0..{self.n_frames - 1}"
            )
        return int(frame_idx)

    @staticmethod
    def _check_obj(obj_id) -> int:
        if not isinstance(obj_id, (int, np.integer)) or isinstance(obj_id, bool):
            raise TypeError(f"object id must be an integer, got {obj_id!r}")
        if int(obj_id) < 1:
            raise ValueError(f"object id must be >= 1 (0 is the background label), got {int(obj_id)}")
        return int(obj_id)

    def _check_points(self, points, labels) -> Tuple[np.ndarray, np.ndarray]:
        pts = np.asarray(points, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
            raise ValueError(f"points must be a non-empty (K, 2) array of (y, x); got shape {pts.shape}")
        lab = np.asarray(labels).astype(np.int64).ravel()
        if lab.shape != (len(pts),):
            raise ValueError(f"labels must have one entry per point ({len(pts)}); got {lab.shape}")
        if not np.isin(lab, (0, 1)).all():
            raise ValueError(f"labels must be 1 (positive) or 0 (negative); got {sorted(set(lab.tolist()))}")
        h, w = self.frame_shape
        bad = ~((pts[:, 0] >= 0) & (pts[:, 0] <= h - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= w - 1))
        if bad.any():
            y, x = pts[bad][0]
            raise ValueError(f"point (y={y:g}, x={x:g}) is outside the {h} x {w} frame")
        return pts, lab

    # --------------------------------------------------------------------- prompts
    def add_points(self, frame_idx: int, obj_id: int, points, labels, clear: bool = True) -> FrameResult:
        """Add positive/negative clicks for one object on one frame.

        Parameters
        ----------
        frame_idx : int
        obj_id : int
            Object id >= 1 (the label value it gets).
        points : (K, 2) array-like of float
            (y, x) pixel coordinates on the input frame.
        labels : (K,) array-like of int
            1 positive, 0 negative.
        clear : bool
            Replace earlier clicks of this object on this frame (True) or add to them.

        Returns
        -------
        FrameResult
            Updated masks of all objects on ``frame_idx``.

        Raises
        ------
        IndexError
            If the frame does not exist.
        ValueError
            On an object id < 1, malformed points/labels, or a point outside the frame.
        """
        frame_idx = self._check_frame(frame_idx)
        obj_id = self._check_obj(obj_id)
        pts, lab = self._check_points(points, labels)
        out = self.predictor.add_new_points_or_box(
            self.state, frame_idx, obj_id, points=pts[:, ::-1].copy(), labels=lab.astype(np.int32),
            clear_old_points=clear,
        )
        return self._result(*out)

    def add_box(self, frame_idx: int, obj_id: int, box, points=None, labels=None) -> FrameResult:
        """Prompt one object with a box (and optional clicks) on one frame.

        Parameters
        ----------
        frame_idx : int
        obj_id : int
            Object id >= 1.
        box : (4,) array-like
            (y0, x0, y1, x1) in input pixels, y0 < y1 and x0 < x1.
        points, labels : optional
            Extra clicks as in :meth:`add_points`.

        Raises
        ------
        ValueError
            If the box is malformed or outside the frame.
        """
        frame_idx = self._check_frame(frame_idx)
        obj_id = self._check_obj(obj_id)
        b = np.asarray(box, dtype=np.float32).ravel()
        h, w = self.frame_shape
        if b.shape != (4,) or not (b[0] < b[2] and b[1] < b[3]):
            raise ValueError(f"box must be (y0, x0, y1, x1) with y0 < y1 and x0 < x1; got {b.tolist()}")
        if b[0] > h - 1 or b[1] > w - 1 or b[2] < 0 or b[3] < 0:
            raise ValueError(f"box {b.tolist()} lies outside the {h} x {w} frame")
        b = np.clip(b, 0, [h - 1, w - 1, h - 1, w - 1])
        kwargs = {}
        if points is not None:
            pts, lab = self._check_points(points, labels)
            kwargs = dict(points=pts[:, ::-1].copy(), labels=lab.astype(np.int32))
        out = self.predictor.add_new_points_or_box(
            self.state, frame_idx, obj_id, box=np.array([b[1], b[0], b[3], b[2]], np.float32),
            clear_old_points=True, **kwargs,
        )
        return self._result(*out)

    def add_mask(self, frame_idx: int, obj_id: int, mask) -> FrameResult:
        """Prompt one object with a mask on one frame.

        Parameters
        ----------
        frame_idx : int
        obj_id : int
            Object id >= 1.
        mask : (Y, X) array-like of bool
            At the input resolution. An empty mask says "the object is not on this frame";
            it is accepted for an object that already has a prompt elsewhere.

        Raises
        ------
        ValueError
            If the mask's shape differs from the frame's, or it is empty for a new object.
        """
        frame_idx = self._check_frame(frame_idx)
        obj_id = self._check_obj(obj_id)
        m = np.asarray(mask)
        if m.shape != self.frame_shape:
            raise ValueError(f"mask must have the frame's shape {self.frame_shape}; got {m.shape}")
        m = m.astype(bool)
        if not m.any() and obj_id not in self.obj_ids:
            raise ValueError(
                f"mask prompt for new object {obj_id} on frame {frame_idx} is empty: prompt it "
                f"where it is visible first"
            )
        out = self.predictor.add_new_mask(self.state, frame_idx, obj_id, m)
        return self._result(*out)

    def remove_prompts(self, frame_idx: int, obj_id: int) -> None:
        """Remove the prompts of object ``obj_id`` on frame ``frame_idx``."""
        frame_idx = self._check_frame(frame_idx)
        obj_id = self._check_obj(obj_id)
        if obj_id in self.state["obj_id_to_idx"]:
            self.predictor.clear_all_prompts_in_frame(self.state, frame_idx, obj_id, need_output=False)

    def reset(self) -> None:
        """Forget all objects, prompts and tracking results (keeps cached frames)."""
        self.predictor.reset_state(self.state)
        if self.context is not None:
            self.context.clear()

    # ----------------------------------------------------------------- propagation
    def propagate(self, start_frame: Optional[int] = None, direction: str = "both",
                  max_frames: Optional[int] = None, memory_gate: Optional[float] = None) -> Iterator[FrameResult]:
        """Propagate all prompted objects frame by frame (a generator).

        Parameters
        ----------
        start_frame : int, optional
            Frame to start from; the earliest prompted frame by default.
        direction : {"forward", "backward", "both"}
            ``both`` runs forward from ``start_frame`` to the last frame, then backward from
            it to frame 0 (``start_frame`` is yielded once).
        max_frames : int, optional
            Stop after this many frames in each direction.
        memory_gate : float, optional
            Uncertainty-driven memory update (Lazy-XMem sec. 3.5): an object whose masked
            entropy on a tracked frame exceeds this is kept out of SAM2's memory for that
            frame, so later frames do not build on an unsure mask. None: every frame is
            remembered, as in SAM2.

        Yields
        ------
        FrameResult
            One per frame, in processing order; closing the generator stops propagation
            after the frame in progress.

        Raises
        ------
        ValueError
            If no object has a prompt yet, or ``direction`` is unknown.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if not self.prompt_frames():
            raise ValueError("no object has a prompt yet: add points, a box or a mask first")
        if start_frame is None:
            start_frame = self.prompt_frames()[0]
        start_frame = self._check_frame(start_frame)
        passes = {"forward": [False], "backward": [True], "both": [False, True]}[direction]
        seen = set()
        for reverse in passes:
            gen = _sam2.propagate_in_video(self.predictor, self.state, start_frame, max_frames, reverse)
            try:
                for frame_idx, obj_ids, masks in gen:
                    if frame_idx in seen:
                        continue
                    seen.add(frame_idx)
                    result = self._result(frame_idx, obj_ids, masks)
                    self._bound_state(frame_idx)
                    if memory_gate is not None and result.obj_ids:
                        # before sam2 goes on to the next frame (its generator waits here)
                        unsure = [o for o, h in zip(result.obj_ids, result.masked_entropy()) if h > memory_gate]
                        result.out_of_memory = tuple(
                            o for o in unsure if _sam2.forget_frame_memory(self.state, o, frame_idx))
                    yield result
            finally:
                gen.close()
