"""All contact with the internals of the installed ``sam2`` package lives here.

We use sam2's own :class:`~sam2.sam2_video_predictor.SAM2VideoPredictor` unchanged. Its
``init_state`` only accepts a path (and would load every frame into memory), so we call it
with its frame loader swapped for our lazy :class:`~napari_lit.core.frames.FrameSource`:
the inference state is then exactly the one sam2 builds, and sam2 reads frames from our
source one at a time through ``inference_state["images"][i]``.

Tested against sam2 1.1.0 (``tests/test_sam2_contract.py``).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional, Tuple
from unittest import mock

__all__ = ["SUPPORTED_SAM2", "NO_OBJ_SCORE", "init_inference_state", "match_memory_dtype", "is_conditioning_frame",
           "propagate_in_video", "tracked_frames", "memory_reach", "prune_tracked_outputs", "frame_low_res_masks",
           "drop_frame_outputs", "forget_cached_features", "attach_features", "encode_frame",
           "set_attention_precision", "attention_precision", "native_bf16", "ATTENTION_PRECISIONS"]

#: The mask logit sam2 gives where an object is not (its ``NO_OBJ_SCORE``).
NO_OBJ_SCORE = -1024.0

SUPPORTED_SAM2 = ("1.1.0", "1.0")


def init_inference_state(predictor, frames, offload_state_to_cpu: bool = False, video_shape=None,
                         warm_up: bool = True) -> dict:
    """Build sam2's inference state over a lazy frame source.

    Parameters
    ----------
    predictor : sam2.sam2_video_predictor.SAM2VideoPredictor
    frames : napari_lit.core.frames.FrameSource or a sequence like it
        ``len(frames)`` frames; ``frames[i]`` is a (3, S, S) float tensor.
    offload_state_to_cpu : bool
        Keep per-frame outputs in CPU memory when the model runs on a GPU.
    video_shape : (int, int), optional
        The (height, width) sam2 resizes its output masks to and normalises click
        coordinates by; default ``frames.frame_shape`` (the input resolution). A windowed
        view (:mod:`napari_lit.core.zoom`) gives the decoder's own output size, so sam2 returns
        its low-resolution logits unchanged and the tracker places them in the frame.
    warm_up : bool
        Encode frame 0 now, as sam2 does; a windowed view has no window for it yet.

    Returns
    -------
    dict
        sam2's inference state.
    """
    import sam2.sam2_video_predictor as svp

    match_memory_dtype(predictor)
    height, width = frames.frame_shape if video_shape is None else video_shape

    def _lazy_loader(**_kwargs):
        return frames, int(height), int(width)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(svp, "load_video_frames", _lazy_loader))
        if not warm_up:
            stack.enter_context(mock.patch.object(predictor, "_get_image_feature", lambda *a, **k: None))
        return predictor.init_state(
            video_path="<napari-lit frame source>",
            offload_video_to_cpu=True,
            offload_state_to_cpu=offload_state_to_cpu,
        )


def match_memory_dtype(predictor) -> None:
    """Make sam2's memory attention read its memory in the dtype of the frame's features.

    sam2 stores each frame's memory features as bfloat16. Its memory is usually those plus
    float32 object pointers, so ``torch.cat`` promotes it to float32; but an object whose
    only prompt lies ahead of the propagation (prompted on a later frame than another
    object, when tracking starts from the earlier one) has no pointer yet, its memory stays
    bfloat16, and without a GPU's autocast the float32 attention raises "mat1 and mat2 must
    have the same dtype". A forward pre-hook on ``predictor.memory_attention`` casts
    ``memory`` and ``memory_pos`` to the dtype of ``curr``; it is installed once per
    predictor and changes nothing when the dtypes already agree.
    """
    module = predictor.memory_attention
    if getattr(module, "_napari_lit_dtype_hook", None) is not None:
        return

    def _hook(_module, args, kwargs):
        curr = kwargs.get("curr", args[0] if args else None)
        if isinstance(curr, (list, tuple)):
            curr = curr[0]
        if curr is None:
            return None
        changed = False
        for key in ("memory", "memory_pos"):
            value = kwargs.get(key)
            if value is not None and value.dtype != curr.dtype:
                kwargs[key] = value.to(curr.dtype)
                changed = True
        return (args, kwargs) if changed else None

    module._napari_lit_dtype_hook = module.register_forward_pre_hook(_hook, with_kwargs=True)


def tracked_frames(state: dict, obj_idx: int) -> dict:
    """sam2's record of the frames already tracked for model-side object ``obj_idx``."""
    return state["frames_tracked_per_obj"][obj_idx]


def is_conditioning_frame(state: dict, obj_id: int, frame_idx: int) -> bool:
    """Whether ``frame_idx`` holds a prompt (conditioning output) for object ``obj_id``."""
    obj_idx = state["obj_id_to_idx"].get(obj_id)
    if obj_idx is None:
        return False
    out = state["output_dict_per_obj"][obj_idx]["cond_frame_outputs"]
    temp = state["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"]
    return frame_idx in out or frame_idx in temp


def forget_frame_memory(state: dict, obj_id: int, frame_idx: int) -> bool:
    """Keep a tracked (not prompted) frame of ``obj_id`` out of sam2's memory: its stored
    output, whose memory features and object pointer later frames would attend to, is
    dropped (the labels already written elsewhere stay). Returns whether there was one."""
    obj_idx = state["obj_id_to_idx"].get(int(obj_id))
    if obj_idx is None:
        return False
    return state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"].pop(int(frame_idx), None) is not None


def _frame_outputs(state: dict, obj_idx: int, frame_idx: int):
    """The outputs sam2 holds for one object on one frame, newest kind first."""
    temp = state["temp_output_dict_per_obj"][obj_idx]
    out = state["output_dict_per_obj"][obj_idx]
    return [d[frame_idx] for d in (temp["cond_frame_outputs"], temp["non_cond_frame_outputs"],
                                   out["cond_frame_outputs"], out["non_cond_frame_outputs"]) if frame_idx in d]


def frame_low_res_masks(predictor, state: dict, frame_idx: int):
    """(O, 1, h, w) float32 decoder-resolution logits of every object of ``state`` on one
    frame, as sam2 consolidates them (its newest output for the frame; ``NO_OBJ_SCORE`` for
    an object with none there), in the order of ``state["obj_ids"]``."""
    import torch

    side = predictor.image_size // 4
    out = torch.full((len(state["obj_ids"]), 1, side, side), NO_OBJ_SCORE, dtype=torch.float32)
    for obj_idx in range(len(state["obj_ids"])):
        outputs = _frame_outputs(state, obj_idx, frame_idx)
        if outputs and outputs[0]["pred_masks"] is not None:
            m = outputs[0]["pred_masks"].float().cpu()
            if m.shape[-2:] != (side, side):
                m = torch.nn.functional.interpolate(m, size=(side, side), mode="bilinear", align_corners=False)
            out[obj_idx] = m[0]
    return out


def drop_frame_outputs(state: dict, obj_id: int, frame_idx: int, conditioning: bool = False) -> None:
    """Forget what sam2 predicted for ``obj_id`` on one frame (not its prompt inputs), e.g.
    because the frame is now seen through another window, in whose coordinates the old mask
    is wrong.

    ``conditioning`` False: only a tracked frame's output goes (a prompt there later starts
    from the other frames' memory, without the old mask as a prior). True: its prompt's output
    too, and sam2 forgets the frame was tracked, so the prompt given again next is taken as
    a first prompt there (no old mask, no memory); the caller must give it again.
    """
    obj_idx = state["obj_id_to_idx"].get(int(obj_id))
    if obj_idx is None:
        return
    f = int(frame_idx)
    for d in (state["temp_output_dict_per_obj"][obj_idx], state["output_dict_per_obj"][obj_idx]):
        d["non_cond_frame_outputs"].pop(f, None)
        if conditioning:
            d["cond_frame_outputs"].pop(f, None)
    if conditioning:
        state["frames_tracked_per_obj"][obj_idx].pop(f, None)


def to_device(out: dict, device) -> dict:
    """A copy of one of sam2's per-frame outputs with its tensors (and lists of tensors,
    as ``maskmem_pos_enc``) on ``device``."""
    moved = {}
    for k, v in out.items():
        if isinstance(v, (list, tuple)):
            moved[k] = [t.to(device) if hasattr(t, "to") else t for t in v]
        else:
            moved[k] = v.to(device) if hasattr(v, "to") else v
    return moved


def forget_cached_features(state: dict, frame_idx: int) -> None:
    """Drop sam2's cached image features of ``frame_idx`` (its frame input changed)."""
    state["cached_features"].pop(int(frame_idx), None)


_FEATURES = "napari_lit_features"  # key of an inference state: (FeatureCache, window_of)
_FEATURE_WRAPPED = "_napari_lit_feature_wrapped"


def attach_features(predictor, state: dict, cache, window_of=None) -> None:
    """Let sam2 take the image features of ``state``'s frames from ``cache`` and put the ones
    it computes there.

    sam2 reads a frame's features through ``SAM2VideoPredictor._get_image_feature``, which
    keeps only the latest frame's (``state["cached_features"]``). This wraps that method once
    per predictor instance: for a state with a cache attached, a frame sam2 does not hold is
    looked up in ``cache`` first (and handed to sam2 as its own one-frame cache, so its own
    code runs unchanged); on a miss sam2 encodes it and the result goes into ``cache``.
    States without a cache are untouched.

    Parameters
    ----------
    predictor : SAM2VideoPredictor
    state : dict
        sam2's inference state.
    cache : napari_lit.core.features.FeatureCache
    window_of : callable, optional
        ``window_of(frame_idx)`` -> the window (y0, x0, y1, x1) of the frame the state sees
        (a zoom view; called before the frame is read), or None for whole frames.
    """
    import torch

    state[_FEATURES] = (cache, window_of)
    if vars(predictor).get(_FEATURE_WRAPPED):
        return
    original = predictor._get_image_feature
    neck = predictor.image_encoder.neck

    def position_encoding(fpn):
        return [neck.position_encoding(t).to(t.dtype) for t in fpn]

    def get_image_feature(inference_state, frame_idx, batch_size):
        hook = inference_state.get(_FEATURES)
        if hook is None:
            return original(inference_state, frame_idx, batch_size)
        features, window_of_frame = hook
        window = None if window_of_frame is None else window_of_frame(int(frame_idx))
        if frame_idx in inference_state["cached_features"]:  # sam2's own: the same frame again
            return original(inference_state, frame_idx, batch_size)
        backbone_out = features.get(frame_idx, window, position_encoding)
        if backbone_out is not None:
            # sam2 only expands the image it caches beside the features; nothing reads it
            placeholder = torch.zeros((), dtype=backbone_out["backbone_fpn"][0].dtype).expand(
                1, 3, predictor.image_size, predictor.image_size)
            device = inference_state["device"]
            backbone_out = {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device))
                            for k, v in backbone_out.items()}
            inference_state["cached_features"] = {frame_idx: (placeholder, backbone_out)}
            return original(inference_state, frame_idx, batch_size)
        out = original(inference_state, frame_idx, batch_size)
        features.put(frame_idx, window, inference_state["cached_features"][frame_idx][1])
        return out

    predictor._get_image_feature = get_image_feature
    setattr(predictor, _FEATURE_WRAPPED, True)


def encode_frame(predictor, state: dict, frame_idx: int) -> None:
    """sam2's features of ``frame_idx`` for ``state`` (through its cache, if attached),
    computing them if needed: fills the cache ahead of a propagation."""
    predictor._get_image_feature(state, int(frame_idx), 1)


ATTENTION_PRECISIONS = ("auto", "float32", "bfloat16")
_ATTENTION = "_napari_lit_attention"
#: Queries per block of the bfloat16 attention: its (block x keys) score matrix stays small
#: (512 x 28,736 keys of sam2.1's 7 memory frames: 29 MB).
_QUERY_BLOCK = 512
#: Key counts are padded to a multiple of this for :func:`_bf16_attention`.
_KEY_ALIGN = 64


def _bf16_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v with bfloat16 matrix products (float32 accumulation inside
    oneDNN), block by block of queries, each block's softmax computed in float32 and rounded
    to bfloat16; q, k, v (..., L, d) float32 or bfloat16, the output in q's dtype. On a CPU with avx512_bf16 this is
    2.7x faster than torch's fused float32 kernel for sam2.1's memory attention, where that
    kernel gains nothing in bfloat16 (``benchmarks/experiments/cpu_options.py``).

    The keys are padded to a multiple of :data:`_KEY_ALIGN` (zero keys and values, their
    scores set to -inf before the softmax, so they add nothing; sam2's memory bank has 4
    tokens per object pointer, so 28,700 to 28,736 keys) and one score buffer serves all
    blocks: the memory attention 1.17x faster with glibc's allocator as it comes, 1.02x once
    :func:`napari_lit.core.cpu.tune_allocator` keeps freed memory
    (``benchmarks/experiments/allocator.py``)."""
    import torch

    scale = q.shape[-1] ** -0.5
    lead = q.shape[:-2]
    q2, k2, v2 = (t.reshape(-1, *t.shape[-2:]) for t in (q, k, v))
    n_keys = k2.shape[-2]
    padded = -(-n_keys // _KEY_ALIGN) * _KEY_ALIGN
    out = torch.empty(q2.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    scores = torch.empty((min(_QUERY_BLOCK, q2.shape[-2]), padded), dtype=torch.bfloat16, device=q.device)
    for b in range(q2.shape[0]):
        qb = (q2[b] * scale).bfloat16()
        kt = torch.zeros((k2.shape[-1], padded), dtype=torch.bfloat16, device=q.device)
        kt[:, :n_keys] = k2[b].t()
        vb = torch.zeros((padded, v2.shape[-1]), dtype=torch.bfloat16, device=q.device)
        vb[:n_keys] = v2[b]
        for i in range(0, qb.shape[0], _QUERY_BLOCK):
            block = scores[:min(_QUERY_BLOCK, qb.shape[0] - i)]
            torch.mm(qb[i:i + _QUERY_BLOCK], kt, out=block)
            if padded > n_keys:
                block[:, n_keys:] = float("-inf")
            out[b, i:i + _QUERY_BLOCK] = torch.softmax(block, dim=-1) @ vb
    return out.reshape(*lead, *out.shape[-2:])


@functools.lru_cache(maxsize=None)
def _attention_mode_class():
    """A torch function mode (thread-local) that runs ``scaled_dot_product_attention`` of
    float32 or bfloat16 CPU tensors without masks, dropout or gradients through
    :func:`_bf16_attention`."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    class _Bf16Attention(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.scaled_dot_product_attention and len(args) == 3 and not torch.is_grad_enabled() \
                    and not kwargs.get("dropout_p") and set(kwargs) <= {"dropout_p"} \
                    and all(a.device.type == "cpu" and a.dtype in (torch.float32, torch.bfloat16) for a in args):
                return _bf16_attention(*args)
            return func(*args, **kwargs)

    return _Bf16Attention


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 products natively (x86 avx512_bf16 or AMX); where it
    does not, bfloat16 products are emulated and no faster than float32."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def set_attention_precision(predictor, precision: str = "auto") -> str:
    """Choose how sam2's memory attention computes its attention on a CPU.

    The memory attention (every tracked frame attends to the memory bank: for sam2.1 at
    1024 px, 4,096 queries against ~28,700 keys in each of 4 layers) is, once image features
    are cached, most of a propagated frame's time on a CPU. ``bfloat16`` runs it under
    bfloat16 autocast (its linear layers in bfloat16, the residual stream and layer norms in
    float32) with its ``scaled_dot_product_attention`` calls through :func:`_bf16_attention`
    (torch's fused CPU kernel gains nothing in bfloat16); the masks then differ from float32
    within the tolerance measured in ``docs/benchmarks.md``. Other modules, GPU tensors, and
    calls with gradients (learning) keep float32.

    Parameters
    ----------
    predictor : SAM2VideoPredictor
    precision : {"auto", "float32", "bfloat16"}
        ``auto``: bfloat16 when the CPU has native bfloat16 support (avx512_bf16 / AMX,
        :func:`native_bf16`) and the memory attention is large (input of 512 px or more:
        1,024 or more tokens per frame), else float32 (for ``lit-tiny``'s 256 tokens the
        conversions cost more than bfloat16 saves: measured).

    Returns
    -------
    str
        The precision now in use: "float32" or "bfloat16".

    Raises
    ------
    ValueError
        If ``precision`` is not one of the above.
    """
    import torch

    if precision not in ATTENTION_PRECISIONS:
        raise ValueError(f"attention precision must be one of {ATTENTION_PRECISIONS}; got {precision!r}")
    if precision == "auto":
        large = int(getattr(predictor, "image_size", 0)) >= 512
        precision = "bfloat16" if native_bf16() and large else "float32"
    module = predictor.memory_attention
    if hasattr(module, "get_base_model"):
        module = module.get_base_model()
    ours = getattr(vars(module).get("forward"), "_napari_lit_bf16", False)
    if precision == "bfloat16" and not ours:
        forward = module.forward

        def forward_bf16(*args, **kwargs):
            if torch.is_grad_enabled() or not _on_cpu(args, kwargs):  # learning, or a GPU: as sam2 does
                return forward(*args, **kwargs)
            with torch.autocast("cpu", dtype=torch.bfloat16), _attention_mode_class()():
                return forward(*args, **kwargs).float()

        forward_bf16._napari_lit_bf16 = True
        forward_bf16._napari_lit_before = vars(module).get("forward")  # someone else's wrapper, if any
        module.forward = forward_bf16
    elif precision == "float32" and ours:
        original = getattr(vars(module)["forward"], "_napari_lit_before", None)
        if original is None:
            del module.forward
        else:
            module.forward = original
    setattr(predictor, _ATTENTION, precision)
    return precision


def _on_cpu(args, kwargs) -> bool:
    import torch

    values = list(args) + list(kwargs.values())
    items = [t for v in values for t in (v if isinstance(v, (list, tuple)) else [v])]
    return all(t.device.type == "cpu" for t in items if isinstance(t, torch.Tensor))


def attention_precision(predictor) -> str:
    """The memory attention's precision (:func:`set_attention_precision`); float32 if never set."""
    return getattr(predictor, _ATTENTION, "float32")


def memory_reach(predictor) -> int:
    """How many frames back sam2 reads from when it tracks a frame: its memory bank
    (``num_maskmem`` frames at the evaluation stride) and its object pointers
    (``max_obj_ptrs_in_encoder`` frames)."""
    stride = int(getattr(predictor, "memory_temporal_stride_for_eval", 1))
    return max(int(predictor.num_maskmem) * stride, int(getattr(predictor, "max_obj_ptrs_in_encoder", 16)))


def _tensor_bytes(values) -> int:
    """Bytes of the tensors among ``values`` (tensors, lists of tensors, anything else)."""
    total = 0
    for v in values:
        for t in v if isinstance(v, (list, tuple)) else [v]:
            total += t.numel() * t.element_size() if hasattr(t, "numel") else 0
    return total


def output_nbytes(out: dict) -> int:
    """Bytes of the tensors in one of sam2's per-frame outputs."""
    return _tensor_bytes(out.values())


def prune_tracked_outputs(state: dict, frame_idx: int, reach: int, keep: int) -> int:
    """Bound sam2's per-frame state: drop tracked (non-conditioning) outputs until each
    object holds at most ``keep`` of them, farthest from ``frame_idx`` first, never one
    within ``reach`` frames of ``frame_idx`` or of the object's prompted frames (what sam2
    reads when it tracks on from either). Labels already written elsewhere are not
    touched. Returns how many were dropped."""
    dropped = 0
    for obj_idx, per_obj in state["output_dict_per_obj"].items():
        outputs = per_obj["non_cond_frame_outputs"]
        if len(outputs) <= keep:
            continue
        cond = sorted(set(per_obj["cond_frame_outputs"]) | set(state["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"]))
        far = [f for f in outputs
               if abs(f - frame_idx) > reach and all(abs(f - c) > reach for c in cond)]
        far.sort(key=lambda f: -abs(f - frame_idx))
        for f in far[: len(outputs) - keep]:
            del outputs[f]
            dropped += 1
    return dropped


def propagate_in_video(predictor, state: dict, start_frame_idx: int, max_frame_num_to_track, reverse: bool):
    """sam2's ``propagate_in_video`` without its own tqdm bar (callers show progress).

    Yields ``(frame_idx, obj_ids, video_res_masks)`` exactly as sam2 does.
    """
    import sam2.sam2_video_predictor as svp

    gen = predictor.propagate_in_video(
        state, start_frame_idx=start_frame_idx, max_frame_num_to_track=max_frame_num_to_track,
        reverse=reverse,
    )
    try:
        # sam2 wraps its frame range in tqdm when the generator first runs
        with mock.patch.object(svp, "tqdm", lambda iterable, **_kw: iterable):
            first = next(gen, None)
        if first is None:
            return
        yield first
        yield from gen
    finally:
        gen.close()


class DecoderInputs(dict):
    """Keyword inputs of sam2's mask decoder for one frame and object, as sam2 passed them:
    ``image_embeddings`` (memory-conditioned, (1, C, h, w)), ``image_pe``,
    ``sparse_prompt_embeddings``, ``dense_prompt_embeddings``, ``high_res_features`` (list),
    ``multimask_output``, ``repeat_image``. Tensors are detached copies."""

    memory_attention = None  #: the memory attention's keyword inputs for this frame, if recorded
    #: the window of the frame the decoder saw, (y0, x0, y1, x1) frame pixels; None: the whole frame
    window = None

    def nbytes(self) -> int:
        return _tensor_bytes(list(self.values()) + list((self.memory_attention or {}).values()))


def _detach(value):
    if isinstance(value, (list, tuple)):
        return [_detach(v) for v in value]
    if hasattr(value, "detach"):
        return value.detach().clone()
    return value


class ObjectContext:
    """Knows which frame and object sam2 is processing, and records decoder inputs.

    sam2 runs its mask decoder once per object per frame inside
    ``SAM2VideoPredictor._run_single_frame_inference``; this wraps that method on one
    predictor instance to note ``(frame_idx, obj_id, tracking)`` (``tracking``: a frame
    propagated from memory, without clicks or mask), and a forward pre-hook on the mask
    decoder module stores the decoder's keyword inputs of tracked frames in a small LRU
    (bounded in bytes). Listeners (e.g. an adapter switching LoRA weights per object) are
    called with that context before each decoder call.

    Parameters
    ----------
    predictor : SAM2VideoPredictor
    state : dict, optional
        sam2's inference state of the tracker; a tracker with several (one per zoom window)
        adds each with :meth:`add_state`.
    budget_bytes : int
        Upper bound of the recorded inputs' size; the least recently recorded go first.
    """

    def __init__(self, predictor, state: Optional[dict] = None, budget_bytes: int = 256 * 2**20):
        from collections import OrderedDict

        self.predictor = predictor
        self.states: list = []
        self._windows: list = []  # per state: its frame -> window mapping, or None (whole frames)
        if state is not None:
            self.add_state(state)
        self.budget_bytes = int(budget_bytes)
        self.current = None
        self._current_windows = None
        self.listeners = []
        self._records: "OrderedDict[tuple, DecoderInputs]" = OrderedDict()
        self._bytes = 0
        decoder = predictor.sam_mask_decoder
        if hasattr(decoder, "get_base_model"):  # already wrapped by peft: hook the base module
            decoder = decoder.get_base_model()
        self._decoder = decoder  # hooks on the base module survive peft wrapping/unloading
        memory_attention = predictor.memory_attention
        if hasattr(memory_attention, "get_base_model"):
            memory_attention = memory_attention.get_base_model()
        self._pending_memory = None
        self._mem_hook = memory_attention.register_forward_pre_hook(self._memory_pre_hook, with_kwargs=True)
        _contexts_of(predictor).append(self)
        self._hook = self._decoder.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        self._out_hook = self._decoder.register_forward_hook(self._post_hook)
        self._current_state = None
        #: (id(state), frame, obj) -> (predicted IoU, object score logit) of the latest decoder call
        self._confidence: "OrderedDict[tuple, Tuple[float, float]]" = OrderedDict()

    def add_state(self, state: dict, windows: Optional[dict] = None) -> None:
        """Also watch ``state``; ``windows`` (frame -> window, read when a frame is recorded)
        says which window of each frame it sees (None: the whole frame)."""
        self.states.append(state)
        self._windows.append(windows)

    def remove_state(self, state: dict) -> None:
        """Stop watching ``state`` (its records stay until evicted or cleared)."""
        for k, s in enumerate(self.states):
            if s is state:
                del self.states[k], self._windows[k]
                for key in [key for key in self._confidence if key[0] == id(state)]:
                    del self._confidence[key]
                return

    @property
    def state(self):
        """The first watched state (trackers without zoom have one)."""
        return self.states[0] if self.states else None

    def _enter(self, inference_state, output_dict, frame_idx, args, kwargs) -> None:
        """Note which (frame, object) sam2 is about to decode (None: not this tracker's)."""
        which = next((k for k, s in enumerate(self.states) if s is inference_state), None)
        if which is None:
            self.current, self._current_windows = None, None
            return
        obj_id = None
        for idx, d in inference_state["output_dict_per_obj"].items():
            if d is output_dict:
                obj_id = inference_state["obj_idx_to_id"][idx]
                break
        point_inputs = kwargs.get("point_inputs", args[2] if len(args) > 2 else None)
        mask_inputs = kwargs.get("mask_inputs", args[3] if len(args) > 3 else None)
        is_init = kwargs.get("is_init_cond_frame", args[1] if len(args) > 1 else False)
        tracking = point_inputs is None and mask_inputs is None and not is_init
        self.current = (int(frame_idx), obj_id, tracking)
        self._current_windows = self._windows[which]
        self._current_state = inference_state

    def _memory_pre_hook(self, module, args, kwargs):
        """Keep the memory attention's inputs of the frame in progress; they join the
        decoder's record (for adapters that also adapt the memory attention)."""
        if self.current is None:
            return None
        for listener in self.listeners:  # before the memory attention runs, too
            listener(*self.current)
        if self.current[2]:
            self._pending_memory = {k: _detach(v) for k, v in kwargs.items()}
        return None

    def _pre_hook(self, module, args, kwargs):
        if self.current is None:
            return None
        for listener in self.listeners:
            listener(*self.current)
        frame_idx, obj_id, tracking = self.current
        if tracking and obj_id is not None:
            record = DecoderInputs({k: _detach(v) for k, v in kwargs.items()})
            if self._current_windows is not None:
                window = self._current_windows.get(frame_idx)
                record.window = None if window is None else tuple(int(v) for v in window)
            if self._pending_memory is not None:
                record.memory_attention = self._pending_memory
                self._pending_memory = None
            key = (frame_idx, obj_id)
            old = self._records.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes()
            self._records[key] = record
            self._bytes += record.nbytes()
            while self._bytes > self.budget_bytes and len(self._records) > 1:
                _, dropped = self._records.popitem(last=False)
                self._bytes -= dropped.nbytes()
        return None

    def _post_hook(self, module, args, output):
        """Note the decoder's own confidence in the mask sam2 keeps: the highest predicted IoU
        of its candidates (sam2 keeps that one) and the object score logit."""
        if self.current is None or self.current[1] is None or not isinstance(output, tuple) or len(output) < 4:
            return None
        iou_pred, object_score_logits = output[1], output[3]
        key = (id(self._current_state), self.current[0], self.current[1])
        self._confidence.pop(key, None)
        self._confidence[key] = (float(iou_pred.detach().max()), float(object_score_logits.detach().reshape(-1)[0]))
        while len(self._confidence) > 100_000:  # bounded: a few MB
            self._confidence.popitem(last=False)
        return None

    def confidence(self, state: dict, frame_idx: int, obj_id: int) -> Optional[Tuple[float, float]]:
        """(predicted IoU, object score logit) of the latest decoder call for (frame, object)
        in ``state``, or None if there was none."""
        return self._confidence.get((id(state), int(frame_idx), int(obj_id)))

    def decoder_inputs(self, frame_idx: int, obj_id: int):
        """The recorded tracking inputs of (frame, object), or None if not (or no longer) held."""
        return self._records.get((int(frame_idx), int(obj_id)))

    def forget(self, frame_idx: int, obj_id: int) -> None:
        """Drop a record (e.g. after the frame was corrected)."""
        old = self._records.pop((int(frame_idx), int(obj_id)), None)
        if old is not None:
            self._bytes -= old.nbytes()

    def clear(self) -> None:
        """Drop all records."""
        self._records.clear()
        self._bytes = 0

    def close(self) -> None:
        """Remove the hooks; the last context of a predictor (closed in any order) gives
        sam2's method back."""
        self._hook.remove()
        self._out_hook.remove()
        self._mem_hook.remove()
        contexts = _contexts_of(self.predictor)
        if self in contexts:
            contexts.remove(self)
        if not contexts:
            _uninstall(self.predictor)
        self._records.clear()
        self._bytes = 0


_CONTEXTS = "_napari_lit_contexts"
_BEFORE = "_napari_lit_run_before"


def _contexts_of(predictor) -> list:
    """The open ObjectContexts of ``predictor``; the first call wraps sam2's
    ``_run_single_frame_inference`` on that instance once, for all of them: each notes which
    frame and object is decoded, whatever order they are later closed in."""
    contexts = vars(predictor).get(_CONTEXTS)
    if contexts is None:
        contexts = []
        before = vars(predictor).get("_run_single_frame_inference")  # someone else's wrapper, if any
        run = predictor._run_single_frame_inference

        def dispatch(inference_state, output_dict, frame_idx, *args, **kwargs):
            for c in list(contexts):
                c._enter(inference_state, output_dict, frame_idx, args, kwargs)
            try:
                return run(inference_state, output_dict, frame_idx, *args, **kwargs)
            finally:
                for c in list(contexts):
                    c.current = None

        setattr(predictor, _CONTEXTS, contexts)
        setattr(predictor, _BEFORE, before)
        predictor._run_single_frame_inference = dispatch
    return contexts


def _uninstall(predictor) -> None:
    before = vars(predictor).pop(_BEFORE, None)
    vars(predictor).pop(_CONTEXTS, None)
    if before is not None:
        predictor._run_single_frame_inference = before
    else:
        vars(predictor).pop("_run_single_frame_inference", None)


def select_tracking_mask(low_res_multimasks, ious, object_score_logits, no_obj_score: float = -1024.0):
    """Pick the output mask as sam2 does after its decoder: the highest predicted IoU when
    several masks come out, and the "no object" score where the object score is <= 0.

    Returns
    -------
    (low_res_masks (B, 1, h, w), best_iou (B,))
    """
    import torch

    if low_res_multimasks.shape[1] > 1:
        best = torch.argmax(ious, dim=-1)
        idx = torch.arange(low_res_multimasks.shape[0], device=low_res_multimasks.device)
        masks = low_res_multimasks[idx, best].unsqueeze(1)
        best_iou = ious[idx, best]
    else:
        masks, best_iou = low_res_multimasks, ious[:, 0]
    present = (object_score_logits > 0).view(-1, 1, 1, 1)
    return torch.where(present, masks, torch.full_like(masks, no_obj_score)), best_iou
