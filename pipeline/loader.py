"""Streaming training loader: speech shards paired with sound shards and mixed at read time.

Each worker runs one pipeline of small generator stages (webdataset style)::

    speech shards ─▶ raw samples ─▶ shuffle (bytes) ─▶ decode ─┐
                                                               ├─▶ pair ─▶ augment + mix ─▶ batch
    sound shards (resampled forever) ─▶ shuffle ─▶ decode ─────┘

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
from pipeline.mixing import MaskConfig, MixConfig, SpliceConfig, mask_span, mix_pair, splice_negative
from pipeline.transform import AugmentConfig, eval_image, to_uint8_tensor, train_image

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
                   draft_size: int | None = None) -> Iterator[dict]:
    """Raw tar samples -> {key, audio (float32), valid, image (PIL), meta}; bad ones counted.

    ``draft_size``: let the JPEG decoder downscale by 2/4/8 while staying >= this size (evaluation
    transforms only need that much; training crops keep full resolution).
    """
    for raw in src:
        key, shard = raw.get("__key__", "?"), raw.get("__url__", "?")
        missing = [e for e in fmt.MEMBER_EXTS if e not in raw]
        if missing:
            skip(f"{role}: incomplete sample (missing {','.join(missing)})", shard, key)
            continue
        try:
            meta = fmt.decode_meta(raw[fmt.META_EXT])
            audio = fmt.decode_audio(raw[fmt.AUDIO_EXT], frames=clip_samples)
            image = Image.open(io.BytesIO(raw[fmt.IMAGE_EXT]))
            if draft_size and min(image.size) >= 2 * draft_size:
                image.draft("RGB", (draft_size, draft_size))
            image.load()  # decode here, where a failure is a counted skip
        except Exception as exn:  # noqa: BLE001 - any decode failure is a counted skip
            skip(f"{role}: undecodable ({type(exn).__name__}: {str(exn)[:80]})", shard, key)
            continue
        if audio.shape[0] != clip_samples or not np.isfinite(audio).all():
            skip(f"{role}: audio shorter than {clip_samples} samples or not finite", shard, key)
            continue
        try:
            valid = fmt.valid_samples(meta)
        except (KeyError, TypeError, ValueError):
            skip(f"{role}: json without a duration", shard, key)
            continue
        yield {"key": key, "audio": audio, "valid": valid, "image": image, "meta": meta}


def seeded_shuffle(src, bufsize: int, rng: random.Random):
    if bufsize <= 1:
        yield from src
    else:
        yield from wds.shuffle(bufsize, initial=min(bufsize, 100), rng=rng)(src)


class _Augmenter:
    """Per-item work after pairing: crop the clip, image transform, optional splicing/masking, mix.

    Every item draws from its own generator, seeded by (worker seed, item index), so a resumed run
    can skip items without replaying their draws.
    """

    def __init__(self, cfg: LoaderConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.last = {"speech": None, "sound": None}  # donors for negative-audio splicing

    def _clip(self, item, role, rng):
        n = self.cfg.clip_samples
        audio = item["audio"][:n]
        valid = min(item["valid"], n)
        foreign = np.zeros(n, dtype=bool)
        donor = self.last[role]
        if self.cfg.splice.prob > 0 and donor is not None:
            audio, foreign = splice_negative(audio, valid, donor[0], donor[1], rng, self.cfg.splice)
        self.last[role] = (item["audio"][:n], valid)
        mask = np.zeros(n, dtype=bool)
        mask[:valid] = True
        audio, mask = mask_span(audio, mask, rng, self.cfg.masking)
        return audio, mask, foreign

    def _image(self, image, rng):
        if self.cfg.train:
            return to_uint8_tensor(train_image(image, self.cfg.image_size, rng, self.cfg.augment))
        return to_uint8_tensor(eval_image(image, self.cfg.image_size))

    def __call__(self, index: int, speech, sound) -> dict:
        rng = np.random.default_rng([self.seed, index])
        sp_audio, sp_mask, sp_foreign = self._clip(speech, "speech", rng)
        so_audio, so_mask, so_foreign = self._clip(sound, "sound", rng)
        mix = mix_pair(sp_audio, so_audio, rng, self.cfg.mix,
                       speech_valid=int(sp_mask.sum()), sound_valid=int(so_mask.sum()))
        out = {
            "speech_audio": mix.speech, "speech_mask": sp_mask, "speech_image": self._image(speech["image"], rng),
            "sound_audio": mix.sound, "sound_mask": so_mask, "sound_image": self._image(sound["image"], rng),
            "snr_db": mix.snr_db, "level_db": mix.level_db, "clip_scale": mix.clip_scale,
            "speech_key": speech["key"], "sound_key": sound["key"],
        }
        if self.cfg.splice.prob > 0:
            out["speech_splice"], out["sound_splice"] = sp_foreign, so_foreign
        return out


_STRING_FIELDS = ("speech_key", "sound_key")


def collate(items: list[dict]) -> dict:
    batch = {}
    for name in items[0]:
        values = [it[name] for it in items]
        if name in _STRING_FIELDS:
            batch[name] = values
        elif isinstance(values[0], torch.Tensor):
            batch[name] = torch.stack(values)
        elif isinstance(values[0], np.ndarray):
            batch[name] = torch.from_numpy(np.stack(values))
        else:
            batch[name] = torch.tensor(values, dtype=torch.float32)
    return batch


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
        speech = decode_samples(speech_raw, skip, "speech", cfg.clip_samples, draft)
        sound = decode_samples(sound_raw, skip, "sound", cfg.clip_samples, draft)
        augment = _Augmenter(cfg, seed_from(*base, "augment"))
        for size in sizes[skipped:]:
            items = []
            for sp in speech:
                items.append(augment(index, sp, next(sound)))
                index += 1
                if len(items) == size:
                    break
            if not items:
                # The speech stream ended early because samples were skipped. An empty batch keeps
                # this rank's batch count equal to its peers' (a missing one would hang them).
                log.warning("%s: speech ran out early after skipped samples; yielding an empty batch", skip.where)
            batch = collate(items) if items else {}
            batch["worker_stats"] = {"slot": slot, "skipped": dict(skip.by_reason),
                                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            yield batch


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

    def iterate(self, skip: int = 0):
        """This epoch's batches, starting after the first ``skip`` (used to resume mid-epoch)."""
        self.dataset.skip_batches = skip
        kwargs = {"prefetch_factor": 4} if self.cfg.num_workers > 0 else {}
        # its own generator: creating workers must not consume the global torch RNG (exact resume)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=self.cfg.num_workers,
                                             generator=torch.Generator(), **kwargs)
        for batch in loader:
            stats = batch.pop("worker_stats")
            self.skipped_by_slot[stats["slot"]] = stats["skipped"]
            self.peak_rss_mb[stats["slot"]] = stats["peak_rss_mb"]
            if "speech_audio" in batch:
                # The mixture is exactly the sum of the stems the worker scaled; forming it here
                # instead of in the worker saves a third of the audio copied between processes.
                batch["mix_audio"] = batch["speech_audio"] + batch["sound_audio"]
                batch["mix_mask"] = batch["speech_mask"] | batch["sound_mask"]
            yield batch
