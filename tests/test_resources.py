"""benchmarks/resources.py: the kernel's variants compiled for a GPU on a machine without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="the triton extra is not installed")

ROOT = Path(__file__).resolve().parents[1]


def test_variants_compile_for_sm90_with_their_resource_usage(tmp_path):
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (tools / "cuobjdump").exists():
        pytest.skip("this Triton wheel carries no cuobjdump")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile for real
    out = tmp_path / "resources.json"
    cmd = [sys.executable, "-m", "benchmarks.resources", "--quick", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {row["variant"].split()[0] for row in rows} == {"gram", "tile", "linear"}
    for row in rows:
        assert row["REG"] > 0 and row["programs_per_sm"] >= 1, row
        assert row["warps_per_sm"] == row["programs_per_sm"] * row["num_warps"] <= 64, row
    # G = 16, D = 768, bfloat16: the default is the Gram path
    assert [row["variant"] for row in rows if "(default)" in row["variant"]] == ["gram (default)"]


def test_occupancy_arithmetic():
    from benchmarks.resources import programs_per_sm

    # 64 registers x 512 threads = half the register file; threads allow 4; shared memory 100+
    assert programs_per_sm({"REG": 64, "SHARED": 1024}, 16, 90) == 2
    # registers are allocated per warp in units of 256: 157 a thread counts as 160
    assert programs_per_sm({"REG": 157, "SHARED": 6144}, 2, 90) == 6
    # shared memory binds: 81,920 + 1,024 bytes a program, 228 KiB a multiprocessor
    assert programs_per_sm({"REG": 32, "SHARED": 81920}, 4, 90) == 2


def test_every_kernel_compiles_for_sm90(tmp_path):
    """The interpreter runs the kernels' logic but not Triton's GPU compiler: this compiles every
    kernel and every branch of the main one for an H100 / H200 (no GPU needed), so a construct
    the compiler refuses fails here rather than on a lent GPU."""
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (tools / "ptxas").exists():
        pytest.skip("this Triton wheel carries no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "benchmarks.resources", "--compile-all"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("[compile] ok") >= 22, done.stdout
    # the facility-location kernel's default tiles spill no register (under Triton 3.2 too)
    facility = [line for line in done.stdout.splitlines() if "facility location" in line]
    assert len(facility) == 3 and all('"STACK": 0' in line for line in facility), facility
