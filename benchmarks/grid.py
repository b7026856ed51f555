"""The measurements: the timing grid of issue 3 and the sections beside it.

- :func:`run_grid`: per shape, dtype and id layout (sorted or shuffled), the time of each
  implementation of :mod:`benchmarks.impls`, against the memory floor of the shape;
- :func:`small_batch_latency`: the per-call latency from Python for small batches
  (``N <= 1024``), with and without the ``num_groups`` hint;
- :func:`custom_op_overhead`: the eager cost of the ``torch.ops.dra_kernels.dra_forward`` custom
  op against the direct launcher;
- :func:`launch_modes` (CUDA): one training-step-like call (adjust + advantages) eager, replayed
  from a CUDA graph and ``torch.compile(fullgraph=True)``-d;
- :func:`reference_vs_normalize` (CPU, target 7): the reference against ``F.normalize`` of the
  same tensor, with a breakdown of the reference's phases.

These time; they do not judge correctness, which the test suite does (``pytest``, ``pytest -m
gpu`` on a GPU). Each grid row still records its largest difference from the float64 reference
(``max_abs_err``), so that a number timed on a wrong result shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.impls import (
    MIN_DENOMINATOR,
    Case,
    CaseInputs,
    case_key,
    implementation,
    make_case_data,
    make_group_codes,
)
from benchmarks.targets import LATENCY_MAX_N, TARGET7_SHAPE, TARGET_CPU_REFERENCE_RATIO
from benchmarks.timing import python_latency, synchronize, time_call
from dra_kernels import reference, torch_backend
from dra_kernels.api import adjust_rewards, dra_advantages

__all__ = [
    "GRID_DIMS",
    "GRID_DTYPES",
    "GRID_SHAPES",
    "custom_op_overhead",
    "describe",
    "launch_modes",
    "reference_vs_normalize",
    "run_grid",
    "small_batch_latency",
]

GRID_SHAPES: tuple[tuple[int, int], ...] = (
    (16, 8),
    (128, 8),
    (512, 16),
    (1024, 16),
    (4096, 16),
    (8192, 16),
    (2048, 64),
    (256, 512),
)
"""``(B groups, G completions per group)`` of the issue's grid."""
GRID_DIMS = (384, 768, 1024)
GRID_DTYPES = ("bfloat16", "float32")
ID_LAYOUTS = ("sorted", "shuffled")

CPU_SHAPES = ((16, 8), (128, 8), (512, 16), (1024, 16))
CPU_QUICK_SHAPES = ((16, 8), (128, 8))
CPU_DIMS = (384,)
CPU_DTYPES = ("float32",)

LOOP_MAX_GROUPS = 512
"""The Python loop runs only for shapes with at most this many groups (129 ms at B=512 on H100)."""
LOOP_MAX_REPS = 5


def describe(exc: BaseException) -> str:
    """``Type: message``, at most 400 characters, for a result's ``error`` field."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 400 else text[:397] + "..."


# ----------------------------------------------------------------------------- the grid


def _expected(x: CaseInputs) -> dict[str, torch.Tensor]:
    """The torch backend in float64 on the same (rounded) inputs (tested against the spec)."""
    adjusted = torch_backend.adjust_rewards(
        x.rewards.double(), x.embeddings.double(), x.codes, x.num_groups, MIN_DENOMINATOR
    )
    advantages = torch_backend.group_advantages(adjusted, x.codes, x.num_groups, "std")
    return {"adjust": adjusted, "advantages": advantages}


def _max_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return float((out.double() - expected).abs().max()) if out.numel() else 0.0


def run_grid(
    device: torch.device,
    *,
    shapes: Sequence[tuple[int, int]],
    dims: Sequence[int],
    dtypes: Sequence[str],
    layouts: Sequence[str],
    impls: Sequence[str],
    copy_gbps: float,
    warmup_ms: float,
    rep_ms: float,
    loop_max_groups: int = LOOP_MAX_GROUPS,
    deadline: float | None = None,
    seed: int = 0,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Time ``impls`` on every case; one dict per (case, implementation).

    Each row holds the case, the timing quantiles (us), GB/s and ``x_floor`` against the copy
    bandwidth, the first call's time (compilation included), the max abs difference from the
    float64 reference, and ``error`` when the implementation failed or was skipped. Cases left
    when ``deadline`` (a ``time.perf_counter`` value) passes are recorded as skipped.
    """
    rows: list[dict[str, Any]] = []
    for dtype in dtypes:
        for dim in dims:
            for groups, group_size in shapes:
                rewards = embeddings = None
                for layout in layouts:
                    case = Case(groups, group_size, dim, dtype, layout)
                    base = {**asdict(case), "n": case.n, "floor_bytes": case.floor_bytes()}
                    base["floor_us"] = case.floor_bytes() / (copy_gbps * 1e3)
                    if deadline is not None and time.perf_counter() > deadline:
                        for impl in impls:
                            rows.append({**base, "impl": impl, "error": "skipped: time budget"})
                        continue
                    try:
                        if rewards is None:
                            rewards, embeddings = make_case_data(
                                groups, group_size, dim, dtype, device, seed
                            )
                        codes = make_group_codes(groups, group_size, layout, device, seed)
                        x = CaseInputs(
                            rewards, embeddings, codes, groups, group_size, layout == "sorted"
                        )
                        expected = _expected(x)
                    except Exception as exc:
                        for impl in impls:
                            rows.append({**base, "impl": impl, "error": describe(exc)})
                        continue
                    for impl in impls:
                        row = {**base, "impl": impl}
                        row.update(
                            _time_impl(
                                impl, x, case, expected, device, warmup_ms, rep_ms, loop_max_groups
                            )
                        )
                        if "p50_us" in row:
                            row["gbps"] = row["floor_bytes"] / row["p50_us"] / 1e3
                            row["x_floor"] = row["p50_us"] / row["floor_us"]
                        rows.append(row)
                        if on_row is not None:
                            on_row(row)
                    del x, expected, codes
                del rewards, embeddings
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    _add_speedups(rows)
    return rows


def _time_impl(
    impl: str,
    x: CaseInputs,
    case: Case,
    expected: dict[str, torch.Tensor],
    device: torch.device,
    warmup_ms: float,
    rep_ms: float,
    loop_max_groups: int,
) -> dict[str, Any]:
    if impl == "loop" and case.groups > loop_max_groups:
        return {"error": f"skipped: loop runs only for B <= {loop_max_groups}"}
    if impl == "loop" and case.ids != "sorted":
        return {"error": "skipped: the loop does not depend on the id layout (see sorted)"}
    try:
        fn = implementation(impl, x)
        synchronize(device)
        begin = time.perf_counter()
        out = fn()
        synchronize(device)
        first_ms = (time.perf_counter() - begin) * 1e3
        error = _max_error(out, expected["advantages" if impl == "advantages" else "adjust"])
        del out
        max_reps = LOOP_MAX_REPS if impl == "loop" else 1000
        timing = time_call(
            fn,
            device,
            warmup_ms=warmup_ms,
            rep_ms=rep_ms,
            max_reps=max_reps,
            min_reps=min(5, max_reps),
        )
    except Exception as exc:
        return {"error": describe(exc)}
    return {
        "p20_us": timing.p20,
        "p50_us": timing.p50,
        "p80_us": timing.p80,
        "reps": timing.reps,
        "first_call_ms": first_ms,
        "max_abs_err": error,
    }


def primary_impl(rows: Sequence[dict[str, Any]]) -> str:
    """The implementation the others are compared with: triton when timed, else torch."""
    timed = {r["impl"] for r in rows if "p50_us" in r}
    return "triton" if "triton" in timed else "torch"


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_<impl>`` on the primary implementation's rows."""
    primary = primary_impl(rows)
    by_case: dict[tuple, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(case_key(row), {})[row["impl"]] = row
    for impls in by_case.values():
        main_row = impls.get(primary)
        if main_row is None or "p50_us" not in main_row:
            continue
        for name, other in impls.items():
            if name != primary and "p50_us" in other:
                main_row[f"speedup_vs_{name}"] = other["p50_us"] / main_row["p50_us"]


# ----------------------------------------------------------------------------- other sections


def small_batch_latency(
    device: torch.device,
    impls: Sequence[str],
    *,
    shapes: Sequence[tuple[int, int]],
    dim: int = 384,
    dtype: str = "bfloat16",
    seed: int = 0,
    **latency: Any,
) -> list[dict[str, Any]]:
    """Per-call latency from Python for ``N <= 1024`` (target 4), with and without the hint;
    ``latency`` goes to :func:`benchmarks.timing.python_latency` (``repeats``, ...)."""
    rows = []
    for groups, group_size in shapes:
        if groups * group_size > LATENCY_MAX_N:
            continue
        rewards, embeddings = make_case_data(groups, group_size, dim, dtype, device, seed)
        codes = make_group_codes(groups, group_size, "shuffled", device, seed)
        variants = _latency_variants(rewards, embeddings, codes, groups, impls)
        for name, fn in variants.items():
            row = _shape_row(groups, group_size, dim, dtype, ids="shuffled", variant=name)
            try:
                row.update(
                    {
                        f"{k}_us" if k != "reps" else k: v
                        for k, v in asdict(python_latency(fn, device, **latency)).items()
                    }
                )
            except Exception as exc:
                row["error"] = describe(exc)
            rows.append(row)
    return rows


def _shape_row(groups: int, group_size: int, dim: int, dtype: str, **more: Any) -> dict[str, Any]:
    """The shape columns of a result row (and ``more``)."""
    row = {"groups": groups, "group_size": group_size, "n": groups * group_size, "dim": dim}
    return {**row, "dtype": dtype, **more}


def _latency_variants(rewards, embeddings, codes, groups, impls) -> dict[str, Callable[[], Any]]:
    variants: dict[str, Callable[[], Any]] = {}
    for backend in ("triton", "torch"):
        if backend in impls:
            variants[f"{backend}_num_groups"] = lambda b=backend: adjust_rewards(
                rewards, embeddings, codes, backend=b, num_groups=groups
            )
            variants[f"{backend}_no_hint"] = lambda b=backend: adjust_rewards(
                rewards, embeddings, codes, backend=b
            )
    if "advantages" in impls:
        variants["advantages_num_groups"] = lambda: dra_advantages(
            rewards, embeddings, codes, backend="triton", num_groups=groups
        )
    return variants


def _custom_op_variants(rewards, embeddings, codes, groups) -> dict[str, Callable[[], Any]]:
    from dra_kernels._triton import forward, ops  # ops registers the custom op

    del ops
    return {
        "custom_op": lambda: torch.ops.dra_kernels.dra_forward(
            rewards, embeddings, codes, groups, 1, MIN_DENOMINATOR, 0, 1e-4, False
        ),
        "launcher": lambda: forward.dra_forward(
            rewards, embeddings, codes, groups, mode="adjust", min_denominator=MIN_DENOMINATOR
        ),
        "public_api": lambda: adjust_rewards(
            rewards, embeddings, codes, backend="triton", num_groups=groups
        ),
    }


def custom_op_overhead(
    device: torch.device,
    *,
    shapes: Sequence[tuple[int, int]] = ((16, 8), (8192, 16)),
    dim: int = 768,
    dtype: str = "bfloat16",
    seed: int = 0,
    **latency: Any,
) -> list[dict[str, Any]]:
    """Eager per-call time of ``torch.ops.dra_kernels.dra_forward`` vs the direct launcher;
    ``latency`` goes to :func:`benchmarks.timing.python_latency`."""
    rows = []
    for groups, group_size in shapes:
        rewards, embeddings = make_case_data(groups, group_size, dim, dtype, device, seed)
        codes = make_group_codes(groups, group_size, "shuffled", device, seed)
        variants = _custom_op_variants(rewards, embeddings, codes, groups)
        row = _shape_row(groups, group_size, dim, dtype)
        try:
            for name, fn in variants.items():
                timing = python_latency(fn, device, **latency)
                row[f"{name}_p50_us"] = timing.p50
                row[f"{name}_p20_us"] = timing.p20
                row[f"{name}_p80_us"] = timing.p80
            row["overhead_us"] = row["custom_op_p50_us"] - row["launcher_p50_us"]
        except Exception as exc:
            row["error"] = describe(exc)
        rows.append(row)
    return rows


def launch_modes(
    device: torch.device,
    *,
    shape: tuple[int, int] = (256, 16),
    dim: int = 768,
    dtype: str = "bfloat16",
    seed: int = 0,
) -> dict[str, Any]:
    """Per-call wall-clock time of ``adjust_rewards`` + ``dra_advantages`` (Triton, with the
    hint) called eagerly, replayed from a CUDA graph, and compiled with ``fullgraph=True``; and
    the compilation's time. That graph replay and compiled results equal eager ones is tested by
    ``tests/test_gpu.py``."""
    groups, group_size = shape
    r, e = make_case_data(groups, group_size, dim, dtype, device, seed)
    ids = make_group_codes(groups, group_size, "shuffled", device, seed)

    def step(r, e, ids):
        return (
            adjust_rewards(r, e, ids, backend="triton", num_groups=groups),
            dra_advantages(r, e, ids, backend="triton", num_groups=groups),
        )

    result: dict[str, Any] = {"groups": groups, "group_size": group_size, "dim": dim}
    result["dtype"] = dtype
    result["eager_p50_us"] = python_latency(lambda: step(r, e, ids), device).p50

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(r, e, ids)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(r, e, ids)
    result["graph_replay_p50_us"] = python_latency(graph.replay, device).p50

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    begin = time.perf_counter()
    compiled(r, e, ids)
    synchronize(device)
    result["compile_s"] = round(time.perf_counter() - begin, 2)
    result["compiled_p50_us"] = python_latency(lambda: compiled(r, e, ids), device).p50
    return result


def reference_vs_normalize(
    n: int = TARGET7_SHAPE[0],
    dim: int = TARGET7_SHAPE[1],
    group_size: int = TARGET7_SHAPE[2],
    *,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Target 7 on CPU: ``adjust_rewards(backend="torch")`` / ``F.normalize`` on one tensor, fp32.

    Both are timed in the same run, alternately, ``repeats`` times each (after one warm-up); the
    ratio is of the medians. ``phases_ms`` times the steps of the torch backend's chunked path
    (``group_unit_sums`` and ``smi_from_sums`` each normalise the rows, chunk by chunk).
    """
    device = torch.device("cpu")
    groups = n // group_size
    rewards, embeddings = make_case_data(groups, group_size, dim, "float32", device, seed)
    codes = make_group_codes(groups, group_size, "sorted", device, seed)

    def normalize():
        return F.normalize(embeddings, dim=1)

    def adjust():
        return adjust_rewards(rewards, embeddings, codes, backend="torch", num_groups=groups)

    sums, counts = torch_backend.group_unit_sums(embeddings, codes, groups)
    smi = torch_backend.smi_from_sums(embeddings, codes, sums, counts)
    phases = {
        "unit_rows": lambda: torch_backend.unit_rows(embeddings),
        "group_unit_sums": lambda: torch_backend.group_unit_sums(embeddings, codes, groups),
        "smi_from_sums": lambda: torch_backend.smi_from_sums(embeddings, codes, sums, counts),
        "adjust_from_smi": lambda: reference.adjust_from_smi(rewards, smi, MIN_DENOMINATOR),
    }
    samples: dict[str, list[float]] = {name: [] for name in ("normalize", "adjust", *phases)}
    timed = {"normalize": normalize, "adjust": adjust, **phases}
    for fn in timed.values():
        fn()
    for _ in range(repeats):
        for name, fn in timed.items():
            begin = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - begin) * 1e3)
    median = {name: float(np.median(values)) for name, values in samples.items()}
    return {
        "n": n,
        "dim": dim,
        "group_size": group_size,
        "dtype": "float32",
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "normalize_ms": median["normalize"],
        "adjust_rewards_ms": median["adjust"],
        "ratio": median["adjust"] / median["normalize"],
        "samples_ms": samples,
        "phases_ms": {name: median[name] for name in phases},
        "target": TARGET_CPU_REFERENCE_RATIO,
    }
