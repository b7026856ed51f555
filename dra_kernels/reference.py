"""The executable spec of DRA: each formula of docs/semantics.md, written plainly, group by group.

This is what a reader checks against the paper, and what every implementation (the torch backend,
the Triton kernels, :mod:`dra_kernels.distributed`, the measures) is tested against, evaluated in
float64. Nothing here is tuned: each group's ``G x G`` cosine matrix is built, and each sum is
the one the definition writes. Inputs are torch tensors; rows with equal ``group_ids`` (an integer
tensor) form a group; computations run in the floating dtype of the inputs (pass float64).
"""

from __future__ import annotations

import torch

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_ETA",
    "DEFAULT_LAM",
    "DEFAULT_MIN_DENOMINATOR",
    "adjust_from_smi",
    "group_advantages",
    "smi_scores",
    "unit_rows",
]

DEFAULT_MIN_DENOMINATOR = 0.1
"""Lower clamp of ``1 + SMI``: no reward is amplified more than ``1 / 0.1 = 10`` times."""

DEFAULT_EPS = 1e-4
"""Added to the group standard deviation in GRPO advantages (TRL's value)."""

DEFAULT_ETA = 1.0
"""Default ``eta`` (submodlib's ``magnificationEta``)."""

DEFAULT_LAM = 1.0
"""Default ``lam`` (submodlib's ``lambdaVal``)."""


def _groups(group_ids: torch.Tensor) -> list[torch.Tensor]:
    """The row indices of each group, each in row order."""
    return [torch.nonzero(group_ids == g).flatten() for g in torch.unique(group_ids)]


def unit_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """``e_i / |e_i|``; a zero row stays zero, a row holding NaN or inf becomes NaN. Each row is
    first divided by its largest magnitude, so that no square overflows or underflows."""
    peak = embeddings.abs().amax(dim=1, keepdim=True)
    x = embeddings / torch.where(peak > 0, peak, 1.0)
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, 1.0)


def _graph_cut(s: torch.Tensor, eta: float, lam: float) -> torch.Tensor:
    """``SMI_i = sum_{j != i} s_ij``."""
    return s.sum(dim=1) - s.diagonal()


def _facility_location(s: torch.Tensor, eta: float, lam: float) -> torch.Tensor:
    """``SMI_i = sum_v min(s_vi^+, (eta max_{q != i} s_vq)^+)``."""
    out = s.new_empty(len(s))
    for i in range(len(s)):
        others = [q for q in range(len(s)) if q != i]
        nearest_query = s[:, others].amax(dim=1)  # max over q != i of s_vq, for each v
        out[i] = torch.minimum(s[:, i].clamp(min=0), (eta * nearest_query).clamp(min=0)).sum()
    return out


def _log_det(s: torch.Tensor, eta: float, lam: float) -> torch.Tensor:
    """``SMI_i = -log(1 - eta^2 s_iQ^T (S_Q + lam I)^-1 s_iQ / (s_ii + lam))``, ``Q = C \\ {i}``."""
    out = s.new_empty(len(s))
    for i in range(len(s)):
        q = [j for j in range(len(s)) if j != i]
        s_iq = s[i, q]
        ridge = s[q][:, q] + lam * torch.eye(len(q), dtype=s.dtype)
        explained = s_iq @ torch.linalg.solve(ridge, s_iq)
        out[i] = -torch.log1p(-(eta**2) * explained / (s[i, i] + lam))
    return out


_MEASURES = {"graph_cut": _graph_cut, "facility_location": _facility_location, "log_det": _log_det}


def smi_scores(
    embeddings: torch.Tensor,
    group_ids: torch.Tensor,
    measure: str = "graph_cut",
    *,
    eta: float = DEFAULT_ETA,
    lam: float = DEFAULT_LAM,
) -> torch.Tensor:
    """SMI of each row against the rest of its group: ``I_f({i}; C \\ {i})``.

    ``s`` is the group's cosine matrix with ``s_ii = |u_i|^2`` (1, or 0 for a zero row). A group
    of one row has SMI 0 whatever it holds (the query set is empty); a group holding a NaN or inf
    row is NaN.

    Args:
        embeddings: ``[N, D]`` floating tensor.
        group_ids: ``[N]`` integer tensor.
        measure: ``"graph_cut"`` (the paper's), ``"facility_location"`` or ``"log_det"``.
        eta: query magnification (facility location, log-det).
        lam: ridge added to the diagonal (log-det).

    Returns:
        ``[N]`` tensor of the embeddings' dtype.
    """
    u = unit_rows(embeddings)
    smi = u.new_zeros(len(u))
    for rows in _groups(group_ids):
        if len(rows) == 1:
            continue
        s = u[rows] @ u[rows].T
        s.diagonal().copy_((u[rows] != 0).any(dim=1))
        if s.isnan().any():
            smi[rows] = torch.nan
        else:
            smi[rows] = _MEASURES[measure](s, eta, lam)
    return smi


def adjust_from_smi(
    rewards: torch.Tensor, smi: torch.Tensor, min_denominator: float = DEFAULT_MIN_DENOMINATOR
) -> torch.Tensor:
    """DRA: ``r_i / max(1 + SMI_i, min_denominator)``, in the dtype of ``smi`` (the SMI of
    :func:`smi_scores`)."""
    denominator = torch.clamp(1.0 + smi, min=min_denominator)
    return rewards.to(smi.dtype) / denominator


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, scale: str = "std", eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """GRPO (``scale="std"``): ``(r - mean) / (std + eps)`` within each group, with the unbiased
    standard deviation (0 for a group of one row); DR.GRPO (``scale="none"``): ``r - mean``."""
    out = torch.empty_like(rewards)
    for rows in _groups(group_ids):
        r = rewards[rows]
        centred = r - r.mean()
        if scale == "none":
            out[rows] = centred
        else:
            std = r.std() if len(r) > 1 else 0.0
            out[rows] = centred / (std + eps)
    return out
