"""The paper's experiments: the tables, their metrics and reports (docs/evaluation.md)."""

from pipeline import __version__ as __version__  # the distribution's version (pipeline/__init__.py)
