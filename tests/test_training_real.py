"""Real training data in the recipe (``napari_lit.training.real``, ``masked``, ``motion``).

The logic is tested on tiny folders in the layouts of ``shared/train`` that the tests write
themselves (bright squares on a dark background, so where the object is can be read off the
pixels); the tests marked ``shared`` read ``/work/shared/train`` and skip where it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("training")  # sam2's training package

from napari_lit.training import real  # noqa: E402
from napari_lit.training.real import (  # noqa: E402
    HELD_BACK_VIDEOS,
    RealData,
    commercial_use_allowed,
    held_back_image,
    render_clip,
    scan_train_data,
    select_data,
    split_train_data,
)
from napari_lit.training.recipe import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

SHARED_TRAIN = Path("/work/shared/train")
shared = pytest.mark.skipif(not SHARED_TRAIN.is_dir(), reason="no shared/train folder (CI)")

LICENCES = {  # as the meta.json files of shared/train state them
    "davis": "DAVIS: CC BY-NC 4.0 (research / non-commercial); video clips owned by their authors, see DAVIS SOURCES.md",
    "ctc": "Cell Tracking Challenge data: free for research/non-commercial use under the CTC 'Conditions of Use' "
           "(cite Ulman et al. 2017 / Maska et al. 2014 and the data providers); snapshot repo itself is MIT "
           "(code), the data keep the CTC terms",
    "dsb": "CC0 1.0 (BBBC038 / Kaggle DSB2018 stage1_train; community fixes also CC0)",
    "ccp": "Apache-2.0 (LICENSE file of the repo; photos collected from the web, CVPR 2014 CCP dataset, cite Yang et al.)",
    "segtrack": "unknown (no licence file in the repo; SegTrack v2, Li et al. ICCV 2013, research use)",
}

# the tiny CTC-like sequence: which frames are annotated, and completely
CTC_FRAMES = 10
CTC_ANNOTATED = [0, 1, 2, 4, 5, 7, 8]
CTC_COMPLETE = [0, 2, 5, 8]


def _meta(folder: Path, layout: str, axes: str, objects, licence: str, n_frames: int, **extra) -> None:
    meta = {"layout": layout, "axes": axes, "objects": list(objects), "license": licence, "n_frames": n_frames,
            **extra}
    (folder / "meta.json").write_text(json.dumps(meta))


def _square(shape, y, x, side):
    m = np.zeros(shape, bool)
    m[max(0, y) : y + side, max(0, x) : x + side] = True
    return m


def _write_video(root: Path, name: str, n_frames: int = 10, shape=(200, 260), licence: str = LICENCES["davis"]):
    """frames/NNNNN.jpg + masks/NNNNN.png: one bright square moving right and down."""
    from PIL import Image

    folder = root / name
    (folder / "frames").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(len(name))
    for t in range(n_frames):
        m = _square(shape, 60 + 2 * t, 80 + 4 * t, 14)
        img = rng.integers(10, 40, shape + (3,), dtype=np.uint8)
        img[m] = (230, 220, 240)
        Image.fromarray(img).save(folder / "frames" / f"{t:05d}.jpg", quality=95)
        Image.fromarray(m.astype(np.uint8)).save(folder / "masks" / f"{t:05d}.png")
    _meta(folder, "frames", "TYXC", [1], licence, n_frames, annotated_frames="all")


def _write_tiff(root: Path, name: str, image, labels, licence: str, **extra):
    import tifffile

    folder = root / name
    folder.mkdir(parents=True)
    tifffile.imwrite(folder / "image.tif", image, compression="zlib")
    tifffile.imwrite(folder / "labels.tif", labels.astype(np.uint16), compression="zlib")
    axes = "TYXC" if image.ndim == 4 else "TYX"
    objects = sorted(int(i) for i in np.unique(labels) if i)
    _meta(folder, "tiff", axes, objects, licence, int(image.shape[0]), **extra)


def _write_ctc(root: Path, name: str = "ctc-fluo-msc-01"):
    """Two cells (ids 3 and 7), uint16. Unannotated frames have no labels at all; on annotated,
    incomplete frames only cell 3 is labelled (cell 7 is visible but reads 0); cell 7 is gone
    on the complete frame 8 (there its absence is ground truth)."""
    shape = (200, 200)
    image = np.full((CTC_FRAMES,) + shape, 500, np.uint16)
    labels = np.zeros((CTC_FRAMES,) + shape, np.uint16)
    for t in range(CTC_FRAMES):
        a = _square(shape, 50 + 2 * t, 40 + 3 * t, 13)
        b = _square(shape, 95 + t, 100 + t, 12)
        image[t][a] = 3000
        if t != 8:
            image[t][b] = 2800
        if t in CTC_ANNOTATED:
            labels[t][a] = 3
            if t in CTC_COMPLETE and t != 8:
                labels[t][b] = 7
    _write_tiff(root, name, image, labels, LICENCES["ctc"], annotated_frames=CTC_ANNOTATED,
                complete_frames=CTC_COMPLETE)


def _write_image(root: Path, name: str, rgb: bool, licence: str, seed: int):
    """One frame with 1-3 bright squares (ids 1..k)."""
    rng = np.random.default_rng(seed)
    shape = (120, 160)
    image = rng.integers(20, 40, shape + ((3,) if rgb else ()), dtype=np.uint8)
    labels = np.zeros(shape, np.uint16)
    for k in range(1, int(rng.integers(1, 4)) + 1):
        m = _square(shape, 10 + 35 * (k - 1), int(rng.integers(10, 120)), int(rng.integers(10, 20)))
        m &= labels == 0
        image[m] = 220
        labels[m] = k
    _write_tiff(root, name, image[None], labels[None], licence, annotated_frames="all")


def _image_names(prefix: str, held: int, kept: int):
    """Folder names of which ``held`` are held back and ``kept`` are not (by the split's hash rule)."""
    out_held, out_kept, i = [], [], 0
    while len(out_held) < held or len(out_kept) < kept:
        name = f"{prefix}-{i:08x}"
        (out_held if held_back_image(name) else out_kept).append(name)
        i += 1
    return out_held[:held], out_kept[:kept]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A tiny ``shared/train``: 2 videos (one held back), a SegTrack clip, the partly annotated
    CTC sequence and a fully annotated one with a held-back tail, nuclei and photo images."""
    root = tmp_path_factory.mktemp("train")
    _write_video(root, "davis16-aaa")
    _write_video(root, HELD_BACK_VIDEOS[0])
    _write_video(root, "segtrackv2-bmx", licence=LICENCES["segtrack"])
    _write_ctc(root)
    _write_ctc(root, "ctc-fluo-simplus-02")
    (root / "ctc-fluo-simplus-02" / "meta.json").write_text(json.dumps(
        {**json.loads((root / "ctc-fluo-simplus-02" / "meta.json").read_text()), "annotated_frames": "all",
         "complete_frames": None}))
    held, kept = _image_names("dsb2018", 2, 4)
    for i, name in enumerate(held + kept):
        _write_image(root, name, rgb=i % 2 == 1, licence=LICENCES["dsb"], seed=i)
    held, kept = _image_names("ccp", 1, 3)
    for i, name in enumerate(held + kept):
        _write_image(root, name, rgb=True, licence=LICENCES["ccp"], seed=10 + i)
    (root / "README.md").write_text("tiny training data\n")
    return root


def _frames_01(video):
    """(T, S, S) grey values in [0, 1] of a rendered clip (ImageNet normalisation undone)."""
    img = np.stack([f.data.permute(1, 2, 0).numpy() for f in video.frames]) * IMAGENET_STD + IMAGENET_MEAN
    return img.mean(axis=-1)


def _masks(video):
    """(T, O, S, S) bool masks of a rendered clip."""
    return np.stack([np.stack([o.segment.numpy() for o in f.objects]) for f in video.frames])


def _bright(grey, masks):
    """Pixels brighter than halfway between the clip's object and background grey values."""
    inside, outside = grey[masks.any(axis=1)].mean(), grey[~masks.any(axis=1)].mean()
    return grey > (inside + outside) / 2


# ------------------------------------------------------------------------------------------------
# reading, groups, annotation


def test_scan_reads_both_layouts_groups_and_annotation(tiny_root):
    seqs = {s.name: s for s in scan_train_data(tiny_root)}
    assert len(seqs) == 3 + 2 + 6 + 4  # README.md is not a sequence
    assert seqs["davis16-aaa"].group == "video" and seqs["segtrackv2-bmx"].group == "video"
    assert seqs["davis16-aaa"].n_frames == 10 and seqs["davis16-aaa"].annotated is None
    ctc = seqs["ctc-fluo-msc-01"]
    assert ctc.group == "ctc" and ctc.annotated == frozenset(CTC_ANNOTATED)
    assert ctc.complete == frozenset(CTC_COMPLETE)
    assert [ctc.is_annotated(t) for t in range(4)] == [True, True, True, False]
    assert [ctc.is_complete(t) for t in range(4)] == [True, False, True, False]
    assert ctc.prompt_frames() == CTC_ANNOTATED
    # without complete_frames, every annotated frame is complete
    assert seqs["ctc-fluo-simplus-02"].complete is None and seqs["ctc-fluo-simplus-02"].is_complete(3)
    assert {s.group for s in seqs.values() if s.single_image} == {"dsb", "ccp"}


def test_scan_refuses_malformed_annotation_and_empty_folders(tmp_path):
    _write_video(tmp_path, "davis16-x", n_frames=3)
    meta = json.loads((tmp_path / "davis16-x" / "meta.json").read_text())
    (tmp_path / "davis16-x" / "meta.json").write_text(json.dumps({**meta, "annotated_frames": [0, 5]}))
    with pytest.raises(ValueError, match=r"annotated_frames must be 'all' or a list of frame indices in \[0, 3\)"):
        scan_train_data(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no sequence folders"):
        scan_train_data(tmp_path / "empty")
    _write_video(tmp_path / "other", "kitti-y", n_frames=2)  # a group the shares do not know
    with pytest.raises(FileNotFoundError, match="no training sequences of a known group"):
        scan_train_data(tmp_path / "other")


def test_valid_pairs_rule():
    from napari_lit.training.masked import valid_pairs

    present = np.array([[1, 1], [1, 0], [1, 0], [0, 0]], bool)
    annotated = np.array([1, 1, 1, 0], bool)
    complete = np.array([1, 1, 0, 0], bool)
    np.testing.assert_array_equal(valid_pairs(present, annotated, complete),
                                  [[1, 1], [1, 1], [1, 0], [0, 0]])
    with pytest.raises(ValueError, match=r"expected present \(T, O\)"):
        valid_pairs(present, annotated[:2], complete)


# ------------------------------------------------------------------------------------------------
# clips


def test_real_clips_have_the_layout_of_generated_batches(tiny_root):
    from napari_lit.training.masked import MaskedVideoBatch
    from napari_lit.training.recipe import make_batch, mixed_batch
    from napari_lit.training.synthetic import MotionLevel

    data = RealData(tiny_root)
    batch = mixed_batch(np.random.default_rng(0), data, 1.0, 4, 3, MotionLevel(), 3, 64)
    generated = make_batch(np.random.default_rng(0), 4, 3, MotionLevel(), 3, 64)
    assert isinstance(batch, MaskedVideoBatch)
    assert tuple(batch.img_batch.shape) == tuple(generated.img_batch.shape) == (4, 3, 3, 64, 64)
    assert batch.img_batch.dtype == generated.img_batch.dtype
    assert batch.masks.dtype == generated.masks.dtype and batch.masks.shape[0] == 4
    assert batch.masks.shape[2:] == (64, 64)
    assert tuple(batch.valid.shape) == tuple(batch.masks.shape[:2]) and batch.valid.dtype.is_floating_point is False
    assert batch.masks[0].flatten(1).any(1).all(), "every object is visible on the prompt frame"
    # frames normalised like generated ones: [0, 1] through the ImageNet mean and std
    lo = ((0 - IMAGENET_MEAN) / IMAGENET_STD).min() - 1e-4
    hi = ((1 - IMAGENET_MEAN) / IMAGENET_STD).max() + 1e-4
    assert lo <= float(batch.img_batch.min()) and float(batch.img_batch.max()) <= hi
    # objects map to their clips as sam2 collates them
    clip_of = batch.obj_to_frame_idx[0, :, 1].tolist()
    assert sorted(set(clip_of)) == [0, 1, 2] and clip_of == sorted(clip_of)
    with pytest.raises(ValueError, match=r"real_share must be in \[0, 1\]"):
        mixed_batch(np.random.default_rng(0), data, 1.5, 4, 3, MotionLevel(), 3, 64)


@pytest.mark.parametrize("name", ["davis16-aaa", "ctc-fluo-msc-01", "dsb", "ccp"])
def test_objects_stay_under_their_masks_through_crops_flips_and_motion(tiny_root, name):
    """Over many random clips (zoom windows with jitter, whole frames, flips, strides,
    direction, single-image motion, appearance jitter), each valid object mask lies on the
    bright square it labels, on every frame."""
    seqs = [s for s in split_train_data(scan_train_data(tiny_root))[0] if s.name == name or s.group == name]
    rng = np.random.default_rng(1)
    checked = 0
    for i in range(16):
        out = render_clip(seqs[i % len(seqs)], rng, 5, 96, 3)
        if out is None:
            continue
        video, valid = out
        grey, masks = _frames_01(video), _masks(video)
        assert grey.shape == (5, 96, 96) and masks.shape[:2] == valid.shape
        bright = _bright(grey, masks)
        for t in range(5):
            for o in range(masks.shape[1]):
                m = masks[t, o]
                if not valid[t, o] or m.sum() < 10:
                    continue
                assert bright[t][m].mean() > 0.85, f"clip {i} frame {t}: mask off its object"
                checked += 1
    assert checked >= 30


def test_single_object_sequences_mask_exactly_the_object(tiny_root):
    """With one object in the sequence, the mask and the bright pixels coincide (IoU >= 0.85)
    -- nothing of the object is left outside its mask, whatever the view and flip."""
    seq = next(s for s in scan_train_data(tiny_root) if s.name == "davis16-aaa")
    rng = np.random.default_rng(2)
    for _ in range(8):
        video, valid = render_clip(seq, rng, 6, 128, 1)
        grey, masks = _frames_01(video), _masks(video)
        bright = _bright(grey, masks)
        for t in range(6):
            inter = (bright[t] & masks[t, 0]).sum()
            union = (bright[t] | masks[t, 0]).sum()
            assert inter / union > 0.85


def test_flip_and_view_matrix_map_pixels_as_cv2_resize():
    import cv2

    from napari_lit.training.motion import view_matrix, warp

    img = np.arange(40 * 60, dtype=np.float32).reshape(40, 60)
    m = view_matrix((10, 20, 30, 40), 20)  # a 20 px window at scale 1: a plain crop
    np.testing.assert_allclose(warp(img, m, 20), img[10:30, 20:40], atol=1e-3)
    flipped = warp(img, view_matrix((10, 20, 30, 40), 20, flip=True), 20)
    np.testing.assert_allclose(flipped, img[10:30, 20:40][:, ::-1], atol=1e-3)
    up = warp(img, view_matrix((0, 0, 40, 60), 80), 80)  # squashed whole frame, enlarged
    ref = cv2.resize(img, (80, 80), interpolation=cv2.INTER_LINEAR)
    assert np.abs(up - ref)[2:-2, 2:-2].max() < 1e-2
    with pytest.raises(ValueError, match="window must be non-empty"):
        view_matrix((5, 5, 5, 9), 16)


def test_windows_follow_the_zoom_rule_for_small_objects(tiny_root):
    """Without augmentation a small object's view is core.zoom's window: the object spans
    about a third of the view's side (its 14 px box in a 128 px window at 256 px: ~28 px)."""
    seq = next(s for s in scan_train_data(tiny_root) if s.name == "davis16-aaa")
    video, _ = render_clip(seq, np.random.default_rng(0), 2, 256, 1, augment=False)
    ys, xs = np.nonzero(_masks(video)[0, 0])
    assert 24 <= ys.max() - ys.min() + 1 <= 32 and 24 <= xs.max() - xs.min() + 1 <= 32
    assert 100 < ys.mean() < 156 and 100 < xs.mean() < 156, "the object is centred"


def test_unannotated_frames_and_unknown_objects_are_flagged(tiny_root, monkeypatch):
    """The partly annotated CTC sequence, played from frame 0 (a complete frame): frames
    nobody annotated are invalid for both cells; on the annotated but incomplete frames the
    labelled cell 3 is valid and the unlabelled cell 7 is not; on the complete frame 8 cell 7
    is valid with an empty mask (it is gone)."""
    seq = next(s for s in scan_train_data(tiny_root) if s.name == "ctc-fluo-msc-01")
    monkeypatch.setattr(real.RealSequence, "prompt_frames", lambda self: [0])
    rng = np.random.default_rng(3)
    for _ in range(20):  # until the prompted cell's view shows the other cell too
        video, valid = render_clip(seq, rng, CTC_FRAMES, 256, 2, augment=False)
        objs = [o.object_id for o in video.frames[0].objects]
        if len(objs) == 2:
            break
    assert sorted(objs) == [3, 7]
    expect = {3: [t in CTC_ANNOTATED for t in range(CTC_FRAMES)], 7: [t in CTC_COMPLETE for t in range(CTC_FRAMES)]}
    for o, obj in enumerate(objs):
        np.testing.assert_array_equal(valid[:, o], expect[obj])
    masks = _masks(video)
    gone = masks[8, objs.index(7)]
    assert valid[8, objs.index(7)] and not gone.any(), "absence on a complete frame is ground truth"
    assert not masks[1, objs.index(7)].any() and not valid[1, objs.index(7)], "unlabelled, not absent"
    assert not valid[3].any() and not valid[6].any() and not valid[9].any()


def test_single_image_motion_moves_the_object_smoothly_and_keeps_frame_0(tiny_root):
    """A single image becomes a sequence: frame 0 is the view itself (the prompt frame), the
    object then moves (its centroid shifts) by small steps, and its mask follows it."""
    from napari_lit.training.motion import ImageMotion

    seq = next(s for s in scan_train_data(tiny_root) if s.group == "dsb")
    rng = np.random.default_rng(4)
    still = render_clip(seq, np.random.default_rng(4), 6, 128, 1, augment=False,
                        motion=ImageMotion(speed=0, rotation=0, scale=0, elastic=0))
    moving = render_clip(seq, rng, 6, 128, 1, augment=False, motion=ImageMotion(speed=4, elastic=2))
    (v_still, _), (v_move, valid) = still, moving
    assert valid.all(), "a single image is annotated on every frame of its sequence"
    m_still, m_move = _masks(v_still)[:, 0], _masks(v_move)[:, 0]
    assert all(np.array_equal(m_still[0], m) for m in m_still[1:]), "no motion: a still sequence"
    np.testing.assert_array_equal(m_move[0], m_still[0])  # frame 0 unmoved
    centres = np.array([np.argwhere(m).mean(0) for m in m_move])
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert np.linalg.norm(centres[-1] - centres[0]) > 3, "the object does not move"
    assert steps.max() < 12, f"jumps of {steps} px: not smooth"
    bright = _bright(_frames_01(v_move), _masks(v_move))
    for t in range(6):
        assert bright[t][m_move[t]].mean() > 0.9


def test_appearance_jitter_changes_grey_values_not_geometry():
    from napari_lit.training.motion import Appearance, jitter_appearance

    frames = np.zeros((3, 8, 8, 3), np.float32)
    frames[:, 2:5, 2:5] = 0.8
    out = jitter_appearance(np.random.default_rng(0), frames, Appearance(noise=0.0), per_frame=True)
    assert out.shape == frames.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert not np.allclose(out, frames)
    for t in range(3):  # the object stays the brighter part
        assert out[t, 2:5, 2:5].min() > out[t][frames[t] == 0].max()
    assert not np.shares_memory(out, frames) and frames.max() == np.float32(0.8)


# ------------------------------------------------------------------------------------------------
# split and licences


def test_held_back_split_is_disjoint_deterministic_and_never_trained_on(tiny_root, monkeypatch):
    seqs = scan_train_data(tiny_root)
    train, val = split_train_data(seqs)
    again = split_train_data(scan_train_data(tiny_root))
    assert (train, val) == again
    val_names = {s.name for s in val}
    assert HELD_BACK_VIDEOS[0] in val_names and "davis16-aaa" not in val_names
    assert sum(s.group == "dsb" for s in val) == 2 and sum(s.group == "ccp" for s in val) == 1
    # the tail rule: the fully annotated CTC sequence gives its last quarter, 2 frames apart
    (t_part,) = [s.frames for s in train if s.name == "ctc-fluo-simplus-02"]
    (v_part,) = [s.frames for s in val if s.name == "ctc-fluo-simplus-02"]
    assert v_part == (8, 10) and t_part == (0, 6) and v_part[0] - t_part[1] == real.TAIL_GAP
    assert {s.name for s in train} & val_names == {"ctc-fluo-simplus-02"}
    # the training loader draws only from the training part, and within its frames
    drawn = []
    original = real.render_clip

    def recording(seq, rng, *args, **kwargs):
        drawn.append((seq.name, seq.frames))
        return original(seq, rng, *args, **kwargs)

    monkeypatch.setattr(real, "render_clip", recording)
    data = RealData(tiny_root)
    rng = np.random.default_rng(0)
    for _ in range(60):
        data.sample_clip(rng, 3, 64, 2)
    names = {n for n, _ in drawn}
    assert not names & (val_names - {"ctc-fluo-simplus-02"})
    assert all(f == (0, 6) for n, f in drawn if n == "ctc-fluo-simplus-02")
    assert len({n.split("-")[0] for n in names}) >= 4, "all groups are drawn"


def test_training_windows_stay_inside_their_part(tiny_root):
    """A training clip from the split CTC sequence never reads a held-back frame: windows
    that run past the part's end turn back (frames 0-5 of 0-9 here)."""
    seq = next(s for s in split_train_data(scan_train_data(tiny_root))[0] if s.name == "ctc-fluo-simplus-02")
    assert seq.frames == (0, 6)
    idx = [real._reflect(4 + 2 * k, *seq.frames) for k in range(6)]
    assert idx == [4, 4, 2, 0, 2, 4] and max(idx) < 6
    assert [real._reflect(k, 0, 1) for k in range(3)] == [0, 0, 0]


def test_commercial_use_is_read_from_each_licence(tiny_root):
    assert commercial_use_allowed(LICENCES["dsb"]) and commercial_use_allowed(LICENCES["ccp"])
    for key in ("davis", "ctc", "segtrack"):
        assert not commercial_use_allowed(LICENCES[key]), key
    assert not commercial_use_allowed("") and not commercial_use_allowed("CC BY-NC-SA 4.0")
    assert commercial_use_allowed("MIT") and commercial_use_allowed("CC BY 4.0")
    seqs = scan_train_data(tiny_root)
    kept = select_data(seqs, "commercial-ok")
    assert {s.group for s in kept} == {"dsb", "ccp"} and len(kept) == 10
    assert select_data(seqs, "all") == seqs
    with pytest.raises(ValueError, match="data must be one of"):
        select_data(seqs, "cc0")
    data = RealData(tiny_root, "commercial-ok")
    assert set(data.shares) == {"dsb", "ccp"}
    assert data.shares["dsb"] == pytest.approx(0.25 / 0.35) and sum(data.shares.values()) == pytest.approx(1)


@shared
def test_shared_train_split_and_licences():
    seqs = scan_train_data(SHARED_TRAIN)
    groups = {g: [s for s in seqs if s.group == g] for g in ("video", "ctc", "dsb", "ccp")}
    assert len(groups["video"]) == 31 and len(groups["ctc"]) == 2
    train, val = split_train_data(seqs)
    val_video = sorted(s.name for s in val if s.group == "video")
    assert val_video == sorted(HELD_BACK_VIDEOS)
    for g in ("dsb", "ccp"):
        share = sum(s.group == g for s in val) / len(groups[g])
        assert 0.05 < share < 0.15, (g, share)
    assert [(s.name, s.frames) for s in val if s.group == "ctc"] == [("ctc-fluo-simplus-02", (30, 40))]
    kept = {s.group for s in select_data(seqs, "commercial-ok")}
    assert kept == {"dsb", "ccp"}, "DAVIS, CTC and SegTrack (licence unknown) are dropped"
    msc = next(s for s in seqs if s.name == "ctc-fluo-msc-01")
    assert len(msc.annotated) == 13 and len(msc.complete) == 6
    # clips from every group of the real folder
    data = RealData(SHARED_TRAIN)
    rng = np.random.default_rng(0)
    for group, seqs_g in data.sequences.items():
        video, valid = render_clip(seqs_g[0], rng, 4, 128, 2) or (None, None)
        if video is None:
            continue
        assert len(video.frames) == 4 and valid.shape[0] == 4
        assert _masks(video)[0].any(axis=(1, 2)).all()


# ------------------------------------------------------------------------------------------------
# the loss and the prompts


def _fake_outputs(n_frames, n_obj, size, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [{"multistep_pred_multimasks_high_res": [torch.randn(n_obj, 3, size, size, generator=g).requires_grad_()],
             "multistep_pred_ious": [torch.rand(n_obj, 3, generator=g)],
             "multistep_object_score_logits": [torch.randn(n_obj, 1, generator=g)]}
            for _ in range(n_frames)]


def test_loss_ignores_unannotated_frames_and_unknown_objects():
    """sam2's loss with a valid mask: changing the prediction on an unannotated frame (or for
    an object unknown on a frame) leaves the loss unchanged and gets no gradient; changing it
    on an annotated frame changes the loss; with every pair valid it is sam2's loss."""
    import torch

    from napari_lit.training.masked import masked_loss
    from napari_lit.training.recipe import make_loss

    loss_fn = make_loss()
    targets = torch.zeros(3, 2, 16, 16, dtype=torch.bool)
    targets[:, 0, 4:10, 4:10] = True
    targets[:, 1, 8:14, 2:6] = True
    outs = _fake_outputs(3, 2, 16)
    valid = torch.ones(3, 2, dtype=torch.bool)
    full = loss_fn(outs, targets)
    same = masked_loss(loss_fn, outs, targets, valid)
    assert all(torch.equal(full[k], same[k]) for k in full)
    valid[1] = False  # frame 1 not annotated
    valid[2, 1] = False  # object 1 unknown on frame 2
    base = masked_loss(loss_fn, outs, targets, valid)["core_loss"]
    changed = _fake_outputs(3, 2, 16)
    changed[1]["multistep_pred_multimasks_high_res"][0] = torch.randn(2, 3, 16, 16) * 10
    changed[2]["multistep_pred_multimasks_high_res"][0] = torch.cat(
        [outs[2]["multistep_pred_multimasks_high_res"][0][:1], torch.randn(1, 3, 16, 16) * 10])
    changed[1]["multistep_object_score_logits"][0] = torch.full((2, 1), -9.0)
    assert torch.allclose(masked_loss(loss_fn, changed, targets, valid)["core_loss"], base)
    changed[0]["multistep_pred_multimasks_high_res"][0] = torch.randn(2, 3, 16, 16) * 10
    assert not torch.allclose(masked_loss(loss_fn, changed, targets, valid)["core_loss"], base)
    # the valid part is sam2's own loss, normalised by the batch's objects as sam2 does
    only_frame0 = valid.clone()
    only_frame0[1:] = False
    ref = loss_fn(outs[:1], targets[:1])["core_loss"]
    assert torch.allclose(masked_loss(loss_fn, outs, targets, only_frame0)["core_loss"], ref)
    base.backward()
    assert outs[1]["multistep_pred_multimasks_high_res"][0].grad is None or not \
        outs[1]["multistep_pred_multimasks_high_res"][0].grad.any()
    assert not outs[2]["multistep_pred_multimasks_high_res"][0].grad[1].any()
    assert outs[2]["multistep_pred_multimasks_high_res"][0].grad[0].abs().sum() > 0
    nothing = masked_loss(loss_fn, outs, targets, torch.zeros(3, 2, dtype=torch.bool))
    assert float(nothing["core_loss"].detach()) == 0.0 and nothing["core_loss"].requires_grad
    with pytest.raises(ValueError, match=r"valid must be \(frames, objects\) = \(3, 2\)"):
        masked_loss(loss_fn, outs, targets, valid[:2])


def test_prompts_come_only_from_fully_annotated_frames(tiny_root):
    """SAM2Train draws conditioning and correction frames at random; inside
    ``prompt_frames_within`` it keeps only the allowed ones (here 0 and 2 of 4), while without
    it the same draws use the others too."""
    import torch

    from napari_lit.models.catalogue import LIT_TINY_CONFIG
    from napari_lit.training.masked import allowed_prompt_frames, prompt_frames_within
    from napari_lit.training.recipe import build_train_model, make_batch
    from napari_lit.training.synthetic import MotionLevel

    model = build_train_model(LIT_TINY_CONFIG)
    model.train()
    batch = make_batch(np.random.default_rng(0), 4, 1, MotionLevel(), 2, 64)
    valid = torch.ones(4, batch.masks.shape[1], dtype=torch.bool)
    valid[1, 0] = valid[3, :] = False
    allowed = allowed_prompt_frames(valid)
    assert allowed == [0, 2] and allowed_prompt_frames(torch.ones(4, 2, dtype=torch.bool)) is None
    free, kept = set(), set()
    for seed in range(40):
        model.rng = np.random.default_rng(seed)
        out = model.prepare_prompt_inputs({}, batch)
        free |= set(out["init_cond_frames"]) | set(out["frames_to_add_correction_pt"])
        model.rng = np.random.default_rng(seed)
        with prompt_frames_within(model, allowed):
            out = model.prepare_prompt_inputs({}, batch)
        used = set(out["init_cond_frames"]) | set(out["frames_to_add_correction_pt"])
        kept |= used
        assert used <= {0, 2}
        assert set(out["mask_inputs_per_frame"]) | set(out["point_inputs_per_frame"]) <= {0, 2}
        assert sorted(out["init_cond_frames"] + out["frames_not_in_init_cond"]) == [0, 1, 2, 3]
    assert {1, 3} & free, "sam2 would have prompted on the unannotated frames"
    assert kept == {0, 2}
    assert "prepare_prompt_inputs" not in vars(model), "the model is restored"


# ------------------------------------------------------------------------------------------------
# the recipe


def _real_cfg(root, **kw):
    from napari_lit.training.recipe import RecipeConfig

    base = dict(steps=6, image_size=64, schedule="real", train_data=str(root), skip_image_stage=False)
    base.update(kw)
    return RecipeConfig(**base)


def test_real_schedule_batches_come_from_seed_and_step_alone(tiny_root):
    """The batch of step s is a function of (seed, s): the same in-process, from two worker
    processes and from a loader started at step 3 (a resume); other seeds give other
    batches; the real share of the clips is about REAL_SHARE."""
    import torch

    from napari_lit.training.masked import MaskedVideoBatch
    from napari_lit.training.recipe import SCHEDULES, _StepBatches, step_batch

    cfg = _real_cfg(tiny_root, data_workers=2)
    stages = SCHEDULES["real"]
    assert all(stage.real == real.REAL_SHARE for stage in stages)
    assert [s.kinds for s in stages] == [s.kinds for s in SCHEDULES["parts"]]
    inline = [step_batch(cfg, s) for s in range(6)]
    assert all(isinstance(b, MaskedVideoBatch) for b in inline)
    workers = list(torch.utils.data.DataLoader(_StepBatches(cfg, stages), batch_size=None, sampler=range(6),
                                               num_workers=2))
    resumed = list(torch.utils.data.DataLoader(_StepBatches(cfg, stages), batch_size=None, sampler=range(3, 6)))
    for a, b in zip(inline, workers):
        assert torch.equal(a.img_batch, b.img_batch) and torch.equal(a.masks, b.masks)
        assert torch.equal(a.valid, b.valid)
    for a, b in zip(inline[3:], resumed):
        assert torch.equal(a.img_batch, b.img_batch) and torch.equal(a.valid, b.valid)
    other = step_batch(_real_cfg(tiny_root, seed=1), 0)
    assert other.img_batch.shape != inline[0].img_batch.shape or not torch.equal(other.img_batch, inline[0].img_batch)
    from napari_lit.training.recipe import RecipeConfig

    with pytest.raises(ValueError, match="set train_data"):
        step_batch(RecipeConfig(steps=6, image_size=64, schedule="real"), 0)


def test_real_clip_share_of_mixed_batches(tiny_root):
    from napari_lit.training.recipe import mixed_batch
    from napari_lit.training.synthetic import MotionLevel

    data = RealData(tiny_root)
    rng = np.random.default_rng(0)
    calls = {"real": 0}
    original = data.sample_clip

    def counting(*a, **k):
        calls["real"] += 1
        return original(*a, **k)

    data.sample_clip = counting
    for _ in range(25):
        mixed_batch(rng, data, 0.6, 1, 4, MotionLevel(), 2, 48, kinds=(("parts", 1.0),))
    assert 0.45 < calls["real"] / 100 < 0.75, calls
    calls["real"] = 0
    mixed_batch(rng, data, 0.0, 1, 4, MotionLevel(), 2, 48, kinds=(("parts", 1.0),))
    assert calls["real"] == 0


def test_real_validation_set_is_held_back_and_fixed(tiny_root):
    from napari_lit.training.real import real_validation_set

    a = real_validation_set(tiny_root, seed=0, n=8, size=64)
    b = real_validation_set(tiny_root, seed=0, n=8, size=64)
    assert [g for g, _ in a] == [g for g, _ in b]
    assert {g for g, _ in a} == {"video", "ctc", "dsb", "ccp"}
    for (_, x), (_, y) in zip(a, b):
        assert torch_equal(x.img_batch, y.img_batch) and torch_equal(x.valid, y.valid)
        assert tuple(x.img_batch.shape[:2]) == (8, 1)


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


@pytest.mark.slow
def test_real_schedule_trains_three_steps_and_selects_on_real_validation(tiny_root, tmp_path):
    """Three optimiser steps of the ``real`` schedule from lit-tiny's weights on the tiny
    folders (tracking stages, the partly annotated CTC sequence among the clips): the run logs
    the real validation per group and ``val_real_mix``, writes best.pt, changes the weights."""
    import torch

    from napari_lit.models.catalogue import LIT_TINY_WEIGHTS
    from napari_lit.training.recipe import train

    cfg = _real_cfg(tiny_root, steps=3, image_size=256, val_every=3, val_clips=4, log_every=1,
                    select="val_real_mix", lr=1e-3, warmup=0, skip_image_stage=True, threads=1)
    records = list(train(tmp_path / "run", cfg, init_weights=LIT_TINY_WEIGHTS, keep_dir=tmp_path / "kept"))
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["core_loss"]) for r in records)
    val = records[-1]
    for group in ("video", "ctc", "dsb", "ccp"):
        assert 0 <= val[f"val_real_{group}_track_j"] <= 1
    assert val["val_real_mix"] == pytest.approx(0.5 * (val["val_mix"] + val["val_real_track_j"]))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["schedule"] == "real" and saved["train_data"] == str(Path(tiny_root).resolve())
    before = torch.load(LIT_TINY_WEIGHTS, map_location="cpu", weights_only=False)["model"]
    after = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=False)["model"]
    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    assert not torch.allclose(before[key].float(), after[key].float())
    # what a later session goes on from: the log, the config and best.pt's weights in float16
    kept = tmp_path / "kept"
    assert (kept / "log.jsonl").read_text() == (tmp_path / "run" / "log.jsonl").read_text()
    assert json.loads((kept / "config.json").read_text()) == saved
    weights = torch.load(kept / "best-weights.pt", map_location="cpu", weights_only=False)
    assert weights["meta"]["step"] == 3 and set(weights["model"]) == set(after)
    assert weights["model"][key].dtype == torch.float16
    assert torch.allclose(weights["model"][key].float(), after[key].float(), atol=1e-3, rtol=1e-3)


def test_train_model_cli_takes_train_data_and_data(tiny_root, tmp_path, monkeypatch):
    from napari_lit.training import recipe

    seen = {}

    def fake_train(run_dir, cfg, **kwargs):
        seen["cfg"], seen["keep_dir"] = cfg, kwargs.get("keep_dir")
        return iter(())

    monkeypatch.setattr(recipe, "train", fake_train)
    assert recipe.main([str(tmp_path / "run"), "--schedule", "real", "--train-data", str(tiny_root),
                        "--data", "commercial-ok", "--select", "val_real_mix", "--keep", str(tmp_path / "k")]) == 0
    assert seen["keep_dir"] == str(tmp_path / "k")
    cfg = seen["cfg"]
    assert (cfg.schedule, cfg.train_data, cfg.data, cfg.select) == ("real", str(tiny_root), "commercial-ok",
                                                                   "val_real_mix")
    with pytest.raises(SystemExit):
        recipe.main([str(tmp_path / "run"), "--data", "non-commercial"])


def test_train_refuses_a_missing_train_data_folder(tmp_path):
    from napari_lit.training.recipe import RecipeConfig, train

    with pytest.raises(FileNotFoundError, match="does not exist"):
        next(train(tmp_path / "run", RecipeConfig(schedule="real", train_data=str(tmp_path / "nowhere"))))
    with pytest.raises(ValueError, match="data must be one of"):
        next(train(tmp_path / "run", RecipeConfig(data="some")))
