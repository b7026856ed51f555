"""DRA for ms-swift's GRPO trainer, ``swift rlhf --rlhf_type grpo`` (supported: ms-swift 4.6.x).
See docs/integrations/swift.md.

Switched on by a plugin file passed with ``--external_plugins`` that calls :func:`register`, which
checks the options and points ``TrainerFactory.TRAINER_MAPPING["grpo"]`` at
:class:`DRAGRPOTrainer`. The override is ``_compute_advantages``, which gets the gathered reward
matrix: each process embeds its completions, one DRA step runs over ms-swift's groups
(:mod:`~.gathered`); ms-swift's own ``_compute_advantages`` then runs on the raw rewards (its
metrics and logs stay those without DRA) and again, unlogged, on the adjusted ones (the
advantages trained on). Dynamic sampling still filters on the raw rewards; ``dynamic_num_samples``
batches are refused.
"""

from __future__ import annotations

if __name__ != "dra_kernels.integrations.swift":  # NOTE: a misuse, said at once
    raise ImportError(
        f"{__file__} was loaded as {__name__!r} (by --external_plugins?): it is the library "
        "module, not a plugin file, and loaded so it would switch nothing on. Write a plugin file "
        "with `from dra_kernels.integrations.swift import register` and `register(...)` instead"
    )

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

try:
    import swift
    from swift.rlhf_trainers import GRPOTrainer
    from swift.rlhf_trainers.utils import profiling_context
    from swift.trainers import TrainerFactory
except ImportError as exc:  # pragma: no cover - exercised only without ms-swift
    raise ImportError(
        'dra_kernels.integrations.swift needs ms-swift: pip install -e ".[swift]" from a clone of '
        "the dra-kernels repository (ms-swift>=4.6,<4.7, and msgspec, which ms-swift 4.6.0 "
        f"imports without declaring it); import failed with: {exc}"
    ) from exc

from dra_kernels.integrations import gathered
from dra_kernels.step import DRAStep

__all__ = [
    "SUPPORTED_SWIFT",
    "TRAINER",
    "DRAGRPOTrainer",
    "DRAMixin",
    "register",
    "registered_step",
    "unregister",
]

SUPPORTED_SWIFT = ">=4.6,<4.7"
"""ms-swift versions this integration is tested with (it overrides a private method)."""

TRAINER = f"{__name__}.DRAGRPOTrainer"
"""What :func:`register` puts in ``TrainerFactory.TRAINER_MAPPING["grpo"]``."""

_SWIFT_TRAINER = "swift.rlhf_trainers.GRPOTrainer"  # ms-swift's own entry
_registered: list[DRAStep] = []

gathered.check_trainer(
    GRPOTrainer, ("_compute_advantages",), f"ms-swift{SUPPORTED_SWIFT}", swift.__version__
)


def register(embedder: Any = None, **options: Any) -> DRAStep:
    """Switch DRA on for ``swift rlhf --rlhf_type grpo`` in this process: call it in a plugin
    file passed with ``--external_plugins``.

    Args:
        embedder: ``None`` (default) for :class:`dra_kernels.embed.Embedder` from the embedder
            options (the bundled all-MiniLM-L6-v2, every token read, on each process's device);
            or a function ``list[str] -> [N, D]`` or an object with ``encode(texts)``, used as
            given (no embedder option then).
        **options: the step's options (``min_denominator``, ``measure``, ``eta``, ``lam``,
            ``backend``) and the :class:`dra_kernels.embed.EmbedderConfig` fields.

    Returns:
        The step every GRPO trainer built afterwards in this process uses.

    Raises:
        ValueError, TypeError: a bad or unknown option (the valid ones listed), ``scale`` /
            ``eps`` (``--scale_rewards`` decides), or another class registered for ``"grpo"``.
        ImportError: the built-in embedder without the ``embed`` extra.

    Example (the DRA paper's embedder)::

        register(model="jinaai/jina-embeddings-v2-small-en", trust_remote_code=True)
    """
    why = "ms-swift computes the advantages; set --scale_rewards instead"
    gathered.refuse_advantage_options(options, why)
    step = DRAStep.from_options(options, embedder=embedder)
    install = 'pip install -e ".[swift,embed]"'
    gathered.check_text_embedder(
        step, install=install, instead="embedder=<your embedding function>"
    )
    current = TrainerFactory.TRAINER_MAPPING.get("grpo")
    if current not in (_SWIFT_TRAINER, TRAINER):
        raise ValueError(
            f"TrainerFactory.TRAINER_MAPPING['grpo'] already names {current!r}: to add DRA to "
            f"that trainer, put {__name__}.DRAMixin first in its bases instead of calling register"
        )
    TrainerFactory.TRAINER_MAPPING["grpo"] = TRAINER
    _registered[:] = [step]
    return step


def unregister() -> None:
    """Switch DRA off again in this process: ms-swift's own ``GRPOTrainer`` for ``"grpo"``."""
    if TrainerFactory.TRAINER_MAPPING.get("grpo") == TRAINER:
        TrainerFactory.TRAINER_MAPPING["grpo"] = _SWIFT_TRAINER
    _registered.clear()


def registered_step() -> DRAStep | None:
    """The step :func:`register` set in this process, or ``None``."""
    return _registered[0] if _registered else None


def _completion_text(content: Any, tokenizer: Any) -> str:
    """The text of a completion as ms-swift keeps it in ``messages[-1]["content"]``: a string,
    or token ids (a list, or a dict with ``token_ids``) decoded as ms-swift's ``_log_rollout``
    decodes them."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = content["token_ids"]
    return tokenizer.decode(content)


class DRAMixin:
    """Adds Diversity-aware Reward Adjustment to ms-swift's ``GRPOTrainer`` (or a subclass of it),
    with the step :func:`register` set: ``class MyTrainer(DRAMixin, MyGRPOTrainer)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        step = registered_step()
        if step is None:
            raise RuntimeError(
                f"{type(self).__name__} adds DRA with the options of "
                f"dra_kernels.integrations.swift.register(), which was not called in this process: "
                "call it in a file passed with --external_plugins"
            )
        super().__init__(*args, **kwargs)
        if not self.reward_func_names:
            raise ValueError(
                "DRA divides the rewards, and this GRPO run has none (no reward function, reward "
                "model or gym reward: teacher-only OPD-RL)"
            )
        self.dra_step = gathered.placed_step(step, self.accelerator.device)

    def _compute_advantages(self, samples, rewards_per_func, batch_encoded_inputs):
        if self.dynamic_num_samples:
            raise ValueError(
                "DRA needs whole groups of num_generations rows; this batch comes from a "
                "multi-turn scheduler that split trajectories into several samples "
                "(dynamic_num_samples), which DRA does not support"
            )
        mode = "train" if self.model.training else "eval"
        tokenizer = self.processing_class
        texts = [_completion_text(s.messages[-1]["content"], tokenizer) for s in samples]
        with torch.no_grad(), profiling_context(self, "dra_embed"):
            embeddings, coverage = self.dra_step.embed(texts)
        with profiling_context(self, "dra_step"):
            smi = gathered.smi(self, rewards_per_func, embeddings, mode=mode, coverage=coverage)
        # NOTE: on the raw rewards ms-swift logs its metrics and completions.jsonl as without DRA;
        # on the adjusted ones, unlogged, it gives the advantages (cheap: [N]-sized arithmetic).
        super()._compute_advantages(samples, rewards_per_func, batch_encoded_inputs)
        adjusted = self.dra_step.adjust(rewards_per_func, smi)
        with self._dra_unlogged():
            return super()._compute_advantages(samples, adjusted, batch_encoded_inputs)

    @contextmanager
    def _dra_unlogged(self) -> Iterator[None]:
        """ms-swift's metrics (``self._metrics``) and logs (``self._logs``) replaced, for the
        duration, by containers that keep whatever is written to them away from any log."""
        saved = self._metrics, self._logs
        sink: defaultdict = defaultdict(lambda: defaultdict(list))
        self._metrics, self._logs = sink, sink
        try:
            yield
        finally:
            self._metrics, self._logs = saved


class DRAGRPOTrainer(DRAMixin, GRPOTrainer):
    """ms-swift's ``GRPOTrainer`` with Diversity-aware Reward Adjustment, with the options of
    :func:`register`, which makes ``swift rlhf --rlhf_type grpo`` build this class."""
