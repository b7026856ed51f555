"""Counts in messages: ``1 group``, ``3 groups``."""

from __future__ import annotations

__all__ = ["counted"]


def counted(n: int, noun: str, plural: str | None = None, *, spec: str = "") -> str:
    """``n`` and ``noun``: the singular for 1, else ``plural`` (default: ``noun + "s"``).

    ``spec`` formats the number (``","`` for thousands separators).

    Example:
        >>> counted(1, "group"), counted(0, "group"), counted(3, "math problem")
        ('1 group', '0 groups', '3 math problems')
        >>> counted(1, "id"), counted(12_345, "token", spec=","), counted(2, "child", "children")
        ('1 id', '12,345 tokens', '2 children')
    """
    return f"{n:{spec}} {noun if n == 1 else (noun + 's' if plural is None else plural)}"
