"""The benchmark runner (dra_kernels.benchmark) on a tiny CPU grid: outputs, targets, baselines."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from dra_kernels import adjust_rewards
from dra_kernels import benchmark as bench

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = bench.main(
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
    for key in ("device_name", "torch", "triton", "numpy", "python", "date_utc", "timer"):
        assert key in results["meta"]
    assert results["copy_bandwidth"]["gbps"] > 0
    assert {r["impl"] for r in results["grid"]} == {"torch", "naive", "loop"}
    timed = [r for r in results["grid"] if "p50_us" in r]
    assert timed
    for row in timed:
        assert row["p20_us"] <= row["p50_us"] <= row["p80_us"]
        assert row["gbps"] > 0 and row["x_floor"] > 0
        assert row["ok"], row
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
    assert "| B x G |" in (out / "bench.md").read_text()


def test_plot_from_saved_json(quick_run, tmp_path):
    _, out = quick_run
    assert bench.main(["--plot-from", str(out / "bench.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench.png").exists() and (tmp_path / "bench.md").exists()


def test_add_arguments_and_run_are_the_cli_hooks(tmp_path):
    parser = argparse.ArgumentParser(prog="dra-kernels bench")
    bench.add_arguments(parser)
    args = parser.parse_args(
        [
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(tmp_path),
            "--shapes",
            "2x4",
            "--dims",
            "8",
            "--impls",
            "torch",
            "--ids",
            "sorted",
            "--no-plot",
            "--rep-ms",
            "1",
        ]
    )
    assert bench.run(args) == 0
    assert not (tmp_path / "bench.png").exists()
    assert json.loads((tmp_path / "bench.json").read_text())["grid"][0]["n"] == 8


def test_unknown_implementation_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        bench.main(["--device", "cpu", "--out", str(tmp_path), "--impls", "torch,fast"])


@pytest.mark.parametrize("layout", ["sorted", "shuffled"])
def test_baselines_match_the_reference(layout):
    rewards, embeddings = bench.make_case_data(6, 5, 16, "float32", CPU, seed=3)
    codes = bench.make_group_codes(6, 5, layout, CPU, seed=3)
    expected = adjust_rewards(rewards, embeddings, codes, backend="torch", num_groups=6)
    naive = bench.naive_adjust(rewards, embeddings, codes, 6, 5, layout == "sorted")
    torch.testing.assert_close(naive, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        bench.loop_adjust(rewards, embeddings, codes, 6), expected, rtol=1e-5, atol=1e-6
    )


def test_case_floor_bytes_count_one_read_and_one_write():
    case = bench.Case(groups=2, group_size=4, dim=16, dtype="bfloat16", ids="sorted")
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
        "checks": {
            "no_host_sync": {"ok": True},
            "cuda_graph": {"ok": True},
            "compile_fullgraph": {"ok": True},
        },
        "reference_ratio": {"ratio": 2.5},
    }
    targets = bench.evaluate_targets(results)
    assert targets["1_floor"]["status"] == "pass"
    assert targets["2_speedup"]["status"] == "pass"
    assert targets["3_shuffled"]["status"] == "fail"
    assert targets["3_shuffled"]["worst_ratio"] == pytest.approx(130 / 80)
    assert targets["4_latency"]["status"] == "fail"
    assert targets["5_advantages"]["status"] == "pass"
    assert targets["6_no_sync"]["status"] == "pass"
    assert targets["7_cpu_reference"]["status"] == "pass"
    empty = bench.evaluate_targets({})
    assert {t["status"] for t in empty.values()} == {"not measured"}


def test_time_call_quantiles_are_ordered():
    timing = bench.time_call(lambda: sum(range(100)), CPU, warmup_ms=0.1, rep_ms=1.0)
    assert 0 < timing.p20 <= timing.p50 <= timing.p80
    assert timing.reps >= 5


def test_probe_sweep_times_every_path_and_marks_the_default():
    """benchmarks/gpu_probe.py's sweep: the three per-group paths with their variants, exactly
    one of them the configuration the kernel would pick."""
    pytest.importorskip("triton")
    from benchmarks.gpu_probe import _variants
    from dra_kernels._triton import dra

    for size, dim, dtype, default, paths in (
        (16, 768, "bfloat16", "gram", {"gram", "tile", "linear"}),
        (16, 768, "float32", "tile", {"gram", "tile", "linear"}),
        (64, 384, "float32", "linear", {"gram", "tile", "linear"}),  # tile: twice the budget
        (512, 768, "bfloat16", "linear", {"gram", "linear"}),  # no tile holds a group of 512
    ):
        variants = _variants(dra, size, dim, dtype)
        assert {name.split()[0] for name in variants} == paths, (size, dtype, list(variants))
        for name, config in variants.items():
            if name.startswith("tile"):  # every tile timed holds a whole group
                assert config["BM"] >= size, (name, config)
        splits = {config.get("SPLIT", 1) for config in variants.values()}
        assert splits == ({1, 2, 4, 8, 16} if size > dra.GRAM_MAX_ROWS else {1}), (size, splits)
        marked = [name for name in variants if name.endswith("(default)")]
        assert len(marked) == 1 and marked[0].startswith(default), (size, dtype, marked)
        chosen = dra._config(size, dim, 1, False, dtype == "float32")
        assert variants[marked[0]] == chosen


def test_gpu_session_fits_one_device_call_and_summarises_its_results(tmp_path):
    """The device tool allows one command ten minutes: the steps' limits must fit in it. The
    summary printed last reads each step's JSON (here a minimal fake of each)."""
    import json

    from benchmarks import gpu_session

    assert sum(limit for _, limit, _ in gpu_session.STEPS) <= 560
    (tmp_path / "check").mkdir()
    (tmp_path / "probe").mkdir()
    check = {
        "meta": {"device_name": "GPU X", "torch": "t", "triton": "3.6", "triton_fast_launch": {}},
        "checks": {"a": {"ok": True}, "b": {"ok": False}},
        "targets": {"1_floor": {"status": "fail"}},
    }
    (tmp_path / "check" / "bench.json").write_text(json.dumps(check))
    sweep = {"gram BM32 w2 (default)": 90.0, "tile BM16 w16": 70.0, "linear R4 w2": "Error"}
    probe = {"host_us": {"api": 20.04}, "rows": [{"B": 8, "G": 16, "D": 768, "dtype": "bf16",
                                                  "sweep": sweep}]}  # fmt: skip
    (tmp_path / "probe" / "probe.json").write_text(json.dumps(probe))
    (tmp_path / "pytest.log").write_text("....\n12 passed, 1 failed in 3.0s\n\n")
    status = {"check": {"rc": 0, "seconds": 1.0, "log": "check.log"}}
    text = "\n".join(gpu_session.summary(tmp_path, status))
    assert "GPU X" in text and "checks: 1/2 ok; failed: ['b']" in text
    assert "pytest: 12 passed, 1 failed in 3.0s" in text
    assert "target 1_floor: fail" in text and "'api': 20.0" in text
    assert "sweep 8x16x768 bf16: tile BM16 w16 70.0, gram BM32 w2 (default) 90.0" in text
