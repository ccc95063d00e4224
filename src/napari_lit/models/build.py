"""Build SAM2 models from Hydra config files with ``sam2``'s own classes.

``sam2.build_sam`` composes configs that live inside the ``sam2`` package through Hydra's
global config module. Our own configs (``lit-tiny``) live in this package, so we load the
YAML with OmegaConf and let :func:`hydra.utils.instantiate` build the same classes; the
predictor settings below are the ones ``sam2.build_sam.build_sam2_video_predictor`` applies.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

__all__ = ["TARGETS", "VIDEO_PREDICTOR_OVERRIDES", "build_sam2_model", "load_config", "load_weights"]

logger = logging.getLogger(__name__)

#: Class each build target instantiates (all are SAM2Base subclasses from sam2 itself).
TARGETS = {
    "base": "sam2.modeling.sam2_base.SAM2Base",
    "video": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "train": "training.model.sam2.SAM2Train",
}

#: Settings for interactive use: those ``sam2.build_sam.build_sam2_video_predictor`` adds,
#: plus corrections as conditioning frames.
VIDEO_PREDICTOR_OVERRIDES: Dict[str, object] = {
    "sam_mask_decoder_extra_args": {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    },
    "binarize_mask_from_pts_for_mem_enc": True,
    "fill_hole_area": 8,
    # a correction on an already tracked frame becomes a conditioning frame, so propagating
    # again from it keeps the corrected mask instead of recomputing that frame
    "add_all_frames_to_correct_as_cond": True,
}


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not fit the model's config."""


def _has_sam2_extension() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("sam2._C") is not None
    except (ImportError, ValueError):
        return False


def load_config(config: Union[str, Path]):
    """Read a SAM2 Hydra config file.

    Parameters
    ----------
    config : str or Path
        A YAML file with a top-level ``model`` node, or a path relative to the installed
        ``sam2`` package such as ``"configs/sam2.1/sam2.1_hiera_t.yaml"``.

    Returns
    -------
    omegaconf.DictConfig

    Raises
    ------
    FileNotFoundError
        If the file exists neither as given nor inside the ``sam2`` package.
    ValueError
        If the file has no ``model`` node.
    """
    from omegaconf import OmegaConf

    path = Path(config)
    if not path.is_file():
        import sam2

        candidate = Path(sam2.__file__).parent / str(config)
        if not candidate.is_file():
            raise FileNotFoundError(
                f"SAM2 config not found: {config!s} (looked as a path and inside the "
                f"installed sam2 package at {candidate})"
            )
        path = candidate
    cfg = OmegaConf.load(path)
    if "model" not in cfg:
        raise ValueError(f"{path} is not a SAM2 model config: it has no top-level 'model' node")
    return cfg


def build_sam2_model(
    config: Union[str, Path],
    checkpoint: Optional[Union[str, Path]] = None,
    target: str = "video",
    overrides: Optional[Dict[str, object]] = None,
    device: str = "cpu",
):
    """Instantiate a SAM2 model and optionally load its weights.

    Parameters
    ----------
    config : str or Path
        Hydra config (see :func:`load_config`).
    checkpoint : str or Path, optional
        A ``.pt`` file holding ``{"model": state_dict}`` as sam2's checkpoints do.
    target : {"video", "train", "base"}
        ``video``: :class:`sam2.sam2_video_predictor.SAM2VideoPredictor` with the
        interactive settings of ``build_sam2_video_predictor``; ``train``:
        ``training.model.sam2.SAM2Train``; ``base``: plain ``SAM2Base``.
    overrides : dict, optional
        Extra constructor arguments merged into the ``model`` node.
    device : str
        Torch device for the model.

    Returns
    -------
    torch.nn.Module
        The model, in eval mode unless ``target == "train"``.

    Raises
    ------
    ValueError
        If ``target`` is unknown.
    CheckpointError
        If the checkpoint cannot be read or its weights do not match the config.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}")
    cfg = load_config(config)
    cfg.model._target_ = TARGETS[target]
    merged: Dict[str, object] = {}
    if target == "video":
        merged.update(VIDEO_PREDICTOR_OVERRIDES)
        if not _has_sam2_extension():
            # hole filling needs sam2's compiled extension (absent in CPU-only builds);
            # without it sam2 warns on every frame and skips the step anyway
            merged["fill_hole_area"] = 0
    merged.update(overrides or {})
    if merged:
        cfg = OmegaConf.merge(cfg, {"model": merged})
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    model = model.to(device)
    if target != "train":
        model.eval()
    return model


def load_weights(model, checkpoint: Union[str, Path], ignore: Iterable[str] = ()) -> None:
    """Load a sam2-style checkpoint (``{"model": state_dict}``) into ``model``, strictly.

    Parameters
    ----------
    model : torch.nn.Module
    checkpoint : str or Path
    ignore : iterable of str
        Key prefixes allowed to be missing (e.g. adapter weights).

    Raises
    ------
    CheckpointError
        If the file is not a readable torch checkpoint, has no ``model`` entry, or its keys
        or tensor shapes differ from the model's.
    """
    import torch

    path = Path(checkpoint)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pickle, zip and torch errors all mean "not a checkpoint"
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{path} is not a SAM2 checkpoint: expected a dict with a 'model' state dict")
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state and not any(k.startswith(p) for p in ignore)]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong_shape:
        def _few(keys):
            return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")

        raise CheckpointError(
            f"{path} does not fit this model config: {len(missing)} missing keys ({_few(missing)}), "
            f"{len(unexpected)} unexpected keys ({_few(unexpected)}), "
            f"{len(wrong_shape)} with other shapes ({_few(wrong_shape)})"
        )
    model.load_state_dict(state, strict=False)
    logger.info("loaded weights from %s", path)
