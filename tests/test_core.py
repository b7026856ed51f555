"""The spec: the literal definition, the invariants of issue 2, and the public API's conversions.

Invariants run on every backend available here (the Triton one through the CPU interpreter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dra_kernels as dk
from dra_kernels import reference
from tests.helpers import assert_close, exact_rows, random_layout, realistic_embeddings

BACKENDS = ["torch", "triton"]


def literal_dra(rewards, embeddings, ids, min_denominator=0.1):
    """The definition read literally: the spec (:mod:`dra_kernels.reference`, an explicit
    similarity matrix per group) in float64."""
    smi = reference.smi_scores(torch.as_tensor(embeddings, dtype=torch.float64), torch.tensor(ids))
    r = torch.as_tensor(rewards, dtype=torch.float64)
    return smi, reference.adjust_from_smi(r, smi, min_denominator)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(3))
def test_matches_literal_definition(backend, seed):
    gen = torch.Generator().manual_seed(seed)
    ids, _ = random_layout(gen, [1, 2, 5, 3, 8, 1, 4])
    n = ids.numel()
    e = torch.randn(n, 7, generator=gen, dtype=torch.float64)
    e[3] = 0.0  # an empty completion
    r = torch.randn(n, generator=gen, dtype=torch.float64)
    smi, adjusted = literal_dra(r, e, ids.tolist())
    assert_close(dk.smi_scores(e, ids, backend=backend), smi, torch.float64, "smi")
    assert_close(dk.adjust_rewards(r, e, ids, backend=backend), adjusted, torch.float64, "adjust")


def _case(seed, sizes=(3, 1, 6, 2, 5), d=12, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    ids, _ = random_layout(gen, list(sizes))
    e = realistic_embeddings(gen, ids.numel(), d, dtype)
    r = torch.randn(ids.numel(), generator=gen)
    return r, e, ids, gen


@pytest.mark.parametrize("backend", BACKENDS)
def test_permuting_rows_permutes_outputs(backend):
    r, e, ids, gen = _case(1)
    perm = torch.randperm(ids.numel(), generator=gen)
    base = dk.adjust_rewards(r, e, ids, backend=backend)
    permuted = dk.adjust_rewards(r[perm], e[perm], ids[perm], backend=backend)
    assert_close(permuted, base[perm], torch.float32, "permuted")


@pytest.mark.parametrize("backend", BACKENDS)
def test_relabelling_groups_changes_nothing(backend):
    r, e, ids, _ = _case(2)
    labels = [f"prompt-{int(i) * 7919 % 1000}" for i in ids]
    base = dk.adjust_rewards(r, e, ids, backend=backend)
    assert_close(dk.adjust_rewards(r, e, labels, backend=backend), base, torch.float32, "labels")
    assert_close(
        dk.adjust_rewards(r, e, -ids - 10**12, backend=backend), base, torch.float32, "neg"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_positive_scaling_of_an_embedding_changes_nothing(backend):
    r, e, ids, gen = _case(3)
    scales = torch.exp(4 * torch.randn(ids.numel(), 1, generator=gen))
    base = dk.adjust_rewards(r, e, ids, backend=backend)
    assert_close(dk.adjust_rewards(r, e * scales, ids, backend=backend), base, torch.float32, "s")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("g", [2, 3, 6, 17])
def test_identical_completions_each_get_r_over_g(backend, g):
    e = torch.tensor([[0.3, -1.2, 2.0, 0.5]]).repeat(g, 1)
    r = torch.linspace(-1.0, 2.0, g)
    out = dk.adjust_rewards(r, e, [5] * g, backend=backend)
    assert_close(out, r / g, torch.float32, "identical")


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_of_one_keeps_its_reward_exactly(backend):
    gen = torch.Generator().manual_seed(4)
    e = torch.randn(9, 5, generator=gen)
    r = torch.randn(9, generator=gen)
    out = dk.adjust_rewards(r, e, list(range(9)), backend=backend)
    assert torch.equal(out, r)
    assert torch.equal(dk.smi_scores(e, list(range(9)), backend=backend), torch.zeros(9))


@pytest.mark.parametrize("backend", BACKENDS)
def test_orthogonal_completions_keep_their_rewards(backend):
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(5)))
    e = q.T[:6] * torch.tensor([[1.0], [3.0], [0.1], [7.0], [2.0], [0.5]])
    r = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0, 1.5])
    assert_close(dk.adjust_rewards(r, e, [0] * 6, backend=backend), r, torch.float32, "orth")


@pytest.mark.parametrize("backend", BACKENDS)
def test_changing_one_group_never_changes_another(backend):
    r, e, ids, gen = _case(6, sizes=(4, 4, 3, 1, 5))
    base = dk.adjust_rewards(r, e, ids, backend=backend)
    target = ids[0]
    mine = ids == target
    e2, r2 = e.clone(), r.clone()
    e2[mine] = torch.randn(int(mine.sum()), e.shape[1], generator=gen)
    r2[mine] = 100.0
    out = dk.adjust_rewards(r2, e2, ids, backend=backend)
    assert torch.equal(out[~mine], base[~mine])
    assert not torch.equal(out[mine], base[mine])


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_cosines_use_the_clamp_rule(backend):
    # u, -u, -u: 1 + SMI = -1 for the first row, 1 + 0 (=1 - 1 + 1) ... computed literally:
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    r = torch.tensor([1.0, 2.0, -3.0])
    smi, expected = literal_dra(r, e, [0, 0, 0])
    assert smi.tolist() == [-2.0, 0.0, 0.0]
    out = dk.adjust_rewards(r, e, [0, 0, 0], backend=backend)
    assert_close(out, [10.0, 2.0, -3.0], torch.float32, "clamp")
    assert_close(out, expected, torch.float32, "literal")
    out = dk.adjust_rewards(r, e, [0, 0, 0], backend=backend, min_denominator=0.5)
    assert_close(out, [2.0, 2.0, -3.0], torch.float32, "clamp 0.5")


def test_zero_embeddings_keep_their_reward():
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    r = torch.tensor([1.0, 1.0, 1.0])
    assert dk.adjust_rewards(r, e, [0, 0, 0]).tolist() == [1.0, 0.5, 0.5]


# ----------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("scale", ["std", "none"])
def test_group_advantages_follow_trl_convention(scale):
    r = torch.tensor([1.0, 0.0, 0.5, 2.0, 4.0, 7.0, 3.0])
    ids = ["a", "a", "a", "b", "b", "c", "a"]
    out = dk.group_advantages(r, ids, scale=scale)
    expected = torch.empty(7)
    for g in set(ids):
        m = torch.tensor([x == g for x in ids])
        centred = r[m] - r[m].mean()
        if scale == "std":
            std = r[m].std() if m.sum() > 1 else torch.tensor(0.0)  # torch.std is unbiased
            centred = centred / (std + 1e-4)
        expected[m] = centred
    assert_close(out, expected, torch.float32, scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", ["std", "none"])
def test_dra_advantages_is_adjust_then_advantages(backend, scale):
    r, e, ids, _ = _case(7)
    adjusted = dk.adjust_rewards(r, e, ids, backend="torch")
    expected = dk.group_advantages(adjusted, ids, scale=scale)
    out = dk.dra_advantages(r, e, ids, scale=scale, backend=backend)
    assert_close(out, expected, torch.float32, scale)


# ----------------------------------------------------------------------------- conversions


def test_numpy_in_numpy_out_and_dtypes():
    gen = np.random.default_rng(0)
    e = gen.normal(size=(6, 4)).astype(np.float32)
    r32 = gen.normal(size=6).astype(np.float32)
    ids = np.array(["x", "y", "x", "y", "x", "z"], dtype=object)
    out = dk.adjust_rewards(r32, e, ids)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    out64 = dk.adjust_rewards(r32.astype(np.float64), e, ids)
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, out, rtol=1e-5, atol=1e-6)


def test_lists_in_list_out():
    out = dk.adjust_rewards([1, 1, 1], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], ["a", "a", "a"])
    assert out == [0.5, 0.5, 1.0]


def test_torch_float64_and_integer_rewards():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    out = dk.adjust_rewards(torch.tensor([1, 0]), e, torch.tensor([3, 3]))
    assert out.dtype == torch.float64 and out.tolist() == [0.5, 0.0]
    out = dk.adjust_rewards(torch.tensor([1, 0]), e.float(), torch.tensor([3, 3]))
    assert out.dtype == torch.float32


def test_inputs_are_not_mutated():
    r, e, ids, _ = _case(8)
    copies = (r.clone(), e.clone(), ids.clone())
    dk.dra_advantages(r, e, ids)
    dk.adjust_rewards(r, e, ids)
    for before, after in zip(copies, (r, e, ids), strict=True):
        assert torch.equal(before, after)


def test_num_groups_hint_matches_factorised_ids():
    r, e, _, gen = _case(9)
    codes = torch.randint(0, 4, (r.numel(),), generator=gen)
    assert torch.equal(dk.adjust_rewards(r, e, codes, num_groups=6), dk.adjust_rewards(r, e, codes))
    with pytest.raises(ValueError, match=r"num_groups=3.*\[0, 3\)"):
        dk.adjust_rewards(r, e, codes + 1, num_groups=3)


def test_triton_backend_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend='triton' cannot run here"):
        dk.adjust_rewards([1.0], [[1.0]], [0], backend="triton")
    # auto falls back to the reference on CPU
    assert dk.adjust_rewards([1.0], [[1.0]], [0], backend="auto") == [1.0]


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be"):
        dk.adjust_rewards([1.0], [[1.0]], [0], backend="cuda")


def test_reference_never_builds_pairwise_matrices():
    # One group of 60,000 rows beside 20,000 groups of 3: linear memory, a fraction of a second.
    gen = torch.Generator().manual_seed(10)
    ids = torch.cat([torch.zeros(60_000, dtype=torch.int64), 1 + torch.arange(60_000) // 3])
    e = realistic_embeddings(gen, ids.numel(), 8, torch.float32)
    # the small groups' rows make every product exact: beside the big group they are gathered
    # and batched differently than alone, and a BLAS may round a product with its batch's shape
    e[60_000:] = exact_rows(gen, 60_000, 8)
    r = torch.ones(ids.numel())
    out = dk.adjust_rewards(r, e, ids, backend="torch")
    big = reference.unit_rows(e.double())[:60_000]
    total = big.sum(0)
    # 1 / out = max(1 + SMI, 0.1) = max(u.S, 0.1). float32 inputs carry relative errors ~6e-8
    # per component, so u.S is known to about |S| * 1e-7 at best: compare on that scale.
    inverse = 1.0 / out[:60_000].double()
    expected = torch.clamp(big @ total, min=0.1)
    err = (inverse - expected).abs().max().item()
    assert err < 1e-6 * total.norm().item(), err
    assert torch.equal(out[60_000:], dk.adjust_rewards(r[60_000:], e[60_000:], ids[60_000:]))


def test_dra_advantages_takes_adjust_rewards_keywords_and_no_other():
    """One definition of the options: ``dra_advantages`` shows and takes ``adjust_rewards``'s."""
    import inspect

    shown = inspect.signature(dk.dra_advantages).parameters
    assert list(shown)[:5] == ["rewards", "embeddings", "group_ids", "scale", "eps"]
    for name, parameter in list(inspect.signature(dk.adjust_rewards).parameters.items())[3:]:
        assert shown[name].default == parameter.default, name
    rewards, embeddings = [1.0, 0.0], [[1.0, 0.0], [1.0, 0.0]]
    got = dk.dra_advantages(rewards, embeddings, [0, 0], scale="none", min_denominator=0.5)
    assert got == dk.group_advantages(
        dk.adjust_rewards(rewards, embeddings, [0, 0], min_denominator=0.5), [0, 0], scale="none"
    )
    with pytest.raises(TypeError, match=r"^dra_advantages\(\) got an unexpected keyword .*'lamb'"):
        dk.dra_advantages(rewards, embeddings, [0, 0], lamb=1.0)
