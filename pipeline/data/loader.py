"""Streaming training loader: speech shards paired with sound shards and mixed at read time.

Each worker runs one pipeline of small generator stages (webdataset style)::

    speech shards ─▶ raw samples ─▶ shuffle (bytes) ─▶ decode ─┐
                                                               ├─▶ pair ─▶ draw ─▶ batch ─┐
    sound shards (resampled forever) ─▶ shuffle ─▶ decode ─────┘                         │
                                                                                          ▼
                     main process, on the training device:   crop + colour jitter + mix (finish_batch)

Workers do what needs a CPU (tar reading, FLAC and JPEG decoding) and every random draw (crop box,
flip, colour matrix, mixing ratio and level, splices), so a batch is fixed by the seeds alone; the
dense arithmetic runs batched where the batch lands, which keeps a worker's cost per item close to
the cost of decoding it.

Two modes for the speech stream, which drives the epoch:

* ``resampled`` (default for training): every worker draws speech shards with replacement, forever;
  an epoch is ``batches_per_worker`` batches of exactly ``batch_size`` per worker, so every rank gets
  the same number of equal batches by construction.
* finite: each speech sample is seen exactly once per epoch. Shards are dealt to the
  ranks × workers slots (same plan on every rank, from the shard sizes recorded by ``prep``); every
  slot yields the same number of batches, its samples spread as evenly as possible over them, so
  batch sizes may differ by one between slots. Unequal batch *counts* would hang the gathered
  contrastive loss; unequal *sizes* are handled by the trainer's padded gather.

Seeds derive from (seed, epoch, rank, worker), so the same seed reproduces the same batches and no two
workers or ranks repeat each other's draws. A corrupt sample or a truncated tar is skipped and counted
(rate-limited log naming shard and key); counts travel with the batches to the main process.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import math
import os
import random
import resource
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from pipeline import format as fmt
from pipeline.data.mixing import (
    MaskConfig, MixConfig, SpliceConfig, draw_levels, draw_masked_span, mix_batch, valid_mask, span_mask,
    splice_negative,
)
from pipeline.data.transform import NO_JITTER, AugmentConfig, augment_batch, cut_train_crop, eval_image

log = logging.getLogger(__name__)


@dataclass
class LoaderConfig:
    speech: str  # shard directories, tar files or globs; several separated by commas
    sound: str
    batch_size: int = 8  # per process
    num_workers: int = 2
    image_size: int = 224
    clip_samples: int = fmt.CLIP_SAMPLES  # first N samples of each 10 s clip are used
    train: bool = True  # augment images (False: resize + centre crop)
    resampled: bool = True
    epoch_samples: int | None = None  # resampled mode: speech items per epoch (global); None = dataset size
    shuffle_buffer: int = 1000  # raw samples held for shuffling, per worker and stream
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    splice: SpliceConfig = field(default_factory=SpliceConfig)
    masking: MaskConfig = field(default_factory=MaskConfig)
    log_interval_s: float = 30.0  # at most one skip warning per worker per interval


# ---------------------------------------------------------------------------------------------
# shard lists


@dataclass(frozen=True)
class Shard:
    path: str
    samples: int


def _count_tar_samples(path: str) -> int:
    keys = set()
    with tarfile.open(path, "r|") as tar:
        for info in tar:
            keys.add(info.name.split(".", 1)[0])
    return len(keys)


def _committed_shards(directory: Path) -> list[Shard]:
    shards = []
    for stats_path in sorted(directory.glob("*_stats.json")):
        tar = directory / (stats_path.name[: -len("_stats.json")] + ".tar")
        if not tar.exists():
            continue
        stats = json.loads(stats_path.read_text())
        shards.append(Shard(str(tar), int(stats["written"])))
    partial = sorted(p.name for p in directory.glob("*.tar") if not Path(str(p)[:-4] + "_stats.json").exists())
    if partial:
        log.warning("%s: ignoring %d uncommitted shard(s) without a _stats.json marker: %s",
                    directory, len(partial), ", ".join(partial[:5]))
    return shards


def list_shards(spec: str) -> list[Shard]:
    """Resolve a comma-separated list of directories, tar files and globs into committed shards."""
    shards: list[Shard] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if os.path.isdir(part):
            found = _committed_shards(Path(part))
        else:
            paths = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
            found = []
            for p in paths:
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"shard {p!r} does not exist (from {spec!r}): build shards with "
                                            "`prep shards ...` or fix the path")
                stats = p[: -len(".tar")] + "_stats.json" if p.endswith(".tar") else None
                if stats and os.path.exists(stats):
                    found.append(Shard(p, int(json.loads(Path(stats).read_text())["written"])))
                else:
                    found.append(Shard(p, _count_tar_samples(p)))
        if not found:
            raise FileNotFoundError(
                f"no committed shards in {part!r}: build them with `prep shards ...` "
                "(a shard counts once its NNNNNN_stats.json marker exists)")
        shards += found
    return shards


def plan_finite_epoch(shards: list[Shard], slots: int, batch_size: int, seed: int, epoch: int):
    """Deal shards to ``slots`` (= ranks × workers) and size every slot's batches.

    Returns ``(assignment, batch_sizes)``: shard lists and batch-size lists per slot, identical on
    every rank. All slots get the same number of batches.
    """
    if len(shards) < slots:
        raise ValueError(
            f"finite mode needs at least ranks × workers = {slots} speech shards, found {len(shards)}: "
            "use fewer workers, write smaller shards (`prep shards --shard-size`), or resampled mode")
    order = list(shards)
    random.Random(seed_from(seed, epoch, "plan")).shuffle(order)
    assignment: list[list[Shard]] = [[] for _ in range(slots)]
    load = [0] * slots
    for shard in sorted(order, key=lambda s: -s.samples):  # largest first onto the lightest slot
        i = min(range(slots), key=lambda k: (load[k], k))
        assignment[i].append(shard)
        load[i] += shard.samples
    for i, slot in enumerate(assignment):  # dealt in size order: shuffle each slot's reading order
        random.Random(seed_from(seed, epoch, "order", i)).shuffle(slot)
    n_batches = max(math.ceil(n / batch_size) for n in load)
    if min(load) < n_batches:
        raise ValueError(
            f"speech shards are too unequal for an exact epoch ({min(load)} vs {max(load)} samples per "
            "slot): rebalance the shards or use resampled mode")
    sizes = [[n // n_batches + (1 if b < n % n_batches else 0) for b in range(n_batches)] for n in load]
    return assignment, sizes


def seed_from(*parts) -> int:
    """A 64-bit seed from any parts, stable across processes (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


# ---------------------------------------------------------------------------------------------
# skip accounting


class SkipCounter:
    """Counts skipped samples by reason; logs at most once per interval (naming shard and key)."""

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
            log.warning("%s: skipped %d sample(s) since last report; latest: %s in %s (key %s)",
                        self.where, self._unlogged, reason, os.path.basename(shard), key)
            self._last_log, self._unlogged = now, 0

    def exception_handler(self, exn: Exception) -> bool:
        """webdataset handler: count, log, continue (never sleep, never crash the worker)."""
        shard = next((a for a in exn.args if isinstance(a, str) and a.endswith(".tar")), "?")
        self(f"unreadable tar data ({type(exn).__name__})", shard)
        return True

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


# ---------------------------------------------------------------------------------------------
# pipeline stages (each a small generator)


def shard_urls_resampled(shards: list[Shard], rng: random.Random) -> Iterator[dict]:
    """Forever: shards drawn with replacement, weighted by size."""
    weights = [s.samples for s in shards]
    while True:
        yield {"url": rng.choices(shards, weights=weights)[0].path}


def shard_urls(shards: list[Shard]) -> Iterator[dict]:
    for s in shards:
        yield {"url": s.path}


def decode_samples(src, skip: SkipCounter, role: str, clip_samples: int = fmt.CLIP_SAMPLES,
                   draft_size: int | None = None, into=None) -> Iterator[dict]:
    """Raw tar samples -> {key, audio, valid, image (PIL), meta}; bad ones counted.

    ``draft_size``: let the JPEG decoder downscale by 2/4/8 while staying >= this size (evaluation
    transforms only need that much; training crops keep full resolution). ``audio`` is float32;
    with ``into``, a callable giving the row to decode the next clip into (an int16 row of the
    batch being assembled), it is a view of that row. Either way it is silent past its real samples.
    """
    for raw in src:
        key, shard = raw.get("__key__", "?"), raw.get("__url__", "?")
        missing = [e for e in fmt.MEMBER_EXTS if e not in raw]
        if missing:
            skip(f"{role}: incomplete sample (missing {','.join(missing)})", shard, key)
            continue
        try:
            meta = fmt.decode_meta(raw[fmt.META_EXT])
            valid = fmt.valid_samples(meta, clip_samples)
        except (ValueError, KeyError, TypeError) as exn:
            skip(f"{role}: json unreadable or without a duration ({type(exn).__name__})", shard, key)
            continue
        try:
            audio = fmt.decode_audio(raw[fmt.AUDIO_EXT], frames=clip_samples, out=None if into is None else into())
            image = Image.open(io.BytesIO(raw[fmt.IMAGE_EXT]))
            if draft_size and min(image.size) >= 2 * draft_size:
                image.draft("RGB", (draft_size, draft_size))
            image.load()  # decode here, where a failure is a counted skip
        except Exception as exn:  # noqa: BLE001 - any decode failure is a counted skip
            skip(f"{role}: undecodable ({type(exn).__name__}: {str(exn)[:80]})", shard, key)
            continue
        # (no NaN check: the format stores FLAC, i.e. integers, so decoded audio is always finite)
        if audio.shape[0] != clip_samples:
            skip(f"{role}: audio shorter than {clip_samples} samples", shard, key)
            continue
        audio[valid:] = 0  # padding is silent by format; make sure of it, the mixer relies on it
        yield {"key": key, "audio": audio, "valid": valid, "image": image, "meta": meta}


def seeded_shuffle(src, bufsize: int, rng: random.Random):
    if bufsize <= 1:
        yield from src
    else:
        yield from wds.shuffle(bufsize, initial=min(bufsize, 100), rng=rng)(src)


class _ItemDraws:
    """Per-item work in a worker after pairing: every random choice, and nothing dense.

    Workers decode (the part that needs a CPU); the resize, colour and mixing arithmetic is drawn
    here and applied to whole batches by ``finish_batch`` where the batch lands (the training
    device). Every item draws from its own generator, seeded by (worker seed, item index), so a
    resumed run can skip items without replaying their draws.
    """

    def __init__(self, cfg: LoaderConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.last = {"speech": None, "sound": None}  # donors for negative-audio splicing

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

    def __call__(self, index: int, speech, sound) -> dict:
        rng = np.random.default_rng([self.seed, index])
        out = {"speech_key": speech["key"], "sound_key": sound["key"]}
        for role, item in (("speech", speech), ("sound", sound)):
            self._audio(out, role, item, rng)
            self._image(out, role, item["image"], rng)
        out["snr_db"], out["level_db"] = draw_levels(rng, self.cfg.mix)
        return out


_STRING_FIELDS = ("speech_key", "sound_key")
_PREFETCH = 4  # batches each worker may have ready ahead of the consumer


class Arena:
    """One batch's bulk data in a single uint8 buffer: the clips and the image crops.

    One buffer means one shared-memory handle per batch (each separate tensor would cost a
    file-descriptor transfer; see ``ArenaPool.handoff``), and one host-to-device copy. Byte 0 is the release flag that
    ``release`` sets once the consumer is done with it; ``layout`` maps a field to its
    ``(offset, dtype, shape)`` so the consumer can view the fields again.
    """

    HEADER = 64  # the release flag, padded so that every field stays 64-byte aligned

    def __init__(self, buffer: torch.Tensor, slot: int | None = None):
        self.buffer, self.end, self.layout = buffer, self.HEADER, {}
        self.slot = slot  # the pool slot that owns the buffer; None for a one-off buffer
        buffer[0] = 0

    def place(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor | None:
        """A view for ``name`` at the end of the used part, or None when it does not fit."""
        nbytes = math.prod(shape) * dtype.itemsize
        if self.end + nbytes > self.buffer.numel():
            return None
        view = self.buffer[self.end : self.end + nbytes].view(dtype).view(shape)
        self.layout[name] = (self.end, str(dtype).removeprefix("torch."), shape)
        self.end += -(-nbytes // 64) * 64
        return view


class ArenaPool:
    """A worker's arenas, reused once the consumer has released them.

    A fresh shared-memory buffer costs more than filling it: the kernel zeroes its pages and the
    worker faults them in again, about a fifth of the time it takes to decode the clips it holds.
    ``TrainLoader`` releases a batch once ``finish_batch`` is done with it; a consumer that keeps
    raw batches never releases, and the pool then allocates, so a buffer in use is never
    overwritten.

    A shared buffer crosses to the consumer once (``handoff``); later batches in it carry only
    its slot, and the consumer keeps the mapping. Passing a shared tensor costs a file-descriptor
    transfer, a socket handshake with a helper thread of the worker that then competes with the
    decoding for the GIL, dozens of context switches per batch.
    """

    def __init__(self, slots: int, shared: bool):
        self.shared = shared
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.busy = [False] * slots
        self.generation = [0] * slots  # bumped whenever a slot gets a new buffer
        self.shipped = [-1] * slots  # the generation the consumer has mapped
        self.hint = 0  # bytes the last batch needed: new buffers start that large

    def _new(self, nbytes: int) -> torch.Tensor:
        if not self.shared:
            return torch.empty(nbytes, dtype=torch.uint8)
        storage = torch.UntypedStorage._new_shared(nbytes)
        return torch.empty(0, dtype=torch.uint8).set_(storage)

    def take(self, nbytes: int) -> Arena:
        """An arena of at least ``nbytes`` (the header included)."""
        nbytes = max(nbytes, self.hint)
        for i, buf in enumerate(self.buffers):
            if self.busy[i] and buf is not None and buf[0]:
                self.busy[i] = False  # released by the consumer
        for i, buf in enumerate(self.buffers):
            if not self.busy[i]:
                if buf is None or buf.numel() < nbytes:
                    buf = self.buffers[i] = self._new(nbytes)
                    self.generation[i] += 1
                self.busy[i] = True
                return Arena(buf, i)
        return Arena(self._new(nbytes))

    def grow(self, arena: Arena, nbytes: int) -> Arena:
        """A larger arena holding what ``arena`` holds (image crops vary in size); its slot keeps
        the larger buffer, with headroom, for later batches."""
        bigger = self._new(nbytes + nbytes // 4)
        bigger[: arena.end] = arena.buffer[: arena.end]
        if arena.slot is not None:
            self.buffers[arena.slot] = bigger
            self.generation[arena.slot] += 1
        grown = Arena(bigger, arena.slot)
        grown.end, grown.layout = arena.end, arena.layout
        return grown

    def handoff(self, arena: Arena) -> dict:
        """The fields by which a batch carries its arena: ``arena`` (the used part), or for a
        shared slot ``arena_ref`` + ``arena_end``, with the whole buffer as ``arena`` only the
        first time; ``TrainLoader.raw_batches`` turns those back into ``arena``."""
        if not self.shared or arena.slot is None:
            return {"arena": arena.buffer[: arena.end]}
        slot, generation = arena.slot, self.generation[arena.slot]
        fields = {"arena_ref": (slot, generation), "arena_end": arena.end}
        if self.shipped[slot] != generation:
            self.shipped[slot] = generation
            fields["arena"] = arena.buffer
        return fields


def release(batch: dict):
    """Hand a raw batch's arena back to the worker that filled it."""
    if "arena" in batch:
        batch["arena"][0] = 1


def collate(items: list[dict], arena: Arena, pool: ArenaPool) -> dict:
    """Stack per-item draws into a worker batch.

    ``arena`` already holds each role's int16 ``[size, L]`` clips (decoded in place; rows past
    the items are unused). Image crops (``*_pixels``, uint8 ``[h, w, 3]`` of varying sizes)
    are packed back to back after them, with their ``[B, 2]`` shapes under ``*_pixels_hw``.
    Small fields stay numpy: they travel pickled inline, where every torch tensor would get a
    shared-memory segment of its own.
    """
    batch = {}
    pixels = {}
    for name in items[0]:
        values = [it[name] for it in items]
        if name in _STRING_FIELDS:
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


def unpack(batch: dict, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The fields of a batch's arena, on ``device`` (one copy of its used part)."""
    data = batch["arena"].to(device, non_blocking=True)
    fields = {}
    for name, (offset, dtype, shape) in batch["layout"].items():
        dtype = getattr(torch, dtype)
        fields[name] = data[offset : offset + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
    return fields


def unpack_images(flat: torch.Tensor, hw: np.ndarray) -> list[torch.Tensor]:
    """The ``[h, w, 3]`` views of images packed by ``collate``."""
    hw = np.asarray(hw).tolist()
    return [part.view(h, w, 3) for part, (h, w) in zip(flat.split([h * w * 3 for h, w in hw]), hw)]


def finish_batch(raw: dict, cfg: LoaderConfig, device: torch.device | str = "cpu") -> dict:
    """A worker's batch of decoded data and draws -> the training batch, computed on ``device``.

    Returns per role (``speech``, ``sound``) the ImageNet-normalized image ``[B, 3, S, S]``, the
    stem as it sits in the mixture ``[B, L]`` (float32) and its mask of real samples; ``mix_audio``
    and ``mix_mask``; the drawn ``snr_db``, ``level_db`` and the peak guard's ``clip_scale``; the
    keys; ``*_splice`` foreign-sample masks when splicing is on.
    """
    out = {k: raw[k] for k in _STRING_FIELDS}

    bulk = unpack(raw, device)

    def tensor(name: str) -> torch.Tensor:
        return torch.as_tensor(raw[name]).to(device, non_blocking=True)

    audio, masks = {}, {}
    for role in ("speech", "sound"):
        pcm = bulk[f"{role}_audio"][: len(raw["speech_key"])]
        audio[role] = pcm.float().mul_(1 / fmt.PCM_SCALE)
        mask = valid_mask(tensor(f"{role}_valid"), pcm.shape[1])
        if f"{role}_span" in raw:
            mask &= ~span_mask(tensor(f"{role}_span"), pcm.shape[1])
        masks[role] = mask
        crops = unpack_images(bulk[f"{role}_pixels"], raw[f"{role}_pixels_hw"])
        out[f"{role}_image"] = augment_batch(crops, raw[f"{role}_flip"], raw[f"{role}_jitter"], cfg.image_size)
        if f"{role}_splice" in raw:
            out[f"{role}_splice"] = tensor(f"{role}_splice")
    mix = mix_batch(audio["speech"], audio["sound"], masks["speech"], masks["sound"],
                    tensor("snr_db"), tensor("level_db"), cfg.mix)
    out.update(speech_audio=mix.speech, sound_audio=mix.sound, mix_audio=mix.mixture,
               speech_mask=masks["speech"], sound_mask=masks["sound"], mix_mask=masks["speech"] | masks["sound"],
               snr_db=mix.snr_db, level_db=mix.level_db, clip_scale=mix.clip_scale)
    return out


# ---------------------------------------------------------------------------------------------
# the dataset one worker iterates


class MixedStream(torch.utils.data.IterableDataset):
    """One rank's view of the paired, mixed stream. Iterated inside DataLoader workers."""

    def __init__(self, cfg: LoaderConfig, rank: int = 0, world_size: int = 1, epoch: int = 0):
        super().__init__()
        self.skip_batches = 0  # batches of this rank's epoch already consumed (exact resume)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.cfg, self.rank, self.world_size, self.epoch = cfg, rank, world_size, epoch
        self.speech_shards = list_shards(cfg.speech)
        self.sound_shards = list_shards(cfg.sound)
        self.workers = max(1, cfg.num_workers)
        self.slots = world_size * self.workers
        self.speech_samples = sum(s.samples for s in self.speech_shards)
        if not cfg.resampled:
            plan_finite_epoch(self.speech_shards, self.slots, cfg.batch_size, cfg.seed, epoch)  # fail early

    def batches_per_worker(self) -> int:
        if self.cfg.resampled:
            total = self.cfg.epoch_samples or self.speech_samples
            return max(1, math.ceil(total / (self.slots * self.cfg.batch_size)))
        _, sizes = plan_finite_epoch(self.speech_shards, self.slots, self.cfg.batch_size, self.cfg.seed, self.epoch)
        return len(sizes[0])

    def __len__(self) -> int:
        return self.batches_per_worker() * self.workers

    def _worker(self) -> int:
        info = torch.utils.data.get_worker_info()
        if info is None:
            return 0
        if info.num_workers != self.workers:
            raise RuntimeError(f"LoaderConfig.num_workers={self.cfg.num_workers} but the DataLoader runs "
                               f"{info.num_workers} workers")
        return info.id

    def __iter__(self):
        # The DataLoader takes the rank's batch j from worker j % workers, always starting at
        # worker 0. A resume after `skip` batches must continue with the stream whose turn is
        # next, so DataLoader worker i plays the stream ("logical worker") (i + skip) % workers.
        cfg = self.cfg
        worker = (self._worker() + self.skip_batches) % self.workers
        slot = self.rank * self.workers + worker
        base = (cfg.seed, self.epoch, self.rank, worker)
        skip = SkipCounter(f"loader rank {self.rank} worker {worker}", cfg.log_interval_s)

        if cfg.resampled:
            speech_urls = shard_urls_resampled(self.speech_shards, random.Random(seed_from(*base, "speech-shards")))
            sizes = [cfg.batch_size] * self.batches_per_worker()
        else:
            assignment, all_sizes = plan_finite_epoch(self.speech_shards, self.slots, cfg.batch_size, cfg.seed, self.epoch)
            speech_urls, sizes = shard_urls(assignment[slot]), all_sizes[slot]
        sound_urls = shard_urls_resampled(self.sound_shards, random.Random(seed_from(*base, "sound-shards")))

        def raw_stream(urls, role):
            raw = wds.tarfile_to_samples(handler=skip.exception_handler)(urls)
            return seeded_shuffle(raw, cfg.shuffle_buffer, random.Random(seed_from(*base, role)))

        speech_raw, sound_raw = raw_stream(speech_urls, "speech"), raw_stream(sound_urls, "sound")
        # batches of this stream among the first `skip` of the rank
        skipped = max(0, (self.skip_batches - worker + self.workers - 1) // self.workers)
        index = 0
        for size in sizes[:skipped]:  # resume: consume the raw samples, decode nothing
            for _ in range(size):
                if next(speech_raw, None) is None:
                    break
                next(sound_raw)
                index += 1
        draft = None if cfg.train else cfg.image_size
        # Clips are decoded straight into the batch's audio buffers (shared memory in a worker):
        # row len(items) of the batch being assembled. `audio` and `items` are rebound per batch;
        # the lambdas read the current ones when they are called, at decode time.
        pool = ArenaPool(_PREFETCH + 2, shared=torch.utils.data.get_worker_info() is not None)
        audio: dict[str, torch.Tensor] = {}
        items: list[dict] = []
        speech = decode_samples(speech_raw, skip, "speech", cfg.clip_samples, draft,
                                into=lambda: audio["speech"][len(items)].numpy())
        sound = decode_samples(sound_raw, skip, "sound", cfg.clip_samples, draft,
                               into=lambda: audio["sound"][len(items)].numpy())
        draws = _ItemDraws(cfg, seed_from(*base, "augment"))
        for size in sizes[skipped:]:
            arena = pool.take(Arena.HEADER + 2 * (size * cfg.clip_samples * 2 + 64))
            audio = {role: arena.place(f"{role}_audio", torch.int16, (size, cfg.clip_samples))
                     for role in ("speech", "sound")}
            items = []
            for sp in speech:
                items.append(draws(index, sp, next(sound)))
                index += 1
                if len(items) == size:
                    break
            if items:
                batch = collate(items, arena, pool)
            else:
                # The speech stream ended early because samples were skipped. An empty batch keeps
                # this rank's batch count equal to its peers' (a missing one would hang them).
                log.warning("%s: speech ran out early after skipped samples; yielding an empty batch", skip.where)
                arena.buffer[0] = 1  # unused: back to the pool
                batch = {}
            batch["worker_stats"] = {"slot": slot, "skipped": dict(skip.by_reason),
                                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            yield batch


def _as_built(batch: dict) -> dict:
    return batch


class TrainLoader:
    """DataLoader over ``MixedStream`` plus skip totals gathered from every worker.

    Not meant for ``accelerator.prepare``: it already splits by rank (that would re-split it).
    """

    def __init__(self, cfg: LoaderConfig, rank: int = 0, world_size: int = 1, epoch: int = 0):
        self.cfg = cfg
        self.dataset = MixedStream(cfg, rank, world_size, epoch)
        self.skipped_by_slot: dict[int, dict] = {}
        self.peak_rss_mb: dict[int, float] = {}

    def set_epoch(self, epoch: int):
        self.dataset.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def skipped(self) -> Counter:
        total: Counter = Counter()
        for counts in self.skipped_by_slot.values():
            total.update(counts)
        return total

    def __iter__(self):
        return self.iterate()

    def raw_batches(self, skip: int = 0):
        """The workers' batches as they arrive: decoded data and draws, not finished. The caller
        finishes (``finish_batch``) and/or ``release``s each one."""
        self.dataset.skip_batches = skip
        kwargs = {"prefetch_factor": _PREFETCH} if self.cfg.num_workers > 0 else {}
        # its own generator: creating workers must not consume the global torch RNG (exact resume)
        # collate_fn: batches arrive as the workers built them. The default (without batch_size)
        # turns every numpy field into a tensor, each shipped as its own shared-memory segment.
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=self.cfg.num_workers,
                                             collate_fn=_as_built, generator=torch.Generator(), **kwargs)
        mapped: dict[tuple[int, int], tuple[int, torch.Tensor]] = {}  # (worker slot, pool slot) -> buffer
        for batch in loader:
            stats = batch.pop("worker_stats")
            self.skipped_by_slot[stats["slot"]] = stats["skipped"]
            self.peak_rss_mb[stats["slot"]] = stats["peak_rss_mb"]
            if "arena_ref" in batch:  # see ArenaPool.handoff; a worker's batches arrive in order
                slot, generation = batch.pop("arena_ref")
                if "arena" in batch:
                    mapped[stats["slot"], slot] = generation, batch["arena"]
                mapped_generation, buffer = mapped[stats["slot"], slot]
                assert mapped_generation == generation, "arena handed over out of order"
                batch["arena"] = buffer[: batch.pop("arena_end")]
            yield batch

    def iterate(self, skip: int = 0, device: torch.device | str = "cpu"):
        """This epoch's batches, starting after the first ``skip`` (used to resume mid-epoch).

        Workers hand over decoded data and draws; ``finish_batch`` then crops, jitters and mixes
        the whole batch on ``device`` (pass the training device: this is dense arithmetic).
        """
        for batch in self.raw_batches(skip):
            if "speech_key" not in batch:
                yield batch  # empty: see MixedStream
                continue
            finished = finish_batch(batch, self.cfg, device)
            release(batch)  # nothing finished refers to the worker's buffers
            yield finished
