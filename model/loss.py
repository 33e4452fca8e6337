"""The mix-and-separate objective plus DenseAV's regularizers, one function per paper term:
``info_nce`` (Eq. 1), ``correspondence_loss`` (L_cor, Eq. 7), ``disentanglement_loss`` (L_dis,
Eq. 9, on the mixture's head slices of Eq. 10), ``regularizer_terms`` and ``mix_separate_loss``
(Eq. 11: L_cor + L_dis, plus the weighted regularizers).

Everything here takes already-encoded features, so the trainer can gather them across processes
(with gradient) and compute the loss over the global batch. The losses take the dict that
``AVModel.forward`` returns:

=========================== ======================== =============================================
key                         shape                    meaning
=========================== ======================== =============================================
``sound_audio``             ``[B, C, K, F, T]``      clean sound clip features (a^A)
``speech_audio``            ``[B, C, K, F, T]``      clean speech clip features (a^P)
``mix_audio``               ``[B, C, K, F, T]``      mixture features (a^m); only for L_dis
``sound_mask`` etc.         bool ``[B, T]``          valid frames of each audio
``sound_image``             ``[B, C, K, h, w]``      image paired with the sound (v^A)
``speech_image``            ``[B, C, K, h, w]``      image paired with the speech (v^P)
``sound_splice`` (opt.)     bool ``[B, T]``          frames replaced by negative-audio splicing
``sound_image_foreign`` (o) float ``[B, h, w]``      foreign share of each cell of a mosaic image
=========================== ======================== =============================================
(``speech_*`` likewise.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from pipeline.fields import check_fields, checked

from . import regularizers as reg
from .similarity import head_scores, pair_volume, total_scores


@dataclass
class LossWeights:
    correspondence: float = checked(1.0, ge=0)  # L_cor (Eq. 7)
    disentanglement: float = checked(1.0, ge=0)  # L_dis (Eq. 9); 0 in the warm-up, which trains with L_cor only
    regularizers: reg.RegularizerWeights = field(default_factory=reg.RegularizerWeights)
    # How L_cor scores a clean clip: "max" is the paper's s_M (Eq. 5, max over heads, Eq. 3), so
    # either head may answer either audio type. "own" scores sound clips with the sound head and
    # speech clips with the speech head (s_N, Eq. 6): not the paper's objective, a diagnostic that
    # isolates what the max over heads lets a head learn of the other audio type (docs/ablation.md).
    correspondence_heads: str = checked("max", choices=("max", "own"))

    def __post_init__(self):
        check_fields(self)


def info_nce(scores: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch negatives (Eq. 1): row i's positive is column i.

    The mean of the audio->image and image->audio cross-entropies of ``logit_scale * scores``.
    (The paper writes sums over i; the mean keeps the scale independent of the batch size.)
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square [B, B] matrix, got {tuple(scores.shape)}")
    logits = logit_scale * reg.at_least_float32(scores)
    labels = torch.arange(scores.shape[0], device=scores.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def _get(feats: dict, key: str) -> torch.Tensor:
    if key not in feats:
        raise KeyError(f"the objective needs {key!r} in the feature dict (have {sorted(feats)})")
    return feats[key]


def _pair_regularizers(
    a: torch.Tensor,
    frame_mask: torch.Tensor,
    v: torch.Tensor,
    splice_frames: torch.Tensor | None,
    foreign: torch.Tensor | None,
    weights: reg.RegularizerWeights,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    """The regularizers of one set of matched (clip, image) pairs, by name."""
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


def correspondence_loss(
    feats: dict,
    logit_scale: torch.Tensor,
    chunk: int | None = None,
    own_heads: dict[str, int] | None = None,
    backend: str = "auto",
) -> dict[str, torch.Tensor]:
    """L_cor (Eq. 7) by audio type: InfoNCE over ``s_M`` (Eq. 5) of each clean clip set against
    its images, ``{"sound": ..., "speech": ...}``; L_cor is their sum.

    ``own_heads`` (``{"sound": N, "speech": N'}``, the ``correspondence_heads: own`` diagnostic)
    scores each audio type with its own head's ``s_N`` (Eq. 6) instead of the max over heads."""
    out = {}
    for kind in ("sound", "speech"):
        a, mask, v = _get(feats, f"{kind}_audio"), _get(feats, f"{kind}_mask"), _get(feats, f"{kind}_image")
        scores = (
            total_scores(a, mask, v, chunk, backend)
            if own_heads is None
            else head_scores(a, mask, v, own_heads[kind], chunk, backend)
        )
        out[kind] = info_nce(scores, logit_scale)
    return out


def disentanglement_loss(
    feats: dict,
    logit_scale: torch.Tensor,
    sound_head: int = 0,
    speech_head: int = 1,
    chunk: int | None = None,
    backend: str = "auto",
) -> dict[str, torch.Tensor]:
    """L_dis (Eq. 9) by audio type: InfoNCE over ``s_N`` (Eq. 6) of the mixture's sound head
    ``a^m[N]`` against the sound images and of its speech head ``a^m[N']`` against the speech
    images (Eq. 10), ``{"sound": ..., "speech": ...}``; L_dis is their sum."""
    mix, mix_mask = _get(feats, "mix_audio"), _get(feats, "mix_mask")
    return {
        kind: info_nce(head_scores(mix, mix_mask, _get(feats, f"{kind}_image"), head, chunk, backend), logit_scale)
        for kind, head in (("sound", sound_head), ("speech", speech_head))
    }


def regularizer_terms(
    feats: dict,
    logit_scale: torch.Tensor,
    weights: reg.RegularizerWeights,
    logit_scale_init: float = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """DenseAV's regularizers with a non-zero weight, unweighted, by name.

    They act on the two clean correspondence pair sets (sound clip <-> its image, speech clip <->
    its image), as DenseAV's did on its clean pairs; each is the mean over the two.
    """
    per_pair = [
        _pair_regularizers(
            _get(feats, f"{kind}_audio"),
            _get(feats, f"{kind}_mask"),
            _get(feats, f"{kind}_image"),
            feats.get(f"{kind}_splice"),
            feats.get(f"{kind}_image_foreign"),
            weights,
            generator,
        )
        for kind in ("sound", "speech")
    ]
    out = {
        name: torch.stack([pair[name] for pair in per_pair if name in pair]).mean()
        for name in dict.fromkeys([*per_pair[0], *per_pair[1]])
    }  # union, in order
    if weights.temperature:
        out["temperature"] = reg.temperature_floor(logit_scale, logit_scale_init)
    return out


def mix_separate_loss(
    feats: dict,
    logit_scale: torch.Tensor,
    weights: LossWeights | None = None,
    *,
    sound_head: int = 0,
    speech_head: int = 1,
    logit_scale_init: float = 1.0,
    generator: torch.Generator | None = None,
    chunk: int | None = None,
    score_backend: str = "auto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_total (Eq. 11) = L_cor + L_dis, each weighted, plus the weighted regularizers; returns
    ``(total, terms)``.

    ``terms`` holds detached scalars: ``cor/sound``, ``cor/speech``, ``cor``, ``dis/sound``,
    ``dis/speech``, ``dis``, ``reg/<name>`` for each regularizer computed, and ``total``. Terms
    with weight 0 are neither computed nor reported.
    """
    weights = weights or LossWeights()
    terms: dict[str, torch.Tensor] = {}
    total = logit_scale.new_zeros(())
    if weights.correspondence:
        own = {"sound": sound_head, "speech": speech_head} if weights.correspondence_heads == "own" else None
        for kind, value in correspondence_loss(feats, logit_scale, chunk, own, score_backend).items():
            terms[f"cor/{kind}"] = value
        terms["cor"] = terms["cor/sound"] + terms["cor/speech"]
        total = total + weights.correspondence * terms["cor"]
    if weights.disentanglement:
        for kind, value in disentanglement_loss(
            feats, logit_scale, sound_head, speech_head, chunk, score_backend
        ).items():
            terms[f"dis/{kind}"] = value
        terms["dis"] = terms["dis/sound"] + terms["dis/speech"]
        total = total + weights.disentanglement * terms["dis"]
    for name, value in regularizer_terms(feats, logit_scale, weights.regularizers, logit_scale_init, generator).items():
        terms[f"reg/{name}"] = value
        total = total + getattr(weights.regularizers, name) * value
    terms["total"] = total
    return total, {name: value.detach() for name, value in terms.items()}
