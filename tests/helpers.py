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
