"""ffmpeg: finding the binary, decoding audio, cutting a time range, probing a file's declared
duration and streams (picture, sound), grabbing the video frame shown at a time.

ffmpeg always runs from an argument list (never through a shell), so paths with spaces, quotes or
leading dashes are passed through untouched. The binary comes from ``$FFMPEG_BINARY``, else the
system ``PATH``, else the static build shipped in the ``imageio-ffmpeg`` wheel, so a plain
``pip install`` is enough on a machine without a system ffmpeg.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
from PIL import Image

ENV_BINARY = "FFMPEG_BINARY"
DEFAULT_TIMEOUT_S = 300.0
# Guards against a stray hours-long file filling memory when a caller asked for "everything".
MAX_DECODE_SECONDS = 3600.0


class FFmpegError(RuntimeError):
    """ffmpeg failed, timed out or produced nothing; ``stderr`` keeps ffmpeg's own words."""

    def __init__(self, message: str, stderr: str = ""):
        super().__init__(message)
        self.stderr = stderr


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary to use (looked up once per process)."""
    override = os.environ.get(ENV_BINARY)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise FFmpegError(f"{ENV_BINARY}={override} is not an executable file; fix or unset it")
        return override
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:
        raise FFmpegError(
            f"no ffmpeg found: install ffmpeg on PATH, `pip install imageio-ffmpeg`, or point {ENV_BINARY} at a binary"
        ) from exc


def _input(path: str | os.PathLike) -> str:
    # "file:" stops ffmpeg from reading a name such as "http:x.wav" or "pipe:1" as a protocol.
    return "file:" + os.path.abspath(path)


def _last_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def run(args: list[str], *, timeout: float = DEFAULT_TIMEOUT_S) -> bytes:
    """Run ffmpeg with ``args`` (after the global flags); returns stdout, raises FFmpegError."""
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FFmpegError(f"ffmpeg timed out after {timeout:.0f} s") from exc
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise FFmpegError(f"ffmpeg exit {proc.returncode}: {_last_line(stderr)}", stderr)
    return proc.stdout


def decode_audio(
    path: str | os.PathLike,
    *,
    start: float = 0.0,
    duration: float | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> tuple[np.ndarray, int]:
    """The first audio stream of any media file as float32 ``[channels, samples]`` at its own rate.

    ``start``/``duration`` cut ``[start, start + duration)`` of the source. ``-ss`` before ``-i``
    seeks fast and ffmpeg then drops decoded samples up to the exact position, so the cut is
    sample-accurate even inside compressed streams.
    """
    args: list[str] = []
    if start > 0:
        args += ["-ss", f"{start:.6f}"]
    args += ["-i", _input(path), "-t", f"{min(duration or MAX_DECODE_SECONDS, MAX_DECODE_SECONDS):.6f}"]
    # Float WAV on stdout carries rate and channel count in its header: one process, no ffprobe.
    args += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-c:a", "pcm_f32le", "-f", "wav", "pipe:1"]
    out = run(args, timeout=timeout)
    if not out:
        raise FFmpegError("ffmpeg wrote no audio")
    try:
        data, sr = sf.read(io.BytesIO(out), dtype="float32", always_2d=True)
    except Exception as exc:
        raise FFmpegError(f"ffmpeg output is not readable audio: {exc}") from exc
    return np.ascontiguousarray(data.T), int(sr)


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
# "  Stream #0:1[0x2](und): Audio: aac ..." -- the streams of input 0 as ffmpeg describes them
_STREAM = re.compile(r"^\s*Stream #0:\d+\S*: (Video|Audio): (.*)$", re.MULTILINE)
_FPS = re.compile(r", (\d+(?:\.\d+)?) fps")


class Probe(NamedTuple):
    """What a media file's header declares: ``duration`` in seconds (None when it declares none or
    ffmpeg cannot open the file), whether it holds a picture (a video stream, cover art included)
    and a sound track, and the first video stream's frame rate (None if it declares none)."""

    duration: float | None
    video: bool
    audio: bool
    fps: float | None = None


def probe(path: str | os.PathLike, *, timeout: float = 30.0) -> Probe:
    """Duration and streams of a media file, read from its header without decoding."""
    # With an input and no output ffmpeg prints the input's description, then exits 1.
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", _input(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Probe(None, False, False)
    text = proc.stderr.decode("utf-8", "replace")
    streams = _STREAM.findall(text)
    rates = [_FPS.search(rest) for kind, rest in streams if kind == "Video"]
    fps = float(rates[0].group(1)) if rates and rates[0] else None
    match = _DURATION.search(text)
    seconds = None
    if match is not None:
        hours, minutes, secs = match.groups()
        seconds = int(hours) * 3600 + int(minutes) * 60 + float(secs)
    kinds = {kind for kind, _ in streams}
    return Probe(seconds, "Video" in kinds, "Audio" in kinds, fps if fps and fps > 0 else None)


def probe_duration(path: str | os.PathLike, *, timeout: float = 30.0) -> float | None:
    """The duration a media file's container declares, in seconds, read from its header without
    decoding; None when it declares none or ffmpeg cannot open it."""
    return probe(path, timeout=timeout).duration


# How far before the requested time the frame shown then is looked for, widening until the start:
# a frame lasts 1/fps (two frame periods first, where the stream declares its rate, else 0.5 s),
# while a still picture under a long sound track (a single frame, a slideshow) started long before.
# Each window decodes from the keyframe before it, so the first one is kept short.
FRAME_LOOKBACK_S = (0.5, 8.0, None)


def extract_frame(path: str | os.PathLike, at: float, *, timeout: float = DEFAULT_TIMEOUT_S) -> Image.Image:
    """The video frame shown at ``at`` seconds as an image: the last frame starting at or before
    ``at`` (so past the picture's end, e.g. a single frame over a longer sound track, the last
    frame stays shown); when no frame starts that early, the first one after it."""
    at = max(float(at), 0.0)
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise FFmpegError(f"cannot read {path} ({exc.strerror})") from exc
    fps = _frame_rate(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    lookbacks = FRAME_LOOKBACK_S if fps is None else (*sorted({2.0 / fps, *FRAME_LOOKBACK_S[:-1]}), None)
    with tempfile.TemporaryDirectory(prefix="frame-") as tmp:
        target = Path(tmp) / "frame.ppm"
        for lookback in lookbacks:
            start = 0.0 if lookback is None or lookback >= at else at - lookback
            if _last_frame_before(path, start, at, target, timeout):
                return _read_ppm(target.read_bytes())
            if start == 0.0:
                break
    args = ["-ss", f"{at:.6f}", "-i", _input(path), "-map", "0:v:0", "-frames:v", "1"]
    # PPM: no compression work on either side of the pipe.
    args += ["-an", "-sn", "-dn", "-f", "image2pipe", "-c:v", "ppm", "pipe:1"]
    out = run(args, timeout=timeout)
    if not out:
        raise FFmpegError(f"no video frame at {at:.3f} s (the video is shorter or has no picture)")
    return _read_ppm(out)


@functools.lru_cache(maxsize=64)
def _frame_rate(path: str, mtime_ns: int, size: int) -> float | None:
    """The declared frame rate, probed once per file version (a video's frames are taken one by one)."""
    return probe(path).fps


def _last_frame_before(path, start: float, at: float, target: Path, timeout: float) -> bool:
    """Write the last frame of ``[start, at]`` to ``target``; whether there was one.

    ``-ss`` before ``-i`` seeks and drops the frames before ``start`` (timestamps then count from
    it); ``-t`` stops reading packets past ``at`` (a frame's decode time never exceeds its display
    time, so every frame shown by ``at`` is read; later ones may slip in through reordering and
    ``select`` drops them); ``-update 1`` keeps overwriting one file, so only the last frame stays,
    whatever the frame size and count."""
    args = ["-ss", f"{start:.6f}"] if start > 0 else []
    args += [
        "-t",
        f"{at - start + 0.05:.6f}",
        "-i",
        _input(path),
        "-map",
        "0:v:0",
        "-an",
        "-sn",
        "-dn",
        "-vf",
        f"select='lte(t\\,{at - start + 1e-6:.6f})'",
        "-update",
        "1",
        "-c:v",
        "ppm",
        "-f",
        "image2",
        _input(target),
    ]
    target.unlink(missing_ok=True)
    run(args, timeout=timeout)
    return target.is_file() and target.stat().st_size > 0


def _read_ppm(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
