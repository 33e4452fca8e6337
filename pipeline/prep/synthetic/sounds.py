"""Sounds of the generated world: one synthesized timbre family per class.

Each family has its own spectral and temporal signature (a sweep, a pulse rhythm, a noise band,
a harmonic buzz, ...), so a small audio encoder separates them easily. Every sample varies its
family: pitch (about a semitone either way), onset, length, loudness and the family's own
random details (strike times, blip pitches).
"""

from __future__ import annotations

import numpy as np

from pipeline.format import SAMPLE_RATE
from pipeline.prep.synthetic.world import ObjectClass, WorldConfig

SR = SAMPLE_RATE  # sounds are made at the shard rate: nothing to resample


def _phase(freq: np.ndarray | float, n: int) -> np.ndarray:
    """Running phase of a (possibly time-varying) frequency in Hz."""
    f = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    return 2 * np.pi * np.cumsum(f) / SR


def _band_noise(n: int, lo: float, hi: float, r: np.random.Generator) -> np.ndarray:
    """White noise with everything outside [lo, hi] Hz removed (FFT mask)."""
    spec = np.fft.rfft(r.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    spec[(freqs < lo) | (freqs > hi)] = 0
    return np.fft.irfft(spec, n)


def _events(n: int, period: tuple[float, float], r: np.random.Generator) -> list[int]:
    """Sample positions of events spaced by a random period drawn from ``period`` seconds."""
    out, t = [], 0.0
    while int(t * SR) < n:
        out.append(int(t * SR))
        t += r.uniform(*period)
    return out


def _twinkle(n, f0, r):
    # short bright notes alternating between two pitches a fifth apart
    out = np.zeros(n)
    step = int(r.uniform(0.12, 0.16) * SR)
    for k, start in enumerate(range(0, n, step)):
        m = min(step, n - start)
        t = np.arange(m) / SR
        f = f0 * (1.5 if k % 2 else 1.0)
        out[start : start + m] = (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t)) * np.exp(-t * 18)
    return out


def _heartbeat(n, rate, r):
    # lub-dub: two low thumps per beat
    out = np.zeros(n)
    thump_len = int(0.12 * SR)
    t = np.arange(thump_len) / SR
    for beat in _events(n, (0.9 / rate, 1.1 / rate), r):
        for offset, f, amp in ((0.0, 95.0, 1.0), (0.28, 120.0, 0.7)):
            s = beat + int(offset * SR)
            m = min(thump_len, n - s)
            if m > 0:
                thump = np.sin(2 * np.pi * f * t) + 0.4 * np.sin(2 * np.pi * 2 * f * t)
                out[s : s + m] += amp * (thump * np.exp(-t * 30))[:m]
    return out


def _hum(n, f0, r):
    # soft steady tone with a slow tremolo
    t = np.arange(n) / SR
    tone = np.sin(2 * np.pi * f0 * t) + 0.25 * np.sin(4 * np.pi * f0 * t)
    return tone * (1 - 0.35 * (0.5 + 0.5 * np.sin(2 * np.pi * r.uniform(1.2, 2.0) * t)))


def _buzz(n, f0, r):
    # sawtooth-like: harmonics up to 5 kHz falling as 1/k, read from a one-period wavetable
    # (summing the harmonics sample by sample would cost ten times more)
    size = 4096
    ks = np.arange(1, int(5000 // f0) + 1)
    table = (np.sin(np.outer(2 * np.pi * np.arange(size) / size, ks)) / ks).sum(axis=1)
    ph = _phase(f0 * (1 + 0.004 * np.sin(2 * np.pi * 5 * np.arange(n) / SR)), n)
    pos = (ph / (2 * np.pi) * size) % size
    i0 = pos.astype(np.int64)
    frac = pos - i0
    return table[i0] * (1 - frac) + table[(i0 + 1) % size] * frac


def _bell(n, f0, r):
    # inharmonic partials with exponential decay, struck again and again
    out = np.zeros(n)
    partials = ((1.0, 1.0, 3.0), (2.0, 0.5, 5.0), (2.76, 0.4, 6.0), (5.4, 0.25, 9.0))
    for s in _events(n, (0.5, 0.8), r):
        t = np.arange(n - s) / SR
        out[s:] += sum(a * np.sin(2 * np.pi * f0 * p * t) * np.exp(-d * t) for p, a, d in partials)
    return out


def _clicks(n, rate, r):
    # a regular train of short sharp clicks
    out = np.zeros(n)
    click_len = int(0.004 * SR)
    t = np.arange(click_len) / SR
    click = np.sin(2 * np.pi * 2500 * t) * np.exp(-t * 1500)
    period = 1.0 / rate
    for s in _events(n, (0.97 * period, 1.03 * period), r):
        m = min(click_len, n - s)
        out[s : s + m] += click[:m]
    return out


def _chirp(n, f0, r):
    # rising sweeps, f0 -> 6 f0, 0.4 s each with a short gap
    out = np.zeros(n)
    sweep = int(0.4 * SR)
    for s in range(0, n, sweep + int(0.1 * SR)):
        m = min(sweep, n - s)
        f = f0 * 6 ** (np.arange(m) / sweep)
        out[s : s + m] = np.sin(_phase(f, m)) * np.hanning(sweep)[:m] ** 0.3
    return out


def _siren(n, f0, r):
    # two square-ish tones alternating every 0.3 s
    t = np.arange(n) / SR
    f = np.where((t // 0.3) % 2 == 0, f0, f0 * 1.33)
    ph = _phase(f, n)
    return np.sin(ph) + np.sin(3 * ph) / 3 + np.sin(5 * ph) / 5


def _hiss(n, fc, r):
    # steady high noise band with a slight flutter
    t = np.arange(n) / SR
    return _band_noise(n, fc - 1500, fc + 1500, r) * (1 + 0.15 * np.sin(2 * np.pi * 3 * t))


def _bubbles(n, f0, r):
    # short upward blips at random times and pitches
    out = np.zeros(n)
    blip = int(0.05 * SR)
    for s in _events(n, (0.06, 0.18), r):
        m = min(blip, n - s)
        start_f = f0 * r.uniform(0.8, 1.6)
        f = start_f * (1 + 1.5 * np.arange(m) / blip)
        out[s : s + m] += np.sin(_phase(f, m)) * np.exp(-np.arange(m) / SR * 40)
    return out


TIMBRES = {
    "twinkle": _twinkle,
    "heartbeat": _heartbeat,
    "hum": _hum,
    "buzz": _buzz,
    "bell": _bell,
    "clicks": _clicks,
    "chirp": _chirp,
    "siren": _siren,
    "hiss": _hiss,
    "bubbles": _bubbles,
}
_FADE_S = 0.01


def render_sound(cls: ObjectClass, cfg: WorldConfig, r: np.random.Generator) -> np.ndarray:
    """float32 mono at 16 kHz: a silent onset, then the class's timbre for 1.5-3 s (config)."""
    onset = int(r.uniform(*cfg.onset_seconds) * SR)
    n = int(r.uniform(*cfg.sound_seconds) * SR)
    pitch = cls.pitch_hz * 2 ** (r.uniform(-1, 1) / 12)
    body = TIMBRES[cls.timbre](n, pitch, r)
    fade = np.ones(n)
    k = int(_FADE_S * SR)
    fade[:k] = np.linspace(0, 1, k)
    fade[-k:] = np.linspace(1, 0, k)
    body = body * fade
    peak = np.abs(body).max()
    gain = 10 ** (r.uniform(-12, -1) / 20)
    body = body / peak * gain if peak > 0 else body
    return np.concatenate([np.zeros(onset), body]).astype(np.float32)
