"""The fused kernel as a torch.library custom op, so ``torch.compile(fullgraph=True)`` traces
through calls to it. In eager mode the op's dispatcher boundary is bypassed (the launcher is called
directly), as its overhead is comparable to the whole kernel for small batches."""

from __future__ import annotations

import threading
from typing import Any

import torch

from dra_kernels._triton import facility, forward
from dra_kernels._triton.forward import MODES

__all__ = ["dra_forward", "facility_location_smi"]

# NOTE: Triton's CPU interpreter (TRITON_INTERPRET=1) patches triton.language globally while it
# runs a kernel, so two threads interpreting at once fail; CPU launches are serialised. CUDA
# launches take no lock.
_INTERPRETER_LOCK = threading.Lock()


def _launch(*args, **kwargs) -> torch.Tensor:
    if args[1].device.type != "cpu":
        return forward.dra_forward(*args, **kwargs)
    with _INTERPRETER_LOCK:
        return forward.dra_forward(*args, **kwargs)


_SCALES = ("std", "none")


@torch.library.custom_op("dra_kernels::dra_forward", mutates_args=())
def _dra_forward_op(
    rewards: torch.Tensor,
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    mode: int,
    min_denominator: float,
    scale: int,
    eps: float,
    float64: bool,
) -> torch.Tensor:
    return _launch(
        rewards,
        embeddings,
        codes,
        num_groups,
        mode=MODES[mode],
        min_denominator=min_denominator,
        scale=_SCALES[scale],
        eps=eps,
        out_dtype=torch.float64 if float64 else torch.float32,
    )


@_dra_forward_op.register_fake
def _(rewards, embeddings, codes, num_groups, mode, min_denominator, scale, eps, float64):
    dtype = torch.float64 if float64 else torch.float32
    return embeddings.new_empty(embeddings.shape[0], dtype=dtype)


def dra_forward(
    rewards: torch.Tensor | None,
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    **options: Any,
) -> torch.Tensor:
    """:func:`dra_kernels._triton.forward.dra_forward` with the default configuration (the same
    arguments but ``config`` and ``buckets``), through the custom op when compiling."""
    if not torch.compiler.is_compiling():
        return _launch(rewards, embeddings, codes, num_groups, **options)
    out_dtype = options.get("out_dtype", torch.float32)
    if rewards is None:
        rewards = embeddings.new_empty(0, dtype=out_dtype)
    return _dra_forward_op(
        rewards,
        embeddings,
        codes,
        num_groups,
        MODES.index(options["mode"]),
        options["min_denominator"],
        _SCALES.index(options.get("scale", "std")),
        options.get("eps", 1e-4),
        out_dtype == torch.float64,
    )


def facility_location_smi(embeddings: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """:func:`dra_kernels._triton.facility.facility_location_smi`, serialised on the CPU
    interpreter like the fused kernel. Eager only (no custom op yet)."""
    if embeddings.device.type != "cpu":
        return facility.facility_location_smi(embeddings, *args, **kwargs)
    with _INTERPRETER_LOCK:
        return facility.facility_location_smi(embeddings, *args, **kwargs)
