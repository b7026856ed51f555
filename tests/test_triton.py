"""The fused Triton kernel against the float64 reference.

Without a GPU these run through Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET),
so every case stays small. Outputs are poisoned with NaN before the kernel runs: a row the kernel
forgets to write fails the comparison."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dra_kernels as dk
from tests.helpers import (
    DTYPES,
    assert_close,
    device,
    float64_reference,
    random_layout,
    realistic_embeddings,
)

pytest.importorskip("triton", reason="the triton extra is not installed")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MODES = {
    "smi": lambda r, e, ids, **kw: dk.smi_scores(e, ids, backend="triton"),
    "adjust": lambda r, e, ids, **kw: dk.adjust_rewards(r, e, ids, backend="triton", **kw),
    "advantage": lambda r, e, ids, **kw: dk.dra_advantages(r, e, ids, backend="triton", **kw),
}


@pytest.fixture(autouse=True, params=["scan", "buckets"])
def row_finding(request, monkeypatch):
    """Every test runs on both ways the kernel finds a group's rows (see dra_kernels._triton.dra):
    scanning the batch's codes (small batches) and the counting-sort buckets (large ones)."""
    from dra_kernels._triton import dra

    scan = request.param == "scan"
    monkeypatch.setattr(dra, "SCAN_MAX_ROWS", 1 << 62 if scan else -1)
    monkeypatch.setattr(dra, "SCAN_MAX_WORK", 1 << 62 if scan else -1)
    return request.param


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Every torch.empty / empty_like filled with NaN while the test runs."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def nan_empty_like(*args, **kwargs):
        t = empty_like(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)


@st.composite
def layouts(draw):
    sizes = draw(st.lists(st.integers(1, 40), min_size=1, max_size=6))
    d = draw(st.sampled_from([1, 3, 16, 33, 100]))
    dtype = draw(st.sampled_from(DTYPES))
    mode = draw(st.sampled_from(list(MODES)))
    seed = draw(st.integers(0, 2**31 - 1))
    return sizes, d, dtype, mode, seed


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=layouts())
def test_kernel_matches_float64_reference(case, poisoned_outputs):
    sizes, d, dtype, mode, seed = case
    gen = torch.Generator().manual_seed(seed)
    ids, _ = random_layout(gen, sizes)
    e = realistic_embeddings(gen, ids.numel(), d, dtype).to(device())
    r = torch.randn(ids.numel(), generator=gen, dtype=dtype if dtype == torch.float64 else None)
    r, ids = r.to(device()), ids.to(device())
    out = MODES[mode](r, e, ids)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(out, float64_reference(mode, r, e, ids), dtype, f"{mode} {dtype} {sizes} D={d}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", list(MODES))
def test_every_dtype_and_mode_on_a_ragged_unsorted_layout(dtype, mode, poisoned_outputs):
    gen = torch.Generator().manual_seed(11)
    ids, _ = random_layout(gen, [1, 7, 2, 19, 4, 1, 3])
    e = realistic_embeddings(gen, ids.numel(), 24, dtype).to(device())
    r = torch.randn(ids.numel(), generator=gen).to(device())
    ids = ids.to(device())
    out = MODES[mode](r, e, ids)
    assert_close(out, float64_reference(mode, r, e, ids), dtype, f"{mode} {dtype}")


@pytest.mark.parametrize("scale", ["std", "none"])
def test_advantage_scales(scale, poisoned_outputs):
    gen = torch.Generator().manual_seed(12)
    ids, _ = random_layout(gen, [5, 1, 18, 2])
    e = realistic_embeddings(gen, ids.numel(), 8, torch.float32)
    r = torch.randn(ids.numel(), generator=gen)
    out = dk.dra_advantages(r, e, ids, backend="triton", scale=scale)
    assert_close(out, float64_reference("advantage", r, e, ids, scale=scale), torch.float32, scale)


def test_strided_inputs_are_read_in_place(poisoned_outputs):
    gen = torch.Generator().manual_seed(13)
    ids, _ = random_layout(gen, [3, 5, 2])
    base = realistic_embeddings(gen, 2 * ids.numel(), 20, torch.float32)
    e = base[::2, 1:13]  # non-contiguous rows and columns
    r = torch.randn(3 * ids.numel(), generator=gen)[::3]
    assert not e.is_contiguous() and not r.is_contiguous()
    out = dk.adjust_rewards(r, e, ids, backend="triton")
    assert_close(out, float64_reference("adjust", r, e, ids), torch.float32, "strided")


@pytest.mark.parametrize("d", [1, 1000, 2500])
def test_embedding_widths(d, poisoned_outputs):
    gen = torch.Generator().manual_seed(d)
    ids, _ = random_layout(gen, [3, 1, 4])
    e = realistic_embeddings(gen, ids.numel(), d, torch.bfloat16)
    r = torch.randn(ids.numel(), generator=gen)
    out = dk.adjust_rewards(r, e, ids, backend="triton")
    assert_close(out, float64_reference("adjust", r, e, ids), torch.bfloat16, f"D={d}")


def test_clamp_rule_matches_reference():
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    r = torch.tensor([1.0, 2.0, -3.0, 4.0])
    for md in (0.1, 0.5, 1.0):
        out = dk.adjust_rewards(r, e, [0, 0, 0, 1], backend="triton", min_denominator=md)
        ref = float64_reference("adjust", r, e, torch.tensor([0, 0, 0, 1]), min_denominator=md)
        assert_close(out, ref, torch.float32, f"min_denominator={md}")


def test_bitwise_deterministic():
    gen = torch.Generator().manual_seed(14)
    ids, _ = random_layout(gen, [40, 3, 1, 25])
    e = realistic_embeddings(gen, ids.numel(), 16, torch.float16)
    r = torch.randn(ids.numel(), generator=gen)
    first = dk.dra_advantages(r, e, ids, backend="triton")
    for _ in range(3):
        assert torch.equal(dk.dra_advantages(r, e, ids, backend="triton"), first)


def test_empty_batch():
    out = dk.adjust_rewards(
        torch.zeros(0), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), backend="triton"
    )
    assert out.shape == (0,) and out.dtype == torch.float32


def test_custom_op_passes_opcheck():
    """The torch.library registration (schema, fake implementation) that torch.compile relies on."""
    from dra_kernels._triton import ops

    gen = torch.Generator().manual_seed(15)
    ids, k = random_layout(gen, [3, 2, 4], shuffle=True)
    _, codes = torch.unique(ids, return_inverse=True)
    e = realistic_embeddings(gen, ids.numel(), 8, torch.float32)
    r = torch.randn(ids.numel(), generator=gen)
    for mode in range(3):
        args = (r, e, codes, k, mode, 0.1, 0, 1e-4, False)
        torch.library.opcheck(
            ops._dra_forward_op, args, test_utils=("test_schema", "test_faketensor")
        )
        out = ops._dra_forward_op(*args)
        kind = ("smi", "adjust", "advantage")[mode]
        assert_close(out, float64_reference(kind, r, e, ids), torch.float32, kind)


# ----------------------------------------------------------------------------- GPU only


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_large_layout_on_gpu(dtype):
    gen = torch.Generator().manual_seed(16)
    sizes = [16] * 4096 + [1] * 100 + [3000]
    ids, _ = random_layout(gen, sizes)
    e = realistic_embeddings(gen, ids.numel(), 768, dtype).cuda()
    r = torch.randn(ids.numel(), generator=gen).cuda()
    out = dk.dra_advantages(r, e, ids.cuda(), backend="triton")
    assert_close(out, float64_reference("advantage", r, e, ids), dtype, "large")


@needs_cuda
@pytest.mark.gpu
def test_cuda_graph_capture_and_compile():
    gen = torch.Generator().manual_seed(17)
    k = 64
    codes = torch.randint(0, k, (1024,), generator=gen).cuda()
    e = torch.randn(1024, 384, generator=gen).cuda()
    r = torch.randn(1024, generator=gen).cuda()
    expected = dk.adjust_rewards(r, e, codes)
    static = dk.adjust_rewards(r, e, codes, num_groups=k)  # warm-up outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = dk.adjust_rewards(r, e, codes, num_groups=k)
    graph.replay()
    torch.testing.assert_close(static, expected)

    compiled = torch.compile(
        lambda r, e, c: dk.adjust_rewards(r, e, c, num_groups=k) * 2, fullgraph=True
    )
    torch.testing.assert_close(compiled(r, e, codes), expected * 2)


def test_embedding_width_limit():
    from dra_kernels import _triton
    from dra_kernels.api import resolve_backend

    wide = torch.ones(2, _triton.MAX_D + 1)
    with pytest.raises(RuntimeError, match=f"at most {_triton.MAX_D} columns"):
        dk.adjust_rewards(torch.ones(2), wide, [0, 0], backend="triton")
    # auto never picks the kernel for such widths, even on CUDA
    assert resolve_backend("auto", torch.device("cuda"), _triton.MAX_D + 1) == "torch"
    assert dk.adjust_rewards(torch.ones(2), wide, [0, 0]).tolist() == [0.5, 0.5]


@pytest.mark.parametrize("fn", ["adjust", "advantage"])
def test_compiles_with_fullgraph_through_the_public_api(fn):
    """torch.compile(fullgraph=True) sees through the whole call (checks, dispatch, custom op)
    when integer ids come with num_groups. aot_eager: the graph capture, without codegen."""
    gen = torch.Generator().manual_seed(18)
    k = 5
    codes = torch.randint(0, k, (40,), generator=gen)
    e = realistic_embeddings(gen, 40, 8, torch.float32)
    r = torch.randn(40, generator=gen)
    call = {
        "adjust": lambda r, e, c: dk.adjust_rewards(r, e, c, num_groups=k, backend="triton") * 2,
        "advantage": lambda r, e, c: dk.dra_advantages(r, e, c, num_groups=k, backend="triton"),
    }[fn]
    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    assert_close(compiled(r, e, codes), call(r, e, codes), torch.float32, fn)


def _force_path(monkeypatch, path):
    from dra_kernels._triton import dra

    config = dra._config

    def forced(n, d, k, float64, float32=False, path_=None):
        return config(n, d, k, float64, float32, path=path)

    monkeypatch.setattr(dra, "_config", forced)
    monkeypatch.setattr(dra, "_PLANS", {})


@pytest.mark.parametrize("path", ["gram", "tile", "linear"])
def test_every_group_path_for_every_dtype(path, monkeypatch, poisoned_outputs):
    """The Gram path (tensor cores), the tile path (a whole group in registers) and the linear
    path, each forced for every input precision (by default bfloat16 / float16 take the Gram path,
    float32 the tile path, float64 and large groups the linear one). Groups larger than the
    path's block (30 rows here) take the linear way inside the same program."""
    _force_path(monkeypatch, path)
    gen = torch.Generator().manual_seed(19)
    ids, _ = random_layout(gen, [16, 16, 9, 16, 30, 1])
    for dtype in DTYPES:
        e = realistic_embeddings(gen, ids.numel(), 40, dtype).to(device())
        r = torch.randn(ids.numel(), generator=gen).to(device())
        for mode in MODES:
            out = MODES[mode](r, e, ids.to(device()))
            assert_close(out, float64_reference(mode, r, e, ids), dtype, f"{path} {mode} {dtype}")


def _reversed(group_buckets):
    """``group_buckets`` with every bucket in reverse order (an order atomics could leave)."""

    def reversed_buckets(codes, num_groups):
        order, counts, ends = group_buckets(codes, num_groups)
        pos = torch.arange(order.numel(), device=order.device)
        bucket = torch.searchsorted(ends.long(), pos, right=True)
        start = (ends - counts).long()[bucket]
        flipped = torch.empty_like(order)
        flipped[start + counts.long()[bucket] - 1 - (pos - start)] = order
        assert not torch.equal(flipped, order)
        return flipped, counts, ends

    return reversed_buckets


@pytest.mark.parametrize("path", ["gram", "tile", "linear", "linear-fixed"])
def test_every_path_gives_the_same_bits_in_scan_and_bucket_mode(path, row_finding, monkeypatch):
    """Bucket order depends on atomic timing. The Gram and tile paths, and the linear path for
    groups of up to SORT_ROWS rows, sort each group's rows, so their sums run in row order as in
    scan mode; the linear path sums larger groups in fixed point, exact in any order and
    grouping of rows ("linear-fixed": SORT_ROWS = 4 here). Either way both modes must agree bit
    for bit. (The interpreter runs atomics in index order, so the buckets are reversed here to
    stand for an arbitrary order.)"""
    from dra_kernels._triton import dra

    if row_finding == "buckets":
        pytest.skip("compares both modes itself")
    if path == "linear-fixed":
        monkeypatch.setattr(dra, "SORT_ROWS", 4)  # groups of 5 rows and more
        path = "linear"
    _force_path(monkeypatch, path)
    monkeypatch.setattr(dra, "group_buckets", _reversed(dra.group_buckets))
    gen = torch.Generator().manual_seed(22)
    ids, _ = random_layout(gen, [16, 7, 16, 12, 45])
    ids = ids.to(device())
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        e = realistic_embeddings(gen, ids.numel(), 48, dtype).to(device())
        r = torch.randn(ids.numel(), generator=gen).to(device())
        for mode in MODES:
            scan = MODES[mode](r, e, ids)
            with monkeypatch.context() as buckets:
                buckets.setattr(dra, "SCAN_MAX_ROWS", -1)
                buckets.setattr(dra, "SCAN_MAX_WORK", -1)
                assert torch.equal(scan, MODES[mode](r, e, ids)), f"{path} {mode} {dtype}"


@pytest.mark.parametrize("mode", ["smi", "adjust", "advantage"])
def test_out_of_range_ids_give_nan_rows_and_leave_the_rest_exact(mode, poisoned_outputs):
    """With ``num_groups`` on CUDA nothing can be raised without a host sync, so the kernel checks
    every id itself: rows with an id outside [0, num_groups) come out NaN, all others exact.
    (Through the public API on CPU such ids raise; the launcher is called directly here.)"""
    from dra_kernels._triton import dra

    gen = torch.Generator().manual_seed(20)
    codes = torch.tensor([0, 1, -1, 0, 2, 1, 5, 0, 2, 2, -7, 1])
    e = realistic_embeddings(gen, codes.numel(), 12, torch.float32)
    r = torch.randn(codes.numel(), generator=gen)
    out = dra.dra_forward(r, e, codes, 3, mode=mode, min_denominator=0.1)
    bad = (codes < 0) | (codes >= 3)
    assert torch.isnan(out[bad]).all()
    good = ~bad
    expected = float64_reference(mode, r[good], e[good], codes[good])
    assert_close(out[good], expected, torch.float32, mode)


def _split_case(seed, dtype, monkeypatch, *, split_max, sort_rows):
    """Rewards, embeddings and ids of groups of 150, 90, 1, 120 and 3 rows (mean 73: above the
    Gram path's 64), with the split turned on (programs of about 8 rows, at most ``split_max``
    per group) and ``SORT_ROWS`` set."""
    from dra_kernels._triton import dra

    gen = torch.Generator().manual_seed(seed)
    ids, _ = random_layout(gen, [150, 90, 1, 120, 3])
    e = realistic_embeddings(gen, ids.numel(), 24, dtype).to(device())
    r = torch.randn(ids.numel(), generator=gen, dtype=dtype).to(device())
    monkeypatch.setattr(dra, "SPLIT_ROWS", 8)
    monkeypatch.setattr(dra, "SPLIT_MAX", split_max)
    monkeypatch.setattr(dra, "SORT_ROWS", sort_rows)
    monkeypatch.setattr(dra, "_PLANS", {})
    return r, e, ids.to(device())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_large_groups_split_among_programs_match_one_program_bit_for_bit(
    dtype, row_finding, monkeypatch, poisoned_outputs
):
    """Groups far above a chunk are split among several programs per group (two or three
    launches); the fixed-point sums make that bitwise equal to one program per group summing in
    fixed point too (SORT_ROWS = 0 here: every group), and both match the float64 reference.
    Out-of-range ids stay NaN on that path too."""
    from dra_kernels._triton import dra

    if row_finding == "scan":
        pytest.skip("the split is a bucket-path layout (scan mode keeps one program per group)")
    r, e, ids = _split_case(21, dtype, monkeypatch, split_max=16, sort_rows=0)
    _, codes = torch.unique(ids, return_inverse=True)
    splits = []
    split_forward = dra._split_forward
    monkeypatch.setattr(dra, "_split_forward", lambda *a: splits.append(a[10]) or split_forward(*a))
    for mode in ("smi", "adjust", "advantage"):
        out = MODES[mode](r, e, ids)
        assert_close(out, float64_reference(mode, r, e, ids), dtype, f"split {mode} {dtype}")
        with monkeypatch.context() as one:
            one.setattr(dra, "SPLIT_MAX", 1)
            assert torch.equal(out, MODES[mode](r, e, ids)), mode
    assert splits and min(splits) == 10, splits  # ceil(73 / 8), the path under test
    bad = codes.clone()
    bad[::7] = 99
    out = dra.dra_forward(r, e, bad, 5, mode="advantage", min_denominator=0.1)
    assert torch.isnan(out[bad == 99]).all() and not torch.isnan(out[bad != 99]).any()


@pytest.mark.parametrize("fused", [True, False])
def test_buckets_hold_each_groups_rows_with_their_counts_and_ends(fused, row_finding, monkeypatch):
    """The counting sort: each bucket (the last one for out-of-range codes) holds exactly its
    rows; counts and inclusive ends are exact, whether the counting kernel's last program
    computes the ends (over several blocks of counts here) or torch.cumsum does."""
    from dra_kernels._triton import dra

    if row_finding == "scan":
        pytest.skip("the buckets themselves are tested (once)")
    monkeypatch.setattr(dra, "FUSED_ENDS_MAX", 1 << 30 if fused else 0)
    monkeypatch.setattr(dra, "_ENDS_BLOCK", 64)
    gen = torch.Generator().manual_seed(23)
    for n, k in ((1, 1), (3000, 300), (2500, 2)):
        codes = torch.randint(-2, k + 2, (n,), generator=gen).to(device())
        order, counts, ends = dra.group_buckets(codes, k)
        bucket = torch.where((codes >= 0) & (codes < k), codes, k).cpu()
        want = torch.bincount(bucket, minlength=k + 1)
        assert torch.equal(counts.cpu().long(), want), (n, k)
        assert torch.equal(ends.cpu().long(), torch.cumsum(want, 0)), (n, k)
        rows = order.cpu().long()
        assert torch.equal(torch.sort(rows).values, torch.arange(n))
        assert torch.equal(bucket[rows], torch.sort(bucket).values)  # rows grouped by bucket


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_split_groups_in_plain_sums_do_not_depend_on_bucket_order(
    dtype, row_finding, monkeypatch, poisoned_outputs
):
    """Split among programs, groups of up to SORT_ROWS rows are summed in plain floating point
    (each program its chunks, then the parts in order), after a launch that sorts their
    buckets; larger ones in fixed point (SORT_ROWS = 128 here: the group of 150 rows). The
    result matches the float64 reference and is the same bit for bit with every bucket
    reversed."""
    from dra_kernels._triton import dra

    if row_finding == "scan":
        pytest.skip("the split is a bucket-path layout (scan mode keeps one program per group)")
    r, e, ids = _split_case(23, dtype, monkeypatch, split_max=4, sort_rows=128)
    sorts = []
    launch = dra.launch
    monkeypatch.setattr(dra, "launch", lambda fn, *a, **k: sorts.append(fn) or launch(fn, *a, **k))
    for mode in ("smi", "adjust", "advantage"):
        out = MODES[mode](r, e, ids)
        assert_close(out, float64_reference(mode, r, e, ids), dtype, f"split {mode} {dtype}")
        with monkeypatch.context() as flipped:
            flipped.setattr(dra, "group_buckets", _reversed(dra.group_buckets))
            assert torch.equal(out, MODES[mode](r, e, ids)), mode
    assert dra._sort_buckets_kernel in sorts and dra._split_sums_kernel in sorts
