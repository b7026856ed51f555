"""The diversity-quality analysis: pairwise terms, Spearman per prompt, the plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from dra_kernels.analysis import diversity_quality, pairwise_terms, plot_p_values


def test_pairwise_terms_match_a_double_loop() -> None:
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=6)
    emb = rng.normal(size=(6, 5))
    diff, dist = pairwise_terms(rewards, emb)
    expected = [
        (
            abs(rewards[i] - rewards[j]),
            1 - emb[i] @ emb[j] / np.linalg.norm(emb[i]) / np.linalg.norm(emb[j]),
        )
        for i in range(6)
        for j in range(i + 1, 6)
    ]
    np.testing.assert_allclose(diff, [d for d, _ in expected], rtol=1e-12)
    np.testing.assert_allclose(dist, [d for _, d in expected], rtol=1e-12, atol=1e-12)


def test_zero_embedding_is_at_distance_one() -> None:
    _, dist = pairwise_terms([0.0, 1.0], [[0.0, 0.0], [3.0, 4.0]])
    assert dist.tolist() == [1.0]


def _correlated_group(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rewards equal to a position on a half circle: distance grows with reward difference."""
    angles = np.sort(rng.uniform(0, np.pi / 2, size))
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return angles, emb


def test_correlated_and_independent_groups() -> None:
    rng = np.random.default_rng(1)
    r1, e1 = _correlated_group(rng, 8)
    r2 = rng.normal(size=8)
    e2 = rng.normal(size=(8, 2))
    report = diversity_quality(
        torch.tensor(np.concatenate([r1, r2])),
        np.concatenate([e1, e2]),
        ["a"] * 8 + ["b"] * 8,
    )
    first, second = report.groups
    assert first.group == "a" and first.rho == pytest.approx(1.0) and first.p_value < 1e-6
    diff, dist = pairwise_terms(r2, e2)
    rho, p = spearmanr(diff, dist)
    assert (second.rho, second.p_value) == (pytest.approx(rho), pytest.approx(p))
    assert second.pairs == 28 and second.size == 8
    assert report.not_significant == int(p > 0.05)


def test_counts_say_1_prompt_not_1_prompts() -> None:
    """A count of 1 takes the singular; the verb agrees with the count of prompts it says."""
    rng = np.random.default_rng(3)
    r, e = _correlated_group(rng, 8)
    report = diversity_quality(
        np.concatenate([r, [1.0, 1.0]]), np.concatenate([e, e[:2]]), [0] * 8 + [1] * 2
    )
    head, tail = report.summary().splitlines()
    assert head.startswith("0 of 1 prompt (0%) show no significant rank correlation"), head
    assert tail == "1 prompt not tested: 1 with fewer than 3 completions", tail
    # reward differences ranked 2, 3, 1 and distances 1, 3, 2: rho 0.5, p 0.67
    weak = diversity_quality([0.0, 2.0, 3.0], [[1.0, 0.0], [1.0, 0.3], [0.0, 1.0]], [0, 0, 0])
    assert weak.not_significant == 1
    assert weak.summary().startswith("1 of 1 prompt (100%) shows no significant"), weak.summary()
    with pytest.raises(ValueError, match=r"\(3, 2\) and 1 id$"):
        diversity_quality([0.0, 1.0, 2.0], np.ones((3, 2)), [0])


def test_untestable_groups_are_counted_apart() -> None:
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(9, 4))
    rewards = [1, 1, 1, 1, 0, 1, 0, 0.5, 1]
    ids = ["same"] * 4 + ["pair"] * 2 + ["ok"] * 3
    report = diversity_quality(rewards, emb, ids)
    reasons = {g.group: g.reason for g in report.groups}
    assert reasons == {"same": "equal rewards", "pair": "fewer than 3 completions", "ok": None}
    assert len(report.tested) == 1
    assert "2 prompts not tested" in report.summary()
    rows = {row["group"]: row for row in report.rows()}
    assert rows["same"]["p_value"] is None and rows["same"]["not_significant"] is None
    same_emb = np.ones((3, 4))
    identical = diversity_quality([0.0, 1.0, 3.0], same_emb, [0, 0, 0])
    assert identical.groups[0].reason == "identical embeddings"
    assert math.isnan(identical.share_not_significant)


def test_bad_shapes_and_alpha() -> None:
    with pytest.raises(ValueError, match="must agree"):
        diversity_quality([1.0, 2.0], np.ones((3, 2)), [0, 0])
    with pytest.raises(ValueError, match="alpha"):
        diversity_quality([1.0], np.ones((1, 2)), [0], alpha=1.5)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    report = diversity_quality(
        rng.normal(size=40), rng.normal(size=(40, 8)), np.repeat(range(5), 8)
    )
    out = tmp_path / "p.png"
    plot_p_values(report, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]
