"""DRA when the rows of a group are spread over the processes of a ``torch.distributed`` group.

In data-parallel RL training each process (rank) holds some completions, and the completions of
one prompt may sit on several ranks. The functions here give every rank, for its own rows, what
:func:`dra_kernels.adjust_rewards` (and :func:`~dra_kernels.smi_scores`,
:func:`~dra_kernels.dra_advantages`) return on the concatenation of all ranks' rows, to float
tolerance, however the rows are split; a rank may hold no rows at all.

How: with unit rows ``u_i`` the identity ``SMI_i = u_i . S_g - |u_i|^2`` (see
:mod:`dra_kernels.torch_backend`) needs only the per-group sums ``S_g`` of unit rows and the group
sizes. Each rank sums its own rows per group, one ``all_reduce`` adds the ``[K, D + 1]`` partial
sums (the last column holds the row counts), and each rank finishes its rows locally. Embeddings
never leave their rank.

Errors: every argument is checked by the core's own checks (:mod:`dra_kernels.inputs`), on each
rank, before any data moves. The first collective of every call is one ``all_gather`` of a small
header (about 100 bytes per rank: a status, the function, the options, kinds and sizes); a rank
whose inputs were refused still takes part in it. If any rank failed, every rank raises at once: the
failing ranks their own error, the others a RuntimeError naming the failing ranks and their
errors. Ranks that disagree on the function, ``num_groups``, ``scale``, ``eps``,
``min_denominator``, ``measure``, ``eta``, ``lam`` or the width ``D`` all raise the same
ValueError. So an argument error on one rank never leaves the others waiting for the process
group's timeout.

Communication, per call, with ``K`` groups, ``D`` embedding columns and ``W`` ranks:

- the header: one ``all_gather`` of 16 int64 values (128 bytes) per rank (a host synchronisation
  on CUDA).
- adjust / SMI: one ``all_reduce`` of ``K * (D + 1)`` elements of the compute dtype (float32, or
  float64 when an input is float64): :func:`allreduce_payload_bytes`. A bandwidth-optimal
  all-reduce (NCCL's ring or tree, gloo's ring) sends about ``2 * (W - 1) / W`` times that payload
  per rank. Example: ``K = 64`` prompts, ``D = 512``, float32: a 131,328-byte payload, about 197 KB
  sent per rank with ``W = 4``; gathering the 384 completions' embeddings (``G = 6``) instead would
  move 786 KB to every rank.
- advantages: two more ``all_reduce`` of ``K`` elements (group totals, then squared deviations).
- group ids, unless ``num_groups`` is given (integer ids already in ``[0, num_groups)``, used as
  codes with no extra communication): the union of the ranks' distinct ids: for integer ids that
  fit int64 an ``all_gather`` of ``max over ranks of (distinct ids on a rank) * 8`` bytes per
  rank; for other ids (strings, tuples, integers beyond int64...) ``all_gather_object`` of each
  rank's pickled distinct ids, then an ``all_gather`` of 16 bytes per rank so that an id that
  another rank cannot read back fails on every rank. Both are ``O(number of groups)``,
  independent of ``N`` and ``D``.

Group ids follow the core's rule (docs/semantics.md, "Group ids"), checked by the same code.

Other measures (``measure="facility_location"`` / ``"log_det"``, with ``eta`` and ``lam``, checked
by :func:`dra_kernels.measures.check_measure`; see docs/measures.md): they are not linear in the
similarities, so no per-group sum suffices: each group is computed whole on one rank, its owner,
with :func:`dra_kernels.measures.smi_by_measure`. The owner is the rank holding most of the
group's rows (the lowest such rank on a tie): deterministic, computed identically by every rank
from the same table, and it moves the fewest rows: a group whose rows all sit on one rank never
leaves it (no embedding moves at all when no group spans ranks). Each rank sends an owner its rows
of the owner's groups ordered by (group, row); the owner stacks the blocks in rank order, so each
group's rows are in (source rank, row) order, the order of the concatenation, and its SMI is the
single-process computation on the same rows: bit for bit on CPU where its batched products have
the shapes they have in one process (e.g. each group size once), to the rounding of those products
otherwise (a BLAS may round one matrix of a batch differently with the batch size). Per call,
after the header and the ids:

- one ``all_gather`` of each rank's per-group row counts: ``K`` int64 (``8 K`` bytes) per rank;
- one batch of point-to-point sends (``batch_isend_irecv``; gloo has no ``all_to_all``): each row
  not on its owner travels once, ``D`` values of the embeddings' dtype (float16 / bfloat16 /
  float32 / float64, the dtype ``torch.cat`` of all ranks' rows would have, so the conversion is
  exact);
- one batch of point-to-point sends back: one SMI value per moved row (float32, float64 for
  float64 embeddings);
- :func:`dra_advantages`: the same two all-reduces of ``K`` elements as Graph-Cut.

So ``M * (D * s + 4)`` bytes in all, ``M`` the rows not on their group's owner (at most ``N``, 0
when groups do not span ranks) and ``s`` the embedding itemsize, against Graph-Cut's all-reduce of
``K * (D + 1)`` values. Example: ``K = 64`` groups of ``G = 6`` spread evenly over ``W = 4``
ranks, ``D = 512``, float32: each owner holds 2 of a group's 6 rows (or 1 of them), so about 256
of the 384 rows move: 525 KB in total (about 131 KB received per rank where the owners are
spread evenly over the ranks), against a 131 KB payload per all-reduce, of which a ring sends
about 197 KB per rank. An owner holds its groups' rows (``N * D / W`` values when groups are
owned evenly, up to ``N * D`` when one rank holds most rows of every group) and their ``G x G``
matrices, and computes them alone, so the computation is spread over the ranks as the groups are
owned. The number of collectives does not depend on the number of groups.

Gradients: as in the core, embeddings are used detached and gradients flow through rewards. No
collective runs in the backward pass: each rank gets the derivatives of its own outputs with
respect to its own rewards, the other ranks' rewards held constant (the diagonal block of the
single-process Jacobian; for :func:`adjust_rewards` that is the whole of it, ``1 / max(1 + SMI,
min_denominator)`` per row).

Collectives run on the device of the embeddings (CPU with gloo, CUDA with NCCL; pass CUDA tensors
with NCCL, after ``torch.cuda.set_device``). Every rank of the process group must call the same
function, with the same options and the same ``D``. Results are deterministic for a fixed world
size and layout: the collectives reduce in a fixed order, and the global group codes do not
depend on timing.

Which path runs where (``backend``, with the core's choices and checks):

- one process (no initialised process group, or a group of one rank): the core's own function,
  :func:`dra_kernels.adjust_rewards` and so on, bit for bit: with ``backend="auto"`` the fused
  Triton kernel for CUDA tensors (when Triton is installed), the torch backend otherwise.
- across ranks: the torch backend's ops (:mod:`dra_kernels.torch_backend`) on the embeddings'
  device, whose per-group sums are all-reduced (the fused kernel does not expose them), and
  :mod:`dra_kernels.measures` on each group's owner for the other measures. ``"auto"`` and
  ``"torch"`` both run them; ``"triton"`` is refused with a ValueError on every rank.

Example (each rank, after ``torch.distributed.init_process_group``)::

    from dra_kernels import distributed

    adjusted = distributed.adjust_rewards(local_rewards, local_embeddings, local_prompt_ids)
    adjusted = distributed.adjust_rewards(
        local_rewards, local_embeddings, local_prompt_ids, measure="log_det", lam=0.5
    )
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dra_kernels import api, inputs, measures, torch_backend
from dra_kernels.inputs import EMBEDDING_DTYPES, Backend, Groups, Measure, Scale
from dra_kernels.measures import MEASURES
from dra_kernels.reference import (
    DEFAULT_EPS,
    DEFAULT_ETA,
    DEFAULT_LAM,
    DEFAULT_MIN_DENOMINATOR,
    adjust_from_smi,
)

__all__ = [
    "adjust_rewards",
    "allreduce_payload_bytes",
    "dra_advantages",
    "global_group_codes",
    "smi_scores",
]

# Kinds of group ids a rank may hold; ranks with no rows are compatible with any kind.
_EMPTY, _INTEGER, _HASHABLE = 0, 1, 2

# The functions, as numbered in the header.
_OPS = ("global_group_codes", "smi_scores", "adjust_rewards", "dra_advantages")

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
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return num_groups * (dim + 1) * itemsize


# ----------------------------------------------------------------------------- process group


def _active(process_group: Any) -> bool:
    """True when a collective over ``process_group`` involves more than this process."""
    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise RuntimeError("a process_group was given but torch.distributed is not initialised")
        return False
    return dist.get_world_size(process_group) > 1


def _check_device(process_group: Any, device: torch.device) -> None:
    backend = dist.get_backend(process_group)
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(
            f"the process group uses NCCL but the embeddings are on {device}; pass CUDA tensors "
            "(the collectives run on the embeddings' device)"
        )


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
    mine = torch.zeros(width, dtype=torch.uint8)
    mine[: len(message)] = torch.tensor(list(message), dtype=torch.uint8)
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
    """``D``, the compute and the embedding dtype agreed by the ranks that hold rows; raises on
    every rank where the ranks disagree on the function, its options or D (every rank sees the
    same table)."""
    _agree(table, _OP, "the function called", lambda v: _OPS[v])
    _agree(table, _NUM_GROUPS, "num_groups", lambda v: "none" if v < 0 else str(v))
    _agree(table, _SCALE, "scale", lambda v: ("std", "none", "unused")[v])
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
    # NOTE: as for the concatenation, float64 anywhere makes the whole computation float64, and
    # the embeddings' dtype is the one torch.cat would give them (float32 for float16 and
    # bfloat16 together).
    embedding_dtype = torch.float32
    kinds = sorted({int(v) for v in rows[:, _EMBEDDING_DTYPE].tolist() if v >= 0})
    if kinds:
        embedding_dtype = EMBEDDING_DTYPES[kinds[0]]
        for kind in kinds[1:]:
            embedding_dtype = torch.promote_types(embedding_dtype, EMBEDDING_DTYPES[kind])
    return _Agreed(int(dims[0]), bool(rows[:, _FLOAT64].any()), embedding_dtype)


# ----------------------------------------------------------------------------- local checks

# (scale: 0 "std", 1 "none", 2 unused; min_denominator; eps; measure: its index in MEASURES;
# eta; lam) as checked by the core.
_Options = tuple[int, float, float, int, float, float]
_NO_OPTIONS: _Options = (2, 0.0, 0.0, 0, DEFAULT_ETA, DEFAULT_LAM)


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
    options: Callable[[], _Options],
    rewards: Any,
    embeddings: Any,
    group_ids: Any,
    num_groups: int | None,
    pg: Any,
    backend: Any = "torch",
    device: torch.device | str | None = None,
) -> _Local:
    """Every check of this rank's arguments, in the core's order; no collective."""
    checked = options()
    r = e = None
    float64 = False
    if embeddings is not None or rewards is not None:
        r, e, device = inputs.checked_data(rewards, embeddings)
        dtypes = [t.dtype for t in (r, e) if t is not None and t.is_floating_point()]
        float64 = inputs.compute_dtype(*dtypes) == torch.float64
    if inputs.check_backend(backend) == "triton":
        raise ValueError(
            "backend='triton' runs in one process only: across ranks the per-group sums are "
            "all-reduced between torch ops (the kernel does not expose them); use backend='auto' "
            "or 'torch'"
        )
    assert device is not None
    device = torch.device(device)
    _check_device(pg, device)
    kind, ids = _local_ids(group_ids, None if e is None else e.shape[0], device)
    hinted = unique = payload = None
    if kind == _HASHABLE:
        inputs.check_hint_kind(num_groups, ids)
    if num_groups is not None:
        hinted = inputs.hinted_codes(ids, num_groups)
    n_unique = 0
    if hinted is None and kind == _INTEGER:
        unique = torch.unique(ids)
        n_unique = int(unique.shape[0])
    elif hinted is None and kind == _HASHABLE:
        distinct = list(dict.fromkeys(ids))
        n_unique = len(distinct)
        try:
            payload = pickle.dumps(distinct)
        except Exception as exc:
            raise TypeError(
                "group_ids labels must be picklable to be compared across ranks; pickling "
                f"them raised {type(exc).__name__}: {exc}"
            ) from None
    return _Local(checked, r, e, device, kind, ids, hinted, unique, payload, n_unique, float64)


# ----------------------------------------------------------------------------- group ids


def _union_integer_codes(local: _Local, table: torch.Tensor, pg: Any) -> Groups:
    ids, unique = local.ids, local.unique
    sizes = table[:, _UNIQUE].tolist()
    width = max(sizes)
    if width == 0:
        return Groups(ids, 0)
    padded = torch.zeros(width, dtype=torch.int64, device=ids.device)
    if unique is not None:
        padded[: unique.shape[0]] = unique
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=pg)
    union = torch.unique(torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)]))
    return Groups(torch.searchsorted(union, ids), int(union.shape[0]))


def _compact_hint(hinted: Groups, table: torch.Tensor, pg: Any) -> Groups:
    """A ``num_groups`` hint above every rank's rows together: the codes that occur, renumbered
    the same on every rank (one ``all_gather`` of at most the largest rank's rows), so memory
    follows the rows, not the hint."""
    codes = hinted.codes
    width = max(int(table[:, _ROWS].max()), 1)
    padded = torch.full((width,), -1, dtype=torch.int64, device=codes.device)
    present = torch.unique(codes)
    padded[: present.shape[0]] = present
    parts = [torch.empty_like(padded) for _ in range(table.shape[0])]
    dist.all_gather(parts, padded, group=pg)
    union = torch.unique(torch.cat(parts))
    union = union[union >= 0]
    return Groups(torch.searchsorted(union, codes), int(union.shape[0]))


def _union_hashable_codes(local: _Local, op: str, pg: Any) -> Groups:
    # NOTE: integer ids on some ranks and labels on others are compared as Python values, as
    # they would be in one concatenated list.
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
    """This rank's checked inputs, the global codes of its rows and what the ranks agreed on
    (``D``, the dtypes)."""
    error = local = None
    try:
        local = check()
    except Exception as exc:  # reported to every rank by the header exchange below
        error = exc
    row = [0] * _HEADER_WIDTH
    if local is not None:
        scale, min_denominator, eps, measure, eta, lam = local.options
        e = local.embeddings
        row = [
            _OPS.index(op),
            local.kind,
            local.n_unique,
            len(local.ids),
            0 if local.embeddings is None else local.embeddings.shape[1],
            int(local.float64),
            -1 if num_groups is None else int(num_groups),
            scale,
            _float_bits(min_denominator),
            _float_bits(eps),
            measure,
            _float_bits(eta),
            _float_bits(lam),
            -1 if e is None else EMBEDDING_DTYPES.index(e.dtype),
        ]
    table = _exchange(row, error, op, pg)
    assert local is not None
    agreed = _consensus(table)
    if local.hinted is not None and local.hinted.num_groups > int(table[:, _ROWS].sum()):
        groups = _compact_hint(local.hinted, table, pg)
    elif local.hinted is not None:
        groups = local.hinted
    elif _HASHABLE in table[:, _KIND].tolist():
        groups = _union_hashable_codes(local, op, pg)
    else:
        groups = _union_integer_codes(local, table, pg)
    return local, groups, agreed


def global_group_codes(
    group_ids: Any,
    *,
    device: torch.device | str = "cpu",
    num_groups: int | None = None,
    process_group: Any = None,
) -> Groups:
    """Dense group codes that agree across ranks: equal ids get equal codes on every rank.

    Collective: every rank of ``process_group`` must call it. After the header, integer ids are
    merged with one ``all_gather`` of ``O(distinct ids)`` int64 values, other ids with one
    ``all_gather_object`` of each rank's distinct ids; codes are then the same for a fixed world
    size and layout. With ``num_groups`` the integer ids are the codes.

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

    def check() -> _Local:
        return _check_local(
            lambda: _NO_OPTIONS, None, None, group_ids, num_groups, process_group, "torch", device
        )

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


@dataclass
class _Call:
    """One call's checked inputs and what the ranks agreed on."""

    options: _Options
    rewards: torch.Tensor | None
    embeddings: torch.Tensor
    groups: Groups
    dtype: torch.dtype  # the compute dtype
    embedding_dtype: torch.dtype  # the promoted dtype of every rank's embeddings


def _run(op: str, rewards: Any, embeddings: Any, group_ids: Any, pg: Any, **options: Any) -> Any:
    """One call of the public function ``op`` for this rank's rows: the core's own function in one
    process; across ranks the core's checks in its order, the header, then the computation."""
    if not _active(pg):
        data = (embeddings, group_ids) if rewards is None else (rewards, embeddings, group_ids)
        return getattr(api, op)(*data, **options)
    backend, num_groups = options.pop("backend"), options.pop("num_groups")

    def checked_options() -> _Options:  # the core's checks, in the core's order
        scale, md, eps = 2, 0.0, 0.0
        if op == "dra_advantages":
            checked = inputs.check_scale(options["scale"])
            eps = inputs.check_eps(options["eps"], checked)
            scale = ("std", "none").index(checked)
        if op != "smi_scores":
            md = inputs.check_min_denominator(options["min_denominator"])
        measure, eta, lam = measures.check_measure(*(options[k] for k in ("measure", "eta", "lam")))
        return scale, md, eps, MEASURES.index(measure), eta, lam

    def check() -> _Local:
        return _check_local(checked_options, rewards, embeddings, group_ids, num_groups, pg,
                            backend)  # fmt: skip

    local, groups, agreed = _plan(op, num_groups, pg, check)
    e = local.embeddings
    assert e is not None
    dtype = torch.float64 if agreed.float64 else torch.float32
    r = local.rewards
    if e.shape[0] == 0:
        # NOTE: a rank without rows takes part with the agreed width and dtypes, whatever kind of
        # empty input it holds (an empty list is float64 while the others' rows are float32).
        e = e.new_zeros(0, agreed.dim, dtype=agreed.embedding_dtype)
        r = None if r is None else r.new_zeros(0, dtype=dtype)
    call = _Call(local.options, r, e, groups, dtype, agreed.embedding_dtype)
    if MEASURES[call.options[3]] == "graph_cut":
        smi, counts = _smi(e, groups, dtype, pg)
    else:
        smi, counts = _owner_smi(call, pg)
    if op == "smi_scores":
        return inputs.convert_out(smi, embeddings)
    adjusted = adjust_from_smi(call.rewards, smi, call.options[1])
    if op == "adjust_rewards":
        return inputs.convert_out(adjusted, rewards)
    return inputs.convert_out(_advantages(call, adjusted, counts, pg), rewards)


def _advantages(call: _Call, adjusted: torch.Tensor, counts: torch.Tensor, pg: Any) -> torch.Tensor:
    """Advantages of this rank's adjusted rewards: the core's two-pass statistics, with group sums
    added over ranks."""
    scale_id, eps = call.options[0], call.options[2]
    codes, k, dtype = call.groups.codes, call.groups.num_groups, call.dtype

    def group_sum(values: torch.Tensor) -> torch.Tensor:
        totals = torch.zeros(k, dtype=dtype, device=values.device).index_add(0, codes, values)
        if k > 0:
            totals = _GlobalSum.apply(totals, pg)
        return totals

    mean = group_sum(adjusted) / counts.clamp(min=1)
    centred = adjusted - mean.index_select(0, codes)
    if scale_id == 1:
        return centred
    # NOTE: the sum of squared deviations has zero derivative in the mean (deviations sum to 0),
    # but here the other ranks' deviations enter as constants, so their dependence on the mean
    # would be missing from the gradient: the mean is held constant in this sum instead (the
    # values are the same).
    deviations = adjusted - mean.detach().index_select(0, codes)
    std = torch_backend.group_std(group_sum(deviations * deviations), counts)
    return centred / (std.index_select(0, codes) + eps)


def _smi(
    e: torch.Tensor, groups: Groups, dtype: torch.dtype, pg: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local Graph-Cut SMI and the global per-group row counts (in ``dtype``)."""
    sums, counts = torch_backend.group_unit_sums(e, groups.codes, groups.num_groups, dtype)
    if groups.num_groups > 0:
        # NOTE: one collective for sums and counts: counts ride as an extra column (exact in
        # float32 up to 2**24 rows per group).
        packed = torch.cat([sums, counts.to(dtype).unsqueeze(1)], dim=1)
        dist.all_reduce(packed, group=pg)
        sums, counts = packed[:, :-1], packed[:, -1].round().to(torch.int64)
    smi = torch_backend.smi_from_sums(e, groups.codes, sums, counts, dtype)
    return smi, counts.to(dtype)


def _exchange_rows(
    outgoing: list[torch.Tensor], incoming: list[torch.Tensor], me: int, pg: Any
) -> None:
    """Send ``outgoing[p]`` to rank ``p`` and receive ``incoming[p]`` from it, for every other rank
    with something to send or receive (both sides know every size): one batch of point-to-point
    operations (gloo has no all_to_all; NCCL needs them batched)."""
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


def _owner_smi(call: _Call, pg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Facility-location / log-det SMI: each group computed whole on one rank, its owner.

    1. ``all_gather`` of every rank's per-group row counts (``K`` int64 per rank): every rank
       knows the ``[W, K]`` table, hence each group's owner (the rank holding most of its rows,
       the lowest such rank on a tie: no row of a group held by one rank moves), how many rows
       it sends to and receives from each rank, and in which order.
    2. Each rank sends every owner the rows of the owner's groups, ordered by (group code, row);
       the owner concatenates the blocks in rank order, so each group's rows are in (source
       rank, row) order: the concatenation's order.
    3. The owner computes :func:`dra_kernels.measures.smi_by_measure` on the rows it gathered
       (a group's result is computed from its own rows only) and sends each block's SMI back.
    """
    e, groups, dtype = call.embeddings, call.groups, call.dtype
    measure, eta, lam = MEASURES[call.options[3]], call.options[4], call.options[5]
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

    # NOTE: the transfer dtype is the embeddings' promoted dtype, an exact conversion; the SMI
    # comes back in the call's agreed dtype (float64 where any rank has float64 data).
    key = owner.to(device).index_select(0, codes) * k + codes
    order = torch.argsort(key, stable=True)  # this rank's rows by (owner, code, row)
    rows = e.detach().to(call.embedding_dtype).index_select(0, order)
    outgoing = list(rows.split(sends))
    incoming = [
        outgoing[p] if p == me else rows.new_empty(receives[p], rows.shape[1]) for p in range(world)
    ]
    _exchange_rows(outgoing, incoming, me, pg)
    owned_codes = torch.cat([owned.repeat_interleave(table[p, owned]) for p in range(world)])
    values = measures.smi_by_measure(
        torch.cat(incoming), owned_codes.to(device), k, measure, eta=eta, lam=lam, dtype=dtype
    )
    replies = list(values.split(receives))
    answers = [replies[p] if p == me else values.new_empty(sends[p]) for p in range(world)]
    _exchange_rows(replies, answers, me, pg)
    smi = torch.empty(codes.shape[0], dtype=values.dtype, device=device)
    smi[order] = torch.cat(answers)
    return smi.to(dtype), table.sum(dim=0).to(device, dtype)


def smi_scores(
    embeddings: Any,
    group_ids: Any,
    *,
    backend: Backend = "auto",
    num_groups: int | None = None,
    measure: Measure = "graph_cut",
    eta: float = DEFAULT_ETA,
    lam: float = DEFAULT_LAM,
    process_group: Any = None,
) -> Any:
    """:func:`dra_kernels.smi_scores` for this rank's rows, with groups spanning ranks.

    Collective: every rank of ``process_group`` calls it with its own rows (possibly none), and
    the same options. Each gets, for its rows, the single-process result on the concatenation of
    all ranks' rows. The arguments are the core function's, checked by the same code.

    Args:
        embeddings: this rank's ``[n, D]`` embeddings (a rank without rows passes ``[0, D]``).
        group_ids: this rank's ``[n]`` group ids (integers or hashable labels).
        backend: ``"auto"``, ``"torch"`` or ``"triton"``. In one process the core's dispatch runs
            (``"auto"``: the Triton kernel for CUDA tensors); across ranks the torch backend's
            ops run (``"triton"`` is refused there: see the module's "Which path runs where").
        num_groups: optional hint: integer ids in ``[0, num_groups)``, the same on every rank;
            skips the id exchange.
        measure: ``"graph_cut"`` (default: one all-reduce), ``"facility_location"`` or
            ``"log_det"`` (each group's rows gathered on one rank; see the module's
            "Other measures").
        eta: query magnification of ``facility_location`` and ``log_det``.
        lam: ridge of ``log_det``.
        process_group: the ``torch.distributed`` group (default: the world).

    Returns:
        ``[n]`` SMI of this rank's rows, of the kind of ``embeddings`` (never requires grad).
    """
    return _run("smi_scores", None, embeddings, group_ids, process_group, backend=backend,
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
    eta: float = DEFAULT_ETA,
    lam: float = DEFAULT_LAM,
    process_group: Any = None,
) -> Any:
    """:func:`dra_kernels.adjust_rewards` for this rank's rows, with groups spanning ranks.

    Collective, as :func:`smi_scores`, whose arguments it takes too.

    Args:
        rewards: this rank's ``[n]`` rewards.
        min_denominator: lower clamp of ``1 + SMI``, in (0, 1].

    Returns:
        ``[n]`` adjusted rewards of the kind of ``rewards``; differentiable in ``rewards``
        (``1 / max(1 + SMI, min_denominator)`` per row).
    """
    return _run("adjust_rewards", rewards, embeddings, group_ids, process_group, backend=backend,
                num_groups=num_groups, min_denominator=min_denominator, measure=measure, eta=eta,
                lam=lam)  # fmt: skip


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
    eta: float = DEFAULT_ETA,
    lam: float = DEFAULT_LAM,
    process_group: Any = None,
) -> Any:
    """:func:`dra_kernels.dra_advantages` for this rank's rows, with groups spanning ranks.

    Collective, as :func:`adjust_rewards`, whose arguments it takes too. Two more all-reduces of
    ``K`` elements: the group totals of the adjusted rewards, then (``scale="std"``) their squared
    deviations from the group mean, the core's two-pass statistics.

    Args:
        scale: ``"std"`` (GRPO) or ``"none"`` (DR.GRPO), see :func:`dra_kernels.group_advantages`.
        eps: added to the group standard deviation (> 0 with ``scale="std"``).

    Returns:
        ``[n]`` advantages of this rank's rows, of the kind of ``rewards``; differentiable in this
        rank's ``rewards`` (the other ranks' rewards held constant).
    """
    return _run("dra_advantages", rewards, embeddings, group_ids, process_group, scale=scale,
                eps=eps, backend=backend, num_groups=num_groups, min_denominator=min_denominator,
                measure=measure, eta=eta, lam=lam)  # fmt: skip
