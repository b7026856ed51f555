"""The linear path of the fused kernel: any group size, two passes over row chunks.

Pass 1 sums the group's unit rows ``S = sum_j u_j`` (each row scaled by its largest magnitude
before squaring, so nothing overflows); pass 2 writes ``SMI_i = u_i . S - |u_i|^2`` or the
adjusted reward of each row. ``S`` is summed in 64-bit fixed point (2^-58 resolution), exact and
so independent of the order rows arrive in, or, for groups of up to ``SORT_ROWS`` rows
(``KernelConfig.sort_rows``, opt-in), in plain floating point in row order (bucket mode sorts the
bucket in place first). The advantage statistics are always summed in fixed point, scaled by the
group's largest value.
"""

from __future__ import annotations

import triton
import triton.language as tl

from dra_kernels._triton.rows import chunk_rows, sort_bucket, unit_rows
from dra_kernels._triton.sums import adjust, fixed_parts, from_fixed, from_fixed58, pow2_above

__all__: list[str] = []


@triton.jit
def linear_group(emb_ptr, stride_en, stride_ed, rew_ptr, stride_r, codes_ptr, order_ptr, out_ptr,
                 N, D, K, i_g, i_start, n, min_denominator, eps, MODE: tl.constexpr,
                 SCALE_STD: tl.constexpr, R: tl.constexpr, BLOCK_D: tl.constexpr,
                 CHUNK: tl.constexpr, SCAN: tl.constexpr, SORT_ROWS: tl.constexpr,
                 ACC: tl.constexpr, E_MAX: tl.constexpr):  # fmt: skip
    """SMI, adjusted rewards or advantages (``MODE`` 0, 1, 2) of the ``n`` rows of group ``i_g``."""
    # NOTE: a group of at most SORT_ROWS rows is summed in plain floating point in row order:
    # scan mode finds its rows in that order, bucket mode sorts its bucket in place first.
    # Larger groups are summed in fixed point, exact in any order.
    plain = n <= SORT_ROWS  # SORT_ROWS = 0: fixed point for every group
    if not SCAN and SORT_ROWS > 0:  # noqa: SIM102 (constexprs, then a run-time condition)
        if plain:
            sort_bucket(order_ptr, i_start, n, SORT_ROWS)
            # NOTE: every thread reads the sorted bucket below.
            tl.debug_barrier()
    b_hi, b_lo, b_s, n_nan = _unit_sums(emb_ptr, stride_en, stride_ed, codes_ptr, order_ptr, N,
                                        D, K, i_g, i_start, n, plain, R, BLOCK_D, CHUNK, SCAN,
                                        ACC)  # fmt: skip
    b_sum = tl.where(plain, b_s, from_fixed58(b_hi, b_lo).to(ACC))
    b_sum = tl.where(n_nan > 0, float("nan"), b_sum)
    amax = _rows_out(emb_ptr, stride_en, stride_ed, rew_ptr, stride_r, codes_ptr, order_ptr,
                     out_ptr, N, D, K, i_g, i_start, n, b_sum, min_denominator, MODE, R, BLOCK_D,
                     CHUNK, SCAN, ACC)  # fmt: skip
    if MODE == 2:
        # NOTE: the barrier makes this program's stores of the adjusted rewards visible to all
        # its threads.
        tl.debug_barrier()
        _advantages_out(codes_ptr, order_ptr, out_ptr, N, K, i_g, i_start, n, amax, eps,
                        SCALE_STD, R, CHUNK, SCAN, ACC, E_MAX)  # fmt: skip


@triton.jit
def _unit_sums(emb_ptr, stride_en, stride_ed, codes_ptr, order_ptr, N, D, K, i_g, i_start, n,
               plain, R: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
               SCAN: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """Pass 1 over the group's chunks of ``R`` rows: the sum of the unit rows, and the number of
    NaN elements met. With ``plain`` (the rows come in row order) summed in ``ACC`` (``b_s``),
    else in fixed point (``b_hi``, ``b_lo``: exact, so in any row order)."""
    tl.static_assert(R <= 16, "the fixed-point chunk sums hold at most 16 rows")
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    b_hi = tl.zeros([BLOCK_D], dtype=tl.int64)
    b_lo = tl.zeros([BLOCK_D], dtype=tl.int64)
    b_s = tl.zeros([BLOCK_D], dtype=ACC)
    n_nan = tl.zeros([], dtype=tl.int32)
    for i_k in range(0, n, R):
        b_rows, m_row = chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R, CHUNK,
                                    SCAN)  # fmt: skip
        b_u = unit_rows(emb_ptr, stride_en, stride_ed, b_rows, m_row, o_d, m_d, ACC)
        n_nan += tl.sum(tl.sum((b_u != b_u).to(tl.int32), axis=1), axis=0)
        b_u = tl.where(b_u == b_u, b_u, 0.0)
        if plain:
            b_s += tl.sum(b_u, axis=0)
        else:
            # NOTE: one int64 per element: the chunk's rows summed exactly in units of 2^-58
            # (|sum| <= R 2^58 < 2^63), then split in two parts so that any number of chunks
            # adds up without overflow. Truncation is a fixed function of each element, so the
            # total does not depend on the order or grouping of rows (see from_fixed58).
            b_c = tl.sum((b_u * 288230376151711744.0).to(tl.int64), axis=0)
            b_hi += b_c >> 30
            b_lo += b_c & 1073741823
    return b_hi, b_lo, b_s, n_nan


@triton.jit
def _rows_out(emb_ptr, stride_en, stride_ed, rew_ptr, stride_r, codes_ptr, order_ptr, out_ptr,
              N, D, K, i_g, i_start, n, b_sum, min_denominator, MODE: tl.constexpr,
              R: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, SCAN: tl.constexpr,
              ACC: tl.constexpr):  # fmt: skip
    """Pass 2 over the same chunks: ``SMI_i = u_i . S - |u_i|^2`` (exactly 0 in a group of one)
    or the adjusted reward (modes 1 and 2) into ``out``. Returns
    the largest ``|adjusted|`` met (infinity for NaN), for the advantage statistics."""
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    b_amax = tl.zeros([R], dtype=ACC)
    for i_k in range(0, n, R):
        b_rows, m_row = chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R, CHUNK,
                                    SCAN)  # fmt: skip
        b_u = unit_rows(emb_ptr, stride_en, stride_ed, b_rows, m_row, o_d, m_d, ACC)
        b_smi = tl.sum(b_u * b_sum[None, :], axis=1) - tl.sum(b_u * b_u, axis=1)
        b_smi = tl.where(n > 1, b_smi, 0.0)
        if MODE == 0:
            tl.store(out_ptr + b_rows, b_smi, mask=m_row)
        else:
            b_r = tl.load(rew_ptr + b_rows * stride_r, mask=m_row, other=0.0).to(ACC)
            b_adj = adjust(b_r, b_smi, min_denominator)
            tl.store(out_ptr + b_rows, b_adj, mask=m_row)
            # NaN in, NaN out: tl.maximum may drop NaN, so flag it as infinity
            b_abs = tl.where(b_adj == b_adj, tl.abs(b_adj), float("inf"))
            b_amax = tl.maximum(b_amax, tl.where(m_row, b_abs, 0.0))
    return tl.max(b_amax, axis=0)


@triton.jit
def _advantages_out(codes_ptr, order_ptr, out_ptr, N, K, i_g, i_start, n, amax, eps,
                    SCALE_STD: tl.constexpr, R: tl.constexpr, CHUNK: tl.constexpr,
                    SCAN: tl.constexpr, ACC: tl.constexpr, E_MAX: tl.constexpr):  # fmt: skip
    """The group's mean (and unbiased std) of the adjusted rewards held in ``out``, summed in
    fixed point after scaling by a power of two above ``amax`` (exact, so in any row order),
    then the advantages over them in ``out``: each row is read before it is written, by the same
    thread, and the caller's barrier orders the earlier stores. With an infinite or NaN value,
    plain sums give inf / NaN."""
    finite = amax < float("inf")
    b_unit = pow2_above(amax, E_MAX)
    s_hi = tl.zeros([R], dtype=tl.int64)
    s_lo = tl.zeros([R], dtype=tl.int64)
    s_raw = tl.zeros([R], dtype=ACC)
    for i_k in range(0, n, R):
        b_rows, m_row = chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R, CHUNK,
                                    SCAN)  # fmt: skip
        b_a = tl.load(out_ptr + b_rows, mask=m_row, other=0.0)
        s_raw += b_a
        p_hi, p_lo = fixed_parts(tl.where(finite, b_a / b_unit, 0.0))
        s_hi += p_hi
        s_lo += p_lo
    fixed = from_fixed(tl.sum(s_hi, axis=0), tl.sum(s_lo, axis=0)).to(ACC) * b_unit
    b_mean = tl.where(finite, fixed, tl.sum(s_raw, axis=0)) / n
    b_scale = 1.0
    if SCALE_STD:
        q_hi = tl.zeros([R], dtype=tl.int64)
        q_lo = tl.zeros([R], dtype=tl.int64)
        q_raw = tl.zeros([R], dtype=ACC)
        for i_k in range(0, n, R):
            b_rows, m_row = chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R,
                                        CHUNK, SCAN)  # fmt: skip
            b_c = tl.load(out_ptr + b_rows, mask=m_row, other=0.0) - b_mean
            b_c = tl.where(m_row, b_c, 0.0)
            q_raw += b_c * b_c
            b_cs = b_c / (2.0 * b_unit)  # |c| <= 2 max|adjusted|: in [-1, 1]
            p_hi, p_lo = fixed_parts(tl.where(finite, b_cs * b_cs, 0.0))
            q_hi += p_hi
            q_lo += p_lo
        fixed = from_fixed(tl.sum(q_hi, axis=0), tl.sum(q_lo, axis=0)).to(ACC)
        b_sqs = tl.where(finite, fixed * (4.0 * b_unit * b_unit), tl.sum(q_raw, axis=0))
        b_std = tl.sqrt(b_sqs / tl.maximum(n - 1, 1))
        b_scale = 1.0 / (b_std + eps)
    for i_k in range(0, n, R):
        b_rows, m_row = chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R, CHUNK,
                                    SCAN)  # fmt: skip
        b_c = tl.load(out_ptr + b_rows, mask=m_row, other=0.0) - b_mean
        tl.store(out_ptr + b_rows, b_c * b_scale, mask=m_row)
