"""Checkpoints by Hugging Face Hub repo id, from a pre-populated cache and no network: the cache is
written in huggingface_hub's documented layout (``models--owner--name/blobs``, ``snapshots/<commit>``
links, ``refs/main``) under a temporary HF_HUB_CACHE with HF_HUB_OFFLINE=1, then this project's
checkpoint and a DenseAV-layout copy load by repo id through load_any, the `ground` command (a
subprocess: the environment variables as a user sets them) and evaluate.py; revision pins, local
paths winning, and every refusal in one line. save_pretrained's model card and push_to_hub's
refusals."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants
from huggingface_hub.file_download import repo_folder_name
from safetensors.torch import load_file
from typer.testing import CliRunner

from evaluate import app as evaluate_app
from ground.cli import app as ground_app
from model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_checkpoint
from model.config import ModelConfig
from model.factory import build_model
from model.hub import HubError, model_card, parse_repo_spec, push_to_hub, save_pretrained
from model.loading import from_pretrained, load_any
from tests.model.test_denseav import HPARAMS, random_state, write
from tests.support import media
from tests.support.testsets import make_retrieval_shards

REPO = "someone/ssas-tiny"
DENSEAV = "mhamilton723/DenseAV-sound-language"
ROOT = Path(__file__).resolve().parents[2]


def cache_repo(cache: Path, repo_id: str, folder: Path, commit: str, ref: str | None = "main") -> Path:
    """Put ``folder``'s files into the cache as huggingface_hub stores a download: content-addressed
    blobs, ``snapshots/<commit>/<name>`` links to them, ``refs/<ref>`` holding the commit."""
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        blob = storage / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    if ref is not None:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty offline Hub cache. huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, at
    import, so this process's copies are set as well as the environment subprocesses inherit."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def tiny(seed: int, directory: Path) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(build_model(ModelConfig.preset("tiny")), directory)


COMMIT_OLD, COMMIT_NEW = "a" * 40, "b" * 40


@pytest.fixture
def project_repo(hub_cache, tmp_path):
    """REPO with two commits: main at COMMIT_NEW (seed 2), COMMIT_OLD (seed 1) reachable by hash."""
    cache_repo(hub_cache, REPO, tiny(1, tmp_path / "old"), COMMIT_OLD, ref=None)
    cache_repo(hub_cache, REPO, tiny(2, tmp_path / "new"), COMMIT_NEW)
    return tmp_path


def same_weights(model, directory: Path) -> bool:
    state = load_file(str(directory / WEIGHTS_FILE))
    return all(torch.equal(t.cpu(), state[k]) for k, t in model.state_dict().items())


def test_a_project_checkpoint_loads_by_repo_id_at_the_pinned_revision(project_repo):
    model, desc = load_any(REPO)
    assert same_weights(model, project_repo / "new") and desc["kind"] == "project"
    assert desc["hub"] == {"repo_id": REPO, "revision": "main", "commit": COMMIT_NEW}
    model, desc = load_any(f"{REPO}@{COMMIT_OLD}")
    assert same_weights(model, project_repo / "old") and desc["hub"]["commit"] == COMMIT_OLD
    assert same_weights(from_pretrained(REPO, revision=COMMIT_OLD), project_repo / "old")


def test_a_denseav_copy_loads_by_repo_id(hub_cache, tmp_path):
    folder = write(random_state("peft05"), tmp_path / "copy" / WEIGHTS_FILE, "safetensors", HPARAMS).parent
    cache_repo(hub_cache, DENSEAV, folder, COMMIT_NEW)
    model, desc = load_any(DENSEAV, speech_head=0)
    assert desc["kind"] == "denseav" and desc["hyper_parameters"]["sim_agg_heads"] == 2
    assert desc["hub"] == {"repo_id": DENSEAV, "revision": "main", "commit": COMMIT_NEW}
    assert (model.config.speech_head, model.config.sound_head) == (0, 1)


def test_a_local_path_that_exists_wins_over_the_repo_id(project_repo, monkeypatch):
    monkeypatch.chdir(project_repo)
    local = tiny(3, project_repo / REPO)  # ./someone/ssas-tiny
    model, desc = load_any(REPO)
    assert same_weights(model, local) and "hub" not in desc


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_offline_with_nothing_cached_names_the_repo_and_what_to_do(hub_cache):
    with pytest.raises(HubError) as exc:
        load_any("someone/not-cached@v2")
    text = one_line(exc)
    assert "someone/not-cached@v2" in text and "HF_HUB_OFFLINE" in text and "hf download someone/not-cached" in text
    with pytest.raises(HubError) as exc:
        load_any(f"{REPO}@no-such-branch")  # a revision the cache does not know
    assert f"{REPO}@no-such-branch" in one_line(exc)


@pytest.mark.parametrize("spec", ["runs/no-such-run/final/", "no/such/dir", "denseav/denseav_2head.ckpt", "x@"])
def test_neither_a_path_nor_a_repo_id_is_one_line(hub_cache, spec):
    assert parse_repo_spec(spec) is None
    with pytest.raises(HubError) as exc:
        load_any(spec)
    text = one_line(exc)
    assert text.startswith(f"{spec} does not exist (no such checkpoint file or directory)"), text
    assert "owner/name" in text


def test_a_cached_repo_without_checkpoint_files_is_refused(hub_cache, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.md").write_text("not a model")
    cache_repo(hub_cache, "someone/other", tmp_path / "other", COMMIT_NEW)
    with pytest.raises(HubError) as exc:
        load_any("someone/other")
    assert "has no config.json or model.safetensors" in one_line(exc)


def test_ground_loads_a_checkpoint_by_repo_id_from_the_cache(project_repo, hub_cache, tmp_path):
    image = media.write_image(tmp_path / "scene.png", size=(64, 48))
    speech = media.write_audio(tmp_path / "speech.wav", media.speech_like(1.5, seed=1), 16_000)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    # the installed `ground` command, run where no checkpoint folder of that name exists
    command = [
        str(Path(sys.executable).parent / "ground"),
        "--checkpoint",
        f"{REPO}@{COMMIT_OLD}",
        "--image",
        str(image),
        "--audio",
        str(speech),
        "--out",
        str(out),
        "--no-progress",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    model = json.loads((out / "result.json").read_text())["model"]
    assert model["hub"] == {"repo_id": REPO, "revision": COMMIT_OLD, "commit": COMMIT_OLD}
    # nothing cached: refused in one line before anything is written (in this process: the same code)
    missing = CliRunner().invoke(ground_app, ["--checkpoint", "someone/not-cached", *command[3:]])
    lines = missing.stderr.strip().splitlines()
    assert missing.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: cannot load --checkpoint")
    assert "someone/not-cached" in lines[0] and "HF_HUB_OFFLINE" in lines[0]


def test_evaluate_gives_a_denseav_row_by_repo_id(hub_cache, tmp_path):
    folder = write(random_state("peft07"), tmp_path / "copy" / WEIGHTS_FILE, "safetensors", HPARAMS).parent
    cache_repo(hub_cache, DENSEAV, folder, COMMIT_NEW)
    places, audioset = tmp_path / "places", tmp_path / "audioset"
    make_retrieval_shards(places, 4, "speech")
    make_retrieval_shards(audioset, 4, "sound")
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        evaluate_app,
        [
            "--checkpoint",
            DENSEAV,
            "--batch-size",
            "4",
            "--no-progress",
            "--workers",
            "1",
            "--out",
            str(out),
            "table3",
            "--places",
            str(places),
            "--audioset",
            str(audioset),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    t3 = json.loads((out / "results.json").read_text())["table3"]
    assert t3["label"] == "DenseAV-sound-language" and t3["model"]["checkpoint"] == DENSEAV
    assert t3["model"]["kind"] == "denseav" and t3["model"]["hub"]["commit"] == COMMIT_NEW


# --------------------------------------------------------------------------- writing and the card


def test_save_pretrained_writes_a_loadable_checkpoint_and_its_card(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        "data:\n  speech: shards/places/train\n  sound: shards/audioset/unbalanced\n  batch_size: 8\nsteps: 800000\n"
    )
    (run / "summary.json").write_text(json.dumps({"step": 1234}))
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "results.json").write_text(json.dumps({"table3": {"results": {"R@1": 0.25}, "num_heads": 2}}))
    (evaluation / "tables.md").write_text("| Method | R@1 |\n|---|---|\n| ours | 25.0 |\n")
    torch.manual_seed(4)
    model = build_model(ModelConfig.preset("tiny"))
    directory = save_pretrained(model, run / "final", meta={"step": 1234}, results=evaluation / "results.json")
    assert sorted(p.name for p in directory.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, "README.md"])
    assert same_weights(from_pretrained(directory), directory)
    card = ModelCard.load(directory / "README.md")
    assert card.data.license == "mit" and card.data.library_name == "seeing-speech-and-sound"
    assert "audio-visual" in card.data.tags
    for text in (
        "Seeing Speech and Sound: Distinguishing and Locating Audio Sources in Visual Scenes",
        "shards/places/train",
        "shards/audioset/unbalanced",
        "| steps (done) | 1234 |",
        "| ours | 25.0 |",
        "## License",
        '"step": 1234',
    ):
        assert text in card.text, text
    (evaluation / "tables.md").unlink()  # without evaluate.py's tables: every number as stored
    assert "| table3 | results.R@1 | 0.25 |" in model_card(directory, results=evaluation)
    with pytest.raises(HubError, match="no config.yaml"):
        model_card(directory, run_dir=tmp_path)


def test_push_to_hub_refuses_offline_and_bad_ids_before_uploading(tiny_checkpoint, hub_cache):
    with pytest.raises(HubError) as exc:
        push_to_hub(tiny_checkpoint, REPO)
    assert "HF_HUB_OFFLINE is set" in one_line(exc)
    with pytest.raises(HubError, match="a repo id is owner/name"):
        push_to_hub(tiny_checkpoint, f"{REPO}@main")


def test_push_to_hub_names_an_unreachable_hub_in_one_line(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    with pytest.raises(HubError) as exc:
        push_to_hub(tiny_checkpoint, REPO, token="hf_none")
    assert one_line(exc).startswith(f"cannot push to Hub repo {REPO}: the Hub at http://127.0.0.1:9 cannot be reached")
