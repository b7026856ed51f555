"""DRA for verl (0.9.x): :func:`apply_dra` adjusts a ``DataProto`` batch; the ``verl.plugins`` entry
point (this module) hooks verl's advantage steps when their modules are imported (:data:`_FINDER`),
each a no-op unless the run asks for DRA. See docs/integrations/verl.md.
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dra_kernels.embed import EMBEDDER_OPTIONS, EmbedderConfig
from dra_kernels.integrations._common import PatchOnImport, env_flag, import_object
from dra_kernels.integrations._placement import (
    PLACEMENT_OPTIONS,
    Deferred,
    PlacementOptions,
    place_step,
    read_step,
)
from dra_kernels.step import DRAStep

if TYPE_CHECKING:
    from verl import DataProto

__all__ = [
    "ENV_VAR",
    "PREFIX",
    "SCORE_KEYS",
    "VALID_KEYS",
    "DRASettings",
    "apply_dra",
    "install",
    "session_finals",
    "settings_from_config",
]

logger = logging.getLogger(__name__)

ENV_VAR = "DRA_KERNELS_VERL"
"""Environment variable that turns DRA on in the verl trainer process (``1``/``true``/``on``)."""

SCORE_KEYS = ("token_level_scores", "rm_scores", "token_level_rewards")
"""Score tensors that :func:`apply_dra` rewrites when present: the score is read from the first of
the first two present (before any KL penalty), the same per-row change goes to each."""

_RAW_SCORES = "dra_kernels_raw_scores"
_WRAPPED = "__dra_kernels_wrapped__"
_STATE = "_dra_kernels_state"

PREFIX = "dra."
"""How verl spells DRA's keys (``+dra.model=...`` on the command line)."""

_STEP_KEYS = ("min_denominator", "backend", "measure", "eta", "lam")
VALID_KEYS = ("enable", "embedder", *_STEP_KEYS, *EMBEDDER_OPTIONS, *PLACEMENT_OPTIONS)
"""Every key of the ``dra`` group, without the ``dra.`` prefix."""

_PLACEMENT_HINT = (
    "verl reserves each GPU in a placement group bundle of which its colocated workers hold "
    "1/max_colocate_count (1/3 by default); the embedder's actor takes a share of the bundle "
    "that has room."
)


@dataclass(frozen=True)
class DRASettings:
    """DRA options of a verl run, read from the ``dra`` configuration group.

    Attributes:
        step: the :class:`~dra_kernels.step.DRAStep`; its embedder is built by :meth:`build_step`.
        device: the ``dra.device`` option (``None``: auto), placed, not given to the embedder.
        placement: where the embedder runs (``dra.placement``, ``dra.num_gpus``,
            ``dra.placement_timeout``).
    """

    step: DRAStep = field(default_factory=lambda: DRAStep.from_options({}))
    device: str | None = None
    placement: PlacementOptions = field(default_factory=PlacementOptions)

    @property
    def embedder(self) -> str | None:
        """``dra.embedder``: ``"module:attr"`` of the user's own embedder, or ``None`` (the
        built-in :class:`dra_kernels.embed.Embedder`)."""
        named = self.step.embedder
        return named.spec if isinstance(named, Deferred) else None

    def build_step(self) -> DRAStep:
        """The step with its embedder built where the placement rules say (this process, or a
        Ray actor on a GPU share); loads a model: call once per run."""
        factory = None
        if self.embedder is not None:
            # NOTE: a class is built (in the actor, if placed there); anything else is the embedder
            obj = import_object(self.embedder, f"{PREFIX}embedder")
            factory = obj if isinstance(obj, type) else (lambda: obj)
        return place_step(self, factory, PREFIX, _PLACEMENT_HINT)


def settings_from_config(config: Any) -> DRASettings | None:
    """DRA settings of a run, or ``None`` when the run did not ask for DRA.

    DRA is on when ``config.dra.enable`` is true or the environment variable ``DRA_KERNELS_VERL``
    is ``1``/``true``/``yes``/``on``. The other keys of ``config.dra`` are checked by the core's
    rules (:meth:`DRAStep.from_options <dra_kernels.step.DRAStep.from_options>`, errors spelled
    ``dra.x``) and the placement's. Nothing is loaded or started.

    Args:
        config: the trainer's configuration (an OmegaConf ``DictConfig``, a mapping, or ``None``).

    Raises:
        ValueError, TypeError: an unknown key under ``dra`` (the valid keys listed), a bad value
            (its key named), or a bad value of ``DRA_KERNELS_VERL``.
    """
    group = _config_group(config)
    enable = group.pop("enable", False)
    if not isinstance(enable, bool) and enable is not None:
        raise ValueError(f"{PREFIX}enable must be true or false, got {enable!r}")
    if not (bool(enable) or env_flag(ENV_VAR)):
        return None
    unknown = sorted(set(group) - set(VALID_KEYS))
    if unknown:
        raise ValueError(
            f"unknown key(s) {[PREFIX + str(k) for k in unknown]} in the verl configuration; "
            "valid keys: " + ", ".join(PREFIX + key for key in VALID_KEYS)
        )
    spec = group.pop("embedder", None)
    if spec is not None and (not isinstance(spec, str) or not spec.strip()):
        raise ValueError(f"{PREFIX}embedder must be 'package.module:attribute', got {spec!r}")
    step, device, placement = read_step(group, spec=spec, spell=PREFIX + "{}", prefix=PREFIX)
    return DRASettings(step=step, device=device, placement=placement)


def _config_group(config: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    group = config.get("dra") if hasattr(config, "get") else None
    if isinstance(group, DictConfig):
        group = OmegaConf.to_container(group, resolve=True)
    if group is not None and not isinstance(group, Mapping):
        raise ValueError(f"'dra' in the verl configuration must be a group of keys, got {group!r}")
    return dict(group or {})


@functools.lru_cache(maxsize=1)
def _default_embed_fn() -> Callable[[list[str]], Any]:
    return EmbedderConfig().build().encode


def apply_dra(
    data: DataProto,
    tokenizer: Any,
    embedder: Any = None,
    *,
    step: DRAStep | None = None,
    score_keys: Sequence[str] | None = None,
    uid_key: str = "uid",
    rows: Any = None,
    expected_group_size: int | None = None,
    skip_special_tokens: bool = True,
    **options: Any,
) -> dict[str, float]:
    """Diversity-aware reward adjustment of a verl batch, one :class:`~dra_kernels.step.DRAStep`.

    Decodes each non-empty response's valid tokens, embeds the texts, runs the step on the scores
    (each row's sum over its valid tokens) grouped by ``uid`` and writes the change at the last
    valid token: a score held by that token alone (verl's layout) becomes exactly the adjusted
    score. Each rewritten score key gets a new tensor; nothing else in ``data`` changes.

    Args:
        data: a ``verl.DataProto`` with ``batch["responses"]`` ``[N, R]`` (right-padded token
            ids), a response mask (the last ``R`` columns of ``batch["attention_mask"]``, else
            ``batch["response_mask"]``, else all), score tensors ``[N, R]`` and
            ``non_tensor_batch[uid_key]`` (group ids).
        tokenizer: the policy's tokenizer (anything with ``batch_decode`` and ``len``).
        embedder: a callable ``list[str] -> [N, D]`` or an object with ``.encode``; ``None``: the
            step's embedder, else :class:`dra_kernels.embed.Embedder` with the bundled model.
        step: the DRA step to run; ``None``: one from the option keywords (not both).
        score_keys: tensors to rewrite, the score read from the first. Default: those of
            :data:`SCORE_KEYS` present.
        uid_key: key of the group ids in ``non_tensor_batch``.
        rows: optional ``[N]`` boolean mask of the rows that take part (e.g. not verl's padding
            rows); the others keep their scores.
        expected_group_size: when given, groups of another size warn (``RuntimeWarning``) and
            are counted in ``dra/incomplete_groups``; they are adjusted within the rows present.
        skip_special_tokens: passed to the tokenizer's ``batch_decode``.
        **options: the step's options by name (``min_denominator``, ``backend``, ``measure``,
            ``eta``, ``lam``; ``None``: the default), checked by the core's rules.

    Returns:
        The step's metrics (:data:`dra_kernels.step.METRICS`; ``dra/tokens_read_share`` and
        ``dra/texts_cut`` only for an embedder that counts what it reads).

    Raises:
        KeyError: no ``responses``, no score tensor, or no group ids under ``uid_key``.
        ValueError: shapes that disagree, token ids outside the tokenizer's vocabulary, an
            embedder returning the wrong number of rows, or a bad option.
    """
    if step is None:
        step = DRAStep.from_options(options)
        embedder = _default_embed_fn() if embedder is None else embedder
    elif options:
        raise ValueError("apply_dra takes the DRA options either in step= or as keywords, not both")
    if embedder is not None:
        step = step.with_embedder(embedder)
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
    source = batch[source_key]
    valid = mask.to(source.dtype)
    positions = torch.arange(1, width + 1, device=mask.device)
    last = (mask * positions).argmax(dim=1)[index]
    scores = (source * valid).sum(dim=1)[index]
    embeddings, coverage = torch.zeros(0, 1), {}
    if index.numel():
        token_ids, token_mask = responses[index].cpu(), mask[index].cpu()
        _check_vocabulary(token_ids[token_mask], tokenizer)
        sequences = [ids[m].tolist() for ids, m in zip(token_ids, token_mask, strict=True)]
        texts = list(tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens))
        embeddings, coverage = step.embed(texts)
    result = step(
        scores,
        uids[index.cpu().numpy()],
        embeddings=embeddings.to(source.device),
        expected_group_size=expected_group_size,
        coverage=coverage,
    )
    adjusted = result.adjusted.to(source.device).double()

    # NOTE: the new last-token value is adjusted - (score minus its last-token part), computed from
    # the source key so that a score held by the last token alone becomes `adjusted` exactly; other
    # keys get the same change relative to the source (keeps token_level_rewards = scores - KL).
    source_last = source[index, last].double()
    rest = scores.double() - source_last
    for key in write_keys:
        new = batch[key].clone()
        offset = new[index, last].double() - source_last
        new[index, last] = (adjusted - rest + offset).to(new.dtype)
        batch[key] = new

    metrics = result.metrics
    if metrics["dra/incomplete_groups"]:
        warnings.warn(
            f"DRA: {metrics['dra/incomplete_groups']:.0f} of {metrics['dra/groups']:.0f} groups "
            f"do not have {expected_group_size} completions; their SMI covers only the rows "
            "present. A group split by filtering or batching gets a different adjustment than "
            "whole.",
            RuntimeWarning,
            stacklevel=2,
        )
    return metrics


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


def session_finals(keys: Sequence[str]) -> np.ndarray:
    """Which rows of a v1 batch are the final output of their session (keys
    ``{uid}_{session_id}_{index}``, the highest ``index``; a key of another form is a session of
    its own): verl's GRPO groups only those (``compute_advantage_for_multi_trajectories``)."""
    final: dict[str, tuple[int, int]] = {}
    for row, key in enumerate(keys):
        parts = str(key).rsplit("_", 2)
        session, index = str(key), 0
        if len(parts) == 3 and parts[2].isdigit():
            session, index = f"{parts[0]}_{parts[1]}", int(parts[2])
        if session not in final or final[session][0] < index:
            final[session] = (index, row)
    out = np.zeros(len(keys), dtype=bool)
    out[[row for _, row in final.values()]] = True
    return out


def _dra_scores(
    trainer: Any,
    step: DRAStep,
    metrics: dict,
    tensors: Mapping[str, torch.Tensor],
    non_tensor: Mapping[str, np.ndarray],
    rows: np.ndarray | None = None,
) -> torch.Tensor:
    """The adjusted ``rm_scores`` (a new tensor) of :func:`apply_dra` over ``tensors`` (responses,
    response mask, raw ``rm_scores``) and ``non_tensor`` (``uid``), as both hooks run it; the
    step's metrics go into ``metrics``."""
    from tensordict import TensorDict
    from verl import DataProto

    n = len(tensors["rm_scores"])
    proto = DataProto(
        batch=TensorDict(dict(tensors), batch_size=n), non_tensor_batch=dict(non_tensor)
    )
    metrics.update(
        apply_dra(
            proto,
            trainer.tokenizer,
            step=step,
            score_keys=["rm_scores"],
            rows=rows,
            expected_group_size=int(trainer.config.actor_rollout_ref.rollout.n),
        )
    )
    return proto.batch["rm_scores"]


def _compute_advantage_with_dra(
    trainer: Any, step: DRAStep, batch: Any, metrics: dict, *, tq: Any, original: Callable
) -> Any:
    """verl's v1 advantage step on DRA's scores (in TransferQueue); then the raw ``rm_scores``
    (and ``raw - KL`` ``token_level_rewards``) are put back for verl's own metrics and dumps."""
    from tensordict import TensorDict

    def get(*names: str) -> Any:
        return tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=names
        )

    data = get("uid", "responses", "rm_scores")
    present = set(data.keys())  # NOTE: a TensorDict refuses `in`
    missing = [k for k in ("uid", "responses", "rm_scores") if k not in present]
    if missing:
        raise KeyError(
            f"DRA: the trainer's batch has no {missing} in TransferQueue; DRA needs the group ids, "
            "the responses and the reward scores (rm_scores) at the advantage step"
        )
    raw_scores = data["rm_scores"]
    responses, lengths = _padded(data["responses"], 0)
    scores, score_lengths = _padded(raw_scores, 0.0)
    if not torch.equal(lengths, score_lengths):
        raise ValueError(
            "DRA: rm_scores and responses have different lengths per row in TransferQueue; "
            "cannot locate the last response token"
        )
    mask = torch.arange(responses.shape[1]) < lengths.unsqueeze(1)
    real = np.array([not tag.get("is_padding", False) for tag in batch.tags], dtype=bool)
    if trainer.config.algorithm.adv_estimator == "grpo":  # NOTE: verl's own condition
        real &= session_finals(batch.keys)
    adjusted = _dra_scores(
        trainer,
        step,
        metrics,
        {"responses": responses, "attention_mask": mask.long(), "rm_scores": scores},
        {"uid": np.array(list(data["uid"]), dtype=object)},
        rows=real,
    )
    change = adjusted.double() - scores.double()

    def put(name: str, value: torch.Tensor) -> None:
        if not value.is_nested:
            rows = [value[i, : int(lengths[i])] for i in range(len(lengths))]
            value = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
        fields = TensorDict({name: value}, batch_size=len(lengths))
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)

    put("rm_scores", adjusted)
    out = original(trainer, batch, metrics)
    # NOTE: verl's step writes back advantages, returns and, with use_kl_in_reward,
    # token_level_rewards (= rm_scores - KL); its _compute_metrics reads them after it.
    put("rm_scores", raw_scores)
    if trainer.config.algorithm.use_kl_in_reward:
        rewards, _ = _padded(get("token_level_rewards")["token_level_rewards"], 0.0)
        put("token_level_rewards", (rewards.double() - change).to(rewards.dtype))
    return out


def _fit_compute_advantage_with_dra(
    trainer: Any, step: DRAStep, batch: Any, *, original: Callable
) -> Any:
    """``SeparateRayPPOTrainer._fit_compute_advantage`` on DRA's scores (it reads
    ``trainer.reward_tensor``); the returned batch holds the raw ``token_level_scores`` and
    ``raw - KL`` ``token_level_rewards`` again, for verl's own metrics and dumps."""
    raw = trainer.reward_tensor
    present = set(batch.batch.keys())
    keys = ("responses", "attention_mask", "response_mask")
    tensors = {key: batch.batch[key] for key in keys if key in present}
    trainer.reward_tensor = _dra_scores(
        trainer, step, trainer.metrics, {**tensors, "rm_scores": raw}, batch.non_tensor_batch
    )
    # NOTE: the raw scores travel in the batch, so they stay with their rows if verl's step
    # resamples them (algorithm.use_pf_ppo with GAE, core_algos.compute_pf_ppo_reweight_data).
    batch.batch[_RAW_SCORES] = raw
    out = original(trainer, batch)
    trainer.reward_tensor = raw
    raw = out.batch.pop(_RAW_SCORES)
    change = out.batch["token_level_scores"].double() - raw.double()
    rewards = out.batch["token_level_rewards"]
    out.batch["token_level_scores"] = raw
    out.batch["token_level_rewards"] = (rewards.double() - change).to(rewards.dtype)
    return out


def _step_of(trainer: Any, settings: DRASettings) -> DRAStep:
    """The trainer's DRA step, its embedder built once per run (at ``fit``, else on first use)."""
    state = trainer.__dict__.get(_STATE)
    if state is None or state[0] != settings:
        logger.info("DRA is on for this verl run: %s", settings)
        state = (settings, settings.build_step())
        trainer.__dict__[_STATE] = state
    return state[1]


def _padded(value: torch.Tensor, padding: float) -> tuple[torch.Tensor, torch.Tensor]:
    if value.is_nested:
        return value.to_padded_tensor(padding), value.offsets().diff()
    return value, torch.full((value.shape[0],), value.shape[1], dtype=torch.int64)


def _config_argument(args: tuple, kwargs: dict) -> Any:
    return kwargs["config"] if "config" in kwargs else (args[0] if args else None)


def _wrapped(fn: Callable) -> Callable:
    setattr(fn, _WRAPPED, True)
    return fn


def _when_on(original: Callable, with_dra: Callable) -> Callable:
    """The method ``original``, or ``with_dra(self, step, *args)`` when the run asks for DRA."""

    @functools.wraps(original)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        settings = settings_from_config(getattr(self, "config", None))
        if settings is None:
            return original(self, *args, **kwargs)
        return with_dra(self, _step_of(self, settings), *args, **kwargs)

    return _wrapped(method)


def _patch_v1(module: Any) -> None:
    """``PPOTrainer``, each a no-op unless the run asks for DRA: ``__init__`` checks the keys,
    ``fit`` builds the embedder (once verl's workers hold their GPUs, before the first rollout),
    ``_compute_advantage`` runs DRA (:func:`_compute_advantage_with_dra`)."""
    trainer_cls = module.PPOTrainer
    if getattr(trainer_cls._compute_advantage, _WRAPPED, False):
        return
    fit, advantage = trainer_cls.fit, trainer_cls._compute_advantage
    trainer_cls.__init__ = _checked_init(
        trainer_cls.__init__, lambda _, config: settings_from_config(config)
    )
    trainer_cls.fit = _when_on(fit, lambda self, _, *args, **kwargs: fit(self, *args, **kwargs))
    trainer_cls._compute_advantage = _when_on(
        advantage,
        functools.partial(_compute_advantage_with_dra, tq=module.tq, original=advantage),
    )


def _check_config_first(name: str) -> Callable[[Any], None]:
    """A patch that wraps the module function ``name`` (its first argument, or ``config=``, is
    the run's configuration) so that every ``dra.*`` key is checked before it runs."""

    def patch(module: Any) -> None:
        original = getattr(module, name)
        if getattr(original, _WRAPPED, False):
            return

        @functools.wraps(original)
        def checked(*args: Any, **kwargs: Any) -> Any:
            settings_from_config(_config_argument(args, kwargs))
            return original(*args, **kwargs)

        setattr(module, name, _wrapped(checked))
        package = sys.modules.get(module.__name__.rpartition(".")[0])
        if package is not None and getattr(package, name, None) is original:
            setattr(package, name, checked)

    return patch


def _refuse_unhooked(trainer: Any, config: Any) -> None:
    """Every ``dra.*`` key checked; with DRA on, a legacy-layout trainer must take its advantage
    step from the hooked ``SeparateRayPPOTrainer._fit_compute_advantage``, else it would train
    without DRA."""
    if settings_from_config(config) is None:
        return
    if getattr(getattr(type(trainer), "_fit_compute_advantage", None), _WRAPPED, False):
        return
    raise RuntimeError(
        f"DRA was asked for (dra.enable or {ENV_VAR}) but {type(trainer).__name__} is verl's "
        "legacy trainer, or a subclass with an advantage step of its own, which the plugin does "
        "not hook; use the v1 trainer (trainer.use_v1=true), an async recipe (one_step_off_policy, "
        "fully_async_policy) or dra_kernels.integrations.verl.apply_dra in your advantage step"
    )


def _checked_init(original: Callable, check: Callable[[Any, Any], Any] = _refuse_unhooked):
    """``original`` (an ``__init__``) after ``check(self, config)``."""

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        check(self, _config_argument(args, kwargs))
        original(self, *args, **kwargs)

    return _wrapped(__init__)


def _patch_legacy(module: Any) -> None:
    """``RayPPOTrainer.__init__`` refuses DRA unless the trainer is hooked."""
    trainer_cls = module.RayPPOTrainer
    if not getattr(trainer_cls.__init__, _WRAPPED, False):
        trainer_cls.__init__ = _checked_init(trainer_cls.__init__)


def _patch_separation(module: Any) -> None:
    """``SeparateRayPPOTrainer``, the base of the async recipes' trainers, each a no-op unless the
    run asks for DRA: ``_fit_compute_advantage`` runs DRA (the embedder built at the first call),
    and the ``__init__`` of every subclass defined later (they do not call
    ``RayPPOTrainer.__init__``) checks the keys (:func:`_refuse_unhooked`)."""
    base = module.SeparateRayPPOTrainer
    original = base._fit_compute_advantage
    if getattr(original, _WRAPPED, False):
        return

    # NOTE: on the class's creation, not its module's import: Ray's @ray.remote (FullyAsyncTrainer,
    # FullyAsyncRollouter) copies the methods into the actor class when the class is defined.
    def __init_subclass__(cls: type, **kwargs: Any) -> None:
        super(base, cls).__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, _WRAPPED, False):
            cls.__init__ = _checked_init(init)

    base._fit_compute_advantage = _when_on(
        original, functools.partial(_fit_compute_advantage_with_dra, original=original)
    )
    base.__init_subclass__ = classmethod(__init_subclass__)


_FINDER = PatchOnImport(
    {
        "verl.utils.config": _check_config_first("validate_config"),
        "verl.trainer.main_ppo": _check_config_first("run_ppo"),
        "verl.trainer.ppo.v1.trainer_base": _patch_v1,
        "verl.trainer.ppo.ray_trainer": _patch_legacy,
        "verl.experimental.separation.ray_trainer": _patch_separation,
    }
)
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
