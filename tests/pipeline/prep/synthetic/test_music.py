"""Music, the generated world's third audio type (pipeline.prep.synthetic.music, `prep synthetic --music`):
each class's melody on its own instrument, written as music/train and music/val shard sets, while the
default world stays byte for byte what it was before music existed."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline import format as fmt
from pipeline.prep.cli import app
from pipeline.prep.synthetic import music
from pipeline.prep.synthetic.generate import WORLD_FILE, WorldExists, generate_world
from pipeline.prep.synthetic.world import (
    CLASS_NAMES,
    CLASSES,
    ObjectClass,
    WorldConfig,
    object_class,
    rng,
    world_config,
)
from pipeline.shard_dir import iter_tar_samples
from pipeline.testsets.retrieval import read_retrieval_set

GOLDEN = Path(__file__).with_name("default_world_sha256.json")
# fields the shard builder fills with wall-clock times (as in test_world.py)
_CLOCK_FIELDS = {"created", "updated", "wall_seconds", "stage_seconds", "retried"}
# files whose content names the world's config, which says `music: true` in a world with music
_CONFIG_FILES = ("world.json", "dataset.json")


def _without_clock(obj):
    if isinstance(obj, dict):
        return {k: _without_clock(v) for k, v in obj.items() if k not in _CLOCK_FIELDS}
    if isinstance(obj, list):
        return [_without_clock(v) for v in obj]
    return obj


def world_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``; the builder's json files without their clock fields."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            rel, data = str(path.relative_to(root)), path.read_bytes()
            if rel.endswith("_stats.json") or rel.endswith("dataset.json"):
                data = json.dumps(_without_clock(json.loads(data)), sort_keys=True).encode()
            out[rel] = hashlib.sha256(data).hexdigest()
    return out


def _log_band_energies(x: np.ndarray) -> np.ndarray:
    """Mean log energy in 24 log-spaced bands over the clip's first 2 s of content."""
    sr = music.SR
    x = x[np.argmax(np.abs(x) > 0) :][: 2 * sr]
    x = np.pad(x, (0, 2 * sr - len(x)))
    frames = x[: len(x) // 512 * 512].reshape(-1, 512) * np.hanning(512)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(512, 1 / sr)
    edges = np.geomspace(40, 8000, 25)
    bands = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
    return np.log(bands + 1e-6).mean(0)


def test_every_class_has_a_melody_that_its_clips_play():
    cfg = WorldConfig()
    assert set(music.MELODIES) == set(CLASS_NAMES)
    assert len({m.instrument for m in music.MELODIES.values()}) == len(CLASS_NAMES)  # one family per class
    assert set(music.INSTRUMENTS) == {m.instrument for m in music.MELODIES.values()}
    assert len({m.steps for m in music.MELODIES.values()}) == len(CLASS_NAMES)  # one contour per class
    for i, cls in enumerate(CLASSES):
        melody = music.MELODIES[cls.name]
        clip = music.render_music(cls, cfg, rng(i))
        assert clip.audio.dtype == np.float32 and np.isfinite(clip.audio).all()
        assert clip.instrument == melody.instrument
        # the class's contour, transposed as a whole by at most two semitones
        pitches = np.array([n["pitch"] for n in clip.notes])
        shift = pitches - (melody.tonic_midi + np.array(melody.steps))
        assert len(set(shift)) == 1 and abs(shift[0]) <= 2
        onset = np.argmax(np.abs(clip.audio) > 0) / music.SR
        assert onset <= cfg.onset_seconds[1] + 1e-3
        length = len(clip.audio) / music.SR - onset
        assert cfg.sound_seconds[0] - 0.01 <= length <= cfg.sound_seconds[1] + 0.01
        starts, ends = [n["start"] for n in clip.notes], [n["end"] for n in clip.notes]
        assert starts[0] == pytest.approx(onset, abs=1e-3)
        assert ends[-1] == pytest.approx(len(clip.audio) / music.SR, abs=1e-3)
        assert all(a < b for a, b in zip(starts, ends)) and starts[1:] == ends[:-1]
        assert 0.2 < np.abs(clip.audio).max() <= 0.9  # -12 to -1 dB peak
    same = [music.render_music(CLASSES[0], cfg, rng(7)).audio for _ in range(2)]
    assert same[0].tobytes() == same[1].tobytes()  # a function of its generator
    with pytest.raises(ValueError, match="no melody"):
        music.melody_of(ObjectClass("comet", "star", 0.0, "solid", "hum", 1.0))


def test_music_classes_are_told_apart_by_a_plain_spectrum():
    """A nearest-centroid classifier on average log band energies tells the ten melodies apart
    (their instruments and registers), as it does the world's sounds."""
    cfg = WorldConfig()
    feats, labels = [], []
    for i in range(150):
        feats.append(_log_band_energies(music.render_music(CLASSES[i % 10], cfg, rng(500 + i)).audio))
        labels.append(i % 10)
    x, y = np.array(feats), np.array(labels)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    train = np.arange(150) < 100
    centroids = np.stack([x[train & (y == k)].mean(0) for k in range(10)])
    pred = np.argmin(((x[~train, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == y[~train]).mean() >= 0.9
    # and the spectral centroids of two classes' melodies lie apart: the music box above the bass
    star, heart = (music.render_music(object_class(c), cfg, rng(3)).audio for c in ("star", "heart"))
    spectrum = [np.abs(np.fft.rfft(a)) for a in (star, heart)]
    centre = [(s * np.fft.rfftfreq(len(a), 1 / music.SR)).sum() / s.sum() for s, a in zip(spectrum, (star, heart))]
    assert centre[0] > 4 * centre[1]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> tuple[Path, Path]:
    """The golden's tiny default world (generate_world), and the same world with music (the CLI)."""
    golden = json.loads(GOLDEN.read_text())
    base = tmp_path_factory.mktemp("default") / "world"
    cfg = world_config(golden["size"], **golden["overrides"])
    generate_world(base, cfg, seed=golden["seed"], workers=0, progress=False)
    with_music = tmp_path_factory.mktemp("music") / "world"
    args = ["synthetic", "--out", str(with_music), "--size", golden["size"], "--seed", str(golden["seed"]),
            "--workers", "0", "--no-progress", "--music"]  # fmt: skip
    for name, value in golden["overrides"].items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return base, with_music


def test_the_default_world_has_not_changed(worlds):
    base, _ = worlds
    golden = json.loads(GOLDEN.read_text())["files"]
    found = world_hashes(base)
    changed = sorted(rel for rel in golden.keys() | found.keys() if golden.get(rel) != found.get(rel))
    # an upgrade of an encoder (Pillow's JPEG, libsndfile's FLAC, eSpeak NG) would show here too: then
    # compare the decoded content, and rewrite default_world_sha256.json with world_hashes() if it is equal
    assert changed == [], f"{len(changed)} files of the default world differ from {GOLDEN.name}: {changed[:8]}"
    world = json.loads((base / WORLD_FILE).read_text())
    assert "music" not in world and "music" not in world["config"] and not (base / "music").exists()


def test_a_world_with_music_adds_music_shards_and_changes_nothing_else(worlds):
    base, with_music = worlds
    cfg = world_config("ci", **json.loads(GOLDEN.read_text())["overrides"])
    world = json.loads((with_music / WORLD_FILE).read_text())
    assert world["config"]["music"] is True
    assert world["sets"]["music/train"] == {
        "format": "shards",
        "path": "music/train",
        "audio_type": "music",
        "items": cfg.train,
    }
    assert world["music"]["classes"]["star"]["instrument"] == "music_box"
    for name, n in (("music/train", cfg.train), ("music/val", cfg.val)):
        tars = sorted((with_music / name).glob("*.tar"))
        assert len(tars) == -(-n // cfg.shard_size)
        samples = [s for t in tars for s in iter_tar_samples(t)]
        split = name.split("/")[1]
        assert [s["__key__"] for s in samples] == [f"syn-music-{split}-{i:06d}" for i in range(n)]
        classes = Counter()
        for sample in samples:
            assert fmt.verify_sample(sample) == [], sample["__key__"]
            meta = fmt.decode_meta(sample[fmt.META_EXT])
            assert meta["source"] == "synthetic" and meta["audio_type"] == "music"
            assert meta["labels"] == [{"mid": f"/synthetic/{meta['class']}", "name": meta["class"]}]
            assert meta["instrument"] == music.MELODIES[meta["class"]].instrument
            assert meta["orig_sample_rate"] == fmt.SAMPLE_RATE == 16_000
            audio = fmt.decode_audio(sample[fmt.AUDIO_EXT])
            assert audio.shape == (fmt.CLIP_SAMPLES,) == (10 * 16_000,)  # 10 s at 16 kHz, zero-padded
            valid = fmt.valid_samples(meta)
            assert 1.5 <= meta["duration"] <= 3.3 and np.abs(audio[valid + 10 :]).max() == 0
            assert meta["notes"][-1]["end"] == pytest.approx(meta["duration"], abs=1e-3)
            assert fmt.decode_image(sample[fmt.IMAGE_EXT]).size == (224, 224)
            classes[meta["class"]] += 1
        assert set(classes) <= set(CLASS_NAMES) and max(classes.values()) - min(classes.values()) <= 1
    assert read_retrieval_set(with_music / "music/val").audio_type == "music"
    # every other file is the default world's, byte for byte (the config-naming json files aside)
    mine, theirs = world_hashes(base), world_hashes(with_music)
    assert {rel for rel in theirs if not rel.startswith("music/")} == set(mine)
    differing = sorted(rel for rel in mine if mine[rel] != theirs[rel])
    assert differing and all(rel.endswith(_CONFIG_FILES) for rel in differing)
    # a world with music is another world: it does not go silently into a root without music
    with pytest.raises(WorldExists, match="another generated world"):
        generate_world(base, world_config("ci", **json.loads(GOLDEN.read_text())["overrides"], music=True), workers=0)
