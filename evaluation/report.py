"""Outputs of an evaluation run: ``results.json``, Markdown tables laid out like the paper's,
heatmap archives (npz) and overlay pictures (PNG) like the paper's Figure 3.

``results.json`` holds one section per experiment (``table1`` ... ``table7``,
``disentanglement``); running another experiment into the same folder adds or replaces its
section and leaves the others, and ``tables.md`` is rebuilt from the whole file each time.
Numbers are stored as fractions (0..1) and printed in the tables as percentages.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RESULTS_FILE = "results.json"
TABLES_FILE = "tables.md"


# ---------------------------------------------------------------------------------------------
# results.json


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) else v
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_results(out_dir: Path) -> dict:
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); move it away or pick another --out") from exc


def write_section(out_dir: Path, name: str, section: dict) -> dict:
    """Add or replace one experiment's section, then rewrite results.json and tables.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = load_results(out_dir)
    results[name] = _jsonable(section)
    _atomic_write(out_dir / RESULTS_FILE, json.dumps(results, indent=2, sort_keys=True) + "\n")
    _atomic_write(out_dir / TABLES_FILE, markdown_tables(results))
    return results


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Markdown


def pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * float(value):.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _note(section: dict) -> str:
    parts = [f"normalization: {section.get('normalization', 'n/a')}"]
    for key, value in sorted(section.get("settings", {}).items()):
        parts.append(f"{key}: {value}")
    counts = section.get("counts", {})
    if counts:
        parts.append("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "_" + "; ".join(parts) + "_"


def _seg(d: dict | None) -> list[str]:
    d = d or {}
    return [pct(d.get("mAP")), pct(d.get("mIoU"))]


def _table1(s: dict) -> str:
    out = []
    for pairing, r in sorted(s["results"].items()):
        out.append(f"**{pairing}-object pairs**\n")
        out.append(_table(
            ["Method", "Sim-Sound mAP", "Sim-Sound mIoU", "Sim-Speech mAP", "Sim-Speech mIoU"],
            [[s["label"], *_seg(r["sound"]), *_seg(r["speech"])]]))
        extras = []
        for kind in ("sound", "speech"):
            e = r[kind].get("extras", {})
            extras.append([s["label"], kind, pct(e.get("cIoU")), pct(e.get("AUC")), pct(e.get("IIoU")),
                           pct(e.get("cIoU_adaptive")), pct(e.get("AUC_adaptive"))])
        out.append("\n" + _table(["Method", "head", "cIoU", "AUC", "IIoU", "cIoU (adaptive)", "AUC (adaptive)"],
                                 extras))
        out.append(f"\nBoth heads localized (IoU >= 0.5) in the same query: {pct(r.get('joint_hit'))}\n")
        opp = r.get("opposite_head")
        if opp:
            out.append("Each object scored with the other head (lower than the right head = disentangled):\n")
            out.append(_table(["Method", "speech head on the sounding object mAP", "mIoU",
                               "sound head on the named object mAP", "mIoU"],
                              [[s["label"], *_seg(opp.get("sound")), *_seg(opp.get("speech"))]]))
    return "\n".join(out)


def _table_seg(s: dict) -> str:
    r = s["results"]
    sound, speech = r.get("sound", {}), r.get("speech", {})
    main = _table(
        ["Method", "Sound Total mAP", "Total mIoU", "Sound Head mAP", "Sound Head mIoU",
         "Speech Total mAP", "Total mIoU", "Speech Head mAP", "Speech Head mIoU"],
        [[s["label"], *_seg(sound.get("total")), *_seg(sound.get("head")),
          *_seg(speech.get("total")), *_seg(speech.get("head"))]])
    text = main + "\n\nSpeech over the object word's frames (\"advanced\"); over all frames (\"basic\"):\n\n"
    text += _table(["Method", "Total mAP (basic)", "Total mIoU (basic)", "Speech Head mAP (basic)",
                    "Speech Head mIoU (basic)"],
                   [[s["label"], *_seg(speech.get("basic_total")), *_seg(speech.get("basic_head"))]])
    return text


def _recall_cells(r: dict | None, k: int = 10) -> list[str]:
    r = r or {}
    return [pct(r.get("I->A", {}).get(str(k))), pct(r.get("A->I", {}).get(str(k)))]


def _table_retrieval(s: dict) -> str:
    r = s["results"]
    a, p = r.get("audioset", {}), r.get("places", {})
    main = _table(["Method", "AudioSet Total I→A", "A→I", "Sound I→A", "A→I",
                   "Places Total I→A", "A→I", "Speech I→A", "A→I"],
                  [[s["label"], *_recall_cells(a.get("total")), *_recall_cells(a.get("sound_head")),
                    *_recall_cells(p.get("total")), *_recall_cells(p.get("speech_head"))]])
    rows = []
    for set_name, d in (("AudioSet", a), ("Places", p)):
        for head, rr in sorted(d.items()):
            rows.append([set_name, head] + [pct(rr[direction][str(k)]) for direction in ("I->A", "A->I")
                                            for k in (1, 5, 10)])
    full = _table(["set", "scores", "I→A R@1", "R@5", "R@10", "A→I R@1", "R@5", "R@10"], rows)
    return main + "\n\nAll heads, R@1/5/10:\n\n" + full


def _table6(s: dict) -> str:
    r = s["results"]
    row = [s["label"]]
    for cond in ("clean", "mixed"):
        c = r.get(cond, {})
        row += _recall_cells(c.get("places", {}).get("sound_head")) + _recall_cells(
            c.get("audioset", {}).get("speech_head"))
    table = _table(["Method", "Clean Places Sound I→A", "A→I", "Clean AudioSet Speech I→A", "A→I",
                    "Mixed Places Sound I→A", "A→I", "Mixed AudioSet Speech I→A", "A→I"], [row])
    d = r.get("disentanglement")
    if d:
        table += f"\n\nPred.Dis {pct(d.get('pred_dis'))}, Act.Dis {pct(d.get('act_dis'))}"
    return table


def _table7(s: dict) -> str:
    rows_a, rows_b = [], []
    for row in s["results"]["rows"]:
        rows_a.append([row["label"], *_recall_cells(row.get("audioset_sound_head"))])
        rows_b.append([row["label"], *_recall_cells(row.get("places_sound_head"))])
    return ("(a) AudioSet, sound head\n\n" + _table(["Method", "I→A", "A→I"], rows_a)
            + "\n\n(b) Places, sound head\n\n" + _table(["Method", "I→A", "A→I"], rows_b))


def _disentanglement(s: dict) -> str:
    r = s["results"]
    return _table(["Method", "Pred.Dis", "Act.Dis"], [[s["label"], pct(r["pred_dis"]), pct(r["act_dis"])]])


TITLES = {
    "table1": ("Table 1. Simultaneous audio-visual segmentation (Extended IS3, mixed audio)", _table1),
    "table2": ("Table 2. Audio-visual semantic segmentation with individual audio (ADE20K)", _table_seg),
    "table3": ("Table 3. Cross-modal retrieval R@10 (clean)", _table_retrieval),
    "table4": ("Table 4. Semantic segmentation with off-screen audio mixed in (ADE20K)", _table_seg),
    "table5": ("Table 5. Cross-modal retrieval R@10 with off-screen audio mixed in", _table_retrieval),
    "table6": ("Table 6. Disentanglement: retrieval R@10 with the opposite head (lower is better)", _table6),
    "table7": ("Table 7. Ablation of the training losses (sound head, R@10)", _table7),
    "disentanglement": ("Pred.Dis / Act.Dis (DenseAV protocol)", _disentanglement),
}


def markdown_tables(results: dict) -> str:
    parts = ["# Evaluation results\n", "Numbers are percentages.\n"]
    for name, (title, render) in TITLES.items():
        section = results.get(name)
        if not section:
            continue
        parts.append(f"## {title}\n")
        parts.append(render(section) + "\n")
        parts.append(_note(section) + "\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# heatmaps and pictures


def save_heatmaps(path: Path, **arrays) -> Path:
    """Everything the metrics used, compressed; strings are stored as unicode arrays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


# "jet"-like ramp: dark blue -> blue -> cyan -> yellow -> red -> dark red
_JET_STOPS = np.array([[0.0, 0.0, 0.0, 0.5], [0.125, 0.0, 0.0, 1.0], [0.375, 0.0, 1.0, 1.0],
                       [0.625, 1.0, 1.0, 0.0], [0.875, 1.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0]])


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


def overlay_panel(image: Image.Image, heatmap: np.ndarray | None, mask: np.ndarray | None = None,
                  alpha: float = 0.5) -> Image.Image:
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


def save_overlay(path: Path, image: Image.Image, panels: list[tuple[str, np.ndarray | None, np.ndarray | None]],
                 title: str = "") -> Path:
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
