"""Registers, spills and occupancy of the kernel's variants, compiled for a GPU on any machine.

Triton compiles for a given target without a GPU (its wheel carries ``ptxas`` and ``cuobjdump``),
so what each configuration costs in registers, local memory (spills) and shared memory can be read
on a CPU-only machine, and with it how many programs fit on one multiprocessor. That says nothing
about time; it says which configurations are worth timing, and whether one spills.

Usage::

    python -m benchmarks.resources                    # sm_90 (H100 / H200), the main variants
    python -m benchmarks.resources --arch 80 --out out/resources.json

Occupancy uses the limits of compute capability 8.0 / 9.0: 65,536 registers, 2,048 threads and 32
blocks per multiprocessor, registers allocated per warp in units of 256, and the shared memory of
the device (164 KiB on 8.0, 228 KiB on 9.0, 1 KiB of each block reserved).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SHARED_PER_SM = {80: 164 * 1024, 86: 100 * 1024, 89: 100 * 1024, 90: 228 * 1024}
MAX_THREADS_PER_SM = {80: 2048, 86: 1536, 89: 1536, 90: 2048}

_POINTERS = {
    "rew_ptr": "*fp32",
    "codes_ptr": "*i64",
    "order_ptr": "*i32",
    "counts_ptr": "*i32",
    "ends_ptr": "*i32",
    "slot_ptr": "*i32",
    "done_ptr": "*i32",
}
# float32, or float64 with a float64 accumulator
_OUTPUTS = ("out_ptr",)
_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}

# (G, D, dtype): the group sizes and widths of issue 3's grid
SHAPES = tuple(
    (g, d, dtype)
    for dtype in ("bfloat16", "float32")
    for g, d in ((8, 384), (16, 384), (16, 768), (16, 1024), (64, 384), (64, 1024), (512, 768))
)


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _signature(fn, constexprs: dict[str, Any], emb_type: str) -> dict[str, str]:
    """Argument types of any of this package's kernels, from its parameter names."""
    acc = constexprs.get("ACC")
    out_type = "*fp64" if acc is not None and "64" in str(acc) else "*fp32"
    signature = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "emb_ptr":
            signature[name] = "*" + emb_type
        elif name in _OUTPUTS:
            signature[name] = out_type
        elif name in _POINTERS:
            signature[name] = _POINTERS[name]
        elif name.startswith(("min_den", "eps")) or name in ("x", "eta"):
            signature[name] = "fp32"
        elif name.startswith("stride"):
            signature[name] = "i64"
        else:
            signature[name] = "i32"
    return signature


def compile_for(
    fn, constexprs: dict[str, Any], emb_type: str, num_warps: int, num_stages: int, arch: int
):
    """``fn`` compiled by Triton for ``sm_<arch>`` (no GPU needed), specialised as Triton
    specialises a typical launch: contiguous rows (``stride_ed == 1``, a constexpr), 16-byte
    aligned pointers, and a row stride and width divisible by 16 (D = 384, 768, 1024)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(fn.fn).parameters)
    constants = dict(constexprs)
    if "stride_ed" in names:
        constants["stride_ed"] = 1
    signature = _signature(fn, constants, emb_type)
    attrs = None
    if tuple(int(x) for x in triton.__version__.split(".")[:2]) >= (3, 3):
        # NOTE: Triton 3.2 takes these as an AttrsDescriptor; there it compiles without them.
        attrs = {
            (i,): [["tt.divisibility", 16]]
            for i, name in enumerate(names)
            if signature[name].startswith("*")
            or (name in ("stride_en", "D") and signature[name] != "constexpr")
        }
    source = ASTSource(fn, signature, constants, attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def compile_usage(
    fn, constexprs: dict[str, Any], emb_type: str, num_warps: int, num_stages: int, arch: int
) -> dict[str, int]:
    """``{"REG", "STACK", "SHARED", "LOCAL"}`` of ``fn`` compiled for ``sm_<arch>``."""
    compiled = compile_for(fn, constexprs, emb_type, num_warps, num_stages, arch)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(compiled.asm["cubin"])
        text = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    if "REG" not in found:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {text[:300]!r}")
    usage = {key: int(value) for key, value in found.items()}
    usage["SHARED"] = max(usage.get("SHARED", 0), int(compiled.metadata.shared))
    return usage


def programs_per_sm(usage: dict[str, int], num_warps: int, arch: int) -> int:
    """Resident programs per multiprocessor allowed by registers, threads, shared memory."""
    per_warp = -(-max(usage["REG"], 1) * 32 // 256) * 256
    by_regs = 65536 // (per_warp * num_warps)
    by_threads = MAX_THREADS_PER_SM.get(arch, 2048) // (32 * num_warps)
    shared = usage["SHARED"] + 1024
    by_shared = SHARED_PER_SM.get(arch, 100 * 1024) // shared
    return max(0, min(by_regs, by_threads, by_shared, 32))


LINEAR_CHUNKS = ((1, 2), (2, 2), (2, 4), (4, 2), (4, 4), (4, 8), (8, 2), (8, 4), (16, 4))
"""(rows, warps) of the linear path listed with ``--linear-chunks`` (8 x 2, 4 x 2 and 16 x 4
are the defaults at D = 384, 768 / 1,024 and for groups of 512)."""


_TORCH_TYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp64": "float64"}


def _constexprs(config, d: int, dtype: str, mode: str = "adjust", scan: bool = False) -> dict:
    """The main kernel's constexprs for ``config`` exactly as a CUDA launch builds them."""
    import torch

    from dra_kernels._triton.forward import _constexprs as launch_constexprs

    torch_dtype = getattr(torch, _TORCH_TYPES.get(dtype, dtype))
    config = config.replace(rows="scan" if scan else "buckets")
    float64 = torch_dtype == torch.float64
    return launch_constexprs(config, d, mode, True, float64, torch_dtype, "cuda")


def variants(
    g: int, d: int, dtype: str, linear_chunks: bool = False
) -> list[tuple[str, dict[str, Any], dict[str, int]]]:
    """The default configuration for groups of ``g`` and the other paths' configurations, plus
    the tile path at other warp counts (and, with ``linear_chunks``, the linear path at each of
    :data:`LINEAR_CHUNKS`): ``(name, constexprs, options)``."""
    import torch

    from dra_kernels._triton.config import PATHS, choose_config

    torch_dtype = getattr(torch, dtype)
    default = choose_config(16 * g, d, 16, torch_dtype).path
    out = []
    for path in PATHS:
        config = choose_config(16 * g, d, 16, torch_dtype, path=path, rows="buckets")
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        constexprs = _constexprs(config, d, dtype)
        name = path + (" (default)" if path == default else "")
        if path == "linear":
            name = f"linear R{config.chunk_rows} w{config.num_warps}" + name[6:]
        if path == "tile":
            for label, rows, warps in tile_variants(g, d, config.block_m, config.num_warps):
                mark = name[4:] if (rows, warps) == (config.block_m, config.num_warps) else ""
                tile = {**constexprs, "BM": rows}
                out.append((label + mark, tile, {**options, "num_warps": warps}))
            continue
        out.append((name, constexprs, options))
        if path == "linear" and linear_chunks:
            for rows, warps in LINEAR_CHUNKS:
                if (rows, warps) != (config.chunk_rows, config.num_warps):
                    chunk = {**constexprs, "R": rows}
                    out.append((f"linear R{rows} w{warps}", chunk, {**options, "num_warps": warps}))
    return out


def tile_variants(g: int, d: int, rows: int, warps: int) -> list[tuple[str, int, int]]:
    """``(label, BM, num_warps)`` of the tile path worth compiling or timing for groups of ``g``:
    the default tile (``rows`` x ``warps``) at 4, 8 and 16 warps when it holds a whole group, and
    a tile of twice the default budget at 16 warps when only that holds one; none otherwise (the
    groups would all take the linear way inside the kernel)."""
    from dra_kernels._triton.config import TILE_MAX_ELEMENTS

    need = max(2, 1 << (g - 1).bit_length())
    block_d = max(16, 1 << (d - 1).bit_length())
    if rows >= need:
        return [(f"tile BM{rows} w{w}", rows, w) for w in sorted({4, 8, 16, warps})]
    if need * block_d <= 2 * TILE_MAX_ELEMENTS:
        return [(f"tile BM{need} w16", need, 16)]
    return []


def every_kernel() -> list[tuple[str, Any, dict[str, Any], str, int, int]]:
    """``(label, kernel, constexprs, embedding type, warps, stages)`` covering every kernel of
    the package and every branch of the main one (each path, each row-finding mode, plain and
    fixed-point sums, float64, the advantages code), for a compile check."""
    import torch

    from dra_kernels._triton import buckets, facility, forward
    from dra_kernels._triton.config import PATHS, choose_config

    out = []

    def main_kernel(label, mean, d, dtype, path, mode, scan, plain=False):
        torch_dtype = getattr(torch, _TORCH_TYPES[dtype])
        config = choose_config(16 * mean, d, 16, torch_dtype, float64=dtype == "fp64", path=path,
                               plain_sums=plain)  # fmt: skip
        constexprs = _constexprs(config, d, dtype, mode, scan)
        kernel = forward._dra_forward_kernel
        out.append((label, kernel, constexprs, dtype, config.num_warps, config.num_stages))

    for path in PATHS:
        for dtype in ("bf16", "fp32"):
            main_kernel(f"main {path} {dtype} advantages", 16, 768, dtype, path, "advantage", False)
            main_kernel(f"main {path} {dtype} plain sums", 16, 768, dtype, path, "advantage",
                        False, plain=True)  # fmt: skip
    for dtype in ("bf16", "fp32", "fp64"):
        main_kernel(f"main default {dtype} scan", 16, 384, dtype, None, "advantage", True)
    main_kernel("main fp64 smi", 16, 768, "fp64", None, "smi", False)
    main_kernel("main fp64 adjust", 16, 768, "fp64", None, "adjust", False)
    main_kernel("main groups of 512", 512, 768, "bf16", None, "adjust", False)
    bucket = {"BLOCK": buckets.BUCKET_BLOCK}
    for ends in (True, False):
        constexprs = {**bucket, "ENDS": ends, "ENDS_BLOCK": buckets.ENDS_BLOCK}
        out.append((f"count ends={ends}", buckets._count_kernel, constexprs, "fp32", 4, 1))
    out.append(("place", buckets._place_kernel, bucket, "fp32", 4, 1))
    for dtype in ("bf16", "fp16", "fp32"):
        constexprs = {"BM": 64, "BK": 16, "FP32_DOT": dtype == "fp32", "UPCAST_DOT": False}
        out.append((f"facility location {dtype}", facility._facility_kernel, constexprs, dtype, 8,
                    1))  # fmt: skip
    return out


def compile_all(arch: int) -> int:
    """Compile :func:`every_kernel` for ``sm_<arch>``; print each; the number that failed."""
    failed = 0
    for label, fn, constexprs, emb_type, warps, stages in every_kernel():
        try:
            usage = compile_usage(fn, constexprs, emb_type, warps, stages, arch)
            print(f"[compile] ok   {label} ({json.dumps(usage)})", flush=True)
        except Exception as exc:
            failed += 1
            print(f"[compile] FAIL {label}: {type(exc).__name__}: {str(exc)[-400:]}", flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resources")
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--quick", action="store_true", help="one shape only (a smoke test)")
    parser.add_argument(
        "--linear-chunks", action="store_true", help="also the linear path's other chunkings"
    )
    parser.add_argument(
        "--compile-all", action="store_true", help="only compile every kernel (a check)"
    )
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    from dra_kernels._triton import forward

    if args.compile_all:
        failed = compile_all(args.arch)
        print(f"[compile] Triton {triton.__version__}, sm_{args.arch}: {failed} failed")
        return 1 if failed else 0
    rows = []
    shapes = SHAPES[2:3] if args.quick else SHAPES
    print(f"Triton {triton.__version__}, sm_{args.arch}; registers per thread, bytes per program")
    print(f"{'G':>4} {'D':>5} {'dtype':9} {'variant':24} {'BM':>3} {'warps':>5} {'REG':>4} "
          f"{'STACK':>5} {'SHARED':>6} {'progs/SM':>8} {'warps/SM':>8}")  # fmt: skip
    for g, d, dtype in shapes:
        for name, constexprs, options in variants(g, d, dtype, args.linear_chunks):
            row = {"G": g, "D": d, "dtype": dtype, "variant": name, **options}
            linear = constexprs["PATH"] == 2
            row["R"] = constexprs["R"] if linear else None
            row["BM"] = None if linear else constexprs["BM"]
            try:
                usage = compile_usage(forward._dra_forward_kernel, constexprs, _TYPES[dtype],
                                      options["num_warps"], options["num_stages"],
                                      args.arch)  # fmt: skip
            except Exception as exc:  # report and go on: one variant may not compile
                row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                print(f"{g:>4} {d:>5} {dtype:9} {name:24} error: {row['error']}")
                rows.append(row)
                continue
            row.update(usage)
            row["programs_per_sm"] = programs_per_sm(usage, options["num_warps"], args.arch)
            row["warps_per_sm"] = row["programs_per_sm"] * options["num_warps"]
            rows.append(row)
            print(f"{g:>4} {d:>5} {dtype:9} {name:24} {row['BM'] or '-':>3} "
                  f"{options['num_warps']:>5} {usage['REG']:>4} {usage.get('STACK', 0):>5} "
                  f"{usage['SHARED']:>6} {row['programs_per_sm']:>8} {row['warps_per_sm']:>8}",
                  flush=True)  # fmt: skip
    if args.out is not None:
        import torch

        from benchmarks.environment import environment

        meta = {"arch": args.arch, **environment(torch.device("cpu"))}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
