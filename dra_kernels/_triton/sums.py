"""Exact sums and the outputs of a group (Triton helpers of the fused kernel).

Fixed point makes sums independent of the order rows arrive in (bucket order depends on atomic
timing): values are cut into int64 parts at fixed binary positions, added exactly, and turned back
into one correctly rounded float. No floating-point atomics anywhere, so results are bitwise
reproducible.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__: list[str] = []


@triton.jit
def fixed_parts(v):
    """``v`` in [-1, 1] as two int64 parts of 2^-30 and 2^-60 (exact sums in any order)."""
    b_hi = tl.floor(v * 1073741824.0)
    b_lo = tl.floor((v * 1073741824.0 - b_hi) * 1073741824.0 + 0.5)
    return b_hi.to(tl.int64), b_lo.to(tl.int64)


@triton.jit
def from_fixed(hi, lo):
    return hi.to(tl.float64) * 9.313225746154785e-10 + lo.to(tl.float64) * 8.673617379884035e-19


@triton.jit
def from_fixed58(hi, lo):
    """``hi 2^-28 + lo 2^-58`` from sums of :func:`_unit_sums`' parts. Both terms are exact in
    float64 and their sum is correctly rounded, so equal totals give equal bits however the rows
    were grouped into chunks or programs."""
    return hi.to(tl.float64) * 3.725290298461914e-09 + lo.to(tl.float64) * 3.469446951953614e-18


@triton.jit
def pow2_above(x, E_MAX: tl.constexpr):
    """``2^e`` with ``e`` an integer, ``2^e > x`` for finite ``x > 0`` (clamped to 2^+-E_MAX)."""
    e = tl.floor(tl.log2(tl.where(x > 0, x, 1.0))) + 1.0
    e = tl.minimum(tl.maximum(e, -E_MAX), E_MAX)
    return tl.exp2(e)


@triton.jit
def adjust(b_r, b_smi, min_denominator):
    b_den = 1.0 + b_smi
    # NOTE: not tl.maximum, which drops NaN: a NaN SMI must give NaN, as in torch.
    return b_r / tl.where(b_den < min_denominator, min_denominator, b_den)


@triton.jit
def group_out(rew_ptr, stride_r, out_ptr, b_rows, m_row, n, b_smi, min_denominator, eps,
               MODE: tl.constexpr, SCALE_STD: tl.constexpr):  # fmt: skip
    """Store the SMI (mode 0), adjusted rewards (1) or advantages (2) of a group held whole in
    registers (``b_rows``: its rows, masked by ``m_row``; sums in the order of ``b_rows``)."""
    if MODE == 0:
        tl.store(out_ptr + b_rows, b_smi, mask=m_row)
    else:
        b_r = tl.load(rew_ptr + b_rows * stride_r, mask=m_row, other=0.0)
        b_adj = adjust(b_r.to(b_smi.dtype), b_smi, min_denominator)
        if MODE == 1:
            tl.store(out_ptr + b_rows, b_adj, mask=m_row)
        else:
            b_mean = tl.sum(tl.where(m_row, b_adj, 0.0), axis=0) / n
            b_c = b_adj - b_mean
            b_scale = 1.0
            if SCALE_STD:
                b_sqs = tl.sum(tl.where(m_row, b_c * b_c, 0.0), axis=0)
                b_std = tl.sqrt(b_sqs / tl.maximum(n - 1, 1))
                b_scale = 1.0 / (b_std + eps)
            tl.store(out_ptr + b_rows, b_c * b_scale, mask=m_row)
