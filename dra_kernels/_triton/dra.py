"""The fused DRA kernel and its launcher.

One program per group (plus one for rows whose id is out of range, which come out NaN); groups may
be unsorted, interleaved and of any size. A program finds its group's rows in one of two ways:

- **scan** (small batches, see :data:`SCAN_MAX_ROWS`): it reads the group codes of the whole batch
  and picks its own rows in index order. The call is one launch.
- **buckets** (larger batches): a counting sort without a sort. One kernel counts the rows of each
  group with integer atomics (each row keeps the slot the atomic gave it) and its last program
  turns the counts into bucket ends; a second kernel writes each row index into its bucket. With
  the zeroed counters, three small launches before the main one, linear work, no host
  synchronisation. The order of rows inside a bucket depends on atomic timing; everything that
  reads a bucket is written so the result does not (below).

Per group of ``n`` rows, three ways to compute ``SMI_i = sum_{j != i} cos(e_i, e_j)``:

- **Gram** (``n <= BM``, at most 64; float16 / bfloat16 inputs, see :func:`_config`): the
  ``BM x BM`` Gram matrix ``X X^T`` on the tensor cores (float32 inputs can take it through
  ``tf32x3``, about float32 accuracy, but measured slower than the linear way, so they do not by
  default), streaming ``X`` once in ``BK``-column slices; then ``C_ij = G_ij / (|x_i| |x_j|)``
  and row sums. The row indices are sorted first, so sums run in a fixed order. A group with a
  squared row norm outside ``[2^-60, 2^60]`` (zero, tiny, huge, NaN or inf rows) falls through to
  the linear way, which handles every value.
- **tile** (``n <= BM``, float32 by default, see :func:`_config`): the whole group in registers
  as one ``BM x BLOCK_D`` tile, read once: unit rows, ``S = sum_j u_j`` in plain floating point
  (row indices sorted first, so in a fixed order), ``SMI_i = u_i . S - |u_i|^2``. Larger groups
  fall through to the linear way.
- **linear** (larger groups, float64, and the fallback): ``S = sum_j u_j`` of the unit
  rows (each row scaled by its largest magnitude before squaring, so nothing overflows), then
  ``SMI_i = u_i . S - |u_i|^2``. For a group of up to ``SORT_ROWS`` rows ``S`` is summed in plain
  floating point in row order (bucket mode sorts the bucket in place first); above, in 64-bit
  fixed point (2^-58 resolution), which is exact and so independent of the order in which rows
  arrive. The advantage statistics are always summed in fixed point, scaled by the group's
  largest value.

No floating-point atomics: results are bitwise reproducible. Offsets are int64, so ``N * D`` may
exceed ``2**31``.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from dra_kernels._triton import MAX_D
from dra_kernels._triton.launch import launch

__all__ = ["dra_forward", "group_buckets"]

SCAN_MAX_ROWS = 2048
SCAN_MAX_WORK = 1 << 20
"""Batches of at most ``SCAN_MAX_ROWS`` rows with ``N * (num_groups + 1)`` up to this scan (one
launch); larger ones go through the buckets (three small launches more)."""

SORT_ROWS = 1024
"""Groups of up to this many rows on the linear path can be summed in plain floating point in
row order (bucket mode sorts each such bucket first); larger ones are summed in fixed point. A
launch sorts up to twice its mean group size, rounded up to a power of two, at least 16, at most
this (the ``SORT_ROWS`` constexpr); 0 sums every group in fixed point."""
GRAM_MAX_ROWS = 64
"""Largest group handled by the Gram-matrix path (``BM``)."""
TILE_MAX_ELEMENTS = 16384
"""Largest ``BM x BLOCK_D`` tile of the tile path (a whole group in registers)."""
TILE_ELEMENTS_PER_THREAD = 16
"""Warps of the tile path: enough for this many tile elements per thread (at most 16 warps)."""

_MODE_SMI = 0
_MODE_ADJUST = 1
_MODE_ADVANTAGE = 2
_MODE_IDS = {"smi": _MODE_SMI, "adjust": _MODE_ADJUST, "advantage": _MODE_ADVANTAGE}
_BUCKET_BLOCK = 1024
_BUCKET_OPTIONS = {"num_warps": 4, "num_stages": 1}
_SCAN_CHUNK = 256


# ----------------------------------------------------------------------------- buckets


@triton.jit
def _count_kernel(codes_ptr, slot_ptr, counts_ptr, ends_ptr, done_ptr, N, K, BLOCK: tl.constexpr,
                  ENDS: tl.constexpr, ENDS_BLOCK: tl.constexpr):  # fmt: skip
    """Each row's slot in its bucket (an integer atomic per row). With ``ENDS``, the program that
    finishes last also turns the counts into bucket ends (an inclusive prefix sum)."""
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < N
    c = tl.load(codes_ptr + o, mask=m, other=0)
    bucket = tl.where((c >= 0) & (c < K), c, K)
    slot = tl.atomic_add(counts_ptr + bucket, 1, mask=m)
    tl.store(slot_ptr + o, slot, mask=m)
    if ENDS:
        # NOTE: every thread has its atomics' results (stored above) before the barrier, so
        # this program's counts are in memory before its ticket; the ticket's acquire-release
        # order makes all programs' counts visible to the last one (the pattern of Triton's
        # layer-norm tutorial, which reads other programs' sums after an atomic).
        tl.debug_barrier()
        ticket = tl.atomic_add(done_ptr, 1, sem="acq_rel")
        if ticket == tl.num_programs(0) - 1:
            total = tl.zeros([], dtype=tl.int32)
            for i_k in range(0, K + 1, ENDS_BLOCK):
                o_k = i_k + tl.arange(0, ENDS_BLOCK)
                m_k = o_k <= K
                b_n = tl.load(counts_ptr + o_k, mask=m_k, other=0, volatile=True)
                tl.store(ends_ptr + o_k, total + tl.cumsum(b_n, axis=0), mask=m_k)
                total += tl.sum(b_n, axis=0)


@triton.jit
def _place_kernel(codes_ptr, slot_ptr, counts_ptr, ends_ptr, order_ptr, N, K, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < N
    c = tl.load(codes_ptr + o, mask=m, other=0)
    bucket = tl.where((c >= 0) & (c < K), c, K)
    start = tl.load(ends_ptr + bucket, mask=m, other=0) - tl.load(counts_ptr + bucket, mask=m)
    slot = tl.load(slot_ptr + o, mask=m, other=0)
    tl.store(order_ptr + start + slot, o, mask=m)


FUSED_ENDS_MAX = 16384
"""Up to this many buckets the counting kernel computes the bucket ends itself (its last program
walks the counts in blocks of ``_ENDS_BLOCK``); above it, ``torch.cumsum`` does (one launch more,
but a parallel one)."""
_ENDS_BLOCK = 4096


def group_buckets(
    codes: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(order, counts, ends)``: row indices bucketed by group (bucket ``K`` holds rows whose
    code is out of range), each bucket's size and end in ``order``. No host synchronisation: two
    small launches and two allocations (three launches above :data:`FUSED_ENDS_MAX` groups)."""
    n = codes.shape[0]
    device = codes.device
    k1 = num_groups + 1
    # one zeroed block for the counts, the ends and the finished-programs ticket; one block for
    # each row's slot and the order
    counters = torch.zeros(2 * k1 + 1, dtype=torch.int32, device=device)
    counts, ends, done = counters[:k1], counters[k1 : 2 * k1], counters[2 * k1 :]
    rows = torch.empty(2 * n, dtype=torch.int32, device=device)
    slot, order = rows[:n], rows[n:]
    grid = (triton.cdiv(n, _BUCKET_BLOCK),)
    fused = k1 <= FUSED_ENDS_MAX
    constexprs = {"BLOCK": _BUCKET_BLOCK, "ENDS": fused, "ENDS_BLOCK": _ENDS_BLOCK}
    args = (codes, slot, counts, ends, done, n, num_groups)
    launch(_count_kernel, grid, args, constexprs, **_BUCKET_OPTIONS)
    if not fused:
        torch.cumsum(counts, 0, dtype=torch.int32, out=ends)
    args = (codes, slot, counts, ends, order, n, num_groups)
    launch(_place_kernel, grid, args, {"BLOCK": _BUCKET_BLOCK}, **_BUCKET_OPTIONS)
    return order, counts, ends


# ----------------------------------------------------------------------------- row finding


@triton.jit
def _scan_rows(codes_ptr, N, K, i_g, i_first, R: tl.constexpr, CHUNK: tl.constexpr):
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
def _chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_first, R: tl.constexpr,
                CHUNK: tl.constexpr, SCAN: tl.constexpr):  # fmt: skip
    """Rows ``[i_first, i_first + R)`` of the group (in scan mode in index order, else in bucket
    order) and their mask."""
    o_r = tl.arange(0, R)
    m_row = i_first + o_r < n
    if SCAN:
        b_rows, _ = _scan_rows(codes_ptr, N, K, i_g, i_first, R, CHUNK)
    else:
        b_rows = tl.load(order_ptr + i_start + i_first + o_r, mask=m_row, other=0).to(tl.int64)
    return b_rows, m_row


# ----------------------------------------------------------------------------- arithmetic


@triton.jit
def _unit_rows(emb_ptr, stride_en, stride_ed, i_row, m_row, o_d, m_d, ACC: tl.constexpr):
    """Load rows ``i_row`` (masked by ``m_row``) as ``ACC`` unit vectors; zero rows stay zero,
    rows holding NaN or inf become NaN."""
    p_x = emb_ptr + i_row[:, None] * stride_en + o_d[None, :].to(tl.int64) * stride_ed
    b_x = tl.load(p_x, mask=m_row[:, None] & m_d[None, :], other=0.0).to(ACC)
    b_peak = tl.max(tl.abs(b_x), axis=1)
    b_inv_peak = tl.where(b_peak > 0, 1.0 / tl.where(b_peak > 0, b_peak, 1.0), 0.0)
    b_x = b_x * b_inv_peak[:, None]
    b_norm = tl.sqrt(tl.sum(b_x * b_x, axis=1))
    b_inv_norm = tl.where(b_norm > 0, 1.0 / tl.where(b_norm > 0, b_norm, 1.0), 0.0)
    return b_x * b_inv_norm[:, None]


@triton.jit
def _fixed_parts(v):
    """``v`` in [-1, 1] as two int64 parts of 2^-30 and 2^-60 (exact sums in any order)."""
    b_hi = tl.floor(v * 1073741824.0)
    b_lo = tl.floor((v * 1073741824.0 - b_hi) * 1073741824.0 + 0.5)
    return b_hi.to(tl.int64), b_lo.to(tl.int64)


@triton.jit
def _from_fixed(hi, lo):
    return hi.to(tl.float64) * 9.313225746154785e-10 + lo.to(tl.float64) * 8.673617379884035e-19


@triton.jit
def _from_fixed58(hi, lo):
    """``hi 2^-28 + lo 2^-58`` from sums of :func:`_unit_sums`' parts. Both terms are exact in
    float64 and their sum is correctly rounded, so equal totals give equal bits however the rows
    were grouped into chunks or programs."""
    return hi.to(tl.float64) * 3.725290298461914e-09 + lo.to(tl.float64) * 3.469446951953614e-18


@triton.jit
def _adjust(b_r, b_smi, min_denominator):
    b_den = 1.0 + b_smi
    # NOTE: not tl.maximum, which drops NaN: a NaN SMI must give NaN, as in torch.
    return b_r / tl.where(b_den < min_denominator, min_denominator, b_den)


@triton.jit
def _pow2_above(x, E_MAX: tl.constexpr):
    """``2^e`` with ``e`` an integer, ``2^e > x`` for finite ``x > 0`` (clamped to 2^+-E_MAX)."""
    e = tl.floor(tl.log2(tl.where(x > 0, x, 1.0))) + 1.0
    e = tl.minimum(tl.maximum(e, -E_MAX), E_MAX)
    return tl.exp2(e)


@triton.jit
def _small_group_rows(b_first, n, BM: tl.constexpr, SCAN: tl.constexpr):
    """The ``n <= BM`` rows of a group as an ``[BM]`` vector in row order, and their mask. Scan
    mode found them in that order; bucket order depends on atomic timing, so it is sorted."""
    m_row = tl.arange(0, BM) < n
    b_rows = b_first
    if not SCAN:
        b_rows = tl.sort(tl.where(m_row, b_rows, 2**62)).to(tl.int64)
        b_rows = tl.where(m_row, b_rows, 0)
    return b_rows, m_row


@triton.jit
def _sort_bucket(order_ptr, i_start, n, SORT_ROWS: tl.constexpr):
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
def _group_out(rew_ptr, stride_r, out_ptr, b_rows, m_row, n, b_smi, min_denominator, eps,
               MODE: tl.constexpr, SCALE_STD: tl.constexpr):  # fmt: skip
    """Store the SMI (mode 0), adjusted rewards (1) or advantages (2) of a group held whole in
    registers (``b_rows``: its rows, masked by ``m_row``; sums in the order of ``b_rows``)."""
    if MODE == 0:
        tl.store(out_ptr + b_rows, b_smi, mask=m_row)
    else:
        b_r = tl.load(rew_ptr + b_rows * stride_r, mask=m_row, other=0.0)
        b_adj = _adjust(b_r.to(b_smi.dtype), b_smi, min_denominator)
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


# ----------------------------------------------------------------------------- the kernel


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
    GRAM: tl.constexpr,
    TILE: tl.constexpr,
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
        b_first, n = _scan_rows(codes_ptr, N, K, i_g, 0, BM, CHUNK)
    else:
        n = tl.load(counts_ptr + i_g)
        i_start = (tl.load(ends_ptr + i_g) - n).to(tl.int64)
        o_m = tl.arange(0, BM)
        b_first = tl.load(order_ptr + i_start + o_m, mask=o_m < n, other=0).to(tl.int64)

    if i_g == K:
        # rows whose id is outside [0, K): NaN, as nothing can be raised without a host sync
        for i_k in range(0, n, R):
            b_rows, m_row = _chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R,
                                        CHUNK, SCAN)  # fmt: skip
            tl.store(out_ptr + b_rows, tl.full([R], float("nan"), ACC), mask=m_row)
        n = 0  # nothing more to do

    done = n == 0
    # NOTE: a constexpr and a run-time condition: two ifs in Triton.
    if GRAM:
        if n <= BM:
            b_rows, m_row = _small_group_rows(b_first, n, BM, SCAN)
            o_m = tl.arange(0, BM)
            acc = tl.zeros([BM, BM], dtype=tl.float32)
            for i_d in range(0, D, BK):
                o_k = i_d + tl.arange(0, BK)
                p_x = emb_ptr + b_rows[:, None] * stride_en + o_k[None, :].to(tl.int64) * stride_ed
                b_x = tl.load(p_x, mask=m_row[:, None] & (o_k < D)[None, :], other=0.0)
                if UPCAST_DOT:
                    # NOTE: Triton's CPU interpreter gets bfloat16 dots wrong; float32 is exact.
                    b_x = b_x.to(tl.float32)
                if FP32_DOT:
                    acc = tl.dot(b_x, tl.trans(b_x), acc, input_precision="tf32x3")
                else:
                    acc = tl.dot(b_x, tl.trans(b_x), acc)
            eye = o_m[:, None] == o_m[None, :]
            b_sq = tl.sum(tl.where(eye, acc, 0.0), axis=1)
            # NOTE: outside this window a square or a product may overflow or underflow.
            m_safe = (b_sq >= 8.673617379884035e-19) & (b_sq <= 1.152921504606847e18)
            if tl.sum((m_row & (m_safe == 0)).to(tl.int32), axis=0) == 0:
                b_inv = tl.where(m_row, 1.0 / tl.sqrt(tl.where(m_row, b_sq, 1.0)), 0.0)
                b_cos = acc * b_inv[:, None] * b_inv[None, :]
                b_smi = tl.sum(tl.where(eye, 0.0, b_cos), axis=1)
                _group_out(rew_ptr, stride_r, out_ptr, b_rows, m_row, n, b_smi, min_denominator,
                           eps, MODE, SCALE_STD)  # fmt: skip
                done = True
    elif TILE:  # noqa: SIM102
        if n <= BM:
            b_rows, m_row = _small_group_rows(b_first, n, BM, SCAN)
            o_d = tl.arange(0, BLOCK_D)
            b_u = _unit_rows(emb_ptr, stride_en, stride_ed, b_rows, m_row, o_d, o_d < D, ACC)
            b_sum = tl.sum(b_u, axis=0)
            b_smi = tl.sum(b_u * b_sum[None, :], axis=1) - tl.sum(b_u * b_u, axis=1)
            b_smi = tl.where(n > 1, b_smi, 0.0)
            _group_out(rew_ptr, stride_r, out_ptr, b_rows, m_row, n, b_smi, min_denominator, eps,
                       MODE, SCALE_STD)  # fmt: skip
            done = True

    if not done:
        # NOTE: a group of at most SORT_ROWS rows is summed in plain floating point in row order:
        # scan mode finds its rows in that order, bucket mode sorts its bucket in place first.
        # Larger groups are summed in fixed point, exact in any order.
        plain = n <= SORT_ROWS  # SORT_ROWS = 0: fixed point for every group
        if not SCAN and SORT_ROWS > 0:  # noqa: SIM102 (constexprs, then a run-time condition)
            if plain:
                _sort_bucket(order_ptr, i_start, n, SORT_ROWS)
                # NOTE: every thread reads the sorted bucket below.
                tl.debug_barrier()
        b_hi, b_lo, b_s, n_nan = _unit_sums(emb_ptr, stride_en, stride_ed, codes_ptr, order_ptr,
                                            N, D, K, i_g, i_start, n, 0, 1, plain, R, BLOCK_D,
                                            CHUNK, SCAN, ACC)  # fmt: skip
        b_sum = tl.where(plain, b_s, _from_fixed58(b_hi, b_lo).to(ACC))
        b_sum = tl.where(n_nan > 0, float("nan"), b_sum)
        amax = _rows_out(emb_ptr, stride_en, stride_ed, rew_ptr, stride_r, codes_ptr, order_ptr,
                         out_ptr, out_ptr, N, D, K, i_g, i_start, n, 0, 1, b_sum,
                         min_denominator, MODE, R, BLOCK_D, CHUNK, SCAN, ACC)  # fmt: skip
        if MODE == 2:
            # NOTE: the barrier makes this program's stores of adj visible to all its threads.
            tl.debug_barrier()
            _advantages_out(codes_ptr, order_ptr, out_ptr, out_ptr, N, K, i_g, i_start, n, amax,
                            eps, SCALE_STD, R, CHUNK, SCAN, ACC, E_MAX)  # fmt: skip


# ----------------------------------------------------------------------------- the linear path


@triton.jit
def _unit_sums(emb_ptr, stride_en, stride_ed, codes_ptr, order_ptr, N, D, K, i_g, i_start, n,
               i_first, i_step, plain, R: tl.constexpr, BLOCK_D: tl.constexpr,
               CHUNK: tl.constexpr, SCAN: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """Pass 1 over chunks ``i_first, i_first + i_step, ...`` (``R`` rows each) of the group: the
    sum of the unit rows, and the number of NaN elements met. With ``plain`` (the rows come in
    row order) summed in ``ACC`` (``b_s``), else in fixed point (``b_hi``, ``b_lo``: exact, so
    in any row order)."""
    tl.static_assert(R <= 16, "the fixed-point chunk sums hold at most 16 rows")
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    b_hi = tl.zeros([BLOCK_D], dtype=tl.int64)
    b_lo = tl.zeros([BLOCK_D], dtype=tl.int64)
    b_s = tl.zeros([BLOCK_D], dtype=ACC)
    n_nan = tl.zeros([], dtype=tl.int32)
    for i_k in range(i_first * R, n, i_step * R):
        b_rows, m_row = _chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R, CHUNK,
                                    SCAN)  # fmt: skip
        b_u = _unit_rows(emb_ptr, stride_en, stride_ed, b_rows, m_row, o_d, m_d, ACC)
        n_nan += tl.sum(tl.sum((b_u != b_u).to(tl.int32), axis=1), axis=0)
        b_u = tl.where(b_u == b_u, b_u, 0.0)
        if plain:
            b_s += tl.sum(b_u, axis=0)
        else:
            # NOTE: one int64 per element: the chunk's rows summed exactly in units of 2^-58
            # (|sum| <= R 2^58 < 2^63), then split in two parts so that any number of chunks
            # adds up without overflow. Truncation is a fixed function of each element, so the
            # total does not depend on the order or grouping of rows (see _from_fixed58).
            b_c = tl.sum((b_u * 288230376151711744.0).to(tl.int64), axis=0)
            b_hi += b_c >> 30
            b_lo += b_c & 1073741823
    return b_hi, b_lo, b_s, n_nan


@triton.jit
def _rows_out(emb_ptr, stride_en, stride_ed, rew_ptr, stride_r, codes_ptr, order_ptr, out_ptr,
              adj_ptr, N, D, K, i_g, i_start, n, i_first, i_step, b_sum, min_denominator,
              MODE: tl.constexpr, R: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
              SCAN: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """Pass 2 over the same chunks: ``SMI_i = u_i . S - |u_i|^2`` (exactly 0 in a group of one)
    into ``out`` (mode 0), or the adjusted reward into ``adj`` (``out`` itself in mode 1). Returns
    the largest ``|adjusted|`` met (infinity for NaN), for the advantage statistics."""
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    b_amax = tl.zeros([R], dtype=ACC)
    for i_k in range(i_first * R, n, i_step * R):
        b_rows, m_row = _chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R, CHUNK,
                                    SCAN)  # fmt: skip
        b_u = _unit_rows(emb_ptr, stride_en, stride_ed, b_rows, m_row, o_d, m_d, ACC)
        b_smi = tl.sum(b_u * b_sum[None, :], axis=1) - tl.sum(b_u * b_u, axis=1)
        b_smi = tl.where(n > 1, b_smi, 0.0)
        if MODE == 0:
            tl.store(out_ptr + b_rows, b_smi, mask=m_row)
        else:
            b_r = tl.load(rew_ptr + b_rows * stride_r, mask=m_row, other=0.0).to(ACC)
            b_adj = _adjust(b_r, b_smi, min_denominator)
            tl.store(adj_ptr + b_rows, b_adj, mask=m_row)
            # NaN in, NaN out: tl.maximum may drop NaN, so flag it as infinity
            b_abs = tl.where(b_adj == b_adj, tl.abs(b_adj), float("inf"))
            b_amax = tl.maximum(b_amax, tl.where(m_row, b_abs, 0.0))
    return tl.max(b_amax, axis=0)


@triton.jit
def _advantages_out(codes_ptr, order_ptr, out_ptr, adj_ptr, N, K, i_g, i_start, n, amax, eps,
                    SCALE_STD: tl.constexpr, R: tl.constexpr, CHUNK: tl.constexpr,
                    SCAN: tl.constexpr, ACC: tl.constexpr, E_MAX: tl.constexpr):  # fmt: skip
    """The group's mean (and unbiased std) of the adjusted rewards in ``adj``, summed in fixed
    point after scaling by a power of two above ``amax`` (exact, so in any row order), then the
    advantages into ``out``. With an infinite or NaN value, plain sums give inf / NaN. ``adj``
    may be ``out`` itself (as the launcher passes it): each row is read before it is written, by
    the same thread, and the caller's barrier orders the earlier stores."""
    finite = amax < float("inf")
    b_unit = _pow2_above(amax, E_MAX)
    s_hi = tl.zeros([R], dtype=tl.int64)
    s_lo = tl.zeros([R], dtype=tl.int64)
    s_raw = tl.zeros([R], dtype=ACC)
    for i_k in range(0, n, R):
        b_rows, m_row = _chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R, CHUNK,
                                    SCAN)  # fmt: skip
        b_a = tl.load(adj_ptr + b_rows, mask=m_row, other=0.0)
        s_raw += b_a
        p_hi, p_lo = _fixed_parts(tl.where(finite, b_a / b_unit, 0.0))
        s_hi += p_hi
        s_lo += p_lo
    fixed = _from_fixed(tl.sum(s_hi, axis=0), tl.sum(s_lo, axis=0)).to(ACC) * b_unit
    b_mean = tl.where(finite, fixed, tl.sum(s_raw, axis=0)) / n
    b_scale = 1.0
    if SCALE_STD:
        q_hi = tl.zeros([R], dtype=tl.int64)
        q_lo = tl.zeros([R], dtype=tl.int64)
        q_raw = tl.zeros([R], dtype=ACC)
        for i_k in range(0, n, R):
            b_rows, m_row = _chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R,
                                        CHUNK, SCAN)  # fmt: skip
            b_c = tl.load(adj_ptr + b_rows, mask=m_row, other=0.0) - b_mean
            b_c = tl.where(m_row, b_c, 0.0)
            q_raw += b_c * b_c
            b_cs = b_c / (2.0 * b_unit)  # |c| <= 2 max|adj|: in [-1, 1]
            p_hi, p_lo = _fixed_parts(tl.where(finite, b_cs * b_cs, 0.0))
            q_hi += p_hi
            q_lo += p_lo
        fixed = _from_fixed(tl.sum(q_hi, axis=0), tl.sum(q_lo, axis=0)).to(ACC)
        b_sqs = tl.where(finite, fixed * (4.0 * b_unit * b_unit), tl.sum(q_raw, axis=0))
        b_std = tl.sqrt(b_sqs / tl.maximum(n - 1, 1))
        b_scale = 1.0 / (b_std + eps)
    for i_k in range(0, n, R):
        b_rows, m_row = _chunk_rows(codes_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R, CHUNK,
                                    SCAN)  # fmt: skip
        b_c = tl.load(adj_ptr + b_rows, mask=m_row, other=0.0) - b_mean
        tl.store(out_ptr + b_rows, b_c * b_scale, mask=m_row)


# ----------------------------------------------------------------------------- split groups


@triton.jit
def _sort_buckets_kernel(order_ptr, counts_ptr, ends_ptr, SORT_ROWS: tl.constexpr):
    """Large groups, step 0: each bucket of up to ``SORT_ROWS`` rows sorted in place, so the
    plain sums of step 1 run in row order."""
    i_g = tl.program_id(0)
    n = tl.load(counts_ptr + i_g)
    if n <= SORT_ROWS:
        _sort_bucket(order_ptr, (tl.load(ends_ptr + i_g) - n).to(tl.int64), n, SORT_ROWS)


@triton.jit
def _split_sums_kernel(emb_ptr, stride_en, stride_ed, order_ptr, counts_ptr, ends_ptr, parts_ptr,
                       sums_ptr, nans_ptr, N, D, K, R: tl.constexpr, BLOCK_D: tl.constexpr,
                       SORT_ROWS: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """Large groups, step 1: program ``(g, s)`` sums the unit rows of chunks ``s, s + SPLIT, ...``
    of group ``g`` into ``sums[g, s]`` in plain floating point for a group of up to
    ``SORT_ROWS`` rows (its bucket sorted by step 0, so in row order), else in fixed point into
    ``parts[g, s]``."""
    i_g = tl.program_id(0)
    i_s = tl.program_id(1)
    split = tl.num_programs(1)
    n = tl.load(counts_ptr + i_g)
    i_start = (tl.load(ends_ptr + i_g) - n).to(tl.int64)
    plain = n <= SORT_ROWS
    b_hi, b_lo, b_s, n_nan = _unit_sums(emb_ptr, stride_en, stride_ed, order_ptr, order_ptr, N, D,
                                        K, i_g, i_start, n, i_s, split, plain, R, BLOCK_D, 1,
                                        False, ACC)  # fmt: skip
    o_d = tl.arange(0, BLOCK_D)
    i_part = (i_g * split + i_s).to(tl.int64)
    tl.store(parts_ptr + i_part * (2 * BLOCK_D) + o_d, b_hi)
    tl.store(parts_ptr + i_part * (2 * BLOCK_D) + BLOCK_D + o_d, b_lo)
    tl.store(sums_ptr + i_part * BLOCK_D + o_d, b_s)
    tl.store(nans_ptr + i_part, n_nan)


@triton.jit
def _split_rows_kernel(emb_ptr, stride_en, stride_ed, rew_ptr, stride_r, order_ptr, counts_ptr,
                       ends_ptr, parts_ptr, sums_ptr, nans_ptr, out_ptr, adj_ptr, amax_ptr, N, D,
                       K, min_den_hi, min_den_lo, MODE: tl.constexpr, R: tl.constexpr,
                       BLOCK_D: tl.constexpr, SORT_ROWS: tl.constexpr,
                       ACC: tl.constexpr):  # fmt: skip
    """Large groups, step 2: program ``(g, s)`` adds the group's ``SPLIT`` parts in order (the
    fixed-point ones exactly: the same ``S`` as one program would find) and writes SMI /
    adjusted rewards of its chunks; ``(K, s)`` writes NaN for rows whose id is out of range."""
    i_g = tl.program_id(0)
    i_s = tl.program_id(1)
    split = tl.num_programs(1)
    n = tl.load(counts_ptr + i_g)
    i_start = (tl.load(ends_ptr + i_g) - n).to(tl.int64)
    if i_g == K:
        for i_k in range(i_s * R, n, split * R):
            b_rows, m_row = _chunk_rows(order_ptr, order_ptr, N, K, i_g, i_start, n, i_k, R, 1,
                                        False)  # fmt: skip
            tl.store(out_ptr + b_rows, tl.full([R], float("nan"), ACC), mask=m_row)
    else:
        min_denominator = tl.zeros([], dtype=ACC) + min_den_hi + min_den_lo
        o_d = tl.arange(0, BLOCK_D)
        b_hi = tl.zeros([BLOCK_D], dtype=tl.int64)
        b_lo = tl.zeros([BLOCK_D], dtype=tl.int64)
        b_s = tl.zeros([BLOCK_D], dtype=ACC)
        n_nan = tl.zeros([], dtype=tl.int32)
        for i_p in range(0, split):
            i_part = (i_g * split + i_p).to(tl.int64)
            b_hi += tl.load(parts_ptr + i_part * (2 * BLOCK_D) + o_d)
            b_lo += tl.load(parts_ptr + i_part * (2 * BLOCK_D) + BLOCK_D + o_d)
            b_s += tl.load(sums_ptr + i_part * BLOCK_D + o_d)
            n_nan += tl.load(nans_ptr + i_part)
        b_sum = tl.where(n <= SORT_ROWS, b_s, _from_fixed58(b_hi, b_lo).to(ACC))
        b_sum = tl.where(n_nan > 0, float("nan"), b_sum)
        amax = _rows_out(emb_ptr, stride_en, stride_ed, rew_ptr, stride_r, order_ptr, order_ptr,
                         out_ptr, adj_ptr, N, D, K, i_g, i_start, n, i_s, split, b_sum,
                         min_denominator, MODE, R, BLOCK_D, 1, False, ACC)  # fmt: skip
        tl.store(amax_ptr + i_g * split + i_s, amax)


@triton.jit
def _split_advantages_kernel(order_ptr, counts_ptr, ends_ptr, out_ptr, adj_ptr, amax_ptr, N, K,
                             SPLIT, eps_hi, eps_lo, SCALE_STD: tl.constexpr, R: tl.constexpr,
                             ACC: tl.constexpr, E_MAX: tl.constexpr):  # fmt: skip
    """Large groups, step 3 (advantages): one program per group, statistics and advantages."""
    i_g = tl.program_id(0)
    n = tl.load(counts_ptr + i_g)
    i_start = (tl.load(ends_ptr + i_g) - n).to(tl.int64)
    eps = tl.zeros([], dtype=ACC) + eps_hi + eps_lo
    amax = tl.zeros([], dtype=ACC)
    for i_p in range(0, SPLIT):
        amax = tl.maximum(amax, tl.load(amax_ptr + i_g * SPLIT + i_p))
    _advantages_out(order_ptr, order_ptr, out_ptr, adj_ptr, N, K, i_g, i_start, n, amax, eps,
                    SCALE_STD, R, 1, False, ACC, E_MAX)  # fmt: skip


def _split_forward(
    rewards, embeddings, codes, num_groups, buckets, out, adjusted, mode_id, scale_std, halves,
    split, constexprs, options,
) -> None:  # fmt: skip
    """Groups far larger than a chunk: the two passes of the linear path as two launches of
    ``num_groups x split`` programs (one program per group would walk each group alone), after
    a launch that sorts the buckets of groups summed in plain floating point."""
    n, d = embeddings.shape
    order, counts, ends = buckets
    device = embeddings.device
    block_d, rows, acc = constexprs["BLOCK_D"], constexprs["R"], constexprs["ACC"]
    sort_rows = constexprs["SORT_ROWS"]
    parts = torch.empty((num_groups * split, 2, block_d), dtype=torch.int64, device=device)
    sums = torch.empty((num_groups * split, block_d), dtype=out.dtype, device=device)
    nans = torch.empty(num_groups * split, dtype=torch.int32, device=device)
    amax = torch.empty((num_groups + 1) * split, dtype=out.dtype, device=device)
    e = (embeddings, embeddings.stride(0), embeddings.stride(1))
    fixed = {"R": rows, "BLOCK_D": block_d, "SORT_ROWS": sort_rows, "ACC": acc}
    if num_groups:
        if sort_rows:
            launch(_sort_buckets_kernel, (num_groups,), (order, counts, ends),
                   {"SORT_ROWS": sort_rows}, **_BUCKET_OPTIONS)  # fmt: skip
        args = (*e, order, counts, ends, parts, sums, nans, n, d, num_groups)
        launch(_split_sums_kernel, (num_groups, split), args, fixed, **options)
    r = (out, 1) if rewards is None else (rewards, rewards.stride(0))
    args = (*e, *r, order, counts, ends, parts, sums, nans, out, adjusted, amax, n, d, num_groups,
            *halves[:2])  # fmt: skip
    launch(_split_rows_kernel, (num_groups + 1, split), args, {"MODE": mode_id, **fixed},
           **options)  # fmt: skip
    if mode_id == _MODE_ADVANTAGE and num_groups:
        args = (order, counts, ends, out, adjusted, amax, n, num_groups, split, *halves[2:])
        stats = {"SCALE_STD": scale_std, "R": rows, "ACC": acc, "E_MAX": constexprs["E_MAX"]}
        launch(_split_advantages_kernel, (num_groups,), args, stats, **options)


# ----------------------------------------------------------------------------- launcher


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


PATHS = ("gram", "tile", "linear")


def _default_path(mean: int, block_d: int, float64: bool, float32: bool) -> str:
    if float64 or mean > GRAM_MAX_ROWS:
        return "linear"
    if not float32:
        return "gram"
    return "tile" if triton.next_power_of_2(mean) * block_d <= TILE_MAX_ELEMENTS else "linear"


def _config(
    n: int, d: int, num_groups: int, float64: bool, float32: bool = False, path: str | None = None
) -> dict:
    """Block sizes and the per-group path (``path`` forces one, except the Gram path for float64;
    every path is correct for every input, as groups too large for it take the linear way inside
    the kernel).

    Default: the Gram path for half-precision embeddings when the mean group has at most
    ``GRAM_MAX_ROWS`` rows; the tile path for float32 when a whole group of the mean size fits
    ``TILE_MAX_ELEMENTS``; else the linear path with row chunks of ``R`` rows of the whole width.

    NOTE: chosen from the H200 measurements in benchmarks/results/h200-2026-11-27 (kernel alone,
    groups of 16 unless said): the Gram path took 32.5 us (D = 384, bf16) and 89.6 us (D = 768,
    bf16) where the linear one took 68.4 and 180.0; for float32 (tf32x3, three MMAs) it took
    385.7 us (D = 768), the linear one with its fixed-point sums 338.9 us for the whole call
    (call 4). The tile path (float32 default since) was written after those runs and has **not
    been timed on a GPU**: it reads each row once and sums in plain float32 in row order, where
    the linear path reads each row twice and converts every element to 64-bit fixed point; the
    old sort kernel, two reads and plain float32 sums, took 212.2 us there (call 2). Linear
    chunks: for the sort kernel 4 rows and 2 warps were fastest for groups of 16 at D = 768 (at
    D = 1024, 8 rows took 134.2 us and 4 rows 140.7), 16 rows and 4 warps for groups of 512.
    Gram: BM = twice the mean group
    (ragged groups up to that size stay on the Gram path); 2 warps and 4 stages beat 4 warps and
    3 stages by 10-35% up to BM = 32, 4 warps were best at BM = 64; BK 64 and 128 tie. The linear
    fallback inside the Gram and tile paths keeps its chunk small, so it does not raise their
    register count.
    """
    block_d = triton.next_power_of_2(max(d, 16))
    mean = -(-n // max(num_groups, 1))
    if path is None:
        path = _default_path(mean, block_d, float64, float32)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "gram" and float64:
        path = "linear"  # the Gram path's products are float32 at best
    fallback_rows = max(1, min(16, 1024 // block_d))
    if path == "gram":
        return {
            "GRAM": True,
            "TILE": False,
            "BM": max(16, min(GRAM_MAX_ROWS, triton.next_power_of_2(2 * mean))),
            "BK": 64 if d > 32 else 32,
            "R": fallback_rows,
            "BLOCK_D": block_d,
            "num_warps": 2 if mean <= 16 else 4,
            "num_stages": 4,
        }
    if path == "tile":
        # NOTE: the mean group, not twice it as on the Gram path: compiled for sm_90 by Triton
        # 3.6, a 32 x 512 float32 tile needs 115 registers a thread at 16 warps (one program per
        # multiprocessor), 16 x 512 needs 63 (two programs, 32 warps); 8 warps would need 113
        # (two programs, 16 warps). See benchmarks/resources.py. Larger groups of a ragged batch
        # take the linear way in the kernel.
        rows = max(2, min(triton.next_power_of_2(mean), TILE_MAX_ELEMENTS // block_d))
        return {
            "GRAM": False,
            "TILE": True,
            "BM": rows,
            "BK": 16,
            "R": fallback_rows,
            "BLOCK_D": block_d,
            "num_warps": max(1, min(16, rows * block_d // TILE_ELEMENTS_PER_THREAD // 32)),
            "num_stages": 1,
        }
    # NOTE: the chunkings measured fastest for the sort kernel (call 2). Compiled for sm_90 as
    # Triton specialises a launch (unit column stride, aligned pointers), they need 149-252
    # registers under Triton 3.6 and do not spill (benchmarks/resources.py).
    if mean <= GRAM_MAX_ROWS:
        rows, warps = max(1, min(8, 4096 // block_d)), 2 if block_d <= 1024 else 4
    else:
        rows, warps = max(1, min(16, 16384 // block_d)), 4 if block_d <= 1024 else 8
    return {
        "GRAM": False,
        "TILE": False,
        "BM": 16,
        "BK": 16,
        "R": rows,
        "BLOCK_D": block_d,
        "num_warps": warps,
        "num_stages": 1,
    }


SPLIT_ROWS = 128
"""Groups of a mean size above ``GRAM_MAX_ROWS`` can be split among programs of about this many
rows each (:func:`_split_forward`), at most ``SPLIT_MAX`` per group."""
SPLIT_MAX = 1
"""1: no split. NOTE: measured on an H200 (benchmarks/results/h200-2026-11-27, call 4), 4 programs
per group of 512 rows took 558.6 us per call at D = 768 bf16 against 537.9 us for one program
(call 3). So the serial walk is not what costs; my guess, not checked, is the fixed-point
conversion of whole ``R x D`` tiles in both. Since then groups of up to ``SORT_ROWS`` rows are
summed in plain floating point, split or not (the split after a launch that sorts the buckets);
**not yet timed** (``benchmarks/gpu_probe.py`` sweeps 2, 4, 8 and 16 programs per group). Off
until measured otherwise; tests turn it on."""


def _split(n: int, mean: int, constexprs: dict) -> int:
    """Programs per group on the linear path: 1 (one kernel) unless groups are large."""
    if constexprs["GRAM"] or mean <= GRAM_MAX_ROWS:
        return 1
    return max(1, min(SPLIT_MAX, -(-mean // SPLIT_ROWS)))


def _sort_rows(mean: int) -> int:
    """The ``SORT_ROWS`` constexpr of a launch whose mean group has ``mean`` rows (0: none)."""
    return min(SORT_ROWS, max(16, triton.next_power_of_2(2 * mean)))


_PLANS: dict[tuple, tuple[dict, dict]] = {}


def _plan(
    d: int,
    mean: int,
    float64: bool,
    mode_id: int,
    scale_std: bool,
    scan: bool,
    dtype: torch.dtype,
    device_type: str,
) -> tuple[dict, dict]:
    """Constexprs and launch options of one kernel variant (memoised: a few us of Python)."""
    config = _config(mean, d, 1, float64, dtype == torch.float32)
    options = {"num_warps": config.pop("num_warps"), "num_stages": config.pop("num_stages")}
    constexprs = {
        "MODE": mode_id,
        "SCALE_STD": scale_std,
        "SCAN": scan,
        "FP32_DOT": dtype == torch.float32,
        "UPCAST_DOT": device_type == "cpu" and dtype == torch.bfloat16,
        "CHUNK": _SCAN_CHUNK,
        "SORT_ROWS": _sort_rows(mean),
        "ACC": tl.float64 if float64 else tl.float32,
        "E_MAX": 1000 if float64 else 100,
        **config,
    }
    return constexprs, options


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

    Returns:
        ``[N]`` tensor of ``out_dtype`` in input row order.
    """
    n, d = embeddings.shape
    if d > MAX_D:
        raise ValueError(
            f"the triton kernel takes embeddings of at most {MAX_D} columns, got D={d}; "
            "use backend='torch' (backend='auto' does so by itself)"
        )
    device = embeddings.device
    out = torch.empty(n, dtype=out_dtype, device=device)
    if n == 0:
        return out
    codes = codes.contiguous()
    scan = n <= SCAN_MAX_ROWS and n * (num_groups + 1) <= SCAN_MAX_WORK
    if scan:
        order = counts = ends = codes  # unused
    else:
        order, counts, ends = group_buckets(codes, num_groups)
    mode_id = _MODE_IDS[mode]
    float64 = out_dtype == torch.float64
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
    mean = -(-n // max(num_groups, 1))
    plan_key = (d, mean, float64, mode_id, scale == "std", scan, embeddings.dtype, device.type)
    plan = _PLANS.get(plan_key)
    if plan is None:
        plan = _PLANS.setdefault(plan_key, _plan(*plan_key))
    constexprs, options = plan
    split = _split(n, mean, constexprs) if not scan else 1
    if split > 1:
        halves = args[-4:]
        _split_forward(rewards, embeddings, codes, num_groups, (order, counts, ends), out,
                       out, mode_id, scale == "std", halves, split, constexprs,
                       options)  # fmt: skip
        return out
    launch(_dra_forward_kernel, (num_groups + 1,), args, constexprs, static_key=plan_key, **options)
    return out
