"""The tracker drives sam2's own video predictor (real lit-tiny weights, CPU)."""

import numpy as np
import pytest
import torch

from napari_lit.core import FrameSource, Tracker, _sam2


@pytest.fixture()
def tracker(predictor, clip):
    frames, _ = clip
    return Tracker(predictor, frames)


def test_mask_prompt_returns_input_resolution(tracker, clip, object_on_frame0):
    obj, mask = object_on_frame0
    res = tracker.add_mask(0, obj, mask)
    assert res.frame_idx == 0 and res.obj_ids == (obj,)
    assert res.logits.shape == (1,) + clip[0].shape[1:]
    # sam2 feeds a mask prompt straight through on its conditioning frame
    j = (res.mask(obj) & mask).sum() / (res.mask(obj) | mask).sum()
    assert j > 0.8


def test_propagate_both_directions_each_frame_once(tracker, object_on_frame0):
    obj, mask = object_on_frame0
    tracker.add_mask(3, obj, mask)
    order = [r.frame_idx for r in tracker.propagate(direction="both")]
    assert order == [3, 4, 5, 6, 7, 2, 1, 0]
    assert [r.frame_idx for r in tracker.propagate(start_frame=5, direction="backward")] == [5, 4, 3, 2, 1, 0]
    assert [r.frame_idx for r in tracker.propagate(start_frame=5, direction="forward", max_frames=1)] == [5, 6]


def test_several_objects_and_labels(tracker, clip):
    _, labels = clip
    ids = [int(i) for i in np.unique(labels[0]) if i][:3]
    for i in ids:
        tracker.add_mask(0, i, labels[0] == i)
    results = list(tracker.propagate(direction="forward"))
    assert len(results) == len(labels)
    lab = results[0].labels()
    assert lab.dtype == np.uint32
    assert set(np.unique(lab)) <= set(ids) | {0}
    for r in results:
        assert r.obj_ids == tuple(ids)
        assert r.logits.shape == (len(ids),) + labels.shape[1:]
        # labels() gives each pixel to the most confident object
        lab = r.labels()
        inside = r.logits.max(0) > 0
        assert (lab[~inside] == 0).all()
        assert np.array_equal(lab[inside], np.asarray(r.obj_ids)[r.logits.argmax(0)][inside])


def test_objects_prompted_on_different_frames_propagate_together(tracker, clip):
    """A user prompts one cell on frame 0 and another only where it is first clear (frame
    4): propagating from frame 0 must track both over every frame. sam2 keeps memory in
    bfloat16, and the second object's memory on frames 1-3 holds only its future prompt (no
    object pointer promotes it to float32), which failed on CPU before the tracker matched
    the dtypes."""
    _, labels = clip
    a, b = [int(i) for i in np.unique(labels[0]) if i][:2]
    tracker.add_mask(0, a, labels[0] == a)
    tracker.add_mask(4, b, labels[4] == b)
    results = {r.frame_idx: r for r in tracker.propagate(direction="both")}
    assert sorted(results) == list(range(len(labels)))
    for i, r in results.items():
        assert r.obj_ids == (a, b)
        assert np.isfinite(r.logits).all() and np.isfinite(r.masked_entropy()).all()
    # from frame 4 on, the second object is tracked from its own prompt
    j = [(results[i].mask(b) & (labels[i] == b)).sum() / max(1, (results[i].mask(b) | (labels[i] == b)).sum())
         for i in range(4, len(labels))]
    assert j[0] > 0.8 and np.mean(j) > 0.5
    # the hook is installed once, however many trackers use the predictor
    hook = tracker.predictor.memory_attention._napari_lit_dtype_hook
    Tracker(tracker.predictor, clip[0]).close()
    assert tracker.predictor.memory_attention._napari_lit_dtype_hook is hook


def test_points_and_box_prompts(tracker, object_on_frame0):
    obj, mask = object_on_frame0
    ys, xs = np.nonzero(mask)
    res = tracker.add_points(0, obj, [[ys.mean(), xs.mean()]], [1])
    assert res.logits.shape[0] == 1
    res2 = tracker.add_points(0, obj, [[0, 0]], [0], clear=False)  # add a negative click
    assert res2.obj_ids == (obj,)
    res3 = tracker.add_box(2, obj + 1, [ys.min(), xs.min(), ys.max(), xs.max()])
    assert res3.obj_ids == (obj, obj + 1)
    assert tracker.prompt_frames() == [0, 2]
    assert tracker.prompt_frames(obj + 1) == [2]


@pytest.mark.parametrize(
    "call, exc, msg",
    [
        (lambda t: t.add_points(9, 1, [[1, 1]], [1]), IndexError, "frames 0..7"),
        (lambda t: t.add_points(0, 0, [[1, 1]], [1]), ValueError, "0 is the background"),
        (lambda t: t.add_points(0, 1, [[500, 1]], [1]), ValueError, "outside"),
        (lambda t: t.add_points(0, 1, [[1, 1]], [2]), ValueError, "positive"),
        (lambda t: t.add_points(0, 1, np.zeros((0, 2)), []), ValueError, "non-empty"),
        (lambda t: t.add_box(0, 1, [10, 10, 5, 20]), ValueError, "y0 < y1"),
        (lambda t: t.add_mask(0, 1, np.zeros((5, 5), bool)), ValueError, "shape"),
        (lambda t: t.add_mask(0, 1, np.zeros((96, 128), bool)), ValueError, "empty"),
        (lambda t: list(t.propagate()), ValueError, "no object has a prompt"),
        (lambda t: t.propagate(direction="sideways").__next__(), ValueError, "direction"),
    ],
)
def test_bad_prompts_raise_clear_errors(tracker, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call(tracker)


def test_frame_source_size_must_match_model(predictor):
    with pytest.raises(ValueError, match="expects"):
        Tracker(predictor, FrameSource(np.zeros((2, 16, 16)), image_size=predictor.image_size * 2))


def test_closing_propagation_stops_early(predictor, clip):
    frames, labels = clip

    class Counting(FrameSource):
        reads = 0

        def normalised(self, index):
            Counting.reads += 1
            return super().normalised(index)

    src = Counting(frames, image_size=predictor.image_size, cache_size=1)
    tr = Tracker(predictor, src)
    tr.add_mask(0, 1, labels[0] == labels[0].max())
    gen = tr.propagate(direction="forward")
    next(gen), next(gen)
    gen.close()
    reads = Counting.reads
    assert reads <= 3  # frame 0 (init) and frame 1: nothing beyond the frame in progress


def test_correction_on_tracked_frame_is_kept_when_propagating_again(tracker, clip, object_on_frame0):
    """A mask given on a frame that was already tracked is a correction: propagating again
    from that frame keeps it (it becomes a conditioning frame) and later frames use it."""
    frames, labels = clip
    obj, mask = object_on_frame0
    tracker.add_mask(0, obj, mask)
    list(tracker.propagate(direction="forward"))
    corrected = np.zeros_like(mask)
    corrected[10:40, 10:50] = True  # deliberately unlike the tracked object
    tracker.add_mask(4, obj, corrected)
    again = {r.frame_idx: r.mask(obj) for r in tracker.propagate(start_frame=4, direction="forward")}
    assert list(again) == [4, 5, 6, 7]
    j = (again[4] & corrected).sum() / (again[4] | corrected).sum()
    assert j > 0.8
    assert tracker.prompt_frames(obj) == [0, 4]


def test_memory_gate_keeps_unsure_frames_out_of_sam2_memory(tracker, object_on_frame0):
    """Lazy-XMem's uncertainty-driven memory update: with a gate no frame reaches, tracking
    is exactly SAM2's; with a gate every frame exceeds, no tracked frame stays in memory and
    later frames are predicted from the prompt frame alone (so they differ)."""
    obj, mask = object_on_frame0
    tracker.add_mask(0, obj, mask)
    plain = {r.frame_idx: r.logits.copy() for r in tracker.propagate(direction="forward")}
    outputs = tracker.state_of(obj)["output_dict_per_obj"][0]["non_cond_frame_outputs"]
    assert sorted(outputs) == sorted(set(plain) - {0})
    never = {r.frame_idx: r for r in tracker.propagate(direction="forward", memory_gate=2.0)}
    assert all(not r.out_of_memory for r in never.values())
    for f, r in never.items():
        np.testing.assert_allclose(r.logits, plain[f], atol=1e-4)
    always = {r.frame_idx: r for r in tracker.propagate(direction="forward", memory_gate=-1.0)}
    assert always[0].out_of_memory == ()  # the prompt frame is a conditioning frame: kept
    assert all(r.out_of_memory == (obj,) for f, r in always.items() if f > 0)
    assert not tracker.state_of(obj)["output_dict_per_obj"][0]["non_cond_frame_outputs"]
    np.testing.assert_allclose(always[1].logits, plain[1], atol=1e-4)  # frame 1 sees the same memory
    assert max(np.abs(always[f].logits - plain[f]).max() for f in range(3, len(plain))) > 0.1


def test_bounded_state_keeps_memory_flat_and_masks_unchanged(predictor):
    """With a state budget, sam2's per-frame outputs stop growing (the farthest tracked
    frames are dropped), and since sam2 never reads those, every mask equals the unbounded
    run's, forward and then backward from a prompt in the middle."""
    from napari_lit.training.synthetic import generate_clip

    n = 100
    c = generate_clip(np.random.default_rng(11), n, 96, kind="nuclei")
    frames, labels = c.frames[..., 0], c.labels
    obj = int(np.bincount(labels[35].ravel())[1:].argmax() + 1)
    runs = {}
    for budget in (None, 1):  # 1 byte: keep the fewest sam2 allows
        t = Tracker(predictor, frames, state_budget_bytes=budget)
        t.add_mask(35, obj, labels[35] == obj)
        held, masks = [], {}
        for r in t.propagate(direction="both"):
            held.append(t.state_frames())
            masks[r.frame_idx] = r.labels()
        runs[budget] = (masks, held, t.n_pruned)
        t.close()
    (full, held_full, _), (bounded, held_bounded, pruned) = runs[None], runs[1]
    reach = _sam2.memory_reach(predictor)
    assert max(held_full) == n - 1 and pruned > 0
    # flat: the keep limit (2 reach + 1 for the smallest budget) plus the frames sam2 reads
    # around the one prompted frame (2 reach + 1) and the frame in progress
    assert max(held_bounded) <= 2 * (2 * reach + 1) + 1 < n - 1
    assert max(held_bounded[-40:]) <= 2 * (2 * reach + 1) + 1  # not growing at the end either
    assert sorted(bounded) == list(range(n))
    for f in range(n):
        assert np.array_equal(bounded[f], full[f]), f


def test_two_recording_trackers_on_one_predictor_close_in_any_order(predictor, clip, object_on_frame0):
    """Each tracker records its own frames' decoder inputs; closing them first-in-first-out
    leaves the shared predictor as it was (sam2's own method, no wrapper)."""
    frames, _ = clip
    obj, mask = object_on_frame0
    a = Tracker(predictor, frames, record_decoder_inputs=True)
    b = Tracker(predictor, frames[::-1].copy(), record_decoder_inputs=True)
    for t in (a, b):
        t.add_mask(0, obj, mask)
        list(t.propagate(direction="forward", max_frames=3))
    ia, ib = a.decoder_inputs(2, obj), b.decoder_inputs(2, obj)
    assert ia is not None and ib is not None
    assert not np.array_equal(ia["image_embeddings"].numpy(), ib["image_embeddings"].numpy())  # each its own
    a.close()
    list(b.propagate(direction="forward", max_frames=5))  # b still records after a is gone
    assert b.decoder_inputs(4, obj) is not None
    b.close()
    assert "_run_single_frame_inference" not in vars(predictor)


def test_confidence_is_the_decoders_predicted_iou_and_object_score(predictor, clip):
    """Tracker.confidence reports what SAM's heads said about the kept mask: the largest
    predicted IoU of the candidates of a click (sam2 keeps that one) and sigmoid(object
    score logit); a forward hook of our own on the decoder checks the numbers."""
    frames, labels = clip
    obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
    ys, xs = np.nonzero(labels[0] == obj)
    seen = []
    hook = predictor.sam_mask_decoder.register_forward_hook(lambda m, a, out: seen.append(out))
    t = Tracker(predictor, frames, record_decoder_inputs=True, zoom="off")
    try:
        t.add_points(0, obj, [[ys.mean(), xs.mean()]], [1])
        iou, score = t.confidence(0, obj)
        ious, logits = seen[-1][1], seen[-1][3]
        assert iou == pytest.approx(float(ious.max()), abs=1e-6) and ious.shape[-1] == 3  # multimask click
        assert score == pytest.approx(float(torch.sigmoid(logits.reshape(-1)[0])), abs=1e-6)
        assert 0 <= iou <= 1.5 and 0 <= score <= 1
        assert t.confidence(3, obj) is None  # not decoded there yet
        list(t.propagate(max_frames=4, direction="forward"))
        assert t.confidence(3, obj) is not None
    finally:
        hook.remove()
        t.close()
    plain = Tracker(predictor, frames, zoom="off")  # records nothing
    plain.add_points(0, obj, [[ys.mean(), xs.mean()]], [1])
    assert plain.confidence(0, obj) is None
    plain.close()
