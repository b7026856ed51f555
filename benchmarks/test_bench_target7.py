"""Target 7 of issue 3: the CPU reference within 3x of ``F.normalize`` on the same tensor.

N = 262,144 rows, D = 384, float32, groups of 16; both timed alternately in one run and the ratio
of the medians printed (with the reference's phases). Takes tens of seconds on a small machine:

    pytest benchmarks/test_bench_target7.py -s
"""

from __future__ import annotations

import pytest

from benchmarks.grid import reference_vs_normalize
from benchmarks.targets import TARGET_CPU_REFERENCE_RATIO


@pytest.mark.slow
def test_cpu_reference_vs_normalize(benchmark):
    result = benchmark.pedantic(reference_vs_normalize, rounds=1, iterations=1)
    benchmark.extra_info.update(
        ratio=result["ratio"],
        adjust_rewards_ms=result["adjust_rewards_ms"],
        normalize_ms=result["normalize_ms"],
        phases_ms=result["phases_ms"],
        threads=result["threads"],
    )
    phases = ", ".join(f"{k} {v:.1f} ms" for k, v in result["phases_ms"].items())
    print(
        f"\ntarget 7: adjust_rewards(backend='torch') {result['adjust_rewards_ms']:.1f} ms, "
        f"F.normalize {result['normalize_ms']:.1f} ms, ratio {result['ratio']:.2f} "
        f"({result['threads']} threads); phases: {phases}"
    )
    assert result["ratio"] <= TARGET_CPU_REFERENCE_RATIO, (
        f"the CPU reference takes {result['ratio']:.2f}x F.normalize "
        f"(target <= {TARGET_CPU_REFERENCE_RATIO}); phases: {phases}"
    )
