"""``python -m benchmarks.run``: every DRA implementation on the performance grid of issue 3.

What it measures (see ``docs/performance.md`` for the method and the targets), in sections:

- the device copy bandwidth (a copy of a large tensor, bytes read + written / time), which sets
  the memory floor of each shape: ``floor = bytes read once + written once / copy bandwidth``;
- the grid (:func:`benchmarks.grid.run_grid`): each implementation of :mod:`benchmarks.impls`
  per shape, dtype and id layout;
- the per-call latency from Python for small batches (``N <= 1024``);
- with the Triton backend, the eager overhead of the custom op against the direct launcher; on
  CUDA, one call eager, from a CUDA graph and compiled with ``fullgraph=True``;
- on CPU, the reference against ``torch.nn.functional.normalize`` of the same tensor (target 7).

Each section's result or error goes into ``bench.json``, rewritten after every section (and every
grid row), so a run cut short keeps what it measured; then ``bench.md`` and ``bench.png``
(:mod:`benchmarks.report`). The JSON's ``meta`` names the device, the library versions and the
commit measured (:mod:`benchmarks.environment`).

Examples::

    python -m benchmarks.run --quick --out out/bench      # a reduced grid, seconds on CPU
    python -m benchmarks.run --out out/bench              # the full grid (CUDA) or the CPU grid
    python -m benchmarks.run --plot-from out/bench/bench.json --out out/bench
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.environment import environment
from benchmarks.grid import (
    CPU_DIMS,
    CPU_DTYPES,
    CPU_QUICK_SHAPES,
    CPU_SHAPES,
    GRID_DIMS,
    GRID_DTYPES,
    GRID_SHAPES,
    ID_LAYOUTS,
    LOOP_MAX_GROUPS,
    custom_op_overhead,
    launch_modes,
    reference_vs_normalize,
    run_grid,
    small_batch_latency,
)
from benchmarks.impls import IMPLEMENTATIONS
from benchmarks.report import format_table, write_json, write_outputs
from benchmarks.timing import measure_copy_bandwidth

__all__ = ["build_parser", "grid_section", "main", "run", "run_section"]

CUDA_DEFAULT_IMPLS = IMPLEMENTATIONS
CPU_DEFAULT_IMPLS = ("torch", "compile", "naive", "loop")
CPU_QUICK_IMPLS = ("torch", "naive", "loop")


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


def build_parser() -> argparse.ArgumentParser:
    """The runner's options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Time every DRA implementation on the issue-3 grid; write JSON, markdown, PNG.",
    )
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
    parser.add_argument(
        "--commit",
        default=None,
        help="the commit measured, recorded when the tree that runs has no git metadata",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--plot-from",
        type=Path,
        default=None,
        help="render bench.md / bench.png of a saved bench.json into --out",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def _default(value: float | None, default: float) -> float:
    return default if value is None else value


def grid_settings(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Shapes, dims, dtypes, layouts, implementations and timing lengths of the grid."""
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


def run_section(results: dict[str, Any], name: str, fn: Callable[[], Any], out_dir: Path) -> Any:
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
    write_json(results, out_dir / "bench.json")
    return value


def grid_section(results: dict[str, Any], out_dir: Path, **grid_args: Any) -> None:
    """:func:`benchmarks.grid.run_grid` into ``results["grid"]``, flushing ``bench.json`` after
    every row, so a run cut short keeps what it measured."""
    partial: list[dict[str, Any]] = []
    results["grid"] = partial

    def on_row(row: dict[str, Any]) -> None:
        partial.append(row)
        write_json(results, out_dir / "bench.json")

    run_section(results, "grid", lambda: run_grid(on_row=on_row, **grid_args), out_dir)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see :func:`build_parser`); 0 on success."""
    out_dir: Path = args.out
    if args.plot_from is not None:
        results = json.loads(Path(args.plot_from).read_text(encoding="utf-8"))
        write_outputs(results, out_dir, with_plot=not args.no_plot)
        print(format_table(results))
        return 0
    device = _resolve_device(args.device)
    settings = grid_settings(args, device)
    results: dict[str, Any] = {"meta": environment(device, commit=args.commit)}
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
    copy = run_section(
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
    latency = {"repeats": 3, "warmup_calls": 2} if args.quick else {}
    if any(i in impls for i in ("triton", "torch", "advantages")):
        run_section(
            results,
            "latency",
            lambda: small_batch_latency(
                device,
                impls,
                shapes=settings["shapes"],
                dim=settings["dims"][0],
                dtype=settings["dtypes"][0],
                seed=args.seed,
                **latency,
            ),
            out_dir,
        )
    if "triton" in impls:
        # NOTE: on CPU (Triton's interpreter, a dry run) on the grid's first shape: seconds.
        small = {} if device.type == "cuda" else {"shapes": settings["shapes"][:1], "dim": 16}
        run_section(
            results,
            "custom_op",
            lambda: custom_op_overhead(device, seed=args.seed, **small, **latency),
            out_dir,
        )
        if device.type == "cuda":
            run_section(results, "launch_modes", lambda: launch_modes(device), out_dir)
    want_ratio = args.reference_ratio
    if want_ratio is None:
        want_ratio = device.type == "cpu" and not args.quick
    if want_ratio:
        run_section(
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
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
