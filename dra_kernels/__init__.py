"""dra-kernels: exact, fast Diversity-aware Reward Adjustment (DRA) for GRPO-style training."""

from dra_kernels.api import (
    adjust_rewards,
    dra_advantages,
    factorize_group_ids,
    group_advantages,
    smi_scores,
)

__all__ = [
    "adjust_rewards",
    "dra_advantages",
    "factorize_group_ids",
    "group_advantages",
    "smi_scores",
]

__version__ = "0.1.0"
