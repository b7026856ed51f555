"""The dra-kernels command end to end on the bundled sample, with the real default model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default model is bundled; never the hub

from dra_kernels import adjust_rewards, group_advantages, smi_scores
from dra_kernels.analysis import diversity_quality
from dra_kernels.cli import main
from dra_kernels.data import sample_path
from dra_kernels.data.checker import check
from dra_kernels.embed import Embedder
from dra_kernels.rollouts import read_rollouts

SAMPLE = sample_path()


@pytest.fixture(scope="module")
def sample_embeddings() -> np.ndarray:
    rollouts = read_rollouts(SAMPLE)
    return Embedder(device="cpu").encode(rollouts.completions).double().numpy()


def test_sample_is_what_the_issue_asks_for() -> None:
    rollouts = read_rollouts(SAMPLE)
    groups: dict[str, list[dict]] = {}
    for row in rollouts.rows:
        groups.setdefault(row["prompt"], []).append(row)
    assert len(groups) >= 12
    for rows in groups.values():
        assert len(rows) >= 6
        assert len({row["completion"] for row in rows}) == len(rows)
        methods = [row["method"] for row in rows]
        assert any(m.startswith("wrong") for m in methods)
        assert any("paraphrase" in m for m in methods)
        distinct = {m for m in methods if not m.startswith("wrong") and "paraphrase" not in m}
        assert len(distinct) >= 2  # at least two genuinely different correct methods
        for row in rows:  # every reward is the bundled checker's verdict
            assert row["reward"] == check(row["completion"], row["answer"])
    assert "hand-written" in (SAMPLE.parent / "README.md").read_text()


def test_adjust_writes_what_the_library_computes(
    tmp_path: Path, sample_embeddings: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adjusted.jsonl"
    assert main(["adjust", str(SAMPLE), "-o", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    stdout = captured.out
    assert "84 completions in 12 groups" in stdout and f"wrote 84 rows to {out}" in stdout
    assert "100.0% of tokens read" in captured.err and "cut" not in captured.err
    rollouts = read_rollouts(SAMPLE)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == len(rollouts)
    for row, original in zip(written, rollouts.rows, strict=True):
        assert {k: row[k] for k in original} == original  # every input field passes through
        assert list(row)[-4:] == ["smi", "reward_adjusted", "advantage", "advantage_dra"]
    ids, rewards = rollouts.group_ids, np.asarray(rollouts.rewards)
    adjusted = adjust_rewards(rewards, sample_embeddings, ids)
    expect = {
        "smi": smi_scores(sample_embeddings, ids),
        "reward_adjusted": adjusted,
        "advantage": group_advantages(rewards, ids),
        "advantage_dra": group_advantages(adjusted, ids),
    }
    for name, values in expect.items():
        got = np.array([row[name] for row in written])
        np.testing.assert_allclose(got, values, rtol=1e-5, atol=1e-6, err_msg=name)
    assert (np.array([row["smi"] for row in written]) > 0).all()


def test_adjust_csv_with_id_groups_and_dr_grpo(tmp_path: Path) -> None:
    source = tmp_path / "two.jsonl"  # two prompts of the sample keep this test quick
    lines = SAMPLE.read_text().splitlines()
    source.write_text("\n".join(lines[:14]) + "\n")
    out = tmp_path / "adjusted.csv"
    args = ["adjust", str(source), "-o", str(out), "--group-field", "prompt_id", "--scale", "none"]
    assert main([*args, "--device", "cpu", "--batch-size", "3"]) == 0
    back = read_rollouts(out, group_field="prompt_id", reward_field="reward_adjusted")
    rewards = np.asarray(back.rewards)
    advantages = np.array([float(row["advantage_dra"]) for row in back.rows])
    np.testing.assert_allclose(advantages, group_advantages(rewards, back.group_ids, scale="none"))
    assert set(back.group_ids) == {"p01", "p02"}


def test_analyze_report_plot_and_table(
    tmp_path: Path, sample_embeddings: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    plot, table = tmp_path / "p.png", tmp_path / "table.jsonl"
    argv = ["analyze", str(SAMPLE), "--plot", str(plot), "-o", str(table), "--device", "cpu"]
    assert main(argv) == 0
    rollouts = read_rollouts(SAMPLE)
    report = diversity_quality(rollouts.rewards, sample_embeddings, rollouts.group_ids)
    stdout = capsys.readouterr().out
    assert f"{report.not_significant} of 12 prompts" in stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    assert [row["group"] for row in rows] == [g.group for g in report.groups]
    np.testing.assert_allclose(
        [row["p_value"] for row in rows], [g.p_value for g in report.groups], rtol=1e-4
    )


BAD_INPUTS = [
    ('{"prompt": "q", "completion": "a", "reward": 1}\n{"prompt": "q"', "line 2", None, "JSON"),
    ('{"prompt": "q", "reward": 1}\n', "line 1", "completion", "missing"),
    ('{"prompt": "q", "completion": "a", "reward": "1/2"}\n', "line 1", "reward", "number"),
    ('{"prompt": "q", "completion": "a", "reward": NaN}\n', "line 1", "reward", "finite"),
    ("\n", None, None, "empty"),
]


@pytest.mark.parametrize("command", ["adjust", "analyze"])
@pytest.mark.parametrize(("text", "line", "field", "reason"), BAD_INPUTS)
def test_bad_input_exits_1_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    text: str,
    line: str | None,
    field: str | None,
    reason: str,
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text(text)
    out = tmp_path / "out.jsonl"
    argv = [command, str(source), "-o", str(out)]
    if command == "analyze":
        argv += ["--plot", str(tmp_path / "p.png")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"dra-kernels {command}: error: {source}" in err
    for part in (line, field and f"field '{field}'", reason):
        assert part is None or part in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_failure_keeps_an_existing_output(tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"prompt": "q", "completion": "a", "reward": true}\n')
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    assert main(["adjust", str(source), "-o", str(out)]) == 1
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "out.jsonl"]


def test_missing_input_and_unwritable_output_exit_1(tmp_path: Path) -> None:
    assert main(["adjust", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o.jsonl")]) == 1
    assert main(["adjust", str(SAMPLE), "-o", str(tmp_path / "no" / "o.jsonl")]) == 1
    assert main(["analyze", str(SAMPLE), "--plot", str(tmp_path)]) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["adjust", str(SAMPLE)],  # -o is required
        ["adjust", str(SAMPLE), "-o", "x.jsonl", "--batch-size", "0"],
        ["adjust", str(SAMPLE), "-o", "x.jsonl", "--min-denominator", "-1"],
        ["adjust", str(SAMPLE), "-o", "x.jsonl", "--scale", "max"],
        ["adjust", str(SAMPLE), "-o", "out.parquet"],
        ["analyze", str(SAMPLE), "--alpha", "2"],
        ["demo", "--no-such-option"],
        [
            "adjust",
            "no-such-file.jsonl",
            "-o",
            "x.jsonl",
            "--long-text",
            "head",
            "--window-overlap",
            "4",
        ],
        [
            "adjust",
            "no-such-file.jsonl",
            "-o",
            "x.jsonl",
            "--window-tokens",
            "2",
            "--window-overlap",
            "2",
        ],
        ["analyze", "no-such-file.jsonl", "--long-text", "tail"],
        ["adjust", "no-such-file.jsonl", "-o", "x.jsonl", "--window-overlap", "-1"],
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "usage: dra-kernels" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cut_completions_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "adjusted.jsonl"
    assert (
        main(["adjust", str(SAMPLE), "-o", str(out), "--device", "cpu", "--max-tokens", "20"]) == 0
    )
    err = capsys.readouterr().err
    assert "note: embedded 84 completions" in err
    assert "completions cut (--long-text windows, --max-tokens 20)" in err
    share = float(err.split("% of tokens read")[0].rsplit(" ", 1)[1])
    assert 0 < share < 100


@pytest.mark.parametrize("command", [[], ["adjust"], ["analyze"], ["demo"], ["bench"]])
def test_help_has_examples(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dra-kernels {' '.join(command)}".rstrip())
    assert "examples:\n  dra-kernels" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("dra-kernels 0.")


def test_console_script_is_declared() -> None:
    (script,) = entry_points(group="console_scripts", name="dra-kernels")
    assert script.value == "dra_kernels.cli:main"


def test_demo_in_a_subprocess(tmp_path: Path) -> None:
    """The real process: exit code, output files, and no progress bars without a terminal."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dra_kernels.cli", "demo", "--device", "cpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out_dir = tmp_path / "dra-demo"
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "adjusted.jsonl",
        "analysis.csv",
        "pvalues.png",
    ]
    assert "outputs:" in result.stdout and "dra-demo" in result.stdout
    assert "prompts" in result.stdout and "84 completions in 12 groups" in result.stdout
    assert "it/s" not in result.stderr and "%|" not in result.stderr  # tqdm stays quiet
    with open(out_dir / "analysis.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 12
