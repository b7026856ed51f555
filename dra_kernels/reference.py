"""Pure-torch reference implementation of DRA: the executable spec.

Every function here works on already-validated tensors (see :mod:`dra_kernels.api`) whose group
ids have been factorised into dense codes ``0 .. num_groups - 1``. Nothing builds an ``N x N``
matrix or pads groups: the whole computation is linear in ``N`` thanks to the identity

    SMI_i = u_i . (sum over j in g(i) of u_j) - |u_i|^2

with ``u_i = e_i / |e_i|`` (``u_i = 0`` for a zero row).

Precision: float16 / bfloat16 / float32 inputs are computed in float32, float64 inputs in float64.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_MIN_DENOMINATOR",
    "adjust_from_smi",
    "compute_dtype",
    "group_advantages",
    "group_std",
    "group_unit_sums",
    "smi_from_sums",
    "smi_scores",
    "unit_rows",
]

DEFAULT_MIN_DENOMINATOR = 0.1
"""Lower clamp of ``1 + SMI``: no reward is amplified more than ``1 / 0.1 = 10`` times."""

DEFAULT_EPS = 1e-4
"""Added to the group standard deviation in GRPO advantages (TRL's value)."""

# NOTE: the group sums and the dot products walk the rows in chunks small enough to stay in cache,
# through reused buffers: on CPU a fresh N x D temporary costs about as much as the whole op
# (page faults), and a chunk that spills the cache doubles the time of the scattered adds.
_CHUNK_ROWS = {"cpu": 2048}
_DEFAULT_CHUNK_ROWS = 65536


def _chunk_rows(device: torch.device) -> int:
    return _CHUNK_ROWS.get(device.type, _DEFAULT_CHUNK_ROWS)


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any of ``dtypes`` is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def unit_rows(embeddings: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rows scaled to unit length; zero rows stay zero, rows holding NaN or inf become NaN.

    Robust to overflow and underflow: a row whose norm lies outside a safe range (float32 rows
    near 1e30 or 1e-30, float16 rows whose squared norm overflows float16) is normalised in
    float64 after division by its largest magnitude, then rounded to ``dtype``.

    Args:
        embeddings: ``[N, D]`` floating tensor.
        dtype: result dtype (default: :func:`compute_dtype` of the input).

    Returns:
        ``[N, D]`` tensor of ``dtype``; a new tensor, never a view of the input.
    """
    dtype = dtype or compute_dtype(embeddings.dtype)
    units = torch.empty(embeddings.shape, dtype=dtype, device=embeddings.device)
    for start, stop, _, narrow in _unit_chunks(embeddings, dtype, wide=False):
        units[start:stop] = narrow
    return units


# Norms for which ``x * (1 / |x|)`` is exact to rounding in that dtype (no overflow of the squares,
# no digits lost to underflow, a normal reciprocal); rows outside take the exact float64 path.
_SAFE_NORM = {torch.float32: (2.0**-60, 2.0**60), torch.float64: (2.0**-480, 2.0**480)}


def _row_scales(
    embeddings: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(1/|e_i|  [N, 1] (0 for unsafe rows), unsafe row indices, their unit rows)``."""
    norm = torch.linalg.vector_norm(
        embeddings, dim=1, keepdim=True, dtype=None if embeddings.dtype == dtype else dtype
    )
    low, high = _SAFE_NORM[dtype]
    safe = (norm >= low) & (norm <= high)
    scale = torch.where(safe, 1.0 / norm, torch.zeros_like(norm))
    # NOTE: true zero rows (scale 0 gives u = 0) and NaN rows (x * 0 stays NaN) are right as they
    # are; finite rows with an out-of-range norm (inf when it overflowed, 0 when every square
    # underflowed) need the exact path.
    unsafe = (~safe & (norm != 0) & ~torch.isnan(norm)).squeeze(1)
    zero_norm = torch.nonzero(norm.squeeze(1) == 0).squeeze(1)
    if zero_norm.numel():
        unsafe[zero_norm] = (embeddings.index_select(0, zero_norm) != 0).any(dim=1)
    rows = torch.nonzero(unsafe).squeeze(1)  # ascending
    x = embeddings.index_select(0, rows).to(torch.float64)
    _divide_rows_(x, torch.linalg.vector_norm(x, ord=float("inf"), dim=1, keepdim=True))
    _divide_rows_(x, torch.linalg.vector_norm(x, dim=1, keepdim=True))
    return scale, rows, x.to(dtype)


def _unit_chunks(
    embeddings: torch.Tensor, dtype: torch.dtype, *, wide: bool
) -> Iterator[tuple[int, int, torch.Tensor | None, torch.Tensor]]:
    """``(start, stop, unit rows as float64 if wide, unit rows in dtype)`` for each chunk.

    The yielded tensors are buffers reused by the next chunk.
    """
    n, d = embeddings.shape
    device = embeddings.device
    chunk = _chunk_rows(device)
    narrow = torch.empty(min(chunk, n), d, dtype=dtype, device=device)
    widened = None
    if wide and dtype != torch.float64:
        widened = torch.empty(min(chunk, n), d, dtype=torch.float64, device=device)
    scale, patch_rows, patch = _row_scales(embeddings, dtype)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        u = narrow[: stop - start]
        torch.mul(embeddings[start:stop], scale[start:stop], out=u)
        if patch_rows.numel():
            first, last = torch.searchsorted(
                patch_rows, torch.tensor([start, stop], device=patch_rows.device)
            ).tolist()
            u[patch_rows[first:last] - start] = patch[first:last]
        w = u if dtype == torch.float64 else None
        if widened is not None:
            w = widened[: stop - start]
            w.copy_(u)
        yield start, stop, w, u


def _divide_rows_(x: torch.Tensor, scale: torch.Tensor) -> None:
    """``x /= scale`` row-wise, leaving rows with a zero (or NaN) scale as they are."""
    x.div_(torch.where(scale > 0, scale, torch.ones_like(scale)))


def _group_counts(codes: torch.Tensor, num_groups: int) -> torch.Tensor:
    if codes.device.type == "cpu":
        return torch.bincount(codes, minlength=num_groups)
    # NOTE: bincount's output size depends on the data (a host sync on CUDA); index_add_ does not.
    counts = torch.zeros(num_groups, dtype=torch.int64, device=codes.device)
    return counts.index_add_(0, codes, torch.ones_like(codes))


def group_unit_sums(
    units: torch.Tensor, codes: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group sums of unit rows (accumulated in float64) and per-group row counts.

    The sums are accumulated in float64 whatever the dtype of ``units``: a float32 running sum
    over a group of 10^5 rows loses about 3 decimal digits, which then shows in rows nearly
    orthogonal to their group's sum. Rows are converted chunk by chunk, so no float64 copy of the
    ``[N, D]`` input is made.

    Args:
        units: ``[N, D]`` unit rows (see :func:`unit_rows`).
        codes: ``[N]`` int64 group codes in ``[0, num_groups)``.
        num_groups: number of groups ``K``.

    Returns:
        ``(sums [K, D] float64, counts [K] int64)``.
    """
    n, d = units.shape
    sums = torch.zeros(num_groups, d, dtype=torch.float64, device=units.device)
    chunk = _chunk_rows(units.device)
    buffer = torch.empty(min(chunk, n), d, dtype=torch.float64, device=units.device)
    for start in range(0, n, chunk):
        rows = buffer[: min(chunk, n - start)]
        rows.copy_(units[start : start + chunk])
        sums.index_add_(0, codes[start : start + chunk], rows)
    return sums, _group_counts(codes, num_groups)


def smi_from_sums(
    units: torch.Tensor, codes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """``SMI_i = u_i . (S_{g(i)} - u_i)``: exactly 0 for groups of one row.

    Args:
        units: ``[N, D]`` unit rows.
        codes: ``[N]`` int64 group codes.
        sums: ``[K, D]`` group sums from :func:`group_unit_sums` (possibly summed across
            processes); rounded to the dtype of ``units`` for the dot products.
        counts: ``[K]`` group row counts from :func:`group_unit_sums`.

    Returns:
        ``[N]`` tensor of ``units.dtype``.
    """
    n, d = units.shape
    sums = sums.to(units.dtype)
    smi = torch.empty(n, dtype=units.dtype, device=units.device)
    chunk = _chunk_rows(units.device)
    buffer = torch.empty(min(chunk, n), d, dtype=units.dtype, device=units.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        _dot_with_others(units[start:stop], codes[start:stop], sums, buffer, smi[start:stop])
    return _zero_singletons(smi, codes, counts)


def _dot_with_others(
    u: torch.Tensor,
    codes: torch.Tensor,
    sums: torch.Tensor,
    buffer: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """``out_i = u_i . (S_{g(i)} - u_i)`` for one chunk, through a reused buffer."""
    others = torch.index_select(sums, 0, codes, out=buffer[: u.shape[0]])
    others.sub_(u).mul_(u)
    torch.sum(others, dim=1, out=out)


def _zero_singletons(smi: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    # NOTE: S_g - u_i is already exactly 0 for a group of one (S_g rounds back to u_i); the counts
    # make the rule explicit and independent of rounding.
    return torch.where(counts.index_select(0, codes) > 1, smi, torch.zeros_like(smi))


def _smi(embeddings: torch.Tensor, codes: torch.Tensor, num_groups: int, dtype: torch.dtype):
    """:func:`unit_rows`, :func:`group_unit_sums` and :func:`smi_from_sums` in two passes over
    the embeddings, chunk by chunk, without any ``[N, D]`` temporary."""
    n, d = embeddings.shape
    sums = torch.zeros(num_groups, d, dtype=torch.float64, device=embeddings.device)
    for start, stop, wide, _ in _unit_chunks(embeddings, dtype, wide=True):
        sums.index_add_(0, codes[start:stop], wide)
    sums = sums.to(dtype)
    smi = torch.empty(n, dtype=dtype, device=embeddings.device)
    buffer = torch.empty(min(_chunk_rows(embeddings.device), n), d, dtype=dtype, device=sums.device)
    for start, stop, _, u in _unit_chunks(embeddings, dtype, wide=False):
        _dot_with_others(u, codes[start:stop], sums, buffer, smi[start:stop])
    return _zero_singletons(smi, codes, _group_counts(codes, num_groups))


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
    return _smi(embeddings, codes, num_groups, compute_dtype(embeddings.dtype))


def adjust_rewards(
    rewards: torch.Tensor,
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    min_denominator: float = DEFAULT_MIN_DENOMINATOR,
) -> torch.Tensor:
    """``r_i / max(1 + SMI_i, min_denominator)``; float64 if rewards or embeddings are float64."""
    dtype = compute_dtype(rewards.dtype, embeddings.dtype)
    return adjust_from_smi(rewards, _smi(embeddings, codes, num_groups, dtype), min_denominator)


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
    std = group_std(squares, counts)
    return centred / (std.index_select(0, codes) + eps)


def group_std(squares: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviations from per-group sums of squared deviations and row counts
    (0 for a group of one row).

    Where the standard deviation is 0 (a group of one row, or of equal rewards) its gradient is
    taken as 0, the limit of the advantages' derivatives there, instead of the ``0 * inf = NaN``
    that ``sqrt`` gives at 0: otherwise one such group makes every reward's gradient NaN.
    """
    variance = squares / (counts - 1).clamp(min=1)
    zero = variance == 0
    return torch.where(zero, 0.0, torch.sqrt(torch.where(zero, 1.0, variance)))
