"""Tests of the benchmark: metrics, simulated prompts, runner, JSON, reports, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_lit.bench import runner
from napari_lit.bench.metrics import (
    boundary_tolerance,
    click_point,
    f_measure,
    frame_scores,
    jaccard,
    sequence_scores,
)
from napari_lit.bench.report import comparison_table, markdown_table, write_reports
from napari_lit.bench.runner import run_benchmark, score_object
from napari_lit.cli import main as cli_main
from napari_lit.training.synthetic import generate_clip

N_FRAMES, SIZE = 6, 128
TIFF_OBJECTS = [1, 2]  # object 2 is removed from frames 0-1: its prompt frame is 2
FRAMES_OBJECTS = [3]


# ----------------------------------------------------------------------------- fixtures
def _iou(a, b):
    """Independent IoU with the absent-object rule."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Two sequences: 'cells-tiff' (layout tiff, TYX) and 'davis-synth' (layout frames, TYXC)."""
    import tifffile
    from PIL import Image

    root = tmp_path_factory.mktemp("bench_data")
    clip = generate_clip(np.random.default_rng(0), N_FRAMES, SIZE, kind="nuclei")
    labels = clip.labels.astype(np.uint32)
    labels[:2][labels[:2] == 2] = 0
    seq = root / "cells-tiff"
    seq.mkdir()
    tifffile.imwrite(seq / "image.tif", clip.frames[..., 0])
    tifffile.imwrite(seq / "labels.tif", labels, photometric="minisblack")
    (seq / "meta.json").write_text(json.dumps(
        {"layout": "tiff", "axes": "TYX", "objects": TIFF_OBJECTS, "domain": "synthetic nuclei"}))

    clip2 = generate_clip(np.random.default_rng(1), N_FRAMES, SIZE, kind="nuclei")
    seq2 = root / "davis-synth"
    (seq2 / "frames").mkdir(parents=True)
    (seq2 / "masks").mkdir()
    for t in range(N_FRAMES):
        Image.fromarray(clip2.frames[t]).save(seq2 / "frames" / f"{t:05d}.jpg", quality=95)
        Image.fromarray(clip2.labels[t].astype(np.uint8)).save(seq2 / "masks" / f"{t:05d}.png")
    (seq2 / "meta.json").write_text(json.dumps(
        {"layout": "frames", "axes": "TYXC", "objects": FRAMES_OBJECTS, "domain": "synthetic video"}))
    return root


@pytest.fixture(scope="module")
def predictor():
    from napari_lit.models import load_predictor

    return load_predictor("lit-tiny", device="cpu")


@pytest.fixture()
def no_model(monkeypatch):
    """Fail loudly if anything tries to load a model."""
    def boom(*args, **kwargs):
        raise AssertionError("static + mask must not load a model")

    monkeypatch.setattr(runner, "_load_predictor", boom)
    import napari_lit.models as models

    monkeypatch.setattr(models, "load_predictor", boom)


def _square(y0, y1, x0, x1, shape=(100, 100)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


# ------------------------------------------------------------------------------ metrics
def test_jaccard_values():
    a = _square(20, 60, 20, 60)
    assert jaccard(a, a) == 1.0
    assert jaccard(a, _square(70, 90, 70, 90)) == 0.0
    # 40x40 squares shifted by 20 px: overlap 800, union 2400
    assert jaccard(a, _square(20, 60, 40, 80)) == pytest.approx(1 / 3)
    small = _square(20, 40, 20, 60)  # inside a: 800 / 1600
    assert jaccard(small, a) == pytest.approx(0.5)


def test_absent_object_rule():
    empty = np.zeros((50, 50), bool)
    some = _square(10, 20, 10, 20, (50, 50))
    assert frame_scores(empty, empty) == (1.0, 1.0)
    assert frame_scores(some, empty) == (0.0, 0.0)
    assert frame_scores(empty, some) == (0.0, 0.0)


def test_f_measure_values():
    a = _square(20, 60, 20, 60)
    assert f_measure(a, a) == 1.0
    # a 1 px shift stays within a 2 px tolerance: every boundary pixel is matched
    assert f_measure(np.roll(a, 1, axis=1), a, tolerance=2) == 1.0
    # a 10 px shift with a 1 px tolerance: only the horizontal edges overlap partly
    far = f_measure(np.roll(a, 10, axis=1), a, tolerance=1)
    assert 0.0 < far < 0.7
    assert f_measure(_square(0, 5, 0, 5), _square(80, 90, 80, 90)) == 0.0


def test_boundary_tolerance():
    assert boundary_tolerance((480, 854)) == 8  # 0.008 * 979.6 = 7.84 -> 8
    assert boundary_tolerance((128, 128)) == 2
    assert boundary_tolerance((10, 10)) == 1


def test_metrics_validate_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        jaccard(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\(Y, X\)"):
        f_measure(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match=r"\(N, Y, X\)"):
        sequence_scores(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))


def test_sequence_scores_match_frame_scores():
    rng = np.random.default_rng(0)
    gt = rng.random((3, 32, 32)) > 0.5
    pred = rng.random((3, 32, 32)) > 0.5
    j, f = sequence_scores(pred, gt)
    assert j.shape == f.shape == (3,)
    for i in range(3):
        assert (j[i], f[i]) == frame_scores(pred[i], gt[i])


def test_click_point_is_distance_maximum():
    labels = generate_clip(np.random.default_rng(3), 1, SIZE, kind="nuclei").labels[0]
    for obj in np.unique(labels)[1:4]:
        mask = labels == obj
        y, x = click_point(mask)
        assert mask[y, x]
        dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        assert dist[y, x] == dist.max()
    # a mask cut by the frame edge is not clicked at the edge
    assert click_point(_square(0, 30, 0, 100)) == (14, 14)
    with pytest.raises(ValueError, match="empty"):
        click_point(np.zeros((5, 5), bool))


# ------------------------------------------------------------------------------- runner
def test_score_object_validates():
    gt = np.zeros((3, 8, 8), bool)
    with pytest.raises(ValueError, match="absent from every frame"):
        score_object(gt, "static", "mask")
    gt[1, 2:5, 2:5] = True
    with pytest.raises(ValueError, match="method must be one of"):
        score_object(gt, "magic", "mask")
    with pytest.raises(ValueError, match="needs a tracker"):
        score_object(gt, "propagate", "mask")
    out = score_object(gt, "static", "mask")
    assert out["prompt_frame"] == 1
    assert out["j"] == [0.0, 1.0, 0.0] and out["f"] == [0.0, 1.0, 0.0]


def test_static_mask_equals_repeated_gt_and_loads_no_model(data_dir, no_model):
    import tifffile
    from PIL import Image

    res = run_benchmark(data_dir, "static", "mask", progress=False)
    assert res["model"] is None and res["weights_sha256"] is None
    labels = {"cells-tiff": tifffile.imread(data_dir / "cells-tiff" / "labels.tif")}
    labels["davis-synth"] = np.stack([
        np.asarray(Image.open(p))
        for p in sorted((data_dir / "davis-synth" / "masks").glob("*.png"))
    ])
    seen = []
    for e in res["sequences"]:
        gt = labels[e["name"]] == e["object"]
        pf = int(np.flatnonzero(gt.any(axis=(1, 2)))[0])
        expected = [_iou(gt[pf], gt[i]) for i in range(len(gt))]
        assert e["prompt_frame"] == pf
        assert e["j"] == pytest.approx(expected)
        seen.append((e["name"], e["object"]))
    assert seen == [("cells-tiff", o) for o in TIFF_OBJECTS] + [("davis-synth", o) for o in FRAMES_OBJECTS]
    assert [e["prompt_frame"] for e in res["sequences"]] == [0, 2, 0]


def test_cli_json_keys_and_reports(data_dir, tmp_path, no_model, capsys):
    out = tmp_path / "res" / "static.json"
    rep = tmp_path / "reports"
    rc = cli_main(["bench", str(data_dir), "--method", "static", "--init", "mask", "--json", str(out),
                   "--report-dir", str(rep), "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    for key in ("model", "method", "init", "mean_j", "mean_jf", "seconds", "sequences"):
        assert key in res
    assert (res["method"], res["init"]) == ("static", "mask")
    # what it ran on: results (counts near tau, timings) are compared only on one machine
    import platform
    from importlib import metadata
    m = res["machine"]
    assert m["cpu"] and m["cpu_count"] == os.cpu_count() and m["python"] == platform.python_version()
    assert m["torch"] == metadata.version("torch")
    for e in res["sequences"]:
        for key in ("name", "object", "frames", "prompt_frame", "mean_j", "mean_jf", "j", "f", "domain"):
            assert key in e
        j, f = np.array(e["j"]), np.array(e["f"])
        assert e["frames"] == len(j) == len(f) == N_FRAMES
        assert ((0 <= j) & (j <= 1) & (0 <= f) & (f <= 1)).all()
        assert e["mean_j"] == pytest.approx(j.mean())
        assert e["mean_jf"] == pytest.approx(((j + f) / 2).mean())
        assert j[e["prompt_frame"]] == 1.0 and f[e["prompt_frame"]] == 1.0
    assert res["mean_j"] == pytest.approx(np.mean([e["mean_j"] for e in res["sequences"]]))
    assert res["mean_jf"] == pytest.approx(np.mean([e["mean_jf"] for e in res["sequences"]]))
    md = (rep / "static.md").read_text()
    assert "cells-tiff" in md and "davis-synth" in md and "natural video mean" in md and "microscopy mean" in md
    assert (rep / "static.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "static/mask" in capsys.readouterr().out


def test_reports_beside_json(data_dir, tmp_path, no_model):
    res = run_benchmark(data_dir, "static", "mask", sequences=["davis-synth"], progress=False)
    assert [e["name"] for e in res["sequences"]] == ["davis-synth"]
    md, png = write_reports(res, tmp_path / "x.json")
    assert md == tmp_path / "x.md" and png == tmp_path / "x.png" and png.stat().st_size > 0
    table = markdown_table(res)
    assert table.count("\n| ") == 1 + 1 + 1  # header, one sequence, the mean of its one domain group
    assert "natural video mean" in table and "microscopy mean" not in table


def test_object_absent_everywhere_is_skipped(tmp_path, no_model, caplog):
    import tifffile

    seq = tmp_path / "tiny"
    seq.mkdir()
    labels = np.zeros((3, 16, 16), np.uint32)
    labels[1:, 4:9, 4:9] = 1
    tifffile.imwrite(seq / "image.tif", np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    tifffile.imwrite(seq / "labels.tif", labels, photometric="minisblack")
    (seq / "meta.json").write_text(json.dumps({"layout": "tiff", "axes": "ZYX", "objects": [1, 99]}))
    res = run_benchmark(seq, "static", "mask", progress=False)
    assert [(e["object"], e["prompt_frame"], e["j"]) for e in res["sequences"]] == [(1, 1, [0.0, 1.0, 1.0])]
    assert "object 99 is absent" in caplog.text


@pytest.mark.parametrize("args, message", [
    (["MISSING", "--method", "static", "--init", "mask"], "data folder not found"),
    (["DATA", "--method", "magic", "--init", "mask"], "invalid choice"),
    (["DATA", "--method", "static"], "--init"),
    (["DATA", "--method", "static", "--init", "mask", "--sequences", "nope"], "no sequence nope"),
    (["DATA", "--method", "frozen", "--init", "mask", "--joint"], "--joint is for the propagate, static and flow"),
    (["DATA", "--method", "static", "--init", "mask", "--entropy-norm", "length"], "--entropy-norm is for the propagate"),
    (["DATA", "--method", "propagate", "--init", "mask", "--entropy-norm", "volume"], "invalid choice"),
])
def test_cli_bad_input_exit_2_one_line(args, message, data_dir, tmp_path, capsys):
    args = [str(tmp_path / "missing") if a == "MISSING" else str(data_dir) if a == "DATA" else a for a in args]
    rc = cli_main(["bench", *args, "--json", str(tmp_path / "o.json")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("napari-lit: error:") and message in err[0]
    assert not (tmp_path / "o.json").exists()


def test_empty_data_dir(tmp_path, capsys):
    rc = cli_main(["bench", str(tmp_path), "--method", "static", "--init", "mask", "--json", str(tmp_path / "o.json")])
    assert rc == 2
    assert "no sequence folders" in capsys.readouterr().err


def test_comparison_table(data_dir, tmp_path, no_model):
    a = run_benchmark(data_dir, "static", "mask", progress=False)
    b = dict(a, method="propagate", sequences=[dict(e, mean_j=0.5) for e in a["sequences"][:2]])
    path = tmp_path / "a.json"
    path.write_text(json.dumps(a))
    table = comparison_table([path, b])
    lines = table.strip().splitlines()
    assert "static/mask" in lines[0] and "propagate/mask" in lines[0]
    assert any(l.startswith("| cells-tiff |") and "0.500" in l for l in lines)
    davis = [l for l in lines if l.startswith("| davis-synth |")]
    assert len(davis) == 1 and davis[0].rstrip().endswith("| – |")  # b lacks this sequence
    assert [l.split("|")[1].strip() for l in lines[-3:]] == ["**microscopy mean**", "**natural video mean**",
                                                              "**all sequences mean**"]
    with pytest.raises(ValueError, match="lacks the keys"):
        comparison_table([{"method": "static"}])


# ---------------------------------------------------------------------- with the model
def test_propagate_scores_every_frame(data_dir, predictor, tmp_path):
    done = []
    res = run_benchmark(data_dir, "propagate", "mask", sequences=["cells-tiff"], predictor=predictor,
                        progress=lambda i, n: done.append((i, n)))
    assert done == [(1, 2), (2, 2)]
    assert res["model"] == "lit-tiny"
    from napari_lit.models.catalogue import LIT_TINY_WEIGHTS, sha256sum
    assert res["weights_sha256"] == sha256sum(LIT_TINY_WEIGHTS)  # which weights made the figures
    e2 = res["sequences"][1]
    assert e2["object"] == 2 and e2["prompt_frame"] == 2  # propagated backward to frames 0-1 too
    for e in res["sequences"]:
        j = np.array(e["j"])
        assert len(j) == N_FRAMES and np.isfinite(j).all() and ((0 <= j) & (j <= 1)).all()
        assert e["mean_j"] == pytest.approx(j.mean())
        ent = np.array(e["entropy"])  # masked entropy of every frame, Lazy-XMem eq. 2-4
        assert len(ent) == N_FRAMES and ((0 <= ent) & (ent <= 1)).all()
        assert e["spearman"] is None or -1 <= e["spearman"] <= 1
    rhos = [e["spearman"] for e in res["sequences"] if e["spearman"] is not None]
    assert res["median_spearman"] == (pytest.approx(np.median(rhos)) if rhos else None)
    # the entropy-vs-IoU figure of docs/benchmarks.md (Lazy-XMem Fig. 3) draws from it
    from napari_lit.bench.report import plot_entropy_iou

    png = plot_entropy_iou(res, tmp_path / "entropy.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="not in the result"):
        plot_entropy_iou(res, tmp_path / "x.png", sequence="nope")
    static = run_benchmark(data_dir, "static", "mask", sequences=["cells-tiff"], progress=False)
    with pytest.raises(ValueError, match="no per-frame masked entropy"):
        plot_entropy_iou(static, tmp_path / "x.png")
    # per boundary length: the same masks, the entropy of each tracked frame scaled by the
    # square root of its region's size (> 1 pixel), so larger than eq. 4's; prompt frames 0
    length = run_benchmark(data_dir, "propagate", "mask", sequences=["cells-tiff"], predictor=predictor,
                           progress=False, entropy_norm="length")
    assert length["entropy_norm"] == "length" and res["entropy_norm"] == "area"
    for a, b in zip(res["sequences"], length["sequences"]):
        assert a["j"] == b["j"]
        ea, eb = np.array(a["entropy"]), np.array(b["entropy"])
        tracked = ea > 0
        assert tracked.sum() >= N_FRAMES - 1 and (eb[tracked] > ea[tracked]).all()
        assert (eb[~tracked] == 0).all()


def test_joint_propagation_tracks_the_objects_together_as_the_widget_does(data_dir, predictor):
    """``--joint``: the two objects of 'cells-tiff' (prompted on frames 0 and 2) are tracked
    in one tracker; each object's J and masked entropy (a class per object, Lazy-XMem eq. 2)
    are those of that tracker's frames, and the run says it was joint."""
    from napari_lit.core import FrameSource, Tracker
    from napari_lit.io import load_sequence

    res = run_benchmark(data_dir, "propagate", "mask", sequences=["cells-tiff"], predictor=predictor,
                        progress=False, joint=True)
    assert res["joint"] is True
    seq = load_sequence(data_dir / "cells-tiff")
    labels = np.asarray(seq.labels[:])
    tracker = Tracker(predictor, FrameSource(seq.image, image_size=predictor.image_size))
    for obj in seq.objects:
        gt = labels == obj
        pf = int(np.flatnonzero(gt.any(axis=(1, 2)))[0])
        tracker.add_mask(pf, obj, gt[pf])
    frames = {r.frame_idx: r for r in tracker.propagate(direction="both")}
    assert len(res["sequences"]) == len(seq.objects) == 2
    for e in res["sequences"]:
        k = list(seq.objects).index(e["object"])
        assert e["j"] == pytest.approx([_iou(frames[i].mask(e["object"]), labels[i] == e["object"])
                                        for i in range(N_FRAMES)])
        assert frames[0].obj_ids == tuple(seq.objects)  # both objects' logits on every frame
        assert e["entropy"] == pytest.approx([frames[i].masked_entropy()[k] for i in range(N_FRAMES)], abs=1e-6)
    # static needs no tracking: the same scores either way
    s1 = run_benchmark(data_dir, "static", "mask", sequences=["cells-tiff"], progress=False, joint=True)
    s2 = run_benchmark(data_dir, "static", "mask", sequences=["cells-tiff"], progress=False)
    assert [e["j"] for e in s1["sequences"]] == [e["j"] for e in s2["sequences"]]


def test_static_click_repeats_the_models_click_mask(data_dir, predictor):
    from napari_lit.core import FrameSource, Tracker
    from napari_lit.io import load_sequence

    res = run_benchmark(data_dir, "static", "click", sequences=["davis-synth"], predictor=predictor,
                        progress=False)
    seq = load_sequence(data_dir / "davis-synth")
    gt = np.asarray(seq.labels[:]) == FRAMES_OBJECTS[0]
    (e,) = res["sequences"]
    y, x = e["click"]
    assert gt[e["prompt_frame"], y, x]
    assert (y, x) == click_point(gt[e["prompt_frame"]])
    tracker = Tracker(predictor, FrameSource(seq.image, image_size=predictor.image_size))
    mask = tracker.add_points(e["prompt_frame"], 1, [[y, x]], [1]).mask(1)
    assert e["j"] == pytest.approx([_iou(mask, gt[i]) for i in range(N_FRAMES)])


def _benchmark_script(name):
    """A script of benchmarks/ as a module (its folder on sys.path, as when it runs)."""
    import importlib
    import sys

    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def test_one_step_benchmark(data_dir, tmp_path):
    """benchmarks/one_step.py: the model's prediction of a frame from the true mask of the
    previous one (and of the same frame shown again), beside copying that mask, per
    generated scene kind and per sequence, from the real lit-tiny."""
    from napari_lit.io.dataset import load_sequence

    one_step = _benchmark_script("one_step")
    out = tmp_path / "one_step.json"
    assert one_step.main(["--data", str(data_dir), "--clips", "1", "--stride", "2", "--out", str(out),
                          "--plot", str(tmp_path / "one-step.png")]) == 0
    r = json.loads(out.read_text())
    assert set(r["sequences"]) == {"cells-tiff", "davis-synth"} and len(r["generated"]) >= 6
    assert r["machine"]["cpu_count"] == os.cpu_count()  # what it ran on, for comparisons
    # the copy measure is the true mask of frame t scored on frame t+1, every 2nd frame
    seq = load_sequence(data_dir / "cells-tiff")
    labels = np.asarray(seq.labels)
    copies = [jaccard(labels[t] == o, labels[t + 1] == o) for o in seq.objects for t in range(0, N_FRAMES - 1, 2)
              if (labels[t] == o).any() and (labels[t + 1] == o).any()]
    s = r["sequences"]["cells-tiff"]
    assert s["pairs"] == len(copies) and s["copy"]["median"] == pytest.approx(np.median(copies))
    for group in (*r["generated"].values(), *r["sequences"].values(), *r["all"].values()):
        for m in one_step.MEASURES:
            assert 0.0 <= group[m]["median"] <= 1.0 and 0.0 <= group[m]["at_least_0.85"] <= 1.0
    # lit-tiny gives back most of a nucleus it holds in memory when the frame is shown again
    assert r["generated"]["nuclei"]["same_frame"]["median"] > 0.7
    assert (tmp_path / "one-step.png").stat().st_size > 10_000


def test_long_clips_benchmark(tmp_path):
    """benchmarks/long_clips.py: lit-tiny tracked over generated clips longer than the
    recipe validates, the same seeded clips for every model, J per window of frames."""
    long_clips = _benchmark_script("long_clips")
    out = tmp_path / "long.json"
    assert long_clips.main(["--frames", "12", "--clips", "1", "--objects", "1", "--kinds", "nuclei", "parts",
                            "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    m = r["models"]["lit-tiny"]
    assert set(m["kinds"]) == {"nuclei", "parts"} and m["kinds"]["nuclei"]["tracks"] == 1
    assert m["natural"] == {w: m["kinds"]["parts"][w] for w in long_clips.WINDOWS}  # parts is the only one
    assert m["mean"]["all"] == pytest.approx((m["kinds"]["nuclei"]["all"] + m["kinds"]["parts"]["all"]) / 2)
    # the windows are the J of a real tracking run of the same clip, recomputed here
    clip = long_clips.draw_clips(["nuclei"], 1, 12)["nuclei"][0]
    ids, counts = np.unique(clip.labels[0][clip.labels[0] > 0], return_counts=True)
    from napari_lit.models import load_predictor

    j = long_clips.track_j(load_predictor("lit-tiny"), clip.frames, clip.labels == ids[np.argmax(counts)])
    assert j[0] > 0.9 and m["kinds"]["nuclei"]["first7"] == pytest.approx(j[1:8].mean())
    assert m["kinds"]["nuclei"]["last10"] == pytest.approx(j[-10:].mean())
    assert m["kinds"]["nuclei"]["first7"] > 0.7  # lit-tiny tracks a generated nucleus
    with pytest.raises(ValueError, match="--frames must be at least 11"):
        long_clips.main(["--frames", "8", "--out", str(out)])
    with pytest.raises(ValueError, match="scene kinds must be some of .*got \\['cells'\\]"):
        long_clips.main(["--kinds", "cells", "--out", str(out)])


def test_adapter_inputs_benchmark(data_dir, tmp_path):
    """benchmarks/adapter_inputs.py: the next frame predicted by SAM2 and by adapters that
    learned the true mask of frame t from its recorded or its recall inputs, per sequence."""
    from napari_lit.io.dataset import load_sequence

    adapter_inputs = _benchmark_script("adapter_inputs")
    out = tmp_path / "inputs.json"
    assert adapter_inputs.main([str(data_dir), "--sequences", "cells-tiff", "--stride", "4", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    labels = np.asarray(load_sequence(data_dir / "cells-tiff").labels)
    copies = [jaccard(labels[t] == o, labels[t + 1] == o) for o in TIFF_OBJECTS for t in range(1, N_FRAMES - 1, 4)
              if all((labels[i] == o).any() for i in (t - 1, t, t + 1))]
    s = r["sequences"]["cells-tiff"]
    assert set(r["sequences"]) == {"cells-tiff"} and s["pairs"] == len(copies) == r["all"]["pairs"]
    assert s["copy"]["mean"] == pytest.approx(np.mean(copies))
    for m in adapter_inputs.MEASURES:
        assert 0.0 <= s[m]["median"] <= 1.0 and 0.0 <= s[m]["at_least_0.85"] <= s[m]["at_least_0.5"] <= 1.0
    assert s["frozen"]["median"] > 0.5  # lit-tiny tracks a generated nucleus from its true mask
    assert r["adapter"]["rank"] == 4 and r["machine"]["cpu_count"] == os.cpu_count()
    with pytest.raises(ValueError, match=r"no sequence named \['cells'\] .* it has \['cells-tiff', 'davis-synth'\]"):
        adapter_inputs.main([str(data_dir), "--sequences", "cells", "--out", str(out)])


def test_adapter_inputs_measures_come_from_trained_adapters(predictor, clip, monkeypatch):
    """score_pair's recorded / recall / both measures predict frame t+1 with an adapter that
    was trained (on the true mask of t, from the named inputs) and so decodes differently from
    SAM2's own decoder."""
    import torch

    from napari_lit.core.adaptation import AdapterConfig, DecoderAdapter

    adapter_inputs = _benchmark_script("adapter_inputs")
    frames, labels = clip
    obj = int(np.bincount(labels[2].ravel())[1:].argmax() + 1)
    adapter = DecoderAdapter(predictor, AdapterConfig(target_iou=1.01, max_steps=5))  # every step runs
    trained, predicted = [], []
    train, predict = adapter.train, adapter.predict

    def spy_train(obj_id, inputs, target):
        trained.append((inputs, np.array(target)))
        steps = list(train(obj_id, inputs, target))
        trained[-1] += (len(steps),)
        yield from steps

    def spy_predict(obj_id, inputs):
        out = predict(obj_id, inputs)
        predicted.append((out[0], adapter.predict_frozen(inputs)[0], adapter.n_corrections[obj_id]))
        return out

    monkeypatch.setattr(adapter, "train", spy_train)
    monkeypatch.setattr(adapter, "predict", spy_predict)
    torch.manual_seed(0)
    try:
        m = adapter_inputs.score_pair(predictor, adapter, list(frames[1:4]), [labels[i] == obj for i in (1, 2, 3)])
    finally:
        adapter.reset()
    assert set(m) == set(adapter_inputs.MEASURES)
    # recorded, recall, then both (recorded + recall): four trainings on the true mask of t
    assert len(trained) == 4 and all(np.array_equal(t, labels[2] == obj) and n == 5 for _, t, n in trained)
    assert trained[0][0] is trained[2][0] and trained[1][0] is trained[3][0] and trained[0][0] is not trained[1][0]
    # three predictions of t+1, by adapters with 1, 1 and 2 corrections, none SAM2's own decoding
    assert [n for _, _, n in predicted] == [1, 1, 2]
    assert all(not torch.allclose(a, f) for a, f, _ in predicted)


def test_calibration_clips_are_pinned_to_their_scene_kinds():
    """The calibration scripts' clips cycle through a pinned list of scene kinds, so a kind
    added to the generator later does not change the clips behind the shipped temperature,
    dilation and tau_m; an unknown kind is refused with the valid ones named."""
    from napari_lit.training.synthetic import SCENE_KINDS

    generated = _benchmark_script("_generated")
    assert set(generated.CALIBRATION_KINDS) < set(SCENE_KINDS)
    args = generated.calibration_parser("doc", clips=2, seed=1, out="x.json").parse_args([])
    assert args.kinds == list(generated.CALIBRATION_KINDS)
    a = generated.hard_clips(7, 2, 3, size=64, kinds=("nuclei", "ct"))
    b = generated.hard_clips(7, 2, 3, size=64, kinds=("nuclei", "ct"))
    c = generated.hard_clips(7, 2, 3, size=64, kinds=("nuclei", "phase"))
    assert len(a) == 2 and all(f.shape == (3, 64, 64, 3) and g.shape == (3, 64, 64) for f, g in a)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))  # seeded: the same clips again
    assert np.array_equal(a[0][0], c[0][0]) and not np.array_equal(a[1][0], c[1][0])
    with pytest.raises(ValueError, match="scene kinds must be some of .*got \\['nuclei', 'cells'\\]"):
        generated.hard_clips(7, 2, 3, kinds=("nuclei", "cells"))
