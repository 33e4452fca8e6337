"""Inputs of ``ground``: images, clips and videos from files, arrays or tensors, checked.

Audio of any rate and channel count becomes 16 kHz mono through the project's own decoders
(``pipeline.audio``: libsndfile, else ffmpeg; windowed-sinc resampling). Anything unusable is a
``GroundInputError`` whose one-line message names the input and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from pipeline import audio as paudio
from pipeline import ffmpeg
from pipeline import image as pimage
from pipeline.data.mixing import active_rms
from pipeline.format import MIN_DURATION_S, SAMPLE_RATE

# Longer audio is cut to its first MAX_SECONDS (said in the result's description): HuBERT's
# attention grows with the square of the length and the models train on 10 s clips.
MAX_SECONDS = 30.0
# A clip whose loudest sample stays below -80 dBFS carries nothing to ground.
SILENT_PEAK = 1e-4
MIX_LEVEL = 10 ** (-25.0 / 20)  # each source of a mixture is brought to this active RMS
PEAK_LIMIT = 0.99


class GroundInputError(ValueError):
    """An input ``ground`` cannot use; the message names it and says what to do."""


def _name(source, default: str) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else default


def load_image(image) -> Image.Image:
    """PIL image, numpy ``[H, W, 3]`` (uint8, or float in 0..1), tensor ``[3, H, W]`` / ``[H, W, 3]``
    or a path -> RGB PIL image (EXIF orientation applied)."""
    name = _name(image, "the image")
    if isinstance(image, (str, os.PathLike)):
        try:
            opened = pimage.open_image(image)
            opened.load()
        except pimage.BadImage as exc:
            raise GroundInputError(f"image {image}: {exc}; give a readable JPEG/PNG/WebP file") from exc
        except OSError as exc:  # a truncated file fails while decoding its pixels
            raise GroundInputError(f"image {image} cannot be decoded ({exc}); give a readable image file") from exc
        ImageOps.exif_transpose(opened, in_place=True)  # no second copy of a full-size picture
        image = opened
    elif isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        image = _from_array(array.transpose(1, 2, 0) if array.ndim == 3 and array.shape[0] == 3 else array)
    elif isinstance(image, np.ndarray):
        image = _from_array(image)
    if not isinstance(image, Image.Image):
        raise GroundInputError(f"image of type {type(image).__name__}: give a PIL image, an array, a tensor or a path")
    if min(image.size) < 1:
        raise GroundInputError(f"the image is empty ({image.size[0]}x{image.size[1]} px)")
    try:  # what the evaluation transform refuses (a 1x500 strip would be resized to 224x112000)
        pimage.check_eval_size(*image.size, name=name)
        # by each mode's value range (a 16-bit PNG scaled, not clipped at 255): pipeline.image
        return pimage.to_rgb(image)
    except pimage.BadImage as exc:
        raise GroundInputError(str(exc)) from exc


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim != 3 or array.shape[2] != 3:
        raise GroundInputError(f"image array of shape {array.shape}: expected [H, W, 3]")
    if array.dtype != np.uint8:
        array = (np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def load_audio(audio, sample_rate: int | None = None) -> tuple[np.ndarray, dict]:
    """A path, numpy or tensor ``[samples]`` / ``[channels, samples]`` -> (float32 16 kHz mono,
    what was done to it). Refuses unreadable, silent and too-short audio."""
    name = _name(audio, "audio array")
    if isinstance(audio, (str, os.PathLike)):
        if not Path(audio).is_file():
            raise GroundInputError(f"audio {audio} does not exist; give an audio or video file")
        try:
            samples, sample_rate = paudio.read(audio, end=MAX_SECONDS + 1.0)
        except paudio.BadAudio as exc:
            raise GroundInputError(
                f"audio {audio} cannot be decoded ({exc}); give a WAV/FLAC/MP3/... file or a video with a sound track"
            ) from exc
    else:
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().numpy()
        samples = np.asarray(audio, dtype=np.float32)
        if sample_rate is None:
            raise GroundInputError(f"{name}: give its sample_rate")
    try:
        mono = paudio.to_mono(samples)
    except paudio.BadAudio as exc:
        raise GroundInputError(f"{name}: {exc}") from exc
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise GroundInputError(f"{name}: invalid sample rate {sample_rate!r}")
    if not np.isfinite(mono).all():
        raise GroundInputError(f"{name} holds NaN or infinite samples")
    seconds = mono.shape[0] / sample_rate
    if seconds < MIN_DURATION_S:
        raise GroundInputError(f"{name} is too short ({seconds:.3f} s); give at least {MIN_DURATION_S} s of audio")
    if np.abs(mono).max(initial=0.0) < SILENT_PEAK:
        raise GroundInputError(f"{name} is silent (peak below -80 dBFS); give audio with sound or speech in it")
    notes = {
        "source_rate": int(sample_rate),
        "source_channels": int(1 if samples.ndim == 1 else samples.shape[0]),
        "decoded_s": round(seconds, 6),
    }
    if seconds > MAX_SECONDS:
        mono = mono[: int(MAX_SECONDS * sample_rate)]
        notes["cut_to_s"] = MAX_SECONDS
    clip = paudio.resample(np.ascontiguousarray(mono), int(sample_rate), SAMPLE_RATE).astype(np.float32)
    return clip, notes


def mix(clips: list[np.ndarray]) -> np.ndarray:
    """Equal-loudness mixture of 16 kHz clips: each brought to the same active RMS
    (``pipeline.data.mixing.active_rms``, pauses ignored), summed over the longest one's length, and
    scaled down together if the peak would clip."""
    length = max(c.shape[0] for c in clips)
    padded = torch.zeros(len(clips), length)
    mask = torch.zeros(len(clips), length, dtype=torch.bool)
    for i, c in enumerate(clips):
        padded[i, : c.shape[0]] = torch.from_numpy(c)
        mask[i, : c.shape[0]] = True
    rms = active_rms(padded, mask).clamp_min(1e-8)
    mixture = (padded * (MIX_LEVEL / rms)[:, None]).sum(0)
    peak = float(mixture.abs().max())
    if peak > PEAK_LIMIT:
        mixture *= PEAK_LIMIT / peak
    return mixture.numpy().astype(np.float32)


def video_duration(path: str | os.PathLike) -> float:
    """The duration of a video that has a picture and a sound track, probed from its header before
    anything is decoded (``ground`` grounds a video's picture against its own sound)."""
    found = ffmpeg.probe(path)
    if not (found.video or found.audio):
        raise GroundInputError(
            f"video {path}: no picture, ffmpeg finds no stream in it (not a media file?); "
            "give a video file ffmpeg can read"
        )
    if not found.video:
        raise GroundInputError(
            f"video {path}: no picture (ffmpeg finds no video stream in it); give a video "
            "file, or an image with --image and this file as --audio"
        )
    if not found.audio:
        raise GroundInputError(
            f"video {path} has no sound track; give a video with sound, or a picture of it "
            "with --image and the sound as --audio"
        )
    if found.duration is None or found.duration <= 0:
        raise GroundInputError(f"video {path} declares no duration; give a video file ffmpeg can read")
    return float(found.duration)


def video_frame(path: str | os.PathLike, at: float) -> Image.Image:
    """The frame shown at ``at`` seconds, RGB (the bundled ffmpeg): the last one starting at or
    before it, so a picture that ends before the sound (a single frame) stays shown."""
    try:
        return ffmpeg.extract_frame(path, at).convert("RGB")
    except ffmpeg.FFmpegError as exc:
        raise GroundInputError(f"video {path}: no picture at {at:.2f} s ({exc}); give a video with a picture") from exc
