"""Property-based fuzzing of the public functions against the spec in float64.

The oracle is :mod:`dra_kernels.reference`, written from the definition (the full cosine matrix
of each group, summed off the diagonal), not from the linear-time identity that the backends use.
Every example also checks invariants that hold whatever the numbers: output kind,
dtype and shape, finiteness, the ``1 / min_denominator`` amplification bound, NaN positions, and
unchanged inputs.

Profiles (see ``tests/_hypothesis_profiles.py``): ``ci`` by default, ``HYPOTHESIS_PROFILE=local``
for 2,500 examples per property.
"""

from __future__ import annotations

import math

import _hypothesis_profiles  # noqa: F401  (registers and loads the profile)
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dra_kernels as dk
from dra_kernels import reference

MIN_DENOMINATOR = 0.1
EPS = 1e-4
BACKENDS = ["torch", "triton"]

# ----------------------------------------------------------------------------- the spec


def _groups(ids: list) -> dict:
    groups: dict = {}
    for i, g in enumerate(ids):
        groups.setdefault(g, []).append(i)
    return {g: np.array(rows) for g, rows in groups.items()}


def _codes(ids: list) -> torch.Tensor:
    """One integer per distinct label, for the spec."""
    codes: dict = {}
    return torch.tensor([codes.setdefault(g, len(codes)) for g in ids], dtype=torch.int64)


def spec_smi(e: np.ndarray, ids: list) -> np.ndarray:
    """The spec's SMI (:func:`dra_kernels.reference.smi_scores`) in float64."""
    return reference.smi_scores(torch.from_numpy(e), _codes(ids)).numpy()


def spec_adjust(r: np.ndarray, e: np.ndarray, ids: list, md: float) -> np.ndarray:
    smi = reference.smi_scores(torch.from_numpy(e), _codes(ids))
    return reference.adjust_from_smi(torch.from_numpy(r), smi, md).numpy()


def spec_advantages(r: np.ndarray, ids: list, scale: str, eps: float) -> np.ndarray:
    return reference.group_advantages(torch.from_numpy(r), _codes(ids), scale, eps).numpy()


# ----------------------------------------------------------------------------- tolerances


def _unit_roundoff(*dtypes: torch.dtype) -> float:
    """Round-off of the computation dtype: float64 if any input is float64, else float32."""
    return 2.0**-52 if torch.float64 in dtypes else 2.0**-23


def smi_tolerance(c: float, ids: list, d: int) -> np.ndarray:
    sizes = {g: len(rows) for g, rows in _groups(ids).items()}
    return np.array([16.0 * c * sizes[g] * (d + 2) for g in ids])


@np.errstate(all="ignore")
def adjust_tolerance(r: np.ndarray, smi_o: np.ndarray, smi_tol: np.ndarray, md: float, c: float):
    """``d adjusted / d SMI = -r / den^2`` with ``den >= md``, plus final rounding."""
    den = np.maximum(1.0 + smi_o, md)
    adj = r / den
    return np.abs(r) * smi_tol / (den * np.maximum(den - smi_tol, md)) + 8 * c * np.abs(adj)


def advantage_tolerance(x: np.ndarray, x_tol: np.ndarray, ids: list, scale: str, eps: float, c):
    """Error of the advantages of values ``x`` known to within ``x_tol`` (per row)."""
    tol = np.zeros(len(x))
    for rows in _groups(ids).values():
        v = x[rows]
        err = np.max(x_tol[rows]) + 4 * c * len(v) * np.max(np.abs(v))
        if scale == "none":
            tol[rows] = 2 * err
        else:
            std = v.std(ddof=1) if len(v) > 1 else 0.0
            adv = (v - v.mean()) / (std + eps)
            tol[rows] = 4 * err * (1 + np.abs(adv)) / (std + eps) + 8 * c * np.abs(adv)
    return tol


def assert_close(name: str, got: np.ndarray, want: np.ndarray, tol: np.ndarray) -> None:
    """NaN positions identical, +-inf identical, finite values within ``tol`` (verbose)."""
    got = np.asarray(got, dtype=np.float64)
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    assert np.array_equal(nan_g, nan_w), (
        f"{name}: NaN at rows {np.flatnonzero(nan_g)}, expected at {np.flatnonzero(nan_w)}"
    )
    both = ~nan_w
    assert np.array_equal(np.isinf(got[both]), np.isinf(want[both])), f"{name}: inf mismatch"
    finite = both & np.isfinite(want)
    err = np.abs(got[finite] - want[finite])
    # Absolute floor: float32 subnormals (rewards near 1e-45) carry no relative precision.
    bad = np.flatnonzero(err > tol[finite] + 8 * np.finfo(np.float32).tiny)
    assert bad.size == 0, f"{name}: {bad.size} of {finite.sum()} rows off; worst rows " + ", ".join(
        f"[{i}] got {got[finite][i]!r} want {want[finite][i]!r} tol {tol[finite][i]:.3g}"
        for i in bad[np.argsort(-err[bad])][:5]
    )


# ----------------------------------------------------------------------------- strategies

EMBEDDING_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# Row magnitudes that each dtype represents without overflow (float16 tops out at 65504).
SCALE_EXPONENTS = {
    torch.float16: (-3, 3),
    torch.bfloat16: (-30, 30),
    torch.float32: (-30, 30),
    torch.float64: (-150, 150),
}


def _label_maker(style: str):
    return {
        "small": lambda k: k,
        "negative": lambda k: -3 * k - 1,
        "extreme": lambda k: 2**63 - 1 - k // 2 if k % 2 else -(2**63) + k // 2,
        "string": lambda k: f"uid-{k:04d}",
        "tuple": lambda k: ("prompt", k),
    }[style]


@st.composite
def dra_problems(draw, *, max_rows: int = 40, allow_nonfinite: bool = False):
    """A random problem: layout, labels and containers, dtypes, embeddings with structure."""
    sizes = draw(st.lists(st.integers(1, 9), min_size=0, max_size=8))
    while sum(sizes) > max_rows:
        sizes.pop()
    codes = [k for k, s in enumerate(sizes) for _ in range(s)]
    codes = draw(st.permutations(codes))
    n = len(codes)
    d = draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["torch", "numpy", "list"]))
    e_dtype = torch.float64 if kind == "list" else draw(st.sampled_from(EMBEDDING_DTYPES))
    if kind == "numpy" and e_dtype == torch.bfloat16:
        e_dtype = torch.float32  # numpy has no bfloat16
    r_dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.int64]))

    # Embeddings: random rows, then per-row structure (zero, duplicate, opposite, rescaled).
    base = np.array(
        draw(st.lists(st.floats(-4, 4, width=32), min_size=n * d, max_size=n * d)), np.float64
    ).reshape(n, d)
    lo, hi = SCALE_EXPONENTS[e_dtype]
    for i in range(n):
        action = draw(st.sampled_from(["keep", "keep", "zero", "copy", "negate", "scale"]))
        j = codes.index(codes[i])  # first row of the same group
        if action == "zero":
            base[i] = 0.0
        elif action == "copy" and j != i:
            base[i] = base[j] * draw(st.floats(0.5, 2.0))
        elif action == "negate" and j != i:
            base[i] = -base[j]
        elif action == "scale":
            base[i] *= 10.0 ** draw(st.integers(lo, hi))
    rewards = np.array(draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n)), np.float64)
    if r_dtype != torch.int64:
        rewards = rewards + np.array(
            draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n)), np.float64
        )
    if allow_nonfinite and n:
        for _ in range(draw(st.integers(1, 3))):
            bad = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
            i = draw(st.integers(0, n - 1))
            if r_dtype != torch.int64 and draw(st.booleans()):
                rewards[i] = bad
            else:
                base[i, draw(st.integers(0, d - 1))] = bad

    e_t = torch.from_numpy(base).to(e_dtype)
    r_t = torch.from_numpy(rewards).to(r_dtype)
    style = draw(st.sampled_from(["small", "negative", "extreme", "string", "tuple"]))
    labels = [_label_maker(style)(k) for k in codes]
    container = draw(st.sampled_from(["list", "numpy", "torch"]))
    if style in ("string", "tuple") and container == "torch":
        container = "list"
    if container == "numpy":
        ids = np.empty(n, dtype=object)
        ids[:] = labels
        if style in ("small", "negative", "extreme"):
            ids = np.array(labels, dtype=np.int64)
    elif container == "torch":
        ids = torch.tensor(labels, dtype=torch.int64)
    else:
        ids = labels

    if kind == "torch":
        rewards_in, emb_in = r_t, e_t
    elif kind == "numpy":
        rewards_in, emb_in = r_t.numpy(), e_t.numpy()
    else:
        rewards_in, emb_in = r_t.tolist(), e_t.tolist()
    return {
        "rewards": rewards_in,
        "embeddings": emb_in,
        "group_ids": ids,
        "labels": labels,
        "kind": kind,
        "r64": r_t.to(torch.float64).numpy(),
        "e64": e_t.to(torch.float64).numpy(),
        "dtypes": (r_t.dtype, e_t.dtype),
        "d": d,
    }


def _snapshot(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    return [list(v) if isinstance(v, list) else v for v in value]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all())
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return repr(a) == repr(b)


def _check_kind(out, problem, *, float64: bool) -> np.ndarray:
    kind = problem["kind"]
    n = len(problem["labels"])
    if kind == "torch":
        assert isinstance(out, torch.Tensor) and out.shape == (n,)
        assert out.dtype == (torch.float64 if float64 else torch.float32)
        return out.cpu().numpy()
    if kind == "numpy":
        assert isinstance(out, np.ndarray) and out.shape == (n,)
        assert out.dtype == (np.float64 if float64 else np.float32)
        return out
    assert isinstance(out, list) and len(out) == n and all(isinstance(v, float) for v in out)
    return np.array(out, dtype=np.float64)


def _as_numpy(out) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        out = out.cpu().numpy()
    return np.asarray(out, dtype=np.float64)


def _call_checked(fn, problem, *args_keys, **kwargs):
    """Call ``fn`` and check that no input changed."""
    args = [problem[k] for k in args_keys]
    before = [_snapshot(a) for a in args]
    out = fn(*args, **kwargs)
    for key, a, b in zip(args_keys, args, before, strict=True):
        assert _same(a, b), f"{fn.__name__} modified {key}"
    return out


def _on_backend(backend: str, problem: dict) -> tuple[str, dict]:
    """Where Triton runs on CUDA (not the CPU interpreter), torch inputs move to the GPU and the
    other kinds (host data) use the torch backend."""
    if backend == "torch" or not torch.cuda.is_available():
        return backend, problem
    if problem["kind"] != "torch":
        return "torch", problem
    moved = {k: problem[k].cuda() for k in ("rewards", "embeddings")}
    if isinstance(problem["group_ids"], torch.Tensor):
        moved["group_ids"] = problem["group_ids"].cuda()
    return backend, {**problem, **moved}


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("backend", BACKENDS)
@given(problem=dra_problems(), md=st.sampled_from([MIN_DENOMINATOR, 0.5, 1.0, 1e-3]))
def test_adjust_rewards_matches_oracle(backend, problem, md):
    backend, problem = _on_backend(backend, problem)
    out = _call_checked(
        dk.adjust_rewards,
        problem,
        "rewards",
        "embeddings",
        "group_ids",
        backend=backend,
        min_denominator=md,
    )
    float64 = torch.float64 in problem["dtypes"]
    got = _check_kind(out, problem, float64=float64)
    c = _unit_roundoff(*problem["dtypes"])
    r, e, ids = problem["r64"], problem["e64"], problem["labels"]
    smi_o = spec_smi(e, ids)
    want = spec_adjust(r, e, ids, md)
    tol = adjust_tolerance(r, smi_o, smi_tolerance(c, ids, problem["d"]), md, c)
    assert_close("adjust_rewards", got, want, tol)
    # Invariants independent of the oracle: finite, amplification bounded, sign kept.
    assert np.isfinite(got).all()
    assert (np.abs(got) <= np.abs(r) / md * (1 + 1e-6)).all()
    assert not (np.sign(got) * np.sign(r) < 0).any(), "the denominator must stay positive"


@pytest.mark.parametrize("backend", BACKENDS)
@given(problem=dra_problems())
def test_smi_scores_matches_oracle(backend, problem):
    backend, problem = _on_backend(backend, problem)
    out = _call_checked(dk.smi_scores, problem, "embeddings", "group_ids", backend=backend)
    e_dtype = problem["dtypes"][1]
    got = _check_kind(out, problem, float64=e_dtype == torch.float64)
    c = _unit_roundoff(e_dtype)
    ids = problem["labels"]
    want = spec_smi(problem["e64"], ids)
    assert_close("smi_scores", got, want, smi_tolerance(c, ids, problem["d"]))
    sizes = {g: len(rows) for g, rows in _groups(ids).items()}
    bound = np.array([sizes[g] - 1 for g in ids], dtype=np.float64)
    assert (np.abs(got) <= bound * (1 + 1e-5) + 1e-6).all(), "|SMI_i| > group size - 1"
    zero_rows = ~problem["e64"].any(axis=1)
    assert (got[zero_rows] == 0).all(), "a zero embedding must have SMI exactly 0"


@pytest.mark.parametrize("scale", ["std", "none"])
@given(problem=dra_problems(), eps=st.sampled_from([EPS, 1e-2, 1.0]))
def test_group_advantages_matches_oracle(scale, problem, eps):
    out = _call_checked(dk.group_advantages, problem, "rewards", "group_ids", scale=scale, eps=eps)
    float64 = problem["dtypes"][0] == torch.float64
    got = _check_kind(out, problem, float64=float64)
    c = _unit_roundoff(problem["dtypes"][0])
    r, ids = problem["r64"], problem["labels"]
    want = spec_advantages(r, ids, scale, eps)
    tol = advantage_tolerance(r, np.zeros_like(r), ids, scale, eps, c)
    assert_close(f"group_advantages[{scale}]", got, want, tol)
    for rows in _groups(ids).values():
        if scale == "none" or len(rows) > 1:
            assert abs(got[rows].sum()) <= tol[rows].sum() + 1e-9, "advantages must sum to 0"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", ["std", "none"])
@given(problem=dra_problems())
def test_dra_advantages_matches_oracle(backend, scale, problem):
    backend, problem = _on_backend(backend, problem)
    out = _call_checked(
        dk.dra_advantages,
        problem,
        "rewards",
        "embeddings",
        "group_ids",
        scale=scale,
        backend=backend,
    )
    got = _check_kind(out, problem, float64=torch.float64 in problem["dtypes"])
    c = _unit_roundoff(*problem["dtypes"])
    r, e, ids = problem["r64"], problem["e64"], problem["labels"]
    smi_o = spec_smi(e, ids)
    adjusted = spec_adjust(r, e, ids, MIN_DENOMINATOR)
    adj_tol = adjust_tolerance(r, smi_o, smi_tolerance(c, ids, problem["d"]), MIN_DENOMINATOR, c)
    want = spec_advantages(adjusted, ids, scale, EPS)
    tol = advantage_tolerance(adjusted, adj_tol, ids, scale, EPS, c)
    assert_close(f"dra_advantages[{scale}]", got, want, tol)


@pytest.mark.parametrize("backend", BACKENDS)
@given(problem=dra_problems(allow_nonfinite=True))
def test_non_finite_inputs_follow_the_policy(backend, problem):
    """NaN / inf: a bad embedding poisons its own group (unless it is alone in it), a bad reward
    poisons its own row (adjust) or its own group (advantages); other rows are exactly those of
    the same call without the bad values."""
    backend, problem = _on_backend(backend, problem)
    r, e, ids = problem["r64"], problem["e64"], problem["labels"]
    args = (problem["rewards"], problem["embeddings"], problem["group_ids"])
    c = _unit_roundoff(*problem["dtypes"])
    smi_o = spec_smi(e, ids)
    adj_o = spec_adjust(r, e, ids, MIN_DENOMINATOR)
    tol = adjust_tolerance(r, smi_o, smi_tolerance(c, ids, problem["d"]), MIN_DENOMINATOR, c)

    got_adj = _check_kind(
        dk.adjust_rewards(*args, backend=backend),
        problem,
        float64=torch.float64 in problem["dtypes"],
    )
    assert_close("adjust_rewards", got_adj, adj_o, tol)
    got_adv = _check_kind(
        dk.dra_advantages(*args, backend=backend),
        problem,
        float64=torch.float64 in problem["dtypes"],
    )
    adv_o = spec_advantages(adj_o, ids, "std", EPS)
    assert np.array_equal(np.isnan(got_adv), np.isnan(adv_o)), (
        f"dra_advantages NaN at {np.flatnonzero(np.isnan(got_adv))}, "
        f"expected at {np.flatnonzero(np.isnan(adv_o))}"
    )

    # Clean rows are bitwise those of the same call with the bad groups' data replaced.
    bad_groups = {
        g
        for g, ri, ei in zip(ids, r, e, strict=True)
        if not (np.isfinite(ri) and np.isfinite(ei).all())
    }
    clean = np.array([g not in bad_groups for g in ids], dtype=bool)
    if not clean.any():
        return
    r_fix = np.where(np.isfinite(r), r, 0.0)
    e_fix = np.where(np.isfinite(e), e, 0.0)
    if problem["kind"] == "torch":
        fixed = (
            torch.from_numpy(r_fix).to(problem["rewards"].device, problem["dtypes"][0]),
            torch.from_numpy(e_fix).to(problem["rewards"].device, problem["dtypes"][1]),
        )
    else:
        fixed = (
            r_fix.astype(np.dtype(str(problem["dtypes"][0]).removeprefix("torch."))),
            e_fix.astype(np.dtype(str(problem["dtypes"][1]).removeprefix("torch."))),
        )
        if problem["kind"] == "list":
            fixed = (fixed[0].tolist(), fixed[1].tolist())
    ref_adj = _as_numpy(dk.adjust_rewards(*fixed, problem["group_ids"], backend=backend))
    ref_adv = _as_numpy(dk.dra_advantages(*fixed, problem["group_ids"], backend=backend))
    assert np.array_equal(got_adj[clean], ref_adj[clean]), "a bad group changed another group"
    assert np.array_equal(got_adv[clean], ref_adv[clean]), "a bad group changed another group"
