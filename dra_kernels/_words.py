"""Small helpers the modules share, none needing torch: counts in messages (``1 group``,
``3 groups``), keywords taken by reference from another function."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["counted", "keywords_of", "show_keywords_of"]


def counted(n: int, noun: str, *, spec: str = "") -> str:
    """``n`` and ``noun``, in the plural (``noun + "s"``) unless ``n`` is 1; ``spec`` formats the
    number (``","`` for thousands separators).

    Example:
        >>> counted(1, "group"), counted(0, "group"), counted(3, "math problem")
        ('1 group', '0 groups', '3 math problems')
        >>> counted(1, "id"), counted(12_345, "token", spec=",")
        ('1 id', '12,345 tokens')
    """
    return f"{n:{spec}} {noun if n == 1 else noun + 's'}"


def keywords_of(base: Callable[..., Any], caller: str, options: dict[str, Any]) -> dict[str, Any]:
    """``base``'s keyword defaults updated by ``options``, the ``**options`` of ``caller``; a
    keyword ``base`` does not take raises the TypeError a call of ``caller`` would."""
    unknown = options.keys() - base.__kwdefaults__.keys()
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {min(unknown)!r}")
    return {**base.__kwdefaults__, **options}


def show_keywords_of(base: Callable[..., Any], fn: Callable[..., Any]) -> None:
    """Show ``fn`` (``help()``, :func:`inspect.signature`) with ``base``'s keyword-only parameters
    in place of its ``**options``."""
    shown = inspect.signature(fn, eval_str=True)
    own = [p for p in shown.parameters.values() if p.kind is not p.VAR_KEYWORD]
    theirs = inspect.signature(base, eval_str=True).parameters.values()
    fn.__signature__ = shown.replace(
        parameters=[*own, *(p for p in theirs if p.kind is p.KEYWORD_ONLY)]
    )
