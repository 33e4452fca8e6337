"""Speech of the generated world: a short sentence naming the object, spoken offline.

Training utterances draw a template, a voice, a speaking rate and a pitch; evaluation prompts use
DenseAV's "a picture of a(n) <object>" so the prompted sets read like the published ones. Word
times come from the synthesizer (``pipeline.tts``) and are kept with every clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import tts
from pipeline.format import MIN_DURATION_S
from pipeline.prep.synthetic.world import ObjectClass, WorldConfig
from pipeline.tts import prompt_text

TRAIN_TEMPLATES = (
    "a picture of {article} {phrase}",
    "this is {article} {phrase}",
    "look at the {phrase}",
    "I can see {article} {phrase}",
    "there is {article} {phrase} here",
)
EVAL_TEMPLATE = TRAIN_TEMPLATES[0]  # DenseAV's prompt: "A picture of a(n) [object]"
VOICES = tts.ESPEAK_ENGLISH_VOICES


@dataclass
class SpokenPrompt:
    audio: np.ndarray  # float32 mono at ``sample_rate`` (the synthesizer's)
    sample_rate: int
    text: str
    phrase: str  # the object's name as spoken
    words: list[dict]  # [{"word", "start", "end"}] seconds from the start of ``audio``
    object_span: tuple[float, float]  # [start, end] of the object's name
    voice: str
    rate_wpm: int
    timing: str  # "engine" or "estimated" (see pipeline.tts)


def render_speech(
    cls: ObjectClass,
    cfg: WorldConfig,
    r: np.random.Generator,
    template: str | None = None,
) -> SpokenPrompt:
    """Speak a sentence naming ``cls``; ``template`` None draws one of the world's training templates."""
    if template is None:
        templates = TRAIN_TEMPLATES[: cfg.templates]
        template = templates[int(r.integers(len(templates)))]
    text = prompt_text(cls.name, template)
    voices = VOICES[: cfg.voices]
    voice = voices[int(r.integers(len(voices)))]
    rate = int(r.integers(cfg.rate_wpm[0], cfg.rate_wpm[1] + 1))
    pitch = int(r.integers(35, 66))
    speech = tts.synthesize(text, voice=voice, rate_wpm=rate, pitch=pitch)
    onset_s = float(r.uniform(*cfg.onset_seconds))
    onset = int(round(onset_s * speech.sample_rate))
    onset_s = onset / speech.sample_rate
    gain = 10 ** (r.uniform(-12, -1) / 20)
    peak = float(np.abs(speech.audio).max())
    audio = np.concatenate([np.zeros(onset, np.float32), speech.audio * (gain / peak if peak > 0 else 1.0)])
    # a clip under MIN_DURATION_S is refused by the shard builder: pad a very fast short sentence
    shortest = int(np.ceil((MIN_DURATION_S + 0.1) * speech.sample_rate))
    if audio.shape[0] < shortest:
        audio = np.pad(audio, (0, shortest - audio.shape[0]))
    words = [
        {"word": w["word"], "start": round(w["start"] + onset_s, 4), "end": round(w["end"] + onset_s, 4)}
        for w in speech.words
    ]
    start, end = tts.phrase_span(words, cls.name)
    return SpokenPrompt(
        audio.astype(np.float32),
        speech.sample_rate,
        text,
        cls.name,
        words,
        (start, end),
        speech.voice,
        rate,
        speech.timing,
    )
