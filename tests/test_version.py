"""``__version__``: the installed distribution's version in every package, the same in the citation
file and the changelog, and a plain placeholder in a source tree that was never installed."""

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_says_the_installed_version_and_the_release_files_agree():
    import evaluation
    import ground
    import model
    import pipeline
    import training

    installed = importlib.metadata.version("seeing-speech-and-sound")
    assert {p.__version__ for p in (pipeline, model, training, evaluation, ground)} == {installed}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["version"] == declared
    assert f"## [{declared}]" in (ROOT / "CHANGELOG.md").read_text()


def test_a_source_tree_that_was_never_installed_says_so(tmp_path):
    shutil.copytree(
        ROOT / "pipeline", tmp_path / "pipeline", ignore=lambda folder, names: [n for n in names if n != "__init__.py"]
    )
    # -S: no site-packages, so no installed metadata; the copy has no egg-info beside it
    found = subprocess.run(
        [sys.executable, "-S", "-c", "import pipeline; print(pipeline.__version__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "0+unknown"
