"""One GPU run that gives every number: correctness, determinism, graphs, compile, timings.

GPU time is scarce, so this one script, run once on a CUDA machine, does in a few minutes:

1. correctness of the Triton backend (every mode, dtype, and ragged / unsorted / strided /
   extreme layouts) against the float64 reference, with outputs poisoned with NaN;
2. determinism (bitwise equal repeats);
3. no host synchronisation with ``num_groups`` (``torch.cuda.set_sync_debug_mode("error")``), a
   CUDA graph capture and replay of ``adjust_rewards`` / ``dra_advantages``;
4. ``torch.compile(fullgraph=True)`` of a function calling them with ``num_groups=K``;
5. the custom-op overhead in eager mode, the copy bandwidth, the full timing grid and the
   small-batch latency of :mod:`dra_kernels.benchmark`.

Each section is wrapped: a failure is recorded and the rest goes on; ``bench.json`` is rewritten
after every section. Outputs in ``--out``: ``bench.json``, ``bench.md``, ``bench.png``.

Usage (from the repository root)::

    python -m benchmarks.gpu_check --out "$OUT"            # on the GPU machine, < 5 minutes
    python -m benchmarks.gpu_check --device cpu --out out/gpu_check_dry   # dry run, interpreter
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Tolerance of the kernel against the float64 reference on the same rounded inputs:
# |out - ref| <= atol + rtol * |ref|. Inputs of every dtype are computed in float32 (float64 for
# float64), so the input dtype only selects the row.
TOLERANCES = {
    "float32": {"atol": 1e-5, "rtol": 1e-4},
    "float64": {"atol": 1e-10, "rtol": 1e-9},
}
ADVANTAGE_ATOL_FACTOR = 10.0
"""Advantages divide by a group std: their absolute tolerance is this many times looser."""

ALL_DTYPES = ("float16", "bfloat16", "float32", "float64")
MODES = ("smi", "adjust", "advantage_std", "advantage_none")


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 600 else text[:597] + "..."


@contextlib.contextmanager
def nan_poisoned_empty() -> Iterator[None]:
    """``torch.empty`` / ``empty_like`` return NaN-filled floating tensors, so unwritten outputs
    show up as NaN."""
    import torch

    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(math.nan)
        return t

    torch.empty = lambda *a, **k: poison(empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


@contextlib.contextmanager
def _forced_buckets(active: bool) -> Iterator[None]:
    """Send every batch through the kernel's counting-sort buckets instead of the scan."""
    from dra_kernels._triton import dra

    saved = dra.SCAN_MAX_ROWS
    if active:
        dra.SCAN_MAX_ROWS = -1
    try:
        yield
    finally:
        dra.SCAN_MAX_ROWS = saved


# ----------------------------------------------------------------------------- layouts


def _layouts(device, small: bool) -> dict[str, dict[str, Any]]:
    """Named test layouts: ``ids`` (what the API gets), ``num_groups`` hint or None, ``rows``."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(1234)
    layouts: dict[str, dict[str, Any]] = {}

    def shuffled(ids):
        return ids[torch.randperm(ids.numel(), generator=g)]

    b, size = (4, 3) if small else (64, 8)
    layouts["sorted_equal"] = {"ids": torch.arange(b).repeat_interleave(size), "num_groups": b}
    sizes = torch.randint(1, 6 if small else 40, (6 if small else 100,), generator=g)
    sizes[0] = 1  # a group of one row: SMI exactly 0
    ragged = torch.arange(sizes.numel()).repeat_interleave(sizes)
    layouts["ragged_shuffled"] = {"ids": shuffled(ragged), "num_groups": int(sizes.numel())}
    layouts["ragged_no_hint"] = {"ids": shuffled(ragged) * 7 + 3, "num_groups": None}
    big = 40 if small else 3000
    many = torch.cat([torch.zeros(big, dtype=torch.int64), torch.arange(1, 51)])
    layouts["big_group"] = {"ids": shuffled(many), "num_groups": 51}
    # mean group above 64 rows: split among several programs per group on the bucket path
    wide = torch.arange(3 if small else 24).repeat_interleave(100 if small else 300)
    layouts["large_groups"] = {"ids": shuffled(wide), "num_groups": int(wide.max()) + 1}
    hinted = torch.randint(0, 2 * b, (b * size,), generator=g)  # some groups empty
    layouts["hint_empty_groups"] = {"ids": hinted, "num_groups": 2 * b}
    for spec in layouts.values():
        spec["ids"] = spec["ids"].to(device)
    layouts["string_ids"] = {
        "ids": [f"prompt-{int(i)}" for i in ragged.tolist()],
        "num_groups": None,
    }
    return layouts


def _embeddings(n: int, dim: int, dtype, device, *, seed: int, extreme: bool = False):
    """Random rows with mixed scales, some zero rows; ``extreme`` scales rows near the dtype's
    range (1e30 / 1e-30 for float32, 1e200 / 1e-200 for float64)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    x += torch.randn(1, dim, generator=g, dtype=torch.float64)  # shared direction: SMI > 0
    x *= torch.exp(torch.empty(n, 1, dtype=torch.float64).uniform_(-3, 3, generator=g))
    x[:: max(1, n // 7)] = 0.0
    if n >= 3:
        x[1] = -x[2]  # a negative cosine
    if extreme:
        big = 1e200 if dtype == torch.float64 else 1e30
        x[0::3] *= big
        x[1::3] /= big
    return x.to(dtype).to(device)


def correctness(device, *, small: bool) -> list[dict[str, Any]]:
    """Triton backend vs the float64 reference through the public API; one row per case."""
    import torch

    import dra_kernels
    from dra_kernels import reference
    from dra_kernels.api import factorize_group_ids

    rows = []
    layouts = _layouts(device, small)
    dims = (3, 16) if small else (384, 1000)
    plan = []
    for name in layouts:
        full = name == "ragged_shuffled"
        for dtype in ALL_DTYPES if full else ("bfloat16", "float32"):
            for mode in MODES if full else ("adjust", "advantage_std"):
                plan.append((name, dtype, mode, dims[0], False))
    # NOTE: each case compiles a kernel variant (about a second each on the GPU machine), so the
    # wider D is checked where it matters: both precisions of the Gram path and the linear path.
    for dtype in ("bfloat16", "float32", "float64"):
        plan.append(("ragged_shuffled", dtype, "advantage_std", dims[1], False))
    for dtype in ("float32", "float64"):
        for mode in ("smi", "adjust"):
            plan.append(("ragged_shuffled", dtype, mode, dims[0], True))
    # the same ragged ids through the counting-sort buckets (scan mode is the default at this N)
    for dtype in ("bfloat16", "float32", "float64"):
        for mode in ("adjust", "advantage_std"):
            plan.append(("ragged_shuffled_buckets", dtype, mode, dims[0], False))
    plan.append(("ragged_shuffled_strided", "float32", "adjust", dims[0], False))
    plan.append(("ragged_shuffled_strided", "bfloat16", "advantage_std", dims[0], False))

    for seed, (name, dtype_name, mode, dim, extreme) in enumerate(plan):
        strided = name.endswith("_strided")
        buckets = name.endswith("_buckets")
        spec = layouts[name.removesuffix("_strided").removesuffix("_buckets")]
        ids, hint = spec["ids"], spec["num_groups"]
        n = len(ids)
        row = {
            "layout": name,
            "dtype": dtype_name,
            "mode": mode,
            "dim": dim,
            "n": n,
            "extreme": extreme,
        }
        try:
            dtype = getattr(torch, dtype_name)
            if strided:
                wide = _embeddings(n, 2 * dim, dtype, device, seed=seed)
                embeddings = wide[:, ::2]
                rewards = torch.randn(2 * n, dtype=torch.float32, device=device)[::2]
            else:
                embeddings = _embeddings(n, dim, dtype, device, seed=seed, extreme=extreme)
                rewards = torch.randn(n, dtype=torch.float32, device=device)
            groups = factorize_group_ids(ids, n, device, hint)
            e64, r64 = embeddings.double(), rewards.double()
            smi = reference.smi_scores(e64, groups.codes, groups.num_groups)
            adjusted = reference.adjust_rewards(r64, e64, groups.codes, groups.num_groups)
            kwargs = {"backend": "triton", "num_groups": hint}
            with nan_poisoned_empty(), _forced_buckets(buckets):
                if mode == "smi":
                    out = dra_kernels.smi_scores(embeddings, ids, **kwargs)
                    expected = smi
                elif mode == "adjust":
                    out = dra_kernels.adjust_rewards(rewards, embeddings, ids, **kwargs)
                    expected = adjusted
                else:
                    scale = mode.removeprefix("advantage_")
                    out = dra_kernels.dra_advantages(
                        rewards, embeddings, ids, scale=scale, **kwargs
                    )
                    expected = reference.group_advantages(
                        adjusted, groups.codes, groups.num_groups, scale
                    )
            out = torch.as_tensor(out).to(device)
            tol = TOLERANCES["float64" if out.dtype == torch.float64 else "float32"]
            atol = tol["atol"] * (ADVANTAGE_ATOL_FACTOR if mode.startswith("advantage") else 1)
            diff = (out.double() - expected).abs()
            bound = atol + tol["rtol"] * expected.abs()
            bad = ~(diff <= bound)  # NaN counts as bad
            row.update(
                {
                    "out_dtype": str(out.dtype).removeprefix("torch."),
                    "max_abs_err": float(diff.nan_to_num(math.inf).max()),
                    "max_rel_err": float(
                        (diff / expected.abs().clamp(min=1e-30)).nan_to_num(math.inf).max()
                    ),
                    "mismatches": int(bad.sum()),
                    "nan": int(out.isnan().sum()),
                    "ok": not bool(bad.any()),
                }
            )
            if bad.any():
                where = torch.nonzero(bad).flatten()[:5].tolist()
                row["first_mismatches"] = [
                    {"row": i, "out": float(out[i]), "expected": float(expected[i])} for i in where
                ]
        except Exception as exc:
            row.update({"ok": False, "error": _describe(exc)})
        rows.append(row)
    return rows


def determinism(device, *, small: bool) -> dict[str, Any]:
    """Bitwise-equal repeats on a large unsorted ragged batch (no atomics in the kernel)."""
    import torch

    import dra_kernels

    g = torch.Generator(device="cpu").manual_seed(7)
    groups = 50 if small else 4096
    sizes = torch.randint(1, 8 if small else 64, (groups,), generator=g)
    ids = torch.arange(groups).repeat_interleave(sizes)
    ids = ids[torch.randperm(ids.numel(), generator=g)].to(device)
    n = ids.numel()
    detail = {"n": n, "groups": groups}
    ok = True
    for dtype in (torch.bfloat16, torch.float32):
        e = _embeddings(n, 16 if small else 768, dtype, device, seed=3)
        r = torch.rand(n, device=device)
        for name, fn in (
            (
                "adjust",
                lambda e=e, r=r: dra_kernels.adjust_rewards(
                    r, e, ids, backend="triton", num_groups=groups
                ),
            ),
            (
                "advantages",
                lambda e=e, r=r: dra_kernels.dra_advantages(
                    r, e, ids, backend="triton", num_groups=groups
                ),
            ),
        ):
            first = fn()
            same = all(torch.equal(first, fn()) for _ in range(3))
            detail[f"{name}_{str(dtype).removeprefix('torch.')}"] = same
            ok = ok and same
    return {"ok": ok, "detail": detail}


def _graph_inputs(device, seed: int, groups: int = 256, size: int = 16, dim: int = 768):
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    n = groups * size
    ids = torch.arange(groups).repeat_interleave(size)[torch.randperm(n, generator=g)]
    e = torch.randn(n, dim, generator=g).to(torch.bfloat16)
    r = torch.rand(n, generator=g)
    return r.to(device), e.to(device), ids.to(device), groups


def no_sync(device) -> dict[str, Any]:
    """No host synchronisation with ``num_groups``: sync debug mode "error" raises on any."""
    import torch

    import dra_kernels

    r, e, ids, groups = _graph_inputs(device, seed=11)
    dra_kernels.adjust_rewards(r, e, ids, backend="triton", num_groups=groups)
    dra_kernels.dra_advantages(r, e, ids, backend="triton", num_groups=groups)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        dra_kernels.adjust_rewards(r, e, ids, backend="triton", num_groups=groups)
        dra_kernels.dra_advantages(r, e, ids, backend="triton", num_groups=groups)
        dra_kernels.adjust_rewards(r, e, ids, num_groups=groups)  # backend="auto"
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    return {
        "ok": True,
        "detail": "adjust_rewards and dra_advantages with num_groups ran under "
        "set_sync_debug_mode('error')",
    }


def cuda_graph(device) -> dict[str, Any]:
    """Capture adjust_rewards + dra_advantages in a CUDA graph, replay on new data, compare."""
    import torch

    import dra_kernels
    from dra_kernels.benchmark import python_latency

    r, e, ids, groups = _graph_inputs(device, seed=12)

    def step():
        return (
            dra_kernels.adjust_rewards(r, e, ids, backend="triton", num_groups=groups),
            dra_kernels.dra_advantages(r, e, ids, backend="triton", num_groups=groups),
        )

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    r2, e2, ids2, _ = _graph_inputs(device, seed=13)
    r.copy_(r2)
    e.copy_(e2)
    ids.copy_(ids2)
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    same = [bool(torch.equal(a, b)) for a, b in zip(captured, eager, strict=True)]
    replay = python_latency(graph.replay, device)
    eager_latency = python_latency(step, device)
    return {
        "ok": all(same),
        "detail": {
            "n": r.numel(),
            "groups": groups,
            "bitwise_equal_to_eager": same,
            "replay_p50_us": replay.p50,
            "eager_p50_us": eager_latency.p50,
        },
    }


def compile_fullgraph(device) -> dict[str, Any]:
    """``torch.compile(fullgraph=True)`` of functions calling the API with ``num_groups=K``."""
    import torch

    import dra_kernels

    r, e, ids, groups = _graph_inputs(device, seed=14)
    detail: dict[str, Any] = {}
    ok = True
    for backend in ("triton", "auto"):

        def step(r, e, ids, backend=backend):
            adjusted = dra_kernels.adjust_rewards(r, e, ids, backend=backend, num_groups=groups)
            advantages = dra_kernels.dra_advantages(r, e, ids, backend=backend, num_groups=groups)
            return adjusted * 2.0, advantages

        torch._dynamo.reset()
        try:
            compiled = torch.compile(step, fullgraph=True)
            begin = time.perf_counter()
            got = compiled(r, e, ids)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - begin
            want = step(r, e, ids)
            same = [bool(torch.equal(a, b)) for a, b in zip(got, want, strict=True)]
            close = [float((a - b).abs().max()) for a, b in zip(got, want, strict=True)]
            detail[backend] = {
                "compile_s": round(compile_s, 2),
                "bitwise_equal": same,
                "max_abs_diff": close,
            }
            ok = ok and max(close) <= 1e-5
        except Exception as exc:
            detail[backend] = {"error": _describe(exc)}
            ok = False
    return {"ok": ok, "detail": detail}


# ----------------------------------------------------------------------------- driver


def _check_section(results, name, fn, out_dir, flush) -> None:
    begin = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:
        value = {"ok": False, "error": _describe(exc)}
        results.setdefault("errors", {})[name] = traceback.format_exc(limit=6)
    results.setdefault("checks", {})[name] = value
    results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - begin, 2)
    print(
        f"[gpu_check] {name}: ok={value.get('ok')} ({time.perf_counter() - begin:.1f} s)",
        flush=True,
    )
    flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. $OUT)")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: a dry run of the checks through the Triton interpreter",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=270.0,
        help="whole-script budget; the timing grid stops at what is left",
    )
    parser.add_argument("--quick", action="store_true", help="a reduced timing grid")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        # NOTE: must be set before triton is first imported.
        os.environ["TRITON_INTERPRET"] = "1"
    started = time.perf_counter()

    import torch

    from dra_kernels import benchmark as bench

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("[gpu_check] no CUDA device", file=sys.stderr)
        return 2
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"meta": bench.environment(device)}
    results["meta"]["script"] = "benchmarks/gpu_check.py"
    results["meta"]["timer"] = (
        "CUDA events per call, L2 flushed before each call, after warm-up"
        if device.type == "cuda"
        else "time.perf_counter per call, after warm-up"
    )

    def flush() -> None:
        bench._write_json(results, out_dir / "bench.json")

    flush()
    small = device.type == "cpu"
    section_begin = time.perf_counter()
    try:
        rows = correctness(device, small=small)
        bad = [r for r in rows if not r.get("ok")]
        results["correctness"] = rows
        value = {
            "ok": not bad,
            "detail": f"{len(rows) - len(bad)}/{len(rows)} cases pass"
            + (
                f"; failing: {[(r['layout'], r['dtype'], r['mode']) for r in bad][:8]}"
                if bad
                else ""
            ),
        }
    except Exception as exc:
        value = {"ok": False, "error": _describe(exc)}
        results.setdefault("errors", {})["correctness"] = traceback.format_exc(limit=6)
    results.setdefault("checks", {})["correctness"] = value
    results.setdefault("section_seconds", {})["correctness"] = round(
        time.perf_counter() - section_begin, 2
    )
    print(f"[gpu_check] correctness: {value}", flush=True)
    flush()
    _check_section(results, "determinism", lambda: determinism(device, small=small), out_dir, flush)
    if device.type == "cuda":
        _check_section(results, "no_host_sync", lambda: no_sync(device), out_dir, flush)
        _check_section(results, "cuda_graph", lambda: cuda_graph(device), out_dir, flush)
        _check_section(
            results, "compile_fullgraph", lambda: compile_fullgraph(device), out_dir, flush
        )

    op_shapes = {"shapes": ((4, 4),), "dim": 16} if small else {}
    bench._section(
        results, "custom_op", lambda: bench.custom_op_overhead(device, **op_shapes), out_dir
    )
    grid_args = ["--device", args.device, "--out", str(out_dir)]
    if args.quick or device.type == "cpu":
        grid_args.append("--quick")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    grid = parser.parse_args(grid_args)
    settings = bench._grid_settings(grid, device)
    results["meta"]["settings"] = {
        k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()
    }
    copy_bytes = (1 << 30) if device.type == "cuda" else (64 << 20)
    copy = bench._section(
        results, "copy_bandwidth", lambda: bench.measure_copy_bandwidth(device, copy_bytes), out_dir
    )
    gbps = copy["gbps"] if copy else float("nan")
    # NOTE: keep ~25 s for the latency section and the outputs after the grid.
    deadline = started + args.budget_s - 25.0
    bench.grid_section(
        results, out_dir, device=device, copy_gbps=gbps, deadline=deadline, **settings
    )
    bench._section(
        results,
        "latency",
        lambda: bench.small_batch_latency(device, settings["impls"], shapes=settings["shapes"]),
        out_dir,
    )
    if device.type == "cuda":
        from dra_kernels._triton.launch import fast_path_state

        results["meta"]["triton_fast_launch"] = fast_path_state()
    bench.write_outputs(results, out_dir)
    print(bench.format_table(results))
    for name, target in results["targets"].items():
        print(f"[gpu_check] target {name}: {target['status']}")
    print(f"[gpu_check] done in {time.perf_counter() - started:.1f} s; wrote {out_dir}")
    checks_ok = all(c.get("ok") for c in results.get("checks", {}).values())
    return 0 if checks_ok and not results.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
