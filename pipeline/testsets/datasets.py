"""Readers of the public test sets, in their published layouts.

- ``read_is3``: IS3 / Extended IS3 (images, ``audio_wav/`` or ``audio_waw/``, ``gt_segmentation/``
  JPEG masks, optional ``IS3_annotation.json``; Extended adds ``speech_wav/`` and
  ``speech_prompts.json``).
- ``read_ade20k_prompted``: DenseAV's ``ADE20KSpeechPrompted/`` and ``ADE20KSoundPrompted/``
  (``prompted_segmentation.csv``, ``frames/``, ``annotations/`` RGB-encoded class masks, ``audio/``).
- ``read_retrieval_set``: 1,000 pairs of a shard directory written by ``prep`` (PlacesAudio val,
  AudioSet eval), chosen as DenseAV did: ``np.random.seed(0)`` permutation, first 1,000.

Readers list items and check that every file is there; media are loaded on demand
(``load_clip``, ``load_binary_mask``, ``load_ade_class_mask``, ``open_image``), so a reader is
cheap to build and a test set of thousands of items never sits in memory at once.
Items with a missing file are skipped and *counted* (``skipped`` lists each one with its reason);
``strict=True`` turns the first one into an error instead.
"""

from __future__ import annotations

import csv
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from pipeline import audio as audio_io
from pipeline import format as fmt

MASK_SIZE = 224  # the metric's resolution: 224 x 224 centre crop (reference §5)
MASK_THRESHOLD = 128  # IS3 masks are JPEGs: grey levels around the edges
RETRIEVAL_PAIRS = 1000
RETRIEVAL_SEED = 0

IS3_IMAGE_DIRS = ("images", "visual_frames")
IS3_AUDIO_DIRS = ("audio_wav", "audio_waw")  # the README spells it audio_waw, code uses audio_wav
IS3_MASK_DIRS = ("gt_segmentation", "gt_masks")
IS3_ANNOTATION_FILE = "IS3_annotation.json"
SPEECH_DIR = "speech_wav"
SPEECH_PROMPTS_FILE = "speech_prompts.json"

ADE_KINDS = {"speech": ("ADE20KSpeechPrompted", "speech_prompt_file"),
             "sound": ("ADE20KSoundPrompted", "vggsound_file")}
ADE_CSV = "prompted_segmentation.csv"


class DatasetError(ValueError):
    """A test set is missing, incomplete or not in the expected layout."""


@dataclass
class Skipped:
    item: str
    reason: str

    def as_dict(self) -> dict:
        return {"item": self.item, "reason": self.reason}


# ---------------------------------------------------------------------------------------------
# media helpers


@dataclass
class Clip:
    """A standardized clip: 16 kHz mono float32, exactly ``fmt.CLIP_SAMPLES`` long."""

    audio: np.ndarray
    valid: int  # real (not padded) samples at the start


def standardize_clip(audio: np.ndarray, sample_rate: int, where: str = "audio") -> Clip:
    """Any audio ([samples] or [channels, samples], any rate) -> a standardized clip, through the
    project's one definition of a usable clip (``pipeline.audio.standardize``)."""
    try:
        clip, seconds = audio_io.standardize(audio, sample_rate)
    except audio_io.BadAudio as exc:
        raise DatasetError(f"{where}: {exc}") from exc
    return Clip(clip, int(min(fmt.CLIP_SAMPLES, round(seconds * fmt.SAMPLE_RATE))))


def load_clip(path: Path) -> Clip:
    """Decode any audio file (libsndfile, else ffmpeg) and standardize it; errors name the file."""
    try:
        audio, sr = audio_io.read(path)
    except audio_io.BadAudio as exc:
        raise DatasetError(str(exc)) from exc
    return standardize_clip(audio, sr, str(path))


def probe_audio(path: Path) -> str | None:
    """Why an audio file cannot be used (unreadable header, shorter than ``MIN_DURATION_S``), or
    None. Only WAV/FLAC headers are read (cheap); other formats are checked when decoded."""
    if Path(path).suffix.lower() not in (".wav", ".flac"):
        return None
    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable header is a reason to skip
        return f"unreadable audio {Path(path).name} ({exc})"
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if seconds < fmt.MIN_DURATION_S:
        return f"audio {Path(path).name} is {seconds:.2f} s, shorter than {fmt.MIN_DURATION_S} s"
    return None


def open_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def resize_crop_labels(labels: np.ndarray, size: int = MASK_SIZE) -> np.ndarray:
    """Nearest-neighbour resize of a label/mask array to a ``size`` shorter side + centre crop:
    the same geometry as the evaluation image transform, without inventing label values."""
    h, w = labels.shape
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    rows = np.minimum((np.arange(nh) + 0.5) * h / nh, h - 1).astype(np.int64)
    cols = np.minimum((np.arange(nw) + 0.5) * w / nw, w - 1).astype(np.int64)
    resized = labels[rows][:, cols]
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size]


def load_binary_mask(path: Path, size: int = MASK_SIZE) -> np.ndarray:
    """A JPEG/PNG object mask -> bool [size, size] (grey >= 128 is the object)."""
    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"))
    return resize_crop_labels(grey >= MASK_THRESHOLD, size)


def decode_ade_classes(rgb: np.ndarray) -> np.ndarray:
    """ADE20K's RGB-encoded segmentation -> class ids: class = floor(R / 10) * 256 + G."""
    rgb = np.asarray(rgb).astype(np.int64)
    return (rgb[..., 0] // 10) * 256 + rgb[..., 1]


def load_ade_class_mask(path: Path, size: int = MASK_SIZE) -> np.ndarray:
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return resize_crop_labels(decode_ade_classes(rgb), size)


def _find_dir(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"{root}: no {what} folder (looked for {', '.join(n + '/' for n in names)}); "
                       "is this the root of the data set as published?")


def _report(skipped: list[Skipped], strict: bool, where: Path) -> None:
    if skipped and strict:
        first = skipped[0]
        raise DatasetError(f"{where}: {first.item}: {first.reason} "
                           f"({len(skipped)} item(s) with problems; run without strict to skip them)")


# ---------------------------------------------------------------------------------------------
# IS3 / Extended IS3


@dataclass
class IS3Annotation:
    """One annotation: one sounding object of one image. Files share the stem.

    stem = ``<classA>_<classB>[_<id>]_<target>``; the two annotations of an image share everything
    but the last token, which names the annotated object (``target``).
    """

    stem: str
    image_id: str
    target: str
    image_path: Path
    audio_path: Path
    mask_path: Path
    speech_path: Path | None = None
    speech: dict | None = None  # {"class", "phrase", "words", "object_span"} from speech_prompts.json


@dataclass
class Table1Pair:
    """One simultaneous-grounding query: the sound of one object + the spoken name of one object."""

    sound: IS3Annotation  # whose audio plays and whose mask the sound head is scored against
    speech: IS3Annotation  # whose name is spoken and whose mask the speech head is scored against

    @property
    def key(self) -> str:
        return f"{self.sound.stem}+{self.speech.stem}"


PAIRINGS = ("cross", "same")


@dataclass
class IS3Dataset:
    root: Path
    annotations: list[IS3Annotation]
    skipped: list[Skipped] = field(default_factory=list)
    extended: bool = False
    speech_meta: dict = field(default_factory=dict)  # backend, voice, ... of speech_prompts.json
    annotation_json: dict | None = None  # summary of IS3_annotation.json when present

    def images(self) -> dict[str, list[IS3Annotation]]:
        groups: dict[str, list[IS3Annotation]] = {}
        for ann in self.annotations:
            groups.setdefault(ann.image_id, []).append(ann)
        return groups

    def pairs(self, pairing: str) -> tuple[list[Table1Pair], list[Skipped]]:
        """Table 1 queries. ``cross``: the sound of one object + speech naming the *other* object
        of the same image; ``same``: sound and speech of the same object. Every annotation is the
        sounding object once. Images without exactly two annotations cannot form a cross pair:
        they are returned as skipped."""
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        if not self.extended:
            raise DatasetError(f"{self.root} has no spoken prompts ({SPEECH_DIR}/, {SPEECH_PROMPTS_FILE}); "
                               "build Extended IS3 first: prep extend-is3 " + str(self.root))
        out, skipped = [], []
        for image_id, anns in sorted(self.images().items()):
            if pairing == "same":
                out += [Table1Pair(a, a) for a in sorted(anns, key=lambda a: a.stem)]
                continue
            if len(anns) != 2:
                skipped.append(Skipped(image_id, f"{len(anns)} annotation(s) of this image, a cross pair needs 2"))
                continue
            a, b = sorted(anns, key=lambda a: a.stem)
            out += [Table1Pair(a, b), Table1Pair(b, a)]
        return out, skipped


def parse_is3_stem(stem: str) -> tuple[str, str] | None:
    """(image id, target) of an IS3 stem, or None if it does not look like one."""
    tokens = stem.split("_")
    if len(tokens) < 3 or not all(tokens):
        return None
    return "_".join(tokens[:-1]), tokens[-1]


def _summarize_annotation_json(path: Path, stems: set[str]) -> dict:
    """The field layout of IS3_annotation.json is not confirmed by any public copy, so it is only
    used to cross-check: which stems does it mention that the tree lacks?"""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); remove or repair it") from exc
    mentioned: set[str] = set()

    def visit(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str):
                    mentioned.add(Path(k).stem)
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)
        elif isinstance(node, str):
            mentioned.add(Path(node).stem)

    visit(data)
    like_stems = {m for m in mentioned if parse_is3_stem(m)}
    return {"entries": len(data) if isinstance(data, (list, dict)) else 1,
            "stems_mentioned": len(like_stems & stems),
            "stems_missing_from_tree": sorted(like_stems - stems)[:50]}


def read_is3(root: Path, require_speech: bool = False, strict: bool = False,
             read_speech: bool = True) -> IS3Dataset:
    """Read an IS3 tree by file stems. Extended IS3 is recognized by ``speech_prompts.json``;
    ``read_speech=False`` reads the published IS3 files only (the Extended-IS3 builder does)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"IS3 root {root} does not exist")
    image_dir = _find_dir(root, IS3_IMAGE_DIRS, "image")
    audio_dir = _find_dir(root, IS3_AUDIO_DIRS, "audio")
    mask_dir = _find_dir(root, IS3_MASK_DIRS, "mask")
    prompts_path = root / SPEECH_PROMPTS_FILE
    speech_dir = root / SPEECH_DIR
    extended = read_speech and prompts_path.is_file()
    if require_speech and not extended:
        raise DatasetError(f"{root} is plain IS3: {SPEECH_PROMPTS_FILE} is missing; build Extended IS3 "
                           f"with `prep extend-is3 {root}`")
    prompts: dict = {}
    if extended:
        try:
            prompts = json.loads(prompts_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{prompts_path} is not valid JSON ({exc}); rebuild it with prep extend-is3") from exc
        if not isinstance(prompts.get("items"), dict):
            raise DatasetError(f"{prompts_path} has no 'items' mapping; rebuild it with prep extend-is3")
        if not speech_dir.is_dir():
            raise DatasetError(f"{root}: {SPEECH_PROMPTS_FILE} is there but {SPEECH_DIR}/ is not; "
                               "rebuild with prep extend-is3")

    image_files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not image_files:
        raise DatasetError(f"{image_dir} holds no images")
    audio_by_stem = {p.stem: p for p in audio_dir.iterdir() if p.suffix.lower() in (".wav", ".flac", ".mp3")}
    mask_by_stem = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}

    annotations, skipped = [], []
    for image_path in image_files:
        stem = image_path.stem
        parsed = parse_is3_stem(stem)
        if parsed is None:
            skipped.append(Skipped(stem, "name is not <classA>_<classB>[_<id>]_<target>"))
            continue
        missing = [what for what, table in (("audio", audio_by_stem), ("mask", mask_by_stem)) if stem not in table]
        speech_path, speech = None, None
        if extended:
            speech = prompts["items"].get(stem)
            speech_path = speech_dir / f"{stem}.wav"
            if speech is None:
                missing.append(f"entry in {SPEECH_PROMPTS_FILE}")
            if not speech_path.is_file():
                missing.append(f"{SPEECH_DIR}/{stem}.wav")
        if missing:
            skipped.append(Skipped(stem, "missing " + ", ".join(missing)))
            continue
        bad = probe_audio(audio_by_stem[stem]) or (probe_audio(speech_path) if extended else None)
        if bad:
            skipped.append(Skipped(stem, bad))
            continue
        annotations.append(IS3Annotation(stem, parsed[0], parsed[1], image_path, audio_by_stem[stem],
                                         mask_by_stem[stem], speech_path, speech))
    _report(skipped, strict, root)
    if not annotations:
        first = f"{skipped[0].item}: {skipped[0].reason}" if skipped else "none found"
        raise DatasetError(f"{root}: no complete annotation (image + audio + mask"
                           f"{' + speech' if extended else ''}); first problem: {first}")
    summary = None
    if (root / IS3_ANNOTATION_FILE).is_file():
        summary = _summarize_annotation_json(root / IS3_ANNOTATION_FILE, {a.stem for a in annotations})
    meta = {k: v for k, v in prompts.items() if k != "items"}
    return IS3Dataset(root, annotations, skipped, extended, meta, summary)


# ---------------------------------------------------------------------------------------------
# DenseAV ADE20K prompted sets


@dataclass
class PromptedItem:
    row: int  # line of the CSV (data rows counted from 0)
    image_path: Path
    annotation_path: Path
    audio_path: Path
    class_id: int
    class_name: str
    timing: tuple[float, float] | None  # object word [start, end] s (speech set)


@dataclass
class PromptedSet:
    kind: str  # "speech" or "sound"
    root: Path
    items: list[PromptedItem]
    dropped_by_protocol: int = 0  # empty prompt or class 0: DenseAV drops these
    skipped: list[Skipped] = field(default_factory=list)


def _parse_timing(value: str, where: str) -> tuple[float, float] | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        t = json.loads(value)
        return float(t[0]), float(t[1])
    except (ValueError, TypeError, IndexError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{where}: timing {value!r} is not a JSON [start, end] pair") from exc


def read_ade20k_prompted(root: Path, kind: str, strict: bool = False) -> PromptedSet:
    """Read ``ADE20KSpeechPrompted`` (kind ``speech``) or ``ADE20KSoundPrompted`` (``sound``).

    ``root`` may be the set's own folder or the folder holding it.
    """
    if kind not in ADE_KINDS:
        raise ValueError(f"kind must be one of {tuple(ADE_KINDS)}, got {kind!r}")
    folder, audio_col = ADE_KINDS[kind]
    root = Path(root)
    if not (root / ADE_CSV).is_file() and (root / folder / ADE_CSV).is_file():
        root = root / folder
    csv_path = root / ADE_CSV
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path} not found: point at the {folder}/ folder as published by DenseAV")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        need = {"image_location", audio_col, "ade_class_id"} | ({"timing"} if kind == "speech" else set())
        if not need <= columns:
            raise DatasetError(f"{csv_path} lacks column(s) {sorted(need - columns)} "
                               f"(has {sorted(columns)}); is this the {kind} set?")
        rows = list(reader)
    name_col = next((c for c in ("ade_class_name", "class_name", "object", "name") if c in columns), None)
    items, skipped, dropped = [], [], 0
    for i, row in enumerate(rows):
        prompt = (row.get(audio_col) or "").strip()
        try:
            class_id = int(float(row["ade_class_id"]))
        except ValueError as exc:
            raise DatasetError(f"{csv_path} row {i}: ade_class_id {row['ade_class_id']!r} is not a number") from exc
        if not prompt or class_id == 0:
            dropped += 1
            continue
        image_location = row["image_location"]
        image_path = root / "frames" / image_location
        annotation_path = root / "annotations" / (image_location.rsplit(".", 1)[0] + "_seg.png")
        audio_path = root / "audio" / prompt.replace("\\", "/").split("/")[-1]
        missing = [str(p.relative_to(root)) for p in (image_path, annotation_path, audio_path) if not p.is_file()]
        if missing:
            skipped.append(Skipped(f"row {i}", "missing " + ", ".join(missing)))
            continue
        bad = probe_audio(audio_path)
        if bad:
            skipped.append(Skipped(f"row {i}", bad))
            continue
        timing = _parse_timing(row.get("timing", ""), f"{csv_path} row {i}") if kind == "speech" else None
        if kind == "speech" and timing is None:
            skipped.append(Skipped(f"row {i}", "no word timing for the object"))
            continue
        items.append(PromptedItem(i, image_path, annotation_path, audio_path, class_id,
                                  (row.get(name_col) or str(class_id)) if name_col else str(class_id), timing))
    _report(skipped, strict, csv_path)
    if not items:
        raise DatasetError(f"{csv_path}: no usable row ({dropped} dropped by protocol, {len(skipped)} with "
                           f"missing files{': ' + skipped[0].reason if skipped else ''})")
    return PromptedSet(kind, root, items, dropped, skipped)


# ---------------------------------------------------------------------------------------------
# retrieval sets from prep shards


@dataclass
class RetrievalItem:
    """One pair, kept encoded (FLAC + JPEG bytes) so 1,000 of them stay small; decode on use."""

    key: str
    audio_bytes: bytes
    image_bytes: bytes
    meta: dict

    def clip(self) -> Clip:
        return Clip(fmt.decode_audio(self.audio_bytes), fmt.valid_samples(self.meta))

    def image(self) -> Image.Image:
        return fmt.decode_image(self.image_bytes)


@dataclass
class RetrievalSet:
    root: Path
    items: list[RetrievalItem]
    available: int  # samples in the committed shards (the permutation runs over these)
    seed: int
    skipped_shards: list[Skipped] = field(default_factory=list)

    @property
    def audio_type(self) -> str:
        types = {it.meta.get("audio_type") for it in self.items}
        return types.pop() if len(types) == 1 else "mixed"


def _shard_index(shard_dir: Path) -> tuple[list[tuple[Path, str]], list[Skipped]]:
    """(tar, key) of every sample in committed shards, in shard order then tar order."""
    tars = sorted(shard_dir.glob("*.tar"))
    if not tars:
        raise DatasetError(f"{shard_dir} holds no .tar shards; build them with `prep shards ...`")
    index, skipped = [], []
    for tar_path in tars:
        if not (shard_dir / f"{tar_path.stem}_stats.json").is_file():
            # prep writes the stats file last: a tar without it is unfinished or crashed
            skipped.append(Skipped(tar_path.name, "no _stats.json marker (unfinished shard)"))
            continue
        seen: dict[str, None] = {}
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    seen.setdefault(member.name.split(".", 1)[0], None)
        index += [(tar_path, key) for key in seen]
    return index, skipped


def select_pairs(available: int, n: int = RETRIEVAL_PAIRS, seed: int = RETRIEVAL_SEED) -> np.ndarray:
    """Indices of the evaluated pairs: ``np.random.seed(seed)`` permutation, first ``n``.

    ``RandomState(seed).permutation`` draws the same numbers as ``np.random.seed(seed);
    np.random.permutation`` without touching numpy's global state.
    """
    return np.random.RandomState(seed).permutation(available)[: min(n, available)]


def read_retrieval_set(shard_dir: Path, n: int = RETRIEVAL_PAIRS, seed: int = RETRIEVAL_SEED) -> RetrievalSet:
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise DatasetError(f"retrieval shard folder {shard_dir} does not exist; build it with `prep shards ...`")
    index, skipped = _shard_index(shard_dir)
    if not index:
        raise DatasetError(f"{shard_dir}: no committed shard (all lack their _stats.json marker)")
    chosen = select_pairs(len(index), n, seed)
    wanted: dict[Path, dict[str, int]] = {}
    for pos, i in enumerate(chosen):
        tar_path, key = index[i]
        wanted.setdefault(tar_path, {})[key] = pos
    items: list[RetrievalItem | None] = [None] * len(chosen)
    for tar_path, keys in wanted.items():
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                if key in keys and member.isfile():
                    members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for key, pos in keys.items():
            sample = members.get(key, {})
            problems = fmt.verify_sample({"__key__": key, **sample})
            if problems:
                raise DatasetError(f"{tar_path} sample {key}: {'; '.join(problems)}; rebuild this shard")
            items[pos] = RetrievalItem(key, sample[fmt.AUDIO_EXT], sample[fmt.IMAGE_EXT],
                                       fmt.decode_meta(sample[fmt.META_EXT]))
    return RetrievalSet(shard_dir, [it for it in items if it is not None], len(index), seed, skipped)
