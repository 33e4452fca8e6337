"""The training data stream's configuration: every loader option, settable from YAML as ``data.*``.

``image_size``, ``train`` and ``seed`` are the trainer's to set (the model decides the image size,
the run its seed); the YAML loader refuses them under ``data``. Each field declares the values it
accepts (``pipeline.fields.checked``), and a ``LoaderConfig`` checks them, its sections' included,
when it is built; ``check_together`` checks the streams against each other.

**Typed streams.** The loader reads K >= 2 streams of audio, each named by its audio type (a name
matching ``[a-z][a-z0-9_]*``): ``data.streams`` maps each type to its shard spec, in the order the
batch lists them (``types``). Left empty, the two fields ``data.speech`` and ``data.sound`` are the
two-stream case ``{speech: data.speech, sound: data.sound}``; giving both forms is an error. The
``data.pace`` type's samples define the epoch (default ``speech`` when there is one, else the first
type listed); every other stream is resampled endlessly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline import format as fmt
from pipeline.data.mixing import MaskConfig, MixConfig, SpliceConfig
from pipeline.data.transform import AugmentConfig
from pipeline.fields import FieldError, check_fields, checked

# batch keys are "<type>_audio", ...; the mixture's own are "mix_audio", "mix_mask"
RESERVED_TYPES = ("mix",)


@dataclass
class LoaderConfig:
    speech: str = ""  # speech shard directories, tar files or globs (PlacesAudio); comma-separated
    sound: str = ""  # sound shards (AudioSet), the same way
    # type -> shard spec (as speech/sound), K >= 2 typed streams; empty: {speech: speech, sound: sound}
    streams: dict[str, str] = field(default_factory=dict)
    pace: str = ""  # the type whose samples define the epoch; "": speech when present, else the first type
    batch_size: int = checked(8, ge=1)  # per process and micro-step
    num_workers: int = checked(4, ge=0)  # 0: the stream runs in the training process
    clip_seconds: float = checked(10.0, gt=0, le=fmt.CLIP_SECONDS)  # first N seconds of each 10 s clip
    resampled: bool = True  # False: every sample of the pace stream exactly once per epoch
    # resampled mode: items (pace samples) per epoch (global); None = the pace stream's size
    epoch_samples: int | None = checked(None, ge=1)
    shuffle_buffer: int = checked(1000, ge=0)  # raw samples held for shuffling, per worker and stream; 0 or 1: none
    max_consecutive_skips: int = checked(1000, ge=1)  # a stream skipping this many samples in a row stops the run
    log_interval_s: float = checked(30.0, ge=0)  # at most one skip warning per worker per interval
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # data.augment.scale: crop area range
    mix: MixConfig = field(default_factory=MixConfig)  # data.mix.snr_db, .level_db, .subset
    splice: SpliceConfig = field(default_factory=SpliceConfig)  # DenseAV negative-audio splicing
    masking: MaskConfig = field(default_factory=MaskConfig)
    # set by the trainer
    image_size: int = checked(224, ge=1)
    train: bool = True  # augment images (False: resize + centre crop)
    seed: int = checked(0, ge=0)

    TRAINER_FIELDS: ClassVar[tuple[str, ...]] = ("image_size", "train", "seed")

    def __post_init__(self) -> None:
        check_fields(self)  # the declarations above, those of the nested sections, and check_together

    @staticmethod
    def check_together(values: Any, prefix: str = "") -> None:
        """The streams against each other (``values``: a ``LoaderConfig`` or its structured-config
        node): one form of streams, type names, at least two types, a non-empty spec each, a pace
        among them. Raises ``FieldError``."""
        streams = dict(values.streams or {})
        if streams and (values.speech or values.sound):
            raise FieldError(
                f"{prefix}streams",
                streams,
                f"empty when {prefix}speech or {prefix}sound is set (list speech and sound under "
                f"{prefix}streams instead)",
            )
        for name, spec in streams.items():
            if not isinstance(name, str) or not fmt.AUDIO_TYPE_RE.fullmatch(name) or name in RESERVED_TYPES:
                raise FieldError(
                    f"{prefix}streams",
                    name,
                    "keyed by audio type names matching [a-z][a-z0-9_]* other than "
                    f"{', '.join(RESERVED_TYPES)} (speech, sound, music, ...)",
                )
            if not isinstance(spec, str) or not spec.strip():
                raise FieldError(
                    f"{prefix}streams.{name}", spec, "shard directories, tar files or globs, comma-separated"
                )
        if len(streams) == 1:
            raise FieldError(f"{prefix}streams", streams, "a mapping of at least two types (K >= 2 streams are mixed)")
        types = tuple(streams) or ("speech", "sound")
        if values.pace and values.pace not in types:
            raise FieldError(
                f"{prefix}pace", values.pace, f"one of the streams ({', '.join(types)}), or empty for the default"
            )

    @property
    def stream_specs(self) -> dict[str, str]:
        """Every stream's shard spec by type, in config order: ``streams``, or speech and sound."""
        return dict(self.streams) if self.streams else {"speech": self.speech, "sound": self.sound}

    @property
    def types(self) -> tuple[str, ...]:
        """The stream types in config order (the batch's ``types``)."""
        return tuple(self.stream_specs)

    @property
    def pace_type(self) -> str:
        """The stream whose samples define the epoch."""
        return self.pace or ("speech" if "speech" in self.types else self.types[0])

    def spec_key(self, kind: str) -> str:
        """Where the spec of stream ``kind`` is set, for messages: ``data.streams.music``, ``data.speech``."""
        return f"data.streams.{kind}" if self.streams else f"data.{kind}"

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * fmt.SAMPLE_RATE))
