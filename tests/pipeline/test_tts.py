"""pipeline.tts: offline eSpeak NG synthesis, word timings, determinism, workers, gTTS decoding."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import subprocess
import sys
import types

import numpy as np
import pytest
import soundfile as sf

from pipeline.tts import ESPEAK_ENGLISH_VOICES, TTSError, phrase_span, synthesize


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def test_espeak_returns_audio_and_one_timed_entry_per_word():
    speech = synthesize("a picture of an arrow", voice="en-us", rate_wpm=160)
    assert speech.sample_rate == 22050
    assert speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    assert 0.5 < speech.duration < 4.0
    assert 0 < np.abs(speech.audio).max() <= 1.0
    assert [w["word"] for w in speech.words] == ["a", "picture", "of", "an", "arrow"]
    assert speech.timing == "engine"
    prev_end = 0.0
    for w in speech.words:
        assert prev_end - 1e-6 <= w["start"] <= w["end"] <= speech.duration + 1e-6
        prev_end = w["end"]
    # the last word ends where the sound ends: the clip keeps only a short silent tail
    assert speech.duration - speech.words[-1]["end"] <= 0.06


def test_word_times_mark_where_the_words_are_spoken():
    """Two sentences that differ only in the last word must sound the same until that word starts
    and differ after it: the engine's word start sits at the point where the waveforms part."""
    a = synthesize("a picture of a star", "en-us", 150)
    b = synthesize("a picture of a moon", "en-us", 150)
    start = a.words[-1]["start"]
    assert abs(start - b.words[-1]["start"]) < 0.03
    sr = a.sample_rate
    cut = int((start - 0.05) * sr)
    n = min(len(a.audio), len(b.audio))
    before = _rms(a.audio[:cut] - b.audio[:cut]) / _rms(a.audio[:cut])
    after = _rms(a.audio[cut:n] - b.audio[cut:n]) / _rms(a.audio[cut:n])
    assert before < 0.1 < after
    # the named object is loud inside its span and the span is long enough to hold a word
    s, e = phrase_span(a.words, "star")
    assert 0.15 < e - s < 1.0
    assert _rms(a.audio[int(s * sr) : int(e * sr)]) > 0.3 * _rms(a.audio)


def test_rate_voice_and_pitch_change_the_speech():
    slow = synthesize("a picture of a triangle", "en-us", 110)
    fast = synthesize("a picture of a triangle", "en-us", 260)
    assert slow.duration > 1.5 * fast.duration
    voices = {v: synthesize("a picture of a triangle", v, 160).audio for v in ESPEAK_ENGLISH_VOICES[:4]}
    lengths = {len(a) for a in voices.values()}
    assert len({a.tobytes() for a in voices.values()}) == len(voices), "voices must sound different"
    assert len(lengths) >= 2
    low = synthesize("a picture of a triangle", "en-us", 160, pitch=10)
    high = synthesize("a picture of a triangle", "en-us", 160, pitch=90)
    assert low.audio.tobytes() != high.audio.tobytes()


def test_same_arguments_give_the_same_samples_whatever_was_spoken_before():
    first = synthesize("look at the heart", "en-us+f1", 150)
    for text, voice, rate in [("a long sentence to move the engine state along", "en+m1", 200), ("moon", "en", 90)]:
        synthesize(text, voice, rate)
    again = synthesize("look at the heart", "en-us+f1", 150)
    assert first.audio.tobytes() == again.audio.tobytes()
    assert first.words == again.words


def _speak_in_worker(args):
    text, voice, rate = args
    speech = synthesize(text, voice, rate)
    return speech.audio.tobytes(), speech.words


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_workers_match_the_parent(method):
    jobs = [("a picture of a star", "en-us", 150), ("this is a ring", "en+m1", 180), ("I see a cross", "en+f4", 130)]
    expected = [_speak_in_worker(j) for j in jobs]
    with cf.ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as pool:
        got = list(pool.map(_speak_in_worker, jobs * 2))
    assert got == expected * 2


def test_threads_share_the_engine_safely():
    jobs = [("a picture of a star", v, 150) for v in ESPEAK_ENGLISH_VOICES[:4]]
    expected = [_speak_in_worker(j) for j in jobs]
    with cf.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(_speak_in_worker, jobs * 3))
    assert got == expected * 3


def test_phrase_span_finds_multiword_names_and_reports_missing_ones():
    speech = synthesize("this is an acoustic guitar", "en", 160)
    s, e = phrase_span(speech.words, "Acoustic Guitar")
    assert s == speech.words[3]["start"] and e == speech.words[4]["end"]
    with pytest.raises(TTSError, match="not among the spoken words"):
        phrase_span(speech.words, "violin")


def test_bad_requests_fail_with_a_clear_message():
    with pytest.raises(TTSError, match="no voice 'xx-nonexistent'"):
        synthesize("a star", voice="xx-nonexistent")
    with pytest.raises(TTSError, match="rate_wpm 20"):
        synthesize("a star", rate_wpm=20)
    with pytest.raises(TTSError, match="no words"):
        synthesize("  ...  ")
    with pytest.raises(TTSError, match="unknown TTS backend"):
        synthesize("a star", backend="festival")


def test_gtts_backend_decodes_mp3_and_estimates_word_times(monkeypatch, tmp_path):
    """The service needs internet; stand in for it with a real MP3 (eSpeak NG speech encoded by
    ffmpeg) so the decoding and timing-estimation path runs for real."""
    from imageio_ffmpeg import get_ffmpeg_exe

    source = synthesize("a picture of a diamond", "en-us", 150)
    wav = tmp_path / "s.wav"
    silence = np.zeros(source.sample_rate // 10, np.float32)
    sf.write(wav, np.concatenate([silence, source.audio]), source.sample_rate)
    mp3 = subprocess.run(
        [get_ffmpeg_exe(), "-v", "error", "-i", str(wav), "-f", "mp3", "-ar", "24000", "pipe:1"],
        capture_output=True,
        check=True,
    ).stdout
    calls = []

    class FakeGTTS:
        def __init__(self, text, lang, tld, slow):
            calls.append((text, lang, tld, slow))

        def write_to_fp(self, fp):
            fp.write(mp3)

    monkeypatch.setitem(sys.modules, "gtts", types.SimpleNamespace(gTTS=FakeGTTS))
    speech = synthesize("a picture of a diamond", voice="co.uk", rate_wpm=100, backend="gtts")
    assert calls == [("a picture of a diamond", "en", "co.uk", True)]
    assert speech.backend == "gtts" and speech.timing == "estimated" and speech.sample_rate == 24000
    assert abs(speech.duration - (0.1 + source.duration)) < 0.1
    assert [w["word"] for w in speech.words] == ["a", "picture", "of", "a", "diamond"]
    # estimated times start at the voiced part (after the 0.1 s of silence, plus up to ~50 ms of
    # MP3 encoder delay) and cover the speech
    assert 0.08 <= speech.words[0]["start"] <= 0.18
    s, e = phrase_span(speech.words, "diamond")
    assert abs(e - (0.1 + source.words[-1]["end"])) < 0.12
    assert s < e


def test_gtts_backend_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gtts", None)
    with pytest.raises(TTSError, match="pip install"):
        synthesize("a star", backend="gtts")
