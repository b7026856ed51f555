"""pytest-benchmark: the torch reference and the baselines on CPU (small shapes, run anywhere).

pytest benchmarks/test_bench_cpu.py --benchmark-columns=min,median,iqr,rounds
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.impls import loop_adjust, make_case_data, make_group_codes, naive_adjust
from dra_kernels import adjust_rewards, dra_advantages

SHAPES = [(16, 8), (128, 8), (512, 16)]
DIM = 384
CPU = torch.device("cpu")


def _inputs(groups, group_size, layout):
    rewards, embeddings = make_case_data(groups, group_size, DIM, "float32", CPU)
    return rewards, embeddings, make_group_codes(groups, group_size, layout, CPU)


@pytest.mark.parametrize("layout", ["sorted", "shuffled"])
@pytest.mark.parametrize(("groups", "group_size"), SHAPES, ids=lambda v: str(v))
def test_reference_adjust_rewards(benchmark, groups, group_size, layout):
    benchmark.group = f"cpu {groups}x{group_size} D={DIM} {layout}"
    rewards, embeddings, codes = _inputs(groups, group_size, layout)
    out = benchmark(adjust_rewards, rewards, embeddings, codes, backend="torch", num_groups=groups)
    assert out.shape == (groups * group_size,)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("groups", "group_size"), SHAPES[:2], ids=lambda v: str(v))
def test_reference_dra_advantages(benchmark, groups, group_size):
    benchmark.group = f"cpu {groups}x{group_size} D={DIM} sorted"
    rewards, embeddings, codes = _inputs(groups, group_size, "sorted")
    out = benchmark(dra_advantages, rewards, embeddings, codes, backend="torch", num_groups=groups)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("groups", "group_size"), SHAPES, ids=lambda v: str(v))
def test_naive_baseline(benchmark, groups, group_size):
    benchmark.group = f"cpu {groups}x{group_size} D={DIM} sorted"
    rewards, embeddings, codes = _inputs(groups, group_size, "sorted")
    out = benchmark(naive_adjust, rewards, embeddings, codes, groups, group_size, True)
    expected = adjust_rewards(rewards, embeddings, codes, backend="torch", num_groups=groups)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_loop_baseline(benchmark):
    groups, group_size = SHAPES[0]
    benchmark.group = f"cpu {groups}x{group_size} D={DIM} sorted"
    rewards, embeddings, codes = _inputs(groups, group_size, "sorted")
    out = benchmark(loop_adjust, rewards, embeddings, codes, groups)
    expected = adjust_rewards(rewards, embeddings, codes, backend="torch", num_groups=groups)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
