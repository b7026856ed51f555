"""Row indices bucketed by group: a counting sort without a sort.

One kernel counts the rows of each group with integer atomics (each row keeps the slot the atomic
gave it); the bucket ends are the inclusive prefix sum of the counts; a second kernel writes each
row index into its bucket. Linear work, no host synchronisation. The order of rows inside a bucket
depends on atomic timing; everything that reads a bucket is written so the result does not.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dra_kernels._triton.config import FUSED_ENDS_MAX
from dra_kernels._triton.launch import launch

__all__ = ["BUCKET_BLOCK", "ENDS_BLOCK", "group_buckets"]

BUCKET_BLOCK = 1024
"""Rows per program of the counting and placing kernels."""
ENDS_BLOCK = 4096
"""Counts per step when the counting kernel computes the bucket ends itself."""
_OPTIONS = {"num_warps": 4, "num_stages": 1}


@triton.jit
def _count_kernel(codes_ptr, slot_ptr, counts_ptr, ends_ptr, done_ptr, N, K, BLOCK: tl.constexpr,
                  ENDS: tl.constexpr, ENDS_BLOCK: tl.constexpr):  # fmt: skip
    """Each row's slot in its bucket (bucket ``K``: codes outside ``[0, K)``), by an integer
    atomic per row. With ``ENDS``, the program that finishes last also turns the counts into
    bucket ends (an inclusive prefix sum)."""
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


def group_buckets(
    codes: torch.Tensor, num_groups: int, *, fused_ends: bool = False, ends_block: int = ENDS_BLOCK
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(order, counts, ends)``, int32: row indices bucketed by group (bucket ``num_groups``
    holds rows whose code is out of range), each bucket's size and inclusive end in ``order``.

    Two allocations; a zeroing, the counting kernel, ``torch.cumsum`` and the placing kernel
    (with ``fused_ends`` and at most :data:`FUSED_ENDS_MAX` buckets the counting kernel computes
    the ends itself, in steps of ``ends_block`` counts, and the cumsum is skipped).
    """
    n = codes.shape[0]
    device = codes.device
    k1 = num_groups + 1
    # one zeroed block for the counts, the ends and the finished-programs ticket; one block for
    # each row's slot and the order
    counters = torch.zeros(2 * k1 + 1, dtype=torch.int32, device=device)
    counts, ends, done = counters[:k1], counters[k1 : 2 * k1], counters[2 * k1 :]
    rows = torch.empty(2 * n, dtype=torch.int32, device=device)
    slot, order = rows[:n], rows[n:]
    grid = (triton.cdiv(n, BUCKET_BLOCK),)
    fused = fused_ends and k1 <= FUSED_ENDS_MAX
    constexprs = {"BLOCK": BUCKET_BLOCK, "ENDS": fused, "ENDS_BLOCK": ends_block}
    launch(_count_kernel, grid, (codes, slot, counts, ends, done, n, num_groups), constexprs,
           **_OPTIONS)  # fmt: skip
    if not fused:
        torch.cumsum(counts, 0, dtype=torch.int32, out=ends)
    launch(_place_kernel, grid, (codes, slot, counts, ends, order, n, num_groups),
           {"BLOCK": BUCKET_BLOCK}, **_OPTIONS)  # fmt: skip
    return order, counts, ends
