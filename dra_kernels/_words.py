"""Counts in messages: ``1 group``, ``3 groups``."""

from __future__ import annotations

__all__ = ["counted"]


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
