"""Evaluation sequences in the layout of ``shared/data/README.md``.

One folder per sequence with ``meta.json`` and either ``image.tif`` + ``labels.tif``
(layout ``tiff``) or ``frames/*.jpg`` + ``masks/*.png`` (layout ``frames``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

from .readers import FrameFolder, open_image

__all__ = ["EvalSequence", "load_sequence", "list_sequences"]


@dataclass
class EvalSequence:
    """One evaluation sequence.

    Attributes
    ----------
    name : str
    image : array-like, (N, Y, X) or (N, Y, X, C)
    labels : array-like, (N, Y, X) integer instance ids
    objects : list of int
        Ids to segment and track.
    axes : str
        ``TYX``, ``ZYX`` or ``TYXC``.
    domain : str
    meta : dict
        The whole ``meta.json``.
    folder : Path or None
        The sequence folder (its other files: a CTC lineage ``man_track.txt``, TRA markers).
    """

    name: str
    image: object
    labels: object
    objects: List[int]
    axes: str
    domain: str = ""
    meta: dict = field(default_factory=dict)
    folder: Optional[Path] = None

    @property
    def is_volume(self) -> bool:
        """True for z-stacks (``ZYX``)."""
        return self.axes.startswith("Z")

    @property
    def is_davis(self) -> bool:
        return self.name.startswith("davis")

    def gt_mask(self, obj_id: int) -> np.ndarray:
        """(N, Y, X) bool ground truth of object ``obj_id`` (reads all label frames)."""
        return np.asarray(self.labels[:]) == obj_id


def load_sequence(folder: Union[str, Path]) -> EvalSequence:
    """Open one sequence folder lazily.

    Raises
    ------
    FileNotFoundError
        If ``meta.json`` or the image/label files are missing.
    ValueError
        If the layout is unknown or image and labels disagree in shape.
    """
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} has no meta.json: not a sequence folder")
    meta = json.loads(meta_path.read_text())
    layout = meta.get("layout")
    if layout == "tiff":
        image = open_image(folder / "image.tif")
        labels = open_image(folder / "labels.tif")
    elif layout == "frames":
        image = FrameFolder(folder / "frames")
        labels = FrameFolder(folder / "masks")
    else:
        raise ValueError(f"{meta_path}: unknown layout {layout!r} (expected 'tiff' or 'frames')")
    if tuple(image.shape[:3]) != tuple(labels.shape[:3]):
        raise ValueError(f"{folder.name}: image {image.shape} and labels {labels.shape} differ in (N, Y, X)")
    return EvalSequence(
        name=folder.name, image=image, labels=labels, objects=[int(o) for o in meta.get("objects", [])],
        axes=meta.get("axes", "TYX"), domain=meta.get("domain", ""), meta=meta, folder=folder,
    )


def list_sequences(data_dir: Union[str, Path]) -> List[Path]:
    """Sequence folders (those with a ``meta.json``) under ``data_dir``, sorted by name.

    Raises
    ------
    FileNotFoundError
        If ``data_dir`` does not exist or holds no sequence.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    if (data_dir / "meta.json").is_file():
        return [data_dir]
    found = sorted(p for p in data_dir.iterdir() if (p / "meta.json").is_file())
    if not found:
        raise FileNotFoundError(f"no sequence folders (with meta.json) in {data_dir}")
    return found
