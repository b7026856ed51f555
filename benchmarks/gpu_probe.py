# ruff: noqa: B023  (every lambda is timed at once, inside its loop iteration)
"""Where the time of one CUDA call goes, and which kernel configuration is fastest (tuning aid).

Not part of the suite: a breakdown run before the grid. It times, with CUDA events and a cold L2
(as the grid does), for a subset of the grid's shapes:

- ``api``: the whole ``adjust_rewards(..., backend="triton", num_groups=K)``;
- ``buckets``: the counting sort of the ids (:func:`dra_kernels._triton.buckets.group_buckets`);
- ``kernel``: the fused kernel alone on precomputed buckets, and ``scan``: in scan mode (up to
  N = 16,384 rows and N x groups = 2^24, past the default limits, to set them);
- a sweep of kernel configurations (:func:`_variants`) on the large shapes, which decides the
  defaults in :func:`dra_kernels._triton.config.choose_config`;

and, from Python (wall clock per call, back to back), the per-call cost of small batches and of
the pieces a call is made of (a bare Triton launch, ``torch.empty``, the input checks).

Usage: ``python -m benchmarks.gpu_probe --out "$OUT"`` on the GPU machine (about two minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

SHAPES = (
    (16, 8, 384, "bfloat16"),
    (128, 8, 384, "bfloat16"),
    (128, 8, 1024, "float32"),
    (128, 16, 768, "bfloat16"),
    (512, 16, 768, "bfloat16"),
    (4096, 16, 384, "bfloat16"),
    (4096, 16, 1024, "float32"),
    (8192, 16, 768, "bfloat16"),
    (8192, 16, 768, "float32"),
    (2048, 64, 384, "bfloat16"),
    (2048, 64, 1024, "float32"),
    (256, 512, 768, "bfloat16"),
    (256, 512, 1024, "float32"),
)
SWEEP_SHAPES = {(4096, 16, 384, "bfloat16"), (8192, 16, 768, "bfloat16"),
                (8192, 16, 768, "float32"), (4096, 16, 1024, "float32"),
                (2048, 64, 384, "bfloat16"), (256, 512, 768, "bfloat16")}  # fmt: skip

MEASURE_SHAPES = ((1024, 16, 768, "bfloat16"), (256, 64, 768, "bfloat16"),
                  (1024, 16, 768, "float32"), (64, 256, 384, "bfloat16"))  # fmt: skip
"""(groups, rows per group, D, dtype) of the measures section."""
SMALL_SHAPES = ((2, 4, 16, "bfloat16"), (8, 16, 40, "float32"), (2, 80, 24, "bfloat16"))
SMALL_SWEEP_SHAPES = {(8, 16, 40, "float32"), (2, 80, 24, "bfloat16")}


def _variants(n: int, k: int, dim: int, dtype: str) -> dict[str, Any]:
    """Kernel configurations to time, by name: each per-group path at its own default settings
    (the Gram path for float32 runs in tf32x3), the tile path at 4, 8 and 16 warps, the linear
    path's chunk rows and warps, and the opt-in options not yet timed on a GPU (plain sums after
    an in-kernel bucket sort; bucket ends in the counting kernel)."""
    from benchmarks.resources import tile_variants
    from dra_kernels._triton.config import PATHS, choose_config

    torch_dtype = getattr(torch, dtype)
    size = -(-n // k)
    default = choose_config(n, dim, k, torch_dtype, rows="buckets")
    out = {}
    for path in PATHS:
        config = choose_config(n, dim, k, torch_dtype, path=path, rows="buckets")
        tag = " (default)" if config == default else ""
        if path == "gram":
            out[f"gram BM{config.block_m} w{config.num_warps}{tag}"] = config
        if path == "tile":
            for label, rows, warps in tile_variants(size, dim, config.block_m, config.num_warps):
                mark = tag if (rows, warps) == (config.block_m, config.num_warps) else ""
                out[label + mark] = config.replace(block_m=rows, num_warps=warps)
        if path == "linear":
            # NOTE: the defaults are (8, 2), (4, 2) and (16, 4); the others are the alternatives
            chunkings = {(1, 2), (2, 2), (2, 4), (4, 2), (4, 4), (4, 8), (8, 2), (16, 4)}
            for rows, warps in sorted(chunkings | {(config.chunk_rows, config.num_warps)}):
                same = (rows, warps) == (config.chunk_rows, config.num_warps)
                name = f"linear R{rows} w{warps}{tag if same else ''}"
                out[name] = config.replace(chunk_rows=rows, num_warps=warps)
    out[f"default {default.path} plain sums"] = choose_config(
        n, dim, k, torch_dtype, rows="buckets", plain_sums=True
    )
    out[f"default {default.path} fused ends"] = default.replace(fused_ends=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_probe")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=150.0)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny shapes (a CPU dry run)")
    parser.add_argument("--host-only", action="store_true", help="only the host-cost section")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # NOTE: before triton is imported

    from benchmarks import impls, timing
    from benchmarks._probe_kernels import noop_kernel
    from benchmarks.environment import environment
    from dra_kernels._triton.buckets import group_buckets
    from dra_kernels._triton.config import choose_config
    from dra_kernels._triton.forward import dra_forward
    from dra_kernels.api import _prepare, adjust_rewards, smi_scores

    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"meta": environment(device), "rows": [], "errors": []}

    def flush():
        (args.out / "probe.json").write_text(json.dumps(results, indent=1, default=str))

    def timed(fn, rep_ms=10.0):
        fn()
        timing.synchronize(device)
        return timing.time_call(fn, device, warmup_ms=3.0, rep_ms=rep_ms).p50

    def wall(fn):
        return timing.python_latency(fn, device, batch_ms=10.0, repeats=5).p50

    def launch(e, r, codes, k, buckets, config):
        """The kernel alone (adjust mode) with ``config``, on precomputed ``buckets`` (None: the
        call makes its own; so do configurations with ``fused_ends``, whose time is then that of
        ``buckets + kernel``)."""
        own = config.rows == "scan" or config.fused_ends
        return dra_forward(r, e, codes, k, mode="adjust", min_denominator=0.1, config=config,
                           buckets=None if own else buckets)  # fmt: skip

    copy = timing.measure_copy_bandwidth(device, (1 << 30) if device.type == "cuda" else 1 << 24)
    results["copy"] = copy
    gbps = copy["gbps"]
    print(f"[probe] copy {gbps:.0f} GB/s", flush=True)

    # host-side costs of the pieces of a small call
    try:
        r, e = impls.make_case_data(16, 8, 384, "bfloat16", device)
        ids = impls.make_group_codes(16, 8, "shuffled", device)
        x = torch.empty(16, device=device)
        host = {
            "noop_triton_launch": wall(lambda: noop_kernel[(1,)](x, 16, BLOCK=16)),
            "torch_empty": wall(lambda: torch.empty(128, device=device)),
            "torch_zeros": wall(lambda: torch.zeros(17, dtype=torch.int32, device=device)),
            "prepare_checks": wall(lambda: _prepare(r, e, ids, "triton", 16)),
            "dra_forward_scan": wall(
                lambda: dra_forward(r, e, ids, 16, mode="adjust", min_denominator=0.1)
            ),
            "api_adjust": wall(lambda: adjust_rewards(r, e, ids, backend="triton", num_groups=16)),
            "group_buckets": wall(lambda: group_buckets(ids, 16)),
        }
        results["host_us"] = host
        print(f"[probe] host us {json.dumps({k: round(v, 1) for k, v in host.items()})}")
    except Exception:
        results["errors"].append(traceback.format_exc(limit=4))
    flush()

    # other SMI measures (issue 15): the facility-location kernel against the torch path, which
    # "auto" takes until these numbers decide; log-det on the torch path; graph-cut for scale
    measure_shapes = [(8, 4, 16, "float32")] if args.small else MEASURE_SHAPES
    results["measures"] = []
    for groups, size, dim, dtype in measure_shapes:
        row = {"B": groups, "G": size, "D": dim, "dtype": dtype}
        try:
            r, e = impls.make_case_data(groups, size, dim, dtype, device)
            ids = impls.make_group_codes(groups, size, "shuffled", device)
            calls = {
                "graph_cut_triton": ("graph_cut", "triton"),
                "facility_location_triton": ("facility_location", "triton"),
                "facility_location_torch": ("facility_location", "torch"),
                "log_det_torch": ("log_det", "torch"),
            }
            outs = {}
            for name, (measure, backend) in calls.items():

                def call(measure=measure, backend=backend):
                    return smi_scores(e, ids, measure=measure, backend=backend, num_groups=groups)

                outs[name] = call()
                row[name] = timed(call, rep_ms=5.0)
            row["fl_max_diff"] = float(
                (outs["facility_location_triton"] - outs["facility_location_torch"]).abs().max()
            )
        except Exception:
            row["error"] = traceback.format_exc(limit=4)
        results["measures"].append(row)
        flush()
        print(f"[probe] measures {json.dumps(row, default=str)}", flush=True)

    shapes = SMALL_SHAPES if args.small else SHAPES
    sweep_shapes = SMALL_SWEEP_SHAPES if args.small else SWEEP_SHAPES
    # NOTE: the sweeps decide the defaults: their shapes first, in case the budget runs out.
    shapes = sorted(shapes, key=lambda shape: shape not in sweep_shapes)
    if args.host_only:
        shapes = []
    for groups, size, dim, dtype in shapes:
        for layout in ("sorted", "shuffled"):
            if time.perf_counter() - started > args.budget_s:
                results["errors"].append(f"budget: stopped before {groups}x{size}x{dim}")
                break
            row: dict[str, Any] = {"B": groups, "G": size, "D": dim, "dtype": dtype, "ids": layout}
            try:
                r, e = impls.make_case_data(groups, size, dim, dtype, device)
                ids = impls.make_group_codes(groups, size, layout, device)
                n, k = ids.numel(), groups
                row["floor_us"] = impls.Case(groups, size, dim, dtype, layout).floor_bytes() / (
                    gbps * 1e3
                )
                ref = adjust_rewards(r.double(), e.double(), ids, backend="torch", num_groups=k)

                def api():
                    return adjust_rewards(r, e, ids, backend="triton", num_groups=k)

                row["api_err"] = float((api() - ref).abs().max())
                row["api"] = timed(api)
                buckets = group_buckets(ids, k)
                base = choose_config(n, dim, k, e.dtype, rows="buckets")
                scan = base.replace(rows="scan")
                row["kernel_err"] = float((launch(e, r, ids, k, buckets, base) - ref).abs().max())
                row["buckets"] = timed(lambda: group_buckets(ids, k))
                row["kernel"] = timed(lambda: launch(e, r, ids, k, buckets, base))
                # NOTE: scan mode beyond its default limits too (N <= 2,048), so the limits
                # can be set from these rows
                if n <= 16384 and n * (k + 1) <= 1 << 24:
                    row["scan_err"] = float((launch(e, r, ids, k, None, scan) - ref).abs().max())
                    row["scan"] = timed(lambda: launch(e, r, ids, k, None, scan))
                    row["wall_api"] = wall(api)
                    row["wall_scan"] = wall(lambda: launch(e, r, ids, k, None, scan))
                    row["wall_buckets_kernel"] = wall(lambda: launch(e, r, ids, k, None, base))
                if (groups, size, dim, dtype) in sweep_shapes and layout == "sorted":
                    sweep, sweep_err = {}, {}
                    for name, v in _variants(n, k, dim, dtype).items():
                        try:
                            got = launch(e, r, ids, k, buckets, v)
                            sweep_err[name] = float((got - ref).abs().max())
                            sweep[name] = timed(
                                lambda v=v: launch(e, r, ids, k, buckets, v), rep_ms=5.0
                            )
                        except Exception as exc:
                            sweep[name] = f"{type(exc).__name__}: {str(exc)[:100]}"
                    row["sweep"] = sweep
                    row["sweep_err"] = sweep_err
            except Exception:
                row["error"] = traceback.format_exc(limit=4)
            results["rows"].append(row)
            flush()
            print(
                "[probe] "
                + " ".join(
                    f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in row.items()
                    if key not in ("sweep", "sweep_err")
                ),
                flush=True,
            )
            if "sweep" in row:
                best = sorted(
                    (t, name) for name, t in row["sweep"].items() if isinstance(t, float)
                )[:4]
                print(f"[probe]   sweep best {best}; default {base}")
    results["seconds"] = round(time.perf_counter() - started, 1)
    flush()
    print(f"[probe] done in {results['seconds']} s; errors: {results['errors']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
