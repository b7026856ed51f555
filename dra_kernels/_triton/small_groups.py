"""The paths of the fused kernel for a group held whole (at most ``BM`` rows), in row order.

- **Gram** (the default for float16 / bfloat16): the ``BM x BM`` Gram matrix ``X X^T`` on the
  tensor cores, streaming ``X`` once in ``BK``-column slices, then ``C_ij = G_ij / (|x_i| |x_j|)``
  and row sums. float32 inputs can take it through ``tf32x3`` (about float32 accuracy). A group
  with a squared row norm outside ``[2^-60, 2^60]`` (zero, tiny, huge, NaN or inf rows) is left to
  the linear path, which handles every value.
- **tile** (opt-in): the group in registers as one ``BM x BLOCK_D`` tile, read once: unit rows,
  ``S = sum_j u_j`` in plain floating point, ``SMI_i = u_i . S - |u_i|^2``.

The row indices come sorted (:func:`dra_kernels._triton.rows.small_group_rows`), so sums run in a
fixed order whatever order the buckets hold them in.
"""

from __future__ import annotations

import triton
import triton.language as tl

from dra_kernels._triton.rows import unit_rows

__all__: list[str] = []


@triton.jit
def gram_smi(emb_ptr, stride_en, stride_ed, b_rows, m_row, D, BM: tl.constexpr, BK: tl.constexpr,
             FP32_DOT: tl.constexpr, UPCAST_DOT: tl.constexpr):  # fmt: skip
    """``(SMI of each row, whether every row's squared norm is in the safe window)`` of the rows
    ``b_rows`` (masked by ``m_row``), from their Gram matrix; the SMI is valid only when safe."""
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
    safe = tl.sum((m_row & (m_safe == 0)).to(tl.int32), axis=0) == 0
    b_inv = tl.where(m_row & m_safe, 1.0 / tl.sqrt(tl.where(m_row & m_safe, b_sq, 1.0)), 0.0)
    b_cos = acc * b_inv[:, None] * b_inv[None, :]
    return tl.sum(tl.where(eye, 0.0, b_cos), axis=1), safe


@triton.jit
def tile_smi(emb_ptr, stride_en, stride_ed, b_rows, m_row, n, D, BLOCK_D: tl.constexpr,
             ACC: tl.constexpr):  # fmt: skip
    """SMI of each of the rows ``b_rows`` (masked by ``m_row``), the group read once."""
    o_d = tl.arange(0, BLOCK_D)
    b_u = unit_rows(emb_ptr, stride_en, stride_ed, b_rows, m_row, o_d, o_d < D, ACC)
    b_sum = tl.sum(b_u, axis=0)
    b_smi = tl.sum(b_u * b_sum[None, :], axis=1) - tl.sum(b_u * b_u, axis=1)
    return tl.where(n > 1, b_smi, 0.0)
