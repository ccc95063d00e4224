"""An interactive segmentation session: prompts, propagation, corrections that teach.

:class:`LitSession` ties one stack to a tracker (sam2's video predictor), per-object LoRA
adapters and a label store on disk. Every result is written to the store as soon as it
exists. Long operations (propagation, learning from a correction) are generators yielding
one small result at a time, so the CLI, the benchmark and the napari widget (through thread
workers) drive the same code and can show progress and cancel.

The loop of LIT (Yang et al. 2026): prompt -> propagate -> a wrong frame is corrected (clicks
or a painted mask) -> the adapter learns from that frame -> propagation resumes from it. On a
frame the user flags as wrong, the adapted decoder's prediction is offered first.

With a session folder (:mod:`napari_lit.core.folder`; :meth:`LitSession.create_in`,
:meth:`LitSession.resume`) every prompt, correction, learning step's result, undo/redo and
written frame is saved when it happens, and a session killed at any point can be resumed
with at most the frame (or the training) in progress lost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .adaptation import SHARED, AdapterConfig, DecoderAdapter, TrainStep
from .features import folder_features
from .folder import SessionFolder, SessionFolderError, image_fingerprint
from .frames import FrameSource
from .store import LabelStore
from .tracker import FrameResult, Tracker
from .uncertainty import DEFAULT_DILATION, model_temperature

#: The session folder's image-feature cache (:func:`napari_lit.core.features.folder_features`).
FEATURES_DIR = "features"

__all__ = ["LitSession", "Correction", "adapted_logits", "self_applied_prediction", "split_daughters",
           "find_division"]

logger = logging.getLogger(__name__)


def adapted_logits(tracker: Tracker, adapter: DecoderAdapter, frame_idx: int, obj_id: int) -> Optional[np.ndarray]:
    """The adapted decoder's logits of one object on one frame (LIT's adapted prediction).

    Parameters
    ----------
    tracker : Tracker
        With the frame's decoder inputs recorded (no image-encoder pass is repeated).
    adapter : DecoderAdapter
    frame_idx, obj_id : int

    Returns
    -------
    (Y, X) float32 ndarray or None
        Logits at the input resolution (> 0 is inside); None when the object has no adapter
        yet or the frame's inputs are not recorded.
    """
    inputs = tracker.decoder_inputs(frame_idx, obj_id)
    if inputs is None or not adapter.has_adapter(obj_id):
        return None
    low, _, _ = adapter.predict(obj_id, inputs)
    return tracker.to_input_resolution(low, inputs.window)


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

    logits = adapted_logits(tracker, adapter, frame_idx, obj_id)
    if logits is not None and (logits > 0).any() and masked_entropy(logits[None], temperature=tracker.temperature)[0] < own_entropy:
        return logits > 0
    return None


def split_daughters(mask, min_share: float = 0.2, mother_area: Optional[float] = None,
                    max_growth: Optional[float] = None) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The two daughters of a dividing object, when its mask has split: the two largest
    connected parts of ``mask``, if each holds at least ``min_share`` of the pair's area
    (and, with ``max_growth``, if the pair is not much larger than the mother was).

    Parameters
    ----------
    mask : (Y, X) or (Z, Y, X) bool array-like
        The object's mask on the frame where it divided.
    min_share : float
        In [0, 0.5]: the smaller part's share of the two parts' area, at least.
    mother_area : float, optional
        The object's area (px) on the frame before.
    max_growth : float, optional
        With ``mother_area``: the two parts together hold at most this many times the
        mother's area. Daughters share their mother's area; a mask that spread onto a
        neighbouring cell has split into two cell-sized parts too, but doubled.

    Returns
    -------
    (mask_a, mask_b) of bool ndarrays, or None
        The larger part first; None when the mask is one piece (or a part is too small).

    Raises
    ------
    ValueError
        If ``min_share`` is outside [0, 0.5].
    """
    from scipy import ndimage as ndi

    if not 0.0 <= float(min_share) <= 0.5:
        raise ValueError(f"min_share is the smaller daughter's share, in [0, 0.5]; got {min_share}")
    parts, n = ndi.label(np.asarray(mask, bool))
    if n < 2:
        return None
    areas = np.bincount(parts.ravel())[1:]
    a, b = (np.argsort(areas)[::-1][:2] + 1).tolist()
    if areas[b - 1] < min_share * (areas[a - 1] + areas[b - 1]):
        return None
    if max_growth is not None and mother_area and areas[a - 1] + areas[b - 1] > max_growth * mother_area:
        return None
    return parts == a, parts == b


def outside_tracks_dropped(result: FrameResult, starts: Dict[int, int], ends: Dict[int, int]) -> FrameResult:
    """``result`` without the objects whose track begins after its frame (``starts``: a
    daughter's first frame) or ended before it (``ends``: a divided mother's last frame)."""
    f = result.frame_idx
    gone = [k for k in result.obj_ids if ends.get(int(k), f) < f or starts.get(int(k), f) > f]
    if not gone:
        return result
    keep = [i for i, k in enumerate(result.obj_ids) if k not in gone]
    return FrameResult(f, tuple(result.obj_ids[i] for i in keep), result.logits[keep],
                       out_of_memory=tuple(k for k in result.out_of_memory if k not in gone),
                       replaced={k: v for k, v in result.replaced.items() if k not in gone},
                       temperature=result.temperature, given=tuple(k for k in result.given if k not in gone),
                       windows={k: v for k, v in result.windows.items() if k not in gone})


def find_division(result: FrameResult, prompt_frames, min_share: float, mother_area=None,
                  max_growth: Optional[float] = None):
    """The division rule on one propagated frame: the first object of ``result`` that was
    not prompted on this frame or later and whose mask has split (:func:`split_daughters`).

    Parameters
    ----------
    result : FrameResult
    prompt_frames : callable
        Object id -> its prompted frames (e.g. ``Tracker.prompt_frames``).
    min_share : float
    mother_area : callable, optional
        Object id -> its area (px) on the frame before (or None); with ``max_growth``.
    max_growth : float, optional
        See :func:`split_daughters`.

    Returns
    -------
    (obj_id, (mask_a, mask_b)) or None
    """
    f = result.frame_idx
    for k in result.obj_ids:
        frames = prompt_frames(int(k))
        if not frames or max(frames) >= f:  # prompted there or later: the user's say
            continue
        mask = result.mask(k)
        area = mother_area(int(k)) if (mother_area is not None and max_growth is not None) else None
        parts = split_daughters(mask, min_share, area, max_growth)
        if parts is not None:
            return int(k), parts
    return None


def restarting_propagation(propagate, start_frame: int, direction: str, visit) -> Iterator[FrameResult]:
    """Propagate and start again from a frame where ``visit`` changed the prompts.

    The loop behind the division rule and self-applied learning: each result of
    ``propagate(start_frame, d)`` goes through ``visit``; when it asks for a restart (a new
    prompt on that frame, so SAM2's later frames are stale) propagation starts again from
    that frame in the same direction, which is not yielded twice. ``direction="both"`` runs
    forward, then backward from ``start_frame`` (whose frame is not yielded again).

    Parameters
    ----------
    propagate : callable
        ``(start_frame, direction) -> Iterator[FrameResult]``, e.g. a bound
        :meth:`Tracker.propagate` with its other arguments fixed.
    start_frame : int
    direction : {"forward", "backward", "both"}
    visit : callable
        ``(result, direction, fresh) -> (result_to_yield, restart)``; ``fresh`` is True for the
        first result of each call of ``propagate`` (state measured along a run, such as
        entropy jumps, starts again there).

    Yields
    ------
    FrameResult
        What ``visit`` returned, one per frame and run.
    """
    for d in (["forward", "backward"] if direction == "both" else [direction]):
        start, skip_start = int(start_frame), d == "backward" and direction == "both"
        while True:
            resume, fresh = None, True
            for result in propagate(start, d):
                if skip_start and result.frame_idx == start:  # yielded already
                    continue
                skip_start = False
                result, restart = visit(result, d, fresh)
                fresh = False
                yield result
                if restart:
                    resume = result.frame_idx
                    break
            if resume is None:
                break
            start, skip_start = resume, True


#: Frames re-run before the first missing frame when propagation resumes in a new process
#: without the session folder's memory mirror, so SAM2's memory (its last 6 frames and the
#: object pointers) is rebuilt first (approximately).
RESUME_WARMUP = 8


@dataclass
class Correction:
    """What undo and redo need to take an edit back and apply it again: a correction, an
    object's first prompt on a frame, or a removed prompt.

    Attributes
    ----------
    frame_idx, obj_id : int
        The corrected frame and object.
    kind : {"correction", "prompt", "removal", "division"}
        A prompt on a frame that already had a result (a correction, which the adapter learns
        from); a prompt on a frame without one (e.g. the object's first click); the removal
        of the frame's prompt (a deleted point or box); or a division (:meth:`LitSession.divide`:
        ``obj_id``'s track ends before ``frame_idx``, its ``daughters`` go on).
    labels_before, labels_after : (Y, X) uint32 ndarray
        The frame's labels before the correction, and (once undone) with it.
    adapter_before, adapter_after : dict, str or None
        The adapter state before it and (once undone) with it: a
        :meth:`DecoderAdapter.snapshot`, or after a resume the saved adapters folder of the
        session folder (None: no adapter).
    entropy_before, entropy_after : dict of int to float
        Masked entropy per object on the frame, before and (once undone) with it.
    learned : bool
        Whether the adapter learned from it.
    prompt, prompt_before : dict or None
        The prompt it set (None for a removal), and the frame's prompt for the object before
        it (None when the frame was only tracked, or not even that).
    inputs : str or None
        The session folder's file of the frame's decoder inputs, if saved.
    cleared : dict or None
        The object's masks on its other frames, kept while it is gone: an edit that leaves an
        object without any prompt removes it and clears its labels everywhere (frame ->
        (y0, x0, bool crop, masked entropy)). A division keeps the mother's masks from
        its frame on here.
    daughters : list of int or None
        A division's daughter objects.
    """

    frame_idx: int
    obj_id: int
    labels_before: np.ndarray
    adapter_before: object
    kind: str = "correction"
    learned: bool = False
    entropy_before: Optional[Dict[int, float]] = None
    prompt: Optional[dict] = None
    prompt_before: Optional[dict] = None
    labels_after: Optional[np.ndarray] = None
    adapter_after: object = None
    entropy_after: Optional[Dict[int, float]] = None
    inputs: Optional[str] = None
    cleared: Optional[Dict[int, tuple]] = None
    daughters: Optional[List[int]] = None


class LitSession:
    """Segment one stack interactively and learn from the corrections.

    Parameters
    ----------
    predictor : sam2.sam2_video_predictor.SAM2VideoPredictor
    frames : array-like or FrameSource
        (N, Y, X[, C]) stack.
    store : LabelStore, str or Path, optional
        The label store, or a path where a new one is created (N, Y, X) uint32. Not with
        ``folder`` (whose store is used).
    learn : bool
        Train the object's adapter on each correction (LIT-LoRA).
    adapter_config : AdapterConfig, optional
    folder : SessionFolder, optional
        Save everything the session does there (see :meth:`create_in` and :meth:`resume`).
    zoom : {"auto", "off"}
        Object-centred zoom of the tracker (:class:`~napari_lit.core.tracker.Tracker`); the
        window each prompt and frame was seen through is recorded in the session folder.
    features : "auto", FeatureCache or None
        The image-feature cache of the tracker (:mod:`napari_lit.core.features`): ``auto``
        keeps features in memory and, with a ``folder``, in its ``features/`` folder
        (float32, so a resumed session encodes no frame twice and predicts exactly the same
        masks), also reading what ``napari-lit embed`` precomputed for the image.

    Raises
    ------
    ValueError
        If the store's shape differs from the stack's (N, Y, X), neither or both of
        ``store`` and ``folder`` are given, or ``zoom`` is unknown.
    """

    def __init__(self, predictor, frames, store: Union[LabelStore, str, Path, None] = None, learn: bool = True,
                 adapter_config: Optional[AdapterConfig] = None, folder: Optional[SessionFolder] = None,
                 zoom: str = "auto", features="auto"):
        if not isinstance(frames, FrameSource):
            frames = FrameSource(frames, image_size=predictor.image_size)
        shape = (frames.n_frames,) + frames.frame_shape
        if (store is None) == (folder is None):
            raise ValueError("give a label store or a session folder (one of them)")
        if folder is not None:
            store = folder.store
        if not isinstance(store, LabelStore):
            store = LabelStore.create(store, shape, overwrite=False)
        if store.shape != shape:
            raise ValueError(f"label store is {store.shape} but the stack is {shape}")
        self.store = store
        if isinstance(features, str) and features == "auto" and folder is not None:
            features = folder_features(predictor, frames, folder.path / FEATURES_DIR)
        self.tracker = Tracker(predictor, frames, record_decoder_inputs=True, zoom=zoom, features=features)
        self.adapter = DecoderAdapter(predictor, adapter_config)
        self.tracker.context.listeners.append(self.adapter.on_decoder_call)
        self.learn = bool(learn)
        #: the edits undo can take back (corrections, first prompts, removed prompts), oldest first
        self.history: List[Correction] = []
        self.last_train_ms: Optional[float] = None
        #: How well the last finished training reproduced its correction: the best IoU of the
        #: adapted prediction with the corrected mask on that frame (decoder resolution).
        self.last_train_fit: Optional[float] = None
        self._entropy: Dict[int, np.ndarray] = {}  # obj id -> (N,) masked entropy, NaN = none yet
        self._own_logits_cache = None  # (the recorded decoder inputs, their (Y, X) logits)
        #: (frame, object) pairs where self-applied learning kept the adapted prediction
        self.auto_applied: List[Tuple[int, int]] = []
        #: edits taken back by undo, the last one first to redo
        self.undone: List[Correction] = []
        #: lineage: daughter object -> mother object (:meth:`divide`)
        self.parents: Dict[int, int] = {}
        #: a divided object's last frame: it is not written after it
        self.track_end: Dict[int, int] = {}
        #: a daughter's first frame (its mother's division): it is not written before it
        self.track_start: Dict[int, int] = {}
        self.folder = folder
        self._prompts: Dict[Tuple[int, int], dict] = {}  # (frame, obj) -> the prompt sam2 has there
        self._example_files: Dict[int, List[List[str]]] = {}  # obj -> [inputs file, target record] learned
        self._replaying = False
        self._closed = False
        #: obj -> {frame: token} of sam2's outputs mirrored in the session folder's memory/
        self._memory_saved: Dict[int, Dict[int, int]] = {}

    @property
    def corrections(self) -> List[Correction]:
        """The corrections among the edits (prompts on frames that had a result), oldest first."""
        return [c for c in self.history if c.kind == "correction"]

    # ------------------------------------------------------------ session folder
    @classmethod
    def create_in(cls, folder: Union[str, Path], predictor, frames, learn: bool = True,
                  adapter_config: Optional[AdapterConfig] = None, source: Optional[str] = None,
                  label_shape: Optional[Sequence[int]] = None, frame_axis: int = 0,
                  fixed: Optional[Dict[int, int]] = None, zoom: str = "auto", features="auto") -> "LitSession":
        """A new session saved in the new session folder ``folder``.

        Parameters
        ----------
        folder : str or Path
            A folder that does not exist yet (or is empty).
        predictor, frames, learn, adapter_config, zoom, features
            As for :class:`LitSession`.
        source : str, optional
            Where the image comes from (e.g. its path), recorded so a resume can find it.
        label_shape : sequence of int, optional
            The full shape of a 4D+ image the frames are a slice of, e.g. (T, Z, Y, X): the
            labels are stored at that shape, the session writing the slice with frames along
            ``frame_axis`` and the other non-spatial axes at ``fixed`` (axis -> index).
            Default: (N, Y, X).

        Raises
        ------
        FileExistsError
            If ``folder`` exists and is not empty (resume it instead).
        PermissionError
            If ``folder`` cannot be written.
        """
        if not isinstance(frames, FrameSource):
            frames = FrameSource(frames, image_size=predictor.image_size)
        config = adapter_config or AdapterConfig()
        meta = {
            "image": image_fingerprint(frames),
            "source": None if source is None else str(source),
            "model": {"name": getattr(predictor, "napari_lit_model", None),
                      "sha256": getattr(predictor, "napari_lit_checksum", None),
                      "image_size": int(predictor.image_size),
                      # the logit temperature of the recorded uncertainty (masked entropy)
                      "temperature": model_temperature(predictor)},
            # the dilation ratio of the recorded masked entropy (Lazy-XMem eq. 3)
            "uncertainty": {"dilation": DEFAULT_DILATION},
            "learn": bool(learn),
            "zoom": zoom,
            "adapter": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        }
        if label_shape is None:
            folder = SessionFolder.create(folder, (frames.n_frames,) + frames.frame_shape, meta)
        else:
            label_shape = tuple(int(v) for v in label_shape)
            if len(label_shape) < 3 or label_shape[-2:] != frames.frame_shape or \
                    label_shape[frame_axis] != frames.n_frames:
                raise ValueError(f"label_shape {label_shape} does not hold the {frames.n_frames} frames of "
                                 f"{frames.frame_shape} along axis {frame_axis}")
            folder = SessionFolder.create(folder, label_shape, meta, frame_axis=frame_axis, fixed=fixed)
        return cls(predictor, frames, learn=learn, adapter_config=config, folder=folder, zoom=zoom,
                   features=features)

    @classmethod
    def resume(cls, folder: Union[str, Path], predictor, frames, features="auto") -> "LitSession":
        """Open a session folder and get the session back: labels, prompts, corrections
        (undo/redo included), adapters and uncertainty, ready to go on.

        Frames the store holds without their ``frame`` log line (being written when the
        process was killed) are cleared; a correction logged without its learning having
        finished is in :meth:`pending_learning`; :meth:`continue_propagation` fills the
        frames still missing.

        Parameters
        ----------
        folder : str or Path
        predictor
            The model the session was made with (checked by checksum when recorded).
        frames : array-like or FrameSource
            The image the session was made on (checked by fingerprint).
        features : "auto", FeatureCache or None
            As for :class:`LitSession` (``auto``: the folder's saved features are reused).

        Raises
        ------
        SessionFolderError
            If ``folder`` is not a readable session folder, or belongs to another image or
            model.
        """
        sf = SessionFolder.open(folder)
        if not isinstance(frames, FrameSource):
            frames = FrameSource(frames, image_size=predictor.image_size)
        sf.check_image(image_fingerprint(frames))
        sf.check_model(str(getattr(predictor, "napari_lit_model", None)),
                       getattr(predictor, "napari_lit_checksum", None))
        size = sf.meta.get("model", {}).get("image_size")
        if size is not None and int(size) != int(predictor.image_size):
            raise SessionFolderError(f"{sf.path} was made at {size} px input, this model takes "
                                     f"{predictor.image_size} px")
        config = AdapterConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in sf.meta.get("adapter", {}).items()})
        # sessions from before the zoom saw whole frames
        session = cls(predictor, frames, learn=bool(sf.meta.get("learn", True)), adapter_config=config, folder=sf,
                      zoom=sf.meta.get("zoom", "off"), features=features)
        session._replay(sf.events)
        session._restore_memory()
        # the uncertainty's settings then and now (no temperature recorded: raw logits)
        settings = (("logit temperature", sf.meta.get("model", {}).get("temperature", 1.0), session.tracker.temperature),
                    ("dilation ratio", sf.meta.get("uncertainty", {}).get("dilation"), DEFAULT_DILATION))
        for what, recorded, current in settings:
            if recorded is not None and abs(float(recorded) - current) > 1e-6:
                logger.warning(
                    "%s: its uncertainty was recorded with %s %g, this napari-lit uses %g; frames "
                    "propagated from now on get the new values (propagate again to make them all "
                    "comparable)", sf.path, what, float(recorded), current)
        return session

    def _log(self, kind: str, **fields) -> None:
        if self.folder is not None and not self._replaying:
            self.folder.append({"kind": kind, **fields})

    def _save_adapters(self) -> Optional[str]:
        if self.folder is None or self._replaying:
            return None
        return self.folder.save_adapters(f"{self.folder.next_seq():06d}", self.adapter, self._example_files)

    def _load_adapters(self, rel: Optional[str]) -> None:
        """Adapters (weights, corrections count, training examples) from a saved folder."""
        self.adapter.reset()
        self._example_files = {}
        if rel is None:
            return
        index = self.folder.adapters_index(rel)
        for k in index["objects"]:
            self.adapter.load(self.folder.path / rel / f"obj{k}", int(k))
        if index.get("sequence"):
            self.adapter.load(self.folder.path / rel / "sequence", SHARED)
        self.adapter.n_corrections = {int(k): int(v) for k, v in index["n_corrections"].items()}
        from .adaptation import _Example

        serial = 0
        for k, entries in index["examples"].items():
            self._example_files[int(k)] = [list(p) for p in entries]
            examples = []
            for entry in entries:  # [inputs, target] (before sequence scope) or [inputs, target, serial]
                inputs = self.folder.load_inputs(entry[0])
                target = self.folder.load_record(entry[1])["target"]
                serial = int(entry[2]) if len(entry) > 2 else serial + 1
                examples.append(_Example(inputs, self.adapter.target_tensor(inputs, target, self.adapter.config.loss_side),
                                         serial))
            self.adapter.examples[int(k)] = examples
        self.adapter._serial = max([serial] + [e.serial for v in self.adapter.examples.values() for e in v])

    def _restore_adapter(self, state) -> None:
        if isinstance(state, dict):
            self.adapter.restore(state)
        else:  # a saved adapters folder (or None: no adapter), after a resume
            self._load_adapters(state)

    def _replay(self, events: List[dict]) -> None:
        """Rebuild the session from its log (no model output is written to the store)."""
        sf = self.folder
        for f in sf.frames_to_clear():
            self.store.clear_frame(f)
        for f, per_obj in sf.logged_frames().items():
            for k, value in per_obj.items():
                self._entropy.setdefault(k, np.full(self.n_frames, np.nan, np.float32))[f] = value
        adapters: Optional[str] = None
        self._replaying = True
        try:
            for e in events:
                kind = e.get("kind")
                if kind == "prompt":
                    prompt = self._prompt_from_event(e)
                    f, k = int(e["frame"]), int(e["obj"])
                    if "before" in e:  # a correction, or (since issue 25) a first prompt
                        before = sf.load_record(e["before"])
                        self.history.append(Correction(
                            f, k, before["labels"], adapters, kind="correction" if e.get("correction") else "prompt",
                            prompt=prompt, prompt_before=self._prompts.get((f, k)),
                            entropy_before={int(a): float(b) for a, b in e.get("entropy_before", {}).items()},
                            inputs=e.get("inputs")))
                        self.undone.clear()
                    self._apply_prompt(f, k, prompt)
                    if e.get("auto"):
                        self.auto_applied.append((f, k))
                elif kind == "remove_prompt":
                    f, k = int(e["frame"]), int(e["obj"])
                    c = Correction(f, k, sf.load_record(e["before"])["labels"], adapters, kind="removal",
                                   prompt=None, prompt_before=self._prompts.get((f, k)),
                                   entropy_before={int(a): float(b) for a, b in e.get("entropy_before", {}).items()},
                                   cleared=self._load_cleared(e.get("cleared")))
                    self.history.append(c)
                    self.undone.clear()
                    self._set_prompt(f, k, None)
                elif kind == "division":
                    c = Correction(int(e["frame"]), int(e["obj"]), sf.load_record(e["before"])["labels"], adapters,
                                   kind="division", daughters=[int(d) for d in e["daughters"]],
                                   entropy_before={int(a): float(b) for a, b in e.get("entropy_before", {}).items()},
                                   cleared=self._load_cleared(e.get("cleared")))
                    self._apply_division(c)
                    self.history.append(c)
                    self.undone.clear()
                elif kind == "learned":
                    adapters = e["adapters"]
                    for c in reversed(self.history):
                        if (c.frame_idx, c.obj_id) == (int(e["frame"]), int(e["obj"])):
                            c.learned = True
                            break
                elif kind == "undo":
                    c = self.history.pop()
                    c.adapter_after, adapters = adapters, e.get("adapters")
                    c.labels_after = sf.load_record(e["after"])["labels"]
                    if e.get("cleared"):
                        c.cleared = self._load_cleared(e["cleared"])
                    if c.kind == "division":
                        self._undo_division(c)
                    else:
                        self._set_prompt(c.frame_idx, c.obj_id, c.prompt_before)
                    self.undone.append(c)
                elif kind == "redo":
                    c = self.undone.pop()
                    if c.kind == "division":
                        self._apply_division(c)
                    else:
                        self._set_prompt(c.frame_idx, c.obj_id, c.prompt)
                    adapters = e.get("adapters")
                    self.history.append(c)
                elif kind == "reset_adapter":
                    adapters = e.get("adapters")
        finally:
            self._replaying = False
        self._load_adapters(adapters)
        # the windows the written frames were seen through: a propagation resumed from one of
        # them starts in the same window
        prompted = {(f, k) for (f, k) in self._prompts}
        windows = {}
        for e in events:
            if e.get("kind") == "frame":
                for k, w in e.get("windows", {}).items():
                    windows[(int(e["frame"]), int(k))] = w
        for (f, k), w in windows.items():
            if (f, k) not in prompted and k in self.tracker.obj_ids and self.tracker.window(f, k) is not None:
                self.tracker.set_window(f, k, w)

    # ------------------------------------------------------------ sam2's memory
    def _save_memory(self) -> None:
        """Mirror sam2's per-frame outputs (what later frames read: memory features, object
        pointers) in the session folder, so that a resumed session tracks on exactly as this
        one would (issue 25): new or replaced outputs are saved, dropped ones (the state's
        budget, the memory gate) deleted. Bounded like the state itself
        (:attr:`Tracker.state_budget_bytes` per object)."""
        if self.folder is None:
            return
        for obj_id in self.tracker.obj_ids:
            current = self.tracker.memory_frames(obj_id)
            saved = self._memory_saved.setdefault(obj_id, {})
            for f, token in current.items():
                if saved.get(f) != token:
                    memory = self.tracker.frame_memory(f, obj_id)
                    if memory is not None:
                        self.folder.save_memory(obj_id, f, memory)
                        saved[f] = token
            for f in [f for f in saved if f not in current]:
                self.folder.drop_memory(obj_id, f)
                del saved[f]

    def _forget_memory(self, frame_idx: Optional[int], obj_id: int) -> None:
        """A user's edit changes what sam2 holds for (frame, object) (every frame of it when
        ``frame_idx`` is None): its saved memory no longer holds."""
        if self.folder is None or self._replaying:
            return
        self.folder.drop_memory(obj_id, frame_idx)
        if frame_idx is None:
            self._memory_saved.pop(obj_id, None)
        else:
            self._memory_saved.get(obj_id, {}).pop(int(frame_idx), None)

    def _restore_memory(self) -> None:
        """After the replay: give sam2 back the outputs the session folder mirrors."""
        for (obj_id, f), memory in sorted(self.folder.load_memory().items()):
            if obj_id not in self.tracker.obj_ids or not 0 <= f < self.n_frames:
                self.folder.drop_memory(obj_id, f)
                continue
            self.tracker.restore_memory(f, obj_id, memory)
        for obj_id in self.tracker.obj_ids:
            self._memory_saved[obj_id] = self.tracker.memory_frames(obj_id)

    def _prompt_from_event(self, e: dict) -> dict:
        if e["prompt"] == "points":
            prompt = {"kind": "points", "points": e["points"], "labels": e["labels"]}
        elif e["prompt"] == "box":
            prompt = {"kind": "box", "box": e["box"]}
        else:
            prompt = {"kind": "mask", "mask": self.folder.load_record(e["record"])["mask"].astype(bool)}
        if "window" in e:  # the window the prompt was seen through (sessions made with zoom)
            prompt["window"] = e["window"]
        return prompt

    def _log_prompt(self, frame_idx: int, obj_id: int, prompt: dict, correction: Optional[Correction],
                    auto: bool = False) -> None:
        if self.folder is None or self._replaying:
            return
        sf, seq = self.folder, self.folder.next_seq()
        event = {"frame": int(frame_idx), "obj": int(obj_id), "prompt": prompt["kind"],
                 "window": prompt.get("window")}
        if prompt["kind"] == "points":
            event.update(points=[[float(y), float(x)] for y, x in prompt["points"]],
                         labels=[int(v) for v in prompt["labels"]])
        elif prompt["kind"] == "box":
            event["box"] = [float(v) for v in prompt["box"]]
        else:
            event["record"] = sf.save_record(f"{seq:06d}-mask", mask=np.asarray(prompt["mask"], bool))
        if correction is not None:
            if correction.kind == "correction":
                event["correction"] = True
            event["before"] = sf.save_record(f"{seq:06d}-before", labels=correction.labels_before)
            event["entropy_before"] = {str(k): v for k, v in (correction.entropy_before or {}).items()
                                       if np.isfinite(v)}
            inputs = self.tracker.decoder_inputs(frame_idx, obj_id) if correction.kind == "correction" else None
            if inputs is not None:
                correction.inputs = event["inputs"] = sf.save_inputs(f"{seq:06d}", inputs)
        if auto:
            event["auto"] = True
        self._log("prompt", **event)

    def pending_learning(self) -> List[Tuple[int, int]]:
        """(frame, object) of corrections the adapter has not learned from yet (e.g. the
        training was cut short by a crash), oldest first."""
        if not self.learn:
            return []
        return [(c.frame_idx, c.obj_id) for c in self.corrections if not c.learned and c.inputs is not None]

    def continue_propagation(self) -> Iterator[FrameResult]:
        """Fill the frames that have no labels yet (e.g. after a resume), without touching
        the frames already written: forward from the first missing frame after the earliest
        prompt, and backward for missing frames before it. sam2's memory of the frames
        before it comes from the session folder's mirror (:meth:`_save_memory`), so the
        frames are exactly what an uninterrupted run writes; where that memory is missing
        (a session from before it was kept, a file lost), up to :data:`RESUME_WARMUP`
        written frames before the missing one are propagated again (not written) to
        rebuild it approximately."""
        prompted = self.tracker.prompt_frames()
        if not prompted:
            raise ValueError("no object has a prompt yet: add points, a box or a mask first")
        first = prompted[0]
        done = set(self.store.frames_done)
        ahead = [f for f in range(first, self.n_frames) if f not in done]
        if ahead:
            m = ahead[0]
            if m > first and self._remembers(m - 1):
                yield from self._propagate_missing(m, "forward", done, continuing=True)
            else:
                start = max([p for p in prompted if p <= m] + [m - RESUME_WARMUP, first])
                yield from self._propagate_missing(start, "forward", done)
        behind = [f for f in range(first - 1, -1, -1) if f not in done]
        if behind:
            m = behind[0]
            if self._remembers(m + 1):
                yield from self._propagate_missing(m, "backward", done, continuing=True)
            else:
                start = min([p for p in prompted if p >= m] + [m + RESUME_WARMUP, first])
                yield from self._propagate_missing(start, "backward", done)

    def _remembers(self, frame_idx: int) -> bool:
        """Whether sam2 holds every object's output on ``frame_idx`` (e.g. given back from the
        session folder): propagation can then go on from the next frame exactly."""
        return all(frame_idx in self.tracker.memory_frames(k) for k in self.tracker.obj_ids)

    def _propagate_missing(self, start: int, direction: str, done, continuing: bool = False) -> Iterator[FrameResult]:
        for result in self.tracker.propagate(start_frame=start, direction=direction, continuing=continuing):
            if result.frame_idx not in done:
                yield self._write(result)

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
        return self.tracker.is_tracked(frame_idx, obj_id)

    # ------------------------------------------------------------------ prompts
    def _ended_dropped(self, result: FrameResult) -> FrameResult:
        """``result`` without the objects whose track ended before its frame (divided) or
        begins after it (a daughter)."""
        return outside_tracks_dropped(result, self.track_start, self.track_end)

    def _write(self, result: FrameResult) -> FrameResult:
        result = self._ended_dropped(result)
        for k in result.given:  # a mask prompt stands as given, pixel for pixel (sam2 hands it
            prompt = self._prompts.get((result.frame_idx, int(k)))  # back resampled from its
            if prompt is not None and prompt["kind"] == "mask":  # low-resolution mask input)
                row = list(result.obj_ids).index(int(k))
                mask = np.asarray(prompt["mask"], bool)
                result.logits[row] = np.where(mask, np.maximum(result.logits[row], 1.0),
                                              np.minimum(result.logits[row], -1.0))
        self.store.write_frame(result.frame_idx, result.labels())
        entropy = {}
        if result.obj_ids:
            for obj_id, value in zip(result.obj_ids, result.masked_entropy()):
                per_frame = self._entropy.setdefault(int(obj_id), np.full(self.n_frames, np.nan, np.float32))
                per_frame[result.frame_idx] = value
                entropy[str(int(obj_id))] = round(float(value), 6)
        windows = {str(k): [int(v) for v in w] for k, w in result.windows.items() if w is not None}
        self._log("frame", frame=int(result.frame_idx), entropy=entropy, **({"windows": windows} if windows else {}))
        self._save_memory()
        return result

    @property
    def prompts(self) -> Dict[Tuple[int, int], dict]:
        """The prompt sam2 holds on each (frame, object): ``{"kind": "points", "points",
        "labels"}``, ``{"kind": "box", "box"}`` or ``{"kind": "mask", "mask"}`` (a copy of the
        mapping; undone corrections are not in it)."""
        return dict(self._prompts)

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

    def _apply_prompt(self, frame_idx: int, obj_id: int, prompt: dict) -> FrameResult:
        """Give sam2 ``prompt`` for (frame, object) (replacing what it had there), through
        the window recorded with it (``prompt["window"]``: the zoom's window, None for the
        whole frame) or, the first time, the window the tracker chooses, which is then
        recorded in it."""
        kw = {"window": prompt["window"]} if "window" in prompt else {}
        if prompt["kind"] == "points":
            result = self.tracker.add_points(frame_idx, obj_id, prompt["points"], prompt["labels"], clear=True, **kw)
        elif prompt["kind"] == "box":
            result = self.tracker.add_box(frame_idx, obj_id, prompt["box"], **kw)
        else:
            result = self.tracker.add_mask(frame_idx, obj_id, prompt["mask"], **kw)
        if "window" not in prompt:
            window = self.tracker.prompt_window(frame_idx, obj_id)
            prompt["window"] = None if window is None else [int(v) for v in window]
        self._prompts[(int(frame_idx), int(obj_id))] = prompt
        return result

    def _set_prompt(self, frame_idx: int, obj_id: int, prompt: Optional[dict]) -> bool:
        """sam2 gets ``prompt`` for (frame, object), or none (None). An object left without any
        prompt is removed from the tracker; returns whether that happened."""
        if obj_id in self.tracker.obj_ids:
            self.tracker.remove_prompts(frame_idx, obj_id)
        self._prompts.pop((frame_idx, obj_id), None)
        if prompt is not None:
            self._apply_prompt(frame_idx, obj_id, prompt)
            return False
        if obj_id in self.tracker.obj_ids and not self.tracker.prompt_frames(obj_id):
            self.tracker.remove_object(obj_id)
            self._forget_memory(None, obj_id)
            return True
        return False

    def _clear_object(self, obj_id: int, keep_frame: Optional[int] = None, from_frame: int = 0) -> Dict[int, tuple]:
        """Clear ``obj_id`` from every written frame (the frames its masked entropy was
        recorded for) from ``from_frame`` on but ``keep_frame``; returns what was cleared,
        per frame (y0, x0, bool crop, entropy), for :meth:`_restore_object`."""
        cleared = {}
        values = self._entropy.get(int(obj_id))
        if values is None:
            return cleared
        for f in np.flatnonzero(np.isfinite(values)):
            f = int(f)
            if f == keep_frame or f < from_frame:
                continue
            labels = self.store.read_frame(f)
            mask = labels == obj_id
            if mask.any():
                ys, xs = np.nonzero(mask)
                y0, x0 = int(ys.min()), int(xs.min())
                cleared[f] = (y0, x0, mask[y0:ys.max() + 1, x0:xs.max() + 1].copy(), float(values[f]))
                labels[mask] = 0
            values[f] = np.nan
            self._set_frame(f, labels, {k: float(v[f]) for k, v in self._entropy.items()})
        return cleared

    def _restore_object(self, obj_id: int, cleared: Optional[Dict[int, tuple]]) -> None:
        """Write back what :meth:`_clear_object` cleared (where no other object is now)."""
        for f, (y0, x0, crop, value) in (cleared or {}).items():
            labels = self.store.read_frame(f)
            region = labels[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]]
            region[crop & (region == 0)] = obj_id
            self._entropy.setdefault(int(obj_id), np.full(self.n_frames, np.nan, np.float32))[f] = value
            self._set_frame(f, labels, {k: float(v[f]) for k, v in self._entropy.items()})

    def _save_cleared(self, cleared: Optional[Dict[int, tuple]]) -> Optional[str]:
        if not cleared or self.folder is None:
            return None
        frames = sorted(cleared)
        arrays = {"frames": np.asarray(frames, np.int64),
                  "origins": np.asarray([cleared[f][:2] for f in frames], np.int64).reshape(-1, 2),
                  "entropy": np.asarray([cleared[f][3] for f in frames], np.float64)}
        for f in frames:
            arrays[f"crop_{f}"] = cleared[f][2]
        return self.folder.save_record(f"{self.folder.next_seq():06d}-cleared", **arrays)

    def _load_cleared(self, rel: Optional[str]) -> Optional[Dict[int, tuple]]:
        if not rel:
            return None
        data = self.folder.load_record(rel)
        return {int(f): (int(o[0]), int(o[1]), data[f"crop_{int(f)}"].astype(bool), float(h))
                for f, o, h in zip(data["frames"], data["origins"], data["entropy"])}

    def _prompt(self, frame_idx: int, obj_id: int, prompt: dict, auto: bool = False) -> FrameResult:
        """Apply a user's (or, ``auto``, self-applied learning's) prompt: a correction when
        the frame was already tracked; written to the store and the session folder."""
        frame_idx, obj_id = self.tracker._check_frame(frame_idx), self.tracker._check_obj(obj_id)
        if frame_idx < self.track_start.get(obj_id, 0):
            raise ValueError(f"object {obj_id} is a daughter of {self.parents[obj_id]} from frame "
                             f"{self.track_start[obj_id]} on: it cannot be prompted on frame {frame_idx}")
        if frame_idx > self.track_end.get(obj_id, self.n_frames):
            raise ValueError(f"object {obj_id} divided after frame {self.track_end[obj_id]}: prompt its daughters "
                             f"{sorted(d for d, m in self.parents.items() if m == obj_id)} there instead")
        correction = None
        if not auto:  # a user's prompt: undo can take it back
            entropy = {k: float(v[frame_idx]) for k, v in self._entropy.items()}
            kind = "correction" if self.is_tracked(frame_idx, obj_id) else "prompt"
            correction = Correction(frame_idx, obj_id, self.store.read_frame(frame_idx), self.adapter.snapshot(),
                                    kind=kind, entropy_before=entropy, prompt=prompt,
                                    prompt_before=self._prompts.get((frame_idx, obj_id)))
        result = self._apply_prompt(frame_idx, obj_id, prompt)  # raises on bad input: nothing recorded
        self._forget_memory(frame_idx, obj_id)
        if correction is not None:
            self.history.append(correction)
            self.undone.clear()
        self._log_prompt(frame_idx, obj_id, prompt, correction, auto=auto)
        return self._write(result)

    def add_points(self, frame_idx: int, obj_id: int, points, labels) -> FrameResult:
        """Set the clicks of ``obj_id`` on ``frame_idx`` (all of them: earlier clicks on that
        frame are replaced) and write the frame's labels.

        ``points`` (K, 2) are (y, x) pixels, ``labels`` (K,) 1 positive / 0 negative. On a
        frame that was already tracked this is a correction (see :meth:`learn_from`).
        """
        pts = np.asarray(points, dtype=float).reshape(-1, 2).tolist()
        return self._prompt(frame_idx, obj_id, {"kind": "points", "points": pts,
                                                "labels": np.asarray(labels).reshape(-1).astype(int).tolist()})

    def add_box(self, frame_idx: int, obj_id: int, box) -> FrameResult:
        """Prompt ``obj_id`` on ``frame_idx`` with a (y0, x0, y1, x1) ``box``."""
        return self._prompt(frame_idx, obj_id, {"kind": "box", "box": np.asarray(box, float).reshape(-1).tolist()})

    def add_mask(self, frame_idx: int, obj_id: int, mask) -> FrameResult:
        """Give ``obj_id`` the (Y, X) bool ``mask`` on ``frame_idx`` (a painted correction)."""
        return self._prompt(frame_idx, obj_id, {"kind": "mask", "mask": np.asarray(mask).astype(bool)})

    def remove_prompt(self, frame_idx: int, obj_id: int) -> Optional[FrameResult]:
        """Take the prompt of ``obj_id`` on ``frame_idx`` away (a deleted click or box), as an
        edit undo can take back.

        The frame is predicted again from sam2's memory of the object's other prompts and
        frames, and written; an object left with no prompt at all is removed from the tracker
        and its labels cleared on every frame (returns None then).

        Raises
        ------
        ValueError
            If the object has no prompt on that frame.
        """
        frame_idx, obj_id = self.tracker._check_frame(frame_idx), self.tracker._check_obj(obj_id)
        if (frame_idx, obj_id) not in self._prompts:
            raise ValueError(f"object {obj_id} has no prompt on frame {frame_idx} "
                             f"(its prompts: frames {self.tracker.prompt_frames(obj_id)})")
        c = Correction(frame_idx, obj_id, self.store.read_frame(frame_idx), self.adapter.snapshot(), kind="removal",
                       entropy_before={k: float(v[frame_idx]) for k, v in self._entropy.items()},
                       prompt=None, prompt_before=self._prompts[(frame_idx, obj_id)])
        removed = self._set_prompt(frame_idx, obj_id, None)
        self._forget_memory(frame_idx, obj_id)
        result = None
        if removed:
            c.cleared = self._clear_object(obj_id)
        self.history.append(c)
        self.undone.clear()
        if self.folder is not None:
            seq = self.folder.next_seq()
            before = self.folder.save_record(f"{seq:06d}-before", labels=c.labels_before)
            self._log("remove_prompt", frame=frame_idx, obj=obj_id, before=before,
                      entropy_before={str(k): v for k, v in c.entropy_before.items() if np.isfinite(v)},
                      **({"cleared": self._save_cleared(c.cleared)} if c.cleared else {}))
        if not removed:  # the frame from the object's memory, as propagation would make it
            for result in self.tracker.propagate(start_frame=frame_idx, direction="forward", max_frames=1):
                self._write(result)
        return result

    # ------------------------------------------------------------------ lineage
    def divide(self, frame_idx: int, obj_id: int, daughters: Sequence[int]) -> Correction:
        """Record that object ``obj_id`` divided into ``daughters`` on ``frame_idx``: its
        track ends on the frame before (its labels there and after are cleared, and later
        propagations leave it out), and each daughter's parent is ``obj_id`` (propagations
        leave the daughters out before ``frame_idx``). The daughters
        are objects of their own, prompted before or after this (a click or a mask on
        ``frame_idx``). An edit undo takes back; in the session log, so a resume and a
        tracks export (:mod:`napari_lit.io.tracks`) know the lineage.

        Parameters
        ----------
        frame_idx : int
            The daughters' first frame.
        obj_id : int
            The mother.
        daughters : sequence of int
            One or more new object ids (usually two).

        Returns
        -------
        Correction
            The edit (kind ``"division"``).

        Raises
        ------
        ValueError
            If the mother is not an object of the session, already divided, or has a prompt
            on ``frame_idx`` or later (remove it first), or is first prompted on or after
            ``frame_idx``; if a daughter is the mother, another object's daughter, given twice,
            or an object prompted before ``frame_idx``.
        """
        frame_idx = self.tracker._check_frame(frame_idx)
        obj_id = int(obj_id)
        daughters = [int(d) for d in daughters]
        if obj_id not in self.tracker.obj_ids:
            raise ValueError(f"object {obj_id} is not in the session (its objects: {list(self.tracker.obj_ids)})")
        if obj_id in self.track_end:
            raise ValueError(f"object {obj_id} already divided after frame {self.track_end[obj_id]}")
        frames = self.tracker.prompt_frames(obj_id)
        if min(frames) >= frame_idx:
            raise ValueError(f"object {obj_id} is first prompted on frame {min(frames)}: it cannot divide on "
                             f"frame {frame_idx}, before or as it begins")
        later = [f for f in frames if f >= frame_idx]
        if later:
            raise ValueError(f"object {obj_id} has prompts on frames {later}, on or after the division on frame "
                             f"{frame_idx}: remove them first (its track ends on frame {frame_idx - 1})")
        if not daughters or len(set(daughters)) != len(daughters) or obj_id in daughters or min(daughters) < 1:
            raise ValueError(f"the daughters of {obj_id} must be distinct new object ids >= 1, not the mother; "
                             f"got {daughters}")
        for d in daughters:
            if d in self.parents:
                raise ValueError(f"object {d} is already a daughter of {self.parents[d]}")
            if d in self.tracker.obj_ids and min(self.tracker.prompt_frames(d)) < frame_idx:
                raise ValueError(f"object {d} is prompted on frame {min(self.tracker.prompt_frames(d))}, before "
                                 f"the division on frame {frame_idx}: a daughter begins with it")
        c = Correction(frame_idx, obj_id, self.store.read_frame(frame_idx), self.adapter.snapshot(), kind="division",
                       entropy_before={k: float(v[frame_idx]) for k, v in self._entropy.items()},
                       daughters=daughters)
        self._apply_division(c)
        self.history.append(c)
        self.undone.clear()
        if self.folder is not None:
            before = self.folder.save_record(f"{self.folder.next_seq():06d}-before", labels=c.labels_before)
            self._log("division", frame=frame_idx, obj=obj_id, daughters=daughters, before=before,
                      **({"cleared": self._save_cleared(c.cleared)} if c.cleared else {}))
        return c

    def _apply_division(self, c: Correction) -> None:
        self.track_end[c.obj_id] = c.frame_idx - 1
        for d in c.daughters:
            self.parents[d] = c.obj_id
            self.track_start[d] = c.frame_idx
        if not self._replaying:
            c.cleared = self._clear_object(c.obj_id, from_frame=c.frame_idx)

    def _undo_division(self, c: Correction) -> None:
        self.track_end.pop(c.obj_id, None)
        for d in c.daughters:
            self.parents.pop(d, None)
            self.track_start.pop(d, None)
        if not self._replaying:
            self._restore_object(c.obj_id, c.cleared)

    def lineage(self) -> Dict[int, int]:
        """Daughter object -> mother object, for the divisions in effect."""
        return dict(self.parents)

    # -------------------------------------------------------------- propagation
    def propagate(self, start_frame: Optional[int] = None, direction: str = "forward",
                  tau_u: Optional[float] = None, tau_m: Optional[float] = None,
                  divisions: Optional[float] = None, division_growth: Optional[float] = None
                  ) -> Iterator[FrameResult]:
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
        divisions : float, optional
            The division rule (forward only): where an object's mask on a propagated frame
            has split into two parts, the smaller holding at least this share of the two
            (:func:`split_daughters`), the object divides there (:meth:`divide`) into two new
            objects prompted with those parts, and propagation resumes from that frame.
            None: off.
        division_growth : float, optional
            With ``divisions``: a split counts only if the two parts together hold at most
            this many times the object's area on the frame before (a mask that spread onto a
            neighbour has split into two cell-sized parts, but doubled). None: not checked.

        Yields
        ------
        FrameResult
            One per frame (a frame where the adapted prediction was kept is yielded once,
            with it).
        """
        if tau_u is None and divisions is None:
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
        previous: Dict[int, float] = {}  # entropy jumps are measured from each (re)start on

        def visit(result, d, fresh):
            if fresh:
                previous.clear()
            f = result.frame_idx
            result = self._ended_dropped(result)
            if divisions is not None and d == "forward":
                split = self._division_at(result, divisions, division_growth)
                if split is not None:  # divided: the daughters' prompts wrote the frame
                    return split, True
            if tau_u is not None:
                for k, h in zip(result.obj_ids, result.masked_entropy()):
                    k, h = int(k), float(h)
                    if k in previous and h - previous[k] >= tau_u:
                        adapted = self_applied_prediction(self.tracker, self.adapter, f, k, h)
                        if adapted is not None:
                            own = result.mask(k)
                            prompt = {"kind": "mask", "mask": adapted}
                            result = self._apply_prompt(f, k, prompt)
                            result.replaced = {k: own}
                            self._log_prompt(f, k, prompt, None, auto=True)
                            self.auto_applied.append((f, k))
                            return self._write(result), True
                    previous[k] = h
            return self._write(result), False

        def run(start, d):
            return self.tracker.propagate(start_frame=start, direction=d, memory_gate=tau_m)

        yield from restarting_propagation(run, start_frame, direction, visit)

    def _division_at(self, result: FrameResult, min_share: float,
                     max_growth: Optional[float] = None) -> Optional[FrameResult]:
        """The division rule on one propagated frame: the first object (not prompted there)
        whose mask has split divides, its daughters prompted with the two parts; returns
        the frame's result after their prompts, or None when no object split."""
        f = result.frame_idx

        def mother_area(k):  # on the frame before (forward): from the labels written there
            if f == 0 or (f - 1) not in self.store.frames_done:
                return None
            return int(np.count_nonzero(self.store.read_frame(f - 1) == k))

        found = find_division(result, self.tracker.prompt_frames, min_share, mother_area, max_growth)
        if found is None:
            return None
        f, (k, parts) = result.frame_idx, found
        a = max(set(self.tracker.obj_ids) | set(self.parents) | {0}) + 1
        self._write(result)  # the frame as tracked, before the division (the edit's "before")
        self.divide(f, k, [a, a + 1])
        out = None
        for d, part in zip((a, a + 1), parts):
            out = self._prompt(f, d, {"kind": "mask", "mask": part})
        logger.info("object %d divided on frame %d into %d and %d", k, f, a, a + 1)
        return out

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
        correction = next((c for c in reversed(self.corrections)
                           if (c.frame_idx, c.obj_id) == (int(frame_idx), int(obj_id))), None)
        inputs = self.tracker.decoder_inputs(frame_idx, obj_id)
        if inputs is None and correction is not None and correction.inputs is not None:
            inputs = self.folder.load_inputs(correction.inputs)  # e.g. after a resume
        if inputs is None:
            raise ValueError(
                f"frame {frame_idx} of object {obj_id} has no recorded propagation to learn from: "
                f"propagate over it first"
            )
        target = self.store.read_frame(frame_idx) == obj_id
        t0 = time.perf_counter()
        for step in self.adapter.train(obj_id, inputs, target):
            yield step
        self.last_train_ms = 1000 * (time.perf_counter() - t0)
        self.last_train_fit = self.adapter.fit.get(int(obj_id))
        if correction is not None:
            correction.learned = True
        if self.folder is not None:  # only a finished training is saved (a cancelled one keeps its best step)
            seq = self.folder.next_seq()
            inputs_rel = (correction.inputs if correction is not None and correction.inputs
                          else self.folder.save_inputs(f"{seq:06d}-learned", inputs))
            target_rel = self.folder.save_record(f"{seq:06d}-target", target=target)
            serial = self.adapter.examples[int(obj_id)][-1].serial
            self._example_files.setdefault(int(obj_id), []).append([inputs_rel, target_rel, serial])
            rel = self._save_adapters()
            self._log("learned", frame=int(frame_idx), obj=int(obj_id), adapters=rel)

    def adapted_prediction(self, frame_idx: int, obj_id: int) -> Optional[np.ndarray]:
        """The adapted decoder's (Y, X) bool mask of ``obj_id`` on a flagged frame
        ``frame_idx``, or None when the object has no adapter yet or the frame's inputs are
        not recorded."""
        logits = adapted_logits(self.tracker, self.adapter, frame_idx, obj_id)
        return None if logits is None else logits > 0

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
            cached = self._own_logits_cache = (inputs, self.tracker.to_input_resolution(low, inputs.window))
        return cached[1]

    def entropy_map(self, frame_idx: int, obj_id: int) -> Optional[np.ndarray]:
        """(Y, X) float32 pixel entropy (Lazy-XMem eq. 2, two classes) of the tracker's own
        prediction of ``obj_id`` on ``frame_idx``, decoded again from the frame's recorded
        inputs; None when they are not recorded. Where it is bright, the model is unsure."""
        from .uncertainty import class_probabilities, pixel_entropy

        logits = self._own_logits(frame_idx, obj_id)
        return None if logits is None else pixel_entropy(class_probabilities(logits[None], self.tracker.temperature))

    def suggested_click(self, frame_idx: int, obj_id: int) -> Optional[Tuple[int, int]]:
        """Where to click on ``obj_id`` on a flagged frame ``frame_idx``: Lazy-XMem's point (eq. 5-6, see
        :func:`napari_lit.core.uncertainty.suggested_click`) of the tracker's own prediction,
        decoded again from the frame's recorded inputs (no image-encoder pass). (y, x) in
        pixels of the input, or None when the inputs are not recorded or the mask is empty."""
        from .uncertainty import suggested_click

        logits = self._own_logits(frame_idx, obj_id)
        return None if logits is None else suggested_click(logits[None], temperature=self.tracker.temperature)

    def accept(self, frame_idx: int, obj_id: int, mask) -> FrameResult:
        """Accept ``mask`` (e.g. the adapted prediction) for ``obj_id`` on ``frame_idx``:
        written to SAM2's memory like a correction (the adapter is not trained on it)."""
        return self.add_mask(frame_idx, obj_id, mask)

    # --------------------------------------------------------------------- undo
    def _set_frame(self, frame_idx: int, labels: np.ndarray, entropy: Optional[Dict[int, float]]) -> None:
        self.store.write_frame(frame_idx, labels)
        for k, value in (entropy or {}).items():
            self._entropy.setdefault(int(k), np.full(self.n_frames, np.nan, np.float32))[frame_idx] = value
        self._log("frame", frame=int(frame_idx),
                  entropy={str(k): round(float(v), 6) for k, v in (entropy or {}).items() if np.isfinite(v)})

    def undo(self) -> Optional[Correction]:
        """Take back the last edit -- a correction, a first prompt or a removed prompt: the
        frame's prompt from before it comes back, with the frame's labels and the adapter
        state from before it. Frames propagated after it keep their labels (propagate again
        to redo them), except that an object the undo leaves without any prompt (its first
        click undone) is removed and its labels cleared on every frame, and an object whose
        removal is undone gets its labels back. Returns the undone edit (see :meth:`redo`),
        or None if there is none."""
        if not self.history:
            return None
        c = self.history.pop()
        f, k = c.frame_idx, c.obj_id
        c.labels_after = self.store.read_frame(f)
        c.adapter_after = self.adapter.snapshot()
        c.entropy_after = {o: float(v[f]) for o, v in self._entropy.items()}
        if c.kind == "division":  # the mother's track goes on again, with her labels
            self._undo_division(c)
            self.undone.append(c)
            if self.folder is not None:
                after = self.folder.save_record(f"{self.folder.next_seq():06d}-after", labels=c.labels_after)
                self._log("undo", frame=f, obj=k, after=after, adapters=self._save_adapters())
            return c
        removed = self._set_prompt(f, k, c.prompt_before)
        self._forget_memory(f, k)
        cleared = None
        if removed:  # a first prompt undone: the object goes, everywhere
            c.cleared = self._clear_object(k, keep_frame=f)
            cleared = self._save_cleared(c.cleared)
        elif c.kind == "removal":
            self._restore_object(k, c.cleared)
        self._restore_adapter(c.adapter_before)
        self._set_frame(f, c.labels_before, c.entropy_before)
        if removed:
            self._entropy[k][f] = np.nan
        self.undone.append(c)
        if self.folder is not None:
            after = self.folder.save_record(f"{self.folder.next_seq():06d}-after", labels=c.labels_after)
            self._log("undo", frame=f, obj=k, after=after, adapters=self._save_adapters(),
                      **({"cleared": cleared} if cleared else {}))
        return c

    #: the name before undo covered every prompt
    undo_last_correction = undo

    def redo(self) -> Optional[Correction]:
        """Apply the last undone edit again: its prompt (or the removal), the frame's labels
        and the adapter state it had. Returns it, or None if nothing is undone (a new edit
        clears what can be redone)."""
        if not self.undone:
            return None
        c = self.undone.pop()
        f, k = c.frame_idx, c.obj_id
        if c.kind == "division":
            self._apply_division(c)
            self.history.append(c)
            self._log("redo", frame=f, obj=k, adapters=self._save_adapters())
            return c
        removed = self._set_prompt(f, k, c.prompt)
        self._forget_memory(f, k)
        if c.kind == "removal":
            if removed:
                self._clear_object(k, keep_frame=f)
        else:
            self._restore_object(k, c.cleared)
        self._restore_adapter(c.adapter_after)
        self._set_frame(f, c.labels_after, c.entropy_after)
        self.history.append(c)
        self._log("redo", frame=f, obj=k, adapters=self._save_adapters())
        return c

    def reset_adapter(self, obj_id: Optional[int] = None) -> None:
        """Forget what was learned for ``obj_id`` (all objects when None)."""
        self.adapter.reset(obj_id)
        if obj_id is None:
            self._example_files.clear()
        else:
            self._example_files.pop(int(obj_id), None)
        self._log("reset_adapter", obj=None if obj_id is None else int(obj_id), adapters=self._save_adapters())

    def close(self) -> None:
        """Detach from the predictor (adapters removed, sam2's decoder as it was); close the
        session folder's log. Closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        self.adapter.reset()
        self.tracker.close()
        if self.folder is not None:
            self.folder.close()
