"""Test utilities: one tolerance table, the spec in float64, layouts, verbose comparison."""

from __future__ import annotations

import numpy as np
import torch

from dra_kernels import reference

# Inputs are upcast exactly, so errors come only from the accumulation dtype (float32 for
# float16 / bfloat16 / float32 inputs, float64 for float64 inputs). (atol, rtol) per input dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (2e-5, 2e-5),
    torch.bfloat16: (2e-5, 2e-5),
    torch.float32: (2e-5, 2e-5),
    torch.float64: (1e-12, 1e-12),
}
DTYPES = list(TOLERANCES)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_layout(
    gen: torch.Generator, sizes: list[int], shuffle: bool = True
) -> tuple[torch.Tensor, int]:
    """Group ids (arbitrary, non-contiguous int64 labels) for groups of the given sizes."""
    labels = torch.randperm(10 * len(sizes) + 7, generator=gen)[: len(sizes)] * 3 - 11
    ids = torch.repeat_interleave(labels, torch.tensor(sizes, dtype=torch.int64))
    if shuffle:
        ids = ids[torch.randperm(ids.numel(), generator=gen)]
    return ids, len(sizes)


def realistic_embeddings(
    gen: torch.Generator, n: int, d: int, dtype: torch.dtype, offset: float = 1.0
) -> torch.Tensor:
    """Embeddings with a shared positive direction, so cosines are mostly positive (as with real
    sentence embedders) and ``1 + SMI`` stays well away from the clamp."""
    base = torch.randn(1, d, generator=gen, dtype=torch.float64) * offset
    e = base + torch.randn(n, d, generator=gen, dtype=torch.float64)
    scales = torch.exp(torch.randn(n, 1, generator=gen, dtype=torch.float64))
    return (e * scales).to(dtype)


def exact_rows(
    gen: torch.Generator,
    n: int,
    d: int,
    dtype: torch.dtype = torch.float32,
    *,
    unit_norms: bool = True,
    spread: int = 3,
) -> torch.Tensor:
    """Rows whose products with each other are exact in float32 whatever the order of their
    partial sums (also as float16 / bfloat16 inputs), so that a product computed by different
    BLAS kernels, batch shapes, thread counts or tiles of the Triton interpreter is the same
    bits on any machine; each row stays distinct, so a row taken into the wrong group still
    changes the result.

    Each row is ``2^k`` (``|k| <= spread``) times a vector of +-1 at some positions: its largest
    magnitude is a power of two and a product of two rows is a small integer times a power of
    two. With ``unit_norms`` a row has 1, 4 or 16 nonzero entries (at most ``d``), so its norm
    and the reciprocal are powers of two too: unit rows, cosines (multiples of 1/16) and their
    sums (fewer than 2^19 terms) are exact as well. Without it the count is anything from 1 to
    16, and the cosines are correctly rounded quotients, not exact.

    Signs follow one shared pattern, each flipped with probability 1/5, and positions come from
    the first 16 columns (the others stay zero), so cosines are mostly positive and varied, as
    with real embeddings.
    """
    pattern = torch.where(torch.rand(d, generator=gen) < 0.5, -1.0, 1.0).double()
    pool = min(d, 16)
    counts = torch.tensor([c for c in (1, 4, 16) if c <= d] if unit_norms else range(1, pool + 1))
    nnz = counts[torch.randint(0, counts.numel(), (n, 1), generator=gen)]
    rank = torch.rand(n, pool, generator=gen).argsort(dim=1).argsort(dim=1)  # a random order
    flip = torch.where(torch.rand(n, pool, generator=gen) < 0.2, -1.0, 1.0).double()
    power = 2.0 ** torch.randint(-spread, spread + 1, (n, 1), generator=gen).double()
    e = torch.zeros(n, d, dtype=torch.float64)
    e[:, :pool] = torch.where(rank < nnz, pattern[:pool] * flip * power, 0.0)
    return e.to(dtype)


def float64_reference(
    kind: str,
    rewards: torch.Tensor,
    embeddings: torch.Tensor,
    ids: torch.Tensor,
    *,
    scale: str = "std",
    min_denominator: float = reference.DEFAULT_MIN_DENOMINATOR,
) -> torch.Tensor:
    """The spec (:mod:`dra_kernels.reference`) evaluated in float64 on the (exactly upcast)
    inputs."""
    ids = ids.cpu()
    r = rewards.cpu().to(torch.float64)
    e = embeddings.cpu().to(torch.float64)
    if kind == "smi":
        return reference.smi_scores(e, ids)
    adjusted = reference.adjust_from_smi(r, reference.smi_scores(e, ids), min_denominator)
    if kind == "adjust":
        return adjusted
    return reference.group_advantages(adjusted, ids, scale)


def assert_close(actual, expected, dtype: torch.dtype, what: str = "") -> None:
    """Compare with the dtype's tolerance; on failure list the worst mismatches by row."""
    atol, rtol = TOLERANCES[dtype]
    a = torch.as_tensor(np.asarray(actual) if not isinstance(actual, torch.Tensor) else actual)
    a = a.detach().cpu().to(torch.float64)
    b = torch.as_tensor(expected).detach().cpu().to(torch.float64)
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    if not torch.equal(nan_a, nan_b):
        rows = torch.nonzero(nan_a != nan_b).flatten()[:10].tolist()
        raise AssertionError(f"{what}: NaN positions differ at rows {rows}")
    err = (a - b).abs()
    bad = (err > atol + rtol * b.abs()) & ~nan_a
    if bad.any():
        rows = torch.nonzero(bad).flatten()
        worst = rows[torch.argsort(err[rows], descending=True)][:10].tolist()
        lines = [f"  row {i}: got {a[i].item():.10g}, want {b[i].item():.10g}" for i in worst]
        raise AssertionError(
            f"{what}: {rows.numel()} of {a.numel()} rows outside atol={atol}, rtol={rtol} "
            f"(max abs err {err[rows].max().item():.3g}):\n" + "\n".join(lines)
        )
