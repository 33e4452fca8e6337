"""Extended IS3: IS3 plus, for every annotation, a speech clip that says the object's name.

The paper (§4.1) extends IS3 "by generating two individual speech audio samples for each image,
each reading the class category of the sounding objects", with Google's gTTS. This builder writes

    <root>/speech_wav/<stem>.wav     16 kHz mono PCM-16: the spoken name of the annotated object
    <root>/speech_prompts.json       {"backend", "voice", "template", "rate_wpm", "timing",
                                      "items": {stem: {"class", "phrase", "text", "words",
                                                       "object_span"}}}

next to the published IS3 files, with either TTS backend of ``pipeline.tts``: ``espeak``
(offline, installs with pip alone, word timings from the engine) or ``gtts`` (the paper's choice,
needs internet, word timings estimated). The same text is synthesized once and reused, WAVs are
PCM-16 and the JSON is written with sorted keys, so a rebuild with the same backend and voice
gives byte-identical files. The JSON is written last, through a temporary name: a tree with a
``speech_prompts.json`` is complete.

IS3 names objects with run-together class strings (``acousticguitar``, ``policecar``); the
stem's last token names the annotated object and may be a variant of the class string
(``subwaytrain`` images, ``subway`` target). ``PHRASES`` maps the strings found in the public
IS3 metadata to readable phrases; ``readable_phrase`` falls back to splitting unknown strings into
known words.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline import audio as audio_io
from pipeline import format as fmt
from pipeline import tts
from pipeline.atomic import write_json
from pipeline.cli_support import fail
from pipeline.progress import progress_bar
from pipeline.testsets.common import DatasetError
from pipeline.testsets.is3 import SPEECH_DIR, SPEECH_PROMPTS_FILE, read_is3
from pipeline.tts import prompt_text

# Class strings and target tokens of the public IS3 metadata (kaistmm/SSLalignment,
# metadata/synthetic3240_seg.json), with the phrase to speak. The official list of the 111 class
# strings is not published on its own; tokens missing here go through ``split_compound``.
PHRASES: dict[str, str] = {
    "accordion": "accordion",
    "acousticguitar": "acoustic guitar",
    "airplane": "airplane",
    "alarmclock": "alarm clock",
    "alligator": "alligator",
    "baby": "baby",
    "babylaughter": "laughing baby",
    "banjo": "banjo",
    "beach": "beach",
    "bird": "bird",
    "blowtorch": "blowtorch",
    "bus": "bus",
    "car": "car",
    "cat": "cat",
    "cattle": "cattle",
    "cello": "cello",
    "chainsaw": "chainsaw",
    "cheetah": "cheetah",
    "chicken": "chicken",
    "child": "child",
    "chimpanzee": "chimpanzee",
    "chinchilla": "chinchilla",
    "chipmunk": "chipmunk",
    "churchbell": "church bell",
    "computerkeyboard": "computer keyboard",
    "cornet": "cornet",
    "crocodile": "crocodile",
    "dinosaur": "dinosaur",
    "dog": "dog",
    "donkey": "donkey",
    "drum": "drum",
    "eagle": "eagle",
    "electricblender": "electric blender",
    "electricgrinder": "electric grinder",
    "electronicorgan": "electronic organ",
    "elephant": "elephant",
    "elk": "elk",
    "female": "woman",
    "firetruck": "fire truck",
    "firework": "fireworks",
    "fireworks": "fireworks",
    "fox": "fox",
    "frenchhorn": "french horn",
    "gibbon": "gibbon",
    "goat": "goat",
    "hairdryer": "hair dryer",
    "harp": "harp",
    "harpsichord": "harpsichord",
    "hedgetrimmer": "hedge trimmer",
    "helicopter": "helicopter",
    "horse": "horse",
    "icecreamtruck": "ice cream truck",
    "keyboard": "keyboard",
    "lawnmower": "lawn mower",
    "lion": "lion",
    "machinegun": "machine gun",
    "male": "man",
    "missile": "missile",
    "motorboat": "motorboat",
    "motorcycle": "motorcycle",
    "mouse": "mouse",
    "ocean": "ocean",
    "orchestra": "orchestra",
    "owl": "owl",
    "owlhooting": "hooting owl",
    "parrot": "parrot",
    "penguin": "penguin",
    "people": "people",
    "peoplemarching": "people marching",
    "piano": "piano",
    "playingdrumkit": "drum kit",
    "playingelectronicguitar": "electric guitar",
    "police": "police car",
    "policecar": "police car",
    "popcorn": "popcorn",
    "popcornmachine": "popcorn machine",
    "racecar": "race car",
    "saxophone": "saxophone",
    "sealion": "sea lion",
    "sheep": "sheep",
    "shofar": "shofar",
    "skateboard": "skateboard",
    "slotmachine": "slot machine",
    "snake": "snake",
    "snowmobile": "snowmobile",
    "stream": "stream",
    "subway": "subway train",
    "subwaytrain": "subway train",
    "telephone": "telephone",
    "tractor": "tractor",
    "train": "train",
    "trumpet": "trumpet",
    "turkey": "turkey",
    "ukulele": "ukulele",
    "vacuumcleaner": "vacuum cleaner",
    "waterfall": "waterfall",
    "waterfallburbling": "burbling waterfall",
    "whale": "whale",
    "windchime": "wind chime",
    "woodpecker": "woodpecker",
}

# Extra words for splitting unknown run-together strings (plus every word of PHRASES).
_EXTRA_WORDS = """
air alarm baby bell bike blender boat box brass bus car cart chain chime church clock cleaner
computer crying dog drill drum dryer duck electric electronic engine fire frog gun guitar hair
hammer hedge horn ice cream kit laughing lawn machine marching motor mower music musical organ
people player playing police pop race rain saw sea siren slot snow speaking steam string subway
toilet train trimmer truck vacuum violin water wind wood
""".split()


def _vocabulary() -> set[str]:
    words = set(_EXTRA_WORDS)
    for phrase in PHRASES.values():
        words.update(phrase.split())
    return words


_VOCAB = _vocabulary()


def split_compound(token: str) -> str | None:
    """Split a run-together string into known words (fewest words wins), or None."""
    token = token.lower()
    best: list[list[str] | None] = [None] * (len(token) + 1)
    best[0] = []
    for end in range(1, len(token) + 1):
        for start in range(end):
            prefix = best[start]
            if prefix is not None and token[start:end] in _VOCAB:
                candidate = prefix + [token[start:end]]
                if best[end] is None or len(candidate) < len(best[end]):
                    best[end] = candidate
    return " ".join(best[-1]) if best[-1] else None


def readable_phrase(token: str) -> str:
    """The phrase to speak for an IS3 class string: table, else word split, else the string."""
    key = token.lower()
    if key in PHRASES:
        return PHRASES[key]
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", token).replace("-", " ").replace("_", " ").strip()
    if " " in spaced:
        return spaced.lower()
    return split_compound(key) or key


def _speech_item(speech: tts.Speech, token: str, phrase: str, text: str) -> tuple[dict, np.ndarray]:
    # resampling keeps the word times: they are seconds, not sample indices
    audio = audio_io.resample(np.asarray(speech.audio, dtype=np.float32), speech.sample_rate, fmt.SAMPLE_RATE)
    # standardize() refuses clips under MIN_DURATION_S; a short name ("dog") is padded with
    # trailing silence rather than lost
    min_len = int(np.ceil((fmt.MIN_DURATION_S + 0.05) * fmt.SAMPLE_RATE))
    if audio.shape[0] < min_len:
        audio = np.pad(audio, (0, min_len - audio.shape[0]))
    start, end = tts.phrase_span(speech.words, phrase)
    item = {
        "class": token,
        "phrase": phrase,
        "text": text,
        "words": [
            {"word": w["word"], "start": round(float(w["start"]), 4), "end": round(float(w["end"]), 4)}
            for w in speech.words
        ],
        "object_span": [round(start, 4), round(end, 4)],
    }
    return item, audio


def build_extended_is3(
    root: Path,
    backend: str = "espeak",
    voice: str | None = None,
    template: str = "{phrase}",
    rate_wpm: int = tts.DEFAULT_RATE_WPM,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Add ``speech_wav/`` and ``speech_prompts.json`` to the IS3 tree at ``root``.

    Returns a summary: annotations spoken, distinct texts synthesized, annotations skipped
    (missing IS3 files, each with its reason).
    """
    root = Path(root)
    prompts_path = root / SPEECH_PROMPTS_FILE
    if prompts_path.exists() and not overwrite:
        raise DatasetError(f"{prompts_path} exists: this tree is already Extended IS3 (pass --overwrite to rebuild)")
    if backend not in tts.BACKENDS:
        raise ValueError(f"unknown TTS backend {backend!r}; choose one of {tts.BACKENDS}")
    voice = voice or tts.DEFAULT_VOICE[backend]
    dataset = read_is3(root, read_speech=False)
    speech_dir = root / SPEECH_DIR
    speech_dir.mkdir(exist_ok=True)

    cache: dict[str, tuple[tts.Speech, str]] = {}
    items = {}
    annotations = sorted(dataset.annotations, key=lambda a: a.stem)
    for ann in progress_bar(len(annotations), "speaking IS3 class names", progress, unit="name", iterable=annotations):
        phrase = readable_phrase(ann.target)
        text = prompt_text(phrase, template)
        if text not in cache:
            cache[text] = (tts.synthesize(text, voice=voice, rate_wpm=rate_wpm, backend=backend), phrase)
        speech, _ = cache[text]
        item, audio = _speech_item(speech, ann.target, phrase, text)
        sf.write(speech_dir / f"{ann.stem}.wav", audio, fmt.SAMPLE_RATE, subtype="PCM_16")
        items[ann.stem] = item
    timing = {s.timing for s, _ in cache.values()}
    doc = {
        "backend": backend,
        "voice": voice,
        "template": template,
        "rate_wpm": int(rate_wpm),
        "sample_rate": fmt.SAMPLE_RATE,
        "timing": timing.pop() if len(timing) == 1 else sorted(timing),
        "items": items,
    }
    write_json(prompts_path, doc)
    return {
        "spoken": len(items),
        "texts": len(cache),
        "skipped": [s.as_dict() for s in dataset.skipped],
        "root": str(root),
    }


def extend_is3_command(
    root: Path,
    backend: str = "espeak",
    voice: str | None = None,
    template: str = "{phrase}",
    rate_wpm: int = tts.DEFAULT_RATE_WPM,
    overwrite: bool = False,
) -> None:
    """Build Extended IS3: speak every annotated object's class name next to the IS3 files.

    BACKEND is espeak (offline) or gtts (the paper's, needs internet). TEMPLATE is the text
    spoken, with {phrase} (e.g. "acoustic guitar") and optionally {article} ("a"/"an"), e.g.
    "a picture of {article} {phrase}".
    """
    import typer

    try:
        summary = build_extended_is3(root, backend, voice, template, rate_wpm, overwrite)
    except (DatasetError, ValueError, tts.TTSError) as exc:
        fail(str(exc))
    typer.echo(
        f"{summary['spoken']} annotations spoken ({summary['texts']} distinct texts) into "
        f"{root / SPEECH_DIR}; {len(summary['skipped'])} skipped"
    )
    for s in summary["skipped"][:20]:
        typer.echo(f"  skipped {s['item']}: {s['reason']}")
