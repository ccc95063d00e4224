"""The classical peer: track a mask by warping it along optical flow, with no learning.

The tool a user compares napari-lit with before any model: OpenCV's dense inverse search
optical flow (DIS; Kroeger et al., "Fast Optical Flow using Dense Inverse Search", ECCV 2016,
``cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)``) between consecutive frames,
and the previous frame's mask warped backward along it with ``cv2.remap``: for each pixel x of
frame t the flow from t to t-1 says where it came from, and the mask of t is the mask of t-1
read there (bilinear, then >= 0.5). Frames are 8-bit grey at full resolution, normalised as
the model's frame source normalises them (:func:`napari_lit.core.frames.normalise_frame`).
Each object is tracked forward and backward from its prompt frame, as the model is.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional

import numpy as np

from ..core.frames import normalise_frame

__all__ = ["FlowTracker", "grey8"]


def grey8(frame, contrast="auto") -> np.ndarray:
    """One frame as the 8-bit grey image the flow is computed on.

    Parameters
    ----------
    frame : (Y, X) or (Y, X, C) ndarray
        Any dtype :func:`~napari_lit.core.frames.normalise_frame` takes.
    contrast : see :func:`~napari_lit.core.frames.normalise_frame`

    Returns
    -------
    (Y, X) uint8 ndarray
        The normalised frame's luminance (ITU-R BT.601 weights for colour, the grey value
        itself for one channel) scaled to 0..255.
    """
    import cv2

    x = normalise_frame(frame, contrast)  # (Y, X, 3) float32 in [0, 1]
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
    return np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)


class FlowTracker:
    """Warp masks from frame to frame along DIS optical flow.

    Parameters
    ----------
    frames : array-like, (N, Y, X) or (N, Y, X, C)
        The stack (numpy, dask, zarr, a lazy frame folder); frames are read one at a time.
    contrast : see :func:`~napari_lit.core.frames.normalise_frame`
    cache_size : int
        How many grey frames to keep (most recently used).

    Raises
    ------
    ValueError
        If ``frames`` is not 3- or 4-dimensional.
    """

    def __init__(self, frames, contrast="auto", cache_size: int = 4):
        import cv2

        shape = tuple(getattr(frames, "shape", ()))
        if len(shape) not in (3, 4):
            raise ValueError(f"expected a stack of frames shaped (N, Y, X) or (N, Y, X, C); got shape {shape}")
        self.frames = frames
        self.contrast = contrast
        self.n_frames = int(shape[0])
        self.frame_shape = (int(shape[1]), int(shape[2]))
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self._grey: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._cache_size = max(2, int(cache_size))
        h, w = self.frame_shape
        self._grid = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))

    def grey(self, index: int) -> np.ndarray:
        """(Y, X) uint8 grey frame ``index`` (:func:`grey8`), cached."""
        index = int(index)
        if index in self._grey:
            self._grey.move_to_end(index)
            return self._grey[index]
        g = grey8(np.asarray(self.frames[index]), self.contrast)
        self._grey[index] = g
        while len(self._grey) > self._cache_size:
            self._grey.popitem(last=False)
        return g

    def flow(self, to_frame: int, from_frame: int) -> np.ndarray:
        """(Y, X, 2) float32 flow (dx, dy) in pixels: pixel x of ``to_frame`` shows what
        pixel x + flow(x) of ``from_frame`` shows (DIS, preset medium)."""
        return self._dis.calc(self.grey(to_frame), self.grey(from_frame), None)

    def warp(self, masks: np.ndarray, flow: np.ndarray) -> np.ndarray:
        """Warp masks backward along ``flow`` (see :meth:`flow`).

        Parameters
        ----------
        masks : (O, Y, X) bool ndarray
            Masks on the flow's ``from_frame``.
        flow : (Y, X, 2) float32 ndarray

        Returns
        -------
        (O, Y, X) bool ndarray
            The masks on ``to_frame``: bilinear reads at x + flow(x), >= 0.5 inside; pixels that
            come from outside the frame are outside.
        """
        import cv2

        map_x = self._grid[0] + flow[..., 0]
        map_y = self._grid[1] + flow[..., 1]
        out = np.zeros(masks.shape, bool)
        for k, m in enumerate(masks):
            if m.any():
                warped = cv2.remap(m.astype(np.float32), map_x, map_y, interpolation=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
                out[k] = warped >= 0.5
        return out

    def track(self, prompts: Dict[int, tuple]) -> Dict[int, np.ndarray]:
        """Track several objects, each from its own prompt frame, forward and backward.

        The flow between two frames is computed once for all objects: one pass forward from
        the earliest prompt frame, one backward from the latest; an object is warped from
        its prompt frame on, in each direction.

        Parameters
        ----------
        prompts : dict of int -> (int, (Y, X) bool ndarray)
            Object id -> (prompt frame, mask on it).

        Returns
        -------
        dict of int -> (N, Y, X) bool ndarray
            Each object's mask on every frame (its prompt mask on its prompt frame).

        Raises
        ------
        ValueError
            If no object is given, a prompt frame does not exist or a mask's shape is not the
            frame's.
        """
        if not prompts:
            raise ValueError("no object to track: give at least one (prompt frame, mask)")
        n = self.n_frames
        start: Dict[int, int] = {}
        out: Dict[int, np.ndarray] = {}
        for obj, (frame, mask) in prompts.items():
            frame = int(frame)
            if not 0 <= frame < n:
                raise ValueError(f"object {obj}: prompt frame {frame} does not exist (frames 0..{n - 1})")
            mask = np.asarray(mask, bool)
            if mask.shape != self.frame_shape:
                raise ValueError(f"object {obj}: prompt mask is {mask.shape}, the frames are {self.frame_shape}")
            start[int(obj)] = frame
            out[int(obj)] = np.zeros((n,) + self.frame_shape, bool)
            out[int(obj)][frame] = mask
        ids = list(out)
        for step in (1, -1):
            first = min(start.values()) if step == 1 else max(start.values())
            t = first + step
            while 0 <= t < n:
                # objects whose prompt frame lies behind t in this direction
                live = [k for k in ids if (start[k] <= t - step if step == 1 else start[k] >= t - step)]
                if live:
                    flow = self.flow(t, t - step)
                    warped = self.warp(np.stack([out[k][t - step] for k in live]), flow)
                    for k, m in zip(live, warped):
                        out[k][t] = m
                t += step
        return out

    def track_one(self, prompt_frame: int, mask, obj_id: Optional[int] = 1) -> np.ndarray:
        """(N, Y, X) bool masks of one object from ``mask`` on ``prompt_frame``
        (:meth:`track` with one object, ``obj_id`` its key)."""
        return self.track({obj_id: (prompt_frame, mask)})[obj_id]
