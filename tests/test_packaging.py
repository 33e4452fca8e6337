"""The install shadows nothing: the commands train.py, evaluate.py and pretrain_audio.py stay in the
repository (tests import them from its root, pytest's ``pythonpath``) and are not installed as
top-level modules (``evaluate`` is Hugging Face's library). Read from the installed distribution's
metadata and, for an editable install, from setuptools' import finder; then checked by importing
from a folder outside the repository."""

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

COMMANDS = {"evaluate", "train", "pretrain_audio"}
PACKAGES = {"pipeline", "model", "training", "evaluation", "ground"}
ROOT = Path(__file__).resolve().parents[1]


def editable_mapping(dist: importlib.metadata.Distribution) -> set[str] | None:
    """The top-level names setuptools' editable finder maps to the checkout (None: not editable)."""
    finders = [f for f in dist.files or () if f.name.startswith("__editable__") and f.name.endswith("_finder.py")]
    if not finders:
        return None
    text = finders[0].locate().read_text()
    line = next(line for line in text.splitlines() if line.startswith("MAPPING"))
    return set(ast.literal_eval(line.split("=", 1)[1].strip()))  # a dict literal of str -> str


def test_the_installed_distribution_has_no_command_modules():
    # installed ones only: the build's egg-info in the checkout lists the sources, scripts included
    dists = [
        d
        for d in importlib.metadata.distributions(name="seeing-speech-and-sound")
        if Path(d.locate_file("")).resolve() != ROOT
    ]
    assert dists, "the project is not installed: bash scripts/setup.sh"
    for dist in dists:
        top_level = set((dist.read_text("top_level.txt") or "").split())
        assert PACKAGES <= top_level and not top_level & COMMANDS, top_level
        installed = {f.parts[0].removesuffix(".py") for f in dist.files or () if len(f.parts) == 1}
        assert not installed & COMMANDS, installed
        mapping = editable_mapping(dist)
        if mapping is not None:
            assert PACKAGES <= mapping and not mapping & COMMANDS, mapping


def test_outside_the_repository_the_commands_are_not_importable(tmp_path):
    names = sorted(COMMANDS | PACKAGES)
    probe = (
        "import importlib.util as u, json; "
        f"print(json.dumps({{n: getattr(u.find_spec(n), 'origin', None) for n in {names}}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    origins = json.loads(done.stdout)
    assert all(origins[name] for name in PACKAGES), origins
    # absent, or another distribution's (Hugging Face's evaluate), never this repository's scripts
    assert not {origins[name] for name in COMMANDS} & {str(ROOT / f"{name}.py") for name in COMMANDS}, origins
