"""LIT-LoRA: learn from each correction with a LoRA adapter on SAM2's mask decoder.

Live Interactive Training (Yang et al., CVPR 2026, arXiv 2603.26929): when the user corrects
frame t of object k, a small LoRA adapter on SAM2's mask decoder is trained on frame t's
cached decoder inputs (memory-conditioned image embedding, high-resolution features, prompt
embeddings of the tracking pass) against the corrected mask, so the same kind of error is
fixed by itself on later frames. The adapter is made with ``peft``
(``LoraConfig(target_modules=...)``), one per object, and accumulates over that object's
corrections in one sequence (``AdapterConfig.scope="object"``).

Sequence-level adaptation (Kontogianni et al., ECCV 2020, "Continuous adaptation for
interactive object segmentation by learning from corrections", image-sequence adaptation):
with ``scope="sequence"`` one adapter is shared by all objects of a session and trained on each
correction of any object, together with replayed earlier corrections (the latest of each other
object first, so learning one nucleus does not overwrite what another taught); with
``scope="both"`` each correction trains the shared adapter that way and then the object's own
adapter on top of it (the shared one held fixed), and an object is predicted with both.

Published settings, kept as defaults here: q/k/v projections of the decoder's two-way
transformer (both blocks and the final token-to-image attention), rank 4, alpha 4, dropout
0.1; loss focal + dice weighted 20:1; AdamW without weight decay; early stopping, keeping the
best step. Two settings differ from LIT's (lr 1e-4, at most 40 steps): with lr 1e-4 the
adapter of the embedded ``lit-tiny`` hardly moves in 40 steps (3 % fewer corrections than no
learning on the dev sequences), so the default is lr 1e-2 with at most 20 steps, which
learns more and stays under 0.5 s per correction on a 2-core CPU (the learning-rate ablation
is in ``docs/benchmarks.md``). ``AdapterConfig.published()`` gives LIT's exact settings.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._sam2 import DecoderInputs, select_tracking_mask

__all__ = ["AdapterConfig", "TrainStep", "DecoderAdapter", "focal_loss", "dice_loss", "SCOPES", "SHARED"]

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.pt"
CONFIG_FILE = "adapter_config.json"


#: projections of the attention layers (decoder transformer; memory attention)
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
#: layers of the decoder's output path, by name: the regular expression of their modules
OUTPUT_TARGETS = {
    "hypernetworks": r".*output_hypernetworks_mlps\.\d+\.layers\.\d+",
}
#: what one adapter serves (:attr:`AdapterConfig.scope`)
SCOPES = ("object", "sequence", "both")
#: the id under which :class:`DecoderAdapter` keeps the adapter shared by all objects
SHARED = -1


@dataclass
class AdapterConfig:
    """Settings of the LoRA adapter and of its training on a correction.

    Parameters
    ----------
    rank, alpha, dropout : int, float, float
        LoRA rank r, scaling alpha (the update is scaled by alpha / r) and dropout.
    target_modules : sequence of str
        Layers to adapt: projections inside the mask decoder's transformer (``q_proj``,
        ``k_proj``, ``v_proj``, ``out_proj``; :data:`ATTENTION_TARGETS`) and, optionally,
        layers of its output path (:data:`OUTPUT_TARGETS`: ``hypernetworks``, the MLPs that
        turn each mask token into the per-channel weights of its mask). (The decoder's
        projections of the high-resolution features run when a frame is encoded, not in the
        decoder's forward pass, and its upscaling is transposed convolutions, which peft's
        LoRA does not wrap.) The memory attention, when adapted, gets the projections only.
    lr : float
        AdamW learning rate (no weight decay); LIT published 1e-4 (see the module notes).
    max_steps : int
        Most optimisation steps per correction (LIT: 40).
    patience : int
        Stop after this many steps without a lower loss (early stopping); the adapter keeps
        its best step.
    focal_weight, dice_weight : float
        Loss weights (LIT: 20:1).
    replay : int
        Earlier corrections of the same object trained along with the new one, in the same
        batch (0 = only the new correction), for the object's own adapter.
    scope : {"object", "sequence", "both"}
        ``object``: one adapter per object, trained on that object's corrections (LIT).
        ``sequence``: one adapter shared by all objects of the session, trained on each
        correction of any object with up to ``shared_replay`` earlier ones (image-sequence
        adaptation, Kontogianni et al. 2020). ``both``: the shared adapter as in
        ``sequence``, then the object's own adapter trained on top of it (shared held fixed);
        objects are predicted with the sum of both (an object without its own adapter yet
        with the shared one alone). ``both`` trains two adapters per correction, so it takes
        up to twice as long.
    shared_replay : int
        Earlier corrections replayed with each new one when the shared adapter trains: the
        latest correction of each object first (most recent first), then older ones, up to
        this many.
    shared_steps : int
        Most optimisation steps of the shared adapter per correction (0: ``max_steps``).
        Kontogianni et al. take one gradient step per image for the sequence-level update,
        which keeps it from fitting one object at the others' cost.
    target_iou : float
        Stop as soon as the adapted prediction reproduces the correction this well (IoU at
        the loss's resolution, ``loss_side``).
    memory_attention : bool
        Also adapt the q/k/v projections of SAM2's memory attention (then the memory
        attention reruns from its recorded inputs at each step; LIT adapts the decoder only).
    loss_side : int
        Where the loss compares the adapted mask with the correction. 0: at the decoder's
        output resolution (image_size / 4, square; the correction area-resampled to it).
        N > 0: on a grid with the correction's aspect ratio and at most N pixels on its
        longer side (never more than the correction's own size), the decoder's logits resized
        to it bilinearly as sam2 resizes them to the frame -- as SAM2 is trained, with the
        loss on upsampled masks, so the adapter learns where the boundary falls between the
        decoder's output pixels, which is what the masks the user sees are judged on.
    seed : int
        Seed of each training's random generator (LoRA initialisation, dropout), combined
        with the object id and its number of corrections: the same correction gives the
        same adapter, in any process.
    """

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.1
    target_modules: Tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    lr: float = 1e-2
    max_steps: int = 20
    patience: int = 8
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    replay: int = 0
    scope: str = "object"
    shared_replay: int = 4
    shared_steps: int = 0
    target_iou: float = 0.9
    memory_attention: bool = False
    loss_side: int = 0
    seed: int = 0

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        if self.loss_side < 0:
            raise ValueError(f"loss_side must be >= 0 (0: the decoder's output resolution); got {self.loss_side}")
        if self.rank < 1 or self.max_steps < 1 or self.lr <= 0:
            raise ValueError(f"rank and max_steps must be >= 1 and lr > 0; got {self.rank}, {self.max_steps}, {self.lr}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1 (steps without a lower loss before stopping); got {self.patience}")
        if self.replay < 0 or self.shared_replay < 0:
            raise ValueError(f"replay and shared_replay must be >= 0 (earlier corrections trained along); "
                             f"got {self.replay}, {self.shared_replay}")
        if self.shared_steps < 0:
            raise ValueError(f"shared_steps must be >= 0 (0: max_steps); got {self.shared_steps}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {list(SCOPES)} (what one adapter serves); got {self.scope!r}")
        allowed = set(ATTENTION_TARGETS) | set(OUTPUT_TARGETS)
        bad = set(self.target_modules) - allowed
        if bad or not self.target_modules:
            raise ValueError(f"target_modules must be a non-empty subset of {sorted(allowed)}; got {list(self.target_modules)}")
        if self.memory_attention and not set(self.target_modules) & set(ATTENTION_TARGETS):
            raise ValueError(f"memory_attention adapts the memory attention's projections: target_modules must "
                             f"name at least one of {list(ATTENTION_TARGETS)}; got {list(self.target_modules)}")

    @classmethod
    def published(cls, **overrides) -> "AdapterConfig":
        """LIT's published settings (Yang et al. 2026): lr 1e-4, at most 40 steps; the
        other defaults are already theirs.

        Parameters
        ----------
        **overrides
            Any other :class:`AdapterConfig` field to set.
        """
        return cls(**{"lr": 1e-4, "max_steps": 40, **overrides})

    def lora_config(self, part: str = "decoder"):
        """The ``peft.LoraConfig`` for ``part``: ``decoder`` (a regex over the mask decoder
        transformer's projections and the output-path layers asked for) or ``memory`` (the
        memory attention's projections)."""
        from peft import LoraConfig

        attn = [m for m in self.target_modules if m in ATTENTION_TARGETS]
        names = "|".join(attn)
        if part == "decoder":
            alternatives = [rf".*transformer\..*\.({names})"] if attn else []
            alternatives += [OUTPUT_TARGETS[m] for m in self.target_modules if m in OUTPUT_TARGETS]
            pattern = "|".join(f"(?:{a})" for a in alternatives)
        else:
            pattern = rf"layers\..*\.({names})"
        return LoraConfig(
            r=int(self.rank), lora_alpha=float(self.alpha), lora_dropout=float(self.dropout),
            target_modules=pattern, bias="none",
        )


@dataclass
class TrainStep:
    """One optimisation step on a correction: ``step`` (1-based), ``loss`` (float),
    ``iou`` of the adapted prediction with the corrected mask at the loss's resolution
    (:attr:`AdapterConfig.loss_side`); ``adapter``: the adapter trained (``sequence``, the
    shared one, or ``obj<id>``; with scope ``both`` the shared one's steps come first)."""

    step: int
    loss: float
    iou: float
    adapter: str = ""


def focal_loss(logits, target, alpha: float = 0.25, gamma: float = 2.0):
    """Sigmoid focal loss (Lin et al. 2017), mean over pixels, per mask.

    Parameters
    ----------
    logits, target : (B, M, h, w) tensors
        Mask logits and {0, 1} targets.
    alpha, gamma : float

    Returns
    -------
    (B, M) tensor
    """
    import torch.nn.functional as F

    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(2).mean(-1)


def dice_loss(logits, target, eps: float = 1.0):
    """Soft dice loss per mask: 1 - (2 |P T| + eps) / (|P| + |T| + eps).

    Parameters
    ----------
    logits, target : (B, M, h, w) tensors
    eps : float
        Smoothing.

    Returns
    -------
    (B, M) tensor
    """
    p = logits.sigmoid().flatten(2)
    t = target.flatten(2)
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


def _stack(records: Sequence[DecoderInputs]) -> DecoderInputs:
    """Several frames' decoder inputs as one batch (along dim 0; ``image_pe`` is shared)."""
    import torch

    if len(records) == 1:
        return records[0]
    out = DecoderInputs()
    for key, value in records[0].items():
        if key == "image_pe" or not hasattr(value, "shape") and not isinstance(value, list):
            out[key] = value
        elif isinstance(value, list):
            out[key] = [torch.cat([r[key][i] for r in records]) for i in range(len(value))]
        else:
            out[key] = torch.cat([r[key] for r in records])
    return out


@dataclass
class _Example:
    inputs: DecoderInputs
    target: object  # (1, 1, h, w) float tensor at the loss's resolution (DecoderAdapter.target_tensor)
    serial: int = 0  # order of the corrections of all objects (the shared adapter's replay)


class DecoderAdapter:
    """LoRA adapters (one per object, one shared by all, or both: ``config.scope``) on a
    SAM2 predictor's mask decoder.

    Wraps ``predictor.sam_mask_decoder`` in a ``peft.PeftModel`` the first time an object
    gets an adapter. Adapter layers stay *disabled* except inside :meth:`predict`,
    :meth:`train` and while :attr:`always` is set (the "adapted decoder on every frame"
    comparison mode), so sam2 propagates with its frozen decoder by default.

    Parameters
    ----------
    predictor : sam2.sam2_video_predictor.SAM2VideoPredictor
    config : AdapterConfig, optional
    """

    def __init__(self, predictor, config: Optional[AdapterConfig] = None):
        # import peft now, not at the first correction: its import (transformers, torch
        # extensions) holds the GIL for seconds and would freeze a GUI thread meanwhile
        import peft  # noqa: F401

        self.predictor = predictor
        self.config = config or AdapterConfig()
        self.peft_model = None  # the mask decoder wrapped by peft
        self.peft_memory = None  # the memory attention wrapped by peft (config.memory_attention)
        self.examples: Dict[int, List[_Example]] = {}
        self.n_corrections: Dict[int, int] = {}
        #: per object, the best IoU with which the adapted decoder reproduced the target of its
        #: latest correction during that training (at the decoder's output resolution); an
        #: adapter fitting below tau cannot be expected to pass tau on later frames
        self.fit: Dict[int, float] = {}
        self.always = False
        self._serial = 0  # corrections seen, all objects (orders the shared adapter's replay)

    # ----------------------------------------------------------------- plumbing
    @staticmethod
    def adapter_name(obj_id: int) -> str:
        """The peft adapter name of object ``obj_id`` (``obj<id>``; :data:`SHARED`:
        ``sequence``, the adapter shared by all objects)."""
        return "sequence" if int(obj_id) == SHARED else f"obj{int(obj_id)}"

    @staticmethod
    def _id_of(name: str) -> int:
        return SHARED if name == "sequence" else int(name[3:])

    def _exists(self, obj_id: int) -> bool:
        return self.peft_model is not None and self.adapter_name(obj_id) in self.peft_model.peft_config

    def own_adapters(self) -> List[int]:
        """Ids of the objects with an adapter of their own (sorted; not :data:`SHARED`)."""
        if self.peft_model is None:
            return []
        return sorted(self._id_of(n) for n in self.peft_model.peft_config if n != "sequence")

    @property
    def has_shared(self) -> bool:
        """Whether the adapter shared by all objects exists (scope ``sequence`` or ``both``)."""
        return self._exists(SHARED)

    def _serving(self, obj_id: int) -> List[int]:
        """The adapters that predict object ``obj_id``, by :attr:`AdapterConfig.scope`."""
        if int(obj_id) == SHARED:
            return [SHARED] if self._exists(SHARED) else []
        scope = self.config.scope
        out = [SHARED] if scope in ("sequence", "both") and self._exists(SHARED) else []
        if scope in ("object", "both") and self._exists(obj_id):
            out.append(int(obj_id))
        return out

    def has_adapter(self, obj_id: int) -> bool:
        """Whether object ``obj_id``'s predictions are adapted: it has an adapter of its own
        (scope ``object``), the shared adapter exists (``sequence``), either (``both``).
        ``obj_id`` :data:`SHARED` asks for the shared adapter."""
        return bool(self._serving(obj_id)) if int(obj_id) != SHARED else self._exists(SHARED)

    def _wrapped(self):
        return [m for m in (self.peft_model, self.peft_memory) if m is not None]

    def _ensure(self, obj_id: int) -> str:
        from peft import get_peft_model

        name = self.adapter_name(obj_id)
        parts = [("decoder", "sam_mask_decoder", "peft_model")]
        if self.config.memory_attention:
            parts.append(("memory", "memory_attention", "peft_memory"))
        for part, attr, slot in parts:
            wrapped = getattr(self, slot)
            if wrapped is None:
                wrapped = get_peft_model(getattr(self.predictor, attr), self.config.lora_config(part),
                                         adapter_name=name)
                setattr(self.predictor, attr, wrapped)
                setattr(self, slot, wrapped)
                wrapped.base_model.disable_adapter_layers()
                wrapped.eval()
            elif name not in wrapped.peft_config:
                wrapped.add_adapter(name, self.config.lora_config(part))
                wrapped.eval()  # the new adapter's LoRA dropout is built in training mode
        return name

    def _activate(self, obj_id: int, names: Optional[List[str]] = None) -> None:
        names = names or [self.adapter_name(k) for k in self._serving(obj_id)]
        for wrapped in self._wrapped():
            wrapped.base_model.enable_adapter_layers()
            wrapped.base_model.set_adapter(names if len(names) > 1 else names[0])

    def _deactivate(self) -> None:
        for wrapped in self._wrapped():
            wrapped.base_model.disable_adapter_layers()

    def on_decoder_call(self, frame_idx: int, obj_id: Optional[int], tracking: bool) -> None:
        """Listener for :class:`~napari_lit.core._sam2.ObjectContext`, called before sam2
        decodes frame ``frame_idx`` of object ``obj_id`` (``tracking``: propagated from
        memory). In ``always`` mode it switches on that object's adapter for tracked frames;
        otherwise adapters stay off."""
        if self.always and tracking and obj_id is not None and self.has_adapter(obj_id):
            self._activate(obj_id)
        else:
            self._deactivate()

    def _lora_parameters(self, obj_id: int):
        name = self.adapter_name(obj_id)
        return [p for w in self._wrapped() for n, p in w.named_parameters() if "lora_" in n and f".{name}." in n]

    def _decode(self, inputs: DecoderInputs):
        if self.peft_memory is None:
            return self.peft_model(**inputs)
        if inputs.memory_attention is None:
            raise ValueError("these decoder inputs carry no memory-attention inputs to adapt")
        b, c, h, w = inputs["image_embeddings"].shape
        out = self.peft_memory(**inputs.memory_attention)  # (HW, B, C), as sam2 reshapes it
        kwargs = dict(inputs)
        kwargs["image_embeddings"] = out.permute(1, 2, 0).reshape(b, c, h, w)
        return self.peft_model(**kwargs)

    # --------------------------------------------------------------- prediction
    def predict(self, obj_id: int, inputs: DecoderInputs) -> Tuple[object, float, float]:
        """The adapted decoder's prediction for one frame of object ``obj_id``.

        Parameters
        ----------
        obj_id : int
        inputs : DecoderInputs
            The frame's recorded tracking inputs.

        Returns
        -------
        (low_res_logits, predicted_iou, object_score) : ((1, 1, h, w) tensor, float, float)
            Mask logits at the decoder's resolution (image_size / 4), selected and gated as
            sam2 does.

        Raises
        ------
        KeyError
            If the object has no adapter yet.
        """
        import torch

        if not self.has_adapter(obj_id):
            raise KeyError(f"object {obj_id} has no adapter yet (no correction was learned)")
        self._activate(obj_id)
        try:
            with torch.inference_mode():
                masks, ious, _, obj_scores = self._decode(inputs)
                low, best_iou = select_tracking_mask(masks, ious, obj_scores)
        finally:
            self._deactivate()
        return low, float(best_iou[0]), float(obj_scores.view(-1)[0])

    def predict_frozen(self, inputs: DecoderInputs) -> Tuple[object, float, float]:
        """SAM2's own (not adapted) decoder prediction from a frame's recorded inputs, as
        :meth:`predict` returns it; no adapter is needed."""
        import torch

        self._deactivate()
        decoder = self.predictor.sam_mask_decoder
        with torch.inference_mode():
            masks, ious, _, obj_scores = decoder(**inputs)
            low, best_iou = select_tracking_mask(masks, ious, obj_scores)
        return low, float(best_iou[0]), float(obj_scores.view(-1)[0])

    # ----------------------------------------------------------------- training
    def train(self, obj_id: int, inputs: DecoderInputs, target_mask) -> Iterator[TrainStep]:
        """Learn from one correction (a generator: one :class:`TrainStep` per step).

        Reproducible: the LoRA initialisation and dropout draw from a random generator seeded
        with ``config.seed``, the object and its number of corrections (scope ``sequence``
        or ``both``: also the number of corrections of all objects; the global torch
        generator is left as it was), so a training cut short and run again after a resume
        gives the same adapter.

        Parameters
        ----------
        obj_id : int
            The corrected object; its adapter is created on its first correction and
            accumulates over later ones.
        inputs : DecoderInputs
            The corrected frame's recorded tracking inputs (no image-encoder pass repeats).
        target_mask : (Y, X) array-like of bool
            The corrected mask at any resolution (resized to the decoder's output).

        Yields
        ------
        TrainStep

        Notes
        -----
        Loss: ``focal_weight * focal + dice_weight * dice`` on the best of the decoder's
        output masks (as in SAM2 training), plus an L1 loss on its IoU predictions so the
        adapted decoder also picks that mask; averaged over the new correction and up to
        ``replay`` earlier ones of the object, decoded together in one batch. AdamW without
        weight decay; stops when the correction is reproduced (``target_iou``) or after
        ``patience`` steps without improvement; the adapter keeps its best step, also when
        the generator is closed early (cancel).

        Scope (:attr:`AdapterConfig.scope`): ``object`` trains the object's own adapter as
        above. ``sequence`` trains the one adapter shared by all objects, on the new
        correction and up to ``shared_replay`` earlier ones of any object (the latest of
        each object first), so one correction teaches every similar object (image-sequence
        adaptation, Kontogianni et al. 2020, Sec. 3.2.2, there one gradient step per image;
        here the same early-stopped fit as an object's). ``both`` (their combined
        adaptation, Sec. 3.2.3) trains the shared adapter first, then the object's own one
        with the shared one on and held fixed; the object is predicted with their sum. The :class:`TrainStep` records say which
        adapter each step trained.
        """
        import torch

        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(self.config.seed) * 1_000_003 + int(obj_id) * 10_007
                              + self.n_corrections.get(int(obj_id), 0)
                              + (7_919 * sum(self.n_corrections.values()) if self.config.scope != "object" else 0))
            yield from self._train(obj_id, inputs, target_mask)

    def _shared_batch(self, example: _Example) -> List[_Example]:
        """``example`` and the earlier corrections the shared adapter replays with it: the
        latest of each object, most recent first, then older ones (``shared_replay``)."""
        earlier = sorted((e for hist in self.examples.values() for e in hist), key=lambda e: -e.serial)
        latest = {}
        for obj, hist in self.examples.items():
            if hist:
                latest[obj] = max(hist, key=lambda e: e.serial)
        first = sorted(latest.values(), key=lambda e: -e.serial)
        chosen = first + [e for e in earlier if all(e is not f for f in first)]
        return [example] + chosen[: self.config.shared_replay]

    def _train(self, obj_id: int, inputs: DecoderInputs, target_mask) -> Iterator[TrainStep]:
        self._serial += 1
        example = _Example(inputs, self.target_tensor(inputs, target_mask, self.config.loss_side), self._serial)
        history = self.examples.setdefault(int(obj_id), [])
        scope = self.config.scope
        shared_batch = self._shared_batch(example) if scope in ("sequence", "both") else None
        own_batch = [example] + history[-self.config.replay:] if self.config.replay else [example]
        history.append(example)
        self.n_corrections[int(obj_id)] = self.n_corrections.get(int(obj_id), 0) + 1
        self.fit.pop(int(obj_id), None)
        if shared_batch is not None:
            self._ensure(SHARED)
            yield from self._fit(SHARED, [SHARED], shared_batch, int(obj_id),
                                 self.config.shared_steps or self.config.max_steps)
        if scope in ("object", "both"):
            self._ensure(obj_id)
            yield from self._fit(int(obj_id), self._serving(obj_id), own_batch, int(obj_id), self.config.max_steps)
        logger.info("adapter of object %d (%s): %d corrections", int(obj_id), scope, self.n_corrections[int(obj_id)])

    def _fit(self, train_id: int, active: List[int], batch: List[_Example], obj_id: int,
             max_steps: int) -> Iterator[TrainStep]:
        """Train adapter ``train_id`` (the others in ``active`` on and held fixed) on
        ``batch`` for at most ``max_steps``; ``fit[obj_id]`` records how well the first
        example is reproduced."""
        import torch
        import torch.nn.functional as F

        name = self.adapter_name(train_id)
        params = self._lora_parameters(train_id)
        opt = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=0.0)
        best_loss, best_state, since_best = float("inf"), None, 0
        self.fit.pop(int(obj_id), None)
        self._activate(obj_id, [self.adapter_name(k) for k in active])
        held = [p for k in active if k != train_id for p in self._lora_parameters(k)]
        for p in held:  # set_adapter made every active adapter trainable
            p.requires_grad_(False)
        for wrapped in self._wrapped():
            wrapped.train()
        try:
            # one batch for all examples; with memory adaptation one pass per example (their
            # memories differ in length)
            groups = ([(_stack([ex.inputs for ex in batch]), torch.cat([ex.target for ex in batch]))]
                      if self.peft_memory is None else [(ex.inputs, ex.target) for ex in batch])
            for step in range(1, int(max_steps) + 1):
                opt.zero_grad(set_to_none=True)
                losses, first = [], None
                with torch.enable_grad():
                    for inputs_g, target_g in groups:
                        masks, ious, _, _ = self._decode(inputs_g)
                        if tuple(masks.shape[-2:]) != tuple(target_g.shape[-2:]):  # loss_side > 0
                            masks = F.interpolate(masks, size=tuple(target_g.shape[-2:]), mode="bilinear",
                                                  align_corners=False)
                        tgt = target_g.expand_as(masks)
                        per_mask = (self.config.focal_weight * focal_loss(masks, tgt)
                                    + self.config.dice_weight * dice_loss(masks, tgt))
                        with torch.no_grad():
                            pred = masks > 0
                            inter = (pred & (tgt > 0)).flatten(2).sum(-1).float()
                            union = (pred | (tgt > 0)).flatten(2).sum(-1).float().clamp(min=1)
                            actual_iou = inter / union
                        losses.append(per_mask.min(dim=1).values
                                      + F.l1_loss(ious, actual_iou, reduction="none").mean(1))
                        if first is None:
                            first = float(actual_iou[0, int(torch.argmax(ious[0]))])
                    loss = torch.cat(losses).mean()
                    loss.backward()
                iou_new = first
                self.fit[int(obj_id)] = max(self.fit.get(int(obj_id), 0.0), iou_new)
                total = float(loss.detach())
                # `total` is the loss of the weights before this step: keep those if best
                if total < best_loss - 1e-6:
                    best_loss, since_best = total, 0
                    best_state = {id(p): p.detach().clone() for p in params}
                else:
                    since_best += 1
                if iou_new >= self.config.target_iou:  # the correction is reproduced: done
                    yield TrainStep(step, total, iou_new, name)
                    break
                opt.step()
                yield TrainStep(step, total, iou_new, name)
                if since_best >= self.config.patience:
                    break
        finally:
            if best_state is not None:
                with torch.no_grad():
                    for p in params:
                        p.copy_(best_state[id(p)])
            for p in held:
                p.requires_grad_(True)
            for wrapped in self._wrapped():
                wrapped.eval()
            self._deactivate()
        logger.info("adapter %s: best loss %.4f on %d examples", name, best_loss, len(batch))

    @staticmethod
    def target_tensor(inputs: DecoderInputs, target_mask, loss_side: int = 0):
        """A mask as the training target, at the resolution where the loss compares it.

        Parameters
        ----------
        inputs : DecoderInputs
            The frame's decoder inputs (their embedding's size sets the decoder's output: 4x).
            When their ``window`` is set (the decoder saw that window of the frame, with
            object-centred zoom), the target is cut to it first.
        target_mask : (Y, X) array-like of bool
            The whole frame's mask (or, without a window, the mask at any resolution).
        loss_side : int
            :attr:`AdapterConfig.loss_side`.

        Returns
        -------
        (1, 1, h, w) float32 tensor
            Area-resampled, thresholded at 0.5, on the decoder inputs' device: (h, w) is the
            decoder's output size (``loss_side`` 0) or ``target_mask``'s shape scaled so its
            longer side is at most ``loss_side``.

        Raises
        ------
        ValueError
            If ``target_mask`` is not 2-D.
        """
        import torch
        import torch.nn.functional as F

        mask = np.asarray(target_mask, dtype=np.float32)
        if mask.ndim != 2:
            raise ValueError(f"a correction is one (Y, X) mask; got an array of shape {mask.shape}")
        window = getattr(inputs, "window", None)
        if window is not None:
            y0, x0, y1, x1 = (int(v) for v in window)
            if y1 > mask.shape[0] or x1 > mask.shape[1]:
                raise ValueError(f"the decoder saw window {[y0, x0, y1, x1]} of the frame, but the correction "
                                 f"is {mask.shape}: expected the whole frame's mask")
            mask = mask[y0:y1, x0:x1]
        if loss_side:
            scale = min(1.0, loss_side / max(mask.shape))
            hw = (max(1, round(mask.shape[0] * scale)), max(1, round(mask.shape[1] * scale)))
        else:
            hw = tuple(4 * n for n in inputs["image_embeddings"].shape[-2:])
        device = inputs["image_embeddings"].device
        t = torch.as_tensor(mask, device=device)[None, None]
        t = F.interpolate(t, size=hw, mode="area") if tuple(t.shape[-2:]) != hw else t
        return (t > 0.5).float()

    def train_all(self, obj_id: int, inputs: DecoderInputs, target_mask) -> Tuple[List[TrainStep], float]:
        """Run :meth:`train` (same ``obj_id``, ``inputs``, ``target_mask``) to the end;
        returns its steps and the wall time in seconds."""
        t0 = time.perf_counter()
        steps = list(self.train(obj_id, inputs, target_mask))
        return steps, time.perf_counter() - t0

    # ----------------------------------------------------- state: snapshot, save
    def snapshot(self) -> dict:
        """A copy of all adapters' weights and training examples (for undo)."""
        state = {}
        if self.peft_model is not None:
            for name in self.peft_model.peft_config:
                state[name] = self._weights(name)
        return {"weights": state, "examples": {k: list(v) for k, v in self.examples.items()},
                "n_corrections": dict(self.n_corrections), "fit": dict(self.fit), "serial": self._serial}

    def shared_snapshot(self) -> dict:
        """What the shared adapter knows, as a :meth:`snapshot` without the objects' own
        adapters: its weights, every object's corrections (which it replays) and their
        counts. :meth:`restore` of it into another session's adapter carries what one
        object's corrections taught to the next object of the same sequence (the
        benchmark's sessions are one per object). Empty weights when there is no shared
        adapter."""
        snap = self.snapshot()
        snap["weights"] = {k: v for k, v in snap["weights"].items() if k == self.adapter_name(SHARED)}
        snap["fit"] = {}
        return snap

    def restore(self, snap: dict) -> None:
        """Go back to ``snap``, a :meth:`snapshot` (adapters created since are removed)."""
        if self.peft_model is not None:
            for name in list(self.peft_model.peft_config):
                if name not in snap["weights"]:
                    self._remove(name)
        for name, weights in snap["weights"].items():
            self._ensure(self._id_of(name))
            self._set_weights(name, weights)
        self.examples = {k: list(v) for k, v in snap["examples"].items()}
        self.n_corrections = dict(snap["n_corrections"])
        self.fit = dict(snap.get("fit", {}))
        self._serial = max([int(snap.get("serial", 0))] + [e.serial for v in self.examples.values() for e in v])

    def _weights(self, name: str) -> dict:
        from peft import get_peft_model_state_dict

        return {part: {k: v.detach().clone() for k, v in get_peft_model_state_dict(w, adapter_name=name).items()}
                for part, w in (("decoder", self.peft_model), ("memory", self.peft_memory)) if w is not None}

    def _set_weights(self, name: str, weights: dict) -> list:
        from peft import set_peft_model_state_dict

        unexpected = []
        for part, w in (("decoder", self.peft_model), ("memory", self.peft_memory)):
            if w is None:
                continue
            if part not in weights:
                raise ValueError(f"adapter weights lack the {part} part this configuration adapts")
            result = set_peft_model_state_dict(w, weights[part], adapter_name=name)
            unexpected += list(getattr(result, "unexpected_keys", []))
        return unexpected

    def _remove(self, name: str) -> None:
        for attr, slot in (("sam_mask_decoder", "peft_model"), ("memory_attention", "peft_memory")):
            wrapped = getattr(self, slot)
            if wrapped is None:
                continue
            if len(wrapped.peft_config) == 1:
                setattr(self.predictor, attr, wrapped.unload())
                setattr(self, slot, None)
            else:
                if name in wrapped.active_adapters:
                    other = next(n for n in wrapped.peft_config if n != name)
                    wrapped.base_model.set_adapter(other)
                wrapped.delete_adapter(name)
        self._deactivate()

    def reset(self, obj_id: Optional[int] = None) -> None:
        """Forget the adapter (and its corrections) of object ``obj_id``, or of all objects
        when ``obj_id`` is None; sam2's decoder is unwrapped when no adapter is left. With
        scope ``sequence`` or ``both`` the shared adapter keeps what the object taught it
        (only its examples leave the replay); ``obj_id`` :data:`SHARED` forgets the shared
        adapter alone."""
        if self.peft_model is not None:
            names = [self.adapter_name(obj_id)] if obj_id is not None else list(self.peft_model.peft_config)
            for name in names:
                if self.peft_model is not None and name in self.peft_model.peft_config:
                    self._remove(name)
        if obj_id is None:
            self.examples.clear()
            self.n_corrections.clear()
            self.fit.clear()
            self._serial = 0
        else:
            self.examples.pop(int(obj_id), None)
            self.n_corrections.pop(int(obj_id), None)
            self.fit.pop(int(obj_id), None)

    def save(self, folder: Union[str, Path], obj_id: int) -> Path:
        """Save the adapter weights of object ``obj_id`` (:data:`SHARED`: the shared
        adapter) and its peft config to ``folder``.

        Writes ``adapter.pt`` (LoRA weights) and ``adapter_config.json`` (the peft
        ``LoraConfig`` plus this adapter's training settings).

        Raises
        ------
        KeyError
            If the object has no adapter.
        """
        import torch

        if not self._exists(obj_id):
            raise KeyError(f"{'there is no shared adapter' if int(obj_id) == SHARED else f'object {obj_id} has no adapter'} to save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = self.adapter_name(obj_id)
        torch.save(self._weights(name), folder / ADAPTER_FILE)
        peft_cfg = self.peft_model.peft_config[name].to_dict()  # the decoder's (memory: same r/targets)
        peft_cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in peft_cfg.items()}
        n = sum(self.n_corrections.values()) if int(obj_id) == SHARED else self.n_corrections.get(int(obj_id), 0)
        meta = {"peft": peft_cfg, "napari_lit": asdict(self.config), "obj_id": int(obj_id), "n_corrections": n}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return folder

    def load(self, folder: Union[str, Path], obj_id: int) -> None:
        """Load an adapter saved by :meth:`save` as object ``obj_id``'s adapter
        (:data:`SHARED`: as the shared adapter).

        Raises
        ------
        FileNotFoundError
            If ``folder`` lacks the adapter files.
        ValueError
            If the saved adapter's rank or targets differ from this adapter's config, or its
            weights do not fit this model.
        """
        import torch

        folder = Path(folder)
        if not (folder / ADAPTER_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no adapter ({ADAPTER_FILE} and {CONFIG_FILE} expected)")
        meta = json.loads((folder / CONFIG_FILE).read_text())
        saved = AdapterConfig(**{k: v for k, v in meta["napari_lit"].items()})
        mine = (self.config.rank, self.config.target_modules, self.config.memory_attention)
        if (saved.rank, saved.target_modules, saved.memory_attention) != mine:
            raise ValueError(
                f"{folder}: adapter has rank {saved.rank} on {list(saved.target_modules)} (memory attention "
                f"{saved.memory_attention}), but this session uses rank {self.config.rank} on "
                f"{list(self.config.target_modules)} (memory attention {self.config.memory_attention})"
            )
        weights = torch.load(folder / ADAPTER_FILE, map_location="cpu", weights_only=True)
        name = self._ensure(obj_id)
        unexpected = self._set_weights(name, weights)
        if unexpected:
            raise ValueError(f"{folder}: adapter weights do not fit this model ({unexpected[:2]} ...)")
        if int(obj_id) != SHARED:
            self.n_corrections[int(obj_id)] = int(meta.get("n_corrections", 0))
