"""The answer checker that computed the rewards of the bundled sample.

A completion earns reward 1.0 when the content of its last ``\\boxed{...}`` equals the reference
answer after light normalisation (spaces, ``$``, ``\\left``/``\\right``, ``\\dfrac`` -> ``\\frac``,
a trailing period, and numbers compared by value: ``0.5`` = ``1/2`` = ``\\frac{1}{2}``), and 0.0
otherwise, including when it has no ``\\boxed{}`` at all: a small stand-in for the verifiers of
R1-Zero-style training. ``python -m dra_kernels.data.checker [FILE]`` re-scores a rollout file and
lists the rows whose stored reward it disagrees with (``--help``; docs/cli.md, "Re-checking
rewards").
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from dra_kernels._words import counted
from dra_kernels.cli import CommandParser, add_file_options
from dra_kernels.data import sample_path

# NOTE: the rollout reader's own checks, so that a bad row reads as it does in dra-kernels.
from dra_kernels.rollouts import (
    RolloutError,
    completion_value,
    detect_format,
    json_kind,
    open_rollouts,
    read_records,
    required_field,
    reward_value,
)

__all__ = ["check", "extract_boxed", "main", "normalize_answer"]

PROG = "python -m dra_kernels.data.checker"

_FRAC = re.compile(r"^\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?(/\d+)?$")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (braces balanced), or ``None``.

    Example:
        >>> extract_boxed(r"so x = \\boxed{\\frac{1}{2}}.")
        '\\\\frac{1}{2}'
        >>> extract_boxed("no box here") is None
        True
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    begin = start + len("\\boxed{")
    for index in range(begin - 1, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[begin:index]
    return None  # unbalanced: no usable answer


def normalize_answer(answer: str) -> str:
    """Canonical form of an answer string, used for comparison.

    Example:
        >>> normalize_answer(r" \\dfrac{3}{6} ") == normalize_answer("0.5")
        True
    """
    text = answer.strip().rstrip(".").strip()
    for old, new in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac")):
        text = text.replace(old, new)
    text = text.replace("$", "").replace(" ", "").replace("\\!", "").replace("\\,", "")
    text = text.replace("{,}", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", text):  # 1,000 -> 1000
        text = text.replace(",", "")
    fraction = _FRAC.match(text)
    if fraction:
        text = f"{fraction.group(1)}/{fraction.group(2)}"
    if _NUMBER.match(text):
        try:
            value = Fraction(text)
        except (ValueError, ZeroDivisionError):
            return text
        return str(value)
    return text


def check(completion: str, reference: str) -> float:
    """1.0 when the last boxed answer of ``completion`` matches ``reference``, else 0.0.

    Example:
        >>> check(r"The sum is \\boxed{10}.", "10"), check("It is 10.", "10")
        (1.0, 0.0)
    """
    boxed = extract_boxed(completion)
    if boxed is None:
        return 0.0
    return 1.0 if normalize_answer(boxed) == normalize_answer(reference) else 0.0


_EPILOG = """\
examples:
  python -m dra_kernels.data.checker                      the bundled sample
  python -m dra_kernels.data.checker rollouts.jsonl --answer-field solution

A row's reward is 1.0 when the content of the completion's last \\boxed{...} equals the answer
after light normalisation (numbers by value: 0.5 = 1/2 = \\frac{1}{2}), else 0.0. Each row whose
stored reward differs is listed as FILE, line N. Blank lines are skipped.

exit codes: 0 every stored reward agrees, 1 some disagree or the file cannot be used (one error
line naming the file, line and field), 2 usage error.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Re-score a rollout file and list the rows whose stored reward disagrees; the exit code."""
    parser = CommandParser(
        prog=PROG,
        description="Re-score a rollout file with the \\boxed{} answer checker that scored the "
        "bundled sample,\nand list the rows whose stored reward disagrees.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_file_options(
        parser,
        "file",
        "rollout file, .jsonl or .csv, one completion per row (default: the bundled sample)",
        (
            ("answer", "answer", "the reference answer, text or a number"),
            ("completion", "completion", "the completion text"),
            ("reward", "reward", "the stored reward"),
        ),
        nargs="?",
        metavar="FILE",
    )
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    path = sample_path() if args.file is None else args.file
    fields = (args.answer_field, args.completion_field, args.reward_field)
    try:
        rows, bad = _check_file(path, detect_format(path, args.format), *fields)
    except RolloutError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(f"checked {counted(rows, 'row')} of {path}: {counted(bad, 'disagreement')}")
    return 1 if bad else 0


def _check_file(path: Any, fmt: Any, answer: str, completion: str, reward: str) -> tuple[int, int]:
    """(rows, disagreements), each disagreement printed; RolloutError for a file it cannot use."""
    rows = bad = 0
    handle, _ = open_rollouts(path)
    with handle:
        for line, row in read_records(path, handle, fmt, [answer, completion, reward]):
            reference = required_field(path, line, answer, row)
            if isinstance(reference, bool) or not isinstance(reference, (str, int, float)):
                raise RolloutError(
                    path,
                    f"answer must be text or a number, found {json_kind(reference)}",
                    line=line,
                    field=answer,
                )
            text = completion_value(path, line, completion, row)
            stored = reward_value(path, line, reward, row)
            rows += 1
            score = check(text, str(reference))
            if score != stored:
                bad += 1
                print(f"{path}, line {line}: stored reward {stored!r}, the checker says {score}")
    if not rows:
        raise RolloutError(path, "no rows found: the file is empty")
    return rows, bad


if __name__ == "__main__":
    raise SystemExit(main())
