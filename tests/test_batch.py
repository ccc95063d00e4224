"""Batch segmentation on dask.distributed: recipe export, a LocalCluster run with a worker
killed mid-run, outputs equal to the single-process result, reruns skip finished stacks."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import tifffile
import torch

pytest.importorskip("distributed")

from napari_lit.batch import RECIPE_FILE, export_recipe, expand_inputs, run_batch, segment_stack  # noqa: E402
from napari_lit.cli import main  # noqa: E402
from napari_lit.core.adaptation import AdapterConfig  # noqa: E402
from napari_lit.core.session import LitSession  # noqa: E402
from napari_lit.training.synthetic import generate_clip  # noqa: E402


@pytest.fixture(scope="module")
def plate(tmp_path_factory, predictor):
    """A taught session (mask prompt, a correction learned) on one position, its recipe, and
    five more positions of the same plate as TIFF stacks."""
    root = tmp_path_factory.mktemp("plate")
    clips = [generate_clip(np.random.default_rng(20 + i), 24, 96, kind="nuclei") for i in range(6)]
    for i, c in enumerate(clips):
        tifffile.imwrite(root / f"pos{i}.tif", c.frames[..., 0])
    c = clips[0]
    obj = int(np.bincount(c.labels[0].ravel())[1:].argmax() + 1)
    s = LitSession.create_in(root / "taught.litsession", predictor, c.frames[..., 0], source=str(root / "pos0.tif"),
                             adapter_config=AdapterConfig(max_steps=5))
    s.add_mask(0, obj, c.labels[0] == obj)
    list(s.propagate())
    s.add_mask(6, obj, c.labels[6] == obj)  # a correction, learned
    list(s.learn_from(6, obj))
    recipe = export_recipe(s, root / "recipe")
    s.close()
    return root, recipe, obj


def test_recipe_holds_prompts_adapters_and_model(plate):
    root, recipe, obj = plate
    meta = json.loads((recipe / RECIPE_FILE).read_text())
    assert meta["model"]["name"] == "lit-tiny" and len(meta["model"]["sha256"]) == 64
    assert [(p["frame"], p["obj_id"], p["kind"]) for p in meta["prompts"]] == [(0, obj, "mask"), (6, obj, "mask")]
    assert meta["adapted_objects"] == [obj] and (recipe / "adapters" / f"obj{obj}" / "adapter.pt").is_file()
    assert np.load(recipe / meta["prompts"][0]["mask"]).dtype == bool
    with pytest.raises(FileExistsError):
        export_recipe(None, recipe)


def test_expand_inputs_globs_and_csv(plate, tmp_path):
    root, _, _ = plate
    (tmp_path / "list.csv").write_text("path,well\n" + "".join(f"{root / f'pos{i}.tif'},A{i}\n" for i in (3, 1)))
    got = expand_inputs([str(root / "pos[12].tif"), str(tmp_path / "list.csv")])
    assert [p.name for p in got] == ["pos1.tif", "pos2.tif", "pos3.tif"]  # pos1 once
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs([str(root / "nope*.tif")])


def test_batch_on_a_local_cluster_survives_a_killed_worker(plate, tmp_path):
    from distributed import Client, LocalCluster

    root, recipe, obj = plate
    stacks = [root / f"pos{i}.tif" for i in range(1, 6)]
    # the single-process result, one torch thread as on the workers
    ref = tmp_path / "ref"
    for s in stacks:
        assert segment_stack(s, recipe, ref)["status"] == "done"

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    killed = {}

    def kill_one_worker_mid_run():
        deadline = time.time() + 180
        while time.time() < deadline:
            busy = [w for w, tasks in client.processing().items() if tasks]
            if busy:
                time.sleep(1.0)  # well inside a task (a stack takes a few seconds)
                pids = client.run(os.getpid, workers=[busy[0]])
                pid = pids[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_one_worker_mid_run)
    killer.start()
    out = tmp_path / "out"
    try:
        rows = run_batch(stacks, recipe, out, client=client, retries=2, progress=False)
    finally:
        killer.join()
        client.close()
        cluster.close()
    assert killed, "no worker was killed"
    assert [r["status"] for r in rows] == ["done"] * 5, rows
    import zarr

    for s, r in zip(stacks, rows):
        got = np.asarray(zarr.open_array(r["labels"], mode="r")[:])
        want = np.asarray(zarr.open_array(str(ref / f"{s.stem}-labels.zarr"), mode="r")[:])
        assert got.shape == (24, 96, 96) and (got == obj).any()
        np.testing.assert_array_equal(got, want)
        assert r["objects"] == 1 and r["frames"] == 24 and 0 <= r["mean_entropy"] <= 1
    assert not list(out.glob(".*.partial"))  # no half-written store left behind
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["status"] for t in table] == ["done"] * 5 and table[0]["frames"] == "24"

    # a rerun skips every finished stack; a broken stack is reported, not dropped
    (root / "broken.tif").write_bytes(b"not a tiff")
    assert main(["batch", *map(str, stacks), str(root / "broken.tif"), "--from", str(recipe), "--out", str(out),
                 "--retries", "0", "--quiet"]) == 1
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["status"] for t in table] == ["skipped"] * 5 + ["failed"]
    assert "broken.tif" in table[-1]["error"]


def test_batch_from_a_session_folder(plate, tmp_path, capsys):
    root, _, obj = plate
    assert main(["batch", str(root / "pos5.tif"), "--from", str(root / "taught.litsession"), "--out",
                 str(tmp_path / "o"), "--quiet"]) == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "recipe" / RECIPE_FILE).is_file()  # exported from the session
    import zarr

    labels = np.asarray(zarr.open_array(str(tmp_path / "o" / "pos5-labels.zarr"), mode="r")[:])
    assert (labels == obj).any()


def test_detect_recipe_clicks_every_object_of_each_stack(plate, predictor, tmp_path):
    """--prompts detect: one click per object found on frame 0 of each stack (not the
    taught stack's positions); the one taught adapter serves every detected object."""
    from scipy import ndimage as ndi

    from napari_lit.batch import detect_objects

    root, _, _ = plate
    c = generate_clip(np.random.default_rng(24), 24, 96, kind="nuclei")  # the plate's pos4
    gt0 = c.labels[0]
    clicks = detect_objects(c.frames[0, ..., 0])
    inside = [int(gt0[y, x]) for y, x in clicks]
    assert sum(i > 0 for i in inside) >= 0.8 * len(clicks) and len(set(i for i in inside if i)) >= 2
    s = LitSession.resume(root / "taught.litsession", predictor, tifffile.imread(root / "pos0.tif"))
    recipe = export_recipe(s, tmp_path / "recipe", prompts="detect")
    s.close()
    meta = json.loads((recipe / RECIPE_FILE).read_text())
    assert meta["prompt_mode"] == "detect" and meta["prompts"] == []
    row = segment_stack(root / "pos4.tif", recipe, tmp_path / "out")
    assert row["objects"] == len(clicks)
    import zarr

    labels = np.asarray(zarr.open_array(row["labels"], mode="r")[0])
    # each detected object's mask overlaps the ground-truth object it was clicked in
    hits = []
    for k, (y, x) in enumerate(clicks, start=1):
        g = gt0 == gt0[y, x]
        if gt0[y, x]:
            hits.append(((labels == k) & g).sum() / max(((labels == k) | g).sum(), 1))
    assert np.median(hits) > 0.4, hits
    assert ndi.label(labels > 0)[1] >= 2


def test_recipe_of_a_sequence_scope_session_carries_the_shared_adapter(plate, predictor, tmp_path):
    """Scope ``sequence``: the recipe holds the one adapter shared by all objects; the batch
    worker loads it and it serves every detected object (ids the session never had)."""
    from napari_lit.batch import _model_for

    root, _, obj = plate
    c = generate_clip(np.random.default_rng(20), 24, 96, kind="nuclei")  # pos0
    s = LitSession.create_in(tmp_path / "s.litsession", predictor, c.frames[..., 0],
                             adapter_config=AdapterConfig(max_steps=5, scope="sequence"))
    s.add_mask(0, obj, c.labels[0] == obj)
    list(s.propagate())
    s.add_mask(6, obj, c.labels[6] == obj)
    list(s.learn_from(6, obj))
    assert s.adapter.has_shared and s.adapter.own_adapters() == []
    recipe = export_recipe(s, tmp_path / "recipe", prompts="detect")
    meta = json.loads((recipe / RECIPE_FILE).read_text())
    assert meta["sequence_adapter"] and meta["adapted_objects"] == [] and meta["adapter"]["scope"] == "sequence"
    assert (recipe / "adapters" / "sequence" / "adapter.pt").is_file()
    _, worker = _model_for(recipe, "cpu")
    assert worker.has_shared and worker.always and worker.has_adapter(7)
    inputs = s.tracker.decoder_inputs(6, obj)
    assert torch.equal(worker.predict(7, inputs)[0], s.adapter.predict(obj, inputs)[0])
    s.close()
    row = segment_stack(root / "pos1.tif", recipe, tmp_path / "out")
    assert row["objects"] >= 2 and row["frames"] == 24


def test_batch_with_the_division_rule_writes_the_lineage_that_export_reads(predictor, tmp_path):
    """A recipe with --divisions: each stack is tracked with the division rule, the lineage
    goes into the label store's attributes, and the CTC export of that store has it."""
    from napari_lit.io.tracks import read_ctc_tracks

    def disc(shape, cy, cx, r):
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r

    n, shape = 10, (64, 80)
    gt = np.zeros((n,) + shape, np.uint32)
    for f in range(n):
        if f < 5:
            gt[f][disc(shape, 30, 30, 8)] = 1
        else:
            d = 3 * (f - 4)
            gt[f][disc(shape, 30 - d, 30, 5)] = 2
            gt[f][disc(shape, 30 + d, 32, 5)] = 3
    rng = np.random.default_rng(0)
    frames = (np.where(gt > 0, 200, 30) + rng.normal(0, 5, gt.shape)).astype(np.float32)
    tifffile.imwrite(tmp_path / "cell.tif", frames)
    s = LitSession.create_in(tmp_path / "s.litsession", predictor, frames, source=str(tmp_path / "cell.tif"),
                             zoom="off")
    s.add_mask(0, 1, gt[0] == 1)
    recipe = export_recipe(s, tmp_path / "recipe", divisions=0.2)
    s.close()
    assert json.loads((recipe / RECIPE_FILE).read_text())["divisions"] == 0.2
    row = segment_stack(tmp_path / "cell.tif", recipe, tmp_path / "out")
    assert row["status"] == "done" and row["divisions"] == 1
    import zarr

    store = zarr.open_array(row["labels"], mode="r")
    lineage = store.attrs["napari_lit"]["lineage"]
    assert sorted(lineage.values()) == [1, 1] and len(lineage) == 2
    labels = np.asarray(store[:])
    (t,) = {f for f in range(n) if any((labels[f] == int(d)).any() for d in lineage) and
            not any((labels[f - 1] == int(d)).any() for d in lineage)}
    assert not (labels[t:] == 1).any() and (labels[:t] == 1).any(axis=(1, 2)).all()
    assert main(["export", row["labels"], str(tmp_path / "RES"), "--format", "ctc", "--quiet"]) == 0
    rows = read_ctc_tracks(tmp_path / "RES")
    assert rows[0] == (1, 0, t - 1, 0) and sorted(r[3] for r in rows[1:]) == [1, 1]
    with pytest.raises(Exception, match="divisions"):
        from napari_lit.cli import batch
        batch([str(tmp_path / "cell.tif")], tmp_path / "s.litsession", tmp_path / "o2", divisions=0.9)
