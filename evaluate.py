"""`evaluate.py`: the paper's experiments (§4.3–§4.4, Tables 1–7) over a checkpoint.

    python evaluate.py --checkpoint runs/ckpt --out eval/ table1 --is3 data/IS3
    python evaluate.py --checkpoint runs/ckpt --out eval/ all --is3 data/IS3 \\
        --ade-speech data/ADE20KSpeechPrompted --ade-sound data/ADE20KSoundPrompted \\
        --places shards/places/val --audioset shards/audioset/eval
    python evaluate.py compare Ours=eval/ours DenseAV=eval/denseav --out eval/compare

Options before the subcommand choose the model and the outputs; each subcommand names its test
sets. Results go to ``<out>/results.json`` (one section per table, merged across runs),
``<out>/tables.md`` (laid out like the paper), ``<out>/heatmaps/*.npz`` with ``--save-heatmaps``
and ``<out>/overlays/*.png`` with ``--overlays N`` or ``--overlay-key KEY``. ``compare`` lays out
several runs' results.json as the paper's tables, one row per model. See docs/evaluation.md.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import numpy as np
import typer

from pipeline.cli_support import PROBLEMS_FOUND, fail, with_options

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Reproduce the paper's tables over a checkpoint (see docs/evaluation.md).",
)


def _checkpoint_failure(exc: Exception) -> NoReturn:
    fail(f"{exc} or point --checkpoint at another checkpoint")


def _run(run, name: str, data, opts) -> None:
    """Run one table of the registry and write its section."""
    from evaluation import report, tables

    table = tables.TABLES[name]
    started = time.time()
    body = table.run(run, data, opts)
    unknown = body.pop("overlay_keys_unknown", [])
    if unknown:
        typer.echo(f"{name}: no item has the --overlay-key(s) {unknown[:5]}", err=True)
    tables.write_section(run.out, name, tables.section(run, table, body, data, started))
    typer.echo(f"{name}: written to {run.out / report.RESULTS_FILE} and {run.out / report.TABLES_FILE}")


def _name_heads(run, data, opts) -> None:
    """Name the heads before the first table (``--heads pred-dis`` needs both retrieval sets)."""
    if run.heads == "pred-dis" and not (data.places and data.audioset):
        raise ValueError(
            "--heads pred-dis names the heads from the retrieval pairs: pass --places and --audioset "
            "(to `all`, table3, table5, table6 or table7)"
        )
    heads = run.name_heads(data, opts)
    if heads["rule"] != "config":
        typer.echo(
            f"heads named by Pred.Dis: sound = head {heads['sound_head']}, speech = head {heads['speech_head']} "
            f"(Pred.Dis {100 * heads['pred_dis']:.1f})"
        )


def _command(ctx: typer.Context, name: str, sets: dict, **options) -> None:
    """One table's command: the test sets (``DataPaths`` fields) and options it was given; errors
    as one line."""
    from evaluation.tables import DataPaths, TableOptions
    from model.checkpoint import CheckpointError

    try:
        run, data, opts = ctx.obj.eval_run(), DataPaths(**sets), TableOptions(**options)
        data.retrieval_paths()  # (a bad --set is one line before the model loads)
        _name_heads(run, data, opts)
        _run(run, name, data, opts)
    except CheckpointError as exc:
        _checkpoint_failure(exc)
    except (ValueError, OSError) as exc:
        fail(str(exc))


@dataclass(frozen=True)
class RunOptions:
    """The options given before the table command: the model under test and the outputs every
    table of the run shares. The command turns them into ``evaluation.tables.EvalRun``
    (``eval_run``): importing it loads torch, which `COMMAND --help` does not need."""

    checkpoint: Annotated[
        Optional[str],
        typer.Option(
            help="Checkpoint directory written by train.py, a DenseAV release: denseav_*.ckpt, "
            "its model.safetensors or Hugging Face folder (docs/model.md), a baseline release file: "
            "ImageBind's imagebind_huge.pth or CAV-MAE's audio_model.21.pth, with one head: one map per "
            "clip, N/A in the specialized-head columns and Table 6 (see docs/baselines.md), or a Hugging Face "
            "Hub repo id owner/name[@revision] of this project's checkpoints or DenseAV's copies "
            "(mhamilton723/DenseAV-sound-language; a local path that exists wins; HF_HUB_OFFLINE=1: the "
            "local cache only)."
        ),
    ] = None
    preset: Annotated[
        Optional[str],
        typer.Option(
            help="Evaluate a model preset with random weights instead of a checkpoint (e.g. tiny; smoke runs)."
        ),
    ] = None
    label: Annotated[Optional[str], typer.Option(help="Method name in the tables (default: checkpoint folder).")] = None
    out: Annotated[Path, typer.Option(help="Output folder for results.json, tables.md, heatmaps, overlays.")] = Path(
        "eval"
    )
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto"
    batch_size: Annotated[int, typer.Option(min=1, help="Items per forward pass.")] = 16
    normalization: Annotated[
        str, typer.Option(help="Heatmap min-max normalization: global (one over the set, DenseAV) or per_image.")
    ] = "global"
    save_heatmaps: Annotated[bool, typer.Option(help="Write the heatmaps and masks the metrics used (npz).")] = False
    overlays: Annotated[int, typer.Option(min=0, help="Overlay PNGs for this many random samples per set.")] = 0
    overlay_key: Annotated[Optional[list[str]], typer.Option(help="Also draw this sample (repeatable).")] = None
    seed: Annotated[int, typer.Option(help="Seed of mixing, off-screen distractors and sample picks.")] = 0
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True
    workers: Annotated[int, typer.Option(min=1, help="Threads decoding images and audio ahead of the model.")] = 4
    heads: Annotated[
        str,
        typer.Option(
            help="Which head is the sound head: config (the model's own; trained with L_dis) or pred-dis (the "
            "assignment Pred.Dis picks on --places/--audioset, for a model trained without L_dis, e.g. DenseAV)."
        ),
    ] = "config"
    num_heads: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="Heads of a DenseAV file that does not record them (2: denseav_2head / sound-language, "
            "1: language or sound).",
        ),
    ] = None

    def eval_run(self):
        from evaluation.tables import EvalRun

        fields = dataclasses.asdict(self)
        fields["overlay_keys"] = list(fields.pop("overlay_key") or [])
        return EvalRun(**fields)


@app.callback()
@with_options
def main(ctx: typer.Context, opts: RunOptions) -> None:
    if opts.normalization not in ("global", "per_image"):
        raise typer.BadParameter("normalization must be global or per_image")
    if opts.heads not in ("config", "pred-dis"):
        raise typer.BadParameter("heads must be config or pred-dis")
    if opts.preset is not None:  # a model config error is one line before anything loads, as in train.py
        from model.config import PRESETS

        if opts.preset not in PRESETS:
            fail(f"--preset must be {' or '.join(PRESETS)}, got {opts.preset!r}")
    ctx.obj = opts  # what every table command runs with (Typer hands a group's options down this way)


# ---------------------------------------------------------------------------------------------
# commands

# shared option types
IS3 = Annotated[
    Path, typer.Option("--is3", help="Extended IS3 root (images/, audio_wav/, gt_segmentation/, speech_wav/).")
]
AdeSpeech = Annotated[Optional[Path], typer.Option(help="ADE20KSpeechPrompted/ folder.")]
AdeSound = Annotated[Optional[Path], typer.Option(help="ADE20KSoundPrompted/ folder.")]
# strings, not Paths: Path("s3://bucket/p") would drop a slash (pipeline.storage reads them)
Places = Annotated[
    Optional[str], typer.Option(help="Shard folder of PlacesAudio val (prep shards): a path or s3://bucket/prefix.")
]
AudioSet = Annotated[
    Optional[str], typer.Option(help="Shard folder of AudioSet eval (prep shards): a path or s3://bucket/prefix.")
]
Pairs = Annotated[int, typer.Option(min=1, help="Retrieval pairs (DenseAV: 1,000).")]
PairSeed = Annotated[int, typer.Option(help="np.random.seed of the pair selection (DenseAV: 0).")]
OffSnr = Annotated[float, typer.Option(help="Target-to-off-screen ratio in dB of the mixed variants.")]
Strict = Annotated[bool, typer.Option(help="Fail on the first item with a missing file instead of skipping it.")]
Pairing = Annotated[str, typer.Option(help="cross (sound of one object, name of the other), same, or both.")]
Window = Annotated[str, typer.Option(help="Speech-head frames: advanced (object words ±0.2 s) or basic (all).")]
Ablation = Annotated[Optional[list[str]], typer.Option(help="LABEL=CHECKPOINT of an ablated model (repeatable).")]
MoreSets = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        help="TYPE=DIR: a retrieval set of a further audio type (prep shards, e.g. music=shards/music/eval; "
        "repeatable). Table 6 then adds every pair of the types the model's heads answer (heads named by "
        "model.head_types).",
    ),
]


def _more_sets(specs: Optional[list[str]]) -> tuple[tuple[str, str], ...]:
    """``--set TYPE=DIR`` options as (type, folder) pairs; a malformed one is one line, exit 2."""
    out = []
    for spec in specs or ():
        audio_type, sep, path = spec.partition("=")
        if not sep or not audio_type or not path:
            fail(f"--set takes TYPE=DIR (e.g. music=shards/music/eval), got {spec!r}")
        out.append((audio_type, path))
    return tuple(out)


@app.command()
def table1(
    ctx: typer.Context,
    is3: IS3,
    pairing: Pairing = "both",
    speech_window: Window = "advanced",
    snr_db: Annotated[float, typer.Option(help="Speech-to-sound ratio of the mixture (dB).")] = 0.0,
    strict: Strict = False,
) -> None:
    """Table 1: simultaneous grounding of mixed speech + sound on Extended IS3."""
    if pairing not in ("cross", "same", "both"):
        raise typer.BadParameter("pairing must be cross, same or both")
    _command(ctx, "table1", {"is3": is3}, pairing=pairing, speech_window=speech_window, snr_db=snr_db, strict=strict)


@app.command()
def table2(
    ctx: typer.Context, ade_speech: AdeSpeech = None, ade_sound: AdeSound = None, strict: Strict = False
) -> None:
    """Table 2: ADE20K speech/sound-prompted segmentation, total and specialized head."""
    _command(ctx, "table2", {"ade_speech": ade_speech, "ade_sound": ade_sound}, strict=strict)


@app.command()
def table4(
    ctx: typer.Context,
    ade_speech: AdeSpeech = None,
    ade_sound: AdeSound = None,
    offscreen_snr_db: OffSnr = 0.0,
    strict: Strict = False,
) -> None:
    """Table 4: Table 2 with an off-screen clip of the other audio type mixed into every prompt."""
    _command(
        ctx,
        "table4",
        {"ade_speech": ade_speech, "ade_sound": ade_sound},
        offscreen_snr_db=offscreen_snr_db,
        strict=strict,
    )


@app.command()
def table3(
    ctx: typer.Context, places: Places = None, audioset: AudioSet = None, pairs: Pairs = 1000, pair_seed: PairSeed = 0
) -> None:
    """Table 3: cross-modal retrieval R@1/5/10 both directions, total (sum of heads) and per head."""
    _command(ctx, "table3", {"places": places, "audioset": audioset}, pairs=pairs, pair_seed=pair_seed)


@app.command()
def table5(
    ctx: typer.Context,
    places: Places = None,
    audioset: AudioSet = None,
    pairs: Pairs = 1000,
    pair_seed: PairSeed = 0,
    offscreen_snr_db: OffSnr = 0.0,
) -> None:
    """Table 5: Table 3 with an off-screen clip of the other audio type mixed into every query."""
    _command(
        ctx,
        "table5",
        {"places": places, "audioset": audioset},
        pairs=pairs,
        pair_seed=pair_seed,
        offscreen_snr_db=offscreen_snr_db,
    )


@app.command()
def table6(
    ctx: typer.Context,
    places: Places = None,
    audioset: AudioSet = None,
    pairs: Pairs = 1000,
    pair_seed: PairSeed = 0,
    offscreen_snr_db: OffSnr = 0.0,
    more_set: MoreSets = None,
) -> None:
    """Table 6: retrieval with the opposite head (clean and mixed), plus Pred.Dis / Act.Dis; with
    --set, the same for every pair of audio types."""
    _command(
        ctx,
        "table6",
        {"places": places, "audioset": audioset, "more_sets": _more_sets(more_set)},
        pairs=pairs,
        pair_seed=pair_seed,
        offscreen_snr_db=offscreen_snr_db,
    )


@app.command()
def table7(
    ctx: typer.Context,
    places: Places = None,
    audioset: AudioSet = None,
    pairs: Pairs = 1000,
    pair_seed: PairSeed = 0,
    ablation: Ablation = None,
) -> None:
    """Table 7: the sound head's retrieval on AudioSet and Places for this model and its ablations
    (--ablation "L_dis only=runs/no_cor" ...)."""
    _command(
        ctx,
        "table7",
        {"places": places, "audioset": audioset},
        pairs=pairs,
        pair_seed=pair_seed,
        ablations=tuple(ablation or ()),
    )


@app.command("all")
def run_all(
    ctx: typer.Context,
    is3: Annotated[Optional[Path], typer.Option("--is3", help="Extended IS3 root.")] = None,
    ade_speech: AdeSpeech = None,
    ade_sound: AdeSound = None,
    places: Places = None,
    audioset: AudioSet = None,
    pairs: Pairs = 1000,
    pair_seed: PairSeed = 0,
    offscreen_snr_db: OffSnr = 0.0,
    ablation: Ablation = None,
    strict: Strict = False,
    more_set: MoreSets = None,
) -> None:
    """Every experiment the given test sets allow (Table 7 only with --ablation); the others are
    reported as skipped."""
    from evaluation.tables import TABLES, DataPaths, TableOptions, plan
    from model.checkpoint import CheckpointError

    run = ctx.obj.eval_run()
    data = DataPaths(is3, ade_speech, ade_sound, places, audioset, _more_sets(more_set))
    opts = TableOptions(
        strict=strict,
        offscreen_snr_db=offscreen_snr_db,
        pairs=pairs,
        pair_seed=pair_seed,
        ablations=tuple(ablation or ()),
    )
    planned = plan(data, opts)
    for name in TABLES:
        if name not in planned:
            typer.echo(f"{name}: skipped (its test sets were not given)")
    if not planned:
        fail("no test set given: pass --is3, --ade-speech/--ade-sound, --places/--audioset")
    try:
        data.retrieval_paths()  # (a bad --set is one line before the model loads)
        _name_heads(run, data, opts)
    except CheckpointError as exc:
        _checkpoint_failure(exc)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    failures = 0
    for name in planned:
        try:
            _run(run, name, data, opts)
        except CheckpointError as exc:  # the model is unusable: every table would fail the same way
            _checkpoint_failure(exc)
        except (ValueError, OSError) as exc:
            failures += 1
            typer.echo(f"{name}: failed: {exc}", err=True)
    if failures:  # each failed table is named above; the others are written
        raise typer.Exit(PROBLEMS_FOUND)


@app.command()
def compare(
    runs: Annotated[
        list[str],
        typer.Argument(
            metavar="NAME=RUN_DIR",
            help="NAME=RUN_DIR per model, in row order: a row name and the --out folder of its evaluation "
            "(or that folder's results.json).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for comparison.md and comparison.json.")],
) -> None:
    """The paper's Tables 1-6 with one row per evaluated model, from each run's results.json; every
    figure traceable to its file and key (comparison.json). Options before the command are not used."""
    from evaluation import compare as comparing

    try:
        comparison = comparing.compare(comparing.parse_runs(runs))
        markdown, data = comparing.write(comparison, out)
    except comparing.CompareError as exc:
        fail(str(exc))
    typer.echo(comparison.markdown())
    typer.echo(f"written to {markdown} and {data}")


@app.command()
def recompute(archive: Annotated[Path, typer.Argument(help="An npz written with --save-heatmaps.")]) -> None:
    """Recompute mAP / mIoU from a heatmap archive, to check or reuse the numbers."""
    from evaluation import metrics

    try:
        data = np.load(archive, allow_pickle=False)
    except (OSError, ValueError) as exc:
        fail(f"cannot read {archive}: {exc}")
    names = sorted(k[: -len("_heatmaps")] for k in data.files if k.endswith("_heatmaps"))
    typer.echo(f"{archive} (normalization: {data['normalization']})")
    for name in names:
        masks = data[f"{name}_masks"] if f"{name}_masks" in data.files else data["masks"]
        classes = data[f"{name}_classes"] if f"{name}_classes" in data.files else data["classes"]
        res = metrics.class_pooled_segmentation(data[f"{name}_heatmaps"], masks, classes)
        typer.echo(f"  {name}: mAP {100 * res.mAP:.2f}  mIoU {100 * res.mIoU:.2f}  ({res.n_classes} classes)")


if __name__ == "__main__":
    app()
