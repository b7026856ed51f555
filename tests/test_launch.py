"""How kernels are launched (dra_kernels._triton.launch) and the common CUDA call's short checks
(dra_kernels.api._common_call; the CPU ones are in test_group_ids.py)."""

from __future__ import annotations

import pytest
import torch

import dra_kernels as dk
from dra_kernels import api

pytest.importorskip("triton", reason="the triton extra is not installed")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_launch_binds_run_time_arguments_by_name():
    from types import SimpleNamespace

    from dra_kernels._triton.launch import launch

    calls = []

    class Kernel:
        params = (
            SimpleNamespace(name="x_ptr", is_constexpr=False),
            SimpleNamespace(name="C", is_constexpr=True),
            SimpleNamespace(name="n", is_constexpr=False),
        )

        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((grid, args, kwargs))

    x = torch.zeros(2)
    launch(Kernel(), (3,), (x, 5), {"C": 1}, num_warps=2, num_stages=1)
    # by name, so a constexpr may sit between run-time arguments
    assert calls == [((3,), (), {"x_ptr": x, "n": 5, "C": 1, "num_warps": 2, "num_stages": 1})]
    with pytest.raises(ValueError):  # a missing run-time argument is not silently dropped
        launch(Kernel(), (3,), (x,), {"C": 1}, num_warps=2, num_stages=1)


@needs_cuda
@pytest.mark.gpu
def test_the_short_checks_agree_with_the_general_path():
    e = torch.randn(40, 8, device="cuda")
    r = torch.randn(40, device="cuda")
    for dtype in (torch.int32, torch.int64):
        ids = torch.randint(0, 5, (40,), device="cuda", dtype=dtype)
        assert api._common_call(r, e, ids, "auto", 5) == "triton"
        prepared = api._prepare(r, e, ids, "auto", 5)
        assert prepared.backend == "triton" and prepared.groups.num_groups == 5
        assert prepared.groups.codes.dtype == torch.int64
        out = dk.adjust_rewards(r, e, ids, num_groups=5)
        general = dk.adjust_rewards(r, e, ids.cpu().tolist())  # lists: the general checks
        torch.testing.assert_close(out.cpu(), general.cpu(), rtol=1e-5, atol=1e-6)
