"""Typed audio streams (K >= 2): the two-stream case bit-identical to the recorded loader, a third
stream (``music``) through the loader, mixture subsets, exact resume, skips and config errors."""

import json
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from pipeline.data.config import LoaderConfig
from pipeline.data.loader import TrainLoader
from pipeline.data.mixing import MixConfig, active_rms, mix_streams, mixture_choices, valid_mask
from pipeline.data.sources import list_shards
from pipeline.fields import FieldError
from tests.pipeline.data import golden_k2
from tests.support import shardgen

TYPES = ("speech", "sound", "music")


@contextmanager
def _one_thread():
    # the golden was recorded at one thread (as the suite runs); keep it so for any caller
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _same(recorded: list[dict], got: list[dict]) -> None:
    """Each recorded batch's digests equal the new ones, field by field (fields added since aside)."""
    differ = golden_k2.differences(recorded, got)
    assert not differ, f"differ from the recorded two-stream loader: {differ}"


def test_two_streams_are_bit_identical_to_the_recorded_loader(shards):
    golden = json.loads(golden_k2.GOLDEN.read_text())
    with _one_thread():
        for name, cfg in golden_k2.configs(shards.root).items():
            batches, _ = golden_k2.run_digests(cfg)
            _same(golden["raw"][name], [raw for raw, _ in batches])
            _same(golden["finished"][name], [finished for _, finished in batches])
        assert golden_k2.mixer_digests() == golden["mixer"]
        # the same two streams named under data.streams are the same stream
        legacy = golden_k2.configs(shards.root)["resampled_w0_splice_mask"]
        named = LoaderConfig(
            **{**vars(legacy), "speech": "", "sound": "", "streams": {"speech": legacy.speech, "sound": legacy.sound}}
        )
        batches, _ = golden_k2.run_digests(named)
        _same(golden["finished"]["resampled_w0_splice_mask"], [finished for _, finished in batches])


def test_a_two_stream_checkpoint_state_resumes_exactly(shards):
    """A loader state written before typed streams (cursors ``{speech, sound, items, skipped}``)
    resumes the same stream."""
    golden = json.loads(golden_k2.GOLDEN.read_text())
    cfg = golden_k2.configs(shards.root)["resampled_w2"]
    with _one_thread():
        batches, _ = golden_k2.run_digests(cfg, skip=3, state=golden["resume_state"])
    assert golden["resume_state"]["cursors"]["0"].keys() == {"speech", "sound", "items", "skipped"}
    _same(golden["finished"]["resampled_w2"][3:], [finished for _, finished in batches])


@pytest.fixture(scope="module")
def music(shards, tmp_path_factory):
    """A third stream, ``music``, written by the same shard builder (12 items, 3 shards)."""
    root = tmp_path_factory.mktemp("music")
    shardgen.build(root / "music", "music", 12, 4, seed0=2000)
    return root / "music"


def _cfg3(shards, music, **kw) -> LoaderConfig:
    streams = {"speech": str(shards.root / "speech"), "sound": str(shards.root / "sound"), "music": str(music)}
    base = dict(streams=streams, batch_size=4, num_workers=0, image_size=32, clip_seconds=1.0, shuffle_buffer=4, seed=0)
    return LoaderConfig(**{**base, **kw})


def _ratio_db(batch, a: str, b: str) -> torch.Tensor:
    """The realized level of stem ``a`` over stem ``b`` (active RMS), in dB."""
    rms = [active_rms(batch[f"{k}_audio"], batch[f"{k}_mask"]) for k in (a, b)]
    return 20 * torch.log10(rms[0] / rms[1])


def test_three_streams_give_every_type_and_mix_them_all(shards, music):
    batches = list(TrainLoader(_cfg3(shards, music, epoch_samples=8, mix=MixConfig(level_db=(-12.0, 0.0)))))
    assert len(batches) == 2
    for b in batches:
        assert b["types"] == TYPES and b["mix_types"] == TYPES
        for kind in TYPES:
            assert b[f"{kind}_image"].shape == (4, 3, 32, 32) and b[f"{kind}_audio"].shape == (4, 16_000)
            assert len(b[f"{kind}_key"]) == 4 and all(k.startswith(f"{kind}_") for k in b[f"{kind}_key"])
        torch.testing.assert_close(b["speech_audio"] + b["sound_audio"] + b["music_audio"], b["mix_audio"])
        assert torch.equal(b["mix_mask"], b["speech_mask"] | b["sound_mask"] | b["music_mask"])
        assert b["mix_audio"].abs().max() <= 0.99 + 1e-6
        assert b["snr_db"].shape == (4, 2)  # speech over sound, speech over music
        torch.testing.assert_close(_ratio_db(b, "speech", "sound"), b["snr_db"][:, 0], atol=0.1, rtol=0)
        torch.testing.assert_close(_ratio_db(b, "speech", "music"), b["snr_db"][:, 1], atol=0.1, rtol=0)


@pytest.mark.parametrize("subset", ["pairs", "any"])
def test_mixture_subsets_per_batch_the_same_on_every_rank(shards, music, subset):
    mix = MixConfig(subset=subset, level_db=(-12.0, 0.0))
    per_rank = []
    for rank in range(2):
        cfg = _cfg3(shards, music, epoch_samples=4 * 2 * 6, num_workers=2, mix=mix)
        batches = list(TrainLoader(cfg, rank=rank, world_size=2))
        per_rank.append([b["mix_types"] for b in batches])
        for b in batches:
            mixed = b["mix_types"]
            assert mixed in mixture_choices(TYPES, subset) and b["types"] == TYPES
            total = sum((b[f"{k}_audio"] for k in mixed[1:]), b[f"{mixed[0]}_audio"])
            torch.testing.assert_close(total, b["mix_audio"], atol=1e-6, rtol=0)
            for kind in set(TYPES) - set(mixed):  # left out: its clean clip, under the peak limit too
                assert b[f"{kind}_audio"].abs().amax(1).min() > 0 and b[f"{kind}_audio"].abs().max() <= 0.99 + 1e-6
            # the first type of the mixture is the reference; each later one sits its ratio below it
            for kind in mixed[1:]:
                column = b["snr_db"][:, TYPES.index(kind) - 1]
                torch.testing.assert_close(_ratio_db(b, mixed[0], kind), column, atol=0.1, rtol=0)
    assert per_rank[0] == per_rank[1], "ranks must mix the same types in the same step (gathered loss)"
    assert len(set(per_rank[0])) > 1
    if subset == "pairs":
        assert all(len(m) == 2 for m in per_rank[0])


def test_three_streams_resume_mid_epoch_exactly(shards, music):
    cfg = _cfg3(shards, music, epoch_samples=4 * 6, num_workers=2, mix=MixConfig(subset="any"))
    loader = TrainLoader(cfg)
    full = list(loader.iterate())
    assert set(loader.cursors[0]["taken"]) == set(TYPES)
    rest = list(loader.iterate(skip=3))
    assert len(rest) == len(full) - 3
    for x, y in zip(rest, full[3:]):
        assert x["mix_types"] == y["mix_types"] and all(x[f"{k}_key"] == y[f"{k}_key"] for k in TYPES)
        assert torch.equal(x["mix_audio"], y["mix_audio"]) and torch.equal(x["music_image"], y["music_image"])


def test_skips_are_counted_per_stream_by_type(shards, music, tmp_path):
    broken = tmp_path / "music"
    shutil.copytree(music, broken)
    first = list_shards(str(broken))[0]
    shardgen.rewrite_tar(first.path, lambda name, data: b"not a flac file" if name.endswith(".flac") else data)
    loader = TrainLoader(_cfg3(shards, music, streams={**_cfg3(shards, music).streams, "music": str(broken)}))
    batches = list(loader.iterate())
    assert batches and all(len(b["music_key"]) == 4 for b in batches)
    assert loader.skipped and all(reason.startswith("music: undecodable") for reason in loader.skipped)


def test_a_finite_epoch_paced_by_another_type(shards, music):
    cfg = _cfg3(shards, music, resampled=False, pace="music", batch_size=2)
    seen = [k for b in TrainLoader(cfg) for k in b.get("music_key", [])]
    assert sorted(seen) == sorted(f"music_{2000 + i}" for i in range(12))


def test_the_mixer_moves_the_reference_past_a_silent_type():
    rng = np.random.default_rng(0)
    n = 4000
    audio = {k: torch.from_numpy(rng.standard_normal((2, n)).astype(np.float32)) for k in TYPES}
    audio["speech"][0] = 0  # item 0: no speech, so sound is the reference
    masks = {k: valid_mask(torch.tensor([n, n]), n) for k in TYPES}
    snr = torch.tensor([[3.0, -4.0], [1.0, 2.0]])
    mix = mix_streams(audio, masks, snr, torch.tensor([-20.0, -20.0]), MixConfig())
    rms = {k: active_rms(v, masks[k]) for k, v in mix.stems.items()}
    ratio = 20 * torch.log10(rms["sound"] / rms["music"])
    # item 0: sound is at the source level, music at its ratio below it; item 1: both below speech
    torch.testing.assert_close(ratio, torch.tensor([-4.0, 2.0 - 1.0]), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="must be among the streams"):
        mix_streams(audio, masks, snr, torch.tensor([-20.0, -20.0]), MixConfig(), ("speech", "noise"))


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"speech": "a", "streams": {"speech": "a", "sound": "b"}},
            "streams must be empty when speech or sound is set",
        ),
        ({"streams": {"speech": "a", "Music": "b"}}, "streams must be keyed by audio type names matching"),
        ({"streams": {"speech": "a", "mix": "b"}}, "other than mix"),
        ({"streams": {"speech": "a"}}, "streams must be a mapping of at least two types"),
        ({"streams": {"speech": "a", "sound": " "}}, "streams.sound must be shard directories"),
        (
            {"streams": {"speech": "a", "sound": "b"}, "pace": "music"},
            "pace must be one of the streams (speech, sound)",
        ),
        ({"pace": "music"}, "pace must be one of the streams (speech, sound)"),
        ({"mix": MixConfig(subset="some")}, "subset must be one of all, pairs, any"),
    ],
)
def test_stream_config_errors_are_one_line(fields, message):
    with pytest.raises(FieldError) as caught:
        LoaderConfig(**fields)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_stream_config_errors_name_the_key_and_override():
    from training.config import ConfigError, load_config

    with pytest.raises(ConfigError) as caught:
        load_config(None, ["data.speech=a", "data.streams.music=b", "data.streams.sound=c"])
    assert str(caught.value).startswith("data.streams must be empty when data.speech or data.sound is set")
    assert "from the override" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"data.pace must be one of the streams \(music, sound\).*'data.pace=speech'"):
        load_config(None, ["data.streams.music=b", "data.streams.sound=c", "data.pace=speech"])
    streams = ["data.streams.music=b", "data.streams.sound=c", "data.mix.subset=pairs"]
    cfg = load_config(None, [*streams, "model.head_types=[sound, music]"])
    assert cfg.data.types == ("music", "sound") and cfg.data.pace_type == "music" and cfg.data.mix.subset == "pairs"
