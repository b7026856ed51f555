# ruff: noqa: B023  (every lambda is timed at once, inside its loop iteration)
"""Where the time of one CUDA call goes, and which kernel configuration is fastest (tuning aid).

Not part of the suite: a breakdown run before the grid. It times, with CUDA events and a cold L2
(as the grid does), for a subset of the grid's shapes:

- ``api``: the whole ``adjust_rewards(..., backend="triton", num_groups=K)``;
- ``buckets``: the counting sort of the ids (:func:`dra_kernels._triton.dra.group_buckets`);
- ``kernel``: the fused kernel alone on precomputed buckets, and ``scan``: in scan mode (up to
  N = 16,384 rows and N x groups = 2^24, past the default limits, to set them);
- a sweep of block sizes, warps and pipeline stages of the kernel on the large shapes;

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

SMALL_SHAPES = ((2, 4, 16, "bfloat16"), (8, 16, 40, "float32"), (2, 80, 24, "bfloat16"))
SMALL_SWEEP_SHAPES = {(8, 16, 40, "float32"), (2, 80, 24, "bfloat16")}


def _variants(dra, size: int, dim: int, dtype: str) -> dict[str, dict[str, Any]]:
    """Overrides of the default plan to time, by name: each per-group path at its own default
    settings (the Gram path for float32 runs in tf32x3), the tile path at 4, 8 and 16 warps, the
    linear path's chunk rows and warps, and for groups above the Gram path's size the linear path
    split among 2 to 16 programs per group (``SPLIT``)."""
    from benchmarks.resources import tile_variants

    float32 = dtype == "float32"
    default = dra._default_path(size, max(16, 1 << (dim - 1).bit_length()), False, float32)
    out = {}
    for path in dra.PATHS:
        config = dra._config(size, dim, 1, False, float32, path=path)
        tag = " (default)" if path == default else ""
        if path == "gram":
            out[f"gram BM{config['BM']} w{config['num_warps']}{tag}"] = config
        if path == "tile":
            for label, rows, warps in tile_variants(size, dim, config["BM"], config["num_warps"]):
                mark = tag if (rows, warps) == (config["BM"], config["num_warps"]) else ""
                out[label + mark] = {**config, "BM": rows, "num_warps": warps}
        if path == "linear":
            # NOTE: the defaults are (8, 2), (4, 2) and (16, 4); the others are the alternatives
            for rows, warps in sorted({(1, 2), (2, 2), (2, 4), (4, 2), (4, 4), (4, 8), (8, 2),
                                       (16, 4), (config["R"], config["num_warps"])}):  # fmt: skip
                mark = tag if (rows, warps) == (config["R"], config["num_warps"]) else ""
                out[f"linear R{rows} w{warps}{mark}"] = {**config, "R": rows, "num_warps": warps}
            if size > dra.GRAM_MAX_ROWS:
                for split in (2, 4, 8, 16):
                    name = f"linear R{config['R']} w{config['num_warps']} split{split}"
                    out[name] = {**config, "SPLIT": split}
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

    from benchmarks._probe_kernels import noop_kernel
    from dra_kernels import benchmark as bench
    from dra_kernels._triton import dra
    from dra_kernels._triton.launch import launch as fast_launch
    from dra_kernels.api import _prepare, adjust_rewards

    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"meta": bench.environment(device), "rows": [], "errors": []}

    def flush():
        (args.out / "probe.json").write_text(json.dumps(results, indent=1, default=str))

    def timed(fn, rep_ms=10.0):
        fn()
        bench._synchronize(device)
        return bench.time_call(fn, device, warmup_ms=3.0, rep_ms=rep_ms).p50

    def wall(fn):
        return bench.python_latency(fn, device, batch_ms=10.0, repeats=5).p50

    def launch(e, r, codes, k, buckets, scan, **override):
        """The kernel alone, as ``dra_forward`` launches it (adjust mode), with ``override``
        replacing constexprs (BM, BK, R, ...) or launch options (num_warps, num_stages); with
        ``SPLIT`` (bucket mode), the kernels of the split linear path instead."""
        n, d = e.shape
        plan_key = (d, -(-n // k), False, 1, True, scan, e.dtype, device.type)
        constexprs, options = (dict(part) for part in dra._plan(*plan_key))
        split = override.pop("SPLIT", 1)
        for name, value in override.items():
            (options if name in options else constexprs)[name] = value
        out = torch.empty(n, dtype=torch.float32, device=device)
        if split > 1:
            dra._split_forward(r, e, codes, k, buckets, out, out, 1, True, (0.1, 0.0, 1e-4, 0.0),
                               split, constexprs, options)  # fmt: skip
            return out
        order, counts, ends = (codes, codes, codes) if scan else buckets
        args = (e, e.stride(0), e.stride(1), r, r.stride(0), codes, order, counts, ends, out,
                n, d, k, 0.1, 0.0, 1e-4, 0.0)  # fmt: skip
        dra._dra_forward_kernel[(k + 1,)](*args, **constexprs, **options)
        return out

    copy = bench.measure_copy_bandwidth(device, (1 << 30) if device.type == "cuda" else 1 << 24)
    results["copy"] = copy
    gbps = copy["gbps"]
    print(f"[probe] copy {gbps:.0f} GB/s", flush=True)

    # host-side costs of the pieces of a small call
    try:
        r, e = bench.make_case_data(16, 8, 384, "bfloat16", device)
        ids = bench.make_group_codes(16, 8, "shuffled", device)
        x = torch.empty(16, device=device)
        host = {
            "noop_triton_launch": wall(lambda: noop_kernel[(1,)](x, 16, BLOCK=16)),
            "noop_fast_launch": wall(
                lambda: fast_launch(
                    noop_kernel, (1,), (x, 16), {"BLOCK": 16}, num_warps=4, num_stages=1
                )
            ),
            "torch_empty": wall(lambda: torch.empty(128, device=device)),
            "torch_zeros": wall(lambda: torch.zeros(17, dtype=torch.int32, device=device)),
            "prepare_checks": wall(lambda: _prepare(r, e, ids, "triton", 16)),
            "dra_forward_scan": wall(
                lambda: dra.dra_forward(r, e, ids, 16, mode="adjust", min_denominator=0.1)
            ),
            "api_adjust": wall(lambda: adjust_rewards(r, e, ids, backend="triton", num_groups=16)),
            "group_buckets": wall(lambda: dra.group_buckets(ids, 16)),
        }
        from dra_kernels._triton.launch import fast_path_state

        results["fast_launch"] = fast_path_state()
        results["host_us"] = host
        print(f"[probe] host us {json.dumps({k: round(v, 1) for k, v in host.items()})}")
    except Exception:
        results["errors"].append(traceback.format_exc(limit=4))
    flush()

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
                r, e = bench.make_case_data(groups, size, dim, dtype, device)
                ids = bench.make_group_codes(groups, size, layout, device)
                n, k = ids.numel(), groups
                row["floor_us"] = bench.Case(groups, size, dim, dtype, layout).floor_bytes() / (
                    gbps * 1e3
                )
                ref = adjust_rewards(r.double(), e.double(), ids, backend="torch", num_groups=k)

                def api():
                    return adjust_rewards(r, e, ids, backend="triton", num_groups=k)

                row["api_err"] = float((api() - ref).abs().max())
                row["api"] = timed(api)
                buckets = dra.group_buckets(ids, k)
                row["kernel_err"] = float((launch(e, r, ids, k, buckets, False) - ref).abs().max())
                row["buckets"] = timed(lambda: dra.group_buckets(ids, k))
                row["kernel"] = timed(lambda: launch(e, r, ids, k, buckets, False))
                # NOTE: scan mode beyond its default limits too (N <= 2,048), so the limits
                # can be set from these rows
                if n <= 16384 and n * (k + 1) <= 1 << 24:
                    row["scan_err"] = float((launch(e, r, ids, k, None, True) - ref).abs().max())
                    row["scan"] = timed(lambda: launch(e, r, ids, k, None, True))
                    row["wall_api"] = wall(api)
                    row["wall_scan"] = wall(lambda: launch(e, r, ids, k, None, True))
                    row["wall_buckets_kernel"] = wall(
                        lambda: launch(e, r, ids, k, dra.group_buckets(ids, k), False)
                    )
                if (groups, size, dim, dtype) in sweep_shapes and layout == "sorted":
                    base = dra._plan(dim, -(-n // k), False, 1, True, False, e.dtype, "cuda")[0]
                    variants = _variants(dra, size, dim, dtype)
                    sweep, sweep_err = {}, {}
                    for name, v in variants.items():
                        try:
                            got = launch(e, r, ids, k, buckets, False, **v)
                            sweep_err[name] = float((got - ref).abs().max())
                            sweep[name] = timed(
                                lambda v=v: launch(e, r, ids, k, buckets, False, **v), rep_ms=5.0
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
                print(f"[probe]   sweep best {best}; base {base}")
    results["seconds"] = round(time.perf_counter() - started, 1)
    flush()
    print(f"[probe] done in {results['seconds']} s; errors: {results['errors']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
