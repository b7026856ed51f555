"""Inputs of the public functions: conversion, checks, the group-id rule and the option checks.

Every front end (:mod:`dra_kernels.api`, :mod:`dra_kernels.distributed`) calls these, so each rule
is written once; the policy is docs/semantics.md's, docs/guarantees.md lists its tests. No input is
ever written (awkward numpy arrays are copied), nothing is read back from a CUDA device to check it.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Hashable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import numpy as np
import torch

from dra_kernels import _triton

__all__ = [
    "EMBEDDING_DTYPES",
    "func_transform",
    "is_func_wrapped",
    "traced",
    "Backend",
    "Groups",
    "Measure",
    "Scale",
    "check_backend",
    "check_code_bounds",
    "check_code_range",
    "compact",
    "check_eps",
    "check_hint_kind",
    "check_min_denominator",
    "check_number",
    "check_scale",
    "checked_data",
    "compute_dtype",
    "convert_out",
    "factorize_group_ids",
    "hinted_codes",
    "id_values",
    "resolve_backend",
]

Backend = Literal["auto", "torch", "triton"]
Scale = Literal["std", "none"]
Measure = Literal["graph_cut", "facility_location", "log_det"]

EMBEDDING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The accepted embedding dtypes."""


@dataclass(frozen=True)
class Groups:
    """Dense group codes: ``codes[i]`` in ``[0, num_groups)`` is the group of row ``i``."""

    codes: torch.Tensor
    num_groups: int
    group_size: int | None = None
    """When known: every group is ``group_size`` contiguous rows, codes in order (CPU only)."""


def traced(rewards: torch.Tensor | None) -> bool:
    """Whether gradients are taken through ``rewards``: they require grad (with grad mode on), or
    a ``torch.func`` transform wraps them (opaque kernels then compute only the SMI)."""
    if rewards is None:
        return False
    return (rewards.requires_grad and torch.is_grad_enabled()) or is_func_wrapped(rewards)


def is_func_wrapped(tensor: torch.Tensor) -> bool:
    """Whether a ``torch.func`` transform wraps ``tensor`` (False under ``torch.compile``, which
    cannot trace the query: fullgraph compiles would break)."""
    compiling = torch.compiler.is_compiling()
    return not compiling and torch._C._functorch.is_functorch_wrapped_tensor(tensor)


_TRANSFORMS = {"Grad": "grad / jacrev / vjp", "Jvp": "jacfwd / jvp", "Vmap": "vmap"}


def func_transform(rewards: torch.Tensor | None) -> str | None:
    """The ``torch.func`` transform that wraps ``rewards`` (e.g. ``"jacfwd / jvp"``), or None."""
    if rewards is None or not is_func_wrapped(rewards):
        return None
    layer = torch._C._functorch.peek_interpreter_stack()
    name = layer.key().name if layer is not None else ""
    return _TRANSFORMS.get(name, f"{name or 'a'} transform")


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any of ``dtypes`` is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


# ----------------------------------------------------------------------------- conversion


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
    # NOTE: a negative-bit view (x.conj().imag) reads negated memory, the kernel raw memory.
    if not torch.compiler.is_compiling() and t.is_neg():
        return t.resolve_neg()
    return t


def _torch_compatible(array: np.ndarray) -> np.ndarray:
    """``array`` itself, or a copy where ``torch.from_numpy`` cannot share it (negative strides,
    non-native byte order, read-only: the caller's array is never written)."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.writeable or any(s < 0 for s in array.strides):
        array = np.array(array, copy=True)
    return array


def checked_data(
    rewards: Any, embeddings: Any
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.device]:
    """Rewards and embeddings (either may be None) as checked tensors, and their device."""
    present = {k: v for k, v in (("rewards", rewards), ("embeddings", embeddings)) if v is not None}
    device = _check_kinds(**present)
    r = e = n = None
    if rewards is not None:
        r = _to_tensor(rewards, "rewards")
        if r.dtype == torch.bool:
            raise TypeError(
                "rewards must be real numbers, got a boolean tensor; convert it explicitly "
                "(for example rewards.float()) if 0/1 rewards are meant"
            )
        if r.is_complex() or not (r.is_floating_point() or _is_integer(r)):
            raise TypeError(f"rewards must be real numbers, got dtype {r.dtype}")
        if r.ndim != 1:
            raise ValueError(f"rewards must be 1-D [N], got shape {tuple(r.shape)}")
        n = r.shape[0]
    if embeddings is not None:
        e = _to_tensor(embeddings, "embeddings")
        if e.shape == (0,) and not isinstance(embeddings, (torch.Tensor, np.ndarray)):
            e = e.reshape(0, 1)  # an empty list: N = 0 rows (D is not expressible)
        if e.dtype not in EMBEDDING_DTYPES:
            raise TypeError(
                f"embeddings must be float16, bfloat16, float32 or float64, got dtype {e.dtype}"
            )
        if e.ndim != 2:
            raise ValueError(f"embeddings must be 2-D [N, D], got shape {tuple(e.shape)}")
        if e.shape[1] == 0:
            raise ValueError(f"embeddings must have D >= 1 columns, got shape {tuple(e.shape)}")
        if n is not None and e.shape[0] != n:
            raise ValueError(
                f"embeddings has {e.shape[0]} rows but rewards has {n} entries; "
                "they must describe the same completions"
            )
        # NOTE: DRA factors are constants (docs/semantics.md, "Gradients").
        if e.requires_grad:
            e = e.detach()
    return r, e, device


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


def convert_out(result: torch.Tensor, like: Any) -> Any:
    """``result`` as the kind of ``like``: the tensor itself, a numpy array or a list."""
    if isinstance(like, torch.Tensor):
        return result
    if isinstance(like, np.ndarray):
        return result.cpu().numpy()
    return result.cpu().tolist()


# ----------------------------------------------------------------------------- group ids

_ID_RULE = (
    "group ids must be integers (any size), strings, bytes or other hashable values equal to "
    "themselves, or tuples of those; floats, booleans and values such as NaN are refused"
)
# Exact types whose values are always valid ids and need no per-element check.
_PLAIN_ID_TYPES = frozenset({int, str, bytes})
# Exact integer types that np.array(..., dtype=int64) converts exactly or refuses (not uint64).
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
            of ids or other hashable values equal to themselves. Anything else raises TypeError
            / ValueError naming ``group_ids[i]`` (docs/semantics.md, "Group ids"). Only equality
            matters: codes follow no particular order.
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
    ids = id_values(group_ids, n, device)
    if isinstance(ids, list):
        check_hint_kind(num_groups, ids)
        mapping: dict[Hashable, int] = {}  # codes in order of first appearance
        try:
            codes = [mapping.setdefault(g, len(mapping)) for g in ids]
        except Exception as exc:  # a user-defined __eq__ or __hash__ that raises on some pair
            raise TypeError(
                f"group_ids could not be compared with each other ({type(exc).__name__}: {exc})"
            ) from None
        return Groups(torch.tensor(codes, dtype=torch.int64).to(device), len(mapping))
    if num_groups is not None:
        return hinted_codes(ids, num_groups, check_range)
    if ids.shape[0] == 0:
        return Groups(ids.to(torch.int64), 0)
    uniques, codes = torch.unique(ids, return_inverse=True)
    return Groups(codes.to(torch.int64), int(uniques.shape[0]))


def id_values(group_ids: Any, n: int | None, device: torch.device) -> torch.Tensor | list:
    """``group_ids`` checked by the rule, ``n`` of them (None: any number): a 1-D integer tensor
    on ``device`` (a tensor given, or host ids that are all integers fitting int64), or the list
    of ids (labels, larger integers)."""
    if isinstance(group_ids, torch.Tensor):
        problem = _tensor_kind_problem(group_ids)
        if problem is not None:
            raise TypeError(f"group_ids must be a dense (strided) tensor, got {problem}")
        if group_ids.ndim != 1:
            raise ValueError(f"group_ids must be 1-D [N], got shape {tuple(group_ids.shape)}")
        if not _is_integer(group_ids):
            raise TypeError(
                f"group_ids as a tensor must have an integer dtype, got {group_ids.dtype}; "
                "floating or boolean ids are almost always a mistake"
            )
        if not _same_device(group_ids.device, device):
            raise ValueError(f"group_ids is on {group_ids.device} but the data is on {device}")
        ids = _dense(group_ids, "group_ids")
    else:
        ids = _host_ids(group_ids)
        if not isinstance(ids, list):
            ids = torch.from_numpy(_torch_compatible(ids)).to(device)
    if n is not None and len(ids) != n:
        raise ValueError(
            f"group_ids has {len(ids)} entries but rewards has {n}; one id per completion"
        )
    return ids


def check_hint_kind(num_groups: Any, labels: list) -> None:
    """Raises ValueError if ``num_groups`` is given with ``labels`` (ids that are not int64)."""
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
    # NOTE: pandas Series and other array-likes are read as arrays, other sequences iterated.
    array_like = not isinstance(group_ids, (tuple, range)) and hasattr(group_ids, "__array__")
    try:
        values = np.asarray(group_ids) if array_like else list(group_ids)
    except Exception as exc:
        action = "read a {} as an array" if array_like else "iterate a {}"
        raise TypeError(
            f"group_ids: could not {action.format(type(group_ids).__name__)} "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return _array_ids(values) if array_like else _list_ids(values)


def _array_ids(array: np.ndarray) -> np.ndarray | list:
    if array.ndim != 1:
        raise ValueError(f"group_ids must be 1-D [N], got shape {array.shape}")
    kind = array.dtype.kind
    if kind in "iu":  # uint64: exact int64 when it fits, else Python ints
        if kind == "u" and array.itemsize == 8 and array.size and int(array.max()) > 2**63 - 1:
            return array.tolist()
        return array.astype(np.int64, copy=False)
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
    if not types <= _PLAIN_ID_TYPES:  # values of other types are checked one by one
        for i, value in enumerate(labels):
            if type(value) not in _PLAIN_ID_TYPES:
                try:
                    problem = _id_problem(value)
                except RecursionError:
                    problem = TypeError, f"a {type(value).__name__} nested too deeply"
                if problem is not None:
                    raise problem[0](f"group_ids[{i}] is {problem[1]}; {_ID_RULE}")
    return labels


# What the rule says about values of a type, by the first of these classes it is a subclass of.
_ID_CLASSES = (
    ((str, bytes), "valid"),
    ((tuple, frozenset), "container"),
    ((bool, np.bool_), "bool"),
    ((np.datetime64, np.timedelta64), "time"),  # before the integers: timedelta64 is one
    ((int, np.integer, numbers.Integral), "valid"),
    ((numbers.Number, np.number), "number"),
    ((torch.Tensor, np.ndarray), "array"),
)


@functools.cache
def _id_kind(cls: type) -> str:
    """The rule's kind of values of type ``cls`` (memoised: only the type is looked at); "other":
    hashable and equal to itself, checked value by value."""
    return next((kind for bases, kind in _ID_CLASSES if issubclass(cls, bases)), "other")


def _id_problem(value: Any) -> tuple[type[Exception], str] | None:
    """Why ``value`` is not a valid group id, as ``(exception type, description)``, or None."""
    kind = _id_kind(type(value))
    if kind == "valid" or (kind == "time" and value == value):
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


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are the same device when 0 is the current one."""
    if a.type == b.type == "cuda" and (a.index is None or b.index is None):
        current = torch.cuda.current_device()
        return len({current if d.index is None else d.index for d in (a, b)}) == 1
    return a == b


def hinted_codes(ids: torch.Tensor, num_groups: int, check_range: bool = True) -> Groups:
    """Integer ``ids`` used as codes with the ``num_groups`` hint (see
    :func:`factorize_group_ids`): checked on CPU, asserted asynchronously elsewhere."""
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
    # NOTE: reading the range back would sync CUDA and break torch.compile graphs: assert there.
    if codes.device.type == "cpu" and not torch.compiler.is_compiling():
        check_code_range(codes, num_groups)
    elif check_range:
        torch._assert_async(
            ((codes >= 0) & (codes < num_groups)).all(),
            "group_ids out of range [0, num_groups)",
        )
    return Groups(codes, num_groups)


def compact(groups: Groups) -> Groups:
    """``groups`` renumbered to the groups that occur when the hint names more groups than there
    are rows (memory follows the rows; one host sync on CUDA), else ``groups`` itself."""
    if groups.num_groups <= max(groups.codes.numel(), 1):
        return groups
    present, codes = torch.unique(groups.codes, return_inverse=True)
    return Groups(codes, int(present.shape[0]))


def check_code_range(codes: torch.Tensor, num_groups: int) -> None:
    """Raises ValueError unless every code of a CPU tensor lies in ``[0, num_groups)``."""
    if codes.numel():
        check_code_bounds(*(int(v) for v in torch.aminmax(codes)), num_groups)


def check_code_bounds(low: int, high: int, num_groups: int) -> None:
    """Raises ValueError unless codes from ``low`` to ``high`` lie in ``[0, num_groups)``."""
    if low < 0 or high >= num_groups:
        raise ValueError(
            f"with num_groups={num_groups}, group_ids must lie in [0, {num_groups}); "
            f"found values from {low} to {high}"
        )


# ----------------------------------------------------------------------------- options


def check_backend(backend: Any) -> str:
    """``backend`` if it is ``"auto"``, ``"torch"`` or ``"triton"``, else ValueError."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    return backend


def resolve_backend(backend: str, device: torch.device, dim: int | None = None) -> str:
    """``"torch"`` or ``"triton"`` for ``[N, dim]`` embeddings on ``device``; raises for an
    impossible explicit request (``"auto"`` falls back to ``"torch"`` instead)."""
    if check_backend(backend) == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"
    reason = _triton.unavailable_reason(device, dim)
    if reason is not None and backend == "triton":
        raise RuntimeError(f"backend='triton' cannot run here: {reason}")
    return "torch" if reason is not None else "triton"


def check_number(name: str, value: Any) -> float:
    """``value`` as a float: any real number type (Python, numpy; booleans and 0-d tensors are
    refused with a TypeError naming ``name``)."""
    if type(value) is float:
        return value  # the common case
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    return float(value)


def _check_scalar(name: str, value: Any, *, positive: bool, at_most: float | None = None) -> float:
    """``value`` as a float, checked against the bounds."""
    if type(value) is not float:
        value = check_number(name, value)
    too_small = value <= 0 if positive else value < 0
    if not math.isfinite(value) or too_small or (at_most is not None and value > at_most):
        kind = "a finite number > 0" if positive else "a finite number >= 0"
        if at_most is not None:
            kind += f" and <= {at_most:g}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value


def check_min_denominator(value: Any) -> float:
    """``min_denominator`` as a float in (0, 1]."""
    # NOTE: above 1 the clamp would also shrink rewards with SMI = 0 (groups of one, orthogonal
    # completions), which is not DRA; the clamp is only a guard for 1 + SMI near or below 0.
    return _check_scalar("min_denominator", value, positive=True, at_most=1.0)


def check_eps(value: Any, scale: str) -> float:
    """``eps`` as a float: > 0 with ``scale="std"``, >= 0 with ``scale="none"``."""
    # NOTE: with scale="std" and eps = 0, a group of equal rewards gives 0 / 0 = NaN.
    return _check_scalar("eps", value, positive=scale == "std")


def check_scale(scale: Any) -> str:
    """``scale``: ``"std"`` (GRPO) or ``"none"`` (DR.GRPO)."""
    if scale not in ("std", "none"):
        raise ValueError(f"scale must be 'std' (GRPO) or 'none' (DR.GRPO), got {scale!r}")
    return scale
