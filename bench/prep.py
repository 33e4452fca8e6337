"""Shard-building throughput on PlacesAudio-style input, against a bare loop over the same files.

    python bench/prep.py [--clips 256 --sample-rate 16000 --rounds 3 --engine local|ray --workdir /tmp/bench-prep]

Generates a PlacesAudio-layout tree (16-bit PCM wavs of 3-15 s, speech-like; 256x256 JPEGs as in
Places205's images256), then prints:

* the bare loop: one process, no pool, no manifests; each file decoded, resampled/padded, its
  image resized, the sample encoded and appended to a tar, each stage timed;
* `build_shards` (the code `prep shards places` runs) with 1 and 2 workers: clips/s, clips/s per
  worker, its own per-stage split, the ratio of its wall time to the bare loop's stage sum;
* the speed-up from 1 to 2 workers, the cores the 2-worker run really had (its driver's and
  workers' CPU seconds over its wall time: under 2 when others use the machine), and the
  speed-up those CPU seconds would give with both cores free;
* with ``--engine ray``: the same build as one Ray task per shard on a local Ray with the same
  2 CPUs (started once, its workers warmed up), its clips/s, the ratio to local with 2 workers
  and its per-stage split; and how long Ray took to start.

Other work on the machine makes single timings noisy, so every figure is measured in this run:
each round runs every configuration once, in turn, and the median over --rounds rounds is
reported with the spread (min-max).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw, ImageFilter

from pipeline import audio, image
from pipeline import format as fmt
from pipeline.prep import places
from pipeline.prep.build import build_shards
from pipeline.prep.ray_engine import RayOptions, start_local
from pipeline.prep.worker import STAGES
from pipeline.prep.writer import TarShardWriter


def _photo(rng: np.random.Generator, size: int = 256) -> Image.Image:
    """A smooth gradient with blurred rectangles and sensor noise: JPEG-decodes like a photo."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([a * x + b * y + c for a, b, c in rng.uniform(-120, 120, (3, 3)) + [0, 0, 128]], -1)
    picture = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(12):
        x0, y0 = (int(v) for v in rng.integers(0, size - 20, 2))
        draw.rectangle(
            (x0, y0, x0 + int(rng.integers(10, 120)), y0 + int(rng.integers(10, 120))),
            fill=tuple(int(c) for c in rng.integers(0, 255, 3)),
        )
    noisy = np.asarray(picture.filter(ImageFilter.GaussianBlur(1.5)), np.float32) + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _speech(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """Pitch-drifting harmonics switched at a syllable rate, plus a little noise."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = rng.uniform(100, 200) * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8)) * (np.sin(2 * np.pi * 4 * t) > -0.3)
    return (0.2 * voiced / 2 + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def make_tree(root: Path, clips: int, sample_rate: int) -> Path:
    rng = np.random.default_rng(0)
    audio_root, image_root = root / "PlacesAudio_400k_distro", root / "places205"
    data = []
    for i in range(clips):
        wav, img = f"wavs/{i % 10}/utterance_{i}.wav", f"b/bakery/gsun_{i:06d}.jpg"
        (audio_root / wav).parent.mkdir(parents=True, exist_ok=True)
        (image_root / img).parent.mkdir(parents=True, exist_ok=True)
        sf.write(audio_root / wav, _speech(rng, float(rng.uniform(3, 15)), sample_rate), sample_rate, subtype="PCM_16")
        _photo(rng).save(image_root / img, quality=90)
        data.append(
            {"wav": wav, "image": img, "uttid": f"U{i}", "speaker": f"S{i % 7}", "asr_text": "a bakery with bread"}
        )
    meta = audio_root / "metadata" / "train.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"image_base_path": str(image_root), "audio_base_path": str(audio_root), "data": data}))
    return meta


def bare_loop(items: list[dict], audio_root: str, image_root: str, out: Path) -> dict[str, float]:
    """The same stages, one after another, with no pool, manifest or commit marker."""
    seconds = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter
    writer = TarShardWriter(out / "bare.tar")
    for item in items:
        t0 = clock()
        decoded = audio.read_clip(Path(audio_root) / item["wav"])  # what places.load_item decodes
        samples, sr = decoded.samples, decoded.sample_rate
        picture = image.open_image(Path(image_root) / item["image"])
        t1 = clock()
        clip, duration = audio.standardize(samples, sr)
        t2 = clock()
        picture = image.standardize(picture)
        t3 = clock()
        meta = {
            "source": "places",
            "source_id": item["wav"],
            "audio_type": "speech",
            "clip_start": 0.0,
            "clip_end": duration,
            "duration": duration,
            "orig_sample_rate": sr,
            "orig_channels": samples.shape[0],
        }
        sample = fmt.encode_sample(places.item_key(item), clip, picture, meta)
        t4 = clock()
        writer.add(sample)
        t5 = clock()
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            seconds[stage] += dt
    t0 = clock()
    writer.close()
    seconds["write"] += clock() - t0
    return seconds


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _ray_cpu(session: str) -> dict[str, float]:
    """CPU seconds so far of this Ray session's processes, split into task workers and daemons."""
    tick, total = os.sysconf("SC_CLK_TCK"), {"tasks": 0.0, "daemons": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if cmd.startswith("ray::") and not cmd.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent")):
            total["tasks"] += (int(fields[11]) + int(fields[12])) / tick
        elif session in cmd:
            total["daemons"] += (int(fields[11]) + int(fields[12])) / tick
    return total


def pipeline_run(
    items, load, out: Path, workers: int, shard_size: int, ray: RayOptions | None = None, session: str = ""
) -> dict:
    """Wall time, stage split, and CPU seconds of this process and of the (reaped) workers (or
    Ray's task workers and daemons): with no idle core left on the machine, those show where the
    time went."""
    shutil.rmtree(out, ignore_errors=True)
    main0, children0 = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    ray0 = _ray_cpu(session) if ray else {}
    t0 = time.perf_counter()
    summary = build_shards(
        items, load, out, key=places.item_key, shard_size=shard_size, workers=workers, progress=False, ray=ray
    )
    wall = time.perf_counter() - t0
    assert summary.written == len(items), summary.failures
    run = {
        "wall": wall,
        "stages": summary.stage_seconds,
        "main_cpu": _cpu(resource.RUSAGE_SELF) - main0,
        "worker_cpu": _cpu(resource.RUSAGE_CHILDREN) - children0,
    }
    if ray:
        run["ray_cpu"] = {k: v - ray0[k] for k, v in _ray_cpu(session).items()}
    return run


def _median_run(runs: list[dict]) -> tuple[dict, float, float]:
    """The run of median wall time, and the min and max wall time."""
    walls = sorted(r["wall"] for r in runs)
    return sorted(runs, key=lambda r: r["wall"])[len(runs) // 2], walls[0], walls[-1]


def _split(seconds: dict[str, float], n: int) -> str:
    total = sum(seconds.values())
    return "  ".join(f"{s} {1000 * seconds[s] / n:6.2f} ms ({100 * seconds[s] / total:4.1f}%)" for s in STAGES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--sample-rate", type=int, default=16_000, help="rate of the generated wavs")
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every configuration; medians are reported")
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: also measure --engine ray")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-prep"))
    args = parser.parse_args()

    root = args.workdir / f"tree-{args.clips}-{args.sample_rate}"
    meta = root / "PlacesAudio_400k_distro" / "metadata" / "train.json"
    if not meta.exists():
        shutil.rmtree(root, ignore_errors=True)
        make_tree(root, args.clips, args.sample_rate)
    items, _ = places.read_metadata(meta)
    audio_root, image_root = str(root / "PlacesAudio_400k_distro"), str(root / "places205")
    load = functools.partial(places.load_item, audio_root=audio_root, image_root=image_root)
    n = len(items)
    out = args.workdir / "out"
    out.mkdir(parents=True, exist_ok=True)

    # Warm-up: page cache, and torch (build_shards imports it once before forking its pool, for
    # the resampler; a one-off second that would otherwise be charged to the first run only).
    import torch
    import torchaudio.functional  # noqa: F401

    # Pool workers run torch single-threaded (one process per core); the bare loop does too, or
    # OpenMP threads fighting other processes for the cores would inflate its resample stage.
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    bare_loop(items[:4], audio_root, image_root, out)
    configs = {"local w=1": (1, None), "local w=2": (2, None)}
    ray_start, session = None, ""
    if args.engine == "ray":
        import ray

        t0 = time.perf_counter()
        start_local(
            num_cpus=2, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}
        )  # as `prep` starts it: loopback only
        ray_start = time.perf_counter() - t0
        session = Path(ray._private.worker.global_worker.node.get_session_dir_path()).name
        configs["ray 2 CPUs"] = (0, RayOptions())
        pipeline_run(
            items[: 2 * args.shard_size], load, out / "warm", 0, args.shard_size, RayOptions()
        )  # workers import torch once
    bare_runs, runs = [], {name: [] for name in configs}
    for _ in range(args.rounds):  # alternate: a busy spell on the machine hits every configuration alike
        bare_runs.append(bare_loop(items, audio_root, image_root, out))
        for name, (workers, ray_options) in configs.items():
            runs[name].append(
                pipeline_run(items, load, out / name.replace(" ", "_"), workers, args.shard_size, ray_options, session)
            )
    bare = sorted(bare_runs, key=lambda b: sum(b.values()))[len(bare_runs) // 2]
    bare_total = sum(bare.values())

    audio_mb = sum((Path(audio_root) / i["wav"]).stat().st_size for i in items) / 1e6
    print(
        f"input: {n} PlacesAudio-style clips, {args.sample_rate} Hz 16-bit wavs ({audio_mb:.1f} MB), 256x256 JPEGs; "
        f"shards of {args.shard_size}; median of {args.rounds} alternating rounds (min-max); "
        f"{os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after"
    )
    print(
        f"bare loop        : {n / bare_total:6.1f} clips/s   stage sum {bare_total:6.2f} s   "
        f"per clip: {_split(bare, n)}"
    )
    medians = {}
    for name, (workers, _) in configs.items():
        run, lo, hi = _median_run(runs[name])
        medians[name] = run["wall"]
        rate = n / run["wall"]
        if workers:
            cpu = f"CPU s: main {run['main_cpu']:.2f}, workers {run['worker_cpu']:.2f}"
        else:
            cpu = (
                f"CPU s: driver {run['main_cpu']:.2f}, tasks {run['ray_cpu']['tasks']:.2f}, "
                f"Ray daemons {run['ray_cpu']['daemons']:.2f}"
            )
        print(
            f"{name:<11}: {rate:6.1f} clips/s ({n / hi:5.1f}-{n / lo:5.1f})   wall {run['wall']:6.2f} s   "
            f"wall / bare stage sum = {run['wall'] / bare_total:4.2f}   {cpu}   per clip: {_split(run['stages'], n)}"
        )
    one, two = _median_run(runs["local w=1"])[0], _median_run(runs["local w=2"])[0]
    speedups = sorted(a["wall"] / b["wall"] for a, b in zip(runs["local w=1"], runs["local w=2"]))
    work = two["main_cpu"] + two["worker_cpu"]
    print(
        f"speed-up 1 -> 2 workers: {medians['local w=1'] / medians['local w=2']:.2f}x "
        f"(per round {speedups[0]:.2f}-{speedups[-1]:.2f}); "
        f"the 2-worker run had {work / two['wall']:.2f} cores busy for it (driver {two['main_cpu']:.2f} s + workers "
        f"{two['worker_cpu']:.2f} s CPU), so with both cores free: {one['wall'] / (work / 2):.2f}x"
    )
    if ray_start is not None:
        ratios = sorted(r["wall"] / loc["wall"] for r, loc in zip(runs["ray 2 CPUs"], runs["local w=2"]))
        print(
            f"ray / local w=2 clips/s: {medians['local w=2'] / medians['ray 2 CPUs']:.2f} (per round "
            f"{1 / ratios[-1]:.2f}-{1 / ratios[0]:.2f}); Ray started in {ray_start:.1f} s"
        )
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
