"""Public entry points and their one dispatch.

Caller's inputs -> checked tensors and dense int64 codes (:mod:`dra_kernels.inputs`) ->
:func:`_dispatch`: the fused Triton kernel, the torch backend or a measure -> the caller's kind.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from dra_kernels import _triton, inputs, measures, torch_backend
from dra_kernels._words import keywords_of, show_keywords_of
from dra_kernels.inputs import (
    EMBEDDING_DTYPES,
    Backend,
    Groups,
    Measure,
    Scale,
    factorize_group_ids,
    resolve_backend,
)
from dra_kernels.reference import DEFAULT_EPS, DEFAULT_MIN_DENOMINATOR, adjust_from_smi

__all__ = [
    "Backend",
    "Groups",
    "adjust_rewards",
    "dra_advantages",
    "factorize_group_ids",
    "group_advantages",
    "resolve_backend",
    "smi_scores",
]


class _Prepared(NamedTuple):
    rewards: torch.Tensor | None
    embeddings: torch.Tensor | None
    groups: Groups
    backend: str
    out_dtype: torch.dtype
    grad: bool = False  # rewards require grad: the Triton backend then fuses only the SMI


def _common_call(
    rewards: Any, embeddings: Any, group_ids: Any, backend: str, num_groups: Any
) -> str | None:
    """The backend of a common call, or None: tensors on one CPU or CUDA device that the general
    checks would pass unchanged, integer ids with ``num_groups``, rewards needing no gradient. A few
    attribute reads: at N <= 1024 the general checks cost as much as the computation."""
    if (
        type(num_groups) is not int
        or num_groups < 0
        or type(embeddings) is not torch.Tensor
        or type(group_ids) is not torch.Tensor
        or torch.compiler.is_compiling()  # the general path is the one proven under dynamo
    ):
        return None
    device = embeddings.device
    if (
        embeddings.layout is not torch.strided
        or embeddings.is_nested
        or embeddings.ndim != 2
        or embeddings.dtype not in EMBEDDING_DTYPES
        or embeddings.is_neg()
        or group_ids.layout is not torch.strided
        or group_ids.ndim != 1
        or group_ids.dtype not in (torch.int32, torch.int64)
        or group_ids.device != device
        or group_ids.is_neg()
    ):
        return None
    n, d = embeddings.shape
    if d == 0 or group_ids.shape[0] != n or num_groups > max(n, 1):
        return None
    if rewards is not None and (
        type(rewards) is not torch.Tensor
        or rewards.requires_grad
        or inputs.traced(rewards)
        or rewards.layout is not torch.strided
        or rewards.is_neg()
        or rewards.ndim != 1
        or rewards.dtype not in EMBEDDING_DTYPES
        or rewards.device != device
        or rewards.shape[0] != n
    ):
        return None
    if device.type == "cpu":
        return "torch" if backend in ("auto", "torch") else None
    if (
        device.type == "cuda"
        and backend in ("auto", "triton")
        and d <= _triton.MAX_D
        and _triton.unavailable_reason(device) is None
    ):
        return "triton"
    return None


def _prepare(
    rewards: Any, embeddings: Any, group_ids: Any, backend: str, num_groups: int | None
) -> _Prepared:
    """Checked inputs, dense codes (int64) and the backend of one call."""
    chosen = _common_call(rewards, embeddings, group_ids, backend, num_groups)
    if chosen is not None:
        r, grad = rewards, False
        e = embeddings.detach() if embeddings.requires_grad else embeddings
        codes = group_ids if group_ids.dtype is torch.int64 else group_ids.to(torch.int64)
        size = None
        if chosen == "torch":
            # NOTE: codes 0, 0, 1, 1, ... (the usual batch): in range, the layout the CPU path uses.
            size = torch_backend.contiguous_group_size(codes, num_groups)
            if size is None:
                inputs.check_code_range(codes, num_groups)
        # NOTE: on CUDA the kernel checks the codes itself (out-of-range rows come out NaN).
        groups = Groups(codes, num_groups, size)
    else:
        r, e, device = inputs.checked_data(rewards, embeddings)
        n = (r if e is None else e).shape[0]
        chosen = resolve_backend(backend, device, None if e is None else e.shape[1])
        grad = inputs.traced(r)
        transform = inputs.func_transform(r)
        if chosen == "triton" and transform is not None:
            # NOTE: a kernel fails on a torch.func transform's tensors: the torch backend runs.
            if backend == "triton":
                raise ValueError(
                    f"backend='triton' does not run inside torch.func's {transform}: the Triton "
                    "kernel is opaque to the transform; use backend='auto' or 'torch'"
                )
            chosen = "torch"
        # NOTE: on CUDA the kernel checks the codes itself (an assertion would add launches),
        # unless rewards require grad: torch ops then index by the codes too.
        check = not (chosen == "triton" and device.type == "cuda" and not grad)
        groups = inputs.compact(
            factorize_group_ids(group_ids, n, device, num_groups, check_range=check)
        )
    dtypes = [t.dtype for t in (r, e) if t is not None and t.is_floating_point()]
    return _Prepared(r, e, groups, chosen, inputs.compute_dtype(*dtypes), grad)


_KERNEL: list[Any] = []  # NOTE: not functools.cache, which torch.compile warns about


def _kernel() -> Any:
    """The fused Triton kernel's entry point (imports triton: only when it is used)."""
    if not _KERNEL:
        from dra_kernels._triton.ops import dra_forward

        _KERNEL.append(dra_forward)
    return _KERNEL[0]


def _smi(p: _Prepared, measure: str, eta: float, lam: float, backend: str) -> torch.Tensor:
    """SMI in the compute dtype, not fused with anything: by a measure, the Triton kernel or the
    torch backend."""
    e, codes, k = p.embeddings, p.groups.codes, p.groups.num_groups
    assert e is not None
    if measure == "facility_location" and backend == "triton":
        if e.dtype == torch.float64:
            raise ValueError(
                "the facility-location Triton kernel computes in float32 (Triton has no float64 "
                "tensor-core product); float64 embeddings need backend='torch' or 'auto'"
            )
        from dra_kernels._triton.ops import facility_location_smi  # imports triton

        return facility_location_smi(e, codes, k, eta).to(p.out_dtype)
    if measure != "graph_cut":
        return measures.smi_by_measure(e, codes, k, measure, eta=eta, lam=lam, dtype=p.out_dtype)
    if p.backend == "triton":
        return _kernel()(None, e, codes, k, mode="smi", min_denominator=DEFAULT_MIN_DENOMINATOR,
                         out_dtype=p.out_dtype)  # fmt: skip
    return torch_backend.smi_scores(e, codes, k, group_size=p.groups.group_size)


def _dispatch(
    op: str,
    rewards: Any,
    embeddings: Any,
    group_ids: Any,
    *,
    backend: Any,
    num_groups: int | None,
    min_denominator: Any = DEFAULT_MIN_DENOMINATOR,
    scale: Any = "std",
    eps: Any = DEFAULT_EPS,
    measure: Any = "graph_cut",
    eta: Any = measures.DEFAULT_ETA,
    lam: Any = measures.DEFAULT_LAM,
) -> Any:
    """The public function ``op``: the options checked in one order (scale, eps, min_denominator,
    measure), then the data and ids (:func:`_prepare`), one path, the caller's kind."""
    if op in ("group_advantages", "dra_advantages"):
        scale = inputs.check_scale(scale)
        eps = inputs.check_eps(eps, scale)
    if op in ("adjust_rewards", "dra_advantages"):
        min_denominator = inputs.check_min_denominator(min_denominator)
    if op != "group_advantages":
        measure, eta, lam = measures.check_measure(measure, eta, lam, backend)
    p = _prepare(rewards, embeddings, group_ids, backend, num_groups)
    codes, k = p.groups.codes, p.groups.num_groups
    if op == "smi_scores":
        return inputs.convert_out(_smi(p, measure, eta, lam, backend), embeddings)
    assert p.rewards is not None and (op == "group_advantages" or p.embeddings is not None)
    if op == "group_advantages":
        values = p.rewards.to(p.out_dtype)
    elif measure == "graph_cut" and p.backend == "triton" and not p.grad:
        mode = "adjust" if op == "adjust_rewards" else "advantage"
        out = _kernel()(p.rewards, p.embeddings, codes, k, mode=mode, out_dtype=p.out_dtype,
                        min_denominator=min_denominator, scale=scale, eps=eps)  # fmt: skip
        return inputs.convert_out(out, rewards)
    elif measure == "graph_cut" and p.backend == "torch":
        values = torch_backend.adjust_rewards(p.rewards, p.embeddings, codes, k, min_denominator,
                                              group_size=p.groups.group_size)  # fmt: skip
    else:
        # NOTE: kernels are opaque to autograd: with rewards that require grad one computes only
        # the SMI (a constant) and torch ops finish from the rewards (the fused values to rounding).
        values = adjust_from_smi(p.rewards, _smi(p, measure, eta, lam, backend), min_denominator)
    if op != "adjust_rewards":
        values = torch_backend.group_advantages(values, codes, k, scale, eps)
    return inputs.convert_out(values, rewards)


# ----------------------------------------------------------------------------- public API


def smi_scores(
    embeddings: Any,
    group_ids: Any,
    *,
    backend: Backend = "auto",
    num_groups: int | None = None,
    measure: Measure = "graph_cut",
    eta: float = measures.DEFAULT_ETA,
    lam: float = measures.DEFAULT_LAM,
) -> Any:
    """Submodular mutual information of each completion with the rest of its group.

    ``SMI_i = sum over j in group(i), j != i, of cos(e_i, e_j)`` (0 for a group of one; a zero
    embedding has cosine 0 with everything).

    Args:
        embeddings: ``[N, D]`` float16 / bfloat16 / float32 / float64 (torch, numpy or nested list).
        group_ids: ``[N]`` integer ids or hashable labels (the rule: :func:`factorize_group_ids`);
            rows of a group may be anywhere.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        num_groups: optional hint, see :func:`factorize_group_ids`.
        measure: ``"graph_cut"`` (the paper's, above), ``"facility_location"`` or ``"log_det"``
            (docs/measures.md; computed with torch: ``backend="triton"`` refuses them).
        eta: query magnification of ``facility_location`` and ``log_det`` (the rules:
            :func:`dra_kernels.measures.check_measure`).
        lam: ridge added to the similarity matrix by ``log_det``.

    Returns:
        ``[N]`` float32 (float64 for float64 embeddings), of the same kind as ``embeddings``;
        never requires grad (embeddings are used detached: DRA factors are constants).

    Example:
        >>> smi_scores([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0, 0, 0])
        [1.0, 1.0, 0.0]
    """
    return _dispatch("smi_scores", None, embeddings, group_ids, backend=backend,
                     num_groups=num_groups, measure=measure, eta=eta, lam=lam)  # fmt: skip


def adjust_rewards(
    rewards: Any,
    embeddings: Any,
    group_ids: Any,
    *,
    backend: Backend = "auto",
    num_groups: int | None = None,
    min_denominator: float = DEFAULT_MIN_DENOMINATOR,
    measure: Measure = "graph_cut",
    eta: float = measures.DEFAULT_ETA,
    lam: float = measures.DEFAULT_LAM,
) -> Any:
    """Diversity-aware reward adjustment: ``r_i / max(1 + SMI_i, min_denominator)``.

    Args:
        rewards: ``[N]`` real rewards (float or integer; booleans are refused).
        embeddings: ``[N, D]`` completion embeddings (any scale: rows are normalised).
        group_ids: ``[N]`` group of each completion (integers of any size, strings, tuples,
            other hashable values equal to themselves; see :func:`factorize_group_ids`).
        backend: ``"auto"`` (Triton on CUDA when installed, else torch), ``"torch"``, ``"triton"``.
        num_groups: optional hint, see :func:`factorize_group_ids` (no host sync; on CUDA the
            Triton kernel turns the rows of ids outside ``[0, num_groups)`` NaN).
        min_denominator: lower clamp of ``1 + SMI``, in (0, 1] (only reachable with negative
            cosines); bounds the amplification of any reward by ``1 / min_denominator``.
        measure: which SMI (see :func:`smi_scores`; default the paper's graph-cut).
        eta: query magnification of ``facility_location`` and ``log_det``.
        lam: ridge of ``log_det``.

    Non-finite inputs stay in their row (rewards) or group (embeddings; a group of one keeps its
    reward), unchecked on the host: docs/guarantees.md, "Numerics and layouts".

    Returns:
        ``[N]`` adjusted rewards in input order, of the kind of ``rewards`` (torch on its device,
        numpy, or a list), float32, or float64 when rewards or embeddings are float64. The
        result is differentiable in ``rewards`` (``1 / max(1 + SMI_i, min_denominator)`` per
        row, on both backends); embeddings are used detached: DRA factors are constants.

    Example:
        >>> adjust_rewards([1.0, 1.0, 1.0], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], ["a", "a", "a"])
        [0.5, 0.5, 1.0]
    """
    return _dispatch("adjust_rewards", rewards, embeddings, group_ids, backend=backend,
                     num_groups=num_groups, min_denominator=min_denominator, measure=measure,
                     eta=eta, lam=lam)  # fmt: skip


def group_advantages(
    rewards: Any,
    group_ids: Any,
    *,
    scale: Scale = "std",
    eps: float = DEFAULT_EPS,
    num_groups: int | None = None,
) -> Any:
    """GRPO (``scale="std"``) or DR.GRPO (``scale="none"``) advantages within each group.

    ``std``: ``(r - mean) / (std + eps)`` with the unbiased (``n - 1``) standard deviation, as
    TRL's GRPOTrainer; a group of one row gets advantage 0. ``none``: ``r - mean``.

    Args:
        rewards: ``[N]`` real rewards.
        group_ids: ``[N]`` group ids (see :func:`factorize_group_ids`).
        scale: ``"std"`` or ``"none"``.
        eps: added to the standard deviation.
        num_groups: optional hint, see :func:`factorize_group_ids`.

    Returns:
        ``[N]`` advantages of the kind of ``rewards``; differentiable in ``rewards`` (where a
        group's std is 0 its derivative is taken as 0, the limit, so gradients stay finite).

    Example:
        >>> group_advantages([1.0, 0.0, 5.0], ["a", "a", "b"], scale="none")
        [0.5, -0.5, 0.0]
    """
    return _dispatch("group_advantages", rewards, None, group_ids, backend="torch",
                     num_groups=num_groups, scale=scale, eps=eps)  # fmt: skip


def dra_advantages(
    rewards: Any,
    embeddings: Any,
    group_ids: Any,
    *,
    scale: Scale = "std",
    eps: float = DEFAULT_EPS,
    **options: Any,
) -> Any:
    """:func:`adjust_rewards` then :func:`group_advantages`, fused into one kernel on CUDA.

    Args:
        rewards: ``[N]`` real rewards, as in :func:`adjust_rewards`.
        embeddings: ``[N, D]`` completion embeddings.
        group_ids: ``[N]`` group of each completion.
        scale: ``"std"`` (GRPO) or ``"none"`` (DR.GRPO), as in :func:`group_advantages`.
        eps: added to the group standard deviation.
        **options: every keyword of :func:`adjust_rewards` (``backend``, ``num_groups``,
            ``min_denominator``, ``measure``, ``eta``, ``lam``), with its default: the one
            definition of those options (``inspect.signature`` and ``help()`` list them all).

    Returns:
        ``[N]`` advantages of the DRA-adjusted rewards, of the kind of ``rewards``;
        differentiable in ``rewards``, the DRA factors being constants.

    Raises:
        TypeError: a keyword :func:`adjust_rewards` does not take.

    Example:
        >>> dra_advantages([1.0, 1.0, 0.0], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [7, 7, 7],
        ...                scale="none")
        [0.16666666..., 0.16666666..., -0.33333333...]
    """
    options = keywords_of(adjust_rewards, "dra_advantages", options)
    return _dispatch(
        "dra_advantages", rewards, embeddings, group_ids, scale=scale, eps=eps, **options
    )


show_keywords_of(adjust_rewards, dra_advantages)
