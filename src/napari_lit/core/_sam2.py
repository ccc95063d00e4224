"""All contact with the internals of the installed ``sam2`` package lives here.

We use sam2's own :class:`~sam2.sam2_video_predictor.SAM2VideoPredictor` unchanged. Its
``init_state`` only accepts a path (and would load every frame into memory), so we call it
with its frame loader swapped for our lazy :class:`~napari_lit.core.frames.FrameSource`:
the inference state is then exactly the one sam2 builds, and sam2 reads frames from our
source one at a time through ``inference_state["images"][i]``.

Tested against sam2 1.1.0 (``tests/test_sam2_contract.py``).
"""

from __future__ import annotations

from unittest import mock

__all__ = ["SUPPORTED_SAM2", "init_inference_state", "is_conditioning_frame", "propagate_in_video", "tracked_frames"]

SUPPORTED_SAM2 = ("1.1.0", "1.0")


def init_inference_state(predictor, frames, offload_state_to_cpu: bool = False) -> dict:
    """Build sam2's inference state over a lazy frame source.

    Parameters
    ----------
    predictor : sam2.sam2_video_predictor.SAM2VideoPredictor
    frames : napari_lit.core.frames.FrameSource
        ``len(frames)`` frames; ``frames[i]`` is a (3, S, S) float tensor.
    offload_state_to_cpu : bool
        Keep per-frame outputs in CPU memory when the model runs on a GPU.

    Returns
    -------
    dict
        sam2's inference state; ``video_height``/``video_width`` are the input frame size,
        so sam2 returns masks at the input resolution.
    """
    import sam2.sam2_video_predictor as svp

    height, width = frames.frame_shape

    def _lazy_loader(**_kwargs):
        return frames, height, width

    with mock.patch.object(svp, "load_video_frames", _lazy_loader):
        return predictor.init_state(
            video_path="<napari-lit frame source>",
            offload_video_to_cpu=True,
            offload_state_to_cpu=offload_state_to_cpu,
        )


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
