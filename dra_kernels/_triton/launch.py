"""Low-overhead launches of this package's Triton kernels on CUDA.

``kernel[grid](...)`` costs about 20 us of Python per call on the GPU machines we measured
(binding and specialising every argument, building a cache key), more than the whole kernel for
small batches. :func:`launch` does the same launch through the compiled kernel's handle: the first
call with a given *specialisation* goes through Triton (compiling if needed); later calls with the
same specialisation call the compiled kernel's ``run`` directly.

The specialisation key is at least as fine as Triton's own: each tensor's dtype and whether its
address is 16-byte aligned; each integer's ``== 1``, divisibility by 16 and 32/64-bit width; the
constexprs and launch options; the device. So a cached handle is only reused for arguments Triton
itself would have sent to the same binary.

How ``run`` takes its arguments changed between Triton releases (3.2: the non-constexpr values;
3.3 and later: every parameter, constexprs included). The convention is not guessed from the
version: the first time, a tiny kernel that writes its arguments back is launched both ways and
compared; if neither matches exactly, every launch goes through Triton as usual. Launch hooks
(profilers) also send launches through Triton, so they see every launch.
``DRA_KERNELS_FAST_LAUNCH=0`` in the environment turns the fast path off.

NOTE: measured on an H200 before this path existed (benchmarks/results/h200-2026-11-27): a bare
Triton launch of a 3-argument kernel cost 19.6 us of wall-clock time per call, the whole
``adjust_rewards`` call 60-80 us at N <= 2048. The fast path itself has not been timed on a GPU.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["launch", "fast_path_state"]

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"convention": None, "checked": False, "why": "not checked yet"}
_CACHE: dict[tuple, Any] = {}


@triton.jit
def _echo_kernel(out_ptr, a, b, C: tl.constexpr, x, D: tl.constexpr):
    # NOTE: `+ zeros`, not `.to()`: an integer argument equal to 1 arrives as a constexpr.
    zero = tl.zeros([], dtype=tl.float32)
    tl.store(out_ptr + 0, zero + a)
    tl.store(out_ptr + 1, zero + b)
    tl.store(out_ptr + 2, zero + C)
    tl.store(out_ptr + 3, zero + x)
    tl.store(out_ptr + 4, zero + D)


def fast_path_state() -> dict[str, Any]:
    """Whether launches bypass Triton's dispatch, and why not (for benchmarks and bug reports)."""
    return dict(_STATE)


def _hook_active(hook: Any) -> bool:
    # NOTE: Triton >= 3.5 keeps each hook as a HookChain object that is never None; it is active
    # only when something was added to it.
    return hook is not None and bool(getattr(hook, "calls", True))


_RUNTIME = getattr(getattr(triton, "knobs", None), "runtime", None)  # Triton >= 3.4


def _hooks_set() -> bool:
    runtime = _RUNTIME
    if runtime is not None:
        return _hook_active(getattr(runtime, "launch_enter_hook", None)) or _hook_active(
            getattr(runtime, "launch_exit_hook", None)
        )
    compiled = getattr(getattr(triton, "compiler", None), "CompiledKernel", None)
    return _hook_active(getattr(compiled, "launch_enter_hook", None))


def _specs(args: tuple) -> list[Any]:
    """What Triton specialises on in each argument: an integer's ``== 1``, divisibility by 16
    and 32-bit range; a tensor's dtype and 16-byte alignment; a bool's value; nothing for a
    float (always float32)."""
    # NOTE: one loop, not a function per argument: the main kernel has 17 arguments and this
    # runs on every launch (about 1.8 us instead of 2.2 on the development machine's CPU).
    specs = []
    for value in args:
        kind = type(value)
        if kind is torch.Tensor:
            specs.append((value.dtype, not value.data_ptr() & 15))
        elif kind is int:
            specs.append((value == 1, not value & 15, -(2**31) <= value < 2**31))
        elif kind is float:
            specs.append(0)
        elif kind is bool:
            specs.append(value)
        else:
            specs.append((kind, value))
    return specs


def _through_triton(fn, grid, args: tuple, constexprs: dict[str, Any], **options: Any) -> Any:
    """Triton's own launch; arguments by name where the kernel lists its parameters, so
    constexprs may sit anywhere in the signature (the CPU interpreter's kernels do not list them:
    there the run-time arguments go first, which this package's kernels all allow)."""
    params = getattr(fn, "params", None)
    if params is None:
        return fn[grid](*args, **constexprs, **options)
    names = [param.name for param in params if not param.is_constexpr]
    return fn[grid](**dict(zip(names, args, strict=True)), **constexprs, **options)


def _values(fn, args: tuple, constexprs: dict[str, Any], convention: str) -> list[Any]:
    if convention == "runtime":
        return list(args)
    values, it = [], iter(args)
    for param in fn.params:
        values.append(constexprs[param.name] if param.is_constexpr else next(it))
    return values


def _trailing(fn, constexprs: dict[str, Any], convention: str) -> tuple | None:
    """What follows the run-time arguments in ``run``'s argument list, when that does not depend
    on them: nothing (convention "runtime"), or the constexprs in order when they all come after
    the run-time parameters (as in this package's kernels); else None (see :func:`_values`)."""
    if convention == "runtime":
        return ()
    kinds = [param.is_constexpr for param in fn.params]
    if kinds != sorted(kinds):  # a constexpr before a run-time parameter
        return None
    return tuple(constexprs[param.name] for param in fn.params if param.is_constexpr)


_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # what Triton itself calls


def _stream_of(device: torch.device) -> int:
    if _RAW_STREAM is not None:
        return _RAW_STREAM(device.index)
    return torch.cuda.current_stream(device).cuda_stream


def _run(compiled, grid: tuple[int, ...], values: Any, device: torch.device) -> None:
    g = (*grid, 1, 1)
    compiled.run(
        g[0], g[1], g[2], _stream_of(device), compiled.function, compiled.packed_metadata,
        None, None, None, *values,
    )  # fmt: skip


def _check_convention(device: torch.device) -> None:
    """Find how this Triton's compiled ``run`` takes arguments, by launching a tiny kernel."""
    _STATE["checked"] = True
    if os.environ.get("DRA_KERNELS_FAST_LAUNCH", "1") == "0":
        _STATE["why"] = "turned off by DRA_KERNELS_FAST_LAUNCH=0"
        return
    out = torch.zeros(5, device=device)
    args, constexprs = (out, 1, 5, 7.5), {"C": 11, "D": 13}
    try:
        compiled = _through_triton(_echo_kernel, (1,), args, constexprs)
        want = out.clone()
        for convention in ("all", "runtime"):
            out.zero_()
            try:
                _run(compiled, (1,), _values(_echo_kernel, args, constexprs, convention), device)
            except TypeError:
                continue
            if torch.equal(out, want):
                _STATE.update(convention=convention, why=None)
                return
        _STATE["why"] = "no argument convention reproduced Triton's own launch"
    except Exception as exc:  # any failure: launch through Triton
        _STATE["why"] = f"{type(exc).__name__}: {exc}"


def launch(
    fn,
    grid: tuple[int, ...],
    args: tuple,
    constexprs: dict[str, Any],
    *,
    num_warps: int,
    num_stages: int,
    static_key: Any = None,
) -> None:
    """``fn[grid](*args, **constexprs, num_warps=..., num_stages=...)``, cheaper when it can be.

    ``args`` are the kernel's non-constexpr arguments in order; ``constexprs`` all its constexprs.
    ``static_key``: a hashable that determines ``constexprs`` and the options (saves hashing them).
    """
    device = args[0].device
    # NOTE: Triton launches on the current device; the fast path only where that is the data's.
    if device.type != "cuda" or _hooks_set() or device.index != torch.cuda.current_device():
        _through_triton(fn, grid, args, constexprs, num_warps=num_warps, num_stages=num_stages)
        return
    if not _STATE["checked"]:
        if torch.cuda.is_current_stream_capturing():  # the check synchronises: not now
            _through_triton(fn, grid, args, constexprs, num_warps=num_warps, num_stages=num_stages)
            return
        with _LOCK:
            if not _STATE["checked"]:
                _check_convention(device)
    convention = _STATE["convention"]
    if static_key is None:
        static_key = (tuple(constexprs.items()), num_warps, num_stages)
    key = (fn, device.index, static_key, *_specs(args))
    entry = _CACHE.get(key) if convention is not None else None
    if entry is None:
        compiled = _through_triton(
            fn, grid, args, constexprs, num_warps=num_warps, num_stages=num_stages
        )
        if convention is not None and compiled is not None and hasattr(compiled, "run"):
            _CACHE[key] = (compiled, _trailing(fn, constexprs, convention))
        return
    compiled, trailing = entry
    if trailing is None:
        _run(compiled, grid, _values(fn, args, constexprs, convention), device)
    else:
        _run(compiled, grid, (*args, *trailing), device)
