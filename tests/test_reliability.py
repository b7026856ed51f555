"""Reliability: bad inputs fail clearly, extreme numerics and layouts give the right numbers.

Every guarantee in docs/guarantees.md points at a test here or in tests/test_fuzz.py. Large
layouts run on the torch backend and are checked against closed forms (rows along +-one-hot
directions, so ``1 + SMI_i = (#same direction) - (#opposite direction)`` in the group).

The 2**24-row case takes about 10 s and 2 GiB on 2 CPU cores, so it runs with the rest.
"""

from __future__ import annotations

import threading

import _hypothesis_profiles  # noqa: F401  (registers and loads the profile)
import numpy as np
import pytest
import torch

import dra_kernels as dk
from dra_kernels import _triton, reference

NAN = float("nan")
INF = float("inf")
BACKENDS = ["torch", "triton"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _backend(backend: str) -> str:
    """Tests here run on CPU tensors; Triton then needs the interpreter (set in conftest)."""
    if backend == "triton" and _triton.unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("triton cannot run on CPU tensors here (CUDA machine without interpreter)")
    return backend


def _small(seed: int = 0, n: int = 12, d: int = 4):
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(n, generator=gen)
    e = torch.randn(n, d, generator=gen)
    ids = torch.randint(0, 3, (n,), generator=gen)
    return r, e, ids


# ----------------------------------------------------------------------------- bad input

R3 = np.array([1.0, 2.0, 3.0])
E3 = np.arange(6.0).reshape(3, 2) + 1
IDS3 = [0, 0, 1]

BAD_CALLS = {
    # lengths and shapes
    "embeddings rows != rewards": (
        lambda: dk.adjust_rewards(R3, E3[:2], IDS3),
        ValueError,
        "embeddings has 2 rows",
    ),
    "group_ids length": (lambda: dk.adjust_rewards(R3, E3, [0, 1]), ValueError, "group_ids has 2"),
    "group_ids length (smi)": (lambda: dk.smi_scores(E3, [0]), ValueError, "group_ids has 1"),
    "group_ids length (adv)": (lambda: dk.group_advantages(R3, [0]), ValueError, "group_ids"),
    "rewards 2-D": (lambda: dk.adjust_rewards(E3, E3, IDS3), ValueError, "rewards must be 1-D"),
    "rewards 0-D": (lambda: dk.group_advantages(1.0, [0]), ValueError, "rewards must be 1-D"),
    "embeddings 1-D": (
        lambda: dk.adjust_rewards(R3, R3, IDS3),
        ValueError,
        "embeddings must be 2-D",
    ),
    "embeddings 3-D": (
        lambda: dk.smi_scores(np.zeros((3, 2, 2)), IDS3),
        ValueError,
        "embeddings must be 2-D",
    ),
    "D = 0": (lambda: dk.adjust_rewards(R3, np.zeros((3, 0)), IDS3), ValueError, "D >= 1"),
    "D = 0, N = 0": (lambda: dk.smi_scores(np.zeros((0, 0)), []), ValueError, "D >= 1"),
    "group_ids 2-D": (lambda: dk.smi_scores(E3, np.zeros((3, 1), int)), ValueError, "group_ids"),
    "group_ids 2-D tensor": (
        lambda: dk.smi_scores(E3, torch.zeros(3, 1, dtype=torch.int64)),
        ValueError,
        "group_ids",
    ),
    # dtypes
    "integer embeddings": (
        lambda: dk.adjust_rewards(R3, E3.astype(np.int64), IDS3),
        TypeError,
        "embeddings must be",
    ),
    "integer embeddings tensor": (
        lambda: dk.smi_scores(torch.ones(3, 2, dtype=torch.int32), IDS3),
        TypeError,
        "embeddings",
    ),
    "boolean rewards tensor": (
        lambda: dk.adjust_rewards(torch.ones(3, dtype=torch.bool), torch.ones(3, 2), IDS3),
        TypeError,
        "boolean",
    ),
    "boolean rewards list": (
        lambda: dk.group_advantages([True, False, True], IDS3),
        TypeError,
        "boolean",
    ),
    "complex rewards": (
        lambda: dk.group_advantages(torch.ones(3, dtype=torch.complex64), IDS3),
        TypeError,
        "rewards must be real",
    ),
    "string rewards": (lambda: dk.group_advantages(["1", "2", "3"], IDS3), TypeError, "rewards"),
    "object rewards": (
        lambda: dk.group_advantages(np.array([1.0, 2.0, 3.0], dtype=object), IDS3),
        TypeError,
        "rewards must hold real numbers",
    ),
    "longdouble rewards": (
        lambda: dk.group_advantages(R3.astype(np.longdouble), IDS3),
        TypeError,
        "rewards",
    ),
    "ragged embeddings": (
        lambda: dk.smi_scores([[1.0, 2.0], [1.0]], [0, 0]),
        TypeError,
        "embeddings",
    ),
    # kinds and devices
    "numpy rewards, torch embeddings": (
        lambda: dk.adjust_rewards(R3, torch.ones(3, 2), IDS3),
        TypeError,
        "embeddings is a torch",
    ),
    "torch rewards, list embeddings": (
        lambda: dk.adjust_rewards(torch.ones(3), E3.tolist(), IDS3),
        TypeError,
        "rewards is a torch",
    ),
    "rewards and embeddings on two devices": (
        lambda: dk.adjust_rewards(torch.ones(3), torch.ones(3, 2, device="meta"), IDS3),
        ValueError,
        "one device",
    ),
    "group_ids on another device": (
        lambda: dk.smi_scores(torch.ones(3, 2), torch.zeros(3, dtype=torch.int64, device="meta")),
        ValueError,
        "group_ids is on meta",
    ),
    # group ids of unsupported types
    "float group_ids array": (lambda: dk.smi_scores(E3, np.zeros(3)), TypeError, "group_ids"),
    "float group_ids tensor": (lambda: dk.smi_scores(E3, torch.zeros(3)), TypeError, "group_ids"),
    "bool group_ids": (lambda: dk.smi_scores(E3, [True, False, True]), TypeError, "group_ids"),
    "float in object group_ids": (
        lambda: dk.smi_scores(E3, np.array(["a", 1.5, "a"], dtype=object)),
        TypeError,
        "float",
    ),
    "NaN in object group_ids": (
        lambda: dk.smi_scores(E3, np.array(["a", NAN, "a"], dtype=object)),
        TypeError,
        "float",
    ),
    "True beside 1 in group_ids": (
        lambda: dk.smi_scores(E3, np.array([1, True, 0], dtype=object)),
        TypeError,
        "bool",
    ),
    "unhashable group_ids": (lambda: dk.smi_scores(E3, [[0], [0], [1]]), TypeError, "hashable"),
    "set group_ids": (lambda: dk.smi_scores(E3, {0, 1, 2}), TypeError, "ordered sequence"),
    "dict group_ids": (lambda: dk.smi_scores(E3, {0: 0, 1: 0, 2: 1}), TypeError, "ordered"),
    "string group_ids": (lambda: dk.smi_scores(E3, "aab"), TypeError, "group_ids"),
    "scalar group_ids": (lambda: dk.smi_scores(E3, 7), TypeError, "group_ids"),
    "generator group_ids": (lambda: dk.smi_scores(E3, iter(IDS3)), TypeError, "group_ids"),
    "0-d array group_ids": (lambda: dk.smi_scores(E3, np.array(3)), ValueError, "group_ids"),
    # options
    "unknown backend": (
        lambda: dk.adjust_rewards(R3, E3, IDS3, backend="cuda"),
        ValueError,
        "backend must be",
    ),
    "unknown backend, N = 0": (
        lambda: dk.smi_scores(np.zeros((0, 2)), [], backend="Torch"),
        ValueError,
        "backend",
    ),
    "unknown scale": (lambda: dk.group_advantages(R3, IDS3, scale="mean"), ValueError, "scale"),
    "unknown option": (lambda: dk.adjust_rewards(R3, E3, IDS3, eps=1e-4), TypeError, "eps"),
    "eps = 0 with std": (lambda: dk.group_advantages(R3, IDS3, eps=0.0), ValueError, "eps"),
    "eps < 0": (lambda: dk.group_advantages(R3, IDS3, scale="none", eps=-1.0), ValueError, "eps"),
    "eps NaN": (lambda: dk.dra_advantages(R3, E3, IDS3, eps=NAN), ValueError, "eps"),
    "eps string": (lambda: dk.group_advantages(R3, IDS3, eps="1e-4"), TypeError, "eps"),
    "min_denominator 0": (
        lambda: dk.adjust_rewards(R3, E3, IDS3, min_denominator=0.0),
        ValueError,
        "min_denom",
    ),
    "min_denominator > 1": (
        lambda: dk.adjust_rewards(R3, E3, IDS3, min_denominator=2.0),
        ValueError,
        "<= 1",
    ),
    "min_denominator inf": (
        lambda: dk.dra_advantages(R3, E3, IDS3, min_denominator=INF),
        ValueError,
        "min_denom",
    ),
    "min_denominator bool": (
        lambda: dk.adjust_rewards(R3, E3, IDS3, min_denominator=True),
        TypeError,
        "min_denom",
    ),
    "num_groups negative": (
        lambda: dk.adjust_rewards(R3, E3, IDS3, num_groups=-1),
        ValueError,
        "num_groups",
    ),
    "num_groups float": (
        lambda: dk.adjust_rewards(R3, E3, IDS3, num_groups=2.0),
        ValueError,
        "num_groups",
    ),
    "num_groups too small": (
        lambda: dk.adjust_rewards(R3, E3, IDS3, num_groups=1),
        ValueError,
        r"\[0, 1\)",
    ),
    "num_groups with negative ids": (
        lambda: dk.group_advantages(R3, [-1, 0, 0], num_groups=2),
        ValueError,
        "num_groups",
    ),
    "num_groups with string ids": (
        lambda: dk.adjust_rewards(R3, E3, ["a", "a", "b"], num_groups=2),
        ValueError,
        "num_groups",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_a_clear_error(case):
    call, exc, pattern = BAD_CALLS[case]
    with pytest.raises(exc, match=pattern):
        call()


def test_triton_backend_where_it_cannot_run_is_refused(monkeypatch):
    monkeypatch.setattr(_triton, "interpreter_enabled", lambda: False)
    with pytest.raises(RuntimeError, match="backend='triton' cannot run here"):
        dk.adjust_rewards(torch.ones(3), torch.ones(3, 2), IDS3, backend="triton")


# ----------------------------------------------------------------------------- accepted input


def test_awkward_numpy_layouts_give_the_plain_result():
    """Negative strides, non-native byte order, read-only and non-contiguous arrays."""
    rng = np.random.default_rng(0)
    r = rng.normal(size=9)
    e = rng.normal(size=(9, 3))
    ids = np.array([4, 1, 4, 1, 1, 7, 4, 7, 1])
    want = dk.adjust_rewards(r, e, ids)
    read_only = e.copy()
    read_only.flags.writeable = False
    variants = {
        "negative strides": (r[::-1].copy()[::-1], e[::-1].copy()[::-1], ids[::-1].copy()[::-1]),
        "big-endian": (r.astype(">f8"), e.astype(">f8"), ids.astype(">i8")),
        "read-only": (r, read_only, ids),
        "column slice": (r, np.concatenate([e, e], axis=1)[:, ::2], ids),
        "Fortran order": (r, np.asfortranarray(e), ids),
    }
    for name, (rv, ev, iv) in variants.items():
        got = dk.adjust_rewards(rv, ev, iv)
        assert got.dtype == np.float64 and np.allclose(got, want, rtol=1e-14, atol=0), name


def test_integer_rewards_are_accepted_and_converted_exactly():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    for rewards in (torch.tensor([2, 4, 5]), np.array([2, 4, 5], np.uint8), [2, 4, 5]):
        out = dk.adjust_rewards(
            rewards, e if isinstance(rewards, torch.Tensor) else e.numpy(), [*IDS3]
        )
        assert np.allclose(np.asarray(out), [2 / 2, 4 / 2, 5.0]), type(rewards)
    assert torch.equal(
        dk.group_advantages(torch.tensor([1, 3, 7]), IDS3, scale="none"),
        torch.tensor([-1.0, 1.0, 0.0]),
    )


def test_numpy_scalars_are_accepted_as_options():
    got = dk.adjust_rewards(R3, E3, IDS3, min_denominator=np.float32(0.5), num_groups=np.int64(2))
    assert np.array_equal(got, dk.adjust_rewards(R3, E3, IDS3, min_denominator=0.5))


@pytest.mark.parametrize(
    "ids",
    [
        (0, 0, 1),
        range(3),
        np.array(["u1", "u1", "u2"], dtype=object),
        np.array(["u1", "u1", "u2"]),
        np.array([2**64 - 1, 2**64 - 1, 0], dtype=np.uint64),
        [("p", 1), ("p", 1), ("p", 2)],
        [None, None, "x"],
    ],
    ids=["tuple", "range", "object-strings", "unicode", "uint64-max", "tuples", "None"],
)
def test_group_ids_may_be_any_sequence_even_with_torch_data(ids):
    r, e = torch.tensor(R3), torch.tensor(E3)
    pairs = [0, 0, 1] if not isinstance(ids, range) else [0, 1, 2]
    got = dk.adjust_rewards(r, e, ids)
    assert torch.equal(got, dk.adjust_rewards(r, e, torch.tensor(pairs)))


def test_int64_extreme_negative_and_string_ids_match_dense_codes():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 6, 40)
    r, e = rng.normal(size=40), rng.normal(size=(40, 5))
    want = dk.adjust_rewards(r, e, codes)
    extremes = np.array([-(2**63), 2**63 - 1, -1, 0, -(2**62), 2**62 + 1], dtype=np.int64)
    for labels in (
        extremes[codes],
        extremes[codes].tolist(),
        -7 - 3 * codes,
        [f"uid-{c}" for c in codes],
        torch.from_numpy(extremes[codes]),
    ):
        assert np.array_equal(dk.adjust_rewards(r, e, labels), want)
        assert np.array_equal(dk.dra_advantages(r, e, labels), dk.dra_advantages(r, e, codes))


# ----------------------------------------------------------------------------- N = 0


@pytest.mark.parametrize("kind", ["torch", "numpy", "list"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input_returns_an_empty_result_of_the_right_kind(kind, backend):
    backend = _backend(backend)
    if kind == "torch":
        r, e, ids = torch.zeros(0), torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64)
    elif kind == "numpy":
        r, e, ids = np.zeros(0, np.float32), np.zeros((0, 3), np.float32), np.zeros(0, int)
    else:
        r, e, ids = [], [], []
    outs = [
        dk.adjust_rewards(r, e, ids, backend=backend),
        dk.dra_advantages(r, e, ids, backend=backend),
        dk.group_advantages(r, ids),
        dk.smi_scores(e, ids, backend=backend),
    ]
    for out in outs:
        if kind == "torch":
            assert isinstance(out, torch.Tensor) and out.shape == (0,)
            assert out.dtype == torch.float32
        elif kind == "numpy":
            assert isinstance(out, np.ndarray) and out.shape == (0,) and out.dtype == np.float32
        else:
            assert out == []


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_vectors_keep_their_reward_and_do_not_count(backend):
    backend = _backend(backend)
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    r = torch.tensor([3.0, 4.0, 6.0, -5.0])
    out = dk.adjust_rewards(r, e, [0, 0, 0, 0], backend=backend)
    assert torch.equal(out, torch.tensor([3.0, 2.0, 3.0, -5.0]))
    assert torch.equal(
        dk.smi_scores(e, [0, 0, 0, 0], backend=backend), torch.tensor([0.0, 1.0, 1.0, 0.0])
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_extreme_magnitudes_normalise_correctly(backend, dtype):
    """Rows near the smallest / largest magnitudes of the dtype, subnormal ones and ones near the
    largest finite value included, give the result of unit rows."""
    backend = _backend(backend)
    directions = torch.tensor([[3.0, 4.0, 0.0], [3.0, 4.0, 0.0], [0.0, 4.0, 3.0], [-3.0, 0, 4.0]])
    tiny, huge = {
        torch.float16: (1e-4, 6e4 / 5),  # squared norms overflow float16 (max 65504)
        torch.bfloat16: (1e-30, 1e30),
        torch.float32: (1e-30, 1e30),
        torch.float64: (1e-300, 1e300),
    }[dtype]
    info = torch.finfo(dtype)
    # a subnormal of four units in the last place (3 and 4 times it are exact) and an eighth of
    # the largest finite value (the squared norm overflows any dtype)
    sub, top = info.tiny * info.eps * 4, info.max / 8
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    ids = [0, 0, 0, 0]
    cases = [[tiny] * 4, [huge] * 4, [tiny, huge, 1.0, huge], [sub] * 4, [sub, top, 1, sub]]
    if backend == "triton" and dtype == torch.bfloat16 and _triton.interpreter_enabled():
        # NOTE: Triton's CPU interpreter converts bfloat16 subnormals to float32 wrongly (a load
        # of 1.1e-39 then .to(tl.float32) gives 5.9e-39 under Triton 3.9); GPUs shift the bits.
        cases = cases[:3]
    for scales in cases:
        e = (directions * torch.tensor(scales, dtype=torch.float64)[:, None]).to(dtype)
        assert torch.isfinite(e).all() and (e != 0).any(dim=1).all(), "input not representable"
        # The float64 answer for the rows as stored (bfloat16 / float16 round the directions).
        unit = e.double() / e.double().abs().amax(1, keepdim=True)
        unit = unit / unit.norm(dim=1, keepdim=True)
        want = r.double() / (unit @ unit.sum(0)).clamp(min=0.1)
        got = dk.adjust_rewards(r, e, ids, backend=backend)
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        assert torch.allclose(got.double(), want, rtol=tol, atol=tol), (scales, got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_rows_whose_squared_norm_overflows(backend):
    backend = _backend(backend)
    e = torch.full((4, 64), 60000.0, dtype=torch.float16)
    e[2:, ::2] = -60000.0  # rows 2, 3 orthogonal to rows 0, 1
    assert torch.isinf((e[0] * e[0]).sum()), "the squared norm must overflow float16"
    out = dk.adjust_rewards(torch.ones(4), e, [0, 0, 0, 0], backend=backend)
    assert torch.allclose(out, torch.full((4,), 0.5), rtol=1e-6), out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("md", [0.1, 0.5, 1e-3, 1.0])
def test_non_positive_one_plus_smi_uses_the_clamp(backend, md):
    """u, -u, -u: 1 + SMI = -1 for u and 1 for each -u; u, -u: 1 + SMI = 0 for both."""
    backend = _backend(backend)
    u = torch.tensor([0.6, 0.8])
    r = torch.tensor([1.0, -2.0, 3.0, 5.0, -7.0])
    e = torch.stack([u, -u, -2 * u, 3 * u, -u])
    ids = [0, 0, 0, 1, 1]
    out = dk.adjust_rewards(r, e, ids, backend=backend, min_denominator=md)
    want = torch.tensor([1.0 / md, -2.0 / max(1.0, md), 3.0 / max(1.0, md), 5.0 / md, -7.0 / md])
    assert torch.isfinite(out).all()
    assert torch.allclose(out, want, rtol=1e-5, atol=1e-5), (out, want)
    assert (out.abs() <= r.abs() / md * (1 + 1e-6)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_embedding_poisons_only_its_group(backend):
    """A NaN / inf embedding makes every output of its group NaN (DRA cannot be computed there),
    never a finite wrong value; other groups are bitwise unchanged."""
    backend = _backend(backend)
    r, e, ids = _small(3)
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    clean = {
        f.__name__: f(r, e, ids, backend=backend) for f in (dk.adjust_rewards, dk.dra_advantages)
    }
    for bad in (NAN, INF, -INF):
        e_bad = e.clone()
        e_bad[4, 1] = bad
        for f in (dk.adjust_rewards, dk.dra_advantages):
            out = f(r, e_bad, ids, backend=backend)
            in_group = ids == 1
            assert out[in_group].isnan().all(), (f.__name__, bad, out)
            assert torch.equal(out[~in_group], clean[f.__name__][~in_group]), (f.__name__, bad)
        smi = dk.smi_scores(e_bad, ids, backend=backend)
        assert smi[ids == 1].isnan().all() and not smi[ids != 1].isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_reward_poisons_its_row_or_its_group_of_advantages(backend):
    backend = _backend(backend)
    r, e, ids = _small(4)
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    for bad in (NAN, INF):
        r_bad = r.clone()
        r_bad[7] = bad
        adj = dk.adjust_rewards(r_bad, e, ids, backend=backend)
        adj_clean = dk.adjust_rewards(r, e, ids, backend=backend)
        rest = torch.arange(12) != 7
        assert torch.equal(adj[rest], adj_clean[rest])
        assert adj[7].isnan() if bad != bad else adj[7].isinf()
        adv = dk.dra_advantages(r_bad, e, ids, backend=backend)
        assert adv[ids == 2].isnan().all()
        others = ids != 2
        assert torch.equal(adv[others], dk.dra_advantages(r, e, ids, backend=backend)[others])
    gadv = dk.group_advantages(torch.tensor([1.0, NAN, 2.0, 3.0]), [0, 0, 1, 1])
    assert gadv[:2].isnan().all() and torch.isfinite(gadv[2:]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_alone_in_its_group_keeps_its_reward_whatever_its_embedding(backend):
    """SMI is a sum over the *other* rows of the group: a group of one never reads its row."""
    backend = _backend(backend)
    e = torch.tensor([[NAN, 1.0], [INF, 0.0], [1.0, 1.0]])
    out = dk.adjust_rewards(torch.tensor([1.0, 2.0, 3.0]), e, [0, 1, 2], backend=backend)
    assert torch.equal(out, torch.tensor([1.0, 2.0, 3.0]))


# ----------------------------------------------------------------------------- large layouts


def _signed_one_hot_problem(gen: np.random.Generator, ids: np.ndarray, d: int, dtype=np.float32):
    """Rows along +-e_k (random positive scale; some zero rows) and the closed-form answer.

    In a group, ``1 + SMI_i = (#rows along u_i) - (#rows along -u_i)`` for a non-zero row and
    ``1`` for a zero row, so ``adjusted_i = r_i / max(that, 0.1)``.
    """
    n = ids.shape[0]
    axis = gen.integers(0, d, n)
    sign = np.where(gen.random(n) < 0.8, 1.0, -1.0)
    sign[gen.random(n) < 0.05] = 0.0  # zero rows
    e = np.zeros((n, d), dtype=dtype)
    e[np.arange(n), axis] = (sign * gen.uniform(0.5, 2.0, n)).astype(dtype)
    _, codes = np.unique(ids, return_inverse=True)
    k = int(codes.max()) + 1
    cell = (codes * d + axis) * 3  # counts[group, axis, sign -1 / 0 / +1], flattened
    counts = np.bincount(cell + (sign + 1).astype(np.int64), minlength=k * d * 3)
    same = counts[cell + (sign + 1).astype(np.int64)]
    opposite = counts[cell + (1 - sign).astype(np.int64)]
    one_plus_smi = np.where(sign == 0, 1, same - opposite).astype(np.float64)
    r = gen.normal(size=n).astype(dtype)
    want = r.astype(np.float64) / np.maximum(one_plus_smi, 0.1)
    return r, e, want, one_plus_smi


def _assert_closed_form(got, want, atol=2e-6):
    got = np.asarray(got, dtype=np.float64)
    err = np.abs(got - want)
    worst = int(np.argmax(err))
    assert err[worst] <= atol + 1e-6 * abs(want[worst]), (
        f"row {worst}: got {got[worst]!r}, want {want[worst]!r}"
    )


def test_one_group_of_100000_rows():
    gen = np.random.default_rng(10)
    ids = np.zeros(100_000, np.int64)
    r, e, want, _ = _signed_one_hot_problem(gen, ids, d=8)
    _assert_closed_form(dk.adjust_rewards(r, e, ids, backend="torch"), want)


def test_1000000_groups_of_one_row():
    gen = np.random.default_rng(11)
    n = 1_000_000
    ids = gen.permutation(n).astype(np.int64) * 9_000_000_000_000 - 2**62  # big, unsorted
    r = torch.from_numpy(gen.normal(size=n).astype(np.float32))
    e = torch.from_numpy(gen.normal(size=(n, 4)).astype(np.float32))
    assert torch.equal(dk.adjust_rewards(r, e, ids, backend="torch"), r)
    assert torch.equal(dk.smi_scores(e, ids, backend="torch"), torch.zeros(n))
    assert torch.equal(dk.group_advantages(r, ids), torch.zeros(n))


def test_one_huge_group_beside_many_small_ones():
    gen = np.random.default_rng(12)
    ids = np.concatenate([np.full(100_000, -5), np.repeat(np.arange(10_000), 8)])
    ids = ids[gen.permutation(ids.shape[0])]
    r, e, want, _ = _signed_one_hot_problem(gen, ids, d=16)
    _assert_closed_form(dk.adjust_rewards(r, e, ids, backend="torch"), want)


def test_2_pow_24_rows_on_cpu():
    """2**24 rows (D = 4, about 2 million unsorted groups of ~8): no N x N, no padding."""
    gen = np.random.default_rng(13)
    n = 2**24
    ids = gen.integers(0, 2**21, n)
    r, e, want, _ = _signed_one_hot_problem(gen, ids, d=4)
    _assert_closed_form(dk.adjust_rewards(torch.from_numpy(r), torch.from_numpy(e), ids), want)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_calls_are_bitwise_equal(backend):
    backend = _backend(backend)
    n = 50_000 if backend == "torch" else 40
    gen = torch.Generator().manual_seed(5)
    r, e = torch.randn(n, generator=gen), torch.randn(n, 32, generator=gen)
    ids = torch.randint(0, max(1, n // 7), (n,), generator=gen)
    for f in (dk.adjust_rewards, dk.dra_advantages):
        first = f(r, e, ids, backend=backend)
        for _ in range(2):
            assert torch.equal(f(r, e, ids, backend=backend), first), f.__name__
    first = dk.smi_scores(e, ids, backend=backend)
    assert torch.equal(dk.smi_scores(e, ids, backend=backend), first)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_calls_match_sequential_calls(backend):
    backend = _backend(backend)
    n = 20_000 if backend == "torch" else 24
    problems = [_small(seed, n=n, d=16) for seed in range(6)]
    sequential = [dk.dra_advantages(*p, backend=backend) for p in problems]
    results: dict[int, list[torch.Tensor]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(problems))

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = [dk.dra_advantages(*problems[i], backend=backend) for _ in range(3)]
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, want in enumerate(sequential):
        assert all(torch.equal(got, want) for got in results[i]), f"thread {i}"


# ----------------------------------------------------------------------------- no mutation


def _inputs(kind: str):
    gen = np.random.default_rng(7)
    r, e = gen.normal(size=10).astype(np.float32), gen.normal(size=(10, 3)).astype(np.float32)
    e[3] = 0.0
    ids = np.array(["a", "b"] * 5, dtype=object)
    if kind == "torch":
        return torch.from_numpy(r), torch.from_numpy(e), torch.tensor([0, 1] * 5)
    if kind == "numpy":
        return r, e, ids
    return r.tolist(), e.tolist(), ids.tolist()


def _copy(x):
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x.copy() if isinstance(x, np.ndarray) else x.clone()
    return [list(v) if isinstance(v, list) else v for v in x]


def _shares_memory(out, x) -> bool:
    if isinstance(out, torch.Tensor) and isinstance(x, torch.Tensor):
        return out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    if isinstance(out, np.ndarray) and isinstance(x, np.ndarray):
        return np.shares_memory(out, x)
    return False


@pytest.mark.parametrize("kind", ["torch", "numpy", "list"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_are_never_modified_and_outputs_never_alias_them(kind, backend):
    backend = _backend(backend)
    r, e, ids = _inputs(kind)
    calls = {
        "adjust_rewards": lambda: dk.adjust_rewards(r, e, ids, backend=backend),
        "dra_advantages": lambda: dk.dra_advantages(r, e, ids, backend=backend, scale="none"),
        "group_advantages": lambda: dk.group_advantages(r, ids, scale="none"),
        "group_advantages std": lambda: dk.group_advantages(r, ids),
        "smi_scores": lambda: dk.smi_scores(e, ids, backend=backend),
    }
    before = [_copy(x) for x in (r, e, ids)]
    for name, call in calls.items():
        out = call()
        for x, b in zip((r, e, ids), before, strict=True):
            same = (
                torch.equal(x, b)
                if isinstance(x, torch.Tensor)
                else (np.array_equal(x, b) if isinstance(x, np.ndarray) else x == b)
            )
            assert same, f"{name} modified an input"
            assert not _shares_memory(out, x), f"{name} returned memory of an input"
        # Writing to the output must not reach the inputs either.
        if isinstance(out, (torch.Tensor, np.ndarray)):
            out[:] = NAN
            assert not (np.isnan(np.asarray(r, dtype=np.float64))).any(), name


# ----------------------------------------------------------------------------- GPU


@needs_cuda
@pytest.mark.gpu
def test_no_host_synchronisation_on_cuda_with_a_group_count_hint():
    """With integer CUDA ids and ``num_groups``, no call synchronises with the host, NaN
    policy included (non-finite values are never inspected on the host)."""
    dev = torch.device("cuda")
    r, e, ids = (x.to(dev) for x in _small(8, n=64))
    e[5, 0] = NAN
    for f in (dk.adjust_rewards, dk.dra_advantages):
        f(r, e, ids, num_groups=3)  # warm up (compilation may synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for backend in ("torch", "triton", "auto"):
            for f in (dk.adjust_rewards, dk.dra_advantages):
                f(r, e, ids, num_groups=3, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------- tensor kinds


def _nested(t: torch.Tensor, layout: torch.layout) -> torch.Tensor:
    return torch.nested.nested_tensor([t[:2], t[2:]], layout=layout)


# Every tensor kind that is not plain strided memory, as a function of a plain tensor (None
# where the kind cannot hold that tensor, e.g. CSR needs 2-D, mkldnn floats).
TENSOR_KINDS = {
    "sparse_coo": lambda t: t.to_sparse(),
    "sparse_csr": lambda t: t.to_sparse_csr() if t.ndim == 2 else None,
    "sparse_csc": lambda t: t.to_sparse_csc() if t.ndim == 2 else None,
    "sparse_bsr": lambda t: t.to_sparse_bsr((2, 1)) if t.ndim == 2 else None,
    "sparse_bsc": lambda t: t.to_sparse_bsc((2, 1)) if t.ndim == 2 else None,
    "mkldnn": lambda t: t.to_mkldnn() if t.dtype == torch.float32 else None,
    "nested strided": lambda t: _nested(t, torch.strided),
    "nested jagged": lambda t: _nested(t, torch.jagged) if t.is_floating_point() else None,
    "quantized": lambda t: (
        torch.quantize_per_tensor(t, 0.1, 0, torch.qint8) if t.is_floating_point() else None
    ),
    "complex": lambda t: t.to(torch.complex64),
    "meta": lambda t: t.to("meta"),
}


def _kind_calls(arg: str, bad: torch.Tensor, backend: str):
    """Every public function taking ``arg``, with ``bad`` in its place (the other arguments on
    its device, so that the kind of ``bad`` is the only thing wrong)."""
    from dra_kernels import distributed

    dev = bad.device
    if dev.type == "meta":
        # Only the argument itself on meta: with other tensors elsewhere the device check
        # answers first (ValueError, tensors on two devices).
        return {
            "rewards": {"group_advantages": lambda: dk.group_advantages(bad, [0, 0, 1, 1])},
            "embeddings": {
                "smi_scores": lambda: dk.smi_scores(bad, [0, 0, 1, 1], backend=backend),
                "distributed.smi_scores": lambda: distributed.smi_scores(bad, [0, 0, 1, 1]),
            },
            "group_ids": {
                "factorize_group_ids": lambda: dk.factorize_group_ids(bad, 4, device=dev),
                "distributed.global_group_codes": lambda: distributed.global_group_codes(
                    bad, device=dev
                ),
            },
        }[arg]
    args = {"rewards": torch.randn(4), "embeddings": torch.randn(4, 3), "group_ids": [0, 0, 1, 1]}
    args[arg] = bad
    r, e, ids = args["rewards"], args["embeddings"], args["group_ids"]
    calls = {
        "adjust_rewards": lambda: dk.adjust_rewards(r, e, ids, backend=backend),
        "dra_advantages": lambda: dk.dra_advantages(r, e, ids, backend=backend),
        "distributed.adjust_rewards": lambda: distributed.adjust_rewards(r, e, ids),
        "distributed.dra_advantages": lambda: distributed.dra_advantages(r, e, ids),
    }
    if arg != "rewards":
        calls["smi_scores"] = lambda: dk.smi_scores(e, ids, backend=backend)
        calls["distributed.smi_scores"] = lambda: distributed.smi_scores(e, ids)
    if arg != "embeddings":
        calls["group_advantages"] = lambda: dk.group_advantages(r, ids)
    if arg == "group_ids":
        calls["factorize_group_ids"] = lambda: dk.factorize_group_ids(ids, 4, device=dev)
        calls["distributed.global_group_codes"] = lambda: distributed.global_group_codes(
            ids, device=dev
        )
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(TENSOR_KINDS))
@pytest.mark.parametrize("arg", ["embeddings", "rewards", "group_ids"])
def test_tensor_kinds_torch_cannot_normalise_raise_a_type_error(arg, kind, backend):
    backend = _backend(backend)
    plain = {
        "embeddings": torch.randn(4, 3),
        "rewards": torch.randn(4),
        "group_ids": torch.tensor([0, 0, 1, 1]),
    }[arg]
    bad = TENSOR_KINDS[kind](plain)
    if bad is None:
        pytest.skip(f"a {kind} tensor cannot hold {arg}")
    for name, call in _kind_calls(arg, bad, backend).items():
        with pytest.raises(TypeError, match=rf"^{arg} ") as info:
            call()
        assert kind.split("_")[0].split()[0] in str(info.value), (name, info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_bit_views_give_the_plain_result(backend):
    """``x.conj().imag`` is a real tensor whose memory holds -x.imag: read as its values."""
    backend = _backend(backend)
    r, e, ids = _small(9)
    c = torch.complex(torch.zeros_like(r), -r)
    neg_r = c.conj().imag
    neg_e = torch.complex(torch.zeros_like(e), -e).conj().imag
    neg_ids = torch._neg_view(-ids)
    assert neg_r.is_neg() and neg_e.is_neg() and neg_ids.is_neg()
    assert torch.equal(neg_r, r) and torch.equal(neg_ids, ids)
    for f in (dk.adjust_rewards, dk.dra_advantages):
        want = f(r, e, ids, backend=backend)
        assert torch.equal(f(neg_r, neg_e, neg_ids, backend=backend), want), f.__name__
        assert torch.equal(f(neg_r, e, neg_ids, backend=backend, num_groups=3), want)
    assert torch.equal(dk.group_advantages(neg_r, neg_ids), dk.group_advantages(r, ids))
    assert torch.equal(
        dk.smi_scores(neg_e, neg_ids, backend=backend), dk.smi_scores(e, ids, backend=backend)
    )


# ----------------------------------------------------------------------------- gradients


def _trainable_embeddings(source: str, n: int, d: int) -> tuple[torch.Tensor, list]:
    """Embeddings that require grad, as training produces them, and the leaves behind them."""
    from dra_kernels.embed import pool_hidden_states

    gen = torch.Generator().manual_seed(21)
    if source == "parameter":
        p = torch.nn.Parameter(torch.randn(n, d, generator=gen))
        return p, [p]
    if source == "linear":
        layer = torch.nn.Linear(5, d)
        return layer(torch.randn(n, 5, generator=gen)), list(layer.parameters())
    hidden = torch.randn(n, 6, d, generator=gen, requires_grad=True)
    mask = torch.ones(n, 6, dtype=torch.bool)
    mask[:, 4:] = False
    return pool_hidden_states(hidden, mask), [hidden]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("source", ["parameter", "linear", "pooled"])
def test_embeddings_that_require_grad_are_used_as_constants(source, backend):
    backend = _backend(backend)
    e, leaves = _trainable_embeddings(source, 12, 4)
    assert e.requires_grad
    r, _, ids = _small(6, n=12)
    plain = {
        "smi": dk.smi_scores(e.detach(), ids, backend=backend),
        "adjust": dk.adjust_rewards(r, e.detach(), ids, backend=backend),
        "adv": dk.dra_advantages(r, e.detach(), ids, backend=backend),
    }
    smi = dk.smi_scores(e, ids, backend=backend)
    adjusted = dk.adjust_rewards(r, e, ids, backend=backend)
    adv = dk.dra_advantages(r, e, ids, backend=backend)
    for name, out in (("smi", smi), ("adjust", adjusted), ("adv", adv)):
        assert not out.requires_grad, name  # no graph reaches the embeddings
        assert torch.equal(out, plain[name]), name
    # with rewards that require grad, backward reaches the rewards and never the embeddings
    rg = r.clone().requires_grad_()
    (
        dk.adjust_rewards(rg, e, ids, backend=backend).sum()
        + dk.dra_advantages(rg, e, ids, backend=backend).pow(2).sum()
    ).backward()
    assert rg.grad is not None and torch.isfinite(rg.grad).all()
    assert all(leaf.grad is None for leaf in leaves), source


def _analytic_advantage_jacobian(x: np.ndarray, ids: list, scale: str, eps: float) -> np.ndarray:
    """d A_i / d x_j of group advantages, in closed form (float64)."""
    n = len(x)
    jac = np.zeros((n, n))
    ids = np.asarray(ids)
    for g in np.unique(ids):
        rows = np.flatnonzero(ids == g)
        m = len(rows)
        block = np.eye(m) - 1.0 / m
        if scale == "std":
            if m == 1:
                block = np.zeros((1, 1))
            else:
                c = x[rows] - x[rows].mean()
                s = np.sqrt((c * c).sum() / (m - 1))
                block = block / (s + eps) - np.outer(c, c) / ((s + eps) ** 2 * (m - 1) * s)
        jac[np.ix_(rows, rows)] = block
    return jac


def _oracle_factor(e: torch.Tensor, ids: list, md: float) -> np.ndarray:
    """``1 / max(1 + SMI, md)`` from the spec (:mod:`dra_kernels.reference`) in float64."""
    smi = reference.smi_scores(e.double(), torch.tensor(ids))
    return (1.0 / torch.clamp(1.0 + smi, min=md)).numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_through_rewards_are_the_analytic_factor(backend, dtype):
    """d adjusted_i / d r_i = 1 / max(1 + SMI_i, m) (DRA factors are constants), and the
    advantages' Jacobians are the closed-form ones, times that factor for dra_advantages."""
    backend = _backend(backend)
    gen = torch.Generator().manual_seed(8)
    ids = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3]
    n = len(ids)
    e = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    e[3] = -e[4]  # 1 + SMI = 0 for rows 3 and 4: the clamp's factor 1 / md
    e = e.to(dtype).requires_grad_()
    r = torch.randn(n, generator=gen, dtype=dtype, requires_grad=True)
    w = torch.randn(n, generator=gen, dtype=dtype)
    md = 0.25
    factor = _oracle_factor(e.detach(), ids, md)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 0}

    out = dk.adjust_rewards(r, e, ids, backend=backend, min_denominator=md)
    (grad,) = torch.autograd.grad((out * w).sum(), r)
    np.testing.assert_allclose(grad.double().numpy(), w.double().numpy() * factor, **tol)
    assert grad[3] == w[3] / md and grad[5] == w[5]  # the clamp; a group of one row

    x = r.detach().double().numpy()
    for scale in ("std", "none"):
        eps = 1e-4 if scale == "std" else 0.0
        jac = torch.autograd.functional.jacobian(
            lambda v, scale=scale, eps=eps: dk.group_advantages(v, ids, scale=scale, eps=eps), r
        )
        want = _analytic_advantage_jacobian(x, ids, scale, eps)
        np.testing.assert_allclose(jac.double().numpy(), want, **tol)
        jac = torch.autograd.functional.jacobian(
            lambda v, scale=scale, eps=eps: dk.dra_advantages(
                v, e, ids, backend=backend, scale=scale, eps=eps, min_denominator=md
            ),
            r,
        )
        want = _analytic_advantage_jacobian(x * factor, ids, scale, eps) * factor[None, :]
        np.testing.assert_allclose(jac.double().numpy(), want, **tol)
    assert e.grad is None

    # A group of equal rewards (std 0): the limit (I - 1/n) / eps, not NaN.
    equal = torch.tensor([2.0, 2.0, 2.0, 1.0, 3.0], dtype=dtype, requires_grad=True)
    jac = torch.autograd.functional.jacobian(
        lambda v: dk.group_advantages(v, [0, 0, 0, 1, 1]), equal
    )
    want = np.zeros((5, 5))
    want[:3, :3] = (np.eye(3) - 1 / 3) / 1e-4
    want[3:, 3:] = _analytic_advantage_jacobian(np.array([1.0, 3.0]), [1, 1], "std", 1e-4)
    np.testing.assert_allclose(jac.double().numpy(), want, **tol)

    # Without grad mode nothing is recorded (the fused kernel runs on the Triton backend).
    with torch.no_grad():
        assert not dk.dra_advantages(r, e, ids, backend=backend).requires_grad
    # The values with grad equal the values without, to rounding.
    with_grad = dk.dra_advantages(r, e, ids, backend=backend)
    without = dk.dra_advantages(r.detach(), e.detach(), ids, backend=backend)
    torch.testing.assert_close(with_grad.detach(), without, **tol)


@needs_cuda
@pytest.mark.gpu
def test_cuda_calls_follow_the_gradient_and_tensor_kind_rules():
    """The CUDA fast path (tensors, integer ids, ``num_groups``) steps aside for rewards that
    require grad, sparse tensors and negative-bit views, so the rules hold there too."""
    dev = torch.device("cuda")
    r, e, ids = (x.to(dev) for x in _small(12, n=64, d=8))
    grads = {}
    for backend in ("torch", "triton"):
        rg = r.clone().requires_grad_()
        eg = e.clone().requires_grad_()
        out = dk.dra_advantages(rg, eg, ids, num_groups=3, backend=backend)
        (grads[backend],) = torch.autograd.grad(out.pow(2).sum(), rg)
        assert eg.grad is None
    torch.testing.assert_close(grads["triton"], grads["torch"], rtol=1e-4, atol=1e-5)
    for bad, arg in ((e.to_sparse(), "embeddings"), (r.to_sparse(), "rewards")):
        args = {"rewards": r, "embeddings": e, arg: bad}
        with pytest.raises(TypeError, match=rf"^{arg} must be a dense"):
            dk.adjust_rewards(args["rewards"], args["embeddings"], ids, num_groups=3)
    neg_r = torch.complex(torch.zeros_like(r), -r).conj().imag
    neg_ids = torch._neg_view(-ids)
    want = dk.adjust_rewards(r, e, ids, num_groups=3)
    assert torch.equal(dk.adjust_rewards(neg_r, e, neg_ids, num_groups=3), want)


FUNC_LAYOUTS = {
    "equal contiguous": [0, 0, 0, 1, 1, 1, 2, 2, 2],
    "ragged unsorted": [2, 0, 1, 0, 2, 2, 1, 0, 3],
    "singletons": list(range(9)),
}


@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
@pytest.mark.parametrize("layout", sorted(FUNC_LAYOUTS))
@pytest.mark.parametrize(
    "call",
    ["adjust", "adjust facility_location", "dra_advantages std", "dra_advantages none", "group"],
)
def test_torch_func_transforms_through_rewards_agree_with_autograd(backend, layout, call):
    """torch.func's grad, jacrev, jacfwd and vmap through the rewards give autograd's Jacobian
    and the plain results, on every layout, with backend 'auto' (which computes with torch there)
    and 'torch' (the CPU path once asked a transformed tensor for its data pointer on any layout
    but equal contiguous groups); backend='triton' refuses the transforms, naming them."""
    if backend == "triton":
        _backend(backend)
        e, r = torch.randn(6, 3), torch.rand(6)
        for transform, run in (
            ("grad / jacrev", lambda f: torch.func.jacrev(f)(r)),
            ("jacfwd / jvp", lambda f: torch.func.jacfwd(f)(r)),
            ("vmap", lambda f: torch.func.vmap(f)(torch.stack([r, r]))),
        ):
            with pytest.raises(ValueError, match=f"inside torch.func's {transform}"):
                run(lambda x: dk.adjust_rewards(x, e, [0, 0, 1, 1, 2, 2], backend="triton"))
        return
    backend = _backend(backend)
    from torch.func import grad, jacfwd, jacrev, vmap

    ids = torch.tensor(FUNC_LAYOUTS[layout])
    gen = torch.Generator().manual_seed(31)
    e = torch.randn(len(ids), 5, generator=gen, dtype=torch.float64)
    r = torch.randn(len(ids), generator=gen, dtype=torch.float64)
    name, _, option = call.partition(" ")

    def f(x):
        if name == "adjust":
            measure = {"measure": option} if option else {}
            return dk.adjust_rewards(x, e, ids, backend=backend, **measure)
        if name == "dra_advantages":
            return dk.dra_advantages(x, e, ids, backend=backend, scale=option)
        return dk.group_advantages(x, ids)

    want = torch.autograd.functional.jacobian(f, r)
    tol = {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(jacrev(f)(r), want, **tol)
    torch.testing.assert_close(jacfwd(f)(r), want, **tol)
    torch.testing.assert_close(grad(lambda x: f(x).sum())(r), want.sum(dim=0), **tol)
    batch = torch.stack([r, 2 * r, r - 1])
    torch.testing.assert_close(vmap(f)(batch), torch.stack([f(row) for row in batch]), **tol)


@pytest.mark.parametrize("hint", [7, 2**40, 10**15])
def test_memory_follows_the_rows_not_a_num_groups_hint(hint):
    """A num_groups hint far above the rows (groups without rows) allocates for the groups that
    occur, not for the hint: the results are those without the hint, for every function and
    measure (2**40 once asked the allocator for 8.8 TB)."""
    gen = torch.Generator().manual_seed(3)
    e, r = torch.randn(6, 3, generator=gen), torch.rand(6, generator=gen)
    ids = torch.tensor([0, 0, 5, 5, 6, 6])
    for measure in ("graph_cut", "facility_location", "log_det"):
        kw = {"measure": measure}
        torch.testing.assert_close(
            dk.smi_scores(e, ids, num_groups=hint, **kw), dk.smi_scores(e, ids, **kw)
        )
        torch.testing.assert_close(
            dk.adjust_rewards(r, e, ids, num_groups=hint, **kw), dk.adjust_rewards(r, e, ids, **kw)
        )
        torch.testing.assert_close(
            dk.dra_advantages(r, e, ids, num_groups=hint, **kw), dk.dra_advantages(r, e, ids, **kw)
        )
    torch.testing.assert_close(
        dk.group_advantages(r, ids, num_groups=hint), dk.group_advantages(r, ids)
    )
