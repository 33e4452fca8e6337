"""DenseAV's audio protocol for the spectrogram baselines (ImageBind, CAV-MAE): 16 kHz clips of
``CLIP_SAMPLES`` samples, Kaldi log-mel filter banks, per-model normalization.

DenseAV's evaluation (``denseav/shared.py: prep_waveform``) zero-pads a clip at the end, or cuts it
after its first ``CLIP_SAMPLES`` samples, subtracts the padded clip's mean, computes
``torchaudio.compliance.kaldi.fbank(htk_compat=True, window_type='hanning', num_mel_bins=128,
frame_shift=10, dither=0, use_energy=False)`` with the default 25 ms frames, which gives
``FRAMES`` x ``MEL_BINS`` = 1024 x 128, and normalizes with ``(fbank - mean) / std`` (the std is not
doubled, unlike AST's recipe). ``NORMS`` holds the two models' constants.

DenseAV reads channel 0 of a file; this project's readers average the channels into one
(``pipeline.audio``), so a stereo file gives the two a slightly different clip. Clips longer than
``CLIP_SAMPLES`` (``ground`` accepts up to 30 s) are cut into consecutive windows of that length
(the last one zero-padded), each prepared as DenseAV prepares its single window, instead of being
cut; a clip of at most ``CLIP_SAMPLES`` samples is exactly one window.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

SAMPLE_RATE = 16_000
CLIP_SAMPLES = 164_200  # DenseAV's 10 s target: "Result is 1024 after spec"
MEL_BINS = 128
FRAMES = 1024  # (164,200 - 400) // 160 + 1 frames of 25 ms every 10 ms
FRAME_SHIFT_MS = 10.0
# (mean, std) of the normalized fbank: CAV-MAE's AudioSet statistics (egs/audioset/run_cavmae_pretrain_scale++.sh)
# and ImageBind's (imagebind/data.py); DenseAV's AVDatasets uses the same pairs.
NORMS = {"cavmae": (-5.081, 4.4849), "imagebind": (-4.268, 9.138)}


def windows(wave: torch.Tensor, mask: torch.Tensor, samples: int = CLIP_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L]`` clips and their bool validity -> ``[B, n, samples]`` windows and masks: invalid
    samples zeroed, the end zero-padded to ``n = ceil(L / samples)`` whole windows (n >= 1)."""
    if wave.dim() != 2 or mask.shape != wave.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"need wave [B, L] and a bool mask of its shape, got {tuple(wave.shape)}, {mask.dtype} {tuple(mask.shape)}"
        )
    empty = (~mask.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"clips {empty} have no valid samples")
    n = max(1, math.ceil(wave.shape[1] / samples))
    pad = n * samples - wave.shape[1]
    wave = F.pad(wave * mask.to(wave.dtype), (0, pad))
    mask = F.pad(mask, (0, pad))
    return wave.reshape(wave.shape[0], n, samples), mask.reshape(mask.shape[0], n, samples)


def fbank(wave: torch.Tensor) -> torch.Tensor:
    """Kaldi log-mel filter banks of ``[N, samples]`` windows -> ``[N, frames, MEL_BINS]``, each
    window's own mean removed first (DenseAV's ``waveform - waveform.mean()`` over the padded clip)."""
    from torchaudio.compliance import kaldi

    out = []
    for clip in wave.to(torch.float32):
        # kaldi.fbank reads one channel of a [channels, samples] tensor, so one call per window
        out.append(
            kaldi.fbank(
                (clip - clip.mean()).unsqueeze(0),
                htk_compat=True,
                sample_frequency=SAMPLE_RATE,
                use_energy=False,
                window_type="hanning",
                num_mel_bins=MEL_BINS,
                dither=0.0,
                frame_shift=FRAME_SHIFT_MS,
            )
        )
    return torch.stack(out)


def normalized_fbank(wave: torch.Tensor, family: str) -> torch.Tensor:
    """``fbank`` normalized with the model family's ``NORMS``: ``(fbank - mean) / std``."""
    mean, std = NORMS[family]
    return (fbank(wave) - mean) / std
