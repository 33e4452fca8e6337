"""`evaluate.py compare`: the paper's Tables 1-6 with one row per evaluated model, read from the
``results.json`` of several evaluation runs, in the paper's layout, as Markdown and JSON.

Every figure is traceable: each JSON cell names the ``results.json`` it was read from and the key
path inside it (a list and a JSON Pointer). A cell is

* a number, printed as a percentage with one decimal (results.json stores fractions);
* ``N/A`` in a specialized-head column of a model with one head (ImageBind, CAV-MAE: the paper's
  baseline rows). One head is read from the section's ``num_heads`` (written by ``evaluate.py``),
  else from ``model.config.num_heads``, else from a ``heads`` record without two distinct named
  heads; the cell says which;
* ``—`` where the run has no such result (a table it did not run, a test set it was not given),
  with a note under the table saying what is missing from which file;
* ``n/a`` where the result is undefined (stored as null, e.g. an AP without a positive pixel).

A run folder without a readable ``results.json``, or a figure that is not a number, is an error
(``CompareError``, one line naming the file); nothing is guessed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.markdown import NOT_APPLICABLE, grid, pct
from pipeline.atomic import write_atomic, write_json

RESULTS_FILE = "results.json"  # evaluation.report.RESULTS_FILE (not imported: report pulls in PIL drawing)
MARKDOWN_FILE = "comparison.md"
JSON_FILE = "comparison.json"
MISSING = "—"


class CompareError(ValueError):
    """A run cannot be compared: bad NAME=RUN_DIR, or a missing or garbled results.json."""


# ---------------------------------------------------------------------------------------------
# the paper's layouts


@dataclass(frozen=True)
class Column:
    header: str
    path: tuple[str, ...]  # inside the table's section
    head: bool = False  # a specialized head's figure: N/A for a model with one head


@dataclass(frozen=True)
class Block:
    caption: str  # "" for a table of one block
    columns: tuple[Column, ...]


def _seg(group: str, kind: str, head_label: str) -> tuple[Column, ...]:
    """Tables 2 and 4: one audio type's Total and specialized-head mAP / mIoU."""
    return (
        Column(f"{group} Total mAP", ("results", kind, "total", "mAP")),
        Column(f"{group} Total mIoU", ("results", kind, "total", "mIoU")),
        Column(f"{head_label} mAP", ("results", kind, "head", "mAP"), head=True),
        Column(f"{head_label} mIoU", ("results", kind, "head", "mIoU"), head=True),
    )


def _r10(prefix: str, *path: str, head: bool = False) -> tuple[Column, ...]:
    """R@10 in both directions (I→A, A→I) at ``path``."""
    return (
        Column(f"{prefix} I→A", ("results", *path, "I->A", "10"), head),
        Column(f"{prefix} A→I", ("results", *path, "A->I", "10"), head),
    )


def _table1_blocks(pairings: list[str]) -> list[Block]:
    # both columns come from one head each (a one-head model fills both with its only head, as the
    # paper's baseline rows do), so no column of Table 1 is N/A
    return [
        Block(
            f"{pairing}-object pairs",
            (
                Column("Sim-Sound mAP", ("results", pairing, "sound", "mAP")),
                Column("Sim-Sound mIoU", ("results", pairing, "sound", "mIoU")),
                Column("Sim-Speech mAP", ("results", pairing, "speech", "mAP")),
                Column("Sim-Speech mIoU", ("results", pairing, "speech", "mIoU")),
            ),
        )
        for pairing in pairings
    ]


SEGMENTATION = (Block("", _seg("Sound", "sound", "Sound Head") + _seg("Speech", "speech", "Speech Head")),)
RETRIEVAL = (
    Block(
        "R@10",
        _r10("AudioSet Total", "audioset", "total")
        + _r10("AudioSet Sound", "audioset", "sound_head", head=True)
        + _r10("Places Total", "places", "total")
        + _r10("Places Speech", "places", "speech_head", head=True),
    ),
)
DISENTANGLEMENT = (
    Block(
        "R@10 with the opposite head",
        _r10("Clean Places Sound", "clean", "places", "sound_head", head=True)
        + _r10("Clean AudioSet Speech", "clean", "audioset", "speech_head", head=True)
        + _r10("Mixed Places Sound", "mixed", "places", "sound_head", head=True)
        + _r10("Mixed AudioSet Speech", "mixed", "audioset", "speech_head", head=True),
    ),
    Block(
        "Pred.Dis / Act.Dis (§4.3.5)",
        (
            Column("Pred.Dis", ("results", "disentanglement", "pred_dis"), head=True),
            Column("Act.Dis", ("results", "disentanglement", "act_dis"), head=True),
        ),
    ),
)

# section name -> the paper's caption and its blocks (Table 1's depend on the pairings evaluated)
TABLES: dict[str, tuple[str, tuple[Block, ...] | None]] = {
    "table1": ("Table 1. Simultaneous Audio-Visual segmentation results (Extended IS3, mixed speech + sound)", None),
    "table2": ("Table 2. Audio-Visual semantic segmentation with individual audios (ADE20K, clean)", SEGMENTATION),
    "table3": ("Table 3. Cross-modal retrieval task on Places and AudioSet (clean)", RETRIEVAL),
    "table4": ("Table 4. Standard Audio-Visual semantic segmentation with mixture of audios (ADE20K)", SEGMENTATION),
    "table5": ("Table 5. Cross-modal retrieval task on Places and AudioSet with mixture of audios", RETRIEVAL),
    "table6": (
        "Table 6. Measuring disentanglement (each head retrieves with the opposite audio type; lower is better)",
        DISENTANGLEMENT,
    ),
}
TABLE1_PAIRINGS = ("cross", "same")


# ---------------------------------------------------------------------------------------------
# runs


@dataclass
class Run:
    name: str  # the row's name (NAME of NAME=RUN_DIR)
    path: Path  # its results.json
    results: dict

    def one_head(self, section: dict | None) -> str | None:
        """Why the model of ``section`` has no specialized head, or None when it has one. Without
        the section (a table the run lacks), any other section of the run decides."""
        sections = [section] if section is not None else [s for s in self.results.values() if isinstance(s, dict)]
        for s in sections:
            reason = _one_head(s)
            if reason:
                return reason
        return None


def _one_head(section: dict) -> str | None:
    """Why one results.json section's model has no specialized head (see the module docstring)."""
    for path in (("num_heads",), ("model", "config", "num_heads")):
        value = _get(section, path)
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{'.'.join(path)} = {value}" if value == 1 else None
    heads = section.get("heads")
    if isinstance(heads, dict) and "sound_head" in heads and "speech_head" in heads:
        if heads["sound_head"] == heads["speech_head"]:
            return f"heads.sound_head = heads.speech_head = {heads['sound_head']}"
        return None
    return "no named heads (no num_heads, model.config.num_heads or heads.sound_head/speech_head)"


_ABSENT = object()  # a key path that is not in the file (None is a stored null)


def _get(node, path: tuple[str, ...]):
    """The value at ``path`` below ``node``, or ``_ABSENT``."""
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _ABSENT
        node = node[key]
    return node


def parse_runs(specs: list[str]) -> list[tuple[str, Path]]:
    """``NAME=RUN_DIR`` arguments -> (name, folder or results.json), names unique, in row order."""
    if not specs:
        raise CompareError("give at least one NAME=RUN_DIR (the --out folder of an `evaluate.py` run)")
    runs, seen = [], set()
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise CompareError(f"{spec!r}: give NAME=RUN_DIR, e.g. Ours=eval/paper")
        if "|" in name or "\n" in name:
            raise CompareError(f"{spec!r}: a name cannot hold '|' or a line break (it is a Markdown table cell)")
        if name in seen:
            raise CompareError(f"{spec!r}: the name {name!r} is given twice; each row needs its own name")
        seen.add(name)
        runs.append((name, Path(path)))
    return runs


def load_run(name: str, location: Path) -> Run:
    """A run's results.json (``location``: the run's folder, or the file itself)."""
    path = location if location.is_file() else location / RESULTS_FILE
    if not path.is_file():
        raise CompareError(
            f"{path} does not exist: evaluate the model into {location} first "
            f"(python evaluate.py --checkpoint CKPT --out {location} all ...)"
        )
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompareError(f"{path} cannot be read as JSON ({exc}); re-run the evaluation into a fresh --out") from exc
    if not isinstance(results, dict) or not all(isinstance(s, dict) for s in results.values()):
        raise CompareError(
            f"{path} is not an evaluate.py results.json (an object of table sections); "
            "re-run the evaluation into a fresh --out"
        )
    return Run(name, path, results)


# ---------------------------------------------------------------------------------------------
# the comparison


@dataclass
class Comparison:
    runs: list[Run]
    tables: dict[str, dict] = field(default_factory=dict)  # the JSON of each table

    def as_json(self) -> dict:
        return {
            "runs": [_run_json(r) for r in self.runs],
            "tables": self.tables,
            "legend": {
                "value": "fraction as stored in results.json; text: percentage with one decimal",
                NOT_APPLICABLE: "the model has one head: no specialized head",
                MISSING: "the run has no such result (see the table's notes)",
                "n/a": "undefined in results.json (null, e.g. an AP without a positive pixel)",
            },
        }

    def markdown(self) -> str:
        parts = [
            "# The paper's tables, one row per model\n",
            f"Percentages. {NOT_APPLICABLE}: the model has one head, so it has no specialized head (as the "
            f"paper's baseline rows); {MISSING}: the run has no such result (see the notes); n/a: undefined. "
            f"Every figure's source file and key are in `{JSON_FILE}`.\n",
            grid(
                ["Model", "results.json", "label", "heads"],
                [[r.name, str(r.path), ", ".join(_labels(r)) or MISSING, _heads_text(r)] for r in self.runs],
            )
            + "\n",
        ]
        for table in self.tables.values():
            parts.append(f"## {table['title']}\n")
            for block in table["blocks"]:
                if block["caption"]:
                    parts.append(f"**{block['caption']}**\n")
                rows = [[row["model"], *(c["text"] for c in row["cells"])] for row in block["rows"]]
                parts.append(grid(["Method", *block["columns"]], rows) + "\n")
            if table["notes"]:
                parts.append("\n".join(f"- {n}" for n in table["notes"]) + "\n")
        return "\n".join(parts)


def _labels(run: Run) -> list[str]:
    return sorted({str(s["label"]) for s in run.results.values() if "label" in s})


def _heads_text(run: Run) -> str:
    one = run.one_head(None)
    if one:
        return f"one ({one})"
    counts = sorted({s["num_heads"] for s in run.results.values() if isinstance(s.get("num_heads"), int)})
    return ", ".join(str(c) for c in counts) or "named (sound and speech head)"


def _run_json(run: Run) -> dict:
    return {
        "name": run.name,
        "results": str(run.path),
        "labels": _labels(run),
        "tables": sorted(n for n in run.results if n in TABLES),
        "one_head": run.one_head(None),
    }


def _pointer(path: tuple[str, ...]) -> str:
    return "".join("/" + key.replace("~", "~0").replace("/", "~1") for key in path)


def _cell(run: Run, table: str, column: Column, missing: dict) -> dict:
    section = run.results.get(table)
    key = (table, *column.path)
    where = {"source": str(run.path), "key": list(key), "pointer": _pointer(key)}
    one = run.one_head(section) if column.head else None
    if one:
        return {"text": NOT_APPLICABLE, "value": None, "reason": f"one head: {one}", **where}
    value = _get(section, column.path) if section is not None else _ABSENT
    if value is _ABSENT:
        # name the shortest absent key (the table, or the test set's branch) once per run and table
        prefix = (
            key[:1]
            if section is None
            else next(key[: i + 1] for i in range(1, len(key)) if _get(section, column.path[:i]) is _ABSENT)
        )
        missing.setdefault(".".join(prefix), 0)
        missing[".".join(prefix)] += 1
        return {"text": MISSING, "value": None, "reason": f"no {'.'.join(prefix)} in {run.path}", **where}
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"text": "n/a", "value": None, "reason": "undefined (null) in results.json", **where}
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CompareError(
            f"{run.path}: {'.'.join(key)} is {value!r}, not a number; re-run `evaluate.py {table}` into that folder"
        )
    return {"text": pct(value), "value": float(value), **where}


def _table1_pairings(runs: list[Run]) -> list[str]:
    """The pairings any run evaluated (cross, same, then others), or both when none has Table 1."""
    found = set()
    for r in runs:
        results = _get(r.results, ("table1", "results"))
        if isinstance(results, dict):
            found |= set(results)
    ordered = [p for p in TABLE1_PAIRINGS if p in found] + sorted(found - set(TABLE1_PAIRINGS))
    return ordered or list(TABLE1_PAIRINGS)


def _differences(runs: list[Run], table: str) -> list[str]:
    """Notes where the runs were not evaluated alike (normalization, item counts, head naming)."""
    notes = []
    present = [(r, r.results[table]) for r in runs if table in r.results]
    for key in ("normalization", "counts"):
        values = {json.dumps(s.get(key), sort_keys=True) for _, s in present}
        if len(values) > 1:
            notes.append(
                f"{key} differs between the runs: "
                + "; ".join(f"{r.name} {json.dumps(s.get(key), sort_keys=True)}" for r, s in present)
            )
    for r, s in present:
        heads = s.get("heads")
        if isinstance(heads, dict) and heads.get("rule") not in (None, "config"):
            notes.append(
                f"{r.name}: heads named by {heads['rule']}: sound = head {heads.get('sound_head')}, "
                f"speech = head {heads.get('speech_head')}"
            )
        if s.get("skipped_total"):
            notes.append(f"{r.name}: {s['skipped_total']} item(s) skipped (listed in {r.path} under {table}.skipped)")
    return notes


def compare(specs: list[tuple[str, Path]]) -> Comparison:
    """Read every run and lay out Tables 1-6 with one row per run."""
    runs = [load_run(name, path) for name, path in specs]
    comparison = Comparison(runs)
    for table, (title, blocks) in TABLES.items():
        blocks = blocks or tuple(_table1_blocks(_table1_pairings(runs)))
        notes, out_blocks = [], []
        missing_by_run = {r.name: {} for r in runs}
        for block in blocks:
            rows = [
                {
                    "model": r.name,
                    "cells": [
                        {"column": c.header, **_cell(r, table, c, missing_by_run[r.name])} for c in block.columns
                    ],
                }
                for r in runs
            ]
            out_blocks.append({"caption": block.caption, "columns": [c.header for c in block.columns], "rows": rows})
        for r in runs:
            for prefix, count in missing_by_run[r.name].items():
                what = f"no {table} section" if prefix == table else f"no {prefix}"
                notes.append(f"{r.name}: {r.path} has {what} ({count} figure(s) shown as {MISSING})")
        notes += _differences(runs, table)
        comparison.tables[table] = {"title": title, "blocks": out_blocks, "notes": notes}
    return comparison


def write(comparison: Comparison, out_dir: Path) -> tuple[Path, Path]:
    """``comparison.md`` and ``comparison.json`` in ``out_dir`` (created)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        md, js = out_dir / MARKDOWN_FILE, out_dir / JSON_FILE
        write_atomic(md, comparison.markdown())
        write_json(js, comparison.as_json(), indent=2, sort_keys=False)
    except OSError as exc:
        raise CompareError(f"cannot write into --out {out_dir} ({exc}); pick a writable folder") from exc
    return md, js
