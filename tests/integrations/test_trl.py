"""DRAGRPOTrainer with the real TRL package: a tiny random causal LM on CPU, two training steps.

Runs in the TRL environment (``bash .ci/trl.sh``); skipped where TRL is not importable. The trainer
is subclassed only to record, for every batch, what ``_calculate_rewards`` returns (the rewards TRL
then normalises), the gathered completions and TRL's advantages; the test recomputes the expected
values independently with :func:`dra_kernels.adjust_rewards` / :func:`dra_kernels.dra_advantages`
on the gathered batch, in whole groups. The two-process case runs this file as a script under
``torchrun --nproc_per_node 2`` (gloo).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import zlib
from typing import Any

import numpy as np
import pytest

pytest.importorskip("trl", reason="TRL is not installed here; bash .ci/trl.sh runs these tests")

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from trl import GRPOConfig

import dra_kernels
from dra_kernels.integrations.trl import (
    DRAGRPOTrainer,
    _embedding_function,
    completion_text,
)

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
EMBED_DIM = 16
TRL_EPS = 1e-4  # TRL's constant in (r - mean) / (std + 1e-4)
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# ----------------------------------------------------------------------------- tiny, local, offline


def build_model_dir(path: pathlib.Path) -> pathlib.Path:
    """A word-level tokenizer and a randomly initialised 1-layer GPT-2, saved under ``path``."""
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    config = GPT2Config(
        vocab_size=len(vocab), n_positions=32, n_embd=16, n_layer=1, n_head=2,
        bos_token_id=vocab["<eos>"], eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
    )  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def embed(texts: list[str]) -> torch.Tensor:
    """Deterministic hashed bag of words (a stand-in for a sentence encoder).

    Column 0 is a constant, as sentence encoders share a common direction: every two completions,
    empty ones too, have a positive cosine, so the adjustment is never trivially 1.
    """
    out = torch.zeros(len(texts), EMBED_DIM)
    out[:, 0] = 1.0
    for i, text in enumerate(texts):
        for word in text.split():
            out[i, zlib.crc32(word.encode()) % (EMBED_DIM - 1) + 1] += 1.0
    return out


def distinct_words(completions: list[Any], **kwargs: Any) -> list[float]:
    return [len(set(completion_text(c).split())) / 4.0 for c in completions]


def alpha_count(completions: list[Any], **kwargs: Any) -> list[float]:
    return [float(completion_text(c).split().count("alpha")) - 0.5 for c in completions]


REWARD_FUNCS = {"distinct_words": distinct_words, "alpha_count": alpha_count}


class RecordingTrainer(DRAGRPOTrainer):
    """Records the gathered completions, the rewards TRL normalises, and TRL's advantages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        self.records.append({
            "mode": mode,
            "group_size": self.num_generations if mode == "train" else self.num_generations_eval,
            "prompts": gather_object([completion_text(p) for p in prompts]),
            "texts": gather_object([completion_text(c) for c in completions]),
            "rewards": rewards.cpu().tolist(),
            "smi_mean": self._metrics[mode]["dra/smi_mean"][-1],
            "factor_mean": self._metrics[mode]["dra/factor_mean"][-1],
        })  # fmt: skip
        return rewards

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        total = len(self.records[-1]["texts"])
        self.records[-1]["advantages"] = list(self._logs["advantages"])[-total:]
        return output


def train(workdir: pathlib.Path, *, world: int, **options: Any) -> dict[str, Any]:
    """Two GRPO steps and one evaluation; returns this rank's records and the trainer's state."""
    model_dir = workdir / "model"
    funcs = [REWARD_FUNCS[name] for name in options.pop("reward_funcs")]
    args = GRPOConfig(
        output_dir=str(workdir / "out"),
        max_steps=2,
        learning_rate=1e-2,
        max_completion_length=6,
        temperature=1.0,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
        **options,
    )
    prompts = [" ".join(WORDS[i : i + 2]) for i in range(8)]
    trainer = RecordingTrainer(
        model=str(model_dir),
        reward_funcs=funcs,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        eval_dataset=Dataset.from_dict({"prompt": prompts[:2]}),
        embedder=embed,
    )
    trainer.train()
    trainer.evaluate()
    return {
        "rank": trainer.accelerator.process_index,
        "world": trainer.accelerator.num_processes,
        "global_step": trainer.state.global_step,
        "aggregation": trainer.multi_objective_aggregation,
        "reward_weights": trainer.reward_weights.tolist(),
        "reward_funcs": [f.__name__ for f in funcs],
        "records": trainer.records,
        "logged": [sorted(entry) for entry in trainer.state.log_history],
    }


# ----------------------------------------------------------------------------- checks


def check_run(result: dict[str, Any], *, world: int) -> None:
    assert result["world"] == world
    assert result["global_step"] == 2, "the two training steps did not complete"
    modes = [record["mode"] for record in result["records"]]
    assert modes.count("train") == 2 and "eval" in modes, modes
    assert any("dra/smi_mean" in keys and "loss" in keys for keys in result["logged"])
    assert any("eval_dra/factor_mean" in keys for keys in result["logged"])
    funcs = [REWARD_FUNCS[name] for name in result["reward_funcs"]]
    weights = np.asarray(result["reward_weights"])
    for record in result["records"]:
        texts, size = record["texts"], record["group_size"]
        n = len(texts)
        ids = np.arange(n) // size
        # whole groups: every group is one prompt's completions
        for g in range(n // size):
            assert len(set(record["prompts"][g * size : (g + 1) * size])) == 1
        raw = np.array([f(texts) for f in funcs], dtype=np.float32).T  # [N, funcs]
        emb = embed(texts).numpy()
        found = np.asarray(record["rewards"])
        if result["aggregation"] == "sum_then_normalize":
            # the rewards TRL normalises: the weighted sum of the columns
            summed = raw @ weights.astype(np.float32)
            expected = dra_kernels.adjust_rewards(summed, emb, ids, backend="torch")
            np.testing.assert_allclose(found @ weights, expected, rtol=1e-5, atol=1e-6)
            advantages = dra_kernels.dra_advantages(summed, emb, ids, eps=TRL_EPS, backend="torch")
            np.testing.assert_allclose(record["advantages"], advantages, rtol=1e-4, atol=1e-4)
        else:
            # normalize_then_sum: each reward function's column is adjusted, then normalised
            for k in range(len(funcs)):
                expected = dra_kernels.adjust_rewards(raw[:, k], emb, ids, backend="torch")
                np.testing.assert_allclose(found[:, k], expected, rtol=1e-5, atol=1e-6)
        smi = dra_kernels.smi_scores(emb, ids, backend="torch")
        np.testing.assert_allclose(record["smi_mean"], smi.mean(), rtol=1e-5, atol=1e-6)
        factor = 1.0 / np.maximum(1.0 + smi, 0.1)
        np.testing.assert_allclose(record["factor_mean"], factor.mean(), rtol=1e-5, atol=1e-6)
        assert record["factor_mean"] < 1.0, "no similar completions: the test checks nothing"


# ----------------------------------------------------------------------------- tests


@pytest.fixture
def workdir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    build_model_dir(tmp_path / "model")
    return tmp_path


ONE_PROCESS = {
    "sum": dict(
        reward_funcs=["distinct_words", "alpha_count"], reward_weights=[1.0, 0.5],
        per_device_train_batch_size=6, num_generations=3,
        per_device_eval_batch_size=4, num_generations_eval=2,
    ),
    "normalize_then_sum": dict(
        reward_funcs=["distinct_words", "alpha_count"],
        multi_objective_aggregation="normalize_then_sum",
        per_device_train_batch_size=4, num_generations=4,
        per_device_eval_batch_size=4, num_generations_eval=4,
    ),
}  # fmt: skip

# 2 ranks x 6 completions, groups of 4: the middle group has 2 rows on each rank; in evaluation
# 1 completion per rank, groups of 2: every group spans both ranks.
TWO_PROCESSES = dict(
    reward_funcs=["distinct_words"],
    per_device_train_batch_size=6, num_generations=4,
    per_device_eval_batch_size=1, num_generations_eval=2,
)  # fmt: skip


@pytest.mark.parametrize("case", sorted(ONE_PROCESS))
def test_one_process(case: str, workdir: pathlib.Path) -> None:
    result = train(workdir, world=1, **dict(ONE_PROCESS[case]))
    check_run(result, world=1)


def test_two_processes_torchrun(workdir: pathlib.Path) -> None:
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        __file__, str(workdir),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    results = [json.loads((workdir / f"rank{k}.json").read_text()) for k in range(2)]
    for result in results:
        check_run(result, world=2)
    # every rank adjusts the whole gathered batch identically
    rank0, rank1 = (r["records"] for r in results)
    assert [r["rewards"] for r in rank0] == [r["rewards"] for r in rank1]
    assert [r["texts"] for r in rank0] == [r["texts"] for r in rank1]


def test_refuses_what_it_cannot_adjust(workdir: pathlib.Path) -> None:
    model = str(workdir / "model")
    data = Dataset.from_dict({"prompt": ["alpha beta"] * 2})
    args = GRPOConfig(
        output_dir=str(workdir / "out"), report_to="none", use_cpu=True, bf16=False,
        per_device_train_batch_size=2, num_generations=2, multi_objective_aggregation="rank_sum",
    )  # fmt: skip
    with pytest.raises(ValueError, match="multi_objective_aggregation in"):
        DRAGRPOTrainer(model, distinct_words, args=args, train_dataset=data, embedder=embed)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="dra_min_denominator must be"):
            DRAGRPOTrainer(model, distinct_words, embedder=embed, dra_min_denominator=bad)
    with pytest.raises(TypeError, match="embedder must be"):
        DRAGRPOTrainer(model, distinct_words, embedder=3)


def test_completion_text_and_embedder_kinds() -> None:
    assert completion_text("x = 2") == "x = 2"
    blocks = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}]
    assert completion_text(blocks) == "a"
    messages = [{"role": "assistant", "content": "a"}, {"role": "tool", "content": "b"}]
    assert completion_text(messages) == "a\nb"

    class Encoder:  # like dra_kernels.embed.Embedder or a SentenceTransformer
        def encode(self, texts: list[str]) -> np.ndarray:
            return embed(texts).numpy()

    device = torch.device("cpu")
    for embedder in (embed, Encoder(), lambda texts: embed(texts).tolist()):
        np.testing.assert_array_equal(
            torch.as_tensor(np.asarray(_embedding_function(embedder, device)(["a b", "c"]))),
            embed(["a b", "c"]),
        )


def _main() -> None:
    import torch.distributed as dist

    workdir = pathlib.Path(sys.argv[1])
    result = train(workdir, world=2, **dict(TWO_PROCESSES))
    (workdir / f"rank{result['rank']}.json").write_text(json.dumps(result))
    # NOTE: the trainer leaves its gloo process group open; torn down at interpreter exit, its
    # threads can abort the process ("terminate called without an active exception", seen once
    # in CI after both ranks had finished).
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    _main()
