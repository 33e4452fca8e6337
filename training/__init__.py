"""The trainer: configuration (config), one step (step), checkpoints (state), throughput (meter), the loop (loop)."""

from pipeline import __version__ as __version__  # the distribution's version (pipeline/__init__.py)
