"""Speech + sound mixing at read time, and the audio augmentations that go with it.

The mixer follows the DNS-Challenge recipe: each source is RMS-normalized over its *active* part,
the speech-to-sound ratio is drawn uniformly in dB, the stems are summed, an output level is drawn,
and if the peak would exceed ``peak_limit`` the mixture *and both stems* are scaled by the same
factor, so ``speech_stem + sound_stem == mixture`` always holds (torchaudio's ``add_noise`` has no
such guard). Everything drawn is returned, so a batch records how it was made.

All functions take an explicit ``np.random.Generator``: the loader derives one per
(seed, epoch, rank, worker), which makes batches reproducible and workers independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.format import SAMPLE_RATE

_FRAME = 400  # 25 ms at 16 kHz: the unit over which activity is decided
_ACTIVE_BELOW_PEAK_DB = 40.0  # frames quieter than the loudest frame by more than this are pauses
_SILENT_RMS = 1e-5  # below this a clip is treated as silent: never amplified (no division by ~0)


@dataclass
class MixConfig:
    snr_db: tuple[float, float] = (-5.0, 5.0)  # speech-to-sound ratio, drawn uniformly in dB
    source_level_db: float = -25.0  # each source is first normalized to this RMS (dBFS)
    level_db: tuple[float, float] = (-35.0, -15.0)  # output level of the mixture, uniform in dBFS
    peak_limit: float = 0.99


@dataclass
class Mix:
    mixture: np.ndarray
    speech: np.ndarray  # the speech stem as it sits in the mixture
    sound: np.ndarray  # the sound stem as it sits in the mixture
    snr_db: float  # drawn speech-to-sound ratio (= realized, measured with active_rms)
    level_db: float  # drawn output level
    clip_scale: float  # extra factor applied to keep the peak under the limit (1.0 = none)


def active_rms(audio: np.ndarray, valid: int | None = None) -> float:
    """RMS over the active frames of the first ``valid`` samples.

    Padding and pauses would otherwise pull the RMS down and make short or sparse clips too loud
    after normalization. A frame is active when its energy is within 40 dB of the loudest frame.
    """
    x = np.asarray(audio[: len(audio) if valid is None else valid], dtype=np.float32)
    full = x.size // _FRAME
    frames = x[: full * _FRAME].reshape(full, _FRAME)
    energy = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / _FRAME
    lengths = np.full(full, float(_FRAME))
    if x.size > full * _FRAME:  # a short last frame counts with its real length
        tail = x[full * _FRAME :].astype(np.float64)
        energy = np.append(energy, (tail * tail).mean())
        lengths = np.append(lengths, float(tail.size))
    if energy.size == 0 or energy.max() <= 0:
        return 0.0
    active = energy >= energy.max() * 10 ** (-_ACTIVE_BELOW_PEAK_DB / 10)
    return float(np.sqrt((energy[active] * lengths[active]).sum() / lengths[active].sum()))


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
    """Mix one speech and one sound clip of equal length. ``snr_db``/``level_db`` override the draw.

    All gains are folded into one scalar per stem, so the work is a handful of vector operations
    (this runs once per training item in the loader workers).
    """
    if speech.shape != sound.shape:
        raise ValueError(f"speech {speech.shape} and sound {sound.shape} must have the same shape")
    speech = np.asarray(speech, dtype=np.float32)
    sound = np.asarray(sound, dtype=np.float32)
    speech_valid = len(speech) if speech_valid is None else speech_valid
    sound_valid = len(sound) if sound_valid is None else sound_valid
    snr = float(rng.uniform(*cfg.snr_db)) if snr_db is None else float(snr_db)
    level = float(rng.uniform(*cfg.level_db)) if level_db is None else float(level_db)

    source_level = 10 ** (cfg.source_level_db / 20)
    s_rms, n_rms = active_rms(speech, speech_valid), active_rms(sound, sound_valid)
    # a silent source is never amplified (no division by ~0); the ratio needs two real sources
    g_s = source_level / s_rms if s_rms >= _SILENT_RMS else 1.0
    g_n = source_level / n_rms if n_rms >= _SILENT_RMS else 1.0
    if s_rms >= _SILENT_RMS and n_rms >= _SILENT_RMS:
        g_n *= 10 ** (-snr / 20)
    mixture = speech * np.float32(g_s) + sound * np.float32(g_n)
    mix_rms = active_rms(mixture, max(speech_valid, sound_valid))
    gain = 10 ** (level / 20) / mix_rms if mix_rms >= _SILENT_RMS else 1.0
    peak = float(np.abs(mixture).max()) * gain
    clip_scale = cfg.peak_limit / peak if peak > cfg.peak_limit else 1.0
    speech_stem = speech * np.float32(g_s * gain * clip_scale)
    sound_stem = sound * np.float32(g_n * gain * clip_scale)
    return Mix(
        mixture=speech_stem + sound_stem,  # summed in float32 so the stems add up exactly
        speech=speech_stem,
        sound=sound_stem,
        snr_db=snr,
        level_db=level,
        clip_scale=float(clip_scale),
    )


# ---------------------------------------------------------------------------------------------
# DenseAV-style augmentations (off unless the trainer asks)


@dataclass
class SpliceConfig:
    """Negative-audio splicing: a 1-4 s piece of another clip is crossfaded into the clip.

    The loss then asks the similarity on the foreign frames to be ~0 (DenseAV's regularizer).
    """

    prob: float = 0.0
    seconds: tuple[float, float] = (1.0, 4.0)
    crossfade_s: float = 0.05


def splice_negative(
    audio: np.ndarray, valid: int, donor: np.ndarray, donor_valid: int, rng: np.random.Generator,
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

    prob: float = 0.0
    max_fraction: float = 0.3


def mask_span(
    audio: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: MaskConfig
) -> tuple[np.ndarray, np.ndarray]:
    valid = int(mask.sum())
    if cfg.prob <= 0 or valid == 0 or rng.random() >= cfg.prob:
        return audio, mask
    span = int(rng.uniform(0, cfg.max_fraction) * valid)
    if span == 0:
        return audio, mask
    start = int(rng.integers(0, valid - span + 1))
    audio, mask = audio.copy(), mask.copy()
    audio[start : start + span] = 0.0
    mask[start : start + span] = False
    return audio, mask


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

    def __init__(self, distractors, target_type: str, seed: int = 0, cfg: MixConfig | None = None,
                 snr_db: float | None = 0.0):
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
