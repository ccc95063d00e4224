"""Tracks from a label image: track segments with lineage, and their export as the Cell
Tracking Challenge result format and as GEFF.

A label image of a time-lapse (``(T, Y, X)`` or ``(T, Z, Y, X)``, one id per object kept
over time, as napari-lit's label store holds it) is a set of tracks. The field's tools want
them as:

- **CTC** (Cell Tracking Challenge result format, Ulman et al. 2017, Nat. Methods 14:1141):
  ``maskTTT.tif`` per time point (uint16, 2-D or ZYX) and ``res_track.txt`` with one
  ``L B E P`` row per track segment: label, first and last frame, parent label (0: none).
  A segment is continuous in time, so an object that leaves and comes back gets a new
  segment whose parent is its earlier one (the CTC rule for gaps); a daughter's parent is
  the mother's last segment, which ends before the daughter begins.
- **GEFF** (graph exchange file format, written by the ``geff`` package): one node per
  object per frame (``t``, ``[z,] y, x`` at the mask's centroid in pixels, the object's
  ``label`` and its ``area`` in pixels), an edge from each node to the object's next one and
  from a mother's last node to each daughter's first; axis metadata with the image's scale
  and units when given. ``napari-geff`` opens it as a Tracks layer.

The lineage is ``parents``: daughter id -> mother id (napari-lit's session records it when
the user marks a division).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["TrackGraph", "TrackExportError", "track_graph", "write_ctc", "write_geff", "read_ctc_tracks",
           "tracks_layer_data"]

#: CTC masks are uint16: at most this many track segments.
CTC_MAX_LABEL = 65535


class TrackExportError(ValueError):
    """The labels or the lineage cannot be written as tracks (the message says why)."""


@dataclass
class TrackGraph:
    """The tracks of a label image.

    Attributes
    ----------
    nodes : list of dict
        One per object per frame it is in, in frame order: ``id`` (node id, 0..), ``t``,
        ``pos`` (tuple of float: ``[z,] y, x`` centroid, pixels), ``label`` (the object's id
        in the label image), ``area`` (pixels or voxels) and ``segment`` (its CTC label).
    edges : list of (int, int)
        Node id pairs: along each object's frames (across a gap too) and mother -> daughter.
    segments : list of (int, int, int, int)
        CTC ``(L, B, E, P)`` rows: segment label, first and last frame, parent segment (0).
    segment_of : dict
        ``(object id, frame) -> segment label``, for relabelling the masks.
    ndim : int
        Spatial dimensions of a frame (2 or 3).
    n_frames : int
    """

    nodes: List[dict] = field(default_factory=list)
    edges: List[Tuple[int, int]] = field(default_factory=list)
    segments: List[Tuple[int, int, int, int]] = field(default_factory=list)
    segment_of: Dict[Tuple[int, int], int] = field(default_factory=dict)
    ndim: int = 2
    n_frames: int = 0

    def lineage(self) -> Dict[int, int]:
        """Segment label -> parent segment label, for segments that have one."""
        return {L: P for L, _, _, P in self.segments if P}


def _frame_stats(frame: np.ndarray):
    """Ids, areas and centroids of the objects in one frame."""
    from scipy import ndimage as ndi

    ids, areas = np.unique(frame[frame > 0], return_counts=True)
    if not len(ids):
        return ids, areas, np.zeros((0, frame.ndim))
    cents = np.asarray(ndi.center_of_mass(np.ones(frame.shape, np.float32), frame, ids), float).reshape(len(ids), -1)
    return ids, areas, cents


def _check_parents(parents: Mapping[int, int]) -> Dict[int, int]:
    parents = {int(k): int(v) for k, v in (parents or {}).items()}
    for child, mother in parents.items():
        if child == mother or child <= 0 or mother <= 0:
            raise TrackExportError(f"lineage: object {child} cannot have parent {mother} (ids are positive and "
                                   f"an object is not its own parent)")
        seen, k = {child}, mother
        while k in parents:  # a cycle would make a mother her own descendant
            if k in seen:
                raise TrackExportError(f"lineage: object {child}'s ancestry loops back to itself")
            seen.add(k)
            k = parents[k]
    return parents


def track_graph(labels, parents: Optional[Mapping[int, int]] = None,
                progress: Optional[Callable[[int, int], None]] = None, missing: str = "error") -> TrackGraph:
    """The tracks of a time-lapse label image, read one frame at a time.

    Parameters
    ----------
    labels : array-like, (T, Y, X) or (T, Z, Y, X) of int
        One id per object, kept over time (0 is background); a zarr array or any object
        with ``shape`` and frame indexing (read frame by frame, never whole).
    parents : mapping of int to int, optional
        Lineage: daughter id -> mother id. A daughter's first frame must come after its
        mother's last.
    progress : callable, optional
        Called as ``progress(frames_done, n_frames)``.
    missing : {"error", "drop"}
        A lineage entry whose daughter is in no frame: an error, or left out (a session's
        division whose daughters were never prompted).

    Returns
    -------
    TrackGraph

    Raises
    ------
    TrackExportError
        If ``labels`` is not 3-D or 4-D, holds no object, or the lineage names an object
        not in the labels, loops, or has a daughter that starts before her mother ends.
    """
    shape = tuple(getattr(labels, "shape", np.shape(labels)))
    if len(shape) not in (3, 4):
        raise TrackExportError(f"tracks need a time-lapse label image (T, Y, X) or (T, Z, Y, X); got shape {shape}")
    if missing not in ("error", "drop"):
        raise ValueError(f"missing must be 'error' or 'drop'; got {missing!r}")
    parents = _check_parents(parents or {})
    g = TrackGraph(ndim=len(shape) - 1, n_frames=shape[0])
    current: Dict[int, int] = {}  # object id -> its open segment label
    last_seen: Dict[int, int] = {}  # object id -> last frame it was in
    last_node: Dict[int, int] = {}
    seg_rows: Dict[int, list] = {}
    next_label = 1
    for t in range(shape[0]):
        frame = np.asarray(labels[t])
        ids, areas, cents = _frame_stats(frame)
        for k, area, c in zip(ids.tolist(), areas.tolist(), cents):
            if k in last_seen and last_seen[k] == t - 1:
                seg = current[k]
                seg_rows[seg][2] = t
            else:  # a new segment: the object's first frame, or back after a gap
                seg = next_label
                next_label += 1
                if k in last_seen:  # back after a gap: the earlier segment is its parent
                    parent = current[k]
                elif k in parents:
                    mother = parents[k]
                    if mother not in last_seen:
                        raise TrackExportError(f"lineage: object {k} begins on frame {t}, but its parent "
                                               f"{mother} is in no frame before it")
                    parent = current[mother]
                    if last_seen[mother] >= t:
                        raise TrackExportError(f"lineage: object {k} begins on frame {t} while its parent "
                                               f"{mother} is still there (its track must end at frame {t - 1})")
                else:
                    parent = 0
                seg_rows[seg] = [seg, t, t, parent]
                current[k] = seg
            node = len(g.nodes)
            g.nodes.append({"id": node, "t": t, "pos": tuple(float(v) for v in c), "label": int(k),
                            "area": int(area), "segment": seg})
            g.segment_of[(int(k), t)] = seg
            if k in last_node:  # along the object's track (also across a gap)
                g.edges.append((last_node[k], node))
            elif k in parents:  # a daughter's first node: from her mother's last
                g.edges.append((last_node[parents[k]], node))
            last_node[k] = node
            last_seen[k] = t
        if progress is not None:
            progress(t + 1, shape[0])
    if not g.nodes:
        raise TrackExportError("nothing to export: no object in any frame of the labels")
    absent = sorted(set(parents) - set(last_seen))
    if absent and missing == "error":
        raise TrackExportError(f"lineage names objects that are in no frame: {absent}")
    g.segments = [tuple(seg_rows[s]) for s in sorted(seg_rows)]
    return g


def _staged(out: Path, overwrite: bool):
    """A temporary sibling of ``out`` to write into; renamed into place by the caller."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.with_name(f".{out.name}.{uuid.uuid4().hex}.partial")


def _commit(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex}.old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, out)


def write_ctc(labels, out: Union[str, Path], graph: Optional[TrackGraph] = None,
              parents: Optional[Mapping[int, int]] = None, overwrite: bool = False,
              progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Write the tracks as a Cell Tracking Challenge result folder.

    Parameters
    ----------
    labels : array-like, (T, Y, X) or (T, Z, Y, X) of int
        As :func:`track_graph` takes it.
    out : str or Path
        The folder to create (the CTC ``RES`` folder): ``maskTTT.tif`` (``TTTT`` from 1,000
        frames on), uint16, one per frame, relabelled to the segment labels, and
        ``res_track.txt``. Written beside it and renamed into place when complete.
    graph : TrackGraph, optional
        :func:`track_graph` of ``labels`` (computed when not given).
    parents : mapping, optional
        Lineage (daughter -> mother), when ``graph`` is not given.
    overwrite : bool
    progress : callable, optional
        ``progress(done, total)`` over the frames written.

    Returns
    -------
    Path

    Raises
    ------
    FileExistsError
        If ``out`` exists and ``overwrite`` is False.
    TrackExportError
        As :func:`track_graph`, or if there are more than 65,535 segments (CTC masks are
        uint16).
    """
    import tifffile

    graph = graph or track_graph(labels, parents)
    if len(graph.segments) > CTC_MAX_LABEL:
        raise TrackExportError(f"{len(graph.segments)} track segments do not fit CTC's uint16 masks "
                               f"(at most {CTC_MAX_LABEL})")
    out = Path(out)
    tmp = _staged(out, overwrite)
    tmp.mkdir()
    try:
        digits = 3 if graph.n_frames <= 1000 else 4
        for t in range(graph.n_frames):
            frame = np.asarray(labels[t])
            ids, inverse = np.unique(frame, return_inverse=True)  # any id range (no lookup table by id)
            seg = np.asarray([graph.segment_of[(int(k), t)] if k else 0 for k in ids.tolist()], np.uint16)
            tifffile.imwrite(tmp / f"mask{t:0{digits}d}.tif", seg[inverse.reshape(frame.shape)],
                             photometric="minisblack", compression="zlib")
            if progress is not None:
                progress(t + 1, graph.n_frames)
        (tmp / "res_track.txt").write_text("".join(f"{L} {B} {E} {P}\n" for L, B, E, P in graph.segments))
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_ctc_tracks(path: Union[str, Path]) -> List[Tuple[int, int, int, int]]:
    """The ``L B E P`` rows of a CTC ``res_track.txt`` / ``man_track.txt`` (or of the
    folder holding one).

    Parameters
    ----------
    path : str or Path
        The file, or a folder with ``res_track.txt`` or ``man_track.txt``.

    Returns
    -------
    list of (int, int, int, int)

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If a row is not four integers.
    """
    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "res_track.txt", path / "man_track.txt") if p.is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds no res_track.txt or man_track.txt")
        path = found[0]
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"{path}, line {n}: expected 'L B E P' (four integers); got {line!r}")
        rows.append(tuple(int(p) for p in parts))
    return rows


def write_geff(labels, out: Union[str, Path], graph: Optional[TrackGraph] = None,
               parents: Optional[Mapping[int, int]] = None, scale: Optional[Sequence[float]] = None,
               units: Optional[Sequence[Optional[str]]] = None, overwrite: bool = False) -> Path:
    """Write the tracks as a GEFF zarr (``geff`` package; ``napari-geff`` opens it).

    Parameters
    ----------
    labels : array-like, (T, Y, X) or (T, Z, Y, X) of int
        As :func:`track_graph` takes it.
    out : str or Path
        The ``.geff`` / ``.zarr`` folder to create (renamed into place when complete).
    graph : TrackGraph, optional
    parents : mapping, optional
        Lineage (daughter -> mother), when ``graph`` is not given.
    scale : sequence of float, optional
        Size of a step along each axis (t, [z,] y, x), e.g. the napari layer's ``scale``;
        written as the axes' scales (node positions stay in pixels).
    units : sequence of str or None, optional
        Unit of each axis (e.g. ``["minute", "micrometer", "micrometer"]``).
    overwrite : bool

    Returns
    -------
    Path

    Raises
    ------
    FileExistsError
        If ``out`` exists and ``overwrite`` is False.
    TrackExportError
        As :func:`track_graph`, or if ``scale``/``units`` do not have one entry per axis.
    """
    import geff
    import networkx as nx

    graph = graph or track_graph(labels, parents)
    names = ["t"] + (["z"] if graph.ndim == 3 else []) + ["y", "x"]
    for what, values in (("scale", scale), ("units", units)):
        if values is not None and len(values) != len(names):
            raise TrackExportError(f"{what} needs one entry per axis ({', '.join(names)}); got {list(values)}")
    g = nx.DiGraph()
    for n in graph.nodes:
        g.add_node(n["id"], t=n["t"], **dict(zip(names[1:], n["pos"])), label=n["label"], area=n["area"],
                   segment=n["segment"])
    g.add_edges_from(graph.edges)
    out = Path(out)
    tmp = _staged(out, overwrite)
    try:
        geff.write(g, str(tmp), axis_names=names, axis_types=["time"] + ["space"] * (len(names) - 1),
                   axis_units=list(units) if units is not None else None,
                   axis_scales=[float(s) for s in scale] if scale is not None else None)
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def tracks_layer_data(graph: TrackGraph) -> Tuple[np.ndarray, Dict]:
    """The data and graph of a napari ``Tracks`` layer (pixel coordinates: give the layer
    the image's ``scale``).

    Parameters
    ----------
    graph : TrackGraph

    Returns
    -------
    data : (M, 2 + ndim) float ndarray
        Rows ``[track id, t, [z,] y, x]`` (track id: the CTC segment label), sorted by track
        then time, as napari wants them.
    tracks_graph : dict
        Segment -> [parent segment] (divisions and gaps), napari's ``graph`` argument.
    """
    rows = np.asarray([[n["segment"], n["t"], *n["pos"]] for n in graph.nodes], float).reshape(-1, 2 + graph.ndim)
    order = np.lexsort((rows[:, 1], rows[:, 0])) if len(rows) else np.arange(0)
    return rows[order], {int(L): [int(P)] for L, P in graph.lineage().items()}
