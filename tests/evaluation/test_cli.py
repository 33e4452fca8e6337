"""One end-to-end run per `evaluate.py` subcommand with the tiny model preset (random weights) on the
generated test sets (``data``, tests/evaluation/conftest.py)."""

import json

import pytest
from typer.testing import CliRunner

from evaluate import app

pytestmark = pytest.mark.slow
RUN = CliRunner()
OPTS = ["--batch-size", "4", "--no-progress", "--workers", "2"]
BASE = ["--preset", "tiny", *OPTS]


def invoke(out, *args, base=BASE):
    result = RUN.invoke(app, [*base, "--out", str(out), *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((out / "results.json").read_text()), (out / "tables.md").read_text()


def test_table1(data, tmp_path):
    res, md = invoke(
        tmp_path,
        "--save-heatmaps",
        "--overlay-key",
        "gibbon_drum_drum+gibbon_drum_gibbon",
        "table1",
        "--is3",
        str(data / "is3"),
        "--pairing",
        "cross",
    )
    t1 = res["table1"]
    assert t1["label"] == "tiny (random weights)" and t1["normalization"] == "global"
    assert t1["model"]["preset"] == "tiny" and t1["counts"] == {"cross_pairs": 6}
    for head in ("sound", "speech"):
        assert 0.0 <= t1["results"]["cross"][head]["mAP"] <= 1.0
    assert "Sim-Sound mAP" in md and "cross-object pairs" in md
    assert (tmp_path / "overlays" / "table1_cross_gibbon_drum_drum+gibbon_drum_gibbon.png").is_file()
    # the archive reproduces the reported numbers
    rec = RUN.invoke(app, ["recompute", str(tmp_path / "heatmaps" / "table1_cross.npz")])
    assert rec.exit_code == 0, rec.output
    assert f"sound: mAP {100 * t1['results']['cross']['sound']['mAP']:.2f}" in rec.output


def test_table2_and_table4_accumulate(data, tmp_path):
    args = ["--ade-speech", str(data / "ADE20KSpeechPrompted"), "--ade-sound", str(data / "ADE20KSoundPrompted")]
    invoke(tmp_path, "--normalization", "per_image", "table2", *args)
    res, md = invoke(tmp_path, "table4", *args, "--offscreen-snr-db", "5")
    assert res["table2"]["normalization"] == "per_image" and res["table4"]["normalization"] == "global"
    assert set(res["table2"]["results"]) == {"speech", "sound"}
    assert set(res["table2"]["results"]["speech"]) == {"total", "head", "basic_total", "basic_head"}
    assert res["table4"]["settings"]["offscreen_snr_db"] == 5.0
    assert res["table2"]["counts"]["speech_dropped_by_protocol"] == 2
    assert "Table 2." in md and "Table 4." in md


@pytest.mark.parametrize("table", ["table3", "table5", "table6"])
def test_retrieval_tables(data, tmp_path, table):
    res, md = invoke(tmp_path, table, "--places", str(data / "places"), "--audioset", str(data / "audioset"))
    section = res[table]["results"]
    if table == "table6":
        assert 0.0 <= section["disentanglement"]["pred_dis"] <= 1.0
        assert set(section) == {"clean", "mixed", "disentanglement"}
    else:
        assert set(section["places"]) == {"total", "sound_head", "speech_head"}
        assert set(section["audioset"]["total"]["I->A"]) == {"1", "5", "10"}
    assert res[table]["counts"]["places_pairs"] == 6


def test_table7_with_an_ablation_checkpoint(data, tmp_path, tiny_checkpoint):
    ckpt = tiny_checkpoint
    res, md = invoke(
        tmp_path / "out",
        "--checkpoint",
        str(ckpt),
        "--label",
        "Ours",
        "table7",
        "--places",
        str(data / "places"),
        "--audioset",
        str(data / "audioset"),
        "--ablation",
        f"L_cor only={ckpt}",
        base=OPTS,
    )
    rows = res["table7"]["results"]["rows"]
    assert [r["label"] for r in rows] == ["Ours", "L_cor only"]
    assert rows[0]["audioset_sound_head"] == rows[1]["audioset_sound_head"]  # the same weights
    assert res["table7"]["model"]["checkpoint"] == str(ckpt)
    assert "(a) AudioSet, sound head" in md


def test_all_runs_what_the_data_allows(data, tmp_path):
    result = RUN.invoke(
        app,
        [
            *BASE,
            "--out",
            str(tmp_path),
            "--overlay-key",
            "row1-ADE_val_00000001",
            "--overlay-key",
            "no-such-item",
            "all",
            "--ade-sound",
            str(data / "ADE20KSoundPrompted"),
            "--places",
            str(data / "places"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "no item has the --overlay-key(s) ['no-such-item']" in result.output
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == ["table2_sound_row1-ADE_val_00000001.png"]
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res) == {"table2", "table3"}
    assert "table1: skipped" in result.output and "table5: skipped" in result.output


def test_errors_are_reported(data, tmp_path):
    result = RUN.invoke(app, [*BASE, "--out", str(tmp_path), "table1", "--is3", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = RUN.invoke(app, [*BASE, "--out", str(tmp_path), "table6", "--places", str(data / "places")])
    assert result.exit_code == 2 and "--audioset" in result.output
    result = RUN.invoke(app, ["--out", str(tmp_path), "table3", "--places", str(data / "places")])
    assert result.exit_code == 2 and "exactly one of --checkpoint" in result.output
    assert not (tmp_path / "results.json").exists()


def test_heads_named_by_pred_dis(data, tmp_path):
    """`--heads pred-dis` names the heads before the tables run and every section records it."""
    res, md = invoke(
        tmp_path,
        "--heads",
        "pred-dis",
        "all",
        "--is3",
        str(data / "is3"),
        "--places",
        str(data / "places"),
        "--audioset",
        str(data / "audioset"),
    )
    heads = {name: section["heads"] for name, section in res.items()}
    assert set(heads) == {"table1", "table3", "table5", "table6"}
    first = heads["table1"]
    assert first["rule"] == "pred_dis" and {first["sound_head"], first["speech_head"]} == {0, 1}
    assert all(h == first for h in heads.values())
    assert f"sound = head {first['sound_head']}" in md
    plain, _ = invoke(tmp_path / "plain", "table3", "--places", str(data / "places"))
    assert plain["table3"]["heads"] == {"rule": "config", "sound_head": 0, "speech_head": 1}
    result = RUN.invoke(
        app, [*BASE, "--out", str(tmp_path / "x"), "--heads", "pred-dis", "table3", "--places", str(data / "places")]
    )
    assert result.exit_code == 2 and "pass --places and --audioset" in result.output
