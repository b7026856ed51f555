"""SMI measures beyond Graph-Cut: facility-location and log-determinant mutual information.

Row ``i`` of group ``C`` scores ``I_f({i}; C \\ {i})`` with the cosines of the group's unit rows,
as submodlib computes it; the formulas are :mod:`dra_kernels.reference`'s (the spec), their
derivations and edge cases in ``docs/semantics.md`` ("Other SMI measures"). These are not linear
in the cosines, so each group's ``G x G`` matrix is built (memory ``O(sum of G_g^2)``, never
``N x N``, no padding), in float64 whatever the input dtype. Groups are bucketed by exact size,
one batched product (and Cholesky factorisation) per size and chunk, so a group's result depends
on its own rows only (to the rounding a BLAS may vary with batch size).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dra_kernels import inputs, torch_backend
from dra_kernels.reference import DEFAULT_ETA, DEFAULT_LAM

__all__ = [
    "CHUNK_ELEMENTS",
    "DEFAULT_ETA",
    "DEFAULT_LAM",
    "MEASURES",
    "MIN_LAM",
    "check_measure",
    "smi_by_measure",
]

MEASURES = ("graph_cut", "facility_location", "log_det")
"""The accepted values of ``measure``; the first is the default."""

MIN_LAM = 1e-6
"""Smallest accepted ``lam``: ``S_C + lam I`` has condition number up to ``(G + lam) / lam``; far
below this the log-det SMI of near-duplicate rows is set by rounding, not by the data (and at
``lam = 0`` submodlib returns inf, NaN or raises "Singular matrix")."""

CHUNK_ELEMENTS = 1 << 20
"""Default elements (of one ``[B, G, max(G, D)]`` operand) per batched product: a few MiB, so the
``G x G`` matrices of a chunk of groups stay small whatever N."""


def check_measure(
    measure: Any, eta: Any = DEFAULT_ETA, lam: Any = DEFAULT_LAM, backend: Any = None
) -> tuple[str, float, float]:
    """Validate ``measure`` and its parameters; return ``(measure, eta, lam)`` with float values.

    Rules (ValueError naming the argument, TypeError for a non-number ``eta`` / ``lam``):

    - ``measure`` is one of :data:`MEASURES`;
    - ``eta`` is used by ``"facility_location"`` (finite, > 0) and ``"log_det"`` (finite, > 0 and
      <= 1: above 1 the log-det super-kernel is no longer positive semi-definite and submodlib
      returns NaN for redundant rows);
    - ``lam`` is used by ``"log_det"`` only: finite and >= :data:`MIN_LAM`;
    - a parameter the measure does not use must be left at its default 1.0 (it would be
      silently ignored otherwise);
    - ``"log_det"`` has no Triton kernel: ``backend="triton"`` refuses it (facility location has
      one; ``"auto"`` computes both with torch on the data's device).
    """
    if not isinstance(measure, str) or measure not in MEASURES:
        raise ValueError(
            f"measure must be one of {', '.join(repr(m) for m in MEASURES)}, got {measure!r}"
        )
    eta = inputs.check_number("eta", eta)
    lam = inputs.check_number("lam", lam)
    if measure == "graph_cut" and eta != DEFAULT_ETA:
        raise ValueError(f"eta is not used by measure='graph_cut'; leave it at 1.0, got {eta!r}")
    if measure != "log_det" and lam != DEFAULT_LAM:
        raise ValueError(f"lam is used only by measure='log_det'; leave it at 1.0, got {lam!r}")
    if measure == "facility_location" and not (0.0 < eta < math.inf):
        raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
    if measure == "log_det":
        if not (0.0 < eta <= 1.0):
            raise ValueError(
                f"eta must be > 0 and <= 1 for measure='log_det' (above 1 the log-det SMI is "
                f"undefined for redundant rows), got {eta!r}"
            )
        if not (MIN_LAM <= lam < math.inf):
            raise ValueError(f"lam must be a finite number >= {MIN_LAM:g}, got {lam!r}")
    if measure == "log_det" and backend == "triton":
        raise ValueError(
            "measure='log_det' has no Triton kernel: use backend='torch' or 'auto' (batched "
            "torch linear algebra on the data's device; docs/measures.md says why)"
        )
    return measure, eta, lam


def smi_by_measure(
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    measure: str,
    *,
    eta: float = DEFAULT_ETA,
    lam: float = DEFAULT_LAM,
    chunk_elements: int = CHUNK_ELEMENTS,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """SMI of every row against the rest of its group, for the given ``measure``.

    Args:
        embeddings: ``[N, D]`` floating tensor (used detached).
        codes: ``[N]`` int64 group codes in ``[0, num_groups)``.
        num_groups: number of groups.
        measure: ``"graph_cut"``, ``"facility_location"`` or ``"log_det"`` (see
            :func:`check_measure` for ``eta`` and ``lam``).
        eta: query magnification (facility location, log-det).
        lam: ridge added to the diagonal of the similarity matrix (log-det).
        chunk_elements: elements of one ``[B, G, max(G, D)]`` operand per batched product (at
            least one group per product): bounds the memory of a call, changes no result.
        dtype: the result's dtype (float32 or float64); by default float32, or float64 for
            float64 embeddings (the API passes float64 for float64 rewards too).

    Returns:
        ``[N]`` tensor of ``dtype``, computed in float64 for every input dtype. A group of one
        row has SMI 0 (whatever it holds); a zero row has SMI 0 and leaves the others'
        unchanged; a row holding NaN or inf makes the rest of its group NaN as well.

    Raises:
        ValueError: for a bad ``measure`` / ``eta`` / ``lam`` / ``chunk_elements``, or a code
            outside ``[0, num_groups)`` (checked in the call's one read-back).
    """
    measure, eta, lam = check_measure(measure, eta, lam)
    if type(chunk_elements) is not int or chunk_elements < 1:
        raise ValueError(f"chunk_elements must be an int >= 1, got {chunk_elements!r}")
    if dtype not in (None, torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if measure == "graph_cut":
        return torch_backend.smi_scores(embeddings, codes, num_groups, dtype)
    embeddings = embeddings.detach()
    out_dtype = dtype or inputs.compute_dtype(embeddings.dtype)
    n, d = embeddings.shape
    smi = torch.zeros(n, dtype=out_dtype, device=embeddings.device)
    if n == 0:
        return smi
    # NOTE: float64 throughout: S_C + lam I has condition number up to (G + lam) / lam, which
    # would amplify float32 cosine rounding (1e-7) to G * 1e-7 / lam. Narrower rows are upcast
    # exactly chunk by chunk, and their Gram matrix scaled by the row norms (float32 products
    # are exact in float64 and cannot overflow there), faster on CPU than fresh unit rows.
    # Float64 rows take the torch backend's unit rows (exact for extreme norms).
    raw = embeddings.dtype != torch.float64
    compute = _facility_location if measure == "facility_location" else _log_det
    source = embeddings if raw else torch_backend.unit_rows(embeddings, torch.float64)
    counts, histogram = _size_histogram(codes, num_groups)
    sizes = counts.index_select(0, codes)
    # Rows by group size, then group, then row index: each size's groups form one slice.
    by_code = torch.argsort(codes, stable=True)
    order = by_code.index_select(0, torch.argsort(sizes.index_select(0, by_code), stable=True))
    histogram = [(g, c) for g, c in histogram if g > 1]
    start = n - sum(g * groups for g, groups in histogram)  # groups of one come first: SMI 0
    for g, groups in histogram:
        rows = order[start : start + g * groups]  # consecutive groups of g rows
        start += g * groups
        # NOTE: on CPU contiguous groups (the usual GRPO batch) are read in place, others
        # gathered (on CUDA the gather is cheap and the check would synchronise).
        contiguous = (
            rows.numel() == n
            and rows.device.type == "cpu"
            and bool((rows == torch.arange(n, device=rows.device)).all())
        )
        step = max(1, chunk_elements // (g * max(g, d, 1)))
        buffer = None
        if raw:
            buffer = torch.empty(min(step, groups) * g, d, dtype=torch.float64, device=smi.device)
        for first in range(0, groups, step):
            last = min(first + step, groups)
            index = slice(first * g, last * g) if contiguous else rows[first * g : last * g]
            x = source[index] if contiguous else source.index_select(0, index)
            if buffer is not None:
                x = buffer[: x.shape[0]].copy_(x)
            values = compute(x.view(-1, g, d), eta, lam, raw=raw)
            smi[index] = values.reshape(-1).to(out_dtype)
    return smi


def _size_histogram(
    codes: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """``(rows per group [num_groups] on the codes' device, [(size, groups of that size), ...]
    by increasing size)`` for non-empty ``codes``; raises ValueError unless every code lies in
    ``[0, num_groups)``. On CPU with ``bincount``; elsewhere :func:`_size_histogram_in_one_copy`.
    """
    if num_groups < 1:
        raise ValueError(
            f"with num_groups={num_groups}, no group id is in range ({codes.numel()} rows given)"
        )
    if codes.device.type != "cpu":
        return _size_histogram_in_one_copy(codes, num_groups)
    inputs.check_code_range(codes, num_groups)
    counts = torch.bincount(codes, minlength=num_groups)
    return counts, _histogram_list(torch.bincount(counts))


def _size_histogram_in_one_copy(
    codes: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """:func:`_size_histogram` with one host synchronisation (a call's only one on CUDA): the
    codes' range and the size histogram come back in one copy of ``N + 3`` integers (``unique``
    and ``bincount`` would each wait for the device). Codes are clamped for the counts, so nothing
    indexes out of bounds before the check raises. Runs on any device (tested on CPU)."""
    bounds = torch.stack(torch.aminmax(codes))
    counts = torch_backend.group_counts(codes.clamp(0, num_groups - 1), num_groups)
    groups_of_size = torch.zeros(codes.numel() + 1, dtype=torch.int64, device=codes.device)
    groups_of_size.index_add_(0, counts, torch.ones_like(counts))
    host = torch.cat([bounds, groups_of_size]).cpu()
    inputs.check_code_bounds(int(host[0]), int(host[1]), num_groups)
    return counts, _histogram_list(host[2:])


def _histogram_list(groups_of_size: torch.Tensor) -> list[tuple[int, int]]:
    """``[(size, groups), ...]`` for the sizes present in a CPU histogram of group sizes."""
    present = torch.nonzero(groups_of_size).view(-1)
    sizes, groups = present.tolist(), groups_of_size.index_select(0, present).tolist()
    return list(zip(sizes, groups, strict=True))


def _cosines(x: torch.Tensor, raw: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(S [B, G, G], |u_i|^2 [B, G] (0 or 1), NaN groups [B])`` for groups ``x [B, G, D]``.

    ``x``: unit rows, or (``raw``) float64 upcasts of narrower rows, scaled here by their norms.
    The diagonal is set to exactly ``|u_i|^2``; a group with a NaN or inf row gets ``S = 0`` (its
    results are replaced by NaN afterwards)."""
    s = torch.bmm(x, x.transpose(1, 2))
    diagonal = s.diagonal(dim1=1, dim2=2)
    if raw:  # |x_i|^2: 0 for a zero row, inf or NaN for a row holding inf or NaN
        nan_groups = ~torch.isfinite(diagonal).all(dim=1)
        present = diagonal > 0
        scale = torch.where(present, diagonal.rsqrt(), torch.zeros_like(diagonal))
        s.mul_(scale[:, :, None]).mul_(scale[:, None, :])
    else:  # u_i . u_i: 1 to rounding for a unit row, exactly 0 for a zero row, NaN for NaN
        nan_groups = torch.isnan(diagonal).any(dim=1)
        present = diagonal > 0.5
    weight = present.to(s.dtype)
    diagonal.copy_(weight)
    _fill_groups(s, nan_groups, 0.0)
    return s, weight, nan_groups


def _fill_groups(values: torch.Tensor, groups: torch.Tensor, value: float) -> torch.Tensor:
    """``values[groups] = value``; on CUDA a masked fill, which does not synchronise."""
    if values.device.type != "cpu":
        return values.masked_fill_(groups.view(-1, *[1] * (values.ndim - 1)), value)
    if bool(groups.any()):
        values[groups] = value
    return values


def _facility_location(x: torch.Tensor, eta: float, lam: float, *, raw: bool) -> torch.Tensor:
    """``FLMI_i = sum_v min(s_vi^+, (eta * max_{q != i} s_vq)^+)`` for each row of each group.

    ``max_{q != i} s_vq``: the largest value of row ``v``, or its second largest where the
    largest sits in column ``i``. ``lam`` is not used.
    """
    s, _, nan_groups = _cosines(x, raw)
    top, where = s.topk(2, dim=2)  # [B, G, 2]
    columns = torch.arange(s.shape[2], device=s.device)
    at_i = where[:, :, :1] == columns  # [B, v, i]: is column i the maximum of row v?
    best_other = torch.where(at_i, top[:, :, 1:], top[:, :, :1])  # max_{q != i} s_vq
    cap = best_other.mul_(eta).clamp_(min=0.0)
    terms = torch.minimum(s.clamp(min=0.0), cap)  # [B, v, i]
    return _fill_groups(terms.sum(dim=1), nan_groups, math.nan)


def _inverse_diagonal(factor: torch.Tensor) -> torch.Tensor:
    """The diagonal of ``(L L^T)^-1`` for lower-triangular Cholesky factors ``L [B, G, G]``:
    ``sum_k (L^-1)_ki^2``, from one batched triangular solve. Not ``torch.cholesky_inverse``,
    which syncs with the host on CUDA and took 2-2.6 x as long on CPU (G = 8 to 64)."""
    eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
    inverse = torch.linalg.solve_triangular(factor, eye.expand_as(factor), upper=False)
    return inverse.square_().sum(1)


def _log_det(x: torch.Tensor, eta: float, lam: float, *, raw: bool) -> torch.Tensor:
    """``LogDetMI_i = -log(1 - eta^2 + eta^2 / w_i)``, ``w_i = (s_ii + lam) [(S + lam I)^-1]_ii``.

    ``1 / [(S + lam I)^-1]_ii`` is the Schur complement ``s_ii + lam - s_iQ^T (S_Q + lam I)^-1
    s_iQ``, which lies in ``[lam, s_ii + lam]`` (``S`` is positive semi-definite), so ``w_i`` lies
    in ``[1, (s_ii + lam) / lam]``; it is clamped there against rounding. A zero row has
    ``w_i = 1`` and SMI exactly 0.
    """
    s, weight, nan_groups = _cosines(x, raw)
    ridge = weight + lam  # s_ii + lam
    s.diagonal(dim1=1, dim2=2).copy_(ridge)
    factor, info = torch.linalg.cholesky_ex(s)
    # NOTE: cannot happen for lam >= MIN_LAM and finite float64 cosines. On CUDA an asynchronous
    # device assertion, so that the check does not synchronise.
    message = "log_det: S + lam I is not numerically positive definite"
    if s.device.type != "cpu":
        torch._assert_async((info == 0).all(), message)
    elif bool((info != 0).any()):
        raise RuntimeError(message)
    inverse_diagonal = _inverse_diagonal(factor)
    w = (ridge * inverse_diagonal).clamp_(min=1.0)
    w = torch.minimum(w, ridge / lam)
    values = torch.log((1.0 - eta * eta) + (eta * eta) / w).neg_().add_(0.0)  # no -0.0
    return _fill_groups(values, nan_groups, math.nan)
