"""ffmpeg: finding the binary, decoding audio, cutting a time range, a file's declared duration,
grabbing one video frame.

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
    except Exception as exc:  # noqa: BLE001 - any failure here means "no bundled binary"
        raise FFmpegError(
            "no ffmpeg found: install ffmpeg on PATH, `pip install imageio-ffmpeg`, "
            f"or point {ENV_BINARY} at a binary"
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
    except Exception as exc:  # noqa: BLE001 - a malformed pipe stream is an ffmpeg failure
        raise FFmpegError(f"ffmpeg output is not readable audio: {exc}") from exc
    return np.ascontiguousarray(data.T), int(sr)


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def probe_duration(path: str | os.PathLike, *, timeout: float = 30.0) -> float | None:
    """The duration a media file's container declares, in seconds, read from its header without
    decoding; None when it declares none or ffmpeg cannot open it."""
    # With an input and no output ffmpeg prints the input's description, then exits 1.
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", _input(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    match = _DURATION.search(proc.stderr.decode("utf-8", "replace"))
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def extract_frame(path: str | os.PathLike, at: float, *, timeout: float = DEFAULT_TIMEOUT_S) -> Image.Image:
    """The video frame shown at ``at`` seconds (the first frame at or after it) as an RGB image."""
    args = ["-ss", f"{max(at, 0.0):.6f}", "-i", _input(path), "-map", "0:v:0", "-frames:v", "1"]
    # PPM: no compression work on either side of the pipe.
    args += ["-an", "-sn", "-dn", "-f", "image2pipe", "-c:v", "ppm", "pipe:1"]
    out = run(args, timeout=timeout)
    if not out:
        raise FFmpegError(f"no video frame at {at:.3f} s (the video is shorter or has no picture)")
    image = Image.open(io.BytesIO(out))
    image.load()
    return image

