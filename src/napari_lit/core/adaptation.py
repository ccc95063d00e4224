"""LIT-LoRA: learn from each correction with a LoRA adapter on SAM2's mask decoder.

Live Interactive Training (Yang et al., CVPR 2026, arXiv 2603.26929): when the user corrects
frame t of object k, a small LoRA adapter on SAM2's mask decoder is trained on frame t's
cached decoder inputs (memory-conditioned image embedding, high-resolution features, prompt
embeddings of the tracking pass) against the corrected mask, so the same kind of error is
fixed by itself on later frames. The adapter is made with ``peft``
(``LoraConfig(target_modules=...)``), one per object, and accumulates over that object's
corrections in one sequence.

Published settings (defaults here): q/k/v projections of the decoder's two-way transformer
(both blocks and the final token-to-image attention), rank 4, alpha 4, dropout 0.1; loss
focal + dice weighted 20:1; AdamW, lr 1e-4, no weight decay; at most 40 steps with early
stopping, keeping the best step.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._sam2 import DecoderInputs, select_tracking_mask

__all__ = ["AdapterConfig", "TrainStep", "DecoderAdapter", "focal_loss", "dice_loss"]

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.pt"
CONFIG_FILE = "adapter_config.json"


@dataclass
class AdapterConfig:
    """Settings of the LoRA adapter and of its training on a correction.

    Parameters
    ----------
    rank, alpha, dropout : int, float, float
        LoRA rank r, scaling alpha (the update is scaled by alpha / r) and dropout.
    target_modules : sequence of str
        Projection names to adapt inside the mask decoder's transformer (``q_proj``,
        ``k_proj``, ``v_proj``, ``out_proj``).
    lr : float
        AdamW learning rate (no weight decay).
    max_steps : int
        Most optimisation steps per correction.
    patience : int
        Stop after this many steps without a lower loss (early stopping); the adapter keeps
        its best step.
    focal_weight, dice_weight : float
        Loss weights (LIT: 20:1).
    replay : int
        Earlier corrections of the same object trained along with the new one (0 = only the
        new correction).
    """

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.1
    target_modules: Tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    lr: float = 1e-4
    max_steps: int = 40
    patience: int = 8
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    replay: int = 3

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        if self.rank < 1 or self.max_steps < 1 or self.lr <= 0:
            raise ValueError(f"rank and max_steps must be >= 1 and lr > 0; got {self.rank}, {self.max_steps}, {self.lr}")
        allowed = {"q_proj", "k_proj", "v_proj", "out_proj"}
        bad = set(self.target_modules) - allowed
        if bad or not self.target_modules:
            raise ValueError(f"target_modules must be a non-empty subset of {sorted(allowed)}; got {list(self.target_modules)}")

    def lora_config(self):
        """The ``peft.LoraConfig`` (a regex over the decoder transformer's projections)."""
        from peft import LoraConfig

        names = "|".join(self.target_modules)
        return LoraConfig(
            r=int(self.rank), lora_alpha=float(self.alpha), lora_dropout=float(self.dropout),
            target_modules=rf".*transformer\..*\.({names})", bias="none",
        )


@dataclass
class TrainStep:
    """One optimisation step on a correction: ``step`` (1-based), ``loss`` (float),
    ``iou`` of the adapted prediction with the corrected mask at the decoder's resolution."""

    step: int
    loss: float
    iou: float


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


@dataclass
class _Example:
    inputs: DecoderInputs
    target: object  # (1, 1, h, w) float tensor at the decoder's output resolution


class DecoderAdapter:
    """LoRA adapters (one per object) on a SAM2 predictor's mask decoder.

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
        self.peft_model = None
        self.examples: Dict[int, List[_Example]] = {}
        self.n_corrections: Dict[int, int] = {}
        self.always = False

    # ----------------------------------------------------------------- plumbing
    @staticmethod
    def adapter_name(obj_id: int) -> str:
        """The peft adapter name of object ``obj_id`` (``obj<id>``)."""
        return f"obj{int(obj_id)}"

    def has_adapter(self, obj_id: int) -> bool:
        """Whether object ``obj_id`` has an adapter (trained at least once or loaded)."""
        return self.peft_model is not None and self.adapter_name(obj_id) in self.peft_model.peft_config

    def _ensure(self, obj_id: int) -> str:
        from peft import get_peft_model

        name = self.adapter_name(obj_id)
        if self.peft_model is None:
            base = self.predictor.sam_mask_decoder
            self.peft_model = get_peft_model(base, self.config.lora_config(), adapter_name=name)
            self.predictor.sam_mask_decoder = self.peft_model
            self.peft_model.base_model.disable_adapter_layers()
            self.peft_model.eval()
        elif name not in self.peft_model.peft_config:
            self.peft_model.add_adapter(name, self.config.lora_config())
        return name

    def _activate(self, obj_id: int) -> None:
        self.peft_model.base_model.enable_adapter_layers()
        self.peft_model.base_model.set_adapter(self.adapter_name(obj_id))

    def _deactivate(self) -> None:
        if self.peft_model is not None:
            self.peft_model.base_model.disable_adapter_layers()

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
        return [p for n, p in self.peft_model.named_parameters() if "lora_" in n and f".{name}." in n]

    def _decode(self, inputs: DecoderInputs):
        return self.peft_model(**inputs)

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

    # ----------------------------------------------------------------- training
    def train(self, obj_id: int, inputs: DecoderInputs, target_mask) -> Iterator[TrainStep]:
        """Learn from one correction (a generator: one :class:`TrainStep` per step).

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
        output masks (as in SAM2 training), plus an L1 loss on its IoU prediction so the
        adapted decoder also picks that mask. AdamW without weight decay; early stopping
        after ``patience`` steps without improvement; the adapter keeps its best step, also
        when the generator is closed early (cancel).
        """
        import torch
        import torch.nn.functional as F

        name = self._ensure(obj_id)
        low_hw = tuple(inputs["image_embeddings"].shape[-2:])
        low_hw = (low_hw[0] * 4, low_hw[1] * 4)
        t = torch.as_tensor(np.asarray(target_mask, dtype=np.float32))[None, None]
        t = F.interpolate(t, size=low_hw, mode="area") if tuple(t.shape[-2:]) != low_hw else t
        target = (t > 0.5).float()
        example = _Example(inputs, target)
        history = self.examples.setdefault(int(obj_id), [])
        batch = [example] + history[-self.config.replay:] if self.config.replay else [example]
        history.append(example)
        self.n_corrections[int(obj_id)] = self.n_corrections.get(int(obj_id), 0) + 1

        params = self._lora_parameters(obj_id)
        opt = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=0.0)
        best_loss, best_state, since_best = float("inf"), None, 0
        self._activate(obj_id)
        self.peft_model.train()
        try:
            for step in range(1, self.config.max_steps + 1):
                total, iou_new = 0.0, 0.0
                opt.zero_grad(set_to_none=True)
                for i, ex in enumerate(batch):
                    with torch.enable_grad():
                        masks, ious, _, _ = self._decode(ex.inputs)
                        tgt = ex.target.expand_as(masks)
                        per_mask = (self.config.focal_weight * focal_loss(masks, tgt)
                                    + self.config.dice_weight * dice_loss(masks, tgt))
                        best = per_mask.argmin(dim=1)
                        loss = per_mask[0, best[0]]
                        with torch.no_grad():
                            pred = masks > 0
                            inter = (pred & (tgt > 0)).flatten(2).sum(-1).float()
                            union = (pred | (tgt > 0)).flatten(2).sum(-1).float().clamp(min=1)
                            actual_iou = inter / union
                        loss = loss + F.l1_loss(ious, actual_iou)
                        (loss / len(batch)).backward()
                    total += float(loss.detach()) / len(batch)
                    if i == 0:
                        chosen = int(torch.argmax(ious[0]))
                        iou_new = float(actual_iou[0, chosen])
                opt.step()
                if total < best_loss - 1e-6:
                    best_loss, since_best = total, 0
                    best_state = {id(p): p.detach().clone() for p in params}
                else:
                    since_best += 1
                yield TrainStep(step, total, iou_new)
                if since_best >= self.config.patience:
                    break
        finally:
            if best_state is not None:
                with torch.no_grad():
                    for p in params:
                        p.copy_(best_state[id(p)])
            self.peft_model.eval()
            self._deactivate()
        logger.info("adapter %s: %d corrections, best loss %.4f", name, self.n_corrections[int(obj_id)], best_loss)

    def train_all(self, obj_id: int, inputs: DecoderInputs, target_mask) -> Tuple[List[TrainStep], float]:
        """Run :meth:`train` (same ``obj_id``, ``inputs``, ``target_mask``) to the end;
        returns its steps and the wall time in seconds."""
        t0 = time.perf_counter()
        steps = list(self.train(obj_id, inputs, target_mask))
        return steps, time.perf_counter() - t0

    # ----------------------------------------------------- state: snapshot, save
    def snapshot(self) -> dict:
        """A copy of all adapters' weights and training examples (for undo)."""
        from peft import get_peft_model_state_dict

        state = {}
        if self.peft_model is not None:
            for name in self.peft_model.peft_config:
                state[name] = {k: v.detach().clone() for k, v in
                               get_peft_model_state_dict(self.peft_model, adapter_name=name).items()}
        return {"weights": state, "examples": {k: list(v) for k, v in self.examples.items()},
                "n_corrections": dict(self.n_corrections)}

    def restore(self, snap: dict) -> None:
        """Go back to a :meth:`snapshot` (adapters created since are removed)."""
        from peft import set_peft_model_state_dict

        if self.peft_model is not None:
            for name in list(self.peft_model.peft_config):
                if name not in snap["weights"]:
                    self._remove(name)
        for name, weights in snap["weights"].items():
            obj_id = int(name[3:])
            self._ensure(obj_id)
            set_peft_model_state_dict(self.peft_model, weights, adapter_name=name)
        self.examples = {k: list(v) for k, v in snap["examples"].items()}
        self.n_corrections = dict(snap["n_corrections"])

    def _remove(self, name: str) -> None:
        if len(self.peft_model.peft_config) == 1:
            self.predictor.sam_mask_decoder = self.peft_model.unload()
            self.peft_model = None
        else:
            if name in self.peft_model.active_adapters:
                other = next(n for n in self.peft_model.peft_config if n != name)
                self.peft_model.base_model.set_adapter(other)
            self.peft_model.delete_adapter(name)
            self._deactivate()

    def reset(self, obj_id: Optional[int] = None) -> None:
        """Forget the adapter (and its corrections) of object ``obj_id``, or of all objects
        when ``obj_id`` is None; sam2's decoder is unwrapped when no adapter is left."""
        if self.peft_model is not None:
            names = [self.adapter_name(obj_id)] if obj_id is not None else list(self.peft_model.peft_config)
            for name in names:
                if self.peft_model is not None and name in self.peft_model.peft_config:
                    self._remove(name)
        if obj_id is None:
            self.examples.clear()
            self.n_corrections.clear()
        else:
            self.examples.pop(int(obj_id), None)
            self.n_corrections.pop(int(obj_id), None)

    def save(self, folder: Union[str, Path], obj_id: int) -> Path:
        """Save the adapter weights of object ``obj_id`` and its peft config to ``folder``.

        Writes ``adapter.pt`` (LoRA weights) and ``adapter_config.json`` (the peft
        ``LoraConfig`` plus this adapter's training settings).

        Raises
        ------
        KeyError
            If the object has no adapter.
        """
        import torch
        from peft import get_peft_model_state_dict

        if not self.has_adapter(obj_id):
            raise KeyError(f"object {obj_id} has no adapter to save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = self.adapter_name(obj_id)
        weights = get_peft_model_state_dict(self.peft_model, adapter_name=name)
        torch.save({k: v.detach().cpu() for k, v in weights.items()}, folder / ADAPTER_FILE)
        peft_cfg = self.peft_model.peft_config[name].to_dict()
        peft_cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in peft_cfg.items()}
        meta = {"peft": peft_cfg, "napari_lit": asdict(self.config), "obj_id": int(obj_id),
                "n_corrections": self.n_corrections.get(int(obj_id), 0)}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return folder

    def load(self, folder: Union[str, Path], obj_id: int) -> None:
        """Load an adapter saved by :meth:`save` as object ``obj_id``'s adapter.

        Raises
        ------
        FileNotFoundError
            If ``folder`` lacks the adapter files.
        ValueError
            If the saved adapter's rank or targets differ from this adapter's config, or its
            weights do not fit this model.
        """
        import torch
        from peft import set_peft_model_state_dict

        folder = Path(folder)
        if not (folder / ADAPTER_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no adapter ({ADAPTER_FILE} and {CONFIG_FILE} expected)")
        meta = json.loads((folder / CONFIG_FILE).read_text())
        saved = AdapterConfig(**{k: v for k, v in meta["napari_lit"].items()})
        if (saved.rank, saved.target_modules) != (self.config.rank, self.config.target_modules):
            raise ValueError(
                f"{folder}: adapter has rank {saved.rank} on {list(saved.target_modules)}, but this "
                f"session uses rank {self.config.rank} on {list(self.config.target_modules)}"
            )
        weights = torch.load(folder / ADAPTER_FILE, map_location="cpu", weights_only=True)
        name = self._ensure(obj_id)
        result = set_peft_model_state_dict(self.peft_model, weights, adapter_name=name)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{folder}: adapter weights do not fit this model ({unexpected[:2]} ...)")
        self.n_corrections[int(obj_id)] = int(meta.get("n_corrections", 0))
