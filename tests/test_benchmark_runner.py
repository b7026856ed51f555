"""The benchmark runner (benchmarks/: python -m benchmarks.run) on a tiny CPU grid: outputs,
targets, baselines, the record of what was measured; and the GPU session's plan and summary."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from benchmarks import environment, impls, run, targets, timing
from dra_kernels import adjust_rewards
from tests.helpers import TOLERANCES, assert_close

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = run.main(
        [
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(out),
            "--shapes",
            "4x8,16x8",
            "--dims",
            "32",
            "--impls",
            "torch,naive,loop",
            "--rep-ms",
            "2",
            "--warmup-ms",
            "1",
        ]
    )
    return code, out


def test_quick_run_writes_json_markdown_and_png(quick_run):
    code, out = quick_run
    assert code == 0
    results = json.loads((out / "bench.json").read_text())
    assert {"meta", "copy_bandwidth", "grid", "targets", "section_seconds"} <= set(results)
    for key in ("device_name", "torch", "triton", "cuda", "numpy", "python", "date_utc", "timer"):
        assert key in results["meta"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert results["meta"]["commit"] == head.stdout.strip()
    assert isinstance(results["meta"]["dirty"], bool)
    assert results["meta"]["source_sha256"] == environment.source_digest()
    assert results["copy_bandwidth"]["gbps"] > 0
    assert {r["impl"] for r in results["grid"]} == {"torch", "naive", "loop"}
    timed = [r for r in results["grid"] if "p50_us" in r]
    assert timed, results["grid"][0]
    atol, rtol = TOLERANCES[torch.float32]
    for row in timed:
        assert row["p20_us"] <= row["p50_us"] <= row["p80_us"]
        assert row["gbps"] > 0 and row["x_floor"] > 0
        assert row["max_abs_err"] <= atol + rtol, row  # adjusted rewards lie in [0, 1)
    torch_rows = [r for r in timed if r["impl"] == "torch"]
    assert all("speedup_vs_naive" in r for r in torch_rows)
    assert set(results["targets"]) == {
        "1_floor",
        "2_speedup",
        "3_shuffled",
        "4_latency",
        "5_advantages",
        "6_no_sync",
        "7_cpu_reference",
    }
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "bench.md").read_text()
    assert "| B x G |" in markdown and f"commit {head.stdout.strip()}" in markdown


def test_plot_from_saved_json(quick_run, tmp_path):
    _, out = quick_run
    assert run.main(["--plot-from", str(out / "bench.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench.png").exists() and (tmp_path / "bench.md").exists()


def test_no_plot_and_the_options_reach_the_grid(tmp_path):
    argv = ["--device", "cpu", "--quick", "--out", str(tmp_path), "--shapes", "2x4", "--dims", "8"]
    argv += ["--impls", "torch", "--ids", "sorted", "--no-plot", "--rep-ms", "1"]
    assert run.main([*argv, "--commit", "abc123"]) == 0
    assert not (tmp_path / "bench.png").exists()
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["grid"][0]["n"] == 8
    assert results["meta"]["commit_given"] == "abc123"  # not the commit git names: both kept


def test_unknown_implementation_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        run.main(["--device", "cpu", "--out", str(tmp_path), "--impls", "torch,fast"])


@pytest.mark.parametrize("layout", ["sorted", "shuffled"])
def test_baselines_match_the_reference(layout):
    rewards, embeddings = impls.make_case_data(6, 5, 16, "float32", CPU, seed=3)
    codes = impls.make_group_codes(6, 5, layout, CPU, seed=3)
    expected = adjust_rewards(rewards, embeddings, codes, backend="torch", num_groups=6)
    naive = impls.naive_adjust(rewards, embeddings, codes, 6, 5, layout == "sorted")
    assert_close(naive, expected, torch.float32, "naive")
    assert_close(impls.loop_adjust(rewards, embeddings, codes, 6), expected, torch.float32, "loop")


def test_case_floor_bytes_count_one_read_and_one_write():
    case = impls.Case(groups=2, group_size=4, dim=16, dtype="bfloat16", ids="sorted")
    assert case.floor_bytes() == 8 * (16 * 2 + 4 + 8 + 4)


def _row(impl, ids, p50, n=131072, **extra):
    return {
        "groups": 8192,
        "group_size": 16,
        "n": n,
        "dim": 768,
        "dtype": "bfloat16",
        "ids": ids,
        "impl": impl,
        "p50_us": p50,
        **extra,
    }


def test_targets_pass_fail_and_not_measured():
    grid = [
        _row("triton", "sorted", 80.0, x_floor=1.2, speedup_vs_torch=12.0, speedup_vs_compile=6.0),
        _row(
            "triton", "shuffled", 130.0, x_floor=1.9, speedup_vs_torch=11.0, speedup_vs_compile=5.5
        ),
        _row("advantages", "sorted", 85.0),
    ]
    results = {
        "grid": grid,
        "latency": [{"variant": "triton_num_groups", "p50_us": 16.0}],
        "checks": {name: {"ok": True} for name in targets.GPU_CHECK_TESTS},
        "reference_ratio": {"ratio": 2.5},
    }
    status = targets.evaluate_targets(results)
    assert status["1_floor"]["status"] == "pass"
    assert status["2_speedup"]["status"] == "pass"
    assert status["3_shuffled"]["status"] == "fail"
    assert status["3_shuffled"]["worst_ratio"] == pytest.approx(130 / 80)
    assert status["4_latency"]["status"] == "fail"
    assert status["5_advantages"]["status"] == "pass"
    assert status["6_no_sync"]["status"] == "pass"
    assert status["7_cpu_reference"]["status"] == "pass"
    results["checks"]["cuda_graph"] = {"ok": False}
    assert targets.evaluate_targets(results)["6_no_sync"]["status"] == "fail"
    empty = targets.evaluate_targets({})
    assert {t["status"] for t in empty.values()} == {"not measured"}


def test_time_call_quantiles_are_ordered():
    measured = timing.time_call(lambda: sum(range(100)), CPU, warmup_ms=0.1, rep_ms=1.0)
    assert 0 < measured.p20 <= measured.p50 <= measured.p80
    assert measured.reps >= 5


def test_probe_sweep_times_every_path_and_marks_the_default():
    """benchmarks/gpu_probe.py's sweep: the per-group paths with their variants, exactly one of
    them marked as the configuration the kernel would pick (which one is the kernel's choice,
    dra_kernels._triton.config, tested with it)."""
    pytest.importorskip("triton")
    from benchmarks.gpu_probe import _variants
    from dra_kernels._triton.config import choose_config

    groups = 64
    for size, dim, dtype, paths in (
        (16, 768, "bfloat16", {"gram", "tile", "linear"}),
        (16, 768, "float32", {"gram", "tile", "linear"}),
        (64, 384, "float32", {"gram", "tile", "linear"}),
        (512, 768, "bfloat16", {"gram", "linear"}),  # no tile holds a group of 512
    ):
        n = size * groups
        variants = _variants(n, groups, dim, dtype)
        per_path = [name for name in variants if not name.startswith("default ")]
        assert {name.split()[0] for name in per_path} == paths, (size, dtype, list(variants))
        for name, config in variants.items():
            if name.startswith("tile"):  # every tile timed holds a whole group
                assert config.block_m >= size, (name, config)
        marked = [name for name in variants if name.endswith("(default)")]
        chosen = choose_config(n, dim, groups, getattr(torch, dtype), rows="buckets")
        assert len(marked) == 1 and marked[0].startswith(chosen.path), (size, dtype, marked)
        assert variants[marked[0]] == chosen


def test_gpu_session_fits_one_device_call_and_summarises_its_results(tmp_path):
    """The device tool allows one command ten minutes: the steps' limits must fit in 540 s. The
    test outcomes come from pytest's JUnit report; target 6's checks from the tests behind it; the
    summary printed last reads each step's results (here minimal fakes)."""
    from benchmarks import gpu_session

    assert sum(limit for _, limit, _ in gpu_session.STEPS) <= 540
    assert [name for name, _, _ in gpu_session.STEPS] == [
        name for name, _, _ in gpu_session.DRY_STEPS
    ]
    assert gpu_session.STEPS[0][2][-2:] == ["-m", "gpu"]  # the suite's own GPU tests first
    junit = tmp_path / "report.xml"
    junit.write_text(
        "<testsuites><testsuite>"
        '<testcase classname="tests.test_gpu" name="test_compile_fullgraph_matches_eager[auto]"/>'
        '<testcase classname="tests.test_gpu" name="test_compile_fullgraph_matches_eager[triton]">'
        '<failure message="boom"/></testcase>'
        '<testcase classname="tests.test_gpu" '
        'name="test_cuda_graph_replays_new_inputs_as_eager_computes[scan]"/>'
        '<testcase classname="tests.test_x" name="test_y"><skipped message="needs a GPU"/>'
        "</testcase></testsuite></testsuites>"
    )
    outcome = gpu_session._tests_outcome(junit)
    assert (outcome["passed"], outcome["failed"], outcome["skipped"]) == (2, 1, 1)
    failed = "tests/test_gpu.py::test_compile_fullgraph_matches_eager[triton]"
    assert outcome["failures"] == [failed]
    checks = gpu_session.gpu_checks({"tests_gpu": outcome})
    assert checks["compile_fullgraph"]["ok"] is False
    assert checks["cuda_graph"]["ok"] is True
    assert checks["no_host_sync"]["ok"] is None  # not run

    (tmp_path / "grid").mkdir()
    (tmp_path / "probe").mkdir()
    (tmp_path / "grid" / "bench.json").write_text(json.dumps({"grid": []}))
    gpu_session._add_checks_to_grid(tmp_path / "grid", checks)
    grid = json.loads((tmp_path / "grid" / "bench.json").read_text())
    assert grid["targets"]["6_no_sync"]["status"] == "fail"
    assert "compile_fullgraph | False" in (tmp_path / "grid" / "bench.md").read_text()
    sweep = {"gram BM32 w2 (default)": 90.0, "tile BM16 w16": 70.0, "linear R4 w2": "Error"}
    probe = {"host_us": {"api": 20.04}, "rows": [{"B": 8, "G": 16, "D": 768, "dtype": "bf16",
                                                  "sweep": sweep}]}  # fmt: skip
    (tmp_path / "probe" / "probe.json").write_text(json.dumps(probe))
    session = {
        "meta": {"device_name": "GPU X", "torch": "t", "cuda": "13.0", "triton": "3.6",
                 "commit": "abc", "dirty": False, "source_sha256": "f" * 64},
        "steps": {"tests_gpu": {"rc": 1, "seconds": 1.0}},
        "tests": {"tests_gpu": outcome},
        "checks": checks,
    }  # fmt: skip
    text = "\n".join(gpu_session.summary(tmp_path, session))
    assert "device GPU X, torch t (CUDA 13.0), triton 3.6; commit abc;" in text
    assert "tests_gpu: 2 passed, 1 failed, 1 skipped" in text
    assert f"failed: {failed}" in text
    assert "compile_fullgraph False" in text and "target 6_no_sync: fail" in text
    assert "'api': 20.0" in text
    assert "sweep 8x16x768 bf16: tile BM16 w16 70.0, gram BM32 w2 (default) 90.0" in text


def test_a_tree_without_git_records_the_commit_given_and_the_source_digest(tmp_path, monkeypatch):
    """On a lent machine the copy that runs may have no git metadata: the commit given on the
    command line is recorded as such, never guessed; the digest of the sources always is."""
    monkeypatch.setattr(environment, "REPO", tmp_path)
    (tmp_path / "dra_kernels").mkdir()
    (tmp_path / "dra_kernels" / "a.py").write_text("x = 1\n")
    state = environment.git_state()
    assert (state["commit"], state["commit_source"], state["dirty"]) == (None, "unknown", None)
    assert state["git"].startswith("unavailable")
    given = environment.git_state("abc123")
    assert given["commit"] == "abc123" and given["commit_source"] == "given on the command line"
    digest = environment.source_digest()
    (tmp_path / "dra_kernels" / "a.py").write_text("x = 2\n")
    assert environment.source_digest() != digest
