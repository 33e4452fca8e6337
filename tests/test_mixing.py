import numpy as np
import pytest

from pipeline.mixing import (
    MaskConfig, MixConfig, OffscreenMixer, SpliceConfig, active_rms, mask_span, mix_pair, splice_negative,
)

SR = 16_000


def _speechlike(rng, n, valid):
    """Bursts of harmonic tone with pauses, then padding: what active-RMS must see through."""
    t = np.arange(n) / SR
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    x += 0.01 * rng.standard_normal(n)
    x[valid:] = 0
    return x.astype(np.float32)


def _noise(rng, n, valid, scale=0.5):
    x = (scale * rng.standard_normal(n)).astype(np.float32)
    x[valid:] = 0
    return x


@pytest.mark.parametrize("seed", range(20))
def test_stems_sum_snr_and_peak(seed):
    rng = np.random.default_rng(seed)
    n = 3 * SR
    sp_valid, so_valid = int(rng.integers(SR // 2, n)), int(rng.integers(SR // 2, n))
    speech, sound = _speechlike(rng, n, sp_valid), _noise(rng, n, so_valid, scale=float(rng.uniform(0.01, 3)))
    # loud output levels force the peak guard to act on some seeds
    cfg = MixConfig(snr_db=(-10, 10), level_db=(-20, 0))
    mix = mix_pair(speech, sound, rng, cfg, speech_valid=sp_valid, sound_valid=so_valid)

    np.testing.assert_allclose(mix.speech + mix.sound, mix.mixture, atol=1e-5)
    realized = 20 * np.log10(active_rms(mix.speech, sp_valid) / active_rms(mix.sound, so_valid))
    assert abs(realized - mix.snr_db) < 0.1
    assert cfg.snr_db[0] <= mix.snr_db <= cfg.snr_db[1]
    assert np.abs(mix.mixture).max() <= cfg.peak_limit + 1e-6
    assert np.abs(mix.speech).max() <= cfg.peak_limit + 1e-6 and np.abs(mix.sound).max() <= cfg.peak_limit + 1e-6
    assert not mix.mixture[max(sp_valid, so_valid):].any(), "padding must stay silent"


def test_peak_guard_scales_everything_by_one_factor():
    rng = np.random.default_rng(0)
    n = SR
    speech, sound = _speechlike(rng, n, n), _noise(rng, n, n)
    loud = mix_pair(speech, sound, np.random.default_rng(1), MixConfig(level_db=(0, 0)))
    assert loud.clip_scale < 1.0
    quiet = mix_pair(speech, sound, np.random.default_rng(1), MixConfig(level_db=(-40, -40)))
    assert quiet.clip_scale == 1.0
    # the same draw at two levels: stems differ by one common factor
    ratio = loud.speech[np.abs(quiet.speech) > 1e-4] / quiet.speech[np.abs(quiet.speech) > 1e-4]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-3)


def test_silent_source_is_not_amplified():
    rng = np.random.default_rng(0)
    speech = _speechlike(rng, SR, SR)
    silence = np.zeros(SR, dtype=np.float32)
    mix = mix_pair(speech, silence, rng)
    assert np.isfinite(mix.mixture).all()
    assert not mix.sound.any()
    np.testing.assert_allclose(mix.mixture, mix.speech)


def test_mix_records_draws_and_is_reproducible():
    rng = np.random.default_rng(3)
    speech, sound = _speechlike(rng, SR, SR), _noise(rng, SR, SR)
    a = mix_pair(speech, sound, np.random.default_rng(7))
    b = mix_pair(speech, sound, np.random.default_rng(7))
    assert a.snr_db == b.snr_db and a.level_db == b.level_db
    np.testing.assert_array_equal(a.mixture, b.mixture)
    with pytest.raises(ValueError, match="same shape"):
        mix_pair(speech, sound[:-1], rng)


def test_splice_marks_foreign_samples():
    rng = np.random.default_rng(0)
    audio = np.zeros(10 * SR, dtype=np.float32)
    donor = np.ones(10 * SR, dtype=np.float32)
    out, foreign = splice_negative(audio, 8 * SR, donor, 10 * SR, rng, SpliceConfig(prob=1.0))
    span = foreign.sum() / SR
    assert 0.9 <= span <= 4.0
    assert np.all(out[foreign] > 0.5) and np.all(out[~foreign] <= 0.5)
    assert not foreign[8 * SR:].any(), "splices stay inside the real audio"
    same, none = splice_negative(audio, 8 * SR, donor, 10 * SR, rng, SpliceConfig(prob=0.0))
    assert same is audio and not none.any()


def test_mask_span_zeroes_and_unmasks():
    rng = np.random.default_rng(0)
    audio = np.ones(SR, dtype=np.float32)
    mask = np.ones(SR, dtype=bool)
    out, m = mask_span(audio, mask, rng, MaskConfig(prob=1.0, max_fraction=0.5))
    assert (~m).sum() > 0 and np.all(out[~m] == 0) and np.all(out[m] == 1)
    assert mask.all() and audio.all(), "inputs untouched"


def test_offscreen_mixer_is_deterministic_and_order_free():
    rng = np.random.default_rng(0)
    pool = [(_noise(rng, SR, SR, scale=s), SR) for s in (0.1, 0.5, 1.0, 2.0)]
    queries = [_speechlike(rng, SR, SR) for _ in range(6)]
    mixer = OffscreenMixer(pool, target_type="speech", seed=5, snr_db=0.0)
    forward = [mixer(i, q, SR) for i, q in enumerate(queries)]
    backward = [OffscreenMixer(pool, "speech", seed=5)(i, queries[i], SR) for i in reversed(range(6))][::-1]
    for f, b in zip(forward, backward):
        np.testing.assert_array_equal(f.mixture, b.mixture)
        assert abs(20 * np.log10(active_rms(f.speech) / active_rms(f.sound))) < 0.1
    assert len({mixer.choice(i) for i in range(50)}) > 1
    other = OffscreenMixer(pool, "speech", seed=6)
    assert any(other.choice(i) != mixer.choice(i) for i in range(20))
    # a sound query: the target is the sound stem, still target-to-distractor 6 dB
    snd = OffscreenMixer([(q, SR) for q in queries], "sound", seed=0, snr_db=6.0)(0, pool[0][0], SR)
    assert abs(20 * np.log10(active_rms(snd.sound) / active_rms(snd.speech)) - 6.0) < 0.1
