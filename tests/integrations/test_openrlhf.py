"""DRA in OpenRLHF 0.11.x: the real experience maker, with and without the patch.

Runs in its own virtual environment (``bash .ci/openrlhf.sh``); skipped where openrlhf is not
installed. OpenRLHF imports flash_attn, vllm and deepspeed at module level; where those are not
installed (a CPU machine) tiny stand-in packages are written to a temporary folder and put on the
path, so that every openrlhf module used here is the real one. What runs for real and what does
not is listed in docs/integrations/openrlhf.md.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import dra_kernels
from dra_kernels.embed import EMBEDDER_OPTIONS, EmbedderConfig
from dra_kernels.integrations import openrlhf as dra_openrlhf
from dra_kernels.integrations import openrlhf_launch
from dra_kernels.integrations._placement import Placement, PlacementOptions, RayEmbedder
from dra_kernels.step import METRICS

if importlib.util.find_spec("openrlhf") is None:
    pytest.skip(
        "openrlhf is not installed here; run `bash .ci/openrlhf.sh` (own venv)",
        allow_module_level=True,
    )

# Stand-ins for the GPU-only packages that openrlhf modules import at top level, and for
# `datasets`, which the trainer module imports and this environment does not install. None of
# their functions is called by the code under test; they only let the real modules import.
STAND_INS = {
    "datasets/__init__.py": """
        def _absent(*args, **kwargs):
            raise RuntimeError("datasets stand-in: not installed in this environment")

        Dataset = interleave_datasets = load_dataset = load_from_disk = _absent
    """,
    "flash_attn/__init__.py": "",
    "flash_attn/bert_padding.py": """
        def _absent(*args, **kwargs):
            raise RuntimeError("flash_attn stand-in: not available on this machine")

        index_first_axis = pad_input = rearrange = unpad_input = _absent
    """,
    "flash_attn/utils/__init__.py": "",
    "flash_attn/utils/distributed.py": """
        def all_gather(*args, **kwargs):
            raise RuntimeError("flash_attn stand-in: not available on this machine")
    """,
    "vllm/__init__.py": """
        __version__ = "0.0.0+stand-in"


        class SamplingParams:
            def __init__(self, **kwargs):
                self.__dict__.update(kwargs)
    """,
    "vllm/inputs.py": """
        class TokensPrompt(dict):
            pass
    """,
    "vllm/utils.py": """
        import uuid


        def random_uuid():
            return uuid.uuid4().hex
    """,
    "deepspeed/__init__.py": "",
    "deepspeed/runtime/__init__.py": "",
    "deepspeed/runtime/zero/__init__.py": "",
    "deepspeed/runtime/zero/partition_parameters.py": """
        class ZeroParamStatus:
            pass
    """,
}

# The cheap deterministic embedder, importable by name (also inside a Ray worker).
EMBEDDER_MODULE = """
    import torch

    CALLS = []


    def embed(texts):
        # Letter counts a-z: identical texts embed identically, disjoint letters orthogonally.
        CALLS.append(list(texts))
        out = torch.zeros(len(texts), 26, dtype=torch.float64)
        for row, text in enumerate(texts):
            for char in text:
                if "a" <= char <= "z":
                    out[row, ord(char) - ord("a")] += 1.0
        return out


    def factory():
        return embed


    BUILT = []


    def counting_factory():
        BUILT.append(1)
        return embed


    class StatsEmbedder:
        # embed's vectors, and what an Embedder reports: it "reads" at most 2 words per text.
        def __init__(self):
            self.last_stats = None

        def encode(self, texts):
            from dra_kernels.embed import EmbedStats

            words = [len(t.split()) for t in texts]
            self.last_stats = EmbedStats(
                texts=len(texts),
                cut_texts=sum(w > 2 for w in words),
                tokens=sum(words),
                tokens_read=sum(min(w, 2) for w in words),
                windows=len(texts),
            )
            return embed(texts)
"""

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "dog",
    "ran",
    "far",
    "away",
    "fox",
    "jumps",
    "over",
    "lazy",
    "bird",
    "sings",
    "loud",
]
WORDS += ["yes", "no", "maybe"]
SPECIALS = ["<pad>", "</s>", "<unk>", "<user>"]


@pytest.fixture(scope="module")
def stand_in_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("openrlhf_stand_ins")
    for rel, source in STAND_INS.items():
        if importlib.util.find_spec(rel.split("/")[0]) is not None:
            continue  # the real package is installed: use it
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    (root / "dra_test_embedder.py").write_text(textwrap.dedent(EMBEDDER_MODULE))
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


@pytest.fixture(scope="module")
def orl(stand_in_dir):
    """The real openrlhf modules (imported once the stand-ins are on the path)."""
    import dra_test_embedder
    import openrlhf.trainer.ppo_utils.experience_maker as experience_maker
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
    from openrlhf.utils.utils import get_tokenizer

    return SimpleNamespace(
        experience_maker=experience_maker,
        FixedKLController=FixedKLController,
        SamplesGenerator=SamplesGenerator,
        get_tokenizer=get_tokenizer,
        embedder=dra_test_embedder,
    )


@pytest.fixture(scope="module")
def tokenizer(orl, tmp_path_factory):
    """A real Hugging Face fast tokenizer, built locally and loaded by OpenRLHF's get_tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<user>"],
    )
    path = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(path)
    return orl.get_tokenizer(
        str(path),
        SimpleNamespace(is_vlm=False, config=SimpleNamespace()),
        "left",
        None,
        use_fast=True,
    )


@pytest.fixture(autouse=True)
def _clean_patch(orl, monkeypatch):
    for name in openrlhf_launch._ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    dra_openrlhf.uninstall()
    orl.embedder.CALLS.clear()
    yield
    dra_openrlhf.uninstall()


# Per prompt: (prompt, [(response words, reward)] * n). Duplicates inside a group, varied lengths.
GROUPS = [
    (
        "<user> the cat",
        [("sat on mat", 1.0), ("sat on mat", 1.0), ("ran far away", 0.0), ("no", 1.0)],
    ),
    (
        "<user> the dog",
        [
            ("jumps over", 0.5),
            ("lazy bird sings loud", -1.0),
            ("jumps over", 0.5),
            ("yes yes yes", 2.0),
        ],
    ),
    ("<user> a fox", [("maybe", 0.0), ("fox jumps", 1.0), ("bird sings", 1.0), ("maybe", 0.25)]),
]


def _rollout(orl, tokenizer, groups, *, extra_ids=None, max_len=64, truncated=()):
    """Per-sample Experiences made by the real SamplesGenerator from vLLM-shaped responses."""
    generator = orl.SamplesGenerator(SimpleNamespace(args=None), None, None, tokenizer, [])
    samples, texts, rewards = [], [], []
    for prompt, responses in groups:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for j, (words, reward) in enumerate(responses):
            response_ids = tokenizer(words, add_special_tokens=False)["input_ids"]
            if extra_ids and (prompt, j) in extra_ids:
                response_ids = response_ids + extra_ids[(prompt, j)]
            response_ids = [*response_ids, tokenizer.eos_token_id]
            observation = prompt_ids + response_ids
            response = {
                "observation_tokens": observation,
                "action_ranges": [(len(prompt_ids), len(observation))],
                "reward": reward,
                "scores": reward,
                "rollout_log_probs": None,
                "prompt": prompt,
                "label": "",
                "truncated": (prompt, j) in truncated,
            }
            samples.append(generator._process_response_into_experience(response, max_len=max_len))
            texts.append(words)
            rewards.append(reward)
    return samples, texts, torch.tensor(rewards)


def _maker(
    orl,
    tokenizer,
    *,
    estimator="group_norm",
    n=4,
    dynamic_batch=True,
    overlong=None,
    stop_properly=None,
):
    args = SimpleNamespace(
        algo=SimpleNamespace(
            advantage=SimpleNamespace(estimator=estimator, gamma=1.0, lambd=1.0, no_std_norm=False),
            kl=SimpleNamespace(use_loss=False),
        ),
        rollout=SimpleNamespace(
            n_samples_per_prompt=n, micro_batch_size=3, max_tokens_per_gpu=4096, max_new_tokens=8
        ),
        train=SimpleNamespace(dynamic_batch_enable=dynamic_batch),
        actor=SimpleNamespace(num_nodes=1, num_gpus_per_node=2),
        ds=SimpleNamespace(ring_attn_size=1, tensor_parallel_size=1),
        reward=SimpleNamespace(
            clip_range=None,
            overlong_buffer_len=overlong,
            overlong_penalty_factor=1.0,
            stop_properly_penalty_coef=stop_properly,
        ),
        data=SimpleNamespace(max_len=64),
    )
    return orl.experience_maker.RemoteExperienceMaker(
        None, None, None, None, orl.FixedKLController(0.0), SimpleNamespace(args=args), tokenizer
    )


def _run(maker, samples):
    """split_rollout_samples (real), the fields make_experience adds (stand-in: no models), then
    compute_advantages_and_returns (real, patched or not)."""
    experiences = maker.split_rollout_samples(samples)
    for e in experiences:
        e.kl = torch.zeros(e.action_mask.shape)
        e.action_log_probs = torch.zeros(e.action_mask.shape)
    return maker.compute_advantages_and_returns(experiences)


def _in_rollout_order(experiences, values):
    positions = torch.tensor([i for e in experiences for i in e.index])
    out = torch.empty(len(positions), dtype=values[0].dtype)
    out[positions] = torch.cat(values)
    return out


def _advantages(experiences):
    """The per-sample advantage (constant over the response tokens for group estimators)."""
    per_sample = []
    for e in experiences:
        mask = e.action_mask.bool()
        rows = []
        for b in range(e.advantages.size(0)):
            values = e.advantages[b][mask[b]]
            torch.testing.assert_close(values, values[:1].expand_as(values))
            rows.append(values[0])
        per_sample.append(torch.stack(rows))
    return _in_rollout_order(experiences, per_sample)


def _info_values(experiences, key):
    return torch.cat([e.info[key] for e in experiences])


def _expected_group_advantages(rewards, n, estimator):
    g = rewards.reshape(-1, n)
    if estimator == "group_norm":
        return ((g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True) + 1e-9)).reshape(-1)
    if estimator == "rloo":
        return (g - (g.sum(-1, keepdim=True) - g) / (n - 1)).reshape(-1)
    return (g - g.mean(-1, keepdim=True)).reshape(-1)  # dr_grpo


@pytest.mark.parametrize("estimator", ["group_norm", "dr_grpo", "rloo"])
@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_dra_rewards_reach_the_estimator(orl, tokenizer, estimator, dynamic_batch):
    samples, texts, raw = _rollout(orl, tokenizer, GROUPS)
    n = 4
    dra_openrlhf.install(orl.embedder.embed)
    experiences = _run(
        _maker(orl, tokenizer, estimator=estimator, dynamic_batch=dynamic_batch), samples
    )

    # The embedder saw exactly the response texts (response part only, no prompt, no eos).
    positions = [i for e in experiences for i in e.index]
    assert [[texts[p] for p in positions]] == orl.embedder.CALLS
    if dynamic_batch:
        assert positions != sorted(positions), "seqlen balancing should reorder the rollout"

    expected = dra_kernels.adjust_rewards(
        raw, orl.embedder.embed(texts), [i // n for i in range(len(texts))]
    ).float()
    reached = _in_rollout_order(experiences, [e.rewards for e in experiences])
    torch.testing.assert_close(reached, expected)
    assert not torch.allclose(expected, raw.float()), "the fixture should make DRA change rewards"
    # OpenRLHF's own reward metric stays the raw reward; the step's metrics are logged per sample.
    torch.testing.assert_close(
        _in_rollout_order(experiences, [e.info["reward"] for e in experiences]), raw.float()
    )
    smi = dra_kernels.smi_scores(orl.embedder.embed(texts), [i // n for i in range(len(texts))])
    logged = {name: _info_values(experiences, name) for name in METRICS[:-2]}
    for name, values in logged.items():
        assert values.shape == (len(texts),) and values.eq(values[0]).all(), name
    step = {name: float(values[0]) for name, values in logged.items()}
    assert step["dra/rows"] == 12.0 and step["dra/groups"] == 3.0
    assert step["dra/smi/mean"] == pytest.approx(float(smi.mean()), rel=1e-6)
    assert step["dra/smi/max"] == pytest.approx(float(smi.max()), rel=1e-6)
    assert step["dra/reward_before/mean"] == pytest.approx(float(raw.mean()), rel=1e-6)
    assert step["dra/reward_after/mean"] == pytest.approx(float(expected.mean()), rel=1e-6)
    torch.testing.assert_close(
        _advantages(experiences), _expected_group_advantages(expected, n, estimator)
    )


@pytest.mark.parametrize(
    "penalty", [{}, {"overlong": 4}, {"stop_properly": 0.5}, {"stop_properly": -0.5}]
)
def test_openrlhf_reward_metrics_stay_raw(orl, tokenizer, penalty):
    """With DRA on, OpenRLHF's own reward metrics are those of the same run without DRA, length
    penalties included: info["reward"] (rollout/reward_mean, read by the trainer's real
    _compute_rollout_stats), info["group_reward_std"], info["score"]. Only the advantages take
    the adjusted rewards, whose mean is logged as dra/reward_after/mean."""
    from openrlhf.trainer.ppo_trainer import BasePPOTrainer

    truncated = {(GROUPS[0][0], 0), (GROUPS[1][0], 3)}

    def run():
        samples, _, _ = _rollout(orl, tokenizer, GROUPS, truncated=truncated)
        return _run(_maker(orl, tokenizer, **penalty), samples)

    without = run()
    dra_openrlhf.install(orl.embedder.embed)
    with_dra = run()
    for key in ("reward", "group_reward_std", "score"):
        torch.testing.assert_close(
            _in_rollout_order(with_dra, [e.info[key] for e in with_dra]),
            _in_rollout_order(without, [e.info[key] for e in without]),
            msg=key,
        )
    stats = BasePPOTrainer._compute_rollout_stats(None, with_dra)
    assert stats == pytest.approx(BasePPOTrainer._compute_rollout_stats(None, without))
    assert not torch.allclose(_advantages(with_dra), _advantages(without))
    after = float(_info_values(with_dra, "dra/reward_after/mean")[0])
    assert after != pytest.approx(float(_info_values(with_dra, "dra/reward_before/mean")[0]))


def test_one_step_is_one_smi_pass(orl, tokenizer, monkeypatch):
    """The patched advantage step embeds once and computes the SMI once (the step's own), counted
    at the public entry and where every SMI of a measure other than graph-cut is computed."""
    from dra_kernels import api, measures

    calls = {"smi_scores": 0, "smi_by_measure": 0}

    def count(module, name):
        original = getattr(module, name)

        def counting(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)

    count(api, "smi_scores")
    count(measures, "smi_by_measure")
    dra_openrlhf.install(orl.embedder.embed, measure="facility_location", eta=0.5)
    samples, _, _ = _rollout(orl, tokenizer, GROUPS)
    _run(_maker(orl, tokenizer), samples)
    assert calls == {"smi_scores": 1, "smi_by_measure": 1}
    assert len(orl.embedder.CALLS) == 1


@pytest.mark.parametrize("how", ["never_installed", "uninstalled", "env_unset", "env_off"])
def test_dra_off_changes_nothing(orl, tokenizer, monkeypatch, how):
    original = orl.experience_maker.RemoteExperienceMaker.compute_advantages_and_returns
    samples, _, raw = _rollout(orl, tokenizer, GROUPS)
    baseline = _run(_maker(orl, tokenizer), samples)

    if how == "uninstalled":
        dra_openrlhf.install(orl.embedder.embed)
        dra_openrlhf.uninstall()
    elif how.startswith("env"):
        if how == "env_unset":
            monkeypatch.delenv(dra_openrlhf.ENV_ENABLE, raising=False)
        else:
            monkeypatch.setenv(dra_openrlhf.ENV_ENABLE, "0")
        dra_openrlhf.setup_hook()
    assert orl.experience_maker.RemoteExperienceMaker.compute_advantages_and_returns is original
    assert not dra_openrlhf.is_installed()

    samples, _, _ = _rollout(orl, tokenizer, GROUPS)
    again = _run(_maker(orl, tokenizer), samples)
    assert orl.embedder.CALLS == []
    torch.testing.assert_close(_in_rollout_order(again, [e.rewards for e in again]), raw.float())
    torch.testing.assert_close(_advantages(again), _advantages(baseline))
    assert not any(name.startswith("dra/") for e in again for name in e.info)


def test_env_hook_installs_with_embedder_factory(orl, tokenizer, monkeypatch):
    monkeypatch.setenv(dra_openrlhf.ENV_ENABLE, "1")
    monkeypatch.setenv(dra_openrlhf.ENV_EMBEDDER, "dra_test_embedder:factory")
    monkeypatch.setenv(dra_openrlhf.ENV_MIN_DENOMINATOR, "0.5")
    monkeypatch.setenv(dra_openrlhf.ENV_BACKEND, "torch")
    dra_openrlhf.setup_hook()
    assert dra_openrlhf.is_installed()
    samples, texts, raw = _rollout(orl, tokenizer, GROUPS)
    experiences = _run(_maker(orl, tokenizer), samples)
    expected = dra_kernels.adjust_rewards(
        raw, orl.embedder.embed(texts), [i // 4 for i in range(12)], min_denominator=0.5
    ).float()
    torch.testing.assert_close(
        _in_rollout_order(experiences, [e.rewards for e in experiences]), expected
    )


@pytest.mark.parametrize(
    "env", [{"MEASURE": "facility_location", "ETA": "0.5"}, {"MEASURE": "log_det", "LAM": "0.2"}]
)
def test_the_measure_variables_reach_the_adjustment(orl, tokenizer, monkeypatch, env):
    """DRA_KERNELS_OPENRLHF_MEASURE / _ETA / _LAM: the core's result for that measure, which
    differs from graph-cut's on these rollouts."""
    monkeypatch.setenv(dra_openrlhf.ENV_ENABLE, "1")
    monkeypatch.setenv(dra_openrlhf.ENV_EMBEDDER, "dra_test_embedder:factory")
    for suffix, value in env.items():
        monkeypatch.setenv(f"DRA_KERNELS_OPENRLHF_{suffix}", value)
    dra_openrlhf.setup_hook()
    options = {
        key.lower(): value if key == "MEASURE" else float(value) for key, value in env.items()
    }
    step = dra_openrlhf._state["config"].step
    assert {key: getattr(step, key) for key in options} == options
    samples, texts, raw = _rollout(orl, tokenizer, GROUPS)
    experiences = _run(_maker(orl, tokenizer), samples)
    embeddings, ids = orl.embedder.embed(texts), [i // 4 for i in range(12)]
    expected = dra_kernels.adjust_rewards(raw, embeddings, ids, **options).float()
    reached = _in_rollout_order(experiences, [e.rewards for e in experiences])
    torch.testing.assert_close(reached, expected)
    assert not torch.allclose(expected, dra_kernels.adjust_rewards(raw, embeddings, ids).float())
    smi = dra_kernels.smi_scores(embeddings, ids, **options)
    torch.testing.assert_close(
        _info_values(experiences, "dra/smi/max"), torch.full((12,), float(smi.max()))
    )


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--dra.measure", "cosine"], r"--dra\.measure \(DRA_KERNELS_OPENRLHF_MEASURE\) must be"),
        (["--dra.eta", "0.5"], r"--dra\.eta \(DRA_KERNELS_OPENRLHF_ETA\) is not used by"),
        (["--dra.measure=log_det", "--dra.eta=2"], r"--dra\.eta .* must be > 0 and <= 1"),
        (["--dra.measure=log_det", "--dra.lam=0"], r"--dra\.lam .* must be a finite number"),
        (["--dra.measure=log_det", "--dra.lam=small"], r"--dra\.lam .* must be a number"),
        (["--dra.measure=facility_location", "--dra.lam=2"], r"--dra\.lam .* used only by"),
        (["--dra.measure=log_det", "--dra.backend=triton"], r"--dra\.measure .* no Triton"),
    ],
)
def test_the_launcher_checks_the_measure_flags_before_ray_starts(monkeypatch, flags, match):
    import runpy

    import ray

    def must_not_run(*args, **kwargs):
        raise AssertionError("ray or train_ppo_ray started despite a bad --dra flag")

    monkeypatch.setattr(ray, "init", must_not_run)
    monkeypatch.setattr(runpy, "run_module", must_not_run)
    with pytest.raises(SystemExit, match=match):
        openrlhf_launch.main(["--dra.enable", *flags])
    assert "sentence_transformers" not in sys.modules


def test_install_checks_the_measure_options():
    with pytest.raises(ValueError, match=r"^measure must be one of"):
        dra_openrlhf.install(measure="cosine")
    with pytest.raises(ValueError, match=r"^lam must be a finite number"):
        dra_openrlhf.install(measure="log_det", lam=0.0)
    assert not dra_openrlhf.is_installed()


def test_min_denominator_above_one_is_refused_at_start_up(monkeypatch):
    """The core refuses min_denominator > 1; OpenRLHF refuses it when it reads its options, in
    the driver before Ray starts (launcher flag) or in the worker's setup hook (variable), not at
    the first training step."""
    import runpy

    import ray

    def must_not_run(*args, **kwargs):
        raise AssertionError("ray or train_ppo_ray started despite --dra.min_denominator 2")

    message = (
        r"^(\[dra-kernels\] )?--dra\.min_denominator \(DRA_KERNELS_OPENRLHF_MIN_DENOMINATOR\) "
        r"must be a finite number > 0 and <= 1, got 2"
    )
    monkeypatch.setattr(ray, "init", must_not_run)
    monkeypatch.setattr(runpy, "run_module", must_not_run)
    with pytest.raises(SystemExit, match=message):
        openrlhf_launch.main(["--dra.enable", "--dra.min_denominator", "2"])
    monkeypatch.setenv(dra_openrlhf.ENV_ENABLE, "1")
    monkeypatch.setenv(dra_openrlhf.ENV_MIN_DENOMINATOR, "2")
    with pytest.raises(ValueError, match=message):
        dra_openrlhf.setup_hook()
    with pytest.raises(ValueError, match=r"^min_denominator must be a finite number > 0 and <= 1"):
        dra_openrlhf.install(min_denominator=2)
    assert not dra_openrlhf.is_installed()


@pytest.mark.parametrize("value", ["2", "enable", "onn"])
def test_env_flag_typos_are_refused(monkeypatch, value):
    monkeypatch.setenv(dra_openrlhf.ENV_ENABLE, value)
    with pytest.raises(ValueError, match=dra_openrlhf.ENV_ENABLE):
        dra_openrlhf.setup_hook()


def test_overlong_penalty_applies_after_dra(orl, tokenizer):
    samples, texts, raw = _rollout(orl, tokenizer, GROUPS)
    dra_openrlhf.install(orl.embedder.embed)
    # max_new_tokens 8, buffer 4: responses longer than 4 tokens (eos included) are penalised.
    experiences = _run(_maker(orl, tokenizer, overlong=4), samples)
    lengths = torch.tensor([len(t.split()) + 1 for t in texts], dtype=torch.float32)
    penalty = -(lengths - 4).clamp(min=0, max=4) / 4
    assert penalty.ne(0).any()
    expected = dra_kernels.adjust_rewards(
        raw, orl.embedder.embed(texts), [i // 4 for i in range(12)]
    ).float()
    torch.testing.assert_close(
        _in_rollout_order(experiences, [e.rewards for e in experiences]), expected + penalty
    )


def test_single_sample_per_prompt_is_identity(orl, tokenizer, caplog):
    groups = [(prompt, responses[:1]) for prompt, responses in GROUPS]
    samples, _, raw = _rollout(orl, tokenizer, groups)
    dra_openrlhf.install(orl.embedder.embed)
    with caplog.at_level(logging.WARNING, logger=dra_openrlhf.__name__):
        experiences = _run(_maker(orl, tokenizer, estimator="reinforce_baseline", n=1), samples)
    assert orl.embedder.CALLS == []
    torch.testing.assert_close(
        _in_rollout_order(experiences, [e.rewards for e in experiences]), raw.float()
    )


def test_split_group_is_refused(orl, tokenizer):
    samples, _, _ = _rollout(orl, tokenizer, GROUPS)
    dra_openrlhf.install(orl.embedder.embed)
    with pytest.raises(ValueError, match="whole groups"):
        _run(_maker(orl, tokenizer), samples[:-1])  # 11 samples, n = 4
    # Whole count, but the blocks of 4 mix prompts: a group was split and another's filled in.
    shuffled = samples[1:5] + samples[0:1] + samples[5:]
    with pytest.raises(ValueError, match="different prompts"):
        _run(_maker(orl, tokenizer), shuffled)


def test_token_ids_outside_the_tokenizer_are_dropped(orl, tokenizer, caplog):
    prompt = GROUPS[0][0]
    samples, texts, _ = _rollout(
        orl, tokenizer, GROUPS, extra_ids={(prompt, 1): [len(tokenizer) + 7]}
    )
    dra_openrlhf.install(orl.embedder.embed)
    with caplog.at_level(logging.WARNING, logger=dra_openrlhf.__name__):
        experiences = _run(_maker(orl, tokenizer), samples)
    assert "outside the tokenizer's vocabulary" in caplog.text
    positions = [i for e in experiences for i in e.index]
    assert [[texts[p] for p in positions]] == orl.embedder.CALLS


def test_launcher_parses_flags_and_wraps_ray_init(monkeypatch):
    env, rest = openrlhf_launch.parse_dra_args(
        [
            "--dra.enable",
            "--rollout.n_samples_per_prompt",
            "8",
            "--dra.embedder",
            "m:f",
            "--dra.min_denominator=0.2",
            "--dra.measure",
            "log_det",
            "--dra.eta=0.5",
            "--dra.lam",
            "0.25",
        ]
    )
    assert env == {
        dra_openrlhf.ENV_ENABLE: "1",
        dra_openrlhf.ENV_EMBEDDER: "m:f",
        dra_openrlhf.ENV_MIN_DENOMINATOR: "0.2",
        dra_openrlhf.ENV_MEASURE: "log_det",
        dra_openrlhf.ENV_ETA: "0.5",
        dra_openrlhf.ENV_LAM: "0.25",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(dra_openrlhf.ENV_EMBEDDER, "dra_test_embedder:factory")
    config = dra_openrlhf.config_from_env()
    assert (config.step.measure, config.step.eta, config.step.lam) == ("log_det", 0.5, 0.25)
    assert config.step.min_denominator == 0.2
    for name in env:
        monkeypatch.delenv(name)
    assert rest == ["--rollout.n_samples_per_prompt", "8"]
    with pytest.raises(SystemExit):
        openrlhf_launch.parse_dra_args(["--dra.enabled"])

    seen = {}
    fake_ray = SimpleNamespace(init=lambda **kwargs: seen.update(kwargs))
    monkeypatch.setenv(dra_openrlhf.ENV_ENABLE, "1")
    openrlhf_launch.patch_ray_init(fake_ray)
    fake_ray.init(runtime_env={"env_vars": {"NCCL_DEBUG": "WARN"}})
    assert seen["runtime_env"] == {
        "env_vars": {"NCCL_DEBUG": "WARN", dra_openrlhf.ENV_ENABLE: "1"},
        "worker_process_setup_hook": openrlhf_launch.HOOK,
    }
    with pytest.raises(ValueError, match="worker_process_setup_hook"):
        fake_ray.init(runtime_env={"worker_process_setup_hook": "other.hook"})


def test_hook_patches_inside_a_ray_worker(orl, stand_in_dir, monkeypatch):
    """Real Ray: the launcher's ray.init wrapper installs the hook; a worker that imports the
    experience maker gets the patched method, configured from the propagated variables."""
    import ray

    monkeypatch.setenv(dra_openrlhf.ENV_ENABLE, "1")
    monkeypatch.setenv(dra_openrlhf.ENV_EMBEDDER, "dra_test_embedder:factory")
    monkeypatch.setattr(ray, "init", ray.init)  # restored after the test
    openrlhf_launch.patch_ray_init(ray)
    pythonpath = os.pathsep.join([str(stand_in_dir), str(Path(dra_kernels.__file__).parents[1])])
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )
    try:

        @ray.remote
        def probe():
            import openrlhf.trainer.ppo_utils.experience_maker as maker_module

            from dra_kernels.integrations import openrlhf as dra

            method = maker_module.RemoteExperienceMaker.compute_advantages_and_returns
            return (
                hasattr(method, "__dra_original__"),
                dra.is_installed(),
                os.environ.get(dra.ENV_EMBEDDER),
            )

        assert ray.get(probe.remote(), timeout=120) == (True, True, "dra_test_embedder:factory")
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------- options, at start-up

ALL_FLAGS = [
    *("--dra.model", "jinaai/jina-embeddings-v2-small-en", "--dra.trust_remote_code"),
    *("--dra.long_text=head_tail", "--dra.window_tokens", "512", "--dra.window_overlap", "0"),
    *("--dra.max_tokens", "1024", "--dra.batch_size", "8", "--dra.device", "cpu"),
    *("--dra.dtype", "bfloat16", "--dra.placement", "local", "--dra.num_gpus", "0.25"),
    *("--dra.placement_timeout", "30"),
]


def test_every_embedder_option_is_a_launcher_flag(monkeypatch):
    env, rest = openrlhf_launch.parse_dra_args(["--dra.enable", *ALL_FLAGS, "--seed", "3"])
    assert rest == ["--seed", "3"]
    options = json.loads(env.pop(dra_openrlhf.ENV_OPTIONS))
    assert set(options) == set(EMBEDDER_OPTIONS) | {"placement", "num_gpus", "placement_timeout"}
    assert options["trust_remote_code"] is True and options["max_tokens"] == 1024
    for name, value in {**env, dra_openrlhf.ENV_OPTIONS: json.dumps(options)}.items():
        monkeypatch.setenv(name, value)
    config = dra_openrlhf.config_from_env()
    assert config.step.embedder == EmbedderConfig(
        model="jinaai/jina-embeddings-v2-small-en",
        trust_remote_code=True,
        long_text="head_tail",
        window_tokens=512,
        max_tokens=1024,
        batch_size=8,
        dtype="bfloat16",
    )
    assert config.device == "cpu"
    assert config.placement == PlacementOptions("local", 0.25, 30.0)
    # a boolean flag also takes a value; null resets an optional option
    env, _ = openrlhf_launch.parse_dra_args(
        ["--dra.trust_remote_code", "false", "--dra.window_tokens=null"]
    )
    assert json.loads(env[dra_openrlhf.ENV_OPTIONS]) == {
        "trust_remote_code": False,
        "window_tokens": None,
    }


def test_the_launcher_refuses_a_typo_before_ray_starts(monkeypatch, capsys):
    import runpy

    import ray

    def must_not_run(*args, **kwargs):
        raise AssertionError("ray or train_ppo_ray started despite a bad --dra flag")

    monkeypatch.setattr(ray, "init", must_not_run)
    monkeypatch.setattr(runpy, "run_module", must_not_run)
    started = time.monotonic()
    with pytest.raises(SystemExit, match=re.escape("unknown option --dra.modle")) as caught:
        openrlhf_launch.main(["--dra.enable", "--dra.modle", "x"])
    for flag in openrlhf_launch.FLAGS:
        assert flag in str(caught.value)
    assert "--dra.trust_remote_code" in openrlhf_launch.FLAGS
    assert "--dra.model" in openrlhf_launch.FLAGS
    with pytest.raises(SystemExit, match=re.escape("--dra.long_text must be one of")):
        openrlhf_launch.main(["--dra.enable", "--dra.long_text", "tail"])
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("long_text", "tail"),
        ("window_tokens", "0"),
        ("max_tokens", "many"),
        ("batch_size", "-2"),
        ("trust_remote_code", "maybe"),
        ("dtype", "fp8"),
        ("device", "gpu"),
        ("placement", "cluster"),
        ("num_gpus", "2"),
        ("placement_timeout", "soon"),
    ],
)
def test_a_bad_value_names_its_flag(monkeypatch, flag, value):
    env, _ = openrlhf_launch.parse_dra_args(["--dra.enable", f"--dra.{flag}={value}"])
    for name, text in env.items():
        monkeypatch.setenv(name, text)
    with pytest.raises((ValueError, TypeError), match=re.escape(f"--dra.{flag}")):
        dra_openrlhf.config_from_env()


def test_options_set_without_the_launcher_are_checked_too(monkeypatch):
    monkeypatch.setenv(dra_openrlhf.ENV_ENABLE, "1")
    monkeypatch.setenv(dra_openrlhf.ENV_OPTIONS, '{"modle": "x"}')
    with pytest.raises(
        ValueError, match=r"\['--dra.modle'\].*--dra.model, --dra.trust_remote_code"
    ):
        dra_openrlhf.config_from_env()
    monkeypatch.setenv(dra_openrlhf.ENV_OPTIONS, "model=x")
    with pytest.raises(ValueError, match="must be a JSON object"):
        dra_openrlhf.config_from_env()
    monkeypatch.setenv(dra_openrlhf.ENV_OPTIONS, '{"max_tokens": 64}')
    monkeypatch.setenv(dra_openrlhf.ENV_EMBEDDER, "dra_test_embedder:factory")
    with pytest.raises(ValueError, match="configure the built-in embedder"):
        dra_openrlhf.config_from_env()


def test_the_embedder_is_built_with_the_experience_maker(orl, tokenizer, monkeypatch):
    """Before any rollout: the patched maker builds its embedder when it is constructed (in the
    trainer actor, after OpenRLHF's driver reserved the GPUs)."""
    monkeypatch.setenv(dra_openrlhf.ENV_ENABLE, "1")
    monkeypatch.setenv(dra_openrlhf.ENV_EMBEDDER, "dra_test_embedder:counting_factory")
    orl.embedder.BUILT.clear()
    dra_openrlhf.setup_hook()
    maker = _maker(orl, tokenizer)
    assert orl.embedder.BUILT == [1]
    samples, _, _ = _rollout(orl, tokenizer, GROUPS)
    _run(maker, samples)
    assert orl.embedder.BUILT == [1]  # built once
    dra_openrlhf.uninstall()
    original = orl.experience_maker.RemoteExperienceMaker.__init__
    assert not hasattr(original, "__dra_original__")


# ----------------------------------------------------------------------------- metrics


def test_coverage_metrics_are_logged_per_step(orl, tokenizer):
    samples, texts, _ = _rollout(orl, tokenizer, GROUPS)
    dra_openrlhf.install(orl.embedder.StatsEmbedder().encode)
    experiences = _run(_maker(orl, tokenizer), samples)
    words = [len(t.split()) for t in texts]
    share = sum(min(w, 2) for w in words) / sum(words)
    cut = sum(w > 2 for w in words)
    assert cut > 0
    torch.testing.assert_close(
        _info_values(experiences, "dra/tokens_read_share"), torch.full((len(texts),), share)
    )
    torch.testing.assert_close(
        _info_values(experiences, "dra/texts_cut"), torch.full((len(texts),), float(cut))
    )
    # an embedder without statistics logs none (its coverage is unknown)
    dra_openrlhf.install(orl.embedder.embed)
    samples, _, _ = _rollout(orl, tokenizer, GROUPS)
    plain = _run(_maker(orl, tokenizer), samples)
    assert all("dra/tokens_read_share" not in e.info for e in plain)


def test_the_embedder_runs_in_a_ray_actor_on_a_gpu_share(orl, tokenizer, stand_in_dir):
    """Real Ray with one logical GPU: --dra.placement ray --dra.num_gpus 0.2 puts the embedder in
    an actor holding 0.2 of it; the advantage step gets the actor's embeddings and statistics."""
    import ray

    pythonpath = os.pathsep.join([str(stand_in_dir), str(Path(dra_kernels.__file__).parents[1])])
    ray.init(
        num_cpus=1,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )
    try:
        config = dra_openrlhf.DRAConfig(
            embedder_factory=orl.embedder.StatsEmbedder,
            placement=PlacementOptions(placement="ray", num_gpus=0.2),
        )
        dra_openrlhf.install(config=config)
        maker = _maker(orl, tokenizer)  # builds the embedder: starts the actor
        server = config.placed_step().embed_fn().__self__
        assert isinstance(server, RayEmbedder)
        assert server.placement == Placement("ray", None, 0.2, False)
        assert server.info["gpu_ids"] == [0]
        assert ray.available_resources().get("GPU", 0.0) == pytest.approx(0.8)
        samples, texts, raw = _rollout(orl, tokenizer, GROUPS)
        experiences = _run(maker, samples)
        assert orl.embedder.CALLS == []  # embedded in the actor's process, not here
        expected = dra_kernels.adjust_rewards(
            raw, orl.embedder.embed(texts), [i // 4 for i in range(len(texts))]
        ).float()
        torch.testing.assert_close(
            _in_rollout_order(experiences, [e.rewards for e in experiences]), expected
        )
        words = [len(t.split()) for t in texts]
        torch.testing.assert_close(
            _info_values(experiences, "dra/texts_cut"),
            torch.full((len(texts),), float(sum(w > 2 for w in words))),
        )
        server.close()
    finally:
        ray.shutdown()
