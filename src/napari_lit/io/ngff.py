"""OME-Zarr (NGFF) images in, NGFF label images out, through the ``ome-zarr`` library.

An OME-Zarr image is a pyramid: level 0 at full resolution, each next level coarser. SAM2
sees every frame at its own input size (256 px for lit-tiny, 1024 px for SAM2.1), so model
inputs are read from the coarsest level that still has at least that many pixels a side
(:func:`choose_level`), which reads a fraction of the data; the masks come out at full
resolution (:class:`~napari_lit.core.frames.FrameSource` ``lowres``). Labels go into the
image's ``labels/`` group with the image's axes and pyramid (:class:`NgffLabelStore`), where
napari and other NGFF viewers find them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.store import LabelStore

__all__ = ["OmeImage", "is_ome_zarr", "open_ome_zarr", "choose_level", "frame_layout", "frames_of", "levels_of",
           "NgffLabelStore"]


@dataclass
class OmeImage:
    """An opened OME-Zarr image.

    Attributes
    ----------
    path : Path
        The image group.
    levels : list of dask.array.Array
        The pyramid, level 0 (full resolution) first; lazy.
    axes : list of str
        Axis names in array order, e.g. ``["t", "y", "x"]`` or ``["t", "c", "z", "y", "x"]``.
    transforms : list of list of dict
        Each level's ``coordinateTransformations`` (scale, translation) as in the metadata.
    """

    path: Path
    levels: List
    axes: List[str]
    transforms: List[List[dict]]

    @property
    def shapes(self) -> List[Tuple[int, ...]]:
        """Each level's shape."""
        return [tuple(int(s) for s in level.shape) for level in self.levels]


def is_ome_zarr(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a zarr group with OME multiscales metadata (NGFF 0.4 or 0.5)."""
    import json

    path = Path(path)
    for name in ("zarr.json", ".zattrs"):
        f = path / name
        if f.is_file():
            try:
                attrs = json.loads(f.read_text())
            except ValueError:
                return False
            return "multiscales" in ome_attributes(attrs.get("attributes", attrs))
    return False


def open_ome_zarr(path: Union[str, Path]) -> OmeImage:
    """Open an OME-Zarr image lazily (all pyramid levels).

    Parameters
    ----------
    path : str or Path
        The image group (``image.zarr``).

    Returns
    -------
    OmeImage

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it holds no OME-Zarr multiscale image.
    """
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    location = parse_url(str(path), mode="r")
    if location is None or not is_ome_zarr(path):
        raise ValueError(f"{path} is not an OME-Zarr image (no multiscales metadata)")
    for node in Reader(location)():
        if any(isinstance(spec, Multiscales) for spec in node.specs) and node.data:
            meta = node.metadata
            axes = [a["name"] if isinstance(a, dict) else str(a) for a in meta.get("axes", [])]
            if not axes:  # NGFF < 0.4: always 5D
                axes = ["t", "c", "z", "y", "x"][-len(node.data[0].shape):]
            transforms = meta.get("coordinateTransformations") or [[] for _ in node.data]
            return OmeImage(path, list(node.data), axes, transforms)
    raise ValueError(f"{path} holds no OME-Zarr multiscale image")


def choose_level(shapes: Sequence[Sequence[int]], image_size: int) -> int:
    """The pyramid level to read model inputs from.

    Parameters
    ----------
    shapes : sequence of shapes
        Each level's shape, level 0 first; the last two axes are Y and X.
    image_size : int
        The model's square input side (px).

    Returns
    -------
    int
        The coarsest level whose Y and X are both at least ``image_size`` (the model sees
        no less detail than from level 0 and far less is read), or 0 when even level 0 is
        smaller.
    """
    best = 0
    for i, shape in enumerate(shapes):
        if min(int(shape[-2]), int(shape[-1])) >= image_size:
            best = i
    return best


def frame_layout(image: OmeImage) -> Tuple[int, Dict[int, int]]:
    """Which axis frames run along and where the other non-spatial axes are held.

    The frame axis is the one t or z axis longer than 1 (or the only t/z axis); every other
    non-spatial axis except the channel axis must have size 1 (held at 0), as in the common
    (t, c, z, y, x) files of a time-lapse (z = 1) or a z-stack (t = 1).

    Returns
    -------
    (frame_axis, fixed) : (int, dict of int to int)
        Array axes; ``fixed`` holds the singleton axes (not the channel axis) at 0.

    Raises
    ------
    ValueError
        If there is no t/z axis, or more than one of them is longer than 1.
    """
    shape = image.shapes[0]
    candidates = [i for i, a in enumerate(image.axes[:-2]) if a != "c"]
    if not candidates:
        raise ValueError(f"{image.path.name} has axes {image.axes}: no t or z axis to propagate along")
    long = [i for i in candidates if shape[i] > 1]
    if len(long) > 1:
        raise ValueError(f"{image.path.name} has axes {image.axes} of sizes {shape}: napari-lit propagates along "
                         f"one axis (t or z); open it in napari and pick one (the widget holds the others)")
    frame_axis = long[0] if long else candidates[0]
    return frame_axis, {i: 0 for i in candidates if i != frame_axis}


def frames_of(image: OmeImage, image_size: int):
    """The (N, Y, X[, C]) stack to segment and the pyramid level to read model inputs from.

    Parameters
    ----------
    image : OmeImage
        See :func:`frame_layout` for the axes it may have.
    image_size : int
        The model's input side (px), for :func:`choose_level`.

    Returns
    -------
    (stack, lowres, level) : (dask array, dask array, int)
        Level 0 and the chosen level, singleton axes dropped and channels moved last;
        ``lowres`` is ``stack`` when the chosen level is 0.

    Raises
    ------
    ValueError
        See :func:`frame_layout`.
    """
    level = choose_level(image.shapes, image_size)
    stack = _stack_of(image, image.levels[0])
    return stack, (_stack_of(image, image.levels[level]) if level else stack), level


def _stack_of(image: OmeImage, arr):
    """One pyramid level as an (N, y, x[, C]) stack: singleton axes dropped, channels last."""
    import dask.array as da

    _, fixed = frame_layout(image)
    key = tuple(fixed.get(i, slice(None)) for i in range(arr.ndim))
    kept = [a for i, a in enumerate(image.axes) if i not in fixed]
    arr = arr[key]
    if "c" in kept:
        arr = da.moveaxis(arr, kept.index("c"), -1)
    return arr


def levels_of(image: OmeImage) -> List:
    """Every pyramid level after level 0 as an (N, y, x[, C]) stack, finest first (for
    :class:`~napari_lit.core.frames.FrameSource`'s ``levels``: each zoom window is read from
    the level it needs). Levels that do not keep all of level 0's frames are left out.

    Raises
    ------
    ValueError
        See :func:`frame_layout`.
    """
    frame_axis, _ = frame_layout(image)
    n = image.shapes[0][frame_axis]
    return [_stack_of(image, arr) for arr, shape in zip(image.levels[1:], image.shapes[1:]) if shape[frame_axis] == n]


class NgffLabelStore(LabelStore):
    """A label image inside an OME-Zarr image's ``labels/`` group, written frame by frame.

    Level 0 has the image's full-resolution shape; the other levels follow the image's
    pyramid (every write also writes the frame, subsampled, to them), and the metadata
    (multiscales with the image's axes and transformations, ``image-label``) is written by
    ``ome-zarr``. The label image has the image's axes with the channel axis of size 1; the
    store writes the (N, Y, X) frames along the image's frame axis (:func:`frame_layout`).

    Use :meth:`create_in`; :meth:`LabelStore.open` on ``image.zarr/labels/NAME/<level 0>``
    opens level 0 like any label store.
    """

    def __init__(self, array, path: Path, pyramid: Sequence = (), frame_axis: int = 0,
                 fixed: Optional[Dict[int, int]] = None):
        super().__init__(array, path, frame_axis, fixed)
        self.pyramid = list(pyramid)  # levels 1.. (zarr arrays)

    @classmethod
    def create_in(cls, image: OmeImage, name: str = "napari-lit", overwrite: bool = False) -> "NgffLabelStore":
        """Create an empty label image ``name`` in ``image``'s ``labels/`` group.

        Parameters
        ----------
        image : OmeImage
        name : str
            The label image's name (a new sub-group of ``labels/``).
        overwrite : bool
            Replace an existing label image of that name.

        Raises
        ------
        ValueError
            If the image has no single frame axis (:func:`frame_layout`).
        FileExistsError
            If the label image exists and ``overwrite`` is False.
        """
        import zarr
        from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

        frame_axis, fixed = frame_layout(image)
        channel = image.axes.index("c") if "c" in image.axes else None
        if channel is not None:
            fixed = {**fixed, channel: 0}
        root = zarr.open_group(str(image.path), mode="r+")
        labels = root.require_group("labels")
        if name in labels:
            if not overwrite:
                raise FileExistsError(f"{image.path}/labels/{name} already exists (pass overwrite to replace it)")
            del labels[name]
            names = [n for n in (ome_attributes(labels).get("labels") or []) if n != name]
            _set_ome_attrs(labels, {"labels": names})
        group = labels.create_group(name)
        datasets, arrays = [], []
        for i, shape in enumerate(image.shapes):
            key = f"s{i}"
            shape = tuple(1 if a == channel else int(v) for a, v in enumerate(shape))  # labels: one channel
            arrays.append(group.create_array(key, shape=shape, chunks=(1,) * (len(shape) - 2) + shape[-2:],
                                             dtype="uint32", fill_value=0))
            datasets.append({"path": key, "coordinateTransformations": image.transforms[i]
                             if i < len(image.transforms) and image.transforms[i] else
                             [{"type": "scale", "scale": [1.0] * len(shape)}]})
        axes = [{"name": a, "type": "time" if a == "t" else "space"} for a in image.axes]
        write_multiscales_metadata(group, datasets, axes=axes, name=name)
        write_label_metadata(labels, name)
        store = cls(arrays[0], Path(image.path) / "labels" / name / "s0", arrays[1:], frame_axis, fixed)
        meta = dict(store.array.attrs.get("napari_lit", {}))
        if len(image.axes) > 3:  # so LabelStore.open finds the slice
            meta["slice"] = {"frame_axis": frame_axis, "fixed": {str(k): v for k, v in fixed.items()}}
        store.array.attrs["napari_lit"] = {"frames_done": [], **meta}
        return store

    def write_frame(self, frame_idx: int, labels: np.ndarray) -> None:
        """Write frame ``frame_idx`` to level 0 and, subsampled, to the coarser levels."""
        super().write_frame(frame_idx, labels)
        self._write_pyramid(frame_idx, np.asarray(labels))

    def clear_frame(self, frame_idx: int) -> None:
        super().clear_frame(frame_idx)
        for level in self.pyramid:
            level[self._level_key(level, frame_idx)] = 0

    def _level_key(self, level, frame_idx: int):
        """Index of frame ``frame_idx`` in a coarser ``level`` (its frame axis may be shorter)."""
        n, n_level = self.shape[0], int(level.shape[self.frame_axis])
        f = min(int(frame_idx) * n_level // n, n_level - 1)
        return tuple(f if a == self.frame_axis else self.fixed.get(a, 0) for a in range(level.ndim - 2))

    def _write_pyramid(self, frame_idx: int, labels: np.ndarray) -> None:
        h, w = labels.shape
        for level in self.pyramid:
            lh, lw = int(level.shape[-2]), int(level.shape[-1])
            # nearest neighbour at the level's pixel centres (labels must not be blended)
            ys = np.minimum(((np.arange(lh) + 0.5) * h / lh).astype(int), h - 1)
            xs = np.minimum(((np.arange(lw) + 0.5) * w / lw).astype(int), w - 1)
            level[self._level_key(level, frame_idx)] = labels[np.ix_(ys, xs)]


def ome_attributes(attrs) -> dict:
    """The OME metadata of a group's attributes (a zarr group or a mapping): under ``ome``
    in NGFF 0.5, at the top level before."""
    attrs = dict(attrs.attrs if hasattr(attrs, "attrs") else attrs)
    return attrs.get("ome", attrs)


def _set_ome_attrs(group, values: dict) -> None:
    if "ome" in group.attrs:
        group.attrs["ome"] = {**group.attrs["ome"], **values}
    else:
        group.attrs.update(values)
