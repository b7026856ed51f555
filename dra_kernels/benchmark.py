"""Benchmark runner: every DRA implementation on the performance grid of issue 3.

What it measures (see ``docs/performance.md`` for the method and the targets):

- the device copy bandwidth (clone of a large tensor, bytes read + written / time), which sets the
  memory floor of each shape: ``floor = bytes read once + written once / copy bandwidth``;
- per shape, dtype and id layout (sorted or shuffled), the time of each implementation:

  ============== ===================================================================================
  ``triton``     the fused kernel through the public API (``adjust_rewards(backend="triton")``)
  ``advantages`` ``dra_advantages(backend="triton")``: adjustment and GRPO advantages, one kernel
  ``torch``      the eager torch reference (``adjust_rewards(backend="torch")``)
  ``compile``    ``torch.compile`` of :func:`dra_kernels.reference.adjust_rewards`
  ``naive``      eager torch as usually written: normalize, bmm of each group, sum (equal groups;
                 shuffled ids are sorted first and scattered back)
  ``naive_compile`` ``torch.compile`` of ``naive``
  ``loop``       a Python loop over groups (only for shapes with few groups: it is slow)
  ============== ===================================================================================

- the per-call latency from Python for small batches (``N <= 1024``), and the eager overhead of
  the ``torch.ops.dra_kernels.dra_forward`` custom op against the direct launcher;
- on CPU, the reference against ``torch.nn.functional.normalize`` of the same tensor (target 7),
  with a breakdown of the reference's phases.

CUDA timings use CUDA events around each call after warm-up, with the L2 cache flushed before
every call (as ``triton.testing.do_bench``); CPU timings use ``time.perf_counter``. Each timing
reports the p20 / p50 / p80 quantiles of the per-call samples, in microseconds.

Outputs: a table on stdout, ``bench.json``, ``bench.md`` and ``bench.png`` in ``--out``. The
command is ``python -m benchmarks.run`` (and ``dra-kernels bench``); ``--plot-from FILE`` renders
the table and plot of a saved JSON again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import dra_kernels
from dra_kernels import reference
from dra_kernels.api import adjust_rewards, dra_advantages

__all__ = [
    "GRID_DIMS",
    "GRID_DTYPES",
    "GRID_SHAPES",
    "IMPLEMENTATIONS",
    "Case",
    "Timing",
    "add_arguments",
    "loop_adjust",
    "make_case_data",
    "make_group_codes",
    "naive_adjust",
    "custom_op_overhead",
    "environment",
    "evaluate_targets",
    "format_table",
    "grid_section",
    "main",
    "measure_copy_bandwidth",
    "python_latency",
    "reference_vs_normalize",
    "run",
    "run_grid",
    "small_batch_latency",
    "time_call",
    "write_outputs",
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

IMPLEMENTATIONS = ("triton", "advantages", "torch", "compile", "naive", "naive_compile", "loop")
CUDA_DEFAULT_IMPLS = IMPLEMENTATIONS
CPU_DEFAULT_IMPLS = ("torch", "compile", "naive", "loop")
CPU_QUICK_IMPLS = ("torch", "naive", "loop")

LOOP_MAX_GROUPS = 512
"""The Python loop runs only for shapes with at most this many groups (129 ms at B=512 on H100)."""
LOOP_MAX_REPS = 5
LATENCY_MAX_N = 1024
MIN_DENOMINATOR = reference.DEFAULT_MIN_DENOMINATOR

TARGET_FLOOR_RATIO = 1.25
TARGET_FLOOR_MIN_N = 65_536
TARGET_VS_TORCH = 10.0
TARGET_VS_COMPILE = 5.0
TARGET_SHUFFLED_RATIO = 1.5
TARGET_LATENCY_US = 15.0
TARGET_ADVANTAGES_RATIO = 1.1
TARGET_CPU_REFERENCE_RATIO = 3.0
TARGET7_SHAPE = (262_144, 384, 16)
"""``(N, D, G)`` of target 7 (CPU reference vs ``normalize``), fp32."""

# Tolerance of each implementation against the float64 reference on the same (rounded) inputs.
# All implementations compute in float32; advantages divide by a group std, hence the looser one.
_TOLERANCE = {"adjust": 2e-4, "advantages": 2e-3}


# ----------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Quantiles of per-call times in microseconds, and the number of timed calls."""

    p20: float
    p50: float
    p80: float
    reps: int


def _timing(samples_us: Sequence[float]) -> Timing:
    p20, p50, p80 = np.quantile(np.asarray(samples_us, dtype=np.float64), [0.2, 0.5, 0.8])
    return Timing(float(p20), float(p50), float(p80), len(samples_us))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_L2_FLUSH: dict[str, torch.Tensor] = {}


def _flush_buffer(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _L2_FLUSH:
        # NOTE: 256 MiB, larger than any current L2 (50 MB on H100, 60 MB on H200), zeroed before
        # each timed call so every call starts from a cold cache, as triton.testing.do_bench does.
        _L2_FLUSH[key] = torch.empty(256 << 20, dtype=torch.int8, device=device)
    return _L2_FLUSH[key]


def time_call(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    min_reps: int = 5,
    max_reps: int = 1000,
) -> Timing:
    """Time one call of ``fn`` (already called once, so compiled) on ``device``.

    CUDA: CUDA events around each call, L2 flushed before each. CPU: ``time.perf_counter``.
    The number of timed calls fills about ``rep_ms`` (between ``min_reps`` and ``max_reps``).
    """
    if device.type == "cuda":
        flush = _flush_buffer(device)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(3):
            flush.zero_()
            fn()
        stop.record()
        torch.cuda.synchronize(device)
        estimate_ms = max(start.elapsed_time(stop) / 3, 1e-3)
        for _ in range(min(100, max(1, int(warmup_ms / estimate_ms)))):
            fn()
        reps = min(max_reps, max(min_reps, int(rep_ms / estimate_ms)))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        stops = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            flush.zero_()
            starts[i].record()
            fn()
            stops[i].record()
        torch.cuda.synchronize(device)
        return _timing([s.elapsed_time(e) * 1e3 for s, e in zip(starts, stops, strict=True)])
    begin = time.perf_counter()
    fn()
    estimate_ms = max((time.perf_counter() - begin) * 1e3, 1e-3)
    for _ in range(min(20, max(1, int(warmup_ms / estimate_ms)))):
        fn()
    reps = min(max_reps, max(min_reps, int(rep_ms / estimate_ms)))
    samples = []
    for _ in range(reps):
        begin = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - begin) * 1e6)
    return _timing(samples)


def python_latency(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    batch_ms: float = 20.0,
    max_calls: int = 200,
    repeats: int = 7,
) -> Timing:
    """Per-call wall-clock time of back-to-back calls from Python, synchronised once per batch.

    Each of the ``repeats`` batches holds up to ``max_calls`` calls, about ``batch_ms`` in all.
    """
    begin = time.perf_counter()
    for _ in range(10):
        fn()
    _synchronize(device)
    estimate_ms = max((time.perf_counter() - begin) * 1e2, 1e-3)
    calls = min(max_calls, max(3, int(batch_ms / estimate_ms)))
    samples = []
    for _ in range(repeats):
        begin = time.perf_counter()
        for _ in range(calls):
            fn()
        _synchronize(device)
        samples.append((time.perf_counter() - begin) / calls * 1e6)
    return _timing(samples)


def measure_copy_bandwidth(
    device: torch.device, nbytes: int, *, rep_ms: float = 200.0
) -> dict[str, Any]:
    """Device copy bandwidth: a copy of ``nbytes`` into a preallocated tensor, bytes read + written.

    NOTE: ``dst.copy_(src)`` rather than ``src.clone()``: on CPU a fresh multi-MiB allocation is
    page-faulted in on every call, which measures the kernel's page zeroing, not the memory.
    """
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    timing = time_call(lambda: dst.copy_(src), device, rep_ms=rep_ms, min_reps=5, max_reps=200)
    moved = 2 * src.numel() * src.element_size()
    return {
        "method": "dst.copy_(src), preallocated",
        "bytes_moved": moved,
        "timing_us": asdict(timing),
        "gbps": moved / timing.p50 / 1e3,
    }


# ----------------------------------------------------------------------------- environment


def environment(device: torch.device) -> dict[str, Any]:
    """Device name, library versions, date and machine facts for the JSON."""
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_type": device.type,
        "dra_kernels": dra_kernels.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:  # triton is optional
        info["triton"] = f"unavailable ({type(exc).__name__})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["cuda"] = torch.version.cuda
        info["multiprocessors"] = props.multi_processor_count
        info["memory_gib"] = round(props.total_memory / 2**30, 1)
        l2 = getattr(props, "L2_cache_size", None)
        if l2:
            info["l2_mib"] = round(l2 / 2**20, 1)
    else:
        info["device_name"] = info["cpu"]
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------- implementations


@dataclass(frozen=True)
class Case:
    """One point of the grid: ``groups x group_size`` rows of width ``dim``."""

    groups: int
    group_size: int
    dim: int
    dtype: str
    ids: str

    @property
    def n(self) -> int:
        return self.groups * self.group_size

    def floor_bytes(self) -> int:
        """Embeddings, float32 rewards and int64 ids read once, float32 output written once."""
        itemsize = torch.empty(0, dtype=getattr(torch, self.dtype)).element_size()
        return self.n * (self.dim * itemsize + 4 + 8 + 4)


@dataclass
class _Inputs:
    rewards: torch.Tensor
    embeddings: torch.Tensor
    codes: torch.Tensor
    num_groups: int
    group_size: int
    ids_sorted: bool


def make_case_data(
    groups: int, group_size: int, dim: int, dtype: str, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rewards [N] float32 in [0, 1), embeddings [N, D] of dtype)``, standard normal rows."""
    generator = torch.Generator(device=device).manual_seed(seed)
    n = groups * group_size
    embeddings = torch.randn(n, dim, device=device, generator=generator).to(getattr(torch, dtype))
    rewards = torch.rand(n, device=device, generator=generator)
    return rewards, embeddings


def make_group_codes(
    groups: int, group_size: int, layout: str, device: torch.device, seed: int = 0
) -> torch.Tensor:
    """int64 ids of ``groups`` equal groups: ``"sorted"`` (0 0 .. 1 1 ..) or ``"shuffled"``."""
    codes = torch.arange(groups, device=device).repeat_interleave(group_size)
    if layout == "shuffled":
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        codes = codes[torch.randperm(codes.numel(), device=device, generator=generator)]
    return codes


def naive_adjust(
    rewards: torch.Tensor,
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    groups: int,
    group_size: int,
    ids_sorted: bool,
    min_denominator: float = MIN_DENOMINATOR,
) -> torch.Tensor:
    """Eager torch as usually written: normalize, one ``G x G`` bmm per group, row sums.

    Equal-sized groups only; unsorted ids are sorted first and the result scattered back.
    Computed in float32 like every other implementation.
    """
    order = None
    if not ids_sorted:
        order = torch.argsort(codes, stable=True)
        embeddings = embeddings.index_select(0, order)
        rewards = rewards.index_select(0, order)
    units = F.normalize(embeddings.float(), dim=1).view(groups, group_size, -1)
    similarity = torch.bmm(units, units.transpose(1, 2))
    smi = similarity.sum(2) - similarity.diagonal(dim1=1, dim2=2)
    adjusted = rewards.float().view(groups, group_size) / (1.0 + smi).clamp(min=min_denominator)
    adjusted = adjusted.reshape(-1)
    if order is None:
        return adjusted
    return torch.empty_like(adjusted).index_copy_(0, order, adjusted)


def loop_adjust(
    rewards: torch.Tensor,
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    min_denominator: float = MIN_DENOMINATOR,
) -> torch.Tensor:
    """A Python loop over groups, each with its own ``G x G`` similarity matrix."""
    out = torch.empty(rewards.shape[0], dtype=torch.float32, device=rewards.device)
    for group in range(num_groups):
        rows = torch.nonzero(codes == group).squeeze(1)
        units = F.normalize(embeddings.index_select(0, rows).float(), dim=1)
        similarity = units @ units.T
        smi = similarity.sum(1) - similarity.diagonal()
        out[rows] = rewards.index_select(0, rows).float() / (1.0 + smi).clamp(min=min_denominator)
    return out


def _reference_adjust(rewards, embeddings, codes, num_groups):
    return reference.adjust_rewards(rewards, embeddings, codes, num_groups, MIN_DENOMINATOR)


_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}


def _compiled(name: str) -> Callable[..., torch.Tensor]:
    if name not in _COMPILED:
        # NOTE: default torch.compile (what a user gets): it recompiles per N, as the reference's
        # chunk loop depends on N. Raise the recompile limit so it never falls back to eager.
        for attr in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(torch._dynamo.config, attr):
                setattr(torch._dynamo.config, attr, max(getattr(torch._dynamo.config, attr), 256))
        target = _reference_adjust if name == "compile" else naive_adjust
        _COMPILED[name] = torch.compile(target)
    return _COMPILED[name]


def _implementation(name: str, x: _Inputs) -> Callable[[], torch.Tensor]:
    r, e, c, k = x.rewards, x.embeddings, x.codes, x.num_groups
    if name == "triton":
        return lambda: adjust_rewards(r, e, c, backend="triton", num_groups=k)
    if name == "advantages":
        return lambda: dra_advantages(r, e, c, backend="triton", num_groups=k)
    if name == "torch":
        return lambda: adjust_rewards(r, e, c, backend="torch", num_groups=k)
    if name == "compile":
        compiled = _compiled("compile")
        return lambda: compiled(r, e, c, k)
    if name == "naive":
        return lambda: naive_adjust(r, e, c, k, x.group_size, x.ids_sorted)
    if name == "naive_compile":
        compiled = _compiled("naive_compile")
        return lambda: compiled(r, e, c, k, x.group_size, x.ids_sorted)
    if name == "loop":
        return lambda: loop_adjust(r, e, c, k)
    raise ValueError(f"unknown implementation {name!r}; choose from {', '.join(IMPLEMENTATIONS)}")


# ----------------------------------------------------------------------------- the grid


def _expected(x: _Inputs) -> dict[str, torch.Tensor]:
    """Float64 reference on the same (rounded) inputs."""
    adjusted = reference.adjust_rewards(
        x.rewards.double(), x.embeddings.double(), x.codes, x.num_groups, MIN_DENOMINATOR
    )
    advantages = reference.group_advantages(adjusted, x.codes, x.num_groups, "std")
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
    bandwidth, the first call's time (compilation included), the max abs error against the
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
                        x = _Inputs(
                            rewards, embeddings, codes, groups, group_size, layout == "sorted"
                        )
                        expected = _expected(x)
                    except Exception as exc:
                        for impl in impls:
                            rows.append({**base, "impl": impl, "error": _describe(exc)})
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
    x: _Inputs,
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
        fn = _implementation(impl, x)
        _synchronize(device)
        begin = time.perf_counter()
        out = fn()
        _synchronize(device)
        first_ms = (time.perf_counter() - begin) * 1e3
        kind = "advantages" if impl == "advantages" else "adjust"
        error = _max_error(out, expected[kind])
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
        return {"error": _describe(exc)}
    return {
        "p20_us": timing.p20,
        "p50_us": timing.p50,
        "p80_us": timing.p80,
        "reps": timing.reps,
        "first_call_ms": first_ms,
        "max_abs_err": error,
        "ok": error <= _TOLERANCE[kind],
    }


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 400 else text[:397] + "..."


def _case_key(row: dict[str, Any]) -> tuple:
    return (row["groups"], row["group_size"], row["dim"], row["dtype"], row["ids"])


def _primary(rows: Sequence[dict[str, Any]]) -> str:
    timed = {r["impl"] for r in rows if "p50_us" in r}
    return "triton" if "triton" in timed else "torch"


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_<impl>`` on the primary implementation's rows (triton, else torch)."""
    primary = _primary(rows)
    by_case: dict[tuple, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(_case_key(row), {})[row["impl"]] = row
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
) -> list[dict[str, Any]]:
    """Per-call latency from Python for ``N <= 1024`` (target 4), with and without the hint."""
    rows = []
    for groups, group_size in shapes:
        if groups * group_size > LATENCY_MAX_N:
            continue
        rewards, embeddings = make_case_data(groups, group_size, dim, dtype, device, seed)
        codes = make_group_codes(groups, group_size, "shuffled", device, seed)
        variants = _latency_variants(rewards, embeddings, codes, groups, impls)
        for name, fn in variants.items():
            row: dict[str, Any] = {
                "groups": groups,
                "group_size": group_size,
                "n": groups * group_size,
                "dim": dim,
                "dtype": dtype,
                "ids": "shuffled",
                "variant": name,
            }
            try:
                row.update(
                    {
                        f"{k}_us" if k != "reps" else k: v
                        for k, v in asdict(python_latency(fn, device)).items()
                    }
                )
            except Exception as exc:
                row["error"] = _describe(exc)
            rows.append(row)
    return rows


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
    from dra_kernels._triton import dra, ops  # ops registers the custom op

    del ops
    return {
        "custom_op": lambda: torch.ops.dra_kernels.dra_forward(
            rewards, embeddings, codes, groups, 1, MIN_DENOMINATOR, 0, 1e-4, False
        ),
        "launcher": lambda: dra.dra_forward(
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
) -> list[dict[str, Any]]:
    """Eager per-call time of ``torch.ops.dra_kernels.dra_forward`` vs the direct launcher."""
    rows = []
    for groups, group_size in shapes:
        rewards, embeddings = make_case_data(groups, group_size, dim, dtype, device, seed)
        codes = make_group_codes(groups, group_size, "shuffled", device, seed)
        variants = _custom_op_variants(rewards, embeddings, codes, groups)
        row: dict[str, Any] = {
            "groups": groups,
            "group_size": group_size,
            "n": groups * group_size,
            "dim": dim,
            "dtype": dtype,
        }
        try:
            for name, fn in variants.items():
                timing = python_latency(fn, device)
                row[f"{name}_p50_us"] = timing.p50
                row[f"{name}_p20_us"] = timing.p20
                row[f"{name}_p80_us"] = timing.p80
            row["overhead_us"] = row["custom_op_p50_us"] - row["launcher_p50_us"]
            same = torch.equal(variants["custom_op"](), variants["launcher"]())
            row["bitwise_equal"] = bool(same)
        except Exception as exc:
            row["error"] = _describe(exc)
        rows.append(row)
    return rows


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
    ratio is of the medians. ``phases_ms`` breaks the reference into its steps.
    """
    device = torch.device("cpu")
    groups = n // group_size
    rewards, embeddings = make_case_data(groups, group_size, dim, "float32", device, seed)
    codes = make_group_codes(groups, group_size, "sorted", device, seed)

    def normalize():
        return F.normalize(embeddings, dim=1)

    def adjust():
        return adjust_rewards(rewards, embeddings, codes, backend="torch", num_groups=groups)

    units = reference.unit_rows(embeddings)
    sums, counts = reference.group_unit_sums(units, codes, groups)
    smi = reference.smi_from_sums(units, codes, sums, counts)
    phases = {
        "unit_rows": lambda: reference.unit_rows(embeddings),
        "group_unit_sums": lambda: reference.group_unit_sums(units, codes, groups),
        "smi_from_sums": lambda: reference.smi_from_sums(units, codes, sums, counts),
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


# ----------------------------------------------------------------------------- targets


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

    by_case = {_case_key(r): r for r in triton}
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

    advantages = {_case_key(r): r for r in rows if r["impl"] == "advantages"}
    ratios = [advantages[k]["p50_us"] / r["p50_us"] for k, r in by_case.items() if k in advantages]
    worst = max(ratios, default=None)
    targets["5_advantages"] = {
        "goal": f"dra_advantages within {TARGET_ADVANTAGES_RATIO}x of adjust_rewards",
        "worst_ratio": worst,
        "status": _status(None if worst is None else worst <= TARGET_ADVANTAGES_RATIO),
    }

    checks = results.get("checks", {})
    parts = [
        checks.get(k, {}).get("ok") for k in ("no_host_sync", "cuda_graph", "compile_fullgraph")
    ]
    overhead = [r["overhead_us"] for r in results.get("custom_op", []) if "overhead_us" in r]
    targets["6_no_sync"] = {
        "goal": "no host sync, CUDA graph capture, torch.compile(fullgraph=True), custom-op "
        "overhead measured",
        "no_host_sync": checks.get("no_host_sync", {}).get("ok"),
        "cuda_graph": checks.get("cuda_graph", {}).get("ok"),
        "compile_fullgraph": checks.get("compile_fullgraph", {}).get("ok"),
        "custom_op_overhead_us": overhead or None,
        "status": _status(None if None in parts else all(parts)),
    }

    ratio = results.get("reference_ratio", {}).get("ratio")
    targets["7_cpu_reference"] = {
        "goal": f"CPU reference <= {TARGET_CPU_REFERENCE_RATIO}x F.normalize (N=262144, D=384)",
        "ratio": ratio,
        "status": _status(None if ratio is None else ratio <= TARGET_CPU_REFERENCE_RATIO),
    }
    return targets


# ----------------------------------------------------------------------------- outputs


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    """One line per case: p50 of each implementation, and GB/s, x floor, speedups of the primary."""
    rows = results.get("grid", [])
    if not rows:
        return "(no grid results)"
    impls = [i for i in IMPLEMENTATIONS if any(r["impl"] == i and "p50_us" in r for r in rows)]
    primary = _primary(rows)
    others = [i for i in impls if i not in (primary, "advantages")]
    header = ["B x G", "N", "D", "dtype", "ids", "floor us"]
    header += [f"{primary} us (p20-p80)", "GB/s", "x floor"]
    header += [f"{i} us" for i in impls if i != primary]
    header += [f"vs {i}" for i in others]
    if "advantages" in impls:
        header.append("adv/adj")
    by_case: dict[tuple, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(_case_key(row), {})[row["impl"]] = row
    lines = []
    for key, case_rows in by_case.items():
        first = next(iter(case_rows.values()))
        main_row = case_rows.get(primary, {})
        cells = [
            f"{key[0]} x {key[1]}",
            str(first["n"]),
            str(key[2]),
            key[3],
            key[4],
            _fmt(first.get("floor_us")),
        ]
        if "p50_us" in main_row:
            cells.append(
                f"{main_row['p50_us']:.1f} ({main_row['p20_us']:.1f}-{main_row['p80_us']:.1f})"
            )
        else:
            cells.append(_short_error(main_row))
        cells += [_fmt(main_row.get("gbps")), _fmt(main_row.get("x_floor"), 2)]
        cells += [_fmt(case_rows.get(i, {}).get("p50_us")) for i in impls if i != primary]
        cells += [_fmt(main_row.get(f"speedup_vs_{i}"), 1) for i in others]
        if "advantages" in impls:
            adv = case_rows.get("advantages", {}).get("p50_us")
            ratio = adv / main_row["p50_us"] if adv and "p50_us" in main_row else None
            cells.append(_fmt(ratio, 2))
        lines.append(cells)
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) for cells in lines]
    return "\n".join(out)


def _short_error(row: dict[str, Any]) -> str:
    error = row.get("error")
    return "-" if not error else ("skipped" if error.startswith("skipped") else "error")


def _summary_markdown(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    lines = [
        "# DRA benchmark results",
        "",
        f"- device: {meta.get('device_name')} ({meta.get('device_type')})",
        f"- date (UTC): {meta.get('date_utc')}",
        f"- dra_kernels {meta.get('dra_kernels')}, torch {meta.get('torch')}, "
        f"triton {meta.get('triton')}, numpy {meta.get('numpy')}, python {meta.get('python')}",
        f"- timer: {meta.get('timer')}",
    ]
    copy = results.get("copy_bandwidth")
    if copy:
        lines.append(
            f"- copy bandwidth: {copy['gbps']:.1f} GB/s (read + write, copy of "
            f"{copy['bytes_moved'] // 2 // 2**20} MiB, median)"
        )
    lines += [
        "",
        "Times are medians in microseconds; (p20-p80) for the primary implementation.",
        "",
        format_table(results, markdown=True),
        "",
    ]
    if results.get("latency"):
        lines += [
            "## Per-call latency from Python (N <= 1024)",
            "",
            "| B x G | D | dtype | variant | p50 us | p20-p80 |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["latency"]:
            spread = f"{_fmt(r.get('p20_us'))}-{_fmt(r.get('p80_us'))}"
            lines.append(
                f"| {r['groups']} x {r['group_size']} | {r['dim']} | {r['dtype']} | "
                f"{r['variant']} | {_fmt(r.get('p50_us'))} | {spread} |"
            )
        lines.append("")
    if results.get("custom_op"):
        lines += [
            "## Custom-op overhead in eager mode (p50 us per call from Python)",
            "",
            "| B x G | D | custom op | launcher | public API | overhead |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["custom_op"]:
            lines.append(
                f"| {r['groups']} x {r['group_size']} | {r['dim']} | "
                f"{_fmt(r.get('custom_op_p50_us'))} | {_fmt(r.get('launcher_p50_us'))} | "
                f"{_fmt(r.get('public_api_p50_us'))} | {_fmt(r.get('overhead_us'))} |"
            )
        lines.append("")
    ratio = results.get("reference_ratio")
    if ratio:
        phases = ", ".join(f"{k} {v:.1f} ms" for k, v in ratio["phases_ms"].items())
        lines += [
            "## CPU reference vs F.normalize (target 7)",
            "",
            f"N={ratio['n']}, D={ratio['dim']}, fp32, {ratio['threads']} threads: "
            f"adjust_rewards {ratio['adjust_rewards_ms']:.1f} ms, normalize "
            f"{ratio['normalize_ms']:.1f} ms, ratio {ratio['ratio']:.2f} "
            f"(target <= {ratio['target']}). Phases: {phases}.",
            "",
        ]
    if results.get("checks"):
        lines += ["## GPU checks", "", "| check | ok | detail |", "|---|---|---|"]
        for name, check in results["checks"].items():
            detail = str(check.get("detail", check.get("error", ""))).replace("|", "/")
            lines.append(f"| {name} | {check.get('ok')} | {detail[:300]} |")
        lines.append("")
    if results.get("targets"):
        lines += ["## Targets", "", "| target | status | goal | value |", "|---|---|---|---|"]
        for name, target in results["targets"].items():
            values = {k: v for k, v in target.items() if k not in ("goal", "status")}
            shown = ", ".join(
                f"{k}={_fmt(v, 2) if isinstance(v, float) else v}" for k, v in values.items()
            )
            lines.append(f"| {name} | {target['status']} | {target['goal']} | {shown} |")
        lines.append("")
    if results.get("errors"):
        lines += ["## Section errors", ""]
        lines += [f"- {k}: {v.splitlines()[-1] if v else v}" for k, v in results["errors"].items()]
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Time (p50) vs N per implementation, one panel per (D, dtype), the floor as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results.get("grid", []) if "p50_us" in r]
    panels = sorted({(r["dim"], r["dtype"]) for r in rows})
    if not panels:
        raise ValueError("no timed rows to plot")
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(5.2 * columns, 4.0 * lines), squeeze=False)
    device = results.get("meta", {}).get("device_name", "")
    for ax, (dim, dtype) in zip(axes.flat, panels, strict=False):
        panel = [r for r in rows if r["dim"] == dim and r["dtype"] == dtype]
        for layout, style in (("sorted", "-"), ("shuffled", "--")):
            for color, impl in enumerate(IMPLEMENTATIONS):
                points = sorted(
                    (r["n"], r["group_size"], r["p50_us"])
                    for r in panel
                    if r["impl"] == impl and r["ids"] == layout
                )
                if points:
                    ax.plot(
                        [p[0] for p in points],
                        [p[2] for p in points],
                        style,
                        marker="o",
                        markersize=3,
                        color=f"C{color}",
                        label=f"{impl} ({layout})",
                    )
        floor = sorted({(r["n"], r["floor_us"]) for r in panel})
        ax.plot(
            [f[0] for f in floor], [f[1] for f in floor], "k:", linewidth=2, label="memory floor"
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (rows)")
        ax.set_ylabel("time per call, p50 (us)")
        ax.set_title(f"D={dim}, {dtype}")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    ncol = min(4, max(1, columns * 2))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8)
    fig.suptitle(f"DRA adjust_rewards: time vs N ({device})", fontsize=10)
    rows_of_labels = -(-len(labels) // ncol)
    fig.tight_layout(rect=(0, min(0.5, 0.045 * (rows_of_labels + 1) / lines), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out_dir: Path, *, with_plot: bool = True) -> None:
    """``bench.json`` (always first), ``bench.md`` and ``bench.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = evaluate_targets(results)
    _write_json(results, out_dir / "bench.json")
    (out_dir / "bench.md").write_text(_summary_markdown(results), encoding="utf-8")
    if with_plot and any("p50_us" in r for r in results.get("grid", [])):
        try:
            plot(results, out_dir / "bench.png")
        except Exception as exc:  # matplotlib missing or broken: the JSON keeps every number
            results.setdefault("errors", {})["plot"] = _describe(exc)
            _write_json(results, out_dir / "bench.json")


def _write_json(results: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)


# ----------------------------------------------------------------------------- command line


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _shape_list(text: str) -> tuple[tuple[int, int], ...]:
    shapes = []
    for item in text.split(","):
        groups, _, size = item.lower().partition("x")
        shapes.append((int(groups), int(size)))
    return tuple(shapes)


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser`` (used by ``dra-kernels bench``)."""
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run (auto: cuda when available)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a reduced grid and short timings (a smoke test)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/bench"),
        help="output folder for bench.json, bench.md, bench.png",
    )
    parser.add_argument(
        "--impls", type=_str_list, default=None, help=f"comma list from {','.join(IMPLEMENTATIONS)}"
    )
    parser.add_argument(
        "--shapes",
        type=_shape_list,
        default=None,
        help="comma list of BxG, e.g. 16x8,8192x16 (default: the issue's grid)",
    )
    parser.add_argument("--dims", type=_int_list, default=None, help="comma list of D")
    parser.add_argument(
        "--dtypes", type=_str_list, default=None, help="comma list from bfloat16,float16,float32"
    )
    parser.add_argument("--ids", type=_str_list, default=None, help="sorted,shuffled")
    parser.add_argument("--warmup-ms", type=float, default=None)
    parser.add_argument(
        "--rep-ms", type=float, default=None, help="time spent in timed calls per measurement"
    )
    parser.add_argument(
        "--loop-max-groups",
        type=int,
        default=LOOP_MAX_GROUPS,
        help="run the Python loop only for shapes with at most this many groups",
    )
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="skip the grid's remaining cases after this many seconds",
    )
    parser.add_argument(
        "--reference-ratio",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure target 7 (CPU reference vs normalize, N=262144); "
        "default: on for a full CPU run",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--plot-from",
        type=Path,
        default=None,
        help="render bench.md / bench.png of a saved bench.json into --out",
    )
    parser.add_argument("--seed", type=int, default=0)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def _grid_settings(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    if cuda:
        shapes = GRID_SHAPES[:3] if args.quick else GRID_SHAPES
        dims = GRID_DIMS[:1] if args.quick else GRID_DIMS
        dtypes, impls = GRID_DTYPES, CUDA_DEFAULT_IMPLS
    else:
        shapes = CPU_QUICK_SHAPES if args.quick else CPU_SHAPES
        dims, dtypes = CPU_DIMS, CPU_DTYPES
        impls = CPU_QUICK_IMPLS if args.quick else CPU_DEFAULT_IMPLS
    impls = args.impls or impls
    unknown = [i for i in impls if i not in IMPLEMENTATIONS]
    if unknown:
        raise SystemExit(f"--impls: unknown {unknown}; choose from {', '.join(IMPLEMENTATIONS)}")
    return {
        "shapes": args.shapes or shapes,
        "dims": args.dims or dims,
        "dtypes": args.dtypes or dtypes,
        "layouts": args.ids or ID_LAYOUTS,
        "impls": impls,
        "warmup_ms": _default(args.warmup_ms, 5.0 if args.quick else (10.0 if cuda else 25.0)),
        "rep_ms": _default(
            args.rep_ms, (10.0 if args.quick else 30.0) if cuda else (20.0 if args.quick else 200.0)
        ),
    }


def grid_section(results: dict[str, Any], out_dir: Path, **grid_args: Any) -> None:
    """:func:`run_grid` into ``results["grid"]``, flushing ``bench.json`` after every row, so a
    run cut short keeps what it measured."""
    partial: list[dict[str, Any]] = []
    results["grid"] = partial

    def on_row(row: dict[str, Any]) -> None:
        partial.append(row)
        _write_json(results, out_dir / "bench.json")

    _section(results, "grid", lambda: run_grid(on_row=on_row, **grid_args), out_dir)


def _default(value: float | None, default: float) -> float:
    return default if value is None else value


def _section(results: dict[str, Any], name: str, fn: Callable[[], Any], out_dir: Path) -> Any:
    """Run one section; record its result or its error, and flush the JSON either way."""
    begin = time.perf_counter()
    try:
        value = fn()
        results[name] = value
    except Exception:
        value = None
        results.setdefault("errors", {})[name] = traceback.format_exc(limit=5)
        print(f"[bench] section {name} failed:\n{results['errors'][name]}", file=sys.stderr)
    results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - begin, 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(results, out_dir / "bench.json")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see :func:`add_arguments`); 0 on success."""
    out_dir: Path = args.out
    if args.plot_from is not None:
        results = json.loads(Path(args.plot_from).read_text(encoding="utf-8"))
        write_outputs(results, out_dir, with_plot=not args.no_plot)
        print(format_table(results))
        return 0
    device = _resolve_device(args.device)
    settings = _grid_settings(args, device)
    results: dict[str, Any] = {"meta": environment(device)}
    results["meta"]["mode"] = "quick" if args.quick else "full"
    results["meta"]["settings"] = {
        k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()
    }
    results["meta"]["timer"] = (
        "CUDA events per call, L2 flushed before each call, after warm-up"
        if device.type == "cuda"
        else "time.perf_counter per call, after warm-up"
    )
    started = time.perf_counter()
    copy_bytes = (1 << 30 if device.type == "cuda" else 256 << 20) >> (2 if args.quick else 0)
    copy = _section(
        results, "copy_bandwidth", lambda: measure_copy_bandwidth(device, copy_bytes), out_dir
    )
    if copy is None:
        return 1
    print(f"[bench] {results['meta']['device_name']}: copy bandwidth {copy['gbps']:.1f} GB/s")
    deadline = None if args.time_budget_s is None else started + args.time_budget_s
    grid_section(
        results,
        out_dir,
        device=device,
        copy_gbps=copy["gbps"],
        loop_max_groups=args.loop_max_groups,
        deadline=deadline,
        seed=args.seed,
        **settings,
    )
    impls = settings["impls"]
    if not (args.quick and device.type == "cpu") and any(
        i in impls for i in ("triton", "torch", "advantages")
    ):
        _section(
            results,
            "latency",
            lambda: small_batch_latency(
                device,
                impls,
                shapes=settings["shapes"],
                dim=settings["dims"][0],
                dtype=settings["dtypes"][0],
                seed=args.seed,
            ),
            out_dir,
        )
    if device.type == "cuda" and "triton" in impls:
        _section(results, "custom_op", lambda: custom_op_overhead(device, seed=args.seed), out_dir)
    want_ratio = args.reference_ratio
    if want_ratio is None:
        want_ratio = device.type == "cpu" and not args.quick
    if want_ratio:
        _section(
            results, "reference_ratio", lambda: reference_vs_normalize(seed=args.seed), out_dir
        )
    write_outputs(results, out_dir, with_plot=not args.no_plot)
    print(format_table(results))
    for name, target in results["targets"].items():
        print(f"[bench] target {name}: {target['status']}")
    print(
        f"[bench] wrote {out_dir / 'bench.json'}, bench.md"
        + ("" if args.no_plot else ", bench.png")
    )
    return 1 if results.get("errors") else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.run [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Time every DRA implementation on the issue-3 grid; write JSON, markdown, PNG.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
