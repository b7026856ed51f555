"""pytest-benchmark: the embedder on long completions, CI-sized (issue 12, item 7).

Throughput per long-text mode at ~300, ~1,500 and ~6,000 tokens per text (a few texts each, two
timed rounds) and a small DRA step (embed + ``adjust_rewards``). The full measurement, with
medians, spreads and 512-completion steps, is ``python -m benchmarks.embed_bench --out DIR``;
the per-token linearity check is marked slow here:

    pytest benchmarks/test_bench_embed.py --benchmark-columns=min,median,max,rounds
    pytest benchmarks/test_bench_embed.py --run-slow -s      # also the linearity ratio
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these benchmarks may reach the hub

from benchmarks.embed_bench import TextPool, make_texts, measure_linearity
from dra_kernels import adjust_rewards
from dra_kernels.embed import LONG_TEXT_MODES, Embedder, TruncationWarning

# (tokens per text, texts): about 2,000-6,000 tokens per measurement, a second or two on 2 cores.
SIZES = [(300, 8), (1500, 2), (6000, 1)]


@pytest.fixture(scope="module")
def embedders() -> dict[str, Embedder]:
    built = {mode: Embedder(device="cpu", long_text=mode) for mode in LONG_TEXT_MODES}
    for embedder in built.values():  # warm-up once here, so each benchmark times two rounds only
        embedder.encode(["A short warm-up text: 1 + 2 = 3."])
    return built


@pytest.fixture(scope="module")
def pool(embedders: dict[str, Embedder]) -> TextPool:
    return TextPool.from_traces(embedders["windows"])


@pytest.mark.parametrize("mode", LONG_TEXT_MODES)
@pytest.mark.parametrize(("tokens", "count"), SIZES, ids=lambda v: str(v))
def test_embed_throughput(benchmark, embedders, pool, mode, tokens, count):
    embedder = embedders[mode]
    texts = make_texts(embedder, pool, count, tokens)
    benchmark.group = f"embed {tokens} tokens/text"

    def encode():
        if mode == "windows":
            return embedder.encode(texts)
        with pytest.warns(TruncationWarning):
            return embedder.encode(texts)

    out = benchmark.pedantic(encode, rounds=2, iterations=1, warmup_rounds=0)
    stats = embedder.last_stats
    assert out.shape == (count, embedder.dimension)
    assert stats.cut_texts == (0 if mode == "windows" else count)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(
        texts=count,
        text_tokens=stats.tokens,
        tokens_read=stats.tokens_read,
        completions_per_s=count / seconds,
        text_tokens_per_s=stats.tokens / seconds,
        read_tokens_per_s=stats.tokens_read / seconds,
    )


def test_dra_step(benchmark, embedders, pool):
    embedder = embedders["windows"]
    texts = make_texts(embedder, pool, 16, 300)
    rewards = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(0)).float()
    group_ids = torch.arange(16) // 8
    benchmark.group = "DRA step"

    def step():
        return adjust_rewards(rewards, embedder.encode(texts), group_ids, num_groups=2)

    out = benchmark.pedantic(step, rounds=2, iterations=1, warmup_rounds=0)
    assert torch.isfinite(out).all()
    assert (out <= rewards).all()


@pytest.mark.slow
def test_cost_per_token_is_linear(embedders, pool):
    """Issue 12: per token, ~4,800-token texts cost no more than 1.5x ~270-token ones."""
    result = measure_linearity(embedders["windows"], pool, repeats=5, budget=24_000)
    print(
        f"\nwindows mode, us per token read: 270 tokens/text "
        f"{result['short_us_per_token']['median']:.1f}, 4,800 tokens/text "
        f"{result['long_us_per_token']['median']:.1f}; ratio {result['ratio_median']:.2f} "
        f"(per repeat {[round(r, 2) for r in result['ratio_per_repeat']]}), in CPU time "
        f"{result['cpu_ratio_median']:.2f}"
    )
    assert result["ratio_median"] <= result["goal"]
