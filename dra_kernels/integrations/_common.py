"""Small pieces the trainer integrations share: on/off environment switches, ``module:attr``
imports from configuration, and patching a trainer module when it is imported."""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import os
import sys
from collections.abc import Callable
from typing import Any

_FLAGS = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}


def read_flag(text: str) -> bool | None:
    """``True`` for ``1/true/yes/on``, ``False`` for ``0/false/no/off`` (any case), else None."""
    return _FLAGS.get(text.strip().lower())


def env_flag(name: str) -> bool:
    """An on/off environment variable: unset, empty or :func:`read_flag` false is off; anything
    that is not a flag raises, so a typo never silently trains without (or with) DRA."""
    value = os.environ.get(name, "").strip().lower()
    flag = read_flag(value) if value else False
    if flag is None:
        raise ValueError(f"{name} must be one of 1/true/yes/on or 0/false/no/off, got {value!r}")
    return flag


def import_object(spec: str, what: str) -> Any:
    """The object named by ``"package.module:attribute"`` (or ``"package.module.attribute"``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{what} must look like 'package.module:attribute', got {spec!r}")
    return functools.reduce(getattr, attr.split("."), importlib.import_module(module_name))


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

    def __getattr__(self, name: str) -> Any:
        # NOTE: the wrapped loader's other methods (get_code, get_filename, is_package...):
        # `python -m package.module` of a patched module runs its code through them, as __main__.
        return getattr(self._loader, name)
