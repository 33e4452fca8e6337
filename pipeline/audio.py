"""Audio: read any file, then standardize to the shard format (16 kHz mono, exactly 10 s).

``standardize`` is the one place that decides what a usable clip is; the shard builder, the
generated-world builder and the evaluation readers all call it. ``read_clip`` decodes only the
part of a file that ``standardize`` keeps, so a worker's memory is bounded by one clip, not by
the length of the file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline import ffmpeg
from pipeline.format import CLIP_SAMPLES, CLIP_SECONDS, MIN_DURATION_S, SAMPLE_RATE

# libsndfile reads these sample-exactly (frame-accurate seek, no codec delay), so they skip the
# ffmpeg process; everything else (mp3, m4a, video containers, ...) goes through ffmpeg.
SOUNDFILE_EXTS = {".wav", ".flac"}
# Extra input samples kept past the 10 s mark so the resampling filter has real context at the
# clip's end instead of an artificial edge.
_RESAMPLE_CONTEXT = 64
# What ffmpeg decodes past the 10 s mark: at least _RESAMPLE_CONTEXT samples at any rate down to
# 1280 Hz (standardize drops the rest, so reading a little more changes nothing).
_CONTEXT_SECONDS = 0.05


class BadAudio(ValueError):
    """Unusable audio; the message starts with a reason kind (``audio_too_short: ...``)."""


@dataclass(frozen=True)
class Decoded:
    """Decoded audio of a requested range of a file (with ``read_clip``, only its first 10 s)."""

    samples: np.ndarray  # float32 [channels, samples]
    sample_rate: int
    seconds: float  # length of the whole requested range in the file (orig_duration)


def read(path: str | os.PathLike, *, start: float = 0.0, end: float | None = None) -> tuple[np.ndarray, int]:
    """Audio of ``[start, end)`` seconds of a file as float32 ``[channels, samples]`` and its rate.

    Raises BadAudio (``audio_decode: ...``) naming the file when neither libsndfile nor ffmpeg can
    decode it.
    """
    decoded = _decode(path, start, end, clip_only=False)
    return decoded.samples, decoded.sample_rate


def read_clip(path: str | os.PathLike, *, start: float = 0.0, end: float | None = None) -> Decoded:
    """Like ``read``, but decodes only the first CLIP_SECONDS (plus resampling context) of
    ``[start, end)``: ``standardize`` gives the same clip as from the whole range, and a one-hour
    file costs a worker no more memory than a 10 s one. ``seconds`` is the whole range's length:
    exact for WAV/FLAC, else from the container's declared duration (or what was decoded, when it
    declares none).
    """
    return _decode(path, start, end, clip_only=True)


def _decode(path, start: float, end: float | None, *, clip_only: bool) -> Decoded:
    if end is not None and end <= start:
        raise BadAudio(f"audio_range: end {end} <= start {start} for {path}")
    if Path(path).suffix.lower() in SOUNDFILE_EXTS:
        try:
            samples, sr, frames = _read_soundfile(path, start, end, clip_only=clip_only)
            return Decoded(samples, sr, frames / sr)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
            pass  # e.g. a .wav holding a codec libsndfile lacks: ffmpeg may still manage
    cap = CLIP_SECONDS + _CONTEXT_SECONDS
    limit = math.inf if end is None else end
    stop = min(limit, start + cap) if clip_only else end
    try:
        samples, sr = ffmpeg.decode_audio(path, start=start, duration=None if stop is None else stop - start)
    except ffmpeg.FFmpegError as exc:
        raise BadAudio(f"audio_decode: cannot decode {path}: {exc}") from exc
    seconds = samples.shape[1] / sr
    if clip_only and seconds >= cap - 1 / sr:  # cut short: the rest of the range was not decoded
        total = ffmpeg.probe_duration(path)
        if total is not None:
            seconds = max(seconds, float(min(limit, total) - start))
    return Decoded(samples, sr, seconds)


def _read_soundfile(path, start: float, end: float | None, *, clip_only: bool = False) -> tuple[np.ndarray, int, int]:
    """Frames ``[start, end)`` as float32 ``[channels, samples]`` (``clip_only``: just the part
    ``standardize`` keeps), the rate, and the length of the whole range in frames. libsndfile
    seeks, so frames outside what is returned are never decoded."""
    with sf.SoundFile(str(path)) as f:
        sr = f.samplerate
        first = int(round(start * sr))
        last = f.frames if end is None else min(f.frames, int(round(end * sr)))
        if first >= last:  # the range starts after the file ends: nothing to read
            return np.zeros((f.channels, 0), np.float32), sr, 0
        if first:
            f.seek(first)
        count = last - first
        if clip_only:
            count = min(count, math.ceil(CLIP_SECONDS * sr) + _RESAMPLE_CONTEXT)
        data = f.read(count, dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), sr, last - first


def to_mono(audio: np.ndarray) -> np.ndarray:
    """``[samples]`` or ``[channels, samples]`` -> ``[samples]`` (channel mean)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return audio
    if audio.ndim == 2:
        return audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]
    raise BadAudio(f"audio_shape: expected [samples] or [channels, samples], got shape {audio.shape}")


def resample(audio: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited (windowed sinc) resampling of a mono float32 signal, in bounded memory for any
    pair of rates.

    Both paths compute torchaudio's ``sinc_interp_hann`` filter (6 zero crossings, roll-off 0.99),
    ``y[j] = sum_i x[i] h(i / sample_rate - j / target)``, with zeros outside the signal, and give
    ``ceil(len * target / sample_rate)`` samples. Where the rates' reduced ratio is small (every
    common rate: 8, 11.025, 22.05, 32, 44.1, 48, 96 kHz) torchaudio's polyphase kernel is used as
    it always was, so stored clips do not change. Its kernel holds one filter per phase, ``target /
    gcd`` of them, each ``sample_rate / gcd`` taps long: 6.4 GB for a 100,003 Hz file. Beyond
    ``_MAX_KERNEL`` elements the same filter is evaluated at each output's own position instead
    (``_resample_direct``), in chunks of outputs: a copy of the signal and ~16 MB, whatever the rates.
    """
    if sample_rate == target:
        return audio
    if _kernel_elements(int(sample_rate), int(target)) > _MAX_KERNEL:
        return _resample_direct(np.asarray(audio, dtype=np.float32), int(sample_rate), int(target))
    # Imported here: torch costs ~1 s to import, and `prep --help` or readers of 16 kHz files
    # never need it.
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(audio)), int(sample_rate), int(target)).numpy()


# torchaudio.functional.resample's defaults, which every clip in the shards was made with
_ZERO_CROSSINGS = 6  # lowpass_filter_width
_ROLLOFF = 0.99
# Largest polyphase kernel (elements, float32) worth building: 16 MB. Common rates need < 0.3 M.
_MAX_KERNEL = 1 << 22
_DIRECT_VALUES = 1 << 18  # outputs x taps per step of _resample_direct: 2 MB per float64 array


def _kernel_elements(sample_rate: int, target: int) -> int:
    """Size of torchaudio's polyphase kernel for this pair of rates (phases x taps)."""
    gcd = math.gcd(sample_rate, target)
    orig, new = sample_rate // gcd, target // gcd
    width = math.ceil(_ZERO_CROSSINGS * orig / (min(orig, new) * _ROLLOFF))
    return new * (2 * width + orig)


def _resample_direct(audio: np.ndarray, sample_rate: int, target: int) -> np.ndarray:
    """torchaudio's windowed-sinc filter evaluated at each output's position (no phase table).

    Output j lies at input position ``j * sample_rate / target``; the filter reaches
    ``_ZERO_CROSSINGS / cutoff`` seconds either side, i.e. ``half`` input samples, so each output
    costs ``2 * half + 2`` taps (about 80 for any rate down to 16 kHz). Positions are exact integer
    ratios (``i * target - j * sample_rate``), so no error accumulates over a long clip.
    """
    length = audio.shape[0]
    count = -(-length * target // sample_rate)  # ceil, as torchaudio's target_length
    cutoff = min(sample_rate, target) * _ROLLOFF  # Hz
    half = math.ceil(_ZERO_CROSSINGS * sample_rate / cutoff) + 1  # input samples either side
    padded = np.zeros(length + 2 * half + 1, dtype=np.float32)  # the signal, zeros either side
    padded[half : half + length] = audio
    taps = np.arange(-half, half + 1, dtype=np.int64)
    out = np.empty(count, dtype=np.float32)
    chunk = max(1, _DIRECT_VALUES // taps.shape[0])
    for start in range(0, count, chunk):
        j = np.arange(start, min(start + chunk, count), dtype=np.int64)
        i = (j * sample_rate // target)[:, None] + taps  # input samples around each output
        # (i / sample_rate - j / target) in units of the cutoff's half period, as torchaudio's t
        t = (i * target - j[:, None] * sample_rate) * (cutoff / (sample_rate * target))
        np.clip(t, -_ZERO_CROSSINGS, _ZERO_CROSSINGS, out=t)
        weights = np.cos(t * (math.pi / (2 * _ZERO_CROSSINGS))) ** 2 * np.sinc(t) * (cutoff / sample_rate)
        out[start : start + j.shape[0]] = np.einsum("ij,ij->i", padded[i + half], weights)
    return out


def fit_length(audio: np.ndarray, length: int = CLIP_SAMPLES) -> np.ndarray:
    """Trim or zero-pad a mono signal to exactly ``length`` samples."""
    if audio.shape[0] >= length:
        return np.ascontiguousarray(audio[:length], dtype=np.float32)
    out = np.zeros(length, dtype=np.float32)
    out[: audio.shape[0]] = audio
    return out


def standardize(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """Any audio -> (float32 [CLIP_SAMPLES] 16 kHz mono clip, real unpadded duration in seconds).

    Rejects (BadAudio) empty audio, NaN/inf samples and audio shorter than MIN_DURATION_S.
    Longer audio keeps its first CLIP_SECONDS.
    """
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise BadAudio(f"audio_rate: invalid sample rate {sample_rate!r}")
    mono = to_mono(audio)
    if mono.shape[0] == 0:
        raise BadAudio("audio_empty: no samples")
    if not np.isfinite(mono).all():
        raise BadAudio("audio_nan: holds NaN or inf samples")
    seconds = mono.shape[0] / sample_rate
    if seconds < MIN_DURATION_S:
        raise BadAudio(f"audio_too_short: {seconds:.3f} s < {MIN_DURATION_S} s")
    keep = min(mono.shape[0], math.ceil(CLIP_SECONDS * sample_rate) + _RESAMPLE_CONTEXT)
    clip = fit_length(resample(mono[:keep], int(sample_rate)))
    return clip, round(min(seconds, CLIP_SECONDS), 6)
