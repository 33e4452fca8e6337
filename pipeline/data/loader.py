"""The training loader: speech shards paired with sound shards, mixed at read time.

Each worker runs one stream of named stages (``pipeline.data.stages``), read top to bottom in
``MixedStream.__iter__``::

    speech shards ─▶ locate ─▶ shuffle ─▶ count ─▶ read ─▶ decode ─┐
                                                                   ├─▶ draw_items ─▶ assemble_batches
    sound shards (resampled forever) ─▶ … ─▶ decode ───────────────┘                        │
                                                                                            ▼
                    main process, on the training device:   crop + colour jitter + mix (finish_batch)

Workers do what needs a CPU (tar reading, FLAC and JPEG decoding) and every random draw (crop box,
flip, colour matrix, mixing ratio and level, splices), so a batch is fixed by the seeds alone; the
dense arithmetic runs batched where the batch lands, which keeps a worker's cost per item close to
the cost of decoding it. Batches cross in one shared buffer each (``pipeline.data.arena``).

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
(rate-limited log naming shard and key); a stream with no usable sample stops with a ``LoaderError``,
sent through the batch stream as one line. Every batch carries its worker's ``StreamCursor``;
``TrainLoader.state`` is what a checkpoint keeps to resume exactly, skips included.
"""

from __future__ import annotations

import functools
import gc
import math
import os
import random
import resource
from collections import Counter

import torch

from pipeline import format as fmt
from pipeline.data.arena import PREFETCH, ArenaPool, release, unpack, unpack_images
from pipeline.data.config import LoaderConfig
from pipeline.data.mixing import mix_batch, span_mask, valid_mask
from pipeline.data.sources import LoaderError, list_shards, plan_finite_epoch, require_samples, seed_from
from pipeline.data.stages import (
    ROLES,
    STRING_FIELDS,
    BatchAssembly,
    ItemDraws,
    SkipCounter,
    StreamCursor,
    StreamGuard,
    assemble_batches,
    count,
    decode,
    draw_items,
    fast_forward,
    locate_samples,
    read_samples,
    resampled_shards,
    shuffle,
)
from pipeline.data.transform import augment_batch
from pipeline.lifetime import die_with_parent
from pipeline.storage import StorageError


def finish_batch(raw: dict, cfg: LoaderConfig, device: torch.device | str = "cpu") -> dict:
    """A worker's batch of decoded data and draws -> the training batch, computed on ``device``.

    Returns per role (``speech``, ``sound``) the ImageNet-normalized image ``[B, 3, S, S]``, the
    stem as it sits in the mixture ``[B, L]`` (float32) and its mask of real samples; ``mix_audio``
    and ``mix_mask``; the drawn ``snr_db``, ``level_db`` and the peak guard's ``clip_scale``; the
    keys; ``*_splice`` foreign-sample masks when splicing is on.
    """
    out = {k: raw[k] for k in STRING_FIELDS}

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
    mix = mix_batch(
        audio["speech"], audio["sound"], masks["speech"], masks["sound"], tensor("snr_db"), tensor("level_db"), cfg.mix
    )
    out.update(
        speech_audio=mix.speech,
        sound_audio=mix.sound,
        mix_audio=mix.mixture,
        speech_mask=masks["speech"],
        sound_mask=masks["sound"],
        mix_mask=masks["speech"] | masks["sound"],
        snr_db=mix.snr_db,
        level_db=mix.level_db,
        clip_scale=mix.clip_scale,
    )
    return out


# ---------------------------------------------------------------------------------------------
# the dataset one worker iterates


class MixedStream(torch.utils.data.IterableDataset):
    """One rank's view of the paired, mixed stream. Iterated inside DataLoader workers."""

    def __init__(self, cfg: LoaderConfig, rank: int = 0, world_size: int = 1, epoch: int = 0):
        super().__init__()
        self.skip_batches = 0  # batches of this rank's epoch already consumed (exact resume)
        self.cursors: dict[int, dict] = {}  # slot -> cursor of its last consumed batch (exact resume)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.cfg, self.rank, self.world_size, self.epoch = cfg, rank, world_size, epoch
        self.speech_shards = list_shards(cfg.speech)
        self.sound_shards = list_shards(cfg.sound)
        require_samples(self.speech_shards, cfg.speech, "speech")
        require_samples(self.sound_shards, cfg.sound, "sound")
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
            raise RuntimeError(
                f"LoaderConfig.num_workers={self.cfg.num_workers} but the DataLoader runs {info.num_workers} workers"
            )
        return info.id

    def _speech_plan(self, slot: int, rng: random.Random):
        """The shards this worker reads (an endless draw, or its share of the epoch) and its batch sizes."""
        if self.cfg.resampled:
            return (
                self.speech_shards,
                resampled_shards(self.speech_shards, rng),
                [self.cfg.batch_size] * self.batches_per_worker(),
            )
        assignment, sizes = plan_finite_epoch(
            self.speech_shards, self.slots, self.cfg.batch_size, self.cfg.seed, self.epoch
        )
        return assignment[slot], iter(assignment[slot]), sizes[slot]

    def _resume_point(self, slot: int, items: int) -> StreamCursor:
        """Where the stream of ``slot`` resumes: its saved cursor, or else (no cursor saved) the
        position after ``items`` items as if none had been skipped."""
        saved = self.cursors.get(slot)
        return StreamCursor(**saved) if saved else StreamCursor.without_skips(items)

    def __iter__(self):
        # The DataLoader takes the rank's batch j from worker j % workers, always starting at
        # worker 0. A resume after `skip` batches must continue with the stream whose turn is
        # next, so DataLoader worker i plays the stream ("logical worker") (i + skip) % workers.
        cfg = self.cfg
        if torch.utils.data.get_worker_info() is not None:
            # What a worker inherits from the training process (forked) goes to GC's permanent
            # generation: a full collection would walk all of it, copying every page it touches
            # (in a worker forked from the benchmark, ~0.1 s and ~8,000 page copies each time).
            gc.freeze()
        worker = (self._worker() + self.skip_batches) % self.workers
        slot = self.rank * self.workers + worker
        base = (cfg.seed, self.epoch, self.rank, worker)
        skip = SkipCounter(f"loader rank {self.rank} worker {worker}", cfg.log_interval_s)
        speech_read, speech_shards, sizes = self._speech_plan(slot, random.Random(seed_from(*base, "speech-shards")))
        sound_shards = resampled_shards(self.sound_shards, random.Random(seed_from(*base, "sound-shards")))
        guards = {
            "speech": StreamGuard("speech", cfg.speech, speech_read, skip, cfg.max_consecutive_skips),
            "sound": StreamGuard("sound", cfg.sound, self.sound_shards, skip, cfg.max_consecutive_skips),
        }
        done = max(0, (self.skip_batches - worker + self.workers - 1) // self.workers)  # this stream's consumed batches

        cursor = StreamCursor()
        located = {
            role: count(
                shuffle(
                    locate_samples(shards, guards[role]), cfg.shuffle_buffer, random.Random(seed_from(*base, role))
                ),
                cursor,
                role,
            )
            for role, shards in (("speech", speech_shards), ("sound", sound_shards))
        }
        fast_forward(located, cursor, self._resume_point(slot, sum(sizes[:done])), list(guards.values()), skip)
        batch = BatchAssembly(
            ArenaPool(PREFETCH + 2, shared=torch.utils.data.get_worker_info() is not None), cfg.clip_samples
        )
        speech, sound = (
            decode(
                read_samples(located[role], guards[role]),
                guards[role],
                cfg.clip_samples,
                functools.partial(batch.next_row, role),
            )
            for role in ROLES
        )
        items = draw_items(speech, sound, ItemDraws(cfg, seed_from(*base, "augment")), cursor)

        def stats() -> dict:
            return {
                "slot": slot,
                "cursor": cursor.snapshot(skip),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }

        try:
            for out in assemble_batches(items, sizes[done:], batch):
                out["worker_stats"] = stats()
                yield out
        except (LoaderError, StorageError) as exn:  # to the main process as one line (see TrainLoader.raw_batches);
            # StorageError: a store that stayed unreachable after the reader's retries, naming the object
            yield {"loader_error": str(exn), "worker_stats": stats()}


def _as_built(batch: dict) -> dict:
    return batch


class TrainLoader:
    """DataLoader over ``MixedStream``, with the skip totals of the run and the resumable state.

    Not meant for ``accelerator.prepare``: it already splits by rank (that would re-split it).
    """

    def __init__(self, cfg: LoaderConfig, rank: int = 0, world_size: int = 1, epoch: int = 0):
        self.cfg = cfg
        self.dataset = MixedStream(cfg, rank, world_size, epoch)
        self.cursors: dict[int, dict] = {}  # slot -> cursor of its last consumed batch, this epoch
        self.consumed = 0  # batches of this epoch handed out
        self.earlier_skips: Counter = Counter()  # skips of the epochs before this one (and before a resume)
        self.peak_rss_mb: dict[int, float] = {}

    def set_epoch(self, epoch: int):
        if epoch != self.dataset.epoch:
            self.earlier_skips = self.skipped
            self.cursors, self.consumed = {}, 0
        self.dataset.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def skipped(self) -> Counter:
        """Samples skipped so far in the run, by reason."""
        total = Counter(self.earlier_skips)
        for cursor in self.cursors.values():
            total.update(cursor["skipped"])
        return total

    def state(self) -> dict:
        """What a checkpoint keeps to resume this loader exactly (JSON-ready)."""
        return {
            "epoch": self.dataset.epoch,
            "consumed": self.consumed,
            "earlier_skips": dict(self.earlier_skips),
            "cursors": {str(slot): c for slot, c in self.cursors.items()},
        }

    def restore(self, state: dict):
        self.dataset.epoch, self.consumed = state["epoch"], state["consumed"]
        self.earlier_skips = Counter(state["earlier_skips"])
        self.cursors = {int(slot): c for slot, c in state["cursors"].items()}

    def __iter__(self):
        return self.iterate()

    def raw_batches(self, skip: int = 0):
        """The workers' batches as they arrive: decoded data and draws, not finished. The caller
        finishes (``finish_batch``) and/or ``release``s each one. ``skip``: batches of this epoch
        already consumed; the workers fast-forward to the saved cursors when they belong there."""
        resume = self.cursors if skip and skip == self.consumed else {}
        self.cursors, self.consumed = dict(resume), skip
        self.dataset.skip_batches, self.dataset.cursors = skip, resume
        kwargs = {"prefetch_factor": PREFETCH} if self.cfg.num_workers > 0 else {}
        # its own generator: creating workers must not consume the global torch RNG (exact resume)
        # collate_fn: batches arrive as the workers built them. The default (without batch_size)
        # turns every numpy field into a tensor, each shipped as its own shared-memory segment.
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.cfg.num_workers,
            collate_fn=_as_built,
            generator=torch.Generator(),
            worker_init_fn=functools.partial(die_with_parent, os.getpid()),  # never outlive a killed trainer
            **kwargs,
        )
        mapped: dict[tuple[int, int], tuple[int, torch.Tensor]] = {}  # (worker slot, pool slot) -> buffer
        for batch in loader:
            stats = batch.pop("worker_stats")
            if "loader_error" in batch:
                raise LoaderError(batch["loader_error"])
            self.cursors[stats["slot"]] = stats["cursor"]
            self.consumed += 1
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
                yield batch  # empty: see assemble_batches
                continue
            finished = finish_batch(batch, self.cfg, device)
            release(batch)  # nothing finished refers to the worker's buffers
            yield finished
