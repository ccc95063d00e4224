"""The image-feature cache: encode each frame once, reuse it for every propagation (issue 28).

Encoder calls are counted with a forward hook on the real model's image encoder."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lit.core.features import DiskFeatures, FeatureCache, FeatureCacheError, feature_identity, folder_features
from napari_lit.core.frames import FrameSource
from napari_lit.core.session import LitSession
from napari_lit.core.tracker import Tracker


@pytest.fixture()
def encodes(predictor):
    """Counts the image encoder's forward calls (reset it with ``encodes[0] = 0``)."""
    count = [0]
    handle = predictor.image_encoder.register_forward_hook(lambda *a: count.__setitem__(0, count[0] + 1))
    yield count
    handle.remove()


def _two_nuclei(clip):
    frames, labels = clip
    ids, counts = np.unique(labels[0][labels[0] > 0], return_counts=True)
    return frames, labels, [int(i) for i in ids[np.argsort(-counts)][:2]]


def _track_with_folder(predictor, frames, labels, ids, path, **kw):
    """Track through a tracker whose features go to (and come from) the folder ``path``;
    returns its masks and the cache."""
    cache = folder_features(predictor, FrameSource(frames, 256), path, **kw)
    t = Tracker(predictor, frames, zoom="off", features=cache)
    try:
        return _track(t, labels, ids), cache
    finally:
        t.close()


def _track(tracker, labels, ids, direction="forward", start=0):
    for i in ids:
        if not tracker.prompt_frames(i):
            tracker.add_mask(start, i, labels[start] == i)
    return {r.frame_idx: r.labels() for r in tracker.propagate(start, direction)}


@pytest.mark.parametrize("zoom", ["auto", "off"])
def test_a_second_propagation_encodes_nothing_and_gives_the_same_masks(predictor, clip, encodes, zoom):
    frames, labels, ids = _two_nuclei(clip)
    plain = Tracker(predictor, frames, zoom=zoom, features=None)
    expected = _track(plain, labels, ids)
    encodes[0] = 0
    again = _track(plain, labels, ids)
    uncached_second = encodes[0]
    assert uncached_second >= len(frames) - 1  # sam2 alone encodes every frame again (the prompt's not)

    tracker = Tracker(predictor, frames, zoom=zoom)
    encodes[0] = 0
    first = _track(tracker, labels, ids)
    assert encodes[0] >= len(frames)
    encodes[0] = 0
    second = _track(tracker, labels, ids)
    assert encodes[0] == 0
    assert tracker.features.stats["memory_hits"] >= len(frames) - 1
    for f in expected:
        np.testing.assert_array_equal(first[f], expected[f])
        np.testing.assert_array_equal(second[f], again[f])
    plain.close()
    tracker.close()


def test_a_backward_run_after_a_forward_one_reads_the_cache(predictor, clip, encodes):
    frames, labels, ids = _two_nuclei(clip)
    tracker = Tracker(predictor, frames, zoom="off")
    _track(tracker, labels, ids, "forward", start=3)
    encodes[0] = 0
    back = _track(tracker, labels, ids, "backward", start=len(frames) - 1)
    assert encodes[0] == 3  # frames 0-2 only: 3..N-1 were encoded going forward
    plain = Tracker(predictor, frames, zoom="off", features=None)
    _track(plain, labels, ids, "forward", start=3)
    expected = _track(plain, labels, ids, "backward", start=len(frames) - 1)
    for f in expected:
        np.testing.assert_array_equal(back[f], expected[f])
    tracker.close()
    plain.close()


def test_the_memory_budget_bounds_the_cache_least_recently_used_first(predictor, clip):
    frames, labels, ids = _two_nuclei(clip)
    tracker = Tracker(predictor, frames, zoom="off")
    _track(tracker, labels, ids)
    per_frame = tracker.features.nbytes // len(tracker.features)
    small = FeatureCache(budget_bytes=3 * per_frame)
    bounded = Tracker(predictor, frames, zoom="off", features=small)
    _track(bounded, labels, ids)
    assert len(small) == 3 and small.nbytes <= 3 * per_frame
    assert all((f, None) in small for f in (len(frames) - 3, len(frames) - 2, len(frames) - 1))
    assert (0, None) not in small
    with pytest.raises(FeatureCacheError, match="budget_bytes"):
        FeatureCache(budget_bytes=-1)
    tracker.close()
    bounded.close()


def test_a_shared_cache_refuses_another_image(predictor, clip):
    frames, labels, ids = _two_nuclei(clip)
    shared = FeatureCache()
    t1 = Tracker(predictor, frames, zoom="off", features=shared)
    _track(t1, labels, ids)
    t2 = Tracker(predictor, frames.copy(), zoom="off", features=shared)  # the same image: fine
    other = frames.copy()
    other[0] = other[0][::-1]
    with pytest.raises(FeatureCacheError, match="another image"):
        Tracker(predictor, other, zoom="off", features=shared)
    with pytest.raises(TypeError, match="FeatureCache"):
        Tracker(predictor, frames, features="disk")
    t1.close()
    t2.close()


def test_a_resumed_session_reads_its_features_from_the_folder(predictor, clip, encodes, tmp_path):
    frames, labels, ids = _two_nuclei(clip)
    s = LitSession.create_in(tmp_path / "s", predictor, frames)
    for i in ids:
        s.add_mask(0, i, labels[0] == i)
    list(s.propagate(0, "forward"))
    written = np.asarray(s.store.array[:])
    s.close()
    assert (tmp_path / "s" / "features" / "zarr.json").exists()

    encodes[0] = 0
    r = LitSession.resume(tmp_path / "s", predictor, frames)
    list(r.propagate(0, "forward"))
    assert encodes[0] == 0
    assert r.tracker.features.stats["disk_hits"] >= len(frames)
    np.testing.assert_array_equal(np.asarray(r.store.array[:]), written)
    r.close()


def test_a_cache_of_another_model_or_image_is_refused_and_recomputed(predictor, clip, encodes, tmp_path):
    from napari_lit.models.build import build_sam2_model
    from napari_lit.models.catalogue import LIT_TINY_CONFIG

    frames, labels, ids = _two_nuclei(clip)
    path = tmp_path / "features"
    expected, _ = _track_with_folder(predictor, frames, labels, ids, path)
    assert len(DiskFeatures(path, feature_identity(predictor, FrameSource(frames, 256))).frames()) == len(frames)

    other_model = build_sam2_model(LIT_TINY_CONFIG, target="video")  # the same architecture, fresh weights
    other_model.eval()
    refused = folder_features(other_model, FrameSource(frames, 256), path)
    assert refused.disk.refused and refused.disk.frames() == []

    other_image = frames.copy()
    other_image[:, :10] = 0
    refused = folder_features(predictor, FrameSource(other_image, 256), path)
    assert refused.disk.refused

    # the folder now belongs to the other image; the first one's features are computed again
    encodes[0] = 0
    again, _ = _track_with_folder(predictor, frames, labels, ids, path)
    assert encodes[0] >= len(frames)
    for f in expected:
        np.testing.assert_array_equal(again[f], expected[f])


def test_a_corrupt_entry_is_recomputed_never_used(predictor, clip, encodes, tmp_path):
    frames, labels, ids = _two_nuclei(clip)
    path = tmp_path / "features"
    expected, _ = _track_with_folder(predictor, frames, labels, ids, path)
    chunk = path / "frame" / "level2" / "c" / "4" / "0" / "0" / "0"
    assert chunk.exists()
    chunk.write_bytes(chunk.read_bytes()[:-7])  # cut short: does not decode
    other = path / "frame" / "level1" / "c" / "5" / "0" / "0" / "0"
    raw = bytearray(other.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # altered: decodes (or not) to other values
    other.write_bytes(bytes(raw))

    encodes[0] = 0
    again, cache = _track_with_folder(predictor, frames, labels, ids, path, budget_bytes=0)
    assert encodes[0] == 2  # frames 4 and 5
    for f in expected:
        np.testing.assert_array_equal(again[f], expected[f])
    assert sorted(DiskFeatures(path, cache.identity).frames()) == list(range(len(frames)))  # rewritten


def test_a_folder_that_is_not_a_feature_cache_is_never_touched(predictor, clip, tmp_path):
    frames, _, _ = _two_nuclei(clip)
    mine = tmp_path / "my-data"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FeatureCacheError, match="not a napari-lit feature cache"):
        folder_features(predictor, FrameSource(frames, 256), mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(FeatureCacheError, match="float32, float16 or bfloat16"):
        DiskFeatures(tmp_path / "x", {}, dtype="int8")


@pytest.mark.parametrize("dtype, tolerance", [("float16", 1e-2), ("bfloat16", 1e-1)])
def test_lower_precision_folders_store_the_features_within_their_rounding(predictor, clip, tmp_path, dtype, tolerance):
    frames, labels, ids = _two_nuclei(clip)
    source = FrameSource(frames, 256)
    identity = feature_identity(predictor, source)
    cache = FeatureCache(disk=DiskFeatures(tmp_path / dtype, identity, dtype=dtype))
    t = Tracker(predictor, frames, zoom="off", features=cache)
    _track(t, labels, ids)
    stored = DiskFeatures(tmp_path / dtype, identity, dtype=dtype).read(2, None)
    exact = [x[0].numpy() for x in cache.get(2, None)["backbone_fpn"]]
    for a, b in zip(stored, exact):
        assert a.dtype == np.float32 and a.shape == b.shape
        assert np.max(np.abs(a - b)) <= tolerance * max(1.0, float(np.max(np.abs(b))))
    t.close()


def test_precompute_fills_what_a_propagation_reads_and_goes_on_where_it_stopped(predictor, clip, encodes):
    frames, labels, ids = _two_nuclei(clip)
    tracker = Tracker(predictor, frames, zoom="auto")
    assert tracker.precompute_plan() == [(f, None) for f in range(len(frames))]  # nothing prompted: whole frames
    for i in ids:
        tracker.add_mask(0, i, labels[0] == i)
    plan = tracker.precompute_plan()
    windows = {w for _, w in plan}
    assert len(plan) == len(frames) * len(windows) and len(windows) >= 1
    encodes[0] = 0
    done = tracker.precompute(plan)
    for _ in range(3):
        next(done)
    done.close()  # stopped (the widget's cancel): the rest is encoded next time, nothing twice
    first = encodes[0]
    assert first <= 3
    list(tracker.precompute(plan))
    assert encodes[0] == len(plan) - sum(1 for f, w in plan if f == 0)  # the prompts' frame was cached
    encodes[0] = 0
    _track(tracker, labels, ids)
    assert encodes[0] == 0  # the windows did not move: everything was foreseen
    with pytest.raises(ValueError, match="not inside"):
        list(tracker.precompute([(0, (0, 0, 500, 500))]))
    tracker.close()
    with pytest.raises(ValueError, match="no features"):
        list(Tracker(predictor, frames, features=None).precompute())


def test_embed_fills_the_user_cache_that_later_trackers_read(tmp_path, clip, predictor, monkeypatch, encodes):
    import tifffile

    from napari_lit.cli import main

    monkeypatch.setenv("NAPARI_LIT_CACHE", str(tmp_path / "cache"))
    frames, labels, ids = _two_nuclei(clip)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, frames, photometric="minisblack")
    assert main(["embed", str(path), "--quiet"]) == 0
    stack = tifffile.imread(path)
    source = FrameSource(stack, 256)
    cache = folder_features(predictor, source)
    assert cache.disk is None and len(cache.extra) == 1
    assert cache.extra[0].frames() == list(range(len(frames)))
    encodes[0] = 0
    t = Tracker(predictor, source, zoom="off", features=cache)
    _track(t, labels, ids)
    assert encodes[0] == 0 and cache.stats["disk_hits"] >= len(frames) - 1
    t.close()
    assert main(["embed", str(path), "--quiet"]) == 0  # all there: nothing to do
    assert main(["embed", str(tmp_path / "missing.tif"), "--quiet"]) == 2


def test_embed_a_session_fills_its_windows_and_the_resumed_session_encodes_nothing(tmp_path, clip, predictor,
                                                                                  encodes):
    import tifffile

    from napari_lit.cli import main

    frames, labels, ids = _two_nuclei(clip)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, frames, photometric="minisblack")
    s = LitSession.create_in(tmp_path / "s", predictor, tifffile.imread(path), source=str(path))
    for i in ids:
        s.add_mask(0, i, labels[0] == i)
    s.close()
    assert main(["embed", str(path), "--session", str(tmp_path / "s"), "--quiet"]) == 0
    encodes[0] = 0
    r = LitSession.resume(tmp_path / "s", predictor, tifffile.imread(path))
    list(r.propagate(0, "forward"))
    assert encodes[0] == 0
    r.close()
    assert main(["embed", str(path), "--session", str(tmp_path / "s"), "--dtype", "float16", "--quiet"]) == 2


def test_the_identity_is_computed_once_per_frames_and_model(predictor, clip, tmp_path, monkeypatch):
    """Binding reads frames (the image fingerprint): a cache made for a frame source, or
    already bound to it, does not read them again for a tracker on the same source."""
    import napari_lit.core.features as features_module

    frames, _, _ = _two_nuclei(clip)
    calls = []
    original = features_module.feature_identity
    monkeypatch.setattr(features_module, "feature_identity", lambda p, f: calls.append(f) or original(p, f))
    source = FrameSource(frames, 256)
    cache = folder_features(predictor, source, tmp_path / "f")
    Tracker(predictor, source, zoom="off", features=cache).close()
    assert len(calls) == 1
    shared = FeatureCache()
    for _ in range(2):
        Tracker(predictor, source, zoom="off", features=shared).close()
    assert len(calls) == 2
    Tracker(predictor, FrameSource(frames, 256), zoom="off", features=shared).close()  # another source: checked
    assert len(calls) == 3
