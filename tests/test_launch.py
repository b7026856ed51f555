"""The low-overhead launch path (dra_kernels._triton.launch) and the fast input checks.

On CPU the kernels run through the interpreter and ``launch`` must hand every call to Triton; the
specialisation key must separate every case Triton compiles separately. The fast path itself
needs CUDA: its tests compare it bit for bit with Triton's own launch."""

from __future__ import annotations

import pytest
import torch

import dra_kernels as dk
from dra_kernels import api

pytest.importorskip("triton", reason="the triton extra is not installed")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_specialisation_key_separates_what_triton_compiles_separately():
    from dra_kernels._triton.launch import _specs

    def _spec(value):
        return _specs((value,))[0]

    base = torch.zeros(64)
    # integers: == 1, multiple of 16, 32-bit or 64-bit
    assert len({_spec(v) for v in (1, 2, 16, 32, 2**31, -(2**31) - 1)}) == 5
    assert _spec(16) == _spec(32) and _spec(3) == _spec(5)
    # tensors: dtype and 16-byte alignment of the address
    assert _spec(base) != _spec(base[1:])  # 4 bytes off
    assert _spec(base) == _spec(base[4:])  # 16 bytes off
    assert _spec(base) != _spec(base.double())
    # booleans are not integers; every float is the same float32 argument
    assert _spec(True) != _spec(1) and _spec(0.1) == _spec(2.5)


def test_cpu_launches_go_through_triton(monkeypatch):
    from types import SimpleNamespace

    from dra_kernels._triton import launch as launch_module

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
    launch_module.launch(Kernel(), (3,), (x, 5), {"C": 1}, num_warps=2, num_stages=1)
    # by name, so a constexpr may sit between run-time arguments
    assert calls == [((3,), (), {"x_ptr": x, "n": 5, "C": 1, "num_warps": 2, "num_stages": 1})]
    assert not launch_module._CACHE


def test_fast_checks_only_take_cuda_calls():
    e, r, ids = torch.randn(4, 3), torch.randn(4), torch.tensor([0, 0, 1, 1])
    assert api._prepare_fast(r, e, ids, "auto", 2) is None  # CPU tensors: general path
    assert api._prepare_fast(r, e, ids, "auto", None) is None


@needs_cuda
@pytest.mark.gpu
def test_fast_path_matches_triton_launch_bit_for_bit():
    from dra_kernels._triton import launch as launch_module

    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 300, (5000,), generator=gen).cuda()
    e = torch.randn(5000, 384, generator=gen).to(torch.bfloat16).cuda()
    r = torch.rand(5000, generator=gen).cuda()
    first = dk.dra_advantages(r, e, ids, num_groups=300)
    again = dk.dra_advantages(r, e, ids, num_groups=300)  # through the cached handle
    assert launch_module.fast_path_state()["convention"] is not None, launch_module._STATE
    launch_module._CACHE.clear()
    saved = launch_module._STATE["convention"]
    launch_module._STATE["convention"] = None  # every launch through Triton
    try:
        slow = dk.dra_advantages(r, e, ids, num_groups=300)
    finally:
        launch_module._STATE["convention"] = saved
    assert torch.equal(first, again) and torch.equal(first, slow)


@needs_cuda
@pytest.mark.gpu
def test_fast_checks_agree_with_the_general_path():
    e = torch.randn(40, 8, device="cuda")
    r = torch.randn(40, device="cuda")
    ids = torch.randint(0, 5, (40,), device="cuda")
    fast = api._prepare_fast(r, e, ids, "auto", 5)
    assert fast is not None and fast.backend == "triton" and fast.groups.num_groups == 5
    out = dk.adjust_rewards(r, e, ids, num_groups=5)
    general = dk.adjust_rewards(r, e, ids.cpu().tolist())  # lists: the general path
    torch.testing.assert_close(out.cpu(), general.cpu(), rtol=1e-5, atol=1e-6)


def test_environment_variable_turns_the_fast_path_off(monkeypatch):
    from dra_kernels._triton import launch as launch_module

    monkeypatch.setattr(launch_module, "_STATE", dict(launch_module._STATE))
    monkeypatch.setenv("DRA_KERNELS_FAST_LAUNCH", "0")
    launch_module._check_convention(torch.device("cpu"))  # returns before touching the device
    state = launch_module.fast_path_state()
    assert state["convention"] is None and "DRA_KERNELS_FAST_LAUNCH" in state["why"]


def test_the_convention_probe_kernel_echoes_its_arguments():
    """The kernel that decides the fast path's argument convention on CUDA, run here through the
    interpreter: it must write back exactly what it was given (an int equal to 1 included)."""
    from dra_kernels._triton.launch import _echo_kernel

    out = torch.zeros(5)
    _echo_kernel[(1,)](out, 1, 5, C=11, x=7.5, D=13)
    assert out.tolist() == [1.0, 5.0, 11.0, 7.5, 13.0]


def test_launch_hooks_are_seen_only_when_set():
    """Profiler hooks send launches through Triton. Triton >= 3.5 keeps empty hook chains that
    are never None: those must not count as set (a GPU run found the fast path off for that)."""
    import triton

    from dra_kernels._triton.launch import _hooks_set

    assert not _hooks_set()
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    chain = getattr(runtime, "launch_enter_hook", None)
    if chain is None or not hasattr(chain, "add"):
        pytest.skip("this Triton keeps launch hooks as plain attributes")

    def hook(*args):
        return None

    chain.add(hook)
    try:
        assert _hooks_set()
    finally:
        chain.remove(hook)
    assert not _hooks_set()


def test_cached_argument_list_equals_the_general_one():
    """The fast path appends a kernel's constexprs, saved once, after its run-time arguments;
    that must be exactly the argument list built parameter by parameter, and a kernel with a
    constexpr between run-time parameters must use the general build."""
    from types import SimpleNamespace

    from dra_kernels._triton.launch import _trailing, _values

    def kernel(*names):
        params = [SimpleNamespace(name=n, is_constexpr=n.isupper()) for n in names]
        return SimpleNamespace(params=params)

    args, constexprs = (torch.zeros(1), 7, 2.5), {"A": 11, "B": 13}
    trailing_kernel = kernel("x", "n", "s", "A", "B")
    tail = _trailing(trailing_kernel, constexprs, "all")
    assert (*args, *tail) == tuple(_values(trailing_kernel, args, constexprs, "all"))
    assert _trailing(trailing_kernel, constexprs, "runtime") == ()
    assert _trailing(kernel("x", "A", "n", "s", "B"), constexprs, "all") is None


def test_this_packages_kernels_take_their_constexprs_last():
    """So every launch of theirs takes the cached argument list (``_trailing``). Read from the
    kernels' signatures, which the CPU interpreter keeps too."""
    import inspect
    from types import SimpleNamespace

    from dra_kernels._triton import dra
    from dra_kernels._triton.launch import _trailing

    for fn in (dra._dra_forward_kernel, dra._count_kernel, dra._place_kernel):
        signature = inspect.signature(fn.fn).parameters.values()
        params = [
            SimpleNamespace(name=p.name, is_constexpr="constexpr" in str(p.annotation))
            for p in signature
        ]
        constexprs = {p.name: 0 for p in params if p.is_constexpr}
        assert constexprs, fn
        assert _trailing(SimpleNamespace(params=params), constexprs, "all") is not None, fn
