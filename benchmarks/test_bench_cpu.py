"""pytest-benchmark: the CPU torch path, alone and side by side with its peers (issue 14, item 7).

By default, quick: the library's torch path on a few shapes (sorted and shuffled ids) and
``dra_advantages``. With ``--run-slow``, the grid of :data:`benchmarks.cpu_peers.GRID`: for each
shape the library call is the benchmarked function, and before every round the three peers of
:mod:`benchmarks.cpu_peers` (dense per-group bmm, per-uid loop, one ``F.normalize``) run, their
order rotating, each called once untimed then once timed, and the library once untimed, so every
timed call is warm (calls over 50 ms skip the untimed one). ``extra_info`` holds every median,
the ratios and the goals, which the test asserts (``library <= dense``, ``library <= loop``, and
for N <= 4,096 ``library <= 3 x normalize``). The grid takes 4 to 5 minutes of measurement plus
the per-uid loop at N = 131,072 (seconds per call) on 2 idle cores, much longer under load.

    pytest benchmarks/test_bench_cpu.py --benchmark-columns=min,median,iqr,rounds
    pytest benchmarks/test_bench_cpu.py --run-slow -k side_by_side -s --benchmark-json out.json
    pytest benchmarks/test_bench_cpu.py --run-slow -k "side_by_side and n1024-"    # one N
    python -m benchmarks.cpu_peers --table-from out.json     # the ratio table of that run
"""

from __future__ import annotations

import subprocess
import time

import pytest
import torch

from benchmarks.cpu_peers import (
    GRID,
    WARM_BELOW_S,
    Shape,
    check_agreement,
    check_isolated,
    dense_adjust,
    implementations,
    library_at,
    make_inputs,
    paired_ratio,
    summary,
    timed_round,
)
from dra_kernels import adjust_rewards, dra_advantages

QUICK = [Shape(128, 8, 384), Shape(1024, 8, 384), Shape(8192, 16, 384)]
PEERS = ("dense", "loop", "normalize")
BUDGET_S = 4.0  # per grid shape, at least MIN_ROUNDS rounds
MIN_ROUNDS = 3
MAX_ROUNDS = 200


@pytest.mark.parametrize("layout", ["sorted", "shuffled"])
@pytest.mark.parametrize("shape", QUICK, ids=lambda s: s.id)
def test_torch_path_adjust_rewards(benchmark, shape, layout):
    benchmark.group = f"cpu {shape.name} {layout}"
    rewards, embeddings, codes = make_inputs(shape, layout=layout)
    out = benchmark(
        adjust_rewards, rewards, embeddings, codes, backend="torch", num_groups=shape.groups
    )
    assert out.shape == (shape.n,) and torch.isfinite(out).all()
    if layout == "sorted":
        want = dense_adjust(rewards, embeddings, shape.groups, shape.group_size)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", QUICK[:2], ids=lambda s: s.id)
def test_torch_path_dra_advantages(benchmark, shape):
    benchmark.group = f"cpu {shape.name} sorted"
    rewards, embeddings, codes = make_inputs(shape)
    out = benchmark(
        dra_advantages, rewards, embeddings, codes, backend="torch", num_groups=shape.groups
    )
    assert torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("shape", GRID, ids=lambda s: s.id)
def test_side_by_side(benchmark, shape):
    benchmark.group = f"side by side {shape.name}"
    rewards, embeddings, codes = make_inputs(shape)
    calls = implementations(shape, rewards, embeddings, codes)
    max_diff = check_agreement(calls)
    seconds = {}
    for name, call in calls.items():  # the length of one round
        start = time.perf_counter()
        call()
        seconds[name] = time.perf_counter() - start
    per_round = sum(2 * t if t < WARM_BELOW_S else t for t in seconds.values())
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(BUDGET_S / per_round)))
    samples: dict[str, list[float]] = {name: [] for name in PEERS}

    def peers_then_warm_library() -> None:
        timed_round(calls, PEERS, len(samples["dense"]), samples)
        if seconds["library"] < WARM_BELOW_S:
            calls["library"]()  # untimed: the timed call below is warm, as the peers' are

    benchmark.pedantic(
        calls["library"], setup=peers_then_warm_library, rounds=rounds, warmup_rounds=0
    )
    samples["library"] = list(benchmark.stats.stats.data)
    row = summary(shape, rounds, samples, max_diff)
    row["threads"] = torch.get_num_threads()
    benchmark.extra_info.update(row)
    m, ratios = row["median_ms"], row["ratios"]
    print(
        f"\n{shape.name}: library {m['library']:.3f} ms, dense {m['dense']:.3f}, "
        f"loop {m['loop']:.3f}, normalize {m['normalize']:.3f}; "
        + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
    )
    missed = [goal for goal, ok in row["goals"].items() if ok is False]
    assert not missed, f"{shape.name}: missed {missed}; ratios {ratios}"


def test_against_a_revision_runs_that_revisions_files_side_by_side():
    """``--against REV``: the old package is its own module objects, and is checked to be."""
    if subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    old, folder = library_at("HEAD")
    rewards, embeddings, codes = make_inputs(Shape(64, 8, 16))
    check_isolated(lambda: old(rewards, embeddings, codes, backend="torch"), folder)
    assert old.__module__ == "dra_kernels.api" and old is not adjust_rewards
    assert old.__code__.co_filename.startswith(folder)
    assert torch.allclose(
        old(rewards, embeddings, codes), adjust_rewards(rewards, embeddings, codes)
    )
    with pytest.raises(AssertionError, match="the old library ran current files"):
        check_isolated(lambda: adjust_rewards(rewards, embeddings, codes), folder)


def test_paired_ratio_is_the_median_of_rounds_with_its_sign_test_range():
    new, old = [float(i) for i in range(1, 21)], [1.0] * 20
    got = paired_ratio(new, old)
    # n = 20: P(Binomial(20, 1/2) <= 5) = 2.07% <= 2.5% < P(<= 6) = 5.77%: ranks 6 and 15
    assert got == {"median": 10.5, "low95": 6.0, "high95": 15.0, "rounds": 20}
    assert paired_ratio([2.0, 4.0], [1.0, 1.0])["low95"] == 2.0  # too few rounds: the whole range
