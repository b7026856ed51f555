"""examples/diversity_experiment.py: the GRPO vs DRA diversity experiment (docs/experiment.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from dra_kernels import dra_advantages, group_advantages

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default model is bundled; never the hub

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "diversity_experiment.py"


def _load():
    spec = importlib.util.spec_from_file_location("diversity_experiment", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


de = _load()


def fake_embed(texts):
    """Deterministic unit vectors, one per text (no model): a fast stand-in for the embedder."""
    g = torch.Generator().manual_seed(0)
    e = torch.randn(len(texts), 16, generator=g)
    return torch.nn.functional.normalize(e, dim=1), "fake"


@pytest.fixture(scope="module")
def task():
    prompts = de.load_data()
    embeddings, _ = fake_embed(de.completion_texts(prompts))
    return de.build_task(prompts, embeddings)


def test_data_has_several_strategies_of_paraphrases_and_wrong_answers():
    prompts = de.load_data()
    assert len(prompts) >= 6
    texts = de.completion_texts(prompts)
    assert len(set(texts)) == len(texts)  # no completion twice
    for p in prompts:
        assert 3 <= len(p["strategies"]) <= 5
        assert all(2 <= len(s["completions"]) <= 4 for s in p["strategies"])
        assert p["wrong"]


def test_metrics_of_known_policies(task):
    k = task.strategy.shape[1]
    uniform = de.probabilities(torch.zeros(task.strategy.shape, dtype=torch.float64), task)
    m = de.policy_metrics(uniform, task)
    for p in range(task.num_prompts):
        n_strategies = len(task.strategy_names[p])
        n_correct = int(task.correct[p].sum())
        assert m["accuracy"][p] == pytest.approx(n_correct / int(task.mask[p].sum()))
        # every strategy has 3 paraphrases in the data, so the uniform policy is even over them
        assert m["effective_strategies"][p] == pytest.approx(n_strategies)
        assert m["strategies_kept"][p] == n_strategies
        assert m["effective_correct_completions"][p] == pytest.approx(n_correct)
    # all mass on the two paraphrases of one strategy: one strategy, two completions
    probs = torch.zeros(task.num_prompts, k, dtype=torch.float64)
    first = (task.strategy == 0).int().argmax(1)
    probs[torch.arange(task.num_prompts), first] = 0.5
    probs[torch.arange(task.num_prompts), first + 1] = 0.5
    m = de.policy_metrics(probs, task)
    assert torch.allclose(m["accuracy"], torch.ones(task.num_prompts, dtype=torch.float64))
    assert torch.allclose(m["effective_strategies"], torch.ones_like(m["accuracy"]))
    assert torch.equal(m["strategies_kept"], torch.ones_like(m["accuracy"]))
    assert torch.allclose(m["effective_correct_completions"], 2 * torch.ones_like(m["accuracy"]))
    # mass on a wrong completion counts against accuracy, not as a strategy
    probs = torch.zeros(task.num_prompts, k, dtype=torch.float64)
    probs[torch.arange(task.num_prompts), first] = 0.5
    probs[torch.arange(task.num_prompts), (task.strategy == -1).int().argmax(1)] = 0.5
    m = de.policy_metrics(probs, task)
    assert torch.allclose(m["accuracy"], torch.full_like(m["accuracy"], 0.5))
    assert torch.allclose(m["effective_strategies"], torch.ones_like(m["accuracy"]))


@pytest.mark.parametrize("method", list(de.METHODS))
def test_each_step_uses_the_library_advantages_and_the_policy_gradient(task, method):
    trace: list = []
    lr, g = 0.7, 6
    de.train(task, method, 3, steps=4, lr=lr, group_size=g, trace=trace)
    assert len(trace) == 4
    group_ids = torch.arange(task.num_prompts).repeat_interleave(g)
    scale, dra = de.METHODS[method]
    for step in trace:
        rewards = step["rewards"].reshape(-1)
        embeddings = step["embeddings"].reshape(rewards.shape[0], -1)
        # the rewards and embeddings are those of the sampled completions
        assert torch.equal(step["rewards"], task.correct.gather(1, step["samples"]).float())
        rows = torch.arange(task.num_prompts)[:, None]
        assert torch.equal(step["embeddings"], task.embeddings[rows, step["samples"]])
        if dra:
            expected = dra_advantages(rewards, embeddings, group_ids, scale=scale)
            plain = group_advantages(rewards, group_ids, scale=scale)
            assert not torch.allclose(expected, plain)  # DRA changes them
        else:
            expected = group_advantages(rewards, group_ids, scale=scale)
        assert torch.equal(step["advantages"].reshape(-1), expected)
        # SGD ascent on (1/G) sum_i A_i log pi(a_i), computed independently with autograd
        logits = step["logits_before"].clone().requires_grad_(True)
        logp = torch.log_softmax(logits.masked_fill(~task.mask, -torch.inf), dim=1)
        surrogate = (step["advantages"].double() * logp.gather(1, step["samples"])).sum() / g
        surrogate.backward()
        assert torch.allclose(step["logits_after"], step["logits_before"] + lr * logits.grad)


def test_the_script_calls_the_library_function(task, monkeypatch):
    calls = []

    def zero_advantages(rewards, embeddings, group_ids, **kwargs):
        calls.append(kwargs)
        return torch.zeros_like(rewards)

    monkeypatch.setattr(de, "dra_advantages", zero_advantages)
    trace: list = []
    curves = de.train(task, "DRA-DR.GRPO", 0, steps=3, lr=1.0, group_size=4, trace=trace)
    assert [c["scale"] for c in calls] == ["none"] * 3
    assert all(torch.equal(s["logits_after"], torch.zeros_like(s["logits_after"])) for s in trace)
    assert len(set(curves["effective_strategies"])) == 1  # the policy never moved


def test_runs_are_reproducible_and_share_their_first_samples(task):
    a, b = [], []
    first = de.train(task, "GRPO", 1, steps=5, lr=1.0, group_size=4, trace=a)
    again = de.train(task, "GRPO", 1, steps=5, lr=1.0, group_size=4)
    de.train(task, "DRA-GRPO", 1, steps=5, lr=1.0, group_size=4, trace=b)
    assert first == again
    assert torch.equal(a[0]["samples"], b[0]["samples"])  # common random numbers
    other: list = []
    de.train(task, "GRPO", 2, steps=1, lr=1.0, group_size=4, trace=other)
    assert not torch.equal(a[0]["samples"], other[0]["samples"])


def test_least_similar_policy_minimises_the_expected_similarity(task):
    pi = de.least_similar_policy(task)
    assert torch.allclose(pi.sum(1), torch.ones(task.num_prompts, dtype=torch.float64))
    assert torch.all(pi[~task.correct] == 0)
    for p in range(task.num_prompts):
        keep = task.correct[p]
        e = task.embeddings[p][keep].double()
        sims, q = e @ e.T, pi[p][keep]
        # first-order optimality on the simplex: (C q)_k is minimal, and equal where q_k > 0
        grad = sims @ q
        support = q > 1e-2
        assert grad[support].max() - grad[support].min() < 1e-3
        assert grad.min() >= grad[support].max() - 1e-3
        # and no other distribution tried does better
        gen = torch.Generator().manual_seed(p)
        others = -torch.log(torch.rand(500, q.shape[0], generator=gen, dtype=torch.float64))
        others = others / others.sum(1, keepdim=True)  # uniform on the simplex
        others = torch.cat([others, torch.full_like(q, 1 / q.shape[0])[None]])
        assert (q @ sims @ q) <= torch.einsum("nk,kj,nj->n", others, sims, others).min()


def test_command_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "exp"
    argv = ["--out", str(out), "--seeds", "2", "--steps", "5", "--group-size", "4"]
    threads = torch.get_num_threads()
    result = de.main(argv, embed_fn=fake_embed)
    assert torch.get_num_threads() == threads  # restored
    assert json.loads((out / "result.json").read_text()) == result
    assert (out / "diversity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result) == {"config", "task", "runs", "summary", "runtime_s"}
    cfg = result["config"]
    assert (cfg["seeds"], cfg["steps"], cfg["group_size"], cfg["optimizer"]) == (2, 5, 4, "sgd")
    assert cfg["lr"] == de.DEFAULT_LR["sgd"] and cfg["embedder"] == "fake"
    assert list(result["runs"]) == list(de.METHODS) == list(result["summary"])
    n_max = max(result["task"]["strategies_per_prompt"])
    for method, runs in result["runs"].items():
        for name in de.METRICS:
            assert len(runs[name]) == 2 and all(len(c) == 6 for c in runs[name])
            for curve in runs[name]:
                assert curve[0] == result["task"]["reference_policies"]["uniform"][name]
        assert all(len(c) == 5 for c in runs["groups_all_equal"])
        values = [v for c in runs["accuracy"] for v in c]
        assert all(0 <= v <= 1 for v in values)
        for name in ("effective_strategies", "strategies_kept"):
            assert all(1 <= v <= n_max for c in runs[name] for v in c)
        assert all(0 <= v <= 1 for c in runs["groups_all_equal"] for v in c)
        shares = runs["final_strategy_share"]
        assert all(sum(row) == pytest.approx(1, abs=1e-3) for seed in shares for row in seed)
        summary = result["summary"][method]
        final = summary["final"]["accuracy"]
        assert final["min"] <= final["mean"] <= final["max"]
        assert final["mean"] == pytest.approx(sum(c[-1] for c in runs["accuracy"]) / 2, abs=1e-4)
        assert len(summary["final_shares_vs_least_similar"]) == 2
        matched = summary["effective_strategies_when_accuracy_reaches"]
        assert list(matched) == ["0.9", "0.95", "0.99"] and all(
            len(v) == 2 for v in matched.values()
        )
    err = capsys.readouterr().err
    assert "[8/8] DRA-DR.GRPO seed 1" in err and "wrote" in err


def test_adam_and_a_subset_of_methods(tmp_path):
    pytest.importorskip("matplotlib")
    argv = ["--out", str(tmp_path), "--seeds", "1", "--steps", "3", "--optimizer", "adam",
            "--methods", "GRPO,DRA-GRPO", "--quiet"]  # fmt: skip
    result = de.main(argv, embed_fn=fake_embed)
    assert result["config"]["lr"] == de.DEFAULT_LR["adam"]
    assert list(result["runs"]) == ["GRPO", "DRA-GRPO"]
    assert result["runs"]["GRPO"]["accuracy"][0][-1] != result["runs"]["GRPO"]["accuracy"][0][0]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--seeds", "0", "must be >= 1"),
        ("--seeds", "two", "must be an integer"),
        ("--steps", "-3", "must be >= 1"),
        ("--group-size", "1", "must be >= 2"),
        ("--lr", "0", "must be a finite number > 0"),
        ("--lr", "nan", "must be a finite number > 0"),
        ("--lr", "inf", "must be a finite number > 0"),
        ("--lr", "fast", "must be a number"),
        ("--optimizer", "sgdm", "invalid choice"),
        ("--methods", "GRPO,PPO", "must be a comma-separated list"),
    ],
)
def test_invalid_options_name_the_option(option, value, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        de.main(["--out", str(tmp_path), option, value], embed_fn=fake_embed)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and message in err
    assert not (tmp_path / "result.json").exists()


def test_unreadable_data_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        de.main(["--out", str(tmp_path), "--data", str(tmp_path / "missing.json")])
    assert exc.value.code == 2
    assert "--data: cannot read" in capsys.readouterr().err


def test_real_model_separates_strategies_a_little(tmp_path):
    """The bundled model, end to end (about 10 s): the numbers docs/experiment.md reads."""
    pytest.importorskip("sentence_transformers", reason="the embed extra is not installed")
    pytest.importorskip("matplotlib")
    argv = ["--out", str(tmp_path), "--seeds", "1", "--steps", "2", "--quiet"]
    result = de.main(argv)
    assert result["config"]["embedder"] == "all-MiniLM-L6-v2"
    cos = result["task"]["embedding_cosine"]
    # paraphrases of one strategy are closer than two strategies, both far above other prompts
    assert cos["same_strategy"] > cos["different_strategies"] > cos["different_prompts"] + 0.2
    committed = ROOT / "docs" / "experiment" / "sgd" / "result.json"
    if committed.exists():  # the committed run used the same data and model
        assert _numbers(json.loads(committed.read_text())["task"]) == pytest.approx(
            _numbers(result["task"]), abs=2e-4
        )


def _numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _numbers(value[k])]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [float(value)]
