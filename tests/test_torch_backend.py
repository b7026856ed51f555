"""The CPU path of the torch backend (issue 14, item 7): batched products per group size.

Groups of at most ``_BLOCK_ROWS`` rows are computed by :func:`torch_backend._block_smi` (Gram
matrix up to ``_GRAM_ROWS`` rows, two skinny products above), equal contiguous groups straight from
the input, any other layout gathered by group size; larger groups keep the chunked float64 path.
Checked here: agreement with the spec (:mod:`dra_kernels.reference`, in float64) on every path and
dtype, the rows the fast path must handle itself (zero, NaN, inf, extreme norms), the layout
detection, and that a group's result is the same bits whatever the layout around it.
"""

from __future__ import annotations

import pytest
import torch

import dra_kernels as dk
from dra_kernels import reference, torch_backend
from dra_kernels.inputs import compute_dtype
from tests.helpers import assert_close, exact_rows

CPU = torch.device("cpu")
GRAM_SIZES = [2, 3, 8, torch_backend._GRAM_ROWS]
SKINNY_SIZES = [torch_backend._GRAM_ROWS + 1, 64]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def embeddings(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """A shared direction plus noise (mostly positive cosines), random row scales."""
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(1, d, generator=gen, dtype=torch.float64) + torch.randn(
        n, d, generator=gen, dtype=torch.float64
    )
    return (e * torch.exp(torch.randn(n, 1, generator=gen, dtype=torch.float64))).to(dtype)


def blocked(groups: int, size: int) -> torch.Tensor:
    return torch.arange(groups).repeat_interleave(size)


def interleaved(groups: int, size: int) -> torch.Tensor:
    """Row ``j * groups + c`` is row ``j`` of group ``c``: every group scattered, row order kept."""
    return torch.arange(groups).repeat(size)


# ----------------------------------------------------------------------------- the spec


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", GRAM_SIZES + SKINNY_SIZES)
@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
def test_equal_groups_match_the_float64_oracle(dtype, size, layout):
    groups, d = 24, 48
    e = embeddings(groups * size, d, dtype, seed=size)
    codes = blocked(groups, size) if layout == "blocked" else interleaved(groups, size)
    got = torch_backend.smi_scores(e, codes, groups)
    assert got.dtype == compute_dtype(dtype)
    assert_close(got, reference.smi_scores(e.double(), codes), dtype, f"{layout} G={size}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ragged_groups_of_every_path_match_the_float64_oracle(dtype):
    # one size per path, each size several times and once, beside singletons and a big group
    sizes = [1, 1, 2, 5, 5, 16, 17, 17, 40, 3, 1, torch_backend._BLOCK_ROWS + 3]
    codes = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    gen = torch.Generator().manual_seed(1)
    codes = codes[torch.randperm(codes.numel(), generator=gen)]
    e = embeddings(codes.numel(), 24, dtype, seed=2)
    assert_close(
        torch_backend.smi_scores(e, codes, len(sizes)),
        reference.smi_scores(e.double(), codes),
        dtype,
        "ragged",
    )


@pytest.mark.parametrize("size", [torch_backend._GRAM_ROWS, torch_backend._BLOCK_ROWS])
def test_the_largest_groups_of_each_product_stay_within_tolerance(size):
    """float32 sums of ``size`` terms, on nearly orthogonal rows (SMI near 0, sums large)."""
    groups = 4
    for e in (
        embeddings(groups * size, 96, torch.float32, seed=3),
        torch.randn(groups * size, 96, generator=torch.Generator().manual_seed(4)),
    ):
        codes = blocked(groups, size)
        assert_close(
            torch_backend.smi_scores(e, codes, groups),
            reference.smi_scores(e.double(), codes),
            torch.float32,
            f"G={size}",
        )


def test_adjust_rewards_with_float64_rewards_computes_in_float64():
    e = embeddings(64, 16, torch.float32)
    codes = blocked(8, 8)
    r = torch.rand(64, dtype=torch.float64)
    smi = torch_backend.smi_scores(e, codes, 8, torch.float64)
    assert smi.dtype == torch.float64
    assert_close(
        smi, reference.smi_scores(e.double(), codes), torch.float64, "float64 smi of float32 rows"
    )
    out = torch_backend.adjust_rewards(r, e, codes, 8)
    assert out.dtype == torch.float64
    assert torch.equal(out, reference.adjust_from_smi(r, smi))


# ----------------------------------------------------------------------------- rows the fast path
# handles itself: zero, NaN, inf, extreme norms (the Gram path recomputes their group from exact
# unit rows, the skinny path patches them), each in a group of every path


def _special_rows(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    d = 8
    direction = torch.linspace(-1.0, 2.0, d, dtype=torch.float64)
    huge, tiny = {
        torch.float16: (3e4, 1e-4),
        torch.bfloat16: (1e30, 1e-30),
        torch.float32: (1e30, 1e-30),
        torch.float64: (1e300, 1e-300),
    }[dtype]
    rows = {
        "zero": torch.zeros(d, dtype=torch.float64),
        "huge": direction * huge,
        "tiny": direction * tiny,
        "gram-range": direction * (2.0**55 if dtype != torch.float16 else 1e3),
    }
    out = {k: v.to(dtype) for k, v in rows.items()}
    nan = direction.to(dtype).clone()
    nan[3] = float("nan")
    inf = direction.to(dtype).clone()
    inf[5] = float("inf")
    out.update(nan=nan, inf=inf)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [4, torch_backend._GRAM_ROWS + 4])
@pytest.mark.parametrize("layout", ["blocked", "interleaved"])
def test_special_rows_are_handled_in_their_own_group_only(dtype, size, layout):
    groups = 6
    e = embeddings(groups * size, 8, dtype, seed=5)
    codes = blocked(groups, size) if layout == "blocked" else interleaved(groups, size)
    clean = torch_backend.smi_scores(e, codes, groups)
    for name, row in _special_rows(dtype).items():
        bad = e.clone()
        target = int(torch.nonzero(codes == 2)[1])  # the second row of group 2
        bad[target] = row
        got = torch_backend.smi_scores(bad, codes, groups)
        mine = codes == 2
        assert torch.equal(got[~mine], clean[~mine]), f"{name}: another group changed"
        if name in ("nan", "inf"):
            assert got[mine].isnan().all(), f"{name}: group not poisoned: {got[mine]}"
            continue
        want = reference.smi_scores(bad.double(), codes)
        assert_close(got[mine], want[mine], dtype, f"{name} row, G={size}, {layout}")
        if name == "zero":
            assert got[target] == 0.0


def test_float16_rows_whose_squares_overflow_in_a_gram_group():
    e = torch.full((4, 64), 60000.0, dtype=torch.float16)
    e[2:, ::2] = -60000.0  # rows 2, 3 orthogonal to rows 0, 1
    codes = blocked(2, 2)
    got = torch_backend.smi_scores(torch.cat([e, e]), torch.cat([codes, codes + 2]), 4)
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0, 1.0, 1.0] * 2), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- layout detection


@pytest.mark.parametrize(
    ("codes", "num_groups", "want"),
    [
        ([0, 0, 1, 1, 2, 2], 3, 2),
        ([0, 0, 0, 1, 1, 1], 2, 3),
        ([0, 1, 2], 3, 1),
        ([0, 0, 1, 1], 3, None),  # a hint with an empty group
        ([1, 1, 0, 0], 2, None),  # blocks, but not in code order
        ([0, 1, 0, 1], 2, None),
        ([0, 0, 1, 2], 3, None),
    ],
)
def test_contiguous_group_size(codes, num_groups, want):
    assert torch_backend.contiguous_group_size(torch.tensor(codes), num_groups) == want
    assert torch_backend.contiguous_group_size(torch.tensor(codes[:0]), num_groups) is None


@pytest.mark.parametrize("n", [48, 3 * (torch_backend._CACHED_LAYOUT_ROWS // 3 + 16)])  # both ways
def test_contiguous_group_size_sees_one_wrong_code(n):
    codes = torch.arange(n // 3).repeat_interleave(3)
    assert torch_backend.contiguous_group_size(codes, n // 3) == 3
    for at in (0, n // 2, n - 1):
        bad = codes.clone()
        bad[at] += 1 if at < n - 1 else -1
        assert torch_backend.contiguous_group_size(bad, n // 3) is None
    assert torch_backend.contiguous_group_size(codes, n // 3) == 3  # the stored copy is unchanged


def test_a_known_group_size_gives_the_same_result():
    gen = torch.Generator().manual_seed(3)
    for g in (2, 8, 16):
        e, r = torch.randn(24 * g, 12, generator=gen), torch.randn(24 * g, generator=gen)
        codes = torch.arange(24).repeat_interleave(g)
        want = torch_backend.adjust_rewards(r, e, codes, 24)
        got = torch_backend.adjust_rewards(r, e, codes, 24, group_size=g)
        assert torch.equal(got, want)
        smi = torch_backend.smi_scores(e, codes, 24, group_size=g)
        assert torch.equal(smi, torch_backend.smi_scores(e, codes, 24))


@pytest.mark.parametrize(
    ("codes", "want"),
    [
        ([0, 0, 1, 1, 2, 2], 2),
        ([2, 2, 0, 0, 1, 1], 2),  # any code order
        ([4, 4, 4, 1, 1, 1], 3),  # codes with gaps (empty groups)
        ([0, 1, 2, 3], 1),
        ([0, 0, 1, 1, 0, 0], None),  # a code in two blocks
        ([0, 0, 1, 1, 1, 1], None),  # unequal sizes
        ([0, 1, 0, 1], None),
        ([0, 0, 0, 1, 1, 2], None),
    ],
)
def test_equal_blocks(codes, want):
    codes = torch.tensor(codes)
    counts = torch.bincount(codes, minlength=5)
    assert torch_backend._equal_blocks(codes, counts) == want


def test_blocked_layouts_never_gather_and_big_groups_take_the_chunked_path(monkeypatch):
    calls = []
    real_block, real_chunked = torch_backend._block_smi, torch_backend._smi_chunked

    def block(*args, **kwargs):
        calls.append(("block", args[1], kwargs.get("rows") is not None))
        return real_block(*args, **kwargs)

    def chunked(e, codes, *args):
        calls.append(("chunked", e.shape[0]))
        return real_chunked(e, codes, *args)

    monkeypatch.setattr(torch_backend, "_block_smi", block)
    monkeypatch.setattr(torch_backend, "_smi_chunked", chunked)
    e = embeddings(96, 8, torch.float32)
    torch_backend.smi_scores(e, blocked(12, 8), 12)
    torch_backend.smi_scores(e, torch.tensor([4, 4, 4, 4, 2, 2, 2, 2] * 12), 5)  # 2 groups of 48
    assert calls == [("block", 8, False), ("block", 48, True)]
    calls.clear()
    torch_backend.smi_scores(e, blocked(12, 8).flip(0) + 3, 15)  # blocks in any code order
    assert calls == [("block", 8, False)]
    calls.clear()
    torch_backend.smi_scores(e, interleaved(12, 8), 12)
    assert calls == [("block", 8, True)]
    calls.clear()
    big = torch_backend._BLOCK_ROWS + 1
    e = embeddings(big + 4, 8, torch.float32)
    torch_backend.smi_scores(
        e, torch.cat([torch.zeros(big, dtype=torch.int64), blocked(2, 2) + 1]), 3
    )
    assert calls == [("chunked", big), ("block", 2, True)]


# ----------------------------------------------------------------------------- a group's result
# depends only on its own rows: the same products whatever the layout, batch size and offset
#
# The products are batched matrix products (torch.bmm, BLAS above 400 elements): what a BLAS
# computes for one matrix of a batch may round differently with the batch size, the thread count
# and the processor (no BLAS promises otherwise; torch 2.13 with MKL hands a batch of one to a
# threaded gemm that rounds differently, hence torch_backend._batched). So the layouts give the same
# values to rounding on arbitrary rows, and the same bits on rows whose products are exact.

LAYOUT_SHAPES = [(2, 100), (5, 100), (torch_backend._GRAM_ROWS, 1024), (12, 4096), (256, 100)]
"""(group size, D): both products of the Gram path and of the skinny path, below and above the
400-element size at which torch.bmm hands over to BLAS. (12, 4096) and (256, 100) are shapes where
a batch of one product rounds differently from a batch of several in torch 2.13 with MKL."""


def _layout_variants(make, dtype: torch.dtype, size: int, d: int) -> dict[str, tuple]:
    """``name -> (got, want)``: the SMI of 40 contiguous groups of ``size`` rows in ``full``,
    and the same rows' SMI computed in another layout (a subset at an offset, one group alone,
    interleaved, beside ragged groups, beside a big group, strided, another group changed, on
    one thread). ``make(n, seed)``: ``[n, d]`` rows of ``dtype``."""
    groups = 40
    e = make(groups * size, size)
    codes = blocked(groups, size)
    full = torch_backend.smi_scores(e, codes, groups)
    variants = {}
    lo, hi = 3, 17
    variants["subset at an offset"] = (
        torch_backend.smi_scores(e[lo * size : hi * size], codes[lo * size : hi * size] - lo, 14),
        full[lo * size : hi * size],
    )
    variants["one group alone"] = (
        torch_backend.smi_scores(e[size : 2 * size], torch.zeros(size, dtype=torch.int64), 1),
        full[size : 2 * size],
    )
    perm = torch.arange(groups * size).view(groups, size).t().reshape(-1)  # see interleaved()
    variants["interleaved"] = (torch_backend.smi_scores(e[perm], codes[perm], groups), full[perm])
    other = make(37, 99)
    beside = torch_backend.smi_scores(
        torch.cat([other, e]), torch.cat([torch.arange(37) % 5 + groups, codes]), groups + 5
    )
    variants["beside ragged groups"] = (beside[37:], full)
    big = make(torch_backend._BLOCK_ROWS + 1, 98)
    with_big = torch_backend.smi_scores(
        torch.cat([e, big]),
        torch.cat([codes, torch.full((big.shape[0],), groups)]),
        groups + 1,
    )
    variants["beside a big group"] = (with_big[: e.shape[0]], full)
    wide = torch.zeros(e.shape[0], d + 3, dtype=dtype)
    wide[:, 1 : d + 1] = e
    variants["strided input"] = (torch_backend.smi_scores(wide[:, 1 : d + 1], codes, groups), full)
    changed = e.clone()
    changed[:size] = make(size, 7)
    variants["another group changed"] = (
        torch_backend.smi_scores(changed, codes, groups)[size:],
        full[size:],
    )
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        variants["one thread"] = (torch_backend.smi_scores(e, codes, groups), full)
    finally:
        torch.set_num_threads(threads)
    return variants


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize(("size", "d"), LAYOUT_SHAPES)
def test_a_group_gets_the_same_bits_in_every_layout_on_exact_rows(dtype, size, d):
    """Rows whose products, norms and sums are all exact (tests/helpers.py, ``exact_rows``):
    every layout gives the same bits on any machine, and a row taken into the wrong group, or a
    group's result written to other rows, would still change them."""

    def make(n: int, seed: int) -> torch.Tensor:
        return exact_rows(torch.Generator().manual_seed(seed), n, d, dtype)

    for name, (got, want) in _layout_variants(make, dtype, size, d).items():
        assert torch.equal(got, want), f"{name}: {int((got != want).sum())} rows differ"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize(("size", "d"), LAYOUT_SHAPES)
def test_a_group_gets_the_same_values_in_every_layout(dtype, size, d):
    """Arbitrary rows: every layout within the rounding of the products.

    Each layout computes ``1 + SMI_j = s_j sum_i (x_j . x_i) s_i`` (``s_i = 1 / |x_i|``), the Gram
    path from ``x x^T``, the skinny path from ``S = s^T x``, and only the order of the sums
    inside the products may differ. With ``u`` the unit roundoff of the computation (float32 for
    float16 inputs) and ``gamma_m = m u / (1 - m u)``, a ``D``-term dot is within
    ``gamma_D |x_j| |x_i|``; ``s_i`` (a ``D``-term sum of squares, a square root, a reciprocal)
    within ``gamma_(D + 2)`` relative; the ``g``-term sum and the last product add
    ``gamma_(g + 2)``: each of the ``g`` terms, at most 1 in size, is within
    ``gamma_m``, ``m = 3 D + g + 8``, of its cosine in any order, and SMI = (1 + SMI) - 1 adds
    ``u |SMI|``. Two layouts differ by at most twice that."""
    u = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    m = 3 * d + size + 8
    gamma = m * u / (1 - m * u)

    def make(n: int, seed: int) -> torch.Tensor:
        return embeddings(n, d, dtype, seed=seed)

    for name, (got, want) in _layout_variants(make, dtype, size, d).items():
        tol = 2 * size * gamma + 2 * u * want.abs()
        err = (got - want).abs()
        assert (err <= tol).all(), f"{name}: off by {float((err - tol).max()):.3g} beyond tol"


def test_the_public_api_gives_the_same_bits_for_any_id_kind_layout_and_hint():
    e = embeddings(48, 32, torch.float32)
    r = torch.rand(48, generator=torch.Generator().manual_seed(1))
    codes = blocked(6, 8)
    want = dk.adjust_rewards(r, e, codes, backend="torch")
    assert torch.equal(dk.adjust_rewards(r, e, codes, backend="torch", num_groups=6), want)
    assert torch.equal(dk.adjust_rewards(r, e, [f"p{c}" for c in codes.tolist()]), want)
    assert torch.equal(dk.adjust_rewards(r, e, codes * 3 + 5, backend="torch"), want)
    assert torch.equal(dk.adjust_rewards(r, e, codes.flip(0), backend="torch"), want)
    perm = torch.arange(48).view(6, 8).t().reshape(-1)  # groups interleaved, row order kept
    assert torch.equal(
        dk.adjust_rewards(r[perm], e[perm], codes[perm], backend="torch"), want[perm]
    )


def test_outputs_are_new_tensors_and_inputs_unchanged():
    e = embeddings(64, 8, torch.float32)
    before = e.clone()
    for size in (4, torch_backend._GRAM_ROWS + 1):
        n = size * 2
        out = torch_backend.smi_scores(e[:n], blocked(2, size), 2)
        assert out.data_ptr() != e.data_ptr()
        assert out.untyped_storage().data_ptr() != e.untyped_storage().data_ptr()
    assert torch.equal(e, before)


def test_groups_of_one_row_are_exactly_zero_on_every_layout():
    e = embeddings(20, 8, torch.float32)
    assert torch.equal(torch_backend.smi_scores(e, torch.arange(20), 20), torch.zeros(20))
    assert torch.equal(torch_backend.smi_scores(e, torch.arange(20).flip(0), 20), torch.zeros(20))
    codes = torch.cat([torch.arange(10), torch.tensor([10] * 10)])
    got = torch_backend.smi_scores(e, codes, 11)
    assert torch.equal(got[:10], torch.zeros(10))
    assert_close(
        got, reference.smi_scores(e.double(), codes), torch.float32, "singletons beside a group"
    )
