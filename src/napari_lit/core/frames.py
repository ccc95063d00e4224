"""Frame source: one normalised model input at a time from a (N, Y, X[, C]) stack.

The stack may be a numpy array, a dask array, a zarr array, a memory-mapped TIFF or a lazy
frame folder (anything with ``shape``, ``dtype`` and ``__getitem__`` along the first axis).
Frames are read, normalised and resized on demand and only a few recent ones are cached;
nothing is written to disk and the normalised stack is never held whole.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Tuple, Union

import numpy as np

__all__ = ["FrameSource", "normalise_frame", "frame_limits", "apply_limits", "check_window", "IMAGENET_MEAN", "IMAGENET_STD"]

#: Normalisation sam2's loaders apply after scaling to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ContrastLimits = Union[str, Tuple[float, float]]

#: Smallest frame side accepted (px): anything smaller is almost surely a mixed-up axis order.
MIN_FRAME_SIZE = 16


def check_window(window, frame_shape) -> Tuple[int, int, int, int]:
    """Validate a window of a frame.

    Parameters
    ----------
    window : (y0, x0, y1, x1) array-like of int
        Half-open pixel box ``[y0:y1, x0:x1]``.
    frame_shape : (Y, X)

    Returns
    -------
    (y0, x0, y1, x1) : tuple of int

    Raises
    ------
    ValueError
        If it is not 4 integers, is empty, or does not lie inside the frame.
    """
    try:
        box = tuple(int(v) for v in np.asarray(window).ravel())
    except (TypeError, ValueError):
        raise ValueError(f"a window is (y0, x0, y1, x1) in pixels; got {window!r}") from None
    if len(box) != 4 or np.any(np.asarray(window, dtype=float).ravel() != np.asarray(box)):
        raise ValueError(f"a window is 4 integer pixel coordinates (y0, x0, y1, x1); got {window!r}")
    y0, x0, y1, x1 = box
    h, w = int(frame_shape[0]), int(frame_shape[1])
    if not (y0 < y1 and x0 < x1):
        raise ValueError(f"window {list(box)} is empty: expected y0 < y1 and x0 < x1")
    if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
        raise ValueError(f"window {list(box)} is not inside the {h} x {w} frame (expected 0 <= y0 < y1 <= {h}, "
                         f"0 <= x0 < x1 <= {w})")
    return box


def _check_stack(data) -> None:
    shape = getattr(data, "shape", None)
    if shape is None or not hasattr(data, "__getitem__"):
        raise TypeError(
            f"expected an array-like stack with .shape and indexing (numpy, dask, zarr); "
            f"got {type(data).__name__}"
        )
    if len(shape) not in (3, 4):
        raise ValueError(
            f"expected a stack of frames shaped (N, Y, X) or (N, Y, X, C); got {len(shape)} "
            f"dimensions {tuple(shape)}. A single 2D image needs a leading frame axis; a 4D "
            f"(T, Z, Y, X) stack needs one axis chosen."
        )
    if any(int(s) == 0 for s in shape):
        raise ValueError(f"the stack is empty: shape {tuple(shape)}")
    if len(shape) == 4 and int(shape[3]) not in (1, 2, 3, 4):
        raise ValueError(
            f"expected (N, Y, X, C) with C in 1..4 channels last; got shape {tuple(shape)}. "
            f"Is the channel axis elsewhere?"
        )
    if min(int(shape[1]), int(shape[2])) < MIN_FRAME_SIZE:
        raise ValueError(
            f"frames of {int(shape[1])} x {int(shape[2])} px (stack shape {tuple(shape)}) are too small to "
            f"segment (at least {MIN_FRAME_SIZE} px a side); is the axis order (N, Y, X[, C])? A (Y, X, N) "
            f"stack needs its frame axis moved first"
        )
    kind = np.dtype(data.dtype).kind
    if kind not in "buif":
        raise TypeError(f"expected a numeric or boolean image; got dtype {data.dtype}")


def normalise_frame(
    frame: np.ndarray,
    contrast: ContrastLimits = "auto",
    percentiles: Tuple[float, float] = (0.5, 99.8),
    rgb: bool = True,
) -> np.ndarray:
    """Map one frame to float32 RGB in [0, 1].

    Parameters
    ----------
    frame : (Y, X) or (Y, X, C) ndarray
        Any numeric or bool dtype; C in 1..4 (a 4th channel, e.g. alpha, is dropped;
        2 channels are shown as red/green).
    contrast : {"auto", "percentile", "range"} or (float, float)
        ``percentile``: robust stretch between the given percentiles of the frame's finite
        values (for 8-/16-bit and float microscopy); ``range``: the dtype's full range
        (uint8 -> /255); a tuple: fixed limits. ``auto`` uses ``range`` for 8-bit RGB
        (natural images) and ``percentile`` otherwise.
    percentiles : (float, float)
        Lower and upper percentile for ``percentile``.
    rgb : bool
        Return 3 channels; with False, a grey frame stays (Y, X) and 2 channels stay 2 (what
        :class:`FrameSource` resizes before making RGB: cheaper on large frames, same values).

    Returns
    -------
    (Y, X, 3) float32 ndarray
        Values in [0, 1]; NaN and infinite pixels become 0; a constant frame becomes all 0.

    Raises
    ------
    ValueError
        If the frame is not 2D or 3D channels-last, or ``contrast`` is unknown.
    """
    frame = _check_frame(frame)
    lo, hi = frame_limits(frame, contrast, percentiles)
    return apply_limits(frame, lo, hi, rgb=rgb)


def _check_frame(frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[-1] == 1:
        frame = frame[..., 0]
    if frame.ndim not in (2, 3):
        raise ValueError(f"expected a (Y, X) or (Y, X, C) frame, got shape {frame.shape}")
    if frame.ndim == 3 and frame.shape[-1] == 4:
        frame = frame[..., :3]
    return frame


def frame_limits(frame, contrast: ContrastLimits = "auto",
                 percentiles: Tuple[float, float] = (0.5, 99.8)) -> Tuple[float, float]:
    """The intensities :func:`normalise_frame` maps to 0 and 1 for one frame.

    Parameters
    ----------
    frame : (Y, X) or (Y, X, C) ndarray
    contrast, percentiles
        As for :func:`normalise_frame`.

    Returns
    -------
    (lo, hi) : (float, float)
        ``hi <= lo`` means a constant frame (it becomes all 0); a frame with no finite
        value gives (0, 0).

    Raises
    ------
    ValueError
        If ``contrast`` is unknown.
    """
    frame = _check_frame(frame)
    if isinstance(contrast, str) and contrast == "auto":
        rgb8 = frame.ndim == 3 and frame.dtype == np.uint8
        contrast = "range" if rgb8 else "percentile"
    if frame.dtype == bool:
        return 0.0, 1.0
    if isinstance(contrast, str) and contrast == "range":
        if np.issubdtype(frame.dtype, np.integer):
            info = np.iinfo(frame.dtype)
            return float(max(info.min, 0)), float(info.max)
        return 0.0, 1.0
    if isinstance(contrast, str) and contrast == "percentile":
        x = frame.astype(np.float32)
        finite = x[np.isfinite(x)]
        if finite.size == 0:
            return 0.0, 0.0
        if finite.size > 1_000_000:  # a strided sample is enough for percentiles
            finite = finite[:: finite.size // 1_000_000 + 1]
        lo, hi = (float(v) for v in np.percentile(finite, percentiles))
        return lo, hi
    if isinstance(contrast, (tuple, list)) and len(contrast) == 2:
        return float(contrast[0]), float(contrast[1])
    raise ValueError(f"contrast must be 'auto', 'percentile', 'range' or (lo, hi); got {contrast!r}")


def apply_limits(frame, lo: float, hi: float, rgb: bool = True) -> np.ndarray:
    """Map a frame (or a part of one) to float32 in [0, 1] between fixed limits, as
    :func:`normalise_frame` does with the limits of :func:`frame_limits`.

    Parameters
    ----------
    frame : (Y, X) or (Y, X, C) ndarray
    lo, hi : float
        The intensities that become 0 and 1; ``hi <= lo`` gives all 0.
    rgb : bool
        As for :func:`normalise_frame`.

    Returns
    -------
    (Y, X, 3) (or, without ``rgb``, (Y, X[, C])) float32 ndarray
        NaN -> 0, +inf -> 1, -inf -> 0.
    """
    frame = _check_frame(frame)
    x = frame.astype(np.float32)
    if hi <= lo:
        x = np.zeros_like(x)
    else:
        x = (x - lo) / (hi - lo)
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(x, 0.0, 1.0, out=x)
    return _to_rgb(x) if rgb else x


def _to_rgb(x):
    """(Y, X) or (Y, X, 2|3) ndarray -> (Y, X, 3) float32 (grey repeated; 2 channels as
    red/green). :meth:`FrameSource._model_input` does the same on the resized tensor."""
    if x.ndim == 2:
        return np.ascontiguousarray(np.repeat(x[..., None], 3, axis=-1), dtype=np.float32)
    if x.shape[-1] == 2:
        return np.ascontiguousarray(np.concatenate([x, np.zeros_like(x[..., :1])], axis=-1), dtype=np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


class FrameSource:
    """Lazy, normalised model inputs from a stack of frames.

    Parameters
    ----------
    data : array-like, (N, Y, X) or (N, Y, X, C)
        numpy, dask or zarr array, memory-mapped TIFF or lazy frame folder. N is time or z.
    image_size : int
        Side of the square model input in pixels (SAM2 resizes frames to a square).
    contrast : see :func:`normalise_frame`
    cache_size : int
        How many model inputs to keep (most recently used).
    lowres : array-like, (N, y, x) or (N, y, x, C), optional
        The same frames at a lower resolution (an OME-Zarr pyramid level, see
        :func:`napari_lit.io.ngff.choose_level`): model inputs are read from it, which reads
        far less than the full frames; :attr:`frame_shape` (and so the masks) stay at the
        full resolution of ``data``.
    prefetch : int
        Read and normalise this many frames ahead (in the direction frames are being asked
        for) in a background thread; 0 (default) reads each frame when asked. Prefetched
        inputs count against ``cache_size``, which is raised to at least ``prefetch + 2``.
        Meant for slow storage (network drives, object stores): on this project's 2-core
        machine with local zarr it gains nothing (11.2 vs 11.7 frames/s, 1024 px frames),
        as reading competes with the model for the same cores.
    levels : sequence of array-like, optional
        Every lower-resolution level of the image's pyramid (finest first, e.g. all OME-Zarr
        levels after 0), for :meth:`window_input`: a window is read from the coarsest level
        that still gives the model at least its input size across the window.

    Raises
    ------
    TypeError
        If ``data`` is not array-like or not numeric.
    ValueError
        If ``data`` is not 3D/4D or is empty, or ``lowres`` or a level does not match it
        (frames, channels, no larger).

    Notes
    -----
    Indexing ``source[i]`` returns the model input of frame ``i``: a (3, S, S) float32
    torch tensor scaled to [0, 1] and normalised with the ImageNet mean/std, exactly what
    sam2's own frame loaders produce. ``len(source)`` is N. This is the object sam2's video
    predictor reads frames from. :meth:`window_input` gives the same for a window of a frame
    (object-centred zoom, :mod:`napari_lit.core.zoom`); a frame is read and normalised once
    for the whole-frame input and all its windows (the normalised frame is cached).
    """

    def __init__(self, data, image_size: int = 1024, contrast: ContrastLimits = "auto",
                 cache_size: int = 4, lowres=None, prefetch: int = 0, levels=()):
        _check_stack(data)
        for low in ([lowres] if lowres is not None else []) + list(levels):
            _check_stack(low)
            full, small = tuple(data.shape), tuple(low.shape)
            if small[0] != full[0] or small[3:] != full[3:] or small[1] > full[1] or small[2] > full[2]:
                raise ValueError(f"the lower-resolution frames {small} do not match the stack {full}: same "
                                 f"frames and channels, no larger in Y and X expected")
        import threading

        self.data = data
        self.lowres = lowres
        self.levels = tuple(levels)
        self._normalised_cache: "OrderedDict[int, np.ndarray]" = OrderedDict()  # frame -> normalised level 0
        self._limits_cache: "OrderedDict[int, Tuple[float, float]]" = OrderedDict()
        self.prefetch = max(0, int(prefetch))
        self._lock = threading.Lock()
        self._pending: dict = {}  # frame -> Future of its model input
        self._pool = None
        self._last: Optional[int] = None
        self.image_size = int(image_size)
        self.contrast = contrast
        self.cache_size = max(1, int(cache_size), int(prefetch) + 2)
        self._cache: "OrderedDict[int, object]" = OrderedDict()

    @property
    def n_frames(self) -> int:
        """Number of frames N."""
        return int(self.data.shape[0])

    @property
    def frame_shape(self) -> Tuple[int, int]:
        """(Y, X) of the input frames in pixels."""
        return int(self.data.shape[1]), int(self.data.shape[2])

    def __len__(self) -> int:
        return self.n_frames

    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"frame index must be an integer, got {type(index).__name__}")
        index = int(index)
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} does not exist: the stack has frames 0..{self.n_frames - 1}")
        return index

    def raw(self, index: int) -> np.ndarray:
        """Frame ``index`` as stored, (Y, X) or (Y, X, C) ndarray (computes dask/zarr)."""
        index = self._check_index(index)
        return np.asarray(self.data[index])

    def normalised(self, index: int) -> np.ndarray:
        """Frame ``index`` at input resolution as (Y, X, 3) float32 in [0, 1]."""
        return normalise_frame(self.raw(index), self.contrast)

    def __getitem__(self, index: int):
        index = self._check_index(index)
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                tensor = self._cache[index]
            else:
                tensor = None
            pending = self._pending.pop(index, None)
        if tensor is None:
            tensor = pending.result() if pending is not None else self._model_input(index)
            self._remember(index, tensor)
        self._prefetch_after(index)
        return tensor

    def _remember(self, index: int, tensor) -> None:
        with self._lock:
            self._cache[index] = tensor
            self._cache.move_to_end(index)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _prefetch_after(self, index: int) -> None:
        """Start reading the next ``prefetch`` frames in the direction of the last two
        requests, in a background thread (their I/O and normalisation then overlap the
        model's work on this frame)."""
        if not self.prefetch:
            self._last = index
            return
        step = 1 if self._last is None or index >= self._last else -1
        self._last = index
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-lit-prefetch")
        with self._lock:
            for k in range(1, self.prefetch + 1):
                j = index + k * step
                if 0 <= j < self.n_frames and j not in self._cache and j not in self._pending:
                    self._pending[j] = self._pool.submit(self._model_input, j)
            for j in [j for j in self._pending if abs(j - index) > 2 * self.prefetch]:
                self._pending.pop(j).cancel()  # the reader went elsewhere

    def close(self) -> None:
        """Stop the prefetch thread (if any); the source stays usable."""
        with self._lock:
            for f in self._pending.values():
                f.cancel()
            self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _cached(self, cache: OrderedDict, index: int, compute, size: int = 2):
        with self._lock:
            if index in cache:
                cache.move_to_end(index)
                return cache[index]
        value = compute(index)
        with self._lock:
            cache[index] = value
            while len(cache) > size:
                cache.popitem(last=False)
        return value

    def _normalised_full(self, index: int) -> np.ndarray:
        """Frame ``index`` normalised at full resolution, (Y, X) or (Y, X, C) float32, kept
        for the last two frames (the whole-frame input and every window read it)."""
        return self._cached(self._normalised_cache, index,
                            lambda i: normalise_frame(self.raw(i), self.contrast, rgb=False))

    def limits(self, index: int) -> Tuple[float, float]:
        """The contrast limits of frame ``index`` (:func:`frame_limits`): of the lower-resolution
        frame the whole-frame input is read from when there is one, so that windows and the
        whole frame are normalised alike."""
        index = self._check_index(index)
        frame = (lambda i: self.raw(i)) if self.lowres is None else (lambda i: np.asarray(self.lowres[i]))
        return self._cached(self._limits_cache, index, lambda i: frame_limits(frame(i), self.contrast), size=8)

    def window_input(self, index: int, window) -> "object":
        """The model input of one window of frame ``index``.

        Parameters
        ----------
        index : int
        window : (y0, x0, y1, x1) ints
            Pixels ``[y0:y1, x0:x1]`` of the full-resolution frame; inside the frame.

        Returns
        -------
        (3, S, S) float32 torch tensor
            The window resized to the model's input (antialiased when shrunk) and normalised
            as :meth:`__getitem__` normalises the whole frame (the frame's own contrast limits,
            :meth:`limits`). Read from the coarsest pyramid level (``levels``) that has at
            least S pixels across the window; its crop is rounded outward to whole pixels of
            that level.

        Raises
        ------
        IndexError
            If the frame does not exist.
        ValueError
            If the window is empty or not inside the frame.
        """
        index = self._check_index(index)
        y0, x0, y1, x1 = check_window(window, self.frame_shape)
        h, w = self.frame_shape
        level, factor = None, 1.0
        for arr in self.levels:  # finest first: keep the coarsest that still has S px across
            f = min(h / int(arr.shape[1]), w / int(arr.shape[2]))
            if min(y1 - y0, x1 - x0) / f >= self.image_size and f > factor:
                level, factor = arr, f
        if level is None and self.lowres is None:
            x = self._normalised_full(index)[y0:y1, x0:x1]
        else:
            lo, hi = self.limits(index)
            if level is None:
                crop = np.asarray(self.data[index, y0:y1, x0:x1])
            else:
                fy, fx = h / int(level.shape[1]), w / int(level.shape[2])
                ys = slice(int(y0 // fy), max(int(-(-y1 // fy)), int(y0 // fy) + 1))
                xs = slice(int(x0 // fx), max(int(-(-x1 // fx)), int(x0 // fx) + 1))
                crop = np.asarray(level[index, ys, xs])
            x = apply_limits(crop, lo, hi, rgb=False)
        return self._to_model_input(x)

    def _model_input(self, index: int):
        if self.lowres is None:
            return self._to_model_input(self._normalised_full(index))
        return self._to_model_input(normalise_frame(np.asarray(self.lowres[index]), self.contrast, rgb=False))

    def _to_model_input(self, x: np.ndarray):
        """A normalised (Y, X) or (Y, X, C) frame (or window) -> (3, S, S) model input."""
        import torch
        import torch.nn.functional as F

        # resized before grey becomes 3 channels (resizing is per channel: the same values)
        x = torch.from_numpy(np.ascontiguousarray(x))
        x = (x[None] if x.ndim == 2 else x.permute(2, 0, 1))[None]
        s = self.image_size
        if x.shape[-2:] != (s, s):
            down = x.shape[-1] > s or x.shape[-2] > s
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=down)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 2:
            x = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return ((x - mean) / std)[0].contiguous()
