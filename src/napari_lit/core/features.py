"""Feature cache: each frame's image-encoder outputs, computed once and reused.

sam2's video predictor keeps the image features of one frame only (the latest), so every
propagation after a correction, every backward run and every resumed session encodes every
frame again -- on a CPU most of SAM2.1's time per frame (62 % for ``sam2.1_hiera_tiny`` at
1024 px). A :class:`FeatureCache` keeps what sam2 reads of the image encoder's output (its
``backbone_fpn`` levels; the positional encodings depend only on their shapes and are kept
once per shape) for each (frame, window):

- in memory, within a byte budget, the least recently used first to go, as the encoder
  returned them (a cached propagation gives exactly the masks of an uncached one);
- optionally on disk (:class:`DiskFeatures`, a zarr group: one array per feature level and
  view, one chunk per frame, float16 by default), for sessions and ``napari-lit embed``. The
  group records what its features were computed from (:func:`feature_identity`: the image's
  fingerprint, the model's checksum, the input size, the frame source's normalisation); a
  group written from anything else is refused and emptied, and an entry whose CRC-32 does
  not match what was written (a chunk cut short or altered) is recomputed, never used.

The tracker attaches the cache to each of its sam2 inference states
(:func:`napari_lit.core._sam2.attach_features`).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["FeatureCache", "DiskFeatures", "FeatureCacheError", "feature_identity", "model_checksum",
           "folder_features", "shared_folder", "DEFAULT_FEATURE_BUDGET", "DEFAULT_DISK_BUDGET"]

logger = logging.getLogger(__name__)

#: Memory the cache may hold by default: 32 frames of sam2.1 at 1024 px (16 MiB each,
#: float32), some 600 of lit-tiny's at 256 px.
DEFAULT_FEATURE_BUDGET = 512 * 2**20
#: Disk a cache folder may take by default (float16: ~500 frames of sam2.1 at 1024 px).
DEFAULT_DISK_BUDGET = 4 * 2**30
FORMAT = 1
DTYPES = ("float32", "float16", "bfloat16")

Window = Optional[Tuple[int, int, int, int]]


class FeatureCacheError(ValueError):
    """A feature cache folder that cannot be used as asked (not a cache, wrong argument)."""


def model_checksum(predictor) -> str:
    """What identifies the model's image features: the SHA-256 of its checkpoint when it was
    loaded from one (``predictor.napari_lit_checksum``), else of the parameters and buffers of
    the image encoder and of the decoder's ``conv_s0``/``conv_s1`` (which sam2 applies to the
    encoder's output), computed once per predictor.

    Returns
    -------
    str
        Hex digest.
    """
    known = getattr(predictor, "napari_lit_checksum", None)
    if known:
        return str(known)
    cached = getattr(predictor, "_napari_lit_encoder_sha256", None)
    if cached:
        return cached
    import torch

    h = hashlib.sha256()
    state = dict(predictor.image_encoder.state_dict())
    for conv in ("conv_s0", "conv_s1"):  # sam2 applies these to the encoder's output (forward_image)
        module = getattr(predictor.sam_mask_decoder, conv, None)
        if module is not None:
            state.update({f"{conv}.{k}": v for k, v in module.state_dict().items()})
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    digest = "encoder:" + h.hexdigest()
    predictor._napari_lit_encoder_sha256 = digest
    return digest


def feature_identity(predictor, frames) -> dict:
    """What a frame's features are computed from, as recorded with them on disk.

    Parameters
    ----------
    predictor : SAM2VideoPredictor
    frames : napari_lit.core.frames.FrameSource

    Returns
    -------
    dict
        ``image`` (:func:`~napari_lit.core.folder.image_fingerprint`), ``model``
        (:func:`model_checksum`), ``image_size`` (px), ``contrast`` (the normalisation's
        contrast limits, as text), ``lowres`` and ``levels`` (the shapes of the lower-resolution
        frames the inputs are read from), ``format``.
    """
    from .folder import image_fingerprint

    def _shape(a):
        return None if a is None else [int(s) for s in a.shape]

    return {"format": FORMAT, "image": image_fingerprint(frames), "model": model_checksum(predictor),
            "image_size": int(predictor.image_size), "contrast": repr(frames.contrast),
            "lowres": _shape(frames.lowres), "levels": [_shape(a) for a in frames.levels]}


def _view_name(window: Window) -> str:
    return "frame" if window is None else "window-" + "-".join(str(int(v)) for v in window)


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).ravel()) & 0xFFFFFFFF


class DiskFeatures:
    """A zarr group of image-encoder features on disk: ``<view>/level<i>`` arrays shaped
    (N, C, H, W), one chunk per frame, and ``<view>/crc`` (N, 1 + levels) uint32: a written
    flag and the CRC-32 of each level's chunk, written after the chunks (a frame whose write
    was cut short has no flag and is computed again).

    Parameters
    ----------
    path : str or Path
        The group's folder; created if missing.
    identity : dict
        :func:`feature_identity` of the frames and model. A folder written with another
        identity is emptied and started again (logged); a folder that is not a feature cache
        is never touched.
    dtype : {"float32", "float16", "bfloat16"}, optional
        How new features are stored: float32 (default) exactly; float16 or bfloat16 in half
        the disk (masks then differ from an uncached run within a small tolerance, see
        ``docs/benchmarks.md``). A folder that exists keeps the dtype it was made with.
    budget_bytes : int, optional
        Disk the folder may take; past it, new features are not written (logged once).
    read_only : bool
        Only read (e.g. a precomputed folder shared by several sessions).

    Raises
    ------
    FeatureCacheError
        If ``path`` exists and is not a feature cache, or ``dtype`` is not one of the above.
    """

    def __init__(self, path: Union[str, Path], identity: dict, dtype: Optional[str] = None,
                 budget_bytes: Optional[int] = DEFAULT_DISK_BUDGET, read_only: bool = False):
        import zarr

        if dtype is not None and dtype not in DTYPES:
            raise FeatureCacheError(f"feature dtype must be float32, float16 or bfloat16; got {dtype!r}")
        self.path = Path(path)
        self.identity = dict(identity)
        self.dtype = dtype = dtype or "float32"
        self.budget_bytes = budget_bytes
        self.read_only = bool(read_only)
        self._lock = threading.RLock()
        self._views: Dict[str, dict] = {}
        self._missing: set = set()  # views known not to be in the folder
        self._full_warned = False
        self.refused = False  #: the folder held features of something else (emptied, or unused if read-only)
        if self.path.exists() and any(self.path.iterdir()):
            try:
                root = zarr.open_group(str(self.path), mode="r")
                attrs = dict(root.attrs)
            except Exception as exc:  # noqa: BLE001 - any unreadable folder: not ours
                raise FeatureCacheError(f"{self.path} exists and is not a napari-lit feature cache ({exc}); "
                                        f"choose another folder") from None
            if attrs.get("napari_lit_features") != FORMAT:
                raise FeatureCacheError(f"{self.path} exists and is not a napari-lit feature cache (no "
                                        f"'napari_lit_features' attribute); choose another folder")
            stored = attrs.get("dtype")
            if stored in DTYPES:
                if dtype is not None and dtype != stored:
                    logger.info("%s stores its features as %s (not %s)", self.path, stored, dtype)
                self.dtype = dtype = stored
            if attrs.get("identity") != _jsonable(self.identity) or stored not in DTYPES:
                self.refused = True
                what = _difference(attrs.get("identity") or {}, _jsonable(self.identity))
                if self.read_only:
                    logger.warning("%s holds features of another %s; not used", self.path, what)
                    self._root = None
                    return
                logger.warning("%s holds features of another %s; emptied, features are computed again",
                               self.path, what)
                shutil.rmtree(self.path)
        if self.read_only and not self.path.exists():
            self._root = None
            return
        mode = "r" if self.read_only else "a"
        self._root = zarr.open_group(str(self.path), mode=mode)
        if not self.read_only and self._root.attrs.get("napari_lit_features") != FORMAT:
            self._root.attrs.update({"napari_lit_features": FORMAT, "identity": _jsonable(self.identity),
                                     "dtype": dtype})
        self._bytes = _folder_bytes(self.path)

    @property
    def usable(self) -> bool:
        """Whether the folder can be read (it exists and holds features of this identity)."""
        return self._root is not None

    def _view(self, window: Window, shapes=None, create: bool = False):
        name = _view_name(window)
        if name in self._views:
            return self._views[name]
        if self._root is None:
            return None
        import zarr

        if name in self._missing and not create:
            return None
        try:
            group = self._root[name]
        except KeyError:
            group = None
        if group is None:
            if not create or shapes is None:
                self._missing.add(name)  # not looked up on disk again until written here
                return None
            self._missing.discard(name)
            n = int(self.identity["image"]["shape"][0])
            group = self._root.create_group(name)
            for i, shape in enumerate(shapes):
                group.create_array(f"level{i}", shape=(n,) + tuple(shape), chunks=(1,) + tuple(shape),
                                   dtype=self.dtype if self.dtype != "bfloat16" else "uint16", fill_value=0)
            group.create_array("crc", shape=(n, 1 + len(shapes)), chunks=(1, 1 + len(shapes)), dtype="uint32",
                               fill_value=0)
        levels = sorted(k for k in group.array_keys() if k.startswith("level"))
        entry = {"levels": [group[k] for k in levels], "crc": group["crc"]}
        if not isinstance(entry["crc"], zarr.Array):
            return None
        entry["written"] = set(int(f) for f in np.flatnonzero(np.asarray(entry["crc"][:, 0]) == 1))
        self._views[name] = entry
        return entry

    def has(self, frame_idx: int, window: Window) -> bool:
        """Whether (frame, window) has been written completely (its flag is set)."""
        with self._lock:
            view = self._view(window)
            return view is not None and int(frame_idx) in view["written"]

    def read(self, frame_idx: int, window: Window) -> Optional[List[np.ndarray]]:
        """The features of (frame, window) as float32 arrays (C, H, W) per level, or None when
        absent, unreadable, or their checksum does not match (then the flag is cleared)."""
        with self._lock:
            view = self._view(window)
            if view is None:
                return None
            f = int(frame_idx)
            if f not in view["written"]:
                return None
            try:
                crc = np.asarray(view["crc"][f])
                if int(crc[0]) != 1:
                    return None
                arrays = [np.asarray(level[f]) for level in view["levels"]]
                ok = len(arrays) == len(crc) - 1 and all(_crc(a) == int(c) for a, c in zip(arrays, crc[1:]))
            except Exception as exc:  # noqa: BLE001 - a corrupt chunk: compute again
                logger.warning("%s: the features of frame %d (%s) cannot be read (%s); computed again",
                               self.path, f, _view_name(window), exc)
                ok = False
            if not ok:
                logger.warning("%s: the features of frame %d (%s) do not match their checksum; computed again",
                               self.path, f, _view_name(window))
                self._clear_flag(view, f)
                return None
            return [_from_stored(a, self.dtype) for a in arrays]

    def _clear_flag(self, view, f: int) -> None:
        view["written"].discard(f)
        if self.read_only:
            return
        try:
            view["crc"][f] = 0
        except Exception:  # noqa: BLE001 - nothing more to do than not use it
            pass

    def write(self, frame_idx: int, window: Window, levels: Sequence[np.ndarray]) -> bool:
        """Store one (frame, window)'s features ((C, H, W) float arrays per level); False when
        read-only or over the disk budget."""
        if self.read_only or self._root is None:
            return False
        stored = [_to_stored(np.asarray(a), self.dtype) for a in levels]
        size = sum(a.nbytes for a in stored)
        with self._lock:
            if self.budget_bytes is not None and self._bytes + size > self.budget_bytes:
                if not self._full_warned:
                    logger.warning("%s is full (%.1f GiB of features); later frames are encoded each time. "
                                   "Raise its disk budget or free space.", self.path, self._bytes / 2**30)
                    self._full_warned = True
                return False
            view = self._view(window, [a.shape for a in stored], create=True)
            if view is None or len(view["levels"]) != len(stored):
                return False
            f = int(frame_idx)
            view["crc"][f] = 0
            view["written"].discard(f)
            for level, a in zip(view["levels"], stored):
                level[f] = a
            view["crc"][f] = np.array([1] + [_crc(a) for a in stored], dtype=np.uint32)
            view["written"].add(f)
            self._bytes += size
            return True

    def frames(self, window: Window = None) -> List[int]:
        """The frames written completely for ``window`` (None: the whole frames)."""
        with self._lock:
            view = self._view(window)
            return [] if view is None else sorted(view["written"])

    @property
    def nbytes(self) -> int:
        """Bytes of the folder on disk (as counted when opened, plus what was written since)."""
        return int(self._bytes)


def _to_stored(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":  # the upper 16 bits of float32 (round to nearest even)
        bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        return (rounded >> 16).astype(np.uint16)
    return np.ascontiguousarray(a, dtype=dtype)


def _from_stored(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32, copy=False)


def _jsonable(value):
    import json

    return json.loads(json.dumps(value))


def _difference(recorded: dict, now: dict) -> str:
    names = {"image": "image", "model": "model", "image_size": "input size", "contrast": "normalisation",
             "lowres": "image (lower resolution)", "levels": "image (pyramid)", "format": "format"}
    diff = [names.get(k, k) for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)]
    return " and ".join(diff) or "storage type"


def _folder_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


class FeatureCache:
    """Image-encoder features per (frame, window), in memory and optionally on disk.

    Parameters
    ----------
    budget_bytes : int
        Memory the in-memory features may take (bytes); the least recently used go first.
        0 keeps none in memory (disk only).
    disk : DiskFeatures, optional
        Where features are also written, and read when not in memory.
    extra : sequence of DiskFeatures
        Further folders read (never written) when a feature is neither in memory nor in
        ``disk``, e.g. one filled by ``napari-lit embed`` before a session started.

    Attributes
    ----------
    stats : dict
        ``memory_hits``, ``disk_hits``, ``misses`` (features the encoder computed) so far.

    Notes
    -----
    A cache belongs to one image and one model: a tracker refuses a cache whose
    ``identity`` (set from the disk folder, or by the first tracker that uses it) is not its
    own. Features in memory are the encoder's own tensors (float32): a cached propagation
    gives exactly the masks of an uncached one. Features read from a float16 disk folder
    differ from the encoder's by float16 rounding.
    """

    def __init__(self, budget_bytes: int = DEFAULT_FEATURE_BUDGET, disk: Optional[DiskFeatures] = None,
                 extra: Sequence[DiskFeatures] = ()):
        if int(budget_bytes) < 0:
            raise FeatureCacheError(f"budget_bytes must be >= 0; got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self.disk = disk
        self.extra = [d for d in extra if d.usable]
        self.identity: Optional[dict] = None if disk is None else disk.identity
        self._memory: "OrderedDict[tuple, list]" = OrderedDict()
        self._sizes: Dict[tuple, int] = {}
        self._bytes = 0
        self._pos: Dict[tuple, list] = {}  # feature shapes -> positional encodings (per level)
        self._lock = threading.RLock()
        self.stats = {"memory_hits": 0, "disk_hits": 0, "misses": 0}
        self._checked: list = []  # (predictor, frames) pairs whose identity is this cache's

    def bind(self, predictor, frames) -> None:
        """Check (or set) what this cache's features are of: each tracker given this cache
        calls it with its model and frames. The first caller sets the identity
        (:func:`feature_identity`) of a cache without a disk folder (a folder's is the one it
        records); a (model, frames) pair already checked is not read again.

        Raises
        ------
        FeatureCacheError
            If the cache holds features of another image, model or input size.
        """
        with self._lock:
            if any(p is predictor and f is frames for p, f in self._checked):
                return
            mine = _jsonable(feature_identity(predictor, frames))
            if self.identity is None:
                self.identity = mine
            elif _jsonable(self.identity) != mine:
                raise FeatureCacheError(
                    f"this feature cache holds features of another {_difference(_jsonable(self.identity), mine)}; "
                    f"give each image and model its own cache")
            self._checked.append((predictor, frames))

    @property
    def nbytes(self) -> int:
        """Bytes of the features held in memory."""
        return int(self._bytes)

    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, key) -> bool:
        frame_idx, window = key
        key = (int(frame_idx), _norm(window))
        with self._lock:
            if key in self._memory:
                return True
        return any(d.has(*key) for d in ([self.disk] if self.disk is not None else []) + self.extra)

    def get(self, frame_idx: int, window: Window = None, position_encoding=None) -> Optional[dict]:
        """sam2's backbone output of (frame, window), or None when it is not cached.

        Parameters
        ----------
        frame_idx : int
        window : (y0, x0, y1, x1) or None
            The window of the frame the features are of (None: the whole frame).
        position_encoding : callable, optional
            ``position_encoding(fpn)`` -> the positional encodings of a list of (1, C, H, W)
            feature levels (the model's neck computes them from their shapes); needed to use
            features read from disk before any was computed in this process.

        Returns
        -------
        dict or None
            ``backbone_fpn`` (list of (1, C, H, W) float32 tensors), ``vision_pos_enc`` (same
            shapes, positional encodings) and ``vision_features`` (the last level), as
            ``SAM2Base.forward_image`` returns them.
        """
        key = (int(frame_idx), _norm(window))
        with self._lock:
            fpn = self._memory.get(key)
            if fpn is not None:
                self._memory.move_to_end(key)
                self.stats["memory_hits"] += 1
                return self._backbone(fpn)
        for disk in ([self.disk] if self.disk is not None else []) + self.extra:
            arrays = disk.read(*key)
            if arrays is None:
                continue
            import torch

            fpn = [torch.from_numpy(np.ascontiguousarray(a))[None] for a in arrays]
            shapes = tuple(a.shape for a in arrays)
            if shapes not in self._pos:
                if position_encoding is None:
                    return None  # no encoding of this shape known: let the encoder run once
                self._pos[shapes] = [p[:1] for p in position_encoding(fpn)]
            with self._lock:
                self.stats["disk_hits"] += 1
                self._remember(key, fpn)
                return self._backbone(fpn)
        return None

    def put(self, frame_idx: int, window: Window, backbone_out: dict) -> None:
        """Keep sam2's backbone output of (frame, window) (its first batch item)."""
        key = (int(frame_idx), _norm(window))
        fpn = [t[:1].detach() for t in backbone_out["backbone_fpn"]]
        shapes = tuple(tuple(t.shape[1:]) for t in fpn)
        with self._lock:
            self.stats["misses"] += 1
            self._pos.setdefault(shapes, [p[:1].detach() for p in backbone_out["vision_pos_enc"]])
            self._remember(key, fpn)
        if self.disk is not None:
            self.disk.write(key[0], key[1], [t[0].float().cpu().numpy() for t in fpn])

    def _remember(self, key, fpn) -> None:
        size = sum(t.numel() * t.element_size() for t in fpn)
        if size > self.budget_bytes:
            return
        old = self._sizes.pop(key, None)
        if old is not None:
            self._memory.pop(key, None)
            self._bytes -= old
        self._memory[key] = fpn
        self._sizes[key] = size
        self._bytes += size
        while self._bytes > self.budget_bytes and self._memory:
            k, _ = self._memory.popitem(last=False)
            self._bytes -= self._sizes.pop(k)

    def _backbone(self, fpn) -> dict:
        pos = self._pos[tuple(tuple(t.shape[1:]) for t in fpn)]
        return {"vision_features": fpn[-1], "vision_pos_enc": list(pos), "backbone_fpn": list(fpn)}

    def clear(self) -> None:
        """Drop the features held in memory (disk folders stay)."""
        with self._lock:
            self._memory.clear()
            self._sizes.clear()
            self._bytes = 0


def _norm(window: Window) -> Window:
    return None if window is None else tuple(int(v) for v in window)


def shared_folder(identity: dict) -> Path:
    """Where ``napari-lit embed`` without a session keeps an image's features for a model:
    ``<cache>/features/<digest>``, the digest of :func:`feature_identity` (``<cache>``:
    ``$NAPARI_LIT_CACHE`` or the OS user cache, as for downloaded checkpoints). Every session
    on that image with that model reads it."""
    import json

    from ..models.catalogue import cache_dir

    digest = hashlib.sha256(json.dumps(_jsonable(identity), sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "features" / digest


def folder_features(predictor, frames, path: Union[str, Path, None] = None, dtype: Optional[str] = None,
                    budget_bytes: int = DEFAULT_FEATURE_BUDGET,
                    disk_budget_bytes: Optional[int] = DEFAULT_DISK_BUDGET) -> FeatureCache:
    """The feature cache of a session folder: in memory, written to ``path``, and read from
    the image's :func:`shared_folder` too when ``napari-lit embed`` filled it (with ``path``
    None: in memory and read from that folder).

    Parameters
    ----------
    predictor : SAM2VideoPredictor
    frames : FrameSource
    path : str or Path, optional
        The folder (e.g. ``<session>/features``).
    dtype : {"float32", "float16", "bfloat16"}, optional
        How a new folder stores features (:class:`DiskFeatures`). float32 (the model's dtype)
        by default: a resumed session then gives exactly the masks of an uninterrupted one.
    budget_bytes, disk_budget_bytes : int
        Memory and disk the features may take.

    Raises
    ------
    FeatureCacheError
        If ``path`` exists and is not a feature cache.
    """
    identity = feature_identity(predictor, frames)
    disk = None if path is None else DiskFeatures(path, identity, dtype=dtype, budget_bytes=disk_budget_bytes)
    extra = []
    shared = shared_folder(identity)
    if shared.exists() and (path is None or shared.resolve() != Path(path).resolve()):
        try:
            candidate = DiskFeatures(shared, identity, read_only=True)
        except FeatureCacheError as exc:
            logger.warning("%s", exc)
        else:
            if candidate.usable and not candidate.refused:
                extra.append(candidate)
    cache = FeatureCache(budget_bytes, disk=disk, extra=extra)
    cache.identity = identity  # computed above: a tracker given these frames does not read them again
    cache._checked.append((predictor, frames))
    return cache
