"""``ground``: run a trained model on anyone's image, video and audio.

``ground.api.Grounder`` loads a model and grounds one image against one clip; ``ground.result``
holds what comes back (maps over time, averaged maps, each head's activation, a JSON summary);
``ground.render`` draws overlays and the heatmap video; ``ground.inputs`` turns files and arrays
into the model's inputs; ``ground.cli`` is the ``ground`` command.
"""

from pipeline import __version__ as __version__  # the distribution's version (pipeline/__init__.py)
