"""Facility-location SMI on the GPU: one program per group, its cosines on the tensor cores.

For row ``i`` of group ``C`` (``docs/semantics.md``, "Other SMI measures", with ``s_vv = 1`` for
a nonzero row ``v``, so that its cap ``eta max_{q != i} s_vq`` is ``eta``)::

    FLMI_i = min(1, (eta max_{j != i} s_ij)^+) + sum_{j != i} min(s_ij^+, eta)

(a zero row has ``s = 0`` with every row: it scores 0 and adds nothing to the others).

A program takes its group's rows from the counting-sort buckets
(:mod:`~dra_kernels._triton.buckets`) in tiles of ``BM`` rows and builds each ``BM x BM`` block of
cosines from raw products, streaming ``BK`` columns at a time (float32 inputs through
``tf32x3``, about float32 accuracy), as the graph-cut Gram path does. A group of at most ``BM``
rows is one block, read once; larger groups loop over row and column tiles (``O(G^2 D)``
products, no ``G x G`` matrix in memory). Where a squared row norm lies outside
``[2^-60, 2^60]`` (zero, tiny, huge, NaN or inf rows) the group is recomputed from rows scaled by
the power of two of their largest magnitude, exact for every finite value.

Bitwise reproducible whatever order the buckets hold the rows in: on a GPU a cosine's arithmetic
does not depend on which rows share its tile, the maximum does not depend on the order, and the
sums are accumulated in 2^-40 fixed point (int64; every term lies in ``[0, 1]`` to rounding, exact
for groups of fewer than 2^23 rows). Under Triton's CPU interpreter a tile's products are one numpy
matmul (the CPU's BLAS), which may round an element differently with the processor and the other
rows of the tile: there a group tiled in another order agrees to float32 rounding of its cosines
(bit for bit where the products are exact). A NaN or inf row makes its whole group NaN; a
group of one has SMI 0; rows whose code is out of range come out NaN (nothing is raised, so
nothing synchronises). float16 / bfloat16 / float32 inputs; results in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dra_kernels._triton import MAX_D
from dra_kernels._triton.buckets import group_buckets
from dra_kernels._triton.launch import launch
from dra_kernels._triton.rows import chunk_rows, small_group_rows

__all__ = ["DTYPES", "facility_location_smi"]

_FLT_MAX = 3.4028234663852886e38
"""Largest finite float32: ``eta`` reaches the kernel as a float32 scalar, so larger values are
passed as this one (not inf, whose product with a zero cosine would be NaN inside the kernel);
the results are the same to float32 rounding, every cosine being at most 1."""

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
"""Embedding dtypes the kernel takes (Triton has no float64 tensor-core product)."""


@triton.jit
def _load(emb_ptr, stride_en, stride_ed, b_rows, m_row, o_k, D, UPCAST: tl.constexpr):
    p_x = emb_ptr + b_rows[:, None] * stride_en + o_k[None, :].to(tl.int64) * stride_ed
    b_x = tl.load(p_x, mask=m_row[:, None] & (o_k < D)[None, :], other=0.0)
    if UPCAST:
        b_x = b_x.to(tl.float32)
    return b_x


@triton.jit
def _scales(emb_ptr, stride_en, stride_ed, b_rows, m_row, D, BM: tl.constexpr, BK: tl.constexpr):
    """``(pre, inv)`` per row: ``x * pre * inv`` has largest magnitude 1 (0 for a zero row;
    NaN stays NaN and inf becomes NaN). ``pre`` is 2^64, 2^-64 or 1, so ``inv`` is normal."""
    b_peak = tl.zeros([BM], dtype=tl.float32)
    for i_d in range(0, D, BK):
        o_k = i_d + tl.arange(0, BK)
        b_x = _load(emb_ptr, stride_en, stride_ed, b_rows, m_row, o_k, D, True)
        b_peak = tl.maximum(b_peak, tl.max(tl.abs(b_x), axis=1))
    b_pre = tl.where(b_peak < 8.673617379884035e-19, 1.8446744073709552e19, 1.0)
    b_pre = tl.where(b_peak > 1.152921504606847e18, 5.421010862427522e-20, b_pre)
    b_peak = b_peak * b_pre
    b_inv = tl.where(b_peak > 0, 1.0 / tl.where(b_peak > 0, b_peak, 1.0), 0.0)
    return b_pre, b_inv


@triton.jit
def _block(emb_ptr, stride_en, stride_ed, b_ra, m_a, b_rb, m_b, D, pre_a, inv_a, pre_b, inv_b,
           SCALED, BM: tl.constexpr, BK: tl.constexpr, FP32_DOT: tl.constexpr,
           UPCAST_DOT: tl.constexpr):  # fmt: skip
    """``(X_a X_b^T [BM, BM], |x_a|^2 [BM], |x_b|^2 [BM])`` in float32, the rows scaled by
    ``pre * inv`` when ``SCALED``."""
    acc = tl.zeros([BM, BM], dtype=tl.float32)
    b_sa = tl.zeros([BM], dtype=tl.float32)
    b_sb = tl.zeros([BM], dtype=tl.float32)
    for i_d in range(0, D, BK):
        o_k = i_d + tl.arange(0, BK)
        b_a = _load(emb_ptr, stride_en, stride_ed, b_ra, m_a, o_k, D, UPCAST_DOT)
        b_b = _load(emb_ptr, stride_en, stride_ed, b_rb, m_b, o_k, D, UPCAST_DOT)
        if SCALED:
            b_fa = b_a.to(tl.float32) * pre_a[:, None] * inv_a[:, None]
            b_fb = b_b.to(tl.float32) * pre_b[:, None] * inv_b[:, None]
            acc = tl.dot(b_fa, tl.trans(b_fb), acc, input_precision="tf32x3")
        else:
            if FP32_DOT:
                acc = tl.dot(b_a, tl.trans(b_b), acc, input_precision="tf32x3")
            else:
                acc = tl.dot(b_a, tl.trans(b_b), acc)
            b_fa = b_a.to(tl.float32)
            b_fb = b_b.to(tl.float32)
        b_sa += tl.sum(b_fa * b_fa, axis=1)
        b_sb += tl.sum(b_fb * b_fb, axis=1)
    return acc, b_sa, b_sb


@triton.jit
def _unsafe(b_sq, m_row):
    """Whether a row's squared norm lies outside the window where raw products are exact."""
    m_safe = (b_sq >= 8.673617379884035e-19) & (b_sq <= 1.152921504606847e18)
    return tl.sum((m_row & (m_safe == 0)).to(tl.int32), axis=0) > 0


@triton.jit
def _terms(acc, b_sa, b_sb, b_ra, m_a, b_rb, m_b, eta, b_best, b_fixed, b_nan):
    """Fold one block of cosines into each row's maximum, fixed-point sum and NaN flag."""
    b_ia = tl.where(b_sa > 0, 1.0 / tl.sqrt(tl.where(b_sa > 0, b_sa, 1.0)), 0.0)
    b_ib = tl.where(b_sb > 0, 1.0 / tl.sqrt(tl.where(b_sb > 0, b_sb, 1.0)), 0.0)
    b_cos = acc * b_ia[:, None] * b_ib[None, :]
    m_pair = m_a[:, None] & m_b[None, :] & (b_ra[:, None] != b_rb[None, :])
    b_best = tl.maximum(b_best, tl.max(tl.where(m_pair, b_cos, float("-inf")), axis=1))
    b_term = tl.minimum(tl.maximum(b_cos, 0.0), eta)
    b_fix = (b_term * 1099511627776.0).to(tl.int64)
    b_fixed += tl.sum(tl.where(m_pair, b_fix, 0), axis=1)
    # NOTE: maximum / minimum may drop a NaN; 0 * cos keeps it (inf and NaN give NaN).
    b_nan += tl.sum(tl.where(m_pair, b_cos * 0.0, 0.0), axis=1)
    return b_best, b_fixed, b_nan


@triton.jit
def _finish(out_ptr, b_rows, m_row, b_sq, eta, b_best, b_fixed, b_nan):
    b_own = tl.minimum(tl.maximum(eta * b_best, 0.0), 1.0)
    b_smi = b_own + b_fixed.to(tl.float32) * 9.094947017729282e-13 + b_nan  # 2^-40
    tl.store(out_ptr + b_rows, b_smi, mask=m_row)


@triton.jit
def _small_group(emb_ptr, stride_en, stride_ed, out_ptr, b_rows, m_row, D, eta,
                 BM: tl.constexpr, BK: tl.constexpr, FP32_DOT: tl.constexpr,
                 UPCAST_DOT: tl.constexpr):  # fmt: skip
    """A group of at most ``BM`` rows: one block, read once unless a row needs scaling."""
    b_one = tl.full([BM], 1.0, tl.float32)
    acc, b_sq, _ = _block(emb_ptr, stride_en, stride_ed, b_rows, m_row, b_rows, m_row, D, b_one,
                          b_one, b_one, b_one, False, BM, BK, FP32_DOT, UPCAST_DOT)  # fmt: skip
    if _unsafe(b_sq, m_row):
        b_pre, b_inv = _scales(emb_ptr, stride_en, stride_ed, b_rows, m_row, D, BM, BK)
        acc, b_sq, _ = _block(emb_ptr, stride_en, stride_ed, b_rows, m_row, b_rows, m_row, D,
                              b_pre, b_inv, b_pre, b_inv, True, BM, BK, FP32_DOT,
                              UPCAST_DOT)  # fmt: skip
    b_best = tl.full([BM], float("-inf"), tl.float32)
    b_fixed = tl.zeros([BM], dtype=tl.int64)
    b_nan = tl.zeros([BM], dtype=tl.float32)
    b_best, b_fixed, b_nan = _terms(acc, b_sq, b_sq, b_rows, m_row, b_rows, m_row, eta, b_best,
                                    b_fixed, b_nan)  # fmt: skip
    _finish(out_ptr, b_rows, m_row, b_sq, eta, b_best, b_fixed, b_nan)


@triton.jit
def _large_group(emb_ptr, stride_en, stride_ed, codes_ptr, order_ptr, out_ptr, N, D, K, i_g,
                 i_start, n, eta, BM: tl.constexpr, BK: tl.constexpr, FP32_DOT: tl.constexpr,
                 UPCAST_DOT: tl.constexpr):  # fmt: skip
    """A group of more than ``BM`` rows: row tiles against column tiles."""
    b_one = tl.full([BM], 1.0, tl.float32)
    n_unsafe = tl.zeros([], dtype=tl.int32)
    for i_t in range(0, n, BM):  # one pass over the group's norms: does any row need scaling?
        b_rt, m_t = chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_t, BM, 256,
                               False)  # fmt: skip
        b_sq = tl.zeros([BM], dtype=tl.float32)
        for i_d in range(0, D, BK):
            o_k = i_d + tl.arange(0, BK)
            b_x = _load(emb_ptr, stride_en, stride_ed, b_rt, m_t, o_k, D, True)
            b_sq += tl.sum(b_x * b_x, axis=1)
        n_unsafe += _unsafe(b_sq, m_t).to(tl.int32)
    scaled = n_unsafe > 0
    for i_t in range(0, n, BM):
        b_rt, m_t = chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_t, BM, 256,
                               False)  # fmt: skip
        pre_t, inv_t = b_one, b_one
        if scaled:
            pre_t, inv_t = _scales(emb_ptr, stride_en, stride_ed, b_rt, m_t, D, BM, BK)
        b_best = tl.full([BM], float("-inf"), tl.float32)
        b_fixed = tl.zeros([BM], dtype=tl.int64)
        b_nan = tl.zeros([BM], dtype=tl.float32)
        b_st = tl.zeros([BM], dtype=tl.float32)
        for i_c in range(0, n, BM):
            b_rc, m_c = chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_c, BM,
                                   256, False)  # fmt: skip
            pre_c, inv_c = b_one, b_one
            if scaled:
                pre_c, inv_c = _scales(emb_ptr, stride_en, stride_ed, b_rc, m_c, D, BM, BK)
            acc, b_sa, b_sb = _block(emb_ptr, stride_en, stride_ed, b_rt, m_t, b_rc, m_c, D,
                                     pre_t, inv_t, pre_c, inv_c, scaled, BM, BK, FP32_DOT,
                                     UPCAST_DOT)  # fmt: skip
            b_st = b_sa
            b_best, b_fixed, b_nan = _terms(acc, b_sa, b_sb, b_rt, m_t, b_rc, m_c, eta, b_best,
                                            b_fixed, b_nan)  # fmt: skip
        _finish(out_ptr, b_rt, m_t, b_st, eta, b_best, b_fixed, b_nan)


@triton.jit
def _facility_kernel(emb_ptr, stride_en, stride_ed, codes_ptr, order_ptr, counts_ptr, ends_ptr,
                     out_ptr, N, D, K, eta, BM: tl.constexpr, BK: tl.constexpr,
                     FP32_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr):  # fmt: skip
    i_g = tl.program_id(0)
    n = tl.load(counts_ptr + i_g)
    i_start = (tl.load(ends_ptr + i_g) - n).to(tl.int64)
    if i_g == K:  # rows whose code is outside [0, K): NaN
        for i_k in range(0, n, BM):
            b_rows, m_row = chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, BM,
                                       256, False)  # fmt: skip
            tl.store(out_ptr + b_rows, tl.full([BM], float("nan"), tl.float32), mask=m_row)
    elif n <= BM:
        o_m = tl.arange(0, BM)
        b_first = tl.load(order_ptr + i_start + o_m, mask=o_m < n, other=0).to(tl.int64)
        b_rows, m_row = small_group_rows(b_first, n, BM, False)
        _small_group(emb_ptr, stride_en, stride_ed, out_ptr, b_rows, m_row, D, eta, BM, BK,
                     FP32_DOT, UPCAST_DOT)  # fmt: skip
    else:
        _large_group(emb_ptr, stride_en, stride_ed, codes_ptr, order_ptr, out_ptr, N, D, K, i_g,
                     i_start, n, eta, BM, BK, FP32_DOT, UPCAST_DOT)  # fmt: skip


def facility_location_smi(
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    eta: float,
    *,
    block_m: int = 64,
    block_k: int = 16,
    num_warps: int = 8,
    buckets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Facility-location SMI of every row against the rest of its group (float32 ``[N]``).

    Args:
        embeddings: ``[N, D]`` float16 / bfloat16 / float32, any strides.
        codes: ``[N]`` integer group codes in ``[0, num_groups)`` (rows outside come out NaN).
        num_groups: number of groups ``K``.
        eta: query magnification, finite and > 0.
        block_m: rows per tile (a power of two, at least 16): groups of up to ``block_m`` rows
            are read once.
        block_k: columns per streamed slice (a power of two, at least 16).
        num_warps: warps per program. The defaults are the tiles that spill no register under
            Triton 3.2 and 3.9 for sm_90 (``python -m benchmarks.resources --compile-all``:
            118-212 registers; with ``block_k=32`` and 4 warps Triton 3.2 spills 280-336 bytes);
            they have not been timed on a GPU.
        buckets: ``(order, counts, ends)`` from :func:`group_buckets` for these codes, to reuse.
    """
    n, d = embeddings.shape
    if embeddings.dtype not in DTYPES:
        raise TypeError(
            f"the facility-location kernel takes {', '.join(map(str, DTYPES))} embeddings, got "
            f"{embeddings.dtype}; use backend='torch'"
        )
    if d > MAX_D:
        raise ValueError(f"the kernel takes embeddings of at most {MAX_D} columns, got D={d}")
    for name, value in (("block_m", block_m), ("block_k", block_k)):
        if value < 16 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {value}")
    out = torch.empty(n, dtype=torch.float32, device=embeddings.device)
    if n == 0:
        return out
    codes = codes.contiguous()
    order, counts, ends = buckets or group_buckets(codes, num_groups)
    constexprs = {
        "BM": block_m,
        "BK": block_k,
        "FP32_DOT": embeddings.dtype == torch.float32,
        "UPCAST_DOT": embeddings.device.type == "cpu" and embeddings.dtype == torch.bfloat16,
    }
    args = (embeddings, embeddings.stride(0), embeddings.stride(1), codes, order, counts, ends,
            out, n, d, num_groups, min(float(eta), _FLT_MAX))  # fmt: skip
    launch(_facility_kernel, (num_groups + 1,), args, constexprs, num_warps=num_warps,
           num_stages=1)  # fmt: skip
    return out
