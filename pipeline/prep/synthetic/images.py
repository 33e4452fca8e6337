"""Images of the generated world: class objects on cluttered backgrounds, with exact masks.

An object is a filled shape (``SHAPES``) in its class's colour family, textured with its class's
pattern (``TEXTURES``). Shapes are drawn without anti-aliasing, so an object's mask is exactly the
set of pixels that carry its colour. The background is a desaturated gradient or blotch field with
pixel noise and *distractors*: small shapes that are never a class shape and never saturated, so
no distractor looks like an object of any class.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.prep.synthetic.world import ObjectClass, WorldConfig

# shapes: polygons in a unit circle, (points [n, 2], fill) with fill True = add, False = cut out


def _circle(cx: float, cy: float, r: float, n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _star() -> list:
    t = np.arange(10) * np.pi / 5 - np.pi / 2
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), True)]


def _heart() -> list:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return [(pts / np.linalg.norm(pts, axis=1).max(), True)]


def _crescent() -> list:
    return [(_circle(0, 0, 1.0), True), (_circle(0.45, -0.2, 0.82), False)]


def _cross() -> list:
    a, b = 0.3, 0.95
    pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    return [(np.array(pts), True)]


def _ring() -> list:
    return [(_circle(0, 0, 1.0), True), (_circle(0, 0, 0.55), False)]


def _square() -> list:
    s = 0.7
    return [(np.array([(-s, -s), (s, -s), (s, s), (-s, s)]), True)]


def _triangle() -> list:
    t = np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
    return [(np.stack([np.cos(t), np.sin(t)], axis=1), True)]


def _arrow() -> list:
    pts = [(-0.95, -0.24), (0.15, -0.24), (0.15, -0.7), (0.98, 0.0), (0.15, 0.7), (0.15, 0.24), (-0.95, 0.24)]
    return [(np.array(pts), True)]


def _diamond() -> list:
    return [(np.array([(0, -1.0), (0.6, 0), (0, 1.0), (-0.6, 0)]), True)]


def _flower() -> list:
    parts = [(_circle(0.58 * math.cos(a), 0.58 * math.sin(a), 0.42, 48), True) for a in np.arange(6) * np.pi / 3]
    return parts + [(_circle(0, 0, 0.45), True)]


# name -> (polygons, largest rotation in degrees). Squares and diamonds turn only a little: a
# square turned 45 degrees would be a diamond.
SHAPES: dict[str, tuple] = {
    "star": (_star(), 180.0),
    "heart": (_heart(), 25.0),
    "crescent": (_crescent(), 180.0),
    "cross": (_cross(), 180.0),
    "ring": (_ring(), 0.0),
    "square": (_square(), 15.0),
    "triangle": (_triangle(), 180.0),
    "arrow": (_arrow(), 180.0),
    "diamond": (_diamond(), 15.0),
    "flower": (_flower(), 180.0),
}


def _ellipse() -> list:
    return [(_circle(0, 0, 1.0) * np.array([1.0, 0.5]), True)]


def _bar() -> list:
    return [(np.array([(-1.0, -0.15), (1.0, -0.15), (1.0, 0.15), (-1.0, 0.15)]), True)]


def _hexagon() -> list:
    t = np.arange(6) * np.pi / 3
    return [(np.stack([np.cos(t), np.sin(t)], axis=1), True)]


def _blob() -> list:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    r = 0.8 + 0.2 * np.sin(3 * t + 0.7)
    return [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), True)]


# clutter: none of these is a class shape
DISTRACTOR_SHAPES: dict[str, list] = {"ellipse": _ellipse(), "bar": _bar(), "hexagon": _hexagon(), "blob": _blob()}


def _place(polygons: list, cx: float, cy: float, radius: float, angle_deg: float) -> list:
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return [(pts @ rot.T * radius + (cx, cy), fill) for pts, fill in polygons]


def shape_mask(polygons: list, size: int) -> np.ndarray:
    """Bool [size, size] mask of placed polygons, drawn without anti-aliasing."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for pts, fill in polygons:
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=255 if fill else 0)
    return np.asarray(canvas) > 0


# textures: value (brightness) factor over object coordinates (u, v) in the unit circle


def _tex_solid(u, v, r):
    return np.ones_like(u)


def _tex_radial(u, v, r):
    return 1.0 - 0.45 * np.clip(u * u + v * v, 0, 1)


def _tex_stripes(u, v, r):
    return np.where(np.sin(2 * np.pi * 2.2 * u + r.uniform(0, 2 * np.pi)) > 0, 1.0, 0.62)


def _tex_checker(u, v, r):
    return np.where(np.sin(np.pi * 2.6 * u) * np.sin(np.pi * 2.6 * v) > 0, 1.0, 0.62)


def _tex_dots(u, v, r):
    step = 0.42
    du = (u / step) - np.round(u / step)
    dv = (v / step) - np.round(v / step)
    return np.where(du * du + dv * dv < 0.09, 0.55, 1.0)


TEXTURES = {
    "solid": _tex_solid,
    "radial": _tex_radial,
    "stripes": _tex_stripes,
    "checker": _tex_checker,
    "dots": _tex_dots,
}


def _rgb(hue_deg: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360) / 360, sat, val), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# scenes


@dataclass
class PlacedObject:
    name: str
    cx: float
    cy: float
    radius: float
    angle: float


@dataclass
class Scene:
    image: Image.Image  # RGB, image_size x image_size
    masks: list[np.ndarray]  # bool [size, size] per object, disjoint
    objects: list[PlacedObject]

    def label_map(self, ids: list[int]) -> np.ndarray:
        """int [size, size]: ``ids[k]`` where object k is, 0 elsewhere."""
        out = np.zeros(self.masks[0].shape, dtype=np.int32)
        for mask, i in zip(self.masks, ids):
            out[mask] = i
        return out


def _background(size: int, r: np.random.Generator) -> np.ndarray:
    def dull():
        return _rgb(r.uniform(0, 360), r.uniform(0.0, 0.3), r.uniform(0.25, 0.85))

    c0, c1 = dull(), dull()
    if r.random() < 0.5:  # linear gradient in a random direction
        a = r.uniform(0, 2 * np.pi)
        axis = np.arange(size, dtype=np.float32) / (size - 1) - 0.5
        t = axis[None, :] * math.cos(a) + axis[:, None] * math.sin(a)
        t = (t - t.min()) / (t.max() - t.min())
    else:  # soft blotches: coarse noise, smoothly upsampled
        coarse = r.random((6, 6)).astype(np.float32)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)) / 255.0
    img = c0 + (c1 - c0) * t[..., None].astype(np.float32)
    noise = r.standard_normal((size, size, 3), dtype=np.float32)
    noise *= np.float32(r.uniform(0.01, 0.05))
    return img + noise


def _draw_distractors(img: np.ndarray, cfg: WorldConfig, r: np.random.Generator) -> None:
    size = img.shape[0]
    names = list(DISTRACTOR_SHAPES)
    for _ in range(int(r.integers(cfg.distractors[0], cfg.distractors[1] + 1))):
        radius = r.uniform(0.04, 0.10) * size
        polys = _place(
            DISTRACTOR_SHAPES[names[int(r.integers(len(names)))]],
            r.uniform(0, size), r.uniform(0, size), radius, r.uniform(0, 360),
        )  # fmt: skip
        mask = shape_mask(polys, size)
        img[mask] = _rgb(r.uniform(0, 360), r.uniform(0.0, 0.3), r.uniform(0.15, 0.95))


def _draw_object(img: np.ndarray, cls: ObjectClass, obj: PlacedObject, r: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    polygons, _ = SHAPES[cls.shape]
    mask = shape_mask(_place(polygons, obj.cx, obj.cy, obj.radius, obj.angle), size)
    ys, xs = np.nonzero(mask)
    a = math.radians(obj.angle)
    dx, dy = (xs - obj.cx) / obj.radius, (ys - obj.cy) / obj.radius
    u = dx * math.cos(a) + dy * math.sin(a)  # object frame: the texture turns with the shape
    v = -dx * math.sin(a) + dy * math.cos(a)
    base = _rgb(cls.hue + r.uniform(-6, 6), r.uniform(0.7, 1.0), r.uniform(0.8, 1.0))
    value = TEXTURES[cls.texture](u, v, r)[:, None]
    img[ys, xs] = base * value + r.normal(0, 0.02, (len(xs), 3))
    return mask


def _layout(n: int, cfg: WorldConfig, r: np.random.Generator) -> list[tuple[float, float, float]]:
    """(cx, cy, radius) for n objects inside the image whose bounding circles do not touch."""
    size = cfg.image_size
    radii = [r.uniform(cfg.object_min, cfg.object_max) * size / 2 for _ in range(n)]
    margin = 0.02 * size
    for _ in range(60):
        placed: list[tuple[float, float, float]] = []
        for radius in radii:
            for _ in range(100):
                cx, cy = r.uniform(radius, size - radius, 2)
                if all(math.hypot(cx - px, cy - py) > radius + pr + margin for px, py, pr in placed):
                    placed.append((cx, cy, radius))
                    break
            else:
                break
        if len(placed) == n:
            return placed
        radii = [x * 0.92 for x in radii]  # did not fit: try a little smaller
    raise RuntimeError(f"cannot place {n} objects of sizes {cfg.object_min}-{cfg.object_max} in {size} px")


def render_scene(classes: list[ObjectClass], cfg: WorldConfig, r: np.random.Generator) -> Scene:
    """An image with one object per entry of ``classes`` on a cluttered background."""
    size = cfg.image_size
    img = _background(size, r)
    _draw_distractors(img, cfg, r)
    objects, masks = [], []
    for cls, (cx, cy, radius) in zip(classes, _layout(len(classes), cfg, r)):
        _, max_turn = SHAPES[cls.shape]
        obj = PlacedObject(cls.name, float(cx), float(cy), float(radius), float(r.uniform(-max_turn, max_turn)))
        masks.append(_draw_object(img, cls, obj, r))
        objects.append(obj)
    pixels = (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return Scene(Image.fromarray(pixels, "RGB"), masks, objects)
