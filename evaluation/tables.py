"""The paper's tables, one registry: for each, its title, the test sets it needs, how it runs
and how ``tables.md`` renders it. ``evaluate.py``'s commands, its ``all`` plan and ``tables.md``
all read ``TABLES``; ``EvalRun`` is what the tables of one run share (the model, loaded once, and
the retrieval sessions that Tables 3, 5, 6 and 7 reuse).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from evaluation import markdown, report
from evaluation.retrieval import (
    SET_TYPES,
    RetrievalSession,
    pred_dis_assignment,
    run_table3,
    run_table5,
    run_table6,
    table7_row,
)
from evaluation.runner import LoadedModel, ModelRunner, load_model, pick_device
from evaluation.segmentation import SegSettings, Table1Settings, run_table1, run_table2, run_table4
from model.checkpoint import CheckpointError
from pipeline.format import AUDIO_TYPE_RE
from pipeline.testsets.ade20k import PromptedSet, read_ade20k_prompted
from pipeline.testsets.is3 import read_is3
from pipeline.testsets.retrieval import read_retrieval_set


@dataclass(frozen=True)
class DataPaths:
    """The test sets given on the command line (None: not given). Field names are the tables'
    ``needs`` and the keys of each section's ``data``."""

    is3: Path | None = None
    ade_speech: Path | None = None
    ade_sound: Path | None = None
    places: Path | None = None
    audioset: Path | None = None
    # retrieval sets of further audio types, (type, shard folder): Table 6 adds each pair of types
    more_sets: tuple[tuple[str, str], ...] = ()

    def given(self) -> set[str]:
        return {f.name for f in fields(self) if getattr(self, f.name) not in (None, ())}

    def retrieval_paths(self) -> dict[str, str]:
        """The retrieval sets given, by name: ``places``, ``audioset``, then each further type."""
        paths = {name: path for name, path in (("places", self.places), ("audioset", self.audioset)) if path}
        for audio_type, path in self.more_sets:
            if audio_type in paths or audio_type in SET_TYPES.values():
                raise ValueError(
                    f"--set {audio_type}=...: give speech and sound as --places / --audioset, each further type once"
                )
            if not AUDIO_TYPE_RE.fullmatch(audio_type):
                raise ValueError(f"--set {audio_type}=...: {audio_type!r} is not an audio type name ([a-z][a-z0-9_]*)")
            paths[audio_type] = path
        return paths


@dataclass(frozen=True)
class TableOptions:
    strict: bool = False  # fail on the first item with a missing file instead of skipping it
    pairing: str = "both"  # Table 1: cross, same or both
    speech_window: str = "advanced"  # Table 1: speech-head frames
    snr_db: float = 0.0  # Table 1: speech-to-sound ratio of the mixture
    offscreen_snr_db: float = 0.0  # Tables 4, 5, 6: target-to-off-screen ratio
    pairs: int = 1000  # retrieval pairs
    pair_seed: int = 0
    ablations: tuple[str, ...] = ()  # Table 7: LABEL=CHECKPOINT


@dataclass
class EvalRun:
    """The model under test and the output settings every table of one run shares."""

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
    heads: str = "config"  # how the heads are named: "config" (the model's own) or "pred-dis" (HEAD_RULES)
    num_heads: int | None = None  # heads of a DenseAV file that does not record them (--num-heads)
    _heads: dict | None = field(default=None, repr=False)
    _loaded: tuple[ModelRunner, LoadedModel] | None = field(default=None, repr=False)
    _sessions: dict = field(default_factory=dict, repr=False)

    def model(self) -> tuple[ModelRunner, LoadedModel]:
        """(runner, loaded model), loaded on first use."""
        if self._loaded is None:
            device = pick_device(self.device)
            loaded = load_model(self.checkpoint, self.preset, device, self.seed, num_heads=self.num_heads)
            self._loaded = (ModelRunner(loaded.model, device, self.batch_size), loaded)
        return self._loaded

    def runner(self) -> ModelRunner:
        return self.model()[0]

    def name_heads(self, data: DataPaths, opts: TableOptions) -> dict:
        """Decide which head is the sound and which the speech head before any table runs, and
        return the record every section keeps (``heads``)."""
        if self._heads is None:
            self._heads = assign_heads(self.runner(), self.heads, lambda: self.retrieval_session(data, opts, 0.0))
        return self._heads

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return Path(self.checkpoint).name if self.checkpoint else f"{self.preset} (random weights)"

    def seg_settings(self) -> SegSettings:
        return SegSettings(
            normalization=self.normalization,
            seed=self.seed,
            save_heatmaps=self.out / "heatmaps" if self.save_heatmaps else None,
            overlays=self.overlays,
            overlay_keys=tuple(self.overlay_keys),
            overlay_dir=self.out / "overlays",
            progress=self.progress,
            workers=self.workers,
        )

    def retrieval_session(self, data: DataPaths, opts: TableOptions, offscreen_snr_db: float) -> RetrievalSession:
        """One session per set choice and mixing level: tables that share it compute each score once."""
        key = (data.places, data.audioset, data.more_sets, opts.pairs, opts.pair_seed, offscreen_snr_db)
        if key not in self._sessions:
            sets = {
                name: read_retrieval_set(path, opts.pairs, opts.pair_seed)
                for name, path in data.retrieval_paths().items()
            }
            self._sessions[key] = self.session_for(self.runner(), sets, offscreen_snr_db)
        return self._sessions[key]

    def session_for(self, runner: ModelRunner, sets: dict, offscreen_snr_db: float) -> RetrievalSession:
        return RetrievalSession(
            runner,
            sets,
            seed=self.seed,
            offscreen_snr_db=offscreen_snr_db,
            progress=self.progress,
            workers=self.workers,
        )


HEAD_RULES = ("config", "pred-dis")


def assign_heads(runner: ModelRunner, rule: str, session: Callable[[], RetrievalSession]) -> dict:
    """Name ``runner``'s heads by ``rule``: ``config`` keeps the model's own ``sound_head`` /
    ``speech_head`` (a model trained with L_dis, whose Eq. 10 fixed them); ``pred-dis`` takes the
    assignment Pred.Dis picks on the clean retrieval pairs (``pred_dis_assignment``), as the paper
    does for DenseAV and as a model trained without L_dis needs. A one-head model has nothing to
    name under either rule (its one head is the total), so the four rows of the paper's comparison
    can be evaluated with the same flags."""
    if rule not in HEAD_RULES:
        raise ValueError(f"--heads must be one of {', '.join(HEAD_RULES)}, got {rule!r}")
    if rule == "config" or runner.num_heads == 1:
        return {"rule": "config", "sound_head": runner.sound_head, "speech_head": runner.speech_head}
    if runner.num_heads != 2:
        raise ValueError(f"--heads pred-dis needs a two-head model, this one has {runner.num_heads}")
    chosen = pred_dis_assignment(session())
    runner.sound_head, runner.speech_head = chosen["sound_head"], chosen["speech_head"]
    return chosen


# ---------------------------------------------------------------------------------------------
# how each table runs: (run, test sets, options) -> the section body


def _table1(run: EvalRun, data: DataPaths, opts: TableOptions) -> dict:
    pairings = ("cross", "same") if opts.pairing == "both" else (opts.pairing,)
    dataset = read_is3(data.is3, require_speech=True, strict=opts.strict)
    return run_table1(
        run.runner(),
        dataset,
        run.seg_settings(),
        Table1Settings(pairings=pairings, speech_window=opts.speech_window, snr_db=opts.snr_db),
    )


def _prompted_sets(data: DataPaths, opts: TableOptions) -> tuple[PromptedSet | None, PromptedSet | None]:
    speech = read_ade20k_prompted(data.ade_speech, "speech", opts.strict) if data.ade_speech else None
    sound = read_ade20k_prompted(data.ade_sound, "sound", opts.strict) if data.ade_sound else None
    return speech, sound


def _table2(run: EvalRun, data: DataPaths, opts: TableOptions) -> dict:
    speech, sound = _prompted_sets(data, opts)
    return run_table2(run.runner(), speech, sound, run.seg_settings())


def _table4(run: EvalRun, data: DataPaths, opts: TableOptions) -> dict:
    speech, sound = _prompted_sets(data, opts)
    return run_table4(run.runner(), speech, sound, run.seg_settings(), opts.offscreen_snr_db)


def _table3(run: EvalRun, data: DataPaths, opts: TableOptions) -> dict:
    return run_table3(run.retrieval_session(data, opts, 0.0))


def _table5(run: EvalRun, data: DataPaths, opts: TableOptions) -> dict:
    return run_table5(run.retrieval_session(data, opts, opts.offscreen_snr_db))


def _table6(run: EvalRun, data: DataPaths, opts: TableOptions) -> dict:
    return run_table6(run.retrieval_session(data, opts, opts.offscreen_snr_db))


def _table7(run: EvalRun, data: DataPaths, opts: TableOptions) -> dict:
    """This model's row, then one row per ablated checkpoint over the same pairs."""
    session = run.retrieval_session(data, opts, 0.0)
    rows, models = [table7_row(session, run.name)], []
    for spec in opts.ablations:
        label, sep, path = spec.partition("=")
        if not sep or not path:
            raise ValueError(f"--ablation takes LABEL=CHECKPOINT, got {spec!r}")
        device = pick_device(run.device)
        try:
            loaded = load_model(Path(path), None, device)
        except CheckpointError as exc:
            raise ValueError(f"--ablation {label}: {exc} or point it at another checkpoint") from exc
        other = run.session_for(ModelRunner(loaded.model, device, run.batch_size), session.sets, 0.0)
        heads = assign_heads(other.runner, run.heads, lambda other=other: other)
        rows.append(table7_row(other, label))
        models.append({"label": label, "heads": heads, **loaded.description})
    return {"results": {"rows": rows}, "counts": session.counts(), "settings": {"ablation_models": models}}


# ---------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    needs: tuple[str, ...]  # DataPaths fields
    needs_all: bool  # every one of ``needs`` (else any one)
    run: Callable[[EvalRun, DataPaths, TableOptions], dict]
    render: Callable[[dict], str]
    heatmaps: bool = True  # scored from heatmaps (else from raw retrieval scores)
    all_needs_ablation: bool = False  # ``all`` runs it only with --ablation

    def runnable(self, data: DataPaths, opts: TableOptions) -> bool:
        given = data.given() & set(self.needs)
        ready = given == set(self.needs) if self.needs_all else bool(given)
        return ready and (bool(opts.ablations) or not self.all_needs_ablation)


ADE = ("ade_speech", "ade_sound")
RETRIEVAL = ("places", "audioset")
TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "table1",
            "Table 1. Simultaneous audio-visual segmentation (Extended IS3, mixed audio)",
            ("is3",),
            True,
            _table1,
            markdown.table1,
        ),
        Table(
            "table2",
            "Table 2. Audio-visual semantic segmentation with individual audio (ADE20K)",
            ADE,
            False,
            _table2,
            markdown.segmentation,
        ),
        Table(
            "table3",
            "Table 3. Cross-modal retrieval R@10 (clean)",
            RETRIEVAL,
            False,
            _table3,
            markdown.retrieval,
            heatmaps=False,
        ),
        Table(
            "table4",
            "Table 4. Semantic segmentation with off-screen audio mixed in (ADE20K)",
            ADE,
            True,
            _table4,
            markdown.segmentation,
        ),
        Table(
            "table5",
            "Table 5. Cross-modal retrieval R@10 with off-screen audio mixed in",
            RETRIEVAL,
            True,
            _table5,
            markdown.retrieval,
            heatmaps=False,
        ),
        Table(
            "table6",
            "Table 6. Disentanglement: retrieval R@10 with the opposite head (lower is better)",
            RETRIEVAL,
            True,
            _table6,
            markdown.table6,
            heatmaps=False,
        ),
        Table(
            "table7",
            "Table 7. Ablation of the training losses (sound head, R@10)",
            RETRIEVAL,
            True,
            _table7,
            markdown.table7,
            heatmaps=False,
            all_needs_ablation=True,
        ),
    )
}


def plan(data: DataPaths, opts: TableOptions) -> list[str]:
    """The tables ``all`` runs: those whose test sets are given (Table 7 only with ablations)."""
    return [name for name, table in TABLES.items() if table.runnable(data, opts)]


# ---------------------------------------------------------------------------------------------
# sections and tables.md


def section(run: EvalRun, table: Table, body: dict, data: DataPaths, started: float) -> dict:
    """A results.json section: what was evaluated on what, how long it took, what was skipped, and
    the table's own ``results``/``counts``/``settings``."""
    skipped = body.pop("skipped", [])
    _, loaded = run.model()
    normalization = run.normalization if table.heatmaps else "n/a (retrieval uses raw scores)"
    paths = {name: str(getattr(data, name)) for name in table.needs if getattr(data, name) is not None}
    if table.needs == RETRIEVAL:  # (the sets of further types, by type)
        paths.update({audio_type: str(path) for audio_type, path in data.more_sets})
    heads = run._heads if run._heads is not None else assign_heads(run.runner(), "config", lambda: None)
    # num_heads: a one-head model (a baseline) has no specialized head; `evaluate.py compare` prints N/A there
    return {
        "label": run.name,
        "model": loaded.description,
        "heads": heads,
        "num_heads": run.runner().num_heads,
        "normalization": normalization,
        "data": paths,
        "seconds": round(time.time() - started, 1),
        "skipped_total": len(skipped),
        "skipped": skipped[:200],
        **body,
    }


def markdown_tables(results: dict) -> str:
    parts = ["# Evaluation results\n", "Numbers are percentages.\n"]
    for name, table in TABLES.items():
        if results.get(name):
            parts += [f"## {table.title}\n", table.render(results[name]) + "\n", markdown.note(results[name]) + "\n"]
    return "\n".join(parts)


def write_section(out_dir: Path, name: str, content: dict) -> dict:
    """Add or replace one table's section of results.json, then rebuild tables.md from the file."""
    results = report.update_results(out_dir, name, content)
    report.write_tables(out_dir, markdown_tables(results))
    return results
