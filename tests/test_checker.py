"""``python -m dra_kernels.data.checker``: re-scores a rollout file with the bundled answer checker
(docs/cli.md, "Re-checking rewards")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dra_kernels.data import sample_path
from dra_kernels.data.checker import main

PROG = "python -m dra_kernels.data.checker"


def _write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


RIGHT = '{"prompt": "q", "answer": "1/2", "completion": "so \\\\boxed{0.5}", "reward": 1}'
WRONG = '{"prompt": "q", "answer": "1/2", "completion": "so \\\\boxed{2}", "reward": 1}'


def test_help_and_bad_input_in_a_real_process(tmp_path: Path) -> None:
    """What the issue found: ``--help`` read as a file name, and a traceback for a file without
    an ``answer`` field."""
    no_answer = _write(tmp_path / "rollouts.jsonl", RIGHT, '{"completion": "x", "reward": 0}')

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dra_kernels.data.checker", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = run("--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith(f"usage: {PROG} ")
    assert "--answer-field" in result.stdout and "exit codes" in result.stdout
    result = run(str(no_answer))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        f"{PROG}: error: {no_answer}, line 2: field 'answer': missing (found: completion, reward)\n"
    )


def test_the_bundled_sample_agrees(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], [str(sample_path())]):  # the sample is the default file
        assert main(argv) == 0
        assert capsys.readouterr().out == f"checked 84 rows of {sample_path()}: 0 disagreements\n"


def test_disagreements_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "in.jsonl", RIGHT, WRONG, "", RIGHT)
    assert main([str(path)]) == 1
    assert capsys.readouterr().out == (
        f"{path}, line 2: stored reward 1.0, the checker says 0.0\n"
        f"checked 3 rows of {path}: 1 disagreement\n"
    )


def test_field_options_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "in.csv"
    path.write_text('ref,text,score\n42,"so \\boxed{42}",1\n7,"it is 7",0\n', encoding="utf-8")
    options = ["--answer-field", "ref", "--completion-field", "text", "--reward-field", "score"]
    assert main([str(path), *options]) == 0
    assert capsys.readouterr().out == f"checked 2 rows of {path}: 0 disagreements\n"
    numbers = _write(
        tmp_path / "n.jsonl", '{"answer": 42, "completion": "\\\\boxed{42}", "reward": 1}'
    )
    assert main([str(numbers)]) == 0  # a JSON number as the answer is its text
    capsys.readouterr()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([RIGHT, '{"answer": "1", "reward": 1}'], "line 2: field 'completion': missing"),
        (['{"answer": "1", "completion": "x"}'], "line 1: field 'reward': missing"),
        (
            ['{"answer": [1], "completion": "x", "reward": 0}'],
            "line 1: field 'answer': answer must be text or a number, found an array",
        ),
        (['{"answer": "1", "completion": "x", "reward": "high"}'], "field 'reward': reward must"),
        (['{"answer": "1", "completion": "x", "reward": 0'], "line 1: malformed JSON at column"),
        ([], "no rows found: the file is empty"),
    ],
)
def test_bad_input_is_one_error_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], message: str
) -> None:
    path = _write(tmp_path / "in.jsonl", *lines)
    assert main([str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{PROG}: error: {path}") and message in captured.err, (
        captured.err
    )
    assert captured.err.count("\n") == 1


def test_a_missing_file_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "none.jsonl")]) == 1
    assert capsys.readouterr().err == f"{PROG}: error: {tmp_path / 'none.jsonl'}: no such file\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a.jsonl", "b.jsonl"], "unrecognized arguments: b.jsonl"),
        (["--answer"], "expected one argument"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith(f"{PROG}: error: ") and message in first, first
    assert second == f"run '{PROG} --help' for usage"
