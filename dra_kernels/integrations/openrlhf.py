"""DRA for OpenRLHF (0.11.x): :func:`install` wraps ``RemoteExperienceMaker.
compute_advantages_and_returns`` (one DRA step over groups ``index // n_samples_per_prompt``, then
OpenRLHF's reward metrics put back to raw); :func:`setup_hook` installs it in Ray workers. See
docs/integrations/openrlhf.md.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from dra_kernels.embed import EMBEDDER_OPTIONS, EmbedderConfig
from dra_kernels.integrations._common import PatchOnImport, env_flag, import_object
from dra_kernels.integrations._placement import (
    PLACEMENT_OPTIONS,
    PlacementOptions,
    place_step,
    read_step,
)
from dra_kernels.step import DRAStep, StepResult

__all__ = [
    "ENV_BACKEND",
    "ENV_EMBEDDER",
    "ENV_ENABLE",
    "ENV_ETA",
    "ENV_LAM",
    "ENV_MEASURE",
    "ENV_MIN_DENOMINATOR",
    "ENV_OPTIONS",
    "OPTIONS",
    "PREFIX",
    "STEP_VARIABLES",
    "TARGET_MODULE",
    "DRAConfig",
    "apply_dra_to_experiences",
    "config_from_env",
    "install",
    "is_installed",
    "setup_hook",
    "uninstall",
]

logger = logging.getLogger(__name__)

ENV_ENABLE = "DRA_KERNELS_OPENRLHF"
"""``1/true/yes/on`` turns DRA on; unset, empty or ``0/false/no/off`` leaves OpenRLHF untouched."""
ENV_EMBEDDER = "DRA_KERNELS_OPENRLHF_EMBEDDER"
"""``package.module:factory`` of a zero-argument callable (a class counts) building the embedder."""
ENV_OPTIONS = "DRA_KERNELS_OPENRLHF_OPTIONS"
"""A JSON object of the embedder's options and of the placement's (:data:`OPTIONS`)."""
STEP_VARIABLES: dict[str, str] = {
    name: f"{ENV_ENABLE}_{name.upper()}"
    for name in ("min_denominator", "backend", "measure", "eta", "lam")
}
"""The step's options OpenRLHF takes, each from its own variable (set by ``--dra.<name>``)."""
ENV_MIN_DENOMINATOR, ENV_BACKEND, ENV_MEASURE, ENV_ETA, ENV_LAM = STEP_VARIABLES.values()

PREFIX = "--dra."
"""How the launcher spells the options (``--dra.model``); used in every error message."""
OPTIONS: tuple[str, ...] = (*EMBEDDER_OPTIONS, *PLACEMENT_OPTIONS)
"""Keys of ``DRA_KERNELS_OPENRLHF_OPTIONS`` (each also a ``--dra.<key>`` flag of the launcher)."""
_PLACEMENT_HINT = (
    "OpenRLHF's colocated runs (--train.colocate_all, --train.colocate_actor_ref) keep room in "
    "each GPU's placement-group bundle (its actors hold 0.2 each); without colocation every "
    "bundle holds a whole GPU per actor, so leave a GPU out of the actor/vLLM counts for it."
)

TARGET_MODULE = "openrlhf.trainer.ppo_utils.experience_maker"
TARGET_CLASS = "RemoteExperienceMaker"
TARGET_METHOD = "compute_advantages_and_returns"


def _spell(name: str) -> str:
    """An option as the user typed it: the launcher's flag, and the variable of a step option."""
    variable = STEP_VARIABLES.get(name)
    return f"{PREFIX}{name} ({variable})" if variable else PREFIX + name


@dataclass
class DRAConfig:
    """What the patched advantage step does.

    Args:
        step: the DRA step. Its built-in embedder (an :class:`~dra_kernels.embed.EmbedderConfig`,
            or ``None``) is placed and built with the experience maker; the user's own embedding
            function or object is used as it is.
        embedder_factory: zero-argument callable building the user's own embedder where the
            placement says, instead of the step's.
        device: the device option (``None``: auto), placed, not given to the embedder.
        placement: where the embedder runs (this process, or a Ray actor on a GPU share).
        skip_special_tokens: passed to the tokenizer's ``batch_decode``.
    """

    step: DRAStep = field(default_factory=lambda: DRAStep(embedder=EmbedderConfig()))
    embedder_factory: Callable[[], Any] | None = None
    device: str | None = None
    placement: PlacementOptions = field(default_factory=PlacementOptions)
    skip_special_tokens: bool = True
    _placed: list[DRAStep] = field(default_factory=list, init=False, repr=False, compare=False)

    def placed_step(self) -> DRAStep:
        """The step with its embedder built where the placement rules say (on the first call)."""
        if not self._placed:
            self._placed.append(place_step(self, self.embedder_factory, PREFIX, _PLACEMENT_HINT))
        return self._placed[0]


def config_from_env() -> DRAConfig | None:
    """The configuration the environment asks for, or ``None`` when DRA is off (the default).
    Every value is checked, nothing loaded or started (the launcher calls it before ``ray.init``).

    Raises:
        ValueError, TypeError: a bad value or an unknown option (the valid ones listed), named as
            the launcher's flag ``--dra.x`` (with its variable for the step's options).
    """
    if not env_flag(ENV_ENABLE):
        return None
    factory = None
    spec = os.environ.get(ENV_EMBEDDER, "").strip()
    if spec:
        factory = import_object(spec, ENV_EMBEDDER)
        if not callable(factory):
            raise TypeError(
                f"{ENV_EMBEDDER}={spec!r} names a {type(factory).__name__}, not a factory"
            )
    raw = os.environ.get(ENV_OPTIONS, "").strip()
    try:
        options = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ENV_OPTIONS} must be a JSON object, got {raw!r} ({exc})") from None
    if not isinstance(options, dict):
        raise ValueError(f"{ENV_OPTIONS} must be a JSON object, got {raw!r}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown DRA option(s) {[PREFIX + str(k) for k in unknown]} (from {ENV_OPTIONS}); "
            "valid: "
            + ", ".join(PREFIX + key for key in ("enable", "embedder", *OPTIONS, *STEP_VARIABLES))
        )
    for name, variable in STEP_VARIABLES.items():
        text = os.environ.get(variable, "").strip()
        try:  # unset or empty: None; text that is no number is refused by the step, named
            options[name] = float(text) if text else None
        except ValueError:
            options[name] = text
    step, device, placement = read_step(options, spec=spec or None, spell=_spell, prefix=PREFIX)
    return DRAConfig(step=step, embedder_factory=factory, device=device, placement=placement)


def _decode_responses(experiences: Sequence[Any], tokenizer: Any, skip_special: bool) -> list[str]:
    """The responses' texts: the tokens under ``action_mask`` ``[B, A]``, which covers the last
    ``A`` positions of ``sequences`` (environment tokens between turns masked out)."""
    if tokenizer is None:
        raise ValueError(
            "DRA needs the experience maker's tokenizer to decode responses; it is None"
        )
    vocab = len(tokenizer)
    ids: list[list[int]] = []
    dropped = 0
    for experience in experiences:
        sequences, action_mask = experience.sequences, experience.action_mask.bool()
        width = action_mask.size(1)
        if width > sequences.size(1):
            raise ValueError(
                f"action_mask has {width} columns but sequences only {sequences.size(1)}; "
                "this layout of Experience is not supported"
            )
        for row, mask in zip(sequences[:, sequences.size(1) - width :], action_mask, strict=True):
            tokens = row[mask]
            keep = (tokens >= 0) & (tokens < vocab)
            dropped += int((~keep).sum())
            ids.append(tokens[keep].tolist())
    if dropped:
        # NOTE: models often pad their vocabulary past the tokenizer's; such ids have no text.
        logger.warning(
            "DRA: dropped %d response token ids outside the tokenizer's vocabulary [0, %d) before "
            "decoding; check that the trainer's tokenizer matches the policy model",
            dropped,
            vocab,
        )
    return list(tokenizer.batch_decode(ids, skip_special_tokens=skip_special))


def _check_groups(experiences: Sequence[Any], positions: torch.Tensor, n_samples: int) -> None:
    n = positions.numel()
    if n % n_samples:
        raise ValueError(
            f"DRA: {n} samples do not form whole groups of n_samples_per_prompt={n_samples}; "
            "a group was split (filtering or a partial batch); refusing to mix prompts"
        )
    if not torch.equal(positions.sort().values, torch.arange(n)):
        raise ValueError(
            "DRA: experience.index is not a permutation of the rollout positions 0..N-1; "
            "cannot restore rollout order"
        )
    prompts = [p for e in experiences for p in (e.prompts or [])]
    if len(prompts) != n:
        return  # no prompt texts to cross-check (custom Experience producers)
    by_position = [prompts[i] for i in positions.argsort().tolist()]
    for start in range(0, n, n_samples):
        block = by_position[start : start + n_samples]
        if any(p != block[0] for p in block):
            raise ValueError(
                f"DRA: rollout positions {start}..{start + n_samples - 1} hold different prompts; "
                "groups are not contiguous blocks of n_samples_per_prompt (was a group split?)"
            )


def apply_dra_to_experiences(
    experiences: Sequence[Any], tokenizer: Any, n_samples_per_prompt: int, config: DRAConfig
) -> StepResult | None:
    """Replace each ``experience.rewards`` by its DRA-adjusted value, in place: one step of
    ``config``'s :class:`~dra_kernels.step.DRAStep` over groups ``experience.index[i] //
    n_samples_per_prompt`` (OpenRLHF's own). Each of the step's metrics goes into
    ``experience.info``, repeated per sample (OpenRLHF logs the mean over samples).

    Args:
        experiences: OpenRLHF ``Experience`` batches (``sequences``, ``action_mask``, ``rewards``,
            ``index``, optionally ``prompts``).
        tokenizer: a Hugging Face tokenizer (``batch_decode``, ``len``).
        n_samples_per_prompt: the group size.
        config: the step, its embedder and where it runs.

    Returns:
        The step's result (over the whole batch, in the experiences' order), or ``None`` for
        groups of one (SMI = 0: DRA is the identity) or no experiences.
    """
    if n_samples_per_prompt <= 1 or not experiences:
        return None
    lengths = [len(e.index) for e in experiences]
    positions = torch.tensor([i for e in experiences for i in e.index], dtype=torch.int64)
    _check_groups(experiences, positions, n_samples_per_prompt)
    rewards = torch.cat([e.rewards.reshape(-1) for e in experiences])
    if rewards.numel() != positions.numel():
        raise ValueError(f"DRA: {rewards.numel()} rewards for {positions.numel()} samples")
    result = config.placed_step()(
        rewards.to(torch.promote_types(rewards.dtype, torch.float32)),
        positions // n_samples_per_prompt,
        texts=_decode_responses(experiences, tokenizer, config.skip_special_tokens),
        num_groups=positions.numel() // n_samples_per_prompt,
        expected_group_size=n_samples_per_prompt,
    )
    for experience, adjusted in zip(experiences, result.adjusted.split(lengths), strict=True):
        dtype = torch.promote_types(experience.rewards.dtype, torch.float32)
        experience.rewards = adjusted.to(experience.rewards.device, dtype)
        for name, value in result.metrics.items():
            experience.info[name] = torch.full((len(adjusted),), value, dtype=torch.float32)
    return result


def _raw_reward_metrics(
    experiences: Sequence[Any], raw: Sequence[torch.Tensor], n_samples: int, args: Any
) -> None:
    """OpenRLHF's own ``info["reward"]`` and ``info["group_reward_std"]`` as without DRA: from
    the raw rewards after OpenRLHF's ``apply_length_penalties`` (run on copies)."""
    copies = [
        SimpleNamespace(
            rewards=r.to(torch.promote_types(r.dtype, torch.float32), copy=True),
            response_length=e.response_length,
            truncated=e.truncated,
            info={},
        )
        for e, r in zip(experiences, raw, strict=True)
    ]
    sys.modules[TARGET_MODULE].apply_length_penalties(copies, args)
    # NOTE: the std as OpenRLHF computes it (compute_advantages_and_returns), of the raw rewards.
    rewards = torch.cat([c.rewards for c in copies])
    positions = torch.tensor([i for e in experiences for i in e.index], device=rewards.device)
    in_order = torch.empty_like(rewards).index_copy_(0, positions, rewards)
    std = in_order.reshape(-1, n_samples).std(-1).repeat_interleave(n_samples)[positions]
    stds = std.split([len(e.index) for e in experiences])
    for experience, copy, group_std in zip(experiences, copies, stds, strict=True):
        for name, value in (("reward", copy.rewards), ("group_reward_std", group_std)):
            if name in experience.info:
                experience.info[name] = value


_state: dict[str, Any] = {"config": None, "warned_single": False}


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def compute_advantages_and_returns(
        self: Any, experiences: list[Any], *args: Any, **kwargs: Any
    ):
        config = _state["config"]
        if config is None or not experiences:
            return original(self, experiences, *args, **kwargs)
        n_samples = int(self.strategy.args.rollout.n_samples_per_prompt)
        if n_samples <= 1:
            if not _state["warned_single"]:
                _state["warned_single"] = True
                logger.warning(
                    "DRA is on but n_samples_per_prompt=%d: every group has one completion, "
                    "SMI = 0 and rewards are unchanged",
                    n_samples,
                )
            return original(self, experiences, *args, **kwargs)
        raw = [e.rewards for e in experiences]  # NOTE: DRA puts new tensors in their place
        apply_dra_to_experiences(experiences, self.tokenizer, n_samples, config)
        out = original(self, experiences, *args, **kwargs)
        _raw_reward_metrics(experiences, raw, n_samples, self.strategy.args)
        return out

    return compute_advantages_and_returns


def _wrap_init(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        config = _state["config"]
        if config is not None:
            # NOTE: in the trainer actor once every GPU is reserved, before the first rollout: a
            # model or placement error stops the run at start-up.
            config.placed_step().embed_fn()

    return __init__


def _patch_module(module: Any) -> None:
    cls = getattr(module, TARGET_CLASS, None)
    method = getattr(cls, TARGET_METHOD, None)
    if method is None:
        raise RuntimeError(
            f"{TARGET_MODULE}.{TARGET_CLASS}.{TARGET_METHOD} not found: this OpenRLHF version is "
            "not supported by dra_kernels.integrations.openrlhf (tested with 0.11.x)"
        )
    for name, wrap in ((TARGET_METHOD, _wrap), ("__init__", _wrap_init)):
        original = getattr(cls, name)
        if not hasattr(original, "__dra_original__"):
            wrapped = wrap(original)
            wrapped.__dra_original__ = original
            setattr(cls, name, wrapped)


_FINDER = PatchOnImport({TARGET_MODULE: _patch_module})
"""Patches the experience maker when (and only if) its module is imported (importing it would pull
deepspeed into every Ray worker)."""


def install(
    embedder: Any = None,
    *,
    config: DRAConfig | None = None,
    **options: Any,
) -> DRAConfig:
    """Turn DRA on in this process: wrap ``RemoteExperienceMaker.compute_advantages_and_returns``
    (DRA before the original) and its ``__init__`` (the embedder built with the maker), now if
    its module is imported, else when it is. Calling it again replaces the configuration.

    Args:
        embedder: callable ``list[str] -> [N, D]`` or object with ``encode``; ``None``: the
            default embedder, placed and built with the experience maker.
        config: a full :class:`DRAConfig` (then neither ``embedder`` nor options).
        **options: the step's options by name (``min_denominator``, ``backend``, ``measure``,
            ``eta``, ``lam``; ``None``: the default), checked here.

    Returns:
        The configuration in force.
    """
    if config is None:
        config = DRAConfig(step=DRAStep.from_options(options, embedder=embedder))
    elif embedder is not None or options:
        raise ValueError("pass either embedder= and the options, or config=, not both")
    _state["config"] = config
    module = sys.modules.get(TARGET_MODULE)
    if module is not None:
        _patch_module(module)
    else:
        _FINDER.install()
    return config


def uninstall() -> None:
    """Turn DRA off in this process and restore the original methods."""
    _state["config"] = None
    _FINDER.uninstall()
    cls = getattr(sys.modules.get(TARGET_MODULE), TARGET_CLASS, None)
    for name in (TARGET_METHOD, "__init__"):
        method = getattr(cls, name, None)
        if hasattr(method, "__dra_original__"):
            setattr(cls, name, method.__dra_original__)


def is_installed() -> bool:
    """Whether DRA is on in this process."""
    return _state["config"] is not None


def setup_hook() -> None:
    """Ray ``worker_process_setup_hook``: install DRA when ``DRA_KERNELS_OPENRLHF`` is on (set
    ``runtime_env={"worker_process_setup_hook": "dra_kernels.integrations.openrlhf.setup_hook",
    "env_vars": {"DRA_KERNELS_OPENRLHF": "1"}}``)."""
    config = config_from_env()
    if config is not None:
        install(config=config)
