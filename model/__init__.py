"""The audio-visual model: DINO + LoRA and HuBERT encoders, two-head aligners, similarity, objective.

Import from the submodules (``model.config``, ``model.factory``, ``model.similarity``,
``model.loss``, ``model.regularizers``, ``model.checkpoint``); see ``docs/model.md``.
"""

from pipeline import __version__ as __version__  # the distribution's version (pipeline/__init__.py)
