"""DRA for OpenRLHF (0.11.x): adjust rewards at the experience maker's advantage step.

OpenRLHF calls its reward function once per sample, so DRA cannot live there. The one place where
every completion of a prompt's group is at hand (its tokens, its reward, its rollout position) is
``RemoteExperienceMaker.compute_advantages_and_returns`` in
``openrlhf/trainer/ppo_utils/experience_maker.py``. :func:`install` wraps that method: before the
original runs (length penalties, then the group estimator), the wrapper decodes each response with
the maker's tokenizer, embeds the texts, and replaces ``experience.rewards`` by
:func:`dra_kernels.adjust_rewards` over groups ``rollout_position // n_samples_per_prompt``. The
original method then runs unchanged.

The maker lives in OpenRLHF's trainer actor, a Ray worker process, so the patch must be installed
there: :func:`setup_hook` is a Ray ``worker_process_setup_hook`` that installs it when the
environment variable ``DRA_KERNELS_OPENRLHF`` is on (off by default), and
``python -m dra_kernels.integrations.openrlhf_launch`` wires that hook into
``openrlhf.cli.train_ppo_ray``. See docs/integrations/openrlhf.md.

Environment variables (read by :func:`config_from_env`; the launcher's ``--dra.*`` flags set them):

- ``DRA_KERNELS_OPENRLHF``: ``1/true/yes/on`` turns DRA on; unset, empty or ``0/false/no/off``
  leaves OpenRLHF untouched. Any other value is an error.
- ``DRA_KERNELS_OPENRLHF_EMBEDDER``: ``package.module:factory``, a zero-argument callable (a class
  counts) returning the embedder, a callable ``list[str] -> [N, D]`` array or tensor (or an object
  with ``encode``). Unset: :class:`dra_kernels.embed.Embedder`, configured by the options below.
- ``DRA_KERNELS_OPENRLHF_OPTIONS``: a JSON object of the embedder's options (the fields of
  :class:`dra_kernels.embed.EmbedderConfig`: ``model``, ``trust_remote_code``, ``long_text``,
  ``window_tokens``, ``window_overlap``, ``max_tokens``, ``batch_size``, ``device``, ``dtype``) and
  of where it runs (``placement``, ``num_gpus``, ``placement_timeout``; see
  :mod:`dra_kernels.integrations._placement`), e.g.
  ``{"model": "jinaai/jina-embeddings-v2-small-en", "trust_remote_code": true}``.
- ``DRA_KERNELS_OPENRLHF_MIN_DENOMINATOR``: float > 0, default 0.1 (see ``adjust_rewards``).
- ``DRA_KERNELS_OPENRLHF_BACKEND``: ``auto`` (default), ``torch`` or ``triton``.
- ``DRA_KERNELS_OPENRLHF_MEASURE``: the SMI measure, ``graph_cut`` (default, the paper's),
  ``facility_location`` or ``log_det`` (docs/measures.md; log-det runs on torch, so not with
  ``triton``).
- ``DRA_KERNELS_OPENRLHF_ETA``, ``DRA_KERNELS_OPENRLHF_LAM``: the measure's ``eta`` (facility
  location, log-det) and ``lam`` (log-det), floats, default 1.0; checked by
  :func:`dra_kernels.measures.check_measure`.

The embedder is built when the experience maker is constructed (in the trainer actor, after
OpenRLHF's driver has reserved every GPU and before the first rollout). The trainer actor holds no
GPU, so with ``placement=auto`` it goes to a Ray actor holding ``num_gpus`` of a cluster GPU.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dra_kernels.api import adjust_rewards, smi_scores
from dra_kernels.embed import EMBEDDER_OPTIONS, EmbedderConfig
from dra_kernels.integrations._common import (
    PatchOnImport,
    check_measure_options,
    embed_metrics,
    env_flag,
    import_object,
)
from dra_kernels.integrations._placement import (
    PLACEMENT_OPTIONS,
    PlacementOptions,
    build_embed_fn,
    check_device,
)
from dra_kernels.measures import DEFAULT_ETA, DEFAULT_LAM
from dra_kernels.reference import DEFAULT_MIN_DENOMINATOR

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
ENV_EMBEDDER = "DRA_KERNELS_OPENRLHF_EMBEDDER"
ENV_MIN_DENOMINATOR = "DRA_KERNELS_OPENRLHF_MIN_DENOMINATOR"
ENV_BACKEND = "DRA_KERNELS_OPENRLHF_BACKEND"
ENV_OPTIONS = "DRA_KERNELS_OPENRLHF_OPTIONS"
ENV_MEASURE = "DRA_KERNELS_OPENRLHF_MEASURE"
ENV_ETA = "DRA_KERNELS_OPENRLHF_ETA"
ENV_LAM = "DRA_KERNELS_OPENRLHF_LAM"

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


Embedder = Callable[[list[str]], Any]


@dataclass
class DRAConfig:
    """What the patched advantage step does.

    Args:
        embedder: callable ``list[str] -> [N, D]`` (numpy array or torch tensor), or ``None`` for
            one built on first use (by ``embedder_factory``, else from ``embedder_config``).
        embedder_factory: zero-argument callable building the embedder (a callable, or an object
            with ``encode`` such as :class:`dra_kernels.embed.Embedder`) on first use, when
            ``embedder`` is ``None``; lets a Ray worker load its model only when it needs it.
        embedder_config: options of the default :class:`dra_kernels.embed.Embedder` (used when
            neither ``embedder`` nor ``embedder_factory`` is given; its ``device`` is ignored:
            ``device`` is placed).
        device: the device option (``None``: auto), placed by
            :mod:`dra_kernels.integrations._placement`.
        placement: where the embedder runs (this process, or a Ray actor on a GPU share).
        min_denominator: lower clamp of ``1 + SMI``, as in :func:`dra_kernels.adjust_rewards`.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        skip_special_tokens: passed to the tokenizer's ``batch_decode``.
        measure, eta, lam: the SMI measure and its parameters, as in
            :func:`dra_kernels.adjust_rewards`.
    """

    embedder: Embedder | None = None
    embedder_factory: Callable[[], Embedder] | None = None
    embedder_config: EmbedderConfig = field(default_factory=EmbedderConfig)
    device: str | None = None
    placement: PlacementOptions = field(default_factory=PlacementOptions)
    min_denominator: float = DEFAULT_MIN_DENOMINATOR
    backend: str = "auto"
    skip_special_tokens: bool = True
    measure: str = "graph_cut"
    eta: float = DEFAULT_ETA
    lam: float = DEFAULT_LAM

    def get_embedder(self) -> Embedder:
        """The embedding function, built on the first call (where the placement rules say)."""
        if self.embedder is None:
            self.embedder = build_embed_fn(
                config=self.embedder_config,
                factory=self.embedder_factory,
                device=self.device,
                options=self.placement,
                prefix=PREFIX,
                hint=_PLACEMENT_HINT,
            )
        return self.embedder


# ----------------------------------------------------------------------------- configuration


def config_from_env() -> DRAConfig | None:
    """The configuration the environment asks for, or ``None`` when DRA is off (the default).

    Every value is checked here, without loading a model or starting anything: the launcher calls
    this in OpenRLHF's driver before ``ray.init``.

    Raises:
        ValueError, TypeError: a bad value, or an unknown option in ``DRA_KERNELS_OPENRLHF_OPTIONS``
            (the message lists the valid ones, spelled ``--dra.x`` as the launcher's flags).
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
    options = options_from_env()
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown DRA option(s) {[PREFIX + str(k) for k in unknown]} (from {ENV_OPTIONS}); "
            "valid: "
            + ", ".join(PREFIX + key for key in ("enable", "embedder", *OPTIONS))
            + f", {PREFIX}min_denominator, {PREFIX}backend, {PREFIX}measure, {PREFIX}eta, "
            f"{PREFIX}lam"
        )
    if factory is not None:
        given = sorted(k for k in EMBEDDER_OPTIONS if options.get(k) is not None)
        if given:
            raise ValueError(
                f"{[PREFIX + k for k in given]} configure the default embedder and do not apply "
                f"to {PREFIX}embedder={spec!r} (your embedder picks its own model and device)"
            )
    device = check_device(options.get("device"), prefix=PREFIX)
    embedder_config = EmbedderConfig.from_options(
        {k: options.get(k) for k in EMBEDDER_OPTIONS if k != "device"}, prefix=PREFIX
    )
    placement = PlacementOptions.from_options(
        {k: options.get(k) for k in PLACEMENT_OPTIONS}, prefix=PREFIX
    )
    raw = os.environ.get(ENV_MIN_DENOMINATOR, "").strip()
    try:
        min_denominator = float(raw) if raw else DEFAULT_MIN_DENOMINATOR
    except ValueError:
        raise ValueError(f"{ENV_MIN_DENOMINATOR} must be a float > 0, got {raw!r}") from None
    if not min_denominator > 0:
        raise ValueError(f"{ENV_MIN_DENOMINATOR} must be a float > 0, got {raw!r}")
    backend = os.environ.get(ENV_BACKEND, "").strip() or "auto"
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"{ENV_BACKEND} must be auto, torch or triton, got {backend!r}")
    measure, eta, lam = _measure_from_env(backend)
    return DRAConfig(
        embedder_factory=factory,
        embedder_config=embedder_config,
        device=device,
        placement=placement,
        min_denominator=min_denominator,
        backend=backend,
        measure=measure,
        eta=eta,
        lam=lam,
    )


def _measure_from_env(backend: str) -> tuple[str, float, float]:
    """``DRA_KERNELS_OPENRLHF_MEASURE`` / ``_ETA`` / ``_LAM`` (unset or empty: the default), by
    the core's rule; errors name the flag and the variable."""
    measure = os.environ.get(ENV_MEASURE, "").strip() or "graph_cut"
    eta = _float_from_env(ENV_ETA, DEFAULT_ETA)
    lam = _float_from_env(ENV_LAM, DEFAULT_LAM)
    names = (
        f"{PREFIX}measure ({ENV_MEASURE})",
        f"{PREFIX}eta ({ENV_ETA})",
        f"{PREFIX}lam ({ENV_LAM})",
    )
    return check_measure_options(measure, eta, lam, names, backend, ENV_BACKEND)


def _float_from_env(name: str, default: float) -> Any:
    """The float in ``name``, its default when unset or empty, or the text itself when it does
    not read as a float (then refused by the check, which names it)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        return raw


def options_from_env() -> dict[str, Any]:
    """The JSON object in ``DRA_KERNELS_OPENRLHF_OPTIONS`` (``{}`` when unset or empty)."""
    raw = os.environ.get(ENV_OPTIONS, "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ENV_OPTIONS} must be a JSON object, got {raw!r} ({exc})") from None
    if not isinstance(options, dict):
        raise ValueError(f"{ENV_OPTIONS} must be a JSON object, got {raw!r}")
    return options


# ----------------------------------------------------------------------------- the adjustment


def _response_token_ids(experience: Any, row: int) -> torch.Tensor:
    """Token ids of row ``row``'s response: the tokens under ``action_mask``.

    ``action_mask`` ``[B, A]`` covers the last ``A`` positions of ``sequences`` ``[B, T]`` (in
    0.11.x ``A = T - 1``: ``action_mask[:, j]`` marks ``sequences[:, j + 1]``). In multi-turn agent
    rollouts the environment's tokens between turns are masked out, so only generated tokens count.
    """
    sequences, action_mask = experience.sequences, experience.action_mask
    width = action_mask.size(1)
    if width > sequences.size(1):
        raise ValueError(
            f"action_mask has {width} columns but sequences only {sequences.size(1)}; "
            "this layout of Experience is not supported"
        )
    return sequences[row, sequences.size(1) - width :][action_mask[row].bool()]


def _decode_responses(experiences: Sequence[Any], tokenizer: Any, skip_special: bool) -> list[str]:
    if tokenizer is None:
        raise ValueError(
            "DRA needs the experience maker's tokenizer to decode responses; it is None"
        )
    vocab = len(tokenizer)
    ids: list[list[int]] = []
    dropped = 0
    for experience in experiences:
        for row in range(experience.sequences.size(0)):
            tokens = _response_token_ids(experience, row)
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


def _as_embeddings(value: Any, n: int) -> torch.Tensor:
    out = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if out.ndim != 2 or out.size(0) != n:
        raise ValueError(
            f"the embedder must return [N, D] = [{n}, D] for {n} texts, "
            f"got shape {tuple(out.shape)}"
        )
    return out


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
    by_position: list[Any] = [None] * n
    for position, prompt in zip(positions.tolist(), prompts, strict=True):
        by_position[position] = prompt
    for start in range(0, n, n_samples):
        block = by_position[start : start + n_samples]
        if any(p != block[0] for p in block):
            raise ValueError(
                f"DRA: rollout positions {start}..{start + n_samples - 1} hold different prompts; "
                "groups are not contiguous blocks of n_samples_per_prompt (was a group split?)"
            )


def apply_dra_to_experiences(
    experiences: Sequence[Any], tokenizer: Any, n_samples_per_prompt: int, config: DRAConfig
) -> None:
    """Replace each ``experience.rewards`` by its DRA-adjusted value, in place.

    Groups are rollout positions ``experience.index[i] // n_samples_per_prompt``, as OpenRLHF's
    own ``rewards.reshape(-1, n_samples_per_prompt)`` after restoring rollout order. Adds, per
    sample, ``info["dra_smi"]`` and ``info["dra_raw_reward"]`` (the reward before DRA) for logging,
    and, for an embedder that counts what it reads (:class:`dra_kernels.embed.Embedder`, also
    behind a Ray actor), the step's ``info["dra/tokens_read_share"]`` and ``info["dra/texts_cut"]``
    (repeated per sample).
    (OpenRLHF's length-penalty step then copies ``experience.rewards`` into ``info["reward"]``, so
    ``rollout/reward_mean`` shows the adjusted reward.)

    Args:
        experiences: OpenRLHF ``Experience`` batches (``sequences``, ``action_mask``, ``rewards``,
            ``index``, optionally ``prompts``).
        tokenizer: a Hugging Face tokenizer (``batch_decode``, ``len``).
        n_samples_per_prompt: the group size.
        config: embedder and DRA options.
    """
    if n_samples_per_prompt <= 1 or not experiences:
        return  # groups of one: SMI = 0, DRA is the identity
    lengths = [len(e.index) for e in experiences]
    positions = torch.tensor([i for e in experiences for i in e.index], dtype=torch.int64)
    _check_groups(experiences, positions, n_samples_per_prompt)
    rewards = torch.cat([e.rewards.reshape(-1) for e in experiences])
    if rewards.numel() != positions.numel():
        raise ValueError(f"DRA: {rewards.numel()} rewards for {positions.numel()} samples")

    texts = _decode_responses(experiences, tokenizer, config.skip_special_tokens)
    embed = config.get_embedder()
    embeddings = _as_embeddings(embed(texts), len(texts))
    coverage = embed_metrics(embed)
    device = embeddings.device
    group_ids = (positions // n_samples_per_prompt).to(device)
    num_groups = positions.numel() // n_samples_per_prompt
    measure = {"measure": config.measure, "eta": config.eta, "lam": config.lam}
    adjusted = adjust_rewards(
        rewards.to(device, torch.promote_types(rewards.dtype, torch.float32)),
        embeddings,
        group_ids,
        backend=config.backend,
        num_groups=num_groups,
        min_denominator=config.min_denominator,
        **measure,
    )
    smi = smi_scores(
        embeddings, group_ids, backend=config.backend, num_groups=num_groups, **measure
    )
    for experience, new_rewards, row_smi in zip(
        experiences, adjusted.split(lengths), smi.split(lengths), strict=True
    ):
        dtype = torch.promote_types(experience.rewards.dtype, torch.float32)
        experience.info["dra_raw_reward"] = experience.rewards.to("cpu", dtype).clone()
        experience.rewards = new_rewards.to(experience.rewards.device, dtype)
        experience.info["dra_smi"] = row_smi.to("cpu", torch.float32)
        for name, value in coverage.items():
            # NOTE: per-step values, repeated per sample: OpenRLHF averages info entries over
            # samples, so the logged value is the step's.
            experience.info[name] = torch.full((len(row_smi),), value, dtype=torch.float32)


# ----------------------------------------------------------------------------- patching

_state: dict[str, Any] = {"config": None}
_warned_single = False


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def compute_advantages_and_returns(
        self: Any, experiences: list[Any], *args: Any, **kwargs: Any
    ):
        global _warned_single
        config = _state["config"]
        if config is not None:
            n_samples = int(self.strategy.args.rollout.n_samples_per_prompt)
            if n_samples > 1:
                apply_dra_to_experiences(experiences, self.tokenizer, n_samples, config)
            elif not _warned_single:
                _warned_single = True
                logger.warning(
                    "DRA is on but n_samples_per_prompt=%d: every group has one completion, "
                    "SMI = 0 and rewards are unchanged",
                    n_samples,
                )
        return original(self, experiences, *args, **kwargs)

    compute_advantages_and_returns.__dra_original__ = original  # type: ignore[attr-defined]
    return compute_advantages_and_returns


def _wrap_init(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        config = _state["config"]
        if config is not None:
            # NOTE: built here, in the trainer actor once OpenRLHF's driver has reserved every GPU
            # (its actor groups and vLLM engines exist) and before the first rollout, so a model
            # or placement error stops the run at start-up.
            config.get_embedder()

    __init__.__dra_original__ = original  # type: ignore[attr-defined]
    return __init__


def _patch_module(module: Any) -> None:
    cls = getattr(module, TARGET_CLASS, None)
    method = getattr(cls, TARGET_METHOD, None) if cls is not None else None
    if method is None:
        raise RuntimeError(
            f"{TARGET_MODULE}.{TARGET_CLASS}.{TARGET_METHOD} not found: this OpenRLHF version is "
            "not supported by dra_kernels.integrations.openrlhf (tested with 0.11.x)"
        )
    if not hasattr(method, "__dra_original__"):
        setattr(cls, TARGET_METHOD, _wrap(method))
    if not hasattr(cls.__init__, "__dra_original__"):
        cls.__init__ = _wrap_init(cls.__init__)


_FINDER = PatchOnImport({TARGET_MODULE: _patch_module})
"""Patches the experience maker when (and only if) its module is imported.
NOTE: importing it eagerly would pull deepspeed into every Ray worker, vLLM's included."""


def install(
    embedder: Embedder | None = None,
    *,
    config: DRAConfig | None = None,
    min_denominator: float = DEFAULT_MIN_DENOMINATOR,
    backend: str = "auto",
    measure: str = "graph_cut",
    eta: float = DEFAULT_ETA,
    lam: float = DEFAULT_LAM,
) -> DRAConfig:
    """Turn DRA on in this process: wrap ``RemoteExperienceMaker.compute_advantages_and_returns``
    (DRA before the original) and ``RemoteExperienceMaker.__init__`` (the embedder is built when
    the maker is, before any rollout).

    Patches the class now if its module is imported, else when it is imported. Calling it again
    replaces the configuration; the methods are wrapped once.

    Args:
        embedder: callable ``list[str] -> [N, D]``; ``None`` uses :mod:`dra_kernels.embed`'s
            default, built on first use.
        config: a full :class:`DRAConfig` (then ``embedder`` and the options must be left out).
        min_denominator, backend, measure, eta, lam: as in :func:`dra_kernels.adjust_rewards`
            (the measure options are checked here, by :func:`dra_kernels.measures.check_measure`).

    Returns:
        The configuration in force.
    """
    if config is None:
        measure, eta, lam = check_measure_options(
            measure, eta, lam, ("measure", "eta", "lam"), backend, "backend"
        )
        config = DRAConfig(
            embedder=embedder,
            min_denominator=min_denominator,
            backend=backend,
            measure=measure,
            eta=eta,
            lam=lam,
        )
    elif embedder is not None:
        raise ValueError("pass either embedder= or config=, not both")
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
    module = sys.modules.get(TARGET_MODULE)
    cls = getattr(module, TARGET_CLASS, None) if module is not None else None
    method = getattr(cls, TARGET_METHOD, None) if cls is not None else None
    if method is not None and hasattr(method, "__dra_original__"):
        setattr(cls, TARGET_METHOD, method.__dra_original__)
    if cls is not None and hasattr(cls.__init__, "__dra_original__"):
        cls.__init__ = cls.__init__.__dra_original__


def is_installed() -> bool:
    """Whether DRA is on in this process."""
    return _state["config"] is not None


def setup_hook() -> None:
    """Ray ``worker_process_setup_hook``: install DRA when ``DRA_KERNELS_OPENRLHF`` is on.

    Use as ``runtime_env={"worker_process_setup_hook":
    "dra_kernels.integrations.openrlhf.setup_hook", "env_vars": {"DRA_KERNELS_OPENRLHF": "1"}}``.
    Does nothing when the variable is unset or off.
    """
    config = config_from_env()
    if config is not None:
        install(config=config)
