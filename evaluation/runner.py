"""The model side of an evaluation: loading, batching, encoding, heatmaps and score matrices.

Everything runs under ``torch.no_grad`` in eval mode. Images go through the evaluation transform
(shorter side to the model's input size from its config, centre crop, ImageNet normalization);
audio arrives as standardized clips (``pipeline.testsets.common.Clip``). Score matrices are computed by
``model.similarity.head_scores`` (Eq. 6) one block of audio clips at a time, so a 1,000 x 1,000 retrieval
never holds a B x B x H x W x T volume.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from model import similarity
from model.checkpoint import check_finite
from model.config import head_types_of
from pipeline import format as fmt
from pipeline.data.mixing import OffscreenMixer, valid_mask
from pipeline.data.transform import eval_image, to_tensor
from pipeline.testsets.common import Clip

WORD_PAD_S = 0.2  # DenseAV's "advanced" window: the object word widened by 0.2 s on each side


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    description: dict  # what was evaluated: checkpoint path or preset, config


def load_model(
    checkpoint: str | Path | None, preset: str | None, device: torch.device, seed: int = 0, num_heads: int | None = None
) -> LoadedModel:
    """A trained model through ``model.loading.load_any`` (this project's checkpoint, a DenseAV or
    baseline file, or a Hub repo id; ``num_heads`` for a DenseAV file that does not record them), or
    a preset with random weights (``preset``, no download when the preset is not pretrained; meant for
    tests and smoke runs)."""
    if (checkpoint is None) == (preset is None):
        raise ValueError("give exactly one of --checkpoint (a trained model) or --preset (random weights)")
    if checkpoint is not None:
        from model.loading import load_any

        model, desc = load_any(checkpoint, device=device, num_heads=num_heads)
        return LoadedModel(model, {"checkpoint": str(checkpoint), **desc})
    from model.config import ModelConfig
    from model.factory import build_model

    torch.manual_seed(seed)
    # pretrained=False: a preset here means its architecture with random weights, never a download
    model = build_model(ModelConfig.preset(preset, pretrained=False)).to(device).eval()
    desc = {"preset": preset, "weights": "random (seed %d)" % seed, "config": model.config.to_dict()}
    return LoadedModel(model, desc)


class ModelRunner:
    """Batches PIL images and clips through a model and turns features into maps and scores."""

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int = 16):
        self.model = model.eval()
        self.device = device
        self.batch_size = int(batch_size)
        cfg = model.config
        self.image_size = int(cfg.image_size)
        self.num_heads = int(cfg.num_heads)
        # None where no head answers the type (a typed-streams model without sound or speech)
        self.sound_head = None if cfg.sound_head is None else int(cfg.sound_head)
        self.speech_head = None if cfg.speech_head is None else int(cfg.speech_head)
        self._head_types = head_types_of(cfg)

    @property
    def head_types(self) -> list[str]:
        """The audio type each head answers (``ModelConfig.head_types``), with the sound and speech
        heads where ``sound_head`` / ``speech_head`` now say (``--heads pred-dis`` renames them)."""
        names = list(self._head_types)
        if self.num_heads == 2 and self.sound_head is not None and self.speech_head is not None:
            names[self.sound_head], names[self.speech_head] = "sound", "speech"
        return names

    def require_heads(self, *types: str, needed_by: str = "this table") -> None:
        """A ``ValueError`` (one line) where no head of the model answers one of ``types`` (a
        typed-heads model without a sound or a speech head); a one-head model's only head answers
        every type."""
        missing = [t for t in types if self.num_heads > 1 and t not in self.head_types]
        if missing:
            raise ValueError(
                f"{needed_by} needs a {' and a '.join(missing)} head; the model's heads answer {self.head_types}"
            )

    # ------------------------------------------------------------------ encoding

    def image_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([to_tensor(eval_image(im, self.image_size)) for im in images])

    # Features, maps and scores are checked finite (model.checkpoint.check_finite): finite weights can
    # still overflow, and NaN would pass through every metric into results.json silently.
    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return check_finite(self.model.encode_image(self.image_tensor(images).to(self.device)), "image features")

    @torch.no_grad()
    def encode_audio(self, clips: Sequence[Clip]) -> tuple[torch.Tensor, torch.Tensor]:
        wave = torch.from_numpy(np.stack([c.audio for c in clips])).to(self.device)
        mask = valid_mask(torch.tensor([c.valid for c in clips], device=self.device), wave.shape[1])
        a, frame_mask = self.model.encode_audio(wave, mask)
        return check_finite(a, "audio features"), frame_mask

    # ------------------------------------------------------------------ matched pairs

    @torch.no_grad()
    def pair_heatmaps(
        self, a: torch.Tensor, frame_mask: torch.Tensor, v: torch.Tensor, head, window: torch.Tensor | None = None
    ) -> tuple[np.ndarray, int]:
        """Matched-pair heatmaps ``[B, h, w]`` (``head``: ``"max"`` = total, or a head index)
        averaged over the valid frames, or over ``window`` ∧ valid frames where that is not empty.

        Returns the maps and how many items fell back to all valid frames (window outside the
        audio's valid part, e.g. a word timing past the end of a trimmed clip).
        """
        fallback = 0
        if window is not None:
            window = window.to(frame_mask.device) & frame_mask
            empty = ~window.any(1)
            fallback = int(empty.sum())
            window = torch.where(empty.unsqueeze(1), frame_mask, window)
        maps = check_finite(similarity.heatmaps(a, frame_mask, v, head=head, frame_weights=window), "heatmaps")
        return maps.float().cpu().numpy(), fallback

    def word_window(self, spans: Sequence[tuple[float, float]], num_frames: int) -> torch.Tensor:
        start = torch.tensor([s for s, _ in spans], dtype=torch.float64)
        end = torch.tensor([e for _, e in spans], dtype=torch.float64)
        return similarity.word_window(start, end, fmt.CLIP_SECONDS, num_frames, WORD_PAD_S)

    # ------------------------------------------------------------------ score matrices

    @torch.no_grad()
    def score_matrices(
        self, a: torch.Tensor, frame_mask: torch.Tensor, v: torch.Tensor, progress=None, audio_block: int = 64
    ) -> np.ndarray:
        """Per-head score matrices ``[K, Na, Nv]`` (``s_N`` for each head N), computed one block of
        audio clips at a time against all images. A model with a retrieval score of its own
        (``retrieval_scores``: the one-head baselines of ``model.baselines``) gives its matrix instead."""
        n_audio = a.shape[0]
        out = np.zeros((self.num_heads, n_audio, v.shape[0]), dtype=np.float32)
        v_dev = v.to(self.device)
        own = getattr(self.model, "retrieval_scores", None)
        for i0 in range(0, n_audio, audio_block):
            a_blk = a[i0 : i0 + audio_block].to(self.device)
            m_blk = frame_mask[i0 : i0 + audio_block].to(self.device)
            for k in range(self.num_heads):
                scores = own(a_blk, m_blk, v_dev) if own is not None else similarity.head_scores(a_blk, m_blk, v_dev, k)
                out[k, i0 : i0 + a_blk.shape[0]] = check_finite(scores, "retrieval scores").float().cpu().numpy()
            if progress is not None:
                progress(a_blk.shape[0])
        return out


class ClipSource:
    """Clips by index as the ``(audio, valid)`` sequence ``OffscreenMixer`` draws distractors from;
    each is loaded on first use and the most recent ones are kept (a query asks twice: once for
    the mix, once for the distractor's valid length)."""

    def __init__(self, load: Callable[[int], Clip], n: int, cache: int = 256):
        self._load = functools.lru_cache(maxsize=cache)(load)
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if not 0 <= i < self._n:
            raise IndexError(i)
        clip = self._load(i)
        return clip.audio, clip.valid


def with_offscreen(mixer: OffscreenMixer, index: int, clip: Clip) -> Clip:
    """Query ``index``'s clip with its off-screen distractor mixed in; the mixture is valid where
    either source is."""
    _, other_valid = mixer.distractors[mixer.choice(index)]
    mix = mixer(index, clip.audio, clip.valid)
    return Clip(mix.mixture, max(clip.valid, min(int(other_valid), clip.audio.shape[0])))


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of [N, h, w] maps to [N, size, size] (the metric's resolution)."""
    if maps.shape[0] == 0:
        return np.zeros((0, size, size), np.float32)
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).unsqueeze(1)
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).squeeze(1).numpy()


def batches(n: int, size: int):
    for i in range(0, n, size):
        yield range(i, min(n, i + size))


def loaded_batches(n: int, size: int, load_item: Callable[[int], object], workers: int = 4):
    """Yields ``(indices, [load_item(i) for i in indices])`` batch by batch.

    Items are decoded by ``workers`` threads (audio decoding and resampling release the GIL) and
    the next batch loads while the caller runs the model on the current one.
    """
    chunks = list(batches(n, size))
    if not chunks:
        return
    if workers <= 1:
        for idx in chunks:
            yield idx, [load_item(i) for i in idx]
        return
    with ThreadPoolExecutor(workers) as pool, ThreadPoolExecutor(1) as ahead:
        pending = ahead.submit(lambda idx: list(pool.map(load_item, idx)), chunks[0])
        for k, idx in enumerate(chunks):
            items = pending.result()
            if k + 1 < len(chunks):
                pending = ahead.submit(lambda idx: list(pool.map(load_item, idx)), chunks[k + 1])
            yield idx, items
