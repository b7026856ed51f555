"""The one DRA step (dra_kernels.step.DRAStep): options checked once with the front end's
spelling, one SMI pass, the core's values, the same metrics in one process and across ranks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import dra_kernels
from dra_kernels import api
from dra_kernels.embed import EmbedderConfig, EmbedStats
from dra_kernels.step import METRICS, DRAStep, embed_metrics
from tests.test_distributed import run_in_gloo_group


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    ids = ["a", "b", "a", "c", "b", "a", "c", "b", "d"]
    rewards = torch.rand(len(ids), generator=g)
    rewards[[3, 6]] = 1.0  # group c: flat
    embeddings = torch.randn(len(ids), 5, generator=g)
    return rewards, embeddings, ids


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("spell", "typed"),
    [
        ("dra_{}", "dra_min_denominator"),
        ("dra.{}", "dra.min_denominator"),
        ("--dra.{}", "--dra.min_denominator"),
        (lambda name: "--" + name.replace("_", "-"), "--min-denominator"),
    ],
)
def test_options_are_refused_by_the_core_rule_named_as_the_front_end_spells_them(spell, typed):
    with pytest.raises(ValueError, match=rf"^{typed} must be a finite number > 0 and <= 1, got 2"):
        DRAStep.from_options({"min_denominator": 2}, spell=spell)
    with pytest.raises(ValueError) as core:
        api.adjust_rewards([1.0], [[1.0]], [0], min_denominator=2)
    with pytest.raises(ValueError) as step:
        DRAStep.from_options({"min_denominator": 2}, spell="{}")
    assert str(step.value) == str(core.value)  # the core's own message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"measure": "cosine"}, r"^dra\.measure must be one of"),
        ({"eta": 2.0}, r"^dra\.eta is not used by dra\.measure='graph_cut'"),
        ({"measure": "log_det", "backend": "triton"}, r"dra\.measure='log_det' has no Triton"),
        ({"backend": "gpu"}, r"^dra\.backend must be 'auto', 'torch' or 'triton'"),
        ({"scale": "mad"}, r"^dra\.scale must be 'std'"),
        ({"scale": "std", "eps": 0.0}, r"^dra\.eps must be a finite number > 0"),
        ({"window_overlap": 300, "window_tokens": 256}, r"^dra\.window_overlap=300 must be"),
        ({"long_txt": "head"}, r"unknown DRA option\(s\) \['dra\.long_txt'\]; valid: dra\.measure"),
    ],
)
def test_every_option_is_checked_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        DRAStep.from_options(options, spell="dra.{}")


def test_the_backend_is_checked_against_a_known_device():
    DRAStep.from_options({"backend": "triton"})  # the device is not known yet
    with pytest.raises(RuntimeError, match=r"^--backend='triton' cannot run here"):
        DRAStep.from_options({"backend": "triton"}, spell="--{}", device="meta")


def test_embedder_options_configure_the_built_in_embedder_only():
    step = DRAStep.from_options({"long_text": "head", "max_tokens": 64, "eta": None})
    assert step.embedder == EmbedderConfig(long_text="head", max_tokens=64)
    with pytest.raises(ValueError, match=r"dra_long_text configure the built-in embedder"):
        DRAStep.from_options({"long_text": "head"}, spell="dra_{}", embedder=lambda t: [[1.0]])
    with pytest.raises(TypeError, match="embedder must be a function"):
        DRAStep(embedder=3)


# ----------------------------------------------------------------------------- one step


def test_a_step_gives_the_core_values_with_one_smi_pass(monkeypatch):
    rewards, embeddings, ids = _problem()
    calls = []
    smi_scores = api.smi_scores

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return smi_scores(*args, **kwargs)

    step = DRAStep(measure="facility_location", eta=0.7, scale="std")
    monkeypatch.setattr(api, "smi_scores", counting)
    result = step(rewards, ids, embeddings=embeddings)
    monkeypatch.undo()
    assert len(calls) == 1
    options = {"measure": "facility_location", "eta": 0.7}
    torch.testing.assert_close(result.smi, dra_kernels.smi_scores(embeddings, ids, **options))
    want = dra_kernels.adjust_rewards(rewards, embeddings, ids, **options)
    torch.testing.assert_close(result.adjusted, want)
    torch.testing.assert_close(
        result.advantages, dra_kernels.dra_advantages(rewards, embeddings, ids, **options)
    )
    torch.testing.assert_close(
        result.adjust(torch.stack([rewards, 2 * rewards], 1))[:, 1], 2 * want
    )


def test_metrics_are_the_batch_statistics():
    rewards, embeddings, ids = _problem()
    rewards[0] = math.nan  # an unscorable row: left out of the reward means
    result = DRAStep(min_denominator=0.5)(
        rewards, ids, embeddings=embeddings, expected_group_size=3
    )
    smi = dra_kernels.smi_scores(embeddings, ids).double()
    factor = 1 / torch.clamp(1 + smi, min=0.5)
    scored = ~rewards.isnan()
    m = result.metrics
    assert set(m) == set(METRICS) - {"dra/tokens_read_share", "dra/texts_cut"}
    assert (m["dra/rows"], m["dra/groups"], m["dra/incomplete_groups"]) == (9.0, 4.0, 2.0)
    # groups a (NaN, x, y), b (3 distinct), c (1, 1), d (one row): c and d are flat
    assert m["dra/flat_groups_share"] == 0.5
    assert m["dra/smi/mean"] == pytest.approx(float(smi.mean()), rel=1e-6)
    assert m["dra/smi/max"] == pytest.approx(float(smi.max()), rel=1e-6)
    assert m["dra/factor/mean"] == pytest.approx(float(factor.mean()), rel=1e-6)
    assert m["dra/factor/min"] == pytest.approx(float(factor.min()), rel=1e-6)
    raw = rewards.double()[scored]
    assert m["dra/reward_before/mean"] == pytest.approx(float(raw.mean()), rel=1e-12)
    after = result.adjusted.double()[scored]
    assert m["dra/reward_after/mean"] == pytest.approx(float(after.mean()), rel=1e-12)


def test_texts_go_through_the_step_embedder_and_report_its_coverage():
    class Counting:
        last_stats = None

        def encode(self, texts):
            self.last_stats = EmbedStats(
                texts=len(texts), cut_texts=1, tokens=10, tokens_read=8, windows=3
            )
            return np.eye(len(texts), 3)[:, ::-1].copy()

    texts = ["x", "y", "z"]
    step = DRAStep(embedder=Counting())
    result = step(torch.ones(3), [0, 0, 0], texts=texts)
    assert result.metrics["dra/tokens_read_share"] == 0.8
    assert result.metrics["dra/texts_cut"] == 1.0
    assert embed_metrics(step.embed_fn()) == {"dra/tokens_read_share": 0.8, "dra/texts_cut": 1.0}
    with pytest.raises(ValueError, match="either embeddings or texts"):
        step(torch.ones(3), [0, 0, 0])
    with pytest.raises(ValueError, match="no embedder"):
        DRAStep()(torch.ones(3), [0, 0, 0], texts=texts)


def test_float64_rewards_take_the_float64_smi():
    rewards, embeddings, ids = _problem()
    result = DRAStep()(rewards.double(), ids, embeddings=embeddings)
    assert result.smi.dtype == torch.float64
    want = dra_kernels.adjust_rewards(rewards.double(), embeddings, ids)
    torch.testing.assert_close(result.adjusted, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- across ranks


def _rank_rows(rank: int, world: int) -> np.ndarray:
    return np.arange(9)[rank::world]


def _step_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    def work(pg: Any) -> dict[str, Any]:
        rewards, embeddings, ids = _problem()
        rows = _rank_rows(rank, world)
        out = {}
        for measure in ("graph_cut", "log_det"):
            step = DRAStep(measure=measure, min_denominator=0.5)
            result = step(
                rewards[rows],
                [ids[i] for i in rows],
                embeddings=embeddings[rows],
                expected_group_size=3,
                coverage={"dra/tokens_read_share": 0.5 + rank / 4, "dra/texts_cut": rank},
                process_group=pg,
            )
            out[measure] = (result.adjusted, result.smi, result.metrics)
        return out

    run_in_gloo_group(rank, world, init_file, out_dir, work)


def test_a_step_across_ranks_equals_one_process(tmp_path):
    world = 2
    mp.spawn(_step_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    errors = sorted(tmp_path.glob("*.err"))
    assert not errors, errors[0].read_text()
    ranks = [torch.load(tmp_path / f"rank{k}.pt", weights_only=False) for k in range(world)]
    rewards, embeddings, ids = _problem()
    for measure in ("graph_cut", "log_det"):
        whole = DRAStep(measure=measure, min_denominator=0.5)(
            rewards, ids, embeddings=embeddings, expected_group_size=3
        )
        for rank, got in enumerate(ranks):
            adjusted, smi, metrics = got[measure]
            rows = _rank_rows(rank, world)
            torch.testing.assert_close(smi, whole.smi[rows], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(adjusted, whole.adjusted[rows], rtol=1e-6, atol=1e-6)
            for name, value in whole.metrics.items():
                assert metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-6), (measure, name)
            assert metrics["dra/tokens_read_share"] == 0.625  # the mean over the ranks
            assert metrics["dra/texts_cut"] == 1.0  # the sum
