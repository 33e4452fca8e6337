"""Test fixtures generated on the fly: signals, media files (through the bundled ffmpeg), corpus
trees in the PlacesAudio and AudioSet layouts, corrupt files, and a local HTTP server.

Other test files import these helpers; nothing here downloads anything.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from pipeline import ffmpeg

# ---------------------------------------------------------------------------------------------
# signals


def tone(freq: float, seconds: float, sr: int = 16_000, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def step_frequency(second: int, base: float = 300.0, step: float = 100.0) -> float:
    """Pitch of ``stepped_tone`` during source second ``second``."""
    return base + step * second


def stepped_tone(
    seconds: float, sr: int = 16_000, amp: float = 0.3, base: float = 300.0, step: float = 100.0
) -> np.ndarray:
    """A tone whose pitch jumps at every whole second (phase-continuous): where a clip came from
    in its source can be read back from its pitch."""
    n = int(round(seconds * sr))
    second = np.arange(n) // sr
    freq = base + step * second
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return (amp * np.sin(phase)).astype(np.float32)


def noise(seconds: float, sr: int = 16_000, amp: float = 0.1, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(round(seconds * sr)))).astype(np.float32)


def speech_like(seconds: float, sr: int = 16_000, seed: int = 0) -> np.ndarray:
    """Voiced 'syllables': a glottal pulse train with drifting pitch through three formant
    resonators, switched on and off at a syllable rate, with short pauses."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * np.arange(n) / sr) + rng.uniform(-10, 10)
    pulses = np.diff(np.floor(np.cumsum(f0) / sr), prepend=0.0)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    # three formants as Lorentzian peaks shaping the pulse spectrum (a vowel-like timbre)
    response = sum(1 / (1 + ((freqs - f) / (b / 2)) ** 2) for f, b in ((700, 110), (1200, 120), (2600, 160)))
    out = np.fft.irfft(np.fft.rfft(pulses) * response, n)
    syllables = (np.sin(2 * np.pi * 4.0 * np.arange(n) / sr) > -0.2).astype(float)
    out *= syllables
    return (0.3 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def dominant_frequency(signal: np.ndarray, sr: int) -> float:
    """Frequency of the strongest spectral peak (Hann window, parabolic interpolation)."""
    window = np.hanning(len(signal))
    spectrum = np.abs(np.fft.rfft(signal * window))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    curvature = a - 2 * b + c
    offset = 0.5 * (a - c) / curvature if curvature else 0.0
    return (k + offset) * sr / len(signal)


def first_change(signal: np.ndarray, sr: int, frame_s: float = 0.01) -> float:
    """Seconds into ``signal`` where its pitch first changes by more than 30 Hz."""
    hop = int(frame_s * sr)
    frames = [dominant_frequency(signal[i : i + 4 * hop], sr) for i in range(0, len(signal) - 4 * hop, hop)]
    for i in range(1, len(frames)):
        if abs(frames[i] - frames[0]) > 30:
            return (i + 2) * frame_s  # the 4-hop window straddles the change at its middle
    return float("nan")


# ---------------------------------------------------------------------------------------------
# files


def write_audio(path: str | Path, audio: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    """``audio`` [samples] or [channels, samples] -> wav/flac (by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = audio.T if audio.ndim == 2 else audio
    sf.write(path, data, sr, subtype=subtype)
    return path


PALETTE = [
    (230, 25, 25),
    (25, 200, 40),
    (30, 60, 230),
    (240, 220, 20),
    (220, 30, 220),
    (20, 220, 220),
    (250, 140, 0),
    (130, 0, 160),
    (255, 255, 255),
    (10, 10, 10),
    (120, 200, 120),
    (200, 120, 120),
]


def colour_for_second(second: int) -> tuple[int, int, int]:
    return PALETTE[second % len(PALETTE)]


def nearest_palette_second(rgb: Sequence[float]) -> int:
    """Index of the palette colour closest to ``rgb`` (video coding shifts colours a little)."""
    d = [sum((a - b) ** 2 for a, b in zip(rgb, c)) for c in PALETTE]
    return int(np.argmin(d))


def write_video(
    path: str | Path,
    audio: np.ndarray | None,
    sr: int = 44_100,
    *,
    seconds: float | None = None,
    first_second: int = 0,
    size: tuple[int, int] = (96, 64),
    fps: int = 5,
    video_codec: Sequence[str] = ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"),
    audio_codec: Sequence[str] = ("-c:a", "aac", "-b:a", "96k"),
) -> Path:
    """A video whose frames during second k are ``colour_for_second(first_second + k)``, with
    ``audio`` (mono or [channels, samples]) as its soundtrack; encoded by the bundled ffmpeg.
    ``first_second`` > 0 makes it a cut clip of a longer source."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if seconds is None:
        seconds = audio.shape[-1] / sr
    frames = int(round(seconds * fps))
    w, h = size
    raw = np.empty((frames, h, w, 3), np.uint8)
    for i in range(frames):
        raw[i] = colour_for_second(first_second + int(i / fps))
    with tempfile.TemporaryDirectory() as tmp:
        video_in = Path(tmp) / "frames.rgb"
        video_in.write_bytes(raw.tobytes())
        args = ["-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", str(video_in)]
        if audio is not None:
            audio_in = write_audio(Path(tmp) / "audio.wav", audio, sr, subtype="FLOAT")
            args += ["-i", str(audio_in), *audio_codec]
        args += [*video_codec, "-t", f"{seconds:.3f}"]
        if path.suffix == ".mp4":
            args += ["-movflags", "+faststart"]  # playable while streaming, as web servers hold them
        ffmpeg.run([*args, str(path)])
    return path


def write_image(path: str | Path, size=(320, 240), colour=(200, 80, 40), mode: str = "RGB", **save) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    # a gradient so that resizing and cropping mistakes would show
    arr = np.asarray(image).copy()
    arr[..., 1] = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :]
    image = Image.fromarray(arr)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, **save)
    return path


def write_rotated_jpeg(path: str | Path, size=(320, 200)) -> Path:
    """A landscape JPEG whose EXIF orientation (6 = rotate 90° clockwise) makes it portrait."""
    image = Image.new("RGB", size, (20, 120, 220))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif.tobytes())
    return path


def dark_quarter_grey(size=(64, 48)) -> np.ndarray:
    """uint8 ``[H, W]``: a left-to-right ramp whose left quarter is dark (0..~8), the rest rising to 255."""
    width, height = size
    ramp = np.concatenate([np.linspace(0, 8, width // 4), np.linspace(16, 255, width - width // 4)])
    return np.tile(np.rint(ramp).astype(np.uint8), (height, 1))


def write_mode_pictures(folder: str | Path, size=(64, 48)) -> dict[str, tuple[Path, np.ndarray]]:
    """One file per image mode PIL opens, each holding ``dark_quarter_grey`` in that mode's value
    range, with the 8-bit RGB it should become (``pipeline.image.to_rgb``'s rules): name ->
    (path, uint8 ``[H, W, 3]``). A transparent block (top-left 8x8) shows white."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grey = dark_quarter_grey(size)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    alpha = np.full(grey.shape, 255, np.uint8)
    alpha[:8, :8] = 0
    see_through = rgb.copy()
    see_through[:8, :8] = 255
    palette = Image.fromarray(grey, "P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    keyed = np.where(grey[..., None] == grey[0, -1], 255, rgb).astype(np.uint8)  # colour key: the brightest grey
    wide = grey.astype(np.uint32) * 257  # the 16-bit value of each 8-bit level
    signed = grey.astype(np.int32) * 1000 - 100_000  # outside 0..65535: stretched min..max
    pgm = f"P5\n{size[0]} {size[1]}\n65535\n".encode() + wide.astype(">u2").tobytes()
    made = {
        "1.png": (Image.fromarray(grey >= 128), np.repeat(np.where(grey >= 128, 255, 0)[..., None], 3, 2)),
        "L.png": (Image.fromarray(grey, "L"), rgb),
        "LA.png": (Image.fromarray(np.stack([grey, alpha], -1), "LA"), see_through),
        "P.png": (palette, rgb),
        "P-transparency.png": (palette, keyed),
        "PA.tif": (Image.merge("PA", [palette, Image.fromarray(alpha)]), see_through),
        "RGBA.png": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), see_through),
        "CMYK.tif": (Image.fromarray(np.dstack([np.zeros_like(rgb), 255 - grey]), "CMYK"), rgb),
        "I16.png": (Image.fromarray(wide.astype(np.uint16)), rgb),
        "I16B.tif": (Image.fromarray(wide.astype(np.uint16)).convert("I").convert("I;16B"), rgb),
        "I.tif": (Image.fromarray(wide.astype(np.int32)), rgb),
        "I-signed.tif": (
            Image.fromarray(signed),
            np.repeat(np.rint((signed - signed.min()) * 255.0 / np.ptp(signed)).astype(np.uint8)[..., None], 3, 2),
        ),
        "F.tif": (Image.fromarray(grey.astype(np.float32) / 255), rgb),
        "F-wide.tif": (Image.fromarray(grey.astype(np.float32) * 4 - 100), rgb),  # min..max: the same ramp
    }
    out = {}
    for name, (picture, expected) in made.items():
        path = folder / name
        save = {"transparency": int(grey[0, -1])} if name == "P-transparency.png" else {}
        picture.save(path, **save)
        out[name] = (path, expected)
    (folder / "I16.pgm").write_bytes(pgm)  # PIL opens 16-bit PGM as I, scaled to 0..65535
    out["I16.pgm"] = (folder / "I16.pgm", rgb)
    lab = folder / "LAB.tif"
    Image.fromarray(grey, "L").convert("RGB").convert("LAB").save(lab)
    with Image.open(lab) as im:
        out["LAB.tif"] = (lab, np.asarray(im.convert("RGB")))  # 8-bit: PIL's conversion is the rule
    return out


# ---------------------------------------------------------------------------------------------
# corrupt files


def write_garbage(path: str | Path, n: int = 2048, seed: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def write_truncated(src: str | Path, dst: str | Path, keep: float = 0.3) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def write_huge_png_header(path: str | Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


# ---------------------------------------------------------------------------------------------
# corpus trees


def places_tree(root: str | Path, entries: Sequence[dict]) -> Path:
    """A PlacesAudio distribution + Places205 image folder under ``root``.

    Each entry: ``wav`` and ``image`` (relative paths), optional ``audio`` (array), ``sr``,
    ``subtype``, ``image_size``, ``image_mode``, plus any metadata fields to copy into the JSON
    (uttid, speaker, asr_text, ...). ``audio=None`` / ``image_size=None`` leave the file absent;
    ``raw`` entries are written to the JSON verbatim (malformed rows). Returns the metadata path.
    """
    root = Path(root)
    audio_root, image_root = root / "PlacesAudio_400k_distro", root / "places205"
    data = []
    for e in entries:
        if "raw" in e:
            data.append(e["raw"])
            continue
        if e.get("audio") is not None and not e["wav"].startswith(("/", "..")):
            write_audio(audio_root / e["wav"], e["audio"], e.get("sr", 16_000), e.get("subtype", "PCM_16"))
        if e.get("image_size") is not None and not e["image"].startswith(("/", "..")):
            write_image(image_root / e["image"], e["image_size"], mode=e.get("image_mode", "RGB"))
        fields = {k: v for k, v in e.items() if k not in ("audio", "sr", "subtype", "image_size", "image_mode")}
        data.append(fields)
    meta = audio_root / "metadata" / "train.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(
        json.dumps(
            {"image_base_path": "/nonexistent/images256", "audio_base_path": "/nonexistent/distro", "data": data}
        )
    )
    image_root.mkdir(parents=True, exist_ok=True)
    return meta


def audioset_csvs(
    root: str | Path, segments: Sequence[tuple], labels: dict[str, str], extra_lines: Sequence[str] = ()
) -> tuple[Path, Path]:
    """A segment CSV (Google's layout: three '#' lines, quoted label lists) and a
    class_labels_indices.csv. ``segments``: (ytid, start, end, [mids])."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Segments csv created Sun Mar  5 10:54:25 2017",
        f"# num_ytids={len(segments)}, num_segs={len(segments)}, "
        f"num_unique_labels={len(labels)}, num_positive_labels=0",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    lines += [f'{y}, {s:.3f}, {e:.3f}, "{",".join(m)}"' for y, s, e, m in segments]
    lines += list(extra_lines)
    seg = root / "segments.csv"
    seg.write_text("\n".join(lines) + "\n")
    lab = root / "class_labels_indices.csv"
    rows = ["index,mid,display_name"] + [f'{i},{mid},"{name}"' for i, (mid, name) in enumerate(labels.items())]
    lab.write_text("\n".join(rows) + "\n")
    return seg, lab


# ---------------------------------------------------------------------------------------------
# a local HTTP server (range requests, plus simulated refusals)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with byte-range support, as real media hosts serve them. Paths containing
    ``ratelimited`` answer 429, as YouTube does when it throttles."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        if "ratelimited" in self.path:
            self.send_error(429, "Too Many Requests")
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "File not found")
            return
        data = path.read_bytes()
        match = re.match(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match[1] or 0)
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            body = data[start : end + 1]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()


@contextlib.contextmanager
def serve_directory(root: str | Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (a free port) for the duration of the block; yields the base URL."""
    handler = functools.partial(_Handler, directory=os.fspath(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
