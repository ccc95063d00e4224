"""Which part of an image layer a session segments, and how the session's layers line up.

A session tracks one (N, Y, X) stack: the frames along the chosen axis of the image layer.
For an image with more non-spatial axes (T, Z, Y, X; T, C, Y, X ...) the other axes are held
at the viewer's position when the session starts. The session's layers then have the image
layer's number of dimensions, with size 1 (and a translate) on the held axes, so they line up
with the image and show only on that slice. The labels layer stays a view of the zarr label
store on disk (:class:`ExpandedArray`), never a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Sequence, Tuple

import numpy as np

__all__ = ["StackView", "ExpandedArray"]


class ExpandedArray:
    """An array with size-1 axes inserted, reading and writing through to ``array``.

    For napari's Labels layer: basic indexing (ints and slices, as napari slices for display)
    and pure integer-array indexing (as napari paints and fills) both work, for reading and
    for writing; nothing is copied.

    Parameters
    ----------
    array : array-like (zarr.Array, numpy)
        The (N, Y, X) array.
    positions : sequence of int
        Axes of the expanded array that have size 1 (in the expanded numbering).
    """

    def __init__(self, array, positions: Sequence[int]):
        self.array = array
        self.positions = tuple(sorted(int(p) for p in positions))
        self.ndim = array.ndim + len(self.positions)
        shape = list(array.shape)
        for p in self.positions:
            shape.insert(p, 1)
        self.shape = tuple(shape)
        self.dtype = array.dtype

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ExpandedArray(shape={self.shape}, dtype={self.dtype}, of {self.array!r})"

    def _normalise(self, key) -> tuple:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices ({len(key)}) for an array of {self.ndim} dimensions")
        return key + (slice(None),) * (self.ndim - len(key))

    @staticmethod
    def _fancy(k) -> bool:
        return isinstance(k, (np.ndarray, list)) and not isinstance(k, str)

    def _split(self, key):
        """(inner key, output axes to re-insert, output ndim); the last two are None for
        fancy indexing."""
        key = self._normalise(key)
        fancy = any(self._fancy(k) for k in key)
        inner, reinsert, out_axis = [], [], 0
        for ax, k in enumerate(key):
            if ax in self.positions:
                if self._fancy(k):
                    if np.any(np.asarray(k) != 0):
                        raise IndexError(f"index out of range on axis {ax} of size 1")
                elif isinstance(k, slice):
                    if len(range(1)[k]) != 1:
                        raise IndexError(f"empty selection on axis {ax} of size 1 is not supported")
                    reinsert.append(out_axis)
                    out_axis += 1
                elif int(k) not in (0, -1):
                    raise IndexError(f"index {k} is out of range on axis {ax} of size 1")
                continue
            inner.append(np.asarray(k) if self._fancy(k) else k)
            if isinstance(k, slice):
                out_axis += 1
        if fancy:
            return tuple(inner), None, None
        return tuple(inner), reinsert, out_axis

    def __getitem__(self, key):
        inner, reinsert, _ = self._split(key)
        out = np.asarray(self.array[inner])
        for ax in reinsert or ():
            out = np.expand_dims(out, ax)
        return out

    def __setitem__(self, key, value):
        inner, reinsert, n_out = self._split(key)
        value = np.asarray(value)
        if reinsert and value.ndim == n_out:  # the value has the size-1 axes too: drop them
            value = np.squeeze(value, axis=tuple(reinsert))
        self.array[inner] = value

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out.astype(dtype) if dtype is not None else out


@dataclass
class StackView:
    """The stack a session tracks inside an image layer.

    Parameters
    ----------
    ndim : int
        The image layer's dimensions (without the RGB channel axis).
    axis : int
        The layer axis propagated along (time or z).
    fixed : dict of int to int
        The other non-spatial layer axes and the index each is held at.
    """

    ndim: int
    axis: int
    fixed: Dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_layer(cls, layer, axis: int, point: Sequence[float]) -> "StackView":
        """For image ``layer`` propagated along layer axis ``axis``; the other non-spatial
        axes are held where the viewer's ``point`` (world coordinates) is.

        Raises
        ------
        ValueError
            If the layer has no non-spatial axis or ``axis`` is not one of them.
        """
        ndim = layer.ndim
        nonspatial = list(range(ndim - 2))
        if not nonspatial:
            raise ValueError(
                f"{layer.name!r} is a single 2D image (shape {tuple(layer.data.shape)}); napari-lit "
                f"propagates through a stack: frames along time or z, then Y and X"
            )
        if axis not in nonspatial:
            raise ValueError(f"axis {axis} is not a non-spatial axis of {layer.name!r} (one of {nonspatial})")
        shape = layer.level_shapes[0] if layer.multiscale else layer.data.shape
        data_point = np.asarray(layer.world_to_data(point), float)
        fixed = {a: int(np.clip(np.round(data_point[a]), 0, shape[a] - 1)) for a in nonspatial if a != axis}
        return cls(ndim, axis, fixed)

    @property
    def held(self) -> Tuple[int, ...]:
        """Layer axes held at one index, sorted."""
        return tuple(sorted(self.fixed))

    def select(self, data):
        """The (N, Y, X[, C]) stack of ``data`` (the layer's array): a numpy view, or a lazy
        dask array for anything else (zarr, dask, TIFF-backed arrays); no frame is read."""
        if not self.fixed:
            return data
        key = tuple(self.fixed.get(a, slice(None)) for a in range(self.ndim - 2))
        if isinstance(data, np.ndarray):
            return data[key]
        import dask.array as da

        arr = data if isinstance(data, da.Array) else da.from_array(data, chunks=data.chunks if hasattr(data, "chunks") and data.chunks else "auto")
        return arr[key]

    def expand(self, array):
        """A (N, Y, X) array seen with the layer's dimensions (size 1 on the held axes):
        numpy arrays get a view, anything else an :class:`ExpandedArray`."""
        if not self.fixed:
            return array
        if isinstance(array, np.ndarray):
            return np.expand_dims(array, self.held)
        return ExpandedArray(array, self.held)

    def translate(self, layer) -> Tuple[float, ...]:
        """The session layers' translate: the image's, moved to the held index on held axes."""
        t = np.asarray(layer.translate, float).copy()
        s = np.asarray(layer.scale, float)
        for a, i in self.fixed.items():
            t[a] += i * s[a]
        return tuple(t)

    def frame(self, coords) -> np.ndarray:
        """Frame index (along the propagated axis) of session-layer data coordinates (..., ndim)."""
        return np.round(np.asarray(coords)[..., self.axis]).astype(int)

    def yx(self, coords) -> np.ndarray:
        """(..., 2) y, x of session-layer data coordinates."""
        return np.asarray(coords)[..., -2:]

    def expand_points(self, points) -> np.ndarray:
        """(M, ndim) session-layer data coordinates of (M, 3) ``[frame, y, x]`` rows (0 on
        the held axes, as :meth:`coords`)."""
        points = np.asarray(points, float).reshape(-1, 3)
        out = np.zeros((len(points), self.ndim))
        out[:, self.axis], out[:, -2:] = points[:, 0], points[:, 1:]
        return out

    def coords(self, frame: int, yx) -> np.ndarray:
        """(ndim,) session-layer data coordinates of pixel ``yx`` on ``frame`` (the inverse
        of :meth:`frame` and :meth:`yx`; 0 on the held axes)."""
        out = np.zeros(self.ndim)
        out[self.axis], out[-2:] = frame, yx
        return out
