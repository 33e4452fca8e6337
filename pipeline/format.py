"""The shard format, in one place.

A sample is four tar members sharing one key::

    <key>.flac   16 kHz mono FLAC (PCM 16), exactly CLIP_SECONDS long (trimmed or zero-padded)
    <key>.jpg    RGB JPEG, shorter side IMAGE_SHORT_SIDE px, aspect ratio kept
    <key>.json   metadata, see REQUIRED_FIELDS / OPTIONAL_FIELDS

Keys hold only ``[A-Za-z0-9_-]``: webdataset splits member names at the first dot, so a key such
as ``YTID_30.000`` would silently break the sample in two.

Writers, the loader, ``prep inspect`` and the tests all go through this module, so the format is
defined once.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

SAMPLE_RATE = 16_000
CLIP_SECONDS = 10.0
CLIP_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)
PCM_SCALE = 32768.0  # int16 sample -> float in [-1, 1): the scale libsndfile uses for PCM 16
IMAGE_SHORT_SIDE = 224
JPEG_QUALITY = 90
MIN_DURATION_S = 0.5  # shorter clips carry too little signal to pair with an image
AUDIO_TYPES = ("speech", "sound")  # the two types of the paper's corpora
# any audio type is a lower-case name (the loader's streams are named by it: `music`, ...)
AUDIO_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*")  # matched whole (fullmatch)
FORMAT_VERSION = 1

AUDIO_EXT, IMAGE_EXT, META_EXT = "flac", "jpg", "json"
MEMBER_EXTS = (AUDIO_EXT, IMAGE_EXT, META_EXT)

# field -> accepted python types
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "source": (str,),  # corpus: "places", "audioset", "synthetic", ...
    "source_id": (str,),  # id inside the corpus (PlacesAudio wav path, YTID, ...)
    "audio_type": (str,),  # a name matching AUDIO_TYPE_RE: AUDIO_TYPES, or another (`music`)
    "clip_start": (int, float),  # seconds into the source where the clip starts
    "clip_end": (int, float),  # seconds into the source where the clip ends
    "duration": (int, float),  # real (unpadded) audio seconds in the 10 s clip
    "orig_sample_rate": (int,),
    "orig_channels": (int,),
}
# Optional, written where the source has them: labels = [{"mid": "/m/09x0r", "name": "Speech"}],
# caption / speaker / uttid / image_source / class (synthetic), words = [{"word", "start", "end"}].
OPTIONAL_FIELDS = ("labels", "caption", "speaker", "uttid", "image_source", "class", "words")

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")


class FormatError(ValueError):
    """A sample does not follow the shard format."""


def make_key(*parts: Any) -> str:
    """A dot-free key from arbitrary parts (ids, paths, times).

    Parts are joined with ``_``; characters outside ``[A-Za-z0-9_-]`` become ``-``. When that
    rewrote anything, a short hash of the raw parts is appended so two different raw ids can
    never map to the same key (``a.b`` vs ``a-b``).
    """
    raw = "_".join(str(p) for p in parts)
    clean = _KEY_BAD.sub("-", raw)
    if clean != raw:
        clean += "-" + hashlib.sha1(raw.encode()).hexdigest()[:8]
    return clean


def is_valid_key(key: str) -> bool:
    return bool(_KEY_RE.match(key))


def time_tag(seconds: float) -> str:
    """Seconds as integer milliseconds, for keys (``30.0`` -> ``30000``)."""
    return str(int(round(seconds * 1000)))


# ---------------------------------------------------------------------------------------------
# encode


def encode_audio(audio: np.ndarray) -> bytes:
    """Float32 mono 16 kHz clip of exactly CLIP_SAMPLES samples -> FLAC bytes (PCM 16)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or audio.shape[0] != CLIP_SAMPLES:
        raise FormatError(f"audio must be mono with {CLIP_SAMPLES} samples, got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise FormatError("audio holds NaN or inf samples")
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def encode_image(image: Image.Image) -> bytes:
    """Standardized RGB image -> JPEG bytes."""
    if min(image.size) != IMAGE_SHORT_SIDE:
        raise FormatError(f"image shorter side must be {IMAGE_SHORT_SIDE}, got size {image.size}")
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def check_meta(meta: dict) -> list[str]:
    """Problems with a sample's metadata (empty list = fine)."""
    problems = []
    for field, types in REQUIRED_FIELDS.items():
        if field not in meta:
            problems.append(f"missing field {field!r}")
        elif not isinstance(meta[field], types) or isinstance(meta[field], bool):
            problems.append(f"field {field!r} has type {type(meta[field]).__name__}")
    audio_type = meta.get("audio_type")
    if not isinstance(audio_type, str) or not AUDIO_TYPE_RE.fullmatch(audio_type):
        problems.append(f"audio_type must be a name matching [a-z][a-z0-9_]* (speech, sound, ...), got {audio_type!r}")
    dur = meta.get("duration")
    if isinstance(dur, (int, float)) and not (0 < dur <= CLIP_SECONDS + 1e-6 and math.isfinite(dur)):
        problems.append(f"duration {dur} outside (0, {CLIP_SECONDS}]")
    return problems


def encode_meta(meta: dict) -> bytes:
    problems = check_meta(meta)
    if problems:
        raise FormatError("; ".join(problems))
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()


def encode_sample(key: str, audio: np.ndarray, image: Image.Image, meta: dict) -> dict[str, Any]:
    """A webdataset sample dict (``__key__`` plus encoded members) ready for a tar writer."""
    if not is_valid_key(key):
        raise FormatError(f"key {key!r} must match [A-Za-z0-9_-]+ (webdataset splits at dots)")
    return {
        "__key__": key,
        AUDIO_EXT: encode_audio(audio),
        IMAGE_EXT: encode_image(image),
        META_EXT: encode_meta(meta),
    }


# ---------------------------------------------------------------------------------------------
# decode


def decode_audio(data: bytes, frames: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """FLAC bytes -> float32 mono array; raises FormatError on a wrong rate or channel count.

    ``frames``: decode only the first N samples (a loader that uses 3 s of each clip need not
    decode all 10). ``out``: a float32 or int16 array to decode into (its length bounds
    ``frames``); returns the decoded part of it. Decoding into a reused or shared buffer saves an
    allocation and a copy per clip, a fifth of the decoding time of a 10 s clip; int16 is the
    stored PCM itself (``/ PCM_SCALE`` gives the float32 decode exactly) at half the bytes.
    """
    with sf.SoundFile(io.BytesIO(data)) as f:
        if f.samplerate != SAMPLE_RATE:
            raise FormatError(f"audio sample rate {f.samplerate}, expected {SAMPLE_RATE}")
        if f.channels != 1:
            raise FormatError(f"audio has {f.channels} channels, expected 1")
        if out is None:
            return f.read(frames, dtype="float32")
        return f.read(out=out if frames < 0 else out[:frames])


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def decode_meta(data: bytes) -> dict:
    return json.loads(data)


def valid_samples(meta: dict, clip_samples: int = CLIP_SAMPLES) -> int:
    """Number of real (unpadded) audio samples at the start of the clip."""
    return int(min(clip_samples, round(float(meta["duration"]) * SAMPLE_RATE)))


def verify_sample(sample: dict[str, Any]) -> list[str]:
    """Decode every member of a raw (undecoded) sample and check it against the format."""
    key = sample.get("__key__", "?")
    problems = [] if is_valid_key(str(key)) else [f"bad key {key!r}"]
    missing = [ext for ext in MEMBER_EXTS if ext not in sample]
    if missing:
        return problems + [f"missing members {missing}"]
    try:
        audio = decode_audio(sample[AUDIO_EXT])
        if audio.shape[0] != CLIP_SAMPLES:
            problems.append(f"audio has {audio.shape[0]} samples, expected {CLIP_SAMPLES}")
        if not np.isfinite(audio).all():
            problems.append("audio holds NaN/inf")
    except Exception as exc:  # noqa: BLE001 - any decode failure is a finding
        problems.append(f"audio does not decode: {exc}")
    try:
        image = decode_image(sample[IMAGE_EXT])
        if min(image.size) != IMAGE_SHORT_SIDE:
            problems.append(f"image size {image.size}, shorter side should be {IMAGE_SHORT_SIDE}")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"image does not decode: {exc}")
    try:
        problems += check_meta(decode_meta(sample[META_EXT]))
    except Exception as exc:  # noqa: BLE001
        problems.append(f"json does not decode: {exc}")
    return problems
