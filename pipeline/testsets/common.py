"""What every test-set reader shares: the item type of a clip, errors and counted skips, and the
media helpers that load a clip, an image or an object mask on demand.

Readers list items and check that every file is there; media are loaded only when an item is
used, so a reader is cheap to build and a test set of thousands of items never sits in memory at
once. An item with a missing or unusable file is skipped and *counted* (``Skipped`` names it and
says why); ``strict=True`` turns the first one into an error instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from pipeline import audio
from pipeline import format as fmt
from pipeline import image as pimage

MASK_SIZE = 224  # the metric's resolution: 224 x 224 centre crop (reference §5)
MASK_THRESHOLD = 128  # IS3 masks are JPEGs: grey levels around the edges


class DatasetError(ValueError):
    """A test set is missing, incomplete or not in the expected layout."""


@dataclass
class Skipped:
    item: str
    reason: str

    def as_dict(self) -> dict:
        return {"item": self.item, "reason": self.reason}


def find_dir(root: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of ``names`` that is a folder of ``root``; an error lists them all."""
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(
        f"{root}: no {what} folder (looked for {', '.join(n + '/' for n in names)}); "
        "is this the root of the data set as published?"
    )


def raise_if_strict(skipped: list[Skipped], strict: bool, where: Path) -> None:
    if skipped and strict:
        first = skipped[0]
        raise DatasetError(
            f"{where}: {first.item}: {first.reason} "
            f"({len(skipped)} item(s) with problems; run without strict to skip them)"
        )


# ---------------------------------------------------------------------------------------------
# clips


@dataclass
class Clip:
    """A standardized clip: 16 kHz mono float32, exactly ``fmt.CLIP_SAMPLES`` long."""

    audio: np.ndarray
    valid: int  # real (not padded) samples at the start


def standardize_clip(samples: np.ndarray, sample_rate: int, where: str = "audio") -> Clip:
    """Any audio ([samples] or [channels, samples], any rate) -> a standardized clip, through the
    project's one definition of a usable clip (``pipeline.audio.standardize``)."""
    try:
        clip, seconds = audio.standardize(samples, sample_rate)
    except audio.BadAudio as exc:
        raise DatasetError(f"{where}: {exc}") from exc
    return Clip(clip, int(min(fmt.CLIP_SAMPLES, round(seconds * fmt.SAMPLE_RATE))))


def load_clip(path: Path) -> Clip:
    """Decode any audio file (libsndfile, else ffmpeg) and standardize it; errors name the file."""
    try:
        samples, sr = audio.read(path)
    except audio.BadAudio as exc:
        raise DatasetError(str(exc)) from exc
    return standardize_clip(samples, sr, str(path))


def probe_audio(path: Path) -> str | None:
    """Why an audio file cannot be used (unreadable header, shorter than ``MIN_DURATION_S``), or
    None. Only WAV/FLAC headers are read (cheap); other formats are checked when decoded."""
    if Path(path).suffix.lower() not in (".wav", ".flac"):
        return None
    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable header is a reason to skip
        return f"unreadable audio {Path(path).name} ({exc})"
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if seconds < fmt.MIN_DURATION_S:
        return f"audio {Path(path).name} is {seconds:.2f} s, shorter than {fmt.MIN_DURATION_S} s"
    return None


# ---------------------------------------------------------------------------------------------
# images and masks


def open_image(path: Path) -> Image.Image:
    """A test-set picture, decoded to RGB at full resolution (the evaluation transform resizes
    it). The pixel limit and the evaluation size check read the header first, so a decompression
    bomb or a 1x500 strip is refused before decoding, as a ``DatasetError`` naming the file."""
    try:
        with pimage.open_image(path) as im:
            pimage.check_eval_size(*im.size, name=str(path))
            im.load()
            return pimage.to_rgb(im)  # by each mode's value range (a 16-bit PNG is scaled, not clipped)
    except pimage.BadImage as exc:
        raise DatasetError(str(exc)) from exc


def resize_crop_labels(labels: np.ndarray, size: int = MASK_SIZE, name: str = "mask") -> np.ndarray:
    """A label/mask array through the evaluation transform's geometry (``pipeline.image.centre_crop``)
    with nearest-neighbour sampling, as DenseAV's ``Resize(size, NEAREST)`` + ``CenterCrop(size)``
    of its annotation pictures: PIL picks the same source pixels whatever the values, so the result
    is aligned pixel for pixel with the image and no label value is invented."""
    h, w = labels.shape
    try:
        crop = pimage.centre_crop(w, h, size, name)
    except pimage.BadImage as exc:
        raise DatasetError(str(exc)) from exc
    # PIL's 32-bit integer mode holds ADE20K's class ids (< 6,656) and 0/1 masks alike
    picture = Image.fromarray(np.ascontiguousarray(labels, dtype=np.int32))
    if picture.size != crop.resized:
        picture = picture.resize(crop.resized, Image.NEAREST)
    return np.asarray(picture.crop(crop.box)).astype(labels.dtype)


def load_binary_mask(path: Path, size: int = MASK_SIZE) -> np.ndarray:
    """A JPEG/PNG object mask -> bool [size, size] (grey >= 128 is the object)."""
    try:
        with pimage.open_image(path) as im:
            grey = np.asarray(im.convert("L"))
    except pimage.BadImage as exc:
        raise DatasetError(str(exc)) from exc
    return resize_crop_labels(grey >= MASK_THRESHOLD, size, str(path))
