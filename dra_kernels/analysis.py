"""The diversity-quality analysis of the DRA paper: do rewards see reasoning diversity at all?

Per prompt, Spearman's rank correlation between pairwise reward differences and embedding
distances; prompts that cannot be tested are counted apart (docs/cli.md, "analyze"). Needs scipy
and, for the plot, matplotlib: the ``cli`` extra, ``pip install -e ".[cli]"``.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dra_kernels._words import counted

__all__ = [
    "DEFAULT_ALPHA",
    "DiversityReport",
    "GroupCorrelation",
    "diversity_quality",
    "pairwise_terms",
    "plot_p_values",
]

DEFAULT_ALPHA = 0.05
_MIN_GROUP = 3


@dataclass(frozen=True)
class GroupCorrelation:
    """Spearman's test for one prompt.

    Attributes:
        group: the group key.
        size: completions in the group.
        pairs: ``size * (size - 1) / 2``.
        rho: Spearman's correlation (NaN when untestable).
        p_value: two-sided p-value (NaN when untestable).
        reason: why the group is untestable, else ``None``.
    """

    group: Hashable
    size: int
    pairs: int
    rho: float
    p_value: float
    reason: str | None = None

    @property
    def tested(self) -> bool:
        """Whether a correlation could be computed."""
        return self.reason is None


@dataclass(frozen=True)
class DiversityReport:
    """Result of :func:`diversity_quality`.

    Attributes:
        groups: one :class:`GroupCorrelation` per group, in order of first appearance.
        alpha: significance level.
    """

    groups: list[GroupCorrelation]
    alpha: float = DEFAULT_ALPHA

    @property
    def tested(self) -> list[GroupCorrelation]:
        """The groups with a correlation."""
        return [g for g in self.groups if g.tested]

    @property
    def not_significant(self) -> int:
        """Tested groups with ``p > alpha``."""
        return sum(g.p_value > self.alpha for g in self.tested)

    @property
    def share_not_significant(self) -> float:
        """Share of tested groups with ``p > alpha`` (NaN when none could be tested)."""
        tested = len(self.tested)
        return self.not_significant / tested if tested else math.nan

    def summary(self) -> str:
        """Two lines for a terminal."""
        tested = len(self.tested)
        skipped = len(self.groups) - tested
        if tested:
            show = "shows" if self.not_significant == 1 else "show"
            head = (
                f"{self.not_significant} of {counted(tested, 'prompt')} "
                f"({self.share_not_significant:.0%}) {show} no significant rank correlation "
                f"between reward differences and embedding distances (Spearman p > {self.alpha:g})."
            )
        else:
            head = "No prompt could be tested."
        reasons = Counter(g.reason for g in self.groups if g.reason is not None)
        tail = (
            f"{counted(skipped, 'prompt')} not tested: "
            + "; ".join(f"{count} with {reason}" for reason, count in reasons.items())
            if skipped
            else "Every prompt was tested."
        )
        return f"{head}\n{tail}"

    def rows(self) -> list[dict[str, Any]]:
        """One dict per group, for :func:`dra_kernels.rollouts.write_rows` (NaN -> None)."""
        return [
            {
                "group": g.group,
                "completions": g.size,
                "pairs": g.pairs,
                "spearman_rho": None if math.isnan(g.rho) else g.rho,
                "p_value": None if math.isnan(g.p_value) else g.p_value,
                "not_significant": None if not g.tested else bool(g.p_value > self.alpha),
                "untested_reason": g.reason,
            }
            for g in self.groups
        ]


def pairwise_terms(rewards: Any, embeddings: Any) -> tuple[np.ndarray, np.ndarray]:
    """Reward differences and embedding distances over the pairs ``i < j`` of one group.

    Args:
        rewards: ``[G]`` rewards of one group.
        embeddings: ``[G, D]`` their embeddings (any scale; zero rows have distance 1 to all).

    Returns:
        ``(|r_i - r_j|, 1 - cos(e_i, e_j))`` as float64 arrays of length ``G * (G - 1) / 2``, in
        the order of ``numpy.triu_indices(G, 1)``.

    Example:
        >>> diff, dist = pairwise_terms([1.0, 0.0, 1.0], [[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
        >>> diff.tolist(), dist.tolist()
        ([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    """
    r = np.asarray(rewards, dtype=np.float64)
    e = np.asarray(embeddings, dtype=np.float64)
    if r.ndim != 1 or e.ndim != 2 or e.shape[0] != r.shape[0]:
        raise ValueError(
            f"rewards must be [G] and embeddings [G, D] with the same G, got shapes "
            f"{r.shape} and {e.shape}"
        )
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    unit = np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)
    i, j = np.triu_indices(r.shape[0], 1)
    cosines = np.clip(np.einsum("pd,pd->p", unit[i], unit[j]), -1.0, 1.0)
    return np.abs(r[i] - r[j]), 1.0 - cosines


def diversity_quality(
    rewards: Any,
    embeddings: Any,
    group_ids: Sequence[Hashable],
    *,
    alpha: float = DEFAULT_ALPHA,
) -> DiversityReport:
    """Per-prompt Spearman test between pairwise reward differences and embedding distances.

    Args:
        rewards: ``[N]`` rewards (list, numpy or torch).
        embeddings: ``[N, D]`` completion embeddings.
        group_ids: ``[N]`` group key of each completion (any hashables).
        alpha: significance level for the share.

    Returns:
        :class:`DiversityReport`.
    """
    try:
        from scipy.stats import spearmanr
    except ImportError:
        raise _missing("the diversity analysis needs scipy") from None
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    r = _as_numpy(rewards)
    e = _as_numpy(embeddings)
    if r.ndim != 1 or e.ndim != 2 or e.shape[0] != r.shape[0] or len(group_ids) != r.shape[0]:
        raise ValueError(
            f"rewards [N], embeddings [N, D] and group_ids [N] must agree; got shapes "
            f"{r.shape}, {e.shape} and {counted(len(group_ids), 'id')}"
        )
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(group_ids):
        members.setdefault(key, []).append(index)
    results = []
    for key, rows in members.items():
        size = len(rows)
        rho = p_value = math.nan
        reason = "fewer than 3 completions" if size < _MIN_GROUP else None
        if reason is None:
            diff, dist = pairwise_terms(r[rows], e[rows])
            if np.ptp(diff) == 0:
                reason = "equal rewards"
            elif np.ptp(dist) == 0:
                reason = "identical embeddings"
            else:
                rho, p_value = (float(x) for x in spearmanr(diff, dist))
        results.append(GroupCorrelation(key, size, size * (size - 1) // 2, rho, p_value, reason))
    return DiversityReport(results, alpha)


def _missing(what: str) -> ImportError:
    return ImportError(
        f'{what}: pip install -e ".[cli]" from a clone of the dra-kernels repository'
    )


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def plot_p_values(
    report: DiversityReport, path: str | os.PathLike[str], *, title: str | None = None
) -> None:
    """Histogram of the per-prompt p-values, with the significance threshold marked, as PNG.

    Uses matplotlib's Agg canvas directly: no display needed, and the pyplot backend of the
    calling process is left alone. The file is written atomically (temporary file + rename).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise _missing("the plot needs matplotlib") from None
    from dra_kernels.rollouts import atomic_path

    p_values = [g.p_value for g in report.tested]
    figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.hist(p_values, bins=np.linspace(0.0, 1.0, 21), color="#4c72b0", edgecolor="white")
    axes.axvline(report.alpha, color="#c44e52", linestyle="--", label=f"p = {report.alpha:g}")
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("Spearman p-value: |reward difference| vs embedding distance")
    axes.set_ylabel("prompts")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    share = report.share_not_significant
    default_title = (
        f"{report.not_significant}/{counted(len(p_values), 'prompt')} with p > {report.alpha:g}"
        + ("" if math.isnan(share) else f" ({share:.0%})")
    )
    axes.set_title(title or default_title)
    axes.legend(loc="upper right")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
