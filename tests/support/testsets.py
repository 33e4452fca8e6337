"""Miniature test sets in their published layouts, generated on the fly for the evaluation tests.

Every tree is small (a handful of items, images of a few dozen pixels) but follows the real
layout: file names, folder names, CSV columns, JSON fields, encodings.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from pipeline import format as fmt
from pipeline import shard_dir

# (classA, classB, id or None): the real release has both 4-token and 3-token stems, and target
# tokens that differ from the class strings (subwaytrain -> subway)
IS3_IMAGES = [
    ("acousticguitar", "dog", "7514", ("acousticguitar", "dog")),
    ("fireworks", "subwaytrain", "10415", ("firework", "subway")),
    ("gibbon", "drum", None, ("gibbon", "drum")),
]


def _tone(seconds: float, rate: int, freq: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def is3_stems() -> list[str]:
    stems = []
    for a, b, ident, targets in IS3_IMAGES:
        prefix = "_".join(x for x in (a, b, ident) if x)
        stems += [f"{prefix}_{t}" for t in targets]
    return stems


# what the oracle model of oracle_model.py reads back: object colours and tones
IS3_SOUND_HZ = (300.0, 500.0)  # sound of the left / right object
IS3_SPEECH_HZ = (180.0, 220.0)  # "speech" naming the left / right object
ADE_BASE_HZ = 700.0  # ADE prompts: 700, 750, 800 Hz
RETRIEVAL_BASE_HZ = {"speech": 2000.0, "sound": 4000.0, "music": 6000.0}  # pair i: base + 20 i Hz


def _noisy(rng: np.random.Generator, h: int, w: int, rgb) -> np.ndarray:
    base = np.broadcast_to(np.asarray(rgb, np.int16), (h, w, 3))
    return np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def make_is3_tree(
    root: Path, extended: bool = True, audio_dir: str = "audio_wav", size: int = 48, seed: int = 0
) -> Path:
    """IS3 (and, with ``extended``, the spoken prompts) for the images in ``IS3_IMAGES``.

    The two objects of an image occupy its left (red) and right (blue) halves; masks are JPEGs.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for d in ("images", audio_dir, "gt_segmentation") + (("speech_wav",) if extended else ()):
        (root / d).mkdir(parents=True, exist_ok=True)
    items = {}
    for a, b, ident, targets in IS3_IMAGES:
        prefix = "_".join(x for x in (a, b, ident) if x)
        pixels = _noisy(rng, size, size, (128, 128, 128))
        pixels[:, : size // 2] = _noisy(rng, size, size // 2, (220, 30, 30))
        pixels[:, size // 2 :] = _noisy(rng, size, size - size // 2, (30, 30, 220))
        picture = Image.fromarray(pixels)
        for side, target in enumerate(targets):
            stem = f"{prefix}_{target}"
            picture.save(root / "images" / f"{stem}.jpg")  # one copy per annotation, as published
            mask = np.zeros((size, size), np.uint8)
            mask[:, side * size // 2 : (side + 1) * size // 2] = 255
            Image.fromarray(mask).save(root / "gt_segmentation" / f"{stem}.jpg", quality=90)
            # sound at 22,050 Hz stereo, shorter than a clip: the reader must standardize it
            sf.write(root / audio_dir / f"{stem}.wav", _tone(2.0, 22050, IS3_SOUND_HZ[side], 2), 22050)
            if extended:
                sf.write(root / "speech_wav" / f"{stem}.wav", _tone(0.8, 16000, IS3_SPEECH_HZ[side]), 16000)
                items[stem] = {
                    "class": target,
                    "phrase": target,
                    "words": [{"word": target, "start": 0.1, "end": 0.7}],
                    "object_span": [0.1, 0.7],
                }
    if extended:
        (root / "speech_prompts.json").write_text(
            json.dumps({"backend": "test", "voice": "none", "items": items}, indent=1)
        )
    return root


ADE_CLASSES = {"speech": [(2978, "person"), (1, "wall"), (724, "dog")], "sound": [(724, "dog"), (2978, "person")]}


def encode_ade_classes(classes: np.ndarray) -> np.ndarray:
    """Class ids -> ADE20K's RGB encoding (R = class // 256 * 10, G = class % 256)."""
    rgb = np.zeros(classes.shape + (3,), np.uint8)
    rgb[..., 0] = (classes // 256) * 10
    rgb[..., 1] = classes % 256
    return rgb


def make_ade_tree(parent: Path, kind: str, seed: int = 0) -> Path:
    """A DenseAV prompted set with usable rows, a class-0 row and an empty-prompt row."""
    rng = np.random.default_rng(seed)
    folder = {"speech": "ADE20KSpeechPrompted", "sound": "ADE20KSoundPrompted"}[kind]
    root = Path(parent) / folder
    for d in ("frames/validation", "annotations/validation", "audio"):
        (root / d).mkdir(parents=True, exist_ok=True)
    col = "speech_prompt_file" if kind == "speech" else "vggsound_file"
    rows = []
    for i, (class_id, name) in enumerate(ADE_CLASSES[kind]):
        loc = f"validation/ADE_val_{i:08d}.jpg"
        w, h = 64 + 16 * i, 48  # not square: the mask must follow the image's resize + crop
        pixels = _noisy(rng, h, w, (128, 128, 128))
        pixels[:, w // 3 : 2 * w // 3] = _noisy(rng, h, 2 * w // 3 - w // 3, (30, 220, 30))  # the object
        Image.fromarray(pixels).save(root / "frames" / loc, quality=95)
        classes = np.full((h, w), 5, np.int64)
        classes[:, w // 3 : 2 * w // 3] = class_id
        Image.fromarray(encode_ade_classes(classes)).save(root / "annotations" / loc.replace(".jpg", "_seg.png"))
        audio_name = f"prompt_{i}.wav"
        rate = 16000 if kind == "speech" else 44100
        sf.write(root / "audio" / audio_name, _tone(3.0, rate, ADE_BASE_HZ + 50 * i), rate)
        rows.append(
            {
                "image_location": loc,
                col: f"some/where/{audio_name}",
                "ade_class_id": class_id,
                "ade_class_name": name,
                "timing": json.dumps([1.0, 1.5]) if kind == "speech" else "",
            }
        )
    rows.append(
        {
            "image_location": "validation/ADE_val_00000000.jpg",
            col: "x/prompt_0.wav",
            "ade_class_id": 0,
            "ade_class_name": "-",
            "timing": "[0, 1]",
        }
    )  # class 0: dropped
    rows.append(
        {
            "image_location": "validation/ADE_val_00000001.jpg",
            col: "",
            "ade_class_id": 1,
            "ade_class_name": "wall",
            "timing": "",
        }
    )  # no prompt: dropped
    with (root / "prompted_segmentation.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["image_location", col, "ade_class_id", "ade_class_name", "timing"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def make_retrieval_shards(
    out: Path, n: int, audio_type: str, shard_size: int = 4, unfinished: bool = True
) -> list[str]:
    """Committed shards of ``n`` samples (plus one unfinished shard), as ``prep`` writes them.

    Returns the keys in shard order. Sample ``i`` has a tone at ``RETRIEVAL_BASE_HZ[type] + 20 i``
    Hz and a plain image of red level 10 i, so tests (and the oracle model) can tell pairs apart.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = []
    for shard in range((n + shard_size - 1) // shard_size):
        with tarfile.open(shard_dir.tar_path(out, shard), "w") as tar:
            for i in range(shard * shard_size, min(n, (shard + 1) * shard_size)):
                key = f"{audio_type}_{i:04d}"
                audio = np.zeros(fmt.CLIP_SAMPLES, np.float32)
                dur = 2.0 + (i % 5)
                audio[: int(dur * fmt.SAMPLE_RATE)] = _tone(
                    dur, fmt.SAMPLE_RATE, RETRIEVAL_BASE_HZ[audio_type] + 20 * i
                )
                img = np.full((fmt.IMAGE_SHORT_SIDE, 300, 3), 128, np.uint8)
                img[..., 0] = (10 * i) % 256
                meta = {
                    "source": "test",
                    "source_id": key,
                    "audio_type": audio_type,
                    "clip_start": 0.0,
                    "clip_end": dur,
                    "duration": dur,
                    "orig_sample_rate": 16000,
                    "orig_channels": 1,
                }
                sample = fmt.encode_sample(key, audio, Image.fromarray(img), meta)
                for ext in fmt.MEMBER_EXTS:
                    _add(tar, f"{key}.{ext}", sample[ext])
                keys.append(key)
        shard_dir.parquet_path(out, shard).write_bytes(b"")  # not read by the evaluator
        shard_dir.stats_path(out, shard).write_text(json.dumps({"ok": True}))
    if unfinished:
        with tarfile.open(shard_dir.tar_path(out, 999999), "w") as tar:
            _add(tar, "partial_0.json", b"{}")
    return keys


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
