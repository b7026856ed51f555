"""DRA for Hugging Face TRL's ``GRPOTrainer`` (supported: ``trl>=1.16,<1.17``).

Where it plugs in: reward functions run on each process's local slice of the batch, so no reward
function sees a whole group. ``GRPOTrainer._calculate_rewards`` returns the gathered
``[global batch, reward functions]`` matrix that the trainer then normalises per group (rows
``j`` of the gathered batch with equal ``j // num_generations`` form one group). The override here:

1. calls TRL's ``_calculate_rewards`` (the reward functions and the gather, unchanged);
2. embeds only this process's completions (``embedder``);
3. computes their SMI with :func:`dra_kernels.distributed.smi_scores`, the groups being TRL's own
   (integer ids ``j // G`` with ``num_groups``, so no id exchange: one all-reduce of
   ``K x (D + 1)`` floats per batch), then gathers the ``[global batch]`` SMI vector (as TRL gathers
   its rewards);
4. divides every reward column by ``max(1 + SMI, min_denominator)``.

``multi_objective_aggregation``:

- ``"sum_then_normalize"`` (TRL's default): TRL normalises the weighted sum of the columns;
  dividing each column of a row by the same number divides that sum, so the rewards TRL normalises
  are exactly :func:`dra_kernels.adjust_rewards` of the weighted summed rewards.
- ``"normalize_then_sum"``: TRL normalises each column within its group before summing, and there
  is no per-group sum to adjust. DRA is applied to each reward function's column (each objective
  is diversity-adjusted, then normalised). With one reward function the two modes adjust the same
  rewards. Any other mode is refused at construction.

Metrics (``self._metrics[mode]``, averaged over the logging interval like TRL's own):
``dra/smi_mean`` (mean SMI over the global batch), ``dra/factor_mean`` (mean of
``1 / max(1 + SMI, min_denominator)``) and ``dra/reward_raw`` (mean weighted reward before DRA;
TRL's ``reward`` and ``rewards/<name>/mean`` report the adjusted rewards).

This module imports TRL; :mod:`dra_kernels` itself never does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

try:
    import trl
    from accelerate.utils import gather
    from trl import GRPOTrainer
    from trl.extras.profiling import profiling_context
except ImportError as exc:  # pragma: no cover - exercised only without trl
    raise ImportError(
        "dra_kernels.integrations.trl needs TRL: pip install 'dra-kernels[trl]' "
        f"(supported: trl>=1.16,<1.17); import failed with: {exc}"
    ) from exc

from dra_kernels import distributed, reference
from dra_kernels.integrations._common import as_embed_fn
from dra_kernels.reference import DEFAULT_MIN_DENOMINATOR

__all__ = ["DRAGRPOTrainer", "DRARewardsMixin", "SUPPORTED_TRL", "completion_text"]

SUPPORTED_TRL = ">=1.16,<1.17"
"""TRL versions this integration is tested with (it overrides a private method)."""

_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")

if not hasattr(GRPOTrainer, "_calculate_rewards"):  # pragma: no cover - other TRL versions
    raise ImportError(
        f"trl {trl.__version__}: GRPOTrainer has no _calculate_rewards, which DRA overrides; "
        f"install a supported version: pip install 'trl{SUPPORTED_TRL}'"
    )
if not trl.__version__.startswith("1.16."):
    warnings.warn(
        f"dra_kernels.integrations.trl is tested with trl{SUPPORTED_TRL}, found {trl.__version__}",
        stacklevel=2,
    )

Embedder = Callable[[list[str]], Any]


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string, or the contents of conversational messages.

    Args:
        completion: a string (standard format) or a list of ``{"role", "content"}`` messages
            (conversational format), where ``content`` is a string or a list of content blocks.

    Returns:
        The string itself, or the messages' text contents joined by newlines.

    Example:
        >>> completion_text([{"role": "assistant", "content": "x = 2"}])
        'x = 2'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    parts = []
    for message in completion:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, Sequence):
            parts.extend(
                block["text"]
                for block in content
                if isinstance(block, dict) and isinstance(block.get("text"), str)
            )
    return "\n".join(parts)


def _embedding_function(embedder: Any, device: torch.device) -> Embedder:
    """A ``list[str] -> [N, D]`` function from a callable, an object with ``encode``, or a name."""
    if isinstance(embedder, str):
        from dra_kernels.embed import Embedder as SentenceEmbedder

        embedder = SentenceEmbedder(embedder, device=str(device))
    return as_embed_fn(embedder, "embedder")


class DRARewardsMixin:
    """Adds Diversity-aware Reward Adjustment to a ``GRPOTrainer`` (or a subclass of it).

    Put it first in the bases: ``class MyTrainer(DRARewardsMixin, MyGRPOTrainer)``.

    Args:
        embedder: a function ``list[str] -> [N, D]`` (torch tensor, numpy array or nested list), an
            object with an ``encode(texts)`` method (:class:`dra_kernels.embed.Embedder`, a
            ``SentenceTransformer``), or a sentence-transformers model name (built with
            :class:`dra_kernels.embed.Embedder` on the trainer's device). Each process embeds only
            its own completions.
        dra_min_denominator: lower clamp of ``1 + SMI`` (see :func:`dra_kernels.adjust_rewards`).
        *args: passed to the trainer unchanged.
        **kwargs: passed to the trainer unchanged.
    """

    def __init__(
        self,
        *args: Any,
        embedder: Any,
        dra_min_denominator: float = DEFAULT_MIN_DENOMINATOR,
        **kwargs: Any,
    ) -> None:
        if (
            isinstance(dra_min_denominator, bool)
            or not isinstance(dra_min_denominator, (int, float))
            or not np.isfinite(dra_min_denominator)
            or not 0 < dra_min_denominator <= 1
        ):
            raise ValueError(
                f"dra_min_denominator must be a number in (0, 1] (as for adjust_rewards), got "
                f"{dra_min_denominator!r}"
            )
        if not isinstance(embedder, str):
            _embedding_function(embedder, torch.device("cpu"))  # refuse a wrong kind early
        super().__init__(*args, **kwargs)
        if self.multi_objective_aggregation not in _AGGREGATIONS:
            raise ValueError(
                f"DRA supports multi_objective_aggregation in {_AGGREGATIONS}, got "
                f"{self.multi_objective_aggregation!r}: for other modes dividing the reward "
                "columns is not known to adjust the rewards that TRL normalises"
            )
        self.dra_min_denominator = float(dra_min_denominator)
        self.dra_embed = _embedding_function(embedder, self.accelerator.device)

    def _dra_local_embeddings(self, completions: list[Any]) -> torch.Tensor:
        texts = [completion_text(c) for c in completions]
        with torch.no_grad(), profiling_context(self, "dra_embed"):
            out = self.dra_embed(texts)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out))
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise ValueError(
                f"the embedder returned shape {tuple(out.shape)} for {len(texts)} completions; "
                "expected [N, D], one row per completion"
            )
        if not out.is_floating_point():
            out = out.float()
        return out.detach().to(self.accelerator.device)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        total, local = rewards_per_func.shape[0], len(completions)
        if total % group_size != 0 or total != local * self.accelerator.num_processes:
            raise ValueError(
                f"DRA expects the gathered batch ({total} rows) to be "
                f"{self.accelerator.num_processes} equal local slices of {local} completions, "
                f"in whole groups of {group_size}"
            )
        device = rewards_per_func.device
        embeddings = self._dra_local_embeddings(completions)
        # NOTE: TRL's groups: row j of the gathered batch (process-major) is in group j // G.
        start = self.accelerator.process_index * local
        group_ids = torch.arange(start, start + local, device=embeddings.device) // group_size
        with profiling_context(self, "dra_smi"):
            smi_local = distributed.smi_scores(
                embeddings, group_ids, num_groups=total // group_size
            )
            smi = gather(smi_local.to(device)).to(torch.float32)
        adjusted = reference.adjust_from_smi(
            rewards_per_func, smi.unsqueeze(1), self.dra_min_denominator
        ).to(rewards_per_func.dtype)

        factor = 1.0 / torch.clamp(1.0 + smi, min=self.dra_min_denominator)
        weights = self.reward_weights.to(device).unsqueeze(0)
        raw = (rewards_per_func * weights).nansum(dim=1)
        raw[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        self._metrics[mode]["dra/smi_mean"].append(smi.mean().item())
        self._metrics[mode]["dra/factor_mean"].append(factor.mean().item())
        self._metrics[mode]["dra/reward_raw"].append(torch.nanmean(raw).item())
        return adjusted


class DRAGRPOTrainer(DRARewardsMixin, GRPOTrainer):
    """``trl.GRPOTrainer`` with Diversity-aware Reward Adjustment.

    Takes every ``GRPOTrainer`` argument, plus ``embedder`` and ``dra_min_denominator`` (keyword
    only, see :class:`DRARewardsMixin`).

    Example::

        trainer = DRAGRPOTrainer(
            model=model, reward_funcs=accuracy, args=GRPOConfig(...), train_dataset=dataset,
            embedder=Embedder(),  # dra_kernels.embed.Embedder, or any list[str] -> [N, D]
        )
    """
