"""The parts of sam2's internals napari_lit.core._sam2 relies on, checked on the installed sam2.

If sam2 changes any of these, this file fails first and names what moved.
"""

import inspect
from importlib.metadata import version

import numpy as np

import sam2.sam2_video_predictor as svp
from sam2.modeling.sam.mask_decoder import MaskDecoder

from napari_lit.core import FrameSource, _sam2


def test_installed_sam2_is_supported():
    assert version("sam2").startswith(_sam2.SUPPORTED_SAM2)


def test_predictor_module_names_we_patch_exist():
    assert callable(svp.load_video_frames)  # swapped for the lazy frame source in init_state
    assert svp.tqdm is not None  # silenced in propagate_in_video
    params = inspect.signature(svp.SAM2VideoPredictor._run_single_frame_inference).parameters
    assert list(params)[:4] == ["self", "inference_state", "output_dict", "frame_idx"]
    for name in ("batch_size", "is_init_cond_frame", "point_inputs", "mask_inputs"):
        assert name in params
    dec = inspect.signature(MaskDecoder.forward).parameters
    for name in ("image_embeddings", "image_pe", "sparse_prompt_embeddings", "dense_prompt_embeddings",
                 "multimask_output", "repeat_image", "high_res_features"):
        assert name in dec


def test_lazy_state_is_sam2s_own(predictor):
    frames = FrameSource(np.zeros((4, 20, 30), np.uint8), image_size=predictor.image_size)
    state = _sam2.init_inference_state(predictor, frames)
    assert state["images"] is frames and state["num_frames"] == 4
    assert (state["video_height"], state["video_width"]) == (20, 30)
    for key in ("obj_id_to_idx", "output_dict_per_obj", "frames_tracked_per_obj", "cached_features"):
        assert key in state
    assert svp.load_video_frames.__module__.startswith("sam2")  # the patch is undone
