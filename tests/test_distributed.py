"""dra_kernels.distributed against the single-process API on the concatenation of all ranks' rows.

Real multi-process runs: the test spawns 2 and 4 processes (torch.multiprocessing, gloo on CPU),
each rank computes its rows of every layout, writes them to a file, and the test process compares
them with :func:`dra_kernels.adjust_rewards` (and smi_scores, dra_advantages) on the
concatenation. All layouts of one world size run in one spawn to keep the cost at one start-up.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import pathlib
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dra_kernels
from dra_kernels import distributed, reference
from tests.helpers import assert_close

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
            if ids and all(isinstance(g, int) and -(2**63) <= g < 2**63 for g in ids):
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

    # integers beyond int64 beside small ones, exact (never floats): rank 0 holds small ids (an
    # int64 tensor), rank 1 [1, 2**63, ...] (once read as float64), the others lists of Python ints
    sizes = [3, 2, 4, 3]
    r, e, ids = _batch(rng, sizes, 5)
    huge = [[2**63, 1, -(2**63) - 1, 2**100][g] for g in ids]
    rows = {v: [i for i, g in enumerate(huge) if g == v] for v in set(huge)}
    others = rows[-(2**63) - 1] + rows[2**100]
    parts = [rows[1][:-1] + (others if world == 2 else []), rows[1][-1:] + rows[2**63]]
    parts = [np.array(p) for p in parts] + (np.array_split(others, world - 2) if world > 2 else [])
    out.append(Layout("huge-ints", r, e, huge, parts))

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


def _spec(r: np.ndarray, e: np.ndarray, ids: list[Any]) -> dict[str, torch.Tensor]:
    """The spec (:mod:`dra_kernels.reference`) in float64 on the concatenation."""
    codes: dict[Any, int] = {}
    g = torch.tensor([codes.setdefault(x, len(codes)) for x in ids], dtype=torch.int64)
    r64, e64 = torch.from_numpy(r).double(), torch.from_numpy(e).double()
    smi = reference.smi_scores(e64, g)
    adjusted = reference.adjust_from_smi(r64, smi)
    return {
        "smi": smi,
        "adjust": adjusted,
        "adv_std": reference.group_advantages(adjusted, g, "std"),
        "adv_none": reference.group_advantages(adjusted, g, "none"),
    }


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
        # and the spec, on the concatenation
        for key, want in _spec(r, e, ids).items():
            found = np.concatenate([result[layout.name][key] for result in ranks])
            assert_close(found, want, dtype, f"{layout.name} {key} against the spec")
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


@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_one_process_runs_the_core_dispatch_bit_for_bit(backend: str) -> None:
    """Without a process group each function is the core's, backend included (the Triton kernel
    runs here through its CPU interpreter; on CUDA ``"auto"`` takes it)."""
    rng = np.random.default_rng(1)
    r, e, ids = _batch(rng, [3, 1, 4, 6], 8)
    r, e, ids = torch.from_numpy(r), torch.from_numpy(e), torch.tensor(ids)
    calls = {
        "smi_scores": ((e, ids), {}),
        "adjust_rewards": ((r, e, ids), {"min_denominator": 0.3}),
        "dra_advantages": ((r, e, ids), {"scale": "none"}),
    }
    for name, (args, kwargs) in calls.items():
        for hint in (None, 4):
            kw = {**kwargs, "backend": backend, "num_groups": hint}
            ours = getattr(distributed, name)(*args, **kw)
            assert torch.equal(ours, getattr(dra_kernels, name)(*args, **kw)), (name, hint)


def test_hint_refuses_labels() -> None:
    with pytest.raises(ValueError, match="num_groups=1 is a hint for integer ids"):
        distributed.adjust_rewards([1.0], [[1.0]], ["a"], num_groups=1)


def test_signatures_are_the_core_functions_plus_process_group() -> None:
    for name in ("smi_scores", "adjust_rewards", "dra_advantages"):
        core = inspect.signature(getattr(dra_kernels, name), eval_str=True).parameters
        ours = inspect.signature(getattr(distributed, name)).parameters
        assert list(ours) == [*core, "process_group"]
        assert all(ours[k] == p for k, p in core.items()) and ours["process_group"].default is None


def test_payload_bytes() -> None:
    assert distributed.allreduce_payload_bytes(64, 512) == 64 * 513 * 4
    assert distributed.allreduce_payload_bytes(3, 7, torch.float64) == 3 * 8 * 8


# ----------------------------------------------------------------------------- validation

R2 = np.array([1.0, 2.0])
E2 = np.array([[1.0, 0.0], [0.6, 0.8]])
IDS2 = [0, 0]

# (function, args, keywords): each refused by the core; the distributed function must refuse it
# with the same exception and the same message (it runs the core's checks, in the core's order).
REFUSED = {
    "min_denominator above 1": ("adjust_rewards", (R2, E2, IDS2), {"min_denominator": 2.0}),
    "min_denominator 0": ("dra_advantages", (R2, E2, IDS2), {"min_denominator": 0.0}),
    "min_denominator NaN": ("adjust_rewards", (R2, E2, IDS2), {"min_denominator": math.nan}),
    "min_denominator bool": ("adjust_rewards", (R2, E2, IDS2), {"min_denominator": True}),
    "min_denominator string": ("dra_advantages", (R2, E2, IDS2), {"min_denominator": "0.1"}),
    "eps 0 with std": ("dra_advantages", (R2, E2, IDS2), {"eps": 0.0}),
    "eps negative with none": ("dra_advantages", (R2, E2, IDS2), {"scale": "none", "eps": -1.0}),
    "eps inf": ("dra_advantages", (R2, E2, IDS2), {"eps": math.inf}),
    "unknown scale": ("dra_advantages", (R2, E2, IDS2), {"scale": "mean"}),
    "scale and eps both bad": ("dra_advantages", (R2, E2, IDS2), {"scale": "x", "eps": 0.0}),
    "eps and min_denominator both bad": (
        "dra_advantages",
        (R2, E2, IDS2),
        {"eps": 0.0, "min_denominator": 2.0},
    ),
    "num_groups negative": ("adjust_rewards", (R2, E2, IDS2), {"num_groups": -1}),
    "num_groups float": ("smi_scores", (E2, IDS2), {"num_groups": 1.0}),
    "num_groups too small": ("adjust_rewards", (R2, E2, [0, 1]), {"num_groups": 1}),
    "num_groups with labels": ("adjust_rewards", (R2, E2, ["a", "b"]), {"num_groups": 2}),
    "boolean rewards": ("adjust_rewards", (np.array([True, False]), E2, IDS2), {}),
    "complex rewards": ("dra_advantages", (R2.astype(complex), E2, IDS2), {}),
    "2-D rewards": ("adjust_rewards", (E2, E2, IDS2), {}),
    "integer embeddings": ("smi_scores", (E2.astype(int), IDS2), {}),
    "1-D embeddings": ("smi_scores", (R2, IDS2), {}),
    "D = 0": ("adjust_rewards", (R2, np.zeros((2, 0)), IDS2), {}),
    "rows differ": ("adjust_rewards", (R2, E2[:1], IDS2), {}),
    "torch and numpy": ("adjust_rewards", (torch.tensor(R2), E2, IDS2), {}),
    "sparse embeddings": ("smi_scores", (torch.tensor(E2).to_sparse(), IDS2), {}),
    "meta embeddings": ("smi_scores", (torch.tensor(E2).to("meta"), IDS2), {}),
    "group ids length": ("smi_scores", (E2, [0]), {}),
    "float group ids": ("smi_scores", (E2, [0.0, 1.0]), {}),
    "NaN group id": ("adjust_rewards", (R2, E2, ["a", math.nan]), {}),
    "tuple holding a list": ("smi_scores", (E2, [([1],), ([1],)]), {}),
    "set group ids": ("smi_scores", (E2, {0, 1}), {}),
    "float tensor group ids": ("smi_scores", (E2, torch.zeros(2)), {}),
    "2-D group ids": ("smi_scores", (E2, np.zeros((2, 1), int)), {}),
    "unknown backend": ("adjust_rewards", (R2, E2, IDS2), {"backend": "cuda"}),
    "backend after the data": ("dra_advantages", (R2, E2[:1], IDS2), {"backend": "cuda"}),
    # the measure options (tests/test_distributed_measures.py tests them across ranks)
    "unknown measure": ("smi_scores", (E2, IDS2), {"measure": "cosine"}),
    "measure not a string": ("adjust_rewards", (R2, E2, IDS2), {"measure": 1}),
    "eta with graph_cut": ("dra_advantages", (R2, E2, IDS2), {"eta": 0.5}),
    "lam with facility_location": (
        "adjust_rewards",
        (R2, E2, IDS2),
        {"measure": "facility_location", "lam": 2.0},
    ),
    "eta above 1 with log_det": ("smi_scores", (E2, IDS2), {"measure": "log_det", "eta": 1.5}),
    "lam too small": ("adjust_rewards", (R2, E2, IDS2), {"measure": "log_det", "lam": 0.0}),
    "eta a string": ("smi_scores", (E2, IDS2), {"measure": "facility_location", "eta": "1"}),
    "min_denominator before measure": (
        "adjust_rewards",
        (R2, E2, IDS2),
        {"min_denominator": 2.0, "measure": "x"},
    ),
    "eps before measure": ("dra_advantages", (R2, E2, IDS2), {"eps": 0.0, "measure": "x"}),
    "measure before the data": ("adjust_rewards", (R2, E2[:1], IDS2), {"measure": "x"}),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_arguments_are_refused_exactly_as_the_core_refuses_them(case: str) -> None:
    name, args, kwargs = REFUSED[case]
    with pytest.raises((TypeError, ValueError)) as core:
        getattr(dra_kernels, name)(*args, **kwargs)
    with pytest.raises(core.type) as ours:
        getattr(distributed, name)(*args, **kwargs)
    assert str(ours.value) == str(core.value)


# ----------------------------------------------------------------------------- errors on ranks

# A short timeout for the collectives under test: a rank left waiting fails in seconds instead
# of blocking the suite (the default is 30 minutes).
COLLECTIVE_TIMEOUT_S = 10
FAST_S = 5.0  # an error must reach every rank well within the timeout


def _ok_inputs(rank: int) -> dict[str, Any]:
    rng = np.random.default_rng(100 + rank)
    e = torch.from_numpy(rng.normal(size=(3, 4)))
    r = torch.from_numpy(rng.normal(size=3))
    return {"rewards": r, "embeddings": e, "group_ids": [0, 1, 0]}


# name -> {"overrides": rank -> the arguments that rank passes instead of valid ones (the
# failing ranks), "common": arguments of every rank, "all": for an error only the ranks together
# can see, the ValueError every rank raises, "own": a failing rank's error where the core has no
# such error}. A failing rank must raise the core's error for the same arguments.
def _error_cases(world: int) -> dict[str, dict[str, Any]]:
    last = world - 1
    bad_ids = [([1],), ([1],), ([1],)]
    sparse = torch.zeros(3, 4, dtype=torch.float64).to_sparse()
    cases = {
        "min_denominator above 1 on one rank": {
            "overrides": {1: {"min_denominator": 2.0}},
        },
        "eps 0 with std on every rank": {
            "overrides": {k: {"eps": 0.0} for k in range(world)},
        },
        "different errors on different ranks": {
            "overrides": {
                0: {"group_ids": [0.5, 1.0, 0.5]},
                1: {"embeddings": sparse},
                **({2: {"min_denominator": 0.0}} if world > 2 else {}),
            },
        },
        "unhashable id on the last rank": {"overrides": {last: {"group_ids": bad_ids}}},
        "length mismatch with num_groups": {
            "common": {"num_groups": 2},
            "overrides": {0: {"group_ids": [0, 1]}},
        },
        "id out of range with num_groups": {
            "common": {"num_groups": 2},
            "overrides": {last: {"group_ids": [0, 1, 5]}},
        },
        "unpicklable label": {  # a valid id in one process; the ranks must exchange it
            "overrides": {1: {"group_ids": ["a", lambda: None, "a"]}},
            "own": "group_ids labels must be picklable to be compared across ranks",
        },
        "unknown backend on one rank": {"overrides": {0: {"backend": "cuda"}}},
        "unknown keyword on one rank": {"overrides": {1: {"min_denom": 0.5}}},
        "backend triton across ranks": {  # the kernel runs in one process only
            "overrides": {last: {"backend": "triton"}},
            "refused": ("ValueError", "backend='triton' runs in one process only"),
        },
        # errors that only the ranks together can see: every rank raises the same ValueError
        "num_groups on some ranks only": {
            "overrides": {0: {"num_groups": 2}},
            "all": "num_groups must be the same on every rank",
        },
        "different min_denominator": {
            "overrides": {last: {"min_denominator": 0.5}},
            "all": "min_denominator must be the same on every rank",
        },
        "different functions": {
            "overrides": {0: {"function": "smi_scores"}},
            "all": "the function called must be the same on every rank",
        },
        "different D with num_groups": {
            "common": {"num_groups": 2},
            "overrides": {1: {"embeddings": torch.ones(3, 5, dtype=torch.float64)}},
            "all": "the same width D on every rank",
        },
    }
    for case in cases.values():
        case.setdefault("common", {})
        case.setdefault("function", "dra_advantages")
    return cases


def _call(function: str, inputs: dict[str, Any], pg: Any) -> Any:
    inputs = dict(inputs)
    function = inputs.pop("function", function)
    if function == "smi_scores":
        inputs.pop("rewards")
        for key in ("min_denominator", "eps", "scale"):
            inputs.pop(key, None)
    if function == "adjust_rewards":
        inputs.pop("eps", None)
        inputs.pop("scale", None)
    return getattr(distributed, function)(**inputs, process_group=pg)


def _rank_inputs(case: dict[str, Any], rank: int) -> dict[str, Any]:
    return {**_ok_inputs(rank), **case["common"], **case["overrides"].get(rank, {})}


def run_in_gloo_group(
    rank: int, world: int, init_file: str, out_dir: str, work: Callable[[Any], dict]
) -> None:
    """One spawned rank: ``work(process_group)`` in a gloo group whose collectives time out in
    :data:`COLLECTIVE_TIMEOUT_S` (a rank left waiting fails in seconds instead of blocking the
    suite); its results go to ``rank{rank}.pt``, a traceback to ``rank{rank}.err``."""
    import datetime

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pg = dist.new_group(timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        torch.save(work(pg), pathlib.Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        (pathlib.Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def timed_outcome(call: Callable[[], Any]) -> tuple[tuple[str, str], float]:
    """``((exception type or "no error", message), seconds)`` of ``call()``."""
    start = time.monotonic()
    try:
        call()
        outcome = ("no error", "")
    except Exception as exc:
        outcome = (type(exc).__name__, str(exc))
    return outcome, time.monotonic() - start


def _error_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    def work(pg: Any) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for name, case in _error_cases(world).items():
            outcome, elapsed = timed_outcome(
                lambda case=case: _call(case["function"], _rank_inputs(case, rank), pg)
            )
            # the process group is still in step: a valid call gives the right numbers
            after = distributed.adjust_rewards(**_ok_inputs(rank), process_group=pg)
            results[name] = {"outcome": outcome, "elapsed": elapsed, "after": after.numpy()}
        results["gradients"] = _gradients(rank, world, pg)
        return results

    run_in_gloo_group(rank, world, init_file, out_dir, work)


def _grad_batch(world: int):
    """A global batch whose groups span ranks: row j on rank j % world."""
    rng = np.random.default_rng(7)
    sizes = [world + 1, 1, 2 * world, world]
    r, e, ids = _batch(rng, sizes, 6, np.float64)
    e[1] = -e[0]  # 1 + SMI near or below 0: the clamp's constant factor
    rows = np.arange(len(ids))
    return r, e, ids, [rows[rows % world == k] for k in range(world)]


def _gradients(rank: int, world: int, pg: Any) -> dict[str, Any]:
    """This rank's Jacobians w.r.t. its own rewards; the embeddings require grad too."""
    r, e, ids, parts = _grad_batch(world)
    rows = parts[rank]
    local_r = torch.from_numpy(r[rows]).requires_grad_()
    local_e = torch.from_numpy(e[rows]).requires_grad_()
    local_ids = [ids[i] for i in rows]
    out: dict[str, Any] = {}
    for scale in ("std", "none"):
        out[scale] = torch.autograd.functional.jacobian(
            lambda v, scale=scale: distributed.dra_advantages(
                v, local_e, local_ids, scale=scale, min_denominator=0.2, process_group=pg
            ),
            local_r,
        ).numpy()
    adjusted = distributed.adjust_rewards(local_r, local_e, local_ids, min_denominator=0.2,
                                          process_group=pg)  # fmt: skip
    (out["adjust"],) = torch.autograd.grad(adjusted.sum(), local_r)
    out["smi_requires_grad"] = distributed.smi_scores(local_e, local_ids, process_group=pg)
    out["smi_requires_grad"] = out["smi_requires_grad"].requires_grad
    out["embedding_grad"] = local_e.grad
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_an_error_on_any_rank_is_an_error_on_every_rank_within_seconds(
    world: int, tmp_path: pathlib.Path
) -> None:
    """Each rank checks its arguments with the core's checks, then all ranks agree on a status
    in the first collective: the failing ranks raise their own error (the core's), the others
    a RuntimeError naming them; disagreements between ranks raise one ValueError everywhere.
    No rank waits for the timeout, and the process group stays usable."""
    init_file = tmp_path / "init"
    mp.spawn(_error_worker, args=(world, str(init_file), str(tmp_path)), nprocs=world, join=True)
    errors = sorted(tmp_path.glob("*.err"))
    assert not errors, errors[0].read_text()
    ranks = [torch.load(tmp_path / f"rank{k}.pt", weights_only=False) for k in range(world)]
    ok = [_ok_inputs(k) for k in range(world)]
    after = dra_kernels.adjust_rewards(
        torch.cat([o["rewards"] for o in ok]),
        torch.cat([o["embeddings"] for o in ok]),
        [g for o in ok for g in o["group_ids"]],
        backend="torch",
    ).numpy()
    for name, case in _error_cases(world).items():
        failing = sorted(case["overrides"])
        for rank, result in enumerate(ranks):
            kind, message = result[name]["outcome"]
            assert result[name]["elapsed"] < FAST_S, (name, rank, result[name]["elapsed"])
            np.testing.assert_allclose(
                result[name]["after"], after[3 * rank : 3 * rank + 3], rtol=1e-12, err_msg=name
            )
            if "all" in case:
                assert kind == "ValueError" and case["all"] in message, (name, rank, message)
            elif rank in failing and "refused" in case:  # an error across ranks only
                assert (kind, message[: len(case["refused"][1])]) == case["refused"], name
            elif rank in failing and "own" in case:
                assert kind == "TypeError" and case["own"] in message, (name, rank, message)
            elif rank in failing:
                inputs = _rank_inputs(case, rank)
                with pytest.raises(Exception) as core:  # the same inputs, in one process
                    _call(case["function"], inputs, None)
                assert (kind, message) == (type(core.value).__name__, str(core.value)), name
            else:
                assert kind == "RuntimeError", (name, rank, kind, message)
                named = ("rank " if len(failing) == 1 else "ranks ") + ", ".join(map(str, failing))
                assert f"the inputs of {named} were refused" in message, (name, message)
                for k in failing:
                    assert f"rank {k}: " in message, (name, message)

    # gradients: each rank's Jacobian is the single-process Jacobian's block of its own rows
    r, e, ids, parts = _grad_batch(world)
    order = np.concatenate(parts)
    rt = torch.from_numpy(r[order])
    et, it = torch.from_numpy(e[order]), [ids[i] for i in order]
    start = 0
    for rank, result in enumerate(ranks):
        grads = result["gradients"]
        stop = start + len(parts[rank])
        for scale in ("std", "none"):
            full = torch.autograd.functional.jacobian(
                lambda v, scale=scale: dra_kernels.dra_advantages(
                    v, et, it, scale=scale, min_denominator=0.2, backend="torch"
                ),
                rt,
            ).numpy()
            np.testing.assert_allclose(grads[scale], full[start:stop, start:stop], rtol=1e-9,
                                       atol=1e-12, err_msg=f"rank {rank} {scale}")  # fmt: skip
        smi = dra_kernels.smi_scores(et, it, backend="torch")[start:stop].numpy()
        factor = 1 / np.maximum(1 + smi, 0.2)
        np.testing.assert_allclose(grads["adjust"].numpy(), factor, rtol=1e-12)
        assert grads["smi_requires_grad"] is False and grads["embedding_grad"] is None
        start = stop


# ----------------------------------------------------------------------------- input kinds

KINDS = ("empty lists", "numpy", "lists", "torch float32", "torch float64", "torch float16")


def _kind_inputs(kind: str, rank: int) -> tuple[Any, Any, Any]:
    """This rank's rows in one input kind the core accepts (3 rows, D = 4, groups spanning the
    ranks), or none at all."""
    if kind == "empty lists":
        return [], [], []
    gen = np.random.default_rng(40 + rank)
    r, e = gen.random(3), gen.standard_normal((3, 4))
    ids = [0, 1, 2 + rank]
    if kind == "numpy":
        return r, e, np.asarray(ids)
    if kind == "lists":
        return r.tolist(), e.tolist(), ids
    dtype = {"torch float32": torch.float32, "torch float64": torch.float64}.get(
        kind, torch.float16
    )
    return torch.tensor(r, dtype=dtype), torch.tensor(e, dtype=dtype), torch.tensor(ids)


def _kinds_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    def work(pg: Any) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for first in KINDS:
            for second in KINDS:
                for hint in (None, 2**40):
                    r, e, ids = _kind_inputs((first, second)[rank], rank)
                    key = (first, second, hint)

                    def call(r=r, e=e, ids=ids, hint=hint, key=key) -> None:
                        out = distributed.adjust_rewards(
                            r, e, ids, num_groups=hint, process_group=pg
                        )
                        results[key] = torch.as_tensor(out).double().numpy()

                    results[(*key, "outcome")] = timed_outcome(call)
        return results

    run_in_gloo_group(rank, world, init_file, out_dir, work)


def test_every_input_kind_the_core_accepts_works_against_every_other(tmp_path):
    """Each rank may hold any input kind the core accepts (empty lists, numpy, lists, tensors of
    any dtype) whatever the other passes, also with a num_groups hint far above the rows: every
    rank gets the core's result on the concatenation. (A rank with empty lists beside float32
    tensors once failed alone after the header, leaving the other waiting.)"""
    world = 2
    init_file = tmp_path / "init"
    mp.spawn(_kinds_worker, args=(world, str(init_file), str(tmp_path)), nprocs=world, join=True)
    errors = sorted(tmp_path.glob("*.err"))
    assert not errors, errors[0].read_text()
    ranks = [torch.load(tmp_path / f"rank{k}.pt", weights_only=False) for k in range(world)]
    for first in KINDS:
        for second in KINDS:
            parts = [_kind_inputs(kind, k) for k, kind in enumerate((first, second))]
            r = torch.cat([torch.as_tensor(p[0]).double().reshape(-1) for p in parts])
            e = torch.cat([torch.as_tensor(p[1]).double().reshape(-1, 4) for p in parts])
            ids = [int(i) for p in parts for i in p[2]]
            half = "torch float16" in (first, second)
            want = dra_kernels.adjust_rewards(r, e, ids).numpy()
            offsets = np.cumsum([0] + [len(p[2]) for p in parts])
            for hint in (None, 2**40):
                for k in range(world):
                    outcome, elapsed = ranks[k][(first, second, hint, "outcome")]
                    assert outcome == ("no error", ""), (first, second, hint, k, outcome)
                    assert elapsed < FAST_S, (first, second, hint, k, elapsed)
                    got = ranks[k][(first, second, hint)]
                    tol = 2e-3 if half else 1e-5
                    np.testing.assert_allclose(
                        got, want[offsets[k] : offsets[k + 1]], rtol=tol, atol=tol,
                        err_msg=str((first, second, hint, k)),
                    )  # fmt: skip
