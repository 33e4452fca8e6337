"""IS3 and Extended IS3: the layout (one owner: the synthetic world's writer and ``prep
extend-is3`` take the names from here), the reader and the pairs of Table 1.

IS3 as published: ``images/`` (or ``visual_frames/``), ``audio_wav/`` (the README spells it
``audio_waw/``), ``gt_segmentation/`` JPEG masks, optional ``IS3_annotation.json``; files share
the stem ``<classA>_<classB>[_<id>]_<target>``. Extended IS3 adds ``speech_wav/<stem>.wav`` and
``speech_prompts.json`` (the spoken name of each annotated object and its word timing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.testsets.common import DatasetError, Skipped, find_dir, probe_audio, raise_if_strict

IS3_IMAGE_DIRS = ("images", "visual_frames")
IS3_AUDIO_DIRS = ("audio_wav", "audio_waw")  # the README spells it audio_waw, code uses audio_wav
IS3_MASK_DIRS = ("gt_segmentation", "gt_masks")
IS3_ANNOTATION_FILE = "IS3_annotation.json"
SPEECH_DIR = "speech_wav"
SPEECH_PROMPTS_FILE = "speech_prompts.json"


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
            raise DatasetError(
                f"{self.root} has no spoken prompts ({SPEECH_DIR}/, {SPEECH_PROMPTS_FILE}); "
                "build Extended IS3 first: prep extend-is3 " + str(self.root)
            )
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
    return {
        "entries": len(data) if isinstance(data, (list, dict)) else 1,
        "stems_mentioned": len(like_stems & stems),
        "stems_missing_from_tree": sorted(like_stems - stems)[:50],
    }


def read_is3(root: Path, require_speech: bool = False, strict: bool = False, read_speech: bool = True) -> IS3Dataset:
    """Read an IS3 tree by file stems. Extended IS3 is recognized by ``speech_prompts.json``;
    ``read_speech=False`` reads the published IS3 files only (the Extended-IS3 builder does)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"IS3 root {root} does not exist")
    image_dir = find_dir(root, IS3_IMAGE_DIRS, "image")
    audio_dir = find_dir(root, IS3_AUDIO_DIRS, "audio")
    mask_dir = find_dir(root, IS3_MASK_DIRS, "mask")
    prompts_path = root / SPEECH_PROMPTS_FILE
    speech_dir = root / SPEECH_DIR
    extended = read_speech and prompts_path.is_file()
    if require_speech and not extended:
        raise DatasetError(
            f"{root} is plain IS3: {SPEECH_PROMPTS_FILE} is missing; build Extended IS3 with `prep extend-is3 {root}`"
        )
    prompts: dict = {}
    if extended:
        try:
            prompts = json.loads(prompts_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{prompts_path} is not valid JSON ({exc}); rebuild it with prep extend-is3") from exc
        if not isinstance(prompts.get("items"), dict):
            raise DatasetError(f"{prompts_path} has no 'items' mapping; rebuild it with prep extend-is3")
        if not speech_dir.is_dir():
            raise DatasetError(
                f"{root}: {SPEECH_PROMPTS_FILE} is there but {SPEECH_DIR}/ is not; rebuild with prep extend-is3"
            )

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
        annotations.append(
            IS3Annotation(
                stem, parsed[0], parsed[1], image_path, audio_by_stem[stem], mask_by_stem[stem], speech_path, speech
            )
        )
    raise_if_strict(skipped, strict, root)
    if not annotations:
        first = f"{skipped[0].item}: {skipped[0].reason}" if skipped else "none found"
        raise DatasetError(
            f"{root}: no complete annotation (image + audio + mask"
            f"{' + speech' if extended else ''}); first problem: {first}"
        )
    summary = None
    if (root / IS3_ANNOTATION_FILE).is_file():
        summary = _summarize_annotation_json(root / IS3_ANNOTATION_FILE, {a.stem for a in annotations})
    meta = {k: v for k, v in prompts.items() if k != "items"}
    return IS3Dataset(root, annotations, skipped, extended, meta, summary)
