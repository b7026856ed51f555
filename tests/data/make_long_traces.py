"""Write ``long_traces.json``: synthetic R1-style math reasoning traces for the fidelity tests.

Deterministic and standard-library only: running it again rewrites the same bytes (no random
numbers; the near-copy edits are chosen by a fixed arithmetic rule). Three sets of texts:

- ``prefix_group``: 8 completions of one prompt (a 10-step staircase climbed 1 or 2 steps at a
  time) that share one long opening (restating the problem, notation, small cases; well over 300
  tokens of the bundled model's tokenizer) and then reason in 8 different ways (recursion,
  listing and guessing a pattern, casework on double steps, a table, a tiling picture,
  induction, working backwards, a closed form); two of them reach a wrong answer.
- ``copies_group``: 8 near-copies of one trace of a similar length (the sum of the odd numbers
  below 100), each with a few small edits (words swapped, a number formatted differently, two
  sentences in another order).
- ``last_fifth_pairs``: long traces (over 1,500 tokens) and the same traces with their last fifth
  (about a fifth of the tokens) rewritten: different reasoning and a different final answer.

Usage (from the repository root)::

    python tests/data/make_long_traces.py           # (re)write tests/data/long_traces.json
    python tests/data/make_long_traces.py --check   # exit 1 if the file differs from the script
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

OUTPUT = Path(__file__).with_name("long_traces.json")

# ----------------------------------------------------------------------------- prefix group

STAIRS_PROMPT = (
    "A staircase has 10 steps. You climb it taking either 1 step or 2 steps at a time. "
    "In how many different ways can you reach the top?"
)

STAIRS_OPENING = """<think>
Okay, so I need to figure out how many different ways there are to climb a staircase with 10 \
steps if I can take either 1 step or 2 steps at a time. Let me restate the problem in my own \
words first, to make sure I understand it.

I start at the bottom, which I will call step 0, and I want to end exactly on step 10, the top. \
Each move goes up either 1 step or 2 steps. Two ways of climbing count as different if their \
sequences of moves are different, so going 1 then 2 is not the same as going 2 then 1, even \
though both cover 3 steps. I cannot overshoot the top: the moves have to add up to exactly 10.

Let me set up some notation. A way of climbing is a sequence (a_1, a_2, ..., a_m) where each a_i \
is 1 or 2 and a_1 + a_2 + ... + a_m = 10. The number of moves m is not fixed: with only single \
steps m = 10, and with only double steps m = 5. If I use k double steps, I use 10 - 2k single \
steps, so m = 10 - k, and k can be anything from 0 to 5.

I will write f(n) for the number of ways to climb n steps, so the question asks for f(10). Let me \
check the smallest cases by hand, so that I know what any method should give.

For n = 1 there is one way: a single step. So f(1) = 1.
For n = 2 I can take (1, 1) or (2). So f(2) = 2.
For n = 3 the sequences are (1, 1, 1), (1, 2) and (2, 1). So f(3) = 3.

It is also convenient to say f(0) = 1: there is exactly one way to climb zero steps, which is to \
do nothing. These small values will be my check on whatever I do next.

"""


def _fib_ways(n: int) -> list[int]:
    """ways[i] = number of ways to climb i steps, i = 0..n."""
    ways = [1, 1]
    for _ in range(2, n + 1):
        ways.append(ways[-1] + ways[-2])
    return ways[: n + 1]


WAYS = _fib_ways(12)


def _closing(answer: int, summary: str) -> str:
    return f"</think>\n\n{summary}\n\nThe number of ways is $\\boxed{{{answer}}}$."


def _recursion() -> tuple[str, int]:
    lines = [
        "Let me look for a recursion by thinking about the first move. Any way of climbing n "
        "steps starts with either a single step or a double step. If the first move is a single "
        "step, I am standing on step 1 and still have n - 1 steps to climb, which I can do in "
        "f(n - 1) ways. If the first move is a double step, I am on step 2 with n - 2 steps left, "
        "which I can do in f(n - 2) ways. These two cases do not overlap, because the first move "
        "is different, and together they cover everything. So",
        "",
        "f(n) = f(n - 1) + f(n - 2) for n >= 2.",
        "",
        "Check against the small cases: f(2) = f(1) + f(0) = 1 + 1 = 2, correct. f(3) = f(2) + "
        "f(1) = 2 + 1 = 3, also correct. Good, the recursion matches what I counted by hand.",
        "",
        "Now I just run it forward, one value at a time, being careful with the additions:",
        "",
    ]
    for n in range(4, 11):
        lines.append(
            f"f({n}) = f({n - 1}) + f({n - 2}) = {WAYS[n - 1]} + {WAYS[n - 2]} = {WAYS[n]}."
        )
    lines += [
        "",
        "Let me double-check f(4) = 5 by listing: (1,1,1,1), (1,1,2), (1,2,1), (2,1,1), (2,2). "
        "That is 5 sequences, so the recursion is giving the right numbers.",
        "",
        "So the values are 1, 2, 3, 5, 8, 13, 21, 34, 55, 89 for n = 1 to 10. These are the "
        "Fibonacci numbers, shifted by one place: f(n) is the (n + 1)-th Fibonacci number if "
        "F(1) = F(2) = 1. Then f(10) = F(11) = 89.",
        "",
        "Wait, let me make sure I did not shift the index the wrong way. F(1) = 1, F(2) = 1, "
        "F(3) = 2, and f(2) = 2 = F(3). Yes, f(n) = F(n + 1), so f(10) = F(11) = 89.",
        "",
    ]
    summary = (
        "Conditioning on the first move gives f(n) = f(n - 1) + f(n - 2) with f(1) = 1 and "
        "f(2) = 2, so the counts are 1, 2, 3, 5, 8, 13, 21, 34, 55, 89."
    )
    return "\n".join(lines) + _closing(89, summary), 89


def _sequences(n: int) -> list[str]:
    if n == 0:
        return [""]
    out = [s + "1" for s in _sequences(n - 1)]
    if n >= 2:
        out += [s + "2" for s in _sequences(n - 2)]
    return sorted(out)


def _listing() -> tuple[str, int]:
    lines = [
        "Maybe the simplest thing is to just list the possibilities for a few more small "
        "staircases and see if a pattern jumps out. I will write each way as a string of 1s "
        "and 2s, so 121 means single, double, single.",
        "",
    ]
    for n in range(4, 7):
        seqs = _sequences(n)
        lines.append(f"For n = {n}: {', '.join(seqs)}. That is {len(seqs)} ways.")
        lines.append("")
    lines += [
        "Hmm, let me make sure I did not miss any for n = 6. With no 2s: 111111, one way. With "
        "one 2 there are 5 moves and the 2 can be in any of 5 places: 5 ways. With two 2s there "
        "are 4 moves, and choosing where the two 2s go gives 6 ways. With three 2s: 222, one "
        "way. Total 1 + 5 + 6 + 1 = 13. Good, that matches the list.",
        "",
        "So the counts so far are:",
        "n = 1: 1",
        "n = 2: 2",
        "n = 3: 3",
        "n = 4: 5",
        "n = 5: 8",
        "n = 6: 13",
        "",
        "I recognize this: 1, 2, 3, 5, 8, 13 is the Fibonacci sequence, where each number is the "
        "sum of the two before it: 2 + 3 = 5, 3 + 5 = 8, 5 + 8 = 13. It seems very likely that "
        "the pattern continues. I will not try to prove it, but let me guess and check one more "
        "value: the pattern predicts 8 + 13 = 21 for n = 7. Counting by the number of 2s for "
        "n = 7: no 2s gives 1 way, one 2 gives 6 ways, two 2s give 10 ways, three 2s give 4 "
        "ways. Total 1 + 6 + 10 + 4 = 21. The guess holds.",
        "",
        "So the answer for 10 steps should be the 10th Fibonacci number. The Fibonacci numbers "
        "are 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, ..., and the 10th one is 55.",
        "",
        "So there are 55 ways to climb the 10 steps.",
        "",
    ]
    summary = (
        "Listing the ways for small staircases gives 1, 2, 3, 5, 8, 13, 21, the Fibonacci "
        "numbers, so 10 steps give the 10th Fibonacci number."
    )
    return "\n".join(lines) + _closing(55, summary), 55


def _casework() -> tuple[str, int]:
    lines = [
        "Let me count directly by cases on k, the number of double steps. From the notation "
        "above, a climb with k double steps has 10 - 2k single steps and 10 - k moves in total. "
        "Such a climb is determined by choosing which of the 10 - k moves are the double steps, "
        "so there are C(10 - k, k) climbs with exactly k double steps. Now the cases:",
        "",
    ]
    total = 0
    for k in range(6):
        moves = 10 - k
        value = math.comb(moves, k)
        total += value
        if k == 0:
            detail = "all ten moves are single steps, and there is only C(10, 0) = 1 such climb"
        elif k == 1:
            detail = f"{moves} moves, one of them a double step: C({moves}, 1) = {value}"
        else:
            top = " * ".join(str(moves - i) for i in range(k))
            bottom = " * ".join(str(i) for i in range(k, 0, -1))
            detail = (
                f"{moves} moves, {k} of them double steps: C({moves}, {k}) = ({top}) / "
                f"({bottom}) = {math.perm(moves, k)} / {math.factorial(k)} = {value}"
            )
        lines.append(f"Case k = {k}: {detail}.")
    lines += [
        "",
        "Let me double-check a couple of these. For k = 5 there are 5 moves and all of them are "
        "double steps, so C(5, 5) = 1, which is just (2, 2, 2, 2, 2). For k = 3, C(7, 3) = "
        "7 * 6 * 5 / 6 = 35. For k = 2, C(8, 2) = 8 * 7 / 2 = 28. Those look right.",
        "",
        "The cases are disjoint, since a climb has one definite number of double steps, and k "
        "cannot be 6 or more, because 6 double steps would already be 12 > 10 steps. So the "
        "total is",
        "",
        "1 + 9 + 28 + 35 + 15 + 1.",
        "",
        f"Adding up: 1 + 9 = 10, 10 + 28 = 38, 38 + 35 = 73, 73 + 15 = 88, 88 + 1 = {total}.",
        "",
        "As a sanity check, the same method for n = 3 gives C(3, 0) + C(2, 1) = 1 + 2 = 3, which "
        "matches f(3) = 3 from before.",
        "",
    ]
    summary = (
        "A climb with k double steps has 10 - k moves, so it is a choice of k of them: "
        "C(10, 0) + C(9, 1) + C(8, 2) + C(7, 3) + C(6, 4) + C(5, 5) = 1 + 9 + 28 + 35 + 15 + 1."
    )
    return "\n".join(lines) + _closing(total, summary), total


def _table() -> tuple[str, int]:
    lines = [
        "I think a table is the cleanest way to organize this. For each step n I will track two "
        "numbers: A(n), the ways to arrive at step n whose last move is a single step, and B(n), "
        "the ways whose last move is a double step. A climb that ends on step n with a single "
        "step came from any climb to step n - 1, so A(n) = A(n - 1) + B(n - 1). A climb that "
        "ends with a double step came from any climb to step n - 2, so B(n) = A(n - 2) + "
        "B(n - 2). The total at step n is A(n) + B(n).",
        "",
        "Starting values: at step 1 the only climb is one single step, so A(1) = 1, B(1) = 0. "
        "At step 2: (1, 1) ends with a single step and (2) with a double, so A(2) = 1, B(2) = 1.",
        "",
        "| step n | A(n) last move 1 | B(n) last move 2 | total |",
        "|---|---|---|---|",
    ]
    a = {1: 1, 2: 1}
    b = {1: 0, 2: 1}
    for n in range(3, 11):
        a[n] = a[n - 1] + b[n - 1]
        b[n] = a[n - 2] + b[n - 2]
    for n in range(1, 11):
        lines.append(f"| {n} | {a[n]} | {b[n]} | {a[n] + b[n]} |")
    lines += [
        "",
        "Let me verify a few rows. Row 3: A(3) = A(2) + B(2) = 1 + 1 = 2 and B(3) = A(1) + "
        "B(1) = 1 + 0 = 1, total 3, which matches f(3) = 3. Row 7: A(7) = A(6) + B(6) = "
        f"{a[6]} + {b[6]} = {a[7]}, B(7) = A(5) + B(5) = {a[5]} + {b[5]} = {b[7]}, total "
        f"{a[7] + b[7]}. Row 10: A(10) = {a[9]} + {b[9]} = {a[10]} and B(10) = {a[8]} + "
        f"{b[8]} = {b[10]}, so the total is {a[10]} + {b[10]} = {a[10] + b[10]}.",
        "",
        "Interesting: the A column is the previous total and the B column is the total two rows "
        "up, so the totals satisfy total(n) = total(n - 1) + total(n - 2). The table is "
        "consistent with that: 34 + 55 = 89 in the last row.",
        "",
    ]
    summary = (
        "Tracking, for each step, the climbs ending in a single step and those ending in a "
        "double step fills a 10-row table whose last row is 55 + 34."
    )
    return "\n".join(lines) + _closing(89, summary), 89


def _tiling() -> tuple[str, int]:
    lines = [
        "Let me draw a picture instead. Think of the 10 steps as a strip of 10 unit squares "
        "laid side by side, numbered 1 to 10 from the bottom. A single step covers one square "
        "with a small 1 x 1 tile, and a double step covers two neighbouring squares with a "
        "1 x 2 domino. A climb is then exactly a tiling of the 1 x 10 strip by squares and "
        "dominoes, read from left to right. For example the climb (2, 1, 1, 2, 2, 1, 1) is "
        "the tiling",
        "",
        "[==][ ][ ][==][==][ ][ ]",
        "",
        "where [ ] is a square and [==] a domino. So I need the number of tilings of a 1 x 10 "
        "strip, call it T(10), and T(n) = f(n).",
        "",
        "Now look at the right end of the picture. The last cell of the strip is covered either "
        "by a square or by the right half of a domino.",
        "",
        "If it is a square, removing it leaves any tiling of a 1 x 9 strip:",
        "[ tiling of 9 cells ][ ]",
        "",
        "If it is a domino, removing it leaves any tiling of a 1 x 8 strip:",
        "[ tiling of 8 cells ][==]",
        "",
        "So T(10) = T(9) + T(8), and in general T(n) = T(n - 1) + T(n - 2). Drawing the small "
        "strips: a 1 x 1 strip has only [ ], so T(1) = 1; a 1 x 2 strip has [ ][ ] and [==], "
        "so T(2) = 2; a 1 x 3 strip has [ ][ ][ ], [==][ ] and [ ][==], so T(3) = 3.",
        "",
        "Growing the strip one cell at a time:",
        "",
    ]
    for n in range(4, 11):
        lines.append(
            f"length {n}: T({n}) = T({n - 1}) + T({n - 2}) = {WAYS[n - 1]} + {WAYS[n - 2]} "
            f"= {WAYS[n]} tilings"
        )
    lines += [
        "",
        "I can also see the picture another way: the dominoes split the strip into blocks, and "
        "a tiling with d dominoes has 10 - d tiles in a row, so it is a choice of which d of "
        "them are dominoes. For d = 5 the strip is [==][==][==][==][==], a single tiling, and "
        "for d = 4 there are 6 tiles with one square among them, 6 tilings. Both agree with "
        "the growth rule.",
        "",
    ]
    summary = (
        "A climb is a tiling of a 1 x 10 strip by squares (single steps) and dominoes (double "
        "steps); looking at the last tile gives T(n) = T(n - 1) + T(n - 2), so T(10) = 55 + 34."
    )
    return "\n".join(lines) + _closing(89, summary), 89


def _induction() -> tuple[str, int]:
    fib = [0, 1]
    for _ in range(14):
        fib.append(fib[-1] + fib[-2])
    lines = [
        "The small values 1, 2, 3 make me suspect Fibonacci numbers. Let me state a precise "
        "claim and prove it by induction. Define the Fibonacci numbers by F(0) = 0, F(1) = 1 "
        "and F(n) = F(n - 1) + F(n - 2).",
        "",
        "Claim: f(n) = F(n + 1) for every n >= 1.",
        "",
        "Base cases: f(1) = 1 = F(2) and f(2) = 2 = F(3). Both hold.",
        "",
        "Inductive step: suppose the claim holds for n - 1 and n - 2, where n >= 3. Every climb "
        "of n steps ends with a last move of 1 or of 2. Removing that last move leaves a climb "
        "of n - 1 or of n - 2 steps, and putting it back is the inverse operation, so the "
        "climbs of n steps are in bijection with the disjoint union of the climbs of n - 1 and "
        "n - 2 steps. Hence f(n) = f(n - 1) + f(n - 2) = F(n) + F(n - 1) = F(n + 1), using the "
        "induction hypothesis and then the Fibonacci rule. This completes the induction.",
        "",
        "So f(10) = F(11). Now I need F(11). Let me list the Fibonacci numbers from the start, "
        "counting carefully:",
        "",
    ]
    for i in range(1, 13):
        lines.append(f"F({i}) = {fib[i]}")
    lines += [
        "",
        "Hmm, wait. Let me recount, since the list is easy to misread. Starting from F(0) = 0: "
        "0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144. Counting the entries after F(0), the "
        "eleventh one is 144, so F(11) = 144.",
        "",
        "Let me sanity-check the claim for n = 3 once more: f(3) = F(4) = 3, and I listed "
        "exactly three climbs of 3 steps. Good. So f(10) = F(11) = 144.",
        "",
    ]
    summary = (
        "By induction on n (remove the last move), f(n) = F(n + 1) with F(0) = 0, F(1) = 1. "
        "Hence f(10) = F(11) = 144."
    )
    return "\n".join(lines) + _closing(144, summary), 144


def _backwards() -> tuple[str, int]:
    lines = [
        "Let me work backwards from the top instead of forwards from the bottom. For each "
        "step s, let g(s) be the number of ways to get from step s to step 10. The answer is "
        "g(0).",
        "",
        "At the top, g(10) = 1: I am already there, and doing nothing is one way. From step 9 "
        "the only legal move is a single step (a double step would overshoot to 11), so "
        "g(9) = 1. From any lower step s I can move to s + 1 or to s + 2, so",
        "",
        "g(s) = g(s + 1) + g(s + 2).",
        "",
        "Now fill in the steps going down:",
        "",
    ]
    g = {10: 1, 9: 1}
    for s in range(8, -1, -1):
        g[s] = g[s + 1] + g[s + 2]
        lines.append(f"g({s}) = g({s + 1}) + g({s + 2}) = {g[s + 1]} + {g[s + 2]} = {g[s]}")
    lines += [
        "",
        "Check near the top: from step 8 I can do (1, 1) or (2), so g(8) = 2, as computed. From "
        "step 7 the climbs are (1, 1, 1), (1, 2) and (2, 1), so g(7) = 3. Good.",
        "",
        "Notice that g(10 - n) is just the number of ways to climb n steps, because only the "
        "distance left matters, so this is the same as f(n) read in the other direction: "
        "g(7) = f(3) = 3 matches the small case from before.",
        "",
        f"So from the bottom, g(0) = {g[0]}.",
        "",
    ]
    summary = (
        "Counting from the top down, g(s) = g(s + 1) + g(s + 2) with g(10) = g(9) = 1, which "
        "gives g(0) = g(1) + g(2) = 55 + 34."
    )
    return "\n".join(lines) + _closing(g[0], summary), g[0]


def _closed_form() -> tuple[str, int]:
    phi = (1 + math.sqrt(5)) / 2
    psi = (1 - math.sqrt(5)) / 2
    value = (phi**11 - psi**11) / math.sqrt(5)
    lines = [
        "Since f(n) = f(n - 1) + f(n - 2) (each climb of n steps is a climb of n - 1 or of "
        "n - 2 steps followed by one last move), this is a linear recurrence, and I can solve "
        "it exactly with the characteristic equation instead of computing term by term.",
        "",
        "Try f(n) = x^n. Then x^n = x^(n - 1) + x^(n - 2), so x^2 = x + 1, that is "
        "x^2 - x - 1 = 0. The roots are x = (1 + sqrt(5)) / 2 and x = (1 - sqrt(5)) / 2. Call "
        f"them phi = {phi:.6f} and psi = {psi:.6f}.",
        "",
        "So f(n) = a phi^n + b psi^n for constants a and b, fixed by f(0) = 1 and f(1) = 1:",
        "a + b = 1,",
        "a phi + b psi = 1.",
        "",
        "From the first, b = 1 - a, so a phi + psi - a psi = 1, which gives a (phi - psi) = "
        "1 - psi. Now phi - psi = sqrt(5) and 1 - psi = phi (because phi + psi = 1). So "
        "a = phi / sqrt(5) and b = 1 - a = -psi / sqrt(5). Therefore",
        "",
        "f(n) = (phi^(n + 1) - psi^(n + 1)) / sqrt(5).",
        "",
        "Check: f(2) = (phi^3 - psi^3) / sqrt(5). phi^3 = 2 phi + 1 and psi^3 = 2 psi + 1, so the "
        "difference is 2 (phi - psi) = 2 sqrt(5), and f(2) = 2. Correct.",
        "",
        "For n = 10 I need phi^11 and psi^11. Numerically, "
        f"phi^11 = {phi**11:.4f} and psi^11 = {psi**11:.4f}, so",
        "",
        f"f(10) = ({phi**11:.4f} - ({psi**11:.4f})) / {math.sqrt(5):.4f} = {value:.4f}.",
        "",
        f"That rounds to {round(value)}, and since psi^11 is tiny, f(n) is always the integer "
        "nearest to phi^(n + 1) / sqrt(5), which is a good sign that there is no rounding "
        "problem.",
        "",
    ]
    summary = (
        "The recurrence f(n) = f(n - 1) + f(n - 2) has characteristic roots (1 +- sqrt(5)) / 2, "
        "giving f(n) = (phi^(n + 1) - psi^(n + 1)) / sqrt(5) and f(10) = 89."
    )
    return "\n".join(lines) + _closing(round(value), summary), round(value)


STRATEGIES = {
    "recursion": _recursion,
    "listing": _listing,
    "casework": _casework,
    "table": _table,
    "tiling_picture": _tiling,
    "induction": _induction,
    "working_backwards": _backwards,
    "closed_form": _closed_form,
}


def prefix_group() -> dict:
    completions = []
    for name, build in STRATEGIES.items():
        continuation, answer = build()
        completions.append(
            {"strategy": name, "answer": answer, "text": STAIRS_OPENING + continuation}
        )
    return {
        "prompt": STAIRS_PROMPT,
        "correct_answer": WAYS[10],
        "opening": STAIRS_OPENING,
        "completions": completions,
    }


# ----------------------------------------------------------------------------- copies group

ODD_PROMPT = "What is the sum of all odd numbers from 1 to 99, that is 1 + 3 + 5 + ... + 99?"


def _odd_trace() -> str:
    partial = []
    running = 0
    for k in range(1, 11):
        running += 2 * k - 1
        partial.append(f"first {k} odd numbers: {running} = {k}^2")
    pairs = [f"{a} + {100 - a} = 100" for a in range(1, 20, 2)]
    blocks = []
    for start in range(1, 100, 20):
        terms = list(range(start, start + 20, 2))
        blocks.append(f"{' + '.join(map(str, terms))} = {sum(terms)}")
    return "\n".join(
        [
            "<think>",
            "Okay, I need the sum 1 + 3 + 5 + ... + 99 of all the odd numbers from 1 to 99. "
            "Let me first figure out how many terms there are. The odd numbers can be written "
            "as 2k - 1 for k = 1, 2, 3, and so on. The last term is 99 = 2k - 1, so k = 50. "
            "So there are 50 terms.",
            "",
            "Let me double-check that count another way. From 1 to 100 there are 100 integers, "
            "and exactly half of them are odd, so there are 50 odd numbers. Good, 50 terms.",
            "",
            "Now for the sum. One classic trick is to pair the terms from the outside in, like "
            "Gauss did. Pair the first with the last, the second with the second to last, and "
            "so on:",
            "",
            *pairs,
            "",
            "Every pair adds up to 100. Since there are 50 terms, there are 25 pairs, and no "
            "term is left over in the middle. So the sum is 25 * 100 = 2500.",
            "",
            "Let me check this with a different method, because it is easy to be off by one "
            "with the number of pairs. There is a well-known fact that the sum of the first n "
            "odd numbers is n^2. Let me verify it on small cases:",
            "",
            *partial,
            "",
            "The pattern holds for every case I tried. There is also a nice reason: going from "
            "k^2 to (k + 1)^2 adds (k + 1)^2 - k^2 = 2k + 1, which is exactly the next odd "
            "number. You can picture it as adding an L-shaped border of 2k + 1 unit squares to "
            "a k by k square to get a (k + 1) by (k + 1) square.",
            "",
            "So the sum of the first 50 odd numbers is 50^2 = 2500. That matches the pairing "
            "argument.",
            "",
            "I want one check that does not rely on a formula at all, so let me add the "
            "numbers in blocks of ten terms:",
            "",
            *blocks,
            "",
            "The block sums are 100, 300, 500, 700 and 900, which themselves go up by 200 each "
            "time, and 100 + 300 + 500 + 700 + 900 = 2500. The direct addition agrees.",
            "",
            "One more check using the arithmetic series formula: the sum of an arithmetic "
            "sequence is the number of terms times the average of the first and last terms. "
            "Here that is 50 * (1 + 99) / 2 = 50 * 50 = 2500. All three methods agree.",
            "",
            "Just to be careful about the parity: 50 odd numbers add up to an even number, "
            "since the odd terms pair off, and 2500 is even. It is also a perfect square, as "
            "the n^2 formula says it must be. I am confident the answer is 2500.",
            "</think>",
            "",
            "There are 50 odd numbers from 1 to 99, and the sum of the first n odd numbers is "
            "n^2 (pairing 1 + 99, 3 + 97, ... gives 25 pairs of 100 as well).",
            "",
            "The sum is $\\boxed{2500}$.",
        ]
    )


# Each edit: (description, old, new); every old string occurs exactly once in the trace.
ODD_EDITS = [
    ("word swap: Okay -> Alright", "Okay, I need", "Alright, I need"),
    ("number format: 2500 -> 2,500 (pairing)", "25 * 100 = 2500.", "25 * 100 = 2,500."),
    ("word swap: classic -> standard", "One classic trick", "One standard trick"),
    (
        "word swap: double-check -> verify",
        "Let me double-check that count",
        "Let me verify that count",
    ),
    ("word swap: nice -> neat", "There is also a nice reason", "There is also a neat reason"),
    ("number format: 50^2 -> 50 * 50", "is 50^2 = 2500.", "is 50 * 50 = 2500."),
    ("word swap: confident -> sure", "I am confident the answer", "I am sure the answer"),
    (
        "sentence order: the two sentences of the count check swapped",
        "From 1 to 100 there are 100 integers, and exactly half of them are odd, so there are 50 "
        "odd numbers. Good, 50 terms.",
        "Good, 50 terms: from 1 to 100 there are 100 integers, and exactly half of them are odd, "
        "so there are 50 odd numbers.",
    ),
    ("word swap: well-known -> familiar", "There is a well-known fact", "There is a familiar fact"),
    (
        "sentence order: the parity remark after the square remark",
        "Just to be careful about the parity: 50 odd numbers add up to an even number, since the "
        "odd terms pair off, and 2500 is even. It is also a perfect square, as the n^2 formula "
        "says it must be.",
        "The answer 2500 is a perfect square, as the n^2 formula says it must be. Also, to be "
        "careful about the parity: 50 odd numbers add up to an even number, since the odd terms "
        "pair off, and 2500 is even.",
    ),
    (
        "number format: 100 -> one hundred",
        "Every pair adds up to 100.",
        "Every pair adds up to one hundred.",
    ),
    ("word swap: easy -> simple", "it is easy to be off by one", "it is simple to be off by one"),
]


def copies_group() -> dict:
    base = _odd_trace()
    completions = []
    count = len(ODD_EDITS)
    for copy in range(8):
        # NOTE: a fixed rule instead of a seeded shuffle, so that no Python version can change
        # the choice: copy c takes edits c, c + 5 and c + 9 (mod 12), three distinct edits.
        chosen = [ODD_EDITS[(copy + step) % count] for step in (0, 5, 9)]
        text = base
        for _, old, new in chosen:
            if text.count(old) != 1:
                raise ValueError(f"edit target must occur once in the trace: {old!r}")
            text = text.replace(old, new)
        completions.append({"edits": [name for name, _, _ in chosen], "text": text})
    return {"prompt": ODD_PROMPT, "correct_answer": 2500, "base": base, "completions": completions}


# ----------------------------------------------------------------------------- last-fifth pairs

SQUARES_PROMPT = "For how many integers n with 1 <= n <= 60 is n^2 + 1 divisible by 5?"


def _squares_body() -> str:
    lines = [
        "<think>",
        "Okay, let me understand the problem. I need to count the integers n from 1 to 60 such "
        "that n^2 + 1 is a multiple of 5. A number is divisible by 5 exactly when its last digit "
        "is 0 or 5, so I could just compute n^2 + 1 for each n and look at the last digit. That "
        "is 60 computations, which is a lot, but it is safe, and maybe a pattern will show up "
        "along the way that lets me stop early. Let me start.",
        "",
    ]
    found = []
    for n in range(1, 41):
        value = n * n + 1
        if value % 5 == 0:
            found.append(n)
            verdict = f"{value} / 5 = {value // 5}, so yes, n = {n} works"
        else:
            verdict = f"{value} leaves remainder {value % 5} when divided by 5, so no"
        lines.append(f"n = {n}: n^2 + 1 = {n * n} + 1 = {value}; {verdict}.")
        if n % 10 == 0 and n < 40:
            lines += [
                "",
                f"Let me pause and collect what I have so far. Up to n = {n}, the values that "
                f"work are {', '.join(map(str, found))}. That is {len(found)} of them.",
                "",
            ]
    lines += [
        "",
        "So up to n = 40 the ones that work are " + ", ".join(map(str, found)) + ", which is "
        f"{len(found)} values.",
        "",
    ]
    return "\n".join(lines)


def _squares_end_original() -> str:
    return "\n".join(
        [
            "I can see a clear pattern now: the numbers that work are exactly the ones whose "
            "last digit is 2, 3, 7 or 8. In terms of remainders, n leaves remainder 2 or 3 "
            "when divided by 5. Let me justify that rather than trust the pattern. The square "
            "of n modulo 5 only depends on n modulo 5:",
            "",
            "n = 0 mod 5: n^2 = 0, so n^2 + 1 = 1 mod 5.",
            "n = 1 mod 5: n^2 = 1, so n^2 + 1 = 2 mod 5.",
            "n = 2 mod 5: n^2 = 4, so n^2 + 1 = 0 mod 5.",
            "n = 3 mod 5: n^2 = 9 = 4, so n^2 + 1 = 0 mod 5.",
            "n = 4 mod 5: n^2 = 16 = 1, so n^2 + 1 = 2 mod 5.",
            "",
            "So n^2 + 1 is divisible by 5 exactly when n = 2 or 3 mod 5. From 1 to 60 there "
            "are 12 complete blocks of five consecutive numbers, and each block contains "
            "exactly one number of each remainder, so each block has 2 good values. That "
            "gives 12 * 2 = 24.",
            "",
            "Check against my list: up to 40 I found 16 values, which is 8 blocks times 2. "
            "From 41 to 60 there are 4 more blocks, adding 8: 42, 43, 47, 48, 52, 53, 57, 58. "
            "So 16 + 8 = 24.",
            "</think>",
            "",
            "n^2 + 1 is divisible by 5 exactly when n leaves remainder 2 or 3 modulo 5, which "
            "happens twice in every block of five; 1 to 60 has 12 blocks.",
            "",
            "The answer is $\\boxed{24}$.",
        ]
    )


def _squares_end_rewritten() -> str:
    return "\n".join(
        [
            "This is getting long, and I would rather not keep going one number at a time. "
            "Let me think about last digits instead. For n^2 + 1 to end in 0 or 5, n^2 has to "
            "end in 9 or 4. A square ends in 9 when the number ends in 3, like 3^2 = 9 and "
            "13^2 = 169. A square ends in 4 when the number ends in 2, like 2^2 = 4 and "
            "12^2 = 144. So the condition is that n ends in 2 or in 3.",
            "",
            "In other words I only need to look at the last digit of n, and the last digit "
            "of n^2 + 1 is fixed by it: last digit 2 gives 4 + 1 = 5 and last digit 3 gives "
            "9 + 1 = 10, both fine, while last digit 1 gives 2 and last digit 4 gives 7.",
            "",
            "Now I just count those from 1 to 60. The numbers ending in 2 are 2, 12, 22, 32, "
            "42, 52: that is 6 of them. The numbers ending in 3 are 3, 13, 23, 33, 43, 53: "
            "another 6. None of them ends in both, so the total is 6 + 6 = 12.",
            "",
            "That is much quicker than finishing the list. Let me spot-check one from each "
            "family: 22^2 + 1 = 485 = 5 * 97, divisible. 33^2 + 1 = 1090 = 5 * 218, "
            "divisible. Good, so every number ending in 2 or 3 works, and there are 12 of "
            "them between 1 and 60.",
            "</think>",
            "",
            "n^2 + 1 ends in 0 or 5 exactly when n^2 ends in 4 or 9, that is when n ends in 2 "
            "or 3; there are 6 + 6 such numbers up to 60.",
            "",
            "The answer is $\\boxed{12}$.",
        ]
    )


MARBLES_PROMPT = (
    "A bag contains 4 red marbles and 6 blue marbles. Three marbles are drawn at random "
    "without replacement. What is the probability that exactly two of them are red?"
)


def _marbles_body() -> str:
    lines = [
        "<think>",
        "Alright, let me set this up. The bag has 4 red and 6 blue marbles, so 10 marbles in "
        "total. I draw 3 of them one after another without putting any back, and I want the "
        "probability that exactly two of the three are red, which means two red and one blue.",
        "",
        "First I will do it the slow way, by thinking about the order of the draws. If exactly "
        "two are red, the single blue marble can come first, second or third. Let me work out "
        "each order separately.",
        "",
    ]
    orders = ["RRB", "RBR", "BRR"]
    for order in orders:
        red, blue, total = 4, 6, 10
        factors = []
        steps = []
        for position, colour in enumerate(order, start=1):
            if colour == "R":
                factors.append((red, total))
                steps.append(
                    f"draw {position} is red: {red} red marbles out of {total} left, "
                    f"probability {red}/{total}"
                )
                red -= 1
            else:
                factors.append((blue, total))
                steps.append(
                    f"draw {position} is blue: {blue} blue marbles out of {total} left, "
                    f"probability {blue}/{total}"
                )
                blue -= 1
            total -= 1
        numerator = math.prod(f[0] for f in factors)
        denominator = math.prod(f[1] for f in factors)
        lines.append(f"Order {order}: " + "; then ".join(steps) + ".")
        lines.append(
            f"So P({order}) = "
            + " * ".join(f"{a}/{b}" for a, b in factors)
            + f" = {numerator}/{denominator}, which simplifies to "
            f"{numerator // math.gcd(numerator, denominator)}/"
            f"{denominator // math.gcd(numerator, denominator)}."
        )
        lines.append("")
    lines += [
        "All three orders give the same product, 72/720 = 1/10, which makes sense: the "
        "numerators are always 4, 3 and 6 in some order and the denominators are always 10, 9 "
        "and 8. The three orders are disjoint events, so I add them: 1/10 + 1/10 + 1/10 = "
        "3/10.",
        "",
        "Let me now redo it by counting combinations, as a check. The number of ways to choose "
        "3 marbles out of 10, ignoring order, is C(10, 3) = 10 * 9 * 8 / (3 * 2 * 1) = 720 / 6 "
        "= 120. The number of ways to choose 2 of the 4 red ones is C(4, 2) = 4 * 3 / 2 = 6, "
        "and the number of ways to choose 1 of the 6 blue ones is C(6, 1) = 6. So the number "
        "of favourable selections is 6 * 6 = 36, and the probability is 36/120.",
        "",
        "Simplifying: 36/120, divide top and bottom by 12, gives 3/10. Same as before. Good.",
        "",
        "To be thorough, let me compute the whole distribution of the number of red marbles, "
        "and make sure it adds up to 1. Let X be the number of red marbles drawn.",
        "",
    ]
    for red in range(4):
        ways_red = math.comb(4, red)
        ways_blue = math.comb(6, 3 - red)
        lines.append(
            f"X = {red}: choose {red} of 4 red in C(4, {red}) = {ways_red} ways and {3 - red} "
            f"of 6 blue in C(6, {3 - red}) = {ways_blue} ways, so {ways_red} * {ways_blue} = "
            f"{ways_red * ways_blue} selections, probability {ways_red * ways_blue}/120."
        )
    lines += [
        "",
        "Adding the counts: 20 + 60 + 36 + 4 = 120. Yes, they cover all 120 selections, so the "
        "distribution is consistent, and P(X = 2) = 36/120 = 3/10 = 0.3.",
        "",
        "Another sanity check is the expected number of red marbles. Each of the 3 draws is red "
        "with probability 4/10 by symmetry, so E[X] = 3 * 4/10 = 1.2. From the distribution: "
        "E[X] = (0 * 20 + 1 * 60 + 2 * 36 + 3 * 4) / 120 = (0 + 60 + 72 + 12) / 120 = 144 / 120 "
        "= 1.2. That matches too.",
        "",
        "Hmm, let me also think about whether the question could mean at least two red. It "
        "says exactly two, so X = 2 only. If it were at least two, it would be (36 + 4)/120 = "
        "40/120 = 1/3, but that is not what is asked.",
        "",
        "Let me go over the order computation one more time, slowly, since the combination "
        "count and the order count should agree for a reason. In the order count I multiplied "
        "4 * 3 * 6 = 72 over 10 * 9 * 8 = 720 and then multiplied by the 3 positions of the "
        "blue marble, giving 216/720. In the combination count I had 36/120. Since 720 = 6 * "
        "120 and 216 = 6 * 36, the two fractions are the same: the factor 6 = 3! is the number "
        "of orders of three drawn marbles, which the combination count ignores on both top and "
        "bottom.",
        "",
        "Finally, a quick simulation in my head of the extremes: if the bag had only 2 red "
        "marbles, the probability of exactly two red in three draws would be C(2, 2) * C(8, 1) "
        "/ C(10, 3) = 8/120 = 1/15, which is small, as expected. With 4 red marbles, 3/10 "
        "feels reasonable: drawing two red out of three is plausible but not the most likely "
        "outcome, since X = 1 has probability 60/120 = 1/2.",
        "",
        "Before I finish, let me reconsider the setup once more, because probability problems "
        "are easy to misread.",
        "",
    ]
    return "\n".join(lines)


def _marbles_end_original() -> str:
    return "\n".join(
        [
            "The draws are without replacement, so the number of red marbles left changes "
            "after each red draw, and the hypergeometric count is the right model. The events "
            "RRB, RBR and BRR are disjoint and each has probability 1/10; the combination "
            "count gives 36 favourable selections out of 120 equally likely ones. Both give "
            "3/10.",
            "",
            "As a last check with complements: P(X = 2) = 1 - P(X = 0) - P(X = 1) - P(X = 3) "
            "= 1 - 20/120 - 60/120 - 4/120 = 1 - 84/120 = 36/120 = 3/10. Everything agrees, "
            "so I am confident in the hypergeometric answer.",
            "",
            "One more way to see it: the three marbles I draw are a random subset of size 3, "
            "all 120 subsets equally likely, and I only count subsets with 2 of the 4 red "
            "ones and 1 of the 6 blue ones. Nothing about the order matters for that, which "
            "is why the ordered and unordered counts had to agree, and why the binomial "
            "model, which would put each marble back, does not apply here.",
            "",
            "So the probability of exactly two red marbles is 3/10, which is 30 percent.",
            "</think>",
            "",
            "Choosing 3 of the 10 marbles can be done in C(10, 3) = 120 ways, and 2 red and 1 "
            "blue in C(4, 2) * C(6, 1) = 36 ways.",
            "",
            "The probability is $\\boxed{\\frac{3}{10}}$.",
        ]
    )


def _marbles_end_rewritten() -> str:
    return "\n".join(
        [
            "Actually, wait. Thinking about it as a repeated experiment is cleaner: each draw "
            "is red with probability 4/10 = 0.4 and blue with probability 0.6, and there are "
            "3 draws, so the number of red marbles is binomial with n = 3 and p = 0.4. Then",
            "",
            "P(X = 2) = C(3, 2) * 0.4^2 * 0.6 = 3 * 0.16 * 0.6 = 0.288.",
            "",
            "As a fraction, 0.288 = 288/1000 = 36/125. Let me check that the binomial "
            "probabilities add up to 1: 0.6^3 = 0.216, 3 * 0.4 * 0.36 = 0.432, 0.288, and "
            "0.4^3 = 0.064, total 0.216 + 0.432 + 0.288 + 0.064 = 1.000. Good.",
            "",
            "This also explains why the three orders looked alike before: in the binomial "
            "model every order with two reds has probability 0.4 * 0.4 * 0.6 = 0.096, and "
            "3 * 0.096 = 0.288 again. The earlier fraction 3/10 must have come from reducing "
            "the counts too early.",
            "",
            "So I will go with the binomial model, which gives 36/125, or 28.8 percent.",
            "</think>",
            "",
            "Each draw is red with probability 2/5, so the number of red marbles in three draws "
            "is binomial: C(3, 2) (2/5)^2 (3/5) = 36/125.",
            "",
            "The probability is $\\boxed{\\frac{36}{125}}$.",
        ]
    )


def last_fifth_pairs() -> list[dict]:
    pairs = []
    for name, prompt, body, original, rewritten, answers in (
        (
            "squares_mod_5",
            SQUARES_PROMPT,
            _squares_body(),
            _squares_end_original(),
            _squares_end_rewritten(),
            ("24", "12"),
        ),
        (
            "marbles",
            MARBLES_PROMPT,
            _marbles_body(),
            _marbles_end_original(),
            _marbles_end_rewritten(),
            ("3/10", "36/125"),
        ),
    ):
        pairs.append(
            {
                "name": name,
                "prompt": prompt,
                "answers": list(answers),
                "shared_body": body + "\n",
                "original": body + "\n" + original,
                "rewritten": body + "\n" + rewritten,
            }
        )
    return pairs


# ----------------------------------------------------------------------------- output


def build() -> dict:
    return {
        "about": (
            "Synthetic R1-style math reasoning traces for tests/test_fidelity.py, written by "
            "tests/data/make_long_traces.py (deterministic; rerun it to regenerate)."
        ),
        "prefix_group": prefix_group(),
        "copies_group": copies_group(),
        "last_fifth_pairs": last_fifth_pairs(),
    }


def render() -> str:
    """The exact text of ``long_traces.json``."""
    return json.dumps(build(), indent=1, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only compare the file with the script's output"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_bytes() if OUTPUT.exists() else None
        if current != text.encode("utf-8"):
            print(f"{OUTPUT.name} differs from what make_long_traces.py writes; rerun it")
            return 1
        print(f"{OUTPUT.name} is up to date")
        return 0
    OUTPUT.write_bytes(text.encode("utf-8"))
    print(f"wrote {OUTPUT.name} ({len(text.encode('utf-8')):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
