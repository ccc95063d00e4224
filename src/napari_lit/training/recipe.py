"""The recipe that trains the embedded ``lit-tiny`` model on generated sequences.

Run it with ``napari-lit train-model RUN_DIR`` (see :func:`main`). It is seeded (the batch of
step ``s`` is generated from the seed and ``s`` alone, so any number of data-loader workers
gives the same batches), resumable from the checkpoint in ``RUN_DIR`` (model, optimizer,
step, random states), logs training
losses and a validation curve on held-back generated clips to ``RUN_DIR/log.jsonl``, and
goes through stages:

1. ``image``: single-frame prompt-to-mask (points or box with simulated correction clicks,
   as in SAM), so the trunk and decoder learn to segment;
2. ``track-easy``: short clips with slow motion, prompted by a mask or clicks on frame 0,
   so the memory attention learns to carry an object to the next frames;
3. ``track``: longer clips with normal motion, divisions, occlusion and objects leaving;
4. ``track-hard``: fast motion and more events.

Tracking stages keep mixing in single-frame batches so segmentation is not forgotten.
The ``real`` schedule cuts a share of each batch's clips from real training sequences
(``--train-data``, :mod:`napari_lit.training.real`); pairs of frame and object that nobody
annotated there are left out of the loss and of the prompts (:mod:`napari_lit.training.masked`).
The model, the prompt sampling and the loss all come from the ``sam2`` package
(``training.model.sam2.SAM2Train``, ``training.loss_fns.MultiStepMultiMasksAndIous``, with
the loss weights of sam2's published fine-tuning config). It runs on CPU; ``--device cuda``
runs (or continues) it on a GPU, where ``--data-workers`` processes generate the batches
ahead of the optimiser.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .real import DATA_CHOICES, REAL_SHARE
from .synthetic import MotionLevel, draw_kind, generate_clip

__all__ = ["Stage", "STAGES", "RecipeConfig", "make_batch", "mixed_batch", "step_batch", "train", "validate",
           "export_weights", "main"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule.

    Parameters
    ----------
    name : str
    until : float
        Fraction of the total steps at which the stage ends.
    n_frames : int
        Frames per clip (1 = single-frame prompt-to-mask).
    clips : int
        Clips per batch.
    motion : MotionLevel
    image_batches : float
        Probability that a step uses a single-frame batch instead.
    max_objects : int
        Objects prompted per clip. Several objects in one image force the model to use
        the prompt's location rather than segment whatever looks like an object.
    kinds : tuple of (str, float), optional
        Scene kinds and their relative weights (see
        :func:`napari_lit.training.synthetic.draw_kind`); the generator's defaults when None.
    real : float
        Probability that a clip of a batch is cut from real training data
        (:mod:`napari_lit.training.real`, ``RecipeConfig.train_data``) instead of generated.
    """

    name: str
    until: float
    n_frames: int
    clips: int
    motion: MotionLevel
    image_batches: float = 0.0
    max_objects: int = 3
    kinds: Optional[Tuple[Tuple[str, float], ...]] = None
    real: float = 0.0


STAGES = (
    Stage("image", 0.10, 1, 4, MotionLevel(0.0, 0.0, 0.0), max_objects=6),
    Stage("track-easy", 0.35, 4, 2, MotionLevel(1.0, 0.01, 0.2), image_batches=0.2),
    Stage("track", 0.80, 6, 2, MotionLevel(2.5, 0.02, 0.6), image_batches=0.15),
    Stage("track-hard", 1.00, 8, 2, MotionLevel(4.0, 0.03, 1.0), image_batches=0.1),
)

#: Motion of the second validation set and of the ``change`` schedule's last stage: fast
#: motion and objects that double or halve their area within a few frames (z-stack sections,
#: growing cells), where repeating the previous mask fails.
CHANGE_MOTION = MotionLevel(5.0, 0.03, 1.0, change=0.05)

#: Scene mix of the ``parts`` schedule: a third natural-video-like multi-part objects on
#: clutter, the rest the microscopy and medical kinds.
PARTS_KINDS = (("parts", 0.35), ("natural", 0.1), ("tissue", 0.15), ("ct", 0.12), ("zstack", 0.1),
               ("nuclei", 0.08), ("phase", 0.1))

#: Scene mix of the ``em`` schedule: the ``parts`` mix with serial-section EM neuropil
#: (the ``em`` scene kind: packed look-alike compartments of very different sizes, each
#: moving on its own) and more CT, the two dev domains with the most corrections.
EM_KINDS = (("parts", 0.25), ("em", 0.2), ("natural", 0.05), ("tissue", 0.1), ("ct", 0.15), ("zstack", 0.08),
            ("nuclei", 0.07), ("phase", 0.1))

#: Scene mix of the ``photo`` schedule: the ``parts`` mix with a third of its natural-video
#: share given to objects and backgrounds cut out of photographs (the ``photo`` kind).
PHOTO_KINDS = (("photo", 0.25), ("parts", 0.15), ("natural", 0.05), ("tissue", 0.15), ("ct", 0.12),
               ("zstack", 0.1), ("nuclei", 0.08), ("phase", 0.1))


def _continuation(kinds, real: float = 0.0) -> Tuple[Stage, ...]:
    """Stages that continue a trained model on a scene mix: 5 % single-frame steps, then 6-
    and 8-frame clips with faster motion and some size change; ``real``: the share of clips
    cut from real data (single-frame batches included)."""
    return (
        Stage("image", 0.05, 1, 4, MotionLevel(0.0, 0.0, 0.0), max_objects=6, kinds=kinds, real=real),
        Stage("track", 0.50, 6, 2, MotionLevel(3.0, 0.02, 0.8, change=0.01), image_batches=0.2, kinds=kinds,
              real=real),
        Stage("track-hard", 1.00, 8, 2, MotionLevel(4.0, 0.03, 1.0, change=0.02), image_batches=0.15,
              kinds=kinds, real=real),
    )


#: Scene mix of the ``precision`` schedule: every kind of the ``photo`` and ``em`` mixes.
ALL_KINDS = (("photo", 0.2), ("parts", 0.15), ("em", 0.1), ("natural", 0.05), ("tissue", 0.12), ("ct", 0.12),
             ("zstack", 0.08), ("nuclei", 0.08), ("phase", 0.1))

#: Stages of the ``precision`` schedule: 30 % single-frame prompt-to-mask steps, then short
#: clips at slow motion, where the answer is close to the previous mask and what counts is
#: reproducing the object's outline exactly, then normal tracking so that it is not forgotten.
PRECISION_STAGES = (
    Stage("image", 0.30, 1, 4, MotionLevel(0.0, 0.0, 0.0), max_objects=6, kinds=ALL_KINDS),
    Stage("track-slow", 0.70, 4, 2, MotionLevel(1.0, 0.01, 0.2), image_batches=0.2, kinds=ALL_KINDS),
    Stage("track", 1.00, 6, 2, MotionLevel(3.0, 0.02, 0.8, change=0.01), image_batches=0.15, kinds=ALL_KINDS),
)

#: Stages of the ``long`` schedule: the ``parts`` continuation with one clip of 12, then 16
#: frames per step instead of two of 6 or 8 (as many frames per step), so that the model
#: tracks on from its own predictions for more than its 7 memory frames, as on the 40-80
#: frame evaluation videos, where tracking drifts (generated 40-frame clips: mean J 0.85 over
#: frames 1-7, 0.63 over the last 10; ``benchmarks/long_clips.py``). Run L, not shipped.
LONG_STAGES = (
    Stage("image", 0.05, 1, 4, MotionLevel(0.0, 0.0, 0.0), max_objects=6, kinds=PARTS_KINDS),
    Stage("track-long", 0.50, 12, 1, MotionLevel(3.0, 0.02, 0.8, change=0.01), image_batches=0.2,
          kinds=PARTS_KINDS),
    Stage("track-longer", 1.00, 16, 1, MotionLevel(3.0, 0.02, 0.8, change=0.01), image_batches=0.15,
          kinds=PARTS_KINDS),
)

#: Stage schedules by name. ``change`` continues a trained model on clips where the previous
#: mask is a poor answer (the failure of copy-the-last-mask tracking on real z-stacks).
#: ``parts`` continues a trained model with multi-part objects on cluttered, panning
#: backgrounds (the ``parts`` scene kind), where a model that only knows one-texture shapes
#: falls back to repeating the last mask. ``em`` is ``parts`` with the :data:`EM_KINDS` mix,
#: ``photo`` with the :data:`PHOTO_KINDS` mix. ``precision`` (:data:`PRECISION_STAGES`)
#: continues a trained model where it copies a still object's mask imprecisely; ``long``
#: (:data:`LONG_STAGES`) continues it on longer clips. ``real`` is ``parts`` with
#: ``real.REAL_SHARE`` (60 %) of the clips (tracking and single-frame) cut from the real training
#: data of ``RecipeConfig.train_data`` (:mod:`napari_lit.training.real`).
SCHEDULES = {
    "default": STAGES,
    "change": (
        STAGES[0],
        Stage("track", 0.40, 6, 2, MotionLevel(2.5, 0.02, 0.6, change=0.02), image_batches=0.15),
        Stage("track-change", 1.00, 8, 2, CHANGE_MOTION, image_batches=0.1),
    ),
    "parts": _continuation(PARTS_KINDS),
    "em": _continuation(EM_KINDS),
    "photo": _continuation(PHOTO_KINDS),
    "precision": PRECISION_STAGES,
    "long": LONG_STAGES,
    "real": _continuation(PARTS_KINDS, real=REAL_SHARE),
}


#: What ``best.pt`` may maximise (see :class:`RecipeConfig`).
#: The ``val_mix_*`` choices: ``val_mix`` and the tracking J on clips of one more scene kind,
#: weighted 3:1.
MIX_EXTRA_KIND = {"val_mix_em": "em", "val_mix_photo": "photo"}
#: ``val_real_mix``: the mean of ``val_mix`` and ``val_real_track_j`` (held-back real clips,
#: :func:`napari_lit.training.real.validate_real`).
SELECT_CHOICES = ("val_track_j", "val_both", "val_mix", *MIX_EXTRA_KIND, "val_real_mix")


@dataclass
class RecipeConfig:
    """Settings of one training run (saved to ``RUN_DIR/config.json``).

    Parameters
    ----------
    steps : int
        Total optimiser steps; the stages are fractions of it.
    seed : int
        Seeds data generation, prompt sampling and initialisation.
    lr, min_lr_ratio, warmup, weight_decay, grad_clip : float, float, int, float, float
        AdamW peak learning rate, cosine floor as a fraction of it, linear warm-up steps,
        weight decay, gradient-norm clip.
    max_objects : int
        Objects per validation clip.
    loss_mask, loss_dice : float
        Weights of sam2's focal and dice mask losses (IoU and object-score losses weigh 1).
    correction_points : int
        Simulated correction clicks per corrected frame (sam2's ``num_correction_pt_per_frame``).
    image_size : int
        Model input side in pixels.
    skip_image_stage : bool
        Spend all steps on the tracking stages (for a run that starts from weights which
        already segment from prompts).
    reinit_memory : bool
        With ``init_weights``: re-initialise the memory modules (see :func:`reinit_memory`).
    memory_locality : float
        Strength of :func:`init_memory_locality` for new memory modules (0 = off).
    val_every, val_clips, ckpt_every, log_every : int
        Validation period and set size, checkpoint and log periods, in steps.
    threads : int
        Torch CPU threads.
    data_workers : int
        Processes generating batches ahead of the optimiser (0: in the training process).
        The batches do not depend on it.
    clips_scale : int
        Clips per batch as a multiple of each stage's ``clips``.
    schedule : str
        A key of :data:`SCHEDULES`.
    select : str
        What ``best.pt`` maximises: ``val_track_j`` (normal-motion validation clips) or
        ``val_both`` (the mean of that and ``val_change_track_j``, clips with fast motion
        and large size change) or ``val_mix`` (the mean of those two and
        ``val_parts_track_j``, clips of the ``parts`` scene kind only) or ``val_mix_em``
        (the mean of those three and ``val_em_track_j``, clips of the ``em`` kind only) or
        ``val_mix_photo`` (likewise with ``val_photo_track_j``, clips of the ``photo`` kind) or
        ``val_real_mix`` (the mean of ``val_mix`` and ``val_real_track_j``, tracking J on clips
        held back from ``train_data``).
    train_data : str, optional
        Folder of real training sequences (``shared/train``), for the ``real`` schedule and
        ``val_real_mix``.
    data : {"all", "commercial-ok"}
        Which real sequences may be used (:func:`napari_lit.training.real.select_data`).
    """

    steps: int = 12000
    seed: int = 0
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup: int = 300
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_objects: int = 3  # validation clips
    loss_mask: float = 5.0
    loss_dice: float = 5.0
    correction_points: int = 2
    image_size: int = 256
    skip_image_stage: bool = False
    reinit_memory: bool = False
    memory_locality: float = 4.0
    val_every: int = 500
    val_clips: int = 24
    ckpt_every: int = 100
    log_every: int = 20
    threads: int = 2
    data_workers: int = 0
    clips_scale: int = 1
    schedule: str = "default"
    select: str = "val_track_j"
    train_data: Optional[str] = None
    data: str = "all"


def stage_at(step: int, total: int, stages: Sequence[Stage] = STAGES, skip_image: bool = False) -> Stage:
    """The stage that ``step`` (0-based) of ``total`` falls in (with ``skip_image``, the
    tracking stages share all steps in their proportions, for runs that start from a model
    which already segments from prompts)."""
    frac = step / max(total, 1)
    if skip_image:
        first = stages[0].until
        frac = first + frac * (1 - first)
    for stage in stages:
        if frac < stage.until:
            return stage
    return stages[-1]


#: Parameters of SAM2's memory (encoder, attention, temporal and object-pointer encodings).
MEMORY_PREFIXES = ("memory_encoder.", "memory_attention.", "maskmem_tpos_enc", "obj_ptr_proj",
                   "obj_ptr_tpos_proj", "no_obj_ptr")


def init_memory_locality(model, strength: float = 4.0, pairs: int = 6) -> None:
    """Start memory attention attending to the same position in memory frames.

    SAM2's memory cross-attention uses 2D rotary position encoding (RoPE); a constant
    component in the query and key projections makes the attention score depend on the
    relative position only, peaked at zero offset. Adding ``strength`` to the biases of the
    ``pairs`` highest-frequency rotary pairs (x and y halves) therefore starts tracking as
    "read the memory where the object was", which the model then refines. Without it the
    from-scratch model ignored its memory (``docs/training.md``).
    """
    import torch

    with torch.no_grad():
        for layer in model.memory_attention.layers:
            attn = layer.cross_attn_image
            half = attn.q_proj.out_features // 2
            for proj in (attn.q_proj, attn.k_proj):
                for p in range(pairs):
                    for base in (0, half):
                        proj.bias[base + 2 * p] += strength


def reinit_memory(model, seed: int = 0) -> None:
    """Re-initialise the memory modules (as a fresh model of the same config would have
    them), keeping the image encoder and the mask decoder."""
    import torch

    from ..models.catalogue import LIT_TINY_CONFIG

    torch.manual_seed(seed)
    fresh = build_train_model(LIT_TINY_CONFIG).state_dict()
    state = model.state_dict()
    state.update({k: fresh[k] for k in state if k.startswith(MEMORY_PREFIXES)})
    model.load_state_dict(state)


def _pick_objects(labels: np.ndarray, rng, max_objects: int, min_area: int = 40) -> List[int]:
    ids, counts = np.unique(labels[0], return_counts=True)
    ok = [int(i) for i, c in zip(ids, counts) if i != 0 and c >= min_area]
    rng.shuffle(ok)
    return ok[:max_objects]


def make_batch(rng: np.random.Generator, n_frames: int, clips: int, motion: MotionLevel,
               max_objects: int = 3, size: int = 256, kinds=None):
    """Generate a batch in sam2's training layout.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_frames : int
        Frames per clip.
    clips : int
        Clips (videos) in the batch.
    motion : MotionLevel
    max_objects : int
        At most this many objects per clip, each visible on frame 0.
    size : int
        Frame side in pixels.
    kinds : sequence of (str, float), optional
        Scene kinds and weights; the generator's default mix when None.

    Returns
    -------
    training.utils.data_utils.BatchedVideoDatapoint
        ``img_batch`` (T, B, 3, size, size) float32 normalised like sam2's loaders;
        ``masks`` (T, O, size, size) bool for the O objects chosen (1..max_objects per
        clip, each visible on frame 0).
    """
    from training.utils.data_utils import collate_fn

    videos = []
    while len(videos) < clips:
        video = _generated_video(rng, n_frames, motion, max_objects, size, kinds, len(videos))
        if video is not None:
            videos.append(video)
    return collate_fn(videos, dict_key="synthetic")


def _generated_video(rng, n_frames: int, motion: MotionLevel, max_objects: int, size: int, kinds, video_id: int):
    """One generated clip as sam2's ``VideoDatapoint`` (None when no object qualifies)."""
    import torch
    from training.utils.data_utils import Frame, Object, VideoDatapoint

    kind = None if kinds is None else draw_kind(rng, dict(kinds))
    clip = generate_clip(rng, n_frames, size, kind=kind, motion=motion)
    obj_ids = _pick_objects(clip.labels, rng, max_objects)
    if not obj_ids:
        return None
    img = (clip.frames.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    img = torch.from_numpy(img).permute(0, 3, 1, 2).contiguous()
    frames = [
        Frame(
            data=img[t],
            objects=[Object(k, t, torch.from_numpy(clip.labels[t] == k)) for k in obj_ids],
        )
        for t in range(n_frames)
    ]
    return VideoDatapoint(frames=frames, video_id=video_id, size=(size, size))


def mixed_batch(rng: np.random.Generator, real_data, real_share: float, n_frames: int, clips: int,
                motion: MotionLevel, max_objects: int = 3, size: int = 256, kinds=None):
    """A batch whose clips are cut from real data with probability ``real_share``, else generated.

    Parameters
    ----------
    rng : numpy.random.Generator
        Every choice (real or generated, and each clip) comes from it.
    real_data : napari_lit.training.real.RealData
    real_share : float
        In [0, 1].
    n_frames, clips, motion, max_objects, size, kinds
        As for :func:`make_batch`.

    Returns
    -------
    napari_lit.training.masked.MaskedVideoBatch
        :func:`make_batch`'s layout plus ``valid`` (T, O): False for the (frame, object)
        pairs of real clips that nobody annotated (generated clips are valid everywhere).

    Raises
    ------
    ValueError
        If ``real_share`` is outside [0, 1].
    """
    from .masked import collate_masked

    if not 0.0 <= real_share <= 1.0:
        raise ValueError(f"real_share must be in [0, 1], got {real_share}")
    videos, valid = [], []
    while len(videos) < clips:
        if rng.random() < real_share:
            video, ok = real_data.sample_clip(rng, n_frames, size, max_objects)
            video.video_id = len(videos)
        else:
            video = _generated_video(rng, n_frames, motion, max_objects, size, kinds, len(videos))
            if video is None:
                continue
            ok = np.ones((n_frames, len(video.frames[0].objects)), bool)
        videos.append(video)
        valid.append(ok)
    return collate_masked(videos, valid, dict_key="mixed")


def step_batch(cfg: RecipeConfig, step: int, stages: Optional[Sequence[Stage]] = None):
    """The training batch of optimiser step ``step``: generated from ``cfg.seed`` and
    ``step`` alone (not from earlier steps), so it is the same in any worker process and
    after a resume (for stages with real clips, also from the files of ``cfg.train_data``,
    which are only read). ``stages`` default to ``SCHEDULES[cfg.schedule]``.

    Raises
    ------
    ValueError
        If the stage has real clips and ``cfg.train_data`` is None.
    """
    stages = SCHEDULES[cfg.schedule] if stages is None else stages
    stage = stage_at(step, cfg.steps, stages, skip_image=cfg.skip_image_stage)
    rng = np.random.default_rng([cfg.seed, 7, step])
    if stage.n_frames > 1 and rng.random() < stage.image_batches:
        shape = (1, STAGES[0].clips * cfg.clips_scale, stage.motion, STAGES[0].max_objects)
    else:
        shape = (stage.n_frames, stage.clips * cfg.clips_scale, stage.motion, stage.max_objects)
    if stage.real > 0:
        from .real import real_data

        if cfg.train_data is None:
            raise ValueError(f"stage {stage.name!r} cuts {stage.real:.0%} of its clips from real data: "
                             f"set train_data (--train-data) to the training data folder")
        return mixed_batch(rng, real_data(cfg.train_data, cfg.data), stage.real, *shape, size=cfg.image_size,
                           kinds=stage.kinds)
    return make_batch(rng, *shape, cfg.image_size, stage.kinds)


class _StepBatches:
    """Map-style dataset: item ``s`` is :func:`step_batch` ``(cfg, s)`` (for torch's
    ``DataLoader``, which bounds how far its workers generate ahead)."""

    def __init__(self, cfg: RecipeConfig, stages):
        self.cfg, self.stages = cfg, stages

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int):
        return step_batch(self.cfg, int(step), self.stages)


def _one_thread(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)


def _cosine_lr(step: int, cfg: RecipeConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(1.0, p)))


def build_train_model(config_path, device: str = "cpu", correction_points: int = 2):
    """lit-tiny as ``SAM2Train`` with the prompt/correction sampling of sam2's fine-tuning."""
    from ..models.build import build_sam2_model

    return build_sam2_model(
        config_path,
        target="train",
        device=device,
        overrides=dict(
            prob_to_use_pt_input_for_train=0.5,
            prob_to_use_box_input_for_train=0.5,
            prob_to_sample_from_gt_for_train=0.1,
            num_frames_to_correct_for_train=2,
            rand_frames_to_correct_for_train=True,
            add_all_frames_to_correct_as_cond=True,
            num_init_cond_frames_for_train=2,
            rand_init_cond_frames_for_train=True,
            num_correction_pt_per_frame=correction_points,
            num_init_cond_frames_for_eval=1,
            forward_backbone_per_frame_for_eval=False,
        ),
    )


def make_loss(mask: float = 5.0, dice: float = 5.0):
    """sam2's multi-step loss. sam2 weighs focal:dice 20:1 for fine-tuning; from scratch
    that settles on empty masks (shared/FACTS.md; seen again here), so dice weighs more."""
    from training.loss_fns import MultiStepMultiMasksAndIous

    return MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": mask, "loss_dice": dice, "loss_iou": 1, "loss_class": 1},
        supervise_all_iou=True,
        iou_use_l1_loss=True,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )


def _frame_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two boolean masks; 1 when both are empty (DAVIS convention)."""
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def _single_frame(batch, t: int):
    """Frame ``t`` of a batch as a one-frame batch (SAM2Train then prompts with a click)."""
    from training.utils.data_utils import BatchedVideoDatapoint

    idx = batch.obj_to_frame_idx[t : t + 1].clone()
    idx[..., 0] = 0
    return BatchedVideoDatapoint(
        img_batch=batch.img_batch[t : t + 1],
        obj_to_frame_idx=idx,
        masks=batch.masks[t : t + 1],
        metadata=batch.metadata[t : t + 1],
        dict_key=batch.dict_key,
        batch_size=[1],
    )


def validation_set(seed: int, n: int, size: int = 256, max_objects: int = 3,
                   motion: MotionLevel = MotionLevel(2.5, 0.02, 0.6), kinds=None):
    """Held-back clips: 8 frames (normal motion and the default scene mix by default),
    drawn from a seed no training step uses (a different one for each motion level and
    scene mix)."""
    key = 10_000_019 if motion == MotionLevel(2.5, 0.02, 0.6) else 10_000_079
    if kinds is not None:
        key += 1_000
    rng = np.random.default_rng([seed, key])
    return [make_batch(rng, 8, 1, motion, max_objects, size, kinds) for _ in range(n)]


def _validation_set_kw(args):
    """:func:`validation_set` of ``(positional, keywords)`` (for a process pool)."""
    positional, keywords = args
    return validation_set(*positional, **keywords)


def validate(model, batches) -> Dict[str, float]:
    """Mean J of mask-prompted tracking on frames 1..T-1, beside the static baseline.

    ``model`` is a ``SAM2Train``; ``batches`` come from :func:`validation_set` (or
    :func:`napari_lit.training.real.real_validation_set`: a batch with a ``valid`` flag per
    frame and object is scored on its valid pairs only).

    The model tracks from the ground-truth mask of frame 0 (sam2's evaluation mode); the
    static baseline repeats that mask on every frame. Also reports single-frame J from two
    clicks (one at the object's centre, one at the centre of the remaining error), which
    shows whether prompt-to-mask is learned. A mean over no pair is NaN.
    """
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    j_track, j_static, j_click = [], [], []
    n_corr = model.num_correction_pt_per_frame
    model.num_correction_pt_per_frame = 1  # sam2 needs >= 1 on a clicked frame
    try:
        with torch.inference_mode():
            for batch in batches:
                gt = batch.masks.numpy()
                valid = getattr(batch, "valid", None)
                valid = np.ones(gt.shape[:2], bool) if valid is None else valid.cpu().numpy()
                batch = batch.to(device)
                outs = model(batch)
                for t in range(1, len(outs)):
                    pred = (outs[t]["pred_masks_high_res"][:, 0] > 0).cpu().numpy()
                    for o in range(gt.shape[1]):
                        if valid[t, o]:
                            j_track.append(_frame_j(pred[o], gt[t, o]))
                            j_static.append(_frame_j(gt[0, o], gt[t, o]))
                if not valid[1].all():  # clicks are drawn from every object's mask
                    continue
                out = model(_single_frame(batch, 1))[0]  # one frame: SAM2Train clicks
                pred = (out["pred_masks_high_res"][:, 0] > 0).cpu().numpy()
                for o in range(gt.shape[1]):
                    j_click.append(_frame_j(pred[o], gt[1, o]))
    finally:
        model.num_correction_pt_per_frame = n_corr
        model.train(was_training)
    def mean(values):
        return float(np.mean(values)) if values else float("nan")

    return {"val_track_j": mean(j_track), "val_static_j": mean(j_static), "val_click2_j": mean(j_click)}


def _save_atomic(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def export_weights(checkpoint: Path, out: Path, half: bool = True) -> Path:
    """Write the weights of run checkpoint ``checkpoint`` to ``out`` as ``{"model": ...}``.

    Floating-point tensors are stored as float16 when ``half`` (the package loads them back
    as float32), which keeps the embedded weights small.
    """
    import torch

    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = {
        k: (v.half() if half and v.is_floating_point() else v) for k, v in payload["model"].items()
    }
    meta = {k: payload[k] for k in ("step", "config", "val") if k in payload}
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic({"model": state, "meta": meta}, out)
    return out


def keep_run(run_dir: Path, keep_dir: Path) -> Path:
    """Copy what a run needs to go on in a later session into ``keep_dir``, a folder git tracks.

    ``config.json`` and ``log.jsonl`` as they are, and ``best.pt``'s weights alone as
    ``best-weights.pt`` (:func:`export_weights`: float16, the optimizer state left out). A new
    session's checkout holds only what has landed (``runs/`` is ignored), so a run goes on
    from there as a new run warm-started from ``best-weights.pt`` (``--init-weights``).

    Returns
    -------
    Path
        ``keep_dir``.
    """
    import shutil

    run_dir, keep_dir = Path(run_dir), Path(keep_dir)
    keep_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "log.jsonl"):
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, keep_dir / name)
    best = run_dir / "best.pt"
    if best.exists():
        out = keep_dir / "best-weights.pt"
        if not out.exists() or out.stat().st_mtime < best.stat().st_mtime:
            export_weights(best, out)
    return keep_dir


def train(run_dir, cfg: Optional[RecipeConfig] = None, config_path=None, device: str = "cpu",
          init_weights=None, max_minutes: Optional[float] = None,
          keep_dir=None) -> Iterator[Dict[str, float]]:
    """Train (or resume) a run; a generator yielding one log record per logged step.

    Parameters
    ----------
    run_dir : path
        Folder for ``config.json``, ``last.pt`` (resume point), ``best.pt`` and ``log.jsonl``.
        When ``last.pt`` exists the run resumes from it with its saved settings.
    cfg : RecipeConfig, optional
        Settings of a new run (ignored on resume, except ``steps`` which may be raised).
    config_path : path, optional
        Model config; the embedded lit-tiny config by default.
    device : str
        ``cpu`` or ``cuda``.
    init_weights : path, optional
        Weights (``{"model": ...}``) to start a new run from, e.g. the shipped lit-tiny.
    max_minutes : float, optional
        Stop (after saving) when this much wall time has passed.
    keep_dir : path, optional
        After each validation and at the end, :func:`keep_run` copies the run's log, config and
        best weights here (a folder git tracks, so that the run outlives the session's checkout).

    Yields
    ------
    dict
        ``step``, ``stage``, ``lr``, losses, ``sec_per_step``; validation records also carry
        ``val_track_j``, ``val_static_j`` and ``val_click2_j``, and with real data
        (``real`` schedule or ``val_real_mix``) ``val_real_track_j`` and its groups'
        ``val_real_<group>_track_j`` (:func:`napari_lit.training.real.validate_real`).

    Raises
    ------
    ValueError
        If ``schedule``, ``select`` or ``data`` is unknown, or no real sequence is usable.
    FileNotFoundError
        If real data are needed and the ``train_data`` folder does not exist.
    """
    import torch

    from ..models.catalogue import LIT_TINY_CONFIG

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = Path(config_path) if config_path else LIT_TINY_CONFIG
    last = run_dir / "last.pt"
    cfg = cfg or RecipeConfig()
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.select not in SELECT_CHOICES:
        raise ValueError(f"select must be one of {SELECT_CHOICES}, got {cfg.select!r}")
    if cfg.data not in DATA_CHOICES:
        raise ValueError(f"data must be one of {DATA_CHOICES}, got {cfg.data!r}")
    state = None
    if last.exists():
        state = torch.load(last, map_location=device, weights_only=False)
        saved = RecipeConfig(**state["config"])
        saved.steps = max(saved.steps, cfg.steps)
        saved.threads, saved.data_workers = cfg.threads, cfg.data_workers  # batches unchanged
        cfg = saved
    uses_real = any(stage.real > 0 for stage in SCHEDULES[cfg.schedule]) or cfg.select == "val_real_mix"
    if uses_real:
        from .real import DEFAULT_TRAIN_DATA, real_data

        folder = Path(cfg.train_data if cfg.train_data is not None else DEFAULT_TRAIN_DATA)
        if not folder.is_dir():
            raise FileNotFoundError(f"schedule {cfg.schedule!r} with select {cfg.select!r} reads real training "
                                    f"data, but the folder {folder} (--train-data) does not exist")
        cfg.train_data = str(folder.resolve())
        real_data(cfg.train_data, cfg.data)  # fails now, not in a data worker, if nothing is usable
    torch.set_num_threads(cfg.threads)
    model = build_train_model(config_path, device, cfg.correction_points)
    loss_fn = make_loss(cfg.loss_mask, cfg.loss_dice)
    from .masked import allowed_prompt_frames, masked_loss, prompt_frames_within
    # memory modules get no weight decay: during single-frame stages they receive no
    # gradient, and decay alone wiped the mask information out of the memory encoder
    memory = [p for n, p in model.named_parameters() if n.startswith(MEMORY_PREFIXES)]
    rest = [p for n, p in model.named_parameters() if not n.startswith(MEMORY_PREFIXES)]
    opt = torch.optim.AdamW([{"params": memory, "weight_decay": 0.0},
                             {"params": rest, "weight_decay": cfg.weight_decay}], lr=cfg.lr)
    step, best = 0, -1.0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        model.rng.bit_generator.state = state["model_rng"]
        torch.set_rng_state(state["torch_rng"])
        step, best = state["step"], state.get("best", -1.0)
        logger.info("resumed %s at step %d", run_dir, step)
    else:
        torch.manual_seed(cfg.seed)
        if init_weights is not None:
            from ..models.build import load_weights

            load_weights(model, init_weights)
            if cfg.reinit_memory:
                reinit_memory(model, cfg.seed)
        if init_weights is None or cfg.reinit_memory:
            init_memory_locality(model, cfg.memory_locality)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    extra = MIX_EXTRA_KIND.get(cfg.select)  # val_mix plus one scene kind's own clips
    val_args = [{}, {"motion": CHANGE_MOTION}]
    if cfg.select in ("val_mix", *MIX_EXTRA_KIND, "val_real_mix"):
        val_args.append({"kinds": (("parts", 1.0),)})
    if extra:
        val_args.append({"kinds": ((extra, 1.0),)})
    common = (cfg.seed, cfg.val_clips, cfg.image_size, cfg.max_objects)
    if cfg.data_workers > 0:  # the validation sets are generated side by side
        from concurrent.futures import ProcessPoolExecutor

        # one torch thread in each child: OpenMP state forked from a parent that has
        # trained can deadlock the child's first parallel region (as torch's DataLoader does)
        with ProcessPoolExecutor(min(cfg.data_workers, len(val_args)), initializer=_one_thread,
                                 initargs=(0,)) as pool:
            sets = list(pool.map(_validation_set_kw, [(common, kw) for kw in val_args]))
    else:
        sets = [validation_set(*common, **kw) for kw in val_args]
    val_batches, change_batches = sets[0], sets[1]
    parts_batches = sets[2] if len(sets) > 2 else None
    extra_batches = sets[3] if extra else None
    real_batches = None
    if uses_real:
        from .real import real_validation_set

        real_batches = real_validation_set(cfg.train_data, cfg.data, cfg.seed, cfg.val_clips, cfg.image_size,
                                           cfg.max_objects)
    stages = SCHEDULES[cfg.schedule]
    loader = torch.utils.data.DataLoader(
        _StepBatches(cfg, stages), batch_size=None, sampler=range(step, cfg.steps),
        num_workers=cfg.data_workers, worker_init_fn=_one_thread if cfg.data_workers else None,
        prefetch_factor=4 if cfg.data_workers else None)

    def validate_all():
        val = validate(model, val_batches)
        val.update({k.replace("val_", "val_change_"): v
                    for k, v in validate(model, change_batches).items() if k != "val_click2_j"})
        val["val_both"] = 0.5 * (val["val_track_j"] + val["val_change_track_j"])
        if parts_batches is not None:
            val.update({k.replace("val_", "val_parts_"): v
                        for k, v in validate(model, parts_batches).items()})
            val["val_mix"] = (val["val_track_j"] + val["val_change_track_j"]
                              + val["val_parts_track_j"]) / 3
        if extra_batches is not None:
            val.update({k.replace("val_", f"val_{extra}_"): v
                        for k, v in validate(model, extra_batches).items()})
            val[cfg.select] = (3 * val["val_mix"] + val[f"val_{extra}_track_j"]) / 4
        if real_batches is not None:
            from .real import validate_real

            val.update(validate_real(model, real_batches, validate))
            if "val_mix" in val:
                val["val_real_mix"] = 0.5 * (val["val_mix"] + val["val_real_track_j"])
        return val
    log = open(run_dir / "log.jsonl", "a")
    t_start = time.time()
    t_last, acc, n_acc = time.time(), {}, 0

    def save(val=None):
        payload = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "model_rng": model.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "best": best,
            "config": asdict(cfg),
        }
        if val is not None:
            payload["val"] = val
        _save_atomic(payload, last)
        return payload

    try:
        model.train()
        for batch in loader:
            stage = stage_at(step, cfg.steps, stages, skip_image=cfg.skip_image_stage)
            batch = batch.to(device)
            for group in opt.param_groups:
                group["lr"] = _cosine_lr(step, cfg)
            valid = getattr(batch, "valid", None)  # real clips: (frame, object) pairs with ground truth
            with prompt_frames_within(model, allowed_prompt_frames(valid)):
                outs = model(batch)
            losses = masked_loss(loss_fn, outs, batch.masks, valid)
            total = losses["core_loss"]
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            for k, v in losses.items():
                acc[k] = acc.get(k, 0.0) + float(v.detach() if hasattr(v, "detach") else v)
            n_acc += 1
            record = None
            if step % cfg.log_every == 0:
                record = {"step": step, "stage": stage.name, "lr": _cosine_lr(step - 1, cfg),
                          **{k: v / n_acc for k, v in acc.items()},
                          "sec_per_step": (time.time() - t_last) / n_acc}
                acc, n_acc, t_last = {}, 0, time.time()
            val = None
            if step % cfg.val_every == 0 or step == cfg.steps:
                val = validate_all()
                record = {**(record or {"step": step, "stage": stage.name}), **val}
                if val[cfg.select] > best:
                    best = val[cfg.select]
                    payload = save(val)
                    _save_atomic(payload, run_dir / "best.pt")
            if step % cfg.ckpt_every == 0 or val is not None:
                save(val)
            if record is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
                if val is not None and keep_dir is not None:
                    keep_run(run_dir, keep_dir)
                yield record
            if max_minutes is not None and time.time() - t_start > 60 * max_minutes:
                break
    finally:
        save()
        log.close()
        if keep_dir is not None:
            keep_run(run_dir, keep_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``napari-lit train-model``: train or resume lit-tiny; ``argv`` as after the subcommand."""
    p = argparse.ArgumentParser(prog="napari-lit train-model", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="folder for checkpoints and log (resumes if it has last.pt)")
    p.add_argument("--steps", type=int, default=RecipeConfig.steps)
    p.add_argument("--seed", type=int, default=RecipeConfig.seed)
    p.add_argument("--lr", type=float, default=RecipeConfig.lr)
    p.add_argument("--threads", type=int, default=RecipeConfig.threads)
    p.add_argument("--val-every", type=int, default=RecipeConfig.val_every)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-workers", type=int, default=RecipeConfig.data_workers,
                   help="processes generating batches ahead of the optimiser (same batches)")
    p.add_argument("--clips-scale", type=int, default=RecipeConfig.clips_scale,
                   help="clips per batch as a multiple of each stage's")
    p.add_argument("--init-weights", default=None, help="start a new run from these weights")
    p.add_argument("--skip-image-stage", action="store_true", help="tracking stages only (with --init-weights)")
    p.add_argument("--reinit-memory", action="store_true",
                   help="with --init-weights: fresh memory modules (encoder, attention) for the new run")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=RecipeConfig.schedule,
                   help="stage schedule ('change': fast motion and large size change last; "
                        "'parts': multi-part objects on cluttered backgrounds, from trained weights; "
                        "'em': the parts mix with serial-section EM neuropil and more CT; "
                        "'photo': the parts mix with objects cut out of photographs; "
                        "'real': the parts mix with 60 %% of the clips cut from real data, --train-data)")
    p.add_argument("--select", choices=SELECT_CHOICES, default=RecipeConfig.select,
                   help="what best.pt maximises ('val_real_mix': generated and held-back real clips)")
    p.add_argument("--train-data", default=None, metavar="PATH",
                   help="folder of real training sequences for the 'real' schedule and val_real_mix "
                        "(default ../shared/train)")
    p.add_argument("--data", choices=DATA_CHOICES, default=RecipeConfig.data,
                   help="real data used: 'all', or 'commercial-ok' (only sequences whose meta.json "
                        "licence allows commercial use: drops DAVIS, CTC and SegTrack v2)")
    p.add_argument("--warmup", type=int, default=RecipeConfig.warmup)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--export", default=None, help="after training, write best weights here (fp16)")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="after each validation, copy log, config and best weights (fp16) to DIR, a folder "
                        "git tracks (e.g. docs/training-runs/NAME), so the run outlives this checkout")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import signal

    def _stop(signum, _frame):  # `kill` saves the checkpoint (the generator's finally)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _stop)
    cfg = RecipeConfig(steps=args.steps, seed=args.seed, lr=args.lr, threads=args.threads,
                       val_every=args.val_every, skip_image_stage=args.skip_image_stage,
                       reinit_memory=args.reinit_memory, schedule=args.schedule,
                       select=args.select, warmup=args.warmup, data_workers=args.data_workers,
                       clips_scale=args.clips_scale, train_data=args.train_data, data=args.data)
    for rec in train(args.run_dir, cfg, device=args.device, init_weights=args.init_weights,
                     max_minutes=args.max_minutes, keep_dir=args.keep):
        logger.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
    if args.export:
        src = Path(args.run_dir) / "best.pt"
        export_weights(src if src.exists() else Path(args.run_dir) / "last.pt", Path(args.export))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
