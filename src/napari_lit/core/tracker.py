"""Prompt objects on any frame and propagate them through a stack with SAM2.

A thin, validated layer over ``sam2``'s own video predictor: prompts (positive/negative
points, a box, or a mask) per object id on any frame, propagation forward, backward or both
from any frame, several objects at once, masks at the input resolution. With object-centred
zoom (on by default, :mod:`napari_lit.core.zoom`) each small object is seen through its own
window of the frame. Objects may leave
and re-enter the field of view; sam2's object score then gives empty masks.

Coordinates follow napari: points are (y, x) and boxes (y0, x0, y1, x1) in pixels of the
input frame; sam2's (x, y) convention stays inside this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from . import _sam2
from ._sam2 import NO_OBJ_SCORE, init_inference_state
from .cpu import tune_allocator
from .features import FeatureCache
from .frames import FrameSource, check_window
from .uncertainty import model_temperature
from .zoom import (ZOOM_MODES, Window, ZoomConfig, click_window, contains, fit_window, follow, mask_box, object_box,
                   stability_score, whole_frame)

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
    replaced : dict of int to (Y, X) bool ndarray
        Objects whose own prediction was replaced on this frame by self-applied learning
        (:meth:`LitSession.propagate` with ``tau_u``): their own mask, before.
    temperature : float
        The model's logit temperature, used by :meth:`masked_entropy` (see
        :func:`napari_lit.core.uncertainty.model_temperature`).
    given : tuple of int
        Objects whose mask on this frame is a mask prompt, which SAM2 returns as it is (the
        user's mask, not a prediction): their masked entropy is 0.
    windows : dict of int -> (y0, x0, y1, x1) or None
        The window of the frame each object was seen through (object-centred zoom,
        :mod:`napari_lit.core.zoom`); None: the whole frame.
    """

    frame_idx: int
    obj_ids: Tuple[int, ...]
    logits: np.ndarray
    out_of_memory: Tuple[int, ...] = ()
    replaced: Dict[int, np.ndarray] = field(default_factory=dict)
    temperature: float = 1.0
    given: Tuple[int, ...] = ()
    windows: Dict[int, Optional[Tuple[int, int, int, int]]] = field(default_factory=dict)
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


_AUTO = object()  # "choose the window" (the default of the prompt methods' ``window``)


def _resized(masks, size) -> np.ndarray:
    """The first of sam2's (O, 1, h, w) logits resized bilinearly, as sam2 resizes its
    outputs, to ``size`` (H, W): an (H, W) float32 array."""
    import torch.nn.functional as F

    m = masks[:1].float()
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
    return m[0, 0].cpu().numpy()


class _WindowFrames:
    """sam2's frames for one windowed view: item ``i`` is the model input of the view's
    window on frame ``i``, decided when sam2 first reads it (:meth:`_View.window_for`)."""

    def __init__(self, source: FrameSource, view: "_View"):
        self.source = source
        self.view = view

    def __len__(self) -> int:
        return self.source.n_frames

    def __getitem__(self, index):
        return self.source.window_input(int(index), self.view.window_for(int(index)))


class _View:
    """One sam2 inference state and what its objects are seen through: the whole frames
    (every object without zoom, and large objects with it) or one small object's window,
    which follows it (:func:`napari_lit.core.zoom.follow`)."""

    def __init__(self, tracker: "Tracker", windowed: bool):
        self.tracker = tracker
        self.windowed = windowed
        self.windows: Dict[int, Window] = {}  # frame -> window the frame was (last) seen through
        self.boxes: Dict[int, Optional[tuple]] = {}  # frame -> the object's bounding box there
        self.step: Optional[int] = None  # +1 / -1 while a propagation pass runs
        self.prev: Optional[int] = None  # the frame that pass did last
        self.keep: Optional[int] = None  # outputs per object within the state budget
        features = tracker.features
        if windowed:
            side = tracker.predictor.image_size // 4  # sam2 returns its decoder's logits as they are
            self.state = init_inference_state(tracker.predictor, _WindowFrames(tracker.frames, self),
                                              tracker.offload_state_to_cpu, video_shape=(side, side), warm_up=False)
        else:  # with a feature cache, frame 0 is encoded when (and if) it is needed
            self.state = init_inference_state(tracker.predictor, tracker.frames, tracker.offload_state_to_cpu,
                                              warm_up=features is None)
        if features is not None:
            _sam2.attach_features(tracker.predictor, self.state, features, self.window_for if windowed else None)
        if tracker.context is not None:
            tracker.context.add_state(self.state, self.windows if windowed else None)

    @property
    def obj_ids(self) -> Tuple[int, ...]:
        return tuple(int(o) for o in self.state["obj_ids"])

    def prompt_frames(self) -> set:
        frames = set()
        for idx in self.state["obj_id_to_idx"].values():
            frames.update(self.state["point_inputs_per_obj"][idx])
            frames.update(self.state["mask_inputs_per_obj"][idx])
        return frames

    def nearest_window(self, frame_idx: int) -> Window:
        """The window of the nearest frame that has one (moved on by the object's box there)."""
        if frame_idx in self.windows:
            return self.windows[frame_idx]
        t = self.tracker
        if not self.windows:
            return whole_frame(t.frame_shape)
        near = min(self.windows, key=lambda f: (abs(f - frame_idx), f))
        return follow(self.windows[near], self.boxes.get(near), t.frame_shape, t.predictor.image_size, t.zoom_config)

    def window_for(self, frame_idx: int) -> Window:
        """The window sam2 reads frame ``frame_idx`` through: during propagation it follows the
        object from the frame done just before; otherwise the frame's own (or the nearest)."""
        t = self.tracker
        prev = self.prev
        if self.step is not None and prev is not None and prev == frame_idx - self.step and prev in self.windows:
            velocity = (0.0, 0.0)
            b1, b0 = self.boxes.get(prev), self.boxes.get(prev - self.step)
            if b1 is not None and b0 is not None:
                velocity = ((b1[0] + b1[2] - b0[0] - b0[2]) / 2, (b1[1] + b1[3] - b0[1] - b0[3]) / 2)
            self.set_window(frame_idx, follow(self.windows[prev], b1, t.frame_shape, t.predictor.image_size,
                                              t.zoom_config, velocity))
        elif frame_idx not in self.windows:
            self.windows[frame_idx] = self.nearest_window(frame_idx)
        return self.windows[frame_idx]

    def set_window(self, frame_idx: int, window: Window, obj_id: Optional[int] = None,
                   prompt: bool = False) -> None:
        """See frame ``frame_idx`` through ``window`` from now on; if that changes it, sam2's
        cached features of the frame and, given ``obj_id``, the object's old outputs there
        (in the old window's coordinates) are dropped -- with ``prompt``, its prompt's output
        too, as the caller gives the prompt again in the new window."""
        window = tuple(int(v) for v in window)
        if self.windows.get(frame_idx) == window:
            return
        self.windows[frame_idx] = window
        _sam2.forget_cached_features(self.state, frame_idx)
        if obj_id is not None:
            _sam2.drop_frame_outputs(self.state, obj_id, frame_idx, conditioning=prompt)

    def close(self) -> None:
        if self.tracker.context is not None:
            self.tracker.context.remove_state(self.state)


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
    zoom : {"auto", "off"}
        Object-centred zoom (:mod:`napari_lit.core.zoom`): with ``auto`` each small object is
        seen through its own window of the frame, which follows it, at a scale where it
        covers about a quarter of the model's input (large objects see the whole frame);
        ``off``: every object sees the whole frame resized to the model's input, as sam2 does.
    zoom_config : ZoomConfig, optional
        The numbers of the zoom (defaults documented there).
    features : "auto", FeatureCache or None
        Where each frame's image-encoder features are kept for reuse
        (:mod:`napari_lit.core.features`): ``auto``, an in-memory cache of its own
        (:data:`~napari_lit.core.features.DEFAULT_FEATURE_BUDGET`); a :class:`FeatureCache`
        (e.g. with a disk folder, or shared by trackers of the same frames and model); None,
        sam2's own (the latest frame only: every propagation encodes every frame again).
    attention : {"auto", "float32", "bfloat16"}
        Precision of the memory attention's attention products on a CPU
        (:func:`napari_lit.core._sam2.set_attention_precision`; it is the predictor's
        setting, so the last tracker made on a predictor sets it): ``auto``, bfloat16 where the
        CPU computes it natively (avx512_bf16, AMX; 2.7x faster there, masks within the
        tolerance in ``docs/benchmarks.md``), else float32; GPU runs are unchanged.

    Raises
    ------
    TypeError, ValueError
        If ``frames`` is not a valid stack (see :class:`FrameSource`), or ``zoom`` or ``attention``
        is unknown.
    napari_lit.core.features.FeatureCacheError
        If ``features`` holds features of another image, model or input size.

    Notes
    -----
    With zoom, each windowed object has its own sam2 inference state over the frames seen
    through its window (sam2 1.1 tracks every object separately anyway: the same memory
    attention and decoder run per object); the frame is read and normalised once for all of
    them (:meth:`FrameSource.window_input`). Masks come back at full resolution in frame
    coordinates; where objects overlap, the more confident one (higher logit) wins.
    """

    def __init__(self, predictor, frames, offload_state_to_cpu: bool = False,
                 record_decoder_inputs: bool = False, state_budget_bytes: Optional[int] = DEFAULT_STATE_BUDGET,
                 zoom: str = "auto", zoom_config: Optional[ZoomConfig] = None, features="auto",
                 attention: str = "auto"):
        if zoom not in ZOOM_MODES:
            raise ValueError(f"zoom must be one of {ZOOM_MODES}, got {zoom!r}")
        shared = isinstance(features, FeatureCache)
        if isinstance(features, str) and features == "auto":
            features = FeatureCache()
        elif features is not None and not shared:
            raise TypeError(f"features must be 'auto', a FeatureCache or None; got {type(features).__name__}")
        if not isinstance(frames, FrameSource):
            frames = FrameSource(frames, image_size=predictor.image_size)
        elif frames.image_size != predictor.image_size:
            raise ValueError(
                f"frame source resizes to {frames.image_size} px but the model expects "
                f"{predictor.image_size} px"
            )
        if shared:
            features.bind(predictor, frames)
        if getattr(getattr(predictor, "device", None), "type", "cpu") == "cpu":
            tune_allocator()  # reuse freed heap for the forward passes' temporaries (measured)
        #: the memory attention's precision in use ("float32" or "bfloat16")
        self.attention = _sam2.set_attention_precision(predictor, attention)
        self.predictor = predictor
        #: the image features kept for reuse (None: sam2's own, the latest frame)
        self.features: Optional[FeatureCache] = features
        self.temperature = model_temperature(predictor)  #: logit temperature for the entropy
        self.frames = frames
        self.zoom = zoom
        self.zoom_config = zoom_config or ZoomConfig()
        self.offload_state_to_cpu = bool(offload_state_to_cpu)
        self.context = _sam2.ObjectContext(predictor) if record_decoder_inputs else None
        self.state_budget_bytes = state_budget_bytes
        self._reach = _sam2.memory_reach(predictor)
        self.n_pruned = 0  #: tracked-frame outputs dropped from sam2's state so far
        self._views: List[_View] = []
        self._view_of: Dict[int, _View] = {}
        self._order: List[int] = []  # object ids in the order they were first prompted
        self._clicks: Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray]] = {}  # (frame, obj) -> frame-px clicks
        self._frame_view: Optional[_View] = None
        if zoom == "off":
            self._frame_view = self._new_view(windowed=False)

    def _new_view(self, windowed: bool) -> _View:
        view = _View(self, windowed)
        self._views.append(view)
        return view

    def _whole_frame_view(self) -> _View:
        if self._frame_view is None:
            self._frame_view = self._new_view(windowed=False)
        return self._frame_view

    def close(self) -> None:
        """Detach from the predictor (restores what recording decoder inputs changed) and
        stop the frame source's prefetch thread, if any."""
        if self.context is not None:
            self.context.close()
            self.context = None
        self.frames.close()

    def _bound_state(self, view: _View, frame_idx: int) -> None:
        """Keep sam2's per-frame outputs within :attr:`state_budget_bytes` (per object)."""
        if self.state_budget_bytes is None:
            return
        if view.keep is None:
            sizes = [_sam2.output_nbytes(out) for d in view.state["output_dict_per_obj"].values()
                     for out in d["non_cond_frame_outputs"].values()]
            if not sizes:
                return
            view.keep = max(2 * self._reach + 1, int(self.state_budget_bytes // max(max(sizes), 1)))
        self.n_pruned += _sam2.prune_tracked_outputs(view.state, frame_idx, self._reach, view.keep)

    def state_frames(self) -> int:
        """How many tracked-frame outputs sam2's states hold now (all objects)."""
        return sum(len(d["non_cond_frame_outputs"]) for v in self._views
                   for d in v.state["output_dict_per_obj"].values())

    @property
    def states(self) -> Tuple[dict, ...]:
        """sam2's inference states: one over the whole frames (without zoom: all objects) and
        one per windowed object."""
        return tuple(v.state for v in self._views)

    def state_of(self, obj_id: int) -> dict:
        """The sam2 inference state that tracks ``obj_id``.

        Raises
        ------
        KeyError
            If the object has no prompt yet.
        """
        if int(obj_id) not in self._view_of:
            raise KeyError(f"object {obj_id} has no prompt yet")
        return self._view_of[int(obj_id)].state

    def decoder_inputs(self, frame_idx: int, obj_id: int):
        """Mask-decoder inputs recorded when ``frame_idx`` of ``obj_id`` was last tracked.

        Returns
        -------
        napari_lit.core._sam2.DecoderInputs or None
            None when not recorded (never tracked, or evicted from the bounded record). Its
            ``window`` is the window of the frame the decoder saw (None: the whole frame).

        Raises
        ------
        RuntimeError
            If the tracker was made without ``record_decoder_inputs``.
        """
        if self.context is None:
            raise RuntimeError("this Tracker does not record decoder inputs (record_decoder_inputs=False)")
        return self.context.decoder_inputs(frame_idx, obj_id)

    def confidence(self, frame_idx: int, obj_id: int) -> Optional[Tuple[float, float]]:
        """The model's own confidence in its latest mask of ``obj_id`` on ``frame_idx``.

        Returns
        -------
        (predicted_iou, object_score) : (float, float) or None
            The mask decoder's predicted IoU of the mask sam2 kept (the highest of its
            candidates; SAM's IoU head, Kirillov et al. 2023) and its object score as a
            probability (sigmoid of SAM2's occlusion logit: below 0.5 sam2 reads "no object
            here"). None when the tracker does not record decoder calls
            (``record_decoder_inputs=False``) or the frame was not decoded for the object.
        """
        view = self._view_of.get(int(obj_id))
        if self.context is None or view is None:
            return None
        got = self.context.confidence(view.state, frame_idx, obj_id)
        if got is None:
            return None
        iou, logit = got
        return float(iou), float(1.0 / (1.0 + np.exp(-logit)))

    def to_input_resolution(self, low_res_logits, window: Optional[Window] = None) -> np.ndarray:
        """Decoder logits as (Y, X) float32 logits of the whole input frame.

        Parameters
        ----------
        low_res_logits : (1, 1, h, w) tensor
            The decoder's output (image_size / 4 a side).
        window : (y0, x0, y1, x1) ints, optional
            The window of the frame the decoder saw (a
            :class:`~napari_lit.core._sam2.DecoderInputs`' ``window``); None: the whole frame.

        Returns
        -------
        (Y, X) float32 ndarray
            Resized bilinearly as sam2 resizes its outputs, into the window;
            ``NO_OBJ_SCORE`` (-1024) outside it.
        """
        if window is None:
            return _resized(low_res_logits, self.frame_shape)
        y0, x0, y1, x1 = check_window(window, self.frame_shape)
        out = np.full(self.frame_shape, NO_OBJ_SCORE, np.float32)
        out[y0:y1, x0:x1] = _resized(low_res_logits, (y1 - y0, x1 - x0))
        return out

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
        return tuple(self._order)

    def prompt_frames(self, obj_id: Optional[int] = None) -> List[int]:
        """Sorted frames that hold a prompt of object ``obj_id`` (of any object when None)."""
        frames = set()
        for view in self._views:
            state = view.state
            for oid, idx in state["obj_id_to_idx"].items():
                if obj_id is not None and oid != obj_id:
                    continue
                frames.update(state["point_inputs_per_obj"][idx])
                frames.update(state["mask_inputs_per_obj"][idx])
        return sorted(frames)

    def is_tracked(self, frame_idx: int, obj_id: int) -> bool:
        """Whether sam2 has a result for ``obj_id`` on ``frame_idx`` (prompted or propagated)."""
        view = self._view_of.get(int(obj_id))
        if view is None:
            return False
        idx = view.state["obj_id_to_idx"][int(obj_id)]
        return int(frame_idx) in view.state["frames_tracked_per_obj"][idx]

    def window(self, frame_idx: int, obj_id: int) -> Optional[Window]:
        """The window ``obj_id`` is seen through on ``frame_idx``: (y0, x0, y1, x1) frame pixels,
        or None when it sees the whole frame (no zoom, or a large object).

        Raises
        ------
        KeyError
            If the object has no prompt yet.
        """
        frame_idx = self._check_frame(frame_idx)
        if int(obj_id) not in self._view_of:
            raise KeyError(f"object {obj_id} has no prompt yet")
        view = self._view_of[int(obj_id)]
        return view.nearest_window(frame_idx) if view.windowed else None

    def set_window(self, frame_idx: int, obj_id: int, window) -> None:
        """See a windowed object on one tracked frame through ``window`` (e.g. the window a
        saved session recorded), from the next time sam2 reads that frame; a propagation
        starting there starts in it. (A prompted frame's window is set with the prompt's
        ``window=``.)

        Parameters
        ----------
        frame_idx, obj_id : int
        window : (y0, x0, y1, x1) ints
            Frame pixels, inside the frame.

        Raises
        ------
        KeyError
            If the object has no prompt yet.
        ValueError
            If the window is not inside the frame, the object sees the whole frame, or the
            frame holds a prompt of the object.
        """
        frame_idx = self._check_frame(frame_idx)
        window = check_window(window, self.frame_shape)
        view = self._view_of.get(int(obj_id))
        if view is None:
            raise KeyError(f"object {obj_id} has no prompt yet")
        if not view.windowed:
            raise ValueError(f"object {obj_id} is seen through the whole frame (zoom {self.zoom!r}); it has no window")
        if frame_idx in self.prompt_frames(obj_id):
            raise ValueError(f"frame {frame_idx} holds a prompt of object {obj_id}: give its window with the "
                             f"prompt (window=...)")
        view.set_window(frame_idx, window, obj_id)

    def _given(self, frame_idx: int) -> Tuple[int, ...]:
        return tuple(int(oid) for v in self._views for oid, idx in v.state["obj_id_to_idx"].items()
                     if frame_idx in v.state["mask_inputs_per_obj"][idx])

    def _merge(self, frame_idx: int, outputs) -> FrameResult:
        """One :class:`FrameResult` from the views' outputs on ``frame_idx``: a list of
        ``(view, obj_ids, masks)`` with sam2's masks at the view's video resolution (the
        frame for the whole-frame view, the decoder's for a window); views not listed give
        what sam2 holds for the frame."""
        frame_idx = int(frame_idx)
        ids = list(self._order)
        given = self._given(frame_idx)
        listed = {id(v) for v, _, _ in outputs}
        outputs = list(outputs) + [(v, v.obj_ids, _sam2.frame_low_res_masks(self.predictor, v.state, frame_idx))
                                   for v in self._views if id(v) not in listed and v.obj_ids]
        if len(outputs) == 1 and not outputs[0][0].windowed and [int(o) for o in outputs[0][1]] == ids \
                and tuple(outputs[0][2].shape[-2:]) == self.frame_shape:
            masks = outputs[0][2]  # no zoom: sam2's masks as they are
            return FrameResult(frame_idx, tuple(ids), masks[:, 0].float().cpu().numpy(), temperature=self.temperature,
                               given=given, windows={o: None for o in ids})
        logits = np.full((len(ids),) + self.frame_shape, NO_OBJ_SCORE, np.float32)
        windows: Dict[int, Optional[Window]] = {}
        for view, obj_ids, masks in outputs:
            for k, oid in enumerate(obj_ids):
                row = ids.index(int(oid))
                if not view.windowed:
                    logits[row] = _resized(masks[k:k + 1], self.frame_shape)
                    windows[int(oid)] = None
                    continue
                win = view.windows.get(frame_idx)
                if win is None:  # nothing of this object on this frame
                    continue
                y0, x0, y1, x1 = win
                region = _resized(masks[k:k + 1], (y1 - y0, x1 - x0))
                logits[row, y0:y1, x0:x1] = region
                box = object_box(region > 0)
                view.boxes[frame_idx] = None if box is None else (box[0] + y0, box[1] + x0, box[2] + y0, box[3] + x0)
                windows[int(oid)] = win
        return FrameResult(frame_idx, tuple(ids), logits, temperature=self.temperature, given=given, windows=windows)

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

    def _check_window_arg(self, window):
        if window is _AUTO or window is None:
            return window
        return check_window(window, self.frame_shape)

    # --------------------------------------------------------------------- prompts
    def _to_view(self, yx: np.ndarray, window: Optional[Window]) -> np.ndarray:
        """(K, 2) frame-pixel (y, x) -> the view's (x, y) as sam2 takes them: frame pixels for
        the whole frame (sam2 divides them by the frame's size), fractions of the window for a
        window (given with ``normalize_coords=False``; sam2 scales them to its input)."""
        if window is None:
            return yx[:, ::-1].astype(np.float32).copy()
        y0, x0, y1, x1 = window
        y = np.clip((yx[:, 0] - y0) / (y1 - y0), 0, 1)
        x = np.clip((yx[:, 1] - x0) / (x1 - x0), 0, 1)
        return np.stack([x, y], axis=1).astype(np.float32)

    def _prompt(self, frame_idx: int, obj_id: int, apply, proposal, window, refit=None) -> FrameResult:
        """Prompt one object through the view and window it gets.

        ``apply(view, window)`` gives the prompt to sam2 in that view's coordinates and
        returns sam2's ``(frame_idx, obj_ids, masks)``; ``proposal(view, current)`` is the window
        the prompt asks for (None: the whole frame), given the object's current window on
        the frame (None for a new object); ``window`` is a recorded window (None: the whole
        frame) or ``_AUTO``; ``refit``: the positive clicks of a click prompt -- a new
        object's scale is chosen from the model's answers (:meth:`_click_new`).
        """
        view = self._view_of.get(obj_id)
        if refit is not None and view is None and self.zoom == "auto" and window is _AUTO:
            return self._click_new(frame_idx, obj_id, apply, refit)
        if self.zoom == "off" or (view is not None and not view.windowed):
            win, view = None, self._whole_frame_view()
        elif window is not _AUTO:
            win = window
            if win is None and view is not None:
                raise ValueError(f"object {obj_id} is seen through a window; a recorded whole-frame prompt "
                                 f"cannot be replayed for it")
        else:
            win = proposal(view, None if view is None else view.nearest_window(frame_idx))
            if view is not None and win is None:
                win = whole_frame(self.frame_shape)
        if view is None:
            view = self._whole_frame_view() if win is None else self._new_view(windowed=True)
        if view.windowed:
            view.set_window(frame_idx, win, obj_id, prompt=True)
        self._view_of[obj_id] = view
        if obj_id not in self._order:
            self._order.append(obj_id)
        out = apply(view, win)
        return self._merge(frame_idx, [(view, out[1], out[2])])

    @staticmethod
    def _region(masks, window: Window) -> np.ndarray:
        """sam2's (1, 1, h, w) logits of a windowed view as (wy, wx) logits over the window."""
        y0, x0, y1, x1 = window
        return _resized(masks, (y1 - y0, x1 - x0))

    def _click_new(self, frame_idx: int, obj_id: int, apply, positive: np.ndarray) -> FrameResult:
        """A new object's first clicks, with zoom: the scale is unknown, so the model answers
        through a window at each of ``click_scales`` (each refitted to its mask and predicted
        again, ``click_refits`` times), and the most stable mask is kept
        (:func:`~napari_lit.core.zoom.stability_score`)."""
        cfg, size, full = self.zoom_config, self.predictor.image_size, whole_frame(self.frame_shape)
        best, tried = None, set()
        for scale in cfg.click_scales:
            win = click_window(positive, self.frame_shape, size, cfg, scale=scale) or full
            if win in tried:
                continue
            tried.add(win)
            view = _View(self, windowed=True)
            view.set_window(frame_idx, win, obj_id, prompt=True)
            out = apply(view, win)
            for _ in range(cfg.click_refits):
                # the click's answer refits with all its parts (held-back clicks: 0.417 mean J
                # vs 0.396 without far parts); tracking follows object_box
                box = mask_box(self._region(out[2], win) > 0)
                if box is None:
                    break
                box = (box[0] + win[0], box[1] + win[1], box[2] + win[0], box[3] + win[1])
                new = follow(win, box, self.frame_shape, size, cfg)
                if new == win or new in tried:
                    break
                win = new
                tried.add(win)
                view.set_window(frame_idx, win, obj_id, prompt=True)
                out = apply(view, win)
            score = stability_score(self._region(out[2], win))
            if best is None or score > best[0]:
                if best is not None:
                    best[1].close()
                best = (score, view, win)
            else:
                view.close()
        score, view, win = best
        if score < cfg.click_min_stability:  # unsure at every scale: the whole frame, as without zoom
            win = full
        self._order.append(obj_id)
        if win == full:  # the whole frame: with the other objects that see it
            view.close()
            view = self._whole_frame_view()
            out = apply(view, None)
        else:
            self._views.append(view)
            out = (frame_idx, view.obj_ids, _sam2.frame_low_res_masks(self.predictor, view.state, frame_idx))
        self._view_of[obj_id] = view
        return self._merge(frame_idx, [(view, out[1], out[2])])

    def _discard(self, view: _View) -> None:
        """Forget a windowed view (its object moves to the whole-frame view)."""
        view.close()
        self._views.remove(view)
        for oid in view.obj_ids:
            self._view_of.pop(oid, None)

    def add_points(self, frame_idx: int, obj_id: int, points, labels, clear: bool = True,
                   window=_AUTO) -> FrameResult:
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
        window : (y0, x0, y1, x1) ints or None, optional
            With zoom: the window to see the frame through (e.g. as a saved session recorded
            it; None: the whole frame). By default it is chosen: for a new object, squares of
            ``scale * image_size`` px around the clicks for each of ``click_scales``, each
            refitted to the mask the model returns in it (then it predicts once more), the
            most stable mask kept (:func:`~napari_lit.core.zoom.stability_score`); for a
            tracked object its window there, refitted around its mask and the clicks when a
            click falls outside it.

        Returns
        -------
        FrameResult
            Updated masks of all objects on ``frame_idx``.

        Raises
        ------
        IndexError
            If the frame does not exist.
        ValueError
            On an object id < 1, malformed points/labels, a point outside the frame or a
            window not inside it.
        """
        frame_idx = self._check_frame(frame_idx)
        obj_id = self._check_obj(obj_id)
        pts, lab = self._check_points(points, labels)
        window = self._check_window_arg(window)
        key = (frame_idx, obj_id)
        if not clear and key in self._clicks:
            pts = np.concatenate([self._clicks[key][0], pts])
            lab = np.concatenate([self._clicks[key][1], lab])
        self._clicks[key] = (pts, lab)

        def apply(view, win):
            kwargs = dict(points=self._to_view(pts, win), labels=lab.astype(np.int32), clear_old_points=True)
            if win is not None:
                kwargs["normalize_coords"] = False
            return self.predictor.add_new_points_or_box(view.state, frame_idx, obj_id, **kwargs)

        positive = pts[lab == 1] if (lab == 1).any() else pts

        def proposal(view, current):
            cfg, size = self.zoom_config, self.predictor.image_size
            if current is None:
                return click_window(positive, self.frame_shape, size, cfg)
            pbox = (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()) + 1,
                    float(pts[:, 1].max()) + 1)
            if contains(current, pbox, self.frame_shape):
                return current
            box = view.boxes.get(frame_idx)
            if box is not None:
                pbox = (min(pbox[0], box[0]), min(pbox[1], box[1]), max(pbox[2], box[2]), max(pbox[3], box[3]))
            return fit_window(pbox, self.frame_shape, size, cfg)

        return self._prompt(frame_idx, obj_id, apply, proposal, window, refit=positive)

    def add_box(self, frame_idx: int, obj_id: int, box, points=None, labels=None, window=_AUTO) -> FrameResult:
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
        window : optional
            As for :meth:`add_points`; by default the box gives the scale
            (:func:`~napari_lit.core.zoom.fit_window`; a tracked object keeps its window while
            the box fits it).

        Raises
        ------
        ValueError
            If the box is malformed or outside the frame, or a window is not inside it.
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
        pts = lab = None
        if points is not None:
            pts, lab = self._check_points(points, labels)
        window = self._check_window_arg(window)
        self._clicks.pop((frame_idx, obj_id), None)
        corners = np.array([[b[0], b[1]], [b[2], b[3]]], np.float32)

        def apply(view, win):
            kwargs = dict(box=self._to_view(corners, win).reshape(-1))
            if pts is not None:
                kwargs.update(points=self._to_view(pts, win), labels=lab.astype(np.int32))
            if win is not None:
                kwargs["normalize_coords"] = False
            return self.predictor.add_new_points_or_box(view.state, frame_idx, obj_id, clear_old_points=True, **kwargs)

        def proposal(view, current):
            cfg, size = self.zoom_config, self.predictor.image_size
            bbox = (float(b[0]), float(b[1]), float(b[2]) + 1, float(b[3]) + 1)
            if current is None:
                return fit_window(bbox, self.frame_shape, size, cfg)
            return follow(current, bbox, self.frame_shape, size, cfg)

        return self._prompt(frame_idx, obj_id, apply, proposal, window)

    def add_mask(self, frame_idx: int, obj_id: int, mask, window=_AUTO) -> FrameResult:
        """Prompt one object with a mask on one frame.

        Parameters
        ----------
        frame_idx : int
        obj_id : int
            Object id >= 1.
        mask : (Y, X) array-like of bool
            At the input resolution. An empty mask says "the object is not on this frame";
            it is accepted for an object that already has a prompt elsewhere.
        window : optional
            As for :meth:`add_points`; by default the mask gives the scale
            (:func:`~napari_lit.core.zoom.fit_window`; a tracked object keeps its window while
            the mask fits it, and always for an empty mask).

        Raises
        ------
        ValueError
            If the mask's shape differs from the frame's, it is empty for a new object, or a
            window is not inside the frame.
        """
        frame_idx = self._check_frame(frame_idx)
        obj_id = self._check_obj(obj_id)
        m = np.asarray(mask)
        if m.shape != self.frame_shape:
            raise ValueError(f"mask must have the frame's shape {self.frame_shape}; got {m.shape}")
        m = m.astype(bool)
        box = mask_box(m)
        if box is None and obj_id not in self.obj_ids:
            raise ValueError(
                f"mask prompt for new object {obj_id} on frame {frame_idx} is empty: prompt it "
                f"where it is visible first"
            )
        window = self._check_window_arg(window)
        self._clicks.pop((frame_idx, obj_id), None)

        def apply(view, win):
            if win is None:
                return self.predictor.add_new_mask(view.state, frame_idx, obj_id, m)
            y0, x0, y1, x1 = win
            return self.predictor.add_new_mask(view.state, frame_idx, obj_id, np.ascontiguousarray(m[y0:y1, x0:x1]))

        def proposal(view, current):
            cfg, size = self.zoom_config, self.predictor.image_size
            if current is None:
                return fit_window(box, self.frame_shape, size, cfg)
            return current if box is None else follow(current, box, self.frame_shape, size, cfg)

        return self._prompt(frame_idx, obj_id, apply, proposal, window)

    def prompt_window(self, frame_idx: int, obj_id: int) -> Optional[Window]:
        """The window of the prompt of ``obj_id`` on ``frame_idx`` (None: the whole frame),
        for a saved session to replay it (``window=`` of the prompt methods)."""
        view = self._view_of.get(int(obj_id))
        if view is None or not view.windowed:
            return None
        return view.windows.get(int(frame_idx))

    def remove_prompts(self, frame_idx: int, obj_id: int) -> None:
        """Remove the prompts of object ``obj_id`` on frame ``frame_idx``."""
        frame_idx = self._check_frame(frame_idx)
        obj_id = self._check_obj(obj_id)
        self._clicks.pop((frame_idx, obj_id), None)
        view = self._view_of.get(obj_id)
        if view is not None and obj_id in view.state["obj_id_to_idx"]:
            self.predictor.clear_all_prompts_in_frame(view.state, frame_idx, obj_id, need_output=False)

    # --------------------------------------------------------- sam2's memory, saved
    def memory_frames(self, obj_id: int) -> Dict[int, int]:
        """Frames sam2 holds an output of ``obj_id`` for (what later frames read from), each
        with a token that changes when that output is replaced: frame -> token."""
        view = self._view_of.get(int(obj_id))
        if view is None:
            return {}
        d = view.state["output_dict_per_obj"][view.state["obj_id_to_idx"][int(obj_id)]]
        return {int(f): id(out) for key in ("cond_frame_outputs", "non_cond_frame_outputs")
                for f, out in d[key].items() if out.get("maskmem_features") is not None}

    def frame_memory(self, frame_idx: int, obj_id: int) -> Optional[dict]:
        """What sam2 keeps of ``obj_id`` on ``frame_idx`` for the frames after it, to be saved
        and given back with :meth:`restore_memory` in another process.

        Returns
        -------
        dict or None
            ``cond`` (a prompted frame's output), ``out`` (sam2's compact per-frame output:
            ``maskmem_features``, ``maskmem_pos_enc``, ``pred_masks``, ``obj_ptr``,
            ``object_score_logits``; CPU tensors), and with zoom the frame's ``window`` and
            the object's ``box`` there (the next window follows from them). None when sam2
            holds nothing (yet) for the frame.
        """
        view = self._view_of.get(int(obj_id))
        if view is None:
            return None
        d = view.state["output_dict_per_obj"][view.state["obj_id_to_idx"][int(obj_id)]]
        for key, cond in (("cond_frame_outputs", True), ("non_cond_frame_outputs", False)):
            out = d[key].get(int(frame_idx))
            if out is not None and out.get("maskmem_features") is not None:
                window = view.windows.get(int(frame_idx)) if view.windowed else None
                box = view.boxes.get(int(frame_idx))
                return {"cond": cond, "out": _sam2.to_device(out, "cpu"),
                        "window": None if window is None else [int(v) for v in window],
                        "box": None if box is None else [int(v) for v in box]}
        return None

    def restore_memory(self, frame_idx: int, obj_id: int, memory: dict) -> None:
        """Give sam2 back what :meth:`frame_memory` returned (after a resume, once the
        object's prompts are in place): later frames then read the same memory as in the
        session that saved it. A prompted frame's output replaces the one its replayed
        prompt made (sam2 had decoded it with the frame's earlier mask as a prior).

        Parameters
        ----------
        frame_idx, obj_id : int
        memory : dict
            What :meth:`frame_memory` returned for them.

        Raises
        ------
        KeyError
            If ``obj_id`` has no prompt.
        """
        view = self._view_of[int(obj_id)]
        state, f = view.state, int(frame_idx)
        idx = state["obj_id_to_idx"][int(obj_id)]
        if view.windowed and memory.get("window") is not None:
            window = tuple(int(v) for v in memory["window"])
            if view.windows.get(f) != window:
                view.windows[f] = window
                _sam2.forget_cached_features(state, f)
        if memory.get("box") is not None:
            view.boxes[f] = tuple(int(v) for v in memory["box"])
        out = _sam2.to_device(memory["out"], state["storage_device"])
        for key in ("obj_ptr", "object_score_logits"):  # sam2 keeps these on the compute device
            if out.get(key) is not None:
                out[key] = out[key].to(state["device"])
        d = state["output_dict_per_obj"][idx]
        if memory["cond"]:
            d["cond_frame_outputs"][f] = out
            d["non_cond_frame_outputs"].pop(f, None)
            state["temp_output_dict_per_obj"][idx]["cond_frame_outputs"].pop(f, None)
        else:
            d["non_cond_frame_outputs"][f] = out
            state["frames_tracked_per_obj"][idx][f] = {"reverse": False}

    def remove_object(self, obj_id: int) -> None:
        """Forget object ``obj_id``: its prompts, its tracking results and sam2's memory of it
        (a windowed object's own inference state is dropped; in the whole-frame state sam2's
        ``remove_object`` re-indexes the other objects). The other objects are not changed.

        Raises
        ------
        ValueError
            If ``obj_id`` was never prompted.
        """
        obj_id = self._check_obj(obj_id)
        view = self._view_of.get(obj_id)
        if view is None:
            raise ValueError(f"object {obj_id} is not tracked (objects: {list(self._order)})")
        if view.windowed:
            self._discard(view)
        else:
            self.predictor.remove_object(view.state, obj_id, need_output=False)
            self._view_of.pop(obj_id, None)
        self._order.remove(obj_id)
        for key in [k for k in self._clicks if k[1] == obj_id]:
            del self._clicks[key]

    def precompute_plan(self, frames: Optional[List[int]] = None) -> List[Tuple[int, Optional[Window]]]:
        """What a propagation over ``frames`` would encode, as far as it can be foreseen:
        (frame, window) pairs, window None for the whole frame.

        Each windowed object's window on a frame is the one it was seen through there, else
        the nearest one, moved on by the object's box (the window follows with hysteresis, so
        it is usually the one a propagation uses); the whole frame when an object sees it,
        when zoom is off, or when no object is prompted yet (then a first click's largest
        candidate and large objects use it). Frames in the order given (default all).
        """
        frames = list(range(self.n_frames)) if frames is None else [self._check_frame(f) for f in frames]
        views = [v for v in self._views if v.obj_ids]
        whole = not views or any(not v.windowed for v in views)
        plan = []
        for f in frames:
            if whole:
                plan.append((f, None))
            plan.extend((f, v.nearest_window(f)) for v in views if v.windowed)
        return plan

    def precompute(self, plan: Optional[List[Tuple[int, Optional[Window]]]] = None) -> Iterator[Tuple[int, Optional[Window]]]:
        """Fill the feature cache ahead of propagation (a generator): encode each (frame,
        window) of ``plan`` (default :meth:`precompute_plan`) that the cache does not hold.

        It uses inference states of its own, so it may run while the user works (another
        thread); the encoder's outputs are exactly those a propagation computes.

        Yields
        ------
        (int, window or None)
            Each entry of the plan once it is cached (entries already cached too).

        Raises
        ------
        ValueError
            If the tracker has no feature cache, or a window is not inside the frame.
        """
        if self.features is None:
            raise ValueError("this tracker keeps no features (features=None): nothing to precompute")
        plan = self.precompute_plan() if plan is None else [
            (self._check_frame(f), None if w is None else check_window(w, self.frame_shape)) for f, w in plan]
        scratch: Dict[bool, _View] = {}
        try:
            for f, w in plan:
                if (f, w) not in self.features:
                    view = scratch.get(w is not None)
                    if view is None:
                        view = scratch[w is not None] = _View(self, windowed=w is not None)
                    if w is not None:
                        view.set_window(f, w)
                    _sam2.encode_frame(self.predictor, view.state, f)
                    _sam2.forget_cached_features(view.state, f)  # the cache holds it; sam2's copy goes
                yield f, w
        finally:
            for view in scratch.values():
                view.close()

    def reset(self) -> None:
        """Forget all objects, prompts and tracking results (keeps cached frames)."""
        for view in list(self._views):
            if view.windowed:
                self._discard(view)
            else:
                self.predictor.reset_state(view.state)
        self._view_of.clear()
        self._order.clear()
        self._clicks.clear()
        if self.context is not None:
            self.context.clear()

    # ----------------------------------------------------------------- propagation
    def propagate(self, start_frame: Optional[int] = None, direction: str = "both",
                  max_frames: Optional[int] = None, memory_gate: Optional[float] = None,
                  continuing: bool = False) -> Iterator[FrameResult]:
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
        continuing : bool
            The frame before ``start_frame`` (in the first pass's direction) was tracked in an
            earlier pass that this one goes on from (e.g. a resumed session): the zoom windows
            follow the objects from it, as one uninterrupted pass would.

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
        views = [v for v in self._views if v.prompt_frames()]
        seen = set()
        for n_pass, reverse in enumerate(passes):
            gens = [_sam2.propagate_in_video(self.predictor, v.state, start_frame, max_frames, reverse) for v in views]
            for v in views:
                v.step = -1 if reverse else 1
                v.prev = start_frame - v.step if continuing and n_pass == 0 else None
            try:
                while True:
                    outputs = []
                    for v, gen in zip(views, gens):
                        item = next(gen, None)
                        if item is None:
                            break
                        outputs.append((v, item[1], item[2]))
                        frame_idx = int(item[0])
                    if len(outputs) < len(views):
                        break
                    if frame_idx in seen:
                        for v in views:
                            v.prev = frame_idx
                        continue
                    seen.add(frame_idx)
                    result = self._merge(frame_idx, outputs)
                    for v in views:
                        v.prev = frame_idx
                        self._bound_state(v, frame_idx)
                    if memory_gate is not None and result.obj_ids:
                        # before sam2 goes on to the next frame (its generators wait here)
                        unsure = [o for o, h in zip(result.obj_ids, result.masked_entropy()) if h > memory_gate]
                        result.out_of_memory = tuple(
                            o for o in unsure if _sam2.forget_frame_memory(self._view_of[o].state, o, frame_idx))
                    yield result
            finally:
                for gen in gens:
                    gen.close()
                for v in views:
                    v.step = v.prev = None
