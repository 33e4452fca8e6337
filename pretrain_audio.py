"""Self-supervised pretraining of a random-weight audio backbone: HuBERT's first iteration, small.

    python pretrain_audio.py --config configs/demo.yaml \\
        --shards shards/synthetic/speech/train,shards/synthetic/sound/train --out runs/demo/audio_init.safetensors
    python train.py --config configs/demo.yaml audio_init=runs/demo/audio_init.safetensors

The paper starts from HuBERT-Large pretrained without labels on 60k hours of speech
(`facebook/hubert-large-ll60k`); its speech features tell words apart from the first step, which
is what lets the speech head bootstrap. A random-weight backbone (the demo's, or any
`pretrained: false` model) has no such start. This script gives it one the way HuBERT's first
iteration does, with no labels: k-means clusters of 39-d MFCC frames (with deltas) are the targets,
predicted from the waveform at masked frames. The output is the backbone's weights (safetensors)
for `train.py audio_init=...`, plus a JSON of what was done.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torchaudio
import typer
from safetensors.torch import save_file
from transformers import HubertConfig, HubertModel

from model.encoders import normalize_waveform, prefix_mask
from model.factory import build_backbones
from pipeline import format as fmt
from pipeline.atomic import atomic_path, write_json
from pipeline.cli_support import fail
from pipeline.data.sources import LoaderError, list_shards
from pipeline.progress import progress_bar
from pipeline.shard_dir import shard_samples
from pipeline.storage import StorageError
from training.config import ConfigError, TrainConfig, load_config, require_config

HOP = 320  # HuBERT's frame hop at 16 kHz (50 Hz); the MFCC targets use the same


def load_clips(spec: str, clips: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``clips`` clips (first ``samples`` samples) from shard dirs, spread evenly over them."""
    sources = [p for p in spec.split(",") if p.strip()]
    per_source = max(1, clips // len(sources))
    waves, valid = [], []
    for source in sources:
        taken = 0
        for sample in shard_samples((shard.path for shard in list_shards(source)), _unreadable):
            if taken == per_source:
                break
            try:
                audio = fmt.decode_audio(sample[fmt.AUDIO_EXT], frames=samples)
                n = fmt.valid_samples(fmt.decode_meta(sample[fmt.META_EXT]), samples)
            except Exception as exc:  # noqa: BLE001 - a bad sample is reported and skipped
                print(f"skipping {sample.get('__key__')} in {sample['__url__']}: {exc}")
                continue
            waves.append(audio)
            valid.append(n)
            taken += 1
    if not waves:
        raise typer.BadParameter(f"no audio found in {spec!r}")
    wave = torch.from_numpy(np.stack(waves))
    mask = torch.arange(samples).unsqueeze(0) < torch.tensor(valid).unsqueeze(1)
    return wave, mask


def _unreadable(path: str, exc: Exception, _yielded: bool) -> None:
    # the shards are read by this process (shard_dir.shard_samples): a shard name never runs a command
    print(f"skipping the rest of {path}: unreadable tar ({exc})")


def mfcc_targets(
    wave: torch.Tensor, mask: torch.Tensor, clusters: int, seed: int, iterations: int = 30
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame k-means labels of 39-d MFCC features, and which frames hold real audio."""
    mfcc = torchaudio.transforms.MFCC(
        fmt.SAMPLE_RATE, n_mfcc=13, melkwargs=dict(n_fft=400, hop_length=HOP, n_mels=40, center=False)
    )
    feats = mfcc(normalize_waveform(wave, mask))  # [N, 13, T]
    d1 = torchaudio.functional.compute_deltas(feats)
    feats = torch.cat([feats, d1, torchaudio.functional.compute_deltas(d1)], 1).transpose(1, 2)  # [N, T, 39]
    frames = feats.shape[1]
    real = mask[:, : frames * HOP].reshape(mask.shape[0], frames, HOP).float().mean(-1) >= 0.5
    points = feats[real]
    points = (points - points.mean(0)) / points.std(0).clamp_min(1e-5)
    g = torch.Generator().manual_seed(seed)
    centres = points[torch.randperm(len(points), generator=g)[:clusters]].clone()
    for _ in range(iterations):
        assign = torch.cdist(points, centres).argmin(1)
        for k in range(clusters):
            members = points[assign == k]
            if len(members):
                centres[k] = members.mean(0)
    labels = torch.full(real.shape, -1, dtype=torch.long)
    labels[real] = torch.cdist(points, centres).argmin(1)
    return labels, real


def span_mask(batch: int, frames: int, prob: float, span: int, g: torch.Generator) -> torch.Tensor:
    """HuBERT-style masking: spans of ``span`` frames starting at ``prob / span`` of the frames."""
    starts = torch.rand(batch, frames, generator=g) < prob / span
    masked = torch.zeros(batch, frames, dtype=torch.bool)
    for s in range(span):
        masked[:, s:] |= starts[:, : frames - s]
    return masked


def pretrain(
    cfg: TrainConfig,
    shards: str,
    out: Path,
    steps: int,
    clips: int,
    batch_size: int,
    clusters: int,
    lr: float,
    seed: int,
) -> dict:
    model_cfg = cfg.model
    if model_cfg.pretrained:
        raise typer.BadParameter("this model loads a pretrained audio backbone (pretrained: true); nothing to do")
    torch.manual_seed(seed)
    samples = cfg.data.clip_samples
    started = time.perf_counter()
    wave, mask = load_clips(shards, clips, samples)
    labels, real = mfcc_targets(wave, mask, clusters, seed)
    # the training architecture exactly, plus the learned mask embedding masked prediction needs
    arch = build_backbones(model_cfg)[1].config.to_dict()
    backbone = HubertModel(HubertConfig(**{**arch, "apply_spec_augment": True, "mask_time_prob": 0.05}))
    head = torch.nn.Linear(backbone.config.hidden_size, clusters)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    layer_norm = backbone.config.feat_extract_norm == "layer"
    losses = []
    backbone.train()
    for _ in progress_bar(steps, "pretrain audio", iterable=range(steps)):
        idx = torch.randint(0, len(wave), (batch_size,), generator=g)
        x = normalize_waveform(wave[idx], mask[idx])
        frames = int(backbone._get_feat_extract_output_lengths(samples))
        masked = span_mask(batch_size, frames, 0.4, 4, g)
        attention = prefix_mask(mask[idx]).long() if layer_norm else None
        hidden = backbone(input_values=x, attention_mask=attention, mask_time_indices=masked).last_hidden_state
        n = min(frames, labels.shape[1])
        target = labels[idx, :n]
        pick = masked[:, :n] & (target >= 0)
        loss = torch.nn.functional.cross_entropy(head(hidden[:, :n][pick]), target[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    out.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous() for k, v in backbone.state_dict().items() if k != "masked_spec_embed"}
    with atomic_path(out) as tmp:
        save_file(weights, str(tmp))
    window = max(1, steps // 10)
    report = {
        "clips": len(wave),
        "frames_with_audio": int(real.sum()),
        "clusters": clusters,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "shards": shards,
        "loss_first": float(np.mean(losses[:window])),
        "loss_last": float(np.mean(losses[-window:])),
        "chance_loss": float(np.log(clusters)),
        "seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
    }  # the weights' last bits depend on it
    write_json(out.with_suffix(".json"), report, indent=2, sort_keys=False)
    return report


def cpu_threads(requested: int = 0) -> int:
    """This command's CPU threads: ``requested``, else ``OMP_NUM_THREADS`` when set, else the
    machine's cores less one (at least one), as the trainer leaves cores free. OpenMP threads wait
    at every parallel region for the slowest of them, so a thread that shares its core with another
    process stalls each step: on 2 cores the demo's step took 0.11 s at 2 threads on an idle
    machine but 0.33-2.15 s beside other jobs, and 0.17 s at 1 thread in every case (docs/training.md)."""
    if requested:
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) - 1)


app = typer.Typer(add_completion=False)


@app.command()
def main(
    overrides: list[str] = typer.Argument(None, help="train.py-style key=value overrides of the config"),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="the training config (model and clip length); required"
    ),
    shards: str = typer.Option(
        ..., help="shard dirs to read audio from, comma-separated (paths or s3://bucket/prefix)"
    ),
    out: Path = typer.Option(..., help="where to write the backbone weights (.safetensors)"),
    steps: int = typer.Option(600, min=1),
    clips: int = typer.Option(1500, min=1, help="clips read into memory (spread over the shard dirs)"),
    batch_size: int = typer.Option(32, min=1),
    clusters: int = typer.Option(50, min=2, help="k-means clusters of MFCC frames (HuBERT: 100)"),
    lr: float = typer.Option(2e-3),
    seed: int = typer.Option(0),
    threads: int = typer.Option(
        0,
        min=0,
        help="CPU threads; 0: OMP_NUM_THREADS when set, else the cores less one. The weights' last bits depend on it",
    ),
):
    """Masked prediction of MFCC clusters; writes weights for `train.py audio_init=...`."""
    try:  # before any backbone is built: a bad value is one line, not a traceback
        cfg = load_config(require_config(config, "pretrain_audio.py"), overrides or [])
    except ConfigError as exn:
        fail(str(exn))
    torch.set_num_threads(cpu_threads(threads))
    try:
        report = pretrain(cfg, shards, out, steps, clips, batch_size, clusters, lr, seed)
    except (LoaderError, FileNotFoundError, StorageError) as exn:  # bad --shards, or a store that refuses
        fail(str(exn))
    print(
        f"wrote {out}: masked-prediction loss {report['loss_first']:.2f} -> {report['loss_last']:.2f} "
        f"(chance {report['chance_loss']:.2f}), {report['seconds']} s"
    )


if __name__ == "__main__":
    app()
