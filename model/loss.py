"""The mix-and-separate objective plus DenseAV's regularizers, one function per paper term:
``info_nce`` (Eq. 1), ``correspondence_loss`` (L_cor, Eq. 7), ``disentanglement_loss`` (L_dis,
Eq. 9, on the mixture's head slices of Eq. 10), ``regularizer_terms`` and ``mix_separate_loss``
(Eq. 11: L_cor + L_dis, plus the weighted regularizers).

The paper has K = 2 audio types, sound (A) and speech (P), heads N and N'. For K typed streams
(``ModelConfig.head_types``: head h(t) = ``head_types.index(t)`` answers type t; T = the batch's
types, T_m the types mixed into its mixture, all of T unless ``data.mix.subset`` mixes a pair or
another subset):

    L_cor = sum over t in T   of InfoNCE(s_M(a^t, v^t))          (Eq. 7: each clean clip, max over heads)
    L_dis = sum over t in T_m of InfoNCE(s_N(a^m[h(t)], v^t))    (Eq. 9: head h(t) of the mixture finds t's image)

For K = 2 these are the paper's equations term for term. Eq. 9 thus generalizes head by head: the
mixture's slice for head h(t) (Eq. 10) must retrieve the image of the type-t clip that went into
it, among the batch's type-t images; a type left out of a batch's mixture has no L_dis term in that
batch (its clean clip still has its L_cor term). Where a gathered global batch joins processes
whose mixtures hold different types, each L_dis term runs over the items whose mixture holds its
type (``mix_rows``), its negatives among them. The types are visited in sorted order, so the
terms and the regularizers' random draws do not depend on the order a config lists them in (for
K = 2: sound, then speech, as always).

Everything here takes already-encoded features, so the trainer can gather them across processes
(with gradient) and compute the loss over the global batch. The losses take the dict that
``AVModel.forward`` returns, for each audio type ``t`` (``sound``, ``speech``, ...):

=========================== ======================== =============================================
key                         shape                    meaning
=========================== ======================== =============================================
``t_audio``                 ``[B, C, K, F, T]``      clean clip features of type t (a^A, a^P, ...)
``mix_audio``               ``[B, C, K, F, T]``      mixture features (a^m); only for L_dis
``t_mask``, ``mix_mask``    bool ``[B, T]``          valid frames of each audio
``t_image``                 ``[B, C, K, h, w]``      image paired with the type-t clip (v^A, v^P, ...)
``t_splice`` (opt.)         bool ``[B, T]``          frames replaced by negative-audio splicing
``t_image_foreign`` (opt.)  float ``[B, h, w]``      foreign share of each cell of a mosaic image
=========================== ======================== =============================================
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from pipeline.fields import check_fields, checked

from . import regularizers as reg
from .config import DEFAULT_TYPES, head_index
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


def _types(types: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(sorted(types or DEFAULT_TYPES))


def _head_of(head_types: Sequence[str] | None, sound_head: int, speech_head: int):
    """``t -> h(t)``: from ``head_types``, else the two-head ``sound_head`` / ``speech_head``."""
    if head_types is not None:
        return functools.partial(head_index, list(head_types))
    heads = {"sound": sound_head, "speech": speech_head}

    def head_of(audio_type: str) -> int:
        if audio_type not in heads:
            raise ValueError(f"no head answers the audio type {audio_type!r}: give head_types")
        return heads[audio_type]

    return head_of


def correspondence_loss(
    feats: dict,
    logit_scale: torch.Tensor,
    chunk: int | None = None,
    own_heads: dict[str, int] | None = None,
    backend: str = "auto",
    types: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """L_cor (Eq. 7) by audio type: InfoNCE over ``s_M`` (Eq. 5) of each clean clip set against
    its images, ``{"sound": ..., "speech": ...}`` (one entry per type of ``types``, default sound
    and speech); L_cor is their sum.

    ``own_heads`` (``{"sound": N, "speech": N'}``, the ``correspondence_heads: own`` diagnostic)
    scores each audio type with its own head's ``s_N`` (Eq. 6) instead of the max over heads."""
    out = {}
    for kind in _types(types):
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
    *,
    head_types: Sequence[str] | None = None,
    mix_types: Sequence[str] | None = None,
    mix_rows: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """L_dis (Eq. 9) by audio type: for each type t of the mixture (``mix_types``, default sound
    and speech), InfoNCE over ``s_N`` (Eq. 6) of the mixture's head ``a^m[h(t)]`` (Eq. 10) against
    the type-t images; L_dis is their sum. h(t) is ``head_types.index(t)``, or without
    ``head_types`` the two-head ``sound_head`` (N) and ``speech_head`` (N').

    ``mix_rows`` maps a type to the rows (item indices) whose mixture holds it, where that is not
    every row (a global batch gathered from processes that mixed different types); its term then
    runs over those items alone, and is left out where fewer than two remain (no negative)."""
    mix, mix_mask = _get(feats, "mix_audio"), _get(feats, "mix_mask")
    head_of = _head_of(head_types, sound_head, speech_head)
    out = {}
    for kind in _types(mix_types):
        a, mask, v = mix, mix_mask, _get(feats, f"{kind}_image")
        rows = mix_rows.get(kind) if mix_rows else None
        if rows is not None:
            if len(rows) < 2:
                continue
            a, mask, v = a[rows], mask[rows], v[rows]
        out[kind] = info_nce(head_scores(a, mask, v, head_of(kind), chunk, backend), logit_scale)
    return out


def regularizer_terms(
    feats: dict,
    logit_scale: torch.Tensor,
    weights: reg.RegularizerWeights,
    logit_scale_init: float = 1.0,
    generator: torch.Generator | None = None,
    types: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """DenseAV's regularizers with a non-zero weight, unweighted, by name.

    They act on the clean correspondence pair sets, one per audio type of ``types`` (default:
    sound clip <-> its image, speech clip <-> its image), as DenseAV's did on its clean pairs; each
    is the mean over them.
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
        for kind in _types(types)
    ]
    out = {
        name: torch.stack([pair[name] for pair in per_pair if name in pair]).mean()
        for name in dict.fromkeys(name for pair in per_pair for name in pair)
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
    head_types: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    mix_types: Sequence[str] | None = None,
    mix_rows: Mapping[str, torch.Tensor] | None = None,
    logit_scale_init: float = 1.0,
    generator: torch.Generator | None = None,
    chunk: int | None = None,
    score_backend: str = "auto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_total (Eq. 11) = L_cor + L_dis, each weighted, plus the weighted regularizers; returns
    ``(total, terms)``.

    ``types``: the batch's audio types (default sound and speech); ``mix_types``: those mixed into
    its mixture (default ``types``); ``head_types``: the type each head answers (default: sound on
    ``sound_head``, speech on ``speech_head``); ``mix_rows``: see ``disentanglement_loss``.
    ``terms`` holds detached scalars: ``cor/<t>`` for each type, ``cor``, ``dis/<t>`` for each
    mixed type, ``dis``, ``reg/<name>`` for each regularizer computed, and ``total``. Terms with
    weight 0 are neither computed nor reported.
    """
    weights = weights or LossWeights()
    types = _types(types)
    terms: dict[str, torch.Tensor] = {}
    total = logit_scale.new_zeros(())
    if weights.correspondence:
        own = None
        if weights.correspondence_heads == "own":
            head_of = _head_of(head_types, sound_head, speech_head)
            own = {kind: head_of(kind) for kind in types}
        cor = correspondence_loss(feats, logit_scale, chunk, own, score_backend, types)
        for kind, value in cor.items():
            terms[f"cor/{kind}"] = value
        terms["cor"] = functools.reduce(operator.add, cor.values())
        total = total + weights.correspondence * terms["cor"]
    if weights.disentanglement:
        dis = disentanglement_loss(
            feats,
            logit_scale,
            sound_head,
            speech_head,
            chunk,
            score_backend,
            head_types=head_types,
            mix_types=types if mix_types is None else mix_types,
            mix_rows=mix_rows,
        )
        for kind, value in dis.items():
            terms[f"dis/{kind}"] = value
        terms["dis"] = functools.reduce(operator.add, dis.values()) if dis else logit_scale.new_zeros(())
        total = total + weights.disentanglement * terms["dis"]
    regs = regularizer_terms(feats, logit_scale, weights.regularizers, logit_scale_init, generator, types)
    for name, value in regs.items():
        terms[f"reg/{name}"] = value
        total = total + getattr(weights.regularizers, name) * value
    terms["total"] = total
    return total, {name: value.detach() for name, value in terms.items()}
