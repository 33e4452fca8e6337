"""`evaluate.py compare` over real results.json files on the generated test sets, laid out in the
paper's tables; every figure is checked against the file and key its cell names.

Two comparisons: the paper's four rows (the method and DenseAV's objective, L_cor only, each a tiny
project model trained for two steps with its loss; ImageBind and CAV-MAE as tiny random files in the
releases' layouts), each evaluated by `evaluate.py all`; and the oracle model beside the tiny
checkpoint evaluated on one table only, for perfect figures and for what a missing table shows."""

import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from evaluate import app
from evaluation import tables
from evaluation.runner import LoadedModel, ModelRunner
from tests.model.test_baselines import cavmae_state, imagebind_state, save
from tests.support.oracle_model import OracleModel

RUN = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
OPTS = ["--batch-size", "6", "--no-progress", "--workers", "1"]


@pytest.fixture(scope="module")
def world(data):
    """The generated test sets of every table as ``DataPaths``."""
    return tables.DataPaths(
        data / "is3", data / "ADE20KSpeechPrompted", data / "ADE20KSoundPrompted", data / "places", data / "audioset"
    )


def _evaluate(model, out, data, names):
    """Tables ``names`` of ``model`` into ``out``/results.json, the way `evaluate.py` writes them."""
    run = tables.EvalRun(
        checkpoint=None,
        preset="oracle",
        label=None,
        out=out,
        device="cpu",
        batch_size=4,
        normalization="global",
        save_heatmaps=False,
        overlays=0,
        overlay_keys=[],
        seed=0,
        progress=False,
        workers=1,
    )
    run._loaded = (ModelRunner(model, torch.device("cpu"), 4), LoadedModel(model, {"config": {"name": "oracle"}}))
    for name in names:
        started = time.time()
        body = tables.TABLES[name].run(run, data, tables.TableOptions())
        tables.write_section(out, name, tables.section(run, tables.TABLES[name], body, data, started))


def _evaluate_all(checkpoint, out, data, *options):
    """`evaluate.py --checkpoint CHECKPOINT ... all` over every generated test set."""
    result = RUN.invoke(
        app,
        [
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            *OPTS,
            *options,
            "all",
            "--is3",
            str(data.is3),
            "--ade-speech",
            str(data.ade_speech),
            "--ade-sound",
            str(data.ade_sound),
            "--places",
            str(data.places),
            "--audioset",
            str(data.audioset),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, world, tiny_checkpoint):
    root = tmp_path_factory.mktemp("compare")
    _evaluate(OracleModel(), root / "oracle", world, ["table1", "table2", "table3", "table4", "table5", "table6"])
    tiny = RUN.invoke(
        app,
        [
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(root / "tiny"),
            *OPTS,
            "table3",
            "--places",
            str(world.places),
            "--audioset",
            str(world.audioset),
        ],
    )
    assert tiny.exit_code == 0, tiny.output
    return root


def _train(shards, out: Path, **loss) -> Path:
    """Two steps of train.py's trainer on the tiny shards past the warm-up (which trains L_cor alone),
    with the loss weights ``loss``; the final checkpoint."""
    from training.config import load_config
    from training.loop import train

    overrides = {
        "data.speech": shards.root / "speech",
        "data.sound": shards.root / "sound",
        "data.batch_size": 4,
        "data.num_workers": 0,
        "data.clip_seconds": 1.0,
        "data.shuffle_buffer": 8,
        "out_dir": out,
        "steps": 2,
        "warmup_steps": 0,
        "log_every": 1,
        "ckpt_every": 0,
        "optim.lr_warmup_steps": 1,
        **{f"loss.{k}": v for k, v in loss.items()},
    }
    threads = torch.get_num_threads()
    try:
        train(load_config(ROOT / "configs" / "tiny.yaml", [f"{k}={v}" for k, v in overrides.items()]))
    finally:  # the trainer gives itself every core; the tests after it run with what they had
        torch.set_num_threads(threads)
    return out / "final"


@pytest.fixture(scope="module")
def four_rows(tmp_path_factory, world, shards):
    """The paper's four rows, each evaluated by `evaluate.py all`: {row name: its --out folder}."""
    root = tmp_path_factory.mktemp("four-rows")
    method = _train(shards, root / "train-method")
    cor_only = _train(shards, root / "train-cor-only", disentanglement=0)
    files = {
        "ImageBind": save(imagebind_state(), root / "imagebind_huge.pth"),
        "CAV-MAE": save(cavmae_state(), root / "audio_model.21.pth"),
    }
    out = {name: root / "eval" / name for name in ("Ours", "L_cor only", "ImageBind", "CAV-MAE")}
    _evaluate_all(method, out["Ours"], world)  # trained with L_dis: Eq. 10 named its heads
    _evaluate_all(cor_only, out["L_cor only"], world, "--heads", "pred-dis")  # as the paper evaluates DenseAV
    # the same flags as the DenseAV-objective row: a one-head model has no head to name
    _evaluate_all(files["ImageBind"], out["ImageBind"], world, "--heads", "pred-dis")
    _evaluate_all(files["CAV-MAE"], out["CAV-MAE"], world)
    return out


def _compare(root, *args):
    return RUN.invoke(app, ["compare", *args, "--out", str(root / "cmp")])


def _follow(source, key):
    node = json.loads(open(source).read())
    for k in key:
        node = node[k]
    return node


def _compared(root, *args) -> tuple[dict, dict]:
    """Run `compare`; check that every row is in comparison.md and every figure is the value its
    cell names (file and key). Returns comparison.json and {(table, row): the cells' texts}."""
    result = _compare(root, *args)
    assert result.exit_code == 0, result.output
    out = json.loads((root / "cmp" / "comparison.json").read_text())
    md = (root / "cmp" / "comparison.md").read_text()
    assert md in result.output
    assert list(out["tables"]) == ["table1", "table2", "table3", "table4", "table5", "table6"]
    texts = {}
    for name, table in out["tables"].items():
        for block in table["blocks"]:
            for row in block["rows"]:
                cells = [c["text"] for c in row["cells"]]
                texts.setdefault((name, row["model"]), []).extend(cells)
                assert "| " + " | ".join([row["model"], *cells]) + " |" in md
                for cell in row["cells"]:
                    assert cell["key"][0] == name and cell["pointer"] == "/" + "/".join(cell["key"])
                    if cell["value"] is not None:
                        assert cell["value"] == _follow(cell["source"], cell["key"])
                        assert cell["text"] == f"{100 * cell['value']:.1f}"
                    else:
                        assert cell["text"] in ("N/A", "—", "n/a")
    return out, texts


def test_the_papers_four_rows_on_the_generated_world(four_rows, tmp_path):
    """The issue's comparison: the method, L_cor only, ImageBind, CAV-MAE, every table by `all`."""
    out, texts = _compared(tmp_path, *(f"{name}={folder}" for name, folder in four_rows.items()))
    names = list(four_rows)
    for table in out["tables"].values():
        for block in table["blocks"]:
            assert [row["model"] for row in block["rows"]] == names
    # the rows are what they say: a tiny model trained with L_dis, one trained with L_cor alone
    for name, has_dis in (("Ours", True), ("L_cor only", False)):
        run = four_rows[name].parent.parent / ("train-method" if has_dis else "train-cor-only")
        assert yaml.safe_load((run / "config.yaml").read_text())["loss"]["disentanglement"] == (1.0 if has_dis else 0)
        assert ("dis" in json.loads((run / "summary.json").read_text())["last_loss"]) is has_dis
    assert any(n.startswith("L_cor only: heads named by pred_dis") for n in out["tables"]["table3"]["notes"])
    # the project's models: a figure in every cell
    for name in ("Ours", "L_cor only"):
        assert all(t not in ("N/A", "—") for (_, row), cells in texts.items() if row == name for t in cells)
    # one head: the specialized-head columns and all of Table 6 are N/A, the totals and Table 1 are figures
    for name, kind in (("ImageBind", "imagebind"), ("CAV-MAE", "cavmae")):
        assert all(t not in ("N/A", "—") for t in texts[("table1", name)])
        for table in ("table2", "table3", "table4", "table5"):
            assert [t == "N/A" for t in texts[(table, name)]] == [False, False, True, True] * 2, (table, name)
        assert set(texts[("table6", name)]) == {"N/A"}
        results = json.loads((four_rows[name] / "results.json").read_text())
        assert results["table3"]["model"]["kind"] == kind and results["table3"]["num_heads"] == 1
        # no duplicate of the total under a head's name, and no opposite head
        assert set(results["table3"]["results"]["places"]) == set(results["table5"]["results"]["audioset"]) == {"total"}
        assert set(results["table2"]["results"]["speech"]) == {"total", "basic_total"}
        assert set(results["table4"]["results"]["sound"]) == {"total"}
        assert "opposite_head" not in results["table1"]["results"]["cross"]
        assert results["table6"]["not_applicable"] == "not applicable: the model has one head"
        assert results["table6"]["num_heads"] == 1 and results["table6"]["results"] == {}
        assert "not applicable: the model has one head (N/A)" in (four_rows[name] / "tables.md").read_text()
    assert out["tables"]["table6"]["blocks"][1]["rows"][2]["cells"][0]["reason"] == "one head: num_heads = 1"
    assert [r["one_head"] for r in out["runs"]] == [None, None, "num_heads = 1", "num_heads = 1"]


def test_every_figure_is_its_results_json_value_in_the_papers_layout(runs):
    out, texts = _compared(runs, f"Ours={runs / 'oracle' / 'results.json'}", f"tiny={runs / 'tiny'}")
    assert out["tables"]["table2"]["blocks"][0]["columns"] == [
        "Sound Total mAP",
        "Sound Total mIoU",
        "Sound Head mAP",
        "Sound Head mIoU",
        "Speech Total mAP",
        "Speech Total mIoU",
        "Speech Head mAP",
        "Speech Head mIoU",
    ]
    assert out["tables"]["table3"]["blocks"][0]["columns"][:4] == [
        "AudioSet Total I→A",
        "AudioSet Total A→I",
        "AudioSet Sound I→A",
        "AudioSet Sound A→I",
    ]
    assert [b["caption"] for b in out["tables"]["table1"]["blocks"]] == ["cross-object pairs", "same-object pairs"]
    keys = {
        (name, c["column"]): c["key"] for name, t in out["tables"].items() for c in t["blocks"][0]["rows"][0]["cells"]
    }
    assert keys[("table1", "Sim-Speech mAP")] == ["table1", "results", "cross", "speech", "mAP"]
    assert keys[("table4", "Speech Head mIoU")] == ["table4", "results", "speech", "head", "mIoU"]
    assert keys[("table5", "AudioSet Sound A→I")] == ["table5", "results", "audioset", "sound_head", "A->I", "10"]
    assert keys[("table3", "Places Speech I→A")] == ["table3", "results", "places", "speech_head", "I->A", "10"]
    assert keys[("table6", "Mixed Places Sound I→A")] == [
        "table6",
        "results",
        "mixed",
        "places",
        "sound_head",
        "I->A",
        "10",
    ]
    assert sum(t not in ("N/A", "—", "n/a") for cells in texts.values() for t in cells) > 40
    # the oracle: every figure of every table; the oracle's specialized heads are perfect
    assert all(t not in ("N/A", "—") for (t_name, model), cells in texts.items() if model == "Ours" for t in cells)
    assert texts[("table2", "Ours")][2] == "100.0"
    # the tiny model ran Table 3 only: its other rows are "—", and a note says which file lacks what
    assert all(t not in ("N/A", "—") for t in texts[("table3", "tiny")])
    assert set(texts[("table1", "tiny")]) == {"—"} and set(texts[("table6", "tiny")]) == {"—"}
    assert (
        f"tiny: {runs / 'tiny' / 'results.json'} has no table2 section (8 figure(s) shown as —)"
        in out["tables"]["table2"]["notes"]
    )
    assert out["runs"][0]["one_head"] is None


def test_unusable_runs_are_one_line_errors(runs, tmp_path):
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "results.json").write_text('{"table2": {"results": ')
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    section = json.loads((runs / "oracle" / "results.json").read_text())
    section["table2"]["results"]["sound"]["total"]["mAP"] = "high"
    (wrong / "results.json").write_text(json.dumps(section))
    cases = [
        ([f"a={tmp_path / 'nothing'}"], f"{tmp_path / 'nothing' / 'results.json'} does not exist"),
        ([f"a={garbled}"], f"{garbled / 'results.json'} cannot be read as JSON"),
        ([f"a={wrong}"], f"{wrong / 'results.json'}: table2.results.sound.total.mAP is 'high', not a number"),
        ([str(runs / "oracle")], "give NAME=RUN_DIR"),
        ([f"a={runs / 'oracle'}", f"a={runs / 'tiny'}"], "the name 'a' is given twice"),
    ]
    for args, says in cases:
        result = _compare(tmp_path, *args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and says in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "cmp").exists()
