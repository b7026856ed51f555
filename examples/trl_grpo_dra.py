"""GRPO with Diversity-aware Reward Adjustment in TRL: a tiny, offline, CPU-only run.

A randomly initialised 1-layer GPT-2 with a word-level tokenizer (both built locally, no hub) learns
for a few steps to write words from a small vocabulary; the reward counts distinct words. The only
DRA-specific lines are marked ``# DRA``.

Run (from the repository root, in an environment with ``pip install -e ".[trl]"``)::

    python examples/trl_grpo_dra.py
    python examples/trl_grpo_dra.py --embedder minilm        # needs '.[embed]' (bundled model)
    python examples/trl_grpo_dra.py --embedder policy        # the policy's own hidden states
    torchrun --nproc_per_node 2 examples/trl_grpo_dra.py     # two processes (gloo on CPU)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import zlib

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from trl import GRPOConfig

from dra_kernels.integrations.trl import DRAGRPOTrainer  # DRA

WORDS = [
    "the", "a", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "is", "and", "or", "not",
]  # fmt: skip


def build_tiny_model(path: str) -> None:
    """A word-level tokenizer and a random 1-layer GPT-2, saved to ``path`` (no download)."""
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=vocab["<eos>"],
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def distinct_words(completions: list[str], **kwargs: object) -> list[float]:
    """Reward: number of distinct words in the completion."""
    return [float(len(set(text.split()))) for text in completions]


def hashed_bag_of_words(texts: list[str], dim: int = 64) -> torch.Tensor:
    """A cheap stand-in for a sentence encoder: any ``list[str] -> [N, D]`` function works."""
    out = torch.zeros(len(texts), dim)
    for i, text in enumerate(texts):
        for word in text.split():
            out[i, zlib.crc32(word.encode()) % dim] += 1.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", choices=["hash", "minilm", "policy"], default="hash")
    parser.add_argument("--steps", type=int, default=4)
    options = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    embedder = {
        "hash": hashed_bag_of_words,
        "minilm": None,  # the default: bundled all-MiniLM-L6-v2 (offline), on the trainer's device
        "policy": "policy",  # mean of the policy's last hidden states over each completion
    }[options.embedder]

    with tempfile.TemporaryDirectory() as workdir:
        model_dir = os.path.join(workdir, "model")
        build_tiny_model(model_dir)
        prompts = [" ".join(WORDS[i : i + 3]) for i in range(12)]
        args = GRPOConfig(
            output_dir=os.path.join(workdir, "out"),
            max_steps=options.steps,
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=8,
            learning_rate=1e-3,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            bf16=False,
        )
        trainer = DRAGRPOTrainer(  # DRA (was: GRPOTrainer)
            model=model_dir,
            reward_funcs=distinct_words,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            embedder=embedder,  # DRA
        )
        trainer.train()
        if trainer.accelerator.is_main_process:
            for entry in trainer.state.log_history:
                if "dra/smi/mean" in entry:
                    read = entry.get("dra/tokens_read_share")  # None for a plain function
                    print(
                        f"step {entry['step']}: reward {entry['reward']:.3f} "
                        f"(after DRA {entry['dra/reward_after/mean']:.3f}), "
                        f"mean SMI {entry['dra/smi/mean']:.3f}, "
                        f"mean factor {entry['dra/factor/mean']:.3f}"
                        + ("" if read is None else f", tokens read {read:.0%}")
                    )


if __name__ == "__main__":
    main()
