"""The training data stream's configuration: every loader option, settable from YAML as ``data.*``.

``image_size``, ``train`` and ``seed`` are the trainer's to set (the model decides the image size,
the run its seed); the YAML loader refuses them under ``data``. Each field declares the values it
accepts (``pipeline.fields.checked``), and a ``LoaderConfig`` checks them, its sections' included,
when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pipeline import format as fmt
from pipeline.data.mixing import MaskConfig, MixConfig, SpliceConfig
from pipeline.data.transform import AugmentConfig
from pipeline.fields import check_fields, checked


@dataclass
class LoaderConfig:
    speech: str = ""  # speech shard directories, tar files or globs (PlacesAudio); comma-separated
    sound: str = ""  # sound shards (AudioSet), the same way
    batch_size: int = checked(8, ge=1)  # per process and micro-step
    num_workers: int = checked(4, ge=0)  # 0: the stream runs in the training process
    clip_seconds: float = checked(10.0, gt=0, le=fmt.CLIP_SECONDS)  # first N seconds of each 10 s clip
    resampled: bool = True  # False: every speech sample exactly once per epoch
    # resampled mode: speech items per epoch (global); None = dataset size
    epoch_samples: int | None = checked(None, ge=1)
    shuffle_buffer: int = checked(1000, ge=0)  # raw samples held for shuffling, per worker and stream; 0 or 1: none
    max_consecutive_skips: int = checked(1000, ge=1)  # a stream skipping this many samples in a row stops the run
    log_interval_s: float = checked(30.0, ge=0)  # at most one skip warning per worker per interval
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # data.augment.scale: crop area range
    mix: MixConfig = field(default_factory=MixConfig)  # data.mix.snr_db, data.mix.level_db
    splice: SpliceConfig = field(default_factory=SpliceConfig)  # DenseAV negative-audio splicing
    masking: MaskConfig = field(default_factory=MaskConfig)
    # set by the trainer
    image_size: int = checked(224, ge=1)
    train: bool = True  # augment images (False: resize + centre crop)
    seed: int = checked(0, ge=0)

    TRAINER_FIELDS: ClassVar[tuple[str, ...]] = ("image_size", "train", "seed")

    def __post_init__(self) -> None:
        check_fields(self)  # the declarations above and those of the nested sections

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * fmt.SAMPLE_RATE))
