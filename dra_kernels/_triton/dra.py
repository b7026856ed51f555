"""The fused DRA kernel and its launcher.

One launch, one program per group; groups may be unsorted, interleaved and of any size. A program
finds its group's rows in one of two ways: in small batches (see :data:`SCAN_MAX_WORK`) it scans
the group codes of the whole batch and loads only its own rows; larger batches go through a stable
sort of the codes (``order``) and CSR ``offsets``. Per program:

1. pass over the group's rows: normalise each row (scaled by its largest magnitude first, so
   nothing overflows) and add it to the group sum ``S`` held in registers;
2. pass again: ``SMI_i = u_i . S - |u_i|^2`` and
   ``adjusted_i = r_i / max(1 + SMI_i, min_denominator)``, written at the row's original position;
3. (advantages) mean, then unbiased std of the adjusted rewards, read back from the output.

No atomics: every output is written by exactly one program in a fixed order, so results are
bitwise reproducible. Offsets are int64, so ``N * D`` may exceed ``2**31``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dra_kernels._triton import MAX_D

__all__ = ["dra_forward", "group_layout"]

SCAN_MAX_ROWS = 1024
SCAN_MAX_WORK = 1 << 20
"""Batches of at most ``SCAN_MAX_ROWS`` rows with ``N * num_groups`` up to this skip the sort:
each group's program scans the group codes of the whole batch and loads only its own rows, so a
call is one launch. Larger batches sort (a few more launches, then linear work).
NOTE: chosen by reasoning, not yet by measurement on a GPU."""

_MODE_SMI = 0
_MODE_ADJUST = 1
_MODE_ADVANTAGE = 2


@triton.jit
def _unit_rows(emb_ptr, stride_en, stride_ed, i_row, m_row, o_d, m_d, ACC: tl.constexpr):
    """Load rows ``i_row`` (masked by ``m_row``) as ``ACC`` unit vectors; zero rows stay zero."""
    p_x = emb_ptr + i_row[:, None] * stride_en + o_d[None, :].to(tl.int64) * stride_ed
    b_x = tl.load(p_x, mask=m_row[:, None] & m_d[None, :], other=0.0).to(ACC)
    b_peak = tl.max(tl.abs(b_x), axis=1)
    b_inv_peak = tl.where(b_peak > 0, 1.0 / tl.where(b_peak > 0, b_peak, 1.0), 0.0)
    b_x = b_x * b_inv_peak[:, None]
    b_norm = tl.sqrt(tl.sum(b_x * b_x, axis=1))
    b_inv_norm = tl.where(b_norm > 0, 1.0 / tl.where(b_norm > 0, b_norm, 1.0), 0.0)
    return b_x * b_inv_norm[:, None]


@triton.jit
def _chunk_rows(order_ptr, codes_ptr, i_g, i_chunk, i_stop, o_r, SCAN: tl.constexpr):
    """Row indices and mask of one chunk of group ``i_g``'s rows.

    CSR: positions ``i_chunk + o_r`` of the sorted ``order``. SCAN: rows ``i_chunk + o_r`` of the
    batch itself, masked to those whose code is ``i_g`` (masked loads fetch nothing)."""
    o_row = i_chunk + o_r
    m_row = o_row < i_stop
    if SCAN:
        b_code = tl.load(codes_ptr + o_row, mask=m_row, other=-1)
        m_row = m_row & (b_code == i_g)
        i_row = o_row.to(tl.int64)
    else:
        i_row = tl.load(order_ptr + o_row, mask=m_row, other=0).to(tl.int64)
    return i_row, m_row


@triton.jit
def _dra_forward_kernel(
    emb_ptr,
    stride_en,
    stride_ed,
    rew_ptr,
    stride_r,
    codes_ptr,
    order_ptr,
    offsets_ptr,
    smi_ptr,
    adj_ptr,
    adv_ptr,
    N,
    D,
    min_denominator,
    eps,
    MODE: tl.constexpr,
    SCALE_STD: tl.constexpr,
    SCAN: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
):
    i_g = tl.program_id(0)
    if SCAN:
        i_start = tl.full([], 0, tl.int64)
        i_stop = i_start + N
    else:
        i_start = tl.load(offsets_ptr + i_g).to(tl.int64)
        i_stop = tl.load(offsets_ptr + i_g + 1).to(tl.int64)
    o_r = tl.arange(0, BLOCK_G)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D

    # Pass 1: S = sum of the group's unit rows, and the group's size.
    # NOTE: S accumulates in float64 across chunks: a float32 running sum over a group of 1e5 rows
    # loses ~3 digits, visible in rows nearly orthogonal to S. It is rounded to ACC for the dots.
    b_sum64 = tl.zeros([BLOCK_D], dtype=tl.float64)
    b_counts = tl.zeros([BLOCK_G], dtype=tl.int32)
    for i_chunk in range(i_start, i_stop, BLOCK_G):
        i_row, m_row = _chunk_rows(order_ptr, codes_ptr, i_g, i_chunk, i_stop, o_r, SCAN)
        # NOTE: when scanning, most chunks hold none of this group's rows: skip their arithmetic.
        if tl.sum(m_row.to(tl.int32), axis=0) > 0:
            b_u = _unit_rows(emb_ptr, stride_en, stride_ed, i_row, m_row, o_d, m_d, ACC)
            b_sum64 += tl.sum(b_u, axis=0).to(tl.float64)
            b_counts += m_row.to(tl.int32)
    b_sum = b_sum64.to(ACC)
    n_rows = tl.sum(b_counts, axis=0)

    # Pass 2: SMI (exactly 0 in a group of one) and the adjusted reward; running sum for the mean.
    b_totals = tl.zeros([BLOCK_G], dtype=ACC)
    for i_chunk in range(i_start, i_stop, BLOCK_G):
        i_row, m_row = _chunk_rows(order_ptr, codes_ptr, i_g, i_chunk, i_stop, o_r, SCAN)
        if tl.sum(m_row.to(tl.int32), axis=0) > 0:
            b_u = _unit_rows(emb_ptr, stride_en, stride_ed, i_row, m_row, o_d, m_d, ACC)
            b_smi = tl.sum(b_u * b_sum[None, :], axis=1) - tl.sum(b_u * b_u, axis=1)
            b_smi = tl.where(n_rows > 1, b_smi, 0.0)
            if MODE == 0:
                tl.store(smi_ptr + i_row, b_smi, mask=m_row)
            else:
                b_r = tl.load(rew_ptr + i_row * stride_r, mask=m_row, other=0.0).to(b_smi.dtype)
                b_den = 1.0 + b_smi
                # NOTE: not tl.maximum, which drops NaN: a NaN SMI must give NaN, as in torch.
                b_adj = b_r / tl.where(b_den < min_denominator, min_denominator, b_den)
                tl.store(adj_ptr + i_row, b_adj, mask=m_row)
                b_totals += tl.where(m_row, b_adj, 0.0)

    if MODE == 2:
        # NOTE: the barrier makes this program's stores of pass 2 visible to all of its threads.
        tl.debug_barrier()
        b_mean = tl.sum(b_totals, axis=0) / n_rows
        b_scale = 1.0
        if SCALE_STD:
            b_sqs = tl.zeros([BLOCK_G], dtype=ACC)
            for i_chunk in range(i_start, i_stop, BLOCK_G):
                i_row, m_row = _chunk_rows(order_ptr, codes_ptr, i_g, i_chunk, i_stop, o_r, SCAN)
                b_c = tl.load(adj_ptr + i_row, mask=m_row, other=0.0) - b_mean
                b_sqs += tl.where(m_row, b_c * b_c, 0.0)
            b_std = tl.sqrt(tl.sum(b_sqs, axis=0) / tl.maximum(n_rows - 1, 1))
            b_scale = 1.0 / (b_std + eps)
        for i_chunk in range(i_start, i_stop, BLOCK_G):
            i_row, m_row = _chunk_rows(order_ptr, codes_ptr, i_g, i_chunk, i_stop, o_r, SCAN)
            b_c = tl.load(adj_ptr + i_row, mask=m_row, other=0.0) - b_mean
            tl.store(adv_ptr + i_row, b_c * b_scale, mask=m_row)


def _block_sizes(d: int) -> tuple[int, int, int]:
    block_d = triton.next_power_of_2(max(d, 16))
    block_g = max(1, min(16, 8192 // block_d))
    num_warps = 4 if block_d <= 1024 else 8
    return block_g, block_d, num_warps


def group_layout(codes: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable order of rows by group and CSR offsets ``[num_groups + 1]``, with no host sync.

    The order must be stable: the kernel sums a group's rows in this order, so an unstable sort
    would make the last bits of the result vary from run to run.
    """
    # NOTE: int32 keys halve the radix-sort passes of the (dominant) sort on CUDA.
    keys = codes.to(torch.int32) if num_groups < 2**31 else codes
    sorted_keys, order = torch.sort(keys, stable=True)
    bounds = torch.arange(num_groups + 1, device=codes.device, dtype=keys.dtype)
    offsets = torch.searchsorted(sorted_keys, bounds)
    return order, offsets


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
        codes: ``[N]`` int64 group codes in ``[0, num_groups)``.
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
    scan = n <= SCAN_MAX_ROWS and n * num_groups <= SCAN_MAX_WORK
    order, offsets = (codes, codes) if scan else group_layout(codes, num_groups)
    mode_id = {"smi": _MODE_SMI, "adjust": _MODE_ADJUST, "advantage": _MODE_ADVANTAGE}[mode]
    adjusted = out if mode_id == _MODE_ADJUST else torch.empty_like(out)
    if rewards is None:
        rewards = out  # never read in smi mode
    block_g, block_d, num_warps = _block_sizes(d)
    _dra_forward_kernel[(num_groups,)](
        embeddings,
        embeddings.stride(0),
        embeddings.stride(1),
        rewards,
        rewards.stride(0),
        codes,
        order,
        offsets,
        out,
        adjusted,
        out,
        n,
        d,
        float(min_denominator),
        float(eps),
        MODE=mode_id,
        SCALE_STD=scale == "std",
        SCAN=scan,
        BLOCK_G=block_g,
        BLOCK_D=block_d,
        ACC=tl.float64 if out_dtype == torch.float64 else tl.float32,
        num_warps=num_warps,
    )
    return out
