"""The answer checker that computed the rewards of the bundled sample.

A completion earns reward 1.0 when the content of its last ``\\boxed{...}`` equals the reference
answer after light normalisation (spaces, ``$``, ``\\left``/``\\right``, ``\\dfrac`` -> ``\\frac``,
a trailing period, and numbers compared by value: ``0.5`` = ``1/2`` = ``\\frac{1}{2}``), and 0.0
otherwise, including when it has no ``\\boxed{}`` at all. It is deliberately small: a stand-in
for the verifiers used in R1-Zero-style training, enough to score hand-written completions.

Run ``python -m dra_kernels.data.checker FILE.jsonl`` to re-score a file with ``answer`` and
``completion`` fields and report the rows whose stored ``reward`` disagrees.
"""

from __future__ import annotations

import json
import re
import sys
from fractions import Fraction

__all__ = ["check", "extract_boxed", "normalize_answer"]

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


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m dra_kernels.data.checker FILE.jsonl", file=sys.stderr)
        return 2
    bad = 0
    with open(argv[0], encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            score = check(row["completion"], row["answer"])
            if score != row.get("reward"):
                bad += 1
                print(f"line {number}: stored reward {row.get('reward')!r}, checker says {score}")
    print(f"{bad} disagreement(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
