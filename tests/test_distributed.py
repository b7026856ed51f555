"""dra_kernels.distributed against the single-process API on the concatenation of all ranks' rows.

Real multi-process runs: the test spawns 2 and 4 processes (torch.multiprocessing, gloo on CPU),
each rank computes its rows of every layout, writes them to a file, and the test process compares
them with :func:`dra_kernels.adjust_rewards` (and smi_scores, dra_advantages) on the
concatenation. All layouts of one world size run in one spawn to keep the cost at one start-up.
"""

from __future__ import annotations

import dataclasses
import pathlib
import traceback
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dra_kernels
from dra_kernels import distributed

# (rtol, atol) against the single-process result: only the summation order differs.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12)}


@dataclasses.dataclass
class Layout:
    """A global batch and the rows each rank holds (``parts[r]``: indices into the batch)."""

    name: str
    rewards: np.ndarray
    embeddings: np.ndarray
    group_ids: list[Any]
    parts: list[np.ndarray]
    num_groups: int | None = None
    as_tensors: bool = True

    def local(self, rank: int) -> tuple[Any, Any, Any]:
        rows = self.parts[rank]
        ids = [self.group_ids[i] for i in rows]
        if self.as_tensors:
            r = torch.from_numpy(self.rewards[rows])
            e = torch.from_numpy(self.embeddings[rows])
            if ids and all(isinstance(g, int) for g in ids):
                return r, e, torch.tensor(ids, dtype=torch.int64)
            return r, e, ids
        return self.rewards[rows].tolist(), self.embeddings[rows], ids


def _batch(
    rng: np.random.Generator, sizes: list[int], dim: int, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    n = sum(sizes)
    ids = [g for g, size in enumerate(sizes) for _ in range(size)]
    base = rng.normal(size=(len(sizes), dim))
    # rows near their group's direction, so similarities are large and varied
    emb = base[ids] + 0.7 * rng.normal(size=(n, dim))
    return rng.normal(size=n).astype(dtype), emb.astype(dtype), ids


def _layouts(world: int) -> list[Layout]:
    rng = np.random.default_rng(1234 + world)
    out = []

    # groups entirely on one rank: contiguous groups cut at group boundaries
    sizes = [3, 5, 1, 4, 2, 6, 3, 2]
    r, e, ids = _batch(rng, sizes, 8)
    cuts = np.cumsum(sizes)[np.linspace(0, len(sizes) - 1, world + 1).astype(int)[1:-1]]
    out.append(Layout("whole-groups", r, e, ids, np.split(np.arange(len(ids)), cuts)))

    # every group spread over all ranks: row j on rank j % world
    sizes = [world * 2, world * 3, world, world + 1]
    r, e, ids = _batch(rng, sizes, 16)
    rows = np.arange(len(ids))
    out.append(Layout("round-robin", r, e, ids, [rows[rows % world == k] for k in range(world)]))

    # rank 1 holds no rows; integer ids with the num_groups hint (one group never appears)
    sizes = [4, 4, 0, 6, 3]
    r, e, ids = _batch(rng, sizes, 8)
    rows = rng.permutation(len(ids))
    parts = [np.sort(p) for p in np.array_split(rows, world - 1)]
    parts.insert(1, np.array([], dtype=np.int64))
    out.append(Layout("empty-rank-hinted", r, e, ids, parts, num_groups=len(sizes)))

    # random permutation and random cut points; string ids; list / numpy inputs
    for seed in range(3):
        sizes = list(rng.integers(1, 7, size=rng.integers(2, 9)))
        r, e, ids = _batch(rng, sizes, int(rng.integers(1, 12)))
        labels = [f"prompt-{g * 7919 % 1000}" for g in ids]
        rows = rng.permutation(len(ids))
        cuts = np.sort(rng.integers(0, len(ids) + 1, size=world - 1))
        parts = np.split(rows, cuts)
        out.append(Layout(f"random-strings-{seed}", r, e, labels, parts, as_tensors=seed != 1))

    # large, negative, sparse integer ids without a hint; zero rows and singletons; float64
    sizes = [1, 5, 2, 1, 7]
    r, e, ids = _batch(rng, sizes, 4, np.float64)
    e[2] = 0.0
    sparse = [(-1) ** g * (g * 10**12 + 3) for g in ids]
    rows = rng.permutation(len(ids))
    out.append(Layout("sparse-int64-float64", r, e, sparse, np.array_split(rows, world)))

    # integer ids on rank 0, labels elsewhere: 1 and "1" are different groups, as in one list
    sizes = [3, 3, 2, 2]
    r, e, ids = _batch(rng, sizes, 6)
    mixed = [[1, 2, "1", "2"][g] for g in ids]
    ints = [i for i, g in enumerate(mixed) if isinstance(g, int)]
    labels = [i for i, g in enumerate(mixed) if isinstance(g, str)]
    parts = [np.array(ints[:-1]), *np.array_split(np.array(labels + ints[-1:]), world - 1)]
    out.append(Layout("mixed-kinds", r, e, mixed, parts))

    # every rank empty
    r, e, ids = _batch(rng, [], 5)
    parts = [np.array([], dtype=np.int64)] * world
    out.append(Layout("all-empty", r, e.reshape(0, 5), ids, parts, as_tensors=False))
    return out


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    return np.asarray(value, dtype=np.float64)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results: dict[str, Any] = {}
        for layout in _layouts(world):
            r, e, ids = layout.local(rank)
            kw = {"num_groups": layout.num_groups}
            first = distributed.adjust_rewards(r, e, ids, **kw)
            results[layout.name] = {
                "adjust": _as_numpy(first),
                "kind": type(first).__name__,
                "again": _as_numpy(distributed.adjust_rewards(r, e, ids, **kw)),
                "smi": _as_numpy(distributed.smi_scores(e, ids, **kw)),
                "adv_std": _as_numpy(distributed.dra_advantages(r, e, ids, **kw)),
                "adv_none": _as_numpy(distributed.dra_advantages(r, e, ids, scale="none", **kw)),
                "codes": distributed.global_group_codes(ids, num_groups=layout.num_groups).codes,
            }
        # ranks disagreeing on D: every rank must raise the same clear error, none may hang
        dim = 3 if rank == 0 else 4
        try:
            distributed.adjust_rewards(torch.ones(2), torch.ones(2, dim), ["a", "b"])
            results["dim-mismatch"] = "no error"
        except ValueError as exc:
            results["dim-mismatch"] = str(exc)
        torch.save(results, pathlib.Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        (pathlib.Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _check_close(name: str, found: np.ndarray, expected: np.ndarray, dtype: torch.dtype) -> None:
    rtol, atol = TOLERANCES[dtype]
    bad = ~np.isclose(found, expected, rtol=rtol, atol=atol)
    assert found.shape == expected.shape, f"{name}: shape {found.shape} != {expected.shape}"
    assert not bad.any(), (
        f"{name}: {int(bad.sum())} of {bad.size} rows differ; rows {np.flatnonzero(bad)[:10]}, "
        f"found {found[bad][:10]}, expected {expected[bad][:10]}"
    )


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_matches_concatenation(world: int, tmp_path: pathlib.Path) -> None:
    init_file = tmp_path / "init"
    mp.spawn(_worker, args=(world, str(init_file), str(tmp_path)), nprocs=world, join=True)
    errors = sorted(tmp_path.glob("*.err"))
    assert not errors, errors[0].read_text()
    ranks = [torch.load(tmp_path / f"rank{k}.pt", weights_only=False) for k in range(world)]

    for layout in _layouts(world):
        order = np.concatenate(layout.parts).astype(np.int64)
        assert sorted(order.tolist()) == list(range(len(layout.group_ids))), "bad layout"
        ids = [layout.group_ids[i] for i in order]
        r, e = layout.rewards[order], layout.embeddings[order]
        dtype = torch.float64 if e.dtype == np.float64 else torch.float32
        expected = {
            "adjust": dra_kernels.adjust_rewards(r, e, ids, backend="torch"),
            "smi": dra_kernels.smi_scores(e, ids, backend="torch"),
            "adv_std": dra_kernels.dra_advantages(r, e, ids, backend="torch"),
            "adv_none": dra_kernels.dra_advantages(r, e, ids, scale="none", backend="torch"),
        }
        start = 0
        codes = []
        for k, result in enumerate(ranks):
            stop = start + len(layout.parts[k])
            res = result[layout.name]
            for key, value in expected.items():
                _check_close(f"{layout.name} rank {k} {key}", res[key], value[start:stop], dtype)
            # bit-identical on a second call: deterministic for a fixed world size and layout
            np.testing.assert_array_equal(res["again"], res["adjust"])
            assert res["kind"] == ("Tensor" if layout.as_tensors else "list")
            codes.append(res["codes"])
            start = stop
        # one code per group, the same on every rank
        all_codes = torch.cat(codes).tolist()
        pairs = set(zip(ids, all_codes, strict=True))
        assert len({g for g, _ in pairs}) == len(pairs) == len({c for _, c in pairs})

    for result in ranks:
        assert "the same width D on every rank" in result["dim-mismatch"]
        assert "rank 0: D=3" in result["dim-mismatch"]


def test_single_process_falls_back_to_local_computation() -> None:
    rng = np.random.default_rng(0)
    r, e, ids = _batch(rng, [3, 1, 4], 6)
    expected = dra_kernels.adjust_rewards(r, e, ids, backend="torch")
    np.testing.assert_allclose(distributed.adjust_rewards(r, e, ids), expected, rtol=1e-6)
    np.testing.assert_allclose(
        distributed.adjust_rewards(r, e, ids, num_groups=3), expected, rtol=1e-6
    )
    labels = [str(g) for g in ids]
    np.testing.assert_allclose(
        distributed.dra_advantages(r, e, labels),
        dra_kernels.dra_advantages(r, e, labels, backend="torch"),
        rtol=1e-5,
        atol=1e-6,
    )
    assert distributed.adjust_rewards([], np.zeros((0, 6), np.float32), []) == []


def test_hint_refuses_labels() -> None:
    with pytest.raises(TypeError, match="num_groups needs integer group ids"):
        distributed.adjust_rewards([1.0], [[1.0]], ["a"], num_groups=1)


def test_payload_bytes() -> None:
    assert distributed.allreduce_payload_bytes(64, 512) == 64 * 513 * 4
    assert distributed.allreduce_payload_bytes(3, 7, torch.float64) == 3 * 8 * 8
