"""DRA when the rows of a group are spread over the processes of a ``torch.distributed`` group.

In data-parallel RL training each process (rank) holds some completions, and the completions of
one prompt may sit on several ranks. The functions here give every rank, for its own rows, what
:func:`dra_kernels.adjust_rewards` (and :func:`~dra_kernels.smi_scores`,
:func:`~dra_kernels.dra_advantages`) return on the concatenation of all ranks' rows, to float
tolerance, however the rows are split; a rank may hold no rows at all.

How: with unit rows ``u_i`` the identity ``SMI_i = u_i . S_g - |u_i|^2`` (see
:mod:`dra_kernels.reference`) needs only the per-group sums ``S_g`` of unit rows and the group
sizes. Each rank sums its own rows per group, one ``all_reduce`` adds the ``[K, D + 1]`` partial
sums (the last column holds the row counts), and each rank finishes its rows locally. Embeddings
never leave their rank.

Communication, per call, with ``K`` groups, ``D`` embedding columns and ``W`` ranks:

- adjust / SMI: one ``all_reduce`` of ``K * (D + 1)`` elements of the compute dtype (float32, or
  float64 when an input is float64): :func:`allreduce_payload_bytes`. A bandwidth-optimal
  all-reduce (NCCL's ring or tree, gloo's ring) sends about ``2 * (W - 1) / W`` times that payload
  per rank. Example: ``K = 64`` prompts, ``D = 512``, float32: a 131,328-byte payload, about 197 KB
  sent per rank with ``W = 4``; gathering the 384 completions' embeddings (``G = 6``) instead would
  move 786 KB to every rank.
- advantages: two more ``all_reduce`` of ``K`` elements (group totals, then squared deviations).
- group ids, unless ``num_groups`` is given (integer ids already in ``[0, num_groups)``, used as
  codes with no extra communication): one ``all_gather`` of 32 bytes per rank (kinds, sizes and
  dtypes, checked to agree), then the union of the ranks' distinct ids: for integer ids an
  ``all_gather`` of ``max over ranks of (distinct ids on a rank) * 8`` bytes per rank; for other
  hashable ids (strings, tuples...) ``all_gather_object`` of each rank's pickled distinct ids. Both
  are ``O(number of groups)``, independent of ``N`` and ``D``.

Collectives run on the device of the embeddings (CPU with gloo, CUDA with NCCL; pass CUDA tensors
with NCCL, after ``torch.cuda.set_device``). Every rank of the process group must call the
function, with the same ``num_groups`` (or none), the same ``D`` and the same float dtypes; without
``num_groups`` a mismatch is detected and reported on every rank. Results are deterministic for a
fixed world size and layout: the collectives reduce in a fixed order, and the global group codes
do not depend on timing. Without an initialised process group (or with one rank) the functions
compute locally, like the core API.

The computation uses the torch reference ops on the embeddings' device (the fused Triton kernel
does not expose its per-group sums).

Example (each rank, after ``torch.distributed.init_process_group``)::

    from dra_kernels import distributed

    adjusted = distributed.adjust_rewards(local_rewards, local_embeddings, local_prompt_ids)
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dra_kernels import api, reference
from dra_kernels.api import Groups, Scale
from dra_kernels.reference import DEFAULT_EPS, DEFAULT_MIN_DENOMINATOR

__all__ = [
    "adjust_rewards",
    "allreduce_payload_bytes",
    "dra_advantages",
    "global_group_codes",
    "smi_scores",
]

# Kinds of group ids a rank may hold; ranks with no rows are compatible with any kind.
_EMPTY, _INTEGER, _HASHABLE = 0, 1, 2
_KIND_NAMES = {_INTEGER: "integer ids", _HASHABLE: "hashable labels"}


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


# ----------------------------------------------------------------------------- group ids


def _local_ids(group_ids: Any, n: int, device: torch.device) -> tuple[int, Any]:
    """This rank's ids as ``(kind, value)``: an int64 tensor on ``device`` or a list of labels."""
    if isinstance(group_ids, torch.Tensor):
        if group_ids.ndim != 1:
            raise ValueError(f"group_ids must be 1-D [N], got shape {tuple(group_ids.shape)}")
        if not api._is_integer(group_ids):
            raise TypeError(
                f"group_ids as a tensor must have an integer dtype, got {group_ids.dtype}; "
                "floating or boolean ids are almost always a mistake"
            )
        if group_ids.device != device:
            raise ValueError(f"group_ids is on {group_ids.device} but the data is on {device}")
        api._check_len(group_ids.shape[0], n)
        return (_INTEGER if n else _EMPTY), group_ids.to(torch.int64)
    if isinstance(group_ids, (list, tuple, np.ndarray)) and len(group_ids) == 0:
        api._check_len(0, n)
        return _EMPTY, torch.empty(0, dtype=torch.int64, device=device)
    ints = api._host_integer_ids(group_ids)
    if ints is not None:
        api._check_len(ints.shape[0], n)
        return _INTEGER, torch.from_numpy(ints).to(device)
    labels = list(group_ids)
    api._check_len(len(labels), n)
    api._factorize_hashables(labels)  # validates: hashable, no floats
    return _HASHABLE, labels


def _exchange_header(
    kind: int, n_unique: int, n: int, dim: int, float64: bool, device: torch.device, pg: Any
) -> torch.Tensor:
    """Every rank's ``[kind, distinct ids, rows, D, float64]`` as a ``[W, 5]`` CPU tensor."""
    header = torch.tensor([kind, n_unique, n, dim, int(float64)], dtype=torch.int64, device=device)
    parts = [torch.empty_like(header) for _ in range(dist.get_world_size(pg))]
    dist.all_gather(parts, header, group=pg)
    return torch.stack(parts).cpu()


def _consensus(table: torch.Tensor) -> tuple[int, bool]:
    """``(D, float64)`` agreed by the ranks that hold rows; raises on every rank if D differs."""
    rows = table[table[:, 2] > 0]
    if rows.shape[0] == 0:
        return int(table[0, 3]), False
    dims = sorted(set(rows[:, 3].tolist()))
    if len(dims) > 1:
        found = ", ".join(f"rank {r}: D={int(d)}" for r, d in enumerate(table[:, 3]) if table[r, 2])
        raise ValueError(f"embeddings must have the same width D on every rank, found {found}")
    # NOTE: as for the concatenation, float64 anywhere makes the whole computation float64.
    return int(dims[0]), bool(rows[:, 4].any())


def _union_integer_codes(
    ids: torch.Tensor, local_unique: torch.Tensor, table: torch.Tensor, pg: Any
) -> Groups:
    sizes = table[:, 1].tolist()
    width = max(sizes)
    if width == 0:
        return Groups(ids, 0)
    padded = torch.zeros(width, dtype=torch.int64, device=ids.device)
    padded[: local_unique.shape[0]] = local_unique
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=pg)
    union = torch.unique(torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)]))
    return Groups(torch.searchsorted(union, ids), int(union.shape[0]))


def _union_hashable_codes(labels: list[Hashable], device: torch.device, pg: Any) -> Groups:
    local_unique = list(dict.fromkeys(labels))
    parts: list[Any] = [None] * dist.get_world_size(pg)
    dist.all_gather_object(parts, local_unique, group=pg)
    mapping: dict[Hashable, int] = {}
    for part in parts:  # rank order, then first appearance: the same codes on every rank
        for label in part:
            mapping.setdefault(label, len(mapping))
    codes = torch.tensor([mapping[g] for g in labels], dtype=torch.int64)
    return Groups(codes.to(device), len(mapping))


def _plan_groups(
    group_ids: Any,
    n: int,
    dim: int,
    float64: bool,
    device: torch.device,
    num_groups: int | None,
    pg: Any,
    active: bool,
) -> tuple[Groups, int, bool]:
    """Global dense codes for this rank's rows, and the agreed ``(D, float64)``."""
    kind, value = _local_ids(group_ids, n, device)
    if num_groups is not None:
        if kind == _HASHABLE:
            raise TypeError(
                "num_groups needs integer group ids in [0, num_groups); got labels such as "
                f"{value[0]!r}: leave num_groups out to factorise them across ranks"
            )
        return api._hinted_codes(value, num_groups), dim, float64
    if not active:
        if kind == _EMPTY:
            return Groups(value, 0), dim, float64
        return api.factorize_group_ids(value, n, device), dim, float64
    local_unique = value if kind == _EMPTY else None
    if kind == _INTEGER:
        local_unique = torch.unique(value)
    n_unique = len(dict.fromkeys(value)) if kind == _HASHABLE else int(local_unique.shape[0])
    table = _exchange_header(kind, n_unique, n, dim, float64, device, pg)
    dim, float64 = _consensus(table)
    if _HASHABLE in table[:, 0].tolist():
        # NOTE: integer ids on some ranks and labels on others are compared as Python values, as
        # they would be in one concatenated list.
        labels = value if kind == _HASHABLE else value.tolist()
        return _union_hashable_codes(labels, device, pg), dim, float64
    return _union_integer_codes(value, local_unique, table, pg), dim, float64


def global_group_codes(
    group_ids: Any,
    *,
    device: torch.device | str = "cpu",
    num_groups: int | None = None,
    process_group: Any = None,
) -> Groups:
    """Dense group codes that agree across ranks: equal ids get equal codes on every rank.

    Collective: every rank of ``process_group`` must call it. Integer ids are merged with two
    ``all_gather`` calls of ``O(distinct ids)`` int64 values, other hashable labels with one
    ``all_gather_object`` of each rank's distinct labels; codes are then the same for a fixed world
    size and layout. With ``num_groups`` the integer ids are the codes (no communication).

    Args:
        group_ids: this rank's ``[n]`` ids (integers or hashable labels; may be empty).
        device: where the codes go; with NCCL a CUDA device.
        num_groups: optional hint for integer ids in ``[0, num_groups)`` on every rank.
        process_group: the ``torch.distributed`` group (default: the world).

    Returns:
        :class:`dra_kernels.api.Groups` with int64 codes in ``[0, num_groups)`` on ``device``.
    """
    device = torch.device(device)
    active = _active(process_group)
    if active:
        _check_device(process_group, device)
    n = group_ids.shape[0] if isinstance(group_ids, torch.Tensor) else len(group_ids)
    groups, _, _ = _plan_groups(group_ids, n, 0, False, device, num_groups, process_group, active)
    return groups


# ----------------------------------------------------------------------------- computation


def _prepare(
    rewards: Any, embeddings: Any, group_ids: Any, num_groups: int | None, process_group: Any
) -> tuple[torch.Tensor | None, torch.Tensor, Groups, torch.dtype, bool]:
    present = {k: v for k, v in (("rewards", rewards), ("embeddings", embeddings)) if v is not None}
    device = api._check_kinds(**present)
    r = None
    n = None
    if rewards is not None:
        r = api._to_tensor(rewards, "rewards")
        api._check_rewards(r)
        n = r.shape[0]
    e = api._to_tensor(embeddings, "embeddings")
    api._check_embeddings(e, n)
    n = e.shape[0]
    active = _active(process_group)
    if active:
        _check_device(process_group, device)
    dtypes = [t.dtype for t in (r, e) if t is not None and t.is_floating_point()]
    float64 = reference.compute_dtype(*dtypes) == torch.float64
    groups, dim, float64 = _plan_groups(
        group_ids, n, e.shape[1], float64, device, num_groups, process_group, active
    )
    dtype = torch.float64 if float64 else torch.float32
    if n == 0:  # a rank without rows takes part with the agreed width
        e = e.new_zeros(0, dim)
    return r, e, groups, dtype, active


def _smi(
    e: torch.Tensor, groups: Groups, dtype: torch.dtype, pg: Any, active: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local SMI and the global per-group row counts (in ``dtype``)."""
    units = reference.unit_rows(e, dtype)
    sums, counts = reference.group_unit_sums(units, groups.codes, groups.num_groups)
    if active and groups.num_groups > 0:
        # NOTE: one collective for sums and counts: counts ride as an extra column (exact in
        # float32 up to 2**24 rows per group).
        packed = torch.cat([sums, counts.to(dtype).unsqueeze(1)], dim=1)
        dist.all_reduce(packed, group=pg)
        sums, counts = packed[:, :-1], packed[:, -1].round().to(torch.int64)
    return reference.smi_from_sums(units, groups.codes, sums, counts), counts.to(dtype)


def smi_scores(
    embeddings: Any,
    group_ids: Any,
    *,
    num_groups: int | None = None,
    process_group: Any = None,
) -> Any:
    """:func:`dra_kernels.smi_scores` for this rank's rows, with groups spanning ranks.

    Args:
        embeddings: this rank's ``[n, D]`` embeddings (``n`` may be 0; keep ``D``).
        group_ids: this rank's ``[n]`` group ids (integers or hashable labels).
        num_groups: optional hint: integer ids in ``[0, num_groups)``, the same on every rank.
        process_group: the ``torch.distributed`` group (default: the world).

    Returns:
        ``[n]`` SMI of this rank's rows, of the kind of ``embeddings``.
    """
    _, e, groups, dtype, active = _prepare(None, embeddings, group_ids, num_groups, process_group)
    smi, _ = _smi(e, groups, dtype, process_group, active)
    return api._convert_out(smi, embeddings)


def adjust_rewards(
    rewards: Any,
    embeddings: Any,
    group_ids: Any,
    *,
    num_groups: int | None = None,
    min_denominator: float = DEFAULT_MIN_DENOMINATOR,
    process_group: Any = None,
) -> Any:
    """:func:`dra_kernels.adjust_rewards` for this rank's rows, with groups spanning ranks.

    Collective: every rank of ``process_group`` calls it with its own rows (possibly none). Each
    gets, for its rows, the single-process result on the concatenation of all ranks' rows.

    Args:
        rewards: this rank's ``[n]`` rewards.
        embeddings: this rank's ``[n, D]`` embeddings (a rank without rows passes ``[0, D]``).
        group_ids: this rank's ``[n]`` group ids (integers or hashable labels).
        num_groups: optional hint: integer ids in ``[0, num_groups)``, the same on every rank;
            skips the id exchange.
        min_denominator: lower clamp of ``1 + SMI``.
        process_group: the ``torch.distributed`` group (default: the world).

    Returns:
        ``[n]`` adjusted rewards of the kind of ``rewards``.
    """
    min_denominator = api._check_scalar("min_denominator", min_denominator, positive=True)
    r, e, groups, dtype, active = _prepare(
        rewards, embeddings, group_ids, num_groups, process_group
    )
    assert r is not None
    smi, _ = _smi(e, groups, dtype, process_group, active)
    return api._convert_out(reference.adjust_from_smi(r, smi, min_denominator), rewards)


def dra_advantages(
    rewards: Any,
    embeddings: Any,
    group_ids: Any,
    *,
    scale: Scale = "std",
    eps: float = DEFAULT_EPS,
    num_groups: int | None = None,
    min_denominator: float = DEFAULT_MIN_DENOMINATOR,
    process_group: Any = None,
) -> Any:
    """:func:`dra_kernels.dra_advantages` for this rank's rows, with groups spanning ranks.

    Two more all-reduces of ``K`` elements than :func:`adjust_rewards`: the group totals of the
    adjusted rewards, then (``scale="std"``) their squared deviations from the group mean, the same
    two-pass statistics as the single-process reference.

    Args:
        rewards: this rank's ``[n]`` rewards.
        embeddings: this rank's ``[n, D]`` embeddings (a rank without rows passes ``[0, D]``).
        group_ids: this rank's ``[n]`` group ids (integers or hashable labels).
        scale: ``"std"`` (GRPO) or ``"none"`` (DR.GRPO), see :func:`dra_kernels.group_advantages`.
        eps: added to the group standard deviation.
        num_groups: optional hint: integer ids in ``[0, num_groups)``, the same on every rank.
        min_denominator: lower clamp of ``1 + SMI``.
        process_group: the ``torch.distributed`` group (default: the world).

    Returns:
        ``[n]`` advantages of this rank's rows, of the kind of ``rewards``.
    """
    scale = api._check_scale(scale)
    eps = api._check_scalar("eps", eps, positive=False)
    min_denominator = api._check_scalar("min_denominator", min_denominator, positive=True)
    r, e, groups, dtype, active = _prepare(
        rewards, embeddings, group_ids, num_groups, process_group
    )
    assert r is not None
    smi, counts = _smi(e, groups, dtype, process_group, active)
    adjusted = reference.adjust_from_smi(r, smi, min_denominator)
    codes, k = groups.codes, groups.num_groups

    def group_sum(values: torch.Tensor) -> torch.Tensor:
        totals = torch.zeros(k, dtype=dtype, device=values.device).index_add_(0, codes, values)
        if active and k > 0:
            dist.all_reduce(totals, group=process_group)
        return totals

    mean = group_sum(adjusted) / counts.clamp(min=1)
    centred = adjusted - mean.index_select(0, codes)
    if scale == "none":
        return api._convert_out(centred, rewards)
    std = torch.sqrt(group_sum(centred * centred) / (counts - 1).clamp(min=1))
    return api._convert_out(centred / (std.index_select(0, codes) + eps), rewards)
