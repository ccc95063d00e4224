"""Object-centred zoom: which window of the frame the model sees for one object.

SAM2 resizes its whole input frame to a square of ``image_size`` pixels (256 for lit-tiny,
1024 for SAM2.1), so in a large microscopy frame a small nucleus covers a few input pixels
and a click on it selects dozens of its neighbours. With zoom, each small object is tracked
through its own window of the frame, at a scale where it spans about ``1 / context`` of the
model's input side; the masks come back at full resolution in frame coordinates.

The rules (:class:`ZoomConfig` holds the numbers):

- **Scale.** An object whose bounding box's longer side is ``b`` pixels gets a square
  window of side ``context * b``, never smaller than ``image_size / max_upscale`` (an object
  is enlarged at most ``max_upscale`` times; a window is never shrunk below that size) and
  clipped to the frame. A window as large as ``frame_share`` of the frame (the geometric mean
  of its sides) is not worth it: the object is seen through the whole frame, as without zoom.
- **Prompts.** A mask or a box gives the scale. A click does not, and the model's answer
  depends on it (lit-tiny finds a 25 px nucleus enlarged 2x but a 200 px cell only near its
  own resolution): a new object's click is answered through square windows of
  ``scale * image_size`` pixels around it for each of ``click_scales`` (0.5, 1, 2: enlarged
  2x, 1:1, shrunk 2x); each window is refitted to the mask the model returns there and the
  model predicts once more; the mask kept is the most stable one (:func:`stability_score`,
  as SAM's automatic mask generator ranks masks). On held-out training data this choice
  beats every fixed scale on average for nuclei and cells, but on a large object of a
  natural video it often keeps a stable part of the object (the smaller windows show only
  parts): mean IoU 0.25 where the whole frame gives 0.38. ``click_min_stability`` (off by
  default) lets the whole frame answer when the kept mask is less stable than that: 0.8
  recovers video (0.38) but costs small nuclei, whose right answer is often only 0.6-0.7
  stable with lit-tiny (``benchmarks/experiments/README.md``). A box prompt gives the scale
  and avoids the question.
- **Following** (:func:`follow`). On each tracked frame the window comes from the previous
  frame's mask, moved by the object's last displacement (constant velocity). It is kept --
  so that SAM2's memory sees a steady view -- until the object comes within
  ``margin * side`` of a window edge (one that is not the frame's edge) or its fitted window
  side leaves ``[side / band, side * band]``; then it is refitted around the predicted box
  (:func:`object_box`: the mask's bounding box, without specks far from its main parts). A
  frame where the object is absent keeps the window.

Windows are ``(y0, x0, y1, x1)`` half-open integer pixel boxes of the full-resolution frame.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .frames import check_window

__all__ = ["ZOOM_MODES", "ZoomConfig", "Window", "mask_box", "fit_window", "click_window", "follow",
           "stability_score", "contains", "whole_frame", "check_window", "object_box"]

#: ``auto``: small objects through their own windows; ``off``: every object through the whole frame.
ZOOM_MODES = ("auto", "off")

Window = Tuple[int, int, int, int]
Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class ZoomConfig:
    """The numbers of object-centred zoom (see the module notes).

    Parameters
    ----------
    context : float
        Window side / the object's longer bounding-box side (the object spans about
        ``1 / context`` of the model's input side).
    max_upscale : float
        Most an object is enlarged: windows are at least ``image_size / max_upscale`` pixels.
    click_scales : tuple of float
        A new object's click is answered through windows of ``scale * image_size`` pixels a
        side for each scale (0.5: the object enlarged 2x, 1: at its own resolution, 2: shrunk
        2x), and the most stable answer is kept (:func:`stability_score`).
    click_min_stability : float
        If the most stable of those answers is less stable than this, the whole frame
        answers the click instead (0, the default: only when no window found the object).
    frame_share : float
        A window at least this share of ``sqrt(Y * X)`` becomes the whole frame.
    margin : float
        The window is refitted when the object comes within ``margin * side`` of an edge.
    band : float
        ... or when its fitted side differs from the window's by more than this factor.
    click_refits : int
        Most times a click's window is refitted to the mask the model returns in it (by the
        rule of :func:`follow`; then the model predicts again).

    Raises
    ------
    ValueError
        If a value is out of its range (context, max_upscale, click_scales, band > 1 or > 0
        as named; 0 < frame_share; 0 <= margin < 0.5; click_refits >= 0;
        0 <= click_min_stability <= 1).
    """

    context: float = 3.0
    max_upscale: float = 2.0
    click_scales: Tuple[float, ...] = (0.5, 1.0, 2.0)
    frame_share: float = 0.75
    margin: float = 0.2
    band: float = 1.5
    click_refits: int = 1
    click_min_stability: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "click_scales", tuple(float(v) for v in self.click_scales))
        checks = (("context", self.context > 1), ("max_upscale", self.max_upscale > 0),
                  ("click_scales", len(self.click_scales) > 0 and all(v > 0 for v in self.click_scales)), ("frame_share", self.frame_share > 0),
                  ("margin", 0 <= self.margin < 0.5), ("band", self.band > 1),
                  ("click_refits", self.click_refits >= 0),
                  ("click_min_stability", 0 <= self.click_min_stability <= 1))
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ValueError(f"zoom settings out of range: {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)} "
                             f"(context > 1, max_upscale > 0, click_scales > 0, frame_share > 0, "
                             f"0 <= margin < 0.5, band > 1, click_refits >= 0, 0 <= click_min_stability <= 1)")

    def to_dict(self) -> dict:
        """The settings as a JSON-able dict (``ZoomConfig(**d)`` makes them again)."""
        return asdict(self)


def whole_frame(frame_shape) -> Window:
    """The window that is the whole frame.

    Parameters
    ----------
    frame_shape : (Y, X)

    Returns
    -------
    (0, 0, Y, X)
    """
    return 0, 0, int(frame_shape[0]), int(frame_shape[1])


def mask_box(mask) -> Optional[Box]:
    """Bounding box of a (Y, X) bool mask as half-open (y0, x0, y1, x1) pixels, or None if empty."""
    mask = np.asarray(mask, bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return float(rows[0]), float(cols[0]), float(rows[-1] + 1), float(cols[-1] + 1)


def object_box(mask, min_share: float = 0.1, spread: float = 2.0) -> Optional[Box]:
    """Bounding box of a predicted object, without specks a model leaves far from it.

    A mask predicted through a window may hold, besides the object, a few scattered pixels
    (a speck on a neighbour, noise at the window's edge); the plain bounding box
    (:func:`mask_box`) spans them, and a window refitted to it grows towards the whole frame
    and loses the object. The main parts are the connected parts (8-connectivity) that hold at
    least ``min_share`` of the mask's area -- always the largest -- so an object that splits (a
    dividing cell, an occluded car) keeps both halves. The plain box is kept unless its longer
    side is more than ``spread`` times that of the main parts' box: small parts near the object
    still count (on the held-back time-lapse of ``shared/train`` dropping them all loses
    0.03 J), far specks do not.

    Parameters
    ----------
    mask : (Y, X) array-like of bool
    min_share : float
        Share of the mask's pixels a connected part needs to be a main part, in [0, 1].
    spread : float
        How much longer (>= 1) the plain box's longer side may be than the main parts'.

    Returns
    -------
    (y0, x0, y1, x1) floats or None
        Half-open pixel box: the plain box or the main parts'; None for an empty mask.

    Raises
    ------
    ValueError
        If ``min_share`` is outside [0, 1] or ``spread`` is below 1.
    """
    from scipy import ndimage

    if not (0 <= min_share <= 1 and spread >= 1):
        raise ValueError(f"object_box needs 0 <= min_share <= 1 and spread >= 1, got min_share={min_share!r}, "
                         f"spread={spread!r}")
    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    plain = mask_box(mask)
    parts, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 1:
        return plain
    sizes = np.bincount(parts.ravel())[1:]
    keep = (sizes >= min_share * sizes.sum()) | (sizes == sizes.max())
    main = mask_box(keep[parts - 1] & mask)

    def longer(b):
        return max(b[2] - b[0], b[3] - b[1])

    return main if longer(plain) > spread * longer(main) else plain


def _fitted_side(box: Box, image_size: int, config: ZoomConfig) -> float:
    longer = max(box[2] - box[0], box[3] - box[1], 1.0)
    return max(config.context * longer, image_size / config.max_upscale)


def _place(centre: Tuple[float, float], side: float, frame_shape) -> Window:
    """A square of ``side`` px centred at ``centre`` (y, x), shifted into the frame and clipped
    to it where the frame is smaller."""
    out = []
    for c, n in zip(centre, frame_shape):
        n = int(n)
        s = int(min(n, max(1, round(side))))
        lo = int(round(c - s / 2))
        lo = min(max(lo, 0), n - s)
        out.append((lo, lo + s))
    (y0, y1), (x0, x1) = out
    return y0, x0, y1, x1


def fit_window(box: Box, frame_shape, image_size: int, config: ZoomConfig = ZoomConfig()) -> Optional[Window]:
    """The window an object with bounding box ``box`` is seen through.

    Parameters
    ----------
    box : (y0, x0, y1, x1) floats
        The object's (or a prompt's) bounding box in frame pixels.
    frame_shape : (Y, X)
    image_size : int
        The model's input side S in pixels.
    config : ZoomConfig

    Returns
    -------
    (y0, x0, y1, x1) ints or None
        A square of ``max(context * b, S / max_upscale)`` px (b: the box's longer side)
        centred on the box, inside the frame (clipped where the frame is smaller); None when
        that is at least ``frame_share * sqrt(Y * X)``: the whole frame is the window.
    """
    side = _fitted_side(box, image_size, config)
    if side >= config.frame_share * math.sqrt(float(frame_shape[0]) * float(frame_shape[1])):
        return None
    return _place(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), side, frame_shape)


def click_window(points: Sequence[Sequence[float]], frame_shape, image_size: int,
                 config: ZoomConfig = ZoomConfig(), scale: Optional[float] = None) -> Optional[Window]:
    """A click's first window.

    Parameters
    ----------
    points : (K, 2) array-like of float
        The clicks, (y, x) frame pixels.
    frame_shape, image_size, config
        As for :func:`fit_window`.
    scale : float, optional
        The window's side in units of S (default: the first of ``config.click_scales``).

    Returns
    -------
    (y0, x0, y1, x1) ints or None
        A square of ``scale * S`` px (larger if the clicks spread further, to hold them
        all with the context) centred on the clicks' bounding box; None when that is the
        whole frame (as :func:`fit_window`).
    """
    pts = np.asarray(points, float).reshape(-1, 2)
    y0, x0 = pts.min(axis=0)
    y1, x1 = pts.max(axis=0) + 1
    scale = config.click_scales[0] if scale is None else float(scale)
    side = max(scale * image_size, config.context * max(y1 - y0, x1 - x0))
    if side >= config.frame_share * math.sqrt(float(frame_shape[0]) * float(frame_shape[1])):
        return None
    return _place(((y0 + y1) / 2, (x0 + x1) / 2), side, frame_shape)


def stability_score(logits, offset: float = 1.0) -> float:
    """How little a mask changes with its threshold: the stability score of SAM's automatic
    mask generator (Kirillov et al., "Segment Anything", ICCV 2023, sec. 3 / its
    ``calculate_stability_score``).

    Parameters
    ----------
    logits : ndarray of float
        Mask logits (> 0 inside).
    offset : float
        The thresholds compared are ``+offset`` and ``-offset``.

    Returns
    -------
    float
        ``|logits > offset| / |logits > -offset|`` in [0, 1]; -1 for an empty mask (no pixel
        above 0), so that any found object ranks above none.
    """
    logits = np.asarray(logits)
    if not (logits > 0).any():
        return -1.0
    return float((logits > offset).sum() / max(int((logits > -offset).sum()), 1))


def contains(window: Window, box: Box, frame_shape, margin: float = 0.0) -> bool:
    """Whether ``box`` lies inside ``window``, away from its edges.

    Parameters
    ----------
    window : (y0, x0, y1, x1) ints
    box : (y0, x0, y1, x1) floats
    frame_shape : (Y, X)
    margin : float
        ``box`` must stay ``margin * side`` (side: the window's shorter side) from each window
        edge that is not also the frame's edge.

    Returns
    -------
    bool
    """
    y0, x0, y1, x1 = window
    m = margin * min(y1 - y0, x1 - x0)
    h, w = int(frame_shape[0]), int(frame_shape[1])
    return ((y0 == 0 or box[0] >= y0 + m) and (x0 == 0 or box[1] >= x0 + m)
            and (y1 == h or box[2] <= y1 - m) and (x1 == w or box[3] <= x1 - m))


def follow(window: Window, box: Optional[Box], frame_shape, image_size: int, config: ZoomConfig = ZoomConfig(),
           velocity: Tuple[float, float] = (0.0, 0.0)) -> Window:
    """The window of the next frame, from this frame's window and the object's box on it.

    Parameters
    ----------
    window : (y0, x0, y1, x1) ints
        The window the object was seen through on the previous frame.
    box : (y0, x0, y1, x1) floats or None
        The object's bounding box there (None: absent; the window is kept).
    frame_shape, image_size, config
        As for :func:`fit_window`.
    velocity : (dy, dx) floats
        The object's last displacement per frame; the box is moved by it first.

    Returns
    -------
    (y0, x0, y1, x1) ints
        ``window`` itself while the predicted box stays ``margin`` inside it and its fitted
        side within the ``band`` of the window's; else the refitted window (the whole frame
        when :func:`fit_window` says so).
    """
    if box is None:
        return tuple(window)
    dy, dx = velocity
    pred = (box[0] + dy, box[1] + dx, box[2] + dy, box[3] + dx)
    side = max(window[2] - window[0], window[3] - window[1])
    fitted = _fitted_side(pred, image_size, config)
    full = whole_frame(frame_shape)
    if tuple(window) == full:
        # the whole frame: leave it only for a window clearly smaller than it
        keep = fitted >= config.frame_share * math.sqrt(float(frame_shape[0]) * float(frame_shape[1])) / config.band
    else:
        keep = (contains(window, pred, frame_shape, config.margin)
                and side / config.band <= min(fitted, max(frame_shape)) <= side * config.band)
    if keep:
        return tuple(window)
    new = fit_window(pred, frame_shape, image_size, config)
    return full if new is None else new
