"""Train the mix-and-separate model (paper §3.3; the loop is ``training.loop``).

    accelerate launch train.py --config configs/paper.yaml data.speech=shards/places/train \\
        data.sound=shards/audioset/unbalanced out_dir=runs/paper
    accelerate launch train.py --config configs/paper.yaml out_dir=runs/paper --resume

``--config`` is required (a run never trains the built-in defaults by accident). Bad data or
configuration ends the run with one line, ``error: ...``, and exit status 2; a configuration error
does so before any model or data is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from evaluation.validation import validate
from pipeline.cli_support import fail
from pipeline.data.sources import LoaderError
from training.config import ConfigError, load_config, require_config
from training.loop import TrainingStopped, train

app = typer.Typer(add_completion=False)


@app.command()
def main(
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. data.batch_size=16"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (configs/*.yaml); required"),
    resume: bool = typer.Option(False, help="continue from the newest checkpoint in out_dir"),
):
    """Train; the effective configuration is written to <out_dir>/config.yaml."""
    try:
        cfg = load_config(require_config(config, "train.py"), overrides or [])
        train(cfg, resume=resume, validate=validate)
    except (ConfigError, LoaderError, FileNotFoundError, TrainingStopped) as exn:
        fail(str(exn))


if __name__ == "__main__":
    app()
