"""The DRA implementations the benchmarks compare, and the inputs they are timed on.

============== ===================================================================================
``triton``     the fused kernel through the public API (``adjust_rewards(backend="triton")``)
``advantages`` ``dra_advantages(backend="triton")``: adjustment and GRPO advantages, one kernel
``torch``      the eager torch backend (``adjust_rewards(backend="torch")``)
``compile``    ``torch.compile`` of :func:`dra_kernels.torch_backend.adjust_rewards`
``naive``      eager torch as usually written: normalize, bmm of each group, sum (equal groups;
               shuffled ids are sorted first and scattered back)
``naive_compile`` ``torch.compile`` of ``naive``
``loop``       a Python loop over groups (only for shapes with few groups: it is slow)
============== ===================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dra_kernels import reference, torch_backend
from dra_kernels.api import adjust_rewards, dra_advantages

__all__ = [
    "IMPLEMENTATIONS",
    "MIN_DENOMINATOR",
    "Case",
    "CaseInputs",
    "case_key",
    "implementation",
    "loop_adjust",
    "make_case_data",
    "make_group_codes",
    "naive_adjust",
]

IMPLEMENTATIONS = ("triton", "advantages", "torch", "compile", "naive", "naive_compile", "loop")
MIN_DENOMINATOR = reference.DEFAULT_MIN_DENOMINATOR


@dataclass(frozen=True)
class Case:
    """One point of the grid: ``groups x group_size`` rows of width ``dim``."""

    groups: int
    group_size: int
    dim: int
    dtype: str
    ids: str

    @property
    def n(self) -> int:
        return self.groups * self.group_size

    def floor_bytes(self) -> int:
        """Embeddings, float32 rewards and int64 ids read once, float32 output written once."""
        itemsize = torch.empty(0, dtype=getattr(torch, self.dtype)).element_size()
        return self.n * (self.dim * itemsize + 4 + 8 + 4)


def case_key(row: dict[str, Any]) -> tuple:
    """The case of a result row: ``(groups, group_size, dim, dtype, ids)``."""
    return (row["groups"], row["group_size"], row["dim"], row["dtype"], row["ids"])


@dataclass
class CaseInputs:
    """The tensors of one case, on the device."""

    rewards: torch.Tensor
    embeddings: torch.Tensor
    codes: torch.Tensor
    num_groups: int
    group_size: int
    ids_sorted: bool


def make_case_data(
    groups: int, group_size: int, dim: int, dtype: str, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rewards [N] float32 in [0, 1), embeddings [N, D] of dtype)``, standard normal rows."""
    generator = torch.Generator(device=device).manual_seed(seed)
    n = groups * group_size
    embeddings = torch.randn(n, dim, device=device, generator=generator).to(getattr(torch, dtype))
    rewards = torch.rand(n, device=device, generator=generator)
    return rewards, embeddings


def make_group_codes(
    groups: int, group_size: int, layout: str, device: torch.device, seed: int = 0
) -> torch.Tensor:
    """int64 ids of ``groups`` equal groups: ``"sorted"`` (0 0 .. 1 1 ..) or ``"shuffled"``."""
    codes = torch.arange(groups, device=device).repeat_interleave(group_size)
    if layout == "shuffled":
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        codes = codes[torch.randperm(codes.numel(), device=device, generator=generator)]
    return codes


def naive_adjust(
    rewards: torch.Tensor,
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    groups: int,
    group_size: int,
    ids_sorted: bool,
    min_denominator: float = MIN_DENOMINATOR,
) -> torch.Tensor:
    """Eager torch as usually written: normalize, one ``G x G`` bmm per group, row sums.

    Equal-sized groups only; unsorted ids are sorted first and the result scattered back.
    Computed in float32 like every other implementation.
    """
    order = None
    if not ids_sorted:
        order = torch.argsort(codes, stable=True)
        embeddings = embeddings.index_select(0, order)
        rewards = rewards.index_select(0, order)
    units = F.normalize(embeddings.float(), dim=1).view(groups, group_size, -1)
    similarity = torch.bmm(units, units.transpose(1, 2))
    smi = similarity.sum(2) - similarity.diagonal(dim1=1, dim2=2)
    adjusted = rewards.float().view(groups, group_size) / (1.0 + smi).clamp(min=min_denominator)
    adjusted = adjusted.reshape(-1)
    if order is None:
        return adjusted
    return torch.empty_like(adjusted).index_copy_(0, order, adjusted)


def loop_adjust(
    rewards: torch.Tensor,
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    min_denominator: float = MIN_DENOMINATOR,
) -> torch.Tensor:
    """A Python loop over groups, each with its own ``G x G`` similarity matrix."""
    out = torch.empty(rewards.shape[0], dtype=torch.float32, device=rewards.device)
    for group in range(num_groups):
        rows = torch.nonzero(codes == group).squeeze(1)
        units = F.normalize(embeddings.index_select(0, rows).float(), dim=1)
        similarity = units @ units.T
        smi = similarity.sum(1) - similarity.diagonal()
        out[rows] = rewards.index_select(0, rows).float() / (1.0 + smi).clamp(min=min_denominator)
    return out


def _reference_adjust(rewards, embeddings, codes, num_groups):
    return torch_backend.adjust_rewards(rewards, embeddings, codes, num_groups, MIN_DENOMINATOR)


_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}


def _compiled(name: str) -> Callable[..., torch.Tensor]:
    if name not in _COMPILED:
        # NOTE: default torch.compile (what a user gets): it recompiles per N, as the reference's
        # chunk loop depends on N. Raise the recompile limit so it never falls back to eager.
        for attr in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(torch._dynamo.config, attr):
                setattr(torch._dynamo.config, attr, max(getattr(torch._dynamo.config, attr), 256))
        target = _reference_adjust if name == "compile" else naive_adjust
        _COMPILED[name] = torch.compile(target)
    return _COMPILED[name]


def implementation(name: str, x: CaseInputs) -> Callable[[], torch.Tensor]:
    """A call of implementation ``name`` (see the module's table) on the inputs ``x``."""
    r, e, c, k = x.rewards, x.embeddings, x.codes, x.num_groups
    if name == "triton":
        return lambda: adjust_rewards(r, e, c, backend="triton", num_groups=k)
    if name == "advantages":
        return lambda: dra_advantages(r, e, c, backend="triton", num_groups=k)
    if name == "torch":
        return lambda: adjust_rewards(r, e, c, backend="torch", num_groups=k)
    if name == "compile":
        compiled = _compiled("compile")
        return lambda: compiled(r, e, c, k)
    if name == "naive":
        return lambda: naive_adjust(r, e, c, k, x.group_size, x.ids_sorted)
    if name == "naive_compile":
        compiled = _compiled("naive_compile")
        return lambda: compiled(r, e, c, k, x.group_size, x.ids_sorted)
    if name == "loop":
        return lambda: loop_adjust(r, e, c, k)
    raise ValueError(f"unknown implementation {name!r}; choose from {', '.join(IMPLEMENTATIONS)}")
