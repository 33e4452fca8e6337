"""Checkpoints the way the Hugging Face Hub works: a checkpoint named by a local path or a Hub repo id
(``owner/name``, optionally ``@revision``), ``save_pretrained`` and ``push_to_hub`` with a generated
model card.

A Hub repo of this project holds the checkpoint's own two files (``model.checkpoint``: ``config.json``
+ ``model.safetensors``) and a ``README.md`` card, so a directory written before this module existed
is already a valid repo and loads unchanged. DenseAV's Hugging Face copies
(``mhamilton723/DenseAV-sound-language``, ``-language``, ``-sound``: LitAVAligner saved by
huggingface_hub's ``PyTorchModelHubMixin``) use the same two file names, so one download pattern
fetches either and ``model.loading.load_any`` tells them apart by ``config.json``.

Repo ids are resolved through huggingface_hub's cache (``snapshot_download`` with ``allow_patterns``:
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and the login token are honoured). A revision (branch, tag or
commit) pins what is loaded, and the commit actually loaded is reported. A local path that exists
always wins over a repo id of the same spelling. Every failure is one line (``HubError``, a
``CheckpointError``) naming the checkpoint and what to do.

Loading itself belongs to ``model.loading`` (``load_any``, ``from_pretrained``); this module only
finds the files, and writes and uploads them.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import atomic

from .checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)

HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # what loading needs; the card (README.md) is not fetched
CARD_FILE = "README.md"
LIBRARY_NAME = "seeing-speech-and-sound"
LICENSE = "mit"  # the project's (pyproject.toml); push_to_hub(license=...) for weights under other terms
TAGS = ["audio-visual", "sound-source-localization", "visual-grounding", "speech", "pytorch", "safetensors"]
PAPER = (
    "Seeing Speech and Sound: Distinguishing and Locating Audio Sources in Visual Scenes",
    "Hyeonggon Ryu, Seongyu Kim, Joon Son Chung, Arda Senocak",
)
# Names that are files, never repos: a DenseAV or baseline release whose path does not exist is
# reported as a missing file rather than looked up on the Hub.
FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors", ".json", ".yaml", ".bin")
ACCEPTED = (
    "a checkpoint directory (train.py's RUN/final), a DenseAV or baseline release file, or a Hugging Face "
    "Hub repo id owner/name[@revision]"
)


class HubError(CheckpointError):
    """A checkpoint that cannot be found or fetched (or a push that fails); one line naming it and
    what to do, in its own words (the project's re-export advice does not apply)."""

    def __init__(self, message: str):
        ValueError.__init__(self, message)


@dataclass(frozen=True)
class RepoSpec:
    """A Hub model repo and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_repo_spec(text: str | os.PathLike) -> RepoSpec | None:
    """``owner/name[@revision]`` as a ``RepoSpec``; None when ``text`` is not spelled like one
    (huggingface_hub's own repo-id rules, a namespace required, no file suffix)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id, at, revision = str(text).partition("@")
    if (at and not revision) or repo_id.count("/") != 1 or repo_id.lower().endswith(FILE_SUFFIXES):
        return None
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return RepoSpec(repo_id, revision or None)


def checkpoint_source(spec: str | os.PathLike, revision: str | None = None) -> Path | RepoSpec:
    """Where ``spec`` points, without fetching anything: an existing local path, or a Hub repo (with
    ``revision``, which must agree with an ``@revision`` in ``spec``). Neither: ``HubError``."""
    path = Path(spec)
    if path.exists():
        if revision is not None:
            raise HubError(f"{spec} is a local path; a revision ({revision}) applies to Hub repo ids only: drop it")
        return path
    repo = parse_repo_spec(spec)
    if repo is None:
        raise HubError(
            f"{spec} does not exist (no such checkpoint file or directory) and is not a Hub repo id; give {ACCEPTED}"
        )
    if revision is not None:
        if repo.revision not in (None, revision):
            raise HubError(f"{spec} pins revision {repo.revision} but revision {revision} was also given; give one")
        repo = RepoSpec(repo.repo_id, revision)
    return repo


def resolve(spec: str | os.PathLike, revision: str | None = None) -> tuple[Path, dict[str, str] | None]:
    """(local path of the checkpoint, where it came from) for ``spec``: a local path as it is (None),
    or a Hub repo's files in huggingface_hub's cache (``{"repo_id", "revision", "commit"}``)."""
    source = checkpoint_source(spec, revision)
    if isinstance(source, Path):
        return source, None
    folder = download(source)
    return folder, {"repo_id": source.repo_id, "revision": source.revision or "main", "commit": folder.name}


def download(repo: RepoSpec) -> Path:
    """The snapshot folder of ``repo`` in the cache, holding ``config.json`` and ``model.safetensors``
    (downloaded unless cached; under ``HF_HUB_OFFLINE`` the cache only)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = bool(constants.HF_HUB_OFFLINE)
    where = f"the Hugging Face cache {constants.HF_HUB_CACHE}"
    fetch = f"`hf download {repo.repo_id} {' '.join(HUB_FILES)}" + (
        f" --revision {repo.revision}`" if repo.revision else "`"
    )
    try:
        folder = Path(
            snapshot_download(
                repo.repo_id, revision=repo.revision, allow_patterns=list(HUB_FILES), local_files_only=offline
            )
        )
    except LocalEntryNotFoundError as exc:  # also an incomplete snapshot
        if offline:
            raise HubError(
                f"Hub repo {repo} is not in {where} and HF_HUB_OFFLINE is set: run once with network "
                f"access (or {fetch}), or set HF_HUB_CACHE to a cache that holds it"
            ) from exc
        raise HubError(
            f"Hub repo {repo} cannot be downloaded and is not in {where} ({_first_line(exc)}): check the "
            "network connection, then try again"
        ) from exc
    except RevisionNotFoundError as exc:
        raise HubError(
            f"Hub repo {repo.repo_id} has no revision {repo.revision}: give a branch, tag or commit it has"
        ) from exc
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise HubError(
            f"Hub repo {repo} does not exist or needs access (a private or gated repo): check the "
            "id, or log in with `hf auth login`"
        ) from exc
    except (HfHubHTTPError, HFValidationError) as exc:
        raise HubError(f"Hub repo {repo}: {_first_line(exc)}") from exc
    missing = [name for name in HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise HubError(
            f"Hub repo {repo} (commit {folder.name}) has no {' or '.join(missing)}: it holds neither a "
            f"checkpoint of this project nor DenseAV's Hugging Face copy (or its cached copy in {folder} "
            f"is incomplete: run once with network access, or {fetch})"
        )
    return folder


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# writing and uploading


def save_pretrained(
    model: torch.nn.Module,
    directory: str | os.PathLike,
    *,
    meta: dict[str, Any] | None = None,
    results: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    repo_id: str | None = None,
    license: str = LICENSE,
) -> Path:
    """``model.checkpoint.save_checkpoint`` plus a model card (``README.md``, ``model_card``): a
    folder ``push_to_hub`` (or ``hf upload``) can publish as it is."""
    directory = save_checkpoint(model, directory, meta=meta)
    card = model_card(directory, repo_id=repo_id, results=results, run_dir=run_dir, license=license)
    atomic.write_atomic(directory / CARD_FILE, card.encode("utf-8"))
    return directory


def push_to_hub(
    source: torch.nn.Module | str | os.PathLike,
    repo_id: str,
    *,
    results: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    license: str = LICENSE,
    private: bool | None = None,
    token: str | None = None,
    branch: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
) -> str:
    """Upload a checkpoint — a model, or a checkpoint directory as train.py writes it (checked to load
    first) — with a generated card to the model repo ``repo_id`` (created if needed, on ``branch``
    if given). Returns the URL of the commit (or pull request)."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    repo = parse_repo_spec(repo_id)
    if repo is None or repo.revision is not None:
        raise HubError(f"cannot push to {repo_id!r}: a repo id is owner/name (a branch goes in branch=)")
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"cannot push to Hub repo {repo_id}: HF_HUB_OFFLINE is set; unset it to upload")
    with tempfile.TemporaryDirectory(prefix="push-") as tmp:
        if isinstance(source, torch.nn.Module):
            directory = save_checkpoint(source, Path(tmp) / "checkpoint")
        else:
            directory = Path(source)
            load_checkpoint(directory)  # what is uploaded must load: every refusal before any upload
        card = model_card(directory, repo_id=repo_id, results=results, run_dir=run_dir, license=license)
        files = [CommitOperationAdd(name, str(directory / name)) for name in HUB_FILES]
        files.append(CommitOperationAdd(CARD_FILE, card.encode("utf-8")))
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if branch is not None:
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            info = api.create_commit(
                repo_id,
                files,
                revision=branch,
                create_pr=create_pr,
                commit_message=commit_message or "Upload a seeing-speech-and-sound checkpoint",
            )
        except HfHubHTTPError as exc:
            raise HubError(
                f"cannot push to Hub repo {repo_id}: {_first_line(exc)} (log in with `hf auth login` or pass token=)"
            ) from exc
        except _transport_errors() as exc:
            raise HubError(
                f"cannot push to Hub repo {repo_id}: the Hub at {api.endpoint} cannot be reached "
                f"({type(exc).__name__}: {_first_line(exc)}); check the network connection"
            ) from exc
    return str(info.pr_url or info.commit_url)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub's HTTP client raises when the Hub cannot be reached: requests' errors
    (huggingface_hub < 1) are OSErrors, httpx's (1.x) and httpx2's (2.x) are not."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


# ---------------------------------------------------------------------------------------------
# the model card


def model_card(
    directory: str | os.PathLike,
    *,
    repo_id: str | None = None,
    results: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    license: str = LICENSE,
) -> str:
    """The ``README.md`` of a checkpoint directory: YAML front matter (license, library name, tags),
    the paper, the model's configuration, the training run's data and config (``run_dir``'s
    ``config.yaml`` and ``summary.json``; by default the checkpoint's parent when it holds them,
    train.py's ``RUN/final`` layout), the evaluation tables of ``results`` (a ``results.json``, laid
    out as the ``tables.md`` evaluate.py writes beside it) and the license."""
    from huggingface_hub import ModelCard, ModelCardData

    directory = Path(directory)
    info = read_checkpoint_info(directory)
    run = _run_files(directory, run_dir)
    folder = directory.resolve()
    name = repo_id or (folder.parent.name if folder.name == "final" else folder.name)  # train.py's RUN/final
    front = ModelCardData(license=license, library_name=LIBRARY_NAME, tags=list(TAGS), model_name=name)
    parts = [
        f"# {name}",
        f"A model of *{PAPER[0]}* ({PAPER[1]}): a DINO ViT image encoder with LoRA, a HuBERT audio encoder "
        "and aligners with K heads, trained to ground speech and non-speech sound in a picture at once, "
        "even when they are mixed. Written by the seeing-speech-and-sound toolkit.",
        _usage(repo_id or str(directory)),
        _model_section(info),
        _training_section(run),
        _evaluation_section(results),
        _license_section(license),
    ]
    return str(ModelCard(f"---\n{front.to_yaml()}\n---\n\n" + "\n\n".join(p for p in parts if p) + "\n"))


def _usage(spec: str) -> str:
    return (
        "## Use\n\n```python\nfrom model.loading import from_pretrained\nfrom ground.api import Grounder\n\n"
        f'model = from_pretrained("{spec}")            # AVModel, eval mode (revision= pins a commit)\n'
        f'grounding = Grounder.from_pretrained("{spec}").ground("scene.jpg", "mixture.wav")\n```\n\n'
        f"```bash\nground --checkpoint {spec} --image scene.jpg --audio mixture.wav --out out/\n"
        f"python evaluate.py --checkpoint {spec} --out eval/ all --is3 data/IS3\n```"
    )


def _model_section(info: dict[str, Any]) -> str:
    model = info["model"]
    image, audio = model.get("image_backbone", {}), model.get("audio_backbone", {})
    rows = [
        ("heads (K)", model.get("num_heads")),
        ("audio type of each head (head_types)", ", ".join(model.get("head_types") or []) or None),
        ("sound head, speech head", f"{model.get('sound_head')}, {model.get('speech_head')}"),
        ("channels per head (C)", model.get("code_dim")),
        (
            "image encoder",
            f"ViT: {image.get('num_hidden_layers')} layers, width {image.get('hidden_size')}, "
            f"patch {image.get('patch_size')}, {model.get('image_size')} px input; LoRA rank "
            f"{model.get('lora_rank')}",
        ),
        ("audio encoder", f"HuBERT: {audio.get('num_hidden_layers')} layers, width {audio.get('hidden_size')}, 16 kHz"),
        (
            "backbone ids (the weights a run starts from when `model.pretrained` is on)",
            f"{model.get('image_model_id')}, {model.get('audio_model_id')}",
        ),
        ("training stage saved", info.get("stage")),
    ]
    text = "## Model\n\n" + _table(["", ""], [[str(k), str(v)] for k, v in rows])
    meta = info.get("meta") or {}
    if meta:
        text += "\n\nCheckpoint metadata:\n\n```json\n" + json.dumps(meta, indent=2, sort_keys=True) + "\n```"
    return text + f"\n\nThe full configuration is `{CONFIG_FILE}` (`model`), the weights `{WEIGHTS_FILE}`."


def _run_files(directory: Path, run_dir: str | os.PathLike | None) -> dict[str, Any]:
    """``config.yaml`` (text) and ``summary.json`` (parsed) of the training run, where found."""
    import yaml

    if run_dir is None:
        run = directory.parent
        if not (run / "config.yaml").is_file():
            return {}
    else:
        run = Path(run_dir)
        if not (run / "config.yaml").is_file():
            raise HubError(f"run_dir {run} has no config.yaml: give the training run's folder (train.py's out_dir)")
    files: dict[str, Any] = {"dir": str(run), "config_text": (run / "config.yaml").read_text(encoding="utf-8")}
    try:
        files["config"] = yaml.safe_load(files["config_text"]) or {}
        summary = run / "summary.json"
        files["summary"] = json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else {}
    except (ValueError, yaml.YAMLError) as exc:
        raise HubError(
            f"{run}: config.yaml or summary.json cannot be read ({_first_line(exc)}); fix or drop run_dir"
        ) from exc
    return files


def _training_section(run: dict[str, Any]) -> str:
    if not run:
        return (
            "## Training\n\nThe training run's config was not given (`run_dir=`, train.py's `out_dir`), so "
            "the training data are not recorded here."
        )
    config = run["config"] if isinstance(run.get("config"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    summary = run.get("summary") or {}
    rows = [
        ["speech (image, spoken caption) shards", str(data.get("speech", "n/a"))],
        ["sound (image, sound) shards", str(data.get("sound", "n/a"))],
        ["steps (configured)", str(config.get("steps", "n/a"))],
        ["steps (done)", str(summary.get("step", "n/a"))],
        ["batch size per process", str(data.get("batch_size", "n/a"))],
    ]
    return (
        "## Training\n\n" + _table(["", ""], rows) + "\n\nThe run's `config.yaml` (train.py reads it back):"
        "\n\n<details>\n<summary>config.yaml</summary>\n\n```yaml\n"
        + run["config_text"].rstrip()
        + "\n```\n\n</details>"
    )


def _evaluation_section(results: str | os.PathLike | None) -> str:
    if results is None:
        return ""
    path = Path(results)
    if path.is_dir():
        path = path / "results.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HubError(
            f"results {path} cannot be read as evaluate.py's results.json ({_first_line(exc)}); give "
            "the results.json of an evaluate.py run"
        ) from exc
    if not isinstance(doc, dict) or not doc:
        raise HubError(f"results {path} holds no table sections; give the results.json of an evaluate.py run")
    tables = path.with_name("tables.md")
    if tables.is_file():  # evaluate.py rebuilds it from the whole results.json on every run
        return (
            f"## Evaluation\n\nThe tables of `{path.name}` as evaluate.py lays them out (numbers in %):\n\n"
            + tables.read_text(encoding="utf-8").strip()
        )
    rows = [
        [section, key, str(value) if isinstance(value, int) else f"{value:.4g}"]
        for section, node in sorted(doc.items())
        for key, value in _numbers(node)
    ]
    return (
        f"## Evaluation\n\nEvery number of `{path.name}` as stored (metrics as fractions 0..1; no `tables.md` "
        "beside it):\n\n" + _table(["section", "key", "value"], rows)
    )


def _numbers(node: Any, prefix: str = "") -> list[tuple[str, int | float]]:
    """The numeric leaves under ``node`` as (dotted key, value), in key order."""
    if isinstance(node, dict):
        return [item for k in sorted(node) for item in _numbers(node[k], f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return [(prefix, node)]
    return []


def _license_section(license: str) -> str:
    return (
        f"## License\n\n`{license}` for these files. The weights were trained on third-party data and "
        "start from third-party backbones: check their terms before use."
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows])
