"""The project's one progress bar: tqdm on stderr, configured once for every long loop (shard
builds, the generated world, verification, evaluation, `ground` videos, training).

``--no-progress`` (``enabled=False``) draws nothing; results and tables go to stdout, so a bar
never mixes into them.
"""

from __future__ import annotations

from collections.abc import Iterable


def progress_bar(
    total: int | None, desc: str, enabled: bool = True, *, unit: str = "it", iterable: Iterable | None = None, **options
):
    """A tqdm bar over ``total`` steps (or wrapping ``iterable``); ``bar.update(n)`` advances it and
    doubles as a ``progress(n)`` callback. A context manager: ``with progress_bar(...) as bar:``.
    ``options`` go to tqdm (``initial``, ``smoothing``)."""
    from tqdm import tqdm  # imported on use: `COMMAND --help` does not need it

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, **options)
