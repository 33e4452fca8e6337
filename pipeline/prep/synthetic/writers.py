"""Writers of the generated world, each in a real format read by the project's real readers.

- shard sets (``speech/train``, ``sound/val``, ...): through ``pipeline.prep.build.build_shards``,
  read by ``pipeline.data.loader`` and ``pipeline.testsets.retrieval.read_retrieval_set``;
- an Extended-IS3 tree: read by ``pipeline.testsets.is3.read_is3``;
- DenseAV's ADE20K prompted sets (speech and sound): read by
  ``pipeline.testsets.ade20k.read_ade20k_prompted``.

Tree items are rendered in worker processes that write their own files; the index files
(``speech_prompts.json``, ``prompted_segmentation.csv``) are written last, in item order.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from pipeline import audio as audio_io
from pipeline import format as fmt
from pipeline.atomic import write_atomic, write_json
from pipeline.prep.build import build_shards
from pipeline.prep.pool import new_pool
from pipeline.prep.shard import BuildSummary
from pipeline.prep.synthetic.samples import load_pair, render_eval_scene, sample_key
from pipeline.prep.synthetic.world import SetPlan, WorldConfig, object_class
from pipeline.progress import progress_bar
from pipeline.testsets.ade20k import ADE_CSV, ADE_KINDS
from pipeline.testsets.is3 import SPEECH_DIR, SPEECH_PROMPTS_FILE

MASK_JPEG_QUALITY = 95  # IS3 masks are JPEGs; high quality keeps the thresholded mask exact


# ---------------------------------------------------------------------------------------------
# shards


def write_shard_set(plan: SetPlan, cfg: WorldConfig, out_dir: Path, workers: int, progress: bool) -> BuildSummary:
    load = functools.partial(load_pair, cfg.to_dict())
    return build_shards(
        plan.items,
        load,
        out_dir,
        key=sample_key,
        shard_size=cfg.shard_size,
        workers=workers,
        desc=plan.name,
        progress=progress,
    )


# ---------------------------------------------------------------------------------------------
# small file helpers


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _wav16k(audio: np.ndarray, sample_rate: int) -> bytes:
    """16 kHz mono PCM-16 WAV bytes."""
    audio = audio_io.resample(np.asarray(audio, dtype=np.float32), sample_rate, fmt.SAMPLE_RATE)
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), fmt.SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def map_items(fn: Callable, items: list, workers: int, desc: str, progress: bool) -> Iterable:
    """``fn`` over ``items`` in the project's process pool (``pipeline.prep.pool.new_pool``: its
    workers die with this process; ``workers=0``: in this process), results in order, with a
    progress bar."""
    bar = progress_bar(len(items), desc, progress, unit="item")
    try:
        if workers <= 0 or len(items) <= 1:
            for item in items:
                yield fn(item)
                bar.update(1)
            return
        with new_pool(workers) as pool:
            for result in pool.map(fn, items, chunksize=max(1, min(8, len(items) // (4 * workers)))):
                yield result
                bar.update(1)
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# Extended IS3


def is3_stem(classes: list[str], index: int, target: str) -> str:
    """``<classA>_<classB>_<id>_<target>``, as IS3 names its files."""
    return f"{classes[0]}_{classes[1]}_{index:05d}_{target}"


def _is3_item(cfg: dict, root: str, item: dict) -> dict:
    media = render_eval_scene(cfg, item)
    root_p = Path(root)
    image_jpeg = _jpeg(media.scene.image, fmt.JPEG_QUALITY)
    entries, shares = {}, []
    for k, target in enumerate(media.classes):
        stem = is3_stem(media.classes, item["index"], target)
        mask = Image.fromarray(np.where(media.scene.masks[k], 255, 0).astype(np.uint8), "L")
        _write_bytes(root_p / "images" / f"{stem}.jpg", image_jpeg)
        _write_bytes(root_p / "gt_segmentation" / f"{stem}.jpg", _jpeg(mask, MASK_JPEG_QUALITY))
        _write_bytes(root_p / "audio_wav" / f"{stem}.wav", _wav16k(media.sounds[k], fmt.SAMPLE_RATE))
        said = media.prompts[k]
        _write_bytes(root_p / SPEECH_DIR / f"{stem}.wav", _wav16k(said.audio, said.sample_rate))
        entries[stem] = {
            "class": target,
            "phrase": said.phrase,
            "text": said.text,
            "words": said.words,
            "object_span": [round(said.object_span[0], 4), round(said.object_span[1], 4)],
            "voice": said.voice,
            "rate_wpm": said.rate_wpm,
        }
        shares.append(float(media.scene.masks[k].mean()))
    return {"entries": entries, "shares": shares, "timing": media.prompts[0].timing}


def write_is3(plan: SetPlan, cfg: WorldConfig, root: Path, workers: int, progress: bool) -> dict:
    """An Extended-IS3 tree: per image two annotations (one per object), each with the image,
    the object's JPEG mask, its sound and its spoken name; ``speech_prompts.json`` last."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("images", "gt_segmentation", "audio_wav", SPEECH_DIR):
        (root / name).mkdir(exist_ok=True)
    fn = functools.partial(_is3_item, cfg.to_dict(), str(root))
    items, shares, timings = {}, [], set()
    for result in map_items(fn, plan.items, workers, "is3", progress):
        items.update(result["entries"])
        shares += result["shares"]
        timings.add(result["timing"])
    voices = sorted({e["voice"] for e in items.values()})
    write_json(
        root / SPEECH_PROMPTS_FILE,
        {
            "backend": "espeak",
            "voice": ",".join(voices),
            "template": "a picture of {article} {phrase}",
            "sample_rate": fmt.SAMPLE_RATE,
            "timing": timings.pop() if len(timings) == 1 else sorted(timings),
            "items": items,
        },
    )
    return {"images": len(plan.items), "annotations": len(items), "mean_mask_share": _mean(shares)}


# ---------------------------------------------------------------------------------------------
# DenseAV ADE20K prompted sets


def ade_names(index: int) -> tuple[str, str]:
    """(image_location, annotation file) of a generated ADE20K-layout image."""
    stem = f"ADE_synth_{index:08d}"
    return f"{stem}.jpg", f"{stem}_seg.png"


def ade_label_image(labels: np.ndarray, instances: np.ndarray) -> Image.Image:
    """ADE20K's RGB class encoding: R = floor(class / 256) * 10, G = class % 256, B = instance."""
    rgb = np.zeros(labels.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = (labels // 256) * 10
    rgb[..., 1] = labels % 256
    rgb[..., 2] = instances
    return Image.fromarray(rgb, "RGB")


def _ade_item(cfg: dict, root: str, kind: str, item: dict) -> dict:
    media = render_eval_scene(cfg, item, with_sound=kind == "sound", with_speech=kind == "speech")
    root_p = Path(root)
    image_location, seg_name = ade_names(item["index"])
    ids = [object_class(c).ade_class_id for c in media.classes]
    labels = media.scene.label_map(ids)
    instances = media.scene.label_map(list(range(1, len(ids) + 1))).astype(np.uint8)
    _write_bytes(root_p / "frames" / image_location, _jpeg(media.scene.image, fmt.JPEG_QUALITY))
    png = io.BytesIO()
    ade_label_image(labels, instances).save(png, format="PNG")
    _write_bytes(root_p / "annotations" / seg_name, png.getvalue())
    rows, shares = [], []
    for k, name in enumerate(media.classes):
        audio_name = f"{Path(image_location).stem}_{name}.wav"
        if kind == "speech":
            said = media.prompts[k]
            _write_bytes(root_p / "audio" / audio_name, _wav16k(said.audio, said.sample_rate))
            extra = {
                "timing": json.dumps([round(said.object_span[0], 4), round(said.object_span[1], 4)]),
                "text": said.text,
            }
        else:
            _write_bytes(root_p / "audio" / audio_name, _wav16k(media.sounds[k], fmt.SAMPLE_RATE))
            extra = {}
        rows.append(
            {
                "image_location": image_location,
                ADE_KINDS[kind][1]: audio_name,
                "ade_class_id": ids[k],
                "ade_class_name": name,
                **extra,
            }
        )
        shares.append(float(media.scene.masks[k].mean()))
    return {"rows": rows, "shares": shares}


def write_ade20k(plan: SetPlan, cfg: WorldConfig, parent: Path, kind: str, workers: int, progress: bool) -> dict:
    """DenseAV's ``ADE20KSpeechPrompted/`` or ``ADE20KSoundPrompted/`` under ``parent``: one CSV
    row per (image, object); ``prompted_segmentation.csv`` last."""
    folder, audio_col = ADE_KINDS[kind]
    root = parent / folder
    for name in ("frames", "annotations", "audio"):
        (root / name).mkdir(parents=True, exist_ok=True)
    fn = functools.partial(_ade_item, cfg.to_dict(), str(root), kind)
    rows, shares = [], []
    for result in map_items(fn, plan.items, workers, f"ade20k/{kind}", progress):
        rows += result["rows"]
        shares += result["shares"]
    columns = ["image_location", audio_col, "ade_class_id", "ade_class_name"] + (
        ["timing", "text"] if kind == "speech" else []
    )
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(root / ADE_CSV, text.getvalue())
    return {"images": len(plan.items), "rows": len(rows), "mean_mask_share": _mean(shares), "path": str(root)}


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 6) if values else 0.0
