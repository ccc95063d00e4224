"""LIT-LoRA adapters on sam2's mask decoder (peft), with the real lit-tiny model."""

import numpy as np
import pytest
import torch

from napari_lit.core import Tracker
from napari_lit.core.adaptation import AdapterConfig, DecoderAdapter, dice_loss, focal_loss


@pytest.fixture()
def session(predictor, clip):
    """A tracker recording decoder inputs, an adapter, one object propagated forward."""
    frames, labels = clip
    torch.manual_seed(0)  # LoRA's random init and dropout: the same run every time
    tracker = Tracker(predictor, frames, record_decoder_inputs=True)
    adapter = DecoderAdapter(predictor, AdapterConfig(lr=5e-3, max_steps=40, patience=40))
    tracker.context.listeners.append(adapter.on_decoder_call)
    obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
    tracker.add_mask(0, obj, labels[0] == obj)
    frozen = {r.frame_idx: r.logits[0].copy() for r in tracker.propagate(direction="forward")}
    yield tracker, adapter, obj, labels, frozen
    adapter.reset()
    tracker.close()
    assert type(predictor.sam_mask_decoder).__name__ == "MaskDecoder"  # left as found


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_decoder_inputs_recorded_for_tracked_frames(session):
    tracker, _, obj, labels, _ = session
    assert tracker.decoder_inputs(0, obj) is None  # prompt frame: no tracking pass
    rec = tracker.decoder_inputs(3, obj)
    assert rec["image_embeddings"].shape[-2:] == (16, 16)  # memory-conditioned embedding
    assert len(rec["high_res_features"]) == 2
    assert not rec["image_embeddings"].requires_grad


def test_record_budget_evicts_oldest(predictor, clip):
    frames, labels = clip
    tracker = Tracker(predictor, frames, record_decoder_inputs=True)
    tracker.context.budget_bytes = 1  # keeps only the newest record
    tracker.add_mask(0, 1, labels[0] == labels[0].max())
    list(tracker.propagate(direction="forward"))
    held = [f for f in range(8) if tracker.decoder_inputs(f, 1) is not None]
    tracker.close()
    assert held == [7]


def test_training_learns_the_correction_and_leaves_sam2_frozen(session, predictor):
    tracker, adapter, obj, labels, frozen = session
    base_before = {k: v.clone() for k, v in predictor.sam_mask_decoder.state_dict().items()}
    # a correction the frozen model does not give: the user paints the nucleus 3 px wider (its
    # halo included); the frozen lit-tiny already tracks the bare nucleus at IoU ~0.97 here
    from scipy import ndimage
    target = ndimage.binary_dilation(labels[3] == obj, iterations=3)
    inputs = tracker.decoder_inputs(3, obj)
    steps = list(adapter.train(obj, inputs, target))
    assert 1 <= len(steps) <= 40 and [s.step for s in steps] == list(range(1, len(steps) + 1))
    assert min(s.loss for s in steps) < steps[0].loss  # it learns
    # the adapter's fit: the best IoU of its steps on the correction
    assert adapter.fit[obj] == max(s.iou for s in steps) >= steps[0].iou
    low, _, _ = adapter.predict(obj, inputs)
    adapted = tracker.to_input_resolution(low, inputs.window) > 0
    assert _iou(adapted, target) > _iou(frozen[3] > 0, target)
    # sam2's own weights are untouched: only LoRA weights changed
    after = {k.replace(".base_layer", ""): v
             for k, v in predictor.sam_mask_decoder.get_base_model().state_dict().items() if "lora_" not in k}
    assert after.keys() == base_before.keys()
    for k, v in base_before.items():
        assert torch.equal(after[k], v), k
    # and propagation without the adapter gives exactly the frozen result
    again = {r.frame_idx: r.logits[0] for r in tracker.propagate(start_frame=1, direction="forward")}
    for f in range(2, 8):
        assert np.allclose(again[f], frozen[f], atol=1e-5)


def test_adapter_keeps_best_step(session):
    tracker, adapter, obj, labels, _ = session
    adapter.config.max_steps, adapter.config.lr = 15, 0.05  # large steps: the loss bounces
    steps = list(adapter.train(obj, tracker.decoder_inputs(3, obj), labels[3] == obj))
    best = min(s.loss for s in steps)
    again = list(adapter.train(obj, tracker.decoder_inputs(3, obj), labels[3] == obj))
    # training again starts from the kept (best) step; replay adds the earlier example
    assert again[0].loss <= best * 1.5 + 1e-3


def test_early_stopping_and_cancel(session):
    tracker, adapter, obj, labels, _ = session
    adapter.config.lr, adapter.config.patience = 1e-12, 2
    steps = list(adapter.train(obj, tracker.decoder_inputs(3, obj), labels[3] == obj))
    assert len(steps) < 10  # no improvement: stopped after `patience` steps
    gen = adapter.train(obj, tracker.decoder_inputs(4, obj), labels[4] == obj)
    next(gen)
    gen.close()  # cancel: adapters are switched off again, the object keeps its adapter
    assert adapter.has_adapter(obj)
    assert adapter.peft_model.base_model.model.transformer.layers[0].self_attn.q_proj.disable_adapters


def test_objects_have_their_own_adapters(session, clip):
    tracker, adapter, obj, labels, _ = session
    other = int([i for i in np.unique(labels[0]) if i and i != obj][0])
    tracker.add_mask(0, other, labels[0] == other)
    list(tracker.propagate(direction="forward"))
    list(adapter.train(obj, tracker.decoder_inputs(3, obj), labels[3] == obj))
    w_obj = adapter.snapshot()["weights"][f"obj{obj}"]["decoder"]
    list(adapter.train(other, tracker.decoder_inputs(3, other), labels[3] == other))
    snap = adapter.snapshot()
    assert set(snap["weights"]) == {f"obj{obj}", f"obj{other}"}
    for k, v in w_obj.items():
        assert torch.equal(snap["weights"][f"obj{obj}"]["decoder"][k], v)
    assert adapter.n_corrections == {obj: 1, other: 1}


def test_snapshot_restore_reset_save_load(session, tmp_path):
    tracker, adapter, obj, labels, _ = session
    inputs = tracker.decoder_inputs(3, obj)
    list(adapter.train(obj, inputs, labels[3] == obj))
    snap = adapter.snapshot()
    ref, _, _ = adapter.predict(obj, inputs)
    fit = adapter.fit[obj]
    second = list(adapter.train(obj, tracker.decoder_inputs(5, obj), labels[5] == obj))
    assert adapter.fit[obj] == max(s.iou for s in second)  # the latest correction's
    assert not torch.allclose(adapter.predict(obj, inputs)[0], ref)
    adapter.restore(snap)  # undo the second correction
    assert torch.allclose(adapter.predict(obj, inputs)[0], ref) and adapter.n_corrections[obj] == 1
    assert adapter.fit[obj] == fit
    adapter.save(tmp_path / "a", obj)
    cfg = (tmp_path / "a" / "adapter_config.json").read_text()
    assert '"r": 4' in cfg and "q_proj" in cfg
    adapter.reset()
    assert not adapter.has_adapter(obj) and obj not in adapter.fit
    with pytest.raises(KeyError):
        adapter.predict(obj, inputs)
    adapter.load(tmp_path / "a", obj)
    assert torch.allclose(adapter.predict(obj, inputs)[0], ref)
    other = DecoderAdapter(adapter.predictor, AdapterConfig(rank=8))
    with pytest.raises(ValueError, match="rank 4"):
        other.load(tmp_path / "a", obj)
    with pytest.raises(FileNotFoundError):
        adapter.load(tmp_path / "nothing", obj)


def test_always_mode_uses_the_adapter_during_propagation(session):
    tracker, adapter, obj, labels, frozen = session
    list(adapter.train(obj, tracker.decoder_inputs(3, obj), labels[3] == obj))
    adapter.always = True
    always = {r.frame_idx: r.logits[0] for r in tracker.propagate(start_frame=1, direction="forward")}
    adapter.always = False
    assert any(not np.allclose(always[f], frozen[f], atol=1e-4) for f in range(2, 8))


def test_losses():
    t = torch.zeros(1, 1, 8, 8)
    t[..., 2:6, 2:6] = 1
    good, bad = (t * 20 - 10), (10 - t * 20)
    assert focal_loss(good, t).item() < 1e-3 < focal_loss(bad, t).item()
    assert dice_loss(good, t).item() < 0.01 and dice_loss(bad, t).item() > 0.9


def test_defaults_and_published_settings():
    """LIT's adapter shape (q/k/v, rank 4, alpha 4, dropout 0.1, focal:dice 20:1) by default;
    ``published()`` also gives its lr 1e-4 and 40 steps."""
    d, p = AdapterConfig(), AdapterConfig.published()
    for c in (d, p):
        assert (c.target_modules, c.rank, c.alpha, c.dropout) == (("q_proj", "k_proj", "v_proj"), 4, 4.0, 0.1)
        assert (c.focal_weight, c.dice_weight, c.memory_attention) == (20.0, 1.0, False)
    assert (p.lr, p.max_steps) == (1e-4, 40) and (d.lr, d.max_steps) == (1e-2, 20)
    assert AdapterConfig.published(rank=8).rank == 8
    lora = d.lora_config()
    assert lora.r == 4 and lora.lora_alpha == 4.0 and lora.lora_dropout == 0.1


def test_output_path_layers_can_be_adapted_too(session, predictor):
    """``hypernetworks`` puts LoRA weights on exactly the decoder's hypernetwork MLPs
    besides the transformer's q/k/v, and training moves them."""
    tracker, _, obj, labels, frozen = session
    torch.manual_seed(0)
    config = AdapterConfig(lr=5e-3, max_steps=10, patience=10,
                           target_modules=("q_proj", "k_proj", "v_proj", "hypernetworks"))
    adapter = DecoderAdapter(predictor, config)
    try:
        steps = list(adapter.train(obj, tracker.decoder_inputs(3, obj), labels[3] == obj))
        assert min(s.loss for s in steps) < steps[0].loss
        lora_b = {n.split(".lora_B")[0].replace("base_model.model.", ""): p
                  for n, p in predictor.sam_mask_decoder.named_parameters() if "lora_B" in n}
        outside = {n for n in lora_b if not n.startswith("transformer.")}
        n_mlps = len(predictor.sam_mask_decoder.get_base_model().output_hypernetworks_mlps)
        assert outside == {f"output_hypernetworks_mlps.{i}.layers.{k}" for i in range(n_mlps) for k in range(3)}
        assert {n.rsplit(".", 1)[1] for n in set(lora_b) - outside} == {"q_proj", "k_proj", "v_proj"}
        # LoRA's B starts at zero: the hypernetworks' low-rank updates were trained
        assert any(lora_b[n].abs().sum() > 0 for n in outside)
    finally:
        adapter.reset()
    assert type(predictor.sam_mask_decoder).__name__ == "MaskDecoder"


@pytest.mark.parametrize("kwargs", [dict(rank=0), dict(target_modules=("nope",)), dict(lr=0),
                                    dict(target_modules=("hypernetworks",), memory_attention=True),
                                    dict(loss_side=-1)])
def test_bad_adapter_config(kwargs):
    with pytest.raises(ValueError):
        AdapterConfig(**kwargs)


def test_memory_attention_can_be_adapted_too(predictor, clip):
    """With memory_attention=True the memory attention gets LoRA weights as well, trains
    from its recorded inputs, and everything is undone by reset."""
    frames, labels = clip
    tracker = Tracker(predictor, frames, record_decoder_inputs=True)
    # target_iou above 1: all 10 steps run (the first already reproduces the frame at IoU 0.92)
    adapter = DecoderAdapter(predictor, AdapterConfig(lr=5e-3, max_steps=10, patience=10, memory_attention=True,
                                                      target_iou=2.0))
    try:
        obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
        tracker.add_mask(0, obj, labels[0] == obj)
        list(tracker.propagate(direction="forward"))
        inputs = tracker.decoder_inputs(3, obj)
        assert inputs.memory_attention is not None and "memory" in inputs.memory_attention
        before = {n: p.clone() for n, p in predictor.memory_attention.named_parameters()}
        steps = list(adapter.train(obj, inputs, labels[3] == obj))
        assert min(s.loss for s in steps) < steps[0].loss
        lora = {n: p for n, p in predictor.memory_attention.named_parameters() if "lora_B" in n}
        assert lora and any(p.abs().sum() > 0 for p in lora.values())  # memory LoRA trained
        snap = adapter.snapshot()["weights"][f"obj{obj}"]
        assert set(snap) == {"decoder", "memory"}
    finally:
        adapter.reset()
        tracker.close()
    assert type(predictor.memory_attention).__name__ == "MemoryAttention"
    for n, p in predictor.memory_attention.named_parameters():
        assert torch.equal(p, before[n])


def test_training_target_is_made_on_the_decoder_inputs_device():
    """The target mask goes to the device of the recorded decoder inputs (a CPU target with
    CUDA inputs broke learning on a GPU; the meta device stands in for one here), area-
    resampled to 4x the embedding's size and binary."""
    mask = np.zeros((64, 64), bool)
    mask[8:40, 16:48] = True
    meta = DecoderAdapter.target_tensor({"image_embeddings": torch.empty(1, 8, 4, 4, device="meta")}, mask)
    assert meta.device.type == "meta" and tuple(meta.shape) == (1, 1, 16, 16)
    cpu = DecoderAdapter.target_tensor({"image_embeddings": torch.zeros(1, 8, 4, 4)}, mask)
    assert cpu.device.type == "cpu" and set(cpu.unique().tolist()) == {0.0, 1.0}
    assert cpu[0, 0].numpy().astype(bool).sum() == (32 // 4) * (32 // 4)


def test_loss_at_the_frame_aspect_ratio():
    """``loss_side`` N: the target keeps the correction's aspect ratio, at most N pixels on
    its longer side and never more than its own size; a mask that is not 2-D is refused."""
    mask = np.zeros((60, 120), bool)
    mask[12:48, 30:90] = True
    inputs = {"image_embeddings": torch.zeros(1, 8, 4, 4)}
    t = DecoderAdapter.target_tensor(inputs, mask, loss_side=40)
    assert tuple(t.shape) == (1, 1, 20, 40) and t.sum() == (36 // 3) * (60 // 3)
    assert tuple(DecoderAdapter.target_tensor(inputs, mask, loss_side=1000).shape) == (1, 1, 60, 120)
    with pytest.raises(ValueError, match="one \\(Y, X\\) mask"):
        DecoderAdapter.target_tensor(inputs, mask[None], loss_side=40)


def test_training_with_the_loss_on_resized_logits(session):
    """With ``loss_side`` the loss and the reported IoU compare the decoder's logits resized
    (bilinear, as sam2 resizes them to the frame) to the correction's grid; the adapter then
    learns the correction there."""
    import torch.nn.functional as F

    tracker, adapter, obj, labels, frozen = session
    side = max(labels.shape[1:]) // 2
    adapter.config.loss_side = side
    adapter.config.target_iou = 1.0  # train all steps
    from scipy import ndimage
    # a correction the frozen model does not give (the nucleus with its halo, as above)
    inputs = tracker.decoder_inputs(3, obj)
    target = ndimage.binary_dilation(labels[3] == obj, iterations=3)
    grid = DecoderAdapter.target_tensor(inputs, target, side)
    assert max(grid.shape[-2:]) == side and grid.shape[-2:] != inputs["image_embeddings"].shape[-2:]
    low, _, _ = adapter.predict_frozen(inputs)
    resized = F.interpolate(low, size=tuple(grid.shape[-2:]), mode="bilinear", align_corners=False) > 0
    steps = list(adapter.train(obj, inputs, target))
    # step 1 scores the weights before any update (LoRA's B starts at zero): SAM2's own mask
    assert steps[0].iou == pytest.approx(_iou(resized[0, 0].numpy(), grid[0, 0].numpy() > 0), abs=1e-6)
    assert min(s.loss for s in steps) < steps[0].loss
    adapted = tracker.to_input_resolution(adapter.predict(obj, inputs)[0], inputs.window) > 0
    assert _iou(adapted, target) > _iou(frozen[3] > 0, target)


def test_training_is_reproducible_and_leaves_the_global_generator_alone(session):
    """The same correction trained twice (e.g. cut short by a crash and run again after a
    resume) gives the same adapter; torch's global random state is not consumed."""
    tracker, adapter, obj, labels, _ = session
    inputs = tracker.decoder_inputs(3, obj)
    runs = []
    for seed in (0, 0, 1):
        adapter.config = AdapterConfig(max_steps=6, patience=10, target_iou=2.0, seed=seed)  # dropout 0.1
        adapter.reset()
        state = torch.random.get_rng_state()
        losses = [s.loss for s in adapter.train(obj, inputs, labels[3] == obj)]
        assert torch.equal(torch.random.get_rng_state(), state)
        runs.append((losses, adapter.snapshot()["weights"][f"obj{obj}"]["decoder"]))
    (l1, w1), (l2, w2), (_, w3) = runs
    assert l1 == l2 and len(l1) == 6
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)  # the seed matters


def _two_objects(tracker, labels, obj):
    other = int([i for i in np.unique(labels[0]) if i and i != obj][0])
    tracker.add_mask(0, other, labels[0] == other)
    list(tracker.propagate(direction="forward"))
    return other


def test_sequence_scope_one_adapter_teaches_every_object(session):
    tracker, adapter, obj, labels, _ = session
    other = _two_objects(tracker, labels, obj)
    adapter.config.scope = "sequence"
    inputs_other = tracker.decoder_inputs(3, other)
    frozen_other, _, _ = adapter.predict_frozen(inputs_other)
    assert not adapter.has_adapter(other)
    steps = list(adapter.train(obj, tracker.decoder_inputs(3, obj), labels[3] == obj))
    assert steps and {s.adapter for s in steps} == {"sequence"}
    # one shared adapter, no per-object one; it predicts the object that was never corrected
    assert adapter.own_adapters() == [] and adapter.has_shared
    assert adapter.has_adapter(other) and adapter.n_corrections == {obj: 1}
    shared_other, _, _ = adapter.predict(other, inputs_other)
    assert not torch.allclose(shared_other, frozen_other)
    # the same adapter serves both objects: equal inputs give equal predictions
    assert torch.allclose(adapter.predict(obj, inputs_other)[0], shared_other)


def test_shared_replay_takes_the_latest_of_each_object_first(session):
    tracker, adapter, obj, labels, _ = session
    other = _two_objects(tracker, labels, obj)
    adapter.config.scope, adapter.config.shared_replay, adapter.config.max_steps = "sequence", 2, 2
    for f in (2, 3, 4):  # three corrections of obj, then one of the other object
        list(adapter.train(obj, tracker.decoder_inputs(f, obj), labels[f] == obj))
    list(adapter.train(other, tracker.decoder_inputs(2, other), labels[2] == other))
    serials = {k: [e.serial for e in v] for k, v in adapter.examples.items()}
    assert serials == {obj: [1, 2, 3], other: [4]}
    new = adapter.examples[obj][0].__class__(None, None, 5)
    batch = adapter._shared_batch(new)
    # the new one, the latest of each object (other's 4, obj's 3), not obj's older ones
    assert [e.serial for e in batch] == [5, 4, 3]
    adapter.config.shared_replay = 3
    assert [e.serial for e in adapter._shared_batch(new)] == [5, 4, 3, 2]


def test_both_scope_trains_shared_then_own_and_predicts_with_their_sum(session, tmp_path):
    tracker, adapter, obj, labels, _ = session
    other = _two_objects(tracker, labels, obj)
    adapter.config.scope = "both"
    inputs = tracker.decoder_inputs(3, obj)
    steps = list(adapter.train(obj, inputs, labels[3] == obj))
    names = [s.adapter for s in steps]
    assert names[0] == "sequence" and names[-1] == f"obj{obj}"
    assert names == sorted(names, key=lambda n: n != "sequence")  # the shared one's steps first
    assert adapter.own_adapters() == [obj] and adapter.has_shared
    snap = adapter.snapshot()
    assert set(snap["weights"]) == {"sequence", f"obj{obj}"}
    both, _, _ = adapter.predict(obj, inputs)
    shared_only, _, _ = adapter.predict(other, inputs)  # the other object: the shared one alone
    assert not torch.allclose(both, shared_only)
    # the own adapter trained with the shared one held fixed: the shared weights are those of
    # its own training (train again with scope sequence from the same state to compare)
    adapter.save(tmp_path / "s", -1)
    adapter.save(tmp_path / "o", obj)
    adapter.reset()
    assert not adapter.has_adapter(obj) and not adapter.has_shared
    adapter.load(tmp_path / "s", -1)
    adapter.load(tmp_path / "o", obj)
    assert torch.allclose(adapter.predict(obj, inputs)[0], both)
    assert torch.allclose(adapter.predict(other, inputs)[0], shared_only)
    adapter.restore(snap)
    assert torch.allclose(adapter.predict(obj, inputs)[0], both)
    adapter.reset(obj)  # the object's own adapter goes; the shared one keeps what it learned
    assert adapter.has_shared and torch.allclose(adapter.predict(obj, inputs)[0], shared_only)


def test_shared_steps_bound_the_shared_adapter_alone(session):
    tracker, adapter, obj, labels, _ = session
    _two_objects(tracker, labels, obj)
    adapter.config.scope, adapter.config.shared_steps = "both", 1
    adapter.config.target_iou, adapter.config.max_steps = 2.0, 3  # never reached: every step runs
    names = [s.adapter for s in adapter.train(obj, tracker.decoder_inputs(3, obj), labels[3] == obj)]
    assert names == ["sequence", f"obj{obj}", f"obj{obj}", f"obj{obj}"]


def test_scope_is_checked():
    with pytest.raises(ValueError, match="shared_steps"):
        AdapterConfig(shared_steps=-1)
    with pytest.raises(ValueError, match="scope must be one of"):
        AdapterConfig(scope="frame")
    with pytest.raises(ValueError, match="shared_replay"):
        AdapterConfig(shared_replay=-1)


def test_an_adapter_added_later_predicts_without_dropout(session, tmp_path):
    """Loading a second object's adapter into a wrapped decoder gives the prediction it
    was saved with, every time (a new peft adapter is built in training mode)."""
    tracker, adapter, obj, labels, _ = session
    other = _two_objects(tracker, labels, obj)
    for o in (obj, other):
        list(adapter.train(o, tracker.decoder_inputs(3, o), labels[3] == o))
    inputs = tracker.decoder_inputs(3, other)
    ref = adapter.predict(other, inputs)[0]
    for o in (obj, other):
        adapter.save(tmp_path / str(o), o)
    adapter.reset()
    for o in (obj, other):
        adapter.load(tmp_path / str(o), o)
    assert torch.equal(adapter.predict(other, inputs)[0], ref)
    assert torch.equal(adapter.predict(other, inputs)[0], ref)
