"""`evaluate.py`: the paper's experiments (§4.3–§4.4, Tables 1–7) over a checkpoint.

    python evaluate.py --checkpoint runs/ckpt --out eval/ table1 --is3 data/IS3
    python evaluate.py --checkpoint runs/ckpt --out eval/ all --is3 data/IS3 \\
        --ade-speech data/ADE20KSpeechPrompted --ade-sound data/ADE20KSoundPrompted \\
        --places shards/places/val --audioset shards/audioset/eval

Options before the subcommand choose the model and the outputs; each subcommand names its test
sets. Results go to ``<out>/results.json`` (one section per table, merged across runs),
``<out>/tables.md`` (laid out like the paper), ``<out>/heatmaps/*.npz`` with ``--save-heatmaps``
and ``<out>/overlays/*.png`` with ``--overlays N`` or ``--overlay-key KEY``. See
docs/evaluation.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Reproduce the paper's tables over a checkpoint (see docs/evaluation.md).")


@dataclass
class Common:
    checkpoint: Path | None
    preset: str | None
    label: str | None
    out: Path
    device: str
    batch_size: int
    normalization: str
    save_heatmaps: bool
    overlays: int
    overlay_keys: list[str]
    seed: int
    progress: bool
    workers: int
    _loaded: object = field(default=None, repr=False)

    def model(self):
        """(runner, loaded model) — loaded once per process."""
        from evaluation.runner import ModelRunner, load_model, pick_device

        if self._loaded is None:
            device = pick_device(self.device)
            loaded = load_model(self.checkpoint, self.preset, device, self.seed)
            self._loaded = (ModelRunner(loaded.model, device, self.batch_size), loaded)
        return self._loaded

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return Path(self.checkpoint).name if self.checkpoint else f"{self.preset} (random weights)"

    def seg_settings(self):
        from evaluation.segmentation import SegSettings

        return SegSettings(normalization=self.normalization, seed=self.seed,
                           save_heatmaps=self.out / "heatmaps" if self.save_heatmaps else None,
                           overlays=self.overlays, overlay_keys=tuple(self.overlay_keys),
                           overlay_dir=self.out / "overlays", progress=self.progress, workers=self.workers)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


def _write(common: Common, name: str, body: dict, data: dict, started: float, heatmaps: bool = True) -> None:
    from evaluation import report

    _, loaded = common.model()
    skipped = body.pop("skipped", [])
    unknown = body.pop("overlay_keys_unknown", [])
    if unknown:
        typer.echo(f"{name}: no item has the --overlay-key(s) {unknown[:5]}", err=True)
    normalization = common.normalization if heatmaps else "n/a (retrieval uses raw scores)"
    section = {"label": common.name, "model": loaded.description, "normalization": normalization,
               "data": {k: str(v) for k, v in data.items() if v is not None}, "seconds": round(time.time() - started, 1),
               "skipped_total": len(skipped), "skipped": skipped[:200], **body}
    report.write_section(common.out, name, section)
    typer.echo(f"{name}: written to {common.out / report.RESULTS_FILE} and {common.out / report.TABLES_FILE}")


@app.callback()
def main(
    ctx: typer.Context,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Checkpoint directory written by train.py.")] = None,
    preset: Annotated[Optional[str], typer.Option(
        help="Evaluate a model preset with random weights instead of a checkpoint (e.g. tiny; smoke runs).")] = None,
    label: Annotated[Optional[str], typer.Option(help="Method name in the tables (default: checkpoint folder).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for results.json, tables.md, heatmaps, overlays.")] = Path("eval"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Items per forward pass.")] = 16,
    normalization: Annotated[str, typer.Option(
        help="Heatmap min-max normalization: global (one over the set, DenseAV) or per_image.")] = "global",
    save_heatmaps: Annotated[bool, typer.Option(help="Write the heatmaps and masks the metrics used (npz).")] = False,
    overlays: Annotated[int, typer.Option(min=0, help="Overlay PNGs for this many random samples per set.")] = 0,
    overlay_key: Annotated[Optional[list[str]], typer.Option(help="Also draw this sample (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of mixing, off-screen distractors and sample picks.")] = 0,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
    workers: Annotated[int, typer.Option(min=1, help="Threads decoding images and audio ahead of the model.")] = 4,
) -> None:
    if normalization not in ("global", "per_image"):
        raise typer.BadParameter("normalization must be global or per_image")
    ctx.obj = Common(checkpoint, preset, label, out, device, batch_size, normalization, save_heatmaps, overlays,
                     list(overlay_key or []), seed, progress, workers)


# ---------------------------------------------------------------------------------------------
# experiments


def _table1(common: Common, is3: Path, pairing: str, speech_window: str, snr_db: float, strict: bool) -> None:
    from pipeline.testsets.is3 import read_is3
    from evaluation.segmentation import Table1Settings, run_table1

    started = time.time()
    pairings = ("cross", "same") if pairing == "both" else (pairing,)
    dataset = read_is3(is3, require_speech=True, strict=strict)
    runner, _ = common.model()
    body = run_table1(runner, dataset, common.seg_settings(),
                      Table1Settings(pairings=pairings, speech_window=speech_window, snr_db=snr_db))
    _write(common, "table1", body, {"is3": is3}, started)


def _ade(common: Common, speech: Path | None, sound: Path | None, mixed: bool, snr_db: float, strict: bool) -> None:
    from pipeline.testsets.ade20k import read_ade20k_prompted
    from evaluation.segmentation import run_ade_tables

    started = time.time()
    speech_set = read_ade20k_prompted(speech, "speech", strict) if speech else None
    sound_set = read_ade20k_prompted(sound, "sound", strict) if sound else None
    runner, _ = common.model()
    body = run_ade_tables(runner, speech_set, sound_set, common.seg_settings(), mixed, snr_db)
    _write(common, "table4" if mixed else "table2", body, {"ade_speech": speech, "ade_sound": sound}, started)


def _session(common: Common, places: Path | None, audioset: Path | None, pairs: int, pair_seed: int,
             snr_db: float, cache: dict | None = None):
    from pipeline.testsets.retrieval import read_retrieval_set
    from evaluation.retrieval import RetrievalSession

    key = (places, audioset, pairs, pair_seed, snr_db)
    if cache is not None and key in cache:
        return cache[key]
    sets = {}
    if places:
        sets["places"] = read_retrieval_set(places, pairs, pair_seed)
    if audioset:
        sets["audioset"] = read_retrieval_set(audioset, pairs, pair_seed)
    runner, _ = common.model()
    session = RetrievalSession(runner, sets, seed=common.seed, offscreen_snr_db=snr_db, progress=common.progress,
                               workers=common.workers)
    if cache is not None:
        cache[key] = session
    return session


def _retrieval(common: Common, table: str, session, data: dict, ablations: list[str] | None = None) -> None:
    from evaluation import retrieval as R

    started = time.time()
    if table == "table3":
        body = R.run_table3(session, mixed=False)
    elif table == "table5":
        body = R.run_table3(session, mixed=True)
    elif table == "table6":
        body = R.run_table6(session)
    else:
        body = _table7(common, session, data, ablations or [])
    _write(common, table, body, data, started, heatmaps=False)


def _table7(common: Common, session, data: dict, ablations: list[str]) -> dict:
    from evaluation import retrieval as R
    from evaluation.retrieval import RetrievalSession
    from evaluation.runner import ModelRunner, load_model, pick_device

    rows = [R.table7_row(session, common.name)]
    models = []
    for spec in ablations:
        label, sep, path = spec.partition("=")
        if not sep or not path:
            raise ValueError(f"--ablation takes LABEL=CHECKPOINT, got {spec!r}")
        device = pick_device(common.device)
        loaded = load_model(Path(path), None, device)
        other = RetrievalSession(ModelRunner(loaded.model, device, common.batch_size), session.sets,
                                 seed=session.seed, offscreen_snr_db=session.offscreen_snr_db,
                                 progress=common.progress, workers=common.workers)
        rows.append(R.table7_row(other, label))
        models.append({"label": label, **loaded.description})
    return {"results": {"rows": rows}, "counts": session.counts(), "settings": {"ablation_models": models}}


# shared option types
IS3 = Annotated[Path, typer.Option("--is3", help="Extended IS3 root (images/, audio_wav/, gt_segmentation/, speech_wav/).")]
AdeSpeech = Annotated[Optional[Path], typer.Option(help="ADE20KSpeechPrompted/ folder.")]
AdeSound = Annotated[Optional[Path], typer.Option(help="ADE20KSoundPrompted/ folder.")]
Places = Annotated[Optional[Path], typer.Option(help="Shard folder of PlacesAudio val (prep shards).")]
AudioSet = Annotated[Optional[Path], typer.Option(help="Shard folder of AudioSet eval (prep shards).")]
Pairs = Annotated[int, typer.Option(min=1, help="Retrieval pairs (DenseAV: 1,000).")]
PairSeed = Annotated[int, typer.Option(help="np.random.seed of the pair selection (DenseAV: 0).")]
OffSnr = Annotated[float, typer.Option(help="Target-to-off-screen ratio in dB of the mixed variants.")]
Strict = Annotated[bool, typer.Option(help="Fail on the first item with a missing file instead of skipping it.")]
Pairing = Annotated[str, typer.Option(help="cross (sound of one object, name of the other), same, or both.")]
Window = Annotated[str, typer.Option(help="Speech-head frames: advanced (object words ±0.2 s) or basic (all).")]
Ablation = Annotated[Optional[list[str]], typer.Option(help="LABEL=CHECKPOINT of an ablated model (repeatable).")]


@app.command()
def table1(ctx: typer.Context, is3: IS3, pairing: Pairing = "both", speech_window: Window = "advanced",
           snr_db: Annotated[float, typer.Option(help="Speech-to-sound ratio of the mixture (dB).")] = 0.0,
           strict: Strict = False) -> None:
    """Table 1: simultaneous grounding of mixed speech + sound on Extended IS3."""
    if pairing not in ("cross", "same", "both"):
        raise typer.BadParameter("pairing must be cross, same or both")
    try:
        _table1(ctx.obj, is3, pairing, speech_window, snr_db, strict)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc


@app.command()
def table2(ctx: typer.Context, ade_speech: AdeSpeech = None, ade_sound: AdeSound = None, strict: Strict = False) -> None:
    """Table 2: ADE20K speech/sound-prompted segmentation, total and specialized head."""
    try:
        _ade(ctx.obj, ade_speech, ade_sound, False, 0.0, strict)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc


@app.command()
def table4(ctx: typer.Context, ade_speech: AdeSpeech = None, ade_sound: AdeSound = None,
           offscreen_snr_db: OffSnr = 0.0, strict: Strict = False) -> None:
    """Table 4: Table 2 with an off-screen clip of the other audio type mixed into every prompt."""
    try:
        _ade(ctx.obj, ade_speech, ade_sound, True, offscreen_snr_db, strict)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc


def _retrieval_command(ctx, table, places, audioset, pairs, pair_seed, snr_db, ablation=None):
    try:
        session = _session(ctx.obj, places, audioset, pairs, pair_seed, snr_db)
        _retrieval(ctx.obj, table, session, {"places": places, "audioset": audioset}, ablation)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc


@app.command()
def table3(ctx: typer.Context, places: Places = None, audioset: AudioSet = None, pairs: Pairs = 1000,
           pair_seed: PairSeed = 0) -> None:
    """Table 3: cross-modal retrieval R@1/5/10 both directions, total (sum of heads) and per head."""
    _retrieval_command(ctx, "table3", places, audioset, pairs, pair_seed, 0.0)


@app.command()
def table5(ctx: typer.Context, places: Places = None, audioset: AudioSet = None, pairs: Pairs = 1000,
           pair_seed: PairSeed = 0, offscreen_snr_db: OffSnr = 0.0) -> None:
    """Table 5: Table 3 with an off-screen clip of the other audio type mixed into every query."""
    _retrieval_command(ctx, "table5", places, audioset, pairs, pair_seed, offscreen_snr_db)


@app.command()
def table6(ctx: typer.Context, places: Places = None, audioset: AudioSet = None, pairs: Pairs = 1000,
           pair_seed: PairSeed = 0, offscreen_snr_db: OffSnr = 0.0) -> None:
    """Table 6: retrieval with the opposite head (clean and mixed), plus Pred.Dis / Act.Dis."""
    _retrieval_command(ctx, "table6", places, audioset, pairs, pair_seed, offscreen_snr_db)


@app.command()
def table7(ctx: typer.Context, places: Places = None, audioset: AudioSet = None, pairs: Pairs = 1000,
           pair_seed: PairSeed = 0, ablation: Ablation = None) -> None:
    """Table 7: the sound head's retrieval on AudioSet and Places for this model and its ablations
    (--ablation "L_dis only=runs/no_cor" ...)."""
    _retrieval_command(ctx, "table7", places, audioset, pairs, pair_seed, 0.0, list(ablation or []))


@app.command("all")
def run_all(ctx: typer.Context, is3: Annotated[Optional[Path], typer.Option("--is3", help="Extended IS3 root.")] = None,
            ade_speech: AdeSpeech = None, ade_sound: AdeSound = None, places: Places = None,
            audioset: AudioSet = None, pairs: Pairs = 1000, pair_seed: PairSeed = 0,
            offscreen_snr_db: OffSnr = 0.0, ablation: Ablation = None, strict: Strict = False) -> None:
    """Every experiment the given test sets allow (Table 7 only with --ablation); the others are
    reported as skipped."""
    common: Common = ctx.obj
    plan = []
    if is3:
        plan.append(("table1", lambda: _table1(common, is3, "both", "advanced", 0.0, strict)))
    if ade_speech or ade_sound:
        plan.append(("table2", lambda: _ade(common, ade_speech, ade_sound, False, 0.0, strict)))
    if ade_speech and ade_sound:
        plan.append(("table4", lambda: _ade(common, ade_speech, ade_sound, True, offscreen_snr_db, strict)))
    cache: dict = {}
    data = {"places": places, "audioset": audioset}

    def retrieval(table, snr):
        return lambda: _retrieval(common, table, _session(common, places, audioset, pairs, pair_seed, snr, cache),
                                  data, list(ablation or []))

    if places or audioset:
        plan.append(("table3", retrieval("table3", 0.0)))
    if places and audioset:
        plan += [("table5", retrieval("table5", offscreen_snr_db)), ("table6", retrieval("table6", offscreen_snr_db))]
        if ablation:
            plan.append(("table7", retrieval("table7", 0.0)))
    planned = {name for name, _ in plan}
    for name in ("table1", "table2", "table3", "table4", "table5", "table6", "table7"):
        if name not in planned:
            typer.echo(f"{name}: skipped (its test sets were not given)")
    if not plan:
        raise _fail(ValueError("no test set given: pass --is3, --ade-speech/--ade-sound, --places/--audioset"))
    failures = 0
    for name, run in plan:
        try:
            run()
        except (ValueError, OSError) as exc:
            failures += 1
            typer.echo(f"{name}: failed: {exc}", err=True)
    if failures:
        raise typer.Exit(1)


@app.command()
def recompute(archive: Annotated[Path, typer.Argument(help="An npz written with --save-heatmaps.")]) -> None:
    """Recompute mAP / mIoU from a heatmap archive, to check or reuse the numbers."""
    from evaluation import metrics as M

    try:
        data = np.load(archive, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _fail(ValueError(f"cannot read {archive}: {exc}")) from exc
    names = sorted(k[: -len("_heatmaps")] for k in data.files if k.endswith("_heatmaps"))
    typer.echo(f"{archive} (normalization: {data['normalization']})")
    for name in names:
        masks = data[f"{name}_masks"] if f"{name}_masks" in data.files else data["masks"]
        classes = data[f"{name}_classes"] if f"{name}_classes" in data.files else data["classes"]
        res = M.class_pooled_segmentation(data[f"{name}_heatmaps"], masks, classes)
        typer.echo(f"  {name}: mAP {100 * res.mAP:.2f}  mIoU {100 * res.mIoU:.2f}  ({res.n_classes} classes)")


if __name__ == "__main__":
    app()
