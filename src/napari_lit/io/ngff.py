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
from typing import List, Sequence, Tuple, Union

import numpy as np

from ..core.store import LabelStore

__all__ = ["OmeImage", "is_ome_zarr", "open_ome_zarr", "choose_level", "frames_of", "NgffLabelStore"]


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
            attrs = attrs.get("attributes", attrs)
            return "multiscales" in attrs.get("ome", attrs)
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


def frames_of(image: OmeImage, image_size: int):
    """The (N, Y, X[, C]) stack to segment and the pyramid level to read model inputs from.

    Parameters
    ----------
    image : OmeImage
        With one non-spatial axis (t or z) besides an optional channel axis.
    image_size : int
        The model's input side (px), for :func:`choose_level`.

    Returns
    -------
    (stack, lowres, level) : (dask array, dask array, int)
        Level 0 and the chosen level, channels moved last; ``lowres`` is ``stack`` when
        the chosen level is 0.

    Raises
    ------
    ValueError
        If the image has no frame axis or more than one (t and z: choose one first).
    """
    frame_axes = [a for a in image.axes[:-2] if a != "c"]
    if len(frame_axes) != 1:
        raise ValueError(f"{image.path.name} has axes {image.axes}: napari-lit propagates along one axis (t or z); "
                         f"{'none is there' if not frame_axes else 'pick one in napari (the widget holds the others)'}")
    level = choose_level(image.shapes, image_size)

    def channels_last(arr):
        if "c" in image.axes:
            import dask.array as da

            return da.moveaxis(arr, image.axes.index("c"), -1)
        return arr

    stack = channels_last(image.levels[0])
    return stack, (channels_last(image.levels[level]) if level else stack), level


class NgffLabelStore(LabelStore):
    """A label image inside an OME-Zarr image's ``labels/`` group, written frame by frame.

    Level 0 has the image's full-resolution shape; the other levels follow the image's
    pyramid (every write also writes the frame, subsampled, to them), and the metadata
    (multiscales with the image's axes and transformations, ``image-label``) is written by
    ``ome-zarr``. Only images with one non-spatial axis (t or z) and no channel axis, shaped
    (N, Y, X), are supported so far.

    Use :meth:`create_in`; :meth:`LabelStore.open` on ``image.zarr/labels/NAME/<level 0>``
    opens level 0 like any label store.
    """

    def __init__(self, array, path: Path, pyramid: Sequence = ()):
        super().__init__(array, path)
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
            If the image is not (N, Y, X) (a channel axis or more non-spatial axes).
        FileExistsError
            If the label image exists and ``overwrite`` is False.
        """
        import zarr
        from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

        if len(image.axes) != 3 or image.axes[0] not in ("t", "z"):
            raise ValueError(f"NGFF labels are written for (t|z, y, x) images so far; {image.path.name} has "
                             f"axes {image.axes}")
        root = zarr.open_group(str(image.path), mode="r+")
        labels = root.require_group("labels")
        if name in labels:
            if not overwrite:
                raise FileExistsError(f"{image.path}/labels/{name} already exists (pass overwrite to replace it)")
            del labels[name]
            names = [n for n in (_ome_attrs(labels).get("labels") or []) if n != name]
            _set_ome_attrs(labels, {"labels": names})
        group = labels.create_group(name)
        datasets, arrays = [], []
        for i, shape in enumerate(image.shapes):
            key = f"s{i}"
            arrays.append(group.create_array(key, shape=shape, chunks=(1,) + tuple(shape[1:]), dtype="uint32",
                                             fill_value=0))
            datasets.append({"path": key, "coordinateTransformations": image.transforms[i]
                             if i < len(image.transforms) and image.transforms[i] else
                             [{"type": "scale", "scale": [1.0] * len(shape)}]})
        axes = [{"name": a, "type": "time" if a == "t" else "space"} for a in image.axes]
        write_multiscales_metadata(group, datasets, axes=axes, name=name)
        write_label_metadata(labels, name)
        store = cls(arrays[0], Path(image.path) / "labels" / name / "s0", arrays[1:])
        return store

    def write_frame(self, frame_idx: int, labels: np.ndarray) -> None:
        """Write frame ``frame_idx`` to level 0 and, subsampled, to the coarser levels."""
        super().write_frame(frame_idx, labels)
        self._write_pyramid(frame_idx, np.asarray(labels))

    def clear_frame(self, frame_idx: int) -> None:
        super().clear_frame(frame_idx)
        for level in self.pyramid:
            level[int(frame_idx)] = 0

    def _write_pyramid(self, frame_idx: int, labels: np.ndarray) -> None:
        h, w = labels.shape
        for level in self.pyramid:
            lh, lw = int(level.shape[1]), int(level.shape[2])
            # nearest neighbour at the level's pixel centres (labels must not be blended)
            ys = np.minimum(((np.arange(lh) + 0.5) * h / lh).astype(int), h - 1)
            xs = np.minimum(((np.arange(lw) + 0.5) * w / lw).astype(int), w - 1)
            level[int(frame_idx)] = labels[np.ix_(ys, xs)]


def _ome_attrs(group) -> dict:
    attrs = dict(group.attrs)
    return attrs.get("ome", attrs)


def _set_ome_attrs(group, values: dict) -> None:
    if "ome" in group.attrs:
        group.attrs["ome"] = {**group.attrs["ome"], **values}
    else:
        group.attrs.update(values)
