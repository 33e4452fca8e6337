"""``Grounder``: a loaded model that grounds one image against one clip.

What ``ground`` computes, from the model's own quantities (``model.similarity``):

* per frame t and head k the map ``mean_f S[k, f, t, h, w]`` (Eq. 2's volume of that head, Eq. 4),
  and for ``total`` the element-wise max over heads (Eq. 3), as ``similarity.frame_heatmaps``;
* the mean map: the average of those maps over the valid frames, or the frames whose centre lies
  in ``window`` (as ``similarity.heatmaps``);
* a head's activation at frame t: ``mean_f max_(h,w) S[k, f, t, h, w]``, so its mean over the valid
  frames is exactly the head's score ``s_N`` (Eq. 6), and for ``total`` the score ``s_M`` (Eq. 5).

The image goes through the evaluation transform (shorter side to the model's input size, centre
square crop); maps cover that crop, placed back onto the input at the display resolution (the
input's, at most ``result.DISPLAY_SIDE`` px on its longer side), NaN outside it (docs/ground.md).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from evaluation.runner import ModelRunner
from ground import inputs
from ground.result import TOTAL, FrameMaps, Grounding, display_picture, place, scale_box
from model import similarity
from model.checkpoint import NonFiniteOutput
from model.config import ModelConfig
from model.factory import build_model
from model.loading import load_any
from pipeline.data.mixing import valid_mask
from pipeline.format import SAMPLE_RATE
from pipeline.image import centre_crop


def crop_box(size: tuple[int, int], model_size: int) -> tuple[int, int, int, int]:
    """The centre square the evaluation transform keeps (``pipeline.data.transform.eval_image``,
    geometry ``pipeline.image.centre_crop``), as (left, top, right, bottom) in input pixels."""
    return centre_crop(*size, model_size).input_box(*size)


class Grounder:
    """A model ready to ground: ``Grounder.from_pretrained(repo_or_dir).ground(image, audio)``."""

    def __init__(self, model: torch.nn.Module, description: dict, *, device: str = "cpu"):
        self.device = torch.device(device)
        self.runner = ModelRunner(model.to(self.device).eval(), self.device, batch_size=1)
        self.head_names = self._names()
        preprocessing = (
            "audio: 16 kHz mono at its real length (at most "
            f"{inputs.MAX_SECONDS:.0f} s); image: shorter side to {self.runner.image_size} px, "
            "centre square crop, ImageNet normalization; maps NaN outside the crop"
        )
        self.description = {
            "preprocessing": preprocessing,
            **description,
            "heads": {n: i for i, n in enumerate(self.head_names)},
            "image_size": self.runner.image_size,
        }

    def _names(self) -> list[str]:
        """Head names: the audio type each head answers, from the model's config (``head_types``;
        ``model.loading.load_any`` applies a ``speech_head``); ``head<k>`` where a head has none."""
        if self.runner.num_heads == 1:
            return ["audio"]
        return self.runner.head_types

    @classmethod
    def from_pretrained(
        cls,
        repo_or_dir: str | os.PathLike,
        *,
        revision: str | None = None,
        device: str = "cpu",
        speech_head: int | None = None,
        num_heads: int | None = None,
    ) -> "Grounder":
        """A trained model: a Hub repo id (``owner/name[@revision]``, this project's checkpoints or
        DenseAV's copies) or a local checkpoint (train.py's ``final``, a DenseAV or baseline file), as
        ``model.loading.load_any`` reads them (``num_heads`` for a DenseAV file that does not record them)."""
        loaded = load_any(repo_or_dir, device=device, speech_head=speech_head, num_heads=num_heads, revision=revision)
        return cls(loaded.model, loaded.description, device=device)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        speech_head: int | None = None,
        num_heads: int | None = None,
    ) -> "Grounder":
        """``from_pretrained`` under the name the ``--checkpoint`` option speaks of."""
        return cls.from_pretrained(path, device=device, speech_head=speech_head, num_heads=num_heads)

    @classmethod
    def from_backbones(
        cls, image_backbone: str, audio_backbone: str, *, preset: str = "paper", device: str = "cpu"
    ) -> "Grounder":
        """A fresh model of ``preset`` whose backbones come from transformers' ``from_pretrained``
        (a hub id, a local directory or the local cache); the aligners are random, so its maps
        carry no grounding until trained (for trained weights: ``from_pretrained``)."""
        config = ModelConfig.preset(
            preset, pretrained=True, image_model_id=str(image_backbone), audio_model_id=str(audio_backbone)
        )
        model = build_model(config)
        desc = {
            "pretrained": {"image": str(image_backbone), "audio": str(audio_backbone)},
            "preset": preset,
            "weights": "backbones from from_pretrained; aligners random (untrained): maps carry no "
            "grounding until trained",
            "config": config.to_dict(),
        }
        return cls(model, desc, device=device)

    # ------------------------------------------------------------------ grounding

    @torch.no_grad()
    def encode_audio(
        self, audio, sample_rate: int | None = None
    ) -> tuple[np.ndarray, dict, torch.Tensor, torch.Tensor]:
        """(16 kHz clip, preprocessing notes, features ``[1, C, K, F, T]``, frame mask ``[1, T]``), the
        frames ending with the clip's last valid one."""
        clip, notes = inputs.load_audio(audio, sample_rate)
        wave = torch.from_numpy(clip).unsqueeze(0).to(self.device)
        mask = valid_mask(torch.tensor([clip.shape[0]], device=self.device), clip.shape[0])
        a, frame_mask = self.runner.model.encode_audio(wave, mask)
        return (clip, notes, *self._trim(a, frame_mask))

    @torch.no_grad()
    def encode_image(self, image) -> tuple[Image.Image, torch.Tensor]:
        pil = inputs.load_image(image)
        return pil, self.runner.encode_images([pil])

    def ground(
        self, image, audio, sample_rate: int | None = None, *, window: tuple[float, float] | None = None
    ) -> Grounding:
        """Maps, mean maps and activations of every head and the total for ``image`` x ``audio``."""
        pil, v = self.encode_image(image)
        clip, notes, a, frame_mask = self.encode_audio(audio, sample_rate)
        return self.assemble(pil, [v], clip, notes, a, frame_mask, window)

    @torch.no_grad()
    def assemble(
        self,
        image: Image.Image,
        features: list[torch.Tensor],
        clip: np.ndarray,
        notes: dict,
        a: torch.Tensor,
        frame_mask: torch.Tensor,
        window: tuple[float, float] | None = None,
        frames: list[Image.Image] | None = None,
    ) -> Grounding:
        """The ``Grounding`` of encoded inputs. ``features`` holds one image's features, or one per
        audio frame (a video's frames at the frames' times; ``frames`` are those pictures)."""
        num_frames = frame_mask.shape[1]
        times = (np.arange(num_frames) + 0.5) * (clip.shape[0] / num_frames) / SAMPLE_RATE
        v = features[0] if len(features) == 1 else torch.cat(features)
        low, activation = self._per_frame(a, frame_mask, v)
        _check_maps(low)
        weights = self._window(times, window)
        box = crop_box(image.size, self.runner.image_size)
        # Maps and picture at the display resolution (at most DISPLAY_SIDE px): the model saw a
        # 224 px square, so a map at the input's 64 MP would hold nothing more, at 256 MB a frame.
        shown = display_picture(image)
        shown_box = scale_box(box, image.size, shown.size)
        keep = frame_mask[0].cpu().numpy() & (True if weights is None else weights)
        mean_maps = {
            name: place(maps[keep].mean(0, keepdims=True), shown_box, shown.size)[0] for name, maps in low.items()
        }
        description = {
            **self.description,
            "audio": notes,
            "crop_box": list(box),
            "frames": num_frames,
            "window_s": None if window is None else [float(window[0]), float(window[1])],
            "image": "one picture" if frames is None else f"{len(frames)} video frames",
        }
        return Grounding(
            heads=[*self.head_names, TOTAL],
            maps=FrameMaps(low, shown_box, shown.size),
            mean_maps=mean_maps,
            activation=activation,
            times=times,
            image=shown,
            audio=clip,
            description=description,
            frames=frames,
            input_size=image.size,
        )

    @staticmethod
    def _trim(a: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames up to the clip's last valid one: a model that pads the clip (DenseAV's 164,200
        samples) reports padded frames, which lie past the audio's end."""
        valid = frame_mask[0].nonzero()
        if valid.numel() == 0:
            raise inputs.GroundInputError("the audio gives the model no valid frame; give a longer clip")
        keep = int(valid[-1]) + 1
        return a[..., :keep], frame_mask[:, :keep]

    def _heads(self):
        yield from ((name, i) for i, name in enumerate(self.head_names))
        yield TOTAL, "max"

    def _window(self, times: np.ndarray, window: tuple[float, float] | None) -> np.ndarray | None:
        if window is None:
            return None
        start, end = float(window[0]), float(window[1])
        if not end > start:
            raise inputs.GroundInputError(f"window {start}:{end} is empty; give START:END with END > START")
        keep = (times >= start) & (times <= end)
        if not keep.any():
            raise inputs.GroundInputError(
                f"window {start}:{end} s holds no audio frame (frames are centred at {times[0]:.2f}..{times[-1]:.2f} s)"
            )
        return keep

    def _per_frame(self, a: torch.Tensor, frame_mask: torch.Tensor, v: torch.Tensor):
        """Per-frame maps ``[T, h, w]`` and activations ``[T]`` of every head and the total.

        ``v`` is one image's features, or one per frame (then frame t pairs with image t)."""
        if v.shape[0] == 1:
            volume = similarity.pair_volume(a, v)[0]  # [K, F, T, h, w]
        else:
            # Eq. 2 with picture t at frame t only (pair_volume would pair every frame with every picture)
            volume = torch.einsum("ckft,tckhw->kfthw", a[0], v)
        invalid = ~frame_mask[0].cpu().numpy()
        low, activation = {}, {}
        for name, head in self._heads():
            vol = similarity.max_over_heads(volume, 0).values if head == "max" else volume[head]  # [F, T, h, w]
            maps = vol.mean(0).float().cpu().numpy()
            act = vol.flatten(-2).max(-1).values.mean(0).float().cpu().numpy()
            maps[invalid], act[invalid] = np.nan, np.nan
            low[name], activation[name] = maps, act
        return low, activation


def _check_maps(low: dict[str, np.ndarray]) -> None:
    """``NonFiniteOutput`` for a head whose maps hold an infinity or no finite value at all: finite
    features can still overflow in the dot product (NaN alone marks frames outside the valid audio,
    so it is no fault), and such maps must reach no caller, the CLI's files and the page alike."""
    for name, maps in low.items():
        if np.isinf(maps).any() or not np.isfinite(maps).any():
            raise NonFiniteOutput(f"{name!r} maps")
