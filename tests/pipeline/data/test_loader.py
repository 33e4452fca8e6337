"""The streaming loader on shards written by the real `prep` shard builder."""

import io
from collections import Counter

import pytest
import torch

from pipeline.data.config import LoaderConfig
from pipeline.data.loader import TrainLoader
from pipeline.data.mixing import MixConfig, active_rms
from pipeline.data.sources import Shard, list_shards, plan_finite_epoch
from pipeline.data.transform import denormalize
from tests.support import shardgen

SR = 16_000


def _cfg(root, **kw):
    base = dict(
        speech=str(root / "speech"),
        sound=str(root / "sound"),
        batch_size=4,
        num_workers=0,
        image_size=32,
        clip_seconds=3.0,
        shuffle_buffer=8,
        seed=0,
    )
    base.update(kw)
    return LoaderConfig(**base)


def _keys(loader):
    # a batch is empty ({}) when skipped samples made a finite stream run out early
    return [b.get("speech_key", []) for b in loader]


def test_batch_contents_and_mixing_invariants(shards):
    root, _ = shards
    cfg = _cfg(root, epoch_samples=24, mix=MixConfig(level_db=(-12.0, 0.0)))  # loud: the peak guard acts
    batches = list(TrainLoader(cfg))
    assert len(batches) == 6
    b = batches[0]
    assert b["speech_image"].shape == (4, 3, 32, 32) and b["speech_image"].dtype == torch.float32
    assert b["mix_audio"].shape == (4, 3 * SR) and b["mix_audio"].dtype == torch.float32
    clipped = 0
    for b in batches:
        torch.testing.assert_close(b["speech_audio"] + b["sound_audio"], b["mix_audio"], atol=1e-5, rtol=0)
        assert b["mix_audio"].abs().max() <= 0.99 + 1e-6
        assert torch.equal(b["mix_mask"], b["speech_mask"] | b["sound_mask"])
        assert not b["speech_audio"][~b["speech_mask"]].any() and not b["sound_audio"][~b["sound_mask"]].any()
        realized = 20 * torch.log10(
            active_rms(b["speech_audio"], b["speech_mask"]) / active_rms(b["sound_audio"], b["sound_mask"])
        )
        torch.testing.assert_close(realized, b["snr_db"], atol=0.1, rtol=0)
        assert ((-5 <= b["snr_db"]) & (b["snr_db"] <= 5)).all()
        # images: ImageNet-normalized pixels of 0-255, so each channel within its normalized range
        pixels = denormalize(torch.cat([b["speech_image"], b["sound_image"]]))
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and pixels.std() > 0.05
        clipped += int((b["clip_scale"] < 1).sum())
    assert clipped > 0, "some loud items must exercise the peak guard"


def _stored(root) -> dict[str, dict]:
    """Every raw sample of the speech and sound shards, by key."""
    from pipeline.shard_dir import iter_tar_samples

    shards = [s for kind in ("speech", "sound") for s in list_shards(str(root / kind))]
    return {sample["__key__"]: sample for s in shards for sample in iter_tar_samples(s.path)}


def test_batches_match_the_stored_clips(shards):
    """The finished stems are the stored clips (decoded as int16, in place) times one gain each."""
    from pipeline import format as fmt

    root, _ = shards
    stored = {key: fmt.decode_audio(sample["flac"])[: 3 * SR] for key, sample in _stored(root).items()}
    for b in TrainLoader(_cfg(root, epoch_samples=8, num_workers=2)):
        for role in ("speech", "sound"):
            for i, key in enumerate(b[f"{role}_key"]):
                ref = torch.from_numpy(stored[key]) * b[f"{role}_mask"][i]
                stem = b[f"{role}_audio"][i]
                gain = float(stem.abs().max() / ref.abs().max())
                torch.testing.assert_close(stem, ref * gain, atol=1e-6, rtol=1e-4)


def test_same_seed_same_batches_other_seed_other_batches(shards):
    root, _ = shards
    a = list(TrainLoader(_cfg(root, epoch_samples=16, num_workers=2)))
    b = list(TrainLoader(_cfg(root, epoch_samples=16, num_workers=2)))
    c = list(TrainLoader(_cfg(root, epoch_samples=16, num_workers=2, seed=1)))
    assert [x["speech_key"] for x in a] == [x["speech_key"] for x in b]
    for x, y in zip(a, b):
        for name in ("mix_audio", "speech_image", "sound_image", "snr_db"):
            assert torch.equal(x[name], y[name])
    assert [x["speech_key"] for x in a] != [x["speech_key"] for x in c]


def test_workers_and_ranks_never_repeat_draws(shards):
    root, _ = shards
    per_stream = []
    for rank in range(2):
        for batch in TrainLoader(_cfg(root, epoch_samples=32, num_workers=2), rank=rank, world_size=2):
            per_stream.append(tuple(batch["snr_db"].tolist()))
    assert len(set(per_stream)) == len(per_stream)


def test_two_ranks_two_workers_finite_epoch_sees_each_speech_sample_once(shards):
    root, speech_keys = shards
    for epoch in range(2):
        counts, seen = [], Counter()
        for rank in range(2):
            loader = TrainLoader(_cfg(root, resampled=False, num_workers=2), rank=rank, world_size=2)
            loader.set_epoch(epoch)
            batches = _keys(loader)
            counts.append(len(batches))
            assert len(batches) == len(loader)
            seen.update(k for keys in batches for k in keys)
        assert counts[0] == counts[1], "unequal batch counts would hang the gathered loss"
        assert sorted(seen) == sorted(speech_keys) and max(seen.values()) == 1


def test_finite_plan_is_balanced_and_checked():
    shards = [Shard(f"s{i}.tar", n) for i, n in enumerate([10, 10, 10, 7, 3])]
    assignment, sizes = plan_finite_epoch(shards, 2, 4, seed=0, epoch=0)
    assert sorted(s.path for slot in assignment for s in slot) == sorted(s.path for s in shards)
    assert len(sizes[0]) == len(sizes[1])
    assert [sum(x) for x in sizes] == [sum(s.samples for s in slot) for slot in assignment]
    assert all(max(x) - min(x) <= 1 for x in sizes)
    with pytest.raises(ValueError, match="ranks × workers"):
        plan_finite_epoch(shards, 6, 4, seed=0, epoch=0)


def test_resume_mid_epoch_continues_the_same_stream(shards):
    root, _ = shards
    for workers in (0, 2):
        loader = TrainLoader(_cfg(root, epoch_samples=28, num_workers=workers))
        full = list(loader.iterate())
        for skip in (1, 3, 4):
            rest = list(loader.iterate(skip=skip))
            assert [b["speech_key"] for b in rest] == [b["speech_key"] for b in full[skip:]]
            assert all(torch.equal(x["mix_audio"], y["mix_audio"]) for x, y in zip(rest, full[skip:]))


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_member_and_truncated_tar_are_skipped_and_counted(shards, tmp_path, caplog, workers):
    import shutil

    root, speech_keys = shards
    speech = tmp_path / "speech"
    shutil.copytree(root / "speech", speech)
    shards_ = list_shards(str(speech))
    corrupt = f"{speech_keys[0]}.flac"  # one corrupt member
    shardgen.rewrite_tar(shards_[0].path, lambda name, data: b"not a flac file" * 10 if name == corrupt else data)
    with open(shards_[1].path, "r+b") as f:  # a truncated shard: cut in the middle of a member
        f.truncate(f.seek(0, 2) // 2 + 100)
    cfg = _cfg(root, speech=str(speech), resampled=False, num_workers=workers, log_interval_s=0.0)
    loader = TrainLoader(cfg)
    batches = _keys(loader)
    assert len(batches) == len(loader), "skips must not change the batch count (peers would hang)"
    seen = [k for keys in batches for k in keys]
    skipped = loader.skipped
    assert skipped, "skips must be counted"
    assert any("undecodable" in r for r in skipped)
    lost = len(speech_keys) - len(seen)
    assert lost >= 2 and speech_keys[0] not in seen
    assert len(set(seen)) == len(seen)
    if workers == 0:  # worker processes log to their own stderr
        assert any("skipped" in rec.message and ".tar" in rec.message for rec in caplog.records)


def test_uncommitted_shards_are_ignored(shards, tmp_path):
    import shutil

    root, _ = shards
    speech = tmp_path / "speech"
    shutil.copytree(root / "speech", speech)
    stats = sorted(speech.glob("*_stats.json"))
    stats[-1].unlink()  # the last shard lost its commit marker
    assert len(list_shards(str(speech))) == len(stats) - 1
    with pytest.raises(FileNotFoundError, match="prep shards"):
        list_shards(str(tmp_path / "nothing-here"))


def test_splicing_and_masking_reach_the_batch(shards):
    from pipeline.data.mixing import MaskConfig, SpliceConfig

    root, _ = shards
    cfg = _cfg(root, epoch_samples=16, num_workers=2, splice=SpliceConfig(prob=1.0), masking=MaskConfig(prob=1.0))
    batches = list(TrainLoader(cfg))
    spliced = holes = 0
    for b in batches:
        for role in ("speech", "sound"):
            foreign, mask, audio = b[f"{role}_splice"], b[f"{role}_mask"], b[f"{role}_audio"]
            assert foreign.shape == mask.shape and foreign.dtype == torch.bool
            spliced += int(foreign.any(1).sum())
            # a masked span is a hole inside the real audio: silent and not valid
            real = mask.sum(1)
            last = torch.where(mask, torch.arange(mask.shape[1]), -1).amax(1) + 1
            holes += int((real < last).sum())
            assert not audio[~mask].any()
        torch.testing.assert_close(b["speech_audio"] + b["sound_audio"], b["mix_audio"], atol=1e-5, rtol=0)
        realized = 20 * torch.log10(
            active_rms(b["speech_audio"], b["speech_mask"]) / active_rms(b["sound_audio"], b["sound_mask"])
        )
        torch.testing.assert_close(realized, b["snr_db"], atol=0.1, rtol=0)
    assert spliced > 0 and holes > 0


def test_eval_mode_gives_centre_crops_of_the_stored_images(shards):
    from PIL import Image

    from pipeline.data.transform import eval_image, to_tensor

    root, _ = shards
    stored = {key: Image.open(io.BytesIO(sample["jpg"])) for key, sample in _stored(root).items()}
    for b in TrainLoader(_cfg(root, epoch_samples=8, num_workers=2, train=False)):
        for role in ("speech", "sound"):
            for i, key in enumerate(b[f"{role}_key"]):
                expected = to_tensor(eval_image(stored[key], 32))
                torch.testing.assert_close(b[f"{role}_image"][i], expected, atol=1e-5, rtol=0)


def test_arena_pool_reuses_only_released_buffers_and_grows_keeping_data():
    from pipeline.data.arena import Arena, ArenaPool, release, unpack

    pool = ArenaPool(slots=2, shared=False)
    a = pool.take(Arena.HEADER + 1000)
    pcm = a.place("speech_audio", torch.int16, (2, 100))
    pcm[:] = torch.arange(200, dtype=torch.int16).view(2, 100)
    assert a.place("too_big", torch.uint8, (10_000,)) is None
    grown = pool.grow(a, 20_000)  # image crops did not fit: a larger buffer, same contents
    assert grown.place("pixels", torch.uint8, (10_000,)) is not None
    batch = {"arena": grown.buffer, "layout": grown.layout}
    assert torch.equal(unpack(batch)["speech_audio"], torch.arange(200, dtype=torch.int16).view(2, 100))

    b = pool.take(100)
    c = pool.take(100)  # both slots busy: a one-off buffer
    assert c.buffer.data_ptr() not in {grown.buffer.data_ptr(), b.buffer.data_ptr()}
    release(batch)
    again = pool.take(100)
    assert again.buffer.data_ptr() == grown.buffer.data_ptr() and int(again.buffer[0]) == 0


def test_workers_hand_over_each_shared_buffer_once(shards):
    # Small fields cross as pickled numpy; the batch's arena crosses as a shared buffer the first
    # time its pool slot is used and by reference afterwards (each tensor crossing costs an fd).
    from pipeline.data.arena import PREFETCH, release

    root, _ = shards
    loader = TrainLoader(_cfg(root, epoch_samples=4 * 24, num_workers=1))
    buffers, n = set(), 0
    for b in loader.raw_batches():
        assert [k for k, v in b.items() if isinstance(v, torch.Tensor)] == ["arena"]
        assert int(b["arena"][0]) == 0  # not released yet
        buffers.add(b["arena"].untyped_storage().data_ptr())
        release(b)
        n += 1
    assert n == 24 and len(buffers) <= PREFETCH + 2


def test_arena_handoff_ships_a_buffer_once_per_generation():
    from pipeline.data.arena import Arena, ArenaPool

    pool = ArenaPool(slots=1, shared=True)
    first = pool.handoff(a := pool.take(Arena.HEADER + 100))
    assert first["arena"].data_ptr() == a.buffer.data_ptr() and first["arena_ref"] == (0, 1)
    a.buffer[0] = 1  # released
    again = pool.handoff(b := pool.take(Arena.HEADER + 100))
    assert "arena" not in again and again["arena_ref"] == (0, 1) and again["arena_end"] == b.end
    grown = pool.handoff(pool.grow(b, 10_000))  # a new buffer in the slot crosses again
    assert grown["arena"].numel() >= 10_000 and grown["arena_ref"] == (0, 2)
    one_off = pool.handoff(pool.take(100))  # the grown buffer is not released: a one-off buffer
    assert "arena_ref" not in one_off and one_off["arena"].numel() == Arena.HEADER  # its used part
