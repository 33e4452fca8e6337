"""The builder's records: the per-shard parquet manifest (one row per input item) and the
dataset summary ``dataset.json``, rebuilt from the committed shards' stats files."""

from __future__ import annotations

import collections
import datetime as dt
import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import format as fmt
from pipeline import shard_dir, storage
from pipeline.atomic import write_atomic

ROW_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),  # position in the input item list
        ("key", pa.string()),
        ("status", pa.string()),  # WRITTEN or FAILED
        ("reason", pa.string()),  # failure reason, "kind: detail"
        ("reason_kind", pa.string()),
        ("item", pa.string()),  # the input item as JSON: what `prep retry` re-runs
        ("duration", pa.float64()),
        ("orig_sample_rate", pa.int64()),
        ("orig_channels", pa.int64()),
        ("audio_type", pa.string()),
        ("meta", pa.string()),  # the sample's json member
    ]
)
HEADER_FIELDS = ("items_total", "shard_size", "shards_total", "loader", "key", "desc", "input_warnings")


def read_table(path: str | os.PathLike | storage.S3Path, **options) -> pa.Table:
    """A parquet manifest as a table; one in a store is fetched whole by ``pipeline.storage``
    (pyarrow's own S3 client is never handed a URL: one client, one set of credentials)."""
    loc = storage.as_location(path)
    source = pa.BufferReader(storage.read_bytes(loc)) if isinstance(loc, storage.S3Path) else loc
    return pq.read_table(source, **options)


def read_rows(path: str | os.PathLike | storage.S3Path) -> list[dict]:
    return read_table(path, schema=ROW_SCHEMA).to_pylist()


def write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), buf, compression="zstd")
    write_atomic(path, buf.getvalue())


def read_header(out_dir: Path | storage.S3Path) -> dict:
    """dataset.json, or {} when it is missing or unreadable: it is derived from the shards' markers
    (plus the build's own header), so `prep shards` rewrites a torn one and `prep inspect` takes
    its figures from the shards alone."""
    try:
        header = shard_dir.read_json(storage.join(out_dir, shard_dir.DATASET_FILE))
    except storage.StorageError:
        raise  # a store that refuses or cannot be reached is not a missing file
    except (OSError, ValueError):
        return {}
    return header if isinstance(header, dict) else {}


def update_dataset_summary(out_dir: str | os.PathLike, header: dict | None = None) -> dict:
    """Rewrite dataset.json from the committed shards' stats files (cheap: one small file each).

    Several ``--part`` runs may share ``out_dir`` and rewrite it concurrently, so a run could
    replace a newer summary with its own older scan. Hence each rewrite scans again after writing
    and writes again until its scan did not change: whichever rewrite lands last was followed by
    a scan that saw every commit made before it, so the last writer leaves a complete picture,
    without a lock that a stopped run could hold.
    """
    out = storage.as_location(out_dir)
    scan = _scan_committed(out)
    while True:
        summary = _summary(out, header, scan)
        shard_dir.write_json(out / shard_dir.DATASET_FILE, summary)
        again = _scan_committed(out)
        if again == scan:
            return summary
        scan = again


def _scan_committed(out: Path | storage.S3Path) -> list[dict]:
    return [committed.stats for committed in shard_dir.committed_shards(out)]


def _summary(out: Path | storage.S3Path, header: dict | None, scan: list[dict]) -> dict:
    previous = read_header(out)
    summary = {k: previous[k] for k in HEADER_FIELDS if k in previous}
    summary.update({k: v for k, v in (header or {}).items() if v is not None})
    shards, failures = [], collections.Counter()
    for stats in scan:
        shards.append(
            {
                "shard": stats["shard"],
                "tar": stats["tar"],
                "written": stats["written"],
                "failed": stats["failed"],
                "audio_hours": round(stats["audio_seconds"] / 3600, 4),
            }
        )
        failures.update(stats.get("failures", {}))
    summary.update(
        {
            "format_version": fmt.FORMAT_VERSION,
            "shards_committed": len(shards),
            "written": sum(s["written"] for s in shards),
            "failed": sum(s["failed"] for s in shards),
            "audio_hours": round(sum(s["audio_hours"] for s in shards), 4),
            "failures": dict(failures.most_common()),
            "shards": shards,
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    return summary
