"""Timers of the benchmarks: quantiles (p20 / p50 / p80, microseconds) of per-call times.

CUDA: CUDA events around each call, after warm-up, with the L2 cache flushed before every call (as
``triton.testing.do_bench``). CPU: ``time.perf_counter`` around each call. ``python_latency`` is
the wall-clock time per call of back-to-back calls from Python, host overhead included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Timing", "measure_copy_bandwidth", "python_latency", "synchronize", "time_call"]


@dataclass(frozen=True)
class Timing:
    """Quantiles of per-call times in microseconds, and the number of timed calls."""

    p20: float
    p50: float
    p80: float
    reps: int


def _quantiles(samples_us: Sequence[float]) -> Timing:
    p20, p50, p80 = np.quantile(np.asarray(samples_us, dtype=np.float64), [0.2, 0.5, 0.8])
    return Timing(float(p20), float(p50), float(p80), len(samples_us))


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on CPU)."""
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
        return _quantiles([s.elapsed_time(e) * 1e3 for s, e in zip(starts, stops, strict=True)])
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
    return _quantiles(samples)


def python_latency(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    batch_ms: float = 20.0,
    max_calls: int = 200,
    repeats: int = 7,
    warmup_calls: int = 10,
) -> Timing:
    """Per-call wall-clock time of back-to-back calls from Python, synchronised once per batch.

    After ``warmup_calls`` calls (which estimate the time of one), each of the ``repeats`` batches
    holds up to ``max_calls`` calls (at least 3), about ``batch_ms`` in all.
    """
    begin = time.perf_counter()
    for _ in range(warmup_calls):
        fn()
    synchronize(device)
    estimate_ms = max((time.perf_counter() - begin) * 1e3 / warmup_calls, 1e-3)
    calls = min(max_calls, max(3, int(batch_ms / estimate_ms)))
    samples = []
    for _ in range(repeats):
        begin = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        samples.append((time.perf_counter() - begin) / calls * 1e6)
    return _quantiles(samples)


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
