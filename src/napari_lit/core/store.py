"""Label store: masks written frame by frame into a zarr array on disk.

The store is a zarr (v3) array, dtype uint32 (0 = background, value = object id), with one
chunk per frame, so writing frame ``t`` touches one chunk file and a napari Labels layer can
view the array directly. Which frames hold results is recorded in the array's attributes
after each write.

The array is (N, Y, X), or the full shape of a 4D+ image (e.g. (T, Z, Y, X)): then the store
writes one (N, Y, X) slice of it, frames along ``frame_axis`` with the other non-spatial axes
held at ``fixed`` (recorded in the attributes, so :meth:`LabelStore.open` finds the slice).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["LabelStore", "SessionWriteError", "saving"]


class SessionWriteError(OSError):
    """Saving to a session folder or label store failed (full disk, read-only, removed).

    ``errno`` is the operating system's; everything saved before the failure stays valid
    and the session can be resumed once the cause is fixed."""


@contextmanager
def saving(path: Union[str, Path]):
    """Turn an operating-system error inside the block into a :class:`SessionWriteError`
    that names ``path``, the cause, and what to do."""
    try:
        yield
    except SessionWriteError:
        raise
    except OSError as exc:
        raise SessionWriteError(
            exc.errno, f"could not save to {path} ({exc.strerror or exc}); everything saved before is "
                       f"intact: free disk space or fix permissions, then resume the session") from exc


class LabelStore:
    """A uint32 zarr label array on disk, written one (Y, X) frame at a time.

    Use :meth:`create` or :meth:`open`.

    Attributes
    ----------
    array : zarr.Array
        The underlying array, (N, Y, X) or the image's full 4D+ shape;
        ``napari.Viewer.add_labels(store.array)`` views it.
    path : Path
    frame_axis : int
        The array axis frames run along.
    fixed : dict of int to int
        The other non-spatial array axes and the index the store's slice holds them at.
    """

    def __init__(self, array, path: Path, frame_axis: int = 0, fixed: Optional[Dict[int, int]] = None):
        self.array = array
        self.path = Path(path)
        self.frame_axis = int(frame_axis)
        self.fixed = {int(k): int(v) for k, v in (fixed or {}).items()}

    def _key(self, frame_idx: int):
        """Index of frame ``frame_idx`` of the slice in :attr:`array`."""
        if self.array.ndim == 3:
            return int(frame_idx)
        return tuple(int(frame_idx) if a == self.frame_axis else self.fixed[a] for a in range(self.array.ndim - 2))

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: Union[str, Path], shape: Sequence[int], overwrite: bool = False,
               attrs: Optional[dict] = None, frame_axis: int = 0,
               fixed: Optional[Dict[int, int]] = None) -> "LabelStore":
        """Create an empty store.

        Parameters
        ----------
        path : str or Path
            A new ``.zarr`` directory.
        shape : (N, Y, X), or the full (..., Y, X) shape of a 4D+ image
        frame_axis : int
            For a 4D+ shape: the axis frames run along.
        fixed : dict of int to int, optional
            For a 4D+ shape: every other non-spatial axis and the index the store writes at.
        overwrite : bool
            Replace an existing store at ``path``.
        attrs : dict, optional
            Extra metadata (JSON-serialisable), e.g. the model and input.

        Raises
        ------
        FileExistsError
            If ``path`` exists and ``overwrite`` is False.
        ValueError
            If ``shape`` is not three or more positive integers, or (4D+) ``frame_axis`` and
            ``fixed`` do not name each non-spatial axis once, within its size.
        PermissionError
            If ``path`` cannot be written.
        """
        import zarr

        shape = tuple(int(s) for s in shape)
        if len(shape) < 3 or min(shape) < 1:
            raise ValueError(f"label store shape must be (N, Y, X) or (..., Y, X) with positive sizes; got {shape}")
        fixed = {int(k): int(v) for k, v in (fixed or {}).items()}
        nonspatial = set(range(len(shape) - 2))
        if len(shape) > 3 and (frame_axis not in nonspatial or set(fixed) | {frame_axis} != nonspatial
                               or frame_axis in fixed or any(not 0 <= v < shape[a] for a, v in fixed.items())):
            raise ValueError(f"a {len(shape)}D label store needs the frame axis and an index on every other "
                             f"non-spatial axis; got frame_axis {frame_axis}, fixed {fixed} for shape {shape}")
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists (use overwrite to replace it)")
        array = zarr.open_array(
            str(path), mode="w", shape=shape, chunks=(1,) * (len(shape) - 2) + shape[-2:], dtype="uint32",
            fill_value=0, zarr_format=3,
        )
        meta = {"frames_done": [], **(attrs or {})}
        if len(shape) > 3:
            meta["slice"] = {"frame_axis": int(frame_axis), "fixed": {str(k): v for k, v in fixed.items()}}
        array.attrs.update({"napari_lit": meta})
        return cls(array, path, frame_axis, fixed)

    @classmethod
    def open(cls, path: Union[str, Path], mode: str = "r+") -> "LabelStore":
        """Open an existing store at ``path`` (``mode``: ``r`` read-only, ``r+`` read-write).

        Raises
        ------
        FileNotFoundError
            If there is no zarr array at ``path``.
        ValueError
            If the array is not (N, Y, X) uint32.
        """
        import zarr

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no label store at {path}")
        array = zarr.open_array(str(path), mode=mode)
        store = cls.from_array(array, path)
        if array.dtype != np.uint32 or array.ndim < 3 or (array.ndim > 3 and not store.fixed):
            raise ValueError(f"{path} is not a label store: expected (N, Y, X) uint32 (or a 4D+ one with its "
                             f"slice recorded), got {array.shape} {array.dtype}")
        return store

    @classmethod
    def from_array(cls, array, path: Union[str, Path]) -> "LabelStore":
        """The store of an open zarr ``array`` (at ``path``): on the slice its attributes
        record (:meth:`create` with ``frame_axis``/``fixed``), else frames along axis 0. Not
        validated (:meth:`open` validates)."""
        sl = dict(array.attrs.get("napari_lit", {})).get("slice")
        if sl:
            return cls(array, Path(path), sl["frame_axis"], {int(k): v for k, v in sl["fixed"].items()})
        return cls(array, Path(path))

    # ------------------------------------------------------------------ access
    @property
    def shape(self) -> Tuple[int, int, int]:
        """(N, Y, X) of the frames the store writes (a slice of a 4D+ array)."""
        shape = tuple(int(s) for s in self.array.shape)
        return (shape[self.frame_axis],) + shape[-2:]

    @property
    def frames_done(self) -> Tuple[int, ...]:
        """Frames written so far, sorted."""
        return tuple(sorted(self.array.attrs.get("napari_lit", {}).get("frames_done", [])))

    def write_frame(self, frame_idx: int, labels: np.ndarray) -> None:
        """Write one frame's label image (replaces what was there).

        Parameters
        ----------
        frame_idx : int
        labels : (Y, X) integer ndarray
            Object ids, 0 = background.

        Raises
        ------
        IndexError
            If ``frame_idx`` is outside 0..N-1.
        ValueError
            If ``labels`` has another shape than (Y, X) or negative values.
        SessionWriteError
            If the disk refuses the write (full, read-only); frames written before stay.
        """
        n, h, w = self.shape
        if not 0 <= int(frame_idx) < n:
            raise IndexError(f"frame {frame_idx} is outside the store's frames 0..{n - 1}")
        labels = np.asarray(labels)
        if labels.shape != (h, w):
            raise ValueError(f"labels must be shaped {(h, w)}; got {labels.shape}")
        if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
            raise ValueError("labels must be >= 0")
        with saving(self.path):
            self.array[self._key(frame_idx)] = labels.astype(np.uint32, copy=False)
            self._mark_done([int(frame_idx)])

    def write_object(self, frame_idx: int, obj_id: int, mask: np.ndarray) -> None:
        """Set the (Y, X) bool ``mask`` of object ``obj_id`` on frame ``frame_idx``.

        Other objects' pixels stay as they are, except where ``mask`` covers them; pixels of
        ``obj_id`` outside ``mask`` become background.
        """
        current = self.read_frame(frame_idx)
        current[current == obj_id] = 0
        current[np.asarray(mask, bool)] = obj_id
        self.write_frame(frame_idx, current)

    def clear_frame(self, frame_idx: int) -> None:
        """Make frame ``frame_idx`` background again and no longer written (used on resume
        for a frame whose write the session log does not vouch for)."""
        with saving(self.path):
            self.array[self._key(frame_idx)] = 0
            meta = dict(self.array.attrs.get("napari_lit", {}))
            meta["frames_done"] = sorted(set(meta.get("frames_done", [])) - {int(frame_idx)})
            self.array.attrs["napari_lit"] = meta

    def __getitem__(self, frame_idx: int) -> np.ndarray:
        """The store reads as its (N, Y, X) frames (a slice of a 4D+ array): ``store[t]`` is
        :meth:`read_frame` (for :func:`napari_lit.io.tracks.track_graph` and the exports)."""
        if not isinstance(frame_idx, (int, np.integer)):
            raise TypeError(f"a label store is read one frame at a time (an int); got {frame_idx!r}")
        if not -self.shape[0] <= frame_idx < self.shape[0]:
            raise IndexError(f"frame {frame_idx} is out of range for {self.shape[0]} frames")
        return self.read_frame(int(frame_idx) % self.shape[0])

    def slice_axes(self) -> Tuple[int, int, int]:
        """The array axes of the store's (N, Y, X) frames: (frame axis, Y, X)."""
        n = self.array.ndim
        return (self.frame_axis if n > 3 else 0, n - 2, n - 1)

    def read_frame(self, frame_idx: int) -> np.ndarray:
        """(Y, X) uint32 labels of frame ``frame_idx``."""
        return np.asarray(self.array[self._key(frame_idx)])

    def _mark_done(self, frames: Iterable[int]) -> None:
        meta = dict(self.array.attrs.get("napari_lit", {}))
        done = set(meta.get("frames_done", []))
        new = set(frames) - done
        if new:
            meta["frames_done"] = sorted(done | new)
            self.array.attrs["napari_lit"] = meta
