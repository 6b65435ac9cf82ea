"""Functions named "module:function", imported only when asked for: the CLI's verbs and the data
sources, so that naming one costs nothing until it runs (the usage prints at once; TFDS loads
only for the ham10000 source)."""

import importlib


def resolve(spec: str):
    """ "module:function" -> the function, its module imported now."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
