"""Public entry points: input checks, group-id factorisation, backend dispatch, output conversion.

Data flow: caller's rewards / embeddings / group ids (torch, numpy or lists) -> validated torch
tensors and dense int64 group codes -> :mod:`dra_kernels.reference` (``backend="torch"``) or the
fused kernel in :mod:`dra_kernels._triton` (``backend="triton"``) -> the result in the caller's row
order and kind.

Input policy (docs/guarantees.md lists each rule with the test that proves it):

- rewards and embeddings are both torch tensors on one device, or both host data (numpy arrays,
  lists); mixing raises TypeError. Tensors must be dense (strided) tensors with data: sparse,
  nested, quantized, mkldnn and meta tensors raise TypeError naming the argument.
- group_ids follow one rule (:func:`_host_ids`, docs/semantics.md "Group ids"), the same for every
  public function and :mod:`dra_kernels.distributed`: integers of any size, strings, bytes and
  other hashable values equal to themselves, tuples of those; floats, complex and other
  non-integer numbers, booleans, unhashable and self-unequal values (NaN, NaT) are refused with a
  TypeError / ValueError naming ``group_ids[i]`` and the value.
- DRA factors are constants: embeddings are used detached (no gradient reaches them); gradients
  flow through rewards, on both backends.
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
from collections.abc import Hashable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from dra_kernels import _triton, measures, reference
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
Measure = Literal["graph_cut", "facility_location", "log_det"]

_EMBEDDING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Groups:
    """Dense group codes: ``codes[i]`` in ``[0, num_groups)`` is the group of row ``i``."""

    codes: torch.Tensor
    num_groups: int
    group_size: int | None = None
    """When known: every group is ``group_size`` contiguous rows, codes in order (CPU only)."""


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
        return _dense(value, name)
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


def _tensor_kind_problem(t: torch.Tensor) -> str | None:
    """Why ``t`` is not a plain dense tensor that the computation can read, or None."""
    if t.is_nested:
        return "a nested tensor; pass one [N, ...] tensor (for example nested.to_padded_tensor)"
    if t.layout is not torch.strided:
        return f"a {t.layout} tensor; convert it with .to_dense()"
    if t.is_quantized:
        return f"a quantized tensor ({t.dtype}); convert it with .dequantize()"
    return None


def _dense(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` itself, or a copy with its negative bit resolved; raises for other tensor kinds."""
    problem = _tensor_kind_problem(t)
    if problem is None and t.device.type == "meta":
        problem = "a meta tensor, which holds no data"
    if problem is not None:
        raise TypeError(f"{name} must be a dense (strided) tensor with data, got {problem}")
    # NOTE: a negative-bit view (x.conj().imag of a complex x) reads negated memory; the Triton
    # kernel reads raw memory, so the view is materialised (an explicit copy).
    if not torch.compiler.is_compiling() and t.is_neg():
        return t.resolve_neg()
    return t


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


def _checked_data(
    rewards: Any, embeddings: Any
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.device]:
    """Rewards and embeddings (either may be None) as checked tensors, and their device."""
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
        # NOTE: DRA factors are constants (docs/semantics.md, "Gradients"): the paper divides
        # rewards by 1 + SMI to reweight them, the factor is not a loss term, so no gradient
        # goes through the similarities to the embedder.
        if e.requires_grad:
            e = e.detach()
    return r, e, device


def _reward_grad(rewards: torch.Tensor | None) -> bool:
    """True when autograd must record the computation from ``rewards``."""
    return rewards is not None and rewards.requires_grad and torch.is_grad_enabled()


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

_ID_RULE = (
    "group ids must be integers (any size), strings, bytes or other hashable values equal to "
    "themselves, or tuples of those; floats, booleans and values such as NaN are refused"
)
_INT64_MAX = 2**63 - 1
# Exact types whose values are always valid ids and need no per-element check.
_PLAIN_ID_TYPES = frozenset({int, str, bytes})
# Exact integer types that np.array(..., dtype=int64) converts exactly (Python ints that do not
# fit raise OverflowError; numpy uint64 would wrap, so it is not here).
_INT64_ID_TYPES = frozenset({int, *(np.dtype(c).type for c in "bhilqBHI")}) - {np.uint64}


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
        group_ids: ``[n]`` ids: an integer torch tensor or numpy array, or a sequence (list,
            tuple, range, numpy object array...) of integers of any size, strings, bytes, tuples
            of ids or other hashable values equal to themselves (verl passes a numpy object array
            of uid strings). Floats, complex and other non-integer numbers, booleans,
            unhashable values and values that do not equal themselves (NaN, NaT) raise
            TypeError / ValueError naming ``group_ids[i]``; see docs/semantics.md, "Group ids".
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
        ids = _check_id_tensor(group_ids, device)
    else:
        host = _host_ids(group_ids)
        _check_len(len(host), n)
        if isinstance(host, list):
            _check_hint_kind(num_groups, host)
            codes, count = _label_codes(host)
            return Groups(torch.tensor(codes, dtype=torch.int64).to(device), count)
        ids = torch.from_numpy(_torch_compatible(host)).to(device)
    _check_len(ids.shape[0], n)
    if num_groups is not None:
        return _hinted_codes(ids, num_groups, check_range)
    if ids.shape[0] == 0:
        return Groups(ids.to(torch.int64), 0)
    uniques, codes = torch.unique(ids, return_inverse=True)
    return Groups(codes.to(torch.int64), int(uniques.shape[0]))


def _check_len(found: int, n: int | None) -> None:
    if n is not None and found != n:
        raise ValueError(
            f"group_ids has {found} entries but rewards has {n}; one id per completion"
        )


def _check_id_tensor(ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``ids`` checked as a tensor of group ids on ``device`` (its negative bit resolved)."""
    problem = _tensor_kind_problem(ids)
    if problem is not None:
        raise TypeError(f"group_ids must be a dense (strided) tensor, got {problem}")
    if ids.ndim != 1:
        raise ValueError(f"group_ids must be 1-D [N], got shape {tuple(ids.shape)}")
    if not _is_integer(ids):
        raise TypeError(
            f"group_ids as a tensor must have an integer dtype, got {ids.dtype}; "
            "floating or boolean ids are almost always a mistake"
        )
    if not _same_device(ids.device, device):
        raise ValueError(f"group_ids is on {ids.device} but the data is on {device}")
    return _dense(ids, "group_ids")


def _check_hint_kind(num_groups: Any, labels: list) -> None:
    if num_groups is not None:
        raise ValueError(
            f"num_groups={num_groups!r} is a hint for integer ids in [0, num_groups); "
            f"it cannot be used with labels such as {_short_repr(labels[0]) if labels else ''} "
            "(strings, tuples, integers beyond int64...): leave num_groups out"
        )


def _host_ids(group_ids: Any) -> np.ndarray | list:
    """Host (non-tensor) group ids checked by the rule: an int64 array when every id is an
    integer that fits int64, else the list of ids (each one checked)."""
    if isinstance(group_ids, np.ndarray):
        return _array_ids(group_ids)
    if (
        isinstance(group_ids, (str, bytes, bytearray, memoryview, AbstractSet, Mapping))
        or not hasattr(group_ids, "__len__")
        or not hasattr(group_ids, "__getitem__")
    ):
        raise TypeError(
            "group_ids must be an ordered sequence with one id per completion (list, tuple, "
            f"numpy array, torch tensor), got {type(group_ids).__name__}"
        )
    if isinstance(group_ids, list):
        return _list_ids(group_ids)
    if not isinstance(group_ids, (tuple, range)) and hasattr(group_ids, "__array__"):
        try:  # pandas Series and other array-likes
            array = np.asarray(group_ids)
        except Exception as exc:
            raise TypeError(
                f"group_ids: could not read a {type(group_ids).__name__} as an array "
                f"({type(exc).__name__}: {exc})"
            ) from None
        return _array_ids(array)
    try:
        labels = list(group_ids)
    except Exception as exc:
        raise TypeError(
            f"group_ids: could not iterate a {type(group_ids).__name__} "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return _list_ids(labels)


def _array_ids(array: np.ndarray) -> np.ndarray | list:
    if array.ndim != 1:
        raise ValueError(f"group_ids must be 1-D [N], got shape {array.shape}")
    kind = array.dtype.kind
    if kind == "i" or (kind == "u" and array.dtype.itemsize < 8):
        return array.astype(np.int64, copy=False)
    if kind == "u":  # uint64: exact int64 when it fits, else Python ints
        if array.size and int(array.max()) > _INT64_MAX:
            return array.tolist()
        return array.astype(np.int64)
    if kind in "US":
        return array.tolist()  # Python str / bytes: always valid
    if kind == "O":
        return _list_ids(array.tolist())
    if kind in "mM":
        nat = np.flatnonzero(np.isnat(array))
        if nat.size:
            raise ValueError(f"group_ids[{nat[0]}] is NaT, which never equals itself; {_ID_RULE}")
        return list(array)
    first = f" (group_ids[0] is {_short_repr(array[0])})" if array.size else ""
    raise TypeError(
        f"group_ids must hold integers or labels, got a numpy array of dtype {array.dtype}{first}; "
        f"{_ID_RULE}"
    )


def _list_ids(labels: list) -> np.ndarray | list:
    if not labels:
        return np.zeros(0, dtype=np.int64)  # np.asarray([]) would be float64
    types = set(map(type, labels))
    if types <= _INT64_ID_TYPES:
        try:
            return np.array(labels, dtype=np.int64)
        except OverflowError:
            return labels  # integers beyond int64: factorised exactly, as Python ints
    if types == {tuple} and set(map(type, chain.from_iterable(labels))) <= _PLAIN_ID_TYPES:
        return labels  # tuples of strings and ints (("prompt", 3)): valid, without a Python loop
    if not types <= _PLAIN_ID_TYPES:
        # NOTE: only values of other types are checked one by one, so a list of strings costs
        # one pass of type() over it.
        for i, value in enumerate(labels):
            if type(value) not in _PLAIN_ID_TYPES:
                try:
                    problem = _id_problem(value)
                except RecursionError:
                    problem = TypeError, f"a {type(value).__name__} nested too deeply"
                if problem is not None:
                    raise problem[0](f"group_ids[{i}] is {problem[1]}; {_ID_RULE}")
    return labels


def _id_kind(cls: type) -> str:
    """What the rule says about values of type ``cls`` (memoised: only the type is looked at)."""
    kind = _ID_KINDS.get(cls)
    if kind is None:
        if issubclass(cls, (str, bytes)):
            kind = "valid"
        elif issubclass(cls, (tuple, frozenset)):
            kind = "container"
        elif issubclass(cls, (bool, np.bool_)):
            kind = "bool"
        elif issubclass(cls, (np.datetime64, np.timedelta64)):  # timedelta64: a numpy integer
            kind = "time"
        elif issubclass(cls, (int, np.integer, numbers.Integral)):
            kind = "valid"
        elif issubclass(cls, (numbers.Number, np.number)):
            kind = "number"
        elif issubclass(cls, (torch.Tensor, np.ndarray)):
            kind = "array"
        else:
            kind = "other"  # hashable and equal to itself, checked value by value
        _ID_KINDS[cls] = kind
    return kind


_ID_KINDS: dict[type, str] = {}


def _id_problem(value: Any) -> tuple[type[Exception], str] | None:
    """Why ``value`` is not a valid group id, as ``(exception type, description)``, or None."""
    kind = _id_kind(type(value))
    if kind == "valid":
        return None
    if kind == "container":
        for item in value:
            if type(item) not in _PLAIN_ID_TYPES:
                problem = _id_problem(item)
                if problem is not None:
                    return problem[0], f"a {type(value).__name__} holding {problem[1]}"
        return None
    if kind == "bool":
        return TypeError, f"a bool ({value!r}), which would share a group with {int(value)}"
    if kind == "time":
        if value == value:
            return None
        return ValueError, f"a {type(value).__name__} (NaT), which never equals itself"
    if kind == "number":
        return TypeError, (
            f"a {type(value).__name__} ({_short_repr(value)}): only integer numbers are ids "
            "(NaN never equals itself, and 1.0 would share a group with 1)"
        )
    if kind == "array":
        return TypeError, (
            f"a {type(value).__module__}.{type(value).__name__}: pass the ids as one tensor or "
            "array, or as Python values (.tolist())"
        )
    try:
        hash(value)
    except Exception as exc:
        return TypeError, (
            f"an unhashable {type(value).__name__} ({_short_repr(value)}; "
            f"{type(exc).__name__}: {exc})"
        )
    try:
        same = bool(value == value)
    except Exception as exc:
        return TypeError, (
            f"a {type(value).__name__} ({_short_repr(value)}) whose == raised "
            f"{type(exc).__name__}: {exc}"
        )
    if not same:
        return ValueError, (
            f"a {type(value).__name__} ({_short_repr(value)}) that does not equal itself"
        )
    return None


def _short_repr(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _label_codes(labels: list[Hashable]) -> tuple[list[int], int]:
    """Dense codes, in order of first appearance, for ids already checked by :func:`_host_ids`."""
    mapping: dict[Hashable, int] = {}
    try:
        codes = [mapping.setdefault(g, len(mapping)) for g in labels]
    except Exception as exc:  # a user-defined __eq__ or __hash__ that raises on some pair
        raise TypeError(
            f"group_ids could not be compared with each other ({type(exc).__name__}: {exc})"
        ) from None
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
        reference.check_code_range(codes, num_groups)
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


class _Prepared(NamedTuple):
    rewards: torch.Tensor | None
    embeddings: torch.Tensor | None
    groups: Groups
    backend: str
    out_dtype: torch.dtype
    grad: bool = False  # rewards require grad: the Triton backend then fuses only the SMI


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_ID_DTYPES = (torch.int32, torch.int64)


def _common_call(
    rewards: Any, embeddings: Any, group_ids: Any, backend: str, num_groups: Any
) -> str | None:
    """The backend of a common call, or None: tensors on one CPU or CUDA device that the checks
    of :func:`_prepare` would pass unchanged, integer ids with ``num_groups``, rewards that need
    no gradient. A few attribute reads; anything else takes the general checks (and their error
    messages)."""
    # NOTE: one call per training step or per small batch: at N <= 1024 the general checks cost
    # as much as the computation (issue 3, target 4; issue 14, item 7 on CPU).
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
        or embeddings.dtype not in _FLOAT_DTYPES
        or embeddings.is_neg()
        or group_ids.layout is not torch.strided
        or group_ids.ndim != 1
        or group_ids.dtype not in _ID_DTYPES
        or group_ids.device != device
        or group_ids.is_neg()
    ):
        return None
    n, d = embeddings.shape
    if d == 0 or group_ids.shape[0] != n:
        return None
    if rewards is not None and (
        type(rewards) is not torch.Tensor
        or rewards.requires_grad
        or rewards.layout is not torch.strided
        or rewards.is_neg()
        or rewards.ndim != 1
        or rewards.dtype not in _FLOAT_DTYPES
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
        r, e, grad = rewards, embeddings, False
        if e.requires_grad:
            e = e.detach()
        codes = group_ids if group_ids.dtype is torch.int64 else group_ids.to(torch.int64)
        size = None
        if chosen == "torch":
            # NOTE: codes 0, 0, 1, 1, ... (the usual batch) are in range; the layout found here
            # is the one the CPU path starts from.
            size = reference.contiguous_group_size(codes, num_groups)
            if size is None:
                reference.check_code_range(codes, num_groups)
        # NOTE: on CUDA the kernel checks the codes itself (out-of-range rows come out NaN).
        groups = Groups(codes, num_groups, size)
    else:
        r, e, device = _checked_data(rewards, embeddings)
        n = None if r is None else r.shape[0]
        if e is not None:
            n = e.shape[0]
        chosen = resolve_backend(backend, device, None if e is None else e.shape[1])
        grad = _reward_grad(r)
        # NOTE: on CUDA the kernel checks the codes itself; the device assertion would add
        # launches. With rewards that require grad, torch ops index by the codes too, so they
        # are checked.
        check = not (chosen == "triton" and device.type == "cuda" and not grad)
        groups = factorize_group_ids(group_ids, n, device, num_groups, check_range=check)
    dtypes = [t.dtype for t in (r, e) if t is not None and t.is_floating_point()]
    return _Prepared(r, e, groups, chosen, reference.compute_dtype(*dtypes), grad)


_TRITON_FORWARD: list[Any] = []  # filled on first use


def _run_triton(*args: Any, **kwargs: Any) -> torch.Tensor:
    if not _TRITON_FORWARD:
        from dra_kernels._triton.ops import dra_forward  # imports triton: only when it is used

        _TRITON_FORWARD.append(dra_forward)
    return _TRITON_FORWARD[0](*args, **kwargs)


def _triton_smi(p: _Prepared) -> torch.Tensor:
    """The kernel's SMI in the compute dtype (for smi_scores, and for the torch ops that autograd
    records)."""
    # NOTE: Triton kernels are opaque to autograd. With rewards that require grad, the kernel
    # computes only the SMI (a constant) and torch ops finish from the rewards, so gradients flow
    # as on the torch backend; the values equal the fused ones to rounding.
    return _run_triton(
        None,
        p.embeddings,
        p.groups.codes,
        p.groups.num_groups,
        mode="smi",
        min_denominator=DEFAULT_MIN_DENOMINATOR,
        out_dtype=p.out_dtype,
    )


def _check_measure(measure: Any, eta: Any, lam: Any, backend: Any) -> tuple[str, float, float]:
    """``(measure, eta, lam)`` checked. Log-det runs on the torch backend only; facility location
    has a Triton kernel, taken with ``backend="triton"`` (``"auto"`` computes both with torch on
    the data's device: the kernel has not been timed on a GPU yet)."""
    measure, eta, lam = measures.check_measure(measure, eta, lam)
    if measure == "log_det" and backend == "triton":
        raise ValueError(
            "measure='log_det' has no Triton kernel: use backend='torch' or 'auto' (batched "
            "torch linear algebra on the data's device; docs/measures.md says why)"
        )
    return measure, eta, lam


def _measure_smi(p: _Prepared, measure: str, eta: float, lam: float, backend: str) -> torch.Tensor:
    assert p.embeddings is not None
    if measure == "facility_location" and backend == "triton":
        e = p.embeddings
        if e.dtype == torch.float64:
            raise ValueError(
                "the facility-location Triton kernel computes in float32 (Triton has no float64 "
                "tensor-core product); float64 embeddings need backend='torch' or 'auto'"
            )
        from dra_kernels._triton.ops import facility_location_smi  # imports triton

        smi = facility_location_smi(e, p.groups.codes, p.groups.num_groups, eta)
    else:
        smi = measures.smi_by_measure(
            p.embeddings,
            p.groups.codes,
            p.groups.num_groups,
            measure,
            eta=eta,
            lam=lam,
            dtype=p.out_dtype,
        )
    return smi.to(p.out_dtype)


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
    measure, eta, lam = _check_measure(measure, eta, lam, backend)
    p = _prepare(None, embeddings, group_ids, backend, num_groups)
    assert p.embeddings is not None
    if measure != "graph_cut":
        out = _measure_smi(p, measure, eta, lam, backend)
    elif p.backend == "triton":
        out = _triton_smi(p)
    else:
        out = reference.smi_scores(
            p.embeddings, p.groups.codes, p.groups.num_groups, group_size=p.groups.group_size
        )
    return _convert_out(out, embeddings)


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
        num_groups: optional hint for integer ids in ``[0, num_groups)``: no host sync. Ids
            outside that range raise on CPU; on CUDA the Triton kernel cannot raise without a
            sync, so their rows come out NaN (the torch backend asserts asynchronously).
        min_denominator: lower clamp of ``1 + SMI``, in (0, 1] (only reachable with negative
            cosines); bounds the amplification of any reward by ``1 / min_denominator``.
        measure: which SMI (see :func:`smi_scores`; default the paper's graph-cut).
        eta: query magnification of ``facility_location`` and ``log_det``.
        lam: ridge of ``log_det``.

    Non-finite inputs: a NaN / inf reward gives a non-finite result in its own row only; a NaN /
    inf embedding gives NaN for its whole group (a group of one keeps its reward). Other groups
    are unaffected. Nothing is checked on the host, so CUDA calls never synchronise for it.

    Returns:
        ``[N]`` adjusted rewards in input order, of the kind of ``rewards`` (torch on its device,
        numpy, or a list), float32, or float64 when rewards or embeddings are float64. The
        result is differentiable in ``rewards`` (``1 / max(1 + SMI_i, min_denominator)`` per
        row, on both backends); embeddings are used detached: DRA factors are constants.

    Example:
        >>> adjust_rewards([1.0, 1.0, 1.0], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], ["a", "a", "a"])
        [0.5, 0.5, 1.0]
    """
    min_denominator = _check_min_denominator(min_denominator)
    measure, eta, lam = _check_measure(measure, eta, lam, backend)
    p = _prepare(rewards, embeddings, group_ids, backend, num_groups)
    assert p.rewards is not None and p.embeddings is not None
    if measure != "graph_cut":
        out = reference.adjust_from_smi(p.rewards, _measure_smi(p, measure, eta, lam, backend),
                                        min_denominator)  # fmt: skip
    elif p.backend == "triton" and p.grad:
        out = reference.adjust_from_smi(p.rewards, _triton_smi(p), min_denominator)
    elif p.backend == "triton":
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
            p.rewards,
            p.embeddings,
            p.groups.codes,
            p.groups.num_groups,
            min_denominator,
            group_size=p.groups.group_size,
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
    measure: Measure = "graph_cut",
    eta: float = measures.DEFAULT_ETA,
    lam: float = measures.DEFAULT_LAM,
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
        measure: which SMI (see :func:`smi_scores`; default the paper's graph-cut).
        eta: query magnification of ``facility_location`` and ``log_det``.
        lam: ridge of ``log_det``.

    Returns:
        ``[N]`` advantages of the DRA-adjusted rewards, of the kind of ``rewards``;
        differentiable in ``rewards``, the DRA factors being constants.

    Example:
        >>> dra_advantages([1.0, 1.0, 0.0], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [7, 7, 7],
        ...                scale="none")
        [0.16666666..., 0.16666666..., -0.33333333...]
    """
    scale = _check_scale(scale)
    eps = _check_eps(eps, scale)
    min_denominator = _check_min_denominator(min_denominator)
    measure, eta, lam = _check_measure(measure, eta, lam, backend)
    p = _prepare(rewards, embeddings, group_ids, backend, num_groups)
    assert p.rewards is not None and p.embeddings is not None
    codes, k = p.groups.codes, p.groups.num_groups
    if measure != "graph_cut" or (p.backend == "triton" and p.grad):
        smi = (
            _measure_smi(p, measure, eta, lam, backend)
            if measure != "graph_cut"
            else _triton_smi(p)
        )
        adjusted = reference.adjust_from_smi(p.rewards, smi, min_denominator)
        out = reference.group_advantages(adjusted, codes, k, scale, eps)
    elif p.backend == "triton":
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
        adjusted = reference.adjust_rewards(
            p.rewards, p.embeddings, codes, k, min_denominator, group_size=p.groups.group_size
        )
        out = reference.group_advantages(adjusted, codes, k, scale, eps)
    return _convert_out(out, rewards)
