"""Segmentation experiments: Table 1 (``run_table1``, simultaneous grounding on Extended IS3),
Table 2 (``run_table2``, ADE20K speech- and sound-prompted segmentation) and Table 4
(``run_table4``, the same with off-screen audio mixed in).

Protocol (reference §5): the matched pair's heatmap, heads aggregated by element-wise max
("total") or one head, averaged over the valid frames (speech "advanced": the object word's
frames ±0.2 s), normalized (global min-max over the set or per image, an option written into every
result), bilinearly upsampled to the 224 x 224 centre crop of the mask, then class-pooled mAP/mIoU.
Heatmaps are kept at feature resolution until a class is scored, so memory stays proportional to
the number of items times h x w. Table 1 also keeps each pair's own AP per head
(``item_average_precisions``, the section's ``per_item``), by which examples can be chosen.

A model with one head (ImageBind, CAV-MAE, DenseAV's one-head files) has no specialized head: its
Tables 2 and 4 hold the totals only (``head`` would repeat them) and its Table 1 has no
``opposite_head``; Table 1's two columns are its one head, as the paper's baseline rows. A model
whose heads answer other types (``model.head_types`` without ``sound`` or ``speech``) has no head
for a column: the table is one ``ValueError`` line naming the model's head types, before any item
is read, as Tables 6 and 7 are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from evaluation import metrics, report
from evaluation.runner import ClipSource, ModelRunner, batches, loaded_batches, upsample, with_offscreen
from pipeline.data.mixing import MixConfig, OffscreenMixer, mix_pair
from pipeline.data.transform import eval_image
from pipeline.progress import progress_bar
from pipeline.testsets.ade20k import PromptedSet, load_ade_class_mask
from pipeline.testsets.common import Clip, load_binary_mask, load_clip, open_image
from pipeline.testsets.is3 import IS3Dataset, Table1Pair

SPEECH_WINDOWS = ("advanced", "basic")


@dataclass
class SegSettings:
    normalization: str = "global"
    mask_size: int = 224
    seed: int = 0
    save_heatmaps: Path | None = None  # folder for the npz archives
    overlays: int = 0  # random samples to draw
    overlay_keys: Sequence[str] = ()
    overlay_dir: Path | None = None
    progress: bool = True
    workers: int = 4  # threads decoding images and audio ahead of the model

    def __post_init__(self) -> None:
        if self.normalization not in metrics.NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {metrics.NORMALIZATIONS}, got {self.normalization!r}")


@dataclass
class Variant:
    """One way of turning a matched pair into a heatmap: which head, which frames, which mask."""

    name: str
    head: object  # "max" (total) or a head index
    word_window: bool = False


@dataclass
class MapSet:
    """Low-resolution heatmaps of one variant plus what each item is scored against."""

    maps: list = field(default_factory=list)  # [h, w] float32 per item
    classes: list = field(default_factory=list)
    mask_ids: list = field(default_factory=list)  # keys into the mask store
    window_fallbacks: int = 0


class MaskStore:
    """Masks at the metric's resolution, bit-packed (1/8 of a bool array), loaded once per id."""

    def __init__(self, size: int):
        self.size = size
        self._packed: dict[str, np.ndarray] = {}

    def add(self, mask_id: str, load: Callable[[], np.ndarray]) -> None:
        if mask_id not in self._packed:
            mask = load()
            if mask.shape != (self.size, self.size):
                raise ValueError(f"mask {mask_id} has shape {mask.shape}, expected {(self.size, self.size)}")
            self._packed[mask_id] = np.packbits(mask.ravel())

    def get(self, ids: Sequence[str]) -> np.ndarray:
        n = self.size * self.size
        return (
            np.stack([np.unpackbits(self._packed[i], count=n).reshape(self.size, self.size).astype(bool) for i in ids])
            if len(ids)
            else np.zeros((0, self.size, self.size), bool)
        )


def _normalized(ms: MapSet, mode: str) -> np.ndarray:
    return metrics.normalize_heatmaps(np.stack(ms.maps), mode)


def score_variant(ms: MapSet, masks: MaskStore, settings: SegSettings) -> tuple[dict, np.ndarray]:
    """Class-pooled mAP / mIoU of one variant; returns the result and the normalized low-res maps."""
    norm = _normalized(ms, settings.normalization)
    ids = np.asarray(ms.mask_ids)

    def fetch(idx):
        return upsample(norm[idx], settings.mask_size), masks.get(list(ids[idx]))

    res = metrics.pooled_segmentation_by_class(ms.classes, fetch)
    out = res.as_dict()
    out["window_fallbacks"] = ms.window_fallbacks
    return out, norm


def localization_extras(
    norm: np.ndarray, mask_ids: Sequence[str], masks: MaskStore, groups: Sequence[str], size: int, chunk: int = 256
) -> tuple[dict, np.ndarray]:
    """cIoU / AUC / IIoU (median and adaptive thresholds) and the per-item IoUs (median)."""
    ious = {"median": [], "adaptive": []}
    for idx in batches(len(mask_ids), chunk):
        idx = list(idx)
        maps = upsample(norm[idx], size)
        gts = masks.get([mask_ids[i] for i in idx])
        for h, g in zip(maps, gts):
            for mode in ious:
                ious[mode].append(metrics.sample_iou(h, g, mode))
    med, ada = np.asarray(ious["median"]), np.asarray(ious["adaptive"])
    extras = {
        "cIoU": metrics.ciou(med),
        "AUC": metrics.auc(med),
        "IIoU": metrics.iiou(med, groups),
        "cIoU_adaptive": metrics.ciou(ada),
        "AUC_adaptive": metrics.auc(ada),
        "IIoU_adaptive": metrics.iiou(ada, groups),
    }
    return extras, med


def item_average_precisions(
    norm: np.ndarray, mask_ids: Sequence[str], masks: MaskStore, size: int, chunk: int = 256
) -> list[float | None]:
    """Each item's own pixel AP: its map (upsampled as the metrics see it) against its own mask
    (``metrics.binary_average_precision``; None for a mask without an object pixel). An AP is
    unchanged by the set's min-max normalization, so it is the item's alone. The table's mAP
    pools the pixels of each class instead, so it is not the mean of these."""
    out: list[float | None] = []
    for idx in batches(len(mask_ids), chunk):
        idx = list(idx)
        for heat, mask in zip(upsample(norm[idx], size), masks.get([mask_ids[i] for i in idx])):
            ap = metrics.binary_average_precision(heat, mask)
            out.append(round(ap, 6) if np.isfinite(ap) else None)
    return out


def _choose_overlays(keys: Sequence[str], settings: SegSettings) -> list[int]:
    """Items to draw: those named by ``overlay_keys`` (keys of other sets are ignored here; the
    run reports the keys no set knew) plus ``overlays`` random others."""
    wanted = set(settings.overlay_keys)
    chosen = [i for i, k in enumerate(keys) if k in wanted]
    if settings.overlays > 0:
        rng = np.random.default_rng(settings.seed)
        pool = [i for i in range(len(keys)) if i not in chosen]
        chosen += sorted(rng.choice(pool, size=min(settings.overlays, len(pool)), replace=False).tolist())
    return chosen


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+." else "-" for c in key)[:150]


# ---------------------------------------------------------------------------------------------
# shared loop


@dataclass
class Query:
    """One loaded query: the image, the (mixed) clip, the object word's span (speech) and, per
    variant, the class and mask id it is scored against."""

    image: object
    clip: Clip
    span: tuple[float, float] | None
    targets: dict[str, tuple[str, str]]


def _collect(
    runner: ModelRunner,
    n: int,
    variants: list[Variant],
    load_item: Callable[[int], Query],
    settings: SegSettings,
    description: str,
) -> dict[str, MapSet]:
    """Run the model over ``n`` queries and keep each variant's low-resolution heatmaps."""
    sets = {v.name: MapSet() for v in variants}
    with progress_bar(n, description, settings.progress) as bar:
        for idx, queries in loaded_batches(n, runner.batch_size, load_item, settings.workers):
            v = runner.encode_images([q.image for q in queries])
            a, frame_mask = runner.encode_audio([q.clip for q in queries])
            window = None
            if any(var.word_window for var in variants):
                window = runner.word_window([q.span or (0.0, 0.0) for q in queries], a.shape[-1])
            for var in variants:
                maps, fallback = runner.pair_heatmaps(a, frame_mask, v, var.head, window if var.word_window else None)
                ms = sets[var.name]
                ms.maps.extend(list(maps))
                ms.window_fallbacks += fallback
                for q in queries:
                    cls, mask_id = q.targets[var.name]
                    ms.classes.append(cls)
                    ms.mask_ids.append(mask_id)
            bar.update(len(idx))
    return sets


# ---------------------------------------------------------------------------------------------
# Table 1: simultaneous grounding on Extended IS3


@dataclass
class Table1Settings:
    pairings: Sequence[str] = ("cross", "same")
    speech_window: str = "advanced"
    snr_db: float = 0.0  # speech-to-sound ratio of the mixture
    level_db: float = -25.0  # output level of the mixture (dBFS)


def run_table1(runner: ModelRunner, dataset: IS3Dataset, settings: SegSettings, t1: Table1Settings) -> dict:
    if t1.speech_window not in SPEECH_WINDOWS:
        raise ValueError(f"speech window must be one of {SPEECH_WINDOWS}, got {t1.speech_window!r}")
    runner.require_heads("sound", "speech", needed_by="Table 1")
    masks = MaskStore(settings.mask_size)
    results, counts, skipped = {}, {}, [s.as_dict() for s in dataset.skipped]
    per_item: dict[str, dict] = {}
    variants = [
        Variant("sound", runner.sound_head),
        Variant("speech", runner.speech_head, word_window=t1.speech_window == "advanced"),
    ]
    mix_cfg = MixConfig()
    # the two queries of an image follow each other and share their clips
    clips = functools.lru_cache(maxsize=64)(load_clip)
    known_keys: set[str] = set()
    for pairing in t1.pairings:
        pairs, pair_skips = dataset.pairs(pairing)
        skipped += [s.as_dict() | {"pairing": pairing} for s in pair_skips]
        if not pairs:
            raise ValueError(f"{dataset.root}: no {pairing}-object pair to evaluate")

        def load_item(i, pairs=pairs):
            p: Table1Pair = pairs[i]
            sound, speech = clips(p.sound.audio_path), clips(p.speech.speech_path)
            rng = np.random.default_rng([settings.seed, i])
            mix = mix_pair(
                speech.audio,
                sound.audio,
                rng,
                mix_cfg,
                speech.valid,
                sound.valid,
                snr_db=t1.snr_db,
                level_db=t1.level_db,
            )
            for ann in (p.sound, p.speech):
                masks.add(ann.stem, functools.partial(load_binary_mask, ann.mask_path, settings.mask_size))
            return Query(
                open_image(p.sound.image_path),
                Clip(mix.mixture, max(speech.valid, sound.valid)),
                tuple(p.speech.speech["object_span"]),
                {"sound": (p.sound.target, p.sound.stem), "speech": (p.speech.target, p.speech.stem)},
            )

        sets = _collect(runner, len(pairs), variants, load_item, settings, f"Table 1 ({pairing})")
        groups = [p.sound.image_id for p in pairs]
        res, norms, ious = {}, {}, {}
        for var in variants:
            res[var.name], norms[var.name] = score_variant(sets[var.name], masks, settings)
            res[var.name]["extras"], ious[var.name] = localization_extras(
                norms[var.name], sets[var.name].mask_ids, masks, groups, settings.mask_size
            )
        res["joint_hit"] = float(np.mean((ious["sound"] >= metrics.IOU_HIT) & (ious["speech"] >= metrics.IOU_HIT)))
        # Each head scored against the *other* audio type's object: the speech head on the sounding
        # object, the sound head on the named one. A disentangled model scores lower here than
        # with the right head (in cross pairs the two objects differ). One head has no other head.
        if runner.num_heads > 1:
            res["opposite_head"] = {}
            for target, other in (("sound", "speech"), ("speech", "sound")):
                swapped = MapSet(maps=sets[other].maps, classes=sets[target].classes, mask_ids=sets[target].mask_ids)
                scored, _ = score_variant(swapped, masks, settings)
                res["opposite_head"][target] = {"mAP": scored["mAP"], "mIoU": scored["mIoU"]}
        results[pairing] = res
        counts[f"{pairing}_pairs"] = len(pairs)
        keys = [p.key for p in pairs]
        known_keys.update(keys)
        # each pair's AP of the sound head on the sounding object and of the speech head on the
        # named one, so that an example can be picked by a rule (the demo takes the median pair)
        per_item[pairing] = {"keys": keys} | {
            f"{v.name}_AP": item_average_precisions(norms[v.name], sets[v.name].mask_ids, masks, settings.mask_size)
            for v in variants
        }
        if settings.save_heatmaps is not None:
            report.save_heatmaps(
                Path(settings.save_heatmaps) / f"table1_{pairing}.npz",
                keys=keys,
                image_ids=groups,
                normalization=settings.normalization,
                **{f"{k}_heatmaps": upsample(norms[k], settings.mask_size) for k in norms},
                **{f"{k}_masks": masks.get(sets[k].mask_ids) for k in sets},
                **{f"{k}_classes": np.asarray(sets[k].classes) for k in sets},
            )
        if settings.overlay_dir is not None and (settings.overlays or settings.overlay_keys):
            for i in _choose_overlays(keys, settings):
                p = pairs[i]
                image = eval_image(open_image(p.sound.image_path), settings.mask_size)
                report.save_overlay(
                    Path(settings.overlay_dir) / f"table1_{pairing}_{_safe_name(keys[i])}.png",
                    image,
                    [
                        ("image", None, None),
                        (
                            f"sound head: {p.sound.target}",
                            upsample(norms["sound"][i : i + 1], settings.mask_size)[0],
                            masks.get([p.sound.stem])[0],
                        ),
                        (
                            f'speech head: "{p.speech.speech["phrase"]}"',
                            upsample(norms["speech"][i : i + 1], settings.mask_size)[0],
                            masks.get([p.speech.stem])[0],
                        ),
                    ],
                    title=f"{pairing}: sound of {p.sound.target} + speech naming {p.speech.target}",
                )
    return {
        "results": results,
        "counts": counts,
        "per_item": per_item,
        "skipped": skipped,
        "settings": {
            "speech_window": t1.speech_window,
            "snr_db": t1.snr_db,
            "level_db": t1.level_db,
            "mask_size": settings.mask_size,
            "extras_threshold": "median (adaptive in *_adaptive)",
            "speech_backend": dataset.speech_meta.get("backend"),
            "speech_voice": dataset.speech_meta.get("voice"),
        },
        "overlay_keys_unknown": sorted(set(settings.overlay_keys) - known_keys),
    }


# ---------------------------------------------------------------------------------------------
# Tables 2 and 4: ADE20K prompted segmentation


def _ade_variants(kind: str, runner: ModelRunner) -> list[Variant]:
    """The total (max over heads) and the prompt's specialized head; the total only for one head."""
    if kind == "sound":
        variants = [Variant("total", "max"), Variant("head", runner.sound_head)]
    else:
        variants = [
            Variant("total", "max", word_window=True),
            Variant("head", runner.speech_head, word_window=True),
            Variant("basic_total", "max"),
            Variant("basic_head", runner.speech_head),
        ]
    return variants if runner.num_heads > 1 else [v for v in variants if v.head == "max"]


def run_ade(
    runner: ModelRunner,
    ds: PromptedSet,
    settings: SegSettings,
    mixer: OffscreenMixer | None = None,
    table: str = "table2",
) -> tuple[dict, dict, set[str]]:
    """One prompted set (speech or sound): per-variant mAP/mIoU, counts."""
    masks = MaskStore(settings.mask_size)
    items = ds.items
    variants = _ade_variants(ds.kind, runner)

    def load_item(i):
        it = items[i]
        clip = load_clip(it.audio_path)
        mask_id = f"{it.row}"
        masks.add(mask_id, functools.partial(_class_mask, it.annotation_path, it.class_id, settings.mask_size))
        return Query(
            open_image(it.image_path),
            with_offscreen(mixer, i, clip) if mixer is not None else clip,
            it.timing,
            {v.name: (str(it.class_id), mask_id) for v in variants},
        )

    label = {"table2": "Table 2", "table4": "Table 4"}.get(table, table)
    sets = _collect(runner, len(items), variants, load_item, settings, f"{label} ({ds.kind})")
    res, norms = {}, {}
    for v in variants:
        res[v.name], norms[v.name] = score_variant(sets[v.name], masks, settings)
    keys = [f"row{it.row}-{Path(it.image_path).stem}" for it in items]
    if settings.save_heatmaps is not None:
        report.save_heatmaps(
            Path(settings.save_heatmaps) / f"{table}_{ds.kind}.npz",
            keys=keys,
            classes=np.asarray(sets[variants[0].name].classes),
            masks=masks.get(sets[variants[0].name].mask_ids),
            normalization=settings.normalization,
            **{f"{k}_heatmaps": upsample(norms[k], settings.mask_size) for k in norms},
        )
    if settings.overlay_dir is not None and (settings.overlays or settings.overlay_keys):
        head_name = "sound head" if ds.kind == "sound" else "speech head"
        for i in _choose_overlays(keys, settings):
            it = items[i]
            image = eval_image(open_image(it.image_path), settings.mask_size)
            mask = masks.get([f"{it.row}"])[0]
            panels = [
                ("image", None, None),
                ("total", upsample(norms["total"][i : i + 1], settings.mask_size)[0], mask),
            ]
            if "head" in norms:  # a one-head model has the total only
                panels.append((head_name, upsample(norms["head"][i : i + 1], settings.mask_size)[0], mask))
            report.save_overlay(
                Path(settings.overlay_dir) / f"{table}_{ds.kind}_{_safe_name(keys[i])}.png",
                image,
                panels,
                title=f"{ds.kind} prompt: {it.class_name}",
            )
    counts = {
        f"{ds.kind}_items": len(items),
        f"{ds.kind}_dropped_by_protocol": ds.dropped_by_protocol,
        f"{ds.kind}_skipped": len(ds.skipped),
    }
    return res, counts, set(keys)


def _class_mask(path: Path, class_id: int, size: int) -> np.ndarray:
    return load_ade_class_mask(path, size) == class_id


def run_table2(
    runner: ModelRunner, speech: PromptedSet | None, sound: PromptedSet | None, settings: SegSettings
) -> dict:
    """Table 2: prompted segmentation of whichever ADE20K sets are given, clean prompts."""
    return _prompted_tables(runner, speech, sound, settings, mixed=False)


def run_table4(
    runner: ModelRunner,
    speech: PromptedSet | None,
    sound: PromptedSet | None,
    settings: SegSettings,
    offscreen_snr_db: float = 0.0,
) -> dict:
    """Table 4: Table 2 with each query mixed with an off-screen clip of the other audio type,
    drawn deterministically from the other prompted set."""
    return _prompted_tables(runner, speech, sound, settings, mixed=True, offscreen_snr_db=offscreen_snr_db)


def _prompted_tables(
    runner: ModelRunner,
    speech: PromptedSet | None,
    sound: PromptedSet | None,
    settings: SegSettings,
    mixed: bool,
    offscreen_snr_db: float = 0.0,
) -> dict:
    table = "table4" if mixed else "table2"
    if speech is None and sound is None:
        raise ValueError("give at least one of the ADE20K speech- and sound-prompted sets")
    if mixed and (speech is None or sound is None):
        raise ValueError("Table 4 mixes each set with clips of the other: give both ADE20K sets")
    # each prompted set's specialized head ("head" beside "total")
    runner.require_heads(
        *(ds.kind for ds in (sound, speech) if ds is not None), needed_by="Table 4" if mixed else "Table 2"
    )
    results, counts, skipped = {}, {}, []
    known_keys: set[str] = set()
    for ds, other in ((sound, speech), (speech, sound)):
        if ds is None:
            continue
        mixer = None
        if mixed:
            paths = [it.audio_path for it in other.items]
            mixer = OffscreenMixer(
                ClipSource(lambda i, paths=paths: load_clip(paths[i]), len(paths)),
                target_type=ds.kind,
                seed=settings.seed,
                snr_db=offscreen_snr_db,
            )
        res, cnt, keys = run_ade(runner, ds, settings, mixer, table)
        known_keys |= keys
        results[ds.kind] = res
        counts.update(cnt)
        skipped += [s.as_dict() | {"set": ds.kind} for s in ds.skipped]
    settings_out = {"mask_size": settings.mask_size, "speech_window": "advanced (basic_* over all frames)"}
    if mixed:
        settings_out |= {
            "offscreen_snr_db": offscreen_snr_db,
            "offscreen_source": "the other ADE20K prompted set",
            "offscreen_seed": settings.seed,
        }
    return {
        "results": results,
        "counts": counts,
        "skipped": skipped,
        "settings": settings_out,
        "overlay_keys_unknown": sorted(set(settings.overlay_keys) - known_keys),
    }
