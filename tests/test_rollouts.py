"""Rollout files: every bad input names file, line and field; writes are atomic."""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dra_kernels.rollouts import (
    MAX_NESTING,
    RolloutError,
    atomic_path,
    clean_stale_temporaries,
    read_rollouts,
    scan_rollouts,
    write_rows,
)

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


GOOD_LINE = '{"prompt": "q", "completion": "a", "reward": 1}'
MALFORMED_LINES = [  # (the line's text, the 1-based column at fault, json's reason)
    # the end of the text: just past its 61 characters
    ('{"prompt": "q", "completion": "no closing brace", "reward": 1', 62, "Expecting ','"),
    # the quote opening "reward", counted in characters (the é is two bytes)
    ('{"prompt": "q", "completion": "é" "reward": 1}', 35, "Expecting ','"),
    ('{"prompt": "q",, "completion": "a", "reward": 1}', 16, "Expecting property name"),
]


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
@pytest.mark.parametrize(("text", "column", "reason"), MALFORMED_LINES)
def test_malformed_json_names_the_line_and_column_in_the_file(
    tmp_path: Path, text: str, column: int, reason: str, ending: str
) -> None:
    """The line and column of the file (characters within the line), whatever ends the line:
    the record separator is not part of the text json reads."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(f"{GOOD_LINE}\n\n{text}{ending}".encode())
    with pytest.raises(RolloutError) as info:
        read_rollouts(path)
    assert info.value.line == 3
    assert f"line 3: malformed JSON at column {column}: {reason}" in str(info.value)


BAD_CSV = [
    ("prompt,completion,reward\nq\n", 2, None, "has 1 value but the header names 3 fields"),
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


# ----------------------------------------------------------------------------- records and numbers

# Characters str.splitlines breaks on besides "\n"; inside a JSON string they are plain text
# (those below U+0020 are written escaped, the others raw).
SEPARATORS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r\n"]


def test_jsonl_is_split_on_newline_only(tmp_path: Path) -> None:
    rows = [
        {"prompt": "q", "completion": f"before{sep}after", "reward": i, "note": f"n{sep}"}
        for i, sep in enumerate(SEPARATORS)
    ]
    out = tmp_path / "out.jsonl"
    write_rows(out, rows)
    raw = out.read_bytes()
    assert "\u2028".encode() in raw and "\x85".encode() in raw  # written raw, not escaped
    back = read_rollouts(out)
    assert back.rows == rows
    assert back.lines == list(range(1, len(rows) + 1))
    # Hand-written: raw separators, "\r\n" endings, blank lines of spaces, tabs and "\r".
    text = (
        '{"prompt": "q", "completion": "a\u2028b\x85c\u2029", "reward": 1}\r\n'
        " \t\r\n"
        '{"prompt": "q", "completion": "d", "reward": 0}\r\n'
    )
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(text.encode("utf-8"))
    back = read_rollouts(path)
    assert back.completions == ["a\u2028b\x85c\u2029", "d"]
    assert back.lines == [1, 3]
    lone = tmp_path / "lone.jsonl"  # a record of a separator alone is malformed, not blank
    lone.write_bytes('{"prompt": "q", "completion": "d", "reward": 0}\n\u2028\n'.encode())
    with pytest.raises(RolloutError, match="line 2: malformed JSON"):
        read_rollouts(lone)


REWARD_LITERALS = [  # JSON text of the reward -> its value, or the start of the error
    ("1", 1.0),
    ("-0", 0.0),
    ("-0.0", -0.0),
    ("2.5e-3", 0.0025),
    ("1e-400", 0.0),
    ("4.9e-324", 5e-324),
    ("1.7976931348623157e308", 1.7976931348623157e308),
    ("123456789012345678901234567890", 1.2345678901234568e29),
    ('"1.5"', 1.5),
    ('" -2 "', -2.0),
    ("1" + "0" * 400, "reward must be finite, found an integer of 401 digits"),
    ("-1" + "0" * 400, "reward must be finite, found an integer of 401 digits"),
    ("1" + "0" * 5000, "cannot read a number"),
    ("1e400", "reward must be finite"),
    ("-1e400", "reward must be finite"),
    ("2e308", "reward must be finite"),
    ("NaN", "reward must be finite"),
    ("Infinity", "reward must be finite"),
    ("-Infinity", "reward must be finite"),
    ('"1e400"', "reward must be finite"),
    ('"nan"', "reward must be finite"),
    ('"-inf"', "reward must be finite"),
    ("0x10", "malformed JSON"),
    ("01", "malformed JSON"),
    ("+1", "malformed JSON"),
    (".5", "malformed JSON"),
    ('"0x10"', "reward must be a number"),
    ('"1_000"', "reward must be a number"),
    ('"\u0661"', "reward must be a number"),  # ARABIC-INDIC DIGIT ONE: float() would take it
    ('"1/2"', "reward must be a number"),
    ("true", "reward must be a number, found a boolean"),
    ("false", "reward must be a number, found a boolean"),
    ("null", "is null"),
    ("[1]", "reward must be a number, found an array"),
    ('{"value": 1}', "reward must be a number, found an object"),
    ('""', "reward is empty"),
]


@pytest.mark.parametrize(("literal", "expect"), REWARD_LITERALS)
def test_reward_literals_in_jsonl(tmp_path: Path, literal: str, expect: float | str) -> None:
    path = _jsonl(tmp_path, [f'{{"prompt": "q", "completion": "a", "reward": {literal}}}'])
    if isinstance(expect, str):
        with pytest.raises(RolloutError) as info:
            read_rollouts(path)
        assert (info.value.line, info.value.reason.startswith(expect)) == (1, True), info.value
        assert info.value.field in ("reward", None)
        with pytest.raises(RolloutError):  # the streaming reader applies the same rule
            scan_rollouts(path)
    else:
        (value,) = read_rollouts(path).rewards
        assert value == expect and math.copysign(1, value) == math.copysign(1, expect)
        assert list(scan_rollouts(path).rewards) == [value]


REWARD_CELLS = [  # CSV cell -> value, or the start of the error
    ("1", 1.0),
    ("-0", -0.0),
    ("+2.5", 2.5),
    (".5", 0.5),
    ("5.", 5.0),
    (" 3e-1 ", 0.3),
    ("1e-400", 0.0),
    ("1" + "0" * 400, "reward must be finite"),
    ("1" + "0" * 5000, "reward must be finite"),
    ("1e400", "reward must be finite"),
    ("nan", "reward must be finite"),
    ("-Infinity", "reward must be finite"),
    ("inf", "reward must be finite"),
    ("0x10", "reward must be a number"),
    ("1_000", "reward must be a number"),
    ("\u0661", "reward must be a number"),
    ("true", "reward must be a number"),
    ("1,5", None),  # an unquoted comma: one value too many
    ("", "reward is empty"),
]


@pytest.mark.parametrize(("cell", "expect"), REWARD_CELLS)
def test_reward_cells_in_csv(tmp_path: Path, cell: str, expect: float | str | None) -> None:
    path = tmp_path / "in.csv"
    path.write_text(f"prompt,completion,reward\nq,a,{cell}\n", encoding="utf-8")
    if isinstance(expect, float):
        (value,) = read_rollouts(path).rewards
        assert value == expect and math.copysign(1, value) == math.copysign(1, expect)
        return
    with pytest.raises(RolloutError) as info:
        read_rollouts(path)
    assert info.value.line == 2
    assert expect is None or info.value.reason.startswith(expect), info.value


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


OTHER_VALUES = [  # a pass-through field's JSON text -> None (kept) or the start of the error
    ("10" + "0" * 300, None),
    ('{"a": [1, 2.5, null, true, "x"]}', None),
    (_nested(MAX_NESTING), None),
    (_nested(MAX_NESTING + 1), f"nested deeper than {MAX_NESTING} levels"),
    (_nested(100_000), f"malformed JSON: nested deeper than {MAX_NESTING} levels"),
    ("NaN", "holds a non-finite number"),
    ("1e400", "holds a non-finite number"),
    ('[1, {"x": -Infinity}]', "holds a non-finite number"),
]


@pytest.mark.parametrize(("literal", "expect"), OTHER_VALUES)
def test_pass_through_values_the_output_cannot_hold_are_refused(
    tmp_path: Path, literal: str, expect: str | None
) -> None:
    path = _jsonl(tmp_path, [f'{{"prompt": "q", "completion": "a", "reward": 1, "x": {literal}}}'])
    if expect is None:
        rows = read_rollouts(path).rows
        out = tmp_path / "out.jsonl"
        write_rows(out, rows)
        assert read_rollouts(out).rows == rows
        return
    with pytest.raises(RolloutError) as info:
        read_rollouts(path)
    assert info.value.line == 1 and info.value.reason.startswith(expect), info.value


def test_text_that_is_not_unicode(tmp_path: Path) -> None:
    # A completion must be valid Unicode (it is tokenised); elsewhere a lone surrogate from a
    # \ud800 escape passes through, written back escaped, and CSV (UTF-8) refuses it by name.
    bad = _jsonl(tmp_path, ['{"prompt": "q", "completion": "a\\ud800", "reward": 1}'])
    with pytest.raises(RolloutError, match=r"line 1: field 'completion': .*lone surrogate"):
        read_rollouts(bad)
    path = _jsonl(
        tmp_path, ['{"prompt": "q\\udc00", "completion": "a", "reward": 1, "x": "\\ud800"}']
    )
    rows = read_rollouts(path).rows
    out = tmp_path / "out.jsonl"
    write_rows(out, rows)
    assert read_rollouts(out).rows == rows
    with pytest.raises(RolloutError, match="row 1: field 'prompt' is not valid Unicode"):
        write_rows(tmp_path / "out.csv", rows)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.jsonl"]


JSON_PIECES = st.sampled_from(
    [
        "{", "}", "[", "]", ",", ":", '"prompt"', '"completion"', '"reward"', '"q"', '"a"',
        "1", "-0", "1e400", "1" + "0" * 400, "NaN", "Infinity", "true", "null", "0x1", " ",
        "\r", "\t", "\\", '"\\ud800"', "\u2028", "\x85", "\x00", "\x1c", "1e-400", "1.5",
    ]
)  # fmt: skip


ODD_LITERALS = st.sampled_from(
    [
        "1" + "0" * 400, "-1" + "0" * 310, "1" + "0" * 5000, "1e400", "-1e400", "1e-400", "-0",
        "NaN", "-Infinity", "0x10", "1_0", "01", "true", "null", "[]", "{}", '"1e999"',
        '"\\u0661"', '" 7 "', '"1_0"', '"\\u0663.5"', '" \\u0661 "', "2.5", "[" * 3000,
    ]
)  # fmt: skip
REWARD_TEXT = st.one_of(
    ODD_LITERALS,
    ODD_LITERALS,
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.floats().map(json.dumps),
    st.text(max_size=8).map(json.dumps),
)


@given(reward=REWARD_TEXT, where=st.sampled_from(["reward", "x"]))
def test_reward_fuzz_gives_the_float64_value_or_a_rollout_error(reward: str, where: str) -> None:
    """Any JSON value as the reward (or a pass-through field): a finite float equal to the
    number's float64 value, or RolloutError; never another exception."""
    line = f'{{"prompt": "q", "completion": "a", "reward": {reward if where == "reward" else 1}'
    line += f', "x": {reward}}}' if where == "x" else "}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_text(line + "\n", encoding="utf-8")
        try:
            (value,) = read_rollouts(path).rewards
        except RolloutError:
            return
        assert math.isfinite(value)
        if where == "reward":
            parsed = json.loads(reward)
            if isinstance(parsed, str):  # numeric text: ASCII digits, no underscores
                parsed = parsed.strip()
                assert parsed.isascii() and "_" not in parsed, parsed
            assert value == float(parsed)


@given(
    lines=st.lists(
        st.one_of(
            st.lists(JSON_PIECES, max_size=24).map("".join),
            REWARD_TEXT.map(lambda r: f'{{"prompt": "q", "completion": "a", "reward": {r}}}'),
            st.fixed_dictionaries(
                {
                    "prompt": st.one_of(st.text(max_size=5), st.integers(), st.floats()),
                    "completion": st.one_of(st.text(max_size=5), st.integers(), st.none()),
                    "reward": st.one_of(st.integers(), st.floats(), st.booleans()),
                }
            ).map(json.dumps),
        ),
        max_size=4,
    ),
    fmt=st.sampled_from(["jsonl", "csv"]),
)
def test_reader_fuzz_gives_rows_or_a_rollout_error(lines: list[str], fmt: str) -> None:
    """Any text: the reader returns checked rows or raises RolloutError, nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in.{fmt}"
        text = "\n".join(lines)
        if fmt == "csv":
            text = "prompt,completion,reward\n" + text
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        for reader in (read_rollouts, scan_rollouts):
            try:
                got = reader(path)
            except RolloutError:
                continue
            assert all(math.isfinite(r) for r in got.rewards)


@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "prompt": st.one_of(
                    st.text(min_size=1).filter(str.strip), st.integers(-(10**30), 10**30)
                ),
                "completion": st.text(st.sampled_from(["a", "é", "\u2028", "\x85", "\n", "😀"]))
                | st.text(),
                "reward": st.floats(allow_nan=False, allow_infinity=False),
                "extra": st.recursive(
                    st.none()
                    | st.booleans()
                    | st.integers(-(10**100), 10**100)
                    | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(),
                    lambda inner: (
                        st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
                    ),
                    max_leaves=8,
                ),
            }
        ),
        min_size=1,
        max_size=6,
    )
)
def test_jsonl_round_trip_is_exact(rows: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        assert write_rows(path, iter(rows)) == len(rows)
        back = read_rollouts(path)
        assert back.rows == rows
        index = scan_rollouts(path)
        assert list(index.rows()) == rows
        assert [t for _, chunk in index.completions(max_rows=2) for t in chunk] == [
            row["completion"] for row in rows
        ]


# ----------------------------------------------------------------------------- streaming


def _long_rows(count: int, length: int) -> list[dict]:
    return [
        {"prompt": f"q{i % 3}", "completion": f"{i} " + "x" * length, "reward": i % 2, "i": i}
        for i in range(count)
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_scan_keeps_what_dra_needs_and_rereads_the_rest(tmp_path: Path, suffix: str) -> None:
    rows = _long_rows(7, 50)
    path = tmp_path / f"in{suffix}"
    write_rows(path, rows)
    full = read_rollouts(path)
    index = scan_rollouts(path)
    assert len(index) == 7 and index.num_groups == 3 and index.group_keys == ["q0", "q1", "q2"]
    assert index.group_ids == full.group_ids
    assert list(index.group_codes) == [0, 1, 2, 0, 1, 2, 0]
    assert list(index.rewards) == full.rewards
    assert list(index.lines) == full.lines
    assert index.fieldnames == full.fieldnames
    assert list(index.rows()) == full.rows
    chunks = list(index.completions(max_rows=3, max_chars=120))
    assert [first for first, _ in chunks] == [0, 2, 4, 6]  # 2 texts of ~53 chars fit in 120
    assert [t for _, chunk in chunks for t in chunk] == full.completions
    one = list(index.completions(max_rows=3, max_chars=10))  # each text alone, being longer
    assert [len(chunk) for _, chunk in one] == [1] * 7


def test_a_file_changed_between_readings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    write_rows(path, _long_rows(3, 5))
    index = scan_rollouts(path)
    for change in (
        _long_rows(3, 6),  # another size
        [*_long_rows(3, 5), *_long_rows(1, 5)],  # a row more
        [{**row, "reward": 7} for row in _long_rows(3, 5)],  # same size, another reward
    ):
        write_rows(path, change)
        with pytest.raises(RolloutError, match="changed while it was being read"):
            list(index.rows())
        with pytest.raises(RolloutError, match="changed while it was being read"):
            list(index.completions())
    # Changed in place within the file system's time resolution: same inode, size and time.
    write_rows(path, _long_rows(3, 5))
    index = scan_rollouts(path)
    before = path.stat()
    with open(path, "r+b") as handle:
        data = handle.read()
        handle.seek(0)
        handle.write(data.replace(b'"reward": 1', b'"reward": 7'))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    with pytest.raises(RolloutError, match="line 2: the file changed while it was being read"):
        list(index.rows())


def test_scan_memory_does_not_grow_with_the_completions(tmp_path: Path) -> None:
    """Peak Python memory of a scan and of a chunked re-read: about a row and a chunk, while
    reading every row at once holds the whole file (several times over)."""
    path = tmp_path / "long.jsonl"
    write_rows(path, _long_rows(40, 100_000))  # 4 MB
    size = path.stat().st_size

    def peak(action: Callable[[], object]) -> int:
        tracemalloc.start()
        try:
            action()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    row = size / 40
    index = scan_rollouts(path)
    assert peak(lambda: scan_rollouts(path)) < 8 * row
    chunk = 250_000  # characters: two rows and a half
    assert peak(lambda: sum(len(c) for _, c in index.completions(max_chars=chunk))) < 12 * row
    assert peak(lambda: sum(1 for _ in index.rows())) < 8 * row
    assert peak(lambda: read_rollouts(path)) > size  # the in-memory reader, for comparison


# ----------------------------------------------------------------------------- temporary files


def _temp_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".dra-tmp-" in p.name)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_names_carry_the_host_and_the_writer_pid(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    with atomic_path(target) as tmp:
        name = Path(tmp).name
        match = re.fullmatch(r"\.out\.jsonl\.dra-tmp-([0-9a-f]{8})-([0-9]+)-\w+", name)
        assert match is not None, name
        assert int(match[2]) == os.getpid()
        Path(tmp).write_text("x")
    long_target = tmp_path / ("é" * 120 + ".jsonl")  # 245 bytes: the temporary's name is cut
    with atomic_path(long_target) as tmp:
        assert len(Path(tmp).name.encode()) <= 255
    assert _temp_names(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="stale temporaries are removed on POSIX only")
def test_only_stale_temporaries_of_this_module_are_removed(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "probe") as tmp:
        tag = Path(tmp).name.split(".dra-tmp-")[1].split("-")[0]
    (tmp_path / "probe").unlink()
    dead = _dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "stale": f".out.jsonl.dra-tmp-{tag}-{dead}-abc123_x",
            "stale other target": f".other.csv.dra-tmp-{tag}-{dead}-zz9",
            "own pid": f".out.jsonl.dra-tmp-{tag}-{os.getpid()}-abc",
            "live writer": f".out.jsonl.dra-tmp-{tag}-{sleeper.pid}-abc",
            "other host": f".out.jsonl.dra-tmp-{int(tag, 16) ^ 1:08x}-{dead}-abc",
            "pid 0": f".out.jsonl.dra-tmp-{tag}-0-abc",
            "old style": ".out.jsonl.k2j3h4.tmp",
            "no dot": f"out.jsonl.dra-tmp-{tag}-{dead}-abc",
            "suffix": f".out.jsonl.dra-tmp-{tag}-{dead}-abc.bak",
            "plain": "out.jsonl",
        }
        for name in names.values():
            (tmp_path / name).write_text("x")
        (tmp_path / f".dir.dra-tmp-{tag}-{dead}-abc").mkdir()
        (tmp_path / f".link.dra-tmp-{tag}-{dead}-abc").symlink_to(tmp_path / "out.jsonl")
        removed = clean_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted([names["stale"], names["stale other target"]])
        left = {p.name for p in tmp_path.iterdir()}
        assert left == (set(names.values()) - set(removed)) | {
            f".dir.dra-tmp-{tag}-{dead}-abc",
            f".link.dra-tmp-{tag}-{dead}-abc",
        }
        write_rows(tmp_path / "new.jsonl", GOOD)  # every write cleans its directory first
        assert clean_stale_temporaries(tmp_path) == []
    finally:
        sleeper.kill()
        sleeper.wait()


_PAUSED_WRITER = """
import sys, time
from dra_kernels.rollouts import write_rows

def rows():
    yield {"a": 1}
    print("writing", flush=True)
    time.sleep(120)  # killed here, mid-write
    yield {"a": 2}

write_rows(sys.argv[1], rows())
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and stale temporaries: POSIX only")
def test_a_writer_killed_hard_leaves_a_temporary_the_next_write_removes(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    child = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "writing\n"
        (left,) = _temp_names(tmp_path)
        assert f"-{child.pid}-" in left
        write_rows(tmp_path / "other.jsonl", GOOD)  # a live writer's temporary is kept
        assert _temp_names(tmp_path) == [left]
    finally:
        child.kill()  # SIGKILL: no clean-up runs in the child
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert _temp_names(tmp_path) == [left] and target.read_text() == "old\n"
    write_rows(target, GOOD)
    assert _temp_names(tmp_path) == []
    assert read_rollouts(target).rows == GOOD


def test_scan_rollouts_takes_read_rollouts_keywords_and_no_other(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    write_rows(path, [{"q": "a", "text": "x", "score": 1.0}, {"q": "a", "text": "y", "score": 0}])
    shown = inspect.signature(scan_rollouts).parameters
    for name, parameter in list(inspect.signature(read_rollouts).parameters.items())[1:]:
        assert shown[name].default == parameter.default, name
    fields = {"group_field": "q", "completion_field": "text", "reward_field": "score"}
    index = scan_rollouts(path, **fields)
    assert list(index.rewards) == read_rollouts(path, **fields).rewards == [1.0, 0.0]
    with pytest.raises(
        TypeError, match=r"^scan_rollouts\(\) got an unexpected keyword .*'formats'"
    ):
        scan_rollouts(path, formats="jsonl")
