"""The SMI-measures CPU benchmark (:mod:`benchmarks.measures_cpu`): its peer computes what the
library computes, its tables come from what it timed, and bad options are refused.

    python -m benchmarks.measures_cpu --submodlib --breakdown     # the measurement itself
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from benchmarks import measures_cpu
from benchmarks.cpu_peers import Shape, make_inputs


@pytest.mark.parametrize("measure", ["facility_location", "log_det"])
def test_the_submodlib_peer_computes_the_library_s_numbers(measure):
    pytest.importorskip("submodlib")
    _, embeddings, codes = make_inputs(Shape(48, 8, 32), layout="shuffled")
    want = measures_cpu.library_calls(embeddings, codes, 6)[measure]()
    got = measures_cpu.submodlib_smi(embeddings, codes, measure)
    np.testing.assert_allclose(got, want.double().numpy(), rtol=1e-4, atol=1e-5)
    assert measures_cpu._check_peer(measure, got, want, 8) < 1e-5 * 8
    with pytest.raises(AssertionError, match="disagrees"):
        measures_cpu._check_peer(measure, got * 1.01, want, 8)


def test_a_quick_run_writes_what_it_timed(tmp_path, capsys):
    pytest.importorskip("submodlib")
    out_json, out_md = tmp_path / "m.json", tmp_path / "m.md"
    args = ["--shape", "64,8,16", "--shape", "32,16,8", "--budget", "0", "--submodlib"]
    assert (
        measures_cpu.main(
            [*args, "--breakdown", "--json", str(out_json), "--markdown", str(out_md)]
        )
        == 0
    )
    record = json.loads(out_json.read_text())
    assert [row["name"] for row in record["rows"]] == ["N=64 G=8 D=16", "N=32 G=16 D=8"]
    for row in record["rows"]:
        m, r = row["median_ms"], row["ratios"]
        assert set(m) == {
            "graph_cut",
            "facility_location",
            "log_det",
            "submodlib_fl",
            "submodlib_ld",
        }
        assert row["rounds"] >= 3 and all(v > 0 for v in m.values())
        assert r["log_det/graph_cut"] == pytest.approx(m["log_det"] / m["graph_cut"])
        assert r["facility_location/submodlib_fl"] == pytest.approx(
            m["facility_location"] / m["submodlib_fl"]
        )
    # No shape has N = 16,384, so the breakdown times every shape given.
    parts = record["log_det_breakdown"]
    assert [p["name"] for p in parts] == ["N=64 G=8 D=16", "N=32 G=16 D=8"]
    for part in parts:
        m = part["median_ms"]
        assert part["share"]["factorisation"] == pytest.approx(m["factorisation"] / m["call"])
    table = out_md.read_text()
    first = record["rows"][0]["median_ms"]
    assert f"| 64 | 8 | 16 | {first['graph_cut']:.3f} | {first['facility_location']:.3f} |" in table
    assert "factorisation + inverse" in table
    assert table.strip() in capsys.readouterr().out


def test_without_submodlib_the_peer_columns_are_absent():
    rows = [measures_cpu.measure_shape(Shape(16, 4, 8), budget_s=0)]
    assert "submodlib" not in measures_cpu.markdown(rows)
    assert set(rows[0]["ratios"]) == {"facility_location/graph_cut", "log_det/graph_cut"}


@pytest.mark.parametrize("text", ["64,8", "64,7,16", "0,1,1", "a,b,c"])
def test_bad_shapes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--shape"):
        measures_cpu.parse_shape(text)


def test_a_negative_budget_is_refused(capsys):
    with pytest.raises(SystemExit):
        measures_cpu.main(["--shape", "8,4,4", "--budget", "-1"])
    assert "--budget must be >= 0" in capsys.readouterr().err
