"""The audio-visual model: DINO + LoRA and HuBERT encoders, two-head aligners, similarity, objective.

Import from the submodules (``model.config``, ``model.factory``, ``model.similarity``,
``model.loss``, ``model.regularizers``, ``model.checkpoint``); see ``docs/model.md``.
"""
