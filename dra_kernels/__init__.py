"""dra-kernels: exact, fast Diversity-aware Reward Adjustment (DRA) for GRPO-style training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dra_kernels.api import (
        adjust_rewards,
        dra_advantages,
        factorize_group_ids,
        group_advantages,
        smi_scores,
    )
    from dra_kernels.step import DRAStep

__all__ = [
    "DRAStep",
    "adjust_rewards",
    "dra_advantages",
    "factorize_group_ids",
    "group_advantages",
    "smi_scores",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # NOTE: the public functions are loaded on first use, so ``import dra_kernels`` (and the
    # command line's ``--help``) does not import torch, which takes seconds.
    if name in __all__:
        from dra_kernels import api, step

        value = getattr(step if name == "DRAStep" else api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dra_kernels' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
