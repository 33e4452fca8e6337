"""The generated world end to end: `prep synthetic` writes every set, deterministically, and the
project's real readers (shard format, loader, IS3 / ADE20K / retrieval readers) accept it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline import format as fmt
from pipeline.data.config import LoaderConfig
from pipeline.data.loader import TrainLoader
from pipeline.prep.cli import app
from pipeline.prep.synthetic.generate import PENDING_FILE, WORLD_FILE, WorldExists, generate_world
from pipeline.prep.synthetic.samples import render_eval_scene
from pipeline.prep.synthetic.world import CLASS_NAMES, object_class, plan_scenes, world_config
from pipeline.shard_dir import iter_tar_samples
from pipeline.testsets.ade20k import decode_ade_classes, read_ade20k_prompted
from pipeline.testsets.common import load_clip
from pipeline.testsets.is3 import read_is3
from pipeline.testsets.retrieval import read_retrieval_set

# a small world (the ci preset, cut down): every set, several shards per training set
CI = world_config("ci", train=40, val=12, is3_images=6, ade_images=4, shard_size=16)
# fields the shard builder fills with wall-clock times: everything else must repeat exactly
_CLOCK_FIELDS = {"created", "updated", "wall_seconds", "stage_seconds", "retried"}


@pytest.fixture(scope="module")
def world_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world") / "synthetic"
    generate_world(root, CI, seed=0, workers=2, progress=False)
    return root


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _without_clock(obj):
    if isinstance(obj, dict):
        return {k: _without_clock(v) for k, v in obj.items() if k not in _CLOCK_FIELDS}
    if isinstance(obj, list):
        return [_without_clock(v) for v in obj]
    return obj


def test_world_json_describes_classes_and_every_set(world_root):
    world = json.loads((world_root / WORLD_FILE).read_text())
    assert not (world_root / PENDING_FILE).exists()
    assert world["seed"] == 0 and world["config"]["train"] == CI.train
    assert [c["name"] for c in world["classes"]] == list(CLASS_NAMES)
    assert [c["ade_class_id"] for c in world["classes"]] == list(range(1, 11))
    sets = world["sets"]
    assert set(sets) == {
        "speech/train",
        "sound/train",
        "speech/val",
        "sound/val",
        "is3",
        "ade20k/speech",
        "ade20k/sound",
    }
    assert sets["speech/train"]["items"] == CI.train and sets["sound/val"]["items"] == CI.val
    assert sets["is3"]["annotations"] == 2 * CI.is3_images
    assert sets["ade20k/speech"]["rows"] == 2 * CI.ade_images
    assert 0.02 < sets["is3"]["mean_mask_share"] < 0.2  # the chance level of the localization AP
    for info in sets.values():
        assert (world_root / info["path"]).is_dir()


def test_same_seed_gives_the_same_files_whatever_the_worker_count(world_root, tmp_path):
    again = tmp_path / "again"
    generate_world(again, CI, seed=0, workers=1, progress=False)
    first, second = _files(world_root), _files(again)
    assert first.keys() == second.keys()
    differing = []
    for rel, path in first.items():
        a, b = path.read_bytes(), second[rel].read_bytes()
        if rel.endswith("_stats.json") or rel.endswith("dataset.json"):
            a, b = _without_clock(json.loads(a)), _without_clock(json.loads(b))
        if a != b:
            differing.append(rel)
    assert differing == []
    # the tars themselves are byte-identical (fixed tar headers, deterministic encoders)
    assert any(rel.endswith(".tar") for rel in first)


def test_another_seed_gives_another_world(world_root, tmp_path):
    other = tmp_path / "other"
    generate_world(
        other,
        world_config("ci", train=10, val=4, is3_images=2, ade_images=2, shard_size=10),
        seed=1,
        workers=1,
        progress=False,
    )
    mine = {p.name: p.read_bytes() for p in (world_root / "is3" / "images").iterdir()}
    theirs = {p.name: p.read_bytes() for p in (other / "is3" / "images").iterdir()}
    assert not any(mine.get(name) == data for name, data in theirs.items())


def test_every_shard_sample_follows_the_shard_format(world_root):
    for name, n in (
        ("speech/train", CI.train),
        ("sound/train", CI.train),
        ("speech/val", CI.val),
        ("sound/val", CI.val),
    ):
        audio_type = name.split("/")[0]
        tars = sorted((world_root / name).glob("*.tar"))
        assert len(tars) == -(-n // CI.shard_size)
        samples = [s for t in tars for s in iter_tar_samples(t)]
        assert len(samples) == n
        for sample in samples:
            assert fmt.verify_sample(sample) == [], sample["__key__"]
            meta = fmt.decode_meta(sample[fmt.META_EXT])
            assert meta["source"] == "synthetic" and meta["audio_type"] == audio_type
            assert meta["class"] in CLASS_NAMES
            assert 0.5 <= meta["duration"] <= 4.0
            audio = fmt.decode_audio(sample[fmt.AUDIO_EXT])
            valid = fmt.valid_samples(meta)
            # real audio then zero padding, as the duration field says
            assert np.abs(audio[valid + 10 :]).max() == 0 and np.abs(audio[:valid]).max() > 0.05
            image = fmt.decode_image(sample[fmt.IMAGE_EXT])
            assert image.size == (224, 224)
            if audio_type == "speech":
                assert meta["class"] in meta["caption"].split()
                start, end = meta["object_span"]
                assert meta["words"][-1]["end"] <= meta["duration"] + 1e-3
                assert any(
                    w["word"] == meta["class"] and w["start"] == start and w["end"] == end for w in meta["words"]
                )
            else:
                assert meta["labels"] == [{"mid": f"/synthetic/{meta['class']}", "name": meta["class"]}]


def test_extended_is3_tree_is_read_and_its_masks_are_the_drawn_objects(world_root):
    data = read_is3(world_root / "is3", require_speech=True, strict=True)
    assert data.extended and len(data.annotations) == 2 * CI.is3_images and data.skipped == []
    pairs, skipped = data.pairs("cross")
    assert len(pairs) == 2 * CI.is3_images and skipped == []
    assert all(p.sound.image_id == p.speech.image_id and p.sound.target != p.speech.target for p in pairs)
    assert data.speech_meta["backend"] == "espeak" and data.speech_meta["timing"] == "engine"
    plan = {it["index"]: it for it in plan_scenes(CI, 0, "is3").items}
    for ann in data.annotations:
        classes = ann.stem.split("_")
        index = int(classes[2])
        item = plan[index]
        assert classes[:2] == item["classes"] and ann.target in item["classes"]
        scene = render_eval_scene(CI, item, with_sound=False, with_speech=False).scene
        drawn = scene.masks[item["classes"].index(ann.target)]
        with Image.open(ann.mask_path) as im:
            stored = np.asarray(im.convert("L")) >= 128
        iou = (drawn & stored).sum() / (drawn | stored).sum()
        assert iou > 0.99, f"{ann.stem}: stored mask IoU {iou:.3f} with the drawn object"
        clip = load_clip(ann.audio_path)
        assert 1.5 * fmt.SAMPLE_RATE <= clip.valid <= 3.4 * fmt.SAMPLE_RATE
        speech = ann.speech
        assert (
            speech["class"] == ann.target
            and speech["text"] == f"a picture of {'an' if ann.target[0] in 'aeiou' else 'a'} {ann.target}"
        )
        spoken = load_clip(ann.speech_path)
        start, end = speech["object_span"]
        assert 0 < start < end <= spoken.valid / fmt.SAMPLE_RATE + 1e-3
        segment = spoken.audio[int(start * fmt.SAMPLE_RATE) : int(end * fmt.SAMPLE_RATE)]
        assert np.sqrt(np.mean(segment**2)) > 0.01


def test_ade20k_trees_are_read_and_their_class_maps_are_exact(world_root):
    for kind in ("speech", "sound"):
        prompted = read_ade20k_prompted(world_root / "ade20k", kind, strict=True)
        assert len(prompted.items) == 2 * CI.ade_images and prompted.dropped_by_protocol == 0
        plan = plan_scenes(CI, 0, f"ade20k/{kind}").items
        for row in prompted.items:
            cls = object_class(row.class_name)
            assert row.class_id == cls.ade_class_id
            index = int(row.image_path.stem.split("_")[-1])
            scene = render_eval_scene(CI, plan[index], with_sound=False, with_speech=False).scene
            ids = [object_class(c).ade_class_id for c in plan[index]["classes"]]
            with Image.open(row.annotation_path) as im:
                classes = decode_ade_classes(np.asarray(im.convert("RGB")))
            assert np.array_equal(classes, scene.label_map(ids))
            assert (classes == row.class_id).any()
            clip = load_clip(row.audio_path)
            if kind == "speech":
                start, end = row.timing
                assert 0 < start < end <= clip.valid / fmt.SAMPLE_RATE + 1e-3
            else:
                assert row.timing is None and clip.valid >= 1.5 * fmt.SAMPLE_RATE


def test_retrieval_sets_are_read(world_root):
    for name in ("speech/val", "sound/val"):
        data = read_retrieval_set(world_root / name)
        assert len(data.items) == CI.val == data.available
        assert data.audio_type == name.split("/")[0]
        assert len({it.key for it in data.items}) == CI.val


def test_training_loader_pairs_and_mixes_the_shards(world_root):
    cfg = LoaderConfig(
        speech=str(world_root / "speech/train"),
        sound=str(world_root / "sound/train"),
        batch_size=4,
        num_workers=0,
        epoch_samples=8,
    )
    batches = list(TrainLoader(cfg))
    assert len(batches) == 2
    batch = batches[0]
    assert batch["speech_audio"].shape == batch["sound_audio"].shape == (4, fmt.CLIP_SAMPLES)
    assert batch["speech_image"].shape[0] == 4
    assert all(k.startswith("syn-speech-train-") for k in batch["speech_key"])
    assert all(k.startswith("syn-sound-train-") for k in batch["sound_key"])


def test_cli_generates_resumes_and_refuses_to_mix_worlds(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["synthetic", "--out", str(out), "--size", "ci", "--train", "6", "--val", "3", "--is3-images", "2",
            "--ade-images", "2", "--shard-size", "4", "--workers", "1", "--no-progress"]  # fmt: skip
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    world = json.loads((out / WORLD_FILE).read_text())
    assert world["config"]["train"] == 6 and world["sets"]["is3"]["annotations"] == 4
    tar = out / "speech/train/000000.tar"
    before = tar.stat().st_mtime_ns
    again = runner.invoke(app, args)  # resume: committed shards are kept as they are
    assert again.exit_code == 0, again.output
    assert tar.stat().st_mtime_ns == before
    clash = runner.invoke(app, [*args, "--seed", "5"])
    assert clash.exit_code == 2
    assert "another generated world" in clash.output and "--overwrite" in clash.output
    replaced = runner.invoke(app, [*args, "--seed", "5", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / WORLD_FILE).read_text())["seed"] == 5
    bad = runner.invoke(app, ["synthetic", "--out", str(tmp_path / "x"), "--size", "galactic"])
    assert bad.exit_code != 0 and "unknown world size" in bad.output


def test_folders_not_written_by_the_generator_are_not_overwritten_silently(tmp_path):
    (tmp_path / "speech" / "train").mkdir(parents=True)
    with pytest.raises(WorldExists, match="not a world this generator wrote"):
        generate_world(
            tmp_path, world_config("ci", train=2, val=2, is3_images=1, ade_images=1), workers=0, progress=False
        )


def test_generation_works_after_torch_ran_in_the_parent(tmp_path):
    """Workers fork from the caller. A caller that already ran multi-threaded torch ops (a test
    session, a notebook, a demo script) leaves an OpenMP pool behind that a forked worker must not
    touch, or it hangs. Run in a subprocess so a hang fails the test instead of blocking it."""
    script = f"""
import torch, torchaudio.functional as F
torch.set_num_threads(2)
x = torch.randn(256, 256)
(x @ x).sum()
F.resample(torch.randn(22050), 22050, 16000)
from pipeline.prep.synthetic.generate import generate_world
from pipeline.prep.synthetic.world import world_config
generate_world({str(tmp_path / "w")!r}, world_config("ci", train=4, val=2, is3_images=2, ade_images=2, shard_size=4),
               workers=2, progress=False)
"""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[4],
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "w" / WORLD_FILE).is_file()
