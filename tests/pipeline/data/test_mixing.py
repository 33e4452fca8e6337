import numpy as np
import pytest
import torch

from pipeline.data.mixing import (
    MaskConfig,
    MixConfig,
    OffscreenMixer,
    SpliceConfig,
    draw_masked_span,
    mix_batch,
    mix_pair,
    span_mask,
    splice_negative,
    valid_mask,
)
from pipeline.data.mixing import active_rms as _active_rms


def active_rms(x: np.ndarray, valid: int | None = None) -> float:
    """The batched active RMS of one numpy clip (its first ``valid`` samples)."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float32))[None]
    mask = valid_mask(torch.tensor([t.shape[1] if valid is None else valid]), t.shape[1])
    return float(_active_rms(t, mask)[0])


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
    assert not mix.mixture[max(sp_valid, so_valid) :].any(), "padding must stay silent"


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
    assert not foreign[8 * SR :].any(), "splices stay inside the real audio"
    same, none = splice_negative(audio, 8 * SR, donor, 10 * SR, rng, SpliceConfig(prob=0.0))
    assert same is audio and not none.any()


def test_masked_span_draw_and_mask():
    rng = np.random.default_rng(0)
    start, length = draw_masked_span(SR, rng, MaskConfig(prob=1.0, max_fraction=0.5))
    assert 0 < length <= SR // 2 and 0 <= start and start + length <= SR
    assert draw_masked_span(SR, rng, MaskConfig(prob=0.0)) == (0, 0)
    m = span_mask(torch.tensor([[start, length], [0, 0]]), SR)
    assert int(m[0].sum()) == length and bool(m[0, start]) and not m[1].any()


def test_active_rms_ignores_padding_pauses_and_masked_spans():
    rng = np.random.default_rng(1)
    n = 2 * SR
    tone = (0.5 * np.sin(2 * np.pi * 200 * np.arange(n) / SR)).astype(np.float32)
    ref = float(np.sqrt((tone[:SR] ** 2).mean()))
    paused = tone.copy()
    paused[SR // 2 : SR] = 0  # a pause inside the real audio
    x = torch.from_numpy(np.stack([tone, paused]))
    x[:, SR:] = 0  # one second of padding
    valid = valid_mask(torch.tensor([SR, SR]), n)
    np.testing.assert_allclose(_active_rms(x, valid).numpy(), ref, rtol=1e-3)
    # a masked span counts as absent, whatever it holds
    noisy = x.clone()
    noisy[:, 1000:9000] = torch.from_numpy(rng.standard_normal(8000).astype(np.float32))
    hole = valid & ~span_mask(torch.tensor([[1000, 8000]] * 2), n)
    np.testing.assert_allclose(_active_rms(noisy * hole, hole).numpy(), ref, rtol=1e-2)
    assert float(_active_rms(torch.zeros(1, n))[0]) == 0.0


def test_mix_batch_equals_mix_pair_item_by_item():
    rng = np.random.default_rng(4)
    n, b = SR, 5
    valid = rng.integers(SR // 4, n, (2, b))
    speech = np.stack([_speechlike(rng, n, v) for v in valid[0]])
    sound = np.stack([_noise(rng, n, v, scale=float(rng.uniform(0.05, 2))) for v in valid[1]])
    snr, level = rng.uniform(-5, 5, b), rng.uniform(-30, -5, b)
    masks = [valid_mask(torch.from_numpy(v), n) for v in valid]
    batch = mix_batch(
        torch.from_numpy(speech), torch.from_numpy(sound), *masks, torch.from_numpy(snr), torch.from_numpy(level)
    )
    for i in range(b):
        one = mix_pair(
            speech[i], sound[i], rng, MixConfig(), int(valid[0, i]), int(valid[1, i]), snr_db=snr[i], level_db=level[i]
        )
        np.testing.assert_allclose(batch.mixture[i].numpy(), one.mixture, atol=1e-6)
        assert abs(float(batch.clip_scale[i]) - one.clip_scale) < 1e-6


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
