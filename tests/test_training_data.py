"""The training data generator and the recipe's scene mixes (what lit-tiny learns from)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lit.training.synthetic import (
    DEFAULT_KIND_WEIGHTS,
    SCENE_KINDS,
    MotionLevel,
    draw_kind,
    generate_clip,
)


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_every_kind_gives_frames_and_labels_that_agree(kind):
    c = generate_clip(np.random.default_rng(5), 4, 96, kind=kind, motion=MotionLevel(3.0, 0.02, 0.8))
    assert c.kind == kind
    assert c.frames.shape == (4, 96, 96, 3) and c.frames.dtype == np.uint8
    assert c.labels.shape == (4, 96, 96) and c.labels.dtype == np.int32
    assert (c.labels > 0).any(), "a clip without any object teaches nothing"
    assert c.frames.std() > 5, "frames are flat"
    again = generate_clip(np.random.default_rng(5), 4, 96, kind=kind, motion=MotionLevel(3.0, 0.02, 0.8))
    np.testing.assert_array_equal(c.frames, again.frames)  # a seed gives the same clip
    np.testing.assert_array_equal(c.labels, again.labels)


@pytest.mark.parametrize("kind", ["natural", "parts", "photo"])
def test_small_frames_that_fit_fewer_objects_than_drawn(kind):
    """On a 64 px frame the spacing rule fits fewer objects than the scene draws; the clip is
    made with those that fit (the natural scene once indexed the missing ones)."""
    for seed in range(12):
        c = generate_clip(np.random.default_rng(seed), 3, 64, kind=kind, motion=MotionLevel(3.0, 0.02, 0.8))
        assert c.labels.shape == (3, 64, 64) and c.labels.max() >= 1


def test_parts_objects_are_multi_coloured_and_move_over_a_cluttered_background():
    rng = np.random.default_rng(0)
    multi, moved, clutter = 0, 0, []
    for _ in range(8):
        c = generate_clip(rng, 6, 128, kind="parts", motion=MotionLevel(3.0, 0.02, 0.8))
        frame, lab = c.frames[0].astype(float), c.labels[0]
        bg = frame[lab == 0]
        clutter.append(np.unique(bg // 32, axis=0).shape[0])  # distinct coarse colours
        for obj in np.unique(lab[lab > 0]):
            px = frame[lab == obj]
            if len(px) < 200:
                continue
            # several parts of their own colour: the object's colours form separate groups
            spread = np.percentile(px, 95, axis=0) - np.percentile(px, 5, axis=0)
            multi += int(spread.max() > 60)
            if (c.labels[-1] == obj).any():
                moved += int((c.labels[-1] == obj).sum() != (lab == obj).sum()
                             or not np.array_equal(c.labels[-1] == obj, lab == obj))
    assert multi >= 4, f"only {multi} objects look made of differently coloured parts"
    assert moved >= 4
    assert np.median(clutter) >= 8, f"background has {clutter} coarse colours: not cluttered"


def test_em_sections_are_packed_look_alikes_of_many_sizes_moving_on_their_own():
    """Serial-section EM neuropil (the ``em`` kind): the field is tiled by compartments
    separated by thin membranes; their sizes span an order of magnitude; each moves its own
    way from section to section (no shared drift a model could just follow)."""
    rng = np.random.default_rng(3)
    spreads, membrane, independent = [], [], []
    for _ in range(4):
        c = generate_clip(rng, 4, 192, kind="em", motion=MotionLevel(3.0, 0.02, 0.8))
        lab = c.labels
        membrane.append((lab[0] == 0).mean())
        ids, areas = np.unique(lab[0][lab[0] > 0], return_counts=True)
        spreads.append(np.percentile(areas, 90) / np.percentile(areas, 10))
        shifts = []
        for obj, area in zip(ids, areas):
            a, b = np.argwhere(lab[0] == obj), np.argwhere(lab[-1] == obj)
            if area > 150 and len(b) > 150:
                shifts.append(b.mean(0) - a.mean(0))
        shifts = np.array(shifts)
        # how much the objects' displacements differ from their common mean
        independent.append(np.linalg.norm(shifts - shifts.mean(0), axis=1).mean())
        # neighbours look alike: compartment interiors have about the same grey level
        grey = [c.frames[0, ..., 0][lab[0] == i].mean() for i in ids[areas > 150]]
        assert np.std(grey) < 40
    assert all(0.03 < m < 0.4 for m in membrane), membrane
    assert min(spreads) > 5, f"compartment sizes too uniform: 90th/10th percentile area {spreads}"
    assert min(independent) > 2, f"compartments move together: {independent} px"


def test_too_small_frames_are_refused_with_the_minimum():
    for kind in SCENE_KINDS:
        c = generate_clip(np.random.default_rng(0), 2, 48, kind=kind)
        assert c.labels.shape == (2, 48, 48)
    with pytest.raises(ValueError, match=">= 48 px"):
        generate_clip(np.random.default_rng(0), 2, 32, kind="nuclei")


def test_photo_objects_carry_photograph_patches_that_move_with_them():
    """The ``photo`` kind: backgrounds and object pieces are cut from the bundled sample
    photographs (so their local statistics are a real photo's, not smooth noise), and an
    object's texture travels with it: its pixels on frame 1, shifted by the object's own
    displacement, match frame 0 far better than unshifted."""
    from napari_lit.training.synthetic import photo_bank

    bank = photo_bank()
    assert len(bank) >= 10 and all(p.ndim == 3 and p.shape[2] == 3 and p.dtype == np.float32 for p in bank)
    rng = np.random.default_rng(3)
    follows, checked = 0, 0
    for _ in range(10):
        c = generate_clip(rng, 2, 128, kind="photo", motion=MotionLevel(3.0, 0.0, 0.0))
        f0, f1 = c.frames[0].astype(float), c.frames[1].astype(float)
        for obj in np.unique(c.labels[0][c.labels[0] > 0]):
            m0, m1 = c.labels[0] == obj, c.labels[1] == obj
            if m0.sum() < 400 or m1.sum() < 400:
                continue
            (y0, x0), (y1, x1) = [np.argwhere(m).mean(0) for m in (m0, m1)]
            dy, dx = int(round(y1 - y0)), int(round(x1 - x0))
            if abs(dy) + abs(dx) < 2:
                continue
            core = m0 & np.roll(m1, (-dy, -dx), (0, 1))  # object pixels on both frames
            core &= np.roll(core, 2, 0) & np.roll(core, -2, 0) & np.roll(core, 2, 1) & np.roll(core, -2, 1)
            if core.sum() < 100:
                continue
            moved = np.abs(f0[core] - np.roll(f1, (-dy, -dx), (0, 1))[core]).mean()
            still = np.abs(f0[core] - f1[core]).mean()
            checked += 1
            follows += int(moved < 0.7 * still)
    # (articulated parts swing about the core, so not every piece follows the centroid exactly)
    assert checked >= 4 and follows >= 0.6 * checked, (follows, checked)


def test_default_kind_draw_leaves_parts_and_em_out_and_weights_are_checked():
    assert DEFAULT_KIND_WEIGHTS["parts"] == 0 and DEFAULT_KIND_WEIGHTS["em"] == 0
    assert DEFAULT_KIND_WEIGHTS["photo"] == 0
    kinds = {draw_kind(np.random.default_rng(s)) for s in range(300)}
    assert not {"parts", "em", "photo"} & kinds and len(kinds) == len(SCENE_KINDS) - 3
    assert {draw_kind(np.random.default_rng(s), {"parts": 1.0}) for s in range(20)} == {"parts"}
    with pytest.raises(ValueError, match="unknown scene kinds"):
        draw_kind(np.random.default_rng(0), {"cells": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        draw_kind(np.random.default_rng(0), {"parts": 0.0})


def test_parts_schedule_draws_its_scene_mix():
    pytest.importorskip("training")  # sam2's training package (collate_fn)
    from napari_lit.training.recipe import ALL_KINDS, EM_KINDS, PARTS_KINDS, PHOTO_KINDS, SCHEDULES, make_batch

    assert all(stage.kinds == PARTS_KINDS for stage in SCHEDULES["parts"])
    assert all(stage.kinds == EM_KINDS for stage in SCHEDULES["em"])
    assert dict(EM_KINDS)["em"] > 0 and dict(EM_KINDS)["parts"] > 0
    assert all(stage.kinds == PHOTO_KINDS for stage in SCHEDULES["photo"])
    assert dict(PHOTO_KINDS)["photo"] > 0 and dict(PHOTO_KINDS)["parts"] > 0
    assert all(stage.kinds is None for stage in SCHEDULES["default"])
    # precision: every kind of the photo and em mixes; single frames, then slow short clips
    assert all(stage.kinds == ALL_KINDS for stage in SCHEDULES["precision"])
    assert {k for k, _ in PHOTO_KINDS + EM_KINDS} == {k for k, _ in ALL_KINDS}
    assert [s.n_frames for s in SCHEDULES["precision"]] == [1, 4, 6]
    assert SCHEDULES["precision"][1].motion.speed < SCHEDULES["precision"][2].motion.speed
    # long: the parts mix on clips longer than the memory's 7 frames, as many frames per step
    assert all(stage.kinds == PARTS_KINDS for stage in SCHEDULES["long"])
    assert [s.n_frames * s.clips for s in SCHEDULES["long"][1:]] == [12, 16]
    assert min(s.n_frames for s in SCHEDULES["long"][1:]) > 8
    batch = make_batch(np.random.default_rng(1), 3, 2, MotionLevel(), 2, 64, kinds=(("parts", 1.0),))
    assert tuple(batch.img_batch.shape) == (3, 2, 3, 64, 64)
    assert batch.masks.shape[0] == 3 and batch.masks[0].flatten(1).any(1).all()


@pytest.mark.slow
def test_parts_schedule_trains_and_validates_on_parts_clips(tmp_path):
    """Two optimiser steps of the ``parts`` schedule from lit-tiny's weights: the run logs the
    parts validation set, selects on ``val_mix`` and changes the weights; with ``val_mix_em``
    it also validates on EM clips."""
    import torch

    from napari_lit.models.catalogue import LIT_TINY_WEIGHTS
    from napari_lit.training.recipe import RecipeConfig, train

    cfg = RecipeConfig(steps=2, val_every=2, val_clips=1, log_every=1, schedule="parts",
                       select="val_mix", lr=1e-3, warmup=0)
    weights = LIT_TINY_WEIGHTS
    records = list(train(tmp_path / "run", cfg, init_weights=weights))
    val = records[-1]
    assert {"val_parts_track_j", "val_parts_static_j", "val_mix"} <= set(val)
    assert 0 <= val["val_parts_track_j"] <= 1
    assert val["val_mix"] == pytest.approx((val["val_track_j"] + val["val_change_track_j"]
                                            + val["val_parts_track_j"]) / 3)
    before = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    after = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=False)["model"]
    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    assert not torch.allclose(before[key].float(), after[key].float())
    with pytest.raises(ValueError, match="select must be one of"):
        next(train(tmp_path / "other", RecipeConfig(select="val_parts")))
    cfg = RecipeConfig(steps=1, val_every=1, val_clips=1, log_every=1, schedule="em",
                       select="val_mix_em", warmup=0)
    val = list(train(tmp_path / "em", cfg, init_weights=weights))[-1]
    assert 0 <= val["val_em_track_j"] <= 1
    assert val["val_mix_em"] == pytest.approx((3 * val["val_mix"] + val["val_em_track_j"]) / 4)
    cfg = RecipeConfig(steps=1, val_every=1, val_clips=1, log_every=1, schedule="photo",
                       select="val_mix_photo", warmup=0)
    val = list(train(tmp_path / "photo", cfg, init_weights=weights))[-1]
    assert 0 <= val["val_photo_track_j"] <= 1
    assert val["val_mix_photo"] == pytest.approx((3 * val["val_mix"] + val["val_photo_track_j"]) / 4)


def test_step_batches_are_the_same_from_worker_processes_and_after_a_resume():
    """The batch of step s comes from the seed and s alone: a DataLoader with two worker
    processes yields exactly the batches generated in-process, and a loader started at step
    2 (a resumed run) gives steps 2 and 3 unchanged; other seeds give other batches."""
    import torch

    from napari_lit.training.recipe import RecipeConfig, SCHEDULES, _StepBatches, step_batch

    cfg = RecipeConfig(steps=4, image_size=64, schedule="photo", data_workers=2)
    stages = SCHEDULES["photo"]
    inline = [step_batch(cfg, s) for s in range(4)]
    loader = torch.utils.data.DataLoader(_StepBatches(cfg, stages), batch_size=None,
                                         sampler=range(4), num_workers=2)
    from_workers = list(loader)
    resumed = list(torch.utils.data.DataLoader(_StepBatches(cfg, stages), batch_size=None,
                                               sampler=range(2, 4)))
    for a, b in zip(inline, from_workers):
        assert torch.equal(a.img_batch, b.img_batch) and torch.equal(a.masks, b.masks)
    for a, b in zip(inline[2:], resumed):
        assert torch.equal(a.img_batch, b.img_batch)
    other = step_batch(RecipeConfig(steps=4, image_size=64, schedule="photo", seed=1), 0)
    assert other.img_batch.shape != inline[0].img_batch.shape or not torch.equal(
        other.img_batch, inline[0].img_batch)
    # clips_scale multiplies the clips of the stage's batches
    doubled = step_batch(RecipeConfig(steps=4, image_size=64, schedule="photo", clips_scale=2), 0)
    assert doubled.img_batch.shape[1] == 2 * inline[0].img_batch.shape[1]
