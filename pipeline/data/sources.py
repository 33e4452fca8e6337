"""What the loader reads: shard specs resolved to committed shards, the finite-epoch plan, seeds.

A spec is local paths only (directories, tar files, globs; comma-separated): a string such as
``pipe:...`` or ``http://...`` is refused, and the loader opens every tar itself, so no file name
is ever interpreted as a command or a URL. Directories are listed by ``pipeline.shard_dir``
(the commit rule); glob results that are not regular files are ignored.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import random
import re
import tarfile
from dataclasses import dataclass

from pipeline import shard_dir

log = logging.getLogger(__name__)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # pipe:, file:, http:, s3: ...


class LoaderError(RuntimeError):
    """The data cannot feed training as it is; the message (one line) names what and what to do."""


@dataclass(frozen=True)
class Shard:
    path: str  # absolute
    samples: int  # as recorded by its commit marker (or counted, for a tar without one)


def list_shards(spec: str) -> list[Shard]:
    """Resolve a comma-separated list of directories, tar files and globs into committed shards."""
    shards: list[Shard] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if _SCHEME.match(part):
            raise LoaderError(f"{part!r}: shards are read from local paths only (a webdataset URL such as "
                              "pipe:... would run a command); pass a directory, tar file or glob")
        found = _from_dir(part) if os.path.isdir(part) else _from_files(part, spec)
        if not found:
            raise FileNotFoundError(
                f"no committed shards in {part!r}: build them with `prep shards ...` "
                "(a shard counts once its NNNNNN_stats.json marker exists)")
        shards += found
    return shards


def _from_dir(directory: str) -> list[Shard]:
    listing = shard_dir.list_dir(directory)
    if problems := listing.problems():
        log.warning("%s: ignoring %s; `prep shards` rebuilds them", directory, problems)
    return [Shard(os.path.abspath(s.tar), s.samples) for s in listing.committed]


def _from_files(part: str, spec: str) -> list[Shard]:
    pattern = any(c in part for c in "*?[")
    found = []
    for path in sorted(glob.glob(part)) if pattern else [part]:
        if not os.path.isfile(path):
            if pattern:
                continue  # a directory, fifo or dangling link matched by the glob: not a shard
            what = "is not a regular file" if os.path.exists(path) else "does not exist"
            raise FileNotFoundError(f"shard {path!r} {what} (from {spec!r}): build shards with "
                                    "`prep shards ...` or fix the path")
        marker = path.removesuffix(".tar") + shard_dir.STATS_SUFFIX if path.endswith(".tar") else None
        if marker and os.path.exists(marker):
            stats = shard_dir.read_stats(marker)
            if stats is None:
                log.warning("%s: unreadable commit marker, shard ignored as uncommitted; `prep shards` rebuilds it",
                            marker)
                continue
            found.append(Shard(os.path.abspath(path), int(stats.get("written", 0))))
        else:
            found.append(Shard(os.path.abspath(path), _count_samples(path)))
    return found


def _count_samples(path: str) -> int:
    try:
        return len(shard_dir.tar_keys(path))
    except (tarfile.TarError, OSError, EOFError) as exn:
        raise LoaderError(f"{path}: not a readable tar ({type(exn).__name__}: {exn}); rebuild it with "
                          "`prep shards ...` or leave it out of the spec") from None


def require_samples(shards: list[Shard], spec: str, role: str) -> None:
    """Refuse a stream whose committed shards hold nothing (rather than fail in every worker)."""
    if sum(s.samples for s in shards) == 0:
        raise LoaderError(f"no samples in the committed shards of {spec} ({len(shards)} shard(s), each "
                          f"recording 0 written samples): rebuild them with `prep shards ...` or set data.{role} "
                          "to shards that hold data")


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
