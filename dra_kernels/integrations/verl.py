"""DRA for verl (0.9.x): adjust a DataProto batch, and a ``verl.plugins`` hook for the v1 trainer.

verl scores one trajectory per reward call, so DRA cannot live in a reward function: it needs every
completion of a prompt's group at once. Two ways in:

- :func:`apply_dra`: adjusts the scores of a :class:`verl.DataProto` in place of its score tensors
  (``token_level_scores`` / ``rm_scores`` / ``token_level_rewards``): decodes each valid response
  with the tokenizer, embeds the texts, groups rows by ``non_tensor_batch["uid"]`` and writes
  ``r / max(1 + SMI, min_denominator)`` at the last valid response token. For custom trainers.
- The plugin: installing dra-kernels registers this module under the ``verl.plugins`` entry-point
  group, which ``import verl`` imports. It wraps ``PPOTrainer._compute_advantage`` of verl's v1
  trainer (``verl/trainer/ppo/v1/trainer_base.py``, all ``trainer.v1.trainer_mode`` values) when
  that module is imported. The wrapper calls the original unchanged unless the run asked for DRA:
  ``+dra.enable=true`` in the Hydra configuration, or ``DRA_KERNELS_VERL=1`` in the environment of
  the trainer process. When asked, it rewrites ``rm_scores`` in TransferQueue before verl computes
  the advantages, and logs ``dra/*`` metrics. The legacy trainer (``trainer.use_v1=false``) is not
  wrapped: a run that asks for DRA there fails at start-up instead of silently training without it.

Configuration keys (all under the top-level ``dra`` group; Hydra needs the ``+`` to add them)::

    dra.enable           false   turn DRA on
    dra.embedder         null    "module:attr" of a callable list[str] -> [N, D], of an object
                                 with .encode(list[str]), or of a class building one with no args;
                                 null: dra_kernels.embed.Embedder (bundled all-MiniLM-L6-v2)
    dra.model            null    model of the default Embedder (name or local directory)
    dra.device           null    device of the default Embedder (null: CUDA when available)
    dra.batch_size       32      batch size of the default Embedder
    dra.max_tokens       null    tokens embedded per completion by the default Embedder
    dra.min_denominator  0.1     lower clamp of 1 + SMI
    dra.backend          auto    "auto", "torch" or "triton"
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dra_kernels.api import adjust_rewards, factorize_group_ids, smi_scores
from dra_kernels.integrations._common import PatchOnImport, as_embed_fn, env_flag, import_object
from dra_kernels.reference import DEFAULT_MIN_DENOMINATOR

if TYPE_CHECKING:
    from verl import DataProto

__all__ = [
    "ENV_VAR",
    "SCORE_KEYS",
    "DRASettings",
    "apply_dra",
    "install",
    "settings_from_config",
]

logger = logging.getLogger(__name__)

ENV_VAR = "DRA_KERNELS_VERL"
"""Environment variable that turns DRA on in the verl trainer process (``1``/``true``/``on``)."""

SCORE_KEYS = ("token_level_scores", "rm_scores", "token_level_rewards")
"""Score tensors of a verl batch that :func:`apply_dra` rewrites when present. The score is read
from the first of ``token_level_scores`` / ``rm_scores`` present (the reward before any KL
penalty); the same per-row change goes to every one present, so ``token_level_rewards = scores -
KL`` stays consistent."""

_V1_MODULE = "verl.trainer.ppo.v1.trainer_base"
_LEGACY_MODULE = "verl.trainer.ppo.ray_trainer"
_WRAPPED = "__dra_kernels_wrapped__"

Embed = Callable[[list[str]], Any]


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class DRASettings:
    """DRA options of a verl run, read from the ``dra`` configuration group."""

    embedder: str | None = None
    model: str | None = None
    device: str | None = None
    batch_size: int = 32
    max_tokens: int | None = None
    min_denominator: float = DEFAULT_MIN_DENOMINATOR
    backend: str = "auto"

    def build_embedder(self) -> Embed:
        """The embedding function these settings describe (loads a model: call once per run)."""
        if self.embedder is not None:
            return as_embed_fn(
                import_object(self.embedder, "dra.embedder"), f"dra.embedder={self.embedder!r}"
            )
        from dra_kernels.embed import Embedder

        embedder = Embedder(
            self.model, device=self.device, batch_size=self.batch_size, max_tokens=self.max_tokens
        )
        return embedder.encode


def settings_from_config(config: Any) -> DRASettings | None:
    """DRA settings of a run, or ``None`` when the run did not ask for DRA.

    DRA is on when ``config.dra.enable`` is true or the environment variable ``DRA_KERNELS_VERL``
    is ``1``/``true``/``yes``/``on``. Other keys of ``config.dra`` set the options.

    Args:
        config: the trainer's configuration (an OmegaConf ``DictConfig``, a mapping, or ``None``).

    Raises:
        ValueError: an unknown key under ``dra``, or a bad value of ``DRA_KERNELS_VERL``.
    """
    group = _config_group(config)
    enabled = bool(group.pop("enable", False)) or env_flag(ENV_VAR)
    if not enabled:
        return None
    known = set(DRASettings.__dataclass_fields__)
    unknown = sorted(set(group) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) under 'dra' in the verl configuration: {unknown}; "
            f"known keys: {sorted(known | {'enable'})}"
        )
    return DRASettings(**{k: v for k, v in group.items() if v is not None})


def _config_group(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    group = config.get("dra") if hasattr(config, "get") else None
    if group is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(group, DictConfig):
            group = OmegaConf.to_container(group, resolve=True)
    except ImportError:
        pass
    if not isinstance(group, Mapping):
        raise ValueError(f"'dra' in the verl configuration must be a group of keys, got {group!r}")
    return dict(group)


@functools.lru_cache(maxsize=1)
def _default_embed_fn() -> Embed:
    return DRASettings().build_embedder()


# ----------------------------------------------------------------------------- the batch function


def apply_dra(
    data: DataProto,
    tokenizer: Any,
    embedder: Any = None,
    *,
    score_keys: Sequence[str] | None = None,
    uid_key: str = "uid",
    rows: Any = None,
    expected_group_size: int | None = None,
    min_denominator: float = DEFAULT_MIN_DENOMINATOR,
    backend: str = "auto",
    skip_special_tokens: bool = True,
) -> dict[str, float]:
    """Diversity-aware reward adjustment of a verl batch.

    For each row with a non-empty response: decodes the valid response tokens (as verl's reward
    managers do), embeds the texts, reads the scalar score (the row sum of the score tensor over
    the valid response tokens), computes ``adjust_rewards(scores, embeddings, uid)`` and writes the
    change at the last valid response token. A score that sits at the last token only (verl's
    layout) becomes exactly the adjusted score; other tokens are never touched.

    Nothing else in ``data`` changes: each rewritten score key gets a new tensor (the old tensor is
    not modified), other keys and ``non_tensor_batch`` stay as they are.

    Args:
        data: a ``verl.DataProto`` with ``batch["responses"]`` ``[N, R]`` (right-padded token
            ids), a response mask (``batch["attention_mask"]``, whose last ``R`` columns cover the
            response, else ``batch["response_mask"]``, else every token counts), score tensors
            ``[N, R]`` and ``non_tensor_batch[uid_key]`` (group ids, e.g. verl's uid strings).
        tokenizer: the policy's tokenizer (anything with ``batch_decode`` and ``len``).
        embedder: a callable ``list[str] -> [N, D]`` (tensor or array), or an object with
            ``.encode``; ``None``: :class:`dra_kernels.embed.Embedder` with the bundled model.
        score_keys: tensors to rewrite; the score is read from the first. Default: those of
            :data:`SCORE_KEYS` present, read from ``token_level_scores`` or else ``rm_scores``.
        uid_key: key of the group ids in ``non_tensor_batch``.
        rows: optional ``[N]`` boolean mask of the rows that take part (e.g. not verl's synthetic
            padding rows); the others are not embedded, not grouped and keep their scores.
        expected_group_size: when given, groups of another size (a group split by filtering or
            batching) raise a ``RuntimeWarning`` and are counted in ``dra/incomplete_groups``;
            they are still adjusted within the rows present.
        min_denominator, backend: as in :func:`dra_kernels.adjust_rewards`.
        skip_special_tokens: passed to the tokenizer's ``batch_decode`` (verl's reward managers
            use ``True``).

    Returns:
        Metrics, verl-style: ``dra/rows``, ``dra/groups``, ``dra/incomplete_groups``,
        ``dra/smi/mean``, ``dra/smi/max``, ``dra/factor/mean``, ``dra/factor/min`` (the factor
        ``1 / max(1 + SMI, min_denominator)``), ``dra/score_before/mean``, ``dra/score_after/mean``.

    Raises:
        KeyError: no ``responses``, no score tensor, or no group ids under ``uid_key``.
        ValueError: shapes that disagree, token ids outside the tokenizer's vocabulary (a
            tokenizer that is not the policy's), an embedder returning the wrong number of rows.
    """
    batch = data.batch
    keys = set(batch.keys())
    if "responses" not in keys:
        raise KeyError(f"apply_dra needs batch['responses']; the batch has {sorted(keys)}")
    responses = batch["responses"]
    if responses.ndim != 2:
        raise ValueError(f"batch['responses'] must be [N, R], got shape {tuple(responses.shape)}")
    n, width = responses.shape
    mask = _valid_response_mask(batch, keys, n, width)
    source_key, write_keys = _resolve_score_keys(keys, score_keys)
    for key in write_keys:
        if tuple(batch[key].shape) != (n, width):
            raise ValueError(
                f"batch[{key!r}] must have the shape of batch['responses'] {(n, width)}, "
                f"got {tuple(batch[key].shape)}"
            )
    non_tensor = data.non_tensor_batch
    if uid_key not in non_tensor:
        raise KeyError(
            f"apply_dra groups completions by non_tensor_batch[{uid_key!r}], which is missing "
            f"(non_tensor_batch has {sorted(non_tensor)}); verl's trainers set 'uid' per prompt "
            "before the rollout: keep it in custom pipelines, or pass uid_key"
        )
    uids = np.asarray(non_tensor[uid_key], dtype=object)
    if uids.shape != (n,):
        raise ValueError(f"non_tensor_batch[{uid_key!r}] must have {n} entries, got {uids.shape}")

    active = mask.any(dim=1)
    if rows is not None:
        rows = rows if isinstance(rows, torch.Tensor) else torch.as_tensor(np.asarray(rows))
        rows = rows.to(device=mask.device, dtype=torch.bool)
        if rows.shape != (n,):
            raise ValueError(f"rows must be a boolean mask of {n} entries, got {tuple(rows.shape)}")
        active &= rows
    index = torch.nonzero(active).flatten()
    if index.numel() == 0:
        return _metrics(None, None, None, None, 0, 0, min_denominator)

    token_ids = responses[index]
    token_mask = mask[index]
    _check_vocabulary(token_ids[token_mask], tokenizer)
    sequences = [ids[m].tolist() for ids, m in zip(token_ids.cpu(), token_mask.cpu(), strict=True)]
    texts = list(tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens))

    embed = _default_embed_fn() if embedder is None else as_embed_fn(embedder, "embedder")
    source = batch[source_key]
    embeddings = _embeddings(embed(texts), len(texts), source.device)
    groups = uids[index.cpu().numpy()]
    valid = mask.to(source.dtype)
    positions = torch.arange(1, width + 1, device=mask.device)
    last = (mask * positions).argmax(dim=1)[index]
    scores = (source * valid).sum(dim=1)[index]
    adjusted = adjust_rewards(
        scores, embeddings, groups, backend=backend, min_denominator=min_denominator
    )
    smi = smi_scores(embeddings, groups, backend=backend)

    # NOTE: the new last-token value is adjusted - (score minus its last-token part), computed from
    # the source key so that a score held by the last token alone becomes `adjusted` exactly; other
    # keys get the same change relative to the source (keeps token_level_rewards = scores - KL).
    rest = scores.double() - source[index, last].double()
    for key in write_keys:
        old = batch[key]
        new = old.clone()
        offset = old[index, last].double() - source[index, last].double()
        new[index, last] = (adjusted.double() - rest + offset).to(old.dtype)
        batch[key] = new

    group_sizes = _group_sizes(groups)
    incomplete = 0
    if expected_group_size is not None:
        incomplete = int(np.count_nonzero(group_sizes != expected_group_size))
        if incomplete:
            warnings.warn(
                f"DRA: {incomplete} of {len(group_sizes)} groups do not have "
                f"{expected_group_size} completions (sizes found: "
                f"{sorted(set(group_sizes.tolist()))}); their SMI covers only the rows present. "
                "A group split by filtering or batching gets a different adjustment than whole.",
                RuntimeWarning,
                stacklevel=2,
            )
    return _metrics(
        scores, adjusted, smi, group_sizes, incomplete, int(index.numel()), min_denominator
    )


def _valid_response_mask(batch: Any, keys: set[str], n: int, width: int) -> torch.Tensor:
    if "attention_mask" in keys:
        mask = batch["attention_mask"]
        if mask.ndim != 2 or mask.shape[0] != n or mask.shape[1] < width:
            raise ValueError(
                f"batch['attention_mask'] must be [N, P + R] with R={width}, got "
                f"{tuple(mask.shape)}"
            )
        return mask[:, -width:].bool()
    if "response_mask" in keys:
        mask = batch["response_mask"]
        if tuple(mask.shape) != (n, width):
            raise ValueError(
                f"batch['response_mask'] must be {(n, width)}, got {tuple(mask.shape)}"
            )
        return mask.bool()
    return torch.ones(n, width, dtype=torch.bool, device=batch["responses"].device)


def _resolve_score_keys(keys: set[str], score_keys: Sequence[str] | None) -> tuple[str, list[str]]:
    if score_keys is not None:
        if isinstance(score_keys, str) or not score_keys:
            raise ValueError(f"score_keys must be a non-empty sequence of keys, got {score_keys!r}")
        missing = [k for k in score_keys if k not in keys]
        if missing:
            raise KeyError(f"score_keys {missing} not in the batch (it has {sorted(keys)})")
        return score_keys[0], list(score_keys)
    source = next((k for k in SCORE_KEYS[:2] if k in keys), None)
    if source is None:
        raise KeyError(
            f"no score tensor in the batch: expected one of {list(SCORE_KEYS[:2])} "
            f"(the batch has {sorted(keys)}); apply DRA after the reward step, or pass score_keys"
        )
    return source, [k for k in SCORE_KEYS if k in keys]


def _check_vocabulary(token_ids: torch.Tensor, tokenizer: Any) -> None:
    if token_ids.numel() == 0:
        return
    size = len(tokenizer)
    low, high = int(token_ids.min()), int(token_ids.max())
    if low < 0 or high >= size:
        bad = int(((token_ids < 0) | (token_ids >= size)).sum())
        raise ValueError(
            f"{bad} response token id(s) lie outside the tokenizer's vocabulary of {size} "
            f"(ids found from {low} to {high}): the tokenizer does not match the policy model "
            "that generated the batch; pass the trainer's own tokenizer"
        )


def _embeddings(value: Any, n: int, device: torch.device) -> torch.Tensor:
    out = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if out.ndim != 2 or out.shape[0] != n:
        raise ValueError(
            f"the embedder must return [N, D] for N={n} texts, got shape {tuple(out.shape)}"
        )
    if not out.is_floating_point():
        out = out.float()
    return out.to(device)


def _group_sizes(groups: np.ndarray) -> np.ndarray:
    codes = factorize_group_ids(groups, len(groups)).codes
    return torch.bincount(codes).numpy()


def _metrics(
    scores: torch.Tensor | None,
    adjusted: torch.Tensor | None,
    smi: torch.Tensor | None,
    group_sizes: np.ndarray | None,
    incomplete: int,
    count: int,
    min_denominator: float,
) -> dict[str, float]:
    out = {"dra/rows": float(count), "dra/incomplete_groups": float(incomplete)}
    if scores is None or adjusted is None or smi is None or group_sizes is None:
        return {**out, "dra/groups": 0.0}
    factor = 1.0 / torch.clamp(1.0 + smi.double(), min=min_denominator)
    return {
        **out,
        "dra/groups": float(len(group_sizes)),
        "dra/smi/mean": float(smi.double().mean()),
        "dra/smi/max": float(smi.max()),
        "dra/factor/mean": float(factor.mean()),
        "dra/factor/min": float(factor.min()),
        "dra/score_before/mean": float(scores.double().mean()),
        "dra/score_after/mean": float(adjusted.double().mean()),
    }


# ----------------------------------------------------------------------------- the v1 trainer hook


def _apply_dra_v1(trainer: Any, batch: Any, settings: DRASettings, tq: Any) -> dict[str, float]:
    """Rewrites ``rm_scores`` of a v1 trainer's batch in TransferQueue; returns the metrics."""
    from tensordict import TensorDict
    from verl import DataProto

    n = len(batch)
    data = tq.kv_batch_get(
        keys=batch.keys,
        partition_id=batch.partition_id,
        select_fields=["uid", "responses", "rm_scores"],
    )
    present = set(data.keys())
    missing = [k for k in ("uid", "responses", "rm_scores") if k not in present]
    if missing:
        raise KeyError(
            f"DRA: the trainer's batch has no {missing} in TransferQueue; DRA needs the group ids, "
            "the responses and the reward scores (rm_scores) at the advantage step"
        )
    responses, lengths = _padded(data["responses"], 0)
    scores, score_lengths = _padded(data["rm_scores"], 0.0)
    if not torch.equal(lengths, score_lengths):
        raise ValueError(
            "DRA: rm_scores and responses have different lengths per row in TransferQueue; "
            "cannot locate the last response token"
        )
    mask = torch.arange(responses.shape[1]) < lengths.unsqueeze(1)
    real = [not tag.get("is_padding", False) for tag in batch.tags]
    proto = DataProto(
        batch=TensorDict(
            {"responses": responses, "attention_mask": mask.long(), "rm_scores": scores},
            batch_size=n,
        ),
        non_tensor_batch={"uid": np.array(list(data["uid"]), dtype=object)},
    )
    state = trainer.__dict__.get("_dra_kernels_state")
    if state is None or state[0] != settings:
        state = (settings, settings.build_embedder())
        trainer.__dict__["_dra_kernels_state"] = state
        logger.info("DRA is on for this verl run: %s", settings)
    metrics = apply_dra(
        proto,
        trainer.tokenizer,
        state[1],
        score_keys=["rm_scores"],
        rows=np.array(real, dtype=bool),
        expected_group_size=int(trainer.config.actor_rollout_ref.rollout.n),
        min_denominator=float(settings.min_denominator),
        backend=settings.backend,
    )
    new_scores = proto.batch["rm_scores"]
    nested = torch.nested.as_nested_tensor(
        [new_scores[i, : int(lengths[i])] for i in range(n)], layout=torch.jagged
    )
    tq.kv_batch_put(
        keys=batch.keys,
        partition_id=batch.partition_id,
        fields=TensorDict({"rm_scores": nested}, batch_size=n),
    )
    return metrics


def _padded(value: torch.Tensor, padding: float) -> tuple[torch.Tensor, torch.Tensor]:
    if value.is_nested:
        return value.to_padded_tensor(padding), value.offsets().diff()
    return value, torch.full((value.shape[0],), value.shape[1], dtype=torch.int64)


def _patch_v1(module: Any) -> None:
    trainer_cls = module.PPOTrainer
    original = trainer_cls._compute_advantage
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def _compute_advantage(self: Any, batch: Any, metrics: dict) -> Any:
        settings = settings_from_config(getattr(self, "config", None))
        if settings is not None:
            metrics.update(_apply_dra_v1(self, batch, settings, module.tq))
        return original(self, batch, metrics)

    setattr(_compute_advantage, _WRAPPED, True)
    trainer_cls._compute_advantage = _compute_advantage


def _patch_legacy(module: Any) -> None:
    trainer_cls = module.RayPPOTrainer
    original = trainer_cls.__init__
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        config = kwargs["config"] if "config" in kwargs else (args[0] if args else None)
        if settings_from_config(config) is not None:
            raise RuntimeError(
                f"DRA was asked for (dra.enable or {ENV_VAR}) but {type(self).__name__} is verl's "
                "legacy trainer, which the dra-kernels plugin does not hook; use the v1 trainer "
                "(trainer.use_v1=true, verl's default) or call "
                "dra_kernels.integrations.verl.apply_dra in your own advantage step"
            )
        original(self, *args, **kwargs)

    setattr(__init__, _WRAPPED, True)
    trainer_cls.__init__ = __init__


_FINDER = PatchOnImport({_V1_MODULE: _patch_v1, _LEGACY_MODULE: _patch_legacy})
"""Patches verl's trainer modules right after they are first imported (never imports them)."""


def install() -> None:
    """Hook verl's trainers (idempotent). Runs when this module is imported, which ``import verl``
    does through the ``verl.plugins`` entry point; trainers already imported are patched now."""
    _FINDER.install()
    for name, patch in _FINDER.patches.items():
        module = sys.modules.get(name)
        if module is not None:
            patch(module)


install()
