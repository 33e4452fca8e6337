"""The training data stream's configuration: every loader option, settable from YAML as ``data.*``.

``image_size``, ``train`` and ``seed`` are the trainer's to set (the model decides the image size,
the run its seed); the YAML loader refuses them under ``data``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pipeline import format as fmt
from pipeline.data.mixing import MaskConfig, MixConfig, SpliceConfig
from pipeline.data.transform import AugmentConfig


@dataclass
class LoaderConfig:
    speech: str = ""  # speech shard directories, tar files or globs (PlacesAudio); comma-separated
    sound: str = ""  # sound shards (AudioSet), the same way
    batch_size: int = 8  # per process and micro-step
    num_workers: int = 4
    clip_seconds: float = 10.0  # first N seconds of each 10 s clip
    resampled: bool = True  # False: every speech sample exactly once per epoch
    epoch_samples: int | None = None  # resampled mode: speech items per epoch (global); None = dataset size
    shuffle_buffer: int = 1000  # raw samples held for shuffling, per worker and stream
    max_consecutive_skips: int = 1000  # a stream skipping this many samples in a row stops the run
    log_interval_s: float = 30.0  # at most one skip warning per worker per interval
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # data.augment.scale: crop area range
    mix: MixConfig = field(default_factory=MixConfig)  # data.mix.snr_db, data.mix.level_db
    splice: SpliceConfig = field(default_factory=SpliceConfig)  # DenseAV negative-audio splicing
    masking: MaskConfig = field(default_factory=MaskConfig)
    # set by the trainer
    image_size: int = 224
    train: bool = True  # augment images (False: resize + centre crop)
    seed: int = 0

    TRAINER_FIELDS: ClassVar[tuple[str, ...]] = ("image_size", "train", "seed")

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * fmt.SAMPLE_RATE))
