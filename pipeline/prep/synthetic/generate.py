"""Generate the whole world under one root::

    <out>/speech/train/   <out>/sound/train/    speech and sound shards (training)
    <out>/speech/val/     <out>/sound/val/      held-out retrieval shard sets
    <out>/music/train/    <out>/music/val/      music shards, only in a world with music (``cfg.music``)
    <out>/is3/                                  Extended-IS3 tree (two objects per image)
    <out>/ade20k/ADE20KSpeechPrompted/          DenseAV ADE20K layout, speech prompts
    <out>/ade20k/ADE20KSoundPrompted/           DenseAV ADE20K layout, sound prompts
    <out>/world.json                            classes, config, counts; written last

The same seed and config give the same files (byte for byte, except the shard builder's
timestamps in ``*_stats.json`` and ``dataset.json``). A rerun into the same root resumes: committed
shards are kept, the trees are rewritten. A different seed or config into a root that holds
another world is refused unless ``overwrite`` is given.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.prep.synthetic import music, speech, writers
from pipeline.prep.synthetic.world import (
    CLASSES,
    GENERATOR_VERSION,
    SOURCE,
    WorldConfig,
    plan_pairs,
    plan_scenes,
)

WORLD_FILE = "world.json"
PENDING_FILE = "world.pending.json"  # the header of a generation in progress
SHARD_SETS = ("speech/train", "sound/train", "speech/val", "sound/val")
MUSIC_SETS = ("music/train", "music/val")  # after the others: a world without music keeps its order
TREES = ("is3", "ade20k")


class WorldExists(ValueError):
    """The output root holds another generated world (other seed, size or version)."""


def _header(cfg: WorldConfig, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "seed": int(seed), "config": cfg.to_dict()}


def _check_root(out: Path, header: dict, overwrite: bool) -> None:
    """Refuse to mix two worlds in one root; same header = resume."""
    if overwrite:
        remove_world(out)
        return
    for name in (WORLD_FILE, PENDING_FILE):
        path = out / name
        if path.is_file():
            try:
                found = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                found = {}
            if {k: found.get(k) for k in header} == header:
                return
            raise WorldExists(
                f"{out} holds another generated world ({path.name}: seed {found.get('seed')}, generator "
                f"version {found.get('generator_version')}, other sizes or --music?); choose another --out or pass "
                f"--overwrite to replace it"
            )
    clashes = [p for p in (*SHARD_SETS, *MUSIC_SETS, *TREES) if (out / p).exists()]
    if clashes:
        raise WorldExists(
            f"{out} already holds {', '.join(clashes)} but no {WORLD_FILE}: not a world this generator wrote; "
            f"choose another --out or pass --overwrite to replace those folders"
        )


def remove_world(out: Path) -> None:
    """Delete what the generator writes under ``out`` (and nothing else)."""
    for sub in ("speech", "sound", "music", *TREES):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)
    for name in (WORLD_FILE, PENDING_FILE):
        (out / name).unlink(missing_ok=True)


def describe_classes(cfg: WorldConfig) -> list[dict]:
    return [
        {
            "name": c.name,
            "ade_class_id": c.ade_class_id,
            "shape": c.shape,
            "hue": c.hue,
            "texture": c.texture,
            "timbre": c.timbre,
            "pitch_hz": c.pitch_hz,
        }
        for c in CLASSES
        if c.name in cfg.classes
    ]


def describe_music(cfg: WorldConfig) -> dict:
    """Each class's instrument and melody (MIDI notes before the per-clip transposition)."""
    melodies = {name: music.MELODIES[name] for name in cfg.classes}
    return {
        "synthesis": "additive and FM, offline (pipeline.prep.synthetic.music)",
        "classes": {
            name: {"instrument": m.instrument, "notes": [m.tonic_midi + s for s in m.steps], "beats": list(m.beats)}
            for name, m in melodies.items()
        },
    }


def generate_world(
    out: str | Path,
    cfg: WorldConfig,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Generate every set of the world under ``out``; returns the content of world.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = _header(cfg, seed)
    _check_root(out, header, overwrite)
    write_json(out / PENDING_FILE, header)
    started = time.perf_counter()
    if workers > 0:
        # Workers fork from this process. Speech is resampled to 16 kHz with torchaudio
        # (pipeline.audio.resample); importing it here once spares every worker of every pool its
        # own import of torch (seconds each). Import only: no torch op runs before the fork.
        import torchaudio.functional  # noqa: F401
    sets: dict[str, dict] = {}

    is3 = writers.write_is3(plan_scenes(cfg, seed, "is3"), cfg, out / "is3", workers, progress)
    sets["is3"] = {"format": "extended-is3", "path": "is3", **is3}
    for kind in ("speech", "sound"):
        ade = writers.write_ade20k(
            plan_scenes(cfg, seed, f"ade20k/{kind}"), cfg, out / "ade20k", kind, workers, progress
        )
        ade["path"] = str(Path(ade["path"]).relative_to(out))
        sets[f"ade20k/{kind}"] = {"format": "denseav-ade20k-prompted", **ade}
    for name in SHARD_SETS + (MUSIC_SETS if cfg.music else ()):
        plan = plan_pairs(cfg, seed, name)
        summary = writers.write_shard_set(plan, cfg, out / name, workers, progress)
        if summary.failed:
            raise RuntimeError(
                f"{summary.failed} of {len(plan.items)} items of {name} failed ({summary.failures}); "
                f"see the parquet files in {out / name}"
            )
        sets[name] = {"format": "shards", "path": name, "audio_type": name.split("/")[0], "items": len(plan.items)}

    world = {
        **header,
        "source": SOURCE,
        "classes": describe_classes(cfg),
        "sets": sets,
        "speech": {
            "backend": "espeak",
            "voices": list(speech.VOICES[: cfg.voices]),
            "train_templates": list(speech.TRAIN_TEMPLATES[: cfg.templates]),
            "eval_template": speech.EVAL_TEMPLATE,
            "timing": "engine",
            "rate_wpm": list(cfg.rate_wpm),
        },
    }
    if cfg.music:
        world["music"] = describe_music(cfg)
    write_json(out / WORLD_FILE, world)  # last: the world is complete
    (out / PENDING_FILE).unlink(missing_ok=True)
    world["wall_seconds"] = round(time.perf_counter() - started, 1)
    return world
