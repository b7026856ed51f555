"""``measure=`` through the public functions: the SMI of dra_kernels.measures, composed into
adjusted rewards and advantages exactly as graph-cut's, one set of argument errors."""

from __future__ import annotations

import pytest
import torch

import dra_kernels as dk
from dra_kernels import measures, reference, torch_backend
from dra_kernels.api import factorize_group_ids

CASES = [("facility_location", {}), ("facility_location", {"eta": 0.5}), ("log_det", {}),
         ("log_det", {"eta": 0.7, "lam": 0.3})]  # fmt: skip


def _layout(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    labels = ["a", "b", "c", "d", "e"]
    sizes = [5, 1, 3, 9, 2]
    ids = [label for label, size in zip(labels, sizes, strict=True) for _ in range(size)]
    order = torch.randperm(len(ids), generator=gen).tolist()
    ids = [ids[i] for i in order]  # ragged, unsorted, string ids
    e = torch.randn(len(ids), 12, generator=gen)
    e[4] = 0.0  # a zero row
    r = torch.rand(len(ids), generator=gen)
    return r, e, ids


@pytest.mark.parametrize(("measure", "params"), CASES)
def test_each_function_composes_the_measures_smi(measure, params):
    r, e, ids = _layout()
    groups = factorize_group_ids(ids, len(ids))
    smi = measures.smi_by_measure(e, groups.codes, groups.num_groups, measure, **params)
    got = dk.smi_scores(e, ids, measure=measure, **params)
    assert torch.equal(got, smi.float())
    adjusted = r / torch.clamp(1.0 + smi.float(), min=0.1)
    torch.testing.assert_close(dk.adjust_rewards(r, e, ids, measure=measure, **params), adjusted)
    for scale in ("std", "none"):
        want = torch_backend.group_advantages(
            adjusted, groups.codes, groups.num_groups, scale, 1e-4
        )
        out = dk.dra_advantages(r, e, ids, measure=measure, scale=scale, **params)
        torch.testing.assert_close(out, want)
    # numpy in, numpy out, as for graph-cut
    assert type(dk.adjust_rewards(r.numpy(), e.numpy(), ids, measure=measure, **params)) is type(
        r.numpy()
    )


@pytest.mark.parametrize("measure", ["graph_cut", "facility_location", "log_det"])
def test_float64_rewards_get_the_float64_smi(measure):
    """float64 rewards with float32 embeddings: the SMI behind the float64 result is the float64
    computation (as graph-cut's is), not its float32 rounding."""
    r, e, ids = _layout(6)
    r = r.double()
    groups = factorize_group_ids(ids, len(ids))
    smi = measures.smi_by_measure(e, groups.codes, groups.num_groups, measure, dtype=torch.float64)
    assert not torch.equal(smi, smi.float().double())  # the rounding would show
    if measure != "graph_cut":  # (graph-cut computes float32 rows in float32)
        assert torch.equal(dk.smi_scores(e, ids, measure=measure), smi.float())
    got = dk.adjust_rewards(r, e, ids, measure=measure)
    assert got.dtype == torch.float64
    # graph-cut's CPU path divides by c = 1 + SMI as its products give it, adjust_from_smi by
    # fl(fl(c - 1) + 1), within u (2 |c| + 1) (1 + u) of c (u = 2^-53; more than 1 ulp of c where
    # c < 1/2, depending on c's last bits, so on how the products rounded). Clamped at m = 0.1
    # and each quotient correctly rounded, the two differ by at most u (2 + 1 / m) + 2 u relative,
    # plus O(u^2): 16 u bounds it (a float32 SMI would be 10^7 times further off)
    rtol = 16 * 2.0**-53
    torch.testing.assert_close(got, reference.adjust_from_smi(r, smi, 0.1), rtol=rtol, atol=0)


def test_graph_cut_is_the_default_bit_for_bit():
    r, e, ids = _layout(4)
    assert torch.equal(dk.smi_scores(e, ids, measure="graph_cut"), dk.smi_scores(e, ids))
    assert torch.equal(
        dk.adjust_rewards(r, e, ids, measure="graph_cut"), dk.adjust_rewards(r, e, ids)
    )
    assert torch.equal(
        dk.dra_advantages(r, e, ids, measure="graph_cut"), dk.dra_advantages(r, e, ids)
    )


@pytest.mark.parametrize("measure", ["facility_location", "log_det"])
def test_measures_differ_from_graph_cut_and_gradients_flow_through_rewards(measure):
    r, e, ids = _layout(5)
    assert not torch.allclose(dk.smi_scores(e, ids, measure=measure), dk.smi_scores(e, ids))
    r = r.clone().requires_grad_(True)
    e = e.clone().requires_grad_(True)
    out = dk.dra_advantages(r, e, ids, measure=measure, scale="none")
    out.sum().backward()  # advantages sum to 0 within each group: gradient 0 but defined
    assert r.grad is not None and e.grad is None
    assert torch.allclose(r.grad, torch.zeros_like(r.grad), atol=1e-6)


@pytest.mark.parametrize("fn", ["smi", "adjust", "advantage"])
def test_bad_measures_are_refused_by_every_function(fn):
    r, e, ids = _layout(6)
    call = {
        "smi": lambda **kw: dk.smi_scores(e, ids, **kw),
        "adjust": lambda **kw: dk.adjust_rewards(r, e, ids, **kw),
        "advantage": lambda **kw: dk.dra_advantages(r, e, ids, **kw),
    }[fn]
    with pytest.raises(ValueError, match="measure must be one of"):
        call(measure="facility")
    with pytest.raises(ValueError, match="eta"):
        call(measure="facility_location", eta=0.0)
    with pytest.raises(ValueError, match="lam"):
        call(measure="facility_location", lam=0.5)  # not a parameter of facility location
    with pytest.raises(ValueError, match="no Triton kernel"):
        call(measure="log_det", backend="triton")


def test_integrations_check_the_measure_as_the_core_does():
    """The integrations' one step (DRAStep) names their own options and refuses log-det on the
    triton backend, as the core does (facility location has a kernel there)."""
    from dra_kernels.step import DRAStep

    def check(**options):
        step = DRAStep.from_options(options, spell="dra.{}")
        return step.measure, step.eta, step.lam

    got = check(measure="facility_location", eta=2, backend="triton")
    assert got == ("facility_location", 2.0, 1.0)
    with pytest.raises(ValueError, match=r"^dra\.measure='log_det' has no Triton.*dra\.backend"):
        check(measure="log_det", lam=0.5, backend="triton")
    assert check(measure="log_det", lam=0.5, backend="auto")[0] == "log_det"
    with pytest.raises(ValueError, match=r"^dra\.eta is not used by dra\.measure='graph_cut'"):
        check(measure="graph_cut", eta=0.5)
