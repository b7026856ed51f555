"""What a launch of the fused kernel is compiled with, as one frozen value, and the function that
picks it from what the call knows.

Every field changes the compiled binary (or, for ``rows`` and ``fused_ends``, which launches a
call makes); nothing here is module state a caller patches. :func:`choose_config` gives the
default for a call; ``dra_forward(..., config=...)`` takes any valid one. Every configuration is
correct for every input: groups too large for the chosen per-group path take the linear way
inside the same program.

Defaults are what an H200 measured (docs/performance.md, "Kernel configuration"); the paths
written after that run (the tile path, plain sums with an in-kernel bucket sort, bucket ends in
the counting kernel) are opt-in until a GPU times them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

__all__ = ["PATHS", "ROW_MODES", "KernelConfig", "choose_config", "next_power_of_2"]

PATHS = ("gram", "tile", "linear")
"""Per-group paths: the Gram matrix on the tensor cores (groups of up to ``block_m`` rows), a
whole group in registers (up to ``block_m`` rows), or two passes over row chunks (any size)."""
ROW_MODES = ("scan", "buckets")
"""How a program finds its group's rows: scanning the batch's codes (one launch), or the
counting-sort buckets (a few small launches before the main one)."""

GRAM_MAX_ROWS = 64
"""Largest ``block_m`` of the Gram path, and the largest mean group it is chosen for."""
TILE_MAX_ELEMENTS = 16384
"""Largest ``block_m x block_d`` tile of the tile path (a whole group in registers)."""
SORT_ROWS_MAX = 1024
"""Largest bucket the linear path sorts in place before plain sums."""
SCAN_MAX_ROWS = 2048
SCAN_MAX_WORK = 1 << 20
"""By default batches of at most ``SCAN_MAX_ROWS`` rows with ``N * (num_groups + 1)`` up to
``SCAN_MAX_WORK`` scan; larger ones use the buckets."""
FUSED_ENDS_MAX = 16384
"""With ``fused_ends``, up to this many buckets the counting kernel computes the bucket ends
itself; above it ``torch.cumsum`` does."""


def next_power_of_2(n: int) -> int:
    """The smallest power of two at least ``n`` (1 for ``n <= 1``): ``triton.next_power_of_2``."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _power_of_2(value: int) -> bool:
    return type(value) is int and value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class KernelConfig:
    """One compiled variant of the fused kernel and how a call launches it.

    Attributes:
        path: per-group path, one of :data:`PATHS`.
        rows: how rows are found, one of :data:`ROW_MODES`.
        block_m: rows of a group held whole by the Gram path (a power of two from 16 to 64) or
            the tile path (a power of two up to 1,024); unused by the linear path.
        block_k: columns per step of the Gram matrix (16, 32, 64 or 128).
        chunk_rows: rows per chunk of the linear path (a power of two, at most 16).
        num_warps, num_stages: Triton launch options.
        sort_rows: 0 sums every group of the linear path in 64-bit fixed point (exact in any row
            order); a power of two from 16 to 1,024 sums groups of up to that many rows in plain
            floating point, in row order after sorting the bucket in the kernel (opt-in).
        fused_ends: the counting kernel's last program computes the bucket ends (opt-in; else
            ``torch.cumsum``, one launch more).
    """

    path: str = "linear"
    rows: str = "buckets"
    block_m: int = 16
    block_k: int = 16
    chunk_rows: int = 4
    num_warps: int = 4
    num_stages: int = 1
    sort_rows: int = 0
    fused_ends: bool = False

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")
        if self.rows not in ROW_MODES:
            raise ValueError(f"rows must be one of {ROW_MODES}, got {self.rows!r}")
        checks = (
            ("block_m", self.block_m, _power_of_2(self.block_m) and self.block_m <= SORT_ROWS_MAX),
            ("block_k", self.block_k, self.block_k in (16, 32, 64, 128)),
            ("chunk_rows", self.chunk_rows, _power_of_2(self.chunk_rows) and self.chunk_rows <= 16),
            ("num_warps", self.num_warps, _power_of_2(self.num_warps) and self.num_warps <= 32),
            ("num_stages", self.num_stages, type(self.num_stages) is int and self.num_stages >= 1),
            ("sort_rows", self.sort_rows, self.sort_rows == 0
             or (_power_of_2(self.sort_rows) and 16 <= self.sort_rows <= SORT_ROWS_MAX)),
            ("fused_ends", self.fused_ends, type(self.fused_ends) is bool),
        )  # fmt: skip
        for name, value, ok in checks:
            if not ok:
                raise ValueError(f"KernelConfig: invalid {name}={value!r}")
        if self.path == "gram" and not 16 <= self.block_m <= GRAM_MAX_ROWS:
            raise ValueError(
                f"KernelConfig: the Gram path takes block_m from 16 to {GRAM_MAX_ROWS}, "
                f"got {self.block_m}"
            )

    def replace(self, **changes) -> KernelConfig:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)


def choose_config(
    n: int,
    d: int,
    num_groups: int,
    dtype: torch.dtype,
    *,
    float64: bool = False,
    path: str | None = None,
    rows: str | None = None,
    plain_sums: bool = False,
    fused_ends: bool = False,
) -> KernelConfig:
    """The configuration of a call on ``[n, d]`` embeddings of ``dtype`` in ``num_groups`` groups
    (``float64``: the output, and so the accumulation, is float64).

    ``path`` and ``rows`` force a path or row mode (block sizes follow it; the Gram path is never
    used for float64, whose products it cannot hold); ``plain_sums`` and ``fused_ends`` turn on
    the untimed options (see :class:`KernelConfig`).

    Default: the Gram path for float16 / bfloat16 embeddings whose mean group has at most 64
    rows, the linear path otherwise (float32, float64, larger groups); scan mode for batches of at
    most ``SCAN_MAX_ROWS`` rows with ``N * (num_groups + 1) <= SCAN_MAX_WORK``.
    """
    block_d = next_power_of_2(max(d, 16))
    mean = max(1, -(-n // max(num_groups, 1)))
    if path is None:
        half = dtype in (torch.float16, torch.bfloat16)
        path = "gram" if half and not float64 and mean <= GRAM_MAX_ROWS else "linear"
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "gram" and float64:
        path = "linear"  # the Gram path's products are float32 at best
    if rows is None:
        scan = n <= SCAN_MAX_ROWS and n * (num_groups + 1) <= SCAN_MAX_WORK
        rows = "scan" if scan else "buckets"
    sort_rows = min(SORT_ROWS_MAX, max(16, next_power_of_2(2 * mean))) if plain_sums else 0
    common = {"rows": rows, "sort_rows": sort_rows, "fused_ends": fused_ends}
    # the linear way inside the Gram and tile paths keeps its chunk small (their registers)
    fallback_rows = max(1, min(16, 1024 // block_d))
    if path == "gram":
        # BM = twice the mean group, so ragged groups up to that size stay on the path
        return KernelConfig(
            path="gram",
            block_m=max(16, min(GRAM_MAX_ROWS, next_power_of_2(2 * mean))),
            block_k=64 if d > 32 else 32,
            chunk_rows=fallback_rows,
            num_warps=2 if mean <= 16 else 4,
            num_stages=4,
            **common,
        )
    if path == "tile":
        # the mean group, not twice it: the tile's registers (see benchmarks/resources.py)
        block_m = max(2, min(next_power_of_2(mean), TILE_MAX_ELEMENTS // block_d))
        warps = block_m * block_d // 16 // 32  # 16 tile elements a thread
        return KernelConfig(
            path="tile",
            block_m=block_m,
            block_k=16,
            chunk_rows=fallback_rows,
            num_warps=max(1, min(16, warps)),
            num_stages=1,
            **common,
        )
    if mean <= GRAM_MAX_ROWS:
        chunk, warps = max(1, min(8, 4096 // block_d)), 2 if block_d <= 1024 else 4
    else:
        chunk, warps = max(1, min(16, 16384 // block_d)), 4 if block_d <= 1024 else 8
    return KernelConfig(path="linear", chunk_rows=chunk, num_warps=warps, num_stages=1, **common)
