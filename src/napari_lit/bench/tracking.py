"""Cell-tracking metrics of the Cell Tracking Challenge for a tracking run with divisions.

For a sequence with lineage ground truth (a CTC ``man_track.txt`` beside its labels, and
optionally ``tra_markers.tif``, the CTC TRA markers): every cell present on the first frame
is prompted by one click at its innermost point, the session propagates forward with the
division rule (:meth:`~napari_lit.core.session.LitSession.propagate`'s ``divisions``: a mask
that splits into two large parts divides into two daughters), the result is written in the
CTC result format (:func:`napari_lit.io.tracks.write_ctc`) and scored by ``py-ctcmetrics``
against the ground truth laid out as the CTC's ``TRA``/``SEG`` folders: TRA, DET, SEG and
CHOTA (Ulman et al. 2017; Matula et al. 2015 for TRA/DET; Kaiser et al. 2024 for CHOTA).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = ["CTC_METRICS", "has_lineage", "ctc_ground_truth", "track_cells", "ctc_scores"]

#: What ``bench --ctc-metrics`` reports.
CTC_METRICS = ("TRA", "DET", "SEG", "CHOTA")


def has_lineage(seq) -> bool:
    """Whether the sequence folder has a CTC lineage (``man_track.txt``)."""
    return seq.folder is not None and (Path(seq.folder) / "man_track.txt").is_file()


def _clipped_lineage(rows: List[Tuple[int, int, int, int]], n_frames: int,
                     first: int = 0) -> List[Tuple[int, int, int, int]]:
    """``L B E P`` rows of a CTC sequence cut to its frames ``first .. first + n_frames - 1``
    (a sequence may hold part of a longer CTC sequence), renumbered from 0: tracks outside
    go, a track begun before ``first`` begins at 0 and loses its parent (gone too)."""
    last = first + n_frames - 1
    kept = {L for L, B, E, _ in rows if B <= last and E >= first}
    return [(L, max(B, first) - first, min(E, last) - first, P if (P in kept and B >= first) else 0)
            for L, B, E, P in rows if L in kept]


def _first_source_frame(seq) -> int:
    """The first frame of the CTC sequence the folder holds: ``meta.json``'s
    ``source_frames`` ("t024..t047 of 48"), else 0."""
    import re

    found = re.match(r"\s*t?(\d+)", str((seq.meta or {}).get("source_frames", "")))
    return int(found.group(1)) if found else 0


def ctc_ground_truth(seq, out: Union[str, Path]) -> Path:
    """Write the sequence's ground truth as a CTC ``GT`` folder.

    Parameters
    ----------
    seq : napari_lit.io.dataset.EvalSequence
        With ``man_track.txt`` in its folder (numbered as the CTC sequence: ``meta.json``'s
        ``source_frames`` says where the folder's frames begin); ``tra_markers.tif`` there
        gives the TRA masks (else the labels do), the labels the SEG masks (on the
        ``annotated_frames`` of ``meta.json``, else every frame).
    out : str or Path
        The folder to create: ``TRA/man_track.txt``, ``TRA/man_trackTTT.tif``,
        ``SEG/man_segTTT.tif``.

    Returns
    -------
    Path

    Raises
    ------
    FileNotFoundError
        If the sequence has no ``man_track.txt``.
    """
    import tifffile

    from ..io.tracks import read_ctc_tracks

    if not has_lineage(seq):
        raise FileNotFoundError(f"{seq.name}: no man_track.txt (CTC lineage) in its folder")
    folder = Path(seq.folder)
    out = Path(out)
    (out / "TRA").mkdir(parents=True, exist_ok=True)
    (out / "SEG").mkdir(exist_ok=True)
    n = int(seq.labels.shape[0])
    markers_path = folder / "tra_markers.tif"
    markers = tifffile.imread(markers_path) if markers_path.is_file() else seq.labels
    digits = 3 if n <= 1000 else 4
    annotated = (seq.meta or {}).get("annotated_frames")  # SEG only where someone segmented ("all": every frame)
    annotated = set(range(n)) if not isinstance(annotated, list) else {int(t) for t in annotated}
    for t in range(n):
        tifffile.imwrite(out / "TRA" / f"man_track{t:0{digits}d}.tif", np.asarray(markers[t]).astype(np.uint16),
                         photometric="minisblack")
        if t in annotated:
            tifffile.imwrite(out / "SEG" / f"man_seg{t:0{digits}d}.tif", np.asarray(seq.labels[t]).astype(np.uint16),
                             photometric="minisblack")
    rows = _clipped_lineage(read_ctc_tracks(folder / "man_track.txt"), n, _first_source_frame(seq))
    (out / "TRA" / "man_track.txt").write_text("".join(f"{L} {B} {E} {P}\n" for L, B, E, P in rows))
    return out


def track_cells(predictor, seq, zoom: str = "auto", min_share: float = 0.2,
                method: str = "propagate", max_growth: Optional[float] = None) -> Tuple[np.ndarray, Dict[int, int]]:
    """Track every cell of the sequence's first frame from one click each, with the
    division rule.

    Parameters
    ----------
    predictor : SAM2VideoPredictor
    seq : napari_lit.io.dataset.EvalSequence
        A time-lapse (``TYX``).
    zoom : {"auto", "off"}
    min_share : float
        The division rule's smaller daughter's share (see :func:`~napari_lit.core.session.split_daughters`).
    method : {"propagate", "flow"}
        ``propagate``: the model, as a user runs it. ``flow``: the classical peer, the
        model's masks of the clicks on the first frame warped along DIS optical flow
        (:class:`~napari_lit.bench.flow.FlowTracker`) frame by frame, with the same
        division rule on the warped masks.
    max_growth : float, optional
        The division rule's growth bound (:func:`~napari_lit.core.session.split_daughters`).

    Returns
    -------
    labels : (T, Y, X) uint32 ndarray
    parents : dict
        Daughter -> mother.

    Raises
    ------
    ValueError
        If the sequence is not a time-lapse or its first frame has no cell.
    """
    from scipy import ndimage as ndi

    from ..core.session import LitSession

    if method not in ("propagate", "flow"):
        raise ValueError(f"cells are tracked with the model (propagate) or its flow peer (flow); got {method!r}")
    if seq.axes[0] != "T":
        raise ValueError(f"{seq.name}: tracks need a time-lapse (axes T...), not {seq.axes}")
    first = np.asarray(seq.labels[0])
    ids = [int(i) for i in np.unique(first) if i]
    if not ids:
        raise ValueError(f"{seq.name}: no cell on the first frame to click")
    with tempfile.TemporaryDirectory(prefix="napari-lit-ctc-") as tmp:
        session = LitSession(predictor, seq.image, Path(tmp) / "labels.zarr", learn=False, zoom=zoom)
        try:
            for k in ids:
                dist = ndi.distance_transform_edt(np.pad(first == k, 1))[1:-1, 1:-1]
                y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
                session.add_points(0, k, [[y, x]], [1])
            if method == "flow":
                return _flow_with_divisions(seq.image, session.store.read_frame(0), min_share, max_growth)
            for _ in session.propagate(start_frame=0, direction="forward", divisions=min_share,
                                       division_growth=max_growth):
                pass
            return np.asarray(session.store.array[:]).copy(), session.lineage()
        finally:
            session.close()


def _flow_with_divisions(image, first: np.ndarray, min_share: float,
                         max_growth: Optional[float] = None) -> Tuple[np.ndarray, Dict[int, int]]:
    """The flow peer: ``first``'s objects warped frame to frame, an object whose warped mask
    has split divided into its two parts (new ids), overlaps going to the later id."""
    from ..core.session import split_daughters
    from .flow import FlowTracker

    flow = FlowTracker(image)
    out = np.zeros((flow.n_frames,) + flow.frame_shape, np.uint32)
    out[0] = first
    parents: Dict[int, int] = {}
    ids = [int(i) for i in np.unique(first) if i]
    masks = np.stack([first == k for k in ids]) if ids else np.zeros((0,) + flow.frame_shape, bool)
    for t in range(1, flow.n_frames):
        before = masks.reshape(len(masks), -1).sum(axis=1)
        masks = flow.warp(masks, flow.flow(t, t - 1))
        new_ids, new_masks = [], []
        for k, m, area in zip(ids, masks, before):
            parts = split_daughters(m, min_share, float(area), max_growth) if m.any() else None
            if parts is None:
                new_ids.append(k)
                new_masks.append(m)
                continue
            a = max(ids + new_ids + list(parents) + [0]) + 1
            for d, part in zip((a, a + 1), parts):
                parents[d] = k
                new_ids.append(d)
                new_masks.append(part)
        ids, masks = new_ids, (np.stack(new_masks) if new_masks else masks[:0])
        for k, m in zip(ids, masks):
            out[t][m] = k
    return out, parents


def ctc_scores(labels, parents: Dict[int, int], seq, metrics=CTC_METRICS) -> Dict[str, Optional[float]]:
    """CTC metrics of a tracking result against the sequence's ground truth.

    Parameters
    ----------
    labels : (T, Y, X) int array-like
        The result, one id per object over time.
    parents : dict
        Its lineage (daughter -> mother).
    seq : napari_lit.io.dataset.EvalSequence
        With ``man_track.txt`` (see :func:`ctc_ground_truth`).
    metrics : sequence of str
        Names ``py-ctcmetrics`` computes.

    Returns
    -------
    dict
        Metric name -> value (None where it could not be computed), and ``valid`` (the
        result passed ``py-ctcmetrics``' validation), ``tracks`` (segments in the result)
        and ``divisions``.

    Raises
    ------
    FileNotFoundError
        If the sequence has no lineage ground truth.
    """
    from ctc_metrics import evaluate_sequence, validate_sequence

    from ..io.tracks import track_graph, write_ctc

    with tempfile.TemporaryDirectory(prefix="napari-lit-ctc-") as tmp:
        gt = ctc_ground_truth(seq, Path(tmp) / "GT")
        # a daughter whose mask the overlap resolution gave wholly to her neighbours is in no
        # frame: she has no track (counted as missed by the metrics) rather than no result
        graph = track_graph(labels, parents, missing="drop")
        res = write_ctc(labels, Path(tmp) / "RES", graph=graph)
        valid = validate_sequence(str(res), threads=1)
        scores = evaluate_sequence(str(res), str(gt), list(metrics), threads=1)
    out = {m: (None if scores.get(m) is None else float(scores[m])) for m in metrics}
    tracked = {n["label"] for n in graph.nodes}
    out.update(valid=bool(valid.get("Valid", 0)), tracks=len(graph.segments),
               divisions=len({m for k, m in parents.items() if k in tracked}))
    return out
