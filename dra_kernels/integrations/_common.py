"""Small pieces every trainer integration needs: on/off environment switches, ``module:attr``
imports from configuration, and turning what a user passes as "the embedder" into a function."""

from __future__ import annotations

import importlib
import importlib.abc
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "EmbedFn",
    "PatchOnImport",
    "as_embed_fn",
    "check_measure_options",
    "embed_metrics",
    "env_flag",
    "import_object",
]

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


def check_measure_options(
    measure: Any,
    eta: Any,
    lam: Any,
    names: tuple[str, str, str],
    backend: str | None = None,
    backend_name: str = "backend",
) -> tuple[str, float, float]:
    """:func:`dra_kernels.measures.check_measure` (the core's rule, nothing loaded), its errors
    naming the option as the integration spells it: ``names`` for ``(measure, eta, lam)``, e.g.
    ``("dra_measure", "dra_eta", "dra_lam")``. With ``backend="triton"`` (the option named
    ``backend_name``) log-det is refused, as the core refuses it: it has no Triton kernel.

    Returns:
        ``(measure, eta, lam)`` with float values.
    """
    from dra_kernels import measures

    try:
        checked = measures.check_measure(measure, eta, lam)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        for plain, name in zip(("measure", "eta", "lam"), names, strict=True):
            if text.startswith(plain + " "):
                text = name + text[len(plain) :]
                break
        raise type(exc)(text) from None
    if checked[0] == "log_det" and backend == "triton":
        raise ValueError(
            f"{names[0]}='log_det' has no Triton kernel: use {backend_name}=auto or torch "
            "(auto computes it with torch on the embeddings' device)"
        )
    return checked


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


def embed_metrics(embed_fn: Any) -> dict[str, float]:
    """The per-step coverage metrics of an embedder's last call (``dra/tokens_read_share``,
    ``dra/texts_cut``), read from ``last_stats`` of the function's owner (a bound
    ``Embedder.encode``) or of the object itself; ``{}`` for an embedder that keeps no statistics
    (a user function, whose coverage is unknown)."""
    from dra_kernels.embed import EmbedStats

    for owner in (getattr(embed_fn, "__self__", None), embed_fn):
        stats = getattr(owner, "last_stats", None)
        if isinstance(stats, EmbedStats):
            return stats.metrics()
    return {}


class PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs ``patches[name](module)`` right after module ``name`` is first imported.

    Never imports anything itself: a trainer module is often heavy (deepspeed, ray), and a process
    that never imports it must not pay for it. Put the finder first on ``sys.meta_path`` with
    :meth:`install`; modules already imported must be patched by the caller.
    """

    def __init__(self, patches: dict[str, Callable[[Any], None]]) -> None:
        self.patches = patches

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        patch = self.patches.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[Any], None]) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._patch(module)
