"""The training loader: K >= 2 typed streams of shards (speech, sound, ...), mixed at read time.

Each worker runs one stream of named stages (``pipeline.data.stages``) per type, read top to bottom
in ``MixedStream.__iter__``::

    pace shards (speech) ─▶ locate ─▶ shuffle ─▶ count ─▶ read ─▶ decode ─┐
                                                                          ├─▶ draw_items ─▶ assemble_batches
    every other type's shards (resampled forever) ─▶ … ─▶ decode ─────────┘     (+ mix_types)   │
                                                                                                ▼
                    main process, on the training device:   crop + colour jitter + mix (finish_batch)

The streams are ``LoaderConfig.stream_specs`` (``data.streams``, or ``data.speech`` + ``data.sound``),
in config order; every item holds one clip of every type. ``data.mix.subset`` picks the types of
each batch's mixture (``pipeline.data.mixing.draw_mixture_types``) from a generator seeded by
(seed, epoch, the batch's number in the rank's epoch), the same on every rank, so the gathered
loss sees one kind of mixture per step.

Workers do what needs a CPU (tar reading, FLAC and JPEG decoding) and every random draw (crop box,
flip, colour matrix, mixing ratio and level, splices), so a batch is fixed by the seeds alone; the
dense arithmetic runs batched where the batch lands, which keeps a worker's cost per item close to
the cost of decoding it. Batches cross in one shared buffer each (``pipeline.data.arena``).

Two modes for the pace stream (``data.pace``, speech by default), which drives the epoch:

* ``resampled`` (default for training): every worker draws pace shards with replacement, forever;
  an epoch is ``batches_per_worker`` batches of exactly ``batch_size`` per worker, so every rank gets
  the same number of equal batches by construction.
* finite: each pace sample is seen exactly once per epoch. Shards are dealt to the
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
from pipeline.data.mixing import draw_mixture_types, mix_streams, span_mask, valid_mask
from pipeline.data.sources import LoaderError, list_shards, plan_finite_epoch, require_samples, seed_from
from pipeline.data.stages import (
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

    Returns per type ``t`` (``cfg.types``) the ImageNet-normalized image ``t_image [B, 3, S, S]``,
    the stem as it sits in the mixture ``t_audio [B, L]`` (float32; a type left out of this batch's
    mixture: its clean clip, normalized the same way) and its mask of real samples ``t_mask``, the
    keys ``t_key``, ``t_splice`` foreign-sample masks when splicing is on; ``mix_audio`` and
    ``mix_mask``; the drawn ``snr_db`` (``[B]`` for two types, else ``[B, K - 1]``), ``level_db``
    and the peak guard's ``clip_scale``; ``types`` (every type) and ``mix_types`` (the mixture's).
    """
    types = cfg.types
    out = {f"{kind}_key": raw[f"{kind}_key"] for kind in types}

    bulk = unpack(raw, device)

    def tensor(name: str) -> torch.Tensor:
        return torch.as_tensor(raw[name]).to(device, non_blocking=True)

    audio, masks = {}, {}
    for kind in types:
        pcm = bulk[f"{kind}_audio"][: len(raw[f"{types[0]}_key"])]
        audio[kind] = pcm.float().mul_(1 / fmt.PCM_SCALE)
        mask = valid_mask(tensor(f"{kind}_valid"), pcm.shape[1])
        if f"{kind}_span" in raw:
            mask &= ~span_mask(tensor(f"{kind}_span"), pcm.shape[1])
        masks[kind] = mask
        crops = unpack_images(bulk[f"{kind}_pixels"], raw[f"{kind}_pixels_hw"])
        out[f"{kind}_image"] = augment_batch(crops, raw[f"{kind}_flip"], raw[f"{kind}_jitter"], cfg.image_size)
        if f"{kind}_splice" in raw:
            out[f"{kind}_splice"] = tensor(f"{kind}_splice")
    mix = mix_streams(audio, masks, tensor("snr_db"), tensor("level_db"), cfg.mix, raw.get("mix_types", types))
    for kind in types:
        out[f"{kind}_audio"], out[f"{kind}_mask"] = mix.stems[kind], masks[kind]
    out.update(
        mix_audio=mix.mixture,
        mix_mask=mix.mask,
        snr_db=mix.snr_db,
        level_db=mix.level_db,
        clip_scale=mix.clip_scale,
        types=types,
        mix_types=mix.types,
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
        self.types, self.pace = cfg.types, cfg.pace_type
        specs = cfg.stream_specs
        self.shards = {kind: list_shards(spec) for kind, spec in specs.items()}  # every spec checked first
        for kind, spec in specs.items():
            require_samples(self.shards[kind], spec, cfg.spec_key(kind))
        self.workers = max(1, cfg.num_workers)
        self.slots = world_size * self.workers
        self.pace_samples = sum(s.samples for s in self.shards[self.pace])
        if not cfg.resampled:
            self._finite_plan()  # fail early

    def _finite_plan(self):
        return plan_finite_epoch(
            self.shards[self.pace], self.slots, self.cfg.batch_size, self.cfg.seed, self.epoch, self.pace
        )

    def batches_per_worker(self) -> int:
        if self.cfg.resampled:
            total = self.cfg.epoch_samples or self.pace_samples
            return max(1, math.ceil(total / (self.slots * self.cfg.batch_size)))
        _, sizes = self._finite_plan()
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

    def _pace_plan(self, slot: int, rng: random.Random):
        """The pace shards this worker reads (an endless draw, or its share of the epoch) and its batch sizes."""
        shards = self.shards[self.pace]
        if self.cfg.resampled:
            return shards, resampled_shards(shards, rng), [self.cfg.batch_size] * self.batches_per_worker()
        assignment, sizes = self._finite_plan()
        return assignment[slot], iter(assignment[slot]), sizes[slot]

    def _resume_point(self, slot: int, items: int) -> StreamCursor:
        """Where the stream of ``slot`` resumes: its saved cursor, or else (no cursor saved) the
        position after ``items`` items as if none had been skipped."""
        saved = self.cursors.get(slot)
        return StreamCursor.from_state(saved) if saved else StreamCursor.without_skips(items, self.types)

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
        specs, pace = cfg.stream_specs, self.pace
        pace_read, pace_shards, sizes = self._pace_plan(slot, random.Random(seed_from(*base, f"{pace}-shards")))
        shards, guards = {}, {}
        for kind in self.types:
            if kind == pace:
                read, shards[kind] = pace_read, pace_shards
            else:  # (seeds named by type: speech and sound keep the ones of the two-stream loader)
                read = self.shards[kind]
                shards[kind] = resampled_shards(read, random.Random(seed_from(*base, f"{kind}-shards")))
            guards[kind] = StreamGuard(kind, specs[kind], read, skip, cfg.max_consecutive_skips)
        done = max(0, (self.skip_batches - worker + self.workers - 1) // self.workers)  # this stream's consumed batches
        # the rank's batch j comes from logical worker j % workers: this worker's b-th batch is j = b * workers + worker
        subset_seed = seed_from(cfg.seed, self.epoch, "mix-subset")
        mixtures = [
            draw_mixture_types(self.types, cfg.mix.subset, subset_seed, b * self.workers + worker)
            for b in range(done, len(sizes))
        ]

        cursor = StreamCursor()
        located = {
            kind: count(
                shuffle(
                    locate_samples(shards[kind], guards[kind]),
                    cfg.shuffle_buffer,
                    random.Random(seed_from(*base, kind)),
                ),
                cursor,
                kind,
            )
            for kind in self.types
        }
        fast_forward(located, cursor, self._resume_point(slot, sum(sizes[:done])), list(guards.values()), skip)
        batch = BatchAssembly(
            ArenaPool(PREFETCH + 2, shared=torch.utils.data.get_worker_info() is not None),
            cfg.clip_samples,
            self.types,
        )
        streams = {
            kind: decode(
                read_samples(located[kind], guards[kind]),
                guards[kind],
                cfg.clip_samples,
                functools.partial(batch.next_row, kind),
            )
            for kind in self.types
        }
        items = draw_items(streams, pace, ItemDraws(cfg, seed_from(*base, "augment")), cursor)

        def stats() -> dict:
            return {
                "slot": slot,
                "cursor": cursor.snapshot(skip),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }

        try:
            for out in assemble_batches(items, sizes[done:], batch, mixtures, pace):
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
            if f"{self.cfg.types[0]}_key" not in batch:  # empty: see assemble_batches
                yield {"types": self.cfg.types, "mix_types": batch["mix_types"]}
                continue
            finished = finish_batch(batch, self.cfg, device)
            release(batch)  # nothing finished refers to the worker's buffers
            yield finished
