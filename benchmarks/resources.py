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
    "nans_ptr": "*i32",
    "parts_ptr": "*i64",
}
# float32, or float64 with a float64 accumulator
_OUTPUTS = ("out_ptr", "adj_ptr", "amax_ptr", "sums_ptr")
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
        elif name.startswith(("min_den", "eps")) or name == "x":
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


def variants(
    g: int, d: int, dtype: str, linear_chunks: bool = False
) -> list[tuple[str, dict[str, Any], dict[str, int]]]:
    """The default configuration for groups of ``g`` and the other paths' configurations, plus
    the tile path at other warp counts (and, with ``linear_chunks``, the linear path at each of
    :data:`LINEAR_CHUNKS`): ``(name, constexprs, options)``."""
    import triton
    import triton.language as tl

    from dra_kernels._triton import dra

    float32 = dtype == "float32"
    default = dra._default_path(g, triton.next_power_of_2(max(d, 16)), False, float32)
    out = []
    for path in dra.PATHS:
        config = dra._config(g, d, 1, False, float32, path=path)
        options = {"num_warps": config.pop("num_warps"), "num_stages": config.pop("num_stages")}
        constexprs = {"MODE": 1, "SCALE_STD": True, "SCAN": False, "FP32_DOT": float32,
                      "UPCAST_DOT": False, "CHUNK": 256, "SORT_ROWS": dra._sort_rows(g),
                      "ACC": tl.float32, "E_MAX": 100,
                      **config}  # fmt: skip
        name = path + (" (default)" if path == default else "")
        if path == "linear":
            name = f"linear R{constexprs['R']} w{options['num_warps']}" + name[6:]
        out.append((name, constexprs, options))
        if path == "tile":
            out.pop()  # listed by tile_variants, with the others
            for label, rows, warps in tile_variants(g, d, constexprs["BM"], options["num_warps"]):
                mark = name[4:] if (rows, warps) == (constexprs["BM"], options["num_warps"]) else ""
                tile = {**constexprs, "BM": rows}
                out.append((label + mark, tile, {**options, "num_warps": warps}))
        if path == "linear" and linear_chunks:
            for rows, warps in LINEAR_CHUNKS:
                if (rows, warps) != (constexprs["R"], options["num_warps"]):
                    chunk = {**constexprs, "R": rows}
                    out.append((f"linear R{rows} w{warps}", chunk, {**options, "num_warps": warps}))
    return out


def tile_variants(g: int, d: int, rows: int, warps: int) -> list[tuple[str, int, int]]:
    """``(label, BM, num_warps)`` of the tile path worth compiling or timing for groups of ``g``:
    the default tile (``rows`` x ``warps``) at 4, 8 and 16 warps when it holds a whole group, and
    a tile of twice the default budget at 16 warps when only that holds one; none otherwise (the
    groups would all take the linear way inside the kernel)."""
    from dra_kernels._triton import dra

    need = max(2, 1 << (g - 1).bit_length())
    block_d = max(16, 1 << (d - 1).bit_length())
    if rows >= need:
        return [(f"tile BM{rows} w{w}", rows, w) for w in sorted({4, 8, 16, warps})]
    if need * block_d <= 2 * dra.TILE_MAX_ELEMENTS:
        return [(f"tile BM{need} w16", need, 16)]
    return []


def every_kernel() -> list[tuple[str, Any, dict[str, Any], str, int, int]]:
    """``(label, kernel, constexprs, embedding type, warps, stages)`` covering every kernel of
    the package and every branch of the main one (each path, each row-finding mode, float64,
    the advantages code), for a compile check."""
    import triton.language as tl

    from dra_kernels._triton import dra, launch

    out = []

    def main_kernel(label, mean, d, dtype, path, mode, scan):
        float64 = dtype == "fp64"
        config = dra._config(mean, d, 1, float64, dtype == "fp32", path=path)
        warps, stages = config.pop("num_warps"), config.pop("num_stages")
        acc = tl.float64 if float64 else tl.float32
        constexprs = {"MODE": mode, "SCALE_STD": True, "SCAN": scan, "FP32_DOT": dtype == "fp32",
                      "UPCAST_DOT": False, "CHUNK": 256, "SORT_ROWS": dra._sort_rows(mean),
                      "ACC": acc,
                      "E_MAX": 1000 if float64 else 100, **config}  # fmt: skip
        out.append((label, dra._dra_forward_kernel, constexprs, dtype, warps, stages))

    for path in dra.PATHS:
        for dtype in ("bf16", "fp32"):
            main_kernel(f"main {path} {dtype} advantages", 16, 768, dtype, path, 2, False)
    for dtype in ("bf16", "fp32", "fp64"):
        main_kernel(f"main default {dtype} scan", 16, 384, dtype, None, 2, True)
    main_kernel("main fp64 smi", 16, 768, "fp64", None, 0, False)
    main_kernel("main fp64 adjust", 16, 768, "fp64", None, 1, False)
    main_kernel("main groups of 512", 512, 768, "bf16", None, 1, False)
    bucket = {"BLOCK": dra._BUCKET_BLOCK}
    for ends in (True, False):
        constexprs = {**bucket, "ENDS": ends, "ENDS_BLOCK": dra._ENDS_BLOCK}
        out.append((f"count ends={ends}", dra._count_kernel, constexprs, "fp32", 4, 1))
    out.append(("place", dra._place_kernel, bucket, "fp32", 4, 1))
    linear = {"R": 2, "BLOCK_D": 1024, "SORT_ROWS": dra.SORT_ROWS, "ACC": tl.float32}
    sort = {"SORT_ROWS": dra.SORT_ROWS}
    out.append(("split sort buckets", dra._sort_buckets_kernel, sort, "fp32", 4, 1))
    out.append(("split sums", dra._split_sums_kernel, linear, "bf16", 4, 1))
    out.append(("split rows", dra._split_rows_kernel, {"MODE": 2, **linear}, "bf16", 4, 1))
    stats = {"SCALE_STD": True, "R": 2, "ACC": tl.float32, "E_MAX": 100}
    out.append(("split advantages", dra._split_advantages_kernel, stats, "fp32", 4, 1))
    out.append(("launch echo", launch._echo_kernel, {"C": 11, "D": 13}, "fp32", 1, 1))
    return out


def compile_all(arch: int) -> int:
    """Compile :func:`every_kernel` for ``sm_<arch>``; print each; the number that failed."""
    failed = 0
    for label, fn, constexprs, emb_type, warps, stages in every_kernel():
        try:
            compiled = compile_for(fn, constexprs, emb_type, warps, stages, arch)
            print(f"[compile] ok   {label} ({len(compiled.asm['cubin'])} bytes)", flush=True)
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

    from dra_kernels._triton import dra

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
            row["R"] = None if constexprs["GRAM"] or constexprs["TILE"] else constexprs["R"]
            row["BM"] = constexprs["BM"] if constexprs["GRAM"] or constexprs["TILE"] else None
            try:
                usage = compile_usage(dra._dra_forward_kernel, constexprs, _TYPES[dtype],
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

        from dra_kernels import benchmark as bench

        meta = {"arch": args.arch, **bench.environment(torch.device("cpu"))}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
