"""A trivial kernel for :mod:`benchmarks.gpu_probe`: the host cost of one Triton launch."""

import triton
import triton.language as tl


@triton.jit
def noop_kernel(x_ptr, N, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(x_ptr + o, tl.zeros([BLOCK], dtype=tl.float32), mask=o < N)
