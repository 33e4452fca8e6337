"""Files of an evaluation run: ``results.json``, ``tables.md``, heatmap archives (npz) and
overlay pictures (PNG) like the paper's Figure 3.

``results.json`` holds one section per experiment (``table1`` ... ``table7``); running another
experiment into the same folder adds or replaces its section and leaves the others, and
``tables.md`` is rebuilt from the whole file each time (``evaluation.tables.write_section``).
Numbers are stored as fractions (0..1). Both files are written atomically, ``results.json`` as
strict JSON (``pipeline.atomic``: a NaN or infinite figure is ``null``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.atomic import strict_json, write_atomic, write_json

RESULTS_FILE = "results.json"
TABLES_FILE = "tables.md"


# ---------------------------------------------------------------------------------------------
# results.json


def load_results(out_dir: Path) -> dict:
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); move it away or pick another --out") from exc


def update_results(out_dir: Path, name: str, section: dict) -> dict:
    """Add or replace one experiment's section of results.json; returns the whole file's content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = load_results(out_dir)
    results[name] = strict_json(section)
    write_json(out_dir / RESULTS_FILE, results, indent=2)
    return results


def write_tables(out_dir: Path, text: str) -> None:
    write_atomic(Path(out_dir) / TABLES_FILE, text)


# ---------------------------------------------------------------------------------------------
# heatmaps and pictures


def save_heatmaps(path: Path, **arrays) -> Path:
    """Everything the metrics used, compressed; strings are stored as unicode arrays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


# "jet"-like ramp: dark blue -> blue -> cyan -> yellow -> red -> dark red
_JET_STOPS = np.array(
    [
        [0.0, 0.0, 0.0, 0.5],
        [0.125, 0.0, 0.0, 1.0],
        [0.375, 0.0, 1.0, 1.0],
        [0.625, 1.0, 1.0, 0.0],
        [0.875, 1.0, 0.0, 0.0],
        [1.0, 0.5, 0.0, 0.0],
    ]
)


def colorize(values: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> uint8 RGB [H, W, 3]."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0, 1)
    rgb = np.stack([np.interp(v, _JET_STOPS[:, 0], _JET_STOPS[:, c]) for c in (1, 2, 3)], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask, bool)
    edge = np.zeros_like(m)
    edge[1:, :] |= m[1:, :] != m[:-1, :]
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    return edge & m


def overlay_panel(
    image: Image.Image, heatmap: np.ndarray | None, mask: np.ndarray | None = None, alpha: float = 0.5
) -> Image.Image:
    """The image blended with the colorized heatmap (resized to the image), mask outline in white."""
    base = image.convert("RGB")
    out = base
    if heatmap is not None:
        heat = Image.fromarray(colorize(heatmap)).resize(base.size, Image.BILINEAR)
        out = Image.blend(base, heat, alpha)
    if mask is not None:
        m = np.asarray(Image.fromarray(np.asarray(mask, np.uint8) * 255).resize(base.size, Image.NEAREST)) > 127
        arr = np.asarray(out).copy()
        arr[_outline(m)] = 255
        out = Image.fromarray(arr)
    return out


def save_overlay(
    path: Path, image: Image.Image, panels: list[tuple[str, np.ndarray | None, np.ndarray | None]], title: str = ""
) -> Path:
    """A row of panels: each (caption, heatmap or None for the plain image, mask or None)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tiles = [overlay_panel(image, heat, mask) for _, heat, mask in panels]
    w, h = tiles[0].size
    caption_h = 14
    top = caption_h if title else 0
    sheet = Image.new("RGB", (w * len(tiles), h + caption_h + top), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((2, 1), title[:120], fill="black")
    for i, ((caption, _, _), tile) in enumerate(zip(panels, tiles)):
        sheet.paste(tile, (i * w, top))
        draw.text((i * w + 2, top + h + 1), caption, fill="black")
    sheet.save(path)
    return path
