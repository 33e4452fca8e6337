"""Retrieval sets: 1,000 pairs of a shard directory written by ``prep`` (PlacesAudio val, AudioSet
eval), chosen as DenseAV did: ``np.random.seed(0)`` permutation of all committed samples, first
1,000. Which shards count and how a tar's members form samples is ``pipeline.shard_dir``'s rule.
The directory may be a prefix in an object store (``s3://bucket/prefix``, ``pipeline.storage``):
each tar is then streamed, once to list its keys and once more if it holds a chosen pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import format as fmt
from pipeline import shard_dir, storage
from pipeline.testsets.common import Clip, DatasetError, Skipped

RETRIEVAL_PAIRS = 1000
RETRIEVAL_SEED = 0


@dataclass
class RetrievalItem:
    """One pair, kept encoded (FLAC + JPEG bytes) so 1,000 of them stay small; decode on use."""

    key: str
    audio_bytes: bytes
    image_bytes: bytes
    meta: dict

    def clip(self) -> Clip:
        return Clip(fmt.decode_audio(self.audio_bytes), fmt.valid_samples(self.meta))

    def image(self) -> Image.Image:
        return fmt.decode_image(self.image_bytes)


@dataclass
class RetrievalSet:
    root: Path | storage.S3Path
    items: list[RetrievalItem]
    available: int  # samples in the committed shards (the permutation runs over these)
    seed: int
    skipped_shards: list[Skipped] = field(default_factory=list)

    @property
    def audio_type(self) -> str:
        types = {it.meta.get("audio_type") for it in self.items}
        return types.pop() if len(types) == 1 else "mixed"


def _sample_index(directory: Path | storage.S3Path) -> tuple[list[tuple[Path | storage.S3Path, str]], list[Skipped]]:
    """(tar, key) of every sample in committed shards, in shard order then tar order, and the
    uncommitted shards that were left out."""
    listing = shard_dir.list_dir(directory)
    if not listing.committed and not listing.uncommitted_tars:
        raise DatasetError(f"{directory} holds no .tar shards; build them with `prep shards ...`")
    # prep writes the marker last: a tar without a readable one is unfinished or crashed
    corrupt = {shard_dir.shard_index(name) for name in listing.corrupt_markers}
    skipped = [
        Skipped(
            name,
            "unreadable _stats.json marker (rebuild the shard with `prep shards ...`)"
            if shard_dir.shard_index(name) in corrupt
            else "no _stats.json marker (unfinished shard)",
        )
        for name in listing.uncommitted_tars
    ]
    index = [(shard.tar, key) for shard in listing.committed for key in shard_dir.tar_keys(shard.tar)]
    return index, skipped


def select_pairs(available: int, n: int = RETRIEVAL_PAIRS, seed: int = RETRIEVAL_SEED) -> np.ndarray:
    """Indices of the evaluated pairs: ``np.random.seed(seed)`` permutation, first ``n``.

    ``RandomState(seed).permutation`` draws the same numbers as ``np.random.seed(seed);
    np.random.permutation`` without touching numpy's global state.
    """
    return np.random.RandomState(seed).permutation(available)[: min(n, available)]


def _read_item(tar_path: Path | storage.S3Path, key: str, sample: dict) -> RetrievalItem:
    problems = fmt.verify_sample(sample)
    if problems:
        raise DatasetError(f"{tar_path} sample {key}: {'; '.join(problems)}; rebuild this shard")
    return RetrievalItem(key, sample[fmt.AUDIO_EXT], sample[fmt.IMAGE_EXT], fmt.decode_meta(sample[fmt.META_EXT]))


def read_retrieval_set(
    directory: str | Path | storage.S3Path, n: int = RETRIEVAL_PAIRS, seed: int = RETRIEVAL_SEED
) -> RetrievalSet:
    try:
        directory = storage.location(directory)
    except storage.StorageError as exc:
        raise DatasetError(str(exc)) from None
    if not storage.is_dir(directory):
        raise DatasetError(f"retrieval shard folder {directory} does not exist; build it with `prep shards ...`")
    index, skipped = _sample_index(directory)
    if not index:
        raise DatasetError(f"{directory}: no committed shard (all lack their _stats.json marker)")
    chosen = select_pairs(len(index), n, seed)
    wanted: dict[Path | storage.S3Path, dict[str, int]] = {}
    for pos, i in enumerate(chosen):
        tar_path, key = index[i]
        wanted.setdefault(tar_path, {})[key] = pos
    items: list[RetrievalItem | None] = [None] * len(chosen)
    for tar_path, keys in wanted.items():
        samples = {s["__key__"]: s for s in shard_dir.iter_tar_samples(tar_path) if s["__key__"] in keys}
        for key, pos in keys.items():
            items[pos] = _read_item(tar_path, key, samples.get(key, {"__key__": key}))
    return RetrievalSet(directory, [it for it in items if it is not None], len(index), seed, skipped)
