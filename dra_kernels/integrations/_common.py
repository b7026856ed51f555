"""Small pieces every trainer integration needs: on/off environment switches, ``module:attr``
imports from configuration, and turning what a user passes as "the embedder" into a function."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

__all__ = ["EmbedFn", "as_embed_fn", "env_flag", "import_object"]

EmbedFn = Callable[[list[str]], Any]
"""``texts -> [N, D]`` embeddings (torch tensor, numpy array or nested list)."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """An on/off environment variable: unset or ``0/false/no/off`` is off, ``1/true/yes/on`` is
    on (any case); anything else raises, so a typo never silently trains without (or with) DRA."""
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be one of 1/true/yes/on or 0/false/no/off, got {value!r}")


def import_object(spec: str, what: str) -> Any:
    """The object named by ``"package.module:attribute"`` (or ``"package.module.attribute"``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{what} must look like 'package.module:attribute', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def as_embed_fn(obj: Any, what: str) -> EmbedFn:
    """An embedding function from a callable, an object with ``encode(texts)`` (preferred: a
    ``SentenceTransformer`` is callable too, but its ``__call__`` takes token features), or a
    class of either (instantiated with no arguments)."""
    if isinstance(obj, type):
        obj = obj()
    encode = getattr(obj, "encode", None)
    if callable(encode):
        return encode
    if callable(obj):
        return obj
    raise TypeError(
        f"{what} must be a function list[str] -> [N, D] embeddings or an object with an "
        f"encode(texts) method (dra_kernels.embed.Embedder, a SentenceTransformer); "
        f"got {type(obj).__name__}"
    )
