"""DRA for Hugging Face TRL's ``GRPOTrainer`` (supported: ``trl>=1.16,<1.17``): the override is
``GRPOTrainer._calculate_rewards``, where the gathered reward matrix exists. See
docs/integrations/trl.md (what happens at each batch, the options, the embedders, the metrics).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

try:
    import trl
    from accelerate.utils import is_peft_model
    from trl import GRPOTrainer
    from trl.extras.profiling import profiling_context
    from trl.trainer.utils import nanstd, pad
except ImportError as exc:  # pragma: no cover - exercised only without trl
    raise ImportError(
        'dra_kernels.integrations.trl needs TRL: pip install -e ".[trl]" from a clone of the '
        f"dra-kernels repository (supported: trl>=1.16,<1.17); import failed with: {exc}"
    ) from exc

from dra_kernels.embed import EMBEDDER_OPTIONS, pool_hidden_states
from dra_kernels.integrations import gathered
from dra_kernels.step import DRAStep

__all__ = [
    "DRAGRPOTrainer",
    "DRARewardsMixin",
    "OPTION_PREFIX",
    "POLICY",
    "SUPPORTED_TRL",
    "completion_text",
    "keyword_step",
]

SUPPORTED_TRL = ">=1.16,<1.17"
"""TRL versions this integration is tested with (it overrides private methods)."""

POLICY = "policy"
"""``embedder=POLICY``: embed completions with the policy's own last hidden states."""

OPTION_PREFIX = "dra_"
"""Trainer keywords ``dra_<option>`` set the :class:`dra_kernels.step.DRAStep` options and the
:class:`dra_kernels.embed.EmbedderConfig` fields."""

_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
_POLICY_OPTIONS = (f"{OPTION_PREFIX}batch_size",)

gathered.check_trainer(
    GRPOTrainer, ("_calculate_rewards", "_generate"), f"trl{SUPPORTED_TRL}", trl.__version__
)


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


def keyword_step(
    embedder: Any,
    options: dict[str, Any],
    *,
    advantages: str = "TRL computes the advantages; set GRPOConfig's scale_rewards instead",
    device: str | None = None,
) -> tuple[DRAStep, bool]:
    """``(step, policy)``: the step that a TRL trainer's ``embedder`` and ``dra_*`` keywords
    describe, checked without loading anything, and whether the policy embeds.

    Args:
        embedder: the trainer's ``embedder`` argument (see :class:`DRARewardsMixin`).
        options: the ``dra_*`` keywords, spelled with their prefix.
        advantages: why ``dra_scale`` / ``dra_eps`` are refused, said in the error.
        device: where the SMI will run, if known: the backend is checked against it.

    Raises:
        ValueError, TypeError: an option or a combination that cannot apply, naming the keyword;
        ImportError: the text embedder without the ``embed`` extra.
    """
    fields = {key[len(OPTION_PREFIX) :]: value for key, value in options.items()}
    spell = OPTION_PREFIX + "{}"
    gathered.refuse_advantage_options(fields, advantages, spell)
    given = sorted(key for key, value in options.items() if value is not None)
    if isinstance(embedder, str) and embedder == POLICY:
        extra = [key for key in given if key[len(OPTION_PREFIX) :] in EMBEDDER_OPTIONS]
        extra = [key for key in extra if key not in _POLICY_OPTIONS]
        if extra:
            raise ValueError(
                f"embedder={POLICY!r} pools the policy's own hidden states; the embedder options "
                f"{', '.join(extra)} configure a text encoder (embedder=None or a model name) "
                f"and do not apply to it: with {POLICY!r} only {', '.join(_POLICY_OPTIONS)} "
                "(completions per forward) does"
            )
        return DRAStep.from_options(fields, spell=spell, device=device), True
    if embedder is None or isinstance(embedder, str):
        if isinstance(embedder, str):
            if not embedder:
                raise ValueError("embedder must not be an empty string")
            if fields.get("model") is not None:
                raise ValueError(
                    f"give the embedding model once: embedder={embedder!r} and "
                    f"{OPTION_PREFIX}model={fields['model']!r} both name one"
                )
            fields["model"] = embedder
        step = DRAStep.from_options(fields, spell=spell, device=device)
        instead = f"embedder={POLICY!r} or your own embedding function"
        gathered.check_text_embedder(step, install='pip install -e ".[trl,embed]"', instead=instead)
        return step, False
    return DRAStep.from_options(fields, spell=spell, embedder=embedder, device=device), False


class DRARewardsMixin:
    """Adds Diversity-aware Reward Adjustment to a ``GRPOTrainer`` (or a subclass of it).

    Put it first in the bases: ``class MyTrainer(DRARewardsMixin, MyGRPOTrainer)``. Every option
    is checked before the trainer's own ``__init__`` runs, so before any model is loaded.

    Args:
        embedder: what embeds each process's completions: ``None`` (default) for
            :class:`dra_kernels.embed.Embedder` from the ``dra_*`` options (the bundled
            all-MiniLM-L6-v2, every token read), on the trainer's device; a sentence-transformers
            model name or directory (shorthand for ``dra_model=``); ``"policy"``, the mean of the
            policy's own last hidden states over each completion (one extra no-grad forward per
            batch); or a function ``list[str] -> [N, D]`` or an object with ``encode(texts)``,
            used as given (no ``dra_*`` embedder option then).
        dra_min_denominator, dra_measure, dra_eta, dra_lam, dra_backend: the step's options
            (:class:`dra_kernels.step.DRAStep`; the measures in docs/measures.md).
        dra_model, dra_trust_remote_code, dra_long_text, dra_window_tokens, dra_window_overlap,
            dra_max_tokens, dra_batch_size, dra_device, dra_dtype: the
            :class:`dra_kernels.embed.EmbedderConfig` fields of the same name without ``dra_``
            (``dra_device=None``: the trainer's device). With ``"policy"`` only
            ``dra_batch_size`` applies: completions per forward (default: TRL's per-device batch
            size). An unknown ``dra_*`` keyword is an error listing the valid ones.
        *args: passed to the trainer unchanged.
        **kwargs: passed to the trainer unchanged.

    Example (the DRA paper's embedder)::

        DRAGRPOTrainer(
            ..., dra_model="jinaai/jina-embeddings-v2-small-en", dra_trust_remote_code=True
        )
    """

    def __init__(self, *args: Any, embedder: Any = None, **kwargs: Any) -> None:
        options = {key: kwargs.pop(key) for key in list(kwargs) if key.startswith(OPTION_PREFIX)}
        step, policy = keyword_step(embedder, options)
        super().__init__(*args, **kwargs)
        if self.multi_objective_aggregation not in _AGGREGATIONS:
            raise ValueError(
                f"DRA supports multi_objective_aggregation in {_AGGREGATIONS}, got "
                f"{self.multi_objective_aggregation!r}: for other modes dividing the reward "
                "columns is not known to adjust the rewards that TRL normalises"
            )
        self.dra_policy_embedder = policy
        self.dra_policy_batch_size: int | None = options.get(f"{OPTION_PREFIX}batch_size")
        self._dra_prompt_ids: list[list[int]] | None = None
        self._dra_raw: tuple[str, torch.Tensor] | None = None
        if policy:
            if self._is_vlm:
                raise ValueError(
                    f"embedder={POLICY!r} forwards token ids only and cannot pass a "
                    "vision-language model its images; use a text embedder"
                )
            step = step.with_embedder(None)
        else:
            step = gathered.placed_step(step, self.accelerator.device)
        self.dra_step = step

    def _generate(self, prompts):
        output = super()._generate(prompts)
        if self.dra_policy_embedder:
            # NOTE: (prompt_ids, completion_ids, ...): for _calculate_rewards of the same batch
            self._dra_prompt_ids = output[0]
        return output

    def _dra_policy_embeddings(self, completion_ids_list: list[Any], mode: str) -> torch.Tensor:
        prompt_ids, self._dra_prompt_ids = self._dra_prompt_ids, None
        if prompt_ids is None or len(prompt_ids) != len(completion_ids_list):
            found = "none" if prompt_ids is None else f"{len(prompt_ids)} rows"
            raise RuntimeError(
                f"embedder={POLICY!r} needs the prompt ids that GRPOTrainer._generate returned for "
                f"these {len(completion_ids_list)} completions, found {found}: a subclass that "
                "generates without calling _generate must set self._dra_prompt_ids"
            )
        batch_size = self.dra_policy_batch_size or getattr(
            self.args, f"per_device_{mode}_batch_size"
        )
        device = self.accelerator.device
        pad_id = self._tokenizer.pad_token_id or 0
        model = self.model
        base = self.accelerator.unwrap_model(model)
        base = base.get_base_model() if is_peft_model(base) else base
        # NOTE: with logits_to_keep the forward makes one logit, not one per token
        accepts = "logits_to_keep" in inspect.signature(base.forward).parameters
        keep = {"logits_to_keep": 1} if accepts else {}

        def padded(rows: list[Any], side: str) -> tuple[torch.Tensor, torch.Tensor]:
            ids = [torch.as_tensor(row, dtype=torch.long) for row in rows]
            return pad(ids, pad_id, side), pad([torch.ones_like(i) for i in ids], 0, side)

        was_training = model.training
        rows = []
        model.eval()  # NOTE: no dropout; restored below, TRL reads the mode from model.training
        try:
            with torch.no_grad(), profiling_context(self, "dra_policy_forward"):
                for start in range(0, len(prompt_ids), batch_size):
                    end = start + batch_size
                    # TRL's own layout: prompts padded on the left, completions on the right.
                    prompts, prompt_mask = padded(prompt_ids[start:end], "left")
                    completions, completion_mask = padded(completion_ids_list[start:end], "right")
                    ids = torch.cat([prompts, completions], dim=1).to(device)
                    attention = torch.cat([prompt_mask, completion_mask], dim=1).to(device)
                    response = torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1)
                    with self.accelerator.autocast():
                        out = model(
                            input_ids=ids,
                            attention_mask=attention,
                            output_hidden_states=True,
                            use_cache=False,
                            **keep,
                        )
                    rows.append(pool_hidden_states(out.hidden_states[-1], response.to(device)))
                    del out
        finally:
            model.train(was_training)
        return torch.cat(rows, dim=0)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        mode = "train" if self.model.training else "eval"
        if self.dra_policy_embedder:
            embeddings = self._dra_policy_embeddings(completion_ids_list, mode)
            coverage = {"dra/tokens_read_share": 1.0, "dra/texts_cut": 0.0}  # every token read
        else:
            with torch.no_grad(), profiling_context(self, "dra_embed"):
                texts = [completion_text(c) for c in completions]
                embeddings, coverage = self.dra_step.embed(texts)
        with profiling_context(self, "dra_step"):
            smi = gathered.smi(self, rewards_per_func, embeddings, mode=mode, coverage=coverage)
        self._dra_raw = (mode, rewards_per_func)
        return self.dra_step.adjust(rewards_per_func, smi)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self._dra_raw is not None:
            self._dra_restore_reward_metrics(*self._dra_raw)
            self._dra_raw = None
        return output

    def _dra_restore_reward_metrics(self, mode: str, rewards_per_func: torch.Tensor) -> None:
        """TRL's own reward metrics and logged rewards recomputed from the raw rewards, as TRL
        computes them (``GRPOTrainer._generate_and_score_completions``, trl 1.16)."""
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        metrics = self._metrics[mode]
        for i, name in enumerate(self.reward_func_names):
            column = rewards_per_func[:, i]
            metrics[f"rewards/{name}/mean"][-1] = torch.nanmean(column).item()
            metrics[f"rewards/{name}/std"][-1] = nanstd(column).item()
            logged = self._logs["rewards"][name]
            for _ in range(min(len(column), len(logged))):
                logged.pop()
            logged.extend(column.tolist())
        rewards = gathered.weighted_rewards(rewards_per_func, self.reward_weights)
        metrics["reward"][-1] = torch.nanmean(rewards).item()
        metrics["reward_std"][-1] = nanstd(rewards).item()
        if self.multi_objective_aggregation == "sum_then_normalize":
            if self.scale_rewards == "batch":
                std = nanstd(rewards) if rewards.numel() > 1 else torch.zeros(())
            elif group_size > 1:
                std = nanstd(rewards.view(-1, group_size), dim=1)
            else:
                std = torch.zeros(())
        else:  # normalize_then_sum: the batch std of the weighted sum of normalised columns
            grouped = rewards_per_func.view(-1, group_size, rewards_per_func.shape[1])
            mean = torch.nanmean(grouped, dim=1, keepdim=True)
            spread = nanstd(grouped, dim=1, keepdim=True) if group_size > 1 else 0.0 * mean
            normalised = ((grouped - mean) / (spread + 1e-4)).view(rewards_per_func.shape)
            summed = gathered.weighted_rewards(normalised, self.reward_weights, rewards_per_func)
            std = nanstd(summed) if summed.numel() > 1 else torch.zeros(())
        zero = torch.isclose(std, torch.zeros_like(std)).float().mean().item()
        metrics["frac_reward_zero_std"][-1] = zero


class DRAGRPOTrainer(DRARewardsMixin, GRPOTrainer):
    """``trl.GRPOTrainer`` with Diversity-aware Reward Adjustment: every ``GRPOTrainer`` argument,
    plus ``embedder`` and the ``dra_*`` options (keyword only, see :class:`DRARewardsMixin`).

    Example::

        trainer = DRAGRPOTrainer(
            model=model, reward_funcs=accuracy, args=GRPOConfig(...), train_dataset=dataset,
        )  # bundled all-MiniLM-L6-v2 on the trainer's device, every token read
        trainer = DRAGRPOTrainer(..., embedder="policy")  # the policy's own hidden states
    """
