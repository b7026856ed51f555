"""Facility-location and log-determinant SMI (:mod:`dra_kernels.measures`).

Three references, each written independently of the implementation:

- the spec, :func:`dra_kernels.reference.smi_scores` in float64: the closed forms of
  ``docs/semantics.md`` ("Other SMI measures"), one plain loop per group and row (facility
  location from its definition, log-det from the Schur complement against ``S_Q + lam I``, not
  from the inverse diagonal the code uses);
- submodlib itself (``submodlib-py``; skipped where it is not installed), evaluated at ``{i}`` per
  row with the group's cosine matrix as its kernels, against which the spec is checked too;
- invariants that hold whatever the numbers (row order, labels, scale, groups of one, other
  groups, zero rows, NaN), and hypothesis fuzzing with the ``ci`` / ``local`` profiles of
  ``tests/_hypothesis_profiles.py``.
"""

from __future__ import annotations

import math

import _hypothesis_profiles  # noqa: F401  (registers and loads the profile)
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dra_kernels import reference, torch_backend
from dra_kernels.measures import check_measure, smi_by_measure

OTHER = ["facility_location", "log_det"]
PARAMETERS = {  # (measure, eta, lam) combinations exercised by the fixed-case tests
    "facility_location": [(1.0, 1.0), (0.5, 1.0), (0.05, 1.0), (3.0, 1.0)],
    "log_det": [(1.0, 1.0), (0.5, 1.0), (1.0, 0.1), (0.3, 5.0), (1.0, 1e-3)],
}
CASES = [(m, eta, lam) for m, values in PARAMETERS.items() for eta, lam in values]
U64 = 2.0**-52


def kw(measure: str, eta: float, lam: float) -> dict:
    """``eta`` and, for log-det only, ``lam`` (a measure refuses a parameter it does not use)."""
    return {"eta": eta, "lam": lam} if measure == "log_det" else {"eta": eta}


# ----------------------------------------------------------------------------- the spec


def _groups(codes: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(codes == k) for k in np.unique(codes)]


def _cosine_matrix(u: np.ndarray) -> np.ndarray:
    """The group's cosine matrix; its diagonal is ``|u_i|^2`` (1, or 0 for a zero row)."""
    s = u @ u.T
    np.fill_diagonal(s, np.sum(u * u, axis=1).round())
    return s


def spec(e, codes, measure: str, eta: float = 1.0, lam: float = 1.0) -> np.ndarray:
    """The spec (:func:`dra_kernels.reference.smi_scores`) on the exactly upcast rows, as numpy."""
    e = torch.as_tensor(e).to(torch.float64)
    return reference.smi_scores(e, torch.as_tensor(codes), measure, eta=eta, lam=lam).numpy()


def tolerance(want: np.ndarray, codes, d: int, measure: str, eta: float, lam: float, dtype):
    """Per-row error bound: float64 rounding of the cosines (both measures compute in float64),
    amplified by the measure, plus the final rounding to the output dtype."""
    codes = np.asarray(torch.as_tensor(codes))
    sizes = np.bincount(codes)[codes] if codes.size else np.zeros(0, dtype=np.int64)
    out = 2.0**-52 if dtype == torch.float64 else 2.0**-23
    cosine = 4.0 * (d + 4) * U64
    if measure == "facility_location":
        bound = 2.0 * sizes * (1.0 + eta) * cosine
    else:  # |d SMI / d S| <= ||(S + lam I)^-1|| <= 1 / lam, and ||dS|| <= G * cosine
        bound = 8.0 * sizes**2 * cosine * (1.0 + lam) / lam
    return bound + 2.0 * out * np.abs(np.nan_to_num(want))


def assert_close(name: str, got: torch.Tensor, want: np.ndarray, tol: np.ndarray) -> None:
    got = got.detach().cpu().to(torch.float64).numpy()
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    assert np.array_equal(nan_g, nan_w), (
        f"{name}: NaN at rows {np.flatnonzero(nan_g)}, expected at {np.flatnonzero(nan_w)}"
    )
    err = np.abs(got - want)[~nan_w]
    bad = np.flatnonzero(err > tol[~nan_w])
    assert bad.size == 0, f"{name}: {bad.size} rows off; worst: " + ", ".join(
        f"[{k}] got {got[~nan_w][k]!r} want {want[~nan_w][k]!r} tol {tol[~nan_w][k]:.3g}"
        for k in bad[np.argsort(-err[bad])][:5]
    )


# ----------------------------------------------------------------------------- problems


def ragged_problem(
    seed: int, sizes: list[int], d: int, *, offset: float = 0.0, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Unsorted groups of the given sizes (codes shuffled), with duplicates, near-duplicates,
    opposite rows and zero rows; ``offset`` adds a shared direction (mostly positive cosines)."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    codes = codes[torch.randperm(codes.numel(), generator=gen)]
    n = codes.numel()
    e = torch.randn(n, d, generator=gen, dtype=torch.float64)
    e += offset * torch.randn(1, d, generator=gen, dtype=torch.float64)
    for k in range(len(sizes)):
        rows = torch.nonzero(codes == k).flatten().tolist()
        if len(rows) >= 3:
            e[rows[1]] = 2.5 * e[rows[0]]  # exact duplicate direction
            e[rows[2]] = e[rows[0]] + 1e-3 * torch.randn(d, generator=gen, dtype=torch.float64)
        if len(rows) >= 5:
            e[rows[3]] = -e[rows[0]]
            e[rows[4]] = 0.0
    scales = torch.exp(2.0 * torch.randn(n, 1, generator=gen, dtype=torch.float64))
    return (e * scales).to(dtype), codes, len(sizes)


SIZES_1_TO_64 = list(range(1, 65))


# ----------------------------------------------------------------------------- the spec tests


@pytest.mark.parametrize(("measure", "eta", "lam"), CASES)
@pytest.mark.parametrize("offset", [0.0, 2.0])
def test_matches_the_float64_spec(measure: str, eta: float, lam: float, offset: float) -> None:
    sizes = [5, 1, 3, 9, 2, 1, 17, 4, 2, 33]
    e, codes, k = ragged_problem(7, sizes, 6, offset=offset)
    got = smi_by_measure(e, codes, k, measure, eta=eta, lam=lam)
    want = spec(e, codes, measure, eta, lam)
    assert got.dtype == torch.float64
    assert_close(measure, got, want, tolerance(want, codes, 6, measure, eta, lam, torch.float64))


@pytest.mark.parametrize("measure", OTHER)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_match_the_spec(measure: str, dtype: torch.dtype) -> None:
    e, codes, k = ragged_problem(3, [4, 7, 1, 16, 2], 5, offset=1.0, dtype=dtype)
    e = e / e.abs().amax(dim=1, keepdim=True).clamp(min=1.0)  # float16 range
    got = smi_by_measure(e, codes, k, measure, eta=0.7, lam=1.0)
    assert got.dtype == torch.float32
    want = spec(e, codes, measure, 0.7, 1.0)  # on the exactly upcast inputs
    assert_close(measure, got, want, tolerance(want, codes, 5, measure, 0.7, 1.0, dtype))


@pytest.mark.parametrize("measure", OTHER)
def test_sizes_1_to_64_unsorted(measure: str) -> None:
    e, codes, k = ragged_problem(11, SIZES_1_TO_64, 12, offset=1.0)
    got = smi_by_measure(e, codes, k, measure, **kw(measure, 0.8, 0.5))
    want = spec(e, codes, measure, 0.8, 0.5)
    assert_close(measure, got, want, tolerance(want, codes, 12, measure, 0.8, 0.5, torch.float64))
    got32 = smi_by_measure(e.to(torch.float32), codes, k, measure, **kw(measure, 0.8, 0.5))
    want32 = spec(e.to(torch.float32), codes, measure, 0.8, 0.5)
    tol32 = tolerance(want32, codes, 12, measure, 0.8, 0.5, torch.float32)
    assert_close(measure + " float32", got32, want32, tol32)


def test_known_values() -> None:
    """A hand-checked group: u0 = u1 (copies), u2 at 60 degrees from them, u3 orthogonal."""
    c = 0.5
    e = torch.tensor(
        [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [c, math.sqrt(1 - c * c), 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    codes = torch.zeros(4, dtype=torch.int64)
    fl = smi_by_measure(e, codes, 1, "facility_location")
    # row 0: nearest other 1 (its copy) + (1 + 0.5 + 0) = 2.5; row 2: 0.5 + 1.0; row 3: 0.
    torch.testing.assert_close(fl, torch.tensor([2.5, 2.5, 1.5, 0.0], dtype=torch.float64))
    fl_half = smi_by_measure(e, codes, 1, "facility_location", eta=0.25)
    # eta = 0.25 caps every term: row 0: 0.25 + (0.25 + 0.25 + 0); row 2: 0.125 + (0.25 + 0.25)
    want_half = torch.tensor([0.75, 0.75, 0.625, 0.0], dtype=torch.float64)
    torch.testing.assert_close(fl_half, want_half)
    ld = smi_by_measure(e, codes, 1, "log_det", lam=1.0)
    # eta = 1: log((1 + lam) [(S + lam I)^-1]_ii); row 3 is orthogonal to all: exactly 0.
    s = e @ e.T + torch.eye(4, dtype=torch.float64)
    want = torch.log(2.0 * torch.linalg.inv(s).diagonal())
    torch.testing.assert_close(ld, want)
    assert ld[3] == 0.0


# ----------------------------------------------------------------------------- submodlib


def _submodlib_row(sml, s: np.ndarray, i: int, measure: str, eta: float, lam: float) -> float:
    g = len(s)
    if g == 1:
        return 0.0  # submodlib: FL gives FLT_MIN (1.2e-38), log-det raises IndexError
    keep = [j for j in range(g) if j != i]
    if measure == "facility_location":
        f = sml.FacilityLocationMutualInformationFunction(
            n=g, num_queries=g - 1, data_sijs=s, query_sijs=s[:, keep], magnificationEta=eta
        )
    else:
        f = sml.LogDeterminantMutualInformationFunction(
            n=g,
            num_queries=g - 1,
            lambdaVal=lam,
            data_sijs=s,
            query_sijs=s[:, keep],
            query_query_sijs=s[np.ix_(keep, keep)],
            magnificationEta=eta,
        )
    return f.evaluate({i})


def submodlib_smi(sml, e: torch.Tensor, codes: torch.Tensor, measure, eta, lam) -> np.ndarray:
    u = reference.unit_rows(e.to(torch.float64)).numpy()
    out = np.zeros(codes.numel())
    for rows in _groups(codes.numpy()):
        s = _cosine_matrix(u[rows])
        for a, row in enumerate(rows):
            out[row] = _submodlib_row(sml, s, a, measure, eta, lam)
    return out


SUBMODLIB_CASES = [
    ("facility_location", 1.0, 1.0, SIZES_1_TO_64, 0.0),
    ("facility_location", 0.4, 1.0, [1, 2, 3, 6, 11, 40], 1.0),
    ("facility_location", 2.5, 1.0, [2, 3, 5, 8, 13], 0.0),
    ("log_det", 1.0, 1.0, SIZES_1_TO_64, 0.0),
    ("log_det", 0.6, 0.3, [1, 2, 3, 6, 11, 40], 1.0),
    ("log_det", 1.0, 4.0, [2, 3, 5, 8, 13], 0.0),
]


@pytest.mark.parametrize(("measure", "eta", "lam", "sizes", "offset"), SUBMODLIB_CASES)
def test_matches_submodlib(measure, eta, lam, sizes, offset) -> None:
    """Per row, on ragged unsorted groups with negative cosines, duplicates and zero rows.

    submodlib keeps its kernels in float32 (and floors facility-location maxima at FLT_MIN
    instead of 0), so the tolerance is float32's, amplified as in :func:`tolerance`."""
    sml = pytest.importorskip("submodlib")
    e, codes, k = ragged_problem(5, sizes, 8, offset=offset)
    got = smi_by_measure(e, codes, k, measure, eta=eta, lam=lam)
    want = submodlib_smi(sml, e, codes, measure, eta, lam)
    assert np.isfinite(want).all()
    sizes_per_row = np.bincount(codes.numpy())[codes.numpy()]
    if measure == "facility_location":
        tol = 4e-7 * sizes_per_row * (1 + eta) + 1e-6 * np.abs(want)
    else:
        tol = 4e-7 * sizes_per_row * (1 + lam) / lam + 1e-6 * np.abs(want)
    assert_close(f"{measure} vs submodlib", got, want, tol)
    spec_values = torch.from_numpy(spec(e, codes, measure, eta, lam))
    assert_close(f"the spec's {measure} vs submodlib", spec_values, want, tol)


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize(("measure", "eta", "lam"), CASES)
def test_invariants(measure: str, eta: float, lam: float) -> None:
    e, codes, k = ragged_problem(21, [6, 1, 4, 6, 3, 2, 6, 12], 5, offset=0.5)
    base = smi_by_measure(e, codes, k, measure, eta=eta, lam=lam)
    gen = torch.Generator().manual_seed(0)
    tol = dict(rtol=1e-12, atol=1e-12)

    perm = torch.randperm(codes.numel(), generator=gen)  # row order
    permuted = smi_by_measure(e[perm], codes[perm], k, measure, eta=eta, lam=lam)
    torch.testing.assert_close(permuted, base[perm], **tol)

    relabel = torch.randperm(k, generator=gen)  # group labels
    relabelled = smi_by_measure(e, relabel[codes], k, measure, eta=eta, lam=lam)
    torch.testing.assert_close(relabelled, base, **tol)

    scales = torch.exp(20 * torch.rand(codes.numel(), 1, generator=gen, dtype=torch.float64) - 10)
    scaled = smi_by_measure(e * scales, codes, k, measure, eta=eta, lam=lam)
    torch.testing.assert_close(scaled, base, **tol)

    # groups of one: exactly 0
    assert torch.all(base[codes == 1] == 0.0)
    singletons = smi_by_measure(e, torch.arange(codes.numel()), codes.numel(), measure)
    assert torch.equal(singletons, torch.zeros_like(singletons))

    # other groups unaffected (bit for bit), also those in its size bucket (groups 0 and 6)
    other = codes != 3
    changed = e.clone()
    changed[other] = torch.randn(int(other.sum()), 5, generator=gen, dtype=torch.float64)
    again = smi_by_measure(changed, codes, k, measure, eta=eta, lam=lam)
    assert torch.equal(again[~other], base[~other])


@pytest.mark.parametrize("measure", OTHER)
def test_zero_rows_score_zero_and_change_nothing(measure: str) -> None:
    e, codes, k = ragged_problem(2, [4, 6, 3], 5, offset=1.0)
    base = smi_by_measure(e, codes, k, measure, **kw(measure, 0.7, 0.5))
    zeros = torch.zeros(3, 5, dtype=torch.float64)
    codes_with_zeros = torch.cat([codes, torch.tensor([0, 1, 1])])
    with_zeros = smi_by_measure(
        torch.cat([e, zeros]), codes_with_zeros, k, measure, **kw(measure, 0.7, 0.5)
    )
    assert torch.all(with_zeros[-3:] == 0.0)
    torch.testing.assert_close(with_zeros[:-3], base, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("measure", OTHER)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rows_poison_only_their_group(measure: str, bad: float) -> None:
    e, codes, k = ragged_problem(4, [4, 5, 3, 1], 5)
    clean = smi_by_measure(e, codes, k, measure)
    row = int(torch.nonzero(codes == 1)[0])
    e[row, 2] = bad
    got = smi_by_measure(e, codes, k, measure)
    assert torch.isnan(got[codes == 1]).all()
    assert torch.equal(got[codes != 1], clean[codes != 1])


@pytest.mark.parametrize(
    ("measure", "eta", "lam"),
    [("facility_location", 1.0, 1.0), ("facility_location", 0.2, 1.0),
     ("facility_location", 3.0, 1.0), ("log_det", 1.0, 1.0), ("log_det", 1.0, 1e-6),
     ("log_det", 0.2, 0.01)],
)  # fmt: skip
def test_bounds(measure: str, eta: float, lam: float) -> None:
    """FL_i in [0, G min(1, eta)] (each term <= min(1, eta)), reached by copies; log-det in
    [0, log((1 + lam) / lam)] (the code clamps there, so only the facility-location bound and the
    copies' values can catch an error here; the oracle tests check log-det's values)."""
    e, codes, k = ragged_problem(9, [2, 7, 30, 64], 3, offset=3.0)  # many near-copies
    sizes = torch.bincount(codes)[codes].to(torch.float64)
    smi = smi_by_measure(e, codes, k, measure, **kw(measure, eta, lam))
    assert torch.all(smi >= 0)
    top = sizes * min(1.0, eta) if measure == "facility_location" else math.log((1 + lam) / lam)
    assert torch.all(smi <= top * (1 + 1e-12))
    copies = torch.ones(5, 3, dtype=torch.float64) * torch.arange(1.0, 6.0)[:, None]
    at_copies = smi_by_measure(copies, torch.zeros(5, dtype=torch.int64), 1, measure,
                               **kw(measure, eta, lam))  # fmt: skip
    if measure == "facility_location":  # every term min(1, eta)
        want = torch.full((5,), 5 * min(1.0, eta), dtype=torch.float64)
    else:  # S = 1 1^T: P_ii = (1 - 1 / (G + lam)) / lam, w_i = (1 + lam) P_ii
        w = (1 + lam) * (1 - 1 / (5 + lam)) / lam
        want = torch.full((5,), -math.log(1 - eta**2 + eta**2 / w), dtype=torch.float64)
    torch.testing.assert_close(at_copies, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("measure", OTHER)
def test_out_of_range_codes_are_refused(measure: str) -> None:
    e = torch.randn(4, 3)
    for codes, k in [([0, 0, 1, -1], 2), ([0, 0, 1, 2], 2), ([0, 0, 0, 0], 0)]:
        with pytest.raises(ValueError, match=f"num_groups={k}"):
            smi_by_measure(e, torch.tensor(codes), k, measure)


def test_the_one_copy_histogram_of_cuda_is_the_cpu_one() -> None:
    """The CUDA branch (range and size histogram in one read-back) run on CPU tensors: the same
    counts and histogram as the CPU branch, with empty groups too, and the same refusals."""
    from dra_kernels import measures

    gen = torch.Generator().manual_seed(3)
    for n, k in [(1, 1), (7, 3), (50, 60), (300, 17)]:
        codes = torch.randint(0, k, (n,), generator=gen)
        cpu = measures._size_histogram(codes, k)
        one_copy = measures._size_histogram_in_one_copy(codes, k)
        assert torch.equal(cpu[0], one_copy[0]) and cpu[1] == one_copy[1]
        assert sum(size * groups for size, groups in cpu[1]) == n
        assert sum(groups for _, groups in cpu[1]) == k
    for codes, k in [([0, 2, -3], 2), ([0, 5, 1], 2)]:
        for fn in (measures._size_histogram, measures._size_histogram_in_one_copy):
            with pytest.raises(ValueError, match=r"found values from -?\d+ to \d+"):
                fn(torch.tensor(codes), k)


@pytest.mark.parametrize("measure", OTHER)
def test_float64_result_from_float32_rows(measure: str) -> None:
    """``dtype=torch.float64`` (what the API asks for with float64 rewards) returns the float64
    computation itself, not its float32 rounding; float32 rows upcast exactly."""
    e, codes, k = ragged_problem(12, [5, 3, 9, 1, 2], 6, offset=1.0, dtype=torch.float32)
    got = smi_by_measure(e, codes, k, measure, dtype=torch.float64)
    assert got.dtype == torch.float64
    want = spec(e, codes, measure)
    assert_close(measure, got, want, tolerance(want, codes, 6, measure, 1.0, 1.0, torch.float64))
    rounded = smi_by_measure(e, codes, k, measure)
    assert rounded.dtype == torch.float32
    assert torch.equal(rounded, got.to(torch.float32))
    with pytest.raises(ValueError, match="dtype"):
        smi_by_measure(e, codes, k, measure, dtype=torch.float16)


@pytest.mark.parametrize("measure", OTHER)
def test_a_group_of_one_scores_zero_whatever_its_row_holds(measure: str) -> None:
    e = torch.randn(5, 3, dtype=torch.float64)
    e[0, 1] = math.nan  # alone in group 0
    e[3, 0] = math.inf  # in group 2, with row 4
    smi = smi_by_measure(e, torch.tensor([0, 1, 1, 2, 2]), 3, measure)
    assert smi[0] == 0.0 and torch.isfinite(smi[1:3]).all() and torch.isnan(smi[3:]).all()


@pytest.mark.parametrize("measure", OTHER)
def test_strided_and_expanded_rows_give_the_same_bits(measure: str) -> None:
    e, codes, k = ragged_problem(14, [4, 7, 2, 1, 5], 6, offset=1.0, dtype=torch.float32)
    base = smi_by_measure(e, codes, k, measure)
    wide = torch.zeros(e.shape[0], 2 * e.shape[1])
    wide[:, ::2] = e
    assert torch.equal(smi_by_measure(wide[:, ::2], codes, k, measure), base)
    transposed = e.t().contiguous().t()  # column-major
    assert torch.equal(smi_by_measure(transposed, codes, k, measure), base)
    row = e[:1].expand(6, -1)  # stride 0: six copies of one row in one group
    copies = smi_by_measure(row, torch.zeros(6, dtype=torch.int64), 1, measure)
    assert torch.equal(copies, smi_by_measure(row.contiguous(), torch.zeros(6, dtype=torch.int64),
                                              1, measure))  # fmt: skip


def test_graph_cut_is_the_torch_backend_bit_for_bit() -> None:
    for dtype in [torch.float16, torch.float32, torch.float64]:
        e, codes, k = ragged_problem(1, [3, 1, 8, 5], 6, offset=1.0, dtype=dtype)
        got = smi_by_measure(e, codes, k, "graph_cut")
        assert torch.equal(got, torch_backend.smi_scores(e, codes, k))


@pytest.mark.parametrize("measure", OTHER)
def test_chunks_change_nothing(measure: str) -> None:
    e, codes, k = ragged_problem(8, [9, 9, 9, 9, 9, 4, 4, 1], 5, offset=1.0)
    whole = smi_by_measure(e, codes, k, measure, **kw(measure, 0.9, 0.7))
    chunked = smi_by_measure(e, codes, k, measure, **kw(measure, 0.9, 0.7), chunk_elements=1)
    torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=1e-13)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="chunk_elements"):
            smi_by_measure(e, codes, k, measure, **kw(measure, 0.9, 0.7), chunk_elements=bad)


@pytest.mark.parametrize("measure", OTHER)
def test_empty_detached_and_input_untouched(measure: str) -> None:
    empty = smi_by_measure(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 0, measure)
    assert empty.shape == (0,) and empty.dtype == torch.float32
    e, codes, k = ragged_problem(6, [3, 4], 4, dtype=torch.float32)
    e.requires_grad_(True)
    before = e.detach().clone()
    smi = smi_by_measure(e, codes, k, measure)
    assert not smi.requires_grad
    assert torch.equal(e.detach(), before)


# ----------------------------------------------------------------------------- validation


def test_check_measure_accepts() -> None:
    assert check_measure("graph_cut") == ("graph_cut", 1.0, 1.0)
    assert check_measure("facility_location", 7, 1) == ("facility_location", 7.0, 1.0)
    assert check_measure("log_det", np.float32(0.5), 1e-6) == ("log_det", 0.5, 1e-6)


@pytest.mark.parametrize(
    ("args", "error", "names"),
    [
        (("cosine",), ValueError, "measure"),
        ((None,), ValueError, "measure"),
        (("graph_cut", 2.0), ValueError, "eta"),
        (("graph_cut", 1.0, 0.5), ValueError, "lam"),
        (("facility_location", 1.0, 2.0), ValueError, "lam"),
        (("facility_location", 0.0), ValueError, "eta"),
        (("facility_location", -1.0), ValueError, "eta"),
        (("facility_location", math.inf), ValueError, "eta"),
        (("facility_location", math.nan), ValueError, "eta"),
        (("log_det", 1.5), ValueError, "eta"),
        (("log_det", 0.0), ValueError, "eta"),
        (("log_det", 1.0, 0.0), ValueError, "lam"),
        (("log_det", 1.0, 1e-7), ValueError, "lam"),
        (("log_det", 1.0, -1.0), ValueError, "lam"),
        (("log_det", 1.0, math.inf), ValueError, "lam"),
        (("log_det", 1.0, math.nan), ValueError, "lam"),
        (("log_det", True), TypeError, "eta"),
        (("log_det", 1.0, "1"), TypeError, "lam"),
    ],
)
def test_check_measure_refuses(args, error, names) -> None:
    with pytest.raises(error, match=names):
        check_measure(*args)
    passed = dict(zip(["eta", "lam"], args[1:], strict=False))
    with pytest.raises(error, match=names):
        smi_by_measure(torch.ones(2, 2), torch.zeros(2, dtype=torch.int64), 1, args[0], **passed)


# ----------------------------------------------------------------------------- fuzzing


@st.composite
def problems(draw):
    """Ragged, unsorted groups (1 to 12 rows), rows with structure, a measure and parameters."""
    sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=6))
    codes = draw(st.permutations([k for k, s in enumerate(sizes) for _ in range(s)]))
    n, d = len(codes), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]))
    values = draw(st.lists(st.floats(-4, 4, width=32), min_size=n * d, max_size=n * d))
    e = np.array(values, dtype=np.float64).reshape(n, d)
    shift = np.array(draw(st.lists(st.floats(-3, 3), min_size=d, max_size=d)))
    e += shift
    exponents = {torch.float16: (-3, 3), torch.float64: (-200, 200)}.get(dtype, (-30, 30))
    for i in range(n):
        first = codes.index(codes[i])
        action = draw(st.sampled_from(["keep", "keep", "zero", "copy", "near", "negate", "scale"]))
        if action == "zero":
            e[i] = 0.0
        elif action == "copy" and first != i:
            e[i] = e[first] * draw(st.floats(0.5, 2.0))
        elif action == "near" and first != i:
            e[i] = e[first] + draw(st.floats(1e-3, 1e-1)) * np.ones(d)
        elif action == "negate" and first != i:
            e[i] = -e[first]
        elif action == "scale":
            e[i] *= 10.0 ** draw(st.integers(*exponents))
    measure = draw(st.sampled_from(OTHER))
    if measure == "facility_location":
        eta, lam = draw(st.sampled_from([1.0, 0.5, 0.1, 2.0, 30.0])), 1.0
    else:
        eta = draw(st.sampled_from([1.0, 1.0, 0.8, 0.3, 1e-3]))
        lam = draw(st.sampled_from([1.0, 0.1, 1e-2, 1e-6, 10.0, 1e4]))
    return torch.from_numpy(e).to(dtype), torch.tensor(codes), len(sizes), measure, eta, lam


@given(problems())
def test_fuzz_against_the_spec(problem) -> None:
    e, codes, k, measure, eta, lam = problem
    got = smi_by_measure(e, codes, k, measure, eta=eta, lam=lam)
    assert got.dtype == (torch.float64 if e.dtype == torch.float64 else torch.float32)
    want = spec(e, codes, measure, eta, lam)
    tol = tolerance(want, codes, e.shape[1], measure, eta, lam, e.dtype)
    assert_close(measure, got, want, tol)
    assert torch.isfinite(got).all()
    assert torch.all(got >= 0)


@given(problems(), st.randoms(use_true_random=False))
def test_fuzz_invariants(problem, rnd) -> None:
    e, codes, k, measure, eta, lam = problem
    base = smi_by_measure(e, codes, k, measure, eta=eta, lam=lam)
    n = codes.numel()
    perm = torch.tensor(rnd.sample(range(n), n))
    permuted = smi_by_measure(e[perm], codes[perm], k, measure, eta=eta, lam=lam)
    relabel = torch.tensor(rnd.sample(range(k), k))
    relabelled = smi_by_measure(e, relabel[codes], k, measure, eta=eta, lam=lam)
    out = 2.0**-52 if e.dtype == torch.float64 else 2.0**-23
    # Permuting rows within a group reorders the sums: a few rounding errors per row.
    bound = tolerance(base.double().numpy(), codes, e.shape[1], measure, eta, lam, e.dtype)
    tol = torch.as_tensor(bound) + 64 * out
    assert torch.all((permuted.double() - base[perm].double()).abs() <= tol[perm])
    assert torch.all((relabelled.double() - base.double()).abs() <= tol)
    sizes = torch.bincount(codes, minlength=k)[codes]
    assert torch.all(base[sizes == 1] == 0.0)
