"""``load_any``: a model ready for inference from this project's checkpoint directory, a DenseAV file,
an ImageBind / CAV-MAE release file (``model.baselines``, recognized by its key names), or a Hugging
Face Hub repo id of this project's checkpoints or DenseAV's copies (``owner/name[@revision]``,
fetched into huggingface_hub's cache by ``model.hub``; a local path that exists wins). This is the one
place a trained model is loaded for inference: ``evaluation.runner.load_model``, ``ground.api.Grounder``
and ``from_pretrained`` all come here.

This project's checkpoints go through ``model.checkpoint.load_checkpoint``; DenseAV's ``.ckpt`` /
``model.safetensors`` (or its Hugging Face folder) through ``model.denseav_convert``. DenseAV's two-head
model records nowhere which head is speech: unless ``speech_head`` says so, it is picked from the
model's activations on probe clips (eSpeak speech against generated sounds, each with a generated
image), as Pred.Dis assigns heads; the description says how it was decided and with what APs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from pipeline.format import SAMPLE_RATE

PROBE_TEXTS = (
    "a picture of a dog on the grass",
    "there is a red car next to the house",
    "look at the boat on the water",
)


class Loaded(NamedTuple):
    model: torch.nn.Module
    description: dict[str, Any]


def load_any(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    speech_head: int | None = None,
    num_heads: int | None = None,
    revision: str | None = None,
) -> Loaded:
    """(model in eval mode on ``device``, description) for ``path``: a project checkpoint directory,
    a DenseAV file / Hugging Face folder (``num_heads`` where the file does not say), a baseline
    release file, or a Hub repo id ``owner/name[@revision]`` of either of the first two (``revision``
    pins a branch, tag or commit; the description's ``hub`` says which commit was loaded).
    Errors are ``model.checkpoint.CheckpointError`` with one line naming the file or repo."""
    from .hub import resolve

    path, hub = resolve(path, revision)
    loaded = _load_local(path, speech_head, num_heads)
    if hub is not None:
        loaded.description["hub"] = hub
    return Loaded(loaded.model.to(device).eval(), loaded.description)


def from_pretrained(
    repo_or_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    speech_head: int | None = None,
    num_heads: int | None = None,
) -> torch.nn.Module:
    """A trained model, as transformers' ``from_pretrained`` names it: a Hub repo id
    (``owner/name[@revision]``) or a local checkpoint, through ``load_any``; eval mode on ``device``."""
    return load_any(repo_or_dir, device=device, speech_head=speech_head, num_heads=num_heads, revision=revision).model


def _load_local(path: Path, speech_head: int | None, num_heads: int | None) -> Loaded:
    """``load_any`` of a local path, on the CPU."""
    from .baselines.convert import baseline_family, load_baseline
    from .denseav_convert import is_denseav

    family = baseline_family(path)
    if family is not None:  # ImageBind / CAV-MAE: one similarity head, nothing to assign
        if speech_head not in (None, 0) or num_heads not in (None, 1):
            raise ValueError(f"{path}: {family} has one similarity head (0); drop --speech-head and --num-heads")
        model, desc = load_baseline(path, family)
        return Loaded(model.eval(), {**desc, "config": model.config.to_dict()})
    if is_denseav(path):
        model, desc = _load_denseav(path, speech_head, num_heads)
    else:
        from .checkpoint import load_checkpoint, read_checkpoint_info

        model = load_checkpoint(path, device="cpu")
        info = read_checkpoint_info(path)
        desc = {"kind": "project", "checkpoint": str(path), "stage": info.get("stage"), "meta": info.get("meta", {})}
        if num_heads is not None and num_heads != model.config.num_heads:
            raise ValueError(
                f"num_heads {num_heads} given, but checkpoint {path} records {model.config.num_heads} "
                "heads; drop --num-heads (it is for DenseAV files that do not record theirs)"
            )
        if speech_head is not None:
            _set_heads(model.config, speech_head)
            desc["head_assignment"] = "given (speech_head)"
    desc["config"] = model.config.to_dict()
    return Loaded(model.eval(), desc)


def _set_heads(config, speech_head: int) -> None:
    if not 0 <= speech_head < config.num_heads:
        raise ValueError(f"speech_head {speech_head} is outside 0..{config.num_heads - 1}")
    if hasattr(config, "name_head"):  # ModelConfig: the speech head swaps type names with the old one
        config.name_head("speech", speech_head)
        return
    if config.num_heads > 1:
        config.sound_head = next(k for k in range(config.num_heads) if k != speech_head)
    config.speech_head = speech_head


def _load_denseav(path: Path, speech_head: int | None, num_heads: int | None):
    from .denseav import pick_speech_head
    from .denseav_convert import convert

    model, desc = convert(path, num_heads=num_heads)
    desc["preprocessing"] = (
        "DenseAV evaluation: audio zero-padded to 164,200 samples (longer kept whole), "
        "zero mean / unit variance over the padded clip, HuBERT without attention mask; "
        "image shorter side to 224, centre crop, ImageNet normalization; 28x28 maps"
    )
    if model.config.num_heads == 1:
        desc["head_assignment"] = "single head"
    elif speech_head is not None:
        _set_heads(model.config, speech_head)
        desc["head_assignment"] = "given (speech_head)"
    else:
        speech, sound, images = probe_inputs(model.config.image_size)
        found = pick_speech_head(model, speech, sound, images)
        _set_heads(model.config, found["speech_head"])
        desc["head_assignment"] = {"method": "activations on eSpeak speech vs generated sounds (Pred.Dis)", **found}
    return model, desc


def probe_inputs(image_size: int, seconds: float = 3.0) -> tuple[list[np.ndarray], list[np.ndarray], torch.Tensor]:
    """Probe clips for the head assignment: eSpeak sentences, generated non-speech sounds (noise
    bursts, a chirp, a hum), and smooth random ImageNet-normalized images (one per clip index)."""
    from pipeline.audio import resample
    from pipeline.tts import synthesize

    spoken = [synthesize(text) for text in PROBE_TEXTS]
    speech = [resample(s.audio.astype(np.float32), s.sample_rate).astype(np.float32) for s in spoken]
    r = np.random.default_rng(0)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    bursts = r.standard_normal(n) * (np.sin(2 * np.pi * 2.0 * t) > 0.3)
    chirp = np.sin(2 * np.pi * (300 + 900 * t) * t)
    hum = np.sin(2 * np.pi * 110 * t) + 0.5 * np.sin(2 * np.pi * 220 * t) + 0.1 * r.standard_normal(n)
    sound = [(0.3 * x / np.abs(x).max()).astype(np.float32) for x in (bursts, chirp, hum)]
    coarse = torch.from_numpy(r.standard_normal((len(speech), 3, 4, 4)).astype(np.float32))
    images = torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bicubic", align_corners=False)
    return speech, sound, images
