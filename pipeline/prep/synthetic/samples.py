"""One planned item -> its media. Pure functions of the item (and the world config), picklable, so
the shard builder's workers and the tree writers' workers can call them in any order.

Each item's ``seed`` is split into independent streams (image, then one per audio clip), so
drawing more or fewer random numbers for one part never changes another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.prep.media import Media, registered_key, registered_loader
from pipeline.prep.synthetic import images, music, sounds, speech
from pipeline.prep.synthetic.world import SOURCE, WorldConfig, object_class

IMAGE_STREAM, AUDIO_STREAM = 0, 1


def stream(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *parts])


@registered_key("synthetic")
def sample_key(item: dict) -> str:
    """Shard key of a single-object item: ``syn-<audio type>-<split>-<index>``."""
    audio_type, split = item["set"].split("/")
    return f"syn-{audio_type}-{split}-{item['index']:06d}"


def _config(cfg: dict | WorldConfig) -> WorldConfig:
    return cfg if isinstance(cfg, WorldConfig) else WorldConfig(**cfg)


@registered_loader("synthetic")
def load_pair(cfg: dict | WorldConfig, item: dict) -> Media:
    """A single-object image with its class's sound, spoken name or melody, for the shard builder.

    ``cfg`` is a ``WorldConfig`` or its ``to_dict()`` (JSON, so the builder can record the
    loader in dataset.json and ``prep retry`` can rebuild it).
    """
    cfg = _config(cfg)
    cls = object_class(item["class"])
    scene = images.render_scene([cls], cfg, stream(item["seed"], IMAGE_STREAM))
    obj = scene.objects[0]
    meta = {
        "source": SOURCE,
        "source_id": f"{item['set']}/{item['index']:06d}",
        "audio_type": item["audio_type"],
        "class": cls.name,
        "image_source": f"generated: {cls.shape}, {cls.texture}",
        "object_box": _box(scene.masks[0]),
        "object_share": round(float(scene.masks[0].mean()), 6),
        "object_center": [round(obj.cx, 2), round(obj.cy, 2)],
    }
    r_audio = stream(item["seed"], AUDIO_STREAM)
    if item["audio_type"] == "sound":
        audio = sounds.render_sound(cls, cfg, r_audio)
        meta["labels"] = [{"mid": f"/synthetic/{cls.name}", "name": cls.name}]
        meta["timbre"] = cls.timbre
        return Media(audio, sounds.SR, scene.image, meta)
    if item["audio_type"] == "music":
        played = music.render_music(cls, cfg, r_audio)
        # labelled like a sound clip (the class as its label); the instrument and the notes' times
        # play the part of a sound's timbre and of speech's words
        meta["labels"] = [{"mid": f"/synthetic/{cls.name}", "name": cls.name}]
        meta["instrument"] = played.instrument
        meta["notes"] = played.notes
        return Media(played.audio, music.SR, scene.image, meta)
    said = speech.render_speech(cls, cfg, r_audio)
    meta.update(
        caption=said.text,
        speaker=said.voice,
        words=said.words,
        object_span=list(said.object_span),
        rate_wpm=said.rate_wpm,
        timing=said.timing,
    )
    return Media(said.audio, said.sample_rate, scene.image, meta)


def _box(mask: np.ndarray) -> list[int]:
    """[x0, y0, x1, y1] (x1, y1 exclusive) of a mask, in pixels of the generated image."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@dataclass
class SceneMedia:
    """A two-object evaluation image with, per object, its sound and its spoken name."""

    scene: images.Scene
    classes: list[str]
    sounds: list[np.ndarray]  # 16 kHz
    prompts: list[speech.SpokenPrompt]


def render_eval_scene(
    cfg: dict | WorldConfig, item: dict, with_sound: bool = True, with_speech: bool = True
) -> SceneMedia:
    cfg = _config(cfg)
    classes = [object_class(c) for c in item["classes"]]
    scene = images.render_scene(classes, cfg, stream(item["seed"], IMAGE_STREAM))
    clips, prompts = [], []
    for k, cls in enumerate(classes):
        if with_sound:
            clips.append(sounds.render_sound(cls, cfg, stream(item["seed"], AUDIO_STREAM, k, 0)))
        if with_speech:
            prompts.append(
                speech.render_speech(cls, cfg, stream(item["seed"], AUDIO_STREAM, k, 1), template=speech.EVAL_TEMPLATE)
            )
    return SceneMedia(scene, [c.name for c in classes], clips, prompts)
