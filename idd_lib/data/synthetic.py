"""Procedural, Cityscapes-like street scenes for fast, controlled distillation studies.

Scene model
-----------
Every image is a dashcam view rendered from a tiny pinhole-camera model:

* a horizon row ``hy`` and a vanishing point ``vx`` define the perspective; the ground
  below the horizon has a pixel-per-metre scale that grows linearly with the distance
  below the horizon, so objects further down the image are closer and larger;
* sky fills the top, a band of buildings and trees sits on the horizon, and each side of
  the street is closed by a facade (building or vegetation) drawn in perspective;
* the road is a trapezoid converging to the vanishing point (with perspective dashed lane
  markings), flanked by tiled sidewalks with a bright kerb;
* cars stand on the road, persons and thin poles (some carrying a small traffic sign) stand
  on the sidewalk, all sized by the perspective scale at their foot row and painted
  far-to-near so that near objects occlude far ones; ``object_scale`` enlarges persons,
  poles and signs (not their layout), so that at a CPU-sized resolution they still span the
  feature cells of an output-stride-8 network, as they do at Cityscapes' resolution;
* some pixels are unlabelled (``labelId`` 1 "ego vehicle" bonnet at the bottom, ``labelId``
  0 thin rectification-like borders) and become the ignore index downstream;
* finally a per-image illumination model (gain, contrast, colour cast, soft gradients) and
  per-pixel Gaussian noise are applied.

Each class has a base colour and its own texture (tiles, windows, leaves, clouds, lane
markings, ...), and every instance/region gets its own colour jitter.

The two research knobs
----------------------
``position_prior`` (0..2) controls how much *image position* tells the class. At 1 the
layout is Cityscapes-like (horizon in 0.38-0.52 H, perspective-consistent sizes); at 2 the
jitter is halved; towards 0 the horizon range widens, the whole scene is flipped upside
down with probability up to 0.5 and object sizes decouple from their row. A student that
cannot model position well (small receptive field, no coordinates) loses much more than a
teacher when the prior is strong, which is what *position-information distillation*
tries to transfer; with the prior at 0 that transfer should have nothing to offer.

``appearance_overlap`` (0..1) controls inter-class colour distance. Confusable pairs
(road/sidewalk, building/sky, person/pole, traffic sign/vegetation, and cars towards
buildings) have their mean colours moved towards the pair mean; at 1 the members of a pair
share one colour distribution and only texture, shape, context and position separate
them. This raises the value of *context / inter-class-relation distillation*: the
teacher's knowledge of which classes are confusable and how context disambiguates them.

Scenes are stream-stable with respect to the knobs: the number and order of random draws
does not depend on ``appearance_overlap``, ``lighting``, ``noise`` or ``position_prior``,
so one seed gives the *same* scene content across knob values (only the knob's aspect
changes), which makes ablations paired rather than merely matched in distribution.

Files are written in the real Cityscapes layout and are readable with
``torchvision.datasets.Cityscapes(root, split=..., mode="fine", target_type="semantic")``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import Image

from ..config import SYNTHETIC_VERSION, SyntheticConfig
from . import IGNORE_INDEX

if TYPE_CHECKING:  # matplotlib is imported lazily: generation must not pay for it
    from matplotlib.figure import Figure

__all__ = [
    "SyntheticConfig",
    "SYNTH_CLASSES",
    "UNLABELED_ID",
    "EGO_VEHICLE_ID",
    "IGNORE_INDEX",
    "LABEL_ID_TO_TRAIN_ID",
    "FORMAT_VERSION",
    "SPLIT_CITIES",
    "render_scene",
    "image_rng",
    "render_item",
    "generate",
    "ensure_generated",
    "plot_samples",
]

FORMAT_VERSION = SYNTHETIC_VERSION


# (name, Cityscapes labelId, Cityscapes palette colour), in trainId order.
SYNTH_CLASSES: tuple[tuple[str, int, tuple[int, int, int]], ...] = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("pole", 17, (153, 153, 153)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("car", 26, (0, 0, 142)),
)

UNLABELED_ID = 0
EGO_VEHICLE_ID = 1

# labelId -> trainId lookup (index with a uint8 labelId array); everything else -> ignore.
LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _train_id, (_name, _label_id, _colour) in enumerate(SYNTH_CLASSES):
    LABEL_ID_TO_TRAIN_ID[_label_id] = _train_id
LABEL_ID_TO_TRAIN_ID.setflags(write=False)

SPLIT_CITIES: dict[str, str] = {"train": "synthtown", "val": "synthville", "tune": "synthburg"}
# Cityscapes annotates the 20th frame of each snippet; mimic it so names look familiar.
_FRAME = 19

_ROAD, _SIDEWALK, _BUILDING, _POLE, _SIGN, _VEG, _SKY, _PERSON, _CAR = (c[1] for c in SYNTH_CLASSES)

# Plausible real-world base colours (RGB in [0, 1]); the knob only moves them.
_BASE_COLOUR: dict[int, tuple[float, float, float]] = {
    _ROAD: (0.33, 0.33, 0.36),
    _SIDEWALK: (0.66, 0.58, 0.50),
    _BUILDING: (0.58, 0.45, 0.37),
    _POLE: (0.42, 0.45, 0.48),
    _SIGN: (0.92, 0.76, 0.12),
    _VEG: (0.20, 0.44, 0.13),
    _SKY: (0.55, 0.72, 0.93),
}
_CLOTHES = np.array(
    [(0.12, 0.12, 0.16), (0.70, 0.14, 0.14), (0.18, 0.28, 0.62), (0.85, 0.84, 0.78),
     (0.48, 0.36, 0.22), (0.28, 0.48, 0.30)],
    dtype=np.float32,
)
_CAR_PAINT = np.array(
    [(0.90, 0.90, 0.92), (0.07, 0.07, 0.09), (0.64, 0.66, 0.70), (0.62, 0.08, 0.08),
     (0.12, 0.20, 0.52), (0.34, 0.35, 0.38)],
    dtype=np.float32,
)
_BASE_COLOUR[_PERSON] = tuple(float(v) for v in _CLOTHES.mean(0))
# Pairs a network must separate by texture/shape/context once colours coincide.
_CONFUSABLE_PAIRS: tuple[tuple[int, int], ...] = (
    (_ROAD, _SIDEWALK),
    (_BUILDING, _SKY),
    (_PERSON, _POLE),
    (_SIGN, _VEG),
)


def _class_targets(overlap: float) -> dict[int, np.ndarray]:
    """Per-class mean colour after moving confusable pairs towards their pair mean."""
    out = {k: np.asarray(v, np.float32) for k, v in _BASE_COLOUR.items()}
    for a, b in _CONFUSABLE_PAIRS:
        mean = 0.5 * (out[a] + out[b])
        out[a] = out[a] + overlap * (mean - out[a])
        out[b] = out[b] + overlap * (mean - out[b])
    return out


# --------------------------------------------------------------------------- rendering


@dataclass
class _Geometry:
    """Pinhole street geometry in *unflipped* image coordinates (pixel centres at +0.5)."""

    h: int
    w: int
    hy: float  # horizon row
    vx: float  # vanishing point column
    kr: float  # road half-width in px per px below the horizon
    ks: tuple[float, float]  # sidewalk outer half-width slope, (left, right)
    road_m: float  # road half-width in metres, fixes the pixel-per-metre scale
    focal: float  # px; only sets the spacing of perspective textures
    strength: float  # min(position_prior, 1): how much sizes obey perspective
    size_sigma: float  # log-normal size jitter

    @property
    def cam_height(self) -> float:
        # ground row d px below the horizon at distance z: d = focal * cam_height / z and
        # ppm = focal / z = d / cam_height, hence cam_height = road_m / kr.
        return self.road_m / self.kr

    def ppm(self, y: np.ndarray | float) -> np.ndarray | float:
        """Pixels per metre on the ground at row ``y``."""
        return self.kr * np.maximum(np.asarray(y) - self.hy, 1e-3) / self.road_m

    def row_at(self, frac: float) -> float:
        """Row at fraction ``frac`` of the way from the horizon to the bottom edge."""
        return self.hy + frac * (self.h - self.hy)


class _Canvas:
    """Label, base-colour and texture-modulation layers, painted back to front."""

    def __init__(self, h: int, w: int) -> None:
        self.label = np.zeros((h, w), np.uint8)
        self.colour = np.zeros((h, w, 3), np.float32)
        self.tex = np.zeros((h, w), np.float32)

    def paint(
        self,
        mask: np.ndarray,
        label_id: int,
        colour: np.ndarray,
        tex: np.ndarray | float = 0.0,
        window: tuple[slice, slice] = (slice(None), slice(None)),
    ) -> None:
        """Paint ``mask`` (shaped like ``window``) with one label, colour and texture."""
        self.label[window][mask] = label_id
        self.colour[window][mask] = colour
        tex_view = self.tex[window]
        tex_view[mask] = tex[mask] if isinstance(tex, np.ndarray) else tex


def _window(y0: float, y1: float, x0: float, x1: float, h: int, w: int) -> tuple[slice, slice] | None:
    """Integer, clipped bounding box of a float box; None if it falls outside the image."""
    r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h)
    c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w)
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Unit-variance value noise with feature size ``cell`` px (bicubic-ish upsampling)."""
    cell = max(float(cell), 1.0)
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    ys = (np.arange(h, dtype=np.float32) + 0.5) / cell
    xs = (np.arange(w, dtype=np.float32) + 0.5) / cell
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = ys - y0, xs - x0
    # smoothstep weights hide the coarse grid that plain bilinear would show
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    rows = grid[y0] * (1 - fy)[:, None] + grid[y0 + 1] * fy[:, None]
    out = rows[:, x0] * (1 - fx) + rows[:, x0 + 1] * fx
    return (out - out.mean()) / (out.std() + 1e-6)


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float = 1.0) -> np.ndarray:
    """Per-instance colour variation (brightness + hue) so class distributions overlap."""
    c = colour * np.exp(amount * rng.normal(0.0, 0.10)) + amount * rng.normal(0.0, 0.04, 3)
    return np.clip(c, 0.02, 0.98).astype(np.float32)


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _sample_geometry(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[_Geometry, bool]:
    h, w = cfg.height, cfg.width
    strength = min(cfg.position_prior, 1.0)
    # above 1 the prior only tightens the layout: jitter shrinks to half at 2
    tighten = 1.0 - 0.5 * max(cfg.position_prior - 1.0, 0.0)
    horizon_range = (0.07 + 0.25 * (1.0 - strength)) * tighten
    vx_range = (0.12 + 0.20 * (1.0 - strength)) * tighten
    hy = h * (0.45 + rng.uniform(-1.0, 1.0) * horizon_range)
    vx = w * (0.5 + rng.uniform(-1.0, 1.0) * vx_range)
    flip = bool(rng.random() < 0.5 * (1.0 - strength))
    road_bottom_half = w * rng.uniform(0.3, 0.5)
    kr = road_bottom_half / (h - hy)
    ks = (kr * rng.uniform(1.35, 1.9), kr * rng.uniform(1.35, 1.9))
    geo = _Geometry(
        h=h, w=w, hy=hy, vx=vx, kr=kr, ks=ks,
        road_m=rng.uniform(4.5, 7.0),
        focal=0.55 * w,
        strength=strength,
        size_sigma=0.15 * tighten,
    )
    return geo, flip


def _size_ppm(rng: np.random.Generator, geo: _Geometry, y: float, lo: float, hi: float) -> float:
    """Pixel-per-metre used for an object's *size* at foot row ``y``.

    It is the true perspective scale mixed (geometrically, by ``strength``) with the scale
    of a random other row, so at ``position_prior`` 0 size carries no position information.
    """
    decoy = float(geo.ppm(geo.row_at(rng.uniform(lo, hi))))
    true = float(geo.ppm(y))
    jitter = float(np.exp(rng.normal(0.0, geo.size_sigma)))
    return true ** geo.strength * decoy ** (1.0 - geo.strength) * jitter


def _paint_background(
    rng: np.random.Generator, geo: _Geometry, cv: _Canvas, col: dict[int, np.ndarray],
    yy: np.ndarray, xx: np.ndarray, fine: np.ndarray, leaves: np.ndarray, clouds: np.ndarray,
) -> None:
    """Sky, ground, horizon band and the two perspective side facades."""
    h, w, hy, vx = geo.h, geo.w, geo.hy, geo.vx
    d = yy - hy  # signed rows below the horizon
    above = d < 0

    # Sky brightens towards the horizon, as real skies do.
    sky_tex = 0.16 * clouds + 0.18 * np.clip(yy / max(hy, 1.0), 0, 1) - 0.09
    sky = np.broadcast_to(above, (h, w))
    cv.paint(sky, _SKY, _jitter(rng, col[_SKY], 0.7), sky_tex)

    # Ground defaults to sidewalk: every below-horizon pixel not claimed later is pavement.
    dpos = np.maximum(d, 0.3)
    ppm = geo.kr * dpos / geo.road_m
    lateral = (xx - vx) / ppm  # metres from the road centre line
    dist = geo.focal * geo.cam_height / dpos  # metres along the road
    tile = 0.13 * geo.road_m
    joints = (_frac(lateral / tile) < 0.14) | (_frac(dist / tile) < 0.14)
    kerb = (np.abs(lateral) >= geo.road_m) & (np.abs(lateral) < 1.06 * geo.road_m)
    side_tex = 0.05 * fine - 0.2 * joints + 0.3 * kerb
    cv.paint(np.broadcast_to(~above, (h, w)), _SIDEWALK, _jitter(rng, col[_SIDEWALK], 0.7), side_tex)

    # Horizon band: a row of distant buildings and tree groups (gaps show the sky).
    bumps = _smooth_noise(rng, 1, w, max(2.0, w / 40))[0]
    x0 = 0.0
    while x0 < w:
        seg_w = w * rng.uniform(0.05, 0.18)
        kind = rng.choice(3, p=[0.6, 0.28, 0.12])
        top = hy - h * rng.uniform(0.06, 0.26)
        seg_colour_b = _jitter(rng, col[_BUILDING])
        seg_colour_v = _jitter(rng, col[_VEG])
        pitch_x, pitch_y = rng.uniform(2.5, 5.0) * h / 96, rng.uniform(2.5, 5.0) * h / 96
        win = _window(top - 0.1 * h, hy, x0, x0 + seg_w, h, w)
        if win is not None and kind < 2:
            ly, lx = yy[win[0]], xx[:, win[1]]
            if kind == 0:
                mask = (ly >= top) & (ly < hy) & (lx >= x0) & (lx < x0 + seg_w)
                windows = (_frac((lx - x0) / pitch_x) < 0.5) & (_frac((ly - top) / pitch_y) > 0.45)
                windows &= ly > top + 0.6 * pitch_y
                tex = 0.04 * fine[win] - 0.35 * windows
                cv.paint(mask, _BUILDING, seg_colour_b, tex, win)
            else:
                crown = top + 0.35 * (hy - top) * np.abs(bumps[win[1]])[None, :]
                mask = (ly >= crown) & (ly < hy) & (lx >= x0) & (lx < x0 + seg_w)
                cv.paint(mask, _VEG, seg_colour_v, 0.28 * leaves[win] + 0.1 * fine[win], win)
        x0 += seg_w

    # Side facades: bottom edge = sidewalk outer edge, top edge a line to the vanishing point.
    for side, ks in zip((-1.0, 1.0), geo.ks):
        kind = rng.choice(2, p=[0.62, 0.38])
        reach = rng.uniform(0.05, 0.2) * w  # facade stops short of the vanishing point
        edge_top = hy - h * (rng.uniform(0.45, 1.1) if kind == 0 else rng.uniform(0.25, 0.7))
        pitch_z, pitch_y = rng.uniform(0.4, 0.9), rng.uniform(0.45, 0.8)
        colour_b = _jitter(rng, col[_BUILDING])
        colour_v = _jitter(rng, col[_VEG])
        dx = side * (xx - vx)  # px outward from the vanishing point
        edge_dx = vx if side < 0 else w - vx
        slope = (hy - edge_top) / max(edge_dx, 1.0)
        top_line = hy - slope * dx
        if kind == 1:  # tree crowns: bumpy top line, bumps bigger where nearer
            top_line = top_line - 0.3 * slope * dx * np.abs(bumps)[None, :]
        mask = (dx > reach) & (yy > top_line) & (dx > ks * np.maximum(d, 0.0))
        if kind == 0:
            # perspective-correct window grid on a plane parallel to the street
            plane_m = ks * geo.road_m / geo.kr
            z = geo.focal * plane_m / np.maximum(dx, 0.5)
            height_m = geo.cam_height - d * z / geo.focal
            hc = geo.cam_height
            windows = (_frac(z / (pitch_z * hc)) < 0.5) & (_frac(height_m / (pitch_y * hc)) > 0.45)
            windows &= height_m > 0.5 * pitch_y * hc
            cv.paint(mask, _BUILDING, colour_b, 0.04 * fine - 0.38 * windows)
        else:
            cv.paint(mask, _VEG, colour_v, 0.28 * leaves + 0.1 * fine)


def _paint_road(
    rng: np.random.Generator, geo: _Geometry, cv: _Canvas, col: dict[int, np.ndarray],
    yy: np.ndarray, xx: np.ndarray, fine: np.ndarray, patches: np.ndarray,
) -> None:
    d = yy - geo.hy
    dpos = np.maximum(d, 0.3)
    ppm = geo.kr * dpos / geo.road_m
    lateral = (xx - geo.vx) / ppm
    dist = geo.focal * geo.cam_height / dpos
    centre = rng.uniform(-0.15, 0.15) * geo.road_m
    dash = rng.uniform(1.0, 2.2) * geo.cam_height
    edge_lines = rng.random() < 0.5
    mask = (d > 0.5) & (np.abs(lateral) < geo.road_m)
    # Lines get at least ~half a pixel so they survive far away, as real markings alias.
    half_line = np.maximum(0.05 * geo.road_m, 0.45 / ppm)
    marks = (np.abs(lateral - centre) < half_line) & (_frac(dist / dash) < 0.5)
    if edge_lines:
        marks |= np.abs(np.abs(lateral) - 0.93 * geo.road_m) < half_line
    tex = 0.05 * fine + 0.06 * patches + 0.9 * marks
    cv.paint(mask, _ROAD, _jitter(rng, col[_ROAD], 0.7), tex)


def _draw_car(cv: _Canvas, geo: _Geometry, yy: np.ndarray, xx: np.ndarray, fine: np.ndarray,
              foot: float, xc: float, width: float, colour: np.ndarray) -> None:
    height = 0.85 * width
    win = _window(foot - height, foot, xc - width / 2, xc + width / 2, geo.h, geo.w)
    if win is None:
        return
    v = (foot - yy[win[0]]) / height  # 0 at the ground, 1 at the roof
    u = (xx[:, win[1]] - xc) / width  # -0.5 .. 0.5
    au = np.abs(u)
    body = (v > 0.08) & (v < 0.56) & (au < 0.5)
    cabin = (v >= 0.56) & (v < 1.0) & (au < 0.42 - 0.14 * (v - 0.56) / 0.44)
    wheels = (v <= 0.14) & (au > 0.26) & (au < 0.46)
    mask = body | cabin | wheels
    rear_window = (v > 0.61) & (v < 0.93) & (au < 0.35 - 0.13 * (v - 0.61) / 0.32)
    tex = (0.04 * fine[win] - 0.55 * rear_window - 0.75 * wheels
           - 0.25 * (body & (v < 0.2)) + 0.15 * (body & (v > 0.46)))
    cv.paint(mask, _CAR, colour, tex, win)
    lights = body & (v > 0.34) & (v < 0.47) & (au > 0.37)
    cv.paint(lights, _CAR, np.array([0.78, 0.08, 0.06], np.float32), 0.0, win)


def _draw_person(cv: _Canvas, geo: _Geometry, yy: np.ndarray, xx: np.ndarray, fine: np.ndarray,
                 foot: float, xc: float, height: float, stride: float, colour: np.ndarray) -> None:
    top = foot - height
    win = _window(top, foot, xc - 0.3 * height - 1, xc + 0.3 * height + 1, geo.h, geo.w)
    if win is None:
        return
    v = (yy[win[0]] - top) / height  # 0 at the head, 1 at the feet
    dx = xx[:, win[1]] - xc  # px, so that limbs keep >= 1 px however small the person
    head = (dx / height) ** 2 + (v - 0.09) ** 2 < 0.085 ** 2
    torso_half = np.maximum(0.16 * height - 0.05 * height * (v - 0.18) / 0.4, 0.55)
    torso = (v >= 0.16) & (v < 0.58) & (np.abs(dx) < torso_half)
    leg_half = max(0.05 * height, 0.45)
    spread = (0.06 + stride * (v - 0.55)) * height
    legs = (v >= 0.55) & (v <= 1.0) & (
        (np.abs(dx + spread) < leg_half) | (np.abs(dx - spread) < leg_half)
    )
    mask = head | torso | legs
    # roughly zero-mean modulation keeps the person's mean colour where the knob put it
    tex = 0.05 * fine[win] + 0.25 * (head & ~torso) + 0.12 * torso - 0.25 * (legs & ~torso)
    cv.paint(mask, _PERSON, colour, tex, win)


def _draw_pole(cv: _Canvas, geo: _Geometry, yy: np.ndarray, xx: np.ndarray, fine: np.ndarray,
               foot: float, xc: float, width: int, height: float, colour: np.ndarray,
               sign: tuple[int, float, float, np.ndarray] | None) -> None:
    top = foot - height
    x0 = np.floor(xc - width / 2 + 0.5)
    win = _window(top, foot, x0, x0 + width, geo.h, geo.w)
    if win is not None:
        ly = yy[win[0]]
        mask = np.broadcast_to(ly >= top, (win[0].stop - win[0].start, win[1].stop - win[1].start))
        shade = np.linspace(0.12, -0.12, win[1].stop - win[1].start, dtype=np.float32)[None, :]
        cv.paint(mask, _POLE, colour, 0.03 * fine[win] + shade, win)
    if sign is None:
        return
    shape, size, offset, sign_colour = sign
    cy, cx = top + 0.55 * size, xc + offset * size
    win = _window(cy - size / 2, cy + size / 2, cx - size / 2, cx + size / 2, geo.h, geo.w)
    if win is None:
        return
    # normalised coordinates in [-1, 1]; the border ring is the shape minus a shrunk copy
    v = (yy[win[0]] - cy) / (size / 2)
    u = (xx[:, win[1]] - cx) / (size / 2)
    if shape == 0:  # rectangle
        outer = (np.abs(u) <= 1) & (np.abs(v) <= 1)
        inner = (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7)
    elif shape == 1:  # disc
        r2 = u * u + v * v
        outer, inner = r2 <= 1.0, r2 <= 0.5
    else:  # warning triangle, apex up
        outer = (v <= 1) & (np.abs(u) <= (v + 1) / 2 + 0.15)
        inner = (v <= 0.7) & (np.abs(u) <= (v + 0.7) / 2)
    # dark rim, light face: a sign cue that leaves the mean colour roughly unchanged
    ring = (outer & ~inner) * (size >= 5)
    tex = 0.03 * fine[win] - 0.25 * ring + 0.25 * (inner * (size >= 5))
    cv.paint(outer, _SIGN, sign_colour, tex, win)


def _cars(rng: np.random.Generator, cfg: SyntheticConfig, geo: _Geometry, cv: _Canvas, col: np.ndarray,
          yy: np.ndarray, xx: np.ndarray, fine: np.ndarray) -> list[tuple[float, Callable[[], None]]]:
    """Cars on the road: ``(foot row, draw)`` pairs, painted later far-to-near."""
    objects = []
    for _ in range(int(rng.integers(1, 6))):  # cars on the road
        frac = rng.uniform(0.12, 1.0)
        foot = geo.row_at(frac)
        lateral = rng.uniform(-0.72, 0.72) * geo.road_m
        xc = geo.vx + lateral * float(geo.ppm(foot))
        width = max(1.8 * _size_ppm(rng, geo, foot, 0.1, 1.0), 3.0)
        paint = _CAR_PAINT[rng.integers(len(_CAR_PAINT))]
        target = col[_BUILDING]  # cars drift towards facades: similar boxy, windowed blobs
        colour = _jitter(rng, paint + cfg.appearance_overlap * (target - paint))
        objects.append((foot, lambda f=foot, x=xc, cw=width, c=colour:
                        _draw_car(cv, geo, yy, xx, fine, f, x, cw, c)))
    return objects


def _persons(rng: np.random.Generator, cfg: SyntheticConfig, geo: _Geometry, cv: _Canvas, col: np.ndarray,
             yy: np.ndarray, xx: np.ndarray, fine: np.ndarray) -> list[tuple[float, Callable[[], None]]]:
    """Persons on the sidewalks: ``(foot row, draw)`` pairs."""
    min_person = max(3.0, cfg.height / 24)
    objects = []
    for _ in range(int(rng.integers(1, 6))):  # persons on the sidewalks
        side = 1.0 if rng.random() < 0.5 else -1.0
        frac = rng.uniform(0.15, 1.0)
        foot = geo.row_at(frac)
        ks = geo.ks[side > 0]
        outer_m = ks / geo.kr * geo.road_m
        lateral = side * (geo.road_m + rng.uniform(0.15, 0.85) * (outer_m - geo.road_m))
        xc = geo.vx + lateral * float(geo.ppm(foot))
        height = max(1.75 * cfg.object_scale * _size_ppm(rng, geo, foot, 0.15, 1.0), min_person)
        stride = rng.uniform(-0.1, 0.25)
        clothes = _CLOTHES[rng.integers(len(_CLOTHES))]
        colour = _jitter(rng, clothes + cfg.appearance_overlap * (col[_PERSON] - clothes))
        objects.append((foot, lambda f=foot, x=xc, ph=height, s=stride, c=colour:
                        _draw_person(cv, geo, yy, xx, fine, f, x, ph, s, c)))
    return objects


def _poles(rng: np.random.Generator, cfg: SyntheticConfig, geo: _Geometry, cv: _Canvas, col: np.ndarray,
           yy: np.ndarray, xx: np.ndarray, fine: np.ndarray) -> list[tuple[float, Callable[[], None]]]:
    """Poles near the kerb, some carrying a sign: ``(foot row, draw)`` pairs."""
    h = cfg.height
    objects = []
    for _ in range(int(rng.integers(1, 4))):  # poles near the kerb, some with a sign
        side = 1.0 if rng.random() < 0.5 else -1.0
        frac = rng.uniform(0.1, 1.0)
        foot = geo.row_at(frac)
        ks = geo.ks[side > 0]
        outer_m = ks / geo.kr * geo.road_m
        lateral = side * (geo.road_m + rng.uniform(0.1, 0.45) * (outer_m - geo.road_m))
        xc = geo.vx + lateral * float(geo.ppm(foot))
        ppm = _size_ppm(rng, geo, foot, 0.1, 1.0)
        width = int(np.clip(round(0.4 * cfg.object_scale * ppm), cfg.object_scale, 4 * cfg.object_scale))
        height = max(rng.uniform(4.5, 7.0) * ppm, h / 8)
        colour = _jitter(rng, col[_POLE], 0.7)
        has_sign = rng.random() < 0.65
        sign_size = float(np.clip(rng.uniform(0.6, 1.0) * cfg.object_scale * ppm, 3.0, h / 5))
        shape = int(rng.integers(3))
        offset = -side * rng.uniform(0.0, 0.5)  # signs hang towards the road
        sign_colour = _jitter(rng, col[_SIGN], 0.7)
        sign = (shape, sign_size, offset, sign_colour) if has_sign else None
        objects.append((foot, lambda f=foot, x=xc, pw=width, ph=height, c=colour, s=sign:
                        _draw_pole(cv, geo, yy, xx, fine, f, x, pw, ph, c, s)))
    return objects


def _paint_ego_vehicle(rng: np.random.Generator, cv: _Canvas, yy: np.ndarray, xx: np.ndarray) -> None:
    """Ego-vehicle bonnet: unlabelled, like Cityscapes' labelId 1."""
    h, w = cv.label.shape
    has_ego = rng.random() < 0.4
    ego_h = h * rng.uniform(0.06, 0.13)
    if has_ego:
        bulge = 1.0 - 0.6 * ((xx - w / 2) / (w / 2)) ** 2
        ego = yy > h - ego_h * bulge
        reflection = 0.4 * np.clip(1.0 - (h - yy) / ego_h, 0, 1) - 0.2
        cv.paint(ego, EGO_VEHICLE_ID, np.array([0.10, 0.10, 0.12], np.float32),
                 np.broadcast_to(reflection, (h, w)))


def _paint_border(rng: np.random.Generator, cv: _Canvas) -> None:
    """Rectification-like border in image (not scene) coordinates, labelled unlabelled."""
    h, w = cv.label.shape
    has_border = rng.random() < 0.3
    sides = rng.random(4) < 0.5
    thickness = int(rng.integers(1, 3))
    if has_border:
        for k, on in enumerate(sides):
            if on:
                sl = [(slice(0, thickness), slice(None)), (slice(h - thickness, h), slice(None)),
                      (slice(None), slice(0, thickness)), (slice(None), slice(w - thickness, w))][k]
                cv.label[sl] = UNLABELED_ID
                cv.colour[sl] = 0.0


def _illuminate(rng: np.random.Generator, cfg: SyntheticConfig, img: np.ndarray, yy: np.ndarray,
                xx: np.ndarray) -> np.ndarray:
    """Illumination (random exposure, contrast, white balance, soft gradients), then pixel noise."""
    h, w = cfg.height, cfg.width
    lit = cfg.lighting
    gain = np.exp(lit * rng.normal(0.0, 0.5))
    contrast = np.exp(lit * rng.normal(0.0, 0.5))
    cast = np.exp(lit * rng.normal(0.0, 0.25, 3)).astype(np.float32)
    offset = lit * rng.normal(0.0, 0.08)
    gy, gx = lit * rng.uniform(-0.8, 0.8), lit * rng.uniform(-0.4, 0.4)
    grad = 1.0 + gy * (yy / h - 0.5) + gx * (xx / w - 0.5)
    img = ((img - 0.45) * contrast + 0.45) * (gain * grad)[..., None] * cast + offset
    img = img + cfg.noise * rng.standard_normal((h, w, 3), dtype=np.float32)
    return img


def render_scene(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene.

    Returns ``(image uint8 HxWx3, label_ids uint8 HxW)``; labels are Cityscapes labelIds
    (those of ``SYNTH_CLASSES`` plus 0 / 1 for unlabelled pixels).
    """
    h, w = cfg.height, cfg.width
    geo, flip = _sample_geometry(rng, cfg)
    col = _class_targets(cfg.appearance_overlap)
    yy = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    xx = (np.arange(w, dtype=np.float32) + 0.5)[None, :]

    fine = rng.standard_normal((h, w)).astype(np.float32)
    leaves = _smooth_noise(rng, h, w, max(1.5, h / 40))
    clouds = _smooth_noise(rng, h, w, h / 5)
    patches = _smooth_noise(rng, h, w, h / 10)

    cv = _Canvas(h, w)
    _paint_background(rng, geo, cv, col, yy, xx, fine, leaves, clouds)
    _paint_road(rng, geo, cv, col, yy, xx, fine, patches)

    # Objects are collected first and painted far-to-near so near ones occlude.
    args = (rng, cfg, geo, cv, col, yy, xx, fine)
    objects = _cars(*args) + _persons(*args) + _poles(*args)
    objects.sort(key=lambda item: item[0])  # stable: ties keep creation order
    for _, draw in objects:
        draw()

    _paint_ego_vehicle(rng, cv, yy, xx)
    if flip:  # position_prior < 1: vertical layout no longer predicts the class
        cv.label, cv.colour, cv.tex = cv.label[::-1], cv.colour[::-1], cv.tex[::-1]
    _paint_border(rng, cv)

    img = _illuminate(rng, cfg, cv.colour * (1.0 + cv.tex[..., None]), yy, xx)
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return image, np.ascontiguousarray(cv.label)


# --------------------------------------------------------------------------- dataset files


def image_rng(cfg: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent streams per (seed, split, i)."""
    split_key = zlib.crc32(split.encode("utf-8"))  # stable across runs, unlike hash()
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, split_key, index]))


def render_item(cfg: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``split`` exactly as :func:`generate` writes it."""
    return render_scene(image_rng(cfg, split, index), cfg)


def _stem(split: str, index: int) -> tuple[str, str]:
    city = SPLIT_CITIES[split]
    return city, f"{city}_{index:06d}_{_FRAME:06d}"


def _manifest(cfg: SyntheticConfig) -> dict[str, Any]:
    return {**dataclasses.asdict(cfg), "format_version": FORMAT_VERSION}


def generate(root: str | os.PathLike[str], cfg: SyntheticConfig) -> Path:
    """Write the dataset under ``root`` (Cityscapes layout) and return ``root``.

    Existing ``leftImg8bit``/``gtFine`` folders are replaced so stale images of a previous,
    larger config cannot leak in. ``synthetic.json`` is written last and marks completion;
    use :func:`ensure_generated` for caching and atomic replacement.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "synthetic.json").unlink(missing_ok=True)
    for sub in ("leftImg8bit", "gtFine"):
        shutil.rmtree(root / sub, ignore_errors=True)
    for split, count in (("train", cfg.num_train), ("val", cfg.num_val), ("tune", cfg.num_tune)):
        city = SPLIT_CITIES[split]
        img_dir = root / "leftImg8bit" / split / city
        gt_dir = root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, labels = render_item(cfg, split, i)
            _, stem = _stem(split, i)
            # low zlib effort: these files are tiny and written far more often than read
            Image.fromarray(image, "RGB").save(img_dir / f"{stem}_leftImg8bit.png", compress_level=1)
            Image.fromarray(labels, "L").save(gt_dir / f"{stem}_gtFine_labelIds.png", compress_level=1)
    manifest = _manifest(cfg) | {"cities": SPLIT_CITIES}
    (root / "synthetic.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return root


def _is_current(root: Path, cfg: SyntheticConfig) -> bool:
    try:
        stored = json.loads((root / "synthetic.json").read_text())
    except (OSError, ValueError):
        return False
    expected = _manifest(cfg)
    return isinstance(stored, dict) and all(stored.get(k) == v for k, v in expected.items())


_OWN_ENTRIES = {"leftImg8bit", "gtFine", "synthetic.json"}


def ensure_generated(root: str | os.PathLike[str], cfg: SyntheticConfig) -> Path:
    """Generate into ``root`` unless ``root/synthetic.json`` already records ``cfg``.

    Generation happens in a hidden sibling folder that is renamed into place at the end,
    so an interrupted run never leaves a dataset that looks complete. Refuses to replace a
    non-empty folder that does not look like one of ours.
    """
    root = Path(root)
    if _is_current(root, cfg):
        return root
    if root.exists() and not set(os.listdir(root)) <= _OWN_ENTRIES:
        raise FileExistsError(f"{root} exists and is not a synthetic dataset; refusing to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = root.parent / f".{root.name}.tmp-{token}"
    old = root.parent / f".{root.name}.old-{token}"
    try:
        generate(tmp, cfg)
        if root.exists():
            os.replace(root, old)
        try:
            os.replace(tmp, root)
        except OSError:
            # A concurrent caller won the race; accept its result if it matches.
            if not _is_current(root, cfg):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return root


# --------------------------------------------------------------------------- inspection


def plot_samples(
    root: str | os.PathLike[str],
    split: str = "train",
    n: int = 4,
    classes: Sequence[tuple[str, int, tuple[int, int, int]]] = SYNTH_CLASSES,
) -> Figure:
    """Figure with ``n`` rows of (image, colour-coded labels) read back from the PNG files."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    root = Path(root)
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))[:n]
    if not images:
        raise FileNotFoundError(f"no images under {root / 'leftImg8bit' / split}")
    lut = np.zeros((256, 3), np.uint8)  # unlabelled / unknown ids stay black
    for _, label_id, colour in classes:
        lut[label_id] = colour

    rows = len(images)
    fig = Figure(figsize=(7.0, 1.85 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False)
    for r, path in enumerate(images):
        stem = path.name[: -len("_leftImg8bit.png")]
        label_path = root / "gtFine" / split / path.parent.name / f"{stem}_gtFine_labelIds.png"
        axes[r, 0].imshow(np.asarray(Image.open(path).convert("RGB")))
        axes[r, 1].imshow(lut[np.asarray(Image.open(label_path))], interpolation="nearest")
        axes[r, 0].set_ylabel(stem, fontsize=6)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=9)
    axes[0, 1].set_title("labels", fontsize=9)
    handles = [Patch(facecolor=np.array(c) / 255.0, edgecolor="k", label=name) for name, _, c in classes]
    handles.append(Patch(facecolor="k", edgecolor="k", label="unlabeled"))
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=7, frameon=False)
    return fig
