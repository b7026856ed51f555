"""Rollout files: one completion per row, as JSONL or CSV.

Each row holds a group key (the prompt text, or an id field such as ``prompt_id``), the completion
text and a numeric reward. Every other field passes through untouched. JSONL example::

    {"prompt": "What is 2 + 3?", "completion": "2 + 3 = 5, so \\\\boxed{5}.", "reward": 1.0}
    {"prompt": "What is 2 + 3?", "completion": "Counting on: \\\\boxed{6}", "reward": 0, "step": 7}

The same as CSV (a header line names the fields; quote fields holding commas or newlines)::

    prompt,completion,reward
    What is 2 + 3?,"2 + 3 = 5, so \\boxed{5}.",1.0

Reading checks every row and raises :class:`RolloutError` naming the file, the line and the field
(malformed JSON, a row that is not an object, a missing or null field, a group key that is not a
string or integer, a completion that is not text, a reward that is not a finite number, no rows at
all). Writing goes to a temporary file in the target directory which is then renamed over the
target, so a failure never leaves a partial file or clobbers an existing one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Format",
    "RolloutError",
    "Rollouts",
    "atomic_path",
    "detect_format",
    "read_rollouts",
    "write_rows",
]

Format = Literal["jsonl", "csv"]

_SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}


class RolloutError(ValueError):
    """A rollout file that cannot be used; the message names the file, line and field.

    Attributes:
        path: the file.
        line: 1-based line number, or ``None`` when the problem concerns the whole file.
        field: the field concerned, or ``None``.
        reason: the problem, without the location.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reason: str,
        *,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.field = field
        self.reason = reason
        where = self.path if line is None else f"{self.path}, line {line}"
        what = f"field '{field}': " if field is not None else ""
        super().__init__(f"{where}: {what}{reason}")


@dataclass
class Rollouts:
    """The rows of a rollout file with the three fields DRA needs pulled out.

    Attributes:
        path: where the rows came from.
        rows: every row as read (all fields, in file order); CSV values are strings.
        group_ids: the group key of each row (str, or int in JSONL).
        completions: the completion text of each row.
        rewards: the reward of each row as a float.
        lines: the line each row starts on.
        fieldnames: field names in order of first appearance.
    """

    path: str
    rows: list[dict[str, Any]]
    group_ids: list[str | int]
    completions: list[str]
    rewards: list[float]
    lines: list[int] = field(default_factory=list)
    fieldnames: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_groups(self) -> int:
        """Number of distinct group keys."""
        return len(set(self.group_ids))


def detect_format(path: str | os.PathLike[str], format: str | None = None) -> Format:
    """``"jsonl"`` or ``"csv"``: ``format`` when given, else from the file suffix."""
    if format is not None:
        if format not in ("jsonl", "csv"):
            raise ValueError(f"format must be 'jsonl' or 'csv', got {format!r}")
        return format  # type: ignore[return-value]
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise RolloutError(
            path,
            f"cannot tell the format from the suffix {suffix!r}; use .jsonl or .csv, or say "
            "which with format='jsonl' / 'csv' (--format on the command line)",
        )
    return _SUFFIXES[suffix]


# ----------------------------------------------------------------------------- reading


def read_rollouts(
    path: str | os.PathLike[str],
    *,
    group_field: str = "prompt",
    completion_field: str = "completion",
    reward_field: str = "reward",
    format: str | None = None,
) -> Rollouts:
    """Read and check a rollout file.

    Args:
        path: a ``.jsonl`` / ``.csv`` file (or any name with ``format`` given). Blank lines are
            skipped. UTF-8, with or without a byte-order mark.
        group_field: the field whose value groups completions (prompt text or an id).
        completion_field: the field holding the completion text.
        reward_field: the field holding the numeric reward.
        format: ``"jsonl"`` or ``"csv"``; ``None`` guesses from the suffix.

    Returns:
        :class:`Rollouts` with at least one row.

    Raises:
        RolloutError: anything wrong with the file, naming the file, line and field.
    """
    fmt = detect_format(path, format)
    text = _read_text(path)
    names = (group_field, completion_field, reward_field)
    records = _jsonl_records(path, text) if fmt == "jsonl" else _csv_records(path, text, names)
    out = Rollouts(os.fspath(path), [], [], [], [])
    seen: dict[str, None] = {}
    for line, row in records:
        out.group_ids.append(_group_value(path, line, group_field, row))
        out.completions.append(_completion_value(path, line, completion_field, row))
        out.rewards.append(_reward_value(path, line, reward_field, row))
        out.rows.append(row)
        out.lines.append(line)
        seen.update(dict.fromkeys(row))
    if not out.rows:
        raise RolloutError(path, "no rollouts found: the file is empty")
    out.fieldnames = list(seen)
    return out


def _read_text(path: str | os.PathLike[str]) -> str:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RolloutError(path, "no such file") from None
    except IsADirectoryError:
        raise RolloutError(path, "is a directory, not a rollout file") from None
    except OSError as exc:
        raise RolloutError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RolloutError(
            path, f"not valid UTF-8 (byte {exc.start}: {exc.reason})", line=line
        ) from None


def _jsonl_records(path: str | os.PathLike[str], text: str) -> Iterable[tuple[int, dict[str, Any]]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RolloutError(
                path, f"malformed JSON at column {exc.colno}: {exc.msg}", line=number
            ) from None
        if not isinstance(row, dict):
            raise RolloutError(
                path, f"expected a JSON object per line, found {_json_kind(row)}", line=number
            )
        yield number, row


def _csv_records(
    path: str | os.PathLike[str], text: str, required: Sequence[str]
) -> Iterable[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if header is None:
                header = [name.strip() for name in record]
                for name in required:
                    if name not in header:
                        raise RolloutError(
                            path,
                            f"missing from the CSV header (found: {', '.join(header)})",
                            line=line,
                            field=name,
                        )
                duplicates = sorted({n for n in header if header.count(n) > 1})
                if duplicates:
                    raise RolloutError(
                        path, f"CSV header repeats {', '.join(duplicates)}", line=line
                    )
                continue
            if len(record) != len(header):
                raise RolloutError(
                    path,
                    f"has {len(record)} values but the header names {len(header)} fields",
                    line=line,
                )
            yield line, dict(zip(header, record, strict=True))
    except csv.Error as exc:
        raise RolloutError(path, f"malformed CSV: {exc}", line=start) from None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({_short(value)!r})"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _require(path: Any, line: int, name: str, row: Mapping[str, Any]) -> Any:
    if name not in row:
        raise RolloutError(
            path, f"missing (found: {', '.join(row) or 'no fields'})", line=line, field=name
        )
    value = row[name]
    if value is None:
        raise RolloutError(path, "is null", line=line, field=name)
    return value


def _group_value(path: Any, line: int, name: str, row: Mapping[str, Any]) -> str | int:
    value = _require(path, line, name, row)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RolloutError(
            path,
            f"group key must be a string or an integer, found {_json_kind(value)}",
            line=line,
            field=name,
        )
    if isinstance(value, str) and not value.strip():
        raise RolloutError(path, "group key is empty", line=line, field=name)
    return value


def _completion_value(path: Any, line: int, name: str, row: Mapping[str, Any]) -> str:
    value = _require(path, line, name, row)
    if not isinstance(value, str):
        raise RolloutError(
            path, f"completion must be text, found {_json_kind(value)}", line=line, field=name
        )
    return value


def _reward_value(path: Any, line: int, name: str, row: Mapping[str, Any]) -> float:
    value = _require(path, line, name, row)
    if isinstance(value, str):  # CSV cells, or numbers quoted in JSON
        text = value.strip()
        if not text:
            raise RolloutError(path, "reward is empty", line=line, field=name)
        try:
            number = float(text)
        except ValueError:
            raise RolloutError(
                path, f"reward must be a number, found {_short(text)!r}", line=line, field=name
            ) from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RolloutError(
            path, f"reward must be a number, found {_json_kind(value)}", line=line, field=name
        )
    else:
        number = float(value)
    if not math.isfinite(number):
        raise RolloutError(path, f"reward must be finite, found {number!r}", line=line, field=name)
    return number


# ----------------------------------------------------------------------------- writing


def write_rows(
    path: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    format: str | None = None,
    fieldnames: Sequence[str] | None = None,
) -> None:
    """Write rows as JSONL or CSV, atomically.

    The rows go to a temporary file next to ``path`` which then replaces ``path`` in one rename:
    on any failure (a value JSON cannot hold, a full disk, an interrupt) ``path`` is left as it
    was, and the temporary file is removed.

    Args:
        path: target file; its directory must exist.
        rows: mappings from field name to value. Non-finite floats are refused (JSON has no NaN).
        format: ``"jsonl"`` or ``"csv"``; ``None`` guesses from the suffix.
        fieldnames: CSV column order; default: every field in order of first appearance. Values
            that are lists or objects are written to CSV as JSON text.
    """
    fmt = detect_format(path, format)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        if fmt == "jsonl":
            _write_jsonl(handle, rows, path)
        else:
            _write_csv(handle, rows, fieldnames, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """A temporary path next to ``path`` that replaces ``path`` when the block succeeds.

    Write to the yielded name inside the ``with`` block. On success the file is synced and
    renamed over ``path`` (one atomic step on POSIX and Windows); on any exception it is removed
    and ``path`` is untouched.

    Example::

        with atomic_path("plot.png") as tmp:
            figure.savefig(tmp, format="png")
    """
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise RolloutError(path, f"cannot write: no directory {os.fspath(directory)!r}")
    if target.is_dir():
        raise RolloutError(path, "cannot write: it is a directory")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp_name
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        # NOTE: mkstemp creates mode 0600; give the file the mode a plain open() would.
        os.chmod(tmp_name, _existing_mode(target))
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _write_jsonl(handle: Any, rows: Sequence[Mapping[str, Any]], path: Any) -> None:
    for index, row in enumerate(rows, start=1):
        try:
            handle.write(json.dumps(dict(row), ensure_ascii=False, allow_nan=False) + "\n")
        except (TypeError, ValueError) as exc:
            raise RolloutError(path, f"row {index} cannot be written as JSON: {exc}") from None


def _write_csv(
    handle: Any, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None, path: Any
) -> None:
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(name for row in rows for name in row))
    writer = csv.DictWriter(handle, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    for index, row in enumerate(rows, start=1):
        cells = {}
        for name, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise RolloutError(path, f"row {index}: {name} is {value!r}, not finite")
            cells[name] = (
                json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value
            )
        writer.writerow(cells)


def _existing_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask
