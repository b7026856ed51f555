"""The torch backend: what ``backend="torch"`` runs, on every device, tuned for speed.

It computes what :mod:`dra_kernels.reference` (the spec) defines, and is tested against it, on
already-validated tensors (:mod:`dra_kernels.inputs`) with dense group codes ``0 .. K - 1``, in
float32 (float64 for float64 inputs). No ``N x N`` matrix, no padding: the cost is linear in
``N`` thanks to ``SMI_i = u_i . (sum over j in g(i) of u_j) - |u_i|^2``, ``u_i = e_i / |e_i|``
(0 for a zero row). On CPU, groups of at most ``_BLOCK_ROWS`` rows take batched matrix products
straight from the embeddings (:func:`_smi_cpu`); larger groups, and every group on other
devices, take chunked unit rows with float64 group sums (:func:`group_unit_sums`,
:func:`smi_from_sums`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

from dra_kernels.inputs import compute_dtype
from dra_kernels.reference import DEFAULT_EPS, DEFAULT_MIN_DENOMINATOR, adjust_from_smi

__all__ = [
    "adjust_rewards",
    "contiguous_group_size",
    "group_advantages",
    "group_counts",
    "group_std",
    "group_unit_sums",
    "smi_from_sums",
    "smi_scores",
    "unit_rows",
]


# NOTE: rows are walked in chunks that stay in cache, through reused buffers: on CPU a fresh N x D
# temporary costs about as much as the whole op, and a chunk that spills the cache doubles the
# time of the scattered adds.
def _chunk_rows(device: torch.device) -> int:
    return 2048 if device.type == "cpu" else 65536


def unit_rows(embeddings: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rows scaled to unit length; zero rows stay zero, rows holding NaN or inf become NaN.

    Robust to overflow and underflow: a row whose norm lies outside a safe range (float32 rows
    near 1e30 or 1e-30, float16 rows whose squared norm overflows float16) is normalised in
    float64 after division by its largest magnitude, then rounded to ``dtype``.

    Args:
        embeddings: ``[N, D]`` floating tensor.
        dtype: result dtype (default: :func:`compute_dtype` of the input).

    Returns:
        ``[N, D]`` tensor of ``dtype``; a new tensor, never a view of the input.
    """
    dtype = dtype or compute_dtype(embeddings.dtype)
    units = torch.empty(embeddings.shape, dtype=dtype, device=embeddings.device)
    for start, stop, _, narrow in _unit_chunks(embeddings, dtype, wide=False):
        units[start:stop] = narrow
    return units


# Norms for which ``x * (1 / |x|)`` is exact to rounding (no overflow of the squares, no digits
# lost to underflow, a normal reciprocal); rows outside take the exact float64 path.
_SAFE_NORM = {torch.float32: (2.0**-60, 2.0**60), torch.float64: (2.0**-480, 2.0**480)}


def _row_norms(embeddings: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``|e_i|`` as ``[N, 1]`` of ``dtype``."""
    return torch.linalg.vector_norm(
        embeddings, dim=1, keepdim=True, dtype=None if embeddings.dtype == dtype else dtype
    )


def _row_scales(
    embeddings: torch.Tensor, dtype: torch.dtype, norm: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(1/|e_i|  [N, 1] (0 for unsafe rows), unsafe row indices, their unit rows)``;
    ``norm``: the :func:`_row_norms`, when already computed."""
    if norm is None:
        norm = _row_norms(embeddings, dtype)
    low, high = _SAFE_NORM[dtype]
    safe = (norm >= low) & (norm <= high)
    scale = torch.where(safe, 1.0 / norm, torch.zeros_like(norm))
    # NOTE: zero rows (u = 0) and NaN rows (x * 0 = NaN) are right as they are; finite rows whose
    # norm overflowed (inf) or underflowed (0) need the exact path.
    unsafe = (~safe & (norm != 0) & ~torch.isnan(norm)).squeeze(1)
    zero_norm = torch.nonzero(norm.squeeze(1) == 0).squeeze(1)
    if zero_norm.numel():
        unsafe[zero_norm] = (embeddings.index_select(0, zero_norm) != 0).any(dim=1)
    rows = torch.nonzero(unsafe).squeeze(1)  # ascending
    return scale, rows, _exact_unit_rows(embeddings.index_select(0, rows), dtype)


def _unit_chunks(
    embeddings: torch.Tensor,
    dtype: torch.dtype,
    *,
    wide: bool,
    scales: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> Iterator[tuple[int, int, torch.Tensor | None, torch.Tensor]]:
    """``(start, stop, unit rows as float64 if wide, unit rows in dtype)`` for each chunk, in
    buffers reused by the next chunk. ``scales``: the :func:`_row_scales`, when already computed."""
    n, d = embeddings.shape
    device = embeddings.device
    chunk = _chunk_rows(device)
    narrow = torch.empty(min(chunk, n), d, dtype=dtype, device=device)
    widened = None
    if wide and dtype != torch.float64:
        widened = torch.empty(min(chunk, n), d, dtype=torch.float64, device=device)
    scale, patch_rows, patch = scales if scales is not None else _row_scales(embeddings, dtype)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        u = narrow[: stop - start]
        torch.mul(embeddings[start:stop], scale[start:stop], out=u)
        if patch_rows.numel():
            first, last = torch.searchsorted(
                patch_rows, torch.tensor([start, stop], device=patch_rows.device)
            ).tolist()
            u[patch_rows[first:last] - start] = patch[first:last]
        w = u if dtype == torch.float64 else None
        if widened is not None:
            w = widened[: stop - start]
            w.copy_(u)
        yield start, stop, w, u


def _divide_rows_(x: torch.Tensor, scale: torch.Tensor) -> None:
    """``x /= scale`` row-wise, leaving rows with a zero (or NaN) scale as they are."""
    x.div_(torch.where(scale > 0, scale, torch.ones_like(scale)))


def group_counts(codes: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``[num_groups]`` int64 row counts of ``codes`` (without a host sync on CUDA)."""
    if codes.device.type == "cpu":
        return torch.bincount(codes, minlength=num_groups)
    # NOTE: bincount's output size depends on the data (a host sync on CUDA).
    counts = torch.zeros(num_groups, dtype=torch.int64, device=codes.device)
    return counts.index_add_(0, codes, torch.ones_like(codes))


def group_unit_sums(
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    dtype: torch.dtype | None = None,
    scales: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group sums of the unit rows (:func:`unit_rows`, of ``dtype``) of ``embeddings``, and
    per-group row counts.

    The sums are accumulated in float64 whatever ``dtype``: a float32 running sum over a group of
    10^5 rows loses about 3 decimal digits, which then shows in rows nearly orthogonal to their
    group's sum. Rows are normalised and converted chunk by chunk: no ``[N, D]`` temporary.
    ``scales``: the rows' :func:`_row_scales`, when already computed.

    Returns:
        ``(sums [K, D] float64, counts [K] int64)``.
    """
    dtype = dtype or compute_dtype(embeddings.dtype)
    d, device = embeddings.shape[1], embeddings.device
    sums = torch.zeros(num_groups, d, dtype=torch.float64, device=device)
    for start, stop, wide, _ in _unit_chunks(embeddings, dtype, wide=True, scales=scales):
        sums.index_add_(0, codes[start:stop], wide)
    return sums, group_counts(codes, num_groups)


def smi_from_sums(
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    dtype: torch.dtype | None = None,
    scales: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``SMI_i = u_i . (S_{g(i)} - u_i)``: exactly 0 for groups of one row.

    ``sums``, ``counts``: from :func:`group_unit_sums` (possibly summed across processes), the
    sums rounded to ``dtype`` for the dot products; the unit rows are made chunk by chunk from
    ``embeddings``, as there. Returns ``[N]`` of ``dtype``.
    """
    dtype = dtype or compute_dtype(embeddings.dtype)
    n, d = embeddings.shape
    sums = sums.to(dtype)
    smi = torch.empty(n, dtype=dtype, device=embeddings.device)
    buffer = torch.empty(min(_chunk_rows(embeddings.device), n), d, dtype=dtype, device=sums.device)
    for start, stop, _, u in _unit_chunks(embeddings, dtype, wide=False, scales=scales):
        others = torch.index_select(sums, 0, codes[start:stop], out=buffer[: u.shape[0]])
        others.sub_(u).mul_(u)
        torch.sum(others, dim=1, out=smi[start:stop])
    # NOTE: S_g - u_i is already 0 for a group of one; the counts make it independent of rounding.
    return torch.where(counts.index_select(0, codes) > 1, smi, torch.zeros_like(smi))


def _smi_chunked(
    embeddings: torch.Tensor, codes: torch.Tensor, num_groups: int, dtype: torch.dtype
) -> torch.Tensor:
    """:func:`group_unit_sums` then :func:`smi_from_sums`: two chunked passes, no ``[N, D]``
    temporary."""
    scales = _row_scales(embeddings, dtype)
    sums, counts = group_unit_sums(embeddings, codes, num_groups, dtype, scales)
    return smi_from_sums(embeddings, codes, sums, counts, dtype, scales)


# ----------------------------------------------------------------------------- the CPU path

# NOTE: on CPU a group of g <= _BLOCK_ROWS rows x ([g, D]) takes one or two batched products
# straight from the embeddings (one torch.bmm per group size; no unit rows, no [N, D] temporary,
# no scattered adds), as below a few thousand rows the number of ops costs as much as the bytes.
# With s_j = 1 / |x_j|, 1 + SMI_j = s_j sum_i (x_j . x_i) s_i:
#   g <= _GRAM_ROWS: from the Gram matrix x x^T, whose diagonal gives the norms too (one pass);
#   larger groups (the Gram cost grows with g): from S = s^T x as s_j (x_j . S).
# Contiguous equal groups (the usual batch) are views of the input; other layouts are gathered by
# group size. A group's result depends on its own rows only, though a BLAS may round one matrix
# of a batch differently with the batch size, threads or processor (see _batched): layouts agree
# to rounding, bit for bit where the products are exact. Float32 sums of up to 1,024 terms stay
# within the test tolerances; larger groups keep the chunked path's float64 sums.
_BLOCK_ROWS = 1024
_BLOCK_CHUNK_ROWS = 8192  # rows per product (a multiple of the group size; views excepted)
_GRAM_ROWS = 8  # up to here one g x g product per group beats two skinny ones (measured)

# Row norms for the Gram path (from its diagonal, in the computation dtype) whose products neither
# overflow nor lose digits to subnormals; groups holding another row are redone from exact units.
_GRAM_SAFE_NORM = {torch.float32: (2.0**-50, 2.0**50), torch.float64: (2.0**-480, 2.0**480)}


def _exact_unit_rows(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Unit rows computed in float64 after division by the largest magnitude, rounded to
    ``dtype``: exact for any finite row; zero rows stay zero, rows with NaN or inf become NaN."""
    x = x.to(torch.float64)
    _divide_rows_(x, torch.linalg.vector_norm(x, ord=float("inf"), dim=1, keepdim=True))
    _divide_rows_(x, torch.linalg.vector_norm(x, dim=1, keepdim=True))
    return x.to(dtype)


def _cpu_scales(
    embeddings: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(scale [N], weight [N] or None, patch index [N] or None, patch rows [P, D])``:
    ``scale_i = 1 / |e_i|``, ``weight_i = |u_i|^2`` (None: all 1). Rows of unsafe norm are
    replaced by their exact unit rows with scale 1 (``patch index_i``: their row in the patch,
    else -1). A NaN row keeps a NaN scale: its whole group comes out NaN."""
    norm = _row_norms(embeddings, dtype)
    low, high = _SAFE_NORM[dtype]
    lowest, highest = torch.aminmax(norm)  # NaN if any norm is NaN
    if low <= lowest.item() and highest.item() <= high:
        return norm.reciprocal_().view(-1), None, None, None
    scale, rows, patch = _row_scales(embeddings, dtype, norm)
    scale = torch.where(torch.isnan(norm), norm, scale).view(-1)
    weight = (scale != 0).to(dtype)
    patch_at = None
    if rows.numel():
        scale[rows] = 1.0
        weight[rows] = 1.0
        patch_at = torch.full_like(scale, -1, dtype=torch.int64)
        patch_at[rows] = torch.arange(rows.numel())
    return scale, weight, patch_at, patch


def contiguous_group_size(codes: torch.Tensor, num_groups: int) -> int | None:
    """The group size ``g`` if ``codes`` is ``0 .. num_groups - 1``, each repeated ``g`` times in
    order (the usual batch), else None: one comparison, no counts. Such codes are in range."""
    n = codes.shape[0]
    if num_groups < 1 or n == 0 or n % num_groups:
        return None
    g = n // num_groups
    if n <= _CACHED_LAYOUT_ROWS:
        return g if torch.equal(codes, _contiguous_codes(num_groups, g, codes.device)) else None
    heads = torch.arange(num_groups, device=codes.device).unsqueeze(1).expand(num_groups, g)
    return g if torch.equal(codes.reshape(num_groups, g), heads) else None


# NOTE: comparing with a cached copy takes 0.6 us against 2.4 us for a broadcast comparison at
# N = 256 (a call takes about 50 us); above this many rows nothing is cached.
_CACHED_LAYOUT_ROWS = 65536


@functools.lru_cache(maxsize=8)
def _contiguous_codes(num_groups: int, g: int, device: torch.device) -> torch.Tensor:
    """``[num_groups * g]`` int64 ``0, .., 0, 1, ..``: read only, shared between calls."""
    return torch.arange(num_groups, device=device).repeat_interleave(g)


def _equal_blocks(codes: torch.Tensor, counts: torch.Tensor) -> int | None:
    """The group size ``g`` if the rows are contiguous groups of ``g`` rows each, else None."""
    n = codes.shape[0]
    g = int(counts[codes[0]])
    if n % g:
        return None
    blocks = codes.reshape(n // g, g)
    if g > 1 and not torch.equal(blocks[:, 1:], blocks[:, :-1]):
        return None
    # n / g constant blocks hold n / g distinct codes unless one code fills several blocks.
    return g if int(torch.count_nonzero(counts)) == n // g else None


def _cpu_layout(
    codes: torch.Tensor, num_groups: int, group_size: int | None = None
) -> tuple[int | None, torch.Tensor | None]:
    """``(g, counts)``: the group size when the rows are contiguous groups of ``g`` rows each
    (else None), and the group counts when they were needed to tell (else None).
    ``group_size``: the :func:`contiguous_group_size`, when already known."""
    if codes.shape[0] == 0:
        return None, None
    g = group_size if group_size is not None else contiguous_group_size(codes, num_groups)
    if g is not None:
        return g, None
    counts = torch.bincount(codes, minlength=num_groups)
    return _equal_blocks(codes, counts), counts


def _smi_cpu(
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    dtype: torch.dtype,
    group_size: int | None,
    plus_one: bool = False,
) -> torch.Tensor:
    """SMI on CPU: :func:`_block_smi` for groups of at most ``_BLOCK_ROWS`` rows, the chunked
    float64 path for larger ones, exactly 0 for groups of one row. ``group_size``: as in
    :func:`smi_scores`. ``plus_one``: ``1 + SMI`` instead, as the products give it (the
    denominator of :func:`adjust_rewards`, two ops fewer)."""
    g, counts = _cpu_layout(codes, num_groups, group_size)
    n = embeddings.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=dtype)
    if g is not None and 1 < g <= _BLOCK_ROWS:
        return _block_smi(embeddings, g, dtype, plus_one=plus_one)
    smi = torch.full((n,), 1.0 if plus_one else 0.0, dtype=dtype)
    if g == 1:
        return smi
    if counts is None:
        counts = torch.bincount(codes, minlength=num_groups)
    sizes = counts.index_select(0, codes)
    big = sizes > _BLOCK_ROWS
    if bool(big.any()):
        rows = torch.nonzero(big).squeeze(1)
        part = embeddings if rows.numel() == n else embeddings.index_select(0, rows)
        big_smi = _smi_chunked(part, codes[rows], num_groups, dtype)
        smi[rows] = big_smi.add_(1.0) if plus_one else big_smi
    small = counts[(counts > 1) & (counts <= _BLOCK_ROWS)].unique().tolist()
    if not small:
        return smi
    scales = _cpu_scales(embeddings, dtype) if small[-1] > _GRAM_ROWS else None
    order = torch.argsort(codes, stable=True)  # each group's rows together, in row order
    sorted_sizes = sizes.index_select(0, order)
    for size in small:
        rows = order[sorted_sizes == size]
        _block_smi(embeddings, size, dtype, rows=rows, out=smi, scales=scales, plus_one=plus_one)
    return smi


def _block_smi(
    embeddings: torch.Tensor,
    g: int,
    dtype: torch.dtype,
    rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    scales: tuple | None = None,
    plus_one: bool = False,
) -> torch.Tensor:
    """SMI (``1 + SMI`` with ``plus_one``) of ``rows`` (default: all rows of ``embeddings``),
    consecutive groups of ``g`` rows each in row order, in ``dtype``; written into ``out`` at
    ``rows`` (``out`` is required with ``rows``), else returned as a new ``[N]`` tensor.
    ``scales``: the :func:`_cpu_scales` (for ``g > _GRAM_ROWS``; computed here when not given)."""
    gram = g <= _GRAM_ROWS
    if not gram and scales is None:
        scales = _cpu_scales(embeddings, dtype)
    scale, weight, patch_at, patch = (None, None, None, None) if gram else scales
    m = embeddings.shape[0] if rows is None else rows.shape[0]
    d = embeddings.shape[1]
    # NOTE: a contiguous input is read in place, all groups at once (chunks would only add ops);
    # anything else goes through a reused buffer of at most _BLOCK_CHUNK_ROWS rows.
    in_place = rows is None and embeddings.dtype == dtype and embeddings.is_contiguous()
    in_place = in_place and patch_at is None
    if in_place and gram:
        return _gram_smi(embeddings.view(-1, g, d), dtype, plus_one)
    if in_place and weight is None:
        return _finish(_skinny_dots(embeddings.view(-1, g, d), scale).mul_(scale), None, plus_one)
    if out is None:
        out = torch.empty(m, dtype=dtype)
    step = m if in_place else max(g, _BLOCK_CHUNK_ROWS // g * g)
    buffer = None if in_place else torch.empty(min(step, m), d, dtype=dtype)
    source = None
    if rows is not None and embeddings.dtype != dtype:
        source = torch.empty(min(step, m), d, dtype=embeddings.dtype)
    for start in range(0, m, step):
        stop = min(start + step, m)
        index = slice(start, stop) if rows is None else rows[start:stop]
        if rows is None:
            x = embeddings[index]
        else:
            target = buffer if source is None else source
            x = torch.index_select(embeddings, 0, index, out=target[: stop - start])
        if not in_place and (rows is None or source is not None):
            # NOTE: a view of the input, or rows gathered in its own dtype, are copied into the
            # buffer: decided from the layout, not data pointers (torch.func tensors have none).
            x = buffer[: stop - start].copy_(x)
        blocks = x.view(-1, g, d)
        if gram:
            out[index] = _gram_smi(blocks, dtype, plus_one)
            continue
        s = _pick(scale, index)
        if patch_at is not None:
            at = _pick(patch_at, index)
            local = torch.nonzero(at >= 0).squeeze(1)
            if local.numel():
                x[local] = patch.index_select(0, at[local])
        dots = _skinny_dots(blocks, s).mul_(s)
        out[index] = _finish(dots, None if weight is None else _pick(weight, index), plus_one)
    return out


def _pick(values: torch.Tensor, index: slice | torch.Tensor) -> torch.Tensor:
    return values[index] if isinstance(index, slice) else values.index_select(0, index)


def _batched(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(a, b)`` as a batch of at least two."""
    if a.shape[0] > 1:
        return torch.bmm(a, b)
    # NOTE: torch hands a batch of one to a plain threaded gemm, which can round differently from
    # the batched one: two copies keep one code path, whatever the layout.
    return torch.bmm(a.expand(2, *a.shape[1:]), b.expand(2, *b.shape[1:]))[:1]


def _finish(cover: torch.Tensor, weight: torch.Tensor | None, plus_one: bool) -> torch.Tensor:
    """SMI (or ``1 + SMI`` with ``plus_one``) from ``cover_j = s_j sum_i (x_j . x_i) s_i``, which
    is ``1 + SMI_j`` for a row of safe nonzero norm; ``weight``: ``|u_j|^2`` (0 for a zero row),
    None when every row is such a row. In place."""
    if weight is None:
        return cover if plus_one else cover.sub_(1.0)
    # NOTE: rows of weight 1 get exactly what weight None gives (x + 0 = x, x - 1): a zero or
    # extreme row changes no other group's bits.
    return cover.add_(1.0 - weight) if plus_one else cover.sub_(weight)


def _gram_smi(blocks: torch.Tensor, dtype: torch.dtype, plus_one: bool = False) -> torch.Tensor:
    """SMI (``1 + SMI`` with ``plus_one``) of each row of ``[k, g, D]`` blocks from their Gram
    matrices: ``[k * g]``."""
    d = blocks.shape[2]
    gram = _batched(blocks, blocks.transpose(1, 2))
    squares = gram.diagonal(dim1=1, dim2=2)
    low, high = _GRAM_SAFE_NORM[dtype]
    lowest, highest = torch.aminmax(squares)  # NaN if any is NaN
    if low * low <= lowest.item() and highest.item() <= high * high:
        scale, weight = squares.rsqrt(), None
    else:
        bad = ~((squares >= low * low) & (squares <= high * high))
        groups = torch.nonzero(bad.any(dim=1)).squeeze(1)
        x = blocks.index_select(0, groups)
        flat, patched = x.view(-1, d), torch.nonzero(bad.index_select(0, groups).view(-1))
        flat[patched.squeeze(1)] = _exact_unit_rows(flat[patched.squeeze(1)], dtype)
        gram[groups] = _batched(x, x.transpose(1, 2))
        squares = gram.diagonal(dim1=1, dim2=2)
        scale = torch.where(squares > 0, squares.rsqrt(), 0.0)  # zero rows: no contribution
        weight = (squares > 0).to(dtype).view(-1)
    # NOTE: [g, g] x [g, 1] stays under torch's 400-element bmm threshold (same for any batch).
    dots = torch.bmm(gram, scale.unsqueeze(2)).view(-1)
    return _finish(dots.mul_(scale.view(-1)), weight, plus_one)


def _skinny_dots(blocks: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``[k * g]``: ``x_j . S`` for each row of each ``[g, D]`` block ``x``, ``S = s^T x``."""
    k, g, _ = blocks.shape
    sums = _batched(s.view(k, 1, g), blocks)
    # NOTE: S x^T ([1, g] per group) runs 2-3 times faster than x S^T on MKL (measured).
    return _batched(sums, blocks.transpose(1, 2)).view(-1)


def smi_scores(
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    dtype: torch.dtype | None = None,
    *,
    group_size: int | None = None,
) -> torch.Tensor:
    """SMI of every row against the rest of its group.

    Args:
        embeddings: ``[N, D]`` floating tensor.
        codes: ``[N]`` int64 group codes in ``[0, num_groups)``.
        num_groups: number of groups.
        dtype: computation dtype (default: :func:`compute_dtype` of the embeddings); float64
            gives the SMI that :func:`adjust_rewards` uses with float64 rewards.
        group_size: the :func:`contiguous_group_size` of ``codes`` when the caller has it
            (found again otherwise).

    Returns:
        ``[N]`` tensor of ``dtype``: float32 (float64 for float64 embeddings) by default.
    """
    dtype = dtype or compute_dtype(embeddings.dtype)
    if embeddings.device.type == "cpu":
        return _smi_cpu(embeddings, codes, num_groups, dtype, group_size)
    return _smi_chunked(embeddings, codes, num_groups, dtype)


def adjust_rewards(
    rewards: torch.Tensor,
    embeddings: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    min_denominator: float = DEFAULT_MIN_DENOMINATOR,
    *,
    group_size: int | None = None,
) -> torch.Tensor:
    """``r_i / max(1 + SMI_i, min_denominator)``; float64 if rewards or embeddings are float64.
    ``group_size``: as in :func:`smi_scores`."""
    dtype = compute_dtype(rewards.dtype, embeddings.dtype)
    if embeddings.device.type != "cpu":
        smi = smi_scores(embeddings, codes, num_groups, dtype)
        return adjust_from_smi(rewards, smi, min_denominator)
    # NOTE: on CPU from 1 + SMI as the products give it, clamped in place: at N = 256 each op
    # counts (a call takes about 50 us).
    cover = _smi_cpu(embeddings, codes, num_groups, dtype, group_size, plus_one=True)
    if rewards.dtype != dtype:
        rewards = rewards.to(dtype)
    return rewards / cover.clamp_(min=min_denominator)


def group_advantages(
    rewards: torch.Tensor,
    codes: torch.Tensor,
    num_groups: int,
    scale: str = "std",
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """GRPO / DR.GRPO advantages within each group.

    ``scale="std"``: ``(r - mean) / (std + eps)`` with the unbiased standard deviation
    (divisor ``n - 1``, as TRL's ``GRPOTrainer``); a group of one row has std 0 and advantage 0.
    ``scale="none"``: ``r - mean`` (DR.GRPO).

    The mean and variance are two-pass (mean first, then squared deviations), not
    ``E[r^2] - E[r]^2``, so large reward offsets do not cancel.
    """
    dtype = compute_dtype(rewards.dtype)
    r = rewards.to(dtype)
    # NOTE: out-of-place index_add: torch.func.vmap refuses index_add_ into a fresh tensor.
    zeros = torch.zeros(num_groups, dtype=dtype, device=r.device)
    counts = zeros.index_add(0, codes, torch.ones_like(r))
    mean = zeros.index_add(0, codes, r) / counts.clamp(min=1)
    centred = r - mean.index_select(0, codes)
    if scale == "none":
        return centred
    squares = zeros.index_add(0, codes, centred * centred)
    std = group_std(squares, counts)
    return centred / (std.index_select(0, codes) + eps)


def group_std(squares: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviations from per-group sums of squared deviations and row counts
    (0 for a group of one row). Where it is 0 its gradient is taken as 0, the limit of the
    advantages' derivatives, not the ``0 * inf = NaN`` of ``sqrt`` at 0, which would make every
    reward's gradient NaN."""
    variance = squares / (counts - 1).clamp(min=1)
    zero = variance == 0
    return torch.where(zero, 0.0, torch.sqrt(torch.where(zero, 1.0, variance)))
