"""The media side shared by everything that reads or writes media: the shard format, ffmpeg, audio
and image readers, text to speech, corpora to shards (``pipeline.prep``), shards to training
batches (``pipeline.data``) and the test-set readers (``pipeline.testsets``); docs/architecture.md.

``__version__`` is the installed distribution's version, kept here, in the lowest package, and
re-exported by ``model``, ``training``, ``evaluation`` and ``ground``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("seeing-speech-and-sound")
except PackageNotFoundError:  # a source tree that was never installed (pip install -e .)
    __version__ = "0+unknown"
