"""Tracks from labels: CTC result folders that py-ctcmetrics validates and scores, GEFF that
geff reads back, lineage and gaps, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lit.io.tracks import (TrackExportError, read_ctc_tracks, track_graph, tracks_layer_data, write_ctc,
                                  write_geff)


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture()
def dividing():
    """10 frames, 64 x 80: cell 1 divides after frame 4 into 2 and 3 (moving apart); cell 4
    is out of view on frames 3-5 and comes back."""
    t, shape = 10, (64, 80)
    labels = np.zeros((t,) + shape, np.uint32)
    for f in range(t):
        if f < 5:
            labels[f][_disc(shape, 30, 30, 8)] = 1
        else:
            d = 3 * (f - 4)
            labels[f][_disc(shape, 30 - d, 30, 5)] = 2
            labels[f][_disc(shape, 30 + d, 30 + 2, 5)] = 3
        if f < 3 or f > 5:
            labels[f][_disc(shape, 40, 65, 6)] = 4
    return labels, {2: 1, 3: 1}


def test_segments_follow_divisions_and_gaps(dividing):
    labels, parents = dividing
    g = track_graph(labels, parents)
    # first appearance order: 1 and 4 on frame 0, 2 and 3 on frame 5, 4 back on frame 6
    assert g.segments == [(1, 0, 4, 0), (2, 0, 2, 0), (3, 5, 9, 1), (4, 5, 9, 1), (5, 6, 9, 2)]
    assert g.lineage() == {3: 1, 4: 1, 5: 2}
    assert len(g.nodes) == 5 + 2 * 5 + 7
    by = {(n["label"], n["t"]): n for n in g.nodes}
    assert by[(1, 0)]["pos"] == pytest.approx((30.0, 30.0)) and by[(1, 0)]["area"] == _disc((64, 80), 30, 30, 8).sum()
    edges = {(g.nodes[a]["label"], g.nodes[a]["t"], g.nodes[b]["label"], g.nodes[b]["t"]) for a, b in g.edges}
    assert (1, 4, 2, 5) in edges and (1, 4, 3, 5) in edges  # mother's last -> each daughter's first
    assert (4, 2, 4, 6) in edges  # across the gap
    assert len(g.edges) == len(g.nodes) - 2  # a forest: two roots (cells 1 and 4)
    data, graph = tracks_layer_data(g)
    assert data.shape == (len(g.nodes), 4) and graph == {3: [1], 4: [1], 5: [2]}
    assert (np.diff(data[:, 0]) >= 0).all()


def test_ctc_export_validates_and_scores_tra_one_against_itself(dividing, tmp_path):
    import tifffile
    from ctc_metrics import evaluate_sequence, validate_sequence

    labels, parents = dividing
    res = write_ctc(labels, tmp_path / "01_RES", parents=parents)
    masks = sorted(res.glob("mask*.tif"))
    assert [m.name for m in masks[:2]] == ["mask000.tif", "mask001.tif"] and len(masks) == 10
    m5 = tifffile.imread(masks[5])
    assert m5.dtype == np.uint16 and set(np.unique(m5)) == {0, 3, 4}  # daughters relabelled to their segments
    assert read_ctc_tracks(res) == track_graph(labels, parents).segments
    valid = validate_sequence(str(res), threads=1)
    assert valid["Valid"] == 1, valid
    gt = tmp_path / "01_GT"
    (gt / "TRA").mkdir(parents=True)
    (gt / "SEG").mkdir()
    for m in masks:
        tifffile.imwrite(gt / "TRA" / m.name.replace("mask", "man_track"), tifffile.imread(m))
        tifffile.imwrite(gt / "SEG" / m.name.replace("mask", "man_seg"), tifffile.imread(m))
    (gt / "TRA" / "man_track.txt").write_text((res / "res_track.txt").read_text())
    scores = evaluate_sequence(str(res), str(gt), ["TRA", "SEG", "DET"], threads=1)
    assert scores["TRA"] == pytest.approx(1.0) and scores["SEG"] == pytest.approx(1.0)


def test_geff_export_reads_back_as_the_same_graph(dividing, tmp_path):
    import geff

    labels, parents = dividing
    g = track_graph(labels, parents)
    out = write_geff(labels, tmp_path / "tracks.geff", graph=g, scale=[5.0, 0.5, 0.5],
                     units=["minute", "micrometer", "micrometer"])
    geff.validate_structure(str(out))
    back, meta = geff.read(str(out))
    assert sorted(back.nodes) == [n["id"] for n in g.nodes]
    assert sorted(back.edges) == sorted(g.edges)
    n = g.nodes[7]
    attrs = back.nodes[7]
    assert (attrs["t"], attrs["label"], attrs["area"]) == (n["t"], n["label"], n["area"])
    assert (attrs["y"], attrs["x"]) == pytest.approx(n["pos"])
    axes = {a.name: a for a in meta.axes}
    assert axes["t"].type == "time" and axes["y"].unit == "micrometer" and axes["x"].scale == 0.5


def test_napari_geff_opens_our_geff_as_a_tracks_layer_with_the_lineage(dividing, tmp_path):
    """napari-geff (the napari reader the field uses for GEFF) accepts the export and gives a
    Tracks layer: one point per object per frame, the division in its graph."""
    reader_module = pytest.importorskip("napari_geff._reader")

    labels, parents = dividing
    g = track_graph(labels, parents)
    out = write_geff(labels, tmp_path / "tracks.geff", graph=g, scale=[5.0, 0.5, 0.5],
                     units=["minute", "micrometer", "micrometer"])
    reader = reader_module.get_geff_reader(str(out))
    assert reader is not None
    layers = reader(str(out))
    tracks = [layer for layer in layers if layer[2] == "tracks"]
    assert len(tracks) == 1
    data, kwargs, _ = tracks[0]
    data = np.asarray(data)
    assert len(data) == len(g.nodes)
    by_frame = np.bincount(data[:, 1].astype(int))
    expected = np.bincount([n["t"] for n in g.nodes])
    assert list(by_frame) == list(expected)
    graph = kwargs.get("graph") or {}
    assert len(graph) == 2 and len({tuple(v) for v in graph.values()}) == 1  # two daughters, one mother
    assert kwargs.get("scale") is not None and list(kwargs["scale"])[-2:] == [0.5, 0.5]


def test_large_ids_are_relabelled_to_segments(tmp_path):
    import tifffile

    labels = np.zeros((2, 16, 16), np.uint32)
    labels[:, 2:6, 2:6] = 4_000_000_000  # near the top of uint32: no lookup table by id
    labels[1, 9:12, 9:12] = 7
    res = write_ctc(labels, tmp_path / "RES")
    assert read_ctc_tracks(res) == [(1, 0, 1, 0), (2, 1, 1, 0)]
    assert set(np.unique(tifffile.imread(res / "mask001.tif"))) == {0, 1, 2}


def test_3d_time_lapse_writes_zyx_masks(tmp_path):
    import tifffile

    labels = np.zeros((3, 4, 20, 20), np.uint16)
    labels[:, 1:3, 5:10, 5:10] = 7
    g = track_graph(labels)
    assert g.ndim == 3 and g.segments == [(1, 0, 2, 0)] and len(g.nodes[0]["pos"]) == 3
    res = write_ctc(labels, tmp_path / "RES", graph=g)
    assert tifffile.imread(res / "mask001.tif").shape == (4, 20, 20)


def test_bad_input_says_what_and_leaves_nothing_half_written(dividing, tmp_path):
    labels, parents = dividing
    with pytest.raises(TrackExportError, match="no object in any frame"):
        track_graph(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(TrackExportError, match=r"\(T, Y, X\) or \(T, Z, Y, X\); got shape \(8, 8\)"):
        track_graph(np.zeros((8, 8), np.uint8))
    with pytest.raises(TrackExportError, match="still there"):
        track_graph(labels, {4: 1})  # 4 begins on frame 0 with 1
    with pytest.raises(TrackExportError, match="loops back"):
        track_graph(labels, {2: 3, 3: 2})
    with pytest.raises(TrackExportError, match=r"in no frame: \[9\]"):
        track_graph(labels, {9: 1})
    assert track_graph(labels, {9: 1}, missing="drop").segments == track_graph(labels).segments  # never prompted
    out = tmp_path / "RES"
    out.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        write_ctc(labels, out)
    with pytest.raises(TrackExportError, match="one entry per axis"):
        write_geff(labels, tmp_path / "t.geff", scale=[1.0, 1.0])

    class Failing:  # the labels become unreadable half way
        shape = labels.shape

        def __getitem__(self, t):
            if t >= 6:
                raise OSError("disk gone")
            return labels[t]

    g = track_graph(labels, parents)
    with pytest.raises(OSError, match="disk gone"):
        write_ctc(Failing(), tmp_path / "RES2", graph=g)
    assert not (tmp_path / "RES2").exists() and not list(tmp_path.glob(".RES2*"))
    write_ctc(labels, out, graph=g, overwrite=True)
    assert len(list(out.glob("mask*.tif"))) == 10


def test_cli_export_ctc_and_geff_from_a_label_store(dividing, tmp_path, capsys):
    import geff
    import zarr
    from ctc_metrics import validate_sequence

    from napari_lit.cli import main

    labels, _ = dividing
    store = zarr.create_array(str(tmp_path / "labels.zarr"), shape=labels.shape, dtype=np.uint32,
                              chunks=(1,) + labels.shape[1:])
    store[:] = labels
    assert main(["export", str(tmp_path / "labels.zarr"), str(tmp_path / "RES"), "--format", "ctc", "--quiet"]) == 0
    assert validate_sequence(str(tmp_path / "RES"), threads=1)["Valid"] == 1
    # no lineage given: the daughters are tracks of their own; 4's return is its old track's child
    assert read_ctc_tracks(tmp_path / "RES") == [(1, 0, 4, 0), (2, 0, 2, 0), (3, 5, 9, 0), (4, 5, 9, 0), (5, 6, 9, 2)]
    assert main(["export", str(tmp_path / "labels.zarr"), str(tmp_path / "t.geff"), "--scale", "5", "0.5", "0.5",
                 "--units", "minute", "micrometer", "micrometer", "--quiet"]) == 0
    graph, meta = geff.read(str(tmp_path / "t.geff"))
    assert graph.number_of_nodes() == 22 and meta.axes[0].unit == "minute"
    capsys.readouterr()
    assert main(["export", str(tmp_path / "labels.zarr"), str(tmp_path / "RES"), "--format", "ctc", "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    empty = zarr.create_array(str(tmp_path / "empty.zarr"), shape=(3, 8, 8), dtype=np.uint32)
    empty[:] = 0
    assert main(["export", str(tmp_path / "empty.zarr"), str(tmp_path / "E"), "--format", "ctc", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no object in any frame" in err and not (tmp_path / "E").exists()
    assert main(["export", str(tmp_path / "labels.zarr"), str(tmp_path / "x.tif"), "--scale", "1", "--quiet"]) == 2
    assert "--format geff" in capsys.readouterr().err


def test_session_division_ends_the_mother_and_survives_undo_resume_and_export(dividing, predictor, tmp_path, capsys):
    """A dividing cell in a session: the mother tracked to frame 4, divided on frame 5 into two
    clicked daughters, which propagate on; the mother is never written after frame 4, also
    when the whole sequence is propagated again; undo/redo, resume and the CTC export from the
    session folder carry the lineage."""
    from napari_lit.core.adaptation import AdapterConfig
    from napari_lit.core.session import LitSession
    from napari_lit.cli import main

    gt, _ = dividing
    rng = np.random.default_rng(0)
    frames = np.where(gt > 0, 200, 30).astype(np.float32) + rng.normal(0, 5, gt.shape).astype(np.float32)
    folder = tmp_path / "div.litsession"
    s = LitSession.create_in(folder, predictor, frames, adapter_config=AdapterConfig(max_steps=2), zoom="off")
    s.add_mask(0, 1, gt[0] == 1)
    list(s.propagate(direction="forward"))
    assert (s.store.read_frame(7) == 1).any()  # tracked on as one object over the division
    with pytest.raises(ValueError, match="daughters of 1 must be distinct"):
        s.divide(5, 1, [1, 2])
    c = s.divide(5, 1, [2, 3])
    assert c.kind == "division" and s.lineage() == {2: 1, 3: 1}
    assert not any((s.store.read_frame(f) == 1).any() for f in range(5, 10))  # cleared from frame 5 on
    for d in (2, 3):
        ys, xs = np.nonzero(gt[5] == d)
        s.add_points(5, d, [[ys.mean(), xs.mean()]], [1])
    with pytest.raises(ValueError, match="divided after frame 4"):
        s.add_points(6, 1, [[30, 30]], [1])
    list(s.propagate(start_frame=0, direction="forward"))  # all of it again: the mother stays ended
    labels = np.asarray(s.store.array[:])
    present = {k: [f for f in range(10) if (labels[f] == k).any()] for k in (1, 2, 3)}
    assert present == {1: [0, 1, 2, 3, 4], 2: list(range(5, 10)), 3: list(range(5, 10))}
    for d in (2, 3):
        inter = ((labels[8] == d) & (gt[8] == d)).sum()
        assert inter / ((labels[8] == d) | (gt[8] == d)).sum() > 0.5
    # undo: the daughters' clicks, then the division (the mother's labels come back)
    s.undo()
    s.undo()
    assert s.undo() is c and s.lineage() == {} and (s.store.read_frame(7) == 1).any()
    assert s.redo() is c and s.lineage() == {2: 1, 3: 1} and not (s.store.read_frame(7) == 1).any()
    s.redo()
    s.redo()
    list(s.propagate(start_frame=5, direction="forward"))
    final = np.asarray(s.store.array[:]).copy()
    s.close()
    r = LitSession.resume(folder, predictor, frames)
    try:
        assert r.lineage() == {2: 1, 3: 1} and r.track_end == {1: 4}
        assert np.array_equal(np.asarray(r.store.array[:]), final)
        assert r.undo().kind == "prompt" and r.undo().kind == "prompt" and r.undo().kind == "division"
        assert r.lineage() == {}
        for _ in range(3):
            r.redo()
        assert np.array_equal(np.asarray(r.store.array[:]), final) and r.lineage() == {2: 1, 3: 1}
    finally:
        r.close()
    capsys.readouterr()
    assert main(["export", str(folder), str(tmp_path / "RES"), "--format", "ctc", "--quiet"]) == 0, capsys.readouterr().err
    rows = read_ctc_tracks(tmp_path / "RES")
    assert rows[0] == (1, 0, 4, 0) and sorted(r[1:] for r in rows[1:]) == [(5, 9, 1), (5, 9, 1)]


def test_division_rule_divides_a_mask_that_splits_while_propagating(dividing, predictor, tmp_path):
    from napari_lit.core.session import LitSession, split_daughters

    gt, _ = dividing
    assert split_daughters(gt[0] == 1) is None
    two = (gt[8] == 2) | (gt[8] == 3)
    a, b = split_daughters(two)
    assert {int(np.bincount(gt[8][a]).argmax()), int(np.bincount(gt[8][b]).argmax())} == {2, 3}
    assert split_daughters(two, min_share=0.5) is None or a.sum() == b.sum()
    with pytest.raises(ValueError, match="min_share"):
        split_daughters(two, 0.7)
    # the growth bound: daughters share the mother's area; a mask doubled onto a neighbour does not
    mother = int((gt[4] == 1).sum())
    assert two.sum() < 1.2 * mother and split_daughters(two, 0.2, mother, max_growth=1.2) is not None
    assert split_daughters(two, 0.2, two.sum() / 2, max_growth=1.5) is None
    assert split_daughters(two, 0.2, None, max_growth=1.5) is not None  # no area known: not checked
    rng = np.random.default_rng(0)
    frames = np.where(gt > 0, 200, 30).astype(np.float32) + rng.normal(0, 5, gt.shape).astype(np.float32)
    s = LitSession.create_in(tmp_path / "rule.litsession", predictor, frames, zoom="off")
    s.add_mask(0, 1, gt[0] == 1)
    s.add_mask(0, 4, gt[0] == 4)
    written = [r.frame_idx for r in s.propagate(direction="forward", divisions=0.2, division_growth=1.5)]
    (t,) = set(s.track_end.values())
    t += 1  # the division frame
    assert s.lineage() == {5: 1, 6: 1} and 5 <= t <= 8 and written == list(range(10))  # each frame once
    labels = np.asarray(s.store.array[:])
    assert not (labels[t:] == 1).any() and (labels[:t] == 1).any(axis=(1, 2)).all()
    for d in (5, 6):
        assert (labels[t:] == d).any(axis=(1, 2)).all() and not (labels[:t] == d).any()
    assert {int(np.bincount(gt[9][labels[9] == d]).argmax()) for d in (5, 6)} == {2, 3}
    assert (labels[:, :, 55:] == 4).any(axis=(1, 2))[[0, 1, 2, 6, 7, 8, 9]].all()  # the other cell: no division
    assert [c.kind for c in s.history][-3:] == ["division", "prompt", "prompt"]
    s.close()


def _ctc_sequence(folder, gt, rows):
    import json

    import tifffile

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = (np.where(gt > 0, 200, 30) + rng.normal(0, 5, gt.shape)).astype(np.float32)
    tifffile.imwrite(folder / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(folder / "labels.tif", gt.astype(np.uint16), photometric="minisblack")
    tifffile.imwrite(folder / "tra_markers.tif", gt.astype(np.uint16), photometric="minisblack",
                     compression="zlib")  # as the CTC data come: compressed, not memory-mappable
    (folder / "man_track.txt").write_text("".join(f"{L} {B} {E} {P}\n" for L, B, E, P in rows))
    (folder / "meta.json").write_text(json.dumps({"layout": "tiff", "axes": "TYX", "objects": [1, 4]}))


def test_ctc_metrics_of_a_tracked_division(dividing, predictor, tmp_path):
    """The ground truth scores 1 against itself; one click per cell on frame 0 with the
    division rule finds the division and scores a high TRA; a longer man_track.txt is cut to
    the sequence's frames."""
    from napari_lit.bench.runner import run_benchmark
    from napari_lit.bench.tracking import ctc_scores, has_lineage, track_cells
    from napari_lit.io import load_sequence

    gt, _ = dividing
    gt = gt.copy()
    for f in range(3, 6):  # cell 4 stays in view (no gap in this ground truth)
        yy, xx = np.mgrid[:64, :80]
        gt[f][((yy - 40) ** 2 + (xx - 65) ** 2 <= 36) & (gt[f] == 0)] = 4
    rows = [(1, 0, 4, 0), (2, 5, 12, 1), (3, 5, 12, 1), (4, 0, 9, 0), (7, 11, 14, 2)]  # as if 15 frames
    _ctc_sequence(tmp_path / "data" / "ctc-div", gt, rows)
    seq = load_sequence(tmp_path / "data" / "ctc-div")
    assert has_lineage(seq)
    perfect = ctc_scores(gt, {2: 1, 3: 1}, seq)
    assert perfect["valid"] and perfect["TRA"] == pytest.approx(1.0) and perfect["SEG"] == pytest.approx(1.0)
    assert perfect["divisions"] == 1 and perfect["tracks"] == 4
    labels, parents = track_cells(predictor, seq, zoom="off")
    assert sorted(parents.values()) == [1, 1]
    tracked = ctc_scores(labels, parents, seq)
    assert tracked["valid"] and tracked["TRA"] > 0.9 and tracked["DET"] > 0.9 and tracked["SEG"] > 0.7
    assert ctc_scores(gt, {}, seq)["TRA"] < 1.0  # the true masks without the lineage: TRA counts the links
    # a daughter the overlap resolution left in no frame (object 100): scored, not refused
    lost = ctc_scores(gt, {2: 1, 3: 1, 100: 4}, seq)
    assert lost["valid"] and lost["TRA"] == pytest.approx(perfect["TRA"]) and lost["divisions"] == 1
    flow_labels, flow_parents = track_cells(predictor, seq, zoom="off", method="flow")
    assert flow_labels.shape == gt.shape and (flow_labels[9] > 0).any()
    assert set(flow_parents.values()) <= {1}  # the rule on warped masks: at most the one division
    res = run_benchmark(tmp_path / "data", "propagate", "mask", predictor=predictor, progress=False,
                        zoom="off", ctc_metrics=True)
    assert res["ctc"]["ctc-div"]["TRA"] == pytest.approx(tracked["TRA"])
    flow_res = run_benchmark(tmp_path / "data", "flow", "click", predictor=predictor, progress=False,
                             zoom="off", ctc_metrics=True)
    assert flow_res["ctc"]["ctc-div"] == ctc_scores(flow_labels, flow_parents, seq)


def test_ground_truth_lineage_of_a_sequence_cut_from_a_longer_one():
    """A training folder may hold frames t024..t047 of a CTC sequence; its man_track.txt counts
    frames of the whole sequence: the rows are cut to the folder's frames and renumbered."""
    from types import SimpleNamespace

    from napari_lit.bench.tracking import _clipped_lineage, _first_source_frame

    rows = [(1, 0, 26, 0), (2, 28, 47, 0), (3, 0, 20, 0), (4, 27, 30, 1), (5, 27, 47, 1), (6, 50, 60, 0)]
    assert _clipped_lineage(rows, 24, first=24) == [(1, 0, 2, 0), (2, 4, 23, 0), (4, 3, 6, 1), (5, 3, 23, 1)]
    assert _clipped_lineage(rows, 24) == [(1, 0, 23, 0), (3, 0, 20, 0)]  # the first 24 frames
    assert _clipped_lineage([(7, 10, 30, 3)], 10, first=20) == [(7, 0, 9, 0)]  # begun before: no parent here
    assert _first_source_frame(SimpleNamespace(meta={"source_frames": "t024..t047 of 48"})) == 24
    assert _first_source_frame(SimpleNamespace(meta={})) == 0
