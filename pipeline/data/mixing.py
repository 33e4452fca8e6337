"""Mixing the typed audio streams, and the audio augmentations that go with it.

The mixer follows the DNS-Challenge recipe: each source is RMS-normalized over its *active* part,
the ratio between sources is drawn uniformly in dB, the stems are summed, an output level is drawn,
and if the peak would exceed ``peak_limit`` the mixture *and every stem* are scaled by the same
factor, so the stems always sum to the mixture exactly (torchaudio's ``add_noise`` has no such
guard). Everything drawn is returned, so a batch records how it was made.

**K >= 2 types** (``mix_streams``; the types in config order ``t_0, ..., t_{K-1}``):

* per item, ``draw_levels`` draws K - 1 ratios ``r_1, ..., r_{K-1}`` (``r_j``: the reference's
  level over ``t_j``'s, uniform in ``mix.snr_db``), then the output level (uniform in
  ``mix.level_db``), in that order from the item's generator;
* per batch, ``draw_mixture_types`` picks the types in the mixture (``mix.subset``: ``all``; one
  pair, ``pairs``; any subset of two or more, ``any``; uniformly among the choices), from a
  generator of its own; with K = 2 there is one choice and nothing is drawn;
* each source is normalized to ``source_level_db`` (a silent one, active RMS below 1e-5, is never
  amplified); in each item the *reference* is the first type of the mixture, in config order,
  that is not silent, and every later non-silent type ``t_j`` of the mixture is scaled by
  ``10^(-r_j / 20)``; the output level is set on the sum, then the peak guard;
* a type left out of the batch's mixture keeps its clean clip, normalized to ``source_level_db``
  and scaled by the item's output-level factor and peak-guard factor (the guard also keeps that
  stem under the limit).

With the types (speech, sound) this is the two-stream mixer exactly: ``r_1`` is the
speech-to-sound ratio ``snr_db``, drawn before the level, and the arithmetic is the same, term by
term.

Drawing and arithmetic are split: ``draw_levels`` takes an explicit ``np.random.Generator`` (the
loader draws per item in its workers, which makes batches reproducible and workers independent);
``mix_streams`` (``mix_batch``: speech + sound) is batched torch arithmetic that runs wherever the
batch is, the training device included, so the loader workers only decode. ``mix_pair`` mixes one
numpy pair (evaluation).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pipeline.fields import checked
from pipeline.format import SAMPLE_RATE

_FRAME = 400  # 25 ms at 16 kHz: the unit over which activity is decided
_ACTIVE_BELOW_PEAK_DB = 40.0  # frames quieter than the loudest frame by more than this are pauses
_SILENT_RMS = 1e-5  # below this a clip is treated as silent: never amplified (no division by ~0)
SUBSETS = ("all", "pairs", "any")  # MixConfig.subset


@dataclass
class MixConfig:
    # the reference's level over each other type's (speech-to-sound), drawn uniformly in dB
    snr_db: tuple[float, float] = checked((-5.0, 5.0), ordered=True)
    source_level_db: float = checked(-25.0, le=0)  # each source is first normalized to this RMS (dBFS)
    # output level of the mixture, uniform in dBFS
    level_db: tuple[float, float] = checked((-35.0, -15.0), le=0, ordered=True)
    peak_limit: float = checked(0.99, gt=0, le=1)
    # the types in each batch's mixture: every type, one pair, or any two or more (one choice when K = 2)
    subset: str = checked("all", choices=SUBSETS)


@dataclass
class Mix:
    mixture: np.ndarray | torch.Tensor
    speech: np.ndarray | torch.Tensor  # the speech stem as it sits in the mixture
    sound: np.ndarray | torch.Tensor  # the sound stem as it sits in the mixture
    snr_db: float | torch.Tensor  # drawn speech-to-sound ratio (= realized, measured with active_rms)
    level_db: float | torch.Tensor  # drawn output level
    clip_scale: float | torch.Tensor  # extra factor applied to keep the peak under the limit (1.0 = none)


@dataclass
class StreamMix:
    """A batch of mixtures of typed streams (``mix_streams``), ``[B, N]`` / ``[B]`` tensors."""

    mixture: torch.Tensor  # the sum of the stems of ``types``, exactly
    mask: torch.Tensor  # real samples of the mixture: the OR of its types' masks
    stems: dict[str, torch.Tensor]  # every type's stem as it sits in the mixture (left out: module docstring)
    types: tuple[str, ...]  # the types in the mixture, in config order
    snr_db: torch.Tensor  # the drawn ratios, as given ([B] for two types, else [B, K - 1])
    level_db: torch.Tensor  # drawn output level
    clip_scale: torch.Tensor  # the peak guard's factor (1.0 = none)


def valid_mask(valid: torch.Tensor, samples: int) -> torch.Tensor:
    """[B] counts of real samples -> [B, samples] bool mask of the real (unpadded) samples."""
    return torch.arange(samples, device=valid.device) < valid.reshape(-1, 1)


def _frames(x: torch.Tensor) -> torch.Tensor:
    """[B, N] -> [B, F, 400], zero-padding a last partial frame."""
    pad = (-x.shape[-1]) % _FRAME
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(x.shape[0], -1, _FRAME)


def _frame_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Real samples in every frame, [B, F] (a short last frame or one cut by a masked span counts
    with its real length)."""
    return _frames(mask).sum(-1, dtype=torch.int32).float()


def _rms_of_frames(power: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Active RMS from per-frame sums of squares and real lengths ([B, F] each)."""
    energy = power / length.clamp(min=1)
    floor = energy.amax(-1, keepdim=True) * 10 ** (-_ACTIVE_BELOW_PEAK_DB / 10)
    active = (length > 0) & (energy >= floor) & (energy > 0)
    return ((power * active).sum(-1) / (length * active).sum(-1).clamp(min=1)).sqrt()


def active_rms(audio: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """RMS over the active 25 ms frames of the real samples: ``[B, N]`` (and mask) -> ``[B]``.

    Padding and pauses would otherwise pull the RMS down and make short or sparse clips too loud
    after normalization. A frame is active when its energy is within 40 dB of the loudest frame.
    Silent clips give 0.
    """
    x = audio.float()
    mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask
    frames = _frames(x * mask)
    return _rms_of_frames(torch.linalg.vecdot(frames, frames), _frame_lengths(mask))


def draw_levels(rng: np.random.Generator, cfg: MixConfig, ratios: int = 1) -> tuple[float | list[float], float]:
    """The per-item draws of a mixture of ``ratios + 1`` types: the reference-to-type ratios in dB
    (one float for two types: the speech-to-sound ratio; else a list), then the output level."""
    if ratios == 1:
        return float(rng.uniform(*cfg.snr_db)), float(rng.uniform(*cfg.level_db))
    snr = [float(rng.uniform(*cfg.snr_db)) for _ in range(ratios)]
    return snr, float(rng.uniform(*cfg.level_db))


def mixture_choices(types: Sequence[str], subset: str) -> list[tuple[str, ...]]:
    """The type sets a batch's mixture may hold under ``subset`` (each in config order)."""
    if subset not in SUBSETS:
        raise ValueError(f"mix.subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    if subset == "all":
        return [tuple(types)]
    sizes = [2] if subset == "pairs" else range(2, len(types) + 1)
    return [combo for size in sizes for combo in itertools.combinations(types, size)]


def draw_mixture_types(types: Sequence[str], subset: str, seed: int, batch: int) -> tuple[str, ...]:
    """The types in batch ``batch``'s mixture, uniformly among ``mixture_choices``, from a generator
    seeded by (``seed``, ``batch``); nothing is drawn when there is one choice (K = 2)."""
    choices = mixture_choices(types, subset)
    if len(choices) == 1:
        return choices[0]
    return choices[int(np.random.default_rng([seed, batch]).integers(len(choices)))]


def mix_streams(
    audio: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    snr_db: torch.Tensor,
    level_db: torch.Tensor,
    cfg: MixConfig = MixConfig(),
    types: Sequence[str] | None = None,
) -> StreamMix:
    """Mix ``[B, N]`` float32 clips of K typed streams (``audio``, in config order; ``masks`` of
    their real samples) with the drawn ratios (``[B]`` for K = 2, else ``[B, K - 1]``; column j
    belongs to the type j + 1) and ``[B]`` output levels. ``types``: the types in the mixture
    (default: all). The module docstring states the recipe.

    Each clip must be silent outside its mask (``decode_samples`` and ``mix_pair`` make sure).
    The mixture's activity is measured from per-frame sums of the sources (``|sum_t g_t x_t|^2 =
    sum_t g_t^2 x_t.x_t + 2 sum_{s<t} g_s g_t x_s.x_t`` per frame), so the whole mix is a few
    dot-product passes and a handful of scaling passes, with no host synchronisation: it runs as
    well on the training device as on a CPU.
    """
    order = list(audio)
    mixed = order if types is None else [t for t in order if t in types]
    if types is not None and (len(mixed) != len(set(types)) or not mixed):
        raise ValueError(f"the mixture's types {tuple(types)} must be among the streams {tuple(order)}")
    first = audio[order[0]]
    for name in order[1:]:
        if audio[name].shape != first.shape:
            raise ValueError(
                f"{order[0]} {tuple(first.shape)} and {name} {tuple(audio[name].shape)} must have the same shape"
            )
    snr = snr_db.to(first.device, torch.float32)
    level = level_db.to(first.device, torch.float32)
    if len(order) > 2 and tuple(snr.shape[1:]) != (len(order) - 1,):
        raise ValueError(f"{len(order)} streams need [B, {len(order) - 1}] ratios, got {tuple(snr.shape)}")
    ratio = {name: snr[:, j] if snr.ndim == 2 else snr for j, name in enumerate(order[1:])}
    frames = {name: _frames(audio[name]) for name in order}
    power = {name: torch.linalg.vecdot(frames[name], frames[name]) for name in order}
    rms = {name: _rms_of_frames(power[name], _frame_lengths(masks[name])) for name in order}

    def gain_to(target: torch.Tensor, rms: torch.Tensor) -> torch.Tensor:
        # a silent source is never amplified (no division by ~0)
        return torch.where(rms >= _SILENT_RMS, target / rms.clamp(min=_SILENT_RMS), torch.ones_like(rms))

    source_level = torch.full_like(level, 10 ** (cfg.source_level_db / 20))
    gains = {name: gain_to(source_level, rms[name]) for name in order}
    heard = None  # per item: some earlier type of the mixture is not silent (the reference is the first)
    for name in mixed:
        audible = rms[name] >= _SILENT_RMS
        if heard is not None:  # a ratio needs two real sources
            gains[name] = torch.where(audible & heard, gains[name] * 10 ** (-ratio[name] / 20), gains[name])
        heard = audible if heard is None else heard | audible
    g = {name: gains[name][:, None] for name in mixed}
    p_mix = g[mixed[0]] * g[mixed[0]] * power[mixed[0]]
    for name in mixed[1:]:
        p_mix = p_mix + g[name] * g[name] * power[name]
    for i, a in enumerate(mixed):
        for b in mixed[i + 1 :]:
            p_mix = p_mix + 2 * g[a] * g[b] * torch.linalg.vecdot(frames[a], frames[b])
    mask = masks[mixed[0]]
    for name in mixed[1:]:
        mask = mask | masks[name]
    gain = gain_to(10 ** (level / 20), _rms_of_frames(p_mix.clamp(min=0), _frame_lengths(mask)))
    stems = {name: audio[name] * (gains[name] * gain)[:, None] for name in order}

    def total() -> torch.Tensor:
        out = stems[mixed[0]] if len(mixed) > 1 else stems[mixed[0]].clone()
        for name in mixed[1:]:
            out = out + stems[name]
        return out

    peak = total().abs().amax(-1)
    for name in order:
        if name not in mixed:  # a left-out stem stays under the limit too
            peak = torch.maximum(peak, stems[name].abs().amax(-1))
    clip_scale = torch.where(peak > cfg.peak_limit, cfg.peak_limit / peak.clamp(min=1e-12), torch.ones_like(peak))
    for stem in stems.values():
        stem.mul_(clip_scale[:, None])
    # summed in float32 after the last scaling, so the stems add up to the mixture exactly
    return StreamMix(total(), mask, stems, tuple(mixed), snr, level, clip_scale)


def mix_batch(
    speech: torch.Tensor,
    sound: torch.Tensor,
    speech_mask: torch.Tensor,
    sound_mask: torch.Tensor,
    snr_db: torch.Tensor,
    level_db: torch.Tensor,
    cfg: MixConfig = MixConfig(),
) -> Mix:
    """Mix ``[B, N]`` float32 speech and sound with drawn ``[B]`` speech-to-sound ratios and
    levels (``mix_streams`` with the types speech and sound)."""
    if speech.shape != sound.shape:
        raise ValueError(f"speech {tuple(speech.shape)} and sound {tuple(sound.shape)} must have the same shape")
    mix = mix_streams(
        {"speech": speech, "sound": sound}, {"speech": speech_mask, "sound": sound_mask}, snr_db, level_db, cfg
    )
    return Mix(mix.mixture, mix.stems["speech"], mix.stems["sound"], mix.snr_db, mix.level_db, mix.clip_scale)


def mix_pair(
    speech: np.ndarray,
    sound: np.ndarray,
    rng: np.random.Generator,
    cfg: MixConfig = MixConfig(),
    speech_valid: int | None = None,
    sound_valid: int | None = None,
    snr_db: float | None = None,
    level_db: float | None = None,
) -> Mix:
    """Mix one speech and one sound clip of equal length (numpy in and out); the first
    ``speech_valid``/``sound_valid`` samples are real. ``snr_db``/``level_db`` override the draw."""
    if np.shape(speech) != np.shape(sound):
        raise ValueError(f"speech {np.shape(speech)} and sound {np.shape(sound)} must have the same shape")
    snr = float(rng.uniform(*cfg.snr_db)) if snr_db is None else float(snr_db)
    level = float(rng.uniform(*cfg.level_db)) if level_db is None else float(level_db)
    n = len(speech)
    masks = [valid_mask(torch.tensor([n if v is None else int(v)]), n) for v in (speech_valid, sound_valid)]
    sp, so = (torch.tensor(np.asarray(x, dtype=np.float32)).reshape(1, n) * m for x, m in zip((speech, sound), masks))
    mix = mix_batch(sp, so, *masks, torch.tensor([snr]), torch.tensor([level]), cfg)
    return Mix(
        mix.mixture[0].numpy(), mix.speech[0].numpy(), mix.sound[0].numpy(), snr, level, float(mix.clip_scale[0])
    )


# ---------------------------------------------------------------------------------------------
# DenseAV-style augmentations (off unless the trainer asks)


@dataclass
class SpliceConfig:
    """Negative-audio splicing: a 1-4 s piece of another clip is crossfaded into the clip.

    The loss then asks the similarity on the foreign frames to be ~0 (DenseAV's regularizer).
    """

    prob: float = checked(0.0, ge=0, le=1)
    seconds: tuple[float, float] = checked((1.0, 4.0), gt=0, ordered=True)
    crossfade_s: float = checked(0.05, ge=0)


def splice_negative(
    audio: np.ndarray,
    valid: int,
    donor: np.ndarray,
    donor_valid: int,
    rng: np.random.Generator,
    cfg: SpliceConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Crossfade a random segment of ``donor`` into ``audio``; returns (audio, foreign-sample mask)."""
    foreign = np.zeros(len(audio), dtype=bool)
    if cfg.prob <= 0 or rng.random() >= cfg.prob:
        return audio, foreign
    seg = int(rng.uniform(*cfg.seconds) * SAMPLE_RATE)
    seg = min(seg, valid, donor_valid)
    if seg < 2 * int(cfg.crossfade_s * SAMPLE_RATE) + 1:
        return audio, foreign
    dst = int(rng.integers(0, valid - seg + 1))
    src = int(rng.integers(0, donor_valid - seg + 1))
    fade = int(cfg.crossfade_s * SAMPLE_RATE)
    weight = np.ones(seg, dtype=np.float32)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        weight[:fade], weight[-fade:] = ramp, ramp[::-1]
    out = audio.copy()
    out[dst : dst + seg] = (1 - weight) * audio[dst : dst + seg] + weight * donor[src : src + seg]
    foreign[dst : dst + seg] = weight > 0.5
    return out, foreign


@dataclass
class MaskConfig:
    """Extra masking: with probability ``prob`` a random span (up to ``max_fraction`` of the real
    audio) is zeroed and marked invalid, so the model cannot rely on any single stretch."""

    prob: float = checked(0.0, ge=0, le=1)
    max_fraction: float = checked(0.3, ge=0, le=1)


def draw_masked_span(valid: int, rng: np.random.Generator, cfg: MaskConfig) -> tuple[int, int]:
    """``(start, length)`` of a span of the first ``valid`` samples to silence and mark invalid;
    ``(0, 0)`` for none. Applied with ``span_mask`` wherever the batch is."""
    if cfg.prob <= 0 or valid <= 0 or rng.random() >= cfg.prob:
        return 0, 0
    span = int(rng.uniform(0, cfg.max_fraction) * valid)
    if span == 0:
        return 0, 0
    return int(rng.integers(0, valid - span + 1)), span


def span_mask(spans: torch.Tensor, samples: int) -> torch.Tensor:
    """[B, 2] (start, length) -> [B, samples] bool, True inside the span."""
    t = torch.arange(samples, device=spans.device)
    start, length = spans[:, :1], spans[:, 1:]
    return (t >= start) & (t < start + length)


# ---------------------------------------------------------------------------------------------
# evaluation: off-screen audio of the other type (paper §4.3.4, Tables 4-5)


class OffscreenMixer:
    """Adds a clip of the opposite audio type to each query of an evaluation set, deterministically.

    Query ``i`` always gets the same distractor, SNR and level for a given seed, regardless of the
    order or batching in which queries are processed. ``distractors`` is a sequence of
    ``(audio, valid_samples)``; the target plays the role of the speech in ``mix_pair`` when
    ``target_type == "speech"`` and of the sound otherwise, so ``snr_db`` is always
    target-to-distractor.
    """

    def __init__(
        self, distractors, target_type: str, seed: int = 0, cfg: MixConfig | None = None, snr_db: float | None = 0.0
    ):
        if target_type not in ("speech", "sound"):
            raise ValueError(f"target_type must be 'speech' or 'sound', got {target_type!r}")
        if len(distractors) == 0:
            raise ValueError("the off-screen mixer needs at least one distractor clip")
        self.distractors = distractors
        self.target_type = target_type
        self.seed = seed
        self.cfg = cfg or MixConfig()
        self.snr_db = snr_db  # None: draw from cfg.snr_db per query

    def choice(self, index: int) -> int:
        """Index of the distractor used for query ``index``."""
        return int(np.random.default_rng([self.seed, index]).integers(len(self.distractors)))

    def __call__(self, index: int, audio: np.ndarray, valid: int | None = None) -> Mix:
        rng = np.random.default_rng([self.seed, index, 1])
        other, other_valid = self.distractors[self.choice(index)]
        other = _fit(np.asarray(other, dtype=np.float32), len(audio))
        other_valid = min(int(other_valid), len(audio))
        if self.target_type == "speech":
            return mix_pair(audio, other, rng, self.cfg, valid, other_valid, snr_db=self.snr_db)
        snr = None if self.snr_db is None else -self.snr_db
        return mix_pair(other, audio, rng, self.cfg, other_valid, valid, snr_db=snr)


def _fit(audio: np.ndarray, length: int) -> np.ndarray:
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)))
