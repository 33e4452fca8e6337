"""Seconds per `ground` call on this machine: the demo model and a paper-size model (random weights).

(Not bench/ground.py: run as a script, that name would shadow the ``ground`` package.)

    python bench/grounding.py [--models demo,paper --seconds 10 --image-size 640x480 --threads N]

For each model: building it (the demo model is saved with save_checkpoint and loaded back, as the
command does; the paper-size one, ~1.3 GB, is built in memory), one ``Grounder.ground`` on a
generated picture and a speech + noise mixture, and writing what the command writes (three overlay
PNGs, heatmaps.mp4, result.json). Weights are random: the time does not depend on them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ground.api import Grounder
from ground.cli import _write
from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.factory import build_model
from training.config import load_config


def inputs(seconds: float, size: tuple[int, int]) -> tuple[Image.Image, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16_000)) / 16_000
    voiced = np.sin(2 * np.pi * 140 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    audio = (0.2 * voiced + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels), audio


def time_model(name: str, image: Image.Image, audio: np.ndarray, work: Path) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    if name == "demo":
        config = load_config(Path("configs/demo.yaml"), []).model
        grounder = Grounder.from_checkpoint(save_checkpoint(build_model(config), work / "demo"))
    else:
        model = build_model(ModelConfig.preset("paper", pretrained=False))
        grounder = Grounder(model, {"preset": "paper", "weights": "random"})
    loaded = time.perf_counter()
    result = grounder.ground(image, audio, 16_000)
    grounded = time.perf_counter()
    _write(result, work / name, {"bench": name}, progress=False)
    written = time.perf_counter()
    params = sum(p.numel() for p in grounder.runner.model.parameters())
    return {
        "model": name,
        "params_M": params / 1e6,
        "load_s": loaded - start,
        "ground_s": grounded - loaded,
        "write_s": written - grounded,
        "frames": len(result.times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo,paper")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--image-size", default="640x480")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(x) for x in args.image_size.split("x"))
    image, audio = inputs(args.seconds, (width, height))
    print(f"torch threads {torch.get_num_threads()}, {args.seconds:g} s clip, {width}x{height} image")
    with tempfile.TemporaryDirectory(prefix="bench-ground-") as tmp:
        for name in args.models.split(","):
            r = time_model(name, image, audio, Path(tmp))
            print(
                f"{r['model']:>5}: {r['params_M']:.1f} M params, {r['frames']} frames | load {r['load_s']:.2f} s, "
                f"ground {r['ground_s']:.2f} s, write overlays+mp4+json {r['write_s']:.2f} s"
            )


if __name__ == "__main__":
    main()
