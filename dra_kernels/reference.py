"""Pure-torch reference implementation of DRA: the executable spec.

Every function here works on already-validated tensors (see :mod:`dra_kernels.api`) whose group
ids have been factorised into dense codes ``0 .. num_groups - 1``. Nothing builds an ``N x N``
matrix or pads groups: the whole computation is linear in ``N`` thanks to the identity

    SMI_i = u_i . (sum over j in g(i) of u_j) - |u_i|^2

with ``u_i = e_i / |e_i|`` (``u_i = 0`` for a zero row).

Precision: float16 / bfloat16 / float32 inputs are computed in float32, float64 inputs in float64.
"""

from __future__ import annotations

import torch

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_MIN_DENOMINATOR",
    "adjust_from_smi",
    "compute_dtype",
    "group_advantages",
    "group_unit_sums",
    "smi_from_sums",
    "smi_scores",
    "unit_rows",
]

DEFAULT_MIN_DENOMINATOR = 0.1
"""Lower clamp of ``1 + SMI``: no reward is amplified more than ``1 / 0.1 = 10`` times."""

DEFAULT_EPS = 1e-4
"""Added to the group standard deviation in GRPO advantages (TRL's value)."""

# NOTE: rows are processed in chunks in the second phase so that the gathered group sums
# (chunk x D) stay cache-sized instead of materialising a second N x D tensor.
_CHUNK_ROWS = 16384


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any of ``dtypes`` is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def unit_rows(embeddings: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rows scaled to unit length; zero rows stay zero.

    Robust to overflow and underflow: each row is first divided by its largest magnitude, so
    float32 rows near 1e30 or 1e-30 and float16 rows whose squared norm overflows still give
    exact unit vectors.

    Args:
        embeddings: ``[N, D]`` floating tensor.
        dtype: computation dtype (default: :func:`compute_dtype` of the input).

    Returns:
        ``[N, D]`` tensor of ``dtype``; a new tensor, never a view of the input.
    """
    dtype = dtype or compute_dtype(embeddings.dtype)
    x = embeddings.to(dtype)
    peak = torch.linalg.vector_norm(x, ord=float("inf"), dim=1, keepdim=True)
    safe_peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    scaled = x / safe_peak  # new tensor: |entries| <= 1, the largest is exactly 1
    norm = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)  # in [1, sqrt(D)] or 0
    scaled /= torch.where(norm > 0, norm, torch.ones_like(norm))
    return scaled


def group_unit_sums(
    units: torch.Tensor, codes: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group sums of unit rows (accumulated in float64) and per-group row counts.

    The sums are accumulated in float64 whatever the dtype of ``units``: a float32 running sum
    over a group of 10^5 rows loses about 3 decimal digits, which then shows in rows nearly
    orthogonal to their group's sum. The extra cost is one float64 ``[K, D]`` buffer; rows are
    converted chunk by chunk, so no float64 copy of the ``[N, D]`` input is made.

    Args:
        units: ``[N, D]`` unit rows (see :func:`unit_rows`).
        codes: ``[N]`` int64 group codes in ``[0, num_groups)``.
        num_groups: number of groups ``K``.

    Returns:
        ``(sums [K, D] float64, counts [K] int64)``.
    """
    sums = torch.zeros(num_groups, units.shape[1], dtype=torch.float64, device=units.device)
    for start in range(0, units.shape[0], _CHUNK_ROWS):
        stop = start + _CHUNK_ROWS
        sums.index_add_(0, codes[start:stop], units[start:stop].to(torch.float64))
    counts = torch.zeros(num_groups, dtype=torch.int64, device=units.device)
    counts.index_add_(0, codes, torch.ones_like(codes))
    return sums, counts


def smi_from_sums(
    units: torch.Tensor, codes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """``SMI_i = u_i . S_{g(i)} - |u_i|^2``, exactly 0 for groups of one row.

    Args:
        units: ``[N, D]`` unit rows.
        codes: ``[N]`` int64 group codes.
        sums, counts: the output of :func:`group_unit_sums` (possibly summed across processes);
            the sums are rounded to the dtype of ``units`` for the dot products.

    Returns:
        ``[N]`` tensor of ``units.dtype``.
    """
    sums = sums.to(units.dtype)
    smi = torch.empty(units.shape[0], dtype=units.dtype, device=units.device)
    for start in range(0, units.shape[0], _CHUNK_ROWS):
        stop = start + _CHUNK_ROWS
        u = units[start:stop]
        cross = torch.einsum("nd,nd->n", u, sums.index_select(0, codes[start:stop]))
        smi[start:stop] = cross - torch.einsum("nd,nd->n", u, u)
    return torch.where(counts.index_select(0, codes) > 1, smi, torch.zeros_like(smi))


def adjust_from_smi(
    rewards: torch.Tensor, smi: torch.Tensor, min_denominator: float = DEFAULT_MIN_DENOMINATOR
) -> torch.Tensor:
    """``r_i / max(1 + SMI_i, min_denominator)`` in the dtype of ``smi``."""
    denominator = torch.clamp(1.0 + smi, min=min_denominator)
    return rewards.to(smi.dtype) / denominator


def smi_scores(embeddings: torch.Tensor, codes: torch.Tensor, num_groups: int) -> torch.Tensor:
    """SMI of every row against the rest of its group.

    Args:
        embeddings: ``[N, D]`` floating tensor.
        codes: ``[N]`` int64 group codes in ``[0, num_groups)``.
        num_groups: number of groups.

    Returns:
        ``[N]`` float32 tensor (float64 for float64 embeddings).
    """
    units = unit_rows(embeddings)
    sums, counts = group_unit_sums(units, codes, num_groups)
    return smi_from_sums(units, codes, sums, counts)


def adjust_rewards(
    rewards: torch.Tensor,
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    min_denominator: float = DEFAULT_MIN_DENOMINATOR,
) -> torch.Tensor:
    """``r_i / max(1 + SMI_i, min_denominator)``; float64 if rewards or embeddings are float64."""
    dtype = compute_dtype(rewards.dtype, embeddings.dtype)
    units = unit_rows(embeddings, dtype)
    sums, counts = group_unit_sums(units, codes, num_groups)
    return adjust_from_smi(rewards, smi_from_sums(units, codes, sums, counts), min_denominator)


def group_advantages(
    rewards: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    scale: str = "std",
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """GRPO / DR.GRPO advantages within each group.

    ``scale="std"``: ``(r - mean) / (std + eps)`` with the unbiased standard deviation
    (divisor ``n - 1``, as TRL's ``GRPOTrainer``); a group of one row has std 0 and advantage 0.
    ``scale="none"``: ``r - mean`` (DR.GRPO).

    The mean and variance are two-pass (mean first, then squared deviations), not
    ``E[r^2] - E[r]^2``, so large reward offsets do not cancel.
    """
    dtype = compute_dtype(rewards.dtype)
    r = rewards.to(dtype)
    counts = torch.zeros(num_groups, dtype=dtype, device=r.device).index_add_(
        0, codes, torch.ones_like(r)
    )
    totals = torch.zeros(num_groups, dtype=dtype, device=r.device).index_add_(0, codes, r)
    mean = totals / counts.clamp(min=1)
    centred = r - mean.index_select(0, codes)
    if scale == "none":
        return centred
    squares = torch.zeros(num_groups, dtype=dtype, device=r.device).index_add_(
        0, codes, centred * centred
    )
    std = torch.sqrt(squares / (counts - 1).clamp(min=1))
    return centred / (std.index_select(0, codes) + eps)
