"""Open image stacks lazily: TIFF, zarr, numpy files and folders of JPEG/PNG frames.

Every reader returns an array-like shaped (N, Y, X) or (N, Y, X, C) whose frames are read
only when indexed, so stacks larger than memory can be segmented.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

__all__ = ["FrameFolder", "open_image", "read_prompts_csv", "PointPrompt", "IMAGE_SUFFIXES", "FRAME_SUFFIXES"]

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
IMAGE_SUFFIXES = (".tif", ".tiff", ".zarr", ".npy")


class FrameFolder:
    """A folder of image files (one frame each, sorted by name) as a lazy array.

    Parameters
    ----------
    folder : str or Path
    suffixes : tuple of str
        File name endings that count as frames (case-insensitive).

    Attributes
    ----------
    shape : tuple
        (N, Y, X) for grey frames, (N, Y, X, C) for colour, from the first frame.
    dtype : numpy.dtype
    files : list of Path

    Raises
    ------
    FileNotFoundError
        If the folder does not exist or holds no frames.
    """

    def __init__(self, folder: Union[str, Path], suffixes: Sequence[str] = FRAME_SUFFIXES):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"frame folder not found: {folder}")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())
        if not self.files:
            raise FileNotFoundError(f"no frames ({', '.join(suffixes)}) in {folder}")
        first = self._read(0)
        self.dtype = first.dtype
        self.shape = (len(self.files),) + first.shape
        self.ndim = len(self.shape)

    def _read(self, i: int) -> np.ndarray:
        path = self.files[i]
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("P", "CMYK", "LA", "PA"):
                im = im.convert("RGB")
            return np.asarray(im)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, tuple):
            first, rest = index[0], index[1:]
        else:
            first, rest = index, ()
        if isinstance(first, (int, np.integer)):
            i = int(first)
            if i < 0:
                i += len(self)
            if not 0 <= i < len(self):
                raise IndexError(f"frame {first} does not exist: the folder has {len(self)} frames")
            frame = self._read(i)
            if frame.shape != self.shape[1:]:
                raise ValueError(
                    f"{self.files[i].name} is {frame.shape}, but the first frame is {self.shape[1:]}: "
                    f"all frames of a folder must have the same size"
                )
            return frame[rest] if rest else frame
        idx = range(len(self))[first]
        out = np.stack([self[i] for i in idx])
        return out[(slice(None),) + rest] if rest else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out


def open_image(path: Union[str, Path]):
    """Open an image stack lazily.

    Parameters
    ----------
    path : str or Path
        A TIFF file (memory-mapped when uncompressed, else read chunk-wise through zarr),
        a zarr array or OME-Zarr group (``.zarr``; the full-resolution level), a ``.npy``
        file (memory-mapped), or a folder of JPEG/PNG/TIFF frames.

    Returns
    -------
    array-like
        Shaped (N, Y, X[, C]) with ``shape``, ``dtype`` and lazy ``__getitem__``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file type is not supported or the file cannot be read as an image.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    suffix = path.suffix.lower()
    if path.is_dir() and suffix != ".zarr" and not (path / "zarr.json").exists() and not (path / ".zarray").exists():
        return FrameFolder(path)
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            return tifffile.memmap(path, mode="r")
        except Exception:
            pass
        try:
            import zarr

            return zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        except Exception as exc:
            raise ValueError(f"cannot read {path} as a TIFF image: {exc}") from exc
    if path.is_dir():  # zarr
        import zarr

        try:
            node = zarr.open(str(path), mode="r")
        except Exception as exc:
            raise ValueError(f"cannot read {path} as a zarr array: {exc}") from exc
        if hasattr(node, "shape"):
            return node
        from .ngff import is_ome_zarr, open_ome_zarr

        if is_ome_zarr(path):  # the full-resolution level (see io.ngff for reading a coarser one)
            return open_ome_zarr(path).levels[0]
        arrays = sorted(name for name, _ in node.arrays())
        if len(arrays) == 1:
            return node[arrays[0]]
        raise ValueError(f"{path} is a zarr group with arrays {arrays}; open one array inside it")
    if suffix == ".npy":
        return np.load(path, mmap_mode="r")
    raise ValueError(
        f"unsupported image {path.name}: expected a TIFF file, a .zarr array, a .npy file or a "
        f"folder of JPEG/PNG frames"
    )


@dataclass
class PointPrompt:
    """Clicks of object ``obj_id`` on ``frame``: ``points`` (K, 2) (y, x), ``labels`` (K,) 1/0."""

    frame: int
    obj_id: int
    points: np.ndarray
    labels: np.ndarray


PROMPT_COLUMNS = ("frame", "y", "x", "label", "object_id")


def read_prompts_csv(path: Union[str, Path]) -> List[PointPrompt]:
    """Read click prompts from the CSV file at ``path`` (header ``frame,y,x,label,object_id``).

    ``label`` is 1 (positive) or 0 (negative); ``y``, ``x`` are pixel coordinates of the
    input. Rows are grouped per (frame, object_id) in file order.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        On a missing column, an empty file, a non-numeric value, a label other than 0/1 or
        an object id < 1; the message names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    groups: Dict[Tuple[int, int], List[Tuple[float, float, int]]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in PROMPT_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{path.name}: expected the header {','.join(PROMPT_COLUMNS)}; missing {', '.join(missing)}"
            )
        for lineno, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            try:
                frame, obj = int(row["frame"]), int(row["object_id"])
                y, x, label = float(row["y"]), float(row["x"]), int(row["label"])
            except ValueError:
                raise ValueError(f"{path.name} line {lineno}: expected numbers, got {row}") from None
            if label not in (0, 1):
                raise ValueError(f"{path.name} line {lineno}: label must be 1 (positive) or 0 (negative), got {label}")
            if obj < 1:
                raise ValueError(f"{path.name} line {lineno}: object_id must be >= 1 (0 is background), got {obj}")
            if frame < 0:
                raise ValueError(f"{path.name} line {lineno}: frame must be >= 0, got {frame}")
            groups.setdefault((frame, obj), []).append((y, x, label))
    if not groups:
        raise ValueError(f"{path.name} has a header but no prompts")
    return [
        PointPrompt(f, o, np.array([[r[0], r[1]] for r in rows], np.float32), np.array([r[2] for r in rows], np.int64))
        for (f, o), rows in groups.items()
    ]
