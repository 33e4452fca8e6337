"""An oracle model for end-to-end checks of the evaluator.

It reads the answers off the generated test sets (tests/support/testsets.py): object colours in the image,
tone frequencies in the audio. With it every experiment should score perfectly where the protocol
routes heads, masks, frames and pairs correctly, and visibly worse where it would not.

Channels of the shared space (per head):
    0 red object, 1 blue object (IS3), 2 green object (ADE20K), 8 + i retrieval pair i.
The sound head listens to the IS3 sound tones and to the sound retrieval band, the speech head to
the IS3 "speech" tones and to the speech retrieval band; both heads answer ADE20K prompts.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from pipeline.data.transform import denormalize
from tests.support.testsets import ADE_BASE_HZ, IS3_SOUND_HZ, IS3_SPEECH_HZ, RETRIEVAL_BASE_HZ

C, FRAMES, PATCH = 40, 10, 8
N_RETRIEVAL = C - 8


class OracleModel(torch.nn.Module):
    def __init__(self, image_size: int = 64):
        super().__init__()
        self.config = SimpleNamespace(
            image_size=image_size, num_heads=2, sound_head=0, speech_head=1, to_dict=lambda: {"name": "oracle"}
        )

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        rgb = denormalize(images)  # [B, 3, S, S] in [0, 1]
        r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        cells = torch.nn.functional.avg_pool2d
        dominant = [((x > 0.6) & (y < 0.4) & (z < 0.4)).float() for x, y, z in ((r, g, b), (b, r, g), (g, r, b))]
        bsz, _, s, _ = rgb.shape
        h = s // PATCH
        v = torch.zeros(bsz, C, 2, h, h)
        for ch, m in enumerate(dominant):
            v[:, ch] = cells(m.unsqueeze(1), PATCH).expand(bsz, 2, h, h)
        # retrieval images are plain: the red level 10 i names pair i
        flat = r.flatten(1)
        plain = flat.std(1) < 0.02
        index = torch.round(flat.mean(1) * 255 / 10).long().clamp(0, N_RETRIEVAL - 1)
        for i in range(bsz):
            if plain[i]:
                v[i, 8 + index[i]] = 1.0
        return v

    def encode_audio(self, wave: torch.Tensor, mask: torch.Tensor):
        bsz, length = wave.shape
        a = torch.zeros(bsz, C, 2, 1, FRAMES)
        for i in range(bsz):
            x = wave[i][mask[i]].double().numpy()
            spec = np.abs(np.fft.rfft(x))
            freqs = np.fft.rfftfreq(x.shape[0], 1 / 16000)
            total = spec.sum() + 1e-12

            def energy(f, spec=spec, freqs=freqs, total=total):
                return spec[np.abs(freqs - f) < 3].sum() / total

            for head, tones, base in (
                (0, IS3_SOUND_HZ, RETRIEVAL_BASE_HZ["sound"]),
                (1, IS3_SPEECH_HZ, RETRIEVAL_BASE_HZ["speech"]),
            ):
                e = [energy(f) for f in tones]
                if max(e) > 0.05:
                    a[i, int(np.argmax(e)), head] = 1.0
                if max(energy(ADE_BASE_HZ + 50 * j) for j in range(3)) > 0.05:
                    a[i, 2, head] = 1.0
                band = [energy(base + 20 * j) for j in range(N_RETRIEVAL)]
                if max(band) > 0.05:
                    a[i, 8 + int(np.argmax(band)), head] = 1.0
        valid = mask.float().reshape(bsz, FRAMES, length // FRAMES).mean(-1) >= 0.5
        return a, valid
