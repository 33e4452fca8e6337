"""Music of the generated world, its third audio type: one instrument family and one melody per class.

Each class plays its own melodic contour (a rising arpeggio, a falling scale, octave leaps, a
pedal-tone riff, ...) on its own instrument family, synthesized here from sines: additive
partials (music box, marimba, organ, plucked string, clarinet, flute, bowed strings, vibraphone)
or two-operator FM (bass, brass). Nothing is downloaded or sampled; every clip is a function of
its random generator.

Every clip varies its melody within the family, like the world's sounds: the key (up to two
semitones either way), the tempo (the melody fills the clip's drawn length), each note's
loudness and a few milliseconds of its timing, the instrument's brightness, the onset and the
peak level. The contour and the instrument stay the class's, so a class is heard in both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.format import SAMPLE_RATE
from pipeline.prep.synthetic.world import ObjectClass, WorldConfig

SR = SAMPLE_RATE  # music is made at the shard rate: nothing to resample
_FADE_S = 0.01


@dataclass(frozen=True)
class Melody:
    """A class's melody: which instrument plays it, in which register, and its contour."""

    instrument: str  # key of INSTRUMENTS
    tonic_midi: int  # MIDI note of step 0 (before the per-clip transposition)
    steps: tuple[int, ...]  # semitones above the tonic, one per note
    beats: tuple[float, ...]  # each note's length in beats (the beat is drawn per clip)

    def __post_init__(self) -> None:
        if len(self.steps) != len(self.beats):
            raise ValueError(f"a melody needs one length per note: {len(self.steps)} steps, {len(self.beats)} beats")


# One contour shape and one instrument per class; registers spread from 65 Hz (bass) to 1 kHz.
MELODIES: dict[str, Melody] = {
    "star": Melody("music_box", 79, (0, 4, 7, 12, 16, 19), (1, 1, 1, 1, 1, 2)),  # rising arpeggio
    "heart": Melody("bass", 36, (0, 0, 7, 0, 0, 5, 0, 0), (1, 0.5, 0.5, 1, 0.5, 0.5, 1, 1)),  # pedal-tone riff
    "moon": Melody("flute", 72, (12, 11, 9, 7, 5, 4, 2, 0), (1, 1, 1, 1, 1, 1, 1, 2)),  # falling scale
    "cross": Melody("brass", 58, (0, 5, 7, 12, 12), (0.5, 0.5, 0.5, 1.5, 2)),  # fanfare
    "ring": Melody("marimba", 67, (0, 4, 2, 5, 4, 7, 5, 9), (1,) * 8),  # zigzag upwards
    "square": Melody("organ", 60, (0, 2, 4, 5, 7, 5, 4, 2, 0), (1, 1, 1, 1, 2, 1, 1, 1, 2)),  # arch
    "triangle": Melody("guitar", 52, (19, 16, 12, 7, 4, 0), (1, 1, 1, 1, 1, 2)),  # falling arpeggio
    "arrow": Melody("clarinet", 62, (0, 12, 2, 14, 4, 16), (1,) * 6),  # octave leaps
    "diamond": Melody("strings", 55, (0, 2, 4, 7), (2, 2, 2, 3)),  # slow rise in long notes
    "flower": Melody("vibraphone", 77, (7, 7, 7, 4, 7, 7, 7, 2), (0.5, 0.5, 0.5, 1.5, 0.5, 0.5, 0.5, 1.5)),  # call
}


def midi_hz(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


# ---------------------------------------------------------------------------------------------
# instruments: (frequency in Hz, samples, brightness draw, generator) -> one note, its envelope included


def _time(m: int) -> np.ndarray:
    return np.arange(m) / SR


def _ramp(m: int, attack_s: float, release_s: float) -> np.ndarray:
    """Linear attack and release (no click at either end), flat between."""
    env = np.ones(m)
    a, rel = min(int(attack_s * SR), m // 2), min(int(release_s * SR), m // 2)
    if a:
        env[:a] = np.linspace(0.0, 1.0, a)
    if rel:
        env[m - rel :] = np.linspace(1.0, 0.0, rel)
    return env


def _partials(freq: float, m: int, ratios, amps, decays) -> np.ndarray:
    """Sum of sines at ``freq * ratio``, each with its own exponential decay (1/s); partials above
    7.5 kHz are left out (the clip is sampled at 16 kHz)."""
    t = _time(m)[:, None]
    ratios, amps, decays = (np.asarray(x, dtype=np.float64) for x in (ratios, amps, decays))
    keep = freq * ratios < 7500
    waves = np.sin(2 * np.pi * freq * ratios[keep] * t) * np.exp(-decays[keep] * t)
    return waves @ amps[keep]


def _vibrato_phase(freq: float, m: int, rate_hz: float, depth: float) -> np.ndarray:
    """Running phase of a tone with a sinusoidal vibrato of ``depth`` (relative frequency)."""
    f = freq * (1 + depth * np.sin(2 * np.pi * rate_hz * _time(m)))
    return 2 * np.pi * np.cumsum(f) / SR


def _harmonics(phase: np.ndarray, ks, amps, freq: float) -> np.ndarray:
    ks, amps = np.asarray(ks, dtype=np.float64), np.asarray(amps, dtype=np.float64)
    keep = freq * ks < 7500
    return np.sin(phase[:, None] * ks[keep]) @ amps[keep]


def _music_box(f, m, bright, r):
    # a plucked steel tine: a strong fundamental, an inharmonic high partial, fast decay
    tone = _partials(f, m, (1.0, 2.0, 5.4), (1.0, 0.15 * bright, 0.3 * bright), (5.0, 9.0, 16.0))
    return tone * _ramp(m, 0.002, 0.01)


def _bass(f, m, bright, r):
    # two-operator FM, ratio 1: the index falls after the pluck, so the note darkens as it fades
    t = _time(m)
    index = 2.5 * bright * np.exp(-6.0 * t) + 0.4
    return np.sin(2 * np.pi * f * t + index * np.sin(2 * np.pi * f * t)) * np.exp(-2.5 * t) * _ramp(m, 0.005, 0.03)


def _flute(f, m, bright, r):
    # near-sine with a slow attack, a gentle vibrato and a little breath noise
    phase = _vibrato_phase(f, m, 5.0, 0.006)
    tone = _harmonics(phase, (1, 2, 3), (1.0, 0.2 * bright, 0.06 * bright), f)
    spec = np.fft.rfft(r.standard_normal(m))
    freqs = np.fft.rfftfreq(m, 1 / SR)
    spec[(freqs < 2000) | (freqs > 5000)] = 0
    breath = np.fft.irfft(spec, m)
    breath *= 0.05 / (np.abs(breath).max() + 1e-9)
    return (tone + breath) * _ramp(m, 0.07, 0.04)


def _brass(f, m, bright, r):
    # FM with the index following the loudness: louder is brighter, as in a horn
    t = _time(m)
    env = _ramp(m, 0.04, 0.05)
    index = 3.0 * bright * env
    return np.sin(2 * np.pi * f * t + index * np.sin(2 * np.pi * f * t)) * env


def _marimba(f, m, bright, r):
    # a struck wooden bar: partials near 1 : 3.9 : 9.2, the higher ones dying first
    return _partials(f, m, (1.0, 3.93, 9.2), (1.0, 0.35 * bright, 0.12 * bright), (7.0, 20.0, 45.0)) * _ramp(
        m, 0.002, 0.01
    )


def _organ(f, m, bright, r):
    # drawbars: steady harmonics 1, 2, 3, 4, 6, 8 with no decay
    amps = np.array([1.0, 0.8, 0.6, 0.45, 0.3, 0.25]) * np.array([1, 1, bright, bright, bright, bright])
    return _harmonics(2 * np.pi * f * _time(m), (1, 2, 3, 4, 6, 8), amps, f) * _ramp(m, 0.01, 0.03)


def _guitar(f, m, bright, r):
    # a plucked string: harmonic k weighted by the pluck position (a fifth of the length), decaying
    # faster the higher it is
    ks = np.arange(1, 31)
    amps = np.abs(np.sin(np.pi * ks * 0.2)) / ks * np.where(ks > 3, bright, 1.0)
    return _partials(f, m, ks, amps, 2.0 + 1.5 * ks) * _ramp(m, 0.002, 0.02)


def _clarinet(f, m, bright, r):
    # a closed pipe: odd harmonics only, falling as 1/k
    phase = _vibrato_phase(f, m, 4.5, 0.003)
    ks = np.arange(1, 16, 2)
    return _harmonics(phase, ks, np.where(ks > 1, bright, 1.0) / ks, f) * _ramp(m, 0.03, 0.04)


def _strings(f, m, bright, r):
    # bowed: a sawtooth's harmonics (1/k) with a wide vibrato and a slow bow attack
    phase = _vibrato_phase(f, m, 6.0, 0.01)
    ks = np.arange(1, 41)
    return _harmonics(phase, ks, np.where(ks > 1, bright, 1.0) / ks, f) * _ramp(m, 0.12, 0.06)


def _vibraphone(f, m, bright, r):
    # a struck metal bar (partials 1 : 4) ringing long, under the motor's tremolo
    t = _time(m)
    tone = _partials(f, m, (1.0, 4.0), (1.0, 0.3 * bright), (1.5, 6.0))
    return tone * (1 - 0.35 * (0.5 + 0.5 * np.sin(2 * np.pi * 5.5 * t))) * _ramp(m, 0.002, 0.02)


INSTRUMENTS: dict[str, Callable[[float, int, float, np.random.Generator], np.ndarray]] = {
    "music_box": _music_box,
    "bass": _bass,
    "flute": _flute,
    "brass": _brass,
    "marimba": _marimba,
    "organ": _organ,
    "guitar": _guitar,
    "clarinet": _clarinet,
    "strings": _strings,
    "vibraphone": _vibraphone,
}


# ---------------------------------------------------------------------------------------------
# a clip


@dataclass
class MusicClip:
    audio: np.ndarray  # float32 mono at 16 kHz: a silent onset, then the melody
    instrument: str
    notes: list[dict]  # [{"pitch" (MIDI), "start", "end"}] seconds from the start of ``audio``


def melody_of(cls: ObjectClass) -> Melody:
    try:
        return MELODIES[cls.name]
    except KeyError:
        raise ValueError(f"class {cls.name!r} has no melody; the world's melodies are {', '.join(MELODIES)}") from None


def render_music(cls: ObjectClass, cfg: WorldConfig, r: np.random.Generator) -> MusicClip:
    """The class's melody on its instrument: a silent onset, then 1.5-3 s (``cfg.sound_seconds``)
    of music, the same bounds as the world's sounds (so a preset's clip cut keeps all of it)."""
    melody = melody_of(cls)
    onset = int(r.uniform(*cfg.onset_seconds) * SR)
    n = int(r.uniform(*cfg.sound_seconds) * SR)
    transpose = int(r.integers(-2, 3))
    bright = float(r.uniform(0.7, 1.3))
    # note boundaries: the beats scaled to fill n samples, each inner boundary moved by up to 10 ms
    bounds = np.concatenate([[0.0], np.cumsum(melody.beats)]) / sum(melody.beats) * n
    bounds[1:-1] += r.uniform(-0.01, 0.01, len(bounds) - 2) * SR
    bounds = np.round(bounds).astype(np.int64)
    velocities = r.uniform(0.75, 1.0, len(melody.steps))
    body = np.zeros(n)
    notes = []
    play = INSTRUMENTS[melody.instrument]
    for step, lo, hi, velocity in zip(melody.steps, bounds[:-1], bounds[1:], velocities):
        pitch = melody.tonic_midi + transpose + step
        body[lo:hi] += velocity * play(midi_hz(pitch), int(hi - lo), bright, r)
        notes.append({"pitch": int(pitch), "start": round((onset + lo) / SR, 4), "end": round((onset + hi) / SR, 4)})
    fade = np.ones(n)
    k = int(_FADE_S * SR)
    fade[:k] = np.linspace(0, 1, k)
    fade[-k:] = np.linspace(1, 0, k)
    body *= fade
    peak = np.abs(body).max()
    gain = 10 ** (r.uniform(-12, -1) / 20)
    body = body / peak * gain if peak > 0 else body
    audio = np.concatenate([np.zeros(onset), body]).astype(np.float32)
    return MusicClip(audio, melody.instrument, notes)
