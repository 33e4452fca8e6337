"""End-to-end protocol checks with an oracle model that reads the answers off the test sets.

If heads, masks, frame windows, image geometry or pair order were routed wrongly, the oracle's
perfect scores would drop: these tests pin the protocol, not a model's quality.
"""

import numpy as np
import pytest
import torch

from evaluation.retrieval import RetrievalSession, run_table3, run_table5, run_table6, table7_row
from evaluation.runner import ModelRunner
from evaluation.segmentation import SegSettings, Table1Settings, run_table1, run_table2, run_table4
from pipeline.testsets.ade20k import read_ade20k_prompted
from pipeline.testsets.is3 import read_is3
from pipeline.testsets.retrieval import read_retrieval_set
from tests.support.oracle_model import OracleModel
from tests.support.testsets import make_ade_tree, make_is3_tree, make_retrieval_shards


@pytest.fixture
def runner():
    return ModelRunner(OracleModel(), torch.device("cpu"), batch_size=4)


def test_table1_routes_heads_to_their_objects(tmp_path, runner):
    ds = read_is3(make_is3_tree(tmp_path / "is3"))
    settings = SegSettings(progress=False, save_heatmaps=tmp_path / "hm", overlays=1, overlay_dir=tmp_path / "png")
    body = run_table1(runner, ds, settings, Table1Settings())
    for pairing in ("cross", "same"):
        r = body["results"][pairing]
        for head in ("sound", "speech"):
            assert r[head]["mAP"] == pytest.approx(1.0), (pairing, head)
            assert r[head]["mIoU"] == pytest.approx(1.0, abs=0.02), (pairing, head)
            assert r[head]["extras"]["cIoU"] == 1.0 and r[head]["extras"]["IIoU"] == 1.0
        assert r["joint_hit"] == 1.0
    # the oracle's heads are disentangled: on the other type's object they miss in cross pairs
    # and hit in same-object pairs (where both types name the same object)
    for head in ("sound", "speech"):
        assert body["results"]["cross"]["opposite_head"][head]["mAP"] < 0.6
        assert body["results"]["same"]["opposite_head"][head]["mAP"] == pytest.approx(1.0)
    assert body["counts"] == {"cross_pairs": 6, "same_pairs": 6}
    # each pair's own AP, in the pairs' order: the oracle's maps are its masks
    cross = body["per_item"]["cross"]
    assert cross["keys"] == [p.key for p in ds.pairs("cross")[0]]
    assert cross["sound_AP"] == pytest.approx([1.0] * 6, abs=1e-4) == cross["speech_AP"]
    # the archive holds what the metrics used: the speech head's maps hit the *named* object
    archive = np.load(tmp_path / "hm" / "table1_cross.npz")
    assert archive["sound_heatmaps"].shape == (6, 224, 224)
    assert not np.array_equal(archive["sound_masks"], archive["speech_masks"])
    inside = archive["speech_heatmaps"][archive["speech_masks"]].mean()
    outside = archive["speech_heatmaps"][~archive["speech_masks"]].mean()
    assert inside > 0.9 and outside < 0.1
    assert len(list((tmp_path / "png").glob("table1_cross_*.png"))) == 1


def test_table1_swapped_heads_would_fail(tmp_path, runner):
    """The same oracle with its heads swapped scores at chance: the protocol is what routes."""
    ds = read_is3(make_is3_tree(tmp_path / "is3"))
    runner.sound_head, runner.speech_head = 1, 0
    body = run_table1(runner, ds, SegSettings(progress=False), Table1Settings(pairings=("cross",)))
    assert body["results"]["cross"]["sound"]["mAP"] < 0.6
    assert max(body["per_item"]["cross"]["sound_AP"]) < 0.6  # and so does each pair's own AP


def test_ade_tables_geometry_and_mixing(tmp_path, runner):
    speech = read_ade20k_prompted(make_ade_tree(tmp_path, "speech"), "speech")
    sound = read_ade20k_prompted(make_ade_tree(tmp_path, "sound"), "sound")
    for mixed, run_table in ((False, run_table2), (True, run_table4)):
        body = run_table(runner, speech, sound, SegSettings(progress=False, normalization="per_image"))
        for kind, variants in (
            ("sound", ("total", "head")),
            ("speech", ("total", "head", "basic_total", "basic_head")),
        ):
            for v in variants:
                res = body["results"][kind][v]
                assert res["mAP"] == pytest.approx(1.0, abs=1e-3), (mixed, kind, v)
                assert res["mIoU"] > 0.95, (mixed, kind, v)
    assert body["settings"]["offscreen_source"] == "the other ADE20K prompted set"


def test_retrieval_tables(tmp_path, runner):
    make_retrieval_shards(tmp_path / "places", 12, "speech")
    make_retrieval_shards(tmp_path / "audioset", 12, "sound")
    sets = {"places": read_retrieval_set(tmp_path / "places"), "audioset": read_retrieval_set(tmp_path / "audioset")}
    session = RetrievalSession(runner, sets, progress=False)
    clean = run_table3(session)["results"]
    for name, head in (("places", "speech_head"), ("audioset", "sound_head")):
        for direction in ("I->A", "A->I"):
            assert clean[name][head][direction][1] == 1.0
            assert clean[name]["total"][direction][1] == 1.0
    # the opposite head hears nothing of its type: a constant score, chance level k / N
    assert clean["places"]["sound_head"]["I->A"][10] == pytest.approx(10 / 12)
    mixed = run_table5(session)["results"]
    assert mixed["places"]["speech_head"]["I->A"][1] == 1.0  # the specialized head ignores the distractor
    assert mixed["audioset"]["sound_head"]["A->I"][1] == 1.0
    assert mixed["places"]["total"]["I->A"][1] < 1.0  # the sum of heads is distracted
    t6 = run_table6(session)["results"]
    assert t6["disentanglement"]["pred_dis"] == pytest.approx(1.0)
    assert t6["disentanglement"]["act_dis"] == pytest.approx(1.0)
    assert t6["clean"]["places"]["sound_head"]["A->I"][1] == pytest.approx(1 / 12)
    row = table7_row(session, "oracle")
    assert row["audioset_sound_head"]["I->A"][10] == 1.0


def test_pred_dis_names_the_heads_of_a_model_whose_config_has_them_swapped(tmp_path, runner):
    """A model trained without L_dis has no named heads: the assignment Pred.Dis picks finds which
    head hears sound, whatever the config says, and the tables then route by it."""
    from evaluation.tables import assign_heads

    make_retrieval_shards(tmp_path / "places", 12, "speech")
    make_retrieval_shards(tmp_path / "audioset", 12, "sound")
    sets = {"places": read_retrieval_set(tmp_path / "places"), "audioset": read_retrieval_set(tmp_path / "audioset")}
    runner.sound_head, runner.speech_head = 1, 0  # the config's names are wrong
    session = RetrievalSession(runner, sets, progress=False)
    kept = assign_heads(runner, "config", lambda: session)
    assert kept == {"rule": "config", "sound_head": 1, "speech_head": 0}
    assert run_table3(session)["results"]["audioset"]["sound_head"]["I->A"][1] < 0.5  # misrouted
    named = assign_heads(runner, "pred-dis", lambda: session)
    assert (named["sound_head"], named["speech_head"]) == (0, 1) == (runner.sound_head, runner.speech_head)
    assert named["pred_dis"] == pytest.approx(1.0)
    assert run_table3(session)["results"]["audioset"]["sound_head"]["I->A"][1] == 1.0
    with pytest.raises(ValueError, match="--heads must be one of"):
        assign_heads(runner, "by-name", lambda: session)
