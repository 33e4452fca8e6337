"""DenseAV's ADE20K prompted sets: the layout (one owner: the synthetic world's writer takes the
names from here), the reader and ADE20K's RGB-encoded class masks.

``ADE20KSpeechPrompted/`` and ``ADE20KSoundPrompted/`` each hold ``prompted_segmentation.csv``
(one row per prompt: image, audio file, ADE class, and for speech the object word's timing),
``frames/`` images, ``annotations/<image>_seg.png`` class masks and ``audio/`` prompts.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.testsets.common import MASK_SIZE, DatasetError, Skipped, probe_audio, raise_if_strict, resize_crop_labels

ADE_KINDS = {
    "speech": ("ADE20KSpeechPrompted", "speech_prompt_file"),
    "sound": ("ADE20KSoundPrompted", "vggsound_file"),
}
ADE_CSV = "prompted_segmentation.csv"


def decode_ade_classes(rgb: np.ndarray) -> np.ndarray:
    """ADE20K's RGB-encoded segmentation -> class ids: class = floor(R / 10) * 256 + G."""
    rgb = np.asarray(rgb).astype(np.int64)
    return (rgb[..., 0] // 10) * 256 + rgb[..., 1]


def load_ade_class_mask(path: Path, size: int = MASK_SIZE) -> np.ndarray:
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return resize_crop_labels(decode_ade_classes(rgb), size)


@dataclass
class PromptedItem:
    row: int  # line of the CSV (data rows counted from 0)
    image_path: Path
    annotation_path: Path
    audio_path: Path
    class_id: int
    class_name: str
    timing: tuple[float, float] | None  # object word [start, end] s (speech set)


@dataclass
class PromptedSet:
    kind: str  # "speech" or "sound"
    root: Path
    items: list[PromptedItem]
    dropped_by_protocol: int = 0  # empty prompt or class 0: DenseAV drops these
    skipped: list[Skipped] = field(default_factory=list)


def _parse_timing(value: str, where: str) -> tuple[float, float] | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        t = json.loads(value)
        return float(t[0]), float(t[1])
    except (ValueError, TypeError, IndexError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{where}: timing {value!r} is not a JSON [start, end] pair") from exc


def read_ade20k_prompted(root: Path, kind: str, strict: bool = False) -> PromptedSet:
    """Read ``ADE20KSpeechPrompted`` (kind ``speech``) or ``ADE20KSoundPrompted`` (``sound``).

    ``root`` may be the set's own folder or the folder holding it.
    """
    if kind not in ADE_KINDS:
        raise ValueError(f"kind must be one of {tuple(ADE_KINDS)}, got {kind!r}")
    folder, audio_col = ADE_KINDS[kind]
    root = Path(root)
    if not (root / ADE_CSV).is_file() and (root / folder / ADE_CSV).is_file():
        root = root / folder
    csv_path = root / ADE_CSV
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path} not found: point at the {folder}/ folder as published by DenseAV")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        need = {"image_location", audio_col, "ade_class_id"} | ({"timing"} if kind == "speech" else set())
        if not need <= columns:
            raise DatasetError(
                f"{csv_path} lacks column(s) {sorted(need - columns)} (has {sorted(columns)}); is this the {kind} set?"
            )
        rows = list(reader)
    name_col = next((c for c in ("ade_class_name", "class_name", "object", "name") if c in columns), None)
    items, skipped, dropped = [], [], 0
    for i, row in enumerate(rows):
        prompt = (row.get(audio_col) or "").strip()
        try:
            class_id = int(float(row["ade_class_id"]))
        except ValueError as exc:
            raise DatasetError(f"{csv_path} row {i}: ade_class_id {row['ade_class_id']!r} is not a number") from exc
        if not prompt or class_id == 0:
            dropped += 1
            continue
        image_location = row["image_location"]
        image_path = root / "frames" / image_location
        annotation_path = root / "annotations" / (image_location.rsplit(".", 1)[0] + "_seg.png")
        audio_path = root / "audio" / prompt.replace("\\", "/").split("/")[-1]
        missing = [str(p.relative_to(root)) for p in (image_path, annotation_path, audio_path) if not p.is_file()]
        if missing:
            skipped.append(Skipped(f"row {i}", "missing " + ", ".join(missing)))
            continue
        bad = probe_audio(audio_path)
        if bad:
            skipped.append(Skipped(f"row {i}", bad))
            continue
        timing = _parse_timing(row.get("timing", ""), f"{csv_path} row {i}") if kind == "speech" else None
        if kind == "speech" and timing is None:
            skipped.append(Skipped(f"row {i}", "no word timing for the object"))
            continue
        items.append(
            PromptedItem(
                i,
                image_path,
                annotation_path,
                audio_path,
                class_id,
                (row.get(name_col) or str(class_id)) if name_col else str(class_id),
                timing,
            )
        )
    raise_if_strict(skipped, strict, csv_path)
    if not items:
        raise DatasetError(
            f"{csv_path}: no usable row ({dropped} dropped by protocol, {len(skipped)} with "
            f"missing files{': ' + skipped[0].reason if skipped else ''})"
        )
    return PromptedSet(kind, root, items, dropped, skipped)
