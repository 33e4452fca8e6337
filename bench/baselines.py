"""Peak memory and time per item of the two baselines at their real size, random weights, on the CPU.

    python bench/baselines.py [--family imagebind cavmae] [--workdir /tmp/bench-baselines] [--items 2]

For each family it writes a file in the release's layout with random weights (ImageBind-huge's
vision + audio towers: 569 keys, 719 M parameters, about 2.9 GB; CAV-MAE-Scale++'s whole file:
``module.`` prefix, MAE decoder included, 647 keys, 191 M parameters, about 0.76 GB), then runs a
fresh child process under ``/usr/bin/time -v`` that loads it through ``model.loading.load_any`` and
encodes ``--items`` items (one 224 px image and one 10 s clip each, as the evaluation does). The
baseline of the same run is a child that only imports the same modules and computes one clip's
fbank. Printed per child: peak RSS (``Maximum resident set size``), wall time, load time and time of
each item, in wall and in CPU seconds (the process's, all threads). The files are deleted afterwards
(``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.baselines.cavmae import RELEASE, CAVMAEModel  # noqa: E402
from model.baselines.common import BaselineConfig  # noqa: E402
from model.baselines.imagebind import ImageBindModel  # noqa: E402

# CAV-MAE's MAE decoder as released (decoder_embed_dim 512, 8 blocks, mlp ratio 4): not part of the
# model here, but in the file, so the loader's dropping of it is measured too.
DECODER_DIM, DECODER_DEPTH = 512, 8


def _cavmae_decoder(dim: int) -> dict[str, tuple[int, ...]]:
    d, m = DECODER_DIM, 4 * DECODER_DIM
    shapes = {
        "decoder_embed.weight": (d, dim),
        "decoder_embed.bias": (d,),
        "mask_token": (1, 1, d),
        "decoder_modality_a": (1, 1, d),
        "decoder_modality_v": (1, 1, d),
        "decoder_pos_embed_a": (1, 512, d),
        "decoder_pos_embed_v": (1, 196, d),
        "decoder_norm.weight": (d,),
        "decoder_norm.bias": (d,),
        "decoder_pred_a.weight": (256, d),
        "decoder_pred_a.bias": (256,),
        "decoder_pred_v.weight": (768, d),
        "decoder_pred_v.bias": (768,),
    }
    for i in range(DECODER_DEPTH):
        p = f"decoder_blocks.{i}."
        for norm in ("norm1", "norm1_a", "norm1_v", "norm2", "norm2_a", "norm2_v"):
            shapes[p + norm + ".weight"] = shapes[p + norm + ".bias"] = (d,)
        shapes |= {
            p + "attn.qkv.weight": (3 * d, d),
            p + "attn.qkv.bias": (3 * d,),
            p + "attn.proj.weight": (d, d),
            p + "attn.proj.bias": (d,),
            p + "mlp.fc1.weight": (m, d),
            p + "mlp.fc1.bias": (m,),
            p + "mlp.fc2.weight": (d, m),
            p + "mlp.fc2.bias": (d,),
        }
    return shapes


def write_release(family: str, path: Path) -> tuple[int, int]:
    """A random-weight file in the release layout; returns (keys, parameters)."""
    torch.manual_seed(0)
    if family == "imagebind":
        state = ImageBindModel(BaselineConfig("imagebind")).state_dict()
    else:
        state = dict(CAVMAEModel(BaselineConfig("cavmae")).state_dict())
        state |= {k: 0.02 * torch.randn(shape) for k, shape in _cavmae_decoder(RELEASE["dim"]).items()}
        state = {"module." + k: v for k, v in state.items()}  # saved through torch.nn.DataParallel
    torch.save(state, path)
    return len(state), sum(v.numel() for v in state.values())


def child(family: str, path: str, items: int) -> None:
    """Load (unless ``imports``) and encode ``items`` items; print the timings as JSON."""
    import numpy as np

    from model.baselines import fbank
    from model.loading import load_any

    started, cpu = time.perf_counter(), time.process_time()
    if family == "imports":
        fbank.normalized_fbank(torch.zeros(1, fbank.CLIP_SAMPLES) + 0.01, "cavmae")
        print(json.dumps({"load_s": 0.0, "load_cpu_s": 0.0, "item_s": [], "item_cpu_s": [], "threads": 0}))
        return
    model, _ = load_any(path)
    load_s, load_cpu = time.perf_counter() - started, time.process_time() - cpu
    rng = np.random.default_rng(0)
    times, cpu_times = [], []
    with torch.no_grad():
        for _ in range(items):
            t0, c0 = time.perf_counter(), time.process_time()
            model.encode_image(torch.from_numpy(rng.standard_normal((1, 3, 224, 224)).astype(np.float32)))
            wave = torch.from_numpy((0.1 * rng.standard_normal((1, 160_000))).astype(np.float32))
            model.encode_audio(wave, torch.ones_like(wave, dtype=torch.bool))
            times.append(round(time.perf_counter() - t0, 2))
            cpu_times.append(round(time.process_time() - c0, 2))
    print(
        json.dumps(
            {
                "load_s": round(load_s, 2),
                "load_cpu_s": round(load_cpu, 2),
                "item_s": times,
                "item_cpu_s": cpu_times,
                "threads": torch.get_num_threads(),
            }
        )
    )


def measure(family: str, path: Path, items: int) -> dict:
    """The child under /usr/bin/time -v: its JSON, peak RSS (MB) and wall time."""
    run = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, __file__, "--child", family, str(path), "--items", str(items)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if run.returncode:
        raise SystemExit(f"error: the {family} child failed: {run.stderr.strip().splitlines()[-1:]}")
    out = json.loads(run.stdout.strip().splitlines()[-1])
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", run.stderr)
    seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.group(1).split(":"))))
    return {**out, "peak_rss_mb": round(int(rss.group(1)) / 1024), "wall_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", nargs="+", default=["imagebind", "cavmae"], choices=["imagebind", "cavmae"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-baselines"))
    parser.add_argument("--items", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the generated weight files")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.items)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(args.workdir).free / 1e9
    if free_gb < 4.5:
        raise SystemExit(f"error: {args.workdir} has {free_gb:.1f} GB free; the files need about 3.7 GB")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, workdir {args.workdir} ({free_gb:.0f} GB free)"
    )
    base = measure("imports", Path("-"), 0)
    print(f"baseline (imports + one fbank): peak RSS {base['peak_rss_mb']} MB, wall {base['wall_s']} s")
    for family in args.family:
        path = args.workdir / ("imagebind_huge.pth" if family == "imagebind" else "audio_model.21.pth")
        t0 = time.perf_counter()
        keys, params = write_release(family, path)
        size = path.stat().st_size / 1e9
        print(
            f"{family}: wrote {path} ({keys} keys, {params / 1e6:.1f} M parameters, {size:.2f} GB) "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        try:
            r = measure(family, path, args.items)
        finally:
            if not args.keep:
                path.unlink()
        print(
            f"{family}: peak RSS {r['peak_rss_mb']} MB ({r['peak_rss_mb'] - base['peak_rss_mb']} MB over the "
            f"baseline), load {r['load_s']} s ({r['load_cpu_s']} s CPU), per item {r['item_s']} s "
            f"({r['item_cpu_s']} s CPU; image + 10 s clip, {r['threads']} threads), wall {r['wall_s']} s"
        )
    print(
        f"load average now: {Path('/proc/loadavg').read_text().split()[0]} (wall times stretch when the "
        "machine is shared; CPU seconds do not)"
    )


if __name__ == "__main__":
    main()
