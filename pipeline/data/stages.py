"""The stages of a worker's stream, each a small generator (webdataset style), in reading order::

    shards -> locate_samples -> shuffle -> count (the cursor) -> read_samples -> decode (into the
           batch's arena) -> draw_items (one clip of every type, draw) -> assemble_batches (collate)

once per typed stream (``LoaderConfig.types``) up to ``draw_items``, which takes one sample of the
pace stream and the next sample of every other stream for each item,

plus what they share: the skip accounting (``SkipCounter`` for the worker, ``StreamGuard`` per
stream: a stream that yields no good sample stops with a ``LoaderError``) and the ``StreamCursor``
by which a resumed worker fast-forwards to where its last consumed batch left the streams.

The shuffle buffer holds where samples sit in their tars (``shard_dir.SampleRef``), not their
bytes: a sample is read once it is taken, so it is decoded while fresh in the CPU's cache (held
~200 samples in a buffer, its bytes had gone cold: a tenth more time to decode it), a resumed
worker fast-forwards without reading, and a buffer of 1,000 costs kilobytes instead of ~175 MB.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from pipeline import format as fmt
from pipeline import shard_dir
from pipeline.data.arena import Arena, ArenaPool
from pipeline.data.config import LoaderConfig
from pipeline.data.mixing import draw_levels, draw_masked_span, splice_negative
from pipeline.data.sources import LoaderError, Shard
from pipeline.data.transform import NO_JITTER, cut_train_crop, eval_image
from pipeline.image import open_image, to_rgb

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# skip accounting and the resumable position


class SkipCounter:
    """A worker's skipped samples by reason; logs at most once per interval (naming shard and key)."""

    def __init__(self, where: str, interval_s: float):
        self.where = where
        self.interval_s = interval_s
        self.by_reason: Counter = Counter()
        self._last_log = -math.inf
        self._unlogged = 0

    def __call__(self, reason: str, shard: str = "?", key: str = "?"):
        self.by_reason[reason] += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= self.interval_s:
            log.warning(
                "%s: skipped %d sample(s) since last report; latest: %s in %s (key %s)",
                self.where,
                self._unlogged,
                reason,
                os.path.basename(shard),
                key,
            )
            self._last_log, self._unlogged = now, 0


class StreamGuard:
    """One stream's skips: counted (reason prefixed with the stream's type), and a stream that
    yields no good sample stops the run with a ``LoaderError`` naming the stream, its shards and the
    most common reason. It stops after ``limit`` skips in a row, or once every shard it reads has failed since
    the last good sample (each of its recorded samples skipped, or its tar unreadable from the start).
    """

    def __init__(self, role: str, spec: str, shards: list[Shard], counter: SkipCounter, limit: int):
        self.role, self.spec, self.counter, self.limit = role, spec, counter, limit
        self.samples = {s.path: s.samples for s in shards}
        self.empty = frozenset(p for p, n in self.samples.items() if n == 0)  # failed from the start
        self.watching = True  # off while a resumed worker fast-forwards
        self._reset()

    def good(self):
        """A good sample (called for every one): the skips in a row start over. Only ``skip``
        changes the state, and it counts ``in_a_row``: at 0 there is nothing to reset."""
        if self.in_a_row:
            self._reset()

    def _reset(self):
        self.in_a_row, self.reasons = 0, Counter()
        self.failed_keys: dict[str, set] = {}
        self.failed = set(self.empty)

    def skip(self, reason: str, shard: str = "?", key: str = "?"):
        reason = f"{self.role}: {reason}"
        self.counter(reason, shard, key)
        self.in_a_row += 1
        self.reasons[reason] += 1
        if shard in self.samples and key != "?":
            keys = self.failed_keys.setdefault(shard, set())
            keys.add(key)
            if len(keys) >= self.samples[shard]:
                self.failed.add(shard)
        self._check()

    def unreadable(self, shard: str, exn: Exception, yielded: bool):
        if not yielded and shard in self.samples:
            self.failed.add(shard)
        self.skip(f"unreadable tar data ({type(exn).__name__})", shard)

    def _check(self):
        every_shard = len(self.failed) == len(self.samples)
        if not self.watching or not (every_shard or self.in_a_row >= self.limit):
            return
        reason, times = self.reasons.most_common(1)[0]
        tried = "every shard tried" if every_shard else f"data.max_consecutive_skips={self.limit}"
        raise LoaderError(
            f"the {self.role} stream yields no usable sample: {self.in_a_row} skipped in a row ({tried}) "
            f"from {len(self.samples)} shard(s) of {self.spec}; most common reason: {reason} ({times}x). "
            "Check them with `prep inspect DIR --verify` and rebuild with `prep shards`"
        )


@dataclass
class StreamCursor:
    """Where a worker's streams stand after a batch: raw samples taken from each shuffled stream
    (``taken``, by type), items drawn, and this epoch's skips by reason. A checkpoint keeps the
    cursor of each worker's last consumed batch; a resumed worker fast-forwards to it by raw
    samples, decoding nothing, so skipped samples cannot shift the stream."""

    taken: dict[str, int] = field(default_factory=dict)
    items: int = 0
    skipped: dict = field(default_factory=dict)

    @classmethod
    def without_skips(cls, items: int, types: Iterable[str]) -> "StreamCursor":
        """The position after ``items`` items when none was skipped (no saved cursor to go by)."""
        return cls(taken=dict.fromkeys(types, items), items=items)

    @classmethod
    def from_state(cls, saved: dict) -> "StreamCursor":
        """A cursor as ``snapshot`` wrote it; also the two-stream form of earlier checkpoints,
        ``{"speech": n, "sound": m, "items": i, "skipped": {...}}``."""
        if "taken" in saved:
            return cls(dict(saved["taken"]), saved["items"], dict(saved["skipped"]))
        taken = {k: v for k, v in saved.items() if k not in ("items", "skipped")}
        return cls(taken, saved["items"], dict(saved["skipped"]))

    def snapshot(self, skip: SkipCounter) -> dict:
        return {**asdict(self), "skipped": dict(skip.by_reason)}


# ---------------------------------------------------------------------------------------------
# the stages


def resampled_shards(shards: list[Shard], rng: random.Random) -> Iterator[Shard]:
    """Forever: shards drawn with replacement, weighted by size."""
    weights = [s.samples for s in shards]
    while True:
        yield rng.choices(shards, weights=weights)[0]


def locate_samples(shards: Iterable[Shard], guard: StreamGuard) -> Iterator[shard_dir.SampleRef]:
    """Where each sample of each shard sits (``shard_dir.sample_refs``), read by this process from
    the tar's headers: no path is handed to webdataset, whose URL handling would run a ``pipe:``
    name. An unreadable or truncated tar is a counted skip, and the next shard follows."""
    return shard_dir.shard_sample_refs((shard.path for shard in shards), guard.unreadable)


def shuffle(src: Iterator, bufsize: int, rng: random.Random) -> Iterator:
    if bufsize <= 1:
        yield from src
    else:
        yield from wds.shuffle(bufsize, initial=min(bufsize, 100), rng=rng)(src)


def count(src: Iterator, cursor: StreamCursor, kind: str) -> Iterator:
    """Count the samples taken from stream ``kind`` into ``cursor`` (the resumable position)."""
    cursor.taken.setdefault(kind, 0)
    for sample in src:
        cursor.taken[kind] += 1
        yield sample


def read_samples(src: Iterator[shard_dir.SampleRef], guard: StreamGuard) -> Iterator[dict]:
    """The raw samples taken (``__key__``, ``__url__``, member bytes); a tar that has lost a
    sample's bytes since it was located (truncated meanwhile) is a counted skip."""
    for ref in src:
        try:
            sample = shard_dir.read_sample(ref)
        except shard_dir.TAR_ERRORS as exn:
            guard.skip(f"unreadable tar data ({type(exn).__name__})", ref.url, ref.key)
            continue
        yield sample


def fast_forward(
    raw: dict[str, Iterator[dict]],
    cursor: StreamCursor,
    done: StreamCursor,
    guards: list[StreamGuard],
    skip: SkipCounter,
) -> None:
    """Take from each counted stream of sample locations, reading nothing, until ``cursor``
    reaches ``done`` (a finite stream may end first); the skips so far are then ``done``'s. The
    guards judge no stream meanwhile: nothing is read or decoded."""
    for guard in guards:
        guard.watching = False
    for kind, stream in raw.items():
        for _ in range(done.taken.get(kind, 0) - cursor.taken.get(kind, 0)):
            if next(stream, None) is None:
                break
    cursor.items = done.items
    skip.by_reason = Counter(done.skipped)
    for guard in guards:
        guard.watching = True


def decode(src: Iterator[dict], guard: StreamGuard, clip_samples: int = fmt.CLIP_SAMPLES, into=None) -> Iterator[dict]:
    """Raw tar samples -> {key, audio, valid, image (PIL), meta}; bad ones are the guard's skips.

    Images decode at full resolution: training crops need it, and the evaluation transform must see
    DenseAV's pixels (a JPEG draft decodes at 1/2, 1/4 or 1/8 scale and changes them). ``audio`` is
    float32; with ``into``, a callable giving the row to decode the next clip into (an int16 row of
    the batch being assembled), it is a view of that row. Either way it is silent past its real samples.
    """
    for raw in src:
        key, shard = raw.get("__key__", "?"), raw.get("__url__", "?")
        item = _decode_one(raw, clip_samples, into)
        if isinstance(item, str):
            guard.skip(item, shard, key)
            continue
        guard.good()
        yield item


def _decode_one(raw: dict, clip_samples: int, into) -> dict | str:
    """The decoded sample, or the reason to skip it."""
    missing = [e for e in fmt.MEMBER_EXTS if e not in raw]
    if missing:
        return f"incomplete sample (missing {','.join(missing)})"
    try:
        meta = fmt.decode_meta(raw[fmt.META_EXT])
        duration = float(meta["duration"])
        valid = fmt.valid_samples(meta, clip_samples) if math.isfinite(duration) and duration > 0 else 0
    except (ValueError, KeyError, TypeError, OverflowError) as exn:
        return f"json unreadable or without a duration ({type(exn).__name__})"
    if valid <= 0:  # an all-silent clip would be used as data
        return "json duration is not a positive number"
    try:
        audio = fmt.decode_audio(raw[fmt.AUDIO_EXT], frames=clip_samples, out=None if into is None else into())
        image = open_image(raw[fmt.IMAGE_EXT])  # refuses a decompression bomb before decoding it
        image.load()  # decode here, where a failure is a counted skip
        image = to_rgb(image)  # a stray 16-bit or float picture by its value range, not clipped
    except Exception as exn:  # noqa: BLE001 - any decode failure is a counted skip
        detail = re.sub(r" at 0x[0-9a-f]+", "", str(exn))[:80]  # one reason, not one per object address
        return f"undecodable ({type(exn).__name__}: {detail})"
    # (no NaN check: the format stores FLAC, i.e. integers, so decoded audio is always finite)
    if audio.shape[0] != clip_samples:
        return f"audio shorter than {clip_samples} samples"
    audio[valid:] = 0  # padding is silent by format; make sure of it, the mixer relies on it
    return {"key": raw.get("__key__", "?"), "audio": audio, "valid": valid, "image": image, "meta": meta}


class ItemDraws:
    """The draw stage: every random choice of an item, made in the worker, and nothing dense.

    Workers decode (the part that needs a CPU); the resize, colour and mixing arithmetic is drawn
    here and applied to whole batches by ``finish_batch`` where the batch lands (the training
    device). Every item draws from its own generator, seeded by (worker seed, item index), so a
    resumed run can skip items without replaying their draws.
    """

    def __init__(self, cfg: LoaderConfig, seed: int):
        self.cfg, self.seed, self.types = cfg, seed, cfg.types
        self.last = dict.fromkeys(self.types)  # donors for negative-audio splicing, per type

    def _audio(self, out: dict, role: str, item: dict, rng: np.random.Generator):
        # edits the decoded int16 clip in place: it already sits in the batch's audio buffer
        audio, valid = item["audio"], item["valid"]
        if self.cfg.splice.prob > 0:
            donor, clean = self.last[role], audio.astype(np.float32)
            self.last[role] = (clean, valid)
            foreign = np.zeros(len(audio), dtype=bool)
            if donor is not None:
                spliced, foreign = splice_negative(clean, valid, donor[0], donor[1], rng, self.cfg.splice)
                audio[:] = np.round(spliced)  # a crossfade of int16 values stays in the int16 range
            out[f"{role}_splice"] = foreign
        if self.cfg.masking.prob > 0:
            start, length = draw_masked_span(valid, rng, self.cfg.masking)
            audio[start : start + length] = 0
            out[f"{role}_span"] = np.array([start, length])
        out[f"{role}_valid"] = valid

    def _image(self, out: dict, role: str, image: Image.Image, rng: np.random.Generator):
        # Only the crop travels to the main process (about half the image).
        if not self.cfg.train:
            final = np.asarray(eval_image(image, self.cfg.image_size))
            out[f"{role}_pixels"], out[f"{role}_flip"], out[f"{role}_jitter"] = final, False, NO_JITTER
            return
        out[f"{role}_pixels"], draw = cut_train_crop(image, rng, self.cfg.augment)
        out[f"{role}_flip"], out[f"{role}_jitter"] = draw.flip, draw.jitter

    def __call__(self, index: int, samples: dict[str, dict]) -> dict:
        """The draws of item ``index`` from one decoded sample per type: per type in config order
        its audio draws and image draws, then the mixture's ratios and level (``draw_levels``)."""
        rng = np.random.default_rng([self.seed, index])
        out = {f"{kind}_key": samples[kind]["key"] for kind in self.types}
        for kind in self.types:
            self._audio(out, kind, samples[kind], rng)
            self._image(out, kind, samples[kind]["image"], rng)
        out["snr_db"], out["level_db"] = draw_levels(rng, self.cfg.mix, len(self.types) - 1)
        return out


def draw_items(streams: dict[str, Iterator[dict]], pace: str, draws: ItemDraws, cursor: StreamCursor) -> Iterator[dict]:
    """One item per sample of the ``pace`` stream, with the next sample of every other stream,
    and the item's draws."""
    others = [kind for kind in streams if kind != pace]
    for first in streams[pace]:
        samples = {pace: first, **{kind: next(streams[kind]) for kind in others}}
        item = draws(cursor.items, samples)
        cursor.items += 1
        yield item


class BatchAssembly:
    """The batch a worker is filling: its arena, into whose audio rows ``decode`` writes the clips
    (row ``len(items)``: the item being decoded), and the items drawn so far."""

    def __init__(self, pool: ArenaPool, clip_samples: int, types: tuple[str, ...]):
        self.pool, self.clip_samples, self.types = pool, clip_samples, types
        self.arena: Arena | None = None
        self.audio: dict[str, np.ndarray] = {}
        self.items: list[dict] = []

    def start(self, size: int):
        self.arena = self.pool.take(Arena.HEADER + len(self.types) * (size * self.clip_samples * 2 + 64))
        # numpy views, made once per batch: indexing a tensor per clip costs more than numpy's
        self.audio = {
            kind: self.arena.place(f"{kind}_audio", torch.int16, (size, self.clip_samples)).numpy()
            for kind in self.types
        }
        self.items = []

    def next_row(self, kind: str) -> np.ndarray:
        return self.audio[kind][len(self.items)]


def assemble_batches(
    items: Iterator[dict], sizes: list[int], batch: BatchAssembly, mixtures: list[tuple[str, ...]], pace: str
) -> Iterator[dict]:
    """One worker batch per entry of ``sizes``, with the types of its mixture (``mixtures``, one
    per batch) as ``mix_types``. A stream that ran out early (finite mode, after skipped samples)
    gives empty batches, ``mix_types`` only: a missing one would leave this rank's peers waiting."""
    for size, mix_types in zip(sizes, mixtures, strict=True):
        batch.start(size)
        for item in itertools.islice(items, size):
            batch.items.append(item)
        if batch.items:
            out = collate(batch.items, batch.arena, batch.pool)
        else:
            log.warning("%s ran out early after skipped samples; yielding an empty batch", pace)
            batch.arena.buffer[0] = 1  # unused: back to the pool
            out = {}
        out["mix_types"] = mix_types
        yield out


def collate(items: list[dict], arena: Arena, pool: ArenaPool) -> dict:
    """Stack per-item draws into a worker batch.

    ``arena`` already holds each type's int16 ``[size, L]`` clips (decoded in place; rows past
    the items are unused). Image crops (``*_pixels``, uint8 ``[h, w, 3]`` of varying sizes)
    are packed back to back after them, with their ``[B, 2]`` shapes under ``*_pixels_hw``.
    Small fields stay numpy: they travel pickled inline, where every torch tensor would get a
    shared-memory segment of its own.
    """
    batch = {}
    pixels = {}
    for name in items[0]:
        values = [it[name] for it in items]
        if name.endswith("_key"):  # the sample keys, a list of str per type
            batch[name] = values
        elif name.endswith("_pixels"):
            pixels[name] = values
            batch[f"{name}_hw"] = np.array([v.shape[:2] for v in values])
        else:
            batch[name] = np.stack(values) if isinstance(values[0], np.ndarray) else np.array(values)
    need = arena.end + sum(64 + int(batch[f"{n}_hw"].prod(1).sum()) * 3 for n in pixels)
    pool.hint = max(pool.hint, need)
    if need > arena.buffer.numel():
        arena = pool.grow(arena, need)
    for name, values in pixels.items():
        flat = arena.place(name, torch.uint8, (int(batch[f"{name}_hw"].prod(1).sum()) * 3,)).numpy()
        offset = 0
        for v in values:
            flat[offset : offset + v.size].reshape(v.shape)[...] = v
            offset += v.size
    batch.update(pool.handoff(arena))  # (byte 0 of the arena is still the flag)
    batch["layout"] = arena.layout
    return batch
