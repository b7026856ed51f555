"""What only a CUDA device can show: bit-for-bit repeats of large batches, no host synchronisation
on the bucket path, CUDA-graph capture replayed on new inputs, and ``torch.compile(fullgraph=True)``
with real code generation. Skipped without a CUDA device; the GPU session runs them
(``pytest -m gpu``, ``python -m benchmarks.gpu_session``).

Accuracy on the GPU against the float64 reference is tested by the kernel's own tests
(tests/test_triton.py), which run on the GPU when one is present.
"""

from __future__ import annotations

import pytest
import torch

import dra_kernels as dk
from tests.helpers import assert_close, random_layout, realistic_embeddings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _batch(seed: int, sizes: list[int], dim: int, dtype: torch.dtype):
    """Rewards, embeddings and shuffled integer ids of groups of ``sizes`` on the GPU, and K."""
    gen = torch.Generator().manual_seed(seed)
    ids, k = random_layout(gen, sizes)
    _, codes = torch.unique(ids, return_inverse=True)
    e = realistic_embeddings(gen, codes.numel(), dim, dtype)
    r = torch.rand(codes.numel(), generator=gen)
    return r.cuda(), e.cuda(), codes.cuda(), k


def _step(r, e, codes, k, backend="triton"):
    return (
        dk.adjust_rewards(r, e, codes, backend=backend, num_groups=k),
        dk.dra_advantages(r, e, codes, backend=backend, num_groups=k),
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_repeated_calls_on_a_large_ragged_batch_are_equal_bit_for_bit(dtype):
    """No atomics in any sum: 4,096 unsorted groups of 1 to 63 rows, D = 768, four calls."""
    gen = torch.Generator().manual_seed(7)
    sizes = torch.randint(1, 64, (4096,), generator=gen).tolist()
    r, e, codes, k = _batch(7, sizes, 768, dtype)
    first = _step(r, e, codes, k)
    for _ in range(3):
        again = _step(r, e, codes, k)
        for name, a, b in zip(("adjust", "advantages"), first, again, strict=True):
            assert torch.equal(a, b), f"{name}: {int((a != b).sum())} rows differ between calls"


def test_no_host_synchronisation_on_the_bucket_path():
    """4,096 rows in 256 groups (past the scan mode's limit: the counting-sort buckets) with the
    group-count hint: no call synchronises with the host (tests/test_reliability.py checks the
    scan mode on a small batch)."""
    r, e, codes, k = _batch(11, [16] * 256, 768, torch.bfloat16)
    for backend in ("triton", "auto"):
        _step(r, e, codes, k, backend)  # warm up: compilation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for backend in ("triton", "auto"):
            _step(r, e, codes, k, backend)
        dk.smi_scores(e, codes, backend="triton", num_groups=k)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("groups", [8, 256], ids=["scan", "buckets"])
def test_cuda_graph_replays_new_inputs_as_eager_computes(groups):
    """adjust_rewards + dra_advantages captured once, replayed on new values copied into the same
    input tensors: the replay equals an eager call on the new values, bit for bit (nothing of
    the first inputs, such as group sizes, is baked into the graph)."""
    r, e, codes, k = _batch(12, [16] * groups, 768, torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            _step(r, e, codes, k)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _step(r, e, codes, k)
    r2, e2, codes2, _ = _batch(13, [1, 31] * (groups // 2), 768, torch.bfloat16)
    r.copy_(r2)
    e.copy_(e2)
    codes.copy_(codes2)
    graph.replay()
    torch.cuda.synchronize()
    eager = _step(r2, e2, codes2, k)
    for name, a, b in zip(("adjust", "advantages"), captured, eager, strict=True):
        assert torch.equal(a, b), f"{name}: {int((a != b).sum())} rows differ from eager"


@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_compile_fullgraph_matches_eager(backend):
    """torch.compile(fullgraph=True), default backend (Inductor code generation), of a step that
    calls the API with the hint and works on its results."""
    r, e, codes, k = _batch(14, [16] * 256, 768, torch.bfloat16)

    def step(r, e, codes):
        adjusted, advantages = _step(r, e, codes, k, backend)
        return adjusted * 2.0, advantages

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    got = compiled(r, e, codes)
    want = step(r, e, codes)
    for name, a, b in zip(("adjusted x 2", "advantages"), got, want, strict=True):
        assert_close(a, b, torch.float32, f"compiled {name}, backend={backend}")


# ----------------------------------------------------------------------------- other measures


def _measure_step(r, e, codes, k, measure, backend):
    kw = {"measure": measure, "backend": backend, "num_groups": k}
    return (
        dk.smi_scores(e, codes, **kw),
        dk.adjust_rewards(r, e, codes, **kw),
        dk.dra_advantages(r, e, codes, **kw),
    )


def test_facility_location_kernel_does_not_synchronise():
    r, e, codes, k = _batch(21, [16, 3, 70, 1] * 64, 768, torch.bfloat16)
    _measure_step(r, e, codes, k, "facility_location", "triton")  # warm up: compilation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _measure_step(r, e, codes, k, "facility_location", "triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_facility_location_kernel_matches_the_torch_path_on_a_large_ragged_batch(dtype):
    """2,048 unsorted groups of 1 to 100 rows (both kernel paths), D = 768; repeats bit for bit."""
    gen = torch.Generator().manual_seed(22)
    sizes = torch.randint(1, 101, (2048,), generator=gen).tolist()
    _, e, codes, k = _batch(22, sizes, 768, dtype)
    got = dk.smi_scores(e, codes, measure="facility_location", backend="triton", num_groups=k)
    want = dk.smi_scores(e, codes, measure="facility_location", backend="torch", num_groups=k)
    size = torch.bincount(codes)[codes].to(torch.float32)
    err = (got - want).abs()
    assert (err <= 4e-6 * (1 + size) + 4e-6 * want.abs()).all(), float(err.max())
    again = dk.smi_scores(e, codes, measure="facility_location", backend="triton", num_groups=k)
    assert torch.equal(got, again)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_facility_location_kernel_gives_the_same_bits_whatever_the_bucket_order(dtype):
    """On a GPU each cosine's arithmetic does not depend on which rows share its tile, so any
    order of a group's rows in its bucket gives the same bits on arbitrary rows (groups of more
    than ``block_m`` rows are tiled in bucket order; the CPU test of the same property,
    tests/test_facility_kernel.py, needs rows whose products are exact, the interpreter's block
    products being the CPU's BLAS)."""
    from dra_kernels._triton.facility import facility_location_smi
    from tests.test_measures import ragged_problem
    from tests.test_triton import _reversed_buckets

    sizes = [1, 2, 3, 5, 8, 16, 17, 33, 4, 1, 40, 64, 65, 130]
    e, codes, k = ragged_problem(13, sizes, 200, offset=1.0, dtype=dtype)
    e, codes = e.cuda(), codes.cuda()
    for block_m in (16, 64):
        got = facility_location_smi(e, codes, k, 0.8, block_m=block_m)
        flipped = facility_location_smi(e, codes, k, 0.8, block_m=block_m,
                                        buckets=_reversed_buckets(codes, k))  # fmt: skip
        assert torch.equal(got, flipped), f"block_m={block_m}: {int((got != flipped).sum())} rows"


@pytest.mark.parametrize("measure", ["facility_location", "log_det"])
def test_the_torch_path_of_other_measures_matches_the_cpu(measure):
    gen = torch.Generator().manual_seed(23)
    sizes = torch.randint(1, 40, (300,), generator=gen).tolist()
    r, e, codes, k = _batch(23, sizes, 384, torch.float32)
    got = _measure_step(r, e, codes, k, measure, "torch")
    want = _measure_step(r.cpu(), e.cpu(), codes.cpu(), k, measure, "torch")
    for name, a, b in zip(("smi", "adjust", "advantages"), got, want, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5, msg=f"{measure} {name}")


@pytest.mark.parametrize("measure", ["facility_location", "log_det"])
def test_the_torch_path_of_other_measures_synchronises_once_per_call(measure):
    """``backend="auto"`` on CUDA: the one read-back of the group-size histogram (and the codes'
    range) per call, whatever the number of sizes and chunks (docs/measures.md)."""
    import warnings

    gen = torch.Generator().manual_seed(24)
    sizes = torch.randint(1, 70, (600,), generator=gen).tolist()
    r, e, codes, k = _batch(24, sizes, 384, torch.float32)
    calls = {
        "smi_scores": lambda: dk.smi_scores(e, codes, measure=measure, num_groups=k),
        "adjust_rewards": lambda: dk.adjust_rewards(r, e, codes, measure=measure, num_groups=k),
        "dra_advantages": lambda: dk.dra_advantages(r, e, codes, measure=measure, num_groups=k),
    }
    for call in calls.values():
        call()  # warm up
    torch.cuda.synchronize()
    for name, call in calls.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) == 1, f"{name}: {len(syncs)} synchronisations: {syncs}"


@pytest.mark.parametrize("measure", ["facility_location", "log_det"])
def test_out_of_range_codes_with_other_measures_raise_on_cuda(measure):
    """The graph-cut kernel turns such rows into NaN without checking; the torch path of the
    other measures indexes by the codes, so it checks them (in its one read-back) and raises."""
    r, e, codes, k = _batch(25, [4, 3, 5], 64, torch.float32)
    bad = codes.clone()
    bad[0] = -1
    for fn in (dk.smi_scores, dk.adjust_rewards, dk.dra_advantages):
        args = (e, bad) if fn is dk.smi_scores else (r, e, bad)
        with pytest.raises(ValueError, match="group_ids must lie in"):
            fn(*args, measure=measure, num_groups=k)
    torch.cuda.synchronize()  # the device is still usable: nothing indexed out of bounds
