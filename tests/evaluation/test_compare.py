"""`evaluate.py compare` over real results.json files: three runs on the generated test sets (the
oracle model, a one-head oracle like the paper's baselines, and the tiny project checkpoint evaluated
through the CLI on one table only), laid out in the paper's tables; every figure is checked against
the file and key its cell names."""

import json
import time

import pytest
import torch
from typer.testing import CliRunner

from evaluate import app
from evaluation import tables
from evaluation.runner import LoadedModel, ModelRunner
from tests.support.oracle_model import OracleModel
from tests.support.testsets import make_ade_tree, make_is3_tree, make_retrieval_shards

RUN = CliRunner()


class OneHeadOracle(OracleModel):
    """The oracle reduced to its first head: a model with no specialized head, as ImageBind and CAV-MAE."""

    def __init__(self):
        super().__init__()
        self.config.num_heads, self.config.speech_head = 1, 0

    def encode_image(self, images):
        return super().encode_image(images)[:, :, :1]

    def encode_audio(self, wave, mask):
        a, valid = super().encode_audio(wave, mask)
        return a[:, :, :1], valid


def _evaluate(model, out, data, names):
    """Tables ``names`` of ``model`` into ``out``/results.json, the way `evaluate.py` writes them."""
    run = tables.EvalRun(checkpoint=None, preset="oracle", label=None, out=out, device="cpu", batch_size=4,
                         normalization="global", save_heatmaps=False, overlays=0, overlay_keys=[], seed=0,
                         progress=False, workers=1)
    run._loaded = (ModelRunner(model, torch.device("cpu"), 4), LoadedModel(model, {"config": {"name": "oracle"}}))
    for name in names:
        started = time.time()
        body = tables.TABLES[name].run(run, data, tables.TableOptions())
        tables.write_section(out, name, tables.section(run, tables.TABLES[name], body, data, started))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("compare")
    make_is3_tree(root / "is3")
    make_ade_tree(root, "speech")
    make_ade_tree(root, "sound")
    make_retrieval_shards(root / "places", 6, "speech")
    make_retrieval_shards(root / "audioset", 6, "sound")
    data = tables.DataPaths(root / "is3", root / "ADE20KSpeechPrompted", root / "ADE20KSoundPrompted",
                            root / "places", root / "audioset")
    _evaluate(OracleModel(), root / "oracle", data, ["table1", "table2", "table3", "table4", "table5", "table6"])
    # Table 6 needs two heads: the one-head model has none, like the paper's baselines
    _evaluate(OneHeadOracle(), root / "one", data, ["table1", "table2", "table3", "table4", "table5"])
    tiny = RUN.invoke(app, ["--checkpoint", str(tiny_checkpoint), "--out", str(root / "tiny"), "--batch-size", "6",
                            "--no-progress", "--workers", "1", "table3", "--places", str(root / "places"),
                            "--audioset", str(root / "audioset")])
    assert tiny.exit_code == 0, tiny.output
    return root


def _compare(root, *args):
    return RUN.invoke(app, ["compare", *args, "--out", str(root / "cmp")])


def _follow(source, key):
    node = json.loads(open(source).read())
    for k in key:
        node = node[k]
    return node


def test_every_figure_is_its_results_json_value_in_the_papers_layout(runs):
    result = _compare(runs, f"Ours={runs / 'oracle'}", f"Baseline={runs / 'one' / 'results.json'}",
                      f"tiny={runs / 'tiny'}")
    assert result.exit_code == 0, result.output
    out = json.loads((runs / "cmp" / "comparison.json").read_text())
    md = (runs / "cmp" / "comparison.md").read_text()
    assert md in result.output
    assert list(out["tables"]) == ["table1", "table2", "table3", "table4", "table5", "table6"]
    assert out["tables"]["table2"]["blocks"][0]["columns"] == [
        "Sound Total mAP", "Sound Total mIoU", "Sound Head mAP", "Sound Head mIoU",
        "Speech Total mAP", "Speech Total mIoU", "Speech Head mAP", "Speech Head mIoU"]
    assert out["tables"]["table3"]["blocks"][0]["columns"][:4] == [
        "AudioSet Total I→A", "AudioSet Total A→I", "AudioSet Sound I→A", "AudioSet Sound A→I"]
    assert [b["caption"] for b in out["tables"]["table1"]["blocks"]] == ["cross-object pairs", "same-object pairs"]
    keys = {(name, c["column"]): c["key"] for name, t in out["tables"].items()
            for c in t["blocks"][0]["rows"][0]["cells"]}
    assert keys[("table1", "Sim-Speech mAP")] == ["table1", "results", "cross", "speech", "mAP"]
    assert keys[("table4", "Speech Head mIoU")] == ["table4", "results", "speech", "head", "mIoU"]
    assert keys[("table5", "AudioSet Sound A→I")] == ["table5", "results", "audioset", "sound_head", "A->I", "10"]
    assert keys[("table3", "Places Speech I→A")] == ["table3", "results", "places", "speech_head", "I->A", "10"]
    assert keys[("table6", "Mixed Places Sound I→A")] == ["table6", "results", "mixed", "places", "sound_head",
                                                          "I->A", "10"]
    texts = {}  # (table, model) -> the cells' texts
    numbers = 0
    for name, table in out["tables"].items():
        for block in table["blocks"]:
            for row in block["rows"]:
                cells = [c["text"] for c in row["cells"]]
                texts.setdefault((name, row["model"]), []).extend(cells)
                assert "| " + " | ".join([row["model"], *cells]) + " |" in md
                for cell in row["cells"]:
                    assert cell["key"][0] == name and cell["pointer"] == "/" + "/".join(cell["key"])
                    if cell["value"] is not None:
                        numbers += 1
                        assert cell["value"] == _follow(cell["source"], cell["key"])
                        assert cell["text"] == f"{100 * cell['value']:.1f}"
    assert numbers > 80
    # the oracle: every figure of every table; the oracle's specialized heads are perfect
    assert all(t not in ("N/A", "—") for (t_name, model), cells in texts.items() if model == "Ours" for t in cells)
    assert texts[("table2", "Ours")][2] == "100.0"
    # one head: the specialized-head columns and all of Table 6 are N/A, the totals and Table 1 are numbers
    one = {name: texts[(name, "Baseline")] for name in out["tables"]}
    assert all(t != "N/A" for t in one["table1"])
    for name in ("table2", "table4"):
        assert [t == "N/A" for t in one[name]] == [False, False, True, True] * 2
    for name in ("table3", "table5"):
        assert [t == "N/A" for t in one[name]] == [False, False, True, True] * 2
    assert set(one["table6"]) == {"N/A"}
    reason = next(c for c in out["tables"]["table2"]["blocks"][0]["rows"][1]["cells"] if c["text"] == "N/A")["reason"]
    assert reason == "one head: num_heads = 1"
    # the tiny model ran Table 3 only: its other rows are "—", and a note says which file lacks what
    assert all(t not in ("N/A", "—") for t in texts[("table3", "tiny")])
    assert set(texts[("table1", "tiny")]) == {"—"} and set(texts[("table6", "tiny")]) == {"—"}
    assert f"tiny: {runs / 'tiny' / 'results.json'} has no table2 section (8 figure(s) shown as —)" \
        in out["tables"]["table2"]["notes"]
    assert out["runs"][1]["one_head"] == "num_heads = 1" and out["runs"][0]["one_head"] is None


def test_unusable_runs_are_one_line_errors(runs, tmp_path):
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "results.json").write_text('{"table2": {"results": ')
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    section = json.loads((runs / "oracle" / "results.json").read_text())
    section["table2"]["results"]["sound"]["total"]["mAP"] = "high"
    (wrong / "results.json").write_text(json.dumps(section))
    cases = [([f"a={tmp_path / 'nothing'}"], f"{tmp_path / 'nothing' / 'results.json'} does not exist"),
             ([f"a={garbled}"], f"{garbled / 'results.json'} cannot be read as JSON"),
             ([f"a={wrong}"], f"{wrong / 'results.json'}: table2.results.sound.total.mAP is 'high', not a number"),
             ([str(runs / "oracle")], "give NAME=RUN_DIR"),
             ([f"a={runs / 'oracle'}", f"a={runs / 'one'}"], "the name 'a' is given twice")]
    for args, says in cases:
        result = _compare(tmp_path, *args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and says in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "cmp").exists()
