"""The fused DRA kernel and its launcher.

One program per group, plus one for rows whose id is out of range (they come out NaN, as nothing
can be raised without a host synchronisation); groups may be unsorted, interleaved and of any
size. A program finds its rows by scanning the batch's codes or from the counting-sort buckets
(:mod:`~dra_kernels._triton.buckets`), then computes
``SMI_i = sum_{j != i} cos(e_i, e_j)`` on one of three paths
(:mod:`~dra_kernels._triton.small_groups`: Gram and tile; :mod:`~dra_kernels._triton.linear`),
then the adjusted rewards ``r_i / max(1 + SMI_i, min_denominator)`` and, in advantage mode, the
group-normalised advantages. What a launch is compiled with is a
:class:`~dra_kernels._triton.config.KernelConfig`.

No floating-point atomics: results are bitwise reproducible. Offsets are int64, so ``N * D`` may
exceed ``2**31``.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from dra_kernels._triton import MAX_D
from dra_kernels._triton.buckets import group_buckets
from dra_kernels._triton.config import KernelConfig, choose_config, next_power_of_2
from dra_kernels._triton.launch import launch
from dra_kernels._triton.linear import linear_group
from dra_kernels._triton.rows import chunk_rows, scan_rows, small_group_rows
from dra_kernels._triton.small_groups import gram_smi, tile_smi
from dra_kernels._triton.sums import group_out

__all__ = ["MODES", "dra_forward"]

MODES = ("smi", "adjust", "advantage")
"""Outputs of the kernel, by ``MODE`` constexpr (0, 1, 2)."""
_PATH_IDS = {"gram": 0, "tile": 1, "linear": 2}
_SCAN_CHUNK = 256


@triton.jit
def _dra_forward_kernel(
    emb_ptr,
    stride_en,
    stride_ed,
    rew_ptr,
    stride_r,
    codes_ptr,
    order_ptr,
    counts_ptr,
    ends_ptr,
    out_ptr,
    N,
    D,
    K,
    min_den_hi,
    min_den_lo,
    eps_hi,
    eps_lo,
    MODE: tl.constexpr,
    SCALE_STD: tl.constexpr,
    SCAN: tl.constexpr,
    PATH: tl.constexpr,
    FP32_DOT: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CHUNK: tl.constexpr,
    SORT_ROWS: tl.constexpr,
    ACC: tl.constexpr,
    E_MAX: tl.constexpr,
):
    i_g = tl.program_id(0)
    # NOTE: Triton passes Python floats as float32; two halves give float64 their exact value.
    min_denominator = tl.zeros([], dtype=ACC) + min_den_hi + min_den_lo
    eps = tl.zeros([], dtype=ACC) + eps_hi + eps_lo
    if SCAN:
        i_start = tl.zeros([], dtype=tl.int64)
        b_first, n = scan_rows(codes_ptr, N, K, i_g, 0, BM, CHUNK)
    else:
        n = tl.load(counts_ptr + i_g)
        i_start = (tl.load(ends_ptr + i_g) - n).to(tl.int64)
        o_m = tl.arange(0, BM)
        b_first = tl.load(order_ptr + i_start + o_m, mask=o_m < n, other=0).to(tl.int64)

    if i_g == K:
        # rows whose id is outside [0, K): NaN
        for i_k in range(0, n, R):
            b_rows, m_row = chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R, CHUNK,
                                       SCAN)  # fmt: skip
            tl.store(out_ptr + b_rows, tl.full([R], float("nan"), ACC), mask=m_row)
        n = 0  # nothing more to do

    done = n == 0
    # NOTE: a constexpr and a run-time condition: two ifs in Triton.
    if PATH == 0:
        if n <= BM:
            b_rows, m_row = small_group_rows(b_first, n, BM, SCAN)
            b_smi, safe = gram_smi(emb_ptr, stride_en, stride_ed, b_rows, m_row, D, BM, BK,
                                   FP32_DOT, UPCAST_DOT)  # fmt: skip
            if safe:
                group_out(rew_ptr, stride_r, out_ptr, b_rows, m_row, n, b_smi, min_denominator,
                          eps, MODE, SCALE_STD)  # fmt: skip
                done = True
    elif PATH == 1:  # noqa: SIM102
        if n <= BM:
            b_rows, m_row = small_group_rows(b_first, n, BM, SCAN)
            b_smi = tile_smi(emb_ptr, stride_en, stride_ed, b_rows, m_row, n, D, BLOCK_D, ACC)
            group_out(rew_ptr, stride_r, out_ptr, b_rows, m_row, n, b_smi, min_denominator, eps,
                      MODE, SCALE_STD)  # fmt: skip
            done = True

    if not done:
        linear_group(emb_ptr, stride_en, stride_ed, rew_ptr, stride_r, codes_ptr, order_ptr,
                     out_ptr, N, D, K, i_g, i_start, n, min_denominator, eps, MODE, SCALE_STD, R,
                     BLOCK_D, CHUNK, SCAN, SORT_ROWS, ACC, E_MAX)  # fmt: skip


_HALVES: dict[float, tuple[float, float]] = {}


def _float32_halves(value: float) -> tuple[float, float]:
    """``(hi, lo)``, both exact in float32, with ``hi + lo`` equal to ``value`` to about 2^-48
    (memoised: a call takes two, usually the same every step)."""
    halves = _HALVES.get(value)
    if halves is None:
        hi = float(np.float32(value))
        halves = hi, float(np.float32(value - hi))
        if len(_HALVES) < 256:
            _HALVES[value] = halves
    return halves


_CONSTEXPRS: dict[tuple, dict] = {}


def _constexprs(
    config: KernelConfig,
    d: int,
    mode: str,
    scale_std: bool,
    float64: bool,
    dtype: torch.dtype,
    device_type: str,
) -> dict:
    """The kernel's constexprs for one launch (memoised: a few us of Python)."""
    key = (config, d, mode, scale_std, float64, dtype, device_type)
    constexprs = _CONSTEXPRS.get(key)
    if constexprs is None:
        constexprs = {
            "MODE": MODES.index(mode),
            "SCALE_STD": scale_std,
            "SCAN": config.rows == "scan",
            "PATH": _PATH_IDS[config.path],
            "FP32_DOT": dtype == torch.float32,
            "UPCAST_DOT": device_type == "cpu" and dtype == torch.bfloat16,
            "BM": config.block_m,
            "BK": config.block_k,
            "R": config.chunk_rows,
            "BLOCK_D": next_power_of_2(max(d, 16)),
            "CHUNK": _SCAN_CHUNK,
            "SORT_ROWS": config.sort_rows,
            "ACC": tl.float64 if float64 else tl.float32,
            "E_MAX": 1000 if float64 else 100,
        }
        if len(_CONSTEXPRS) < 1024:
            _CONSTEXPRS[key] = constexprs
    return constexprs


def dra_forward(
    rewards: torch.Tensor | None,
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    *,
    mode: str,
    min_denominator: float,
    scale: str = "std",
    eps: float = 1e-4,
    out_dtype: torch.dtype = torch.float32,
    config: KernelConfig | None = None,
    buckets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Launch the fused kernel.

    Args:
        rewards: ``[N]`` rewards (any real dtype, any stride); unused for ``mode="smi"``.
        embeddings: ``[N, D]`` float16 / bfloat16 / float32 / float64, any strides.
        codes: ``[N]`` integer group codes in ``[0, num_groups)``; rows with a code outside that
            range get NaN (the kernel checks every code; nothing is raised, so nothing syncs).
        num_groups: number of groups ``K``.
        mode: ``"smi"``, ``"adjust"`` or ``"advantage"``: which output to return.
        min_denominator: lower clamp of ``1 + SMI``.
        scale, eps: advantage normalisation (``mode="advantage"``).
        out_dtype: float32, or float64 (then the kernel accumulates in float64).
        config: what to compile and launch (default: :func:`choose_config` for the call).
        buckets: ``(order, counts, ends)`` from :func:`group_buckets` for these codes, to reuse
            (bucket mode only; any order of rows inside a bucket gives the same result).

    Returns:
        ``[N]`` tensor of ``out_dtype`` in input row order.
    """
    n, d = embeddings.shape
    if d > MAX_D:
        raise ValueError(
            f"the triton kernel takes embeddings of at most {MAX_D} columns, got D={d}; "
            "use backend='torch' (backend='auto' does so by itself)"
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    float64 = out_dtype == torch.float64
    if config is None:
        config = choose_config(n, d, num_groups, embeddings.dtype, float64=float64)
    elif config.path == "gram" and float64:
        config = config.replace(path="linear")  # the Gram path's products are float32 at best
    out = torch.empty(n, dtype=out_dtype, device=embeddings.device)
    if n == 0:
        return out
    codes = codes.contiguous()
    if config.rows == "scan":
        order = counts = ends = codes  # unused
    else:
        order, counts, ends = buckets or group_buckets(
            codes, num_groups, fused_ends=config.fused_ends
        )
    constexprs = _constexprs(config, d, mode, scale == "std", float64, embeddings.dtype,
                             embeddings.device.type)  # fmt: skip
    args = (
        embeddings,
        embeddings.stride(0),
        embeddings.stride(1),
        out if rewards is None else rewards,
        1 if rewards is None else rewards.stride(0),
        codes,
        order,
        counts,
        ends,
        out,
        n,
        d,
        num_groups,
        *_float32_halves(min_denominator),
        *_float32_halves(eps),
    )
    launch(_dra_forward_kernel, (num_groups + 1,), args, constexprs,
           num_warps=config.num_warps, num_stages=config.num_stages)  # fmt: skip
    return out
