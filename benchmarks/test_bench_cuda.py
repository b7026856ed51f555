"""pytest-benchmark on CUDA: the fused kernel against the eager reference and its compile.

Skipped without a CUDA device. pytest-benchmark times wall-clock calls ending with a
``torch.cuda.synchronize()``; the CUDA-event timings of record come from
``python -m benchmarks.run`` (``python -m benchmarks.gpu_session`` on a lent GPU).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.impls import make_case_data, make_group_codes
from dra_kernels import adjust_rewards, dra_advantages
from dra_kernels import torch_backend as ref
from tests.helpers import assert_close

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SHAPES = [(16, 8), (1024, 16), (8192, 16), (256, 512)]
DTYPES = ["bfloat16", "float32"]


def _synced(fn):
    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return call


def _inputs(groups, group_size, dim, dtype, layout):
    device = torch.device("cuda")
    rewards, embeddings = make_case_data(groups, group_size, dim, dtype, device)
    return rewards, embeddings, make_group_codes(groups, group_size, layout, device)


@pytest.mark.parametrize("layout", ["sorted", "shuffled"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("groups", "group_size"), SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_adjust_rewards_cuda(benchmark, backend, groups, group_size, dtype, layout):
    benchmark.group = f"cuda {groups}x{group_size} D=768 {dtype} {layout}"
    rewards, embeddings, codes = _inputs(groups, group_size, 768, dtype, layout)
    out = benchmark(
        _synced(adjust_rewards), rewards, embeddings, codes, backend=backend, num_groups=groups
    )
    expected = ref.adjust_rewards(rewards.double(), embeddings.double(), codes, groups)
    assert_close(out, expected, getattr(torch, dtype), f"{backend} {groups}x{group_size}")


@pytest.mark.parametrize(("groups", "group_size"), SHAPES, ids=lambda v: str(v))
def test_dra_advantages_cuda(benchmark, groups, group_size):
    benchmark.group = f"cuda {groups}x{group_size} D=768 bfloat16 shuffled"
    rewards, embeddings, codes = _inputs(groups, group_size, 768, "bfloat16", "shuffled")
    out = benchmark(
        _synced(dra_advantages), rewards, embeddings, codes, backend="triton", num_groups=groups
    )
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("groups", "group_size"), SHAPES[1:3], ids=lambda v: str(v))
def test_compiled_reference_cuda(benchmark, groups, group_size):
    benchmark.group = f"cuda {groups}x{group_size} D=768 bfloat16 sorted"
    rewards, embeddings, codes = _inputs(groups, group_size, 768, "bfloat16", "sorted")
    compiled = torch.compile(ref.adjust_rewards)
    compiled(rewards, embeddings, codes, groups)
    out = benchmark(_synced(compiled), rewards, embeddings, codes, groups)
    assert torch.isfinite(out).all()
