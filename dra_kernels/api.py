"""Public entry points: input checks, group-id factorisation, backend dispatch, output conversion.

Data flow: caller's rewards / embeddings / group ids (torch, numpy or lists) -> validated torch
tensors and dense int64 group codes -> :mod:`dra_kernels.reference` (``backend="torch"``) or the
fused kernel in :mod:`dra_kernels._triton` (``backend="triton"``) -> the result in the caller's row
order and kind.

Input policy (docs/guarantees.md lists each rule with the test that proves it):

- rewards and embeddings are both torch tensors on one device, or both host data (numpy arrays,
  lists); mixing raises TypeError. group_ids may be any ordered sequence whatever the data kind
  (integers, strings, tuples, a numpy object array of uid strings); sets, mappings, floats,
  booleans and NaN ids are refused.
- rewards may be floating or integer (converted exactly to the computation dtype); booleans are
  refused. Embeddings must be float16 / bfloat16 / float32 / float64, 2-D, with D >= 1.
- numpy arrays with negative strides, non-native byte order or read-only memory are copied, never
  refused; inputs are never written and outputs never share memory with them.
- N = 0 gives an empty result of the rewards' kind (an empty list ``[]`` is accepted as
  embeddings with no rows).
- Non-finite values are not checked (no host synchronisation on CUDA): a NaN / inf embedding makes
  every output of its group NaN, except in a group of one, whose SMI is an empty sum (0); a NaN /
  inf reward makes its own adjusted reward non-finite and its group's advantages NaN. Other groups
  are never affected.
- ``min_denominator`` lies in (0, 1]; ``eps`` is > 0 with ``scale="std"`` (eps = 0 would give 0 / 0
  for a group of equal rewards) and >= 0 with ``scale="none"`` (where it is unused).
- float32 advantages need squared deviations below float32's maximum (|r - mean| < 1.8e19).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from dra_kernels import _triton, reference
from dra_kernels.reference import DEFAULT_EPS, DEFAULT_MIN_DENOMINATOR

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

Backend = Literal["auto", "torch", "triton"]
Scale = Literal["std", "none"]

_EMBEDDING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Groups:
    """Dense group codes: ``codes[i]`` in ``[0, num_groups)`` is the group of row ``i``."""

    codes: torch.Tensor
    num_groups: int


# ----------------------------------------------------------------------------- conversion


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "torch"
    if isinstance(value, np.ndarray):
        return "numpy"
    return "sequence"


def _to_tensor(value: Any, name: str) -> torch.Tensor:
    """A torch view of ``value`` (no copy where possible; never mutated afterwards)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be a torch tensor, a numpy array or a sequence of numbers; "
                f"could not convert a {type(value).__name__}: {exc}"
            ) from None
    if array.dtype.kind not in "biuf" or (array.dtype.kind == "f" and array.dtype.itemsize > 8):
        raise TypeError(
            f"{name} must hold real numbers; got a numpy array of dtype {array.dtype}"
            if isinstance(value, np.ndarray)
            else f"{name} must hold real numbers; got a {type(value).__name__} of {array.dtype}"
        )
    return torch.from_numpy(_torch_compatible(array))


def _torch_compatible(array: np.ndarray) -> np.ndarray:
    """``array`` itself, or a copy where ``torch.from_numpy`` cannot share it."""
    # NOTE: torch.from_numpy refuses negative strides (a[::-1]) and non-native byte order, and
    # warns on read-only arrays; such arrays are copied (the caller's array is never written).
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.writeable or any(s < 0 for s in array.strides):
        array = np.array(array, copy=True)
    return array


def _check_rewards(rewards: torch.Tensor) -> None:
    if rewards.dtype == torch.bool:
        raise TypeError(
            "rewards must be real numbers, got a boolean tensor; convert it explicitly "
            "(for example rewards.float()) if 0/1 rewards are meant"
        )
    if rewards.is_complex() or not (rewards.is_floating_point() or _is_integer(rewards)):
        raise TypeError(f"rewards must be real numbers, got dtype {rewards.dtype}")
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")


def _check_embeddings(embeddings: torch.Tensor, n: int | None) -> None:
    if embeddings.dtype not in _EMBEDDING_DTYPES:
        raise TypeError(
            "embeddings must be float16, bfloat16, float32 or float64, "
            f"got dtype {embeddings.dtype}"
        )
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [N, D], got shape {tuple(embeddings.shape)}")
    if embeddings.shape[1] == 0:
        raise ValueError(
            f"embeddings must have D >= 1 columns, got shape {tuple(embeddings.shape)}"
        )
    if n is not None and embeddings.shape[0] != n:
        raise ValueError(
            f"embeddings has {embeddings.shape[0]} rows but rewards has {n} entries; "
            "they must describe the same completions"
        )


def _is_integer(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _check_kinds(**values: Any) -> torch.device:
    """Rewards and embeddings: both torch on one device, or neither torch. Returns the device."""
    torch_args = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    if torch_args and len(torch_args) != len(values):
        tensors = ", ".join(torch_args)
        others = ", ".join(
            f"{k} is a {type(v).__name__}" for k, v in values.items() if k not in torch_args
        )
        raise TypeError(
            f"{tensors} is a torch tensor but {others}; pass both as torch tensors "
            "(on the same device) or both as numpy arrays / lists"
        )
    devices = {k: v.device for k, v in torch_args.items()}
    if len(set(devices.values())) > 1:
        found = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"tensors must be on one device, got {found}")
    return next(iter(devices.values()), torch.device("cpu"))


def _convert_out(result: torch.Tensor, like: Any) -> Any:
    kind = _kind(like)
    if kind == "torch":
        return result
    if kind == "numpy":
        return result.cpu().numpy()
    return result.cpu().tolist()


# ----------------------------------------------------------------------------- group ids


def factorize_group_ids(
    group_ids: Any,
    n: int,
    device: torch.device | str = "cpu",
    num_groups: int | None = None,
    *,
    check_range: bool = True,
) -> Groups:
    """Dense codes ``0 .. K-1`` for any group ids.

    Args:
        group_ids: ``[n]`` integers (torch tensor, numpy array, list) or any sequence of hashable
            values (strings, tuples, uuid objects; verl passes a numpy object array of strings).
            Only equality matters: codes follow no particular order.
        n: expected length.
        device: where the codes go.
        num_groups: optional hint for integer ids already in ``[0, num_groups)``: they are used as
            codes directly, with no host synchronisation (for CUDA graphs and torch.compile).
            Groups with no rows are allowed. On CPU the range is checked; on CUDA it is checked
            by an asynchronous device assertion (unless ``check_range`` is false).
        check_range: with ``num_groups`` on CUDA, whether to add that assertion. The Triton
            backend turns it off: its kernel checks every code itself (rows with an
            out-of-range id come out NaN), which costs no extra launches.

    Returns:
        :class:`Groups` with int64 ``codes`` on ``device``.
    """
    device = torch.device(device)
    if isinstance(group_ids, torch.Tensor):
        ids = group_ids
        if ids.ndim != 1:
            raise ValueError(f"group_ids must be 1-D [N], got shape {tuple(ids.shape)}")
        if not _is_integer(ids):
            raise TypeError(
                f"group_ids as a tensor must have an integer dtype, got {ids.dtype}; "
                "floating or boolean ids are almost always a mistake"
            )
        if not _same_device(ids.device, device):
            raise ValueError(f"group_ids is on {ids.device} but the data is on {device}")
    else:
        ids = _host_integer_ids(group_ids)
        if ids is None:
            if num_groups is not None:
                raise ValueError(
                    f"num_groups={num_groups!r} is a hint for integer ids in [0, num_groups); "
                    "it cannot be used with string or other hashable group ids"
                )
            codes, count = _factorize_hashables(group_ids)
            _check_len(len(codes), n)
            return Groups(torch.as_tensor(codes, dtype=torch.int64).to(device), count)
        ids = torch.from_numpy(_torch_compatible(ids)).to(device)
    _check_len(ids.shape[0], n)
    if num_groups is not None:
        return _hinted_codes(ids, num_groups, check_range)
    if ids.shape[0] == 0:
        return Groups(ids.to(torch.int64), 0)
    uniques, codes = torch.unique(ids, return_inverse=True)
    return Groups(codes.to(torch.int64), int(uniques.shape[0]))


def _check_len(found: int, n: int) -> None:
    if found != n:
        raise ValueError(
            f"group_ids has {found} entries but rewards has {n}; one id per completion"
        )


def _host_integer_ids(group_ids: Any) -> np.ndarray | None:
    """int64 numpy ids when ``group_ids`` is an integer array / list that fits int64, else None."""
    if (
        isinstance(group_ids, (str, bytes, AbstractSet, Mapping))
        or not hasattr(group_ids, "__len__")
        or not hasattr(group_ids, "__getitem__")
    ):
        raise TypeError(
            "group_ids must be an ordered sequence with one id per completion (list, tuple, "
            f"numpy array, torch tensor), got {type(group_ids).__name__}"
        )
    if isinstance(group_ids, np.ndarray):
        array = group_ids
        if array.ndim != 1:
            raise ValueError(f"group_ids must be 1-D [N], got shape {array.shape}")
    elif len(group_ids) == 0:
        return np.zeros(0, dtype=np.int64)  # np.asarray([]) would be float64
    else:
        try:
            array = np.asarray(group_ids)
        except (TypeError, ValueError):
            return None  # ragged or exotic: treat the entries as opaque hashables
    if array.ndim != 1:
        return None  # e.g. a list of tuples: hashable ids
    if array.dtype.kind in "fcb":
        raise TypeError(
            f"group_ids must be integers or hashable labels (strings...), got {array.dtype} "
            "values; floating or boolean ids are almost always a mistake"
        )
    if array.dtype.kind == "i" or (array.dtype.kind == "u" and array.dtype.itemsize < 8):
        return array.astype(np.int64, copy=False)
    return None  # uint64, strings, objects: factorise on the host


def _factorize_hashables(group_ids: Sequence[Hashable]) -> tuple[list[int], int]:
    mapping: dict[Hashable, int] = {}
    try:
        codes = [mapping.setdefault(g, len(mapping)) for g in group_ids]
    except TypeError:
        bad = next(g for g in group_ids if not isinstance(g, Hashable))
        raise TypeError(
            "group_ids entries must be hashable (int, str, tuple...), "
            f"found {type(bad).__name__}: {bad!r}"
        ) from None
    # NOTE: every entry is checked, not only the dict keys: 1, 1.0 and True are one key.
    bad = next((g for g in group_ids if isinstance(g, (float, np.floating, bool, np.bool_))), None)
    if bad is not None:
        raise TypeError(
            f"group_ids contains a {type(bad).__name__} ({bad!r}); use integer or string ids "
            "(True would silently share a group with 1, and NaN never equals itself)"
        )
    return codes, len(mapping)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are the same device when 0 is the current one."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        if a.type != "cuda":
            return a.index == b.index
        current = torch.cuda.current_device()
        return (current if a.index is None else a.index) == (
            current if b.index is None else b.index
        )
    return a.index == b.index


def _hinted_codes(ids: torch.Tensor, num_groups: int, check_range: bool = True) -> Groups:
    if (
        isinstance(num_groups, (bool, np.bool_))
        or not isinstance(num_groups, numbers.Integral)
        or num_groups < 0
    ):
        raise ValueError(f"num_groups must be a non-negative int, got {num_groups!r}")
    num_groups = int(num_groups)
    codes = ids.to(torch.int64)
    if codes.numel() == 0:
        return Groups(codes, num_groups)
    # NOTE: reading the range back is free on CPU but a host sync on CUDA, and a graph break
    # under torch.compile: there the check is an asynchronous device assertion instead.
    if codes.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= num_groups:
            raise ValueError(
                f"with num_groups={num_groups}, group_ids must lie in [0, {num_groups}); "
                f"found values from {low} to {high}"
            )
    elif check_range:
        torch._assert_async(
            ((codes >= 0) & (codes < num_groups)).all(),
            "group_ids out of range [0, num_groups)",
        )
    return Groups(codes, num_groups)


# ----------------------------------------------------------------------------- dispatch


def resolve_backend(backend: str, device: torch.device, dim: int | None = None) -> str:
    """``"torch"`` or ``"triton"`` for ``[N, dim]`` embeddings on ``device``; raises for an
    impossible explicit request (``"auto"`` falls back to ``"torch"`` instead)."""
    if backend == "torch":
        return "torch"
    if backend == "triton":
        reason = _triton.unavailable_reason(device, dim)
        if reason is not None:
            raise RuntimeError(f"backend='triton' cannot run here: {reason}")
        return "triton"
    if backend == "auto":
        if device.type == "cuda" and _triton.unavailable_reason(device, dim) is None:
            return "triton"
        return "torch"
    raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")


def _check_scalar(name: str, value: Any, *, positive: bool, at_most: float | None = None) -> float:
    """``value`` as a float; any real number type (Python, numpy, 0-d tensors excluded)."""
    if (
        type(value) is float
        and (value > 0.0 if positive else value >= 0.0)
        and value < math.inf
        and (at_most is None or value <= at_most)
    ):
        return value  # the common case, without the checks below (called on every call)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    value = float(value)
    too_small = value <= 0 if positive else value < 0
    if not math.isfinite(value) or too_small or (at_most is not None and value > at_most):
        kind = "a finite number > 0" if positive else "a finite number >= 0"
        if at_most is not None:
            kind += f" and <= {at_most:g}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value


def _check_min_denominator(value: Any) -> float:
    # NOTE: above 1 the clamp would also shrink rewards with SMI = 0 (groups of one, orthogonal
    # completions), which is not DRA; the clamp is only a guard for 1 + SMI near or below 0.
    return _check_scalar("min_denominator", value, positive=True, at_most=1.0)


def _check_eps(value: Any, scale: str) -> float:
    # NOTE: with scale="std" and eps = 0, a group of equal rewards gives 0 / 0 = NaN.
    return _check_scalar("eps", value, positive=scale == "std")


def _check_scale(scale: Any) -> str:
    if scale not in ("std", "none"):
        raise ValueError(f"scale must be 'std' (GRPO) or 'none' (DR.GRPO), got {scale!r}")
    return scale


@dataclass(frozen=True)
class _Prepared:
    rewards: torch.Tensor | None
    embeddings: torch.Tensor | None
    groups: Groups
    backend: str
    out_dtype: torch.dtype


_FAST_EMBEDDING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FAST_REWARD_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FAST_ID_DTYPES = (torch.int32, torch.int64)


def _prepare_fast(
    rewards: Any, embeddings: Any, group_ids: Any, backend: str, num_groups: Any
) -> _Prepared | None:
    """The common CUDA call (tensors on one device, integer ids, ``num_groups``) with the same
    checks as :func:`_prepare` in a few attribute reads; None for anything else, which then takes
    the general path (and its error messages)."""
    # NOTE: one call per training step or per small batch: at N <= 1024 the general path's
    # checks cost as much as the kernel (issue 3, target 4).
    if (
        backend == "torch"
        or torch.compiler.is_compiling()  # the general path is the one proven under dynamo
        or type(num_groups) is not int
        or num_groups < 0
        or type(embeddings) is not torch.Tensor
        or type(group_ids) is not torch.Tensor
    ):
        return None
    device = embeddings.device
    if (
        device.type != "cuda"
        or embeddings.ndim != 2
        or embeddings.dtype not in _FAST_EMBEDDING_DTYPES
        or group_ids.ndim != 1
        or group_ids.dtype not in _FAST_ID_DTYPES
        or group_ids.device != device
    ):
        return None
    n, d = embeddings.shape
    dtype = embeddings.dtype
    if d == 0 or group_ids.shape[0] != n:
        return None
    if rewards is not None:
        if (
            type(rewards) is not torch.Tensor
            or rewards.ndim != 1
            or rewards.dtype not in _FAST_REWARD_DTYPES
            or rewards.device != device
            or rewards.shape[0] != n
        ):
            return None
        if rewards.dtype == torch.float64:
            dtype = torch.float64
    if d > _triton.MAX_D or _triton.unavailable_reason(device) is not None:
        return None
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return _Prepared(rewards, embeddings, Groups(group_ids, num_groups), "triton", out_dtype)


def _prepare(
    rewards: Any, embeddings: Any, group_ids: Any, backend: str, num_groups: int | None
) -> _Prepared:
    fast = _prepare_fast(rewards, embeddings, group_ids, backend, num_groups)
    if fast is not None:
        return fast
    present = {k: v for k, v in (("rewards", rewards), ("embeddings", embeddings)) if v is not None}
    device = _check_kinds(**present)
    r = e = None
    n = None
    if rewards is not None:
        r = _to_tensor(rewards, "rewards")
        _check_rewards(r)
        n = r.shape[0]
    if embeddings is not None:
        e = _to_tensor(embeddings, "embeddings")
        if e.shape == (0,) and _kind(embeddings) == "sequence":
            e = e.reshape(0, 1)  # an empty list: N = 0 rows (D is not expressible)
        _check_embeddings(e, n)
        n = e.shape[0]
    chosen = resolve_backend(backend, device, None if e is None else e.shape[1])
    # NOTE: on CUDA the kernel checks the codes itself; the device assertion would add launches.
    check = not (chosen == "triton" and device.type == "cuda")
    groups = factorize_group_ids(group_ids, n, device, num_groups, check_range=check)
    dtypes = [t.dtype for t in (r, e) if t is not None and t.is_floating_point()]
    return _Prepared(r, e, groups, chosen, reference.compute_dtype(*dtypes))


_TRITON_FORWARD: list[Any] = []  # filled on first use


def _run_triton(*args: Any, **kwargs: Any) -> torch.Tensor:
    if not _TRITON_FORWARD:
        from dra_kernels._triton.ops import dra_forward  # imports triton: only when it is used

        _TRITON_FORWARD.append(dra_forward)
    return _TRITON_FORWARD[0](*args, **kwargs)


# ----------------------------------------------------------------------------- public API


def smi_scores(
    embeddings: Any, group_ids: Any, *, backend: Backend = "auto", num_groups: int | None = None
) -> Any:
    """Submodular mutual information of each completion with the rest of its group.

    ``SMI_i = sum over j in group(i), j != i, of cos(e_i, e_j)`` (0 for a group of one; a zero
    embedding has cosine 0 with everything).

    Args:
        embeddings: ``[N, D]`` float16 / bfloat16 / float32 / float64 (torch, numpy or nested list).
        group_ids: ``[N]`` integer ids or hashable labels; rows of a group may be anywhere.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        num_groups: optional hint, see :func:`factorize_group_ids`.

    Returns:
        ``[N]`` float32 (float64 for float64 embeddings), of the same kind as ``embeddings``.

    Example:
        >>> smi_scores([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0, 0, 0])
        [1.0, 1.0, 0.0]
    """
    p = _prepare(None, embeddings, group_ids, backend, num_groups)
    assert p.embeddings is not None
    if p.backend == "triton":
        out = _run_triton(
            None,
            p.embeddings,
            p.groups.codes,
            p.groups.num_groups,
            mode="smi",
            min_denominator=DEFAULT_MIN_DENOMINATOR,
            out_dtype=p.out_dtype,
        )
    else:
        out = reference.smi_scores(p.embeddings, p.groups.codes, p.groups.num_groups)
    return _convert_out(out, embeddings)


def adjust_rewards(
    rewards: Any,
    embeddings: Any,
    group_ids: Any,
    *,
    backend: Backend = "auto",
    num_groups: int | None = None,
    min_denominator: float = DEFAULT_MIN_DENOMINATOR,
) -> Any:
    """Diversity-aware reward adjustment: ``r_i / max(1 + SMI_i, min_denominator)``.

    Args:
        rewards: ``[N]`` real rewards (float or integer; booleans are refused).
        embeddings: ``[N, D]`` completion embeddings (any scale: rows are normalised).
        group_ids: ``[N]`` group of each completion (integers, strings, any hashable).
        backend: ``"auto"`` (Triton on CUDA when installed, else torch), ``"torch"``, ``"triton"``.
        num_groups: optional hint for integer ids in ``[0, num_groups)``: no host sync. Ids
            outside that range raise on CPU; on CUDA the Triton kernel cannot raise without a
            sync, so their rows come out NaN (the torch backend asserts asynchronously).
        min_denominator: lower clamp of ``1 + SMI``, in (0, 1] (only reachable with negative
            cosines); bounds the amplification of any reward by ``1 / min_denominator``.

    Non-finite inputs: a NaN / inf reward gives a non-finite result in its own row only; a NaN /
    inf embedding gives NaN for its whole group (a group of one keeps its reward). Other groups
    are unaffected. Nothing is checked on the host, so CUDA calls never synchronise for it.

    Returns:
        ``[N]`` adjusted rewards in input order, of the kind of ``rewards`` (torch on its device,
        numpy, or a list), float32, or float64 when rewards or embeddings are float64.

    Example:
        >>> adjust_rewards([1.0, 1.0, 1.0], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], ["a", "a", "a"])
        [0.5, 0.5, 1.0]
    """
    min_denominator = _check_min_denominator(min_denominator)
    p = _prepare(rewards, embeddings, group_ids, backend, num_groups)
    assert p.rewards is not None and p.embeddings is not None
    if p.backend == "triton":
        out = _run_triton(
            p.rewards,
            p.embeddings,
            p.groups.codes,
            p.groups.num_groups,
            mode="adjust",
            min_denominator=min_denominator,
            out_dtype=p.out_dtype,
        )
    else:
        out = reference.adjust_rewards(
            p.rewards, p.embeddings, p.groups.codes, p.groups.num_groups, min_denominator
        )
    return _convert_out(out, rewards)


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
        group_ids: ``[N]`` group ids.
        scale: ``"std"`` or ``"none"``.
        eps: added to the standard deviation.
        num_groups: optional hint, see :func:`factorize_group_ids`.

    Returns:
        ``[N]`` advantages of the kind of ``rewards``.

    Example:
        >>> group_advantages([1.0, 0.0, 5.0], ["a", "a", "b"], scale="none")
        [0.5, -0.5, 0.0]
    """
    scale = _check_scale(scale)
    eps = _check_eps(eps, scale)
    p = _prepare(rewards, None, group_ids, "torch", num_groups)
    assert p.rewards is not None
    out = reference.group_advantages(
        p.rewards.to(p.out_dtype), p.groups.codes, p.groups.num_groups, scale, eps
    )
    return _convert_out(out, rewards)


def dra_advantages(
    rewards: Any,
    embeddings: Any,
    group_ids: Any,
    *,
    scale: Scale = "std",
    eps: float = DEFAULT_EPS,
    backend: Backend = "auto",
    num_groups: int | None = None,
    min_denominator: float = DEFAULT_MIN_DENOMINATOR,
) -> Any:
    """:func:`adjust_rewards` then :func:`group_advantages`, fused into one kernel on CUDA.

    Args:
        rewards: ``[N]`` real rewards, as in :func:`adjust_rewards`.
        embeddings: ``[N, D]`` completion embeddings.
        group_ids: ``[N]`` group of each completion.
        scale: ``"std"`` (GRPO) or ``"none"`` (DR.GRPO), as in :func:`group_advantages`.
        eps: added to the group standard deviation.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        num_groups: optional hint for integer ids in ``[0, num_groups)``.
        min_denominator: lower clamp of ``1 + SMI``.

    Returns:
        ``[N]`` advantages of the DRA-adjusted rewards, of the kind of ``rewards``.

    Example:
        >>> dra_advantages([1.0, 1.0, 0.0], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [7, 7, 7],
        ...                scale="none")
        [0.16666666..., 0.16666666..., -0.33333333...]
    """
    scale = _check_scale(scale)
    eps = _check_eps(eps, scale)
    min_denominator = _check_min_denominator(min_denominator)
    p = _prepare(rewards, embeddings, group_ids, backend, num_groups)
    assert p.rewards is not None and p.embeddings is not None
    codes, k = p.groups.codes, p.groups.num_groups
    if p.backend == "triton":
        out = _run_triton(
            p.rewards,
            p.embeddings,
            codes,
            k,
            mode="advantage",
            min_denominator=min_denominator,
            scale=scale,
            eps=eps,
            out_dtype=p.out_dtype,
        )
    else:
        adjusted = reference.adjust_rewards(p.rewards, p.embeddings, codes, k, min_denominator)
        out = reference.group_advantages(adjusted, codes, k, scale, eps)
    return _convert_out(out, rewards)
