"""Real training clips from ``shared/train``: DAVIS-2016 train videos, Cell Tracking Challenge
sequences, DSB2018 nuclei images, clothing photographs, a SegTrack v2 clip.

The folders have the layout of the evaluation data (``shared/train/README.md``; read with
:func:`napari_lit.io.dataset.load_sequence`). Every clip is made in the format of the
recipe's generated clips (:func:`napari_lit.training.recipe.make_batch`: frames normalised
with the ImageNet mean and standard deviation, one mask per object, ``size`` x ``size``
pixels) so the recipe mixes them into one batch:

- **Sequences** (video, CTC): an ``n_frames`` window from an annotated prompt frame, at
  stride 1 or 2, played forward or backward (reflected at the sequence's ends), one or a
  few objects (the prompted object and others visible in the view).
- **The view** is cut as the object-centred zoom cuts it at inference
  (:func:`napari_lit.core.zoom.fit_window` on the prompted object's box on the prompt frame,
  a square of about 3x the object), with the box's scale jittered by up to 1.5x (the band
  within which inference keeps a window) and its centre by 0.15 of the window's side (the
  room its margin leaves). An object too large for a window is seen through the whole
  frame (squashed to a square, as SAM2 resizes its input) or a square of 0.6-1.0 of the
  frame's short side around it (the calibration's crop, ``shared/FACTS.md``); 10 % of the
  clips show the whole frame whatever the object's size (zoom off). Flipped left-right
  with probability 0.5; appearance jitter (:mod:`napari_lit.training.motion`).
- **Single images** (DSB2018, photographs) become sequences by smooth random motion
  (affine plus mild elastic deformation, appearance drift), as static-image pre-training
  does in STM and XMem (:mod:`napari_lit.training.motion`).
- **Partial annotation**: frames outside ``annotated_frames`` and objects missing from a
  frame outside ``complete_frames`` are flagged invalid (:func:`.masked.valid_pairs`), so the
  loss leaves them out and prompts never come from them (:mod:`napari_lit.training.masked`).
- **Held back** (:func:`split_train_data`): whole sequences, so no object of a validation
  clip is ever trained on -- the DAVIS videos of :data:`HELD_BACK_VIDEOS` and about 10 % of
  the single images (:func:`held_back_image`) -- plus, as only two CTC sequences exist, the
  last quarter of ``ctc-fluo-simplus-02`` (:data:`HELD_BACK_TAILS`, 2 frames apart from the
  frames trained on).
- **Licences** (:func:`commercial_use_allowed`): ``data="commercial-ok"`` keeps only the
  sequences whose ``meta.json`` licence allows commercial use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.zoom import fit_window, whole_frame
from .motion import ImageMotion, elastic_fields, jitter_appearance, motion_matrices, view_matrix, warp

__all__ = ["DEFAULT_TRAIN_DATA", "DATA_CHOICES", "GROUP_PREFIXES", "REAL_SHARE", "REAL_SHARES", "HELD_BACK_VIDEOS",
           "HELD_BACK_TAILS", "RealSequence", "RealData", "sequence_group", "commercial_use_allowed",
           "scan_train_data", "select_data", "held_back_image", "split_train_data", "render_clip",
           "real_validation_set", "validate_real"]

logger = logging.getLogger(__name__)

#: ``--train-data`` default: ``shared/train`` beside the repository (relative to the working
#: directory, the repository root).
DEFAULT_TRAIN_DATA = "../shared/train"

#: ``--data`` choices: every sequence, or only those whose licence allows commercial use.
DATA_CHOICES = ("all", "commercial-ok")

#: Group of a sequence by its folder name's prefix (before the first ``-``).
GROUP_PREFIXES = {"davis16": "video", "segtrackv2": "video", "ctc": "ctc", "dsb2018": "dsb", "ccp": "ccp"}

#: Share of the clips of a ``real`` schedule batch cut from real data (the rest generated).
REAL_SHARE = 0.6

#: Shares of the groups among real clips (renormalised over the groups present, e.g. with
#: ``commercial-ok`` only ``dsb`` and ``ccp``: 5/7 and 2/7).
REAL_SHARES = {"video": 0.45, "ctc": 0.20, "dsb": 0.25, "ccp": 0.10}

#: Videos held back whole for validation: one large vehicle (mostly the whole-frame view),
#: one deforming animal, one fast person.
HELD_BACK_VIDEOS = ("davis16-bus", "davis16-flamingo", "davis16-rollerblade")

#: Sequences whose last fraction of frames is held back (only two CTC sequences exist; the
#: one with every frame annotated gives its tail); :data:`TAIL_GAP` frames between the parts
#: are used by neither.
HELD_BACK_TAILS = {"ctc-fluo-simplus-02": 0.25}
TAIL_GAP = 2

#: A single image is held back when the SHA-1 of its folder name is 0 modulo this (~10 %).
HELD_BACK_IMAGE_MODULUS = 10

#: Frame strides of sequence windows (each equally likely).
STRIDES = (1, 2)
#: Largest factor by which a view's object box is scaled (log-uniform) and its largest centre
#: shift as a fraction of the window's side.
ZOOM_SCALE_JITTER = 1.5
ZOOM_CENTRE_JITTER = 0.15
#: Probability of the whole frame for an object small enough for a window (zoom off), and
#: for one too large for a window (else a square crop of :data:`LARGE_CROP` of the short side).
WHOLE_FRAME_P = 0.1
LARGE_WHOLE_FRAME_P = 0.5
LARGE_CROP = (0.6, 1.0)
#: Least area of a prompted object in the source frame and in the view (px).
MIN_SOURCE_AREA = 16
MIN_VIEW_AREA = 40

_ZOOM_CONTEXT = 3.0  # core.zoom.ZoomConfig().context


def sequence_group(name: str) -> Optional[str]:
    """The group (``video``, ``ctc``, ``dsb``, ``ccp``) of a folder name, None if unknown."""
    return GROUP_PREFIXES.get(name.split("-", 1)[0])


_NOT_COMMERCIAL = ("non-commercial", "noncommercial", "non commercial", "by-nc", "unknown", "research use",
                   "no licence", "no license")
_COMMERCIAL = ("cc0", "public domain", "apache", "mit", "bsd", "cc by 4.0", "cc-by 4.0", "cc by-sa")


def commercial_use_allowed(licence: str) -> bool:
    """Whether a ``meta.json`` licence text allows commercial use.

    Parameters
    ----------
    licence : str
        The ``license`` field, e.g. ``"CC0 1.0 (...)"`` or ``"DAVIS: CC BY-NC 4.0 (...)"``.

    Returns
    -------
    bool
        False when the text names a non-commercial term (``non-commercial``, ``BY-NC``),
        ``unknown`` or ``research use`` anywhere (the stricter reading wins: CTC data under
        an MIT-licensed snapshot stay non-commercial); True when it then names a licence that
        allows commercial use (CC0, public domain, Apache, MIT, BSD, CC BY); False otherwise.
    """
    text = (licence or "").lower()
    if any(word in text for word in _NOT_COMMERCIAL):
        return False
    return any(word in text for word in _COMMERCIAL)


@dataclass(frozen=True)
class RealSequence:
    """One training sequence (or the part of one that a split gives to training or validation).

    Attributes
    ----------
    name : str
        Folder name.
    folder : str
        Absolute path of the folder.
    group : str
        A value of :data:`GROUP_PREFIXES`.
    licence : str
        The ``meta.json`` licence text.
    n_frames : int
        Frames in the folder.
    frames : (int, int)
        Half-open range of the frames this part uses.
    annotated : frozenset of int or None
        ``annotated_frames`` (None: all).
    complete : frozenset of int or None
        ``complete_frames`` (None: every annotated frame).
    """

    name: str
    folder: str
    group: str
    licence: str
    n_frames: int
    frames: Tuple[int, int]
    annotated: Optional[FrozenSet[int]] = None
    complete: Optional[FrozenSet[int]] = None

    @property
    def single_image(self) -> bool:
        return self.n_frames == 1

    @property
    def commercial_ok(self) -> bool:
        return commercial_use_allowed(self.licence)

    def is_annotated(self, t: int) -> bool:
        """Whether somebody annotated frame ``t`` (an index into the folder's frames)."""
        return self.annotated is None or t in self.annotated

    def is_complete(self, t: int) -> bool:
        """Whether every object is annotated on frame ``t`` (so a missing one is absent)."""
        return self.is_annotated(t) and (self.complete is None or t in self.complete)

    def prompt_frames(self) -> List[int]:
        """Annotated frames of :attr:`frames` (a clip's first frame is one of them)."""
        return [t for t in range(*self.frames) if self.is_annotated(t)]


def _frame_set(value, n_frames: int, field: str, folder: Path) -> Optional[FrozenSet[int]]:
    if value is None or value == "all":
        return None
    if not isinstance(value, list) or not all(isinstance(t, int) and 0 <= t < n_frames for t in value):
        raise ValueError(f"{folder / 'meta.json'}: {field} must be 'all' or a list of frame indices in "
                         f"[0, {n_frames}), got {value!r}")
    return frozenset(value)


def scan_train_data(root: Union[str, Path]) -> List[RealSequence]:
    """The sequences of a training data folder, in name order.

    Parameters
    ----------
    root : str or Path
        A folder of sequence folders (``shared/train``).

    Returns
    -------
    list of RealSequence
        Each whole (``frames`` = all); folders of an unknown group (name prefix not in
        :data:`GROUP_PREFIXES`) are left out with a warning.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist or holds no sequence folder.
    ValueError
        If a ``meta.json`` has malformed ``annotated_frames`` / ``complete_frames``.
    """
    from ..io.dataset import list_sequences, load_sequence

    out = []
    for folder in list_sequences(root):
        group = sequence_group(folder.name)
        if group is None:
            logger.warning("%s: unknown group (prefix not in %s), not used", folder.name, sorted(GROUP_PREFIXES))
            continue
        meta = json.loads((folder / "meta.json").read_text())
        n = meta.get("n_frames")
        if not isinstance(n, int) or n < 1:
            n = int(load_sequence(folder).image.shape[0])
        annotated = _frame_set(meta.get("annotated_frames"), n, "annotated_frames", folder)
        complete = _frame_set(meta.get("complete_frames"), n, "complete_frames", folder)
        if complete is None and annotated is not None:
            complete = annotated
        out.append(RealSequence(folder.name, str(folder.resolve()), group, str(meta.get("license", "")), n, (0, n),
                                annotated, complete))
    if not out:
        raise FileNotFoundError(f"no training sequences of a known group ({sorted(GROUP_PREFIXES)}) in {root}")
    return out


def select_data(sequences: Sequence[RealSequence], data: str = "all") -> List[RealSequence]:
    """The sequences a ``--data`` choice keeps.

    Parameters
    ----------
    sequences : sequence of RealSequence
    data : {"all", "commercial-ok"}
        ``commercial-ok`` keeps those whose licence allows commercial use
        (:func:`commercial_use_allowed`).

    Returns
    -------
    list of RealSequence

    Raises
    ------
    ValueError
        If ``data`` is not a :data:`DATA_CHOICES` value.
    """
    if data not in DATA_CHOICES:
        raise ValueError(f"data must be one of {DATA_CHOICES}, got {data!r}")
    return [s for s in sequences if data == "all" or s.commercial_ok]


def held_back_image(name: str) -> bool:
    """Whether a single image (folder ``name``) is held back: SHA-1 of the name is 0 modulo
    :data:`HELD_BACK_IMAGE_MODULUS`."""
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % HELD_BACK_IMAGE_MODULUS == 0


def split_train_data(sequences: Sequence[RealSequence]) -> Tuple[List[RealSequence], List[RealSequence]]:
    """Split sequences into training and held-back validation parts (by sequence).

    Parameters
    ----------
    sequences : sequence of RealSequence

    Returns
    -------
    train, val : list of RealSequence
        Disjoint: a sequence is in one of them, except those of :data:`HELD_BACK_TAILS`, whose
        frames are split (``frames`` ranges :data:`TAIL_GAP` frames apart). Deterministic
        (names only, no random state).
    """
    train, val = [], []
    for s in sequences:
        tail = HELD_BACK_TAILS.get(s.name)
        if s.name in HELD_BACK_VIDEOS or (s.single_image and held_back_image(s.name)):
            val.append(s)
        elif tail is not None and s.n_frames >= 4:
            n_val = max(1, int(round(tail * s.n_frames)))
            stop = s.n_frames - n_val - TAIL_GAP
            if stop >= 1:
                train.append(_part(s, (0, stop)))
            val.append(_part(s, (s.n_frames - n_val, s.n_frames)))
        else:
            train.append(s)
    return train, val


def _part(s: RealSequence, frames: Tuple[int, int]) -> RealSequence:
    from dataclasses import replace

    return replace(s, frames=frames)


# ---------------------------------------------------------------------------------------------
# reading (one open sequence per folder and process: file handles are not shared across forks)


@lru_cache(maxsize=512)
def _open(folder: str, pid: int):
    from ..io.dataset import load_sequence

    return load_sequence(folder)


def _sequence(folder: str):
    return _open(folder, os.getpid())


@lru_cache(maxsize=16384)
def _frame_objects(folder: str, t: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, areas, boxes (y0, x0, y1, x1)) of the labelled objects on frame ``t``."""
    from scipy.ndimage import find_objects

    lab = np.asarray(_sequence(folder).labels[t])
    areas = np.bincount(lab.ravel())
    ids = np.flatnonzero(areas)
    ids = ids[ids > 0]
    slices = find_objects(lab)
    boxes = np.array([[slices[i - 1][0].start, slices[i - 1][1].start, slices[i - 1][0].stop, slices[i - 1][1].stop]
                      for i in ids], float).reshape(-1, 4)
    return ids, areas[ids], boxes


_LIMITS: Dict[Tuple[str, int], Tuple[float, float]] = {}


def _limits(folder: str, t: int, raw: np.ndarray) -> Tuple[float, float]:
    """The frame's contrast limits as inference computes them (cached)."""
    from ..core.frames import frame_limits

    key = (folder, t)
    if key not in _LIMITS:
        if len(_LIMITS) > 16384:
            _LIMITS.clear()
        _LIMITS[key] = frame_limits(raw)
    return _LIMITS[key]


def _reflect(i: int, a: int, b: int) -> int:
    """Index ``i`` reflected into ``[a, b)`` (a window that runs past an end turns back)."""
    n = b - a
    if n <= 1:
        return a
    period = 2 * (n - 1)
    r = (i - a) % period
    return a + (r if r < n else period - r)


def _choose_window(rng, box, shape, size: int, augment: bool):
    """The source window of a clip's view (see the module notes)."""
    h, w = int(shape[0]), int(shape[1])
    if not augment:
        window = fit_window(tuple(box), (h, w), size)
        return whole_frame((h, w)) if window is None else window
    if rng.random() < WHOLE_FRAME_P:
        return whole_frame((h, w))
    cy, cx = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hy, hx = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    s = math.exp(rng.uniform(-math.log(ZOOM_SCALE_JITTER), math.log(ZOOM_SCALE_JITTER)))
    shift = rng.uniform(-ZOOM_CENTRE_JITTER, ZOOM_CENTRE_JITTER, 2) * _ZOOM_CONTEXT * 2 * max(hy, hx) * s
    cy, cx = cy + shift[0], cx + shift[1]
    window = fit_window((cy - hy * s, cx - hx * s, cy + hy * s, cx + hx * s), (h, w), size)
    if window is not None:
        return window
    if rng.random() < LARGE_WHOLE_FRAME_P:
        return whole_frame((h, w))
    side = int(round(rng.uniform(*LARGE_CROP) * min(h, w)))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    return y0, x0, y0 + side, x0 + side


def _intersects(box, window) -> bool:
    return box[0] < window[2] and box[2] > window[0] and box[1] < window[3] and box[3] > window[1]


class _Source:
    """Crops of source frames around a window, pre-shrunk with area averaging where the view
    shrinks them more than 2x (bilinear warping alone would alias)."""

    def __init__(self, window, shape, size: int, pad: float = 0.5):
        y0, x0, y1, x1 = window
        h, w = int(shape[0]), int(shape[1])
        py, px = pad * (y1 - y0), pad * (x1 - x0)
        self.region = (max(0, int(y0 - py)), max(0, int(x0 - px)), min(h, int(math.ceil(y1 + py))),
                       min(w, int(math.ceil(x1 + px))))
        ry0, rx0, ry1, rx1 = self.region
        scale = min(size / (y1 - y0), size / (x1 - x0))
        g = min(1.0, 2.0 * scale)
        self.out_shape = (max(1, int(round((ry1 - ry0) * g))), max(1, int(round((rx1 - rx0) * g))))
        gy, gx = self.out_shape[0] / (ry1 - ry0), self.out_shape[1] / (rx1 - rx0)
        self.shrink = self.out_shape != (ry1 - ry0, rx1 - rx0)
        # full-frame pixels -> pre-shrunk crop pixels (cv2.resize's pixel-area convention)
        self.to_crop = np.array([[gx, 0.0, (0.5 - rx0) * gx - 0.5], [0.0, gy, (0.5 - ry0) * gy - 0.5], [0, 0, 1.0]])

    def crop(self, frame: np.ndarray, equals: Optional[int] = None) -> np.ndarray:
        """The (pre-shrunk) float32 crop of ``frame``; with ``equals``, of the mask ``frame == equals``."""
        import cv2

        ry0, rx0, ry1, rx1 = self.region
        x = frame[ry0:ry1, rx0:rx1]
        x = np.ascontiguousarray(x if equals is None else x == equals, np.float32)
        if self.shrink:
            x = cv2.resize(x, self.out_shape[::-1], interpolation=cv2.INTER_AREA)
        return x


def render_clip(seq: RealSequence, rng: np.random.Generator, n_frames: int, size: int = 256, max_objects: int = 3,
                augment: bool = True, motion: ImageMotion = ImageMotion()):
    """Cut one training (or validation) clip from a real sequence.

    Parameters
    ----------
    seq : RealSequence
        Its ``frames`` range bounds the frames used.
    rng : numpy.random.Generator
        All random choices come from it (the clip is a function of its state).
    n_frames : int
        Frames per clip (1: a single-frame prompt-to-mask example).
    size : int
        View side, px.
    max_objects : int
        At most this many objects (the prompted one and others visible on the prompt frame).
    augment : bool
        Training clips: random stride, direction, object count, zoom jitter, whole-frame
        views, flips, appearance jitter. Validation clips (False): forward at stride 1, the
        zoom window of inference, up to ``max_objects`` objects, no flip or jitter (single
        images still move, by ``rng``).
    motion : ImageMotion
        Motion of single-image pseudo-sequences.

    Returns
    -------
    (training.utils.data_utils.VideoDatapoint, (T, O) bool ndarray) or None
        Frames (3, size, size) float32 normalised with the ImageNet mean and standard
        deviation (as :func:`napari_lit.training.recipe.make_batch`), one (size, size) bool
        mask per object and frame, and which (frame, object) masks are ground truth
        (:func:`napari_lit.training.masked.valid_pairs`); None when the drawn prompt frame
        has no object large enough (draw again).

    Raises
    ------
    ValueError
        If ``n_frames`` or ``size`` is below 1.
    """
    import torch
    from training.utils.data_utils import Frame, Object, VideoDatapoint

    from ..core.frames import apply_limits
    from .masked import valid_pairs
    from .recipe import IMAGENET_MEAN, IMAGENET_STD

    if n_frames < 1 or size < 1:
        raise ValueError(f"n_frames and size must be >= 1, got {n_frames} and {size}")
    prompts = seq.prompt_frames()
    if not prompts:
        return None
    data = _sequence(seq.folder)
    shape = tuple(data.image.shape[1:3])
    t0 = prompts[int(rng.integers(len(prompts)))]
    ids, areas, boxes = _frame_objects(seq.folder, t0)
    usable = np.flatnonzero(areas >= MIN_SOURCE_AREA)
    if not len(usable):
        return None
    first = int(usable[rng.integers(len(usable))])
    window = _choose_window(rng, boxes[first], shape, size, augment)
    flip = bool(augment and rng.random() < 0.5)
    if seq.single_image:
        index = [t0] * n_frames
        moves = motion_matrices(rng, n_frames, size, motion)
        maps = elastic_fields(rng, n_frames, size, motion)
    else:
        step = int(rng.choice(STRIDES)) * int(rng.choice([-1, 1])) if augment else 1
        index = [_reflect(t0 + step * k, *seq.frames) for k in range(n_frames)]
        moves, maps = np.repeat(np.eye(3)[None], n_frames, axis=0), None
    want = int(rng.integers(1, max_objects + 1)) if augment else max_objects
    others = [int(j) for j in usable if j != first and _intersects(boxes[j], window)]
    rng.shuffle(others)

    source = _Source(window, shape, size)
    base = view_matrix(window, size, flip) @ np.linalg.inv(source.to_crop)
    mats = [moves[k] @ base for k in range(n_frames)]
    k_maps = [None] * n_frames if maps is None else maps
    raw = {t: np.asarray(data.image[t]) for t in dict.fromkeys(index)}
    labels = {t: np.asarray(data.labels[t]) for t in raw}
    frames = []
    for k, t in enumerate(index):
        lo, hi = _limits(seq.folder, t, raw[t])
        frames.append(apply_limits(warp(source.crop(raw[t]), mats[k], size, k_maps[k]), lo, hi, rgb=True))
    frames = np.stack(frames)
    if augment:
        frames = jitter_appearance(rng, frames, per_frame=seq.single_image)

    chosen, masks = [], []
    for j in [first] + others:
        if len(chosen) >= want:
            break
        obj = int(ids[j])
        m0 = warp(source.crop(labels[index[0]], obj), mats[0], size, k_maps[0], mask=True) >= 0.5
        if m0.sum() < MIN_VIEW_AREA:
            continue
        obj_masks = [m0] + [warp(source.crop(labels[t], obj), mats[k], size, k_maps[k], mask=True) >= 0.5
                            for k, t in enumerate(index) if k > 0]
        chosen.append(obj)
        masks.append(np.stack(obj_masks))
    if not chosen:
        return None
    on_frame = {t: set(_frame_objects(seq.folder, t)[0].tolist()) for t in raw}
    present = np.array([[obj in on_frame[t] for obj in chosen] for t in index])
    annotated = np.array([seq.is_annotated(t) for t in index])
    complete = np.array([seq.is_complete(t) for t in index])
    valid = valid_pairs(present, annotated, complete)
    img = (frames - IMAGENET_MEAN) / IMAGENET_STD
    img = torch.from_numpy(np.ascontiguousarray(img, np.float32)).permute(0, 3, 1, 2).contiguous()
    frames_out = [Frame(data=img[k], objects=[Object(obj, k, torch.from_numpy(masks[o][k]))
                                              for o, obj in enumerate(chosen)])
                  for k in range(n_frames)]
    video = VideoDatapoint(frames=frames_out, video_id=0, size=(size, size))
    return video, valid


class RealData:
    """The training (or validation) part of a training data folder, drawn by group shares.

    Parameters
    ----------
    root : str or Path
        The folder (``shared/train``).
    data : {"all", "commercial-ok"}
        See :func:`select_data`.
    part : {"train", "val"}
        Which side of :func:`split_train_data`.

    Attributes
    ----------
    sequences : dict of str to list of RealSequence
        By group, only groups with sequences.
    shares : dict of str to float
        :data:`REAL_SHARES` renormalised over those groups.

    Raises
    ------
    FileNotFoundError
        If ``root`` holds no sequence.
    ValueError
        If ``data`` or ``part`` is unknown, or nothing is left of that part.
    """

    def __init__(self, root: Union[str, Path], data: str = "all", part: str = "train"):
        if part not in ("train", "val"):
            raise ValueError(f"part must be 'train' or 'val', got {part!r}")
        train, val = split_train_data(select_data(scan_train_data(root), data))
        chosen = train if part == "train" else val
        self.sequences: Dict[str, List[RealSequence]] = defaultdict(list)
        for s in chosen:
            self.sequences[s.group].append(s)
        self.sequences = {g: self.sequences[g] for g in REAL_SHARES if self.sequences.get(g)}
        if not self.sequences:
            raise ValueError(f"no {part} sequences in {root} with data={data!r}")
        total = sum(REAL_SHARES[g] for g in self.sequences)
        self.shares = {g: REAL_SHARES[g] / total for g in self.sequences}

    def sample_clip(self, rng: np.random.Generator, n_frames: int, size: int = 256, max_objects: int = 3,
                    tries: int = 50):
        """A training clip from a group drawn by :attr:`shares` and a sequence drawn uniformly.

        Parameters
        ----------
        rng : numpy.random.Generator
            Every choice comes from it.
        n_frames, size, max_objects : int
            As for :func:`render_clip` (with ``augment=True``).
        tries : int
            Draws before giving up.

        Returns
        -------
        (VideoDatapoint, (T, O) bool ndarray)
            As :func:`render_clip`.

        Raises
        ------
        ValueError
            If ``tries`` draws in a row found no object large enough.
        """
        groups = list(self.shares)
        p = np.array([self.shares[g] for g in groups])
        for _ in range(tries):
            group = groups[int(rng.choice(len(groups), p=p))]
            seqs = self.sequences[group]
            out = render_clip(seqs[int(rng.integers(len(seqs)))], rng, n_frames, size, max_objects)
            if out is not None:
                return out
        raise ValueError(f"{tries} draws of real clips found no object of >= {MIN_VIEW_AREA} px in the view")


@lru_cache(maxsize=8)
def _real_data(root: str, data: str, part: str, pid: int) -> RealData:
    return RealData(root, data, part)


def real_data(root: Union[str, Path], data: str = "all", part: str = "train") -> RealData:
    """:class:`RealData`, built once per process and arguments."""
    return _real_data(str(Path(root).resolve()), data, part, os.getpid())


def real_validation_set(root: Union[str, Path], data: str = "all", seed: int = 0, n: int = 24, size: int = 256,
                        max_objects: int = 3, n_frames: int = 8):
    """Held-back real validation clips, one batch each, labelled with their group.

    Parameters
    ----------
    root, data
        As for :class:`RealData`.
    seed : int
        With a key no training step uses: the same clips for the same seed.
    n : int
        About this many clips, shared among the groups by :attr:`RealData.shares` (at least
        one each); a group's clips go round its held-back sequences.
    size, max_objects, n_frames : int

    Returns
    -------
    list of (str, napari_lit.training.masked.MaskedVideoBatch)
        ``(group, batch)`` with one clip of ``n_frames`` frames, cut with ``augment=False``
        (:func:`render_clip`).

    Raises
    ------
    ValueError
        If nothing is held back, or a held-back sequence yields no clip.
    """
    from .masked import collate_masked

    val = RealData(root, data, "val")
    rng = np.random.default_rng([seed, 10_000_103])
    out = []
    for group, share in val.shares.items():
        seqs = val.sequences[group]
        for j in range(max(1, int(round(n * share)))):
            seq = seqs[j % len(seqs)]
            for _ in range(50):
                clip = render_clip(seq, rng, n_frames, size, max_objects, augment=False)
                if clip is not None:
                    break
            else:
                raise ValueError(f"held-back sequence {seq.name} gave no clip with an object of >= {MIN_VIEW_AREA} px")
            out.append((group, collate_masked([clip[0]], [clip[1]], dict_key="real_val")))
    return out


def validate_real(model, labelled, validate_fn) -> Dict[str, float]:
    """Tracking J on held-back real clips, per group and weighted by the group shares.

    Parameters
    ----------
    model : training.model.sam2.SAM2Train
    labelled : list of (str, MaskedVideoBatch)
        From :func:`real_validation_set`.
    validate_fn : callable
        :func:`napari_lit.training.recipe.validate` (mask-prompted tracking from frame 0;
        pairs flagged invalid are not scored).

    Returns
    -------
    dict of str to float
        ``val_real_<group>_track_j`` and ``..._static_j`` for each group, and
        ``val_real_track_j`` / ``val_real_static_j``: their means weighted by
        :data:`REAL_SHARES` (renormalised over the groups present).
    """
    by_group: Dict[str, list] = defaultdict(list)
    for group, batch in labelled:
        by_group[group].append(batch)
    out: Dict[str, float] = {}
    total = sum(REAL_SHARES[g] for g in by_group)
    track = static = 0.0
    for group, batches in by_group.items():
        v = validate_fn(model, batches)
        out[f"val_real_{group}_track_j"] = v["val_track_j"]
        out[f"val_real_{group}_static_j"] = v["val_static_j"]
        track += REAL_SHARES[group] / total * v["val_track_j"]
        static += REAL_SHARES[group] / total * v["val_static_j"]
    out["val_real_track_j"], out["val_real_static_j"] = track, static
    return out
