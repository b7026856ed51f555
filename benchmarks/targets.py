"""The performance targets of issue 3, and their pass / fail / not measured status in a run.

Targets 1 to 5 and 7 are read from the timings; target 6 from the GPU tests
(``pytest -m gpu``: no host sync, CUDA-graph capture, ``torch.compile(fullgraph=True)``; the GPU
session puts their outcomes in ``results["checks"]``) and the custom-op overhead timing.
"""

from __future__ import annotations

from typing import Any

from benchmarks.impls import case_key

__all__ = ["GPU_CHECK_TESTS", "LATENCY_MAX_N", "evaluate_targets"]

TARGET_FLOOR_RATIO = 1.25
TARGET_FLOOR_MIN_N = 65_536
TARGET_VS_TORCH = 10.0
TARGET_VS_COMPILE = 5.0
TARGET_SHUFFLED_RATIO = 1.5
TARGET_LATENCY_US = 15.0
LATENCY_MAX_N = 1024
TARGET_ADVANTAGES_RATIO = 1.1
TARGET_CPU_REFERENCE_RATIO = 3.0
TARGET7_SHAPE = (262_144, 384, 16)
"""``(N, D, G)`` of target 7 (CPU reference vs ``normalize``), fp32."""

GPU_CHECK_TESTS = {
    "no_host_sync": (
        "tests/test_reliability.py::test_no_host_synchronisation_on_cuda_with_a_group_count_hint",
        "tests/test_gpu.py::test_no_host_synchronisation_on_the_bucket_path",
    ),
    "cuda_graph": ("tests/test_gpu.py::test_cuda_graph_replays_new_inputs_as_eager_computes",),
    "compile_fullgraph": ("tests/test_gpu.py::test_compile_fullgraph_matches_eager",),
}
"""Target 6's checks: the pytest tests (node ids, parametrisations included) each one needs."""


def _status(ok: bool | None) -> str:
    return "not measured" if ok is None else ("pass" if ok else "fail")


def evaluate_targets(results: dict[str, Any]) -> dict[str, Any]:
    """Pass / fail / not measured for each of the issue's targets, with the worst value."""
    rows = [r for r in results.get("grid", []) if "p50_us" in r]
    triton = [r for r in rows if r["impl"] == "triton"]
    targets: dict[str, Any] = {}

    big = [r for r in triton if r["n"] >= TARGET_FLOOR_MIN_N and r["ids"] == "sorted"]
    worst = max((r["x_floor"] for r in big), default=None)
    targets["1_floor"] = {
        "goal": f"N >= {TARGET_FLOOR_MIN_N}: triton within {TARGET_FLOOR_RATIO}x of the floor",
        "worst_x_floor": worst,
        "status": _status(None if worst is None else worst <= TARGET_FLOOR_RATIO),
    }

    vs_torch = [r["speedup_vs_torch"] for r in triton if "speedup_vs_torch" in r]
    vs_compile = [r["speedup_vs_compile"] for r in triton if "speedup_vs_compile" in r]
    ok2 = None
    if vs_torch and vs_compile:
        ok2 = min(vs_torch) >= TARGET_VS_TORCH and min(vs_compile) >= TARGET_VS_COMPILE
    targets["2_speedup"] = {
        "goal": f">= {TARGET_VS_TORCH}x eager reference and >= {TARGET_VS_COMPILE}x its compile",
        "min_vs_torch": min(vs_torch, default=None),
        "min_vs_compile": min(vs_compile, default=None),
        "status": _status(ok2),
    }

    by_case = {case_key(r): r for r in triton}
    shuffled = []
    for key, row in by_case.items():
        if key[4] == "shuffled" and (*key[:4], "sorted") in by_case:
            shuffled.append(row["p50_us"] / by_case[(*key[:4], "sorted")]["p50_us"])
    worst = max(shuffled, default=None)
    targets["3_shuffled"] = {
        "goal": f"shuffled ids within {TARGET_SHUFFLED_RATIO}x of sorted",
        "worst_ratio": worst,
        "status": _status(None if worst is None else worst <= TARGET_SHUFFLED_RATIO),
    }

    latency = [r for r in results.get("latency", []) if r.get("variant") == "triton_num_groups"]
    worst = max((r["p50_us"] for r in latency if "p50_us" in r), default=None)
    targets["4_latency"] = {
        "goal": f"N <= {LATENCY_MAX_N}: <= {TARGET_LATENCY_US} us per call from Python",
        "worst_us": worst,
        "status": _status(None if worst is None else worst <= TARGET_LATENCY_US),
    }

    advantages = {case_key(r): r for r in rows if r["impl"] == "advantages"}
    ratios = [advantages[k]["p50_us"] / r["p50_us"] for k, r in by_case.items() if k in advantages]
    worst = max(ratios, default=None)
    targets["5_advantages"] = {
        "goal": f"dra_advantages within {TARGET_ADVANTAGES_RATIO}x of adjust_rewards",
        "worst_ratio": worst,
        "status": _status(None if worst is None else worst <= TARGET_ADVANTAGES_RATIO),
    }

    checks = results.get("checks", {})
    parts = {name: checks.get(name, {}).get("ok") for name in GPU_CHECK_TESTS}
    overhead = [r["overhead_us"] for r in results.get("custom_op", []) if "overhead_us" in r]
    targets["6_no_sync"] = {
        "goal": "no host sync, CUDA graph capture, torch.compile(fullgraph=True) (pytest -m gpu), "
        "custom-op overhead measured",
        **parts,
        "custom_op_overhead_us": overhead or None,
        "status": _status(
            False if False in parts.values() else (None if None in parts.values() else True)
        ),
    }

    ratio = results.get("reference_ratio", {}).get("ratio")
    targets["7_cpu_reference"] = {
        "goal": f"CPU reference <= {TARGET_CPU_REFERENCE_RATIO}x F.normalize (N=262144, D=384)",
        "ratio": ratio,
        "status": _status(None if ratio is None else ratio <= TARGET_CPU_REFERENCE_RATIO),
    }
    return targets
