"""DRA for TRL's experimental ``AsyncGRPOTrainer`` (``trl.experimental.async_grpo``; supported:
``trl>=1.16,<1.17``): one DRA step per group in the rollout worker's child process. See
docs/integrations/trl_async.md (what happens at each group, how the loop, the worker and the
trainer are wired).
"""

from __future__ import annotations

import asyncio
import inspect
import pickle
from typing import Any

import numpy as np
import torch

# NOTE: first: without TRL it says how to install it (and it checks TRL's version).
from dra_kernels.integrations.trl import (
    OPTION_PREFIX,
    POLICY,
    SUPPORTED_TRL,
    completion_text,
    keyword_step,
)
from dra_kernels.step import DRAStep

try:  # TRL is there; its experimental trainer, as DRA uses it, may not be
    from trl.experimental.async_grpo import AsyncGRPOTrainer
    from trl.experimental.async_grpo.async_rollout_worker import (
        AsyncRolloutWorker,
        RolloutGroup,
        RolloutSample,
        _AsyncRolloutLoop,
    )

    # NOTE: what DRA overrides or uses; an AttributeError here means another TRL version.
    _USED = (
        _AsyncRolloutLoop._score_group,
        _AsyncRolloutLoop._push_metrics,
        AsyncRolloutWorker._loop_cls,
    )
except (ImportError, AttributeError) as exc:  # pragma: no cover - other TRL versions
    raise ImportError(
        "dra_kernels.integrations.trl_async builds on TRL's experimental asynchronous GRPO "
        "rollout worker (_AsyncRolloutLoop._score_group, _push_metrics, "
        f"AsyncRolloutWorker._loop_cls), not found ({exc}); install a supported version: "
        f"pip install 'trl{SUPPORTED_TRL}'"
    ) from exc

__all__ = [
    "ADVANTAGE_EPS",
    "DRAAsyncGRPOTrainer",
    "DRARolloutLoop",
    "DRARolloutWorker",
    "async_advantages",
    "check_picklable",
    "worker_step",
]

ADVANTAGE_EPS = 1e-8
"""TRL's constant in ``(r - mean) / (std + 1e-8)`` (``_AsyncRolloutLoop._score_group``)."""

_TRAINER_SIGNATURE = inspect.signature(AsyncGRPOTrainer.__init__)
_ADVANTAGES = (
    "AsyncGRPOTrainer computes the advantages itself (each group's rewards less their mean, over "
    "their standard deviation); DRA only adjusts the rewards"
)


def async_advantages(rewards: Any) -> np.ndarray:
    """One group's advantages as ``AsyncGRPOTrainer`` computes them (trl 1.16,
    ``_AsyncRolloutLoop._score_group``): ``(r - mean) / (std + 1e-8)`` over the scored rows, with
    the population standard deviation (divisor ``n``; TRL's ``GRPOTrainer`` divides by ``n - 1``),
    and 0 for unscorable rows (NaN).

    Args:
        rewards: ``[n]`` one group's rewards, NaN where no reward function scored the row.

    Returns:
        ``[n]`` float64 advantages.

    Example:
        >>> async_advantages([1.0, 3.0, float("nan")]).round(6)
        array([-1.,  1.,  0.])
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    out = np.zeros_like(rewards)
    scored = ~np.isnan(rewards)
    if scored.any():
        values = rewards[scored]
        out[scored] = (values - values.mean()) / (values.std() + ADVANTAGE_EPS)
    return out


def check_picklable(step: DRAStep) -> None:
    """Raise ``TypeError`` if ``step`` cannot travel to TRL's rollout worker (it is pickled with
    the loop's other keywords into a spawned process): a lambda or a closure as the embedder."""
    try:
        pickle.dumps(step)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise TypeError(
            "embedder must be picklable: AsyncGRPOTrainer scores rewards in a child process it "
            "spawns, and the DRA step (with your embedder) is pickled to it; use a module-level "
            "function, a class or a callable instance of a module-level class, not a lambda or a "
            f"closure ({type(exc).__name__}: {exc})"
        ) from None


def worker_step(embedder: Any, options: dict[str, Any]) -> DRAStep:
    """The step that ``embedder`` and the ``dra_*`` keywords describe, checked as for
    ``DRAGRPOTrainer`` (nothing loaded), against a CPU (the worker's) and for pickling.

    Raises:
        ValueError, TypeError: an option that cannot apply in the worker, naming the keyword;
        ImportError: the text embedder without the ``embed`` extra.
    """
    if isinstance(embedder, str) and embedder == POLICY:
        raise ValueError(
            f"embedder={POLICY!r} is not available with AsyncGRPOTrainer: its rewards are scored "
            "in the rollout worker's process, which holds no policy (vLLM generates), so there "
            "are no hidden states to pool; use a text embedder (the default, a model name, or "
            "your own function)"
        )
    device = options.get(f"{OPTION_PREFIX}device")
    if device is not None and str(device).split(":")[0] != "cpu":
        raise ValueError(
            f"{OPTION_PREFIX}device={device!r}: AsyncGRPOTrainer's rollout worker runs in a child "
            "process that TRL starts with CUDA_VISIBLE_DEVICES='' (GPU reward models run on its "
            f"CPU too), so the embedder runs on the CPU; leave {OPTION_PREFIX}device unset"
        )
    step, _ = keyword_step(embedder, options, advantages=_ADVANTAGES, device="cpu")
    check_picklable(step)
    return step


class DRARolloutLoop(_AsyncRolloutLoop):
    """TRL's asynchronous rollout loop with DRA in ``_score_group``, in the worker's process.

    Args:
        dra_step: the DRA step, with a text embedder (built here, before the loop reports ready).
        **loop_kwargs: TRL's ``_AsyncRolloutLoop`` keywords, unchanged.

    Per group, after TRL's own ``_score_group``: one step over the raw rewards (NaN where
    unscorable, or where a conversation yielded no training row) and the completions' texts; each
    sample's advantage becomes :func:`async_advantages` of the adjusted rewards; the step's
    metrics are pushed with ``_push_metrics``, one value per group.
    """

    def __init__(self, *, dra_step: DRAStep, **loop_kwargs: Any) -> None:
        if not isinstance(dra_step, DRAStep) or dra_step.embedder is None:
            raise TypeError(
                "dra_step must be a dra_kernels.step.DRAStep with an embedder (the worker embeds "
                f"the completions' texts), got {dra_step!r}"
            )
        super().__init__(**loop_kwargs)
        self.dra_step = dra_step
        dra_step.embed_fn()  # NOTE: loads the embedder now, in this process, before the first group

    async def _score_group(self, group: RolloutGroup) -> list[RolloutSample]:
        samples = await super()._score_group(group)
        # NOTE: TRL makes the samples conversation by conversation, one per training row.
        rows = [i for i, sequences in enumerate(group.completions_sequences) for _ in sequences]
        if len(rows) != len(samples):
            raise RuntimeError(
                f"TRL's _score_group returned {len(samples)} samples for {len(rows)} training "
                f"rows, not one per row; DRA supports trl{SUPPORTED_TRL}"
            )
        size = len(group.completions)
        rewards = torch.full((size,), torch.nan, dtype=torch.float64)
        for sample, i in zip(samples, rows, strict=True):
            rewards[i] = sample.metrics["reward"]
        texts = [completion_text(completion) for completion in group.completions]
        # NOTE: in a thread, as TRL runs synchronous reward functions: generation goes on.
        result = await asyncio.to_thread(
            self.dra_step,
            rewards,
            torch.zeros(size, dtype=torch.long),
            texts=texts,
            num_groups=1,
            expected_group_size=self.num_generations,
        )
        advantages = async_advantages(result.adjusted.cpu().numpy())
        for sample, i in zip(samples, rows, strict=True):
            sample.advantage = float(advantages[i])
        self._push_metrics(result.metrics)
        return samples


class DRARolloutWorker(AsyncRolloutWorker):
    """TRL's ``AsyncRolloutWorker`` whose child process runs :class:`DRARolloutLoop` (built by
    :class:`DRAAsyncGRPOTrainer`, or by you for a plain ``AsyncGRPOTrainer(rollout_worker=...)``).

    Args:
        dra_step: the DRA step (:func:`worker_step`), pickled to the child process.
        **kwargs: ``AsyncRolloutWorker``'s keywords, unchanged.
    """

    _loop_cls = DRARolloutLoop

    def __init__(self, *, dra_step: DRAStep, **kwargs: Any) -> None:
        check_picklable(dra_step)
        super().__init__(dra_step=dra_step, **kwargs)


class DRAAsyncGRPOTrainer(AsyncGRPOTrainer):
    """TRL's ``AsyncGRPOTrainer`` with Diversity-aware Reward Adjustment.

    Takes every ``AsyncGRPOTrainer`` argument but ``rollout_worker`` (it builds its own, a
    :class:`DRARolloutWorker`), plus the ``embedder`` and ``dra_*`` keywords of
    :class:`dra_kernels.integrations.trl.DRARewardsMixin`, all checked before
    ``AsyncGRPOTrainer.__init__`` runs (:func:`worker_step`). The embedder runs in the rollout
    worker's process, on its CPU: ``embedder="policy"`` (no policy there), ``dra_backend="triton"``
    and a ``dra_device`` other than ``"cpu"`` are refused, and the embedder (a function, an object
    with ``encode``, or a class of either, built there) is pickled to that process: a module-level
    function or class, not a lambda or a closure.

    Example (your own embedder: a module-level function, pickled to the worker's process)::

        DRAAsyncGRPOTrainer(..., embedder=my_package.embed_texts)
    """

    def __init__(self, *args: Any, embedder: Any = None, **kwargs: Any) -> None:
        options = {key: kwargs.pop(key) for key in list(kwargs) if key.startswith(OPTION_PREFIX)}
        step = worker_step(embedder, options)
        given = _TRAINER_SIGNATURE.bind_partial(None, *args, **kwargs)
        if given.arguments.get("rollout_worker") is not None:
            raise ValueError(
                "DRAAsyncGRPOTrainer builds its own rollout worker (DRARolloutWorker), which "
                "applies DRA; to use another worker, give it DRA's loop (a subclass of "
                "DRARolloutLoop) and pass it to AsyncGRPOTrainer"
            )
        super().__init__(*args, **kwargs)
        if self.rollout_worker is not None:  # the main process: TRL's default worker, not started
            default = self.rollout_worker
            if type(default) is not AsyncRolloutWorker:
                raise RuntimeError(  # pragma: no cover - other TRL versions
                    f"expected TRL's AsyncRolloutWorker, found {type(default).__name__}"
                )
            self.rollout_worker = DRARolloutWorker(
                dra_step=step,
                child_ready_timeout=default._child_ready_timeout,
                **default._loop_kwargs,
            )
            self.rollout_queue = self.rollout_worker.rollout_buffer
        self.dra_step = step
