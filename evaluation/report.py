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


# Viridis (Smith, van der Walt and Firing's matplotlib colour map, CC0): every 8th of its 256
# published sRGB entries and the last, linearly interpolated. Its CIELAB lightness rises steadily
# from dark blue (L* 15) to yellow (L* 91), so a brighter pixel always means a higher value and
# equal steps in value look like equal steps in colour; jet's bright band in the middle (cyan,
# yellow) made mid values look like peaks. Interpolating these 33 stops stays within 1.7/255 of
# the full table (tests/evaluation/test_report.py checks the lightness).
VIRIDIS_STOPS = np.array(
    [
        [0.267004, 0.004874, 0.329415],
        [0.277018, 0.050344, 0.375715],
        [0.282327, 0.094955, 0.417331],
        [0.282884, 0.135920, 0.453427],
        [0.278826, 0.175490, 0.483397],
        [0.270595, 0.214069, 0.507052],
        [0.258965, 0.251537, 0.524736],
        [0.244972, 0.287675, 0.537260],
        [0.229739, 0.322361, 0.545706],
        [0.214298, 0.355619, 0.551184],
        [0.199430, 0.387607, 0.554642],
        [0.185556, 0.418570, 0.556753],
        [0.172719, 0.448791, 0.557885],
        [0.160665, 0.478540, 0.558115],
        [0.149039, 0.508051, 0.557250],
        [0.137770, 0.537492, 0.554906],
        [0.127568, 0.566949, 0.550556],
        [0.120565, 0.596422, 0.543611],
        [0.120638, 0.625828, 0.533488],
        [0.132268, 0.655014, 0.519661],
        [0.157851, 0.683765, 0.501686],
        [0.196571, 0.711827, 0.479221],
        [0.246070, 0.738910, 0.452024],
        [0.304148, 0.764704, 0.419943],
        [0.369214, 0.788888, 0.382914],
        [0.440137, 0.811138, 0.340967],
        [0.515992, 0.831158, 0.294279],
        [0.595839, 0.848717, 0.243329],
        [0.678489, 0.863742, 0.189503],
        [0.762373, 0.876424, 0.137064],
        [0.845561, 0.887322, 0.099702],
        [0.926106, 0.897330, 0.104071],
        [0.993248, 0.906157, 0.143936],
    ]
)
# where each stop sits on 0..1: entries 0, 8, ..., 248 and 255 of the 256-entry table
VIRIDIS_AT = np.r_[np.arange(0, 256, 8), 255] / 255.0


def colorize(values: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> uint8 RGB [H, W, 3] on the viridis colour map (NaN as 0)."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0, 1)
    rgb = np.stack([np.interp(v, VIRIDIS_AT, VIRIDIS_STOPS[:, c]) for c in range(3)], axis=-1)
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
