"""Launching this package's kernels through Triton's public interface (docs/performance.md,
"Kernel configuration", has the launch overhead an H200 measured)."""

from __future__ import annotations

from typing import Any

__all__ = ["launch"]


def launch(
    fn, grid: tuple[int, ...], args: tuple, constexprs: dict[str, Any], **options: Any
) -> Any:
    """``fn[grid](...)`` with ``args`` (the kernel's run-time arguments, in order) bound by name, so
    constexprs may sit anywhere in the signature; ``options`` are Triton's (``num_warps``,
    ``num_stages``). The CPU interpreter's kernels do not list their parameters: there the
    run-time arguments go first, which this package's kernels all allow."""
    params = getattr(fn, "params", None)
    if params is None:
        return fn[grid](*args, **constexprs, **options)
    names = [param.name for param in params if not param.is_constexpr]
    return fn[grid](**dict(zip(names, args, strict=True)), **constexprs, **options)
