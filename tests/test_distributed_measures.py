"""``measure=`` in dra_kernels.distributed: facility location and log-det, groups spanning ranks.

Real multi-process runs (gloo on CPU, 2 and 3 ranks, one spawn per world size): each rank computes
its rows of every layout with every measure, and the test process compares them with the
single-process API on the concatenation of all ranks' rows. SMI and adjusted rewards are compared
bit for bit (each group is computed whole on one rank, its rows in the concatenation's order, and
each group size occurs once in a layout, so every batched product has the shape it has in one
process: a BLAS may round one matrix of a batch differently with the batch size, so several
groups of one size on an owner would agree to rounding only), advantages to float tolerance
(their group sums are added over ranks). The same spawn checks
that ranks disagreeing on ``measure`` / ``eta`` / ``lam`` all raise at once, and gradients.
Spawning, the row generator and the timeouts are those of tests/test_distributed.py.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import dra_kernels
from dra_kernels import distributed
from tests.test_distributed import (
    FAST_S,
    _batch,
    run_in_gloo_group,
    timed_outcome,
)

# (measure, eta, lam); eta != 1 for both, lam != 1 for log_det
OPTIONS = [
    ("facility_location", 1.0, 1.0),
    ("facility_location", 0.4, 1.0),
    ("log_det", 1.0, 1.0),
    ("log_det", 0.7, 0.05),
]
FUNCTIONS = ("smi", "adjust", "adv_std", "adv_none")
BITWISE = ("smi", "adjust")


def _kw(option: tuple[str, float, float]) -> dict[str, Any]:
    measure, eta, lam = option
    return {"measure": measure, "eta": eta, "lam": lam}


def _layouts(world: int) -> dict[str, dict[str, Any]]:
    """name -> the global batch (rewards, embeddings, ids), each rank's rows, options."""
    rng = np.random.default_rng(4321 + world)
    out: dict[str, dict[str, Any]] = {}

    def ragged(dim: int, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray, list[int]]:
        sizes = list(rng.permutation(np.arange(1, 21)))  # every size 1..20, unsorted
        r, e, ids = _batch(rng, sizes, dim, dtype)
        order = rng.permutation(len(ids))  # rows of a group anywhere
        return r[order], e[order], [ids[i] for i in order]

    # every rank holds rows, random cut points; sparse integer ids, as int64 tensors
    r, e, ids = ragged(8)
    e[5] = 0.0  # a zero row
    cuts = np.sort(rng.choice(np.arange(1, len(ids)), size=world - 1, replace=False))
    rows = np.split(rng.permutation(len(ids)), cuts)
    out["spread"] = {"batch": (r, e, [g * 7 - 30 for g in ids]), "parts": rows}

    # rank 1 holds nothing; string ids
    r, e, ids = ragged(5)
    rows = np.array_split(rng.permutation(len(ids)), world - 1)
    rows.insert(1, np.array([], dtype=np.int64))
    out["empty-rank"] = {"batch": (r, e, [f"p{g}" for g in ids]), "parts": rows}

    # the num_groups hint (group 20 never appears); groups 0..9 whole on one rank, 10..19 spread
    r, e, ids = ragged(6)
    home = np.array([g % world if g < 10 else -1 for g in ids])
    spread = np.flatnonzero(home < 0)
    rows = [np.sort(np.concatenate([np.flatnonzero(home == k), spread[k::world]])) for k in
            range(world)]  # fmt: skip
    out["hinted-whole-and-spread"] = {"batch": (r, e, ids), "parts": rows, "num_groups": 21}

    # embeddings of several dtypes: float16, bfloat16, float32... (torch.cat promotes to float32),
    # and the same with one float64 rank (then float64, as the concatenation)
    for name, dtypes in [
        ("mixed-dtypes", [torch.float16, torch.bfloat16, torch.float32]),
        ("mixed-float64", [torch.float32, torch.float64, torch.float16]),
    ]:
        r, e, ids = ragged(7)
        rows = np.array_split(rng.permutation(len(ids)), world)
        # values exact in float16, so that every rank's rows are the batch's rows
        e = torch.from_numpy(e).to(torch.bfloat16).to(torch.float16).double().numpy()
        out[name] = {"batch": (r, e, ids), "parts": rows, "dtypes": dtypes[:world]}

    out["all-empty"] = {
        "batch": (np.zeros(0, np.float32), np.zeros((0, 4), np.float32), []),
        "parts": [np.array([], dtype=np.int64)] * world,
    }
    return out


def _local(layout: dict[str, Any], rank: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    r, e, ids = layout["batch"]
    rows = layout["parts"][rank]
    local_e = torch.from_numpy(e[rows])
    if "dtypes" in layout:
        local_e = local_e.to(layout["dtypes"][rank])
    local_ids = [ids[i] for i in rows]
    if local_ids and isinstance(local_ids[0], int):
        local_ids = torch.tensor(local_ids, dtype=torch.int64)
    return torch.from_numpy(r[rows]), local_e, local_ids


def _concatenation(layout: dict[str, Any], world: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    parts = [_local(layout, k) for k in range(world)]
    ids: list[Any] = []
    for _, _, local_ids in parts:
        ids += local_ids.tolist() if isinstance(local_ids, torch.Tensor) else local_ids
    e = torch.cat([p[1] for p in parts])  # torch.cat's dtype promotion
    return torch.cat([p[0] for p in parts]), e, ids


def _compute(function: str, r: Any, e: Any, ids: Any, module: Any = distributed, **kw: Any) -> Any:
    if function == "smi":
        return module.smi_scores(e, ids, **kw)
    if function == "adjust":
        return module.adjust_rewards(r, e, ids, **kw)
    return module.dra_advantages(r, e, ids, scale=function[4:], **kw)


# name -> rank -> keywords; ranks not listed pass OPTIONS[1]. "all": the ValueError every rank
# raises; otherwise the listed ranks raise the core's error and the others a RuntimeError.
MISMATCHES: dict[str, dict[str, Any]] = {
    "different measure": {"ranks": {0: {"measure": "log_det"}}, "all": "measure must be the same"},
    "different eta": {"ranks": {1: {"eta": 0.5}}, "all": "eta must be the same on every rank"},
    "different lam": {
        "default": OPTIONS[3],
        "ranks": {-1: {"lam": 0.5}},
        "all": "lam must be the same on every rank",
    },
    "graph_cut on one rank": {
        "ranks": {-1: {"measure": "graph_cut", "eta": 1.0}},
        "all": "measure must be the same on every rank",
    },
    "unknown measure on one rank": {"ranks": {1: {"measure": "cosine"}}},
    "lam with facility_location on one rank": {"ranks": {0: {"lam": 2.0}}},
}


def _mismatch_kw(case: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    ranks = {k % world: v for k, v in case["ranks"].items()}
    return {**_kw(case.get("default", OPTIONS[1])), **ranks.get(rank, {})}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    def work(pg: Any) -> dict[Any, Any]:
        results: dict[Any, Any] = {}
        for name, layout in _layouts(world).items():
            r, e, ids = _local(layout, rank)
            hint = {"num_groups": layout.get("num_groups"), "process_group": pg}
            for option in OPTIONS:
                for function in FUNCTIONS:
                    out = _compute(function, r, e, ids, **hint, **_kw(option))
                    results[name, option, function] = out
            default = distributed.adjust_rewards(r, e, ids, **hint)
            explicit = distributed.adjust_rewards(r, e, ids, measure="graph_cut", **hint)
            results[name, "graph_cut"] = (default, explicit)
        r, e, ids = _local(_layouts(world)["spread"], rank)
        for name, case in MISMATCHES.items():
            outcome, elapsed = timed_outcome(
                lambda case=case: distributed.adjust_rewards(
                    r, e, ids, process_group=pg, **_mismatch_kw(case, rank, world)
                )
            )
            # the process group is still in step
            after = distributed.smi_scores(e, ids, process_group=pg, **_kw(OPTIONS[2]))
            results["mismatch", name] = (outcome, elapsed, after)
        # gradients flow through rewards: 1 / max(1 + SMI, min_denominator) per row
        r = r.clone().requires_grad_()
        for option in OPTIONS:
            adjusted = distributed.adjust_rewards(r, e, ids, min_denominator=0.5, process_group=pg,
                                                  **_kw(option))  # fmt: skip
            (grad,) = torch.autograd.grad(adjusted.sum(), r)
            smi = distributed.smi_scores(e, ids, process_group=pg, **_kw(option))
            results["grad", option] = (grad, smi)
        return results

    run_in_gloo_group(rank, world, init_file, out_dir, work)


@pytest.mark.parametrize("world", [2, 3])
def test_measures_across_ranks_match_the_concatenation(world: int, tmp_path: pathlib.Path) -> None:
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    errors = sorted(tmp_path.glob("*.err"))
    assert not errors, errors[0].read_text()
    ranks = [torch.load(tmp_path / f"rank{k}.pt", weights_only=False) for k in range(world)]

    for name, layout in _layouts(world).items():
        r, e, ids = _concatenation(layout, world)
        hint = {"num_groups": layout.get("num_groups"), "backend": "torch"}
        for option in OPTIONS:
            for function in FUNCTIONS:
                expected = _compute(function, r, e, ids, dra_kernels, **hint, **_kw(option))
                found = torch.cat([result[name, option, function] for result in ranks])
                what = f"{name} {option} {function}"
                if function in BITWISE:
                    assert found.dtype == expected.dtype, what
                    assert torch.equal(found, expected), f"{what}: {found - expected}"
                else:
                    torch.testing.assert_close(found, expected, msg=what)
        if len(ids):  # the measures differ from graph-cut here, so the options reached them
            graph_cut = dra_kernels.smi_scores(e, ids, **hint)
            for option in OPTIONS:
                found = torch.cat([result[name, option, "smi"] for result in ranks])
                assert not torch.allclose(found, graph_cut), (name, option)
        for result in ranks:  # graph-cut: unchanged, the default bit for bit
            default, explicit = result[name, "graph_cut"]
            assert torch.equal(default, explicit), name
        expected = dra_kernels.adjust_rewards(r, e, ids, **hint)
        torch.testing.assert_close(torch.cat([res[name, "graph_cut"][0] for res in ranks]),
                                   expected)  # fmt: skip

    r, e, ids = _concatenation(_layouts(world)["spread"], world)
    after = dra_kernels.smi_scores(e, ids, **_kw(OPTIONS[2]))
    for name, case in MISMATCHES.items():
        failing = sorted({k % world for k in case["ranks"]})
        for rank, result in enumerate(ranks):
            (kind, message), elapsed, _ = result["mismatch", name]
            assert elapsed < FAST_S, (name, rank, elapsed)
            if "all" in case:
                assert kind == "ValueError" and case["all"] in message, (name, rank, message)
                assert "rank 0: " in message and f"rank {world - 1}: " in message
            elif rank in failing:  # the core's own error for the same arguments
                with pytest.raises(ValueError) as core:
                    dra_kernels.adjust_rewards(r, e, ids, **_mismatch_kw(case, rank, world))
                assert (kind, message) == ("ValueError", str(core.value)), name
            else:
                assert kind == "RuntimeError", (name, rank, kind, message)
                assert f"the inputs of rank {failing[0]} were refused" in message, message
        found = torch.cat([result["mismatch", name][2] for result in ranks])
        assert torch.equal(found, after), name

    for option in OPTIONS:
        grads = torch.cat([result["grad", option][0] for result in ranks])
        smi = torch.cat([result["grad", option][1] for result in ranks])
        assert torch.equal(smi, dra_kernels.smi_scores(e, ids, **_kw(option))), option
        torch.testing.assert_close(grads, 1.0 / torch.clamp(1.0 + smi, min=0.5))


# ----------------------------------------------------------------------------- one process


@pytest.mark.parametrize("option", OPTIONS)
def test_one_process_is_the_core_bit_for_bit(option: tuple[str, float, float]) -> None:
    layout = _layouts(2)["spread"]
    r, e, ids = _concatenation(layout, 2)
    for function in FUNCTIONS:
        for e_kind, ids_kind in [(e, ids), (e.double(), [str(g) for g in ids])]:
            expected = _compute(function, r, e_kind, ids_kind, dra_kernels, backend="torch",
                                **_kw(option))  # fmt: skip
            found = _compute(function, r, e_kind, ids_kind, **_kw(option))
            assert found.dtype == expected.dtype
            assert torch.equal(found, expected), (function, found - expected)
    # and the measure really is used: it differs from graph-cut
    assert not torch.allclose(distributed.smi_scores(e, ids, **_kw(option)),
                              distributed.smi_scores(e, ids))  # fmt: skip
