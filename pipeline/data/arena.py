"""The shared-memory arena: one buffer per batch holding its clips and image crops.

A worker fills an ``Arena`` taken from its ``ArenaPool``; the batch crosses to the main process
as that one buffer (once per pool slot, then by reference: ``ArenaPool.handoff``), the consumer
views the fields again (``unpack``) and hands the buffer back (``release``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

PREFETCH = 4  # batches each worker may have ready ahead of the consumer; the pool holds a few more


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
                    # with headroom, as ``grow``: each batch that needs a little more than any before
                    # would otherwise replace the slot again (a fresh buffer faulted in, handed over)
                    buf = self.buffers[i] = self._new(nbytes + nbytes // 4)
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


def unpack(batch: dict, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The fields of a batch's arena, on ``device`` (one copy of its used part)."""
    data = batch["arena"].to(device, non_blocking=True)
    fields = {}
    for name, (offset, dtype, shape) in batch["layout"].items():
        dtype = getattr(torch, dtype)
        fields[name] = data[offset : offset + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
    return fields


def unpack_images(flat: torch.Tensor, hw: np.ndarray) -> list[torch.Tensor]:
    """The ``[h, w, 3]`` views of images packed back to back (``pipeline.data.stages.collate``)."""
    hw = np.asarray(hw).tolist()
    return [part.view(h, w, 3) for part, (h, w) in zip(flat.split([h * w * 3 for h, w in hw]), hw)]
