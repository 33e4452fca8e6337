"""`prep inspect DIR`: what a shard directory holds, whether it is healthy, and what it looks like.

Figures come from the parquet manifests (cheap: no tar is opened) of committed shards;
``--verify`` decodes every sample of every tar; ``--show N --out sheet.png`` draws N samples.
DIR may also be a folder of shard directories (e.g. ``shards/``): each is reported. DIR may be a
prefix in an object store (``s3://bucket/prefix``, ``pipeline.storage``): the same figures, from
one listing plus the manifests; ``--verify`` and ``--show`` then stream the tars they read.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from PIL import Image, ImageDraw, ImageFont

from pipeline import format as fmt
from pipeline import shard_dir, storage
from pipeline.cli_support import PROBLEMS_FOUND, fail
from pipeline.prep import manifest
from pipeline.prep.manifest import read_header
from pipeline.prep.worker import WRITTEN
from pipeline.progress import progress_bar

DURATION_BINS = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 10)]
_ShardDirError = shard_dir.ShardDirError
_MANIFEST_COLUMNS = [
    "index",
    "key",
    "status",
    "reason",
    "reason_kind",
    "duration",
    "orig_sample_rate",
    "orig_channels",
    "audio_type",
    "meta",
]


def find_shard_dirs(root: str | Path | storage.S3Path) -> list[Path | storage.S3Path]:
    """``root`` itself if it holds shards, else every directory below it that does."""
    root = storage.as_location(root)
    if shard_dir.looks_like_shard_dir(root):
        return [root]
    if isinstance(root, storage.S3Path):  # one listing of everything below, 1,000 keys per request
        names = (k.rpartition("/") for k in storage.list_tree(root))
        found = {
            d
            for d, _, name in names
            if d and (name == shard_dir.DATASET_FILE or name.endswith((".tar", shard_dir.STATS_SUFFIX)))
        }
        return sorted(root / d for d in found if shard_dir.LEASE_DIR not in d.split("/"))
    return sorted(d for d in root.rglob("*") if d.is_dir() and shard_dir.looks_like_shard_dir(d))


def shard_health(directory: Path | storage.S3Path) -> dict:
    """Committed shards (by ``shard_dir``'s commit rule), and everything that is not: partial
    files, tars without a readable commit marker, corrupt markers, markers without a tar, tars
    whose size disagrees with their marker."""
    listing = shard_dir.list_dir(directory)
    size_mismatch = [
        c.tar.name
        for c in listing.committed
        if c.stats.get("tar_bytes") is not None
        and c.stats["tar_bytes"] != (c.tar_bytes if c.tar_bytes is not None else c.tar.stat().st_size)
    ]
    committed = [c.index for c in listing.committed]
    total = read_header(directory).get("shards_total")
    return {
        "shards_total": total,
        "shards_committed": len(committed),
        "shards_missing": None if total is None else sorted(set(range(total)) - set(committed)),
        "uncommitted_tars": listing.uncommitted_tars,
        "corrupt_markers": listing.corrupt_markers,
        "markers_without_tar": listing.markers_without_tar,
        "partial_files": listing.partial_files,
        "size_mismatch": size_mismatch,
        "committed": committed,
    }


def corrupt_marker_notes(directory: Path | storage.S3Path, health: dict) -> list[str]:
    """One line per unreadable commit marker: which shard it leaves uncommitted, and the fix."""
    return [
        f"{storage.join(directory, name)} is not a readable commit marker: shard {shard_dir.shard_index(Path(name))} "
        "counts as uncommitted; rerun the `prep shards` command to rebuild it"
        for name in health["corrupt_markers"]
    ]


def _histogram(values: list[float]) -> dict[str, int]:
    hist = collections.OrderedDict((f"{a}-{b}s", 0) for a, b in DURATION_BINS)
    hist["full 10s"] = 0
    for v in values:
        if v >= fmt.CLIP_SECONDS - 1e-6:
            hist["full 10s"] += 1
        else:
            a = min(int(v), len(DURATION_BINS) - 1)
            hist[f"{DURATION_BINS[a][0]}-{DURATION_BINS[a][1]}s"] += 1
    return dict(hist)


def _label_names(meta: dict) -> list[str]:
    out = []
    for label in meta.get("labels") or []:
        if isinstance(label, dict):
            out.append(label.get("name") or label.get("mid") or "?")
        else:
            out.append(str(label))
    if not out and meta.get("class"):
        out.append(str(meta["class"]))
    return out


def collect(directory: str | Path, *, top_labels: int = 25, examples: int = 3) -> dict:
    """The figures `prep inspect` prints, as one JSON-serializable dict."""
    directory = storage.as_location(directory)
    health = shard_health(directory)
    header = read_header(directory)
    durations, rates, channels = [], collections.Counter(), collections.Counter()
    types, type_seconds, labels = collections.Counter(), collections.Counter(), collections.Counter()
    failures, failure_examples = collections.Counter(), collections.defaultdict(list)
    items = 0
    for shard in health["committed"]:
        table = manifest.read_table(shard_dir.parquet_path(directory, shard), columns=_MANIFEST_COLUMNS)
        for row in table.to_pylist():
            items += 1
            if row["status"] != WRITTEN:
                kind = row["reason_kind"] or "other"
                failures[kind] += 1
                if len(failure_examples[kind]) < examples:
                    failure_examples[kind].append(f"{row['key']}: {row['reason']}")
                continue
            durations.append(row["duration"])
            rates[row["orig_sample_rate"]] += 1
            channels[row["orig_channels"]] += 1
            types[row["audio_type"]] += 1
            type_seconds[row["audio_type"]] += row["duration"]
            labels.update(_label_names(json.loads(row["meta"])))
    written = len(durations)
    return {
        "dir": str(directory),
        "items_total": header.get("items_total"),
        "items_in_committed_shards": items,
        "written": written,
        "failed": items - written,
        "audio_hours": round(sum(durations) / 3600, 4),
        "audio_types": {t: {"clips": n, "hours": round(type_seconds[t] / 3600, 4)} for t, n in types.most_common()},
        "labels_distinct": len(labels),
        "labels_top": dict(labels.most_common(top_labels)),
        "duration_s": {
            "mean": round(statistics.fmean(durations), 3) if durations else None,
            "median": round(statistics.median(durations), 3) if durations else None,
            "min": min(durations, default=None),
            "max": max(durations, default=None),
            "histogram": _histogram(durations),
        },
        "orig_sample_rates": {str(k): v for k, v in sorted(rates.items(), key=lambda kv: -kv[1])},
        "orig_channels": {str(k): v for k, v in sorted(channels.items())},
        "failures": dict(failures.most_common()),
        "failure_examples": dict(failure_examples),
        "health": {k: v for k, v in health.items() if k != "committed"},
    }


# ---------------------------------------------------------------------------------------------
# verify


def verify_shard(directory: str | Path, shard: int) -> dict:
    """Check one committed shard: its tar against the commit marker (sha256) and the manifest
    (same keys, same order), and every sample against the format."""
    directory = storage.as_location(directory)
    tar = shard_dir.tar_path(directory, shard)
    stats = shard_dir.read_stats(shard_dir.stats_path(directory, shard)) or {}
    problems, keys = [], []
    sha = hashlib.sha256()
    with storage.open_read(tar) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    if stats.get("tar_sha256") and sha.hexdigest() != stats["tar_sha256"]:
        problems.append(f"{tar.name}: sha256 differs from {shard_dir.stats_path(directory, shard).name}")
    expected = [
        r["key"] for r in manifest.read_rows(shard_dir.parquet_path(directory, shard)) if r["status"] == WRITTEN
    ]
    try:
        for sample in shard_dir.iter_tar_samples(tar):
            key = sample["__key__"]
            keys.append(key)
            unknown = set(sample) - {"__key__", *fmt.MEMBER_EXTS}
            if unknown:
                problems.append(f"{tar.name}: {key} has unexpected members {sorted(unknown)}")
            problems += [f"{tar.name}: {key}: {text}" for text in fmt.verify_sample(sample)]
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt tar is a finding
        problems.append(f"{tar.name}: unreadable after {len(keys)} samples: {exc}")
    if keys != expected:
        problems.append(
            f"{tar.name}: its {len(keys)} samples do not match the {len(expected)} written rows of its parquet"
        )
    return {"tar": tar.name, "keys": keys, "problems": problems}


def verify(directory: str | Path, *, workers: int = 1, progress: bool = True, max_problems: int = 50) -> dict:
    """Decode every sample of every committed shard (``verify_shard``, ``workers`` shards at a
    time); keys must also be unique across the directory."""
    directory = storage.as_location(directory)
    health = shard_health(directory)
    problems, checked, seen = [], 0, {}
    todo = health["committed"]
    with concurrent.futures.ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = (
            pool.map(verify_shard, [directory] * len(todo), todo)
            if pool
            else map(verify_shard, [directory] * len(todo), todo)
        )
        for result in progress_bar(len(todo), "verify", progress, unit="shard", iterable=results):
            problems += result["problems"]
            checked += len(result["keys"])
            for key in result["keys"]:
                if key in seen:
                    problems.append(f"{result['tar']}: key {key} repeats (also in {seen[key]})")
                seen[key] = result["tar"]
    for name in health["uncommitted_tars"] + health["partial_files"]:
        problems.append(f"{name}: left by an interrupted build (rerun the build command to finish it)")
    problems += corrupt_marker_notes(directory, health)
    return {"samples_checked": checked, "problems": len(problems), "problem_list": problems[:max_problems]}


# ---------------------------------------------------------------------------------------------
# contact sheet

_TILE_W, _IMAGE_H, _SPEC_H, _TEXT_H = 224, 168, 72, 52
_MAGMA = np.array([[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]], float)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def spectrogram_image(clip: np.ndarray, valid_seconds: float, size: tuple[int, int]) -> Image.Image:
    """Log-power spectrogram (0-8 kHz, low at the bottom); padding after the real audio is greyed."""
    n_fft, hop = 512, 320
    frames = 1 + max(0, len(clip) - n_fft) // hop
    window = np.hanning(n_fft).astype(np.float32)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(clip[idx] * window, axis=1)) ** 2
    db = 10 * np.log10(power + 1e-10)
    top = db.max()
    scaled = np.clip((db - (top - 80)) / 80, 0, 1).T[::-1]  # 80 dB range, frequency upwards
    x = np.linspace(0, 1, len(_MAGMA))
    rgb = np.stack([np.interp(scaled, x, _MAGMA[:, c]) for c in range(3)], axis=-1).astype(np.uint8)
    picture = Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)
    cut = int(size[0] * min(valid_seconds / fmt.CLIP_SECONDS, 1.0))
    if cut < size[0]:
        overlay = ImageDraw.Draw(picture)
        overlay.rectangle([cut, 0, size[0], size[1]], fill=(70, 70, 70))
    return picture


def _pick(directory: Path | storage.S3Path, committed: list[int], n: int) -> list[tuple[int, str]]:
    """``n`` written samples spread evenly over the directory, as (shard, key)."""
    written = []
    for shard in committed:
        table = manifest.read_table(shard_dir.parquet_path(directory, shard), columns=["key", "status"])
        written += [(shard, k) for k, s in zip(table["key"].to_pylist(), table["status"].to_pylist()) if s == WRITTEN]
    if len(written) <= n:
        return written
    step = len(written) / n
    return [written[int(i * step)] for i in range(n)]


def contact_sheet(directory: str | Path, n: int, out: str | Path, *, columns: int = 4) -> int:
    """Draw ``n`` samples (image, spectrogram, key, labels or caption) into one PNG; returns the
    number drawn."""
    directory = storage.as_location(directory)
    picks = _pick(directory, shard_health(directory)["committed"], n)
    wanted = collections.defaultdict(set)
    for shard, key in picks:
        wanted[shard].add(key)
    samples = {}
    for shard, keys in wanted.items():
        for sample in shard_dir.iter_tar_samples(shard_dir.tar_path(directory, shard)):
            if sample["__key__"] in keys:
                samples[sample["__key__"]] = sample
                if len(keys & samples.keys()) == len(keys):
                    break
    columns = max(1, min(columns, len(picks)))
    rows = max(1, math.ceil(len(picks) / columns))
    tile_h = _IMAGE_H + _SPEC_H + _TEXT_H
    sheet = Image.new("RGB", (columns * (_TILE_W + 8) + 8, rows * (tile_h + 8) + 8), (24, 24, 24))
    draw, font = ImageDraw.Draw(sheet), _font(11)
    for i, (_, key) in enumerate(picks):
        sample = samples[key]
        x, y = 8 + (i % columns) * (_TILE_W + 8), 8 + (i // columns) * (tile_h + 8)
        picture = fmt.decode_image(sample[fmt.IMAGE_EXT])
        picture.thumbnail((_TILE_W, _IMAGE_H))
        sheet.paste(picture, (x + (_TILE_W - picture.width) // 2, y + (_IMAGE_H - picture.height) // 2))
        meta = fmt.decode_meta(sample[fmt.META_EXT])
        clip = fmt.decode_audio(sample[fmt.AUDIO_EXT])
        sheet.paste(spectrogram_image(clip, float(meta["duration"]), (_TILE_W, _SPEC_H)), (x, y + _IMAGE_H))
        words = ", ".join(_label_names(meta)) or str(meta.get("caption") or "")
        lines = [key, f"{meta['audio_type']}  {meta['duration']:.2f} s  {meta.get('orig_sample_rate')} Hz", words]
        for j, line in enumerate(lines):
            draw.text(
                (x + 2, y + _IMAGE_H + _SPEC_H + 3 + 15 * j), _fit(draw, line, font), fill=(230, 230, 230), font=font
            )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return len(picks)


def _fit(draw: ImageDraw.ImageDraw, text: str, font) -> str:
    if draw.textlength(text, font=font) <= _TILE_W - 4:
        return text
    while text and draw.textlength(text + "…", font=font) > _TILE_W - 4:
        text = text[:-1]
    return text + "…"


# ---------------------------------------------------------------------------------------------
# command


def _print_report(report: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    # Every cell holds data (paths, labels, failure reasons): escaped, so that text such as "[a-z]"
    # in a reason is shown as written instead of being read as rich markup and dropped.
    table = Table(title=escape(report["dir"]), show_header=False)

    def row(*cells: str) -> None:
        table.add_row(*(escape(cell) for cell in cells))

    health = report["health"]
    total = report["items_total"]
    row(
        "shards committed / total",
        f"{health['shards_committed']} / {health['shards_total'] if health['shards_total'] is not None else '?'}",
    )
    row(
        "items (committed shards / input)",
        f"{report['items_in_committed_shards']} / {total if total is not None else '?'}",
    )
    row("written / failed", f"{report['written']} / {report['failed']}")
    row("audio hours", f"{report['audio_hours']:.3f}")
    for t, v in report["audio_types"].items():
        row(f"  {t}", f"{v['clips']} clips, {v['hours']:.3f} h")
    d = report["duration_s"]
    if d["mean"] is not None:
        row("duration s (mean / median / min / max)", f"{d['mean']} / {d['median']} / {d['min']} / {d['max']}")
        row("duration histogram", "  ".join(f"{k}:{v}" for k, v in d["histogram"].items() if v))
    row("original sample rates", "  ".join(f"{k} Hz:{v}" for k, v in report["orig_sample_rates"].items()))
    row("original channels", "  ".join(f"{k}ch:{v}" for k, v in report["orig_channels"].items()))
    if report["labels_top"]:
        row(
            f"labels ({report['labels_distinct']} distinct), top",
            ", ".join(f"{k} {v}" for k, v in report["labels_top"].items()),
        )
    for kind, n in report["failures"].items():
        row(f"failed: {kind}", f"{n}   e.g. {report['failure_examples'][kind][0][:110]}")
    for name in ("uncommitted_tars", "corrupt_markers", "partial_files", "markers_without_tar", "size_mismatch"):
        if health[name]:
            row(
                f"health: {name.replace('_', ' ')}",
                ", ".join(health[name][:8]) + (" …" if len(health[name]) > 8 else ""),
            )
    if health["shards_missing"]:
        row("health: shards not built yet", f"{len(health['shards_missing'])} (first: {health['shards_missing'][:5]})")
    if "verify" in report:
        v = report["verify"]
        row("verify", f"{v['samples_checked']} samples decoded, {v['problems']} problems")
        for text in v["problem_list"][:10]:
            row("", text)
    console.print(table)


def command(
    shard_dir: Annotated[
        str, typer.Argument(help="A shard directory, or a folder of them (a local path or s3://bucket/prefix).")
    ],
    verify_samples: Annotated[bool, typer.Option("--verify", help="Decode every sample and check the format.")] = False,
    show: Annotated[int, typer.Option("--show", min=0, help="Draw N samples into a contact sheet (needs --out).")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG path for --show.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, help="Processes for --verify (shards in parallel).")
    ] = 1,
) -> None:
    """Counts, hours, audio types, labels, durations, sample rates, failures and shard health."""
    if show and out is None:
        fail("--show needs --out sheet.png")
    try:
        root = storage.location(shard_dir)
        if isinstance(root, Path) and not root.is_dir():
            fail(f"{root} is not a directory: give a shard directory (or a folder of them)")
        _inspect(root, verify_samples, show, out, as_json, workers)
    except (storage.StorageError, _ShardDirError) as exc:  # (``shard_dir`` here is the argument)
        fail(str(exc))


def _inspect(
    shard_dir: Path | storage.S3Path, verify_samples: bool, show: int, out: Path | None, as_json: bool, workers: int
) -> None:
    dirs = find_shard_dirs(shard_dir)
    if not dirs:
        fail(f"no shards under {shard_dir}")
    reports: list[dict[str, Any]] = []
    for d in dirs:
        report = collect(d)
        for note in corrupt_marker_notes(d, report["health"]):
            typer.echo(f"warning: {note}", err=True)
        if verify_samples:
            report["verify"] = verify(d, workers=workers, progress=not as_json)
        if show:
            sheet = out if len(dirs) == 1 else out.with_name(f"{out.stem}-{d.name}{out.suffix}")
            report["contact_sheet"] = {"path": str(sheet), "samples": contact_sheet(d, show, sheet)}
        reports.append(report)
    if as_json:
        typer.echo(json.dumps(reports[0] if len(reports) == 1 else reports, indent=1))
    else:
        for report in reports:
            _print_report(report)
            if "contact_sheet" in report:
                typer.echo(
                    f"contact sheet: {report['contact_sheet']['path']} ({report['contact_sheet']['samples']} samples)"
                )
    if verify_samples and any(r["verify"]["problems"] for r in reports):
        raise typer.Exit(PROBLEMS_FOUND)
