"""What the generated world holds: its object classes, its sizes, and the plan of every item.

Each class is one shape with its own colour and texture family, one timbre family, one
spoken name and (in a world with music) one melody on one instrument, chosen so that a small
model can tell the classes apart on a CPU in minutes while the formats, readers, loader, trainer
and evaluator are the real ones.

Every generated item carries its own integer ``seed``; the renderers draw everything from
``rng(seed)``, so an item renders the same wherever and in whatever order it is rendered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

GENERATOR_VERSION = 1
SOURCE = "synthetic"  # the shard metadata's `source` field


@dataclass(frozen=True)
class ObjectClass:
    """One class of the world. ``name`` is a single English word (it is spoken, and it is a token
    of IS3 file stems, which split at underscores)."""

    name: str
    shape: str  # key of images.SHAPES
    hue: float  # degrees, the centre of the colour family
    texture: str  # key of images.TEXTURES
    timbre: str  # key of sounds.TIMBRES
    pitch_hz: float  # the timbre's base frequency (or rate, for rhythmic timbres)

    @property
    def ade_class_id(self) -> int:
        """Class id in the generated ADE20K-layout annotations (0 is background)."""
        return CLASS_NAMES.index(self.name) + 1


# Hues at least 30 degrees apart, each shape unlike the others, each timbre its own family.
CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("star", "star", 52.0, "radial", "twinkle", 1320.0),
    ObjectClass("heart", "heart", 0.0, "solid", "heartbeat", 1.4),
    ObjectClass("moon", "crescent", 200.0, "radial", "hum", 330.0),
    ObjectClass("cross", "cross", 120.0, "checker", "buzz", 150.0),
    ObjectClass("ring", "ring", 28.0, "solid", "bell", 620.0),
    ObjectClass("square", "square", 235.0, "dots", "clicks", 22.0),
    ObjectClass("triangle", "triangle", 300.0, "stripes", "chirp", 320.0),
    ObjectClass("arrow", "arrow", 165.0, "stripes", "siren", 700.0),
    ObjectClass("diamond", "diamond", 270.0, "checker", "hiss", 4000.0),
    ObjectClass("flower", "flower", 330.0, "dots", "bubbles", 500.0),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
CLASS_BY_NAME: dict[str, ObjectClass] = {c.name: c for c in CLASSES}


def object_class(name: str) -> ObjectClass:
    try:
        return CLASS_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown class {name!r}; the world's classes are {', '.join(CLASS_NAMES)}") from None


@dataclass
class WorldConfig:
    """How much to generate and how it looks. Presets: ``SIZES``."""

    train: int = 2000  # training samples per audio type (speech shards, sound shards)
    val: int = 200  # held-out retrieval pairs per audio type
    is3_images: int = 150  # Extended-IS3 images (two annotations each)
    ade_images: int = 100  # images per ADE20K-layout set (two prompted objects each)
    shard_size: int = 500
    image_size: int = 224
    object_min: float = 0.28  # object size (its bounding circle's diameter) / image side
    object_max: float = 0.45
    distractors: tuple[int, int] = (2, 6)  # clutter shapes per image, inclusive range
    sound_seconds: tuple[float, float] = (1.5, 3.0)  # sound content after the onset
    onset_seconds: tuple[float, float] = (0.0, 0.3)  # silence before a sound or an utterance
    rate_wpm: tuple[int, int] = (130, 200)  # speaking rates
    templates: int = 5  # training sentences draw from the first N templates (1: "a picture of a(n) X" only)
    voices: int = 8  # training and evaluation speech draw from the first N voices
    classes: tuple[str, ...] = CLASS_NAMES
    # a third audio type, music (pipeline.prep.synthetic.music): shard sets music/train and music/val
    # of `train` and `val` items, beside speech and sound; off by default (`prep synthetic --music`)
    music: bool = False

    def __post_init__(self) -> None:
        for name in ("train", "val", "is3_images", "ade_images", "shard_size", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (1 if name in ("shard_size", "image_size") else 0):
                raise ValueError(f"WorldConfig.{name} must be a non-negative integer, got {value!r}")
        if self.image_size < 64:
            raise ValueError(f"WorldConfig.image_size {self.image_size} is too small to draw objects (>= 64)")
        if not 0.05 <= self.object_min <= self.object_max <= 0.48:
            raise ValueError(
                f"object sizes must satisfy 0.05 <= object_min <= object_max <= 0.48 (two objects must fit "
                f"side by side), got {self.object_min}, {self.object_max}"
            )
        for name in self.classes:
            object_class(name)
        if self.templates < 1 or self.voices < 1:
            raise ValueError(f"WorldConfig needs templates >= 1 and voices >= 1, got {self.templates}, {self.voices}")
        if len(set(self.classes)) < 2:
            raise ValueError("the world needs at least two classes (evaluation images hold two)")
        lo, hi = self.sound_seconds
        if not 0.5 <= lo <= hi <= 8.0:
            raise ValueError(f"sound_seconds {self.sound_seconds} must lie within [0.5, 8] s")
        self.distractors = tuple(self.distractors)
        self.sound_seconds = tuple(self.sound_seconds)
        self.onset_seconds = tuple(self.onset_seconds)
        self.rate_wpm = tuple(self.rate_wpm)
        self.classes = tuple(self.classes)
        if not isinstance(self.music, bool):
            raise ValueError(f"WorldConfig.music must be true or false, got {self.music!r}")

    @property
    def audio_types(self) -> tuple[str, ...]:
        """The audio types of the world's shard sets, in the order they are generated."""
        return ("speech", "sound", "music") if self.music else ("speech", "sound")

    def to_dict(self) -> dict:
        out = {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}
        # A world without music records its config as before music existed, so its world.json and
        # its shards' dataset.json stay byte-identical (and a root generated then still resumes).
        if not self.music:
            del out["music"]
        return out


SIZES: dict[str, WorldConfig] = {
    # the README's demo: trains on a CPU in minutes, a few hundred evaluation items
    # (one sentence template, DenseAV's "a picture of a(n) X": the demo trains a speech head from
    # scratch in minutes; more templates need a longer run)
    "demo": WorldConfig(templates=1),
    # the test suite's end-to-end run
    "ci": WorldConfig(train=96, val=32, is3_images=12, ade_images=8, shard_size=48),
    # more data for longer runs
    "large": WorldConfig(train=20000, val=1000, is3_images=1000, ade_images=500, shard_size=1000),
}


def world_config(size: str, **overrides) -> WorldConfig:
    if size not in SIZES:
        raise ValueError(f"unknown world size {size!r}; choose one of {', '.join(SIZES)}")
    return WorldConfig(**{**asdict(SIZES[size]), **overrides})


# ---------------------------------------------------------------------------------------------
# seeds and plans

# One stream per set, so adding items to one set never changes another.
STREAMS = {
    "speech/train": 1,
    "sound/train": 2,
    "speech/val": 3,
    "sound/val": 4,
    "is3": 5,
    "ade20k/speech": 6,
    "ade20k/sound": 7,
    "music/train": 8,
    "music/val": 9,
}


def item_seed(world_seed: int, stream: str, index: int | None = None) -> int:
    """A 63-bit seed for one item (``index``) or for the set's class order (``None``), independent
    of every other seed of the world."""
    if int(world_seed) < 0:
        raise ValueError(f"the world seed must be a non-negative integer, got {world_seed}")
    entropy = [int(world_seed), STREAMS[stream]] + ([] if index is None else [1, int(index)])
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def balanced_classes(classes: tuple[str, ...], n: int, generator: np.random.Generator) -> list[str]:
    """``n`` class names in random order, every class as often as possible: rounds of one
    shuffled copy of every class, so counts differ by at most one."""
    rounds = -(-n // len(classes))
    idx = np.concatenate([generator.permutation(len(classes)) for _ in range(rounds)])[:n]
    return [classes[i] for i in idx]


def balanced_pairs(classes: tuple[str, ...], n: int, generator: np.random.Generator) -> list[tuple[str, str]]:
    """``n`` ordered pairs of different classes, cycling through all pairs so each class appears
    about equally often on each side."""
    pairs = [(a, b) for a in classes for b in classes if a != b]
    reps = -(-n // len(pairs))
    idx = np.concatenate([generator.permutation(len(pairs)) for _ in range(reps)])[:n]
    return [pairs[i] for i in idx]


@dataclass
class SetPlan:
    """The items of one generated set: JSON-serializable dicts, each with its own ``seed``."""

    name: str  # key of STREAMS
    items: list[dict] = field(default_factory=list)


def plan_pairs(cfg: WorldConfig, world_seed: int, stream: str) -> SetPlan:
    """Single-object items for a shard set (``speech/train``, ``sound/val``, ...)."""
    audio_type, split = stream.split("/")
    n = cfg.train if split == "train" else cfg.val
    order = balanced_classes(cfg.classes, n, rng(item_seed(world_seed, stream)))
    items = [
        {"set": stream, "index": i, "seed": item_seed(world_seed, stream, i), "class": c, "audio_type": audio_type}
        for i, c in enumerate(order)
    ]
    return SetPlan(stream, items)


def plan_scenes(cfg: WorldConfig, world_seed: int, stream: str) -> SetPlan:
    """Two-object evaluation images (``is3``, ``ade20k/speech``, ``ade20k/sound``)."""
    n = cfg.is3_images if stream == "is3" else cfg.ade_images
    pairs = balanced_pairs(cfg.classes, n, rng(item_seed(world_seed, stream)))
    items = [
        {"set": stream, "index": i, "seed": item_seed(world_seed, stream, i), "classes": list(p)}
        for i, p in enumerate(pairs)
    ]
    return SetPlan(stream, items)
