"""DRA when the rows of a group are spread over the processes of a ``torch.distributed`` group.

The user documentation (how it works, errors, communication costs, other measures, which path
runs where) is docs/api.md, "Groups split across processes".
"""

from __future__ import annotations

import functools
import inspect
import pickle
import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from dra_kernels import api, inputs, measures, torch_backend
from dra_kernels.inputs import EMBEDDING_DTYPES, Groups
from dra_kernels.measures import MEASURES
from dra_kernels.reference import DEFAULT_ETA, DEFAULT_LAM, adjust_from_smi

__all__ = [
    "adjust_rewards",
    "allreduce_payload_bytes",
    "dra_advantages",
    "global_group_codes",
    "smi_scores",
]

# Kinds of group ids a rank may hold; ranks with no rows are compatible with any kind.
_EMPTY, _INTEGER, _HASHABLE = 0, 1, 2

# The functions and the scales, as numbered in the header.
_OPS = ("global_group_codes", "smi_scores", "adjust_rewards", "dra_advantages")
_SCALES = ("std", "none", "unused")

# Header columns (after the status and the message length that _exchange puts first).
(_OP, _KIND, _UNIQUE, _ROWS, _DIM, _FLOAT64, _NUM_GROUPS, _SCALE, _MIN_DEN, _EPS, _MEASURE, _ETA,
 _LAM, _EMBEDDING_DTYPE) = range(2, 16)  # fmt: skip
_HEADER_WIDTH = 14
_MAX_MESSAGE_BYTES = 4096


def allreduce_payload_bytes(num_groups: int, dim: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the one tensor that :func:`adjust_rewards` all-reduces: ``K * (D + 1) * itemsize``.

    Args:
        num_groups: ``K``, the number of groups across all ranks.
        dim: ``D``, the embedding width.
        dtype: the compute dtype (float32, or float64 when an input is float64).

    Returns:
        The payload in bytes; a ring all-reduce sends about ``2 * (W - 1) / W`` times this per rank.

    Example:
        >>> allreduce_payload_bytes(64, 512)
        131328
    """
    return num_groups * (dim + 1) * dtype.itemsize


# ----------------------------------------------------------------------------- process group


def _active(process_group: Any) -> bool:
    """True when a collective over ``process_group`` involves more than this process."""
    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise RuntimeError("a process_group was given but torch.distributed is not initialised")
        return False
    return dist.get_world_size(process_group) > 1


def _status_device(process_group: Any) -> torch.device:
    """Where the header goes: a device the group's backend takes whatever this rank's inputs."""
    backend = str(dist.get_backend(process_group))
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _exchange(row: list[int], error: Exception | None, op: str, pg: Any) -> torch.Tensor:
    """Every rank's ``[status, message bytes, *row]`` as a ``[W, 2 + len(row)]`` CPU table.

    A rank whose ``error`` is set takes part with a row of zeros. If any rank failed, every rank
    raises here: a failing rank its own error, the others a RuntimeError naming the failing ranks.
    """
    message = b""
    if error is not None:
        message = f"{type(error).__name__}: {error}".encode()[:_MAX_MESSAGE_BYTES]
        row = [0] * len(row)
    header = torch.tensor([int(error is not None), len(message), *row], dtype=torch.int64)
    device = _status_device(pg)
    parts = [torch.empty_like(header, device=device) for _ in range(dist.get_world_size(pg))]
    dist.all_gather(parts, header.to(device), group=pg)
    table = torch.stack(parts).cpu()
    failed = table[:, 0].nonzero().flatten().tolist()
    if not failed:
        return table
    width = int(table[:, 1].max())
    mine = torch.tensor(list(message.ljust(width, b"\0")), dtype=torch.uint8)
    texts = [torch.empty_like(mine, device=device) for _ in parts]
    dist.all_gather(texts, mine.to(device), group=pg)
    if error is not None:
        raise error
    found = "; ".join(
        f"rank {r}: {bytes(texts[r][: int(table[r, 1])].cpu().tolist()).decode(errors='replace')}"
        for r in failed
    )
    ranks = ("rank " if len(failed) == 1 else "ranks ") + ", ".join(str(r) for r in failed)
    raise RuntimeError(
        f"dra_kernels.distributed.{op}: the inputs of {ranks} were refused, so no rank computed "
        f"anything ({found})"
    )


def _float_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


def _bits_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def _agree(table: torch.Tensor, column: int, what: str, show: Callable[[int], str]) -> None:
    values = table[:, column].tolist()
    if len(set(values)) > 1:
        found = ", ".join(f"rank {r}: {show(v)}" for r, v in enumerate(values))
        raise ValueError(f"{what} must be the same on every rank, found {found}")


@dataclass(frozen=True)
class _Agreed:
    """What the ranks agreed on in the header."""

    dim: int  # D
    float64: bool  # the compute dtype is float64 (an input on some rank is float64)
    embedding_dtype: torch.dtype  # the promoted dtype of every rank's embeddings


def _consensus(table: torch.Tensor) -> _Agreed:
    """``D`` and the dtypes agreed by the ranks holding rows; where the ranks disagree on the
    function, its options or D, every rank raises the same error (all see the same table)."""
    _agree(table, _OP, "the function called", lambda v: _OPS[v])
    _agree(table, _NUM_GROUPS, "num_groups", lambda v: "none" if v < 0 else str(v))
    _agree(table, _SCALE, "scale", lambda v: _SCALES[v])
    _agree(table, _MIN_DEN, "min_denominator", lambda v: repr(_bits_float(v)))
    _agree(table, _EPS, "eps", lambda v: repr(_bits_float(v)))
    _agree(table, _MEASURE, "measure", lambda v: repr(MEASURES[v]))
    _agree(table, _ETA, "eta", lambda v: repr(_bits_float(v)))
    _agree(table, _LAM, "lam", lambda v: repr(_bits_float(v)))
    rows = table[table[:, _ROWS] > 0]
    if rows.shape[0] == 0:
        return _Agreed(int(table[0, _DIM]), False, torch.float32)
    dims = sorted(set(rows[:, _DIM].tolist()))
    if len(dims) > 1:
        found = ", ".join(
            f"rank {r}: D={int(d)}" for r, d in enumerate(table[:, _DIM]) if table[r, _ROWS]
        )
        raise ValueError(f"embeddings must have the same width D on every rank, found {found}")
    # NOTE: as for the concatenation: float64 anywhere computes in float64, embeddings take the
    # dtype torch.cat would give them.
    dtypes = [EMBEDDING_DTYPES[v] for v in rows[:, _EMBEDDING_DTYPE].tolist() if v >= 0]
    embedding_dtype = functools.reduce(torch.promote_types, dtypes) if dtypes else torch.float32
    return _Agreed(int(dims[0]), bool(rows[:, _FLOAT64].any()), embedding_dtype)


# ----------------------------------------------------------------------------- local checks


class _Options(NamedTuple):
    """The options as the core checks them; the defaults stand for options a function lacks."""

    scale: str = "unused"
    min_denominator: float = 0.0
    eps: float = 0.0
    measure: str = "graph_cut"
    eta: float = DEFAULT_ETA
    lam: float = DEFAULT_LAM


@dataclass
class _Local:
    """One rank's inputs after every check, before any communication."""

    options: _Options
    rewards: torch.Tensor | None
    embeddings: torch.Tensor | None
    device: torch.device
    kind: int
    ids: Any  # int64 tensor on device (integer / empty kinds) or the list of labels
    hinted: Groups | None  # the codes, when num_groups is given
    unique: torch.Tensor | None  # distinct integer ids (active, no hint)
    payload: bytes | None  # pickled distinct labels (active, no hint)
    n_unique: int
    float64: bool


def _local_ids(group_ids: Any, n: int | None, device: torch.device) -> tuple[int, Any]:
    """This rank's ids as ``(kind, value)``: an int64 tensor on ``device`` or a list of labels,
    checked by the core's rule (:func:`dra_kernels.inputs.id_values`)."""
    ids = inputs.id_values(group_ids, n, device)
    if isinstance(ids, list) and ids:
        return _HASHABLE, ids
    if isinstance(ids, list) or ids.shape[0] == 0:
        return _EMPTY, torch.empty(0, dtype=torch.int64, device=device)
    if ids.dtype == torch.uint64:  # .to(int64) would wrap: the host rule keeps ids exact
        return _local_ids(ids.cpu().numpy(), n, device)
    return _INTEGER, ids.to(torch.int64)


def _check_local(
    options: _Options,
    rewards: Any,
    embeddings: Any,
    group_ids: Any,
    num_groups: int | None,
    pg: Any,
    backend: Any = "torch",
    device: torch.device | str | None = None,
) -> _Local:
    """Every check of this rank's data and ids (the options are checked before), in the core's
    order; no collective."""
    r = e = None
    if embeddings is not None or rewards is not None:
        r, e, device = inputs.checked_data(rewards, embeddings)
    float64 = torch.float64 in [t.dtype for t in (r, e) if t is not None]  # the compute dtype
    if inputs.check_backend(backend) == "triton":
        raise ValueError(
            "backend='triton' runs in one process only: across ranks the per-group sums are "
            "all-reduced between torch ops (the kernel does not expose them); use backend='auto' "
            "or 'torch'"
        )
    assert device is not None
    device = torch.device(device)
    if dist.get_backend(pg) == "nccl" and device.type != "cuda":
        raise ValueError(
            f"the process group uses NCCL but the embeddings are on {device}; pass CUDA tensors "
            "(the collectives run on the embeddings' device)"
        )
    kind, ids = _local_ids(group_ids, None if e is None else e.shape[0], device)
    hinted = unique = payload = None
    if kind == _HASHABLE:
        inputs.check_hint_kind(num_groups, ids)
    if num_groups is not None:
        hinted = inputs.hinted_codes(ids, num_groups)
    n_unique = 0
    if hinted is None and kind != _HASHABLE:
        unique = torch.unique(ids)
        n_unique = int(unique.shape[0])
    elif hinted is None:
        distinct = list(dict.fromkeys(ids))
        n_unique = len(distinct)
        try:
            payload = pickle.dumps(distinct)
        except Exception as exc:
            raise TypeError(
                "group_ids labels must be picklable to be compared across ranks; pickling "
                f"them raised {type(exc).__name__}: {exc}"
            ) from None
    return _Local(options, r, e, device, kind, ids, hinted, unique, payload, n_unique, float64)


# ----------------------------------------------------------------------------- group ids


def _gathered_codes(values: torch.Tensor, sizes: list[int], ids: torch.Tensor, pg: Any) -> Groups:
    """The codes of ``ids`` in the sorted union of every rank's ``values`` (``sizes[r]`` of them on
    rank ``r``): one ``all_gather`` of ``max(sizes)`` int64 per rank."""
    width = max(sizes)
    if width == 0:
        return Groups(ids, 0)
    padded = values.new_zeros(width)
    padded[: values.shape[0]] = values
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=pg)
    union = torch.unique(torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)]))
    return Groups(torch.searchsorted(union, ids), int(union.shape[0]))


def _union_hashable_codes(local: _Local, op: str, pg: Any) -> Groups:
    # NOTE: integer ids and labels are compared as Python values, as in one concatenated list.
    labels = local.ids if local.kind == _HASHABLE else local.ids.tolist()
    payload = local.payload
    if payload is None:  # integer or empty ranks: Python ints always pickle
        payload = pickle.dumps(list(dict.fromkeys(labels)))
    parts: list[Any] = [None] * dist.get_world_size(pg)
    dist.all_gather_object(parts, payload, group=pg)
    error = groups = None
    try:
        mapping: dict[Hashable, int] = {}
        for part in parts:  # rank order, then first appearance: the same codes on every rank
            for label in pickle.loads(part):
                mapping.setdefault(label, len(mapping))
        codes = torch.tensor([mapping[g] for g in labels], dtype=torch.int64)
        groups = Groups(codes.to(local.device), len(mapping))
    except Exception as exc:  # another rank's label that this one cannot read back or compare
        error = TypeError(
            f"group_ids could not be compared across ranks ({type(exc).__name__}: {exc})"
        )
    _exchange([], error, op, pg)  # so that such a failure on one rank fails every rank
    assert groups is not None
    return groups


def _plan(
    op: str, num_groups: int | None, pg: Any, check: Callable[[], _Local]
) -> tuple[_Local, Groups, _Agreed]:
    """This rank's checked inputs, the global codes of its rows and what the ranks agreed on."""
    error = local = None
    try:
        local = check()
    except Exception as exc:  # reported to every rank by the header exchange below
        error = exc
    row = [0] * _HEADER_WIDTH
    if local is not None:
        o, e = local.options, local.embeddings
        row = [
            _OPS.index(op),
            local.kind,
            local.n_unique,
            len(local.ids),
            0 if e is None else e.shape[1],
            int(local.float64),
            -1 if num_groups is None else int(num_groups),
            _SCALES.index(o.scale),
            _float_bits(o.min_denominator),
            _float_bits(o.eps),
            MEASURES.index(o.measure),
            _float_bits(o.eta),
            _float_bits(o.lam),
            -1 if e is None else EMBEDDING_DTYPES.index(e.dtype),
        ]
    table = _exchange(row, error, op, pg)
    assert local is not None
    agreed = _consensus(table)
    rows = table[:, _ROWS].tolist()
    if local.hinted is not None and local.hinted.num_groups > sum(rows):
        # NOTE: a hint above all ranks' rows: the codes that occur, renumbered (memory follows
        # the rows, not the hint).
        groups = _gathered_codes(local.hinted.codes, rows, local.hinted.codes, pg)
    elif local.hinted is not None:
        groups = local.hinted
    elif _HASHABLE in table[:, _KIND].tolist():
        groups = _union_hashable_codes(local, op, pg)
    else:
        assert local.unique is not None
        groups = _gathered_codes(local.unique, table[:, _UNIQUE].tolist(), local.ids, pg)
    return local, groups, agreed


def global_group_codes(
    group_ids: Any,
    *,
    device: torch.device | str = "cpu",
    num_groups: int | None = None,
    process_group: Any = None,
) -> Groups:
    """Dense group codes that agree across ranks: equal ids get equal codes on every rank.

    Collective: every rank of ``process_group`` must call it (its cost: docs/api.md, "group ids"
    under "Communication"). Codes are the same for a fixed world size and layout; with
    ``num_groups`` the integer ids are the codes.

    Args:
        group_ids: this rank's ``[n]`` ids (the core's rule; may be empty).
        device: where the codes go; with NCCL a CUDA device.
        num_groups: optional hint for integer ids in ``[0, num_groups)`` on every rank.
        process_group: the ``torch.distributed`` group (default: the world).

    Returns:
        :class:`dra_kernels.inputs.Groups` with int64 codes in ``[0, num_groups)`` on ``device``
        (in one process: :func:`dra_kernels.factorize_group_ids`).
    """
    if not _active(process_group):
        return inputs.factorize_group_ids(group_ids, None, device, num_groups)
    args = (_Options(), None, None, group_ids, num_groups, process_group)
    check = functools.partial(_check_local, *args, device=device)
    return _plan("global_group_codes", num_groups, process_group, check)[1]


# ----------------------------------------------------------------------------- computation


class _GlobalSum(torch.autograd.Function):
    """The sum over ranks of a per-rank tensor. Backward: the gradient of this rank's part, the
    other ranks' parts held constant, so no collective runs in the backward pass."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, pg: Any) -> torch.Tensor:
        total = local.clone()
        dist.all_reduce(total, group=pg)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


@functools.cache
def _keyword_defaults(op: str) -> dict[str, Any]:
    """The keywords of the core function ``op`` and their defaults (its shown signature)."""
    parameters = inspect.signature(getattr(api, op)).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


def _run(op: str, data: tuple[Any, ...], pg: Any, options: dict[str, Any]) -> Any:
    """The public function ``op`` for this rank's ``data`` (rewards, embeddings, group ids): the
    core's function in one process; across ranks its checks, the header, the computation."""
    core = getattr(api, op)
    if not _active(pg):
        return core(*data, **options)
    rewards, embeddings, group_ids = (None, *data) if len(data) == 2 else data
    defaults = _keyword_defaults(op)
    values = {**defaults, **options}

    def check() -> _Local:  # the core's checks, in the core's order
        if len(values) > len(defaults):
            core(*data, **options)  # raises Python's own TypeError, before the function's body runs
        scale, md, eps = "unused", 0.0, 0.0
        if op == "dra_advantages":
            scale = inputs.check_scale(values["scale"])
            eps = inputs.check_eps(values["eps"], scale)
        if op != "smi_scores":
            md = inputs.check_min_denominator(values["min_denominator"])
        measure = measures.check_measure(*(values[k] for k in ("measure", "eta", "lam")))
        checked = _Options(scale, md, eps, *measure)
        num_groups, backend = values["num_groups"], values["backend"]
        return _check_local(checked, rewards, embeddings, group_ids, num_groups, pg, backend)

    local, groups, agreed = _plan(op, values["num_groups"], pg, check)
    o, e, r = local.options, local.embeddings, local.rewards
    assert e is not None
    dtype = torch.float64 if agreed.float64 else torch.float32
    if e.shape[0] == 0:
        # NOTE: a rank without rows takes part with the agreed width and dtypes, whatever kind of
        # empty input it holds (an empty list is float64 while the others' rows are float32).
        e = e.new_zeros(0, agreed.dim, dtype=agreed.embedding_dtype)
        r = None if r is None else r.new_zeros(0, dtype=dtype)
    if o.measure == "graph_cut":
        smi, counts = _smi(e, groups, dtype, pg)
    else:
        # NOTE: rows travel in the embeddings' promoted dtype, an exact conversion.
        smi, counts = _owner_smi(e.detach().to(agreed.embedding_dtype), groups, dtype, o, pg)
    if op == "smi_scores":
        return inputs.convert_out(smi, embeddings)
    adjusted = adjust_from_smi(r, smi, o.min_denominator)
    if op == "dra_advantages":
        adjusted = _advantages(adjusted, groups, counts, o, pg)
    return inputs.convert_out(adjusted, rewards)


def _advantages(
    adjusted: torch.Tensor, groups: Groups, counts: torch.Tensor, options: _Options, pg: Any
) -> torch.Tensor:
    """Advantages of this rank's adjusted rewards: the core's two-pass statistics, with group sums
    added over ranks (``counts``: the global row counts, in the compute dtype)."""
    codes, k = groups.codes, groups.num_groups

    def group_sum(values: torch.Tensor) -> torch.Tensor:
        totals = counts.new_zeros(k).index_add(0, codes, values)
        if k > 0:
            totals = _GlobalSum.apply(totals, pg)
        return totals

    mean = group_sum(adjusted) / counts.clamp(min=1)
    centred = adjusted - mean.index_select(0, codes)
    if options.scale == "none":
        return centred
    # NOTE: the other ranks' deviations enter as constants, so their (zero-sum) dependence on the
    # mean would be missing from the gradient: the mean is held constant in this sum instead.
    deviations = adjusted - mean.detach().index_select(0, codes)
    std = torch_backend.group_std(group_sum(deviations * deviations), counts)
    return centred / (std.index_select(0, codes) + options.eps)


def _smi(
    e: torch.Tensor, groups: Groups, dtype: torch.dtype, pg: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local Graph-Cut SMI and the global per-group row counts (in ``dtype``)."""
    sums, counts = torch_backend.group_unit_sums(e, groups.codes, groups.num_groups, dtype)
    if groups.num_groups > 0:
        # NOTE: counts ride as an extra column (exact in float32 up to 2**24 rows per group).
        packed = torch.cat([sums, counts.to(dtype).unsqueeze(1)], dim=1)
        dist.all_reduce(packed, group=pg)
        sums, counts = packed[:, :-1], packed[:, -1].round().to(torch.int64)
    smi = torch_backend.smi_from_sums(e, groups.codes, sums, counts, dtype)
    return smi, counts.to(dtype)


def _exchange_rows(
    outgoing: list[torch.Tensor], incoming: list[torch.Tensor], me: int, pg: Any
) -> None:
    """Send ``outgoing[p]`` to and receive ``incoming[p]`` from every other rank ``p`` where not
    empty, as one batch of point-to-point operations (gloo has no all_to_all; NCCL wants one)."""
    ops = []
    for p in range(len(outgoing)):
        if p == me:
            continue
        peer = p if pg is None else dist.get_global_rank(pg, p)
        if outgoing[p].numel():
            ops.append(dist.P2POp(dist.isend, outgoing[p], peer, pg))
        if incoming[p].numel():
            ops.append(dist.P2POp(dist.irecv, incoming[p], peer, pg))
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


def _owner_smi(
    e: torch.Tensor, groups: Groups, dtype: torch.dtype, options: _Options, pg: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Facility-location / log-det SMI, each group computed whole on its owner (docs/api.md,
    "Other measures"), and the global per-group row counts (in ``dtype``)."""
    codes, k = groups.codes, groups.num_groups
    device = e.device
    if k == 0:  # no rows on any rank
        empty = torch.zeros(0, dtype=dtype, device=device)
        return empty, empty
    world, me = dist.get_world_size(pg), dist.get_rank(pg)
    local_counts = torch_backend.group_counts(codes, k)
    parts = [torch.empty_like(local_counts) for _ in range(world)]
    dist.all_gather(parts, local_counts, group=pg)
    table = torch.stack(parts).cpu()  # [W, K]
    owner = torch.from_numpy(table.numpy().argmax(axis=0))  # the first maximum: the lowest rank
    owned = (owner == me).nonzero().flatten()  # this rank's groups, in code order
    sends = torch.zeros(world, dtype=torch.int64).index_add_(0, owner, table[me]).tolist()
    receives = table[:, owned].sum(dim=1).tolist()
    key = owner.to(device).index_select(0, codes) * k + codes
    order = torch.argsort(key, stable=True)  # this rank's rows by (owner, code, row)
    rows = e.index_select(0, order)
    outgoing = list(rows.split(sends))
    incoming = [
        outgoing[p] if p == me else rows.new_empty(receives[p], rows.shape[1]) for p in range(world)
    ]
    _exchange_rows(outgoing, incoming, me, pg)
    owned_codes = torch.cat([owned.repeat_interleave(table[p, owned]) for p in range(world)])
    values = measures.smi_by_measure(
        torch.cat(incoming),
        owned_codes.to(device),
        k,
        options.measure,
        eta=options.eta,
        lam=options.lam,
        dtype=dtype,
    )
    replies = list(values.split(receives))
    answers = [replies[p] if p == me else values.new_empty(sends[p]) for p in range(world)]
    _exchange_rows(replies, answers, me, pg)
    smi = torch.empty(codes.shape[0], dtype=values.dtype, device=device)
    smi[order] = torch.cat(answers)
    return smi.to(dtype), table.sum(dim=0).to(device, dtype)


# ----------------------------------------------------------------------------- public API


def _core_signature(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` shown (``help()``, :func:`inspect.signature`) with the core function's signature
    plus ``process_group``: its ``**options`` are that function's keywords and defaults."""
    core = inspect.signature(getattr(api, fn.__name__), eval_str=True)
    pg = inspect.Parameter(
        "process_group", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Any
    )
    fn.__signature__ = core.replace(parameters=[*core.parameters.values(), pg])
    return fn


@_core_signature
def smi_scores(
    embeddings: Any, group_ids: Any, *, process_group: Any = None, **options: Any
) -> Any:
    """:func:`dra_kernels.smi_scores` for this rank's rows, with groups spanning ranks.

    Collective: every rank of ``process_group`` calls it with its own rows (possibly none), and
    the same options. Each gets, for its rows, the single-process result on the concatenation of
    all ranks' rows.

    Args:
        embeddings: this rank's ``[n, D]`` embeddings (a rank without rows passes ``[0, D]``).
        group_ids: this rank's ``[n]`` group ids (integers or hashable labels).
        process_group: the ``torch.distributed`` group (default: the world).
        **options: every keyword of :func:`dra_kernels.smi_scores`, with its defaults, checked by
            the same code; across ranks ``backend="triton"`` is refused (docs/api.md, "Which path
            runs where"). ``num_groups``, the same on every rank, skips the id exchange.

    Returns:
        ``[n]`` SMI of this rank's rows, of the kind of ``embeddings`` (never requires grad).

    Raises:
        TypeError: a keyword the core function does not take, as a call of it would.
    """
    return _run("smi_scores", (embeddings, group_ids), process_group, options)


@_core_signature
def adjust_rewards(
    rewards: Any, embeddings: Any, group_ids: Any, *, process_group: Any = None, **options: Any
) -> Any:
    """:func:`dra_kernels.adjust_rewards` for this rank's rows, with groups spanning ranks.

    Collective, as :func:`smi_scores`.

    Args:
        rewards: this rank's ``[n]`` rewards.
        embeddings, group_ids, process_group: as in :func:`smi_scores`.
        **options: every keyword of :func:`dra_kernels.adjust_rewards`: those of
            :func:`smi_scores` and ``min_denominator``, the lower clamp of ``1 + SMI``.

    Returns:
        ``[n]`` adjusted rewards of the kind of ``rewards``; differentiable in ``rewards``
        (``1 / max(1 + SMI, min_denominator)`` per row).

    Raises:
        TypeError: a keyword the core function does not take, as a call of it would.
    """
    return _run("adjust_rewards", (rewards, embeddings, group_ids), process_group, options)


@_core_signature
def dra_advantages(
    rewards: Any, embeddings: Any, group_ids: Any, *, process_group: Any = None, **options: Any
) -> Any:
    """:func:`dra_kernels.dra_advantages` for this rank's rows, with groups spanning ranks.

    Collective, as :func:`smi_scores`; two more all-reduces of ``K`` elements (the core's two-pass
    statistics).

    Args:
        rewards: this rank's ``[n]`` rewards.
        embeddings, group_ids, process_group: as in :func:`smi_scores`.
        **options: every keyword of :func:`dra_kernels.dra_advantages`: those of
            :func:`adjust_rewards`, ``scale`` (``"std"``, GRPO, or ``"none"``, DR.GRPO) and
            ``eps``.

    Returns:
        ``[n]`` advantages of this rank's rows, of the kind of ``rewards``; differentiable in this
        rank's ``rewards`` (the other ranks' rewards held constant).

    Raises:
        TypeError: a keyword the core function does not take, as a call of it would.
    """
    return _run("dra_advantages", (rewards, embeddings, group_ids), process_group, options)
