"""pipeline.prep.synthetic renderers: images and masks, sounds, speech, item plans."""

from __future__ import annotations

import colorsys
from collections import Counter

import numpy as np
import pytest

from pipeline.prep.synthetic import images, sounds, speech
from pipeline.prep.synthetic.samples import load_pair, render_eval_scene
from pipeline.prep.synthetic.world import (
    CLASS_NAMES,
    CLASSES,
    WorldConfig,
    balanced_pairs,
    item_seed,
    object_class,
    plan_pairs,
    plan_scenes,
    rng,
    world_config,
)

CFG = WorldConfig()


def _hsv(pixels: np.ndarray) -> np.ndarray:
    """[n, 3] uint8 RGB -> [n, 3] HSV with hue in degrees."""
    return np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in pixels]) * np.array([360.0, 1.0, 1.0])


def _hue_distance(h: np.ndarray, ref: float) -> np.ndarray:
    d = np.abs(h - ref) % 360
    return np.minimum(d, 360 - d)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_NAMES)
def test_mask_is_exactly_the_pixels_in_the_class_colour(cls):
    """Inside the mask: the class's saturated colour family. Outside: nothing of that colour
    (backgrounds and distractors are desaturated), so the mask neither misses nor overshoots."""
    for seed in range(3):
        scene = images.render_scene([cls], CFG, rng(seed))
        pixels = np.asarray(scene.image).reshape(-1, 3)
        mask = scene.masks[0].reshape(-1)
        inside = _hsv(pixels[mask][::7])
        assert ((_hue_distance(inside[:, 0], cls.hue) < 15) & (inside[:, 1] > 0.55)).mean() > 0.98
        outside = _hsv(pixels[~mask][::5])
        lookalike = (outside[:, 1] > 0.6) & (outside[:, 2] > 0.45) & (_hue_distance(outside[:, 0], cls.hue) < 15)
        assert lookalike.mean() < 0.001
        share = mask.mean()
        assert 0.02 < share < 0.25, f"{cls.name}: object covers {share:.3f} of the image"


def test_two_object_scenes_have_disjoint_masks_of_the_two_classes():
    for i in range(20):
        a, b = CLASSES[i % 10], CLASSES[(i * 7 + 3) % 10]
        if a == b:
            continue
        scene = images.render_scene([a, b], CFG, rng(100 + i))
        assert [o.name for o in scene.objects] == [a.name, b.name]
        assert not (scene.masks[0] & scene.masks[1]).any()
        for obj, mask in zip(scene.objects, scene.masks):
            ys, xs = np.nonzero(mask)
            # the object lies inside its bounding circle, which lies inside the image
            assert np.hypot(xs - obj.cx, ys - obj.cy).max() <= obj.radius + 1.5
            assert obj.radius <= obj.cx <= CFG.image_size - obj.radius
            assert CFG.object_min * CFG.image_size / 2 * 0.6 <= obj.radius <= CFG.object_max * CFG.image_size / 2
        labels = scene.label_map([3, 9])
        assert set(np.unique(labels)) == {0, 3, 9}
        assert (labels == 3).sum() == scene.masks[0].sum()


def test_classes_are_told_apart_by_colour():
    """Nearest class colour of an object's mean pixel colour is its own class."""
    refs = np.array([colorsys.hsv_to_rgb(c.hue / 360, 0.85, 0.9) for c in CLASSES])
    hits = 0
    for i in range(40):
        cls = CLASSES[i % 10]
        scene = images.render_scene([cls], CFG, rng(1000 + i))
        px = np.asarray(scene.image).reshape(-1, 3)[scene.masks[0].reshape(-1)] / 255.0
        hue = _hsv((px.mean(0, keepdims=True) * 255).astype(np.uint8))[0, 0]
        ref_hues = np.array([c.hue for c in CLASSES])
        hits += int(np.argmin(_hue_distance(ref_hues, hue)) == i % 10)
    assert refs.shape == (10, 3)
    assert hits == 40


def _log_band_energies(x: np.ndarray) -> np.ndarray:
    sr = sounds.SR
    x = x[np.argmax(np.abs(x) > 0) :][:sr]
    x = np.pad(x, (0, sr - len(x)))
    frames = x[: sr // 512 * 512].reshape(-1, 512) * np.hanning(512)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(512, 1 / sr)
    edges = np.geomspace(50, 8000, 25)
    bands = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
    return np.log(bands + 1e-6).mean(0)


def test_sound_classes_are_told_apart_by_a_plain_spectrum():
    """A nearest-centroid classifier on average log band energies separates the timbre families:
    the world is meant to be learnable by a small model on a CPU."""
    feats, labels = [], []
    for i in range(200):
        feats.append(_log_band_energies(sounds.render_sound(CLASSES[i % 10], CFG, rng(i))))
        labels.append(i % 10)
    x, y = np.array(feats), np.array(labels)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    train = np.arange(200) < 120
    centroids = np.stack([x[train & (y == k)].mean(0) for k in range(10)])
    pred = np.argmin(((x[~train, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == y[~train]).mean() >= 0.9


def test_sounds_vary_per_sample_within_the_configured_bounds():
    cfg = world_config("demo")
    lengths, peaks = [], []
    for i in range(30):
        clip = sounds.render_sound(CLASSES[i % 10], cfg, rng(i))
        assert clip.dtype == np.float32 and np.isfinite(clip).all()
        onset = np.argmax(np.abs(clip) > 0) / sounds.SR
        assert onset <= cfg.onset_seconds[1] + 1e-3
        lengths.append(len(clip) / sounds.SR)
        peaks.append(np.abs(clip).max())
    assert cfg.sound_seconds[0] <= min(lengths) and max(lengths) <= cfg.sound_seconds[1] + cfg.onset_seconds[1]
    assert max(lengths) - min(lengths) > 0.5
    assert 0.2 < min(peaks) < max(peaks) <= 0.9


def test_speech_names_the_class_and_its_span_holds_the_name():
    for i, cls in enumerate(CLASSES):
        said = speech.render_speech(cls, CFG, rng(i))
        assert cls.name in said.text.split()
        assert said.voice in speech.VOICES
        assert CFG.rate_wpm[0] <= said.rate_wpm <= CFG.rate_wpm[1]
        start, end = said.object_span
        assert cls.name in [w["word"] for w in said.words]
        assert 0 <= start < end <= len(said.audio) / said.sample_rate + 1e-3  # times are rounded to 0.1 ms
        seg = said.audio[int(start * said.sample_rate) : int(end * said.sample_rate)]
        assert np.sqrt(np.mean(seg.astype(np.float64) ** 2)) > 0.2 * np.sqrt(
            np.mean(said.audio.astype(np.float64) ** 2)
        )
    fixed = speech.render_speech(object_class("arrow"), CFG, rng(0), template=speech.EVAL_TEMPLATE)
    assert fixed.text == "a picture of an arrow"


def test_world_config_limits_templates_and_voices():
    narrow = WorldConfig(templates=1, voices=2)
    said = [speech.render_speech(object_class("star"), narrow, rng(i)) for i in range(12)]
    assert {s.text for s in said} == {"a picture of a star"}
    assert {s.voice for s in said} <= set(speech.VOICES[:2]) and len({s.voice for s in said}) == 2
    with pytest.raises(ValueError, match="templates"):
        WorldConfig(templates=0)


def test_items_render_the_same_in_any_order():
    items = plan_pairs(world_config("ci"), 3, "speech/train").items[:4]
    forward = [load_pair(CFG, it) for it in items]
    backward = [load_pair(CFG, it) for it in reversed(items)][::-1]
    for a, b in zip(forward, backward):
        assert a.audio.tobytes() == b.audio.tobytes()
        assert a.image.tobytes() == b.image.tobytes()
        assert a.meta == b.meta


def test_plans_are_balanced_and_seeds_independent():
    cfg = world_config("ci")
    plan = plan_pairs(cfg, 0, "sound/train")
    counts = Counter(it["class"] for it in plan.items)
    assert set(counts) == set(CLASS_NAMES) and max(counts.values()) - min(counts.values()) <= 1
    assert len({it["seed"] for it in plan.items}) == len(plan.items)
    # another world seed, another set or another index: another item seed
    assert item_seed(0, "sound/train", 5) != item_seed(1, "sound/train", 5) != item_seed(0, "speech/train", 5)
    assert plan_pairs(cfg, 0, "sound/train").items == plan.items
    pairs = balanced_pairs(CLASS_NAMES, 90, rng(0))
    assert len(set(pairs)) == 90 and all(a != b for a, b in pairs)
    scenes = plan_scenes(cfg, 0, "is3")
    assert len(scenes.items) == cfg.is3_images and all(len(set(it["classes"])) == 2 for it in scenes.items)


def test_eval_scene_gives_each_object_its_own_sound_and_prompt():
    item = plan_scenes(world_config("ci"), 0, "is3").items[0]
    media = render_eval_scene(CFG, item)
    assert media.classes == item["classes"]
    assert len(media.sounds) == 2 and len(media.prompts) == 2
    assert [p.phrase for p in media.prompts] == item["classes"]
    assert all(p.text.startswith("a picture of") for p in media.prompts)
    assert media.sounds[0].tobytes() != media.sounds[1].tobytes()


def test_bad_configs_and_names_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown class 'dragon'"):
        object_class("dragon")
    with pytest.raises(ValueError, match="unknown world size 'huge'"):
        world_config("huge")
    with pytest.raises(ValueError, match="object_min"):
        WorldConfig(object_min=0.4, object_max=0.6)
    with pytest.raises(ValueError, match="at least two classes"):
        WorldConfig(classes=("star",))
    with pytest.raises(ValueError, match="non-negative"):
        item_seed(-1, "is3", 0)
