"""Small speech/sound shard sets written by the real shard builder, for loader and trainer tests."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.prep.build import build_shards
from pipeline.prep.media import Media

SR = 16_000


def load_item(item: dict) -> Media:
    """A tone burst pattern (speech stand-in) or noise (sound), random real duration, noise image."""
    rng = np.random.default_rng(item["seed"])
    n = int(item["seconds"] * SR)
    t = np.arange(n) / SR
    if item["type"] == "speech":
        audio = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    else:
        audio = rng.uniform(0.05, 2.0) * rng.standard_normal(n)  # loud enough to clip sometimes
    image = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return Media(
        audio=audio.astype(np.float32),
        sample_rate=SR,
        image=image,
        meta={
            "source": "test",
            "source_id": f"{item['type']}-{item['seed']}",
            "audio_type": item["type"],
            "clip_start": 0.0,
            "clip_end": item["seconds"],
        },
    )


def item_key(item: dict) -> str:
    return f"{item['type']}_{item['seed']}"


def build(out, kind: str, n: int, shard_size: int, seed0: int = 0) -> list[str]:
    """Write ``n`` items of ``kind`` ("speech"/"sound") as shards; returns their keys in input order."""
    rng = np.random.default_rng(seed0)
    items = [{"type": kind, "seed": seed0 + i, "seconds": float(rng.uniform(0.6, 3.0))} for i in range(n)]
    build_shards(items, load_item, out, key=item_key, shard_size=shard_size, workers=0, progress=False)
    return [item_key(it) for it in items]


def rewrite_tar(path, edit) -> None:
    """Rewrite a shard tar in place, each member's bytes replaced by ``edit(name, data)``."""
    import io
    import tarfile

    with tarfile.open(path) as tar:
        members = [(info.name, edit(info.name, tar.extractfile(info).read())) for info in tar]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def with_duration(data: bytes, duration) -> bytes:
    """A sample's json with ``duration`` replaced (NaN and infinities as Python's json writes them)."""
    import json

    return json.dumps({**json.loads(data), "duration": duration}).encode()
