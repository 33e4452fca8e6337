"""What the loader reads: shard specs resolved to committed shards, the finite-epoch plan, seeds.

A spec is a comma-separated list of directories, tar files and globs, each a local path,
``file:///path`` or ``s3://bucket/prefix`` (``pipeline.storage``'s allow-list): a string such as
``pipe:...`` or ``http://...`` is refused, and the loader opens every tar itself, so no file name
is ever interpreted as a command. Directories are listed by ``pipeline.shard_dir`` (the commit
rule); glob results that are not regular files are ignored. A tar in a store is streamed front to
back by the worker that reads it (never downloaded whole first).
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import logging
import math
import os
import random
import re
import tarfile
from dataclasses import dataclass

from pipeline import shard_dir, storage

log = logging.getLogger(__name__)


class LoaderError(RuntimeError):
    """The data cannot feed training as it is; the message (one line) names what and what to do."""


@dataclass(frozen=True)
class Shard:
    path: str  # an absolute path, or an s3:// URL
    samples: int  # as recorded by its commit marker (or counted, for a tar without one)


def list_shards(spec: str) -> list[Shard]:
    """Resolve a comma-separated list of directories, tar files and globs into committed shards."""
    shards: list[Shard] = []
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    try:
        locations = [storage.location(part) for part in parts]  # every scheme checked before anything is read
    except storage.StorageError as exc:
        raise LoaderError(str(exc)) from None
    for part, loc in zip(parts, locations):
        try:
            if isinstance(loc, storage.S3Path):
                found = _from_store(loc, spec)
            else:
                part = os.fspath(loc)  # (file:///x -> /x)
                found = _from_dir(part) if os.path.isdir(part) else _from_files(part, spec)
        except storage.StorageError as exc:
            raise LoaderError(str(exc)) from None
        if not found:
            raise FileNotFoundError(
                f"no committed shards in {part!r}: build them with `prep shards ...` "
                "(a shard counts once its NNNNNN_stats.json marker exists)"
            )
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
            raise FileNotFoundError(
                f"shard {path!r} {what} (from {spec!r}): build shards with `prep shards ...` or fix the path"
            )
        marker = path.removesuffix(".tar") + shard_dir.STATS_SUFFIX if path.endswith(".tar") else None
        if marker and os.path.exists(marker):
            stats = shard_dir.read_stats(marker)
            if stats is None:
                log.warning(
                    "%s: unreadable commit marker, shard ignored as uncommitted; `prep shards` rebuilds it", marker
                )
                continue
            found.append(Shard(os.path.abspath(path), int(stats.get("written", 0))))
        else:
            found.append(Shard(os.path.abspath(path), _count_samples(path)))
    return found


def _from_store(loc: storage.S3Path, spec: str) -> list[Shard]:
    """A prefix (a shard directory), one tar, or a glob over keys, in a store."""
    if any(c in loc.key for c in "*?["):
        static = re.split(r"[*?\[]", loc.key, maxsplit=1)[0].rpartition("/")[0]
        base = storage.S3Path(loc.bucket, static)
        keys = sorted(base.prefix + k for k in storage.list_tree(base) if k.endswith(".tar"))
        return [
            s
            for key in keys
            if fnmatch.fnmatchcase(key, loc.key)
            for s in _store_tar(storage.S3Path(loc.bucket, key), spec, must_exist=False)
        ]
    if loc.key.endswith(".tar"):
        return _store_tar(loc, spec, must_exist=True)
    listing = shard_dir.list_dir(loc)
    if problems := listing.problems():
        log.warning("%s: ignoring %s; `prep shards` rebuilds them", loc, problems)
    return [Shard(s.tar.url, s.samples) for s in listing.committed]


def _store_tar(loc: storage.S3Path, spec: str, must_exist: bool) -> list[Shard]:
    marker = loc.with_name(loc.name.removesuffix(".tar") + shard_dir.STATS_SUFFIX)
    stats = shard_dir.read_stats(marker)
    if stats is not None:
        return [Shard(loc.url, int(stats.get("written", 0)))]
    if storage.exists(marker):
        log.warning("%s: unreadable commit marker, shard ignored as uncommitted; `prep shards` rebuilds it", marker)
        return []
    if not storage.exists(loc):
        if must_exist:
            raise FileNotFoundError(
                f"shard {loc} does not exist (from {spec!r}): build shards with `prep shards ...` or fix the location"
            )
        return []
    return [Shard(loc.url, _count_samples(loc.url))]


def _count_samples(path: str) -> int:
    try:
        return len(shard_dir.tar_keys(path))
    except (tarfile.TarError, OSError, EOFError) as exn:
        raise LoaderError(
            f"{path}: not a readable tar ({type(exn).__name__}: {exn}); rebuild it with "
            "`prep shards ...` or leave it out of the spec"
        ) from None


def require_samples(shards: list[Shard], spec: str, key: str) -> None:
    """Refuse a stream whose committed shards hold nothing (rather than fail in every worker);
    ``key`` is where its spec is set (``data.speech``, ``data.streams.music``)."""
    if sum(s.samples for s in shards) == 0:
        raise LoaderError(
            f"no samples in the committed shards of {spec} ({len(shards)} shard(s), each "
            f"recording 0 written samples): rebuild them with `prep shards ...` or set {key} "
            "to shards that hold data"
        )


def plan_finite_epoch(shards: list[Shard], slots: int, batch_size: int, seed: int, epoch: int, kind: str = "speech"):
    """Deal the shards of the pace stream (``kind``) to ``slots`` (= ranks × workers) and size
    every slot's batches.

    Returns ``(assignment, batch_sizes)``: shard lists and batch-size lists per slot, identical on
    every rank. All slots get the same number of batches.
    """
    if len(shards) < slots:
        raise ValueError(
            f"finite mode needs at least ranks × workers = {slots} {kind} shards, found {len(shards)}: "
            "use fewer workers, write smaller shards (`prep shards --shard-size`), or resampled mode"
        )
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
            f"{kind} shards are too unequal for an exact epoch ({min(load)} vs {max(load)} samples per "
            "slot): rebalance the shards or use resampled mode"
        )
    sizes = [[n // n_batches + (1 if b < n % n_batches else 0) for b in range(n_batches)] for n in load]
    return assignment, sizes


def seed_from(*parts) -> int:
    """A 64-bit seed from any parts, stable across processes (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")
