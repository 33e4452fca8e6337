"""Text to speech with word timings.

Two backends:

``espeak`` (default, offline)
    eSpeak NG through ctypes, from the ``espeakng-loader`` wheel, which ships ``libespeak-ng.so``
    and its voice data, so ``pip install`` is all it needs. Word timings come from the engine's
    own word events (``Speech.timing == "engine"``).
``gtts`` (needs internet and the optional ``gtts`` extra)
    Google Translate's TTS, the service the paper used for its spoken prompts. The MP3 is decoded
    with ffmpeg. The service gives no word timings, so they are estimated
    (``Speech.timing == "estimated"``): the voiced part of the clip is split among the words in
    proportion to their letter counts.

eSpeak NG keeps its state in library globals, so one process synthesizes one utterance at a time
(a lock guards it); the library is loaded lazily in each process, so ``synthesize`` works in
threads, in forked workers and in spawned workers alike. Each utterance starts from a freshly
loaded library, so the same arguments give the same samples whatever the process spoke before
(see ``_Espeak``), except for voice variants with breath noise (see ``ESPEAK_ENGLISH_VOICES``).
"""

from __future__ import annotations

import _ctypes
import ctypes
import io
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field

import numpy as np

BACKENDS = ("espeak", "gtts")
DEFAULT_VOICE = {"espeak": "en-us", "gtts": "com"}
DEFAULT_RATE_WPM = 160
MIN_RATE_WPM, MAX_RATE_WPM = 80, 450  # eSpeak NG's accepted speaking rates

# English voices (language + variant) in the eSpeak NG data, distinct speakers for the generated
# world. Variants are files in espeak-ng-data/voices/!v. Variants with breath noise (f2, f3, f5,
# whisper, ...) are left out: their noise source does not repeat from call to call, so the same
# text would not give the same samples twice.
ESPEAK_ENGLISH_VOICES = (
    "en-us",
    "en-us+f1",
    "en-us+m3",
    "en-us+f4",
    "en",
    "en+m1",
    "en+f4",
    "en-gb-x-rp+m7",
)
# gTTS "voices" are regional Google domains (accents).
GTTS_VOICES = ("com", "co.uk", "com.au", "ca", "co.in", "ie", "co.za")

_SILENCE_WINDOW_S = 0.010
_SILENCE_DB = -40.0  # relative to the clip's loudest window
_TAIL_KEEP_S = 0.05  # silence kept after the last voiced sample

_WORD_RE = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


class TTSError(RuntimeError):
    """Speech synthesis failed or was asked for something it cannot do."""


@dataclass
class Speech:
    """One synthesized utterance.

    ``words`` lists every word of ``text`` in order, each ``{"word", "start", "end"}`` in seconds
    from the start of ``audio``. ``timing`` says where the times come from: ``"engine"`` (the
    synthesizer's word events) or ``"estimated"`` (split by letter count, see the module doc).
    """

    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    words: list[dict] = field(default_factory=list)
    text: str = ""
    backend: str = "espeak"
    voice: str = ""
    rate_wpm: int = DEFAULT_RATE_WPM
    timing: str = "engine"

    @property
    def duration(self) -> float:
        return self.audio.shape[0] / self.sample_rate


def synthesize(
    text: str,
    voice: str | None = None,
    rate_wpm: int = DEFAULT_RATE_WPM,
    backend: str = "espeak",
    pitch: int | None = None,
) -> Speech:
    """Speak ``text`` and return the waveform with per-word start/end times.

    voice: eSpeak NG voice name, optionally with a variant (``"en-us"``, ``"en-us+f4"``; see
        ``espeak_voices()``), or for gTTS a Google domain (``"com"``, ``"co.uk"``, ...).
    rate_wpm: words per minute (eSpeak NG: 80–450). gTTS knows only normal and slow speech:
        below 120 wpm it asks for slow speech.
    pitch: eSpeak NG base pitch 0–100 (50 = the voice's own); ignored by gTTS.

    The audio comes at the engine's rate (22,050 Hz for eSpeak NG, 24,000 Hz for gTTS);
    ``pipeline.audio.resample`` brings it to 16 kHz without moving the word times.
    """
    if backend not in BACKENDS:
        raise TTSError(f"unknown TTS backend {backend!r}; choose one of {BACKENDS}")
    if not text or not _WORD_RE.search(text):
        raise TTSError(f"nothing to speak in {text!r}: the text holds no words")
    voice = voice or DEFAULT_VOICE[backend]
    if backend == "espeak":
        return _espeak().speak(text, voice, int(rate_wpm), pitch)
    return _gtts_speak(text, voice, int(rate_wpm))


def phrase_span(words: list[dict], phrase: str) -> tuple[float, float]:
    """[start, end] seconds of the consecutive words that spell ``phrase`` (case and punctuation
    ignored), e.g. the object name inside "a picture of an acoustic guitar"."""
    target = [w.lower() for w in _WORD_RE.findall(phrase)]
    spoken = [_normalize_word(w["word"]) for w in words]
    if not target:
        raise TTSError(f"phrase {phrase!r} holds no words")
    for i in range(len(spoken) - len(target) + 1):
        if spoken[i : i + len(target)] == target:
            return float(words[i]["start"]), float(words[i + len(target) - 1]["end"])
    raise TTSError(f"phrase {phrase!r} is not among the spoken words {[w['word'] for w in words]}")


def espeak_voices() -> list[str]:
    """Variant names usable after ``+`` in an eSpeak NG voice (``"en-us+" + name``)."""
    import espeakng_loader

    variants = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
    return sorted(os.listdir(variants)) if os.path.isdir(variants) else []


# ---------------------------------------------------------------------------------------------
# word timing helpers (shared by both backends)


def _normalize_word(word: str) -> str:
    return "".join(_WORD_RE.findall(word.lower()))


def _word_spans(text: str) -> list[tuple[int, int, str]]:
    """(start char, end char, word) for every word of the text."""
    return [(m.start(), m.end(), m.group()) for m in _WORD_RE.finditer(text)]


def _voiced(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per-window flag: is this 10 ms window louder than the silence threshold?"""
    win = max(1, int(sample_rate * _SILENCE_WINDOW_S))
    n = int(np.ceil(audio.shape[0] / win))
    padded = np.zeros(n * win, dtype=np.float64)
    padded[: audio.shape[0]] = audio
    rms = np.sqrt((padded.reshape(n, win) ** 2).mean(axis=1))
    peak = rms.max() if n else 0.0
    if peak <= 0:
        return np.zeros(n, dtype=bool)
    return 20 * np.log10(np.maximum(rms, 1e-12) / peak) > _SILENCE_DB


def _trim_end(start: float, end: float, voiced: np.ndarray) -> float:
    """Move ``end`` back to the last voiced 10 ms window after ``start`` (a word ends where its
    sound ends, not where the pause before the next word ends)."""
    lo = int(start / _SILENCE_WINDOW_S)
    hi = int(np.ceil(end / _SILENCE_WINDOW_S))
    idx = np.flatnonzero(voiced[lo:hi])
    if idx.size == 0:
        return float(end)
    return float(max(start, min(end, (lo + idx[-1] + 1) * _SILENCE_WINDOW_S)))


def _finish_words(
    spans: list[tuple[int, int, str]], starts: list[float | None], audio: np.ndarray, sample_rate: int
) -> tuple[list[dict], np.ndarray]:
    """Fill missing word starts, set ends, trim trailing silence off the clip and the words.

    A word with no start of its own (the engine spoke it together with its neighbour, as eSpeak NG
    does with "of an") shares the time from the previous timed word to the next one with that
    word, in proportion to letter counts.
    """
    voiced = _voiced(audio, sample_rate)
    total = audio.shape[0] / sample_rate
    if voiced.any():
        last = float((np.flatnonzero(voiced)[-1] + 1) * _SILENCE_WINDOW_S)
        total = min(total, last + _TAIL_KEEP_S)
        audio = audio[: int(round(total * sample_rate))]
    starts = list(starts)
    if starts and starts[0] is None:
        starts[0] = 0.0
    i = 0
    while i < len(starts):
        if starts[i] is not None:
            i += 1
            continue
        j = i
        while j < len(starts) and starts[j] is None:
            j += 1
        group = range(i - 1, j)  # the timed word before the gap plus the untimed ones
        t0 = starts[i - 1]
        t1 = starts[j] if j < len(starts) else total
        letters = np.array([len(spans[k][2]) for k in group], dtype=np.float64)
        cum = np.concatenate([[0.0], np.cumsum(letters) / letters.sum()])
        for n, k in enumerate(group):
            starts[k] = t0 + (t1 - t0) * cum[n]
        i = j
    words = []
    for k, (_, _, word) in enumerate(spans):
        start = min(float(starts[k]), total)
        nxt = starts[k + 1] if k + 1 < len(spans) else total
        end = _trim_end(start, min(float(nxt), total), voiced)
        words.append({"word": word, "start": round(start, 4), "end": round(end, 4)})
    return words, audio


# ---------------------------------------------------------------------------------------------
# eSpeak NG through ctypes

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_CHARS_UTF8 = 1
_EE_OK = 0


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT in speak_lib.h
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the input
        ("length", ctypes.c_int),  # characters
        ("audio_position", ctypes.c_int),  # milliseconds
        ("sample", ctypes.c_int),  # sample index
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class _Espeak:
    """The per-process eSpeak NG engine.

    eSpeak NG keeps state across utterances that no API call resets (a pitch-flutter table index in
    its wave generator advances with every 64 samples spoken), so the same text would come out
    slightly different depending on what the process said before. To make synthesis a pure
    function of its arguments, each utterance unloads the library and loads it afresh (a few
    milliseconds). That works as long as nothing else in the process holds the same library open.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - a dependency of the project
            raise TTSError("the espeak backend needs the espeakng-loader package: pip install espeakng-loader") from exc
        self.lib_path = espeakng_loader.get_library_path()
        self.data_path = espeakng_loader.get_data_path()
        self.lib = None
        self.sample_rate = 0
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int]] = []
        self._callback = _CALLBACK(self._on_audio)  # kept referenced: the library calls it later
        self.lock = threading.Lock()  # the library is global state: one utterance at a time

    def _load(self) -> None:
        try:
            lib = ctypes.CDLL(self.lib_path)
        except OSError as exc:
            raise TTSError(f"cannot load {self.lib_path}: {exc}; reinstall espeakng-loader") from exc
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0)
        if rate <= 0:
            raise TTSError(f"espeak_Initialize failed (returned {rate}) with data at {self.data_path}")
        lib.espeak_SetSynthCallback(self._callback)
        self.lib, self.sample_rate = lib, rate

    def _unload(self) -> None:
        if self.lib is not None:
            self.lib.espeak_Terminate()
            _ctypes.dlclose(self.lib._handle)
            self.lib = None

    def _on_audio(self, wav, n_samples, events) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_WORD:
                self._events.append((ev.text_position, ev.length, ev.sample))
            i += 1
        return 0  # 0 = go on synthesizing

    def speak(self, text: str, voice: str, rate_wpm: int, pitch: int | None) -> Speech:
        if not MIN_RATE_WPM <= rate_wpm <= MAX_RATE_WPM:
            raise TTSError(f"rate_wpm {rate_wpm} outside eSpeak NG's range [{MIN_RATE_WPM}, {MAX_RATE_WPM}]")
        if pitch is not None and not 0 <= pitch <= 100:
            raise TTSError(f"pitch {pitch} outside [0, 100]")
        data = text.encode("utf-8")
        with self.lock:
            self._unload()
            self._load()
            if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise TTSError(
                    f"eSpeak NG has no voice {voice!r}; use a language such as 'en-us' or 'en', "
                    f"optionally with a variant from espeak_voices(), e.g. 'en-us+m3'"
                )
            # the voice brings its own defaults: set rate and pitch after choosing it
            self.lib.espeak_SetParameter(_ESPEAK_RATE, rate_wpm, 0)
            self.lib.espeak_SetParameter(_ESPEAK_PITCH, 50 if pitch is None else pitch, 0)
            self._chunks, self._events = [], []
            err = self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
            chunks, events, sample_rate = self._chunks, self._events, self.sample_rate
            self._chunks, self._events = [], []
        if err != _EE_OK:
            raise TTSError(f"espeak_Synth failed with code {err} for text {text!r}")
        if not chunks:
            raise TTSError(f"eSpeak NG produced no audio for {text!r}")
        audio = np.concatenate(chunks).astype(np.float32) / 32768.0
        spans = _word_spans(text)
        # text_position counts characters from 1 in the decoded text
        starts: list[float | None] = [None] * len(spans)
        for pos, _length, sample in events:
            k = next((k for k, (s, e, _) in enumerate(spans) if s <= pos - 1 < e), None)
            if k is not None and starts[k] is None:
                starts[k] = sample / sample_rate
        words, audio = _finish_words(spans, starts, audio, sample_rate)
        return Speech(audio, sample_rate, words, text, "espeak", voice, rate_wpm, "engine")


_ENGINE: _Espeak | None = None
_ENGINE_INIT = threading.Lock()


def _espeak() -> _Espeak:
    global _ENGINE
    if _ENGINE is None:
        with _ENGINE_INIT:
            if _ENGINE is None:
                _ENGINE = _Espeak()
    return _ENGINE


def _after_fork_in_child() -> None:
    # A lock copied while another thread held it would never open in the child.
    global _ENGINE_INIT
    _ENGINE_INIT = threading.Lock()
    if _ENGINE is not None:
        _ENGINE.lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------------------------
# gTTS


def _gtts_speak(text: str, voice: str, rate_wpm: int) -> Speech:
    try:
        from gtts import gTTS
    except ImportError as exc:
        raise TTSError("the gtts backend needs the gTTS package: pip install 'seeing-speech-and-sound[gtts]'") from exc
    buf = io.BytesIO()
    try:
        gTTS(text=text, lang="en", tld=voice, slow=rate_wpm < 120).write_to_fp(buf)
    except Exception as exc:
        raise TTSError(f"gTTS failed for {text!r} (it needs internet access): {exc}") from exc
    audio, sample_rate = _decode_mp3(buf.getvalue())
    words, audio = _estimate_words(text, audio, sample_rate)
    return Speech(audio, sample_rate, words, text, "gtts", voice, rate_wpm, "estimated")


def _decode_mp3(data: bytes) -> tuple[np.ndarray, int]:
    """MP3 bytes -> float32 mono and its rate, through the project's ffmpeg."""
    from pipeline import ffmpeg

    with tempfile.NamedTemporaryFile(suffix=".mp3") as f:
        f.write(data)
        f.flush()
        try:
            audio, sample_rate = ffmpeg.decode_audio(f.name)
        except ffmpeg.FFmpegError as exc:
            raise TTSError(f"ffmpeg could not decode the synthesized MP3: {exc}") from exc
    return audio.mean(axis=0).astype(np.float32), sample_rate


def _estimate_words(text: str, audio: np.ndarray, sample_rate: int) -> tuple[list[dict], np.ndarray]:
    """Word times without engine events: the voiced stretch of the clip, shared by letter count."""
    spans = _word_spans(text)
    voiced = _voiced(audio, sample_rate)
    if voiced.any():
        first = float(np.flatnonzero(voiced)[0] * _SILENCE_WINDOW_S)
        last = float((np.flatnonzero(voiced)[-1] + 1) * _SILENCE_WINDOW_S)
    else:
        first, last = 0.0, audio.shape[0] / sample_rate
    letters = np.array([len(w) for _, _, w in spans], dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(letters) / letters.sum()])
    starts: list[float | None] = [first + (last - first) * c for c in cum[:-1]]
    return _finish_words(spans, starts, audio, sample_rate)


# ---------------------------------------------------------------------------------------------
# the spoken prompt of a class name


def article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def prompt_text(phrase: str, template: str) -> str:
    """``template`` with ``{phrase}`` and optionally ``{article}`` ("a"/"an") filled in."""
    if "{phrase}" not in template:
        raise ValueError(f"the prompt template must contain {{phrase}}, got {template!r}")
    return template.format(phrase=phrase, article=article(phrase))
