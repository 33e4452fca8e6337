"""Writing a shard's tar: streamed to ``.partial`` and renamed when complete; a failed write leaves
no ``.partial`` behind. The builder's small files (parquet, json) are written whole through
``pipeline.atomic``."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from pipeline import format as fmt
from pipeline.shard_dir import PARTIAL_SUFFIX


class _HashingFile:
    """File wrapper that hashes what passes through, so the tar's sha256 costs no second read."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size


class TarShardWriter:
    """Writes samples to ``NNNNNN.tar.partial``; ``close`` fsyncs and renames it to ``NNNNNN.tar``.

    The bytes are webdataset's ``TarWriter(user="", group="", mtime=0, encoder=False)``'s exactly
    (a test compares them), written here because importing webdataset imports torch: ~1.3 s and
    ~550 MB more in every process that writes shards, which otherwise never loads it.
    """

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + PARTIAL_SUFFIX)
        self._file = open(self.tmp, "wb")
        self._hash = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hash, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, sample: dict) -> None:
        key = sample["__key__"]
        for ext in fmt.MEMBER_EXTS:
            data = sample[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            # Fixed owner/mode/mtime: the same samples give byte-identical tars on every rerun.
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> tuple[int, str]:
        """Finish the tar and rename it into place; returns (bytes, sha256)."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        return self._hash.size, self._hash.sha.hexdigest()

    def abort(self) -> None:
        try:
            self._file.close()  # may flush buffered bytes and fail again on a full disk
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)
