"""Rollout files (one completion per row, JSON Lines or CSV), read and written a row at a time.

The rules every reader applies are those of docs/cli.md, "Rollout files"; a row that breaks one
raises :class:`RolloutError` naming the file, the line and the field.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import functools
import io
import json
import math
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from dra_kernels._words import counted, keywords_of, show_keywords_of

__all__ = [
    "CHUNK_CHARS",
    "CHUNK_ROWS",
    "MAX_NESTING",
    "Format",
    "RolloutError",
    "RolloutIndex",
    "Rollouts",
    "atomic_path",
    "clean_stale_temporaries",
    "completion_value",
    "detect_format",
    "json_kind",
    "STDIN",
    "open_rollouts",
    "read_records",
    "readable_again",
    "read_rollouts",
    "required_field",
    "reward_value",
    "scan_rollouts",
    "write_rows",
]

Format = Literal["jsonl", "csv"]

MAX_NESTING = 100
"""Deepest nesting of arrays and objects a row may hold (deeper ones are refused when read)."""

_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}

_JSON_BLANK = b" \t\r\n"
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_SURROGATE = re.compile("[\ud800-\udfff]")  # the only text UTF-8 cannot encode
CHUNK_ROWS = 512
"""Most completions in one chunk of :meth:`RolloutIndex.completions` (the embedder's own chunk)."""

CHUNK_CHARS = 1 << 18
"""Most characters in one chunk of :meth:`RolloutIndex.completions`, unless one completion is
longer (it is then a chunk alone): tokenising a chunk takes about 200 bytes per character."""


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
    return _SUFFIXES[suffix]  # type: ignore[return-value]


# ----------------------------------------------------------------------------- reading


class _Fields(NamedTuple):
    group: str
    completion: str
    reward: str


def read_rollouts(
    path: str | os.PathLike[str],
    *,
    group_field: str = "prompt",
    completion_field: str = "completion",
    reward_field: str = "reward",
    format: str | None = None,
) -> Rollouts:
    """Read and check a rollout file, every row in memory.

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
    kept: list[tuple[dict[str, Any], str]] = []
    index = _index(path, format, _Fields(group_field, completion_field, reward_field), None, kept)
    return Rollouts(
        index.path,
        [row for row, _ in kept],
        index.group_ids,
        [completion for _, completion in kept],
        list(index.rewards),
        list(index.lines),
        index.fieldnames,
    )


@dataclass
class RolloutIndex:
    """What DRA needs from a rollout file, without its completions or rows; re-reads the rest.

    Built by :func:`scan_rollouts`, which checks every row. Memory: a few numbers per row and the
    distinct group keys. :meth:`completions` and :meth:`rows` read the file again, a row at a time,
    and raise :class:`RolloutError` if it changed since the scan.

    Attributes:
        path: the file.
        format: ``"jsonl"`` or ``"csv"``.
        group_keys: the distinct group keys, in order of first appearance.
        group_codes: per row, the index of its key in ``group_keys`` (``array('q')``).
        rewards: per row, the reward as a float64 (``array('d')``).
        lines: per row, the line it starts on (``array('q')``).
        fieldnames: field names in order of first appearance.
        data_path: the file read (``path`` itself, or the copy :func:`readable_again` made of a
            pipe); ``path`` is what messages name.
    """

    path: str
    format: Format
    fields: _Fields
    group_keys: list[str | int]
    group_codes: array
    rewards: array
    lines: array
    fieldnames: list[str]
    signature: tuple[int, ...]
    data_path: str = ""

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def num_groups(self) -> int:
        """Number of distinct group keys."""
        return len(self.group_keys)

    @property
    def group_ids(self) -> list[str | int]:
        """The group key of each row (references to ``group_keys``, not copies)."""
        keys = self.group_keys
        return [keys[code] for code in self.group_codes]

    def completions(
        self, *, max_rows: int = CHUNK_ROWS, max_chars: int = CHUNK_CHARS
    ) -> Iterator[tuple[int, list[str]]]:
        """The completions in file order, in chunks: ``(index of the chunk's first row, texts)``.

        A chunk holds at most ``max_rows`` texts and, unless a single text is longer, at most
        ``max_chars`` characters.
        """
        chunk: list[str] = []
        chars = 0
        first = 0
        for index, (_, completion) in enumerate(self._reread()):
            if chunk and (len(chunk) >= max_rows or chars + len(completion) > max_chars):
                yield first, chunk
                chunk, chars, first = [], 0, index
            chunk.append(completion)
            chars += len(completion)
        if chunk:
            yield first, chunk

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every row as read (all fields), in file order."""
        return (row for row, _ in self._reread())

    def _reread(self) -> Iterator[tuple[dict[str, Any], str]]:
        handle, signature = open_rollouts(self.data_path or self.path)
        with handle:
            if signature != self.signature:
                raise self._changed(None)
            count = len(self)
            index = -1
            for index, (line, row) in enumerate(
                read_records(self.path, handle, self.format, self.fields)
            ):
                if index >= count or line != self.lines[index]:
                    raise self._changed(line)
                group, completion, reward = _extract(self.path, line, row, self.fields)
                code = self.group_codes[index]
                same = self.group_keys[code] == group and type(self.group_keys[code]) is type(group)
                if not same or _bits(reward) != _bits(self.rewards[index]):
                    raise self._changed(line)
                yield row, completion
            if index + 1 != count:
                raise self._changed(None)

    def _changed(self, line: int | None) -> RolloutError:
        return RolloutError(
            self.path,
            "the file changed while it was being read; run again once nothing writes to it",
            line=line,
        )


def scan_rollouts(
    path: str | os.PathLike[str], *, data_path: str | os.PathLike[str] | None = None, **options: Any
) -> RolloutIndex:
    """Check every row of a rollout file and keep only what DRA needs (see :class:`RolloutIndex`).

    Takes the keywords of :func:`read_rollouts` (``inspect.signature`` shows them) and applies the
    same checks; ``data_path``, when given, is the file to read (e.g. from
    :func:`readable_again`), ``path`` the name messages use.

    Raises:
        RolloutError: anything wrong with the file, naming the file, line and field.
        TypeError: a keyword :func:`read_rollouts` does not take.
    """
    o = keywords_of(read_rollouts, "scan_rollouts", options)
    fields = _Fields(o["group_field"], o["completion_field"], o["reward_field"])
    return _index(path, o["format"], fields, data_path)


show_keywords_of(read_rollouts, scan_rollouts)


def _index(
    path: Any,
    format: str | None,
    names: _Fields,
    data_path: Any,
    kept: list[tuple[dict[str, Any], str]] | None = None,
) -> RolloutIndex:
    """:func:`scan_rollouts`; ``kept``, when given, collects each row and its completion too."""
    fmt = detect_format(path, format)
    data = os.fspath(path if data_path is None else data_path)
    codes: dict[tuple[type, str | int], int] = {}
    index = RolloutIndex(
        os.fspath(path), fmt, names, [], array("q"), array("d"), array("q"), [], (), data
    )
    seen: dict[str, None] = {}
    try:
        handle, index.signature = open_rollouts(data)
    except RolloutError as exc:
        raise RolloutError(path, exc.reason) from None
    with handle:
        for line, row in read_records(path, handle, fmt, names):
            group, completion, reward = _extract(path, line, row, names)
            # NOTE: the key's type is part of it: 1 and "1" are two groups, as in the library.
            code = codes.setdefault((type(group), group), len(codes))
            if code == len(index.group_keys):
                index.group_keys.append(group)
            index.group_codes.append(code)
            index.rewards.append(reward)
            index.lines.append(line)
            seen.update(dict.fromkeys(row))
            if kept is not None:
                kept.append((row, completion))
    if not index.lines:
        raise RolloutError(path, "no rollouts found: the file is empty")
    index.fieldnames = list(seen)
    return index


def _bits(value: float) -> int:
    return int.from_bytes(array("d", [value]).tobytes(), "little")


STDIN = "-"
"""The input name that reads standard input (:func:`readable_again`)."""


@contextlib.contextmanager
def readable_again(path: str | os.PathLike[str]) -> Iterator[str]:
    """A name that can be opened more than once for what ``path`` holds, valid inside the block.

    A regular file (or a name that does not open: its error comes when it is read) is itself.
    Anything else (``-`` for standard input, a pipe, ``/dev/stdin``, a process substitution) is
    read once into a temporary file in the system's temporary directory, removed when the block
    ends however it ends, so that a command reading its input twice never waits on a pipe.
    """
    name = os.fspath(path)
    try:
        again = name != STDIN and stat.S_IFMT(os.stat(name).st_mode) in (stat.S_IFREG, stat.S_IFDIR)
    except OSError:
        again = True
    if again:
        yield name
        return
    fd, spool = tempfile.mkstemp(prefix="dra-kernels-input-")
    try:
        stdin = contextlib.nullcontext(sys.stdin.buffer)
        with (
            os.fdopen(fd, "wb") as out,
            stdin if name == STDIN else open_rollouts(name)[0] as source,
        ):
            shutil.copyfileobj(source, out, _SPOOL_CHUNK)
        yield spool
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spool)


_SPOOL_CHUNK = 1 << 20


def open_rollouts(path: str | os.PathLike[str]) -> tuple[IO[bytes], tuple[int, ...]]:
    """The file opened for binary reading, and what identifies its content (device, inode, size,
    modification time)."""
    try:
        with contextlib.ExitStack() as opened:
            handle = opened.enter_context(open(path, "rb"))
            info = os.fstat(handle.fileno())
            if stat.S_ISDIR(info.st_mode):  # Windows opens directories without an error
                raise IsADirectoryError
            opened.pop_all()  # the caller closes it
    except FileNotFoundError:
        raise RolloutError(path, "no such file") from None
    except IsADirectoryError:
        raise RolloutError(path, "is a directory, not a rollout file") from None
    except OSError as exc:
        raise RolloutError(path, f"cannot read: {exc.strerror or exc}") from None
    return handle, (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def read_records(
    path: Any, handle: IO[bytes], fmt: Format, required: Sequence[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of each record of an opened rollout file (``required``: the CSV
    columns that must be present); a malformed record raises :class:`RolloutError`."""
    if fmt == "jsonl":
        return _jsonl_records(path, handle)
    return _csv_records(path, handle, required)


def _jsonl_records(path: Any, handle: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    offset = 0
    # NOTE: iterating a binary file splits on b"\n" only, the JSON Lines record separator; the
    # other characters str.splitlines breaks on may appear raw inside JSON strings.
    for number, raw in enumerate(handle, start=1):
        start, offset = offset, offset + len(raw)
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
            start += len(codecs.BOM_UTF8)
        if not raw.strip(_JSON_BLANK):
            continue
        # NOTE: the separator ("\n" or "\r\n") is not part of the record: decoded with it, a
        # record cut short ends on json's line 2, column 1, not at the column of the line at fault.
        raw = raw.removesuffix(b"\n").removesuffix(b"\r")
        fail = functools.partial(RolloutError, path, line=number)
        try:
            text = raw.decode("utf-8")
            row = json.loads(text)
        except UnicodeDecodeError as exc:
            raise fail(f"not valid UTF-8 (byte {start + exc.start}: {exc.reason})") from None
        except json.JSONDecodeError as exc:  # text is one line: its column is the offset + 1
            raise fail(f"malformed JSON at column {exc.pos + 1}: {exc.msg}") from None
        except RecursionError:
            raise fail(f"malformed JSON: nested deeper than {MAX_NESTING} levels") from None
        except ValueError as exc:  # an integer literal longer than Python reads (4,300 digits)
            raise fail(f"cannot read a number: {exc}") from None
        if not isinstance(row, dict):
            raise fail(f"expected a JSON object per line, found {json_kind(row)}")
        yield number, row


def _csv_records(
    path: Any, handle: IO[bytes], required: Sequence[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    header: list[str] | None = None
    start = 1
    # NOTE: the csv module refuses fields over 128 KiB by default, a process-wide setting; long
    # completions need more, so it is raised while this file is read and restored after.
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, 2**31 - 1))
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if header is None:
                header = [name.strip() for name in record]
                missing = [name for name in required if name not in header]
                if missing:
                    found = f"missing from the CSV header (found: {', '.join(header)})"
                    raise RolloutError(path, found, line=line, field=missing[0])
                duplicates = sorted({n for n in header if header.count(n) > 1})
                if duplicates:
                    raise RolloutError(
                        path, f"CSV header repeats {', '.join(duplicates)}", line=line
                    )
                continue
            if len(record) != len(header):
                raise RolloutError(
                    path,
                    f"has {counted(len(record), 'value')} but the header names "
                    f"{counted(len(header), 'field')}",
                    line=line,
                )
            yield line, dict(zip(header, record, strict=True))
    except csv.Error as exc:
        raise RolloutError(path, f"malformed CSV: {exc}", line=start) from None
    except UnicodeDecodeError as exc:
        line, byte = _first_bad_utf8(path)
        raise RolloutError(
            path, f"not valid UTF-8 (byte {byte}: {exc.reason})", line=line
        ) from None
    finally:
        csv.field_size_limit(limit)
        text.detach()


def _first_bad_utf8(path: Any) -> tuple[int | None, int]:
    """(line, byte offset) of the first invalid UTF-8 in a file (a text decoder reads ahead, so
    the line it fails on is not the line at fault)."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return number, offset + exc.start
            offset += len(raw)
    return None, offset


def json_kind(value: Any) -> str:
    """What a JSON value is, for messages: ``"null"``, ``"a number (3)"``, ``"an array"``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({_short(value)!r})"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _extract(
    path: Any, line: int, row: Mapping[str, Any], names: _Fields
) -> tuple[Any, str, float]:
    """The group key, completion and reward of a row, every value of the row checked."""
    group = _group_value(path, line, names.group, row)
    completion = completion_value(path, line, names.completion, row)
    reward = reward_value(path, line, names.reward, row)
    _check_values(path, line, row, skip=names.reward)
    return group, completion, reward


def required_field(path: Any, line: int, name: str, row: Mapping[str, Any]) -> Any:
    """``row[name]``; :class:`RolloutError` naming the file, line and field if absent or null."""
    if name not in row:
        raise RolloutError(
            path, f"missing (found: {', '.join(row) or 'no fields'})", line=line, field=name
        )
    if row[name] is None:
        raise RolloutError(path, "is null", line=line, field=name)
    return row[name]


def _group_value(path: Any, line: int, name: str, row: Mapping[str, Any]) -> str | int:
    value = required_field(path, line, name, row)
    fail = functools.partial(RolloutError, path, line=line, field=name)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise fail(f"group key must be a string or an integer, found {json_kind(value)}")
    if isinstance(value, str) and not value.strip():
        raise fail("group key is empty")
    return value


def completion_value(path: Any, line: int, name: str, row: Mapping[str, Any]) -> str:
    """The completion text in ``row[name]``, checked as :func:`required_field` and as text."""
    value = required_field(path, line, name, row)
    fail = functools.partial(RolloutError, path, line=line, field=name)
    if not isinstance(value, str):
        raise fail(f"completion must be text, found {json_kind(value)}")
    bad = None if value.isascii() else _SURROGATE.search(value)
    if bad is not None:
        raise fail(
            f"completion is not valid Unicode text: a lone surrogate {bad.group()!r} at "
            f"character {bad.start()}"
        )
    return value


def reward_value(path: Any, line: int, name: str, row: Mapping[str, Any]) -> float:
    """The reward in ``row[name]`` as a float (numbers, or numbers written as text)."""
    value = required_field(path, line, name, row)
    fail = functools.partial(RolloutError, path, line=line, field=name)
    if isinstance(value, str):  # CSV cells, or numbers quoted in JSON
        text = value.strip()
        if not text:
            raise fail("reward is empty")
        if not (_NON_FINITE.fullmatch(text) or _NUMBER.fullmatch(text)):
            raise fail(f"reward must be a number, found {_short(text)!r}")
        number = float(text)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(f"reward must be a number, found {json_kind(value)}")
    else:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float64's range
            number = math.inf if value > 0 else -math.inf
    if not math.isfinite(number):
        shown = repr(number) if not isinstance(value, int) else json_kind(value)
        raise fail(
            f"reward must be finite, found {shown} (NaN, Infinity and numbers beyond float64's "
            "range, about 1.8e308, are refused)"
        )
    return number


def _check_values(path: Any, line: int, row: Mapping[str, Any], *, skip: str) -> None:
    """Refuse values the output cannot hold: non-finite numbers, nesting beyond MAX_NESTING."""
    for name, value in row.items():
        if name == skip or isinstance(value, (str, int)) or value is None:
            continue
        fail = functools.partial(RolloutError, path, line=line, field=name)
        stack = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, float) and not math.isfinite(item):
                raise fail(
                    f"holds a non-finite number ({item!r}: NaN, Infinity or beyond float64's "
                    "range), which the output cannot hold"
                )
            if isinstance(item, (list, dict)):
                if depth > MAX_NESTING:
                    raise fail(f"nested deeper than {MAX_NESTING} levels")
                stack.extend(
                    (child, depth + 1)
                    for child in (item.values() if isinstance(item, dict) else item)
                )


# ----------------------------------------------------------------------------- writing


def write_rows(
    path: str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]],
    *,
    format: str | None = None,
    fieldnames: Sequence[str] | None = None,
) -> int:
    """Write rows as JSONL or CSV, a row at a time, atomically (:func:`atomic_path`): on any
    failure (a value JSON cannot hold, a full disk, an interrupt) ``path`` is left as it was.

    Args:
        path: target file; its directory must exist.
        rows: mappings from field name to value, any iterable (a generator is consumed once).
            Non-finite floats are refused (JSON has no NaN). JSONL text is written as UTF-8;
            a row whose text is not valid Unicode (a lone surrogate) is written with ``\\u``
            escapes, which read back to the same value.
        format: ``"jsonl"`` or ``"csv"``; ``None`` guesses from the suffix.
        fieldnames: CSV column order; default: every field in order of first appearance (the
            rows are then held in memory to find them). Values that are lists or objects are
            written to CSV as JSON text.

    Returns:
        The number of rows written.
    """
    fmt = detect_format(path, format)
    if fmt == "csv" and fieldnames is None:
        rows = list(rows)
        fieldnames = list(dict.fromkeys(name for row in rows for name in row))
    encode = _json_line if fmt == "jsonl" else _csv_line(list(fieldnames or ()))
    count = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        if fmt == "csv":  # the header, as DictWriter.writeheader writes it
            handle.write(encode({name: name for name in fieldnames or ()}, 0, path))
        for count, row in enumerate(rows, start=1):
            handle.write(encode(row, count, path))
    return count


def _json_line(row: Mapping[str, Any], count: int, path: Any) -> bytes:
    try:
        try:
            return json.dumps(dict(row), ensure_ascii=False, allow_nan=False).encode() + b"\n"
        except UnicodeEncodeError:  # a lone surrogate: \u escapes keep the value exactly
            return json.dumps(dict(row), ensure_ascii=True, allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError, RecursionError) as exc:
        raise RolloutError(path, f"row {count} cannot be written as JSON: {exc}") from None


def _csv_line(fieldnames: list[str]) -> Callable[[Mapping[str, Any], int, Any], bytes]:
    """What encodes one row as a line of CSV with these columns (lists and objects as JSON)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")

    def encode(row: Mapping[str, Any], count: int, path: Any) -> bytes:
        cells = {}
        for name, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise RolloutError(path, f"row {count}: {name} is {value!r}, not finite")
            if isinstance(value, (list, dict)):
                value = json.dumps(value, ensure_ascii=False, allow_nan=False)
            cells[name] = value
        try:
            writer.writerow(cells)
        except ValueError as exc:  # a field not in fieldnames
            raise RolloutError(path, f"row {count} cannot be written as CSV: {exc}") from None
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            bad = next(n for n, v in cells.items() if _SURROGATE.search(f"{n}{v}"))
            raise RolloutError(
                path,
                f"row {count}: field '{bad}' is not valid Unicode text (a lone surrogate), which "
                "a UTF-8 CSV file cannot hold; write JSONL instead",
            ) from None

    return encode


# ----------------------------------------------------------------------------- temporary files

_TEMP_NAME = re.compile(
    r"\..+\.dra-tmp-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[A-Za-z0-9_]+", re.DOTALL
)
_NAME_BYTES = 160  # of the target's name kept in the temporary's name (names have 255 at most)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """A temporary path next to ``path`` that replaces ``path`` when the block succeeds.

    On success the file is synced and renamed over ``path`` (one atomic step); on any exception it
    is removed and ``path`` is untouched. Its name, ``.<target>.dra-tmp-<host>-<pid>-<random>``,
    lets :func:`clean_stale_temporaries` (called first) remove it should this process be killed
    hard (docs/cli.md, "Writes are atomic").

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
    clean_stale_temporaries(directory)
    short = target.name.encode("utf-8", "surrogateescape")[:_NAME_BYTES].decode("utf-8", "ignore")
    prefix = f".{short}.dra-tmp-{_host_tag()}-{os.getpid()}-"
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, dir=directory)
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


def clean_stale_temporaries(directory: str | os.PathLike[str]) -> list[str]:
    """Remove the temporaries that writers of this module left in ``directory`` when killed hard.

    Only a regular file of this user named as :func:`atomic_path` names them, whose ``host`` tag is
    this machine's and process namespace's and whose process ``pid`` is gone (a zombie counts as
    gone; a reused pid keeps the file until that process ends). POSIX only: elsewhere nothing is
    removed.

    Returns:
        The names removed.
    """
    removed: list[str] = []
    entries: list[os.DirEntry[str]] = []
    if os.name == "posix":
        with contextlib.suppress(OSError):
            entries = list(os.scandir(directory))
    tag = _host_tag()
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or match["host"] != tag or _process_alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid():
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


def _host_tag() -> str:
    """8 hex digits naming this machine and its process-id namespace (pids mean nothing across
    either)."""
    namespace = ""
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid")
    key = "\0".join((socket.gethostname(), namespace))
    return f"{zlib.crc32(key.encode('utf-8', 'surrogateescape')):08x}"


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be writing (unsure counts as alive)."""
    if pid < 1:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: alive, another user's
        return True
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # a zombie: exited, not yet reaped by its parent
            return False
    return True


def _existing_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask
