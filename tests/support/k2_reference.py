"""The two-stream (K = 2) training path as it stood before typed audio streams, frozen.

``AVModel.forward``, the objective of ``model.loss`` and ``training.step``'s padding and loss call
exactly as they computed the ``sound`` + ``speech`` case, built from the functions that typed
streams left untouched (the encoders, the similarity and the regularizers). ``tests/training/
test_k2_golden.py`` checks that today's code gives the same features, loss terms and gradients bit
for bit, on any machine; its JSON fixture pins the values themselves where the numeric environment
matches the one that wrote it.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from model import regularizers as reg
from model.loss import info_nce
from model.regularizers import make_mosaic
from model.similarity import head_scores, pair_volume, total_scores
from pipeline.data.sources import seed_from

TENSORS = (
    "sound_image",
    "speech_image",
    "sound_audio",
    "speech_audio",
    "mix_audio",
    "sound_mask",
    "speech_mask",
    "mix_mask",
    "sound_splice",
    "speech_splice",
)


def forward(model, batch: dict, include_mix: bool = True) -> dict:
    feats: dict[str, torch.Tensor] = {}
    kinds = ("sound", "speech", "mix") if include_mix else ("sound", "speech")
    audio, frame_mask = model.encode_audio(
        torch.cat([batch[f"{k}_audio"] for k in kinds]), torch.cat([batch[f"{k}_mask"] for k in kinds])
    )
    for kind, a, m in zip(kinds, audio.chunk(len(kinds)), frame_mask.chunk(len(kinds))):
        feats[f"{kind}_audio"], feats[f"{kind}_mask"] = a, m
    images = model.encode_image(torch.cat([batch["sound_image"], batch["speech_image"]]))
    feats["sound_image"], feats["speech_image"] = images.chunk(2)
    for kind in ("sound", "speech"):
        v = feats[f"{kind}_image"]
        if f"{kind}_splice" in batch:
            feats[f"{kind}_splice"] = model.frame_mask_from_samples(batch[f"{kind}_splice"])
        foreign = batch.get(f"{kind}_image_foreign")
        if foreign is not None:
            cells = nn.functional.adaptive_avg_pool2d(foreign.to(v.dtype).unsqueeze(1), v.shape[-2:])
            feats[f"{kind}_image_foreign"] = cells.squeeze(1)
    return feats


def _pair_regularizers(a, frame_mask, v, splice_frames, foreign, weights, generator):
    out: dict[str, torch.Tensor] = {}
    if weights.nonneg:
        out["nonneg"] = reg.nonnegativity(a, v, generator)
    if weights.silence:
        out["silence"] = reg.silence(a, frame_mask, v, generator)
    needs_volume = (
        weights.tv
        or weights.specialization
        or (weights.splice and splice_frames is not None)
        or (weights.mixup and foreign is not None)
    )
    if needs_volume:
        volume = reg.at_least_float32(pair_volume(a, v, frame_mask))
        if weights.splice and splice_frames is not None:
            out["splice"] = reg.splice(volume, frame_mask, splice_frames)
        if weights.tv:
            out["tv"] = reg.temporal_smoothness(volume, frame_mask)
        if weights.specialization:
            out["specialization"] = reg.head_specialization(volume, frame_mask)
        if weights.mixup and foreign is not None:
            out["mixup"] = reg.image_mixup(volume, frame_mask, foreign)
    return out


def mix_separate_loss(
    feats,
    logit_scale,
    weights,
    *,
    sound_head=0,
    speech_head=1,
    logit_scale_init=1.0,
    generator=None,
    chunk=None,
    score_backend="auto",
):
    terms: dict[str, torch.Tensor] = {}
    total = logit_scale.new_zeros(())
    if weights.correspondence:
        own = {"sound": sound_head, "speech": speech_head} if weights.correspondence_heads == "own" else None
        for kind in ("sound", "speech"):
            a, mask, v = feats[f"{kind}_audio"], feats[f"{kind}_mask"], feats[f"{kind}_image"]
            scores = (
                total_scores(a, mask, v, chunk, score_backend)
                if own is None
                else head_scores(a, mask, v, own[kind], chunk, score_backend)
            )
            terms[f"cor/{kind}"] = info_nce(scores, logit_scale)
        terms["cor"] = terms["cor/sound"] + terms["cor/speech"]
        total = total + weights.correspondence * terms["cor"]
    if weights.disentanglement:
        mix, mix_mask = feats["mix_audio"], feats["mix_mask"]
        for kind, head in (("sound", sound_head), ("speech", speech_head)):
            scores = head_scores(mix, mix_mask, feats[f"{kind}_image"], head, chunk, score_backend)
            terms[f"dis/{kind}"] = info_nce(scores, logit_scale)
        terms["dis"] = terms["dis/sound"] + terms["dis/speech"]
        total = total + weights.disentanglement * terms["dis"]
    rw = weights.regularizers
    per_pair = [
        _pair_regularizers(
            feats[f"{kind}_audio"],
            feats[f"{kind}_mask"],
            feats[f"{kind}_image"],
            feats.get(f"{kind}_splice"),
            feats.get(f"{kind}_image_foreign"),
            rw,
            generator,
        )
        for kind in ("sound", "speech")
    ]
    regs = {
        name: torch.stack([pair[name] for pair in per_pair if name in pair]).mean()
        for name in dict.fromkeys([*per_pair[0], *per_pair[1]])
    }
    if rw.temperature:
        regs["temperature"] = reg.temperature_floor(logit_scale, logit_scale_init)
    for name, value in regs.items():
        terms[f"reg/{name}"] = value
        total = total + getattr(rw, name) * value
    terms["total"] = total
    return total, {name: value.detach() for name, value in terms.items()}


def pad_batch(batch: dict, size: int, image_size: int, clip: int) -> tuple[dict, torch.Tensor]:
    n = len(batch.get("speech_key", []))
    valid = torch.arange(size) < n
    if n == size:
        return batch, valid
    out = {}
    device = batch["speech_audio"].device if n else "cpu"
    shapes = {"image": (3, image_size, image_size), "audio": (clip,), "mask": (clip,), "splice": (clip,)}
    for name in TENSORS:
        kind = name.split("_")[1]
        dtype = {"image": torch.float32, "audio": torch.float32}.get(kind, torch.bool)
        pad = torch.zeros((size - n, *shapes[kind]), dtype=dtype, device=device)
        if kind == "mask":
            pad[:] = True
        if name in batch:
            out[name] = torch.cat([batch[name], pad])
        elif n == 0 and kind != "splice":
            out[name] = pad
    return out, valid


def step_loss(model, batch: dict, cfg, stage: str, step: int, process_index: int = 0):
    """``training.step.step_loss`` of one process (no gather)."""
    inputs = {k: batch[k] for k in TENSORS if k in batch}
    for kind in ("sound", "speech"):
        if stage == "full" and cfg.mosaic_prob > 0:
            g = torch.Generator().manual_seed(seed_from(cfg.seed, step, process_index, kind))
            inputs[f"{kind}_image"], inputs[f"{kind}_image_foreign"] = make_mosaic(
                inputs[f"{kind}_image"], g, cfg.mosaic_prob
            )
    weights = cfg.loss
    if stage == "warmup" and cfg.loss.correspondence:
        weights = dataclasses.replace(cfg.loss, disentanglement=0.0)
    feats = forward(model, inputs, include_mix=bool(weights.disentanglement))
    valid = batch["valid"]
    n_items = int(valid.sum())
    if n_items < len(valid):
        keep = valid.nonzero().squeeze(1)
        feats = {name: x[keep] for name, x in feats.items()}
    g = torch.Generator().manual_seed(seed_from(cfg.seed, step, "loss"))
    total, terms = mix_separate_loss(
        feats,
        model.logit_scale(),
        weights,
        sound_head=model.config.sound_head,
        speech_head=model.config.speech_head,
        logit_scale_init=model.config.logit_scale_init,
        generator=g,
        score_backend=model.config.score_backend,
    )
    return total, terms, n_items
