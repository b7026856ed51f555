"""Finding a group's rows and loading them as unit vectors (Triton helpers of the fused kernel).

A program finds its group's rows in scan mode (reading the whole batch's codes, rows in index
order) or from the counting-sort buckets (:mod:`dra_kernels._triton.buckets`, rows in the order
the atomics left them; sorted here where a path sums in row order).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__: list[str] = []


@triton.jit
def scan_rows(codes_ptr, N, K, i_g, i_first, R: tl.constexpr, CHUNK: tl.constexpr):
    """Scan mode: rows of group ``i_g`` (``K``: rows with an out-of-range code) whose rank in
    index order lies in ``[i_first, i_first + R)``, as an ``[R]`` int64 vector, and the group's
    size."""
    o_r = tl.arange(0, R)
    b_rows = tl.zeros([R], dtype=tl.int64)
    n_seen = tl.zeros([], dtype=tl.int32)
    for i_c in range(0, N, CHUNK):
        o_c = i_c + tl.arange(0, CHUNK)
        m_c = o_c < N
        b_c = tl.load(codes_ptr + o_c, mask=m_c, other=0)
        b_bad = (b_c < 0) | (b_c >= K)
        m_in = m_c & tl.where(i_g == K, b_bad, b_c == i_g)
        b_in = m_in.to(tl.int32)
        b_rank = n_seen + tl.cumsum(b_in, axis=0) - 1
        pick = m_in[:, None] & (b_rank[:, None] == (i_first + o_r)[None, :])
        b_rows += tl.sum(tl.where(pick, o_c[:, None].to(tl.int64), 0), axis=0)
        n_seen += tl.sum(b_in, axis=0)
    return b_rows, n_seen


@triton.jit
def chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_first, R: tl.constexpr,
                CHUNK: tl.constexpr, SCAN: tl.constexpr):  # fmt: skip
    """Rows ``[i_first, i_first + R)`` of the group (in scan mode in index order, else in bucket
    order) and their mask."""
    o_r = tl.arange(0, R)
    m_row = i_first + o_r < n
    if SCAN:
        b_rows, _ = scan_rows(codes_ptr, N, K, i_g, i_first, R, CHUNK)
    else:
        b_rows = tl.load(order_ptr + i_start + i_first + o_r, mask=m_row, other=0).to(tl.int64)
    return b_rows, m_row


@triton.jit
def small_group_rows(b_first, n, BM: tl.constexpr, SCAN: tl.constexpr):
    """The ``n <= BM`` rows of a group as an ``[BM]`` vector in row order, and their mask. Scan
    mode found them in that order; bucket order depends on atomic timing, so it is sorted."""
    m_row = tl.arange(0, BM) < n
    b_rows = b_first
    if not SCAN:
        b_rows = tl.sort(tl.where(m_row, b_rows, 2**62)).to(tl.int64)
        b_rows = tl.where(m_row, b_rows, 0)
    return b_rows, m_row


@triton.jit
def sort_bucket(order_ptr, i_start, n, SORT_ROWS: tl.constexpr):
    """Sort a bucket of ``n <= SORT_ROWS`` row indices in place, into row order (so sums that
    walk it run in a fixed order, whatever order the atomics filled it in)."""
    o_s = tl.arange(0, SORT_ROWS)
    m_s = o_s < n
    b_o = tl.load(order_ptr + i_start + o_s, mask=m_s, other=0).to(tl.int64)
    # NOTE: in int64 with a 2^62 sentinel, as on the Gram path: Triton 3.2's interpreter sorts
    # int32 holding 2^31 - 1 wrongly.
    b_o = tl.sort(tl.where(m_s, b_o, 2**62))
    tl.store(order_ptr + i_start + o_s, b_o.to(tl.int32), mask=m_s)


@triton.jit
def unit_rows(emb_ptr, stride_en, stride_ed, i_row, m_row, o_d, m_d, ACC: tl.constexpr):
    """Load rows ``i_row`` (masked by ``m_row``) as ``ACC`` unit vectors; zero rows stay zero,
    rows holding NaN or inf become NaN."""
    p_x = emb_ptr + i_row[:, None] * stride_en + o_d[None, :].to(tl.int64) * stride_ed
    b_x = tl.load(p_x, mask=m_row[:, None] & m_d[None, :], other=0.0).to(ACC)
    b_peak = tl.max(tl.abs(b_x), axis=1)
    # NOTE: a peak outside [2^-60, 2^60] is first scaled by 2^64 or 2^-64 (exact: a power of
    # two), so that its reciprocal below is a normal number (1 / 1.4e-45, a float32 subnormal,
    # overflows; 1 / 3e38 is subnormal and loses digits).
    b_pre = tl.where(b_peak < 8.673617379884035e-19, 1.8446744073709552e19, 1.0)
    b_pre = tl.where(b_peak > 1.152921504606847e18, 5.421010862427522e-20, b_pre)
    b_x = b_x * b_pre[:, None]
    b_peak = b_peak * b_pre
    b_inv_peak = tl.where(b_peak > 0, 1.0 / tl.where(b_peak > 0, b_peak, 1.0), 0.0)
    b_x = b_x * b_inv_peak[:, None]
    b_norm = tl.sqrt(tl.sum(b_x * b_x, axis=1))
    b_inv_norm = tl.where(b_norm > 0, 1.0 / tl.where(b_norm > 0, b_norm, 1.0), 0.0)
    return b_x * b_inv_norm[:, None]
