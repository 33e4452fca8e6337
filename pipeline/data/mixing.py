"""Speech + sound mixing, and the audio augmentations that go with it.

The mixer follows the DNS-Challenge recipe: each source is RMS-normalized over its *active* part,
the speech-to-sound ratio is drawn uniformly in dB, the stems are summed, an output level is drawn,
and if the peak would exceed ``peak_limit`` the mixture *and both stems* are scaled by the same
factor, so ``speech_stem + sound_stem == mixture`` always holds (torchaudio's ``add_noise`` has no
such guard). Everything drawn is returned, so a batch records how it was made.

Drawing and arithmetic are split: ``draw_levels`` takes an explicit ``np.random.Generator`` (the
loader draws per item in its workers, which makes batches reproducible and workers independent);
``mix_batch`` is batched torch arithmetic that runs wherever the batch is, the training device
included, so the loader workers only decode. ``mix_pair`` mixes one numpy pair (evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.fields import checked
from pipeline.format import SAMPLE_RATE

_FRAME = 400  # 25 ms at 16 kHz: the unit over which activity is decided
_ACTIVE_BELOW_PEAK_DB = 40.0  # frames quieter than the loudest frame by more than this are pauses
_SILENT_RMS = 1e-5  # below this a clip is treated as silent: never amplified (no division by ~0)


@dataclass
class MixConfig:
    snr_db: tuple[float, float] = checked((-5.0, 5.0), ordered=True)  # speech-to-sound ratio, drawn uniformly in dB
    source_level_db: float = checked(-25.0, le=0)  # each source is first normalized to this RMS (dBFS)
    # output level of the mixture, uniform in dBFS
    level_db: tuple[float, float] = checked((-35.0, -15.0), le=0, ordered=True)
    peak_limit: float = checked(0.99, gt=0, le=1)


@dataclass
class Mix:
    mixture: np.ndarray | torch.Tensor
    speech: np.ndarray | torch.Tensor  # the speech stem as it sits in the mixture
    sound: np.ndarray | torch.Tensor  # the sound stem as it sits in the mixture
    snr_db: float | torch.Tensor  # drawn speech-to-sound ratio (= realized, measured with active_rms)
    level_db: float | torch.Tensor  # drawn output level
    clip_scale: float | torch.Tensor  # extra factor applied to keep the peak under the limit (1.0 = none)


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


def draw_levels(rng: np.random.Generator, cfg: MixConfig) -> tuple[float, float]:
    """The per-item draws of a mixture: (speech-to-sound ratio, output level) in dB."""
    return float(rng.uniform(*cfg.snr_db)), float(rng.uniform(*cfg.level_db))


def mix_batch(
    speech: torch.Tensor,
    sound: torch.Tensor,
    speech_mask: torch.Tensor,
    sound_mask: torch.Tensor,
    snr_db: torch.Tensor,
    level_db: torch.Tensor,
    cfg: MixConfig = MixConfig(),
) -> Mix:
    """Mix ``[B, N]`` float32 speech and sound with drawn ``[B]`` ratios and levels.

    Each clip must be silent outside its mask (``decode_samples`` and ``mix_pair`` make sure).
    The mixture's activity is measured from per-frame sums of the sources (``|g s + h n|^2 =
    g^2 s.s + h^2 n.n + 2gh s.n`` per frame), so the whole mix is three dot-product passes and a
    handful of scaling passes, with no host synchronisation: it runs as well on the training
    device as on a CPU.
    """
    if speech.shape != sound.shape:
        raise ValueError(f"speech {tuple(speech.shape)} and sound {tuple(sound.shape)} must have the same shape")
    snr = snr_db.to(speech.device, torch.float32)
    level = level_db.to(speech.device, torch.float32)
    s, n = _frames(speech), _frames(sound)
    p_s, p_n, p_sn = torch.linalg.vecdot(s, s), torch.linalg.vecdot(n, n), torch.linalg.vecdot(s, n)
    s_rms = _rms_of_frames(p_s, _frame_lengths(speech_mask))
    n_rms = _rms_of_frames(p_n, _frame_lengths(sound_mask))

    def gain_to(target: torch.Tensor, rms: torch.Tensor) -> torch.Tensor:
        # a silent source is never amplified (no division by ~0)
        return torch.where(rms >= _SILENT_RMS, target / rms.clamp(min=_SILENT_RMS), torch.ones_like(rms))

    source_level = torch.full_like(snr, 10 ** (cfg.source_level_db / 20))
    g_s, g_n = gain_to(source_level, s_rms), gain_to(source_level, n_rms)
    both = (s_rms >= _SILENT_RMS) & (n_rms >= _SILENT_RMS)  # the ratio needs two real sources
    g_n = torch.where(both, g_n * 10 ** (-snr / 20), g_n)
    gs, gn = g_s[:, None], g_n[:, None]
    p_mix = (gs * gs * p_s + gn * gn * p_n + 2 * gs * gn * p_sn).clamp(min=0)
    gain = gain_to(10 ** (level / 20), _rms_of_frames(p_mix, _frame_lengths(speech_mask | sound_mask)))
    speech_stem, sound_stem = speech * (g_s * gain)[:, None], sound * (g_n * gain)[:, None]
    peak = (speech_stem + sound_stem).abs().amax(-1)
    clip_scale = torch.where(peak > cfg.peak_limit, cfg.peak_limit / peak.clamp(min=1e-12), torch.ones_like(peak))
    speech_stem.mul_(clip_scale[:, None])
    sound_stem.mul_(clip_scale[:, None])
    # summed in float32 after the last scaling, so the stems add up to the mixture exactly
    return Mix(speech_stem + sound_stem, speech_stem, sound_stem, snr, level, clip_scale)


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
