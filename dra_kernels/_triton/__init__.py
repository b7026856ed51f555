"""Triton kernels for DRA. Importing this package does not import triton; :func:`unavailable_reason`
does, lazily, and :mod:`dra_kernels._triton.dra` needs it."""

from __future__ import annotations

import os

import torch

__all__ = ["MAX_D", "interpreter_enabled", "unavailable_reason"]

MAX_D = 65536
"""Largest embedding width the kernel takes (one row must fit one block)."""


_IMPORT_ERROR: list[str | None] = []  # filled on first use: [None] or [why triton is missing]


def _import_error() -> str | None:
    # NOTE: a module-level memo rather than functools.lru_cache, which torch.compile does not
    # trace through (it warns and re-traces the import attempt).
    if not _IMPORT_ERROR:
        try:
            import triton
            import triton.language  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install raising something else
            _IMPORT_ERROR.append(f"triton could not be imported ({type(exc).__name__}: {exc})")
        else:
            _IMPORT_ERROR.append(None)
    return _IMPORT_ERROR[0]


def interpreter_enabled() -> bool:
    """True when Triton runs kernels on the CPU in interpreter mode (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(device: torch.device, dim: int | None = None) -> str | None:
    """None when the kernel can run on ``[N, dim]`` embeddings on ``device``, else why not."""
    if dim is not None and dim > MAX_D:
        return f"the kernel takes embeddings of at most {MAX_D} columns, got D={dim}"
    error = _import_error()
    if error is not None:
        return error + (
            '; install the triton extra: pip install -e ".[triton]" from a clone of the '
            "dra-kernels repository"
        )
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreter_enabled():
        return None
    return (
        f"the triton backend runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1 set before "
        f"triton is imported); got tensors on {device}"
    )
