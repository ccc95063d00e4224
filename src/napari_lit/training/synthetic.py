"""Synthetic image sequences with exact instance masks, for training ``lit-tiny``.

Each call of :func:`generate_clip` draws one short sequence of a random *scene kind*:

``nuclei``
    fluorescent nuclei that move, grow, deform, touch and divide.
``tissue``
    membrane-bounded cells packed like a tissue (a moving Voronoi tessellation): the
    objects are the cell interiors, as in electron-microscopy or membrane-stain images.
``zstack``
    slices through ellipsoids and tubes: objects appear, grow, shrink and vanish along z.
``phase``
    phase-contrast-like cells: dark bodies with a bright halo on a grey background.
``ct``
    a body outline with organ cross-sections of different grey levels, CT/MRI-like.
``natural``
    textured colour shapes over a textured moving background, with occlusion, look-alike
    distractors and objects leaving the frame.
``parts``
    natural-video-like: objects made of several differently coloured, shaded parts that
    move together (a body, a head, limbs), over a cluttered dead-leaves background that the
    camera pans across. Inner edges between an object's parts are as strong as its outline,
    as on a person, a dog or a swan; a model trained on one-texture shapes learns "the
    uniform region" and, on real video, falls back to repeating the last mask.
``em``
    serial-section EM neuropil: packed look-alike compartments of very different sizes,
    each moving its own way from section to section.
``photo``
    the ``parts`` scene cut out of photographs, as FlyingChairs did for optical flow
    (Dosovitskiy et al. 2015): a panning background and objects whose pieces carry patches of
    real photos (scikit-image's bundled sample images, zoomed, flipped and colour-jittered),
    so the model meets the texture and edge statistics of real images; an object sometimes
    wears the background's own photo (camouflage).

Microscopy kinds go through an imaging model: blur, uneven illumination, intensity drift,
photobleaching, Poisson and Gaussian noise, and a random bit depth before the same robust
percentile contrast the frame source applies at run time.

Everything is drawn from a :class:`numpy.random.Generator`, so a seed gives the same clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage as ndi

__all__ = ["SCENE_KINDS", "DEFAULT_KIND_WEIGHTS", "MotionLevel", "Clip", "generate_clip", "draw_kind"]

SCENE_KINDS = ("nuclei", "tissue", "zstack", "phase", "ct", "natural", "parts", "em", "photo")

#: How often :func:`generate_clip` draws each kind when none is given. ``parts``, ``em`` and
#: ``photo`` (added later) are not drawn by default, so a seed gives the clips it gave before;
#: training schedules that want them pass their own weights.
DEFAULT_KIND_WEIGHTS = {"nuclei": 0.2, "tissue": 0.2, "zstack": 0.15, "phase": 0.1, "ct": 0.1,
                        "natural": 0.25, "parts": 0.0, "em": 0.0, "photo": 0.0}

#: Smallest frame side (px) :func:`generate_clip` makes: the natural-video kinds place
#: objects with margins that need it.
MIN_SIZE = 48

#: scikit-image's bundled sample images the ``photo`` kind cuts textures from (natural
#: photographs, microscopy, astronomy, materials; not the drawings, text or silhouettes).
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "retina", "hubble_deep_field",
               "immunohistochemistry", "brick", "grass", "gravel", "camera", "coins", "moon", "cell",
               "stereo_motorcycle")


@dataclass(frozen=True)
class MotionLevel:
    """How hard a clip is to track.

    Parameters
    ----------
    speed : float
        Typical object displacement per frame, in pixels at 256 px.
    deform : float
        Per-frame random walk of the shape's harmonic coefficients.
    events : float
        Probability scale of divisions, occlusions, objects leaving the frame.
    change : float
        Extra per-frame change of size and appearance (s.d. of the log size step of
        nuclei and cells, faster growth and shrinking of z-stack sections, cell-size drift
        and interior texture renewal in tissue). 0 keeps the clips of earlier versions
        exactly; 0.05 makes an object double or halve its area within a few frames, so
        repeating the last mask stops being a good answer.
    """

    speed: float = 2.0
    deform: float = 0.02
    events: float = 0.5
    change: float = 0.0


@dataclass
class Clip:
    """A generated sequence.

    Attributes
    ----------
    frames : (T, H, W, 3) uint8 ndarray
        RGB frames (grey scenes replicated to 3 channels).
    labels : (T, H, W) int32 ndarray
        Instance ids, 0 = background; an id is the same object on every frame.
    kind : str
        The scene kind (one of :data:`SCENE_KINDS`).
    """

    frames: np.ndarray
    labels: np.ndarray
    kind: str


# --------------------------------------------------------------------------- shapes


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to zero mean, unit std."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-6)


class _Star:
    """A star-convex shape r(theta) = R (1 + sum_k a_k cos(k theta) + b_k sin(k theta))."""

    def __init__(self, rng, cy, cx, radius, n_harm=4, rough=0.12, elong=1.0):
        self.cy, self.cx = float(cy), float(cx)
        self.radius = float(radius)
        self.coef = rng.normal(0, rough, (n_harm, 2)) / np.arange(1, n_harm + 1)[:, None]
        self.elong = float(elong)
        self.angle = float(rng.uniform(0, np.pi))
        self.vy, self.vx = 0.0, 0.0

    def mask(self, h: int, w: int, scale: float = 1.0) -> np.ndarray:
        r = self.radius * scale
        out = np.zeros((h, w), bool)
        if r < 0.75:
            return out
        rmax = r * (1 + np.abs(self.coef).sum()) * max(self.elong, 1.0) + 2
        y0, y1 = int(max(0, np.floor(self.cy - rmax))), int(min(h, np.ceil(self.cy + rmax) + 1))
        x0, x1 = int(max(0, np.floor(self.cx - rmax))), int(min(w, np.ceil(self.cx + rmax) + 1))
        if y0 >= y1 or x0 >= x1:
            return out
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy - self.cy, xx - self.cx
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        u = (dx * ca + dy * sa) / self.elong
        v = -dx * sa + dy * ca
        theta = np.arctan2(v, u)
        k = np.arange(1, self.coef.shape[0] + 1, dtype=np.float32)[:, None, None]
        rt = r * (
            1
            + (self.coef[:, 0, None, None] * np.cos(k * theta)).sum(0)
            + (self.coef[:, 1, None, None] * np.sin(k * theta)).sum(0)
        )
        out[y0:y1, x0:x1] = np.hypot(u, v) <= rt
        return out

    def step(self, rng, motion: MotionLevel, h: int, w: int, bounce: bool = True):
        self.vy = 0.8 * self.vy + 0.2 * rng.normal(0, motion.speed)
        self.vx = 0.8 * self.vx + 0.2 * rng.normal(0, motion.speed)
        self.cy += self.vy
        self.cx += self.vx
        if bounce:
            if not (0 <= self.cy < h):
                self.vy = -self.vy
                self.cy = float(np.clip(self.cy, 0, h - 1))
            if not (0 <= self.cx < w):
                self.vx = -self.vx
                self.cx = float(np.clip(self.cx, 0, w - 1))
        self.coef += rng.normal(0, motion.deform, self.coef.shape) / np.arange(
            1, self.coef.shape[0] + 1
        )[:, None]
        self.coef *= 0.98
        self.angle += rng.normal(0, 0.03)


# ---------------------------------------------------------------------- imaging model


def _imaging(rng, signal: np.ndarray, microscopy: bool = True) -> np.ndarray:
    """(T, H, W) float signal -> (T, H, W) uint8 after blur, illumination, noise, contrast."""
    t, h, w = signal.shape
    out = signal.astype(np.float32)
    sigma = rng.uniform(0.0, 1.8)
    if sigma > 0.3:
        out = ndi.gaussian_filter(out, (0, sigma, sigma))
    if rng.random() < 0.6:  # uneven illumination: smooth multiplicative field
        field = _smooth_noise(rng, (-(-h // 8), -(-w // 8)), 3)
        field = np.kron(field, np.ones((8, 8), np.float32))[:h, :w]
        out = out * (1 + rng.uniform(0.1, 0.5) * field)[None]
    gain = np.ones(t, np.float32)
    if rng.random() < 0.5:  # photobleaching
        gain *= np.exp(-rng.uniform(0, 0.08) * np.arange(t, dtype=np.float32))
    if rng.random() < 0.4:  # intensity drift
        gain *= 1 + np.cumsum(rng.normal(0, 0.03, t)).astype(np.float32)
    out = out * gain[:, None, None] + rng.uniform(0, 0.2)
    out = np.clip(out, 0, None)
    if microscopy and rng.random() < 0.7:  # shot noise at a random photon count
        photons = rng.uniform(5, 200)
        out = rng.poisson(out * photons).astype(np.float32) / photons
    out = out + rng.normal(0, rng.uniform(0.005, 0.12), out.shape).astype(np.float32)
    if rng.random() < 0.2:
        out = -out  # inverted contrast
    # robust percentile contrast per clip, as the frame source does per frame
    lo, hi = np.percentile(out, [rng.uniform(0.1, 2.0), rng.uniform(98.0, 99.9)])
    out = (out - lo) / max(hi - lo, 1e-6)
    if rng.random() < 0.3:
        out = np.clip(out, 0, 1) ** rng.uniform(0.6, 1.6)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


# ----------------------------------------------------------------------- scene kinds


def _place(rng, n, h, w, margin, min_dist):
    pts: List[Tuple[float, float]] = []
    for _ in range(n * 30):
        if len(pts) == n:
            break
        p = (rng.uniform(margin, h - margin), rng.uniform(margin, w - margin))
        if all(np.hypot(p[0] - q[0], p[1] - q[1]) >= min_dist for q in pts):
            pts.append(p)
    return pts


def _scene_blobs(rng, t, h, w, motion, kind):
    """Nuclei, phase-contrast cells and z-stacks of ellipsoids/tubes."""
    # object size: log-uniform from small cells (a few pixels across) to large nuclei
    if kind == "phase":
        r_mean = float(np.exp(rng.uniform(np.log(4), np.log(16))))
    elif kind == "zstack":
        r_mean = float(np.exp(rng.uniform(np.log(8), np.log(34))))
    else:
        r_mean = float(np.exp(rng.uniform(np.log(5), np.log(30))))
    n_max = int(np.clip(0.25 * h * w / (np.pi * r_mean**2 * 4), 4, 30))
    n = int(rng.integers(3, n_max + 1))
    stars = []
    for cy, cx in _place(rng, n, h, w, margin=r_mean * 0.5, min_dist=r_mean * 1.2):
        s = _Star(rng, cy, cx, r_mean * rng.uniform(0.6, 1.3), rough=rng.uniform(0.03, 0.2),
                  elong=rng.uniform(1.0, 2.8 if kind == "phase" else 1.8))
        s.growth = rng.normal(0, 0.01 + motion.change)
        s.brightness = rng.uniform(0.4, 1.0)
        if kind == "zstack":  # ellipsoid (radius profile along z) or tube (constant radius)
            s.tube = rng.random() < 0.3
            s.zc = rng.uniform(-0.3 * t, 1.3 * t)
            s.rz = rng.uniform(0.4 * t, 1.5 * t) / (1 + 10 * motion.change)
        stars.append(s)
    labels = np.zeros((t, h, w), np.int32)
    signal = np.zeros((t, h, w), np.float32)
    tex = _smooth_noise(rng, (h, w), rng.uniform(1, 3))
    background = 0.0
    if kind == "phase":  # textured grey background, halo width and body darkness vary
        background = 0.5 + 0.04 * _smooth_noise(rng, (h, w), rng.uniform(2, 8))
        halo = int(rng.integers(1, 4))
        body = rng.uniform(0.05, 0.45)
    next_id = len(stars) + 1
    scale_motion = motion if kind != "phase" else MotionLevel(motion.speed * 0.6, motion.deform, motion.events,
                                                              motion.change)
    for f in range(t):
        if kind != "zstack" and rng.random() < 0.04 * motion.events and len(stars) < 40:
            parent = stars[int(rng.integers(len(stars)))]  # division
            if parent.radius > 4:
                d = _Star(rng, parent.cy, parent.cx, parent.radius / 1.35, rough=0.08,
                          elong=parent.elong)
                d.growth, d.brightness, d.angle = parent.growth, parent.brightness, parent.angle
                off = parent.radius * 0.7
                ca, sa = np.cos(parent.angle), np.sin(parent.angle)
                parent.radius /= 1.35
                parent.cy -= off * sa
                parent.cx -= off * ca
                d.cy += off * sa
                d.cx += off * ca
                d.obj_id = next_id
                next_id += 1
                stars.append(d)
        if kind == "phase":
            signal[f] = background
        for i in range(len(stars)):
            s = stars[i]
            obj_id = getattr(s, "obj_id", i + 1)
            scale = 1.0
            if kind == "zstack" and not s.tube:
                q = 1 - ((f - s.zc) / s.rz) ** 2
                scale = float(np.sqrt(q)) if q > 0 else 0.0
            m = s.mask(h, w, scale)
            m &= labels[f] == 0  # touching objects: first drawn wins
            labels[f][m] = obj_id
            if kind == "phase":
                ring = ndi.binary_dilation(m, iterations=halo) & ~m & (labels[f] == 0)
                signal[f][m] = body + 0.1 * tex[m]
                signal[f][ring] = 1.0
            else:
                signal[f][m] = s.brightness * (1 + 0.15 * tex[m])
            s.step(rng, scale_motion, h, w)
            s.radius *= 1 + s.growth
    return signal, labels


def _scene_tissue(rng, t, h, w, motion):
    """Membrane-bounded cells from a moving Voronoi tessellation; objects = interiors.

    Membranes are wavy (distances perturbed by smooth noise) and the interiors carry
    vesicle- and mitochondria-like dark blobs, as in electron micrographs; or membranes
    are bright on dark interiors, as in membrane stains.
    """
    n = int(rng.integers(8, 45))
    seeds = np.stack([rng.uniform(0, h, n), rng.uniform(0, w, n)], 1).astype(np.float32)
    vel = rng.normal(0, motion.speed * 0.4, (n, 2)).astype(np.float32)
    weights = rng.uniform(0.7, 1.35, n).astype(np.float32)
    width = rng.uniform(1.0, 4.0)
    wobble = rng.uniform(0, 6)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    labels = np.zeros((t, h, w), np.int32)
    signal = np.zeros((t, h, w), np.float32)
    tex = _smooth_noise(rng, (h, w), rng.uniform(0.8, 2.5))
    warp = [_smooth_noise(rng, (h, w), 6.0) * wobble for _ in range(2)]
    wy, wx = yy + warp[0], xx + warp[1]  # the same wavy membranes in every frame
    vesicles = _smooth_noise(rng, (h, w), rng.uniform(0.8, 1.5)) > rng.uniform(1.2, 2.2)
    mito = np.abs(_smooth_noise(rng, (h, w), 4.0)) < rng.uniform(0.0, 0.12)
    bright_membrane = rng.random() < 0.35
    for f in range(t):
        d = np.sqrt((wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2)
        d = d * weights[:, None, None]
        part = np.partition(d, 1, axis=0)[:2]
        nearest = np.argmin(d, axis=0)
        membrane = (part[1] - part[0]) < width
        lab = nearest.astype(np.int32) + 1
        lab[membrane] = 0
        labels[f] = lab
        if bright_membrane:
            signal[f] = np.where(membrane, 1.0, 0.15 + 0.05 * tex)
        else:
            inside = 0.6 + 0.1 * tex
            inside = np.where(vesicles, inside - 0.3, inside)
            inside = np.where(mito, inside - 0.2, inside)
            signal[f] = np.where(membrane, 0.05, inside)
        seeds += vel + rng.normal(0, motion.speed * 0.15, seeds.shape).astype(np.float32)
        weights *= np.exp(rng.normal(0, motion.deform + motion.change, n)).astype(np.float32)
        if motion.change > 0:  # serial sections: the interior texture is not the same slice to slice
            renew = min(1.0, 4 * motion.change)
            tex = (1 - renew) * tex + renew * _smooth_noise(rng, (h, w), 1.5)
            vesicles = _smooth_noise(rng, (h, w), 1.2) > 1.7 if rng.random() < renew else vesicles
    return signal, labels


def _scene_em(rng, t, h, w, motion):
    """Serial-section electron microscopy of neuropil; objects = neurite cross-sections.

    Neurites are tubes that cross the stack obliquely: each section shows a compartment
    whose centre moves on its own (not with a shared drift) and whose size follows a
    log-normal law (many thin axons, a few wide dendrites), packed as an additively
    weighted Voronoi diagram (curved walls, no cell encloses another). Walls are thick
    dark membranes; interiors are grey with a grain renewed from section to section, some
    hold mitochondria (dark ovals with pale cristae) or clusters of synaptic vesicles.
    Neighbours look alike, so only the memory of where the object was and what it looked
    like tells them apart.
    """
    n = int(rng.integers(25, 70))
    radius = np.exp(rng.normal(np.log(rng.uniform(10, 22)), 0.55, n)).astype(np.float32)
    seeds = np.stack([rng.uniform(-10, h + 10, n), rng.uniform(-10, w + 10, n)], 1).astype(np.float32)
    vel = rng.normal(0, motion.speed * 0.5, (n, 2)).astype(np.float32)
    grey = rng.uniform(0.5, 0.75, n).astype(np.float32)
    wall = rng.uniform(1.0, 2.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = [_smooth_noise(rng, (h, w), 8.0) * rng.uniform(0, 5) for _ in range(2)]
    wy, wx = yy + warp[0], xx + warp[1]  # the same wavy walls in every section
    # organelles, in each neurite's own coordinates (they move with it)
    mito = rng.random(n) < 0.3
    m_off = rng.normal(0, 0.3, (n, 2)).astype(np.float32) * radius[:, None]
    m_len = rng.uniform(0.3, 0.6, n) * radius
    m_ang = rng.uniform(0, np.pi, n)
    vesicle = rng.random(n) < 0.2
    v_dots = [rng.normal(0, 0.35, (int(rng.integers(6, 25)), 2)) * radius[i] for i in range(n)]
    grain = _smooth_noise(rng, (h, w), rng.uniform(0.7, 1.3))
    labels = np.zeros((t, h, w), np.int32)
    signal = np.zeros((t, h, w), np.float32)
    for f in range(t):
        d = np.sqrt((wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2)
        lab = np.argmin(d - radius[:, None, None], axis=0).astype(np.int32)
        edge = np.zeros((h, w), bool)
        edge[1:] |= lab[1:] != lab[:-1]
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        membrane = ndi.distance_transform_edt(~edge) < wall
        img = grey[lab] + 0.08 * grain
        for i in np.flatnonzero(mito | vesicle):
            cy, cx = seeds[i]
            if not (-radius[i] < cy < h + radius[i] and -radius[i] < cx < w + radius[i]):
                continue
            inside = lab == i
            if mito[i]:
                ca, sa = np.cos(m_ang[i]), np.sin(m_ang[i])
                dy, dx = yy - cy - m_off[i, 0], xx - cx - m_off[i, 1]
                u, v = dx * ca + dy * sa, -dx * sa + dy * ca
                oval = inside & ((u / m_len[i]) ** 2 + (v / (0.4 * m_len[i])) ** 2 <= 1)
                cristae = np.cos(u * 1.3) > 0.3
                img[oval] = np.where(cristae[oval], 0.4, 0.12)
            if vesicle[i]:
                for dy, dx in v_dots[i]:
                    py, px = int(cy + dy), int(cx + dx)
                    if 1 <= py < h - 1 and 1 <= px < w - 1 and inside[py, px]:
                        img[py - 1:py + 2, px - 1:px + 2] = 0.25
        img[membrane] = 0.08
        lab = lab + 1
        lab[membrane] = 0
        labels[f] = lab
        signal[f] = img
        seeds += vel + rng.normal(0, motion.speed * 0.2, seeds.shape).astype(np.float32)
        radius *= np.exp(rng.normal(0, motion.deform + motion.change, n)).astype(np.float32)
        m_ang += rng.normal(0, 0.1, n)
        grain = 0.5 * grain + 0.87 * _smooth_noise(rng, (h, w), 1.0)  # the next section
    return signal, labels


def _scene_ct(rng, t, h, w, motion):
    """CT/MRI-like slices: a body or head outline with a bright rim (skin, skull), bone-like
    bright distractors, textured tissue, and organ or lesion cross-sections (the objects)
    of various contrast that appear, grow, shrink and vanish along z."""
    body = _Star(rng, h / 2 + rng.normal(0, 8), w / 2 + rng.normal(0, 8),
                 rng.uniform(0.33, 0.47) * min(h, w), rough=0.05, elong=rng.uniform(1.0, 1.4))
    rim = int(rng.integers(1, 6))
    tissue_level = rng.uniform(0.3, 0.55)
    organs = []
    for cy, cx in _place(rng, int(rng.integers(1, 8)), h, w, margin=h * 0.25, min_dist=20):
        o = _Star(rng, cy, cx, float(np.exp(rng.uniform(np.log(6), np.log(34)))),
                  rough=rng.uniform(0.05, 0.3), elong=rng.uniform(1.0, 2.2))
        o.level = float(np.clip(tissue_level + rng.choice([-1, 1]) * rng.uniform(0.04, 0.4), 0, 1))
        o.zc, o.rz = rng.uniform(-0.3 * t, 1.3 * t), rng.uniform(0.3 * t, 2 * t) / (1 + 10 * motion.change)
        organs.append(o)
    bones = [_Star(rng, cy, cx, rng.uniform(3, 10), rough=0.1, elong=rng.uniform(1, 2.5))
             for cy, cx in _place(rng, int(rng.integers(0, 6)), h, w, margin=h * 0.2, min_dist=10)]
    labels = np.zeros((t, h, w), np.int32)
    signal = np.zeros((t, h, w), np.float32)
    tex = _smooth_noise(rng, (h, w), rng.uniform(1, 3))
    organ_motion = MotionLevel(motion.speed * 0.4, motion.deform, 0, motion.change)
    for f in range(t):
        bm = body.mask(h, w)
        inner = ndi.binary_erosion(bm, iterations=rim)
        signal[f][bm] = 0.9
        signal[f][inner] = tissue_level + 0.04 * tex[inner]
        for bone in bones:
            signal[f][bone.mask(h, w) & inner] = 0.95
            bone.step(rng, organ_motion, h, w)
        for i, o in enumerate(organs):
            q = 1 - ((f - o.zc) / o.rz) ** 2
            m = o.mask(h, w, float(np.sqrt(q)) if q > 0 else 0.0) & inner & (labels[f] == 0)
            labels[f][m] = i + 1
            signal[f][m] = o.level + 0.04 * tex[m]
            o.step(rng, organ_motion, h, w)
        body.radius *= 1 + rng.normal(0, 0.01)
    return signal, labels


def _color_texture(rng, h, w):
    base = rng.uniform(0, 1, 3).astype(np.float32)
    tex = np.stack([_smooth_noise(rng, (h, w), rng.uniform(1, 6)) for _ in range(2)], -1)
    mix = rng.normal(0, 0.15, (2, 3)).astype(np.float32)
    if rng.random() < 0.4:  # stripes
        yy, xx = np.mgrid[0:h, 0:w]
        a = rng.uniform(0, np.pi)
        stripes = np.sin((np.cos(a) * xx + np.sin(a) * yy) * rng.uniform(0.2, 0.8))
        tex[..., 0] += 1.5 * stripes
    return np.clip(base + tex @ mix, 0, 1)


def _scene_natural(rng, t, h, w, motion):
    """Textured colour shapes over a textured, panning background."""
    bg = _color_texture(rng, h + 64, w + 64)
    pan = rng.normal(0, motion.speed * 0.5, 2)
    n = int(rng.integers(2, 7))
    stars, textures = [], []
    shared = _color_texture(rng, h, w)
    for i, (cy, cx) in enumerate(_place(rng, n, h, w, margin=20, min_dist=30)):
        s = _Star(rng, cy, cx, rng.uniform(14, 50), n_harm=5, rough=rng.uniform(0.05, 0.3),
                  elong=rng.uniform(1.0, 2.2))
        s.vy, s.vx = rng.normal(0, motion.speed * 1.5, 2)
        stars.append(s)
        # look-alike distractors share one texture
        textures.append(shared if rng.random() < 0.4 * motion.events else _color_texture(rng, h, w))
    depth = rng.permutation(len(stars))  # _place may fit fewer than n on a small frame
    labels = np.zeros((t, h, w), np.int32)
    frames = np.zeros((t, h, w, 3), np.float32)
    for f in range(t):
        oy, ox = (32 + pan * f).astype(int).clip(0, 63)
        frame = bg[oy:oy + h, ox:ox + w].copy()
        lab = np.zeros((h, w), np.int32)
        for i in np.argsort(depth):  # far to near: nearer objects occlude
            s = stars[i]
            m = s.mask(h, w)
            lab[m] = i + 1
            frame[m] = textures[i][m]
            s.step(rng, motion, h, w, bounce=rng.random() > 0.3 * motion.events)
            if motion.change > 0:  # approaching / receding
                s.radius = float(np.clip(s.radius * np.exp(rng.normal(0, motion.change)), 6, 90))
        labels[f] = lab
        frames[f] = frame
    frames = frames * rng.uniform(0.6, 1.2) + rng.normal(0, rng.uniform(0, 0.04), frames.shape)
    return (np.clip(frames, 0, 1) * 255).astype(np.uint8), labels


def _natural_colour(rng) -> np.ndarray:
    """An RGB colour with natural images' statistics: mostly low saturation (channels
    close to a common grey level), sometimes a saturated one."""
    grey = rng.beta(1.5, 1.5)
    spread = 0.35 if rng.random() < 0.2 else 0.08
    return np.clip(grey + rng.normal(0, spread, 3), 0, 1).astype(np.float32)


def _texture_bank(rng, h, w, n=6):
    """Zero-mean unit-std texture fields of different grain (smooth noise, stripes, speckle)
    that shapes sample from, so a scene with a hundred shapes costs a few filters."""
    bank = [_smooth_noise(rng, (h, w), s) for s in rng.uniform(0.7, 6.0, n - 2)]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, np.pi)
    bank.append(np.sin((np.cos(a) * xx + np.sin(a) * yy) * rng.uniform(0.3, 1.2)).astype(np.float32))
    bank.append(rng.standard_normal((h, w)).astype(np.float32))
    return bank


def _paint(rng, frame, mask, bank, colour=None, shade=None):
    """Fill ``mask`` of an (H, W, 3) frame with a colour, a texture and a linear shading
    (light from one side), as a Lambertian-ish surface; returns the appearance parameters so
    that a moving object keeps its look."""
    if colour is None:
        colour = _natural_colour(rng)
        shade = (int(rng.integers(len(bank))), float(rng.uniform(0.02, 0.2)),
                 float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 0.5)))
    tex_i, amp, light, strength = shade
    yy, xx = np.nonzero(mask)
    if len(yy):
        cy, cx = yy.mean(), xx.mean()
        extent = max(np.ptp(yy), np.ptp(xx), 1)
        grad = ((yy - cy) * np.sin(light) + (xx - cx) * np.cos(light)) / extent
        value = colour[None] * (1 + strength * grad)[:, None] + amp * bank[tex_i][yy, xx][:, None]
        frame[yy, xx] = value
    return colour, shade


def _dead_leaves(rng, h, w, bank, n=400, r_min=3.0, r_max=100.0):
    """A dead-leaves image (Matheron; Lee, Mumford & Huang 2001): opaque shapes with a
    power-law size distribution dropped on top of each other, which reproduces the
    occlusion and scale statistics of natural images. Returns (H, W, 3) float32."""
    img = np.empty((h, w, 3), np.float32)
    img[:] = _natural_colour(rng)
    # p(r) ~ r^-3 between r_min and r_max (inverse-CDF sampling)
    u = rng.random(n)
    radii = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5
    for r in np.sort(radii)[::-1]:  # large ones first: small leaves land on top
        s = _Star(rng, rng.uniform(-r, h + r), rng.uniform(-r, w + r), r,
                  rough=rng.uniform(0.05, 0.3), elong=rng.uniform(1.0, 3.0))
        _paint(rng, img, s.mask(h, w), bank)
    return img


class _Composite:
    """An object made of a core and attached parts that move with it (articulated)."""

    def __init__(self, rng, cy, cx, radius):
        self.core = _Star(rng, cy, cx, radius, n_harm=5, rough=rng.uniform(0.05, 0.25),
                          elong=rng.uniform(1.0, 2.2))
        n_parts = int(rng.integers(1, 5))
        self.parts = []
        for _ in range(n_parts):
            part = _Star(rng, cy, cx, radius * rng.uniform(0.3, 0.7), rough=rng.uniform(0.05, 0.2),
                         elong=rng.uniform(1.0, 3.0))
            # polar offset relative to the core's orientation, overlapping the core
            part.rel_angle = rng.uniform(0, 2 * np.pi)
            part.rel_dist = radius * rng.uniform(0.4, 0.9)
            self.parts.append(part)
        self.look = [None] * (1 + n_parts)  # one (colour, shade) per piece, drawn on first paint

    def pieces(self):
        for p in self.parts:
            a = self.core.angle + p.rel_angle
            p.cy = self.core.cy + p.rel_dist * np.sin(a)
            p.cx = self.core.cx + p.rel_dist * np.cos(a)
        return [self.core] + self.parts

    def step(self, rng, motion, h, w, bounce):
        self.core.step(rng, motion, h, w, bounce=bounce)
        for p in self.parts:
            p.rel_angle += rng.normal(0, 0.04 + motion.deform)  # articulation
            p.rel_dist *= float(np.exp(rng.normal(0, 0.02)))
            p.angle += rng.normal(0, 0.05)
            p.coef += rng.normal(0, motion.deform, p.coef.shape) / np.arange(1, p.coef.shape[0] + 1)[:, None]
            p.coef *= 0.98
        if motion.change > 0:  # approaching / receding
            k = float(np.exp(rng.normal(0, motion.change)))
            if 8 < self.core.radius * k < 100:
                self.core.radius *= k
                for p in self.parts:
                    p.radius *= k
                    p.rel_dist *= k


def _articulated_objects(rng, h, w, motion, on_object=None) -> list:
    """1-4 :class:`_Composite` objects placed apart, each with its own velocity;
    ``on_object(o, radius)`` is called after each (to draw its look in the same random order)."""
    objs = []
    for cy, cx in _place(rng, int(rng.integers(1, 5)), h, w, margin=24, min_dist=40):
        radius = float(np.exp(rng.uniform(np.log(10), np.log(55))))
        o = _Composite(rng, cy, cx, radius)
        o.core.vy, o.core.vx = rng.normal(0, motion.speed * 1.5, 2)
        objs.append(o)
        if on_object is not None:
            on_object(o, radius)
    return objs


def _render_panning(rng, t, h, w, motion, bg, pad, pan, objs, paint, gain):
    """Frames of ``objs`` moving over the background ``bg`` (padded by ``pad`` on each side)
    that the camera pans across by ``pan`` px per frame: objects are drawn far to near, each
    piece by ``paint(frame, mask, obj_index, piece_index, (oy, ox))`` (the view's offset in
    ``bg``), then optional blur, a global gain drawn from ``gain`` and noise. Returns
    ((T, H, W, 3) uint8, (T, H, W) int32)."""
    depth = rng.permutation(len(objs))
    labels = np.zeros((t, h, w), np.int32)
    frames = np.zeros((t, h, w, 3), np.float32)
    shift = np.array([pad, pad], np.float64)
    blur = rng.uniform(0.0, 1.2)
    for f in range(t):
        oy, ox = np.clip(np.round(shift), 0, 2 * pad).astype(int)
        frame = bg[oy:oy + h, ox:ox + w].copy()
        lab = np.zeros((h, w), np.int32)
        for i in np.argsort(depth):  # far to near: nearer objects occlude
            o = objs[i]
            for k, piece in enumerate(o.pieces()):
                m = piece.mask(h, w)
                lab[m] = i + 1
                paint(frame, m, i, k, (oy, ox))
            o.step(rng, motion, h, w, bounce=rng.random() > 0.3 * motion.events)
        shift += pan + rng.normal(0, 0.3, 2)
        labels[f] = lab
        if blur > 0.3:
            frame = ndi.gaussian_filter(frame, (blur, blur, 0))
        frames[f] = frame
    frames = frames * rng.uniform(*gain) + rng.normal(0, rng.uniform(0, 0.03), frames.shape)
    return (np.clip(frames, 0, 1) * 255).astype(np.uint8), labels


def _scene_parts(rng, t, h, w, motion):
    """Multi-part, shaded objects over a panning dead-leaves background (see the module
    docstring); objects occlude each other and may share their colours with the clutter."""
    pad = 48
    bank = _texture_bank(rng, h + 2 * pad, w + 2 * pad)
    clutter = int(np.exp(rng.uniform(np.log(30), np.log(600))))  # sparse to dense
    bg = _dead_leaves(rng, h + 2 * pad, w + 2 * pad, bank, n=clutter, r_max=rng.uniform(50, 150))
    pan = rng.normal(0, motion.speed * 0.6, 2)
    objs = _articulated_objects(rng, h, w, motion)

    def paint(frame, m, i, k, offset):  # shaded colour + texture, drawn on first paint
        oy, ox = offset
        tex = [b[oy:oy + h, ox:ox + w] for b in bank]
        objs[i].look[k] = _paint(rng, frame, m, tex, *(objs[i].look[k] or (None, None)))

    return _render_panning(rng, t, h, w, motion, bg, pad, pan, objs, paint, gain=(0.7, 1.2))


_PHOTOS: Optional[List[np.ndarray]] = None


def photo_bank() -> List[np.ndarray]:
    """The sample photographs of :data:`PHOTO_NAMES` as (H, W, 3) float32 in [0, 1], loaded
    once from scikit-image's package data (no download)."""
    global _PHOTOS
    if _PHOTOS is None:
        import skimage.data

        photos = []
        for name in PHOTO_NAMES:
            img = getattr(skimage.data, name)()
            if isinstance(img, tuple):  # stereo pairs: the left view
                img = img[0]
            img = np.asarray(img, np.float32) / 255.0
            photos.append(np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3])
        _PHOTOS = photos
    return _PHOTOS


def _photo_patch(rng, h: int, w: int) -> np.ndarray:
    """An (h, w, 3) float32 patch of a random sample photograph: random zoom (0.4-2x),
    flips, transpose, and a colour jitter (gain, offset, gamma, channel mix, sometimes grey)."""
    photos = photo_bank()
    img = photos[int(rng.integers(len(photos)))]
    zoom = float(np.exp(rng.uniform(np.log(0.4), np.log(2.0))))
    ch, cw = int(np.ceil(h / zoom)) + 1, int(np.ceil(w / zoom)) + 1
    if ch > img.shape[0] or cw > img.shape[1]:  # the photo is too small at this zoom
        zoom = max(h / (img.shape[0] - 1), w / (img.shape[1] - 1), zoom)
        ch, cw = min(int(np.ceil(h / zoom)) + 1, img.shape[0]), min(int(np.ceil(w / zoom)) + 1, img.shape[1])
    y0 = int(rng.integers(0, img.shape[0] - ch + 1))
    x0 = int(rng.integers(0, img.shape[1] - cw + 1))
    crop = img[y0:y0 + ch, x0:x0 + cw]
    patch = ndi.zoom(crop, (h / ch, w / cw, 1), order=1)[:h, :w]
    if patch.shape[:2] != (h, w):  # rounding: pad by edge
        patch = np.pad(patch, ((0, h - patch.shape[0]), (0, w - patch.shape[1]), (0, 0)), mode="edge")
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.5:
        patch = patch[::-1]
    if h == w and rng.random() < 0.5:
        patch = patch.transpose(1, 0, 2)
    if rng.random() < 0.2:
        patch = np.repeat(patch.mean(-1, keepdims=True), 3, -1)
    mix = np.eye(3, dtype=np.float32) + rng.normal(0, 0.1, (3, 3)).astype(np.float32)
    patch = np.clip(patch @ mix.T, 0, 1) ** float(np.exp(rng.normal(0, 0.25)))
    patch = patch * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(np.clip(patch, 0, 1), dtype=np.float32)


def _scene_photo(rng, t, h, w, motion):
    """Articulated objects textured with photograph patches over a panning photograph (the
    ``parts`` scene's shapes and motion; see the module docstring)."""
    pad = 48
    bg = _photo_patch(rng, h + 2 * pad, w + 2 * pad)
    if rng.random() < 0.5:  # clutter: photo-textured leaves on the background
        for _ in range(int(rng.integers(3, 30))):
            r = float(np.exp(rng.uniform(np.log(6), np.log(60))))
            leaf = _Star(rng, rng.uniform(0, h + 2 * pad), rng.uniform(0, w + 2 * pad), r,
                         rough=rng.uniform(0.05, 0.3), elong=rng.uniform(1.0, 3.0))
            m = leaf.mask(h + 2 * pad, w + 2 * pad)
            if m.any():
                bg[m] = _photo_patch(rng, h + 2 * pad, w + 2 * pad)[m] if rng.random() < 0.3 else \
                    np.clip(bg[m] * rng.uniform(0.5, 1.5) + rng.normal(0, 0.1, 3), 0, 1)
    pan = rng.normal(0, motion.speed * 0.6, 2)
    looks = []

    def draw_look(o, radius):
        # one texture per piece, fixed to the object (it moves with it): a photo patch, the
        # background's own photo (camouflage) or one patch shared by all pieces
        side = int(4 * radius + 64)
        shared = _photo_patch(rng, side, side)
        tex = []
        for _ in o.pieces():
            u = rng.random()
            if u < 0.15 * (0.5 + motion.events):
                y0, x0 = rng.integers(0, max(1, bg.shape[0] - side)), rng.integers(0, max(1, bg.shape[1] - side))
                patch = bg[y0:y0 + side, x0:x0 + side]
                patch = np.pad(patch, ((0, side - patch.shape[0]), (0, side - patch.shape[1]), (0, 0)), mode="reflect")
            elif u < 0.5:
                patch = shared
            else:
                patch = _photo_patch(rng, side, side)
            tex.append(patch)
        looks.append(tex)

    objs = _articulated_objects(rng, h, w, motion, on_object=draw_look)

    def paint(frame, m, i, k, offset):  # the piece's patch, centred on the object's core
        yy, xx = np.nonzero(m)
        patch = looks[i][k]
        side = patch.shape[0]
        py = np.clip(np.round(yy - objs[i].core.cy).astype(int) + side // 2, 0, side - 1)
        px = np.clip(np.round(xx - objs[i].core.cx).astype(int) + side // 2, 0, side - 1)
        frame[yy, xx] = patch[py, px]

    return _render_panning(rng, t, h, w, motion, bg, pad, pan, objs, paint, gain=(0.8, 1.15))


def generate_clip(
    rng: np.random.Generator,
    n_frames: int = 8,
    size: int = 256,
    kind: Optional[str] = None,
    motion: MotionLevel = MotionLevel(),
) -> Clip:
    """Draw one synthetic sequence.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (a seeded generator gives a reproducible clip).
    n_frames : int
        Number of frames (time points or z slices), >= 1.
    size : int
        Height and width in pixels.
    kind : str, optional
        One of :data:`SCENE_KINDS`; drawn with :data:`DEFAULT_KIND_WEIGHTS` when None.
    motion : MotionLevel
        Difficulty: motion speed, deformation, event rate.

    Returns
    -------
    Clip
        ``frames`` (T, H, W, 3) uint8 and ``labels`` (T, H, W) int32.

    Raises
    ------
    ValueError
        If ``kind`` is unknown, ``n_frames`` < 1 or ``size`` < :data:`MIN_SIZE`.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} px (the scenes place objects with margins), got {size}")
    if kind is None:
        kind = draw_kind(rng)
    if kind not in SCENE_KINDS:
        raise ValueError(f"kind must be one of {SCENE_KINDS}, got {kind!r}")
    h = w = int(size)
    if kind in ("natural", "parts", "photo"):
        scene = {"natural": _scene_natural, "parts": _scene_parts, "photo": _scene_photo}[kind]
        frames, labels = scene(rng, n_frames, h, w, motion)
        return Clip(frames, labels, kind)
    if kind == "tissue":
        signal, labels = _scene_tissue(rng, n_frames, h, w, motion)
    elif kind == "ct":
        signal, labels = _scene_ct(rng, n_frames, h, w, motion)
    elif kind == "em":
        signal, labels = _scene_em(rng, n_frames, h, w, motion)
    else:
        signal, labels = _scene_blobs(rng, n_frames, h, w, motion, kind)
    grey = _imaging(rng, signal, microscopy=kind != "ct")
    return Clip(np.repeat(grey[..., None], 3, axis=-1), labels, kind)


def draw_kind(rng: np.random.Generator, weights: Optional[dict] = None) -> str:
    """Draw a scene kind.

    Parameters
    ----------
    rng : numpy.random.Generator
    weights : dict, optional
        Kind -> relative weight (kinds left out weigh 0); :data:`DEFAULT_KIND_WEIGHTS`
        when None.

    Raises
    ------
    ValueError
        If a key is not a scene kind, a weight is negative or all weights are 0.
    """
    weights = DEFAULT_KIND_WEIGHTS if weights is None else weights
    unknown = set(weights) - set(SCENE_KINDS)
    if unknown:
        raise ValueError(f"unknown scene kinds {sorted(unknown)}; expected some of {SCENE_KINDS}")
    p = np.array([float(weights.get(k, 0.0)) for k in SCENE_KINDS])
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"kind weights must be >= 0 with a positive sum, got {weights}")
    return str(rng.choice(SCENE_KINDS, p=p / p.sum()))
