"""Evaluation of a model whose heads are named by audio type: each head's
results under its type, Pred.Dis / Act.Dis on the speech and sound heads, and Table 6 per pair of
types when a retrieval set of a further type is given; a two-head model's sections unchanged."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import evaluate
from evaluation import markdown, metrics
from evaluation.retrieval import RetrievalSession, run_table3, run_table6
from evaluation.runner import ModelRunner
from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.factory import build_model
from pipeline.testsets.retrieval import read_retrieval_set
from tests.support.testsets import make_retrieval_shards

N = 4


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("typed_sets")
    for name, audio_type in (("places", "speech"), ("audioset", "sound"), ("music", "music")):
        make_retrieval_shards(root / name, N, audio_type)
    return {name: read_retrieval_set(root / name, N) for name in ("places", "audioset", "music")}


def _runner(**fields) -> ModelRunner:
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny", image_size=64, **fields))
    return ModelRunner(model, torch.device("cpu"), batch_size=N)


def test_table6_adds_every_pair_of_types_the_heads_answer(sets):
    runner = _runner(head_types=["speech", "music", "sound"])  # h(speech) 0, h(music) 1, h(sound) 2
    session = RetrievalSession(runner, sets, progress=False, workers=1)
    assert session.head_names() == ["speech_head", "music_head", "sound_head"]
    assert set(run_table3(session)["results"]["music"]) == {"total", "speech_head", "music_head", "sound_head"}
    body = run_table6(session)
    r = body["results"]
    assert set(r) == {"clean", "mixed", "disentanglement", "pairs"}
    assert r["disentanglement"]["heads"] == [0, 2]  # the speech and sound heads, in head order
    assert set(r["pairs"]) == {"music/sound", "music/speech", "sound/speech"}
    pair = r["pairs"]["music/sound"]
    assert (pair["types"], pair["heads"]) == (["music", "sound"], [1, 2])
    # each set with the other type's head, clean and with the other set's clips mixed in
    assert pair["clean"]["music"]["sound_head"] == metrics.recall_at_k(session.scores("music")[2])
    assert pair["mixed"]["audioset"]["music_head"] == metrics.recall_at_k(session.scores("audioset", "music")[1])
    assert not np.array_equal(session.scores("audioset", "music"), session.scores("audioset"))
    music = np.stack([np.diag(m) for m in session.scores("music")], axis=1)[:, [1, 2]]
    sound = np.stack([np.diag(m) for m in session.scores("audioset")], axis=1)[:, [1, 2]]
    assert pair["disentanglement"] == metrics.disentanglement(music, sound)
    # the paper's pair, as a pair, is the paper's Table 6
    paper = r["pairs"]["sound/speech"]
    assert paper["clean"]["audioset"]["speech_head"] == r["clean"]["audioset"]["speech_head"]
    assert paper["mixed"]["places"]["sound_head"] == r["mixed"]["places"]["sound_head"]
    assert paper["disentanglement"]["pred_dis"] == pytest.approx(r["disentanglement"]["pred_dis"])
    text = markdown.table6({"label": "three heads", **body})
    assert "Types music/sound (heads 1, 2)" in text and "Clean music sound head I→A" in text


def test_a_two_head_model_keeps_its_table6_and_a_head_less_type_is_one_line(sets):
    two = {name: sets[name] for name in ("places", "audioset")}
    r = run_table6(RetrievalSession(_runner(), two, progress=False, workers=1))["results"]
    assert set(r) == {"clean", "mixed", "disentanglement"} and "heads" not in r["disentanglement"]
    assert set(r["clean"]["places"]) == {"sound_head"} and set(r["clean"]["audioset"]) == {"speech_head"}
    no_sound = RetrievalSession(_runner(head_types=["speech", "music", "bird"]), two, progress=False, workers=1)
    with pytest.raises(ValueError, match=r"this table needs a sound head; the model's heads answer"):
        run_table6(no_sound)


@pytest.mark.parametrize(
    "spec, line",
    [
        ("music", "error: --set takes TYPE=DIR (e.g. music=shards/music/eval), got 'music'"),
        ("speech=x", "error: --set speech=...: give speech and sound as --places / --audioset, each further type once"),
        ("Music=x", "error: --set Music=...: 'Music' is not an audio type name ([a-z][a-z0-9_]*)"),
    ],
)
def test_a_bad_set_option_is_one_line(tmp_path, spec, line):
    args = ["--preset", "tiny", "--out", str(tmp_path), "table6", "--places", "p", "--audioset", "a", "--set", spec]
    result = CliRunner().invoke(evaluate.app, args)
    assert result.exit_code == 2 and result.output.strip().splitlines() == [line], result.output


@pytest.mark.parametrize(
    "table, sets, line",
    [
        ("table1", ["--is3", "is3"], "Table 1 needs a sound head"),
        ("table2", ["--ade-sound", "ADE20KSoundPrompted"], "Table 2 needs a sound head"),
        (
            "table4",
            ["--ade-speech", "ADE20KSpeechPrompted", "--ade-sound", "ADE20KSoundPrompted"],
            "Table 4 needs a sound head",
        ),
    ],
)
def test_a_segmentation_table_without_a_head_for_its_type_is_one_line(tmp_path_factory, data, table, sets, line):
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny", image_size=64, head_types=["music", "speech"]))
    checkpoint = save_checkpoint(model, tmp_path_factory.mktemp("music_speech") / "final")
    out = tmp_path_factory.mktemp("out")
    paths = [str(data / s) if not s.startswith("--") else s for s in sets]
    result = CliRunner().invoke(evaluate.app, ["--checkpoint", str(checkpoint), "--out", str(out), table, *paths])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output + repr(result.exception)
    assert result.output.strip().splitlines() == [f"error: {line}; the model's heads answer ['music', 'speech']"]
    assert not (out / "results.json").exists()
