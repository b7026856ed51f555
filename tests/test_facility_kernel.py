"""The facility-location Triton kernel (dra_kernels._triton.facility) against the float64 oracle of
tests/test_measures.py, and through the public API.

Without a GPU these run through Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET),
so the cases stay small; ``block_m=16`` sends groups of more than 16 rows through the tiled path
that groups of more than 64 rows take by default. Outputs are poisoned with NaN before the kernel
runs: a row the kernel forgets to write fails the comparison."""

from __future__ import annotations

import math

import _hypothesis_profiles  # noqa: F401  (registers and loads the profile)
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dra_kernels as dk
from tests.helpers import device, exact_rows
from tests.test_measures import ragged_problem
from tests.test_measures import spec as oracle

pytest.importorskip("triton", reason="the triton extra is not installed")

KERNEL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SIZES = [1, 2, 3, 5, 8, 16, 17, 33, 4, 1, 40]  # both paths at block_m=16, groups of one


def kernel(e, codes, k, eta, *, block_m=16, block_k=16, buckets=None):
    from dra_kernels._triton import facility

    out = facility.facility_location_smi(
        e.to(device()), codes.to(device()), k, eta, block_m=block_m, block_k=block_k,
        buckets=buckets,
    )  # fmt: skip
    return out.cpu()


def tolerance(want: np.ndarray, codes: torch.Tensor) -> np.ndarray:
    """float32 products (about 2^-23 relative per cosine): a row's SMI adds up to G terms. The
    interpreter's largest error over these problems (4 seeds, every dtype, eta and block_m) was
    9e-8 x (1 + G + |SMI|); the bound leaves 11 x for the GPU's tf32x3 products."""
    sizes = torch.bincount(codes)[codes].numpy()
    return 1e-6 * (1.0 + sizes + np.abs(np.nan_to_num(want)))


def assert_matches(got: torch.Tensor, want: np.ndarray, codes: torch.Tensor, what: str) -> None:
    got64 = got.to(torch.float64).numpy()
    nan_got, nan_want = np.flatnonzero(np.isnan(got64)), np.flatnonzero(np.isnan(want))
    assert np.array_equal(nan_got, nan_want), f"{what}: NaN at {nan_got}, expected {nan_want}"
    ok = ~np.isnan(want)
    err = np.abs(got64 - want)[ok]
    tol = tolerance(want, codes)[ok]
    worst = int(np.argmax(err - tol)) if err.size else 0
    assert (err <= tol).all(), f"{what}: row {worst} off by {err[worst]:.3g} (tol {tol[worst]:.3g})"


@pytest.mark.parametrize("eta", [1.0, 0.5, 3.0])
@pytest.mark.parametrize("offset", [0.0, 2.0])
def test_matches_the_float64_oracle(eta, offset):
    e, codes, k = ragged_problem(7, SIZES, 24, offset=offset, dtype=torch.float32)
    want = oracle(e, codes, "facility_location", eta)
    assert_matches(kernel(e, codes, k, eta), want, codes, f"eta={eta}")


@pytest.mark.parametrize("eta", [1e39, 3e38, 1e-30, 1e-45])
def test_extreme_eta_stays_finite_inside_the_kernel(eta):
    """eta reaches the kernel as a float32 scalar: a value beyond float32's range must not turn
    into inf there (inf x a zero cosine is NaN); tiny values may round to 0 (SMI 0 to rounding)."""
    import warnings

    e, codes, k = ragged_problem(3, [4, 6, 1, 3], 8, dtype=torch.float32)
    e[0] = 0.0
    e[codes == 3] = torch.eye(8)[:3]  # orthogonal rows: every cosine 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the interpreter's overflow warnings
        got = kernel(e, codes, k, eta)
    assert_matches(got, oracle(e, codes, "facility_location", eta), codes, f"eta={eta}")


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_every_input_dtype_matches_the_oracle(dtype):
    e, codes, k = ragged_problem(8, SIZES, 40, offset=1.0, dtype=dtype)
    want = oracle(e.to(torch.float64), codes, "facility_location", 0.7)  # the rounded inputs
    assert_matches(kernel(e, codes, k, 0.7, block_k=32), want, codes, str(dtype))


def test_the_default_tiles_take_groups_up_to_64_rows_whole():
    e, codes, k = ragged_problem(9, [64, 65, 2, 70], 20, offset=1.0, dtype=torch.float32)
    want = oracle(e, codes, "facility_location", 1.0)
    assert_matches(kernel(e, codes, k, 1.0, block_m=64, block_k=32), want, codes, "64")


@pytest.mark.parametrize("scale", [1e-30, 1e30, 1e-42])  # squared norms outside the window
def test_extreme_rows_take_the_scaled_path(scale):
    e, codes, k = ragged_problem(10, [3, 20, 6], 16, offset=1.0, dtype=torch.float64)
    e = e / e.norm(dim=1, keepdim=True).clamp(min=1e-300)  # unit rows (the zero rows stay 0)
    big = codes == 1
    e[big] = e[big] * scale  # one small group and one tiled group of extreme rows
    e[codes == 0] = e[codes == 0] * scale
    e = e.to(torch.float32)
    assert e.abs().max() > 0
    want = oracle(e.to(torch.float64), codes, "facility_location", 1.0)
    assert_matches(kernel(e, codes, k, 1.0), want, codes, f"scale {scale}")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rows_poison_only_their_group(bad):
    e, codes, k = ragged_problem(11, [4, 20, 3, 1], 16, offset=1.0, dtype=torch.float32)
    clean = kernel(e, codes, k, 1.0)
    for group in (0, 1, 3):  # a small group, a tiled group, a group of one
        e_bad = e.clone()
        e_bad[torch.nonzero(codes == group)[0, 0], 5] = bad
        got = kernel(e_bad, codes, k, 1.0)
        rows = codes == group
        if group == 3:
            assert torch.equal(got[rows], torch.zeros(1))  # a group of one scores 0
        else:
            assert got[rows].isnan().all(), (group, got[rows])
        assert torch.equal(got[~rows], clean[~rows]), group


def test_zero_rows_score_zero_and_change_nothing_else():
    e, codes, k = ragged_problem(12, [6, 20], 16, offset=1.0, dtype=torch.float32)
    rows = torch.nonzero(codes == 1).flatten()
    base = kernel(e[codes == 1], torch.zeros(20, dtype=torch.int64), 1, 1.0)
    e_zero = torch.cat([e, torch.zeros(2, 16)])
    codes_zero = torch.cat([codes, torch.tensor([1, 0])])
    got = kernel(e_zero, codes_zero, k, 1.0)
    assert torch.equal(got[-2:], torch.zeros(2))
    torch.testing.assert_close(got[rows], base, rtol=1e-6, atol=1e-6)


def exact_problem(seed: int, sizes: list[int], d: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`ragged_problem`'s layout and structure (unsorted groups; an exact copy scaled by 2,
    a near copy, an opposite row and a zero row in each group of five or more) on rows of +-1
    times powers of two (tests/helpers.py, ``exact_rows``): every product of two rows and every
    partial sum of one is exact in float32, the largest magnitudes (by which the kernel scales a
    group holding a zero row) are powers of two, and the norms are not, so the cosines are
    correctly rounded quotients, computed elementwise."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    codes = codes[torch.randperm(codes.numel(), generator=gen)]
    e = exact_rows(gen, codes.numel(), d, unit_norms=False)
    for group in range(len(sizes)):
        rows = torch.nonzero(codes == group).flatten().tolist()
        if len(rows) >= 3:
            e[rows[1]] = 2.0 * e[rows[0]]
            e[rows[2]] = e[rows[0]]
            e[rows[2], 0] = -e[rows[2], 0] if e[rows[2], 0] != 0 else 1.0
        if len(rows) >= 5:
            e[rows[3]] = -e[rows[0]]
            e[rows[4]] = 0.0
    return e, codes, len(sizes)


def test_results_do_not_depend_on_the_bucket_order():
    """Each cosine's arithmetic does not depend on which rows share its tile, the maximum not on
    the order, and the sums are fixed point: any order of a group's rows in its bucket gives the
    same bits (groups of more than ``block_m`` rows are tiled in bucket order).

    NOTE: under Triton's CPU interpreter a tile's products are one numpy matmul (the CPU's BLAS),
    which may round an element differently with the processor and with the other rows of the
    tile (issue 22: 4 of 130 rows off by up to 1.9e-6 on an AMD EPYC). So the rows here make
    every product exact (``exact_problem``), and with them the bits cannot depend on the tiles;
    the cosines are still rounded quotients, so a sum that depended on the order would show.
    tests/test_gpu.py checks the same on arbitrary rows on a GPU."""
    from tests.test_triton import _reversed_buckets

    e, codes, k = exact_problem(13, SIZES, 24)
    codes, e = codes.to(device()), e.to(device())
    got = kernel(e, codes, k, 0.8)
    flipped = kernel(e, codes, k, 0.8, buckets=_reversed_buckets(codes, k))
    assert torch.equal(got, flipped), f"{int((got != flipped).sum())} rows differ"
    assert_matches(
        got, oracle(e.cpu(), codes.cpu(), "facility_location", 0.8), codes.cpu(), "exact"
    )


def test_strided_input_and_out_of_range_codes():
    e, codes, k = ragged_problem(14, [5, 20, 2], 16, offset=1.0, dtype=torch.float32)
    wide = torch.zeros(e.shape[0], 32)
    wide[:, ::2] = e
    strided = wide[:, ::2]
    assert not strided.is_contiguous()
    assert torch.equal(kernel(strided, codes, k, 1.0), kernel(e, codes, k, 1.0))
    bad = codes.clone()
    bad[0], bad[1] = k, -1  # rows outside [0, K): NaN, the others computed without them
    got = kernel(e, bad, k, 1.0)
    assert got[:2].isnan().all()
    keep = torch.arange(2, e.shape[0])
    want = oracle(e[keep], codes[keep], "facility_location", 1.0)
    assert_matches(got[2:], want, codes[keep], "out of range")


@given(
    sizes=st.lists(st.integers(1, 24), min_size=1, max_size=5),
    d=st.integers(1, 20),
    eta=st.floats(0.05, 4.0),
    offset=st.sampled_from([0.0, 1.5]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_matches_the_float64_oracle(sizes, d, eta, offset, seed):
    e, codes, k = ragged_problem(seed, sizes, d, offset=offset, dtype=torch.float32)
    want = oracle(e, codes, "facility_location", eta)
    assert_matches(kernel(e, codes, k, eta), want, codes, f"sizes={sizes} d={d} eta={eta}")


# ----------------------------------------------------------------------------- the public API


def test_backend_triton_runs_the_kernel_through_the_api():
    e, codes, k = ragged_problem(15, [3, 8, 1, 5], 16, offset=1.0, dtype=torch.float32)
    e, codes = e.to(device()), codes.to(device())
    r = torch.rand(e.shape[0], generator=torch.Generator().manual_seed(0)).to(device())
    kw = {"measure": "facility_location", "eta": 0.6}
    for name, call in (
        ("smi", lambda b: dk.smi_scores(e, codes, backend=b, **kw)),
        ("adjust", lambda b: dk.adjust_rewards(r, e, codes, backend=b, **kw)),
        ("advantages", lambda b: dk.dra_advantages(r, e, codes, backend=b, **kw)),
    ):
        torch.testing.assert_close(call("triton"), call("torch"), rtol=2e-5, atol=2e-5, msg=name)
    direct = kernel(e, codes, k, 0.6, block_m=64)  # the API's tiles
    assert torch.equal(dk.smi_scores(e, codes, backend="triton", **kw).cpu(), direct)


def test_backend_triton_refuses_what_the_kernel_cannot_do():
    e = torch.randn(6, 4, device=device())
    ids = torch.tensor([0, 0, 1, 1, 1, 2], device=device())
    with pytest.raises(ValueError, match="log_det"):
        dk.smi_scores(e, ids, backend="triton", measure="log_det")
    with pytest.raises(ValueError, match="float64"):
        dk.smi_scores(e.double(), ids, backend="triton", measure="facility_location")
