"""Rollout files: every bad input names file, line and field; writes are atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dra_kernels.rollouts import RolloutError, atomic_path, read_rollouts, write_rows

GOOD = [
    {"prompt": "q1", "completion": "a", "reward": 1.0, "step": 3},
    {"prompt": "q1", "completion": "b", "reward": 0},
    {"prompt": "q2", "completion": "c", "reward": -0.5},
]


def _jsonl(tmp_path: Path, lines: list[str], name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_round_trip_keeps_extra_fields(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, [json.dumps(row) for row in GOOD])
    rollouts = read_rollouts(path)
    assert rollouts.group_ids == ["q1", "q1", "q2"]
    assert rollouts.completions == ["a", "b", "c"]
    assert rollouts.rewards == [1.0, 0.0, -0.5]
    assert rollouts.rows[0]["step"] == 3
    assert rollouts.fieldnames == ["prompt", "completion", "reward", "step"]
    assert rollouts.num_groups == 2
    out = tmp_path / "out.jsonl"
    write_rows(out, rollouts.rows)
    assert [json.loads(line) for line in out.read_text().splitlines()] == GOOD


def test_csv_round_trip_and_custom_fields(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(
        'id,text,score,note\n7,"x, with comma",1.5,\n7,"two\nlines",2,hi\n\n8,z,3e-1,\n',
        encoding="utf-8",
    )
    rollouts = read_rollouts(path, group_field="id", completion_field="text", reward_field="score")
    assert rollouts.group_ids == ["7", "7", "8"]
    assert rollouts.completions == ["x, with comma", "two\nlines", "z"]
    assert rollouts.rewards == [1.5, 2.0, 0.3]
    assert rollouts.lines == [2, 3, 6]
    out = tmp_path / "out.csv"
    write_rows(out, [{**row, "extra": [1, 2]} for row in rollouts.rows])
    again = read_rollouts(out, group_field="id", completion_field="text", reward_field="score")
    assert again.completions == rollouts.completions
    assert again.rows[0]["extra"] == "[1, 2]"


def test_integer_group_ids_in_jsonl(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, ['{"g": 1, "completion": "a", "reward": 1}'])
    assert read_rollouts(path, group_field="g").group_ids == [1]


BAD_JSONL = [
    (
        ['{"prompt": "q", "completion": "a", "reward": 1}', '{"prompt": "q", "completion"'],
        2,
        None,
        "malformed JSON",
    ),
    (["[1, 2]"], 1, None, "expected a JSON object per line, found an array"),
    (['{"prompt": "q", "completion": "a"}'], 1, "reward", "missing"),
    (['{"completion": "a", "reward": 1}'], 1, "prompt", "missing"),
    (['{"prompt": "q", "reward": 1}'], 1, "completion", "missing"),
    (['{"prompt": "q", "completion": "a", "reward": "high"}'], 1, "reward", "must be a number"),
    (['{"prompt": "q", "completion": "a", "reward": true}'], 1, "reward", "must be a number"),
    (['{"prompt": "q", "completion": "a", "reward": NaN}'], 1, "reward", "must be finite"),
    (['{"prompt": "q", "completion": "a", "reward": Infinity}'], 1, "reward", "must be finite"),
    (['{"prompt": "q", "completion": "a", "reward": null}'], 1, "reward", "is null"),
    (['{"prompt": [1], "completion": "a", "reward": 1}'], 1, "prompt", "string or an integer"),
    (['{"prompt": 1.5, "completion": "a", "reward": 1}'], 1, "prompt", "string or an integer"),
    (['{"prompt": "q", "completion": 5, "reward": 1}'], 1, "completion", "must be text"),
    (["", "   "], None, None, "no rollouts found: the file is empty"),
]


@pytest.mark.parametrize(("lines", "line", "field", "reason"), BAD_JSONL)
def test_bad_jsonl_names_file_line_field(
    tmp_path: Path, lines: list[str], line: int | None, field: str | None, reason: str
) -> None:
    path = _jsonl(tmp_path, lines)
    with pytest.raises(RolloutError) as info:
        read_rollouts(path)
    err = info.value
    message = str(err)
    assert (err.line, err.field) == (line, field)
    assert message.startswith(str(path))
    assert reason in message
    if line is not None:
        assert f"line {line}" in message
    if field is not None:
        assert f"field '{field}'" in message


BAD_CSV = [
    ("prompt,completion\nq,a\n", 1, "reward", "missing from the CSV header"),
    ("prompt,completion,reward\nq,a,1\nq,b,abc\n", 3, "reward", "must be a number"),
    ("prompt,completion,reward\nq,a,\n", 2, "reward", "reward is empty"),
    ("prompt,completion,reward\nq,a,inf\n", 2, "reward", "must be finite"),
    ("prompt,completion,reward\nq,a,1,extra\n", 2, None, "has 4 values"),
    ("prompt,completion,reward\n,a,1\n", 2, "prompt", "group key is empty"),
    ("prompt,completion,reward\n", None, None, "the file is empty"),
    ("", None, None, "the file is empty"),
]


@pytest.mark.parametrize(("text", "line", "field", "reason"), BAD_CSV)
def test_bad_csv_names_file_line_field(
    tmp_path: Path, text: str, line: int | None, field: str | None, reason: str
) -> None:
    path = tmp_path / "in.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RolloutError) as info:
        read_rollouts(path)
    assert (info.value.line, info.value.field) == (line, field)
    assert str(info.value).startswith(str(path))
    assert reason in str(info.value)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(RolloutError, match="no such file"):
        read_rollouts(tmp_path / "missing.jsonl")
    with pytest.raises(RolloutError, match="is a directory"):
        read_rollouts(tmp_path, format="jsonl")
    odd = tmp_path / "rollouts.txt"
    odd.write_text("x")
    with pytest.raises(RolloutError, match="cannot tell the format"):
        read_rollouts(odd)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b'{"prompt": "q", "completion": "a", "reward": 1}\n\xff\xfe\n')
    with pytest.raises(RolloutError, match="line 2: not valid UTF-8"):
        read_rollouts(binary)


def test_failed_write_leaves_existing_file_and_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    with pytest.raises(RolloutError, match="row 2 cannot be written"):
        write_rows(out, [{"a": 1.0}, {"a": float("nan")}])
    assert out.read_text() == "precious\n"
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]
    new = tmp_path / "new.csv"
    with pytest.raises(RolloutError, match="not finite"):
        write_rows(new, [{"a": 1.0}, {"a": float("inf")}])
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]


def test_atomic_path_cleans_up_on_exception(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        Path(tmp).write_bytes(b"partial")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(b"done")
    assert target.read_bytes() == b"done"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() would, not mkstemp's 0600


def test_write_into_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(RolloutError, match="no directory"):
        write_rows(tmp_path / "nope" / "out.jsonl", GOOD)
