"""An interactive segmentation session: prompts, propagation, corrections that teach.

:class:`LitSession` ties one stack to a tracker (sam2's video predictor), per-object LoRA
adapters and a label store on disk. Every result is written to the store as soon as it
exists. Long operations (propagation, learning from a correction) are generators yielding
one small result at a time, so the CLI, the benchmark and the napari widget (through thread
workers) drive the same code and can show progress and cancel.

The loop of LIT (Yang et al. 2026): prompt -> propagate -> a wrong frame is corrected (clicks
or a painted mask) -> the adapter learns from that frame -> propagation resumes from it. On a
frame the user flags as wrong, the adapted decoder's prediction is offered first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from .adaptation import AdapterConfig, DecoderAdapter, TrainStep
from .frames import FrameSource
from .store import LabelStore
from .tracker import FrameResult, Tracker

__all__ = ["LitSession", "Correction", "self_applied_prediction"]

logger = logging.getLogger(__name__)


def self_applied_prediction(tracker: Tracker, adapter: DecoderAdapter, frame_idx: int, obj_id: int,
                            own_entropy: float) -> Optional[np.ndarray]:
    """Self-applied learning's test on one frame (``lit-auto``; Lazy-XMem sec. 3.4 with LIT's
    adapter): the adapted decoder's prediction of ``obj_id`` on ``frame_idx``, when it is
    surer than the tracker's own.

    Parameters
    ----------
    tracker : Tracker
        With the frame's decoder inputs recorded (no image-encoder pass is repeated).
    adapter : DecoderAdapter
    frame_idx, obj_id : int
    own_entropy : float
        Masked entropy (eq. 2-4) of the tracker's own prediction of the object there.

    Returns
    -------
    (Y, X) bool ndarray or None
        The adapted mask when the object has an adapter, the inputs are recorded, the mask
        is not empty and its masked entropy is lower than ``own_entropy``; else None.
    """
    from .uncertainty import masked_entropy

    inputs = tracker.decoder_inputs(frame_idx, obj_id)
    if inputs is None or not adapter.has_adapter(obj_id):
        return None
    low, _, _ = adapter.predict(obj_id, inputs)
    logits = tracker.to_input_resolution(low)
    if (logits > 0).any() and masked_entropy(logits[None])[0] < own_entropy:
        return logits > 0
    return None


@dataclass
class Correction:
    """What undo needs to take a correction back: the corrected ``frame_idx`` and
    ``obj_id``, the frame's ``labels_before`` (Y, X), ``adapter_before`` (a snapshot) and
    ``entropy_before`` (masked entropy per object on that frame), and whether the adapter
    ``learned`` from it."""

    frame_idx: int
    obj_id: int
    labels_before: np.ndarray
    adapter_before: dict
    learned: bool = False
    entropy_before: Optional[Dict[int, float]] = None


class LitSession:
    """Segment one stack interactively and learn from the corrections.

    Parameters
    ----------
    predictor : sam2.sam2_video_predictor.SAM2VideoPredictor
    frames : array-like or FrameSource
        (N, Y, X[, C]) stack.
    store : LabelStore, str or Path
        The label store, or a path where a new one is created (N, Y, X) uint32.
    learn : bool
        Train the object's adapter on each correction (LIT-LoRA).
    adapter_config : AdapterConfig, optional

    Raises
    ------
    ValueError
        If the store's shape differs from the stack's (N, Y, X).
    """

    def __init__(self, predictor, frames, store: Union[LabelStore, str, Path], learn: bool = True,
                 adapter_config: Optional[AdapterConfig] = None):
        if not isinstance(frames, FrameSource):
            frames = FrameSource(frames, image_size=predictor.image_size)
        shape = (frames.n_frames,) + frames.frame_shape
        if not isinstance(store, LabelStore):
            store = LabelStore.create(store, shape, overwrite=False)
        if store.shape != shape:
            raise ValueError(f"label store is {store.shape} but the stack is {shape}")
        self.store = store
        self.tracker = Tracker(predictor, frames, record_decoder_inputs=True)
        self.adapter = DecoderAdapter(predictor, adapter_config)
        self.tracker.context.listeners.append(self.adapter.on_decoder_call)
        self.learn = bool(learn)
        self.corrections: List[Correction] = []
        self.last_train_ms: Optional[float] = None
        self._entropy: Dict[int, np.ndarray] = {}  # obj id -> (N,) masked entropy, NaN = none yet
        self._own_logits_cache = None  # (the recorded decoder inputs, their (Y, X) logits)
        #: (frame, object) pairs where self-applied learning kept the adapted prediction
        self.auto_applied: List[Tuple[int, int]] = []

    # ------------------------------------------------------------------ queries
    @property
    def n_frames(self) -> int:
        return self.tracker.n_frames

    @property
    def n_learned(self) -> int:
        """Corrections the adapters learned from (all objects)."""
        return sum(self.adapter.n_corrections.values())

    def is_tracked(self, frame_idx: int, obj_id: int) -> bool:
        """Whether ``frame_idx`` already has a result for ``obj_id`` (prompted or propagated);
        a new prompt there is then a correction."""
        idx = self.tracker.state["obj_id_to_idx"].get(int(obj_id))
        if idx is None:
            return False
        tracked = self.tracker.state["frames_tracked_per_obj"][idx]
        return int(frame_idx) in tracked

    # ------------------------------------------------------------------ prompts
    def _write(self, result: FrameResult) -> FrameResult:
        self.store.write_frame(result.frame_idx, result.labels())
        if result.obj_ids:
            for obj_id, value in zip(result.obj_ids, result.masked_entropy()):
                per_frame = self._entropy.setdefault(int(obj_id), np.full(self.n_frames, np.nan, np.float32))
                per_frame[result.frame_idx] = value
        return result

    def uncertainty(self, obj_id: int) -> np.ndarray:
        """(N,) float32 masked entropy of ``obj_id`` per frame (Lazy-XMem eq. 2-4, see
        :mod:`napari_lit.core.uncertainty`), from the frame's latest result; NaN where the
        object has no result yet. Computed from the logits as frames are written (no extra
        model pass)."""
        values = self._entropy.get(int(obj_id))
        return values.copy() if values is not None else np.full(self.n_frames, np.nan, np.float32)

    def next_uncertain(self, frame_idx: int, obj_id: int, threshold: float, step: int = 1) -> Optional[int]:
        """The nearest frame after (``step`` = 1) or before (-1) ``frame_idx`` whose masked
        entropy for ``obj_id`` is >= ``threshold``; None if there is none."""
        values = self.uncertainty(obj_id)
        frames = range(frame_idx + 1, self.n_frames) if step > 0 else range(frame_idx - 1, -1, -1)
        return next((f for f in frames if values[f] >= threshold), None)

    def _begin_correction(self, frame_idx: int, obj_id: int) -> None:
        if self.is_tracked(frame_idx, obj_id):
            entropy = {k: float(v[frame_idx]) for k, v in self._entropy.items()}
            self.corrections.append(Correction(int(frame_idx), int(obj_id), self.store.read_frame(frame_idx),
                                               self.adapter.snapshot(), entropy_before=entropy))

    def add_points(self, frame_idx: int, obj_id: int, points, labels) -> FrameResult:
        """Set the clicks of ``obj_id`` on ``frame_idx`` (all of them: earlier clicks on that
        frame are replaced) and write the frame's labels.

        ``points`` (K, 2) are (y, x) pixels, ``labels`` (K,) 1 positive / 0 negative. On a
        frame that was already tracked this is a correction (see :meth:`learn_from`).
        """
        self._begin_correction(frame_idx, obj_id)
        return self._write(self.tracker.add_points(frame_idx, obj_id, points, labels, clear=True))

    def add_box(self, frame_idx: int, obj_id: int, box) -> FrameResult:
        """Prompt ``obj_id`` on ``frame_idx`` with a (y0, x0, y1, x1) ``box``."""
        self._begin_correction(frame_idx, obj_id)
        return self._write(self.tracker.add_box(frame_idx, obj_id, box))

    def add_mask(self, frame_idx: int, obj_id: int, mask) -> FrameResult:
        """Give ``obj_id`` the (Y, X) bool ``mask`` on ``frame_idx`` (a painted correction)."""
        self._begin_correction(frame_idx, obj_id)
        return self._write(self.tracker.add_mask(frame_idx, obj_id, mask))

    # -------------------------------------------------------------- propagation
    def propagate(self, start_frame: Optional[int] = None, direction: str = "forward",
                  tau_u: Optional[float] = None, tau_m: Optional[float] = None) -> Iterator[FrameResult]:
        """Propagate all objects from ``start_frame`` in ``direction`` (forward, backward,
        both), writing each frame to the store before yielding it. Closing the generator
        stops after the frame in progress; every yielded frame is already on disk.

        Parameters
        ----------
        start_frame : int, optional
            The earliest prompted frame by default.
        direction : {"forward", "backward", "both"}
        tau_u : float, optional
            Self-applied learning (``lit-auto``): where an object's masked entropy rises by at
            least ``tau_u`` over the previous frame and the object has an adapter, the adapted
            decoder predicts the frame too, and when it is surer (lower masked entropy, see
            :func:`self_applied_prediction`) its mask is kept: written to SAM2's memory like
            an accepted prediction (recorded in :attr:`auto_applied`) and propagation
            resumes from that frame. None: off.
        tau_m : float, optional
            Uncertainty-driven memory update: an object's frame whose masked entropy exceeds
            this stays out of SAM2's memory (:meth:`Tracker.propagate`'s ``memory_gate``).

        Yields
        ------
        FrameResult
            One per frame (a frame where the adapted prediction was kept is yielded once,
            with it).
        """
        if tau_u is None:
            for result in self.tracker.propagate(start_frame=start_frame, direction=direction, memory_gate=tau_m):
                yield self._write(result)
            return
        if direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be forward, backward or both, got {direction!r}")
        if start_frame is None:
            prompted = self.tracker.prompt_frames()
            if not prompted:
                raise ValueError("no object has a prompt yet: add points, a box or a mask first")
            start_frame = prompted[0]
        for d in (["forward", "backward"] if direction == "both" else [direction]):
            start, skip_start = int(start_frame), d == "backward" and direction == "both"
            while True:
                previous: Dict[int, float] = {}  # entropy jumps are measured from the restart on
                resume = None
                for result in self.tracker.propagate(start_frame=start, direction=d, memory_gate=tau_m):
                    f = result.frame_idx
                    if skip_start and f == start:  # written already
                        continue
                    skip_start = False
                    for k, h in zip(result.obj_ids, result.masked_entropy()):
                        k, h = int(k), float(h)
                        if k in previous and h - previous[k] >= tau_u:
                            adapted = self_applied_prediction(self.tracker, self.adapter, f, k, h)
                            if adapted is not None:
                                result = self.tracker.add_mask(f, k, adapted)
                                self.auto_applied.append((f, k))
                                resume = f
                                break
                        previous[k] = h
                    yield self._write(result)
                    if resume is not None:
                        break
                if resume is None:
                    break
                start, skip_start = resume, True

    # ----------------------------------------------------------------- learning
    def learn_from(self, frame_idx: int, obj_id: int) -> Iterator[TrainStep]:
        """Train ``obj_id``'s adapter on its current mask on ``frame_idx`` (a generator).

        The target is the frame's mask as it is now in the store (what SAM2 made of the
        user's clicks, or the painted mask); the inputs are the decoder inputs recorded
        when the frame was propagated.

        Raises
        ------
        ValueError
            If learning is off, or the frame's decoder inputs are not available (it was not
            propagated since the session started, or too long ago).
        """
        if not self.learn:
            raise ValueError("learning from corrections is switched off for this session")
        inputs = self.tracker.decoder_inputs(frame_idx, obj_id)
        if inputs is None:
            raise ValueError(
                f"frame {frame_idx} of object {obj_id} has no recorded propagation to learn from: "
                f"propagate over it first"
            )
        target = self.store.read_frame(frame_idx) == obj_id
        t0 = time.perf_counter()
        yield from self.adapter.train(obj_id, inputs, target)
        self.last_train_ms = 1000 * (time.perf_counter() - t0)
        for c in reversed(self.corrections):
            if (c.frame_idx, c.obj_id) == (int(frame_idx), int(obj_id)):
                c.learned = True
                break

    def adapted_prediction(self, frame_idx: int, obj_id: int) -> Optional[np.ndarray]:
        """The adapted decoder's (Y, X) bool mask of ``obj_id`` on a flagged frame
        ``frame_idx``, or None when the object has no adapter yet or the frame's inputs are
        not recorded."""
        inputs = self.tracker.decoder_inputs(frame_idx, obj_id)
        if inputs is None or not self.adapter.has_adapter(obj_id):
            return None
        low, _, _ = self.adapter.predict(obj_id, inputs)
        return self.tracker.to_input_resolution(low) > 0

    def _own_logits(self, frame_idx: int, obj_id: int) -> Optional[np.ndarray]:
        """(Y, X) logits of the tracker's own (not adapted) prediction of ``obj_id`` on
        ``frame_idx``, decoded again from the frame's recorded inputs (no image-encoder pass);
        None when they are not recorded. The last one is kept: a flagged frame asks for its
        entropy map and its hint one after the other."""
        inputs = self.tracker.decoder_inputs(frame_idx, obj_id)
        if inputs is None:
            return None
        cached = self._own_logits_cache
        if cached is None or cached[0] is not inputs:  # the same recorded inputs: the same logits
            low, _, _ = self.adapter.predict_frozen(inputs)
            cached = self._own_logits_cache = (inputs, self.tracker.to_input_resolution(low))
        return cached[1]

    def entropy_map(self, frame_idx: int, obj_id: int) -> Optional[np.ndarray]:
        """(Y, X) float32 pixel entropy (Lazy-XMem eq. 2, two classes) of the tracker's own
        prediction of ``obj_id`` on ``frame_idx``, decoded again from the frame's recorded
        inputs; None when they are not recorded. Where it is bright, the model is unsure."""
        from .uncertainty import class_probabilities, pixel_entropy

        logits = self._own_logits(frame_idx, obj_id)
        return None if logits is None else pixel_entropy(class_probabilities(logits[None]))

    def suggested_click(self, frame_idx: int, obj_id: int) -> Optional[Tuple[int, int]]:
        """Where to click on ``obj_id`` on a flagged frame ``frame_idx``: Lazy-XMem's point (eq. 5-6, see
        :func:`napari_lit.core.uncertainty.suggested_click`) of the tracker's own prediction,
        decoded again from the frame's recorded inputs (no image-encoder pass). (y, x) in
        pixels of the input, or None when the inputs are not recorded or the mask is empty."""
        from .uncertainty import suggested_click

        logits = self._own_logits(frame_idx, obj_id)
        return None if logits is None else suggested_click(logits[None])

    def accept(self, frame_idx: int, obj_id: int, mask) -> FrameResult:
        """Accept ``mask`` (e.g. the adapted prediction) for ``obj_id`` on ``frame_idx``:
        written to SAM2's memory like a correction (the adapter is not trained on it)."""
        return self.add_mask(frame_idx, obj_id, mask)

    # --------------------------------------------------------------------- undo
    def undo_last_correction(self) -> Optional[Correction]:
        """Take back the last correction: its prompts, the frame's labels and the adapter
        state from before it. Frames propagated after it keep their labels (propagate
        again to redo them). Returns the undone correction, or None if there is none."""
        if not self.corrections:
            return None
        c = self.corrections.pop()
        self.tracker.remove_prompts(c.frame_idx, c.obj_id)
        self.store.write_frame(c.frame_idx, c.labels_before)
        self.adapter.restore(c.adapter_before)
        for k, value in (c.entropy_before or {}).items():
            self._entropy[k][c.frame_idx] = value
        return c

    def reset_adapter(self, obj_id: Optional[int] = None) -> None:
        """Forget what was learned for ``obj_id`` (all objects when None)."""
        self.adapter.reset(obj_id)

    def close(self) -> None:
        """Detach from the predictor (adapters removed, sam2's decoder as it was)."""
        self.adapter.reset()
        self.tracker.close()
