"""The memory attention's bfloat16 attention on a CPU (issue 28, item 3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_lit.core import _sam2
from napari_lit.core.tracker import Tracker


@pytest.mark.parametrize("shape_q, shape_k", [((1, 1, 1100, 64), (1, 1, 3000, 64)), ((2, 3, 70, 32), (2, 3, 900, 32)),
                                                   ((1, 1, 600, 64), (1, 1, 1024, 64))])
def test_bf16_attention_is_sdpa_within_bfloat16_rounding(shape_q, shape_k):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(shape_q, generator=g), torch.randn(shape_k, generator=g)
    v = torch.randn(shape_k, generator=g)
    expected = F.scaled_dot_product_attention(q, k, v)
    got = _sam2._bf16_attention(q, k, v)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert float((got - expected).abs().max()) < 0.02 * float(expected.abs().max())
    assert float((got - expected).abs().mean()) < 2e-3


def test_attention_precision_switch_and_its_scope(predictor):
    with pytest.raises(ValueError, match="attention precision"):
        _sam2.set_attention_precision(predictor, "int8")
    try:
        assert _sam2.set_attention_precision(predictor, "bfloat16") == "bfloat16"
        assert _sam2.attention_precision(predictor) == "bfloat16"
        module = predictor.memory_attention
        hw, d = 16 * 16, predictor.hidden_dim
        g = torch.Generator().manual_seed(1)
        kw = dict(curr=[torch.randn(hw, 1, d, generator=g)], curr_pos=[torch.randn(hw, 1, d, generator=g)],
                  memory=torch.randn(3 * hw, 1, predictor.mem_dim, generator=g), num_obj_ptr_tokens=0)
        kw["memory_pos"] = torch.randn_like(kw["memory"])
        with torch.no_grad():
            fast = module(**kw)
        with torch.enable_grad():  # learning through it: float32, as sam2 computes it
            exact_with_grad = module(**kw)
        _sam2.set_attention_precision(predictor, "float32")
        assert "forward" not in vars(module)
        with torch.no_grad():
            exact = module(**kw)
        assert torch.equal(exact_with_grad.detach(), exact)
        assert not torch.equal(fast, exact)
        assert float((fast - exact).abs().max()) < 0.05 * float(exact.abs().max())
    finally:
        _sam2.set_attention_precision(predictor, "float32")


def test_bfloat16_attention_keeps_the_masks_of_float32(predictor, clip, object_on_frame0):
    frames, _ = clip
    obj, mask = object_on_frame0
    runs = {}
    for precision in ("float32", "bfloat16"):
        t = Tracker(predictor, frames, zoom="off", features=None, attention=precision)
        assert t.attention == precision
        t.add_mask(0, obj, mask)
        runs[precision] = {r.frame_idx: r.mask(obj) for r in t.propagate(0, "forward")}
        t.close()
    _sam2.set_attention_precision(predictor, "float32")
    ious = [(runs["float32"][f] & runs["bfloat16"][f]).sum() / max((runs["float32"][f] | runs["bfloat16"][f]).sum(), 1)
            for f in runs["float32"]]
    assert min(ious) > 0.98
    with pytest.raises(ValueError, match="attention"):
        Tracker(predictor, frames, attention="half")


def test_auto_follows_the_cpu(predictor, monkeypatch):
    try:
        monkeypatch.setattr(_sam2, "native_bf16", lambda: False)
        assert _sam2.set_attention_precision(predictor, "auto") == "float32"
        monkeypatch.setattr(_sam2, "native_bf16", lambda: True)
        assert _sam2.set_attention_precision(predictor, "auto") == "float32"  # lit-tiny: 256 px, small
        monkeypatch.setattr(predictor, "image_size", 1024)
        assert _sam2.set_attention_precision(predictor, "auto") == "bfloat16"
    finally:
        _sam2.set_attention_precision(predictor, "float32")
