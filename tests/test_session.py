"""LitSession: prompt, propagate, correct, learn, accept, undo; everything lands in the store."""

import numpy as np
import pytest

from napari_lit.core.adaptation import AdapterConfig
from napari_lit.core.session import LitSession
from napari_lit.core.store import LabelStore


@pytest.fixture()
def session(predictor, clip, tmp_path):
    frames, labels = clip
    s = LitSession(predictor, frames, tmp_path / "labels.zarr", adapter_config=AdapterConfig(max_steps=5))
    yield s, labels
    s.close()


def test_prompt_propagate_writes_every_frame(session):
    s, labels = session
    obj = int(labels[0].max())
    ys, xs = np.nonzero(labels[0] == obj)
    res = s.add_points(0, obj, [[ys.mean(), xs.mean()]], [1])
    assert s.store.frames_done == (0,)
    assert np.array_equal(s.store.read_frame(0), res.labels())
    assert not s.corrections  # a first prompt is not a correction
    seen = []
    for r in s.propagate(direction="forward"):
        seen.append(r.frame_idx)
        assert r.frame_idx in s.store.frames_done  # on disk before it is yielded
    assert seen == list(range(len(labels)))
    assert s.is_tracked(5, obj) and not s.is_tracked(5, obj + 100)


def test_correction_learn_accept_undo(session):
    s, labels = session
    obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
    s.add_mask(0, obj, labels[0] == obj)
    list(s.propagate(direction="forward"))
    before = s.store.read_frame(4).copy()
    s.add_mask(4, obj, labels[4] == obj)  # a painted correction on a tracked frame
    assert len(s.corrections) == 1
    assert ((s.store.read_frame(4) == obj) == (labels[4] == obj)).mean() > 0.95
    steps = list(s.learn_from(4, obj))
    assert steps and s.n_learned == 1 and s.last_train_ms > 0 and s.corrections[-1].learned
    assert s.last_train_fit == max(step.iou for step in steps)  # how well it took, for the user
    # ... and it is what the adapter now makes of that frame (the best step was kept)
    logits, _, _ = s.adapter.predict(obj, s.tracker.decoder_inputs(4, obj))
    target = s.adapter.target_tensor(s.tracker.decoder_inputs(4, obj), labels[4] == obj) > 0
    pred = logits > 0
    iou = float((pred & target).sum() / (pred | target).sum())
    assert iou == pytest.approx(s.last_train_fit, abs=0.1)
    adapted = s.adapted_prediction(5, obj)
    assert adapted is not None and adapted.shape == labels.shape[1:]
    s.accept(5, obj, labels[5] == obj)
    assert len(s.corrections) == 2
    s.undo()  # the accept
    undone = s.undo()  # the correction on frame 4
    assert undone.frame_idx == 4
    assert np.array_equal(s.store.read_frame(4), before)
    assert not s.adapter.has_adapter(obj) and s.n_learned == 0
    # the first prompt is an edit too: undoing it removes the object and its labels everywhere
    first = s.undo()
    assert first.kind == "prompt" and first.frame_idx == 0
    assert obj not in s.tracker.obj_ids and not s.prompts
    assert all(not (s.store.read_frame(f) == obj).any() for f in range(len(labels)))
    assert np.isnan(s.uncertainty(obj)).all()
    assert s.undo() is None


def test_undo_redo_of_first_prompts_and_removed_prompts(session):
    """Issue 25 item 2: a wrong first click can be taken back; a deleted prompt predicts its
    frame again from the object's memory, or removes an object left with no prompt."""
    s, labels = session
    ids = np.bincount(labels[0].ravel())[1:].argsort()[::-1] + 1
    a, b = int(ids[0]), int(ids[1])
    ys, xs = np.nonzero(labels[0] == a)
    s.add_points(0, a, [[ys.mean(), xs.mean()]], [1])
    s.add_mask(0, b, labels[0] == b)
    clicked = s.store.read_frame(0).copy()
    list(s.propagate(direction="forward"))
    tracked = [s.store.read_frame(f).copy() for f in range(len(labels))]
    assert all((t == a).any() and (t == b).any() for t in tracked)
    # undo b's mask (its only prompt): b is gone from every frame, a is untouched
    c = s.undo()
    assert (c.kind, c.obj_id) == ("prompt", b) and s.tracker.obj_ids == (a,)
    for f in range(len(labels)):
        now = s.store.read_frame(f)
        assert not (now == b).any()
        assert np.array_equal(now == a, tracked[f] == a) or f == 0
    # redo brings b back with its labels; undo/redo is exact for the prompt frame
    s.redo()
    assert s.tracker.obj_ids == (a, b)
    assert np.array_equal(s.store.read_frame(0), clicked)
    assert all(np.array_equal(s.store.read_frame(f), tracked[f]) for f in range(1, len(labels)))
    # a second prompt of a on frame 4, then deleted: frame 4 is predicted again from memory
    ys, xs = np.nonzero(labels[4] == a)
    s.add_points(4, a, [[ys.mean(), xs.mean()]], [1])
    assert s.tracker.prompt_frames(a) == [0, 4]
    s.remove_prompt(4, a)
    assert s.tracker.prompt_frames(a) == [0] and (4, a) not in s.prompts
    again = s.store.read_frame(4) == a
    iou = (again & (tracked[4] == a)).sum() / (again | (tracked[4] == a)).sum()
    assert iou > 0.9, iou  # what propagation made of frame 4 (the memory is that of the run)
    assert s.history[-1].kind == "removal"
    # deleting a's only prompt removes a; undo gives it (and its labels) back
    s.remove_prompt(0, a)
    assert s.tracker.obj_ids == (b,) and all(not (s.store.read_frame(f) == a).any() for f in range(len(labels)))
    s.undo()
    assert s.tracker.obj_ids == (b, a) and s.tracker.prompt_frames(a) == [0]
    assert np.array_equal(s.store.read_frame(0), clicked)
    assert all(((s.store.read_frame(f) == a) == (tracked[f] == a)).all() for f in range(1, len(labels)) if f != 4)
    with pytest.raises(ValueError, match="object .* has no prompt on frame 3"):
        s.remove_prompt(3, a)


def test_uncertainty_per_frame_and_next_uncertain_frame(session):
    s, labels = session
    obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
    assert np.isnan(s.uncertainty(obj)).all()
    s.add_mask(0, obj, labels[0] == obj)
    list(s.propagate(direction="forward"))
    u = s.uncertainty(obj)
    assert u.shape == (len(labels),) and np.isfinite(u).all() and ((0 <= u) & (u <= 1)).all()
    # the values are the masked entropy of what was written
    from napari_lit.core.uncertainty import masked_entropy

    r = next(iter(s.tracker.propagate(start_frame=3, direction="forward")))
    t = s.tracker.temperature  # the model's calibrated logit temperature
    assert u[3] == pytest.approx(masked_entropy(r.logits, temperature=t)[list(r.obj_ids).index(obj)], abs=1e-4)
    # navigation: the nearest frame at or above a threshold, in either direction
    thr = float(np.sort(u[1:])[-2])  # the two most uncertain propagated frames qualify
    hits = sorted(int(f) for f in np.flatnonzero(u >= thr))
    assert s.next_uncertain(-1, obj, thr) == hits[0]
    assert s.next_uncertain(hits[0], obj, thr) == hits[1]
    assert s.next_uncertain(len(labels), obj, thr, step=-1) == hits[-1]
    assert s.next_uncertain(hits[-1], obj, 2.0) is None
    # a painted correction changes the frame's entropy; undo brings back the old value
    s.add_mask(4, obj, labels[4] == obj)
    assert s.uncertainty(obj)[4] != u[4]
    s.undo()
    assert s.uncertainty(obj)[4] == u[4]


def test_suggested_click_lies_in_the_frames_own_prediction(session):
    s, labels = session
    obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
    assert s.suggested_click(3, obj) is None  # not tracked yet
    s.add_mask(0, obj, labels[0] == obj)
    results = {r.frame_idx: r for r in s.propagate(direction="forward")}
    y, x = s.suggested_click(3, obj)
    mask = results[3].mask(obj)
    assert mask[y, x]  # on the object as the tracker segmented it, away from its edge
    from scipy.ndimage import binary_dilation, binary_erosion, distance_transform_edt

    assert distance_transform_edt(mask)[y, x] >= 0.5 * distance_transform_edt(mask).max()
    # the entropy map of the same prediction: unsure along its edge, sure far from it
    ent = s.entropy_map(3, obj)
    assert ent.shape == mask.shape and ((0 <= ent) & (ent <= 1)).all()
    edge = mask & ~binary_erosion(mask, iterations=2)
    far = ~binary_dilation(mask, iterations=8)
    assert ent[edge].mean() > 5 * ent[far].mean()
    assert s.entropy_map(3, obj + 1000) is None


def test_self_applied_learning_during_propagation(predictor, tmp_path, request):
    """propagate(tau_u=...): with no qualifying jump (inf) it is plain propagation; with every
    jump qualifying it keeps adapted predictions that are surer than the tracker's own, as
    mask prompts in SAM2's memory and in the store, without counting them as corrections."""
    from napari_lit.training.synthetic import MotionLevel, generate_clip

    # fast-moving membrane-bounded cells, where lit-tiny's adapted decoder is sometimes surer
    c = generate_clip(np.random.default_rng(3), 8, 128, kind="tissue",
                      motion=MotionLevel(speed=6.0, deform=0.04, events=1.0))
    labels = c.labels
    s = LitSession(predictor, c.frames[..., 0].copy(), tmp_path / "labels.zarr",
                   adapter_config=AdapterConfig(max_steps=5))
    request.addfinalizer(s.close)
    obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
    s.add_mask(0, obj, labels[0] == obj)
    list(s.propagate(direction="forward"))
    s.add_mask(3, obj, labels[3] == obj)
    list(s.learn_from(3, obj))
    plain = {r.frame_idx: r.labels() for r in s.propagate(start_frame=3, direction="forward")}
    same = {r.frame_idx: r.labels() for r in s.propagate(start_frame=3, direction="forward", tau_u=np.inf)}
    assert not s.auto_applied and sorted(same) == sorted(plain) == list(range(3, len(labels)))
    assert all(np.array_equal(same[f], plain[f]) for f in plain)
    frames = [r.frame_idx for r in s.propagate(start_frame=3, direction="forward", tau_u=-1.0)]
    assert sorted(frames) == list(range(3, len(labels)))  # each frame once, despite the restarts
    assert s.auto_applied and len(s.corrections) == 1
    for f, k in s.auto_applied:
        assert k == obj and f > 3 and f in s.tracker.prompt_frames(obj)
        kept = s.store.read_frame(f) == obj
        adapted = s.adapted_prediction(f, obj)
        assert adapted is not None and (kept == adapted).mean() > 0.99
    # both directions: the backward pass does not yield the start frame twice
    frames = [r.frame_idx for r in s.propagate(start_frame=3, direction="both", tau_u=-1.0)]
    assert sorted(frames) == list(range(len(labels)))


def test_learning_needs_a_propagated_frame(session):
    s, labels = session
    obj = int(labels[0].max())
    s.add_mask(0, obj, labels[0] == obj)
    with pytest.raises(ValueError, match="propagate over it first"):
        list(s.learn_from(3, obj))
    s.learn = False
    with pytest.raises(ValueError, match="switched off"):
        list(s.learn_from(3, obj))


def test_store_must_fit_the_stack(predictor, clip, tmp_path):
    frames, _ = clip
    store = LabelStore.create(tmp_path / "other.zarr", (3, 10, 10))
    with pytest.raises(ValueError, match="label store is"):
        LitSession(predictor, frames, store)
    # nothing of the failed session stays attached to the shared predictor
    assert "_run_single_frame_inference" not in vars(predictor)


def test_a_mask_prompt_stands_as_given_in_the_labels(session):
    """sam2 hands a mask prompt back resampled from its low-resolution mask input; the store
    keeps the user's mask pixel for pixel, at the prompt and when propagation passes the
    frame again (the adapter learns from that mask too)."""
    s, labels = session
    obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
    painted = labels[0] == obj
    painted[10:13, :] = False  # a thin cut sam2's 4x coarser mask input cannot hold
    res = s.add_mask(0, obj, painted)
    assert np.array_equal(s.store.read_frame(0) == obj, painted) and np.array_equal(res.mask(obj), painted)
    gen = s.tracker.propagate(start_frame=0, direction="forward", max_frames=1)
    sam2_own = next(gen).mask(obj)
    gen.close()
    assert not np.array_equal(sam2_own, painted)  # what sam2 itself returns
    list(s.propagate(direction="forward"))
    assert np.array_equal(s.store.read_frame(0) == obj, painted)


def test_restarting_propagation_restarts_once_per_request_and_never_repeats_a_frame():
    from types import SimpleNamespace

    from napari_lit.core.session import restarting_propagation

    calls = []

    def propagate(start, d):  # frames 0..9 from start, one step per frame
        calls.append((start, d))
        frames = range(start, 10) if d == "forward" else range(start, -1, -1)
        return (SimpleNamespace(frame_idx=f) for f in frames)

    fresh_at, restarted = [], set()

    def visit(result, d, fresh):  # asks for a restart on forward frames 6 and 8, once each
        if fresh:
            fresh_at.append((result.frame_idx, d))
        restart = d == "forward" and result.frame_idx in (6, 8) and result.frame_idx not in restarted
        if restart:
            restarted.add(result.frame_idx)
        return result, restart

    frames = [r.frame_idx for r in restarting_propagation(propagate, 4, "both", visit)]
    assert calls == [(4, "forward"), (6, "forward"), (8, "forward"), (4, "backward")]
    assert frames == [4, 5, 6, 7, 8, 9, 3, 2, 1, 0]  # each frame once, the restart frames too
    assert fresh_at == [(4, "forward"), (7, "forward"), (9, "forward"), (3, "backward")]
