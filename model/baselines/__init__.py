"""The baselines of the paper's tables, ImageBind and CAV-MAE, as evaluated models.

Both are used zero-shot the way DenseAV evaluates them (DenseAV's ``saved_models.py`` entries
``imagebind`` and ``cavmae``): dense tokens of the released networks, one similarity head, DenseAV's
fbank protocol and image transform. ``fbank`` owns the audio protocol, ``common`` the shared
inference interface and retrieval score, ``imagebind`` and ``cavmae`` the networks (attribute paths
= the releases' key names), ``convert`` reading the release files. docs/baselines.md says what
each model is and what differs from its own upstream preprocessing.
"""
