"""Readers of the public test sets in their published layouts, one module per set (``is3``,
``ade20k``, ``retrieval``) over what they share (``common``)."""
